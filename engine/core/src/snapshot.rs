//! Index snapshots: the whole [`Index`] as one checksummed byte string, and back.
//!
//! A snapshot stores the *rows* of every shop — interned visitor ids, the
//! item table, categories, tags and every visitor profile — and nothing that
//! can be derived from them: the roaring bitmaps (per action and day, per
//! item, per category, per tag, per tier), the items' popularity rings and
//! the profiles' latest-entry hours are rebuilt on load. The choice was
//! measured (`cargo bench -p vitrine-benches --bench snapshot`, 1,000,000
//! visitors, 9.4M profile entries, on a shared 2-core machine): decoding
//! takes 0.9 to 1.5 s, of which 0.6 to 0.9 s rebuilds the bitmaps, where
//! reading serialized bitmaps would take 0.05 s but add 33 MiB to a 52 MiB
//! file. The rebuild is paid
//! for consistency: bitmaps derived on load are exactly what the profiles
//! say, even for a snapshot taken while writers were applying events,
//! whereas a bitmap serialized a moment before or after its profiles would
//! disagree with them, and idempotent replay could not repair it (an entry
//! already in a profile does not set its bits again). The load stays well
//! inside the 5-second restart budget. While the profiles decode (the
//! shards read on two threads, which version 2's per-shard lengths allow,
//! and built on one: see `decode_framed_profiles`), another thread builds
//! the visitor dictionary (each of its
//! shards' arenas reserved once, from the names' total length); then the bitmaps
//! are rebuilt on two threads, each taking half of the visitors in one pass
//! over their profiles (`Derived::rebuild`) and grouping their (bitmap,
//! visitor) pairs a cache-sized run of visitors at a time (`Grouper`).
//!
//! # Format (version 2)
//!
//! Integers are little-endian; `varint` is unsigned LEB128 (at most 10
//! bytes); `str` is a varint byte length and UTF-8 bytes.
//!
//! ```text
//! snapshot := header payload
//! header   := "VTRNSNAP" | version u32 | flags u32 (0) | payload_len u64
//!             | payload_crc32 u32 | header_crc32 u32          (32 bytes; the last
//!                                                             field covers the 28 before it)
//! payload  := section(META) section(SHOP)* section(ZONE)* section(PRICES)* section(EXPOSURES)*
//!                                                             (shops in name order)
//! section  := kind u8 | len u64 | body[len]                   (META = 1, SHOP = 2, ZONE = 3,
//!                                                             PRICES = 4, EXPOSURES = 5)
//! META     := the caller's opaque bytes (Kafka offsets, rule revisions, ...)
//! SHOP     := name str | visitors u32 | categories u32 | tags u32 | items u32 | shard_bits u8
//!             | block(names) | block(names) | block(names) | block(items) | block(profiles)
//! block    := len u64 | bytes[len]
//! names    := str*                                             (in id order)
//! items    := (name str | category varint (0 = none, else id + 1) | [category_ts i64])*
//! profiles := block(shard)*                                    (2^shard_bits shards, in order)
//! shard    := slots varint | profile*                          (visitor id = slot << bits | shard)
//! profile  := entries varint | (hour_delta << 2 | action varint | item varint | category + 1 varint)*
//!             | purchases varint | (key u64 | hour varint | item varint | amount f64)*
//!             | tags varint | (tag varint | ts i64 | present u8)*
//!             | tier_flag u8 | [ts i64 | tier varint]
//! ZONE     := shop str | zone str                              (IANA name; one per shop whose
//!                                                             index is not on UTC's clock)
//! PRICES   := name str | count varint | (item varint | ts i64 | price f64)*
//!                                                             (a shop's known item prices, after
//!                                                             every SHOP section; items ascending,
//!                                                             only items with a price)
//! ```
//!
//! A shop without a ZONE section is on UTC's clock: snapshots written
//! before time zones existed load unchanged. The zone is the index's own
//! (fixed when the shop's index was created), not its rule file's: the
//! hours in its profiles are that zone's clock hours (`crate::time`). A ZONE
//! section for a shop the snapshot does not hold, a second one for the same
//! shop, a SHOP section after a ZONE section, or a zone this build's
//! database does not know is a malformed snapshot.
//!
//! PRICES sections are optional: a snapshot without them (every snapshot
//! written before item prices existed) loads with no known prices, so they
//! needed no new format version.
//!
//! Entries are stored sorted, their hours as deltas from the previous entry,
//! so an entry takes about five bytes.
//!
//! Version 1 differs only in `profiles`: the shards back to back without
//! their lengths (`profiles := shard*`), so they could only be decoded one
//! after the other. This build reads both and writes version 2; the lengths
//! cost 8 bytes a shard (2 KiB a shop).
//!
//! A shop with exposures (decisions offered and held out, [`crate::exposure`])
//! has an EXPOSURES section after all SHOP sections; a snapshot without one
//! (every snapshot written before exposures existed) loads unchanged. Its
//! visitor ids are those of the shop's SHOP section; `visitors` is the
//! dictionary size when the section was written, and facts of visitors the
//! SHOP section does not name (interned later) are left out on load. The
//! day columns are rebuilt from the facts, like the other bitmaps.
//!
//! ```text
//! EXPOSURES := shop str | visitors u32 | benefits u32 | banners u32
//!              | block(names) | block(names) | block(rows)   (benefit ids, banner ids)
//! rows      := (visitor varint | facts varint | fact*)*       (each visitor once)
//! fact      := hour_delta varint | (id << 2 | banner << 1 | held_out) varint
//!                                                             (sorted by hour, entry, held_out)
//! ```
//!
//! # Decoding untrusted bytes
//!
//! [`decode`] checks the header, the length and the CRC-32 of the payload
//! first, then validates everything it reads: every count against the bytes
//! left (so no allocation is larger than a small multiple of the input),
//! every id against its dictionary, names for UTF-8 and uniqueness, entries
//! for order and their hours against `index::MAX_ENTRY_HOUR` (2^30 - 1,
//! which no event's clock hour comes near), purchase keys and tags for
//! uniqueness. It never panics; any
//! defect is a [`SnapshotError`].
//!
//! # Consistency while writers apply events
//!
//! [`encode`] does not stop writers. Per shop it first copies the
//! dictionaries (visitor ids, categories, tags, items; each cut at its first
//! id not yet visible, so ids stay dense), then encodes the profiles shard by
//! shard, each under its shard's read lock: **every shard is consistent at
//! one instant**, different shards at different instants. A profile's
//! references to ids beyond the copied dictionaries (and the profiles of
//! visitors beyond them) are left out: such ids were assigned after the
//! snapshot started, so the events that produced those facts were applied
//! after it started too. Shops created after it started are left out whole.
//!
//! So a snapshot holds every event applied before [`encode`] was called and
//! any subset of those applied while it ran. Since applying an event is
//! idempotent and order-insensitive (sets of entries, purchases de-duplicated
//! by key, latest-timestamp-wins tags, tiers and categories), **loading it and
//! replaying the log from offsets taken before `encode` started gives the
//! state of applying the whole log**: the snapshot plus the rest of the log.
//!
//! Derived state is rebuilt from the rows, with two visible consequences:
//! empty bitmaps (left behind by untag and tier changes) are not restored,
//! and the per-item visitor bitmaps (candidate filters, never expired in a
//! live index) only hold the visitors whose entries survived `expire`.
//! Neither changes a decision or an audience size.

use std::collections::BTreeMap;
use std::sync::Arc;

use ahash::RandomState;
use dashmap::DashMap;
use parking_lot::RwLock;
use roaring::RoaringBitmap;

use crate::codec::{self, begin_len, end_len, Put, Reader};
use crate::index::{
    items::ItemTable, DayBitmaps, Entry, Index, Interner, ItemInfo, Profile, Purchase, ShopIndex, TagState,
    MAX_ENTRY_HOUR, NONE, POPULARITY_DAYS, SHARDS, SHARD_BITS,
};

/// The first eight bytes of every snapshot.
pub const MAGIC: [u8; 8] = *b"VTRNSNAP";
/// The format version this build writes (it reads [`OLDEST_VERSION`] to this).
pub const VERSION: u32 = 2;
/// The oldest format version this build reads: version 1 differs only in
/// its profiles block, one run of varints without per-shard lengths.
pub const OLDEST_VERSION: u32 = 1;
/// Bytes of the fixed header.
pub const HEADER_LEN: usize = 32;

const SECTION_META: u8 = 1;
const SECTION_SHOP: u8 = 2;
const SECTION_ZONE: u8 = 3;
const SECTION_PRICES: u8 = 4;
/// A shop's exposures (decisions offered and held out), after every SHOP section.
const SECTION_EXPOSURES: u8 = 5;

/// Why a byte string is not a valid snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// Shorter than the fixed header.
    #[error("not a snapshot: {len} bytes, shorter than the {HEADER_LEN}-byte header")]
    TooShort {
        /// Bytes given.
        len: usize,
    },
    /// The magic bytes are wrong.
    #[error("not a snapshot: bad magic bytes")]
    BadMagic,
    /// The header's own checksum does not match.
    #[error("snapshot header is damaged: checksum mismatch")]
    HeaderChecksum,
    /// Written by another version of the format.
    #[error(
        "snapshot format version {found} is not supported (this build reads versions {OLDEST_VERSION} to {VERSION})"
    )]
    UnsupportedVersion {
        /// The version in the header.
        found: u32,
    },
    /// The payload is not as long as the header says.
    #[error("snapshot is truncated or extended: header says {expected} payload bytes, found {found}")]
    Length {
        /// Payload bytes the header announces.
        expected: u64,
        /// Payload bytes present.
        found: u64,
    },
    /// The payload's checksum does not match.
    #[error("snapshot payload is damaged: CRC-32 {found:#010x}, header says {expected:#010x}")]
    Checksum {
        /// The checksum in the header.
        expected: u32,
        /// The checksum of the bytes present.
        found: u32,
    },
    /// Checksums match but the content breaks the format (a bug or a forgery).
    #[error("snapshot is malformed at payload offset {offset}: {what}")]
    Malformed {
        /// Offset in the payload (after the header).
        offset: usize,
        /// What is wrong.
        what: &'static str,
    },
}

impl From<codec::Error> for SnapshotError {
    fn from(e: codec::Error) -> SnapshotError {
        SnapshotError::Malformed {
            offset: e.offset,
            what: e.what,
        }
    }
}

/// A decoded snapshot.
#[derive(Debug)]
pub struct Snapshot {
    /// Every shop's index, as it was encoded.
    pub index: Index,
    /// The bytes given to [`encode`] as `meta`.
    pub meta: Vec<u8>,
}

/// Encodes every shop of `index`, with the caller's `meta` bytes (what the
/// index reflects: Kafka offsets, rule revisions, ...), into a snapshot.
/// Writers may keep applying events meanwhile (see the module docs).
pub fn encode(index: &Index, meta: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + meta.len() + 64);
    out.resize(HEADER_LEN, 0);
    let at = begin_section(&mut out, SECTION_META);
    out.extend_from_slice(meta);
    end_len(&mut out, at);
    let mut shops = index.shops();
    shops.sort_by(|a, b| a.name().cmp(b.name()));
    let mut item_counts = Vec::with_capacity(shops.len());
    for shop in &shops {
        let at = begin_section(&mut out, SECTION_SHOP);
        item_counts.push(encode_shop(shop, &mut out));
        end_len(&mut out, at);
    }
    for shop in shops.iter().filter(|s| !s.zone().is_utc()) {
        let at = begin_section(&mut out, SECTION_ZONE);
        out.put_str(shop.name());
        out.put_str(shop.zone().name());
        end_len(&mut out, at);
    }
    for (shop, items) in shops.iter().zip(item_counts) {
        encode_prices(shop, items, &mut out);
    }
    for shop in &shops {
        if let Some(body) = crate::exposure::encode_section(shop) {
            let at = begin_section(&mut out, SECTION_EXPOSURES);
            out.extend_from_slice(&body);
            end_len(&mut out, at);
        }
    }
    seal(&mut out);
    out
}

/// The `meta` bytes of a snapshot from a prefix of its file, without
/// reading or checking the rest: for listing snapshots cheaply (which Kafka
/// offsets or journal position each one covers). The header's own checksum
/// is checked, the payload's is not, so the answer may come from a snapshot
/// that [`decode`] will refuse; callers use it only where a wrong value errs
/// on the safe side, and load through [`decode`].
pub fn peek_meta(prefix: &[u8]) -> Result<&[u8], SnapshotError> {
    let (_, payload) = check_header(prefix)?;
    meta_section(&mut Reader::new(payload))
}

/// Reads the META section that every payload starts with.
fn meta_section<'a>(r: &mut Reader<'a>) -> Decoded<&'a [u8]> {
    let (kind, mut meta) = section(r)?;
    if kind != SECTION_META {
        return Err(malformed(r, "the first section is not META"));
    }
    Ok(meta.rest())
}

/// Decodes a snapshot made by [`encode`], validating every byte.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
    let (version, payload) = open(bytes)?;
    let mut r = Reader::new(payload);
    let meta = meta_section(&mut r)?.to_vec();
    let index = Index::new();
    let mut zoned = std::collections::HashSet::new();
    let mut priced: std::collections::HashSet<&str> = Default::default();
    while !r.is_empty() {
        let (kind, body) = section(&mut r)?;
        if kind == SECTION_ZONE {
            decode_zone(body, &index, &mut zoned)?;
            continue;
        }
        if kind == SECTION_PRICES {
            decode_prices(body, &index, &mut priced)?;
            continue;
        }
        if kind == SECTION_EXPOSURES {
            crate::exposure::decode_section(&index, body)?;
            continue;
        }
        if kind != SECTION_SHOP {
            return Err(malformed(&r, "unknown section kind"));
        }
        if !zoned.is_empty() {
            return Err(malformed(&r, "SHOP section after a ZONE section"));
        }
        if !priced.is_empty() {
            return Err(malformed(&r, "a SHOP section after a PRICES section"));
        }
        let at = body.offset();
        let shop = decode_shop(body, version)?;
        let name: Box<str> = shop.name().into();
        if index.shops.insert(name, Arc::new(shop)).is_some() {
            return Err(SnapshotError::Malformed {
                offset: at,
                what: "duplicate shop",
            });
        }
    }
    Ok(Snapshot { index, meta })
}

/// Reads a ZONE section and gives its shop (already decoded, not shared
/// yet) that zone.
fn decode_zone(mut r: Reader<'_>, index: &Index, zoned: &mut std::collections::HashSet<Box<str>>) -> Decoded<()> {
    let name = r.str()?;
    let zone_name = r.str()?;
    r.finish()?;
    let zone = crate::time::Zone::get(zone_name).ok_or_else(|| malformed(&r, "unknown time zone"))?;
    if !zoned.insert(name.into()) {
        return Err(malformed(&r, "duplicate ZONE section"));
    }
    let mut entry = index
        .shops
        .get_mut(name)
        .ok_or_else(|| malformed(&r, "ZONE section for a shop the snapshot does not hold"))?;
    let shop = Arc::get_mut(entry.value_mut()).ok_or_else(|| malformed(&r, "shop index is shared"))?;
    shop.set_zone(zone);
    Ok(())
}

// ------------------------------------------------------------------ header

fn seal(out: &mut [u8]) {
    out[0..8].copy_from_slice(&MAGIC);
    out[8..12].copy_from_slice(&VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&0u32.to_le_bytes());
    reseal(out);
}

/// Rewrites the payload length and both checksums of a snapshot's header
/// for the payload that follows it, keeping magic, version and flags as
/// they are (for tests that damage a payload and want the decoder, not the
/// checksum, to meet the damage). Shorter than a header: left alone.
pub fn reseal(bytes: &mut [u8]) {
    let Some((header, payload)) = bytes.split_first_chunk_mut::<HEADER_LEN>() else {
        return;
    };
    header[16..24].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    header[24..28].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    let header_crc = crc32fast::hash(&header[..28]);
    header[28..32].copy_from_slice(&header_crc.to_le_bytes());
}

/// The header's fields after the magic.
struct Header {
    version: u32,
    payload_len: u64,
    payload_crc: u32,
}

/// Checks the header's magic, own checksum and version; returns the header
/// and the bytes after it (the payload, or a prefix of it).
fn check_header(bytes: &[u8]) -> Result<(Header, &[u8]), SnapshotError> {
    let Some((header, payload)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(SnapshotError::TooShort { len: bytes.len() });
    };
    let mut r = Reader::new(header);
    if r.bytes(MAGIC.len())? != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let (version, flags, payload_len, payload_crc, header_crc) = (r.u32()?, r.u32()?, r.u64()?, r.u32()?, r.u32()?);
    if crc32fast::hash(&header[..28]) != header_crc {
        return Err(SnapshotError::HeaderChecksum);
    }
    if !(OLDEST_VERSION..=VERSION).contains(&version) || flags != 0 {
        return Err(SnapshotError::UnsupportedVersion { found: version });
    }
    Ok((
        Header {
            version,
            payload_len,
            payload_crc,
        },
        payload,
    ))
}

/// Checks the header and the payload's length and checksum; returns the
/// format version and the payload.
fn open(bytes: &[u8]) -> Result<(u32, &[u8]), SnapshotError> {
    let (header, payload) = check_header(bytes)?;
    let expected = header.payload_len;
    if expected != payload.len() as u64 {
        return Err(SnapshotError::Length {
            expected,
            found: payload.len() as u64,
        });
    }
    let (stored, computed) = (header.payload_crc, crc32fast::hash(payload));
    if stored != computed {
        return Err(SnapshotError::Checksum {
            expected: stored,
            found: computed,
        });
    }
    Ok((header.version, payload))
}

// ---------------------------------------------------------------- encoding

fn begin_section(out: &mut Vec<u8>, kind: u8) -> usize {
    out.put_u8(kind);
    begin_len(out)
}

/// The names of an interner in id order, cut at the first id not visible
/// yet: `text[spans[i].0..spans[i].1]` is the name of id `i`.
struct Names {
    text: String,
    spans: Vec<(usize, usize)>,
}

impl Names {
    fn capture(interner: &Interner) -> Names {
        let mut slots = vec![(0, usize::MAX); interner.len() as usize];
        let mut text = String::new();
        interner.for_each(|name, id| {
            let id = id as usize;
            if id >= slots.len() {
                slots.resize(id + 1, (0, usize::MAX));
            }
            let start = text.len();
            text.push_str(name);
            slots[id] = (start, text.len());
        });
        let visible = slots.iter().position(|s| s.1 == usize::MAX).unwrap_or(slots.len());
        slots.truncate(visible);
        Names { text, spans: slots }
    }

    fn len(&self) -> u32 {
        self.spans.len() as u32
    }

    fn encode(&self, out: &mut Vec<u8>) {
        for &(start, end) in &self.spans {
            out.put_str(&self.text[start..end]);
        }
    }
}

/// An item's name and its (ts, category), as captured.
type CapturedItem = (Box<str>, Option<(i64, u32)>);

/// The item table in id order, cut at the first id not visible yet.
fn capture_items(shop: &ShopIndex) -> Vec<CapturedItem> {
    let mut slots: Vec<Option<CapturedItem>> = Vec::new();
    for (name, id) in shop.items.names() {
        let id = id as usize;
        if id >= slots.len() {
            slots.resize_with(id + 1, || None);
        }
        let category = shop.items.facts(id as u32, |info| info.category).flatten();
        slots[id] = Some((name, category));
    }
    slots.into_iter().map_while(|s| s).collect()
}

/// How many of a shard's slots belong to visitors `0..visitors`.
fn slots_below(shard: usize, visitors: u32) -> usize {
    let visitors = visitors as usize;
    if visitors <= shard {
        0
    } else {
        ((visitors - 1 - shard) >> SHARD_BITS) + 1
    }
}

/// Dictionary sizes a profile's ids must stay below.
#[derive(Debug, Clone, Copy)]
struct Limits {
    visitors: u32,
    items: u32,
    categories: u32,
    tags: u32,
}

impl Limits {
    fn keeps_entry(&self, e: &Entry) -> bool {
        e.item < self.items && (e.category == NONE || e.category < self.categories)
    }
}

/// Encodes one SHOP section's body; returns how many items it holds.
fn encode_shop(shop: &ShopIndex, out: &mut Vec<u8>) -> u32 {
    // Dictionaries first: anything they do not hold is newer than the snapshot.
    let visitors = Names::capture(&shop.visitors);
    let categories = Names::capture(&shop.categories);
    let tags = Names::capture(&shop.tags);
    let items = capture_items(shop);
    let limits = Limits {
        visitors: visitors.len(),
        items: items.len() as u32,
        categories: categories.len(),
        tags: tags.len(),
    };
    out.put_str(shop.name());
    for n in [limits.visitors, limits.categories, limits.tags, limits.items] {
        out.put_u32(n);
    }
    out.put_u8(SHARD_BITS as u8);
    for names in [&visitors, &categories, &tags] {
        let at = begin_len(out);
        names.encode(out);
        end_len(out, at);
    }
    let at = begin_len(out);
    for (name, category) in &items {
        out.put_str(name);
        match category {
            Some((ts, cat)) if *cat < limits.categories => {
                out.put_varint(u64::from(*cat) + 1);
                out.put_i64(*ts);
            }
            _ => out.put_varint(0),
        }
    }
    end_len(out, at);
    let at = begin_len(out);
    for shard in 0..SHARDS {
        // Each shard's length first, so that shards decode in parallel.
        let shard_at = begin_len(out);
        shop.with_shard(shard, |profiles| {
            let slots = profiles.len().min(slots_below(shard, limits.visitors));
            out.put_varint(slots as u64);
            for profile in &profiles[..slots] {
                encode_profile(profile, &limits, out);
            }
        });
        end_len(out, shard_at);
    }
    end_len(out, at);
    limits.items
}

fn encode_profile(p: &Profile, limits: &Limits, out: &mut Vec<u8>) {
    out.put_varint(p.entries().filter(|e| limits.keeps_entry(e)).count() as u64);
    let mut hour = 0;
    for e in p.entries().filter(|e| limits.keeps_entry(e)) {
        out.put_varint(u64::from(e.hour - hour) << 2 | u64::from(e.action));
        out.put_varint(u64::from(e.item));
        out.put_varint(if e.category == NONE {
            0
        } else {
            u64::from(e.category) + 1
        });
        hour = e.hour;
    }
    let purchases = || p.purchases().iter().filter(|b| b.item < limits.items);
    out.put_varint(purchases().count() as u64);
    for b in purchases() {
        out.put_u64(b.key);
        out.put_varint(u64::from(b.hour));
        out.put_varint(u64::from(b.item));
        out.put_f64(b.amount);
    }
    let tags = || p.tags().iter().filter(|t| t.tag < limits.tags);
    out.put_varint(tags().count() as u64);
    for t in tags() {
        out.put_varint(u64::from(t.tag));
        out.put_i64(t.ts);
        out.put_u8(u8::from(t.present));
    }
    match p.tier_state() {
        Some((ts, tier)) => {
            out.put_u8(1);
            out.put_i64(ts);
            out.put_varint(u64::from(tier));
        }
        None => out.put_u8(0),
    }
}

// ---------------------------------------------------------------- decoding

type Decoded<T> = Result<T, SnapshotError>;

/// A format error at `r`'s offset in the payload.
fn malformed(r: &Reader<'_>, what: &'static str) -> SnapshotError {
    r.error(what).into()
}

/// A varint that fits a `u32`, else `what`.
fn u32v(r: &mut Reader<'_>, what: &'static str) -> Decoded<u32> {
    let v = r.varint()?;
    u32::try_from(v).map_err(|_| malformed(r, what))
}

/// A varint that must be below `limit`, else `what`.
fn id(r: &mut Reader<'_>, limit: u32, what: &'static str) -> Decoded<u32> {
    match r.varint()? {
        v if v < u64::from(limit) => Ok(v as u32),
        _ => Err(malformed(r, what)),
    }
}

/// A u64-length-prefixed block, as a reader of its own.
fn block<'a>(r: &mut Reader<'a>) -> Decoded<Reader<'a>> {
    let n = r.u64()?;
    if n > r.remaining() as u64 {
        return Err(malformed(r, "block runs past the end of the payload"));
    }
    Ok(r.sub(n as usize)?)
}

fn section<'a>(r: &mut Reader<'a>) -> Decoded<(u8, Reader<'a>)> {
    let kind = r.u8()?;
    Ok((kind, block(r)?))
}

fn decode_names(mut r: Reader<'_>, count: u32, duplicate: &'static str) -> Decoded<Interner> {
    let mut names = Vec::with_capacity(count as usize);
    // At most the block's length: the arenas reserved for it are bounded by the input.
    let mut bytes = 0usize;
    for _ in 0..count {
        let name = r.str()?;
        bytes += name.len();
        names.push(name);
    }
    r.finish()?;
    Interner::from_names_sized(names.into_iter(), bytes).map_err(|_| malformed(&r, duplicate))
}

fn decode_items<'a>(mut r: Reader<'a>, limits: &Limits) -> Decoded<(Vec<&'a str>, Vec<ItemInfo>)> {
    let mut names = Vec::with_capacity(limits.items as usize);
    let mut infos = Vec::with_capacity(limits.items as usize);
    for id in 0..limits.items {
        names.push(r.str()?);
        let category = match r.varint()? {
            0 => None,
            c if c <= u64::from(limits.categories) => Some((r.i64()?, (c - 1) as u32)),
            _ => return Err(malformed(&r, "item category out of range")),
        };
        infos.push(ItemInfo {
            id,
            category,
            buys: [(0, 0); POPULARITY_DAYS],
            price: None,
        });
    }
    r.finish()?;
    Ok((names, infos))
}

fn decode_profiles(mut r: Reader<'_>, limits: &Limits) -> Decoded<Vec<Vec<Profile>>> {
    let mut shards = Vec::with_capacity(SHARDS);
    let mut parsed = Parsed::default();
    for shard in 0..SHARDS {
        parsed.clear();
        parse_profiles(&mut r, shard, limits, &mut parsed)?;
        shards.push(parsed.build());
    }
    r.finish()?;
    Ok(shards)
}

/// `slots varint | profile*`: one shard's profiles, read into `out`.
fn parse_profiles(r: &mut Reader<'_>, shard: usize, limits: &Limits, out: &mut Parsed) -> Decoded<()> {
    // An empty profile takes 4 bytes.
    let slots = r.count(4)?;
    if slots > slots_below(shard, limits.visitors) {
        return Err(malformed(r, "profile of an unknown visitor"));
    }
    out.profiles.reserve(slots);
    for _ in 0..slots {
        parse_profile(r, limits, out)?;
    }
    Ok(())
}

/// The profiles of one shard (version 2's block, to `r`'s end), read.
fn parse_shard(mut r: Reader<'_>, shard: usize, limits: &Limits, out: &mut Parsed) -> Decoded<()> {
    out.clear();
    parse_profiles(&mut r, shard, limits, out)?;
    Ok(r.finish()?)
}

/// Shards the helper thread reads, of [`SHARDS`]: reading a profile (its
/// varints and checks) costs about twice building it (its allocations and
/// packing), and the main thread builds every shard, so it reads only the
/// last quarter itself.
const HELPED_SHARDS: usize = SHARDS * 3 / 4;

/// Read shards the helper may hold ahead of the main thread's building.
const PARSED_AHEAD: usize = 4;

/// Version 2's profiles block, `block(shard)` per shard, read on two
/// threads and built on one.
///
/// Only the main thread allocates profiles: the helper reads the first
/// [`HELPED_SHARDS`] shards into flat lists ([`Parsed`]) and hands them
/// over, the main thread reads the rest and builds every shard. The
/// huge-pages restart runs malloc with a single arena (`arena_max=1`), and
/// two threads allocating a million profiles fought over its lock: ~80,000
/// futex calls, 0.58 s where the same work took 0.38 s with an arena each.
///
/// The error reported is the first failing shard's, as when one thread read
/// them all: a shard the helper did not get to (it stops at its first
/// error, or died) is read here, unless an earlier shard failed.
fn decode_framed_profiles(mut r: Reader<'_>, limits: &Limits) -> Decoded<Vec<Vec<Profile>>> {
    let mut blocks = Vec::with_capacity(SHARDS);
    for _ in 0..SHARDS {
        blocks.push(block(&mut r)?);
    }
    r.finish()?;
    let mut built: Vec<Option<Decoded<Vec<Profile>>>> = (0..SHARDS).map(|_| None).collect();
    // This thread's lists: its own shards, then any the helper left.
    let mut own = Parsed::default();
    std::thread::scope(|s| {
        let (parsed_tx, parsed_rx) = std::sync::mpsc::sync_channel::<(usize, Decoded<Parsed>)>(PARSED_AHEAD);
        let (spare_tx, spare_rx) = std::sync::mpsc::channel::<Parsed>();
        let helped = &blocks[..HELPED_SHARDS];
        let helper = std::thread::Builder::new()
            .name("snapshot-profiles".into())
            .spawn_scoped(s, move || {
                for (shard, &r) in helped.iter().enumerate() {
                    let mut parsed = spare_rx.try_recv().unwrap_or_default();
                    let read = parse_shard(r, shard, limits, &mut parsed).map(|()| parsed);
                    let failed = read.is_err();
                    if parsed_tx.send((shard, read)).is_err() || failed {
                        return;
                    }
                }
            });
        // Builds a shard the helper read, and hands its lists back.
        let take = |built: &mut [Option<Decoded<Vec<Profile>>>], (shard, read): (usize, Decoded<Parsed>)| {
            built[shard] = Some(read.map(|parsed| {
                let profiles = parsed.build();
                let _ = spare_tx.send(parsed);
                profiles
            }));
        };
        for (shard, &r) in blocks.iter().enumerate().skip(HELPED_SHARDS) {
            built[shard] = Some(parse_shard(r, shard, limits, &mut own).map(|()| own.build()));
            while let Ok(parsed) = parsed_rx.try_recv() {
                take(&mut built, parsed);
            }
        }
        if let Ok(helper) = helper {
            // Until the helper is done (or gone: its sender drops).
            for parsed in parsed_rx.iter() {
                take(&mut built, parsed);
            }
            // Joined here, a helper that panicked does not take the decode
            // with it: the shards it left are read below.
            let _ = helper.join();
        }
    });
    let mut shards = Vec::with_capacity(SHARDS);
    for (shard, (built, &r)) in built.into_iter().zip(&blocks).enumerate() {
        let profiles = match built {
            Some(profiles) => profiles?,
            // The helper did not read it (no thread, or it died).
            None => parse_shard(r, shard, limits, &mut own).map(|()| own.build())?,
        };
        shards.push(profiles);
    }
    Ok(shards)
}

/// Whether `keys`, sorted in place, are all distinct.
fn distinct(keys: &mut [u64]) -> bool {
    keys.sort_unstable();
    keys.windows(2).all(|w| w[0] != w[1])
}

/// Profiles as read, not yet built: every profile's entries, purchases and
/// tags in three flat lists, and where each profile's part of them ends.
/// Reading allocates only when the lists grow; building a profile allocates
/// its blocks ([`Parsed::build`]).
#[derive(Default)]
struct Parsed {
    entries: Vec<Entry>,
    purchases: Vec<Purchase>,
    tags: Vec<TagState>,
    profiles: Vec<ParsedProfile>,
    /// Scratch of the repeated-key checks.
    keys: Vec<u64>,
}

/// One profile of a [`Parsed`]: where its entries, purchases and tags end, and its tier.
struct ParsedProfile {
    entries: usize,
    purchases: usize,
    tags: usize,
    tier: Option<(i64, u32)>,
}

impl Parsed {
    fn clear(&mut self) {
        self.entries.clear();
        self.purchases.clear();
        self.tags.clear();
        self.profiles.clear();
    }

    /// The profiles, in the order read.
    fn build(&self) -> Vec<Profile> {
        let mut profiles = Vec::with_capacity(self.profiles.len());
        let (mut entries, mut purchases, mut tags) = (0, 0, 0);
        for p in &self.profiles {
            let mut profile = Profile::default();
            profile.set_entries(self.entries.get(entries..p.entries).unwrap_or_default());
            profile.set_purchases(self.purchases.get(purchases..p.purchases).unwrap_or_default().to_vec());
            profile.set_tags(self.tags.get(tags..p.tags).unwrap_or_default().to_vec());
            profile.set_tier_state(p.tier);
            (entries, purchases, tags) = (p.entries, p.purchases, p.tags);
            profiles.push(profile);
        }
        profiles
    }
}

/// Reads one profile into `out`.
fn parse_profile(r: &mut Reader<'_>, limits: &Limits, out: &mut Parsed) -> Decoded<()> {
    let n = r.count(3)?;
    out.entries.reserve(n);
    let mut hour = 0u64;
    let mut previous: Option<Entry> = None;
    for _ in 0..n {
        let head = r.varint()?;
        hour += head >> 2;
        // No event's clock hour comes near: a larger one is no index's.
        if hour > u64::from(MAX_ENTRY_HOUR) {
            return Err(malformed(r, "entry hour out of range"));
        }
        let entry = Entry {
            hour: hour as u32,
            action: (head & 3) as u8,
            item: id(r, limits.items, "entry item out of range")?,
            category: match r.varint()? {
                0 => NONE,
                c if c <= u64::from(limits.categories) => (c - 1) as u32,
                _ => return Err(malformed(r, "entry category out of range")),
            },
        };
        if previous.is_some_and(|p| p >= entry) {
            return Err(malformed(r, "entries not sorted or repeated"));
        }
        previous = Some(entry);
        out.entries.push(entry);
    }
    let n = r.count(18)?;
    let first = out.purchases.len();
    out.purchases.reserve(n);
    for _ in 0..n {
        let key = r.u64()?;
        let hour = u32v(r, "purchase hour out of range")?;
        let item = id(r, limits.items, "purchase item out of range")?;
        let amount = r.f64()?;
        if !(amount.is_finite() && amount >= 0.0) {
            return Err(malformed(r, "purchase amount is not a finite non-negative number"));
        }
        out.purchases.push(Purchase {
            key,
            hour,
            item,
            amount,
        });
    }
    out.keys.clear();
    out.keys.extend(out.purchases[first..].iter().map(|p| p.key));
    if !distinct(&mut out.keys) {
        return Err(malformed(r, "purchase key repeated"));
    }
    let n = r.count(10)?;
    let first = out.tags.len();
    out.tags.reserve(n);
    for _ in 0..n {
        let tag = id(r, limits.tags, "tag out of range")?;
        let ts = r.i64()?;
        let present = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(malformed(r, "tag presence is not 0 or 1")),
        };
        out.tags.push(TagState { tag, ts, present });
    }
    out.keys.clear();
    out.keys.extend(out.tags[first..].iter().map(|t| u64::from(t.tag)));
    if !distinct(&mut out.keys) {
        return Err(malformed(r, "tag repeated"));
    }
    let tier = match r.u8()? {
        0 => None,
        1 => {
            let ts = r.i64()?;
            Some((ts, u32v(r, "tier out of range")?))
        }
        _ => return Err(malformed(r, "tier flag is not 0 or 1")),
    };
    out.profiles.push(ParsedProfile {
        entries: out.entries.len(),
        purchases: out.purchases.len(),
        tags: out.tags.len(),
        tier,
    });
    Ok(())
}

fn decode_shop(mut r: Reader<'_>, version: u32) -> Decoded<ShopIndex> {
    let name = r.str()?;
    let visitors = r.u32()?;
    let categories = r.u32()?;
    let tags = r.u32()?;
    let items = r.u32()?;
    if u32::from(r.u8()?) != SHARD_BITS {
        return Err(malformed(&r, "profile shard layout differs from this build's"));
    }
    let limits = Limits {
        visitors,
        items,
        categories,
        tags,
    };
    let (visitor_block, category_block, tag_block) = (block(&mut r)?, block(&mut r)?, block(&mut r)?);
    let (item_block, profile_block) = (block(&mut r)?, block(&mut r)?);
    r.finish()?;
    // Every name takes at least a byte, every item two: bound the counts
    // before anything is sized by them.
    for (count, block, per) in [
        (visitors, &visitor_block, 1),
        (categories, &category_block, 1),
        (tags, &tag_block, 1),
        (items, &item_block, 2),
    ] {
        if count as usize > block.remaining() / per {
            return Err(malformed(block, "count exceeds the bytes of its block"));
        }
    }

    let mut shop = ShopIndex::new(name);
    shop.categories = decode_names(category_block, categories, "duplicate category")?;
    shop.tags = decode_names(tag_block, tags, "duplicate tag")?;
    let item_at = item_block.offset();
    let (item_names, mut item_infos) = decode_items(item_block, &limits)?;
    // The two largest parts on two threads: the visitor dictionary (a hash
    // map of every visitor id) and the profiles with everything derived.
    let (interned, decoded) = std::thread::scope(|s| {
        let names = move || decode_names(visitor_block, visitors, "duplicate visitor");
        let interned = std::thread::Builder::new()
            .name("snapshot-visitors".into())
            .spawn_scoped(s, names);
        let profiles = match version {
            1 => decode_profiles(profile_block, &limits),
            _ => decode_framed_profiles(profile_block, &limits),
        };
        let decoded = profiles.map(|profiles| {
            let derived = Derived::rebuild(&profiles, &mut item_infos, &limits);
            (profiles, derived)
        });
        let interned = match interned {
            Ok(thread) => thread.join().unwrap_or(Err(SnapshotError::Malformed {
                offset: 0,
                what: "visitor dictionary decoder panicked",
            })),
            // No thread to be had: do it here.
            Err(_) => names(),
        };
        (interned, decoded)
    });
    shop.visitors = interned?;
    let (profiles, derived) = decoded?;

    shop.items = ItemTable::from_parts(item_names, item_infos).map_err(|_| SnapshotError::Malformed {
        offset: item_at,
        what: "duplicate item",
    })?;
    for (lock, shard) in shop.profiles.iter_mut().zip(profiles) {
        *lock.get_mut() = shard;
    }
    derived.install(&mut shop);
    Ok(shop)
}

/// The PRICES section of `shop`, for its first `items` items (those its
/// SHOP section holds); nothing when none of them has a price.
fn encode_prices(shop: &ShopIndex, items: u32, out: &mut Vec<u8>) {
    let mut prices: Vec<(u32, i64, f64)> = Vec::new();
    shop.items.each_below(items, |info| {
        if let Some((ts, p)) = info.price {
            prices.push((info.id, ts, p));
        }
    });
    if prices.is_empty() {
        return;
    }
    prices.sort_unstable_by_key(|(id, _, _)| *id);
    let at = begin_section(out, SECTION_PRICES);
    out.put_str(shop.name());
    out.put_varint(prices.len() as u64);
    for (id, ts, price) in prices {
        out.put_varint(u64::from(id));
        out.put_i64(ts);
        out.put_f64(price);
    }
    end_len(out, at);
}

/// Reads a PRICES section into its shop (decoded before it): items known
/// and ascending, prices finite and >= 0, one section per shop.
fn decode_prices<'a>(mut r: Reader<'a>, index: &Index, priced: &mut std::collections::HashSet<&'a str>) -> Decoded<()> {
    let name = r.str()?;
    let Some(shop) = index.shops.get(name).map(|s| s.value().clone()) else {
        return Err(malformed(&r, "PRICES of a shop without a SHOP section"));
    };
    if !priced.insert(name) {
        return Err(malformed(&r, "duplicate PRICES section"));
    }
    let items = shop.items.len();
    // Each price takes at least 17 bytes.
    let count = r.count(17)?;
    if count > items as usize {
        return Err(malformed(&r, "more prices than items"));
    }
    let mut by_id: Vec<Option<(i64, f64)>> = vec![None; items as usize];
    let mut next = 0u32;
    for _ in 0..count {
        let item = id(&mut r, items, "price of an unknown item")?;
        if item < next {
            return Err(malformed(&r, "prices not in ascending item order"));
        }
        next = item + 1;
        let ts = r.i64()?;
        let price = r.f64()?;
        if !(price >= 0.0 && price.is_finite()) {
            return Err(malformed(&r, "price not a finite number >= 0"));
        }
        by_id[item as usize] = Some((ts, price));
    }
    r.finish()?;
    for (id, price) in by_id.into_iter().enumerate() {
        if let Some(price) = price {
            shop.items.update(id as u32, |info| info.price = Some(price));
        }
    }
    Ok(())
}

/// Everything an index derives from its profiles.
struct Derived {
    days: [BTreeMap<u32, RoaringBitmap>; 4],
    items: Vec<RoaringBitmap>,
    categories: Vec<DayBitmaps>,
    tags: Vec<RoaringBitmap>,
    tiers: BTreeMap<u32, RoaringBitmap>,
}

impl Derived {
    /// Bitmaps from the profiles, popularity rings from the purchases.
    ///
    /// The profiles are rows and the bitmaps columns: pushing each visitor
    /// into tens of thousands of bitmaps in turn would miss the cache on
    /// nearly every push. Instead the visitors are visited in id order and
    /// every (bitmap, visitor) pair is listed, a counting sort groups the
    /// pairs by bitmap (stable, so each group stays in visitor order), and
    /// each bitmap is built from its sorted groups in sequential passes
    /// ([`Grouper`]). The visitors are split in two halves at a multiple of
    /// 65,536 (a roaring container's span), each half built on its own
    /// thread in one pass over its profiles, and the halves' bitmaps joined:
    /// their containers are disjoint, so joining moves them.
    fn rebuild(shards: &[Vec<Profile>], items: &mut [ItemInfo], limits: &Limits) -> Derived {
        let split = (limits.visitors / 2) & !0xffff;
        let (low, high) = if split == 0 {
            (Part::build(shards, 0..limits.visitors, limits), None)
        } else {
            std::thread::scope(|s| {
                let high = || Part::build(shards, split..limits.visitors, limits);
                let thread = std::thread::Builder::new()
                    .name("snapshot-bitmaps".into())
                    .spawn_scoped(s, high);
                let low = Part::build(shards, 0..split, limits);
                // No thread to be had (or it died): do it here.
                let high = match thread {
                    Ok(thread) => thread.join().unwrap_or_else(|_| high()),
                    Err(_) => high(),
                };
                (low, Some(high))
            })
        };
        let mut d = Derived {
            days: Default::default(),
            items: low.items,
            categories: vec![DayBitmaps::default(); limits.categories as usize],
            tags: low.tags,
            tiers: low.tiers,
        };
        let mut days: std::collections::HashMap<u64, RoaringBitmap, RandomState> =
            low.keys.into_iter().zip(low.sets).collect();
        for &(item, day) in &low.buys {
            items[item as usize].add_buy(day);
        }
        if let Some(high) = high {
            for (mine, theirs) in d
                .items
                .iter_mut()
                .chain(d.tags.iter_mut())
                .zip(high.items.into_iter().chain(high.tags))
            {
                *mine |= theirs;
            }
            for (tier, set) in high.tiers {
                *d.tiers.entry(tier).or_default() |= set;
            }
            for (key, set) in high.keys.into_iter().zip(high.sets) {
                *days.entry(key).or_default() |= set;
            }
            for &(item, day) in &high.buys {
                items[item as usize].add_buy(day);
            }
        }
        for (key, set) in days {
            let (day, action) = ((key as u32) >> 2, (key & 3) as usize);
            if (key >> 32) as u32 == NONE {
                d.days[action].insert(day, set);
            } else {
                d.categories[(key >> 32) as usize][action].insert(day, set);
            }
        }
        d
    }

    fn install(self, shop: &mut ShopIndex) {
        shop.days = self.days.map(RwLock::new);
        shop.item_visitors = non_empty(self.items);
        shop.tag_visitors = non_empty(self.tags);
        let categories = DashMap::with_hasher(RandomState::default());
        for (id, days) in self.categories.into_iter().enumerate() {
            if days.iter().any(|d| !d.is_empty()) {
                categories.insert(id as u32, days);
            }
        }
        shop.category_days = categories;
        shop.tier_visitors = RwLock::new(self.tiers);
    }
}

/// The bitmaps of a range of visitors, and their purchases (item, day).
struct Part {
    items: Vec<RoaringBitmap>,
    /// Keys of the day and category bitmaps (see [`Groups`]), and the bitmaps.
    keys: Vec<u64>,
    sets: Vec<RoaringBitmap>,
    tags: Vec<RoaringBitmap>,
    tiers: BTreeMap<u32, RoaringBitmap>,
    buys: Vec<(u32, u32)>,
}

impl Part {
    /// One pass over the profiles of `vids`: each visitor lists every item,
    /// day and category bitmap it belongs to once.
    fn build(shards: &[Vec<Profile>], vids: std::ops::Range<u32>, limits: &Limits) -> Part {
        let visitors = || {
            vids.clone().filter_map(|vid| {
                let p = shards[vid as usize & (SHARDS - 1)].get((vid >> SHARD_BITS) as usize)?;
                Some((vid, p))
            })
        };
        let item_count = limits.items as usize;
        let mut part = Part {
            items: Vec::new(),
            keys: Vec::new(),
            sets: Vec::new(),
            tags: vec![RoaringBitmap::new(); limits.tags as usize],
            tiers: BTreeMap::new(),
            buys: Vec::new(),
        };
        let mut item_grouper = Grouper::new(item_count);
        // Per item, the last visitor listed.
        let mut last = vec![u32::MAX; item_count];
        // Group ids: one per distinct key category << 32 | day << 2 | action
        // (category NONE: the day bitmaps).
        let mut groups = Groups::new(visitors(), limits.categories);
        let mut day_grouper = Grouper::new(0);
        for (vid, p) in visitors() {
            item_grouper.visitor(vid, item_count);
            day_grouper.visitor(vid, part.keys.len());
            for e in p.entries() {
                if let Some(l) = last.get_mut(e.item as usize).filter(|l| **l != vid) {
                    *l = vid;
                    item_grouper.push(e.item, vid);
                }
                let (day, action) = (e.hour / 24, u32::from(e.action));
                for category in [NONE, e.category] {
                    if let Some(group) = groups.first_for(category, day, action, vid, &mut part.keys) {
                        day_grouper.push(group, vid);
                    }
                    if e.category == NONE {
                        break;
                    }
                }
            }
            part.buys.extend(p.purchases().iter().map(|b| (b.item, b.hour / 24)));
            for t in p.tags().iter().filter(|t| t.present) {
                part.tags[t.tag as usize].push_last(vid);
            }
            if p.tier() > 0 {
                part.tiers.entry(p.tier()).or_default().push_last(vid);
            }
        }
        part.items = item_grouper.finish(item_count);
        part.sets = day_grouper.finish(part.keys.len());
        part
    }
}

/// Most cells of the dense table [`Groups`] uses (16 MiB of them): past
/// it, a hash map.
const DENSE_GROUP_CELLS: usize = 1 << 22;

/// Group ids of (category, day, action) keys, and which visitor listed each
/// last, so that each visitor lists a group once: a dense table over the
/// categories (plus none) x the days the entries span x 4 actions when that
/// is small (every index a 400-day retention leaves), else a hash map.
enum Groups {
    Dense {
        /// Per cell: group id + 1 (0: none yet), and the last visitor.
        cells: Vec<(u32, u32)>,
        first_day: u32,
        days: usize,
    },
    Sparse(std::collections::HashMap<u64, (u32, u32), RandomState>),
}

impl Groups {
    fn new<'a>(visitors: impl Iterator<Item = (u32, &'a Profile)>, categories: u32) -> Groups {
        let (mut first, mut last) = (u32::MAX, 0);
        for (_, p) in visitors {
            // Entries are sorted by hour.
            if let (Some(a), Some(b)) = (p.entries().next(), p.entries().next_back()) {
                first = first.min(a.hour / 24);
                last = last.max(b.hour / 24);
            }
        }
        let days = last.saturating_sub(first) as usize + 1;
        let cells = (categories as usize + 1).saturating_mul(days).saturating_mul(4);
        if first <= last && cells <= DENSE_GROUP_CELLS {
            return Groups::Dense {
                cells: vec![(0, u32::MAX); cells],
                first_day: first,
                days,
            };
        }
        Groups::Sparse(Default::default())
    }

    /// The group of the key, when `vid` lists it for the first time; a new
    /// key gets the next id and is pushed onto `keys`.
    #[inline]
    fn first_for(&mut self, category: u32, day: u32, action: u32, vid: u32, keys: &mut Vec<u64>) -> Option<u32> {
        // Days fit in 28 bits (u32 hours / 24), so the key packs.
        let key = u64::from(category) << 32 | u64::from(day) << 2 | u64::from(action);
        let cell = match self {
            Groups::Dense { cells, first_day, days } => {
                let row = if category == NONE { 0 } else { category as usize + 1 };
                let at = (row * *days + (day - *first_day) as usize) * 4 + action as usize;
                &mut cells[at]
            }
            Groups::Sparse(map) => map.entry(key).or_insert((0, u32::MAX)),
        };
        if cell.1 == vid {
            return None;
        }
        cell.1 = vid;
        if cell.0 == 0 {
            keys.push(key);
            cell.0 = keys.len() as u32;
        }
        Some(cell.0 - 1)
    }
}

/// Pairs [`Grouper`] gathers before it sorts them into its bitmaps (2 MiB
/// of them, or the group count when larger, so that a flush's pass over
/// the groups is paid for): small enough to stay in the cache.
const GROUPER_PAIRS: usize = 1 << 20;

/// One bitmap per group from (group, id) pairs listed in ascending id
/// order, built a run of visitors at a time: the pairs of a run are grouped
/// by a stable counting sort and each group's ids appended to its bitmap in
/// one sequential pass. Runs of a few hundred thousand pairs keep the
/// counting sort's scattered writes in the cache, where grouping all the
/// pairs at once would miss it on nearly every write (and hold them all).
struct Grouper {
    bitmaps: Vec<RoaringBitmap>,
    /// The roaring container (id >> 16) of the last visitor.
    container: u32,
    /// The run's pairs, (group, id).
    pairs: Vec<(u32, u32)>,
    /// Per group, where its ids start in `ids` (counting sort scratch).
    starts: Vec<usize>,
    ids: Vec<u32>,
}

impl Grouper {
    fn new(groups: usize) -> Grouper {
        Grouper {
            bitmaps: Vec::new(),
            container: u32::MAX,
            pairs: Vec::with_capacity(GROUPER_PAIRS.max(groups) + 1024),
            starts: Vec::new(),
            ids: Vec::new(),
        }
    }

    /// Called before the pairs of visitor `id` (ascending; `groups`: the
    /// groups so far): once the run is long enough, sorts it into the
    /// bitmaps where `id` starts a roaring container, so that each
    /// container is built whole by one append (grown piece by piece
    /// across runs, the containers' reallocations interleave and fragment
    /// the heap: 408 against 379 MB of RSS after a 1M-visitor restart).
    #[inline]
    fn visitor(&mut self, id: u32, groups: usize) {
        if id >> 16 != self.container {
            self.container = id >> 16;
            if self.pairs.len() >= GROUPER_PAIRS.max(groups) {
                self.flush(groups);
            }
        }
    }

    #[inline]
    fn push(&mut self, group: u32, id: u32) {
        self.pairs.push((group, id));
    }

    /// Appends the run's ids to their groups' bitmaps; `groups` is above
    /// every group pushed.
    fn flush(&mut self, groups: usize) {
        if self.bitmaps.len() < groups {
            self.bitmaps.resize_with(groups, RoaringBitmap::new);
        }
        let starts = &mut self.starts;
        starts.clear();
        starts.resize(groups + 1, 0);
        for &(group, _) in &self.pairs {
            starts[group as usize + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        self.ids.clear();
        self.ids.resize(self.pairs.len(), 0);
        // Stable: each group's ids stay in ascending order. `starts[g]`
        // ends at the start of group g + 1.
        for &(group, id) in &self.pairs {
            let at = &mut starts[group as usize];
            self.ids[*at] = id;
            *at += 1;
        }
        let mut from = 0;
        for (bitmap, &end) in self.bitmaps.iter_mut().zip(starts.iter()) {
            let ids = &self.ids[from..end];
            if !ids.is_empty() && bitmap.append(ids.iter().copied()).is_err() {
                // Not ascending (no caller lists so): insert them one by one.
                bitmap.extend(ids.iter().copied());
            }
            from = end;
        }
        self.pairs.clear();
    }

    /// Every group's bitmap, `0..groups`.
    fn finish(mut self, groups: usize) -> Vec<RoaringBitmap> {
        self.flush(groups);
        self.bitmaps
    }
}

/// Appends the largest id so far to a bitmap (a repeat is a no-op).
trait PushLast {
    fn push_last(&mut self, id: u32);
}

impl PushLast for RoaringBitmap {
    #[inline]
    fn push_last(&mut self, id: u32) {
        // Visitors come in id order: only a repeat of the last id is refused.
        let _ = self.try_push(id);
    }
}

fn non_empty(bitmaps: Vec<RoaringBitmap>) -> DashMap<u32, RoaringBitmap, RandomState> {
    let map = DashMap::with_hasher(RandomState::default());
    for (id, b) in bitmaps.into_iter().enumerate() {
        if !b.is_empty() {
            map.insert(id as u32, b);
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::atomic::Ordering;

    use proptest::prelude::*;

    use super::*;
    use crate::event::{Action, Event};
    use crate::hash::SplitMix64;
    use crate::time::hour_of;
    use crate::{audience_sizes, decide, size_of, DecideRequest, IndexStats, MemoryLedger, RuleSet};

    const HOUR: i64 = 3_600_000;
    const DAY: i64 = 24 * HOUR;
    /// Noon UTC, 2026-11-10.
    const T0: i64 = 20_767 * DAY + 12 * HOUR;

    /// The streams' draws: the workspace's generator, reduced by modulo as
    /// these tests always have, so that a seed names the stream it always
    /// named. (With other draws, `roundtrip_after_expire_keeps_decisions_and_sizes`
    /// meets a popularity-ring slot of an expired purchase that the live
    /// index keeps and a restored one does not: invisible to decisions.)
    struct Rng(SplitMix64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0.next_u64() % n
        }
    }

    /// A random stream over two shops: every action, purchases with and
    /// without ids, events without a category, out of order (45 days around
    /// `T0`, a few older than the 400-day retention), one in ten re-delivered.
    /// With `unique_ids`, purchase ids never collide, so the final state does
    /// not depend on the order events are applied in.
    fn stream(seed: u64, n: usize, visitors: u64, items: u64, unique_ids: bool) -> Vec<Event<'static>> {
        let mut rng = Rng(SplitMix64::new(seed));
        let mut events: Vec<Event<'static>> = Vec::with_capacity(n + n / 10);
        for i in 0..n {
            let action = match rng.below(20) {
                0..=9 => Action::View,
                10 | 11 => Action::Cart,
                12 => Action::Favorite,
                13 | 14 => Action::Purchase,
                15 => Action::Tag,
                16 => Action::Untag,
                _ => Action::Member,
            };
            let ts = if rng.below(40) == 0 {
                T0 - 410 * DAY - rng.below(DAY as u64) as i64
            } else {
                T0 - rng.below(45 * DAY as u64) as i64 + 2 * HOUR
            };
            let item = rng.below(items);
            let shop = if rng.below(4) == 0 { "b" } else { "a" };
            let mut e = Event::new(shop, format!("v{}", rng.below(visitors)), action, ts);
            match action {
                Action::View | Action::Cart | Action::Favorite | Action::Purchase => {
                    e.item = Some(Cow::Owned(format!("i{item}")));
                    if rng.below(6) != 0 {
                        e.category = Some(Cow::Owned(format!("c{}", (item + rng.below(2)) % (4 + items / 6))));
                    }
                    if action == Action::Purchase {
                        e.price = rng.below(20_000) as f64 / 100.0;
                        e.quantity = 1 + rng.below(3) as u32;
                        if rng.below(2) == 0 {
                            let id = if unique_ids {
                                format!("p{seed}-{i}")
                            } else {
                                format!("p{}", rng.below(40))
                            };
                            e.id = Some(Cow::Owned(id));
                        }
                    }
                }
                Action::Tag | Action::Untag => {
                    e.tag = Some(Cow::Owned(format!("t{}", rng.below(3 + items / 12))));
                    // Coarse timestamps, so that tag and untag tie now and then.
                    e.ts = ts - ts % DAY;
                }
                Action::Member => {
                    e.tier = rng.below(6) as u32;
                    e.ts = ts - ts % DAY;
                }
            }
            if rng.below(10) == 0 && !events.is_empty() {
                let again = events[rng.below(events.len() as u64) as usize].clone();
                events.push(again);
            }
            events.push(e);
        }
        events
    }

    fn build(events: &[Event<'_>]) -> Index {
        let index = Index::new();
        for e in events {
            index.apply(e);
        }
        index
    }

    fn rules(shop: &str) -> RuleSet {
        let text = format!(
            r#"shop: {shop}
audiences:
  viewers: viewed(7d)
  recent_cart: carted(12h)
  cat_fan: viewed(30d, category="c1") and not purchased(30d)
  item_fan: favorited(30d, item="i2") or carted(20h, item="i3")
  buyer: purchase_count(30d) >= 2 or spend(30d) >= 100
  non_buyer: spend(45d) < 50
  vip: member_tier >= 3
  tagged: tag("t0") and not tag("t1")
  lapsed: visited(400d) and not visited(30d)
banners:
  - when: vip
    banner: b-vip
  - when: cat_fan
    banner: b-cat
  - when: item_fan or recent_cart
    banner: b-item
  - banner: default
items:
  limit: 5
  exclude_purchased: 30d
  pools:
    - when: buyer
      items: [i0, i1, i2, i3]
    - items: [i4, i5, i6, i7, i8, i9, i10, i11]
benefits:
  - id: coupon
    when: tagged
    kind: coupon
    params: {{ amount: "5" }}
"#
        );
        RuleSet::load(&text).unwrap()
    }

    /// Every fact of a shop, keyed by names instead of ids, bitmaps included
    /// (empty ones left out): equal models mean equal indexes up to ids.
    #[derive(Debug, PartialEq)]
    struct Model {
        profiles: BTreeMap<String, ProfileModel>,
        items: BTreeMap<String, ItemModel>,
        days: BTreeMap<(usize, u32), BTreeSet<String>>,
        item_visitors: BTreeMap<String, BTreeSet<String>>,
        category_days: BTreeMap<(String, usize, u32), BTreeSet<String>>,
        tags: BTreeMap<String, BTreeSet<String>>,
        tiers: BTreeMap<u32, BTreeSet<String>>,
        /// Item -> (ts, price bits) of its known price.
        prices: BTreeMap<String, (i64, u64)>,
    }

    /// (ts, category) and popularity ring.
    type ItemModel = (Option<(i64, String)>, [(u32, u32); POPULARITY_DAYS]);

    #[derive(Debug, Default, PartialEq)]
    struct ProfileModel {
        entries: BTreeSet<(u32, u8, String, Option<String>)>,
        purchases: BTreeMap<u64, (u32, String, u64)>,
        tags: BTreeMap<String, (i64, bool)>,
        tier: Option<(i64, u32)>,
    }

    fn names(interner: &Interner) -> BTreeMap<u32, String> {
        let mut names = BTreeMap::new();
        interner.for_each(|name, id| {
            names.insert(id, name.to_string());
        });
        names
    }

    fn model(shop: &ShopIndex) -> Model {
        let visitors = names(&shop.visitors);
        let categories = names(&shop.categories);
        let tags = names(&shop.tags);
        let items: BTreeMap<u32, String> = shop.items.iter().map(|p| (p.value().id, p.key().to_string())).collect();
        let set = |b: &RoaringBitmap| b.iter().map(|v| visitors[&v].clone()).collect::<BTreeSet<_>>();
        let mut profiles = BTreeMap::new();
        for (&id, name) in &visitors {
            let p = shop.with_profile(id, |p| {
                let Some(p) = p else { return ProfileModel::default() };
                ProfileModel {
                    entries: p
                        .entries()
                        .map(|e| {
                            let cat = (e.category != NONE).then(|| categories[&e.category].clone());
                            (e.hour, e.action, items[&e.item].clone(), cat)
                        })
                        .collect(),
                    purchases: p
                        .purchases()
                        .iter()
                        .map(|b| (b.key, (b.hour, items[&b.item].clone(), b.amount.to_bits())))
                        .collect(),
                    tags: p
                        .tags()
                        .iter()
                        .map(|t| (tags[&t.tag].clone(), (t.ts, t.present)))
                        .collect(),
                    tier: p.tier_state(),
                }
            });
            profiles.insert(name.clone(), p);
        }
        let mut m = Model {
            profiles,
            items: shop
                .items
                .iter()
                .map(|p| {
                    let info = p.value();
                    let cat = info.category.map(|(ts, c)| (ts, categories[&c].clone()));
                    (p.key().to_string(), (cat, info.buys))
                })
                .collect(),
            days: BTreeMap::new(),
            item_visitors: BTreeMap::new(),
            category_days: BTreeMap::new(),
            tags: BTreeMap::new(),
            tiers: BTreeMap::new(),
            prices: shop
                .items
                .iter()
                .filter_map(|p| p.value().price.map(|(ts, v)| (p.key().to_string(), (ts, v.to_bits()))))
                .collect(),
        };
        for (action, days) in shop.days.iter().enumerate() {
            for (day, b) in days.read().iter().filter(|(_, b)| !b.is_empty()) {
                m.days.insert((action, *day), set(b));
            }
        }
        for p in shop.item_visitors.iter().filter(|p| !p.value().is_empty()) {
            m.item_visitors.insert(items[p.key()].clone(), set(p.value()));
        }
        for p in shop.category_days.iter() {
            for (action, days) in p.value().iter().enumerate() {
                for (day, b) in days.iter().filter(|(_, b)| !b.is_empty()) {
                    m.category_days
                        .insert((categories[p.key()].clone(), action, *day), set(b));
                }
            }
        }
        for p in shop.tag_visitors.iter().filter(|p| !p.value().is_empty()) {
            m.tags.insert(tags[p.key()].clone(), set(p.value()));
        }
        for (tier, b) in shop.tier_visitors.read().iter().filter(|(_, b)| !b.is_empty()) {
            m.tiers.insert(*tier, set(b));
        }
        m
    }

    /// Decisions (explained) for every visitor, an unknown and an anonymous
    /// one, and every audience size, at several instants.
    fn answers(index: &Index, shop: &str, visitors: u64) -> Vec<String> {
        let rules = rules(shop);
        let s = index.shop(shop);
        let ledger = MemoryLedger::new();
        let mut out = Vec::new();
        for now in [T0, T0 + 5 * HOUR, T0 + 20 * DAY, T0 + 400 * DAY] {
            let mut names: Vec<String> = (0..visitors).map(|v| format!("v{v}")).collect();
            names.extend(["nobody".to_string(), String::new()]);
            for visitor in &names {
                let req = DecideRequest {
                    visitor,
                    explain: true,
                    now_ms: now,
                    ..DecideRequest::default()
                };
                out.push(format!(
                    "{visitor}@{now}: {:?}",
                    decide(&rules, s.as_deref(), &ledger, &req)
                ));
            }
            out.push(format!(
                "{:?}",
                audience_sizes(&rules, s.as_deref(), &crate::claims::MemoryLedger::new(), now)
            ));
            for expr in [
                "viewed(3h, item=\"i1\")",
                "purchased(10d, category=\"c2\")",
                "not tag(\"t2\")",
            ] {
                out.push(format!(
                    "{expr}: {:?}",
                    size_of(
                        Some(&rules),
                        s.as_deref(),
                        &crate::claims::MemoryLedger::new(),
                        expr,
                        now
                    )
                ));
            }
        }
        out
    }

    fn shops(index: &Index) -> Vec<String> {
        let mut names: Vec<String> = index.shops().iter().map(|s| s.name().to_string()).collect();
        names.sort();
        names
    }

    fn assert_same(a: &Index, b: &Index, visitors: u64) {
        assert_eq!(shops(a), shops(b));
        for name in shops(a) {
            let (sa, sb) = (a.shop(&name).unwrap(), b.shop(&name).unwrap());
            assert_eq!(sa.stats(), sb.stats(), "stats of shop {name}");
            assert_eq!(model(&sa), model(&sb), "shop {name}");
            assert_eq!(answers(a, &name, visitors), answers(b, &name, visitors), "shop {name}");
        }
    }

    proptest::proptest! {
        #![proptest_config(vitrine_testkit::config(3))]

        /// Any stream: the failing seed is kept in `proptest-regressions/`.
        #[test]
        fn roundtrip_restores_every_fact_decision_size_and_stat(seed in proptest::prelude::any::<u64>()) {
            let index = build(&stream(seed, 4_000, 80, 12, false));
            let bytes = encode(&index, b"offsets");
            let snapshot = decode(&bytes).unwrap();
            assert_eq!(snapshot.meta, b"offsets");
            assert_same(&index, &snapshot.index, 80);
            // Ids too: the encoding of the decoded index is byte for byte the same.
            assert_eq!(encode(&snapshot.index, b"offsets"), bytes, "seed {seed}");
            // And the decoded index keeps working: new events intern new ids.
            let more = stream(seed.wrapping_add(100), 500, 120, 16, false);
            for e in &more {
                index.apply(e);
                snapshot.index.apply(e);
            }
            assert_same(&index, &snapshot.index, 120);
        }
    }

    /// Entries over the whole range of event instants (the bitmaps' groups
    /// outgrow the dense table: the hash map path) and entries too wide for
    /// 8 bytes (3,000 categories) restore every fact, bitmap and decision.
    #[test]
    fn roundtrip_of_wide_entries_and_a_sparse_day_range() {
        // Categories past 2047 first, so later entries of every visitor do not fit 8 bytes.
        let mut events: Vec<Event<'static>> = (0..2_100)
            .map(|k| Event {
                item: Some(Cow::Borrowed("filler")),
                category: Some(Cow::Owned(format!("fill-{k}"))),
                ..Event::new("a", "filler", Action::View, T0 - k)
            })
            .collect();
        events.extend(stream(11, 1_500, 30, 6, false));
        for (i, e) in events.iter_mut().enumerate().skip(2_100) {
            if e.action.is_behavior() {
                if i % 3 == 0 {
                    e.ts = [0, crate::event::MAX_TS, 1_000 * DAY][i % 9 / 3];
                }
                if i % 5 == 0 {
                    e.category = Some(Cow::Owned(format!("wide-{i}")));
                }
            }
        }
        let index = build(&events);
        let a = index.shop("a").unwrap();
        assert!(a.categories.len() > 2_047, "{} categories", a.categories.len());
        let bytes = encode(&index, b"");
        let snapshot = decode(&bytes).unwrap();
        assert_same(&index, &snapshot.index, 30);
        assert_eq!(encode(&snapshot.index, b""), bytes);
    }

    #[test]
    fn peek_meta_reads_the_meta_from_a_prefix() {
        let index = build(&stream(3, 2_000, 40, 8, false));
        let bytes = encode(&index, b"position 42");
        assert_eq!(peek_meta(&bytes[..HEADER_LEN + 9 + 11]).unwrap(), b"position 42");
        assert_eq!(peek_meta(&bytes).unwrap(), b"position 42");
        // Too short for the meta, a damaged header, not a snapshot: errors.
        assert!(peek_meta(&bytes[..HEADER_LEN + 9 + 10]).is_err());
        let mut flipped = bytes.clone();
        flipped[17] ^= 1;
        assert_eq!(peek_meta(&flipped), Err(SnapshotError::HeaderChecksum));
        assert_eq!(peek_meta(b"VTRN"), Err(SnapshotError::TooShort { len: 4 }));
    }

    #[test]
    fn roundtrip_after_expire_keeps_decisions_and_sizes() {
        let index = build(&stream(7, 4_000, 80, 12, false));
        index.expire(T0 + 30 * DAY);
        let snapshot = decode(&encode(&index, &[])).unwrap();
        assert_eq!(encode(&snapshot.index, &[]), encode(&index, &[]));
        for name in shops(&index) {
            let (live, loaded) = (index.shop(&name).unwrap(), snapshot.index.shop(&name).unwrap());
            let (mut live_model, loaded_model) = (model(&live), model(&loaded));
            // Item bitmaps are candidate filters a live index never expires;
            // rebuilt, they only hold visitors with surviving entries.
            for (item, visitors) in &loaded_model.item_visitors {
                assert!(visitors.is_subset(&live_model.item_visitors[item]), "{item}");
            }
            live_model.item_visitors = loaded_model.item_visitors.clone();
            assert_eq!(live_model, loaded_model, "shop {name}");
            assert_eq!(answers(&index, &name, 80), answers(&snapshot.index, &name, 80));
        }
    }

    #[test]
    fn empty_index_roundtrips() {
        let bytes = encode(&Index::new(), b"m");
        assert_eq!(bytes.len(), HEADER_LEN + 1 + 8 + 1);
        let snapshot = decode(&bytes).unwrap();
        assert!(snapshot.index.shops().is_empty());
        assert_eq!(snapshot.meta, b"m");
        let shop_only = Index::new();
        shop_only.shop_or_create("empty");
        let snapshot = decode(&encode(&shop_only, &[])).unwrap();
        assert_eq!(snapshot.index.shop("empty").unwrap().stats(), IndexStats::default());
    }

    /// Ids assigned after the dictionaries were copied (here: an id reserved
    /// but not yet visible) cut the dictionary there, and every fact that
    /// refers to a later id is left out: it came from an event applied after
    /// the snapshot started, which replay applies again.
    #[test]
    fn facts_about_ids_newer_than_the_snapshot_are_left_out() {
        let index = Index::new();
        let ev = |visitor: &str, item: &str, category: &str| Event {
            item: Some(Cow::Owned(item.into())),
            category: Some(Cow::Owned(category.into())),
            ..Event::new("a", visitor.to_owned(), Action::View, T0)
        };
        index.apply(&ev("v0", "i0", "c0"));
        index.apply(&ev("v1", "i0", "c0"));
        let shop = index.shop("a").unwrap();
        // A writer has taken id 2 of each dictionary but not published it yet.
        shop.visitors.next.fetch_add(1, Ordering::Relaxed);
        shop.categories.next.fetch_add(1, Ordering::Relaxed);
        shop.items.next.fetch_add(1, Ordering::Relaxed);
        index.apply(&ev("v0", "i3", "c0")); // a newer item in an old profile
        index.apply(&ev("v1", "i0", "c3")); // a newer category in an old profile
        index.apply(&ev("v3", "i0", "c0")); // a newer visitor
        let loaded = decode(&encode(&index, &[])).unwrap().index;
        let loaded = loaded.shop("a").unwrap();
        assert_eq!(loaded.visitor_count(), 2);
        assert_eq!(loaded.visitor_id("v3"), None);
        assert!(loaded.item("i3").is_none());
        assert_eq!(loaded.categories.get("c3"), None);
        let m = model(&loaded);
        let entry = |item: &str| (hour_of(T0), 0, item.to_string(), Some("c0".to_string()));
        assert_eq!(m.profiles["v0"].entries, BTreeSet::from([entry("i0")]));
        assert_eq!(m.profiles["v1"].entries, BTreeSet::from([entry("i0")]));
        assert_eq!(loaded.stats().day_entries, 2);
    }

    /// The documented guarantee: a snapshot encoded while writers apply the
    /// rest of the log, loaded and followed by a replay of that rest (from
    /// the offset taken before encoding), equals applying the whole log.
    #[test]
    fn snapshot_during_writes_plus_replay_equals_the_whole_log() {
        // The rest of the log brings new visitors, items, categories and tags too.
        let before = stream(11, 8_000, 200, 12, true);
        let rest = stream(12, 16_000, 400, 36, true);
        let events: Vec<Event<'_>> = before.iter().chain(&rest).cloned().collect();
        let whole = build(&events);
        let live = build(&before);
        let snapshots = std::thread::scope(|s| {
            let (a, b) = rest.split_at(rest.len() / 2);
            for half in [a, b] {
                let live = &live;
                s.spawn(move || {
                    for e in half {
                        live.apply(e);
                    }
                });
            }
            (0..4).map(|_| encode(&live, &[])).collect::<Vec<_>>()
        });
        assert_same(&live, &whole, 400);
        for bytes in &snapshots {
            let loaded = decode(bytes).unwrap().index;
            for e in &rest {
                loaded.apply(e);
            }
            assert_same(&loaded, &whole, 400);
        }
    }

    // ------------------------------------------------------------ damage

    fn small() -> Vec<u8> {
        encode(&build(&stream(5, 300, 20, 12, false)), b"meta")
    }

    /// A version 2 profiles block of `SHARDS` shards, empty but for the
    /// `bad` ones (one profile whose entry's hour is out of range), and
    /// where each shard's block starts.
    fn profiles_block(bad: &[usize]) -> (Vec<u8>, Vec<usize>) {
        let mut out = Vec::new();
        let mut starts = Vec::new();
        for shard in 0..SHARDS {
            let at = begin_len(&mut out);
            starts.push(at);
            if bad.contains(&shard) {
                out.put_varint(1); // slots
                out.put_varint(1); // entries
                out.put_varint((u64::from(MAX_ENTRY_HOUR) + 1) << 2);
                out.extend_from_slice(&[0; 8]);
            } else {
                out.put_varint(0);
            }
            end_len(&mut out, at);
        }
        (out, starts)
    }

    #[test]
    fn the_first_failing_shard_is_reported_whichever_thread_reads_it() {
        let limits = Limits {
            visitors: 1 << 20,
            items: 1,
            categories: 0,
            tags: 0,
        };
        let (helped, own) = (HELPED_SHARDS - 1, HELPED_SHARDS + 1);
        for bad in [
            vec![3],
            vec![own],
            vec![3, own],
            vec![0, 3],
            vec![helped, own],
            vec![own, SHARDS - 1],
        ] {
            let (block, starts) = profiles_block(&bad);
            let Err(SnapshotError::Malformed { offset, what }) = decode_framed_profiles(Reader::new(&block), &limits)
            else {
                panic!("shards {bad:?} are damaged: the block must be refused");
            };
            assert_eq!(what, "entry hour out of range", "{bad:?}");
            let first = bad[0];
            assert!(
                (starts[first]..starts.get(first + 1).copied().unwrap_or(block.len())).contains(&offset),
                "shards {bad:?}: the error at {offset} is not in shard {first}'s block"
            );
        }
        let (block, _) = profiles_block(&[]);
        let shards = decode_framed_profiles(Reader::new(&block), &limits).unwrap();
        assert_eq!(shards.len(), SHARDS);
    }

    #[test]
    fn every_truncation_and_extension_is_rejected() {
        let bytes = small();
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "truncated to {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            decode(&longer).unwrap_err(),
            SnapshotError::Length {
                expected: (bytes.len() - HEADER_LEN) as u64,
                found: (bytes.len() + 1 - HEADER_LEN) as u64
            }
        );
    }

    #[test]
    fn every_bit_flip_is_rejected() {
        let mut bytes = small();
        for i in 0..bytes.len() * 8 {
            bytes[i / 8] ^= 1 << (i % 8);
            assert!(decode(&bytes).is_err(), "bit {i} flipped");
            bytes[i / 8] ^= 1 << (i % 8);
        }
        assert!(decode(&bytes).is_ok());
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let msg = |bytes: &[u8]| decode(bytes).unwrap_err().to_string();
        assert_eq!(msg(b"VTRN"), "not a snapshot: 4 bytes, shorter than the 32-byte header");
        let mut bytes = small();
        bytes[0] = b'X';
        assert_eq!(msg(&bytes), "not a snapshot: bad magic bytes");
        let mut bytes = small();
        bytes[20] ^= 1;
        assert_eq!(msg(&bytes), "snapshot header is damaged: checksum mismatch");
        let mut bytes = small();
        bytes[8] = 3;
        let crc = crc32fast::hash(&bytes[..28]);
        bytes[28..32].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            msg(&bytes),
            "snapshot format version 3 is not supported (this build reads versions 1 to 2)"
        );
        let mut bytes = small();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x10;
        assert!(
            msg(&bytes).starts_with("snapshot payload is damaged: CRC-32 0x"),
            "{}",
            msg(&bytes)
        );
    }

    /// A shop's zone survives the round trip in its ZONE section; a UTC
    /// shop has none, so an index of UTC shops encodes as before zones.
    #[test]
    fn zones_roundtrip_and_utc_needs_no_section() {
        let events = stream(11, 2_000, 40, 8, false);
        let (utc, zoned) = (Index::new(), Index::new());
        let kathmandu = crate::time::Zone::get("Asia/Kathmandu").unwrap();
        for e in &events {
            utc.apply(e);
            zoned.apply_in(e, || kathmandu.clone());
        }
        let plain = encode(&utc, b"m");
        assert!(!plain.windows(14).any(|w| w == b"Asia/Kathmandu"));
        let bytes = encode(&zoned, b"m");
        assert!(bytes.windows(14).any(|w| w == b"Asia/Kathmandu"));
        let loaded = decode(&bytes).unwrap();
        for name in shops(&zoned) {
            assert_eq!(loaded.index.shop(&name).unwrap().zone(), &kathmandu, "{name}");
            assert!(decode(&plain).unwrap().index.shop(&name).unwrap().zone().is_utc());
            assert_eq!(answers(&zoned, &name, 40), answers(&loaded.index, &name, 40));
        }
        assert_eq!(encode(&loaded.index, b"m"), bytes);
    }

    #[test]
    fn zone_sections_are_checked() {
        let index = Index::new();
        index.shop_or_create_in("a", || crate::time::Zone::get("Asia/Shanghai").unwrap());
        let bytes = encode(&index, &[]);
        let with = |extra: &[(u8, &str, &str)]| {
            let mut out = bytes.clone();
            for (kind, shop, zone) in extra {
                let at = begin_section(&mut out, *kind);
                if *kind == SECTION_ZONE {
                    out.put_str(shop);
                    out.put_str(zone);
                } else {
                    encode_shop(&ShopIndex::new(shop), &mut out);
                }
                end_len(&mut out, at);
            }
            reseal(&mut out);
            match decode(&out) {
                Err(SnapshotError::Malformed { what, .. }) => what,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            with(&[(SECTION_ZONE, "b", "Asia/Shanghai")]),
            "ZONE section for a shop the snapshot does not hold"
        );
        assert_eq!(with(&[(SECTION_ZONE, "a", "Mars/Base")]), "unknown time zone");
        assert_eq!(with(&[(SECTION_ZONE, "a", "UTC")]), "duplicate ZONE section");
        assert_eq!(with(&[(SECTION_SHOP, "c", "")]), "SHOP section after a ZONE section");
    }

    /// Offset in the payload of the first shop's visitor count.
    fn visitor_count_at(bytes: &[u8]) -> usize {
        let meta_len = u64::from_le_bytes(bytes[HEADER_LEN + 1..HEADER_LEN + 9].try_into().unwrap()) as usize;
        let shop = HEADER_LEN + 9 + meta_len + 9;
        shop + 1 + bytes[shop] as usize
    }

    #[test]
    fn absurd_counts_are_refused_before_allocating() {
        let bytes = small();
        let at = visitor_count_at(&bytes);
        for (offset, value) in [(0, u32::MAX), (4, u32::MAX - 1), (8, 1 << 30), (12, u32::MAX)] {
            let mut forged = bytes.clone();
            forged[at + offset..at + offset + 4].copy_from_slice(&value.to_le_bytes());
            seal(&mut forged);
            assert!(
                matches!(decode(&forged), Err(SnapshotError::Malformed { .. })),
                "count at +{offset}"
            );
        }
        // A block length near u64::MAX.
        let mut forged = bytes.clone();
        forged[at + 17..at + 25].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
        seal(&mut forged);
        assert_eq!(
            decode(&forged).unwrap_err(),
            SnapshotError::Malformed {
                offset: at + 17 - HEADER_LEN + 8,
                what: "block runs past the end of the payload"
            }
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Random bit flips, with or without a truncation: always an error, never a panic.
        #[test]
        fn damaged_snapshots_are_rejected(
            flips in prop::collection::vec((any::<prop::sample::Index>(), 0..8u8), 0..6),
            cut in prop::option::of(any::<prop::sample::Index>()),
        ) {
            let mut bytes = small();
            for (at, bit) in &flips {
                let i = at.index(bytes.len());
                bytes[i] ^= 1 << bit;
            }
            let changed = bytes != small();
            if let Some(cut) = cut {
                let len = cut.index(bytes.len());
                bytes.truncate(len);
            }
            if changed || cut.is_some() {
                prop_assert!(decode(&bytes).is_err());
            }
        }

        /// Damage with the checksums recomputed (a forgery, or a bug on the
        /// writing side): the structural checks alone never panic, and
        /// whatever they accept is a working index.
        #[test]
        fn forged_payloads_never_panic(muts in vitrine_testkit::mutations()) {
            let mut bytes = small();
            vitrine_testkit::apply(&mut bytes, &muts, HEADER_LEN);
            seal(&mut bytes);
            if let Ok(snapshot) = decode(&bytes) {
                for shop in snapshot.index.shops() {
                    let _ = shop.stats();
                    let _ = answers(&snapshot.index, shop.name(), 20);
                }
                let again = encode(&snapshot.index, &snapshot.meta);
                prop_assert!(decode(&again).is_ok());
            }
        }
    }

    /// A PRICES section (kind 4) with these prices for `shop`.
    fn prices_section(shop: &str, prices: &[(u64, i64, f64)]) -> Vec<u8> {
        let mut body = Vec::new();
        body.put_str(shop);
        body.put_varint(prices.len() as u64);
        for (item, ts, price) in prices {
            body.put_varint(*item);
            body.put_i64(*ts);
            body.put_f64(*price);
        }
        let mut out = vec![SECTION_PRICES];
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Item prices survive a snapshot; a snapshot without PRICES loads with
    /// none; every defect of a PRICES section is named.
    #[test]
    fn prices_roundtrip_and_damaged_prices_sections_are_refused() {
        let index = Index::new();
        for (item, action, price, ts) in [
            ("i0", Action::View, 12.5, T0),
            ("i0", Action::Cart, 11.0, T0 - HOUR),
            ("i1", Action::View, 0.0, T0),
            ("i2", Action::Purchase, 30.0, T0),
        ] {
            let e = Event {
                item: Some(item.into()),
                price,
                ..Event::new("s", "v", action, ts)
            };
            index.apply(&e);
        }
        let shop = index.shop("s").unwrap();
        assert_eq!(
            ["i0", "i1", "i2"].map(|i| shop.item_price(i)),
            [Some(12.5), None, Some(30.0)]
        );
        let bytes = encode(&index, b"");
        let back = decode(&bytes).unwrap().index.shop("s").unwrap();
        assert_eq!(
            ["i0", "i1", "i2"].map(|i| back.item_price(i)),
            [Some(12.5), None, Some(30.0)]
        );
        // Without its PRICES section (as every older snapshot): no prices.
        let plain = {
            let without = Index::new();
            without.apply(&Event {
                item: Some("i0".into()),
                ..Event::new("s", "v", Action::View, T0)
            });
            encode(&without, b"")
        };
        assert_eq!(decode(&plain).unwrap().index.shop("s").unwrap().item_price("i0"), None);
        let with = |sections: &[Vec<u8>]| {
            let mut b = plain.clone();
            for s in sections {
                b.extend_from_slice(s);
            }
            reseal(&mut b);
            b
        };
        let what = |bytes: &[u8]| match decode(bytes) {
            Err(SnapshotError::Malformed { what, .. }) => what,
            other => panic!("expected a malformed snapshot, got {other:?}"),
        };
        let ok = prices_section("s", &[(0, T0, 1.0)]);
        assert_eq!(
            decode(&with(std::slice::from_ref(&ok)))
                .unwrap()
                .index
                .shop("s")
                .unwrap()
                .item_price("i0"),
            Some(1.0)
        );
        assert_eq!(
            what(&with(&[prices_section("t", &[])])),
            "PRICES of a shop without a SHOP section"
        );
        assert_eq!(what(&with(&[ok.clone(), ok.clone()])), "duplicate PRICES section");
        assert_eq!(
            what(&with(&[prices_section("s", &[(1, T0, 1.0)])])),
            "price of an unknown item"
        );
        assert_eq!(
            what(&with(&[prices_section("s", &[(0, T0, -1.0)])])),
            "price not a finite number >= 0"
        );
        assert_eq!(
            what(&with(&[prices_section("s", &[(0, T0, f64::NAN)])])),
            "price not a finite number >= 0"
        );
        assert_eq!(
            what(&with(&[prices_section("s", &[(0, T0, 1.0), (0, T0, 2.0)])])),
            "more prices than items"
        );
        let mut section = plain.clone();
        section.drain(..HEADER_LEN);
        let meta_len = 9;
        let shop_section = section.split_off(meta_len);
        assert_eq!(
            what(&with(&[ok, shop_section])),
            "a SHOP section after a PRICES section"
        );
    }

    /// The same snapshot in format version 1: every SHOP section's profiles
    /// block without the per-shard lengths of version 2 (the only difference).
    fn to_v1(v2: &[u8]) -> Vec<u8> {
        let (version, payload) = open(v2).unwrap();
        assert_eq!(version, 2);
        let mut out = v2[..HEADER_LEN].to_vec();
        let mut r = Reader::new(payload);
        while !r.is_empty() {
            let (kind, mut body) = section(&mut r).unwrap();
            let at = begin_section(&mut out, kind);
            if kind == SECTION_SHOP {
                let name = body.str().unwrap();
                out.put_str(name);
                out.extend_from_slice(body.bytes(4 * 4 + 1).unwrap());
                for _ in 0..4 {
                    let mut b = block(&mut body).unwrap();
                    out.put_u64(b.remaining() as u64);
                    out.extend_from_slice(b.rest());
                }
                let mut profiles = block(&mut body).unwrap();
                let shards_at = begin_len(&mut out);
                for _ in 0..SHARDS {
                    out.extend_from_slice(block(&mut profiles).unwrap().rest());
                }
                assert!(profiles.is_empty() && body.is_empty());
                end_len(&mut out, shards_at);
            } else {
                out.extend_from_slice(body.rest());
            }
            end_len(&mut out, at);
        }
        out[8..12].copy_from_slice(&1u32.to_le_bytes());
        reseal(&mut out);
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        /// Version 1 snapshots (written before the per-shard lengths) still
        /// load, to the same index as version 2, which is what loading
        /// writes back.
        #[test]
        fn version_1_loads_as_version_2(seed in proptest::prelude::any::<u64>()) {
            let index = build(&stream(seed, 3_000, 150, 12, false));
            let v2 = encode(&index, b"offsets");
            let v1 = to_v1(&v2);
            prop_assert_eq!(v1.len(), v2.len() - 8 * SHARDS * shops(&index).len());
            let old = decode(&v1).unwrap();
            assert_eq!(old.meta, b"offsets");
            assert_same(&index, &old.index, 150);
            prop_assert_eq!(encode(&old.index, b"offsets"), v2);
        }
    }

    /// Offset of the first shop's profiles block (its length field) in a snapshot.
    fn profiles_block_at(bytes: &[u8]) -> usize {
        let mut at = visitor_count_at(bytes) + 4 * 4 + 1;
        for _ in 0..4 {
            at += 8 + u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        }
        at
    }

    #[test]
    fn damaged_shard_lengths_are_refused() {
        let bytes = small();
        let at = profiles_block_at(&bytes) + 8;
        let first = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        // A shard's length one short, one long, past the block, and zero.
        for len in [first - 1, first + 1, u64::MAX - 7, 0] {
            let mut forged = bytes.clone();
            forged[at..at + 8].copy_from_slice(&len.to_le_bytes());
            seal(&mut forged);
            assert!(
                matches!(decode(&forged), Err(SnapshotError::Malformed { .. })),
                "shard length {len}"
            );
        }
        // The same bytes as version 1 are not a valid version 1 profiles block.
        let mut forged = bytes.clone();
        forged[8..12].copy_from_slice(&1u32.to_le_bytes());
        reseal(&mut forged);
        assert!(matches!(decode(&forged), Err(SnapshotError::Malformed { .. })));
        // Damage in a shard of each thread's half: the error names the lower
        // shard's, whichever thread finishes first.
        let shard_at = |k: usize| {
            let mut at = at;
            for _ in 0..k {
                at += 8 + u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
            }
            at
        };
        let (low, high) = (shard_at(3), shard_at(SHARDS / 2 + 5));
        let mut forged = bytes.clone();
        // Slot counts no shard can have.
        forged[low + 8] = 0x7f;
        forged[high + 8] = 0x7f;
        reseal(&mut forged);
        let error = |bytes: &[u8]| match decode(bytes) {
            Err(SnapshotError::Malformed { offset, what }) => (offset + HEADER_LEN, what),
            other => panic!("{other:?}"),
        };
        let (offset, what) = error(&forged);
        assert!((low..high).contains(&offset), "{offset} not in {low}..{high}");
        assert_eq!(what, "a count larger than the bytes that follow");
        forged[low + 8] = bytes[low + 8];
        reseal(&mut forged);
        let (offset, _) = error(&forged);
        assert!(offset > high, "{offset} <= {high}");
    }

    #[test]
    fn grouper_runs_build_the_same_bitmaps_as_one_sort() {
        // Runs end at visitor boundaries once GROUPER_PAIRS pairs wait;
        // groups appear as they come (days) and repeat across runs.
        let mut grouper = Grouper::new(0);
        let mut want: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); 7];
        let mut rng = Rng(SplitMix64::new(17));
        for vid in 0..(3 * GROUPER_PAIRS as u32 / 4 + 11) {
            grouper.visitor(vid, 7);
            let mut groups: Vec<u32> = (0..1 + rng.below(3)).map(|_| rng.below(7) as u32).collect();
            groups.sort_unstable();
            groups.dedup();
            for g in groups {
                grouper.push(g, vid);
                want[g as usize].insert(vid);
            }
        }
        let got = grouper.finish(8);
        assert_eq!(got.len(), 8);
        for (g, set) in want.iter().enumerate() {
            assert!(got[g].iter().eq(set.iter().copied()), "group {g}");
        }
        assert!(got[7].is_empty());
    }
}

#[cfg(test)]
#[path = "snapshot_attack.rs"]
mod attack;
