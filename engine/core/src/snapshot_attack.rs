//! Version 2's profiles block under attack: `decode_framed_profiles` (the
//! shards read on two threads, built on one) against a one-thread reference
//! written here from `parse_shard`/`Parsed::build` over the shards in
//! order. Random valid blocks of every shape (profiles spread evenly, all in
//! the helper's shards, all in the decoding thread's, one giant shard, none)
//! decode to the same profiles; damaged ones (bit flips, truncations and
//! extensions inside one shard's block, huge counts, a valid block in the
//! wrong shard, damaged lengths) fail with the same error, the first
//! failing shard's. Version 1's path reads the same shards to the same
//! profiles. A child process that cannot start threads decodes the same.

use super::*;
use crate::event::{Action, Event};
use crate::hash::SplitMix64;

/// Profiles decoded, as bytes (`encode_profile`): `Profile` has no `==`.
type Canon = Vec<Vec<u8>>;

fn canon(shards: &[Vec<Profile>], limits: &Limits) -> Canon {
    shards
        .iter()
        .map(|shard| {
            let mut out = Vec::new();
            out.put_varint(shard.len() as u64);
            for p in shard {
                encode_profile(p, limits, &mut out);
            }
            out
        })
        .collect()
}

/// The one-thread decode of a version 2 profiles block: every shard's
/// length, then each shard read and built in order, the first error out.
fn reference(bytes: &[u8], limits: &Limits) -> Decoded<Canon> {
    let mut r = Reader::new(bytes);
    let mut blocks = Vec::new();
    for _ in 0..SHARDS {
        blocks.push(block(&mut r)?);
    }
    r.finish()?;
    let mut shards = Vec::new();
    let mut parsed = Parsed::default();
    for (shard, r) in blocks.into_iter().enumerate() {
        parse_shard(r, shard, limits, &mut parsed)?;
        shards.push(parsed.build());
    }
    Ok(canon(&shards, limits))
}

fn framed(bytes: &[u8], limits: &Limits) -> Decoded<Canon> {
    decode_framed_profiles(Reader::new(bytes), limits).map(|shards| canon(&shards, limits))
}

/// Version 1's profiles block (the bodies back to back), decoded.
fn unframed(bodies: &[Vec<u8>], limits: &Limits) -> Decoded<Canon> {
    let bytes: Vec<u8> = bodies.concat();
    decode_profiles(Reader::new(&bytes), limits).map(|shards| canon(&shards, limits))
}

/// `block(shard)` for each body.
fn frame(bodies: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for body in bodies {
        out.put_u64(body.len() as u64);
        out.extend_from_slice(body);
    }
    out
}

/// Where each shard's block (its length field) starts in `frame(bodies)`,
/// and the end.
fn starts(bodies: &[Vec<u8>]) -> Vec<usize> {
    let mut at = vec![0];
    for body in bodies {
        at.push(at[at.len() - 1] + 8 + body.len());
    }
    at
}

struct Rng(SplitMix64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0.next_u64() % n.max(1)
    }
}

/// One valid profile of up to `size` entries (purchases, tags a few).
fn profile(rng: &mut Rng, limits: &Limits, size: u64, out: &mut Vec<u8>) {
    let entries = rng.below(size + 1);
    out.put_varint(entries);
    for k in 0..entries {
        // Each entry an hour after the previous: sorted, never repeated.
        let delta = if k == 0 { rng.below(1 << 20) } else { 1 + rng.below(40) };
        out.put_varint(delta << 2 | rng.below(4));
        out.put_varint(rng.below(u64::from(limits.items)));
        out.put_varint(rng.below(u64::from(limits.categories) + 1));
    }
    let purchases = rng.below(size / 4 + 2);
    out.put_varint(purchases);
    let key = rng.below(1 << 60);
    for k in 0..purchases {
        out.put_u64(key + k * 7919);
        out.put_varint(rng.below(1 << 24));
        out.put_varint(rng.below(u64::from(limits.items)));
        out.put_f64(rng.below(100_000) as f64 / 100.0);
    }
    let tags = rng.below(u64::from(limits.tags) + 1);
    out.put_varint(tags);
    for tag in 0..tags {
        out.put_varint(tag);
        out.put_i64(rng.0.next_u64() as i64 >> 8);
        out.put_u8(rng.below(2) as u8);
    }
    if rng.below(3) == 0 {
        out.put_u8(1);
        out.put_i64(rng.below(1 << 40) as i64);
        out.put_varint(rng.below(1 << 32));
    } else {
        out.put_u8(0);
    }
}

/// How a random block spreads its profiles over the shards.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// A few profiles in every shard.
    Even,
    /// Every profile in the helper's shards (`..HELPED_SHARDS`).
    Helper,
    /// Every profile in the decoding thread's shards.
    Own,
    /// One shard holds large profiles, the others at most one small one.
    Giant,
    /// No profile at all.
    Empty,
}

const LAYOUTS: [Layout; 5] = [Layout::Even, Layout::Helper, Layout::Own, Layout::Giant, Layout::Empty];

/// A random valid block's shard bodies and the limits they obey.
fn bodies(seed: u64, layout: Layout) -> (Vec<Vec<u8>>, Limits) {
    let mut rng = Rng(SplitMix64::new(seed));
    let per_shard = [2u32, 8, 300][rng.below(3) as usize];
    let limits = Limits {
        // Some shards hold one slot more than the others.
        visitors: per_shard * SHARDS as u32 + rng.below(SHARDS as u64) as u32,
        items: 1 + rng.below(300) as u32,
        categories: rng.below(20) as u32,
        tags: rng.below(6) as u32,
    };
    let giant = rng.below(SHARDS as u64) as usize;
    let bodies = (0..SHARDS)
        .map(|shard| {
            let most = slots_below(shard, limits.visitors) as u64;
            let (slots, size) = match layout {
                Layout::Even => (rng.below(4), 6),
                Layout::Helper if shard < HELPED_SHARDS => (rng.below(most + 1), 12),
                Layout::Own if shard >= HELPED_SHARDS => (rng.below(most + 1), 12),
                Layout::Giant if shard == giant => (most, 40),
                Layout::Giant => (rng.below(2), 2),
                _ => (0, 0),
            };
            let slots = slots.min(most);
            let mut out = Vec::new();
            out.put_varint(slots);
            for _ in 0..slots {
                profile(&mut rng, &limits, size, &mut out);
            }
            out
        })
        .collect();
    (bodies, limits)
}

/// A damage done to one shard's body.
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// One bit flipped (may still read).
    Flip,
    /// Cut short (never reads).
    Truncate,
    /// A byte more (never reads: trailing bytes).
    Extend,
    /// A slot count no shard can have (never reads).
    HugeSlots,
    /// One profile whose entry count exceeds the bytes (never reads).
    HugeEntries,
    /// Another shard's valid body (fails when it has more slots than this one can).
    Moved,
}

const DAMAGES: [Damage; 6] = [
    Damage::Flip,
    Damage::Truncate,
    Damage::Extend,
    Damage::HugeSlots,
    Damage::HugeEntries,
    Damage::Moved,
];

impl Damage {
    fn always_fails(self) -> bool {
        !matches!(self, Damage::Flip | Damage::Moved)
    }

    /// Damages `bodies[shard]`; `Moved` takes the body of another shard of `from`.
    fn apply(self, rng: &mut Rng, from: &[Vec<u8>], bodies: &mut [Vec<u8>], shard: usize) {
        let body = &mut bodies[shard];
        match self {
            Damage::Flip if body.is_empty() => body.push(rng.below(256) as u8),
            Damage::Flip => {
                let bit = rng.below(body.len() as u64 * 8);
                body[bit as usize / 8] ^= 1 << (bit % 8);
            }
            Damage::Truncate => body.truncate(rng.below(body.len() as u64) as usize),
            Damage::Extend => body.push(rng.below(256) as u8),
            Damage::HugeSlots => {
                *body = Vec::new();
                body.put_varint(u64::MAX - rng.below(1 << 20));
            }
            Damage::HugeEntries => {
                *body = Vec::new();
                body.put_varint(1);
                body.put_varint(1 << (20 + rng.below(40)));
                body.extend_from_slice(&[0; 16]);
            }
            Damage::Moved => *body = from[rng.below(from.len() as u64) as usize].clone(),
        }
    }
}

/// The error's offset lies in shard `shard`'s block.
fn assert_in_shard(result: &Decoded<Canon>, at: &[usize], shard: usize, context: &str) {
    match result {
        Err(SnapshotError::Malformed { offset, .. }) => assert!(
            // A truncated block's error is at its end.
            (at[shard]..=at[shard + 1]).contains(offset),
            "{context}: the error at {offset} is not in shard {shard}'s block {}..={}",
            at[shard],
            at[shard + 1]
        ),
        other => panic!(
            "{context}: shard {shard} is damaged, got {:?}",
            other.as_ref().map(|_| ())
        ),
    }
}

/// Random valid blocks of every layout: the two-thread decode, the
/// one-thread reference and version 1's path give the same profiles.
#[test]
fn valid_blocks_of_every_shape_decode_as_on_one_thread() {
    for seed in 0..6u64 {
        for layout in LAYOUTS {
            let (bodies, limits) = bodies(seed, layout);
            let bytes = frame(&bodies);
            let want = reference(&bytes, &limits);
            let Ok(want) = want else {
                panic!("seed {seed}, {layout:?}: the generator wrote an invalid block: {want:?}");
            };
            assert_eq!(
                want, bodies,
                "seed {seed}, {layout:?}: profiles re-encode to their bytes"
            );
            assert_eq!(framed(&bytes, &limits), Ok(want.clone()), "seed {seed}, {layout:?}");
            assert_eq!(
                unframed(&bodies, &limits),
                Ok(want),
                "seed {seed}, {layout:?}: version 1"
            );
        }
    }
}

/// 256 empty shards: 256 empty lists of profiles.
#[test]
fn a_block_of_empty_shards_decodes_to_empty_shards() {
    let limits = Limits {
        visitors: 0,
        items: 0,
        categories: 0,
        tags: 0,
    };
    let bodies = vec![vec![0u8]; SHARDS];
    let shards = decode_framed_profiles(Reader::new(&frame(&bodies)), &limits)
        .unwrap_or_else(|e| panic!("256 empty shards are valid: {e}"));
    assert_eq!(shards.len(), SHARDS);
    assert!(shards.iter().all(Vec::is_empty));
    // No visitor: a shard with a profile is one of an unknown visitor.
    for shard in [0, HELPED_SHARDS - 1, HELPED_SHARDS, SHARDS - 1] {
        let mut bodies = bodies.clone();
        bodies[shard] = vec![1, 0, 0, 0, 0];
        let bytes = frame(&bodies);
        let result = framed(&bytes, &limits);
        assert_eq!(result, reference(&bytes, &limits));
        assert_in_shard(&result, &starts(&bodies), shard, "an unknown visitor");
    }
}

/// Damage in one to four shards on either side of the split, or in every
/// shard: the error is the reference's, the first failing shard's.
#[test]
fn damaged_shards_fail_with_the_first_failing_shards_error() {
    let mut rng = Rng(SplitMix64::new(0xa77ac6));
    for case in 0..150u64 {
        let layout = LAYOUTS[case as usize % LAYOUTS.len()];
        let (mut bodies, limits) = bodies(case, layout);
        let every = case % 30 == 0;
        let shards: Vec<usize> = if every {
            (0..SHARDS).collect()
        } else {
            // Around the split, at the ends, or anywhere.
            let near = [0, 1, HELPED_SHARDS - 1, HELPED_SHARDS, HELPED_SHARDS + 1, SHARDS - 1];
            (0..1 + rng.below(4))
                .map(|_| match rng.below(2) {
                    0 => near[rng.below(near.len() as u64) as usize],
                    _ => rng.below(SHARDS as u64) as usize,
                })
                .collect()
        };
        // The lowest shard damaged once, by a damage no body survives, fails
        // for sure (a second damage may undo the first: a truncation, then
        // an extension).
        let pristine = bodies.clone();
        let mut done: BTreeMap<usize, Vec<Damage>> = BTreeMap::new();
        for &shard in &shards {
            let damage = DAMAGES[rng.below(DAMAGES.len() as u64) as usize];
            damage.apply(&mut rng, &pristine, &mut bodies, shard);
            done.entry(shard).or_default().push(damage);
        }
        let surely = done
            .iter()
            .find(|(_, d)| d.len() == 1 && d[0].always_fails())
            .map(|(&shard, _)| shard);
        let bytes = frame(&bodies);
        let result = framed(&bytes, &limits);
        let context = format!("case {case}, {layout:?}, shards {shards:?}");
        assert_eq!(result, reference(&bytes, &limits), "{context}");
        if let Some(first) = surely {
            // No later shard's error can be reported.
            let Err(SnapshotError::Malformed { offset, .. }) = result else {
                panic!("{context}: shard {first} cannot be read, got {:?}", result.map(|_| ()));
            };
            assert!(offset <= starts(&bodies)[first + 1], "{context}: error at {offset}");
        }
        if every {
            // Every shard fails to read: the first one's error.
            let mut bodies = bodies.clone();
            for shard in 0..SHARDS {
                Damage::HugeSlots.apply(&mut rng, &[], &mut bodies, shard);
            }
            let bytes = frame(&bodies);
            let result = framed(&bytes, &limits);
            assert_eq!(result, reference(&bytes, &limits), "{context}: every shard");
            assert_in_shard(&result, &starts(&bodies), 0, "every shard");
        }
    }
}

/// One bad shard at each position, the others valid: the error is in it.
/// And a bad shard on each side of the split at every distance.
#[test]
fn one_bad_shard_anywhere_is_the_one_reported() {
    let (good, limits) = bodies(7, Layout::Even);
    for shard in 0..SHARDS {
        let mut bodies = good.clone();
        Damage::HugeEntries.apply(&mut Rng(SplitMix64::new(shard as u64)), &good, &mut bodies, shard);
        let bytes = frame(&bodies);
        let result = framed(&bytes, &limits);
        assert_eq!(result, reference(&bytes, &limits), "shard {shard}");
        assert_in_shard(&result, &starts(&bodies), shard, "one bad shard");
    }
    for (low, high) in [
        (0, SHARDS - 1),
        (HELPED_SHARDS - 1, HELPED_SHARDS),
        (5, 200),
        (191, 250),
    ] {
        let mut bodies = good.clone();
        Damage::Truncate.apply(&mut Rng(SplitMix64::new(1)), &good, &mut bodies, high);
        Damage::Extend.apply(&mut Rng(SplitMix64::new(2)), &good, &mut bodies, low);
        let bytes = frame(&bodies);
        let result = framed(&bytes, &limits);
        assert_eq!(result, reference(&bytes, &limits), "{low}, {high}");
        assert_in_shard(&result, &starts(&bodies), low, "two bad shards");
    }
}

/// Damaged framing (a shard length, a truncated or extended block, random
/// bytes anywhere): the same error as the reference, never a panic.
#[test]
fn damaged_framing_fails_like_the_reference() {
    let mut rng = Rng(SplitMix64::new(0xf4a3e));
    for case in 0..200u64 {
        let (bodies, limits) = bodies(case, LAYOUTS[case as usize % LAYOUTS.len()]);
        let mut bytes = frame(&bodies);
        let at = starts(&bodies);
        match case % 4 {
            0 => {
                let shard = rng.below(SHARDS as u64) as usize;
                let byte = at[shard] + rng.below(8) as usize;
                bytes[byte] ^= 1 << rng.below(8);
            }
            1 => bytes.truncate(rng.below(bytes.len() as u64) as usize),
            2 => bytes.push(rng.below(256) as u8),
            _ => {
                for _ in 0..1 + rng.below(6) {
                    let byte = rng.below(bytes.len() as u64) as usize;
                    bytes[byte] = rng.below(256) as u8;
                }
            }
        }
        assert_eq!(framed(&bytes, &limits), reference(&bytes, &limits), "case {case}");
    }
}

/// Whether this process can start a thread.
fn threads_start() -> bool {
    std::thread::Builder::new()
        .spawn(|| ())
        .map(|t| t.join().is_ok())
        .unwrap_or(false)
}

/// The variable telling the child process it is one.
const NO_THREADS: &str = "VITRINE_SNAPSHOT_ATTACK_NO_THREADS";

/// A small index of two shops, as events build it.
fn index() -> Index {
    let index = Index::new();
    let mut rng = Rng(SplitMix64::new(99));
    let t0: i64 = 20_767 * 86_400_000;
    for k in 0..3_000u64 {
        let action = [Action::View, Action::Cart, Action::Purchase, Action::Tag][rng.below(4) as usize];
        let shop = if rng.below(3) == 0 { "b" } else { "a" };
        let ts = t0 - rng.below(20 * 86_400_000) as i64;
        let mut e = Event::new(shop, format!("v{}", rng.below(700)), action, ts);
        if action == Action::Tag {
            e.tag = Some(format!("t{}", rng.below(4)).into());
        } else {
            e.item = Some(format!("i{}", rng.below(30)).into());
            e.category = Some(format!("c{}", rng.below(5)).into());
            if action == Action::Purchase {
                e.price = 9.5;
                e.quantity = 1;
                e.id = Some(format!("p{k}").into());
            }
        }
        index.apply(&e);
    }
    index
}

/// The decode when no thread can be started (the helper, the visitor
/// dictionary's and the bitmaps' threads all refused): every shard the
/// helper would have read is read by the decoding thread. Run in a child
/// process whose threads ask for more stack than the address space holds.
#[test]
fn decoding_without_threads_reads_every_shard() {
    if std::env::var_os(NO_THREADS).is_some() {
        assert!(!threads_start(), "the child was to start no thread");
        for seed in 0..4 {
            for layout in LAYOUTS {
                let (bodies, limits) = bodies(seed, layout);
                let bytes = frame(&bodies);
                assert_eq!(framed(&bytes, &limits), Ok(bodies), "seed {seed}, {layout:?}");
            }
            let (mut bodies, limits) = bodies(seed, Layout::Even);
            let mut rng = Rng(SplitMix64::new(seed));
            let pristine = bodies.clone();
            Damage::HugeSlots.apply(&mut rng, &pristine, &mut bodies, HELPED_SHARDS + 3);
            Damage::Truncate.apply(&mut rng, &pristine, &mut bodies, HELPED_SHARDS - 3);
            let bytes = frame(&bodies);
            let result = framed(&bytes, &limits);
            assert_eq!(result, reference(&bytes, &limits));
            assert_in_shard(&result, &starts(&bodies), HELPED_SHARDS - 3, "no threads");
        }
        let bytes = encode(&index(), b"m");
        let decoded = decode(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(encode(&decoded.index, b"m"), bytes);
        return;
    }
    let name = module_path!().split_once("::").map_or("", |(_, path)| path);
    let name = format!("{name}::decoding_without_threads_reads_every_shard");
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new(exe)
        .args([name.as_str(), "--exact", "--test-threads=1"])
        .env(NO_THREADS, "1")
        // 1 PiB of stack a thread: no thread starts (pthread_create: EAGAIN).
        .env("RUST_MIN_STACK", (1u64 << 50).to_string())
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the child failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A valid block in the wrong shard: shard 0's three profiles where only
/// two visitors can be (513 visitors: shard 0 holds slots 0..3, every
/// other shard 0..2), on either side of the split.
#[test]
fn a_valid_block_in_the_wrong_shard_is_refused() {
    let limits = Limits {
        visitors: 2 * SHARDS as u32 + 1,
        items: 1,
        categories: 0,
        tags: 0,
    };
    let mut three = vec![3u8];
    three.extend_from_slice(&[0; 12]);
    let mut good = vec![vec![0u8]; SHARDS];
    good[0] = three.clone();
    assert_eq!(framed(&frame(&good), &limits).map(|s| s[0].len()), Ok(three.len()));
    for shard in [1, HELPED_SHARDS - 1, HELPED_SHARDS, SHARDS - 1] {
        let mut bodies = good.clone();
        bodies[shard] = three.clone();
        let bytes = frame(&bodies);
        let result = framed(&bytes, &limits);
        assert_eq!(result, reference(&bytes, &limits), "shard {shard}");
        assert!(
            matches!(
                result,
                Err(SnapshotError::Malformed {
                    what: "profile of an unknown visitor",
                    ..
                })
            ),
            "shard {shard}: {:?}",
            result.map(|_| ())
        );
        assert_in_shard(&result, &starts(&bodies), shard, "the wrong shard");
    }
}
