//! The rule store: one hot-swappable rule set per shop, its revision history,
//! and the files that make both survive a restart.
//!
//! Readers (Decide, Claim, Size) take one [`ArcSwap::load`] of the shop's
//! serving revision and never wait for a writer. Writers (Push, Rollback, a
//! file edited in `--rules-dir`) validate and compile first, outside any
//! lock, then, under the store's writer mutex, assign the next revision,
//! persist it and `store()` it once. A rejected file changes nothing.
//!
//! On disk:
//! * `--rules-dir/<file>.yaml` holds each shop's serving file. A push or a
//!   rollback rewrites the file the shop serves from, and only when that file
//!   still holds this shop; otherwise it writes a new file whose name no other
//!   file has (`<shop>.yaml`, else `<shop>~N.yaml`: `~` never appears in a
//!   shop's escaped name). Written atomically ([`write_atomic`]).
//! * `--data-dir/revisions/<shop>/<revision>-<origin>-<created_ms>.yaml`
//!   keeps every accepted revision, so `List`, `Get` and `Rollback` survive
//!   restarts and a revision number never names two different files. The
//!   revision file is written first and removed again if the rule file cannot
//!   be written: a failed push leaves nothing behind.
//!
//! In memory a shop holds the text of its serving revision only; older
//! revisions are metadata, their text is read back from `data/revisions` by
//! `Get` and `Rollback`.
//!
//! Which file serves a shop is decided the same way at start-up and at every
//! poll: the files of `--rules-dir` in name order, the first valid file that
//! names a shop wins; later files naming the same shop are reported and
//! ignored. A shop whose file is broken, deleted or taken over by another
//! shop keeps serving its last revision (at start-up: the newest one in
//! `data/revisions`): a broken or deleted file is not an instruction to stop
//! serving. Each such case is reported once (a log line and a counter).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ahash::RandomState;
use arc_swap::ArcSwap;
use dashmap::DashMap;
use parking_lot::Mutex;
use vitrine_core::{RuleErrors, RuleSet};

use crate::storage::fs::{sync_dir, write_atomic};

/// The longest shop name a rule file may declare, in bytes. Fixed by the
/// file system: a shop's escaped name (up to 3 bytes per byte) plus
/// `~NN.yaml` must fit in a 255-byte file name.
pub const MAX_SHOP_BYTES: usize = 80;

/// How many alternative file names (`<shop>~1.yaml` ... ) a push tries
/// when `<shop>.yaml` belongs to another shop.
const MAX_FILE_NAME_TRIES: u32 = 99;

/// How many of a shop's newest revisions are tried when restoring it from
/// `data/revisions` (each is compiled; one that a newer engine rejects is
/// skipped).
const MAX_RESTORE_ATTEMPTS: usize = 8;

/// Reads a rule file of at most `max_bytes`, refusing anything but a
/// regular file before opening it: a FIFO would block the reader (and with
/// it start-up, the poll and every push), and a link to `/dev/zero` would
/// never end. Nothing past `max_bytes + 1` is read, whatever the file claims.
pub fn read_rule_file(path: &Path, max_bytes: usize) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind, Read};
    let not_regular = || Error::new(ErrorKind::InvalidInput, "not a regular file");
    if !fs::metadata(path)?.is_file() {
        return Err(not_regular());
    }
    let file = fs::File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(not_regular());
    }
    let mut text = String::new();
    let limit = u64::try_from(max_bytes).unwrap_or(u64::MAX).saturating_add(1);
    file.take(limit).read_to_string(&mut text)?;
    if text.len() > max_bytes {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("larger than the limit of {max_bytes} bytes (--max-rule-file-bytes)"),
        ));
    }
    Ok(text)
}

/// How a revision came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// `Rules/Push`.
    Push,
    /// `Rules/Rollback`.
    Rollback,
    /// A file in `--rules-dir` (at start-up or edited by hand).
    File,
}

impl Origin {
    /// The wire and metric label name.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Push => "push",
            Origin::Rollback => "rollback",
            Origin::File => "file",
        }
    }

    /// Reads a name written by [`Origin::as_str`].
    pub fn parse(s: &str) -> Option<Origin> {
        Some(match s {
            "push" => Origin::Push,
            "rollback" => Origin::Rollback,
            "file" => Origin::File,
            _ => return None,
        })
    }
}

/// A compiled rule set as it serves.
#[derive(Debug)]
pub struct Served {
    /// The compiled rules.
    pub rules: RuleSet,
    /// Its revision number (per shop, from 1).
    pub revision: u64,
    /// The YAML it was compiled from.
    pub content: Arc<str>,
}

/// One entry of a shop's history, without its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevisionInfo {
    /// Revision number.
    pub revision: u64,
    /// When it was accepted (ms since the epoch).
    pub created_ms: i64,
    /// How it came to be.
    pub origin: Origin,
}

impl RevisionInfo {
    /// Its file name in `data/revisions/<shop>/`.
    fn file_name(&self) -> String {
        format!(
            "{:010}-{}-{}.yaml",
            self.revision,
            self.origin.as_str(),
            self.created_ms
        )
    }

    fn parse_file_name(name: &str) -> Option<RevisionInfo> {
        let stem = name.strip_suffix(".yaml")?;
        let mut parts = stem.splitn(3, '-');
        let revision = parts.next()?.parse().ok()?;
        let origin = Origin::parse(parts.next()?)?;
        let created_ms = parts.next()?.parse().ok()?;
        Some(RevisionInfo {
            revision,
            created_ms,
            origin,
        })
    }
}

/// One revision with its text (read from `data/revisions` unless serving).
#[derive(Debug, Clone)]
pub struct Revision {
    /// Revision number.
    pub revision: u64,
    /// When it was accepted (ms since the epoch).
    pub created_ms: i64,
    /// How it came to be.
    pub origin: Origin,
    /// The file's text.
    pub content: Arc<str>,
}

/// One change of a shop's rules: what [`RuleStore::apply_change`] decides.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    /// The shop.
    pub shop: &'a str,
    /// A new file, or an earlier revision again.
    pub kind: ChangeKind<'a>,
    /// 0: any; else the revision the shop must serve for the change to apply.
    pub expected: u64,
    /// Only if the shop has no rules yet (a seed from `--rules-dir`).
    pub if_absent: bool,
    /// How the change came to be.
    pub origin: Origin,
    /// The new revision's creation time (ms).
    pub created_ms: i64,
}

/// What a change installs.
#[derive(Debug, Clone, Copy)]
pub enum ChangeKind<'a> {
    /// This rule file's text.
    Push(&'a str),
    /// The text of this earlier revision.
    Rollback(u64),
}

/// What applying a change did.
#[derive(Debug, Clone)]
pub enum Applied {
    /// A new revision serves.
    Changed(Arc<Served>),
    /// Nothing changed (`if_absent` and the shop has rules): what serves.
    Unchanged(Arc<Served>),
}

impl Applied {
    /// What serves now.
    pub fn served(self) -> Arc<Served> {
        match self {
            Applied::Changed(s) | Applied::Unchanged(s) => s,
        }
    }
}

/// What a store operation failed on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file is invalid: every error as `line:column: message`.
    #[error("{0}")]
    Invalid(RuleErrors),
    /// The file is valid but names a shop the store cannot keep.
    #[error("{0}")]
    InvalidShop(String),
    /// The shop has no rule set.
    #[error("unknown shop `{0}`")]
    UnknownShop(String),
    /// The shop has no such revision.
    #[error("shop `{shop}` has no revision {revision}")]
    UnknownRevision {
        /// The shop.
        shop: String,
        /// The revision asked for.
        revision: u64,
    },
    /// Persisting failed: nothing was swapped, nothing was left behind.
    #[error("cannot persist the rule file: {0}")]
    Io(#[from] std::io::Error),
    /// `expected_revision` was set and the shop serves another revision:
    /// nothing changed (ABORTED).
    #[error("shop `{shop}` serves revision {serving}, not the expected revision {expected}: nothing changed; read the current rules and push again")]
    RevisionMismatch {
        /// The shop.
        shop: String,
        /// The revision the caller expected.
        expected: u64,
        /// The revision serving (0: the shop has no rules).
        serving: u64,
    },
    /// `--shops` leaves the shop to another replica group (FAILED_PRECONDITION).
    #[error(
        "shop `{shop}` is not served by this replica (--shops {shops}): send it to the replica group that serves it"
    )]
    NotServed {
        /// The shop.
        shop: String,
        /// `--shops`.
        shops: String,
    },
    /// A revision's text could not be read back from `data/revisions`.
    #[error("cannot read revision {revision} of shop `{shop}`: {source}")]
    History {
        /// The shop.
        shop: String,
        /// The revision.
        revision: u64,
        /// Why.
        source: std::io::Error,
    },
    /// The rules move a shop whose index exists to another time zone
    /// (FAILED_PRECONDITION; see `crate::zones`).
    #[error(
        "shop `{shop}` cannot move from timezone {index_zone} to {rules_zone}: its index counts hours on {index_zone}'s clock and cannot be re-bucketed exactly; nothing changed. Keep `timezone: {index_zone}`, or rebuild the shop's index under the new zone (rules/README.md, \"Time zone\")"
    )]
    ZoneChange {
        /// The shop.
        shop: String,
        /// The zone its index counts hours in.
        index_zone: String,
        /// The zone the rules set.
        rules_zone: String,
    },
}

/// Checks a shop name before it names files: 1 to [`MAX_SHOP_BYTES`] bytes,
/// no control characters. The error is a user error (INVALID_ARGUMENT).
pub fn check_shop_name(shop: &str) -> Result<(), StoreError> {
    if shop.is_empty() {
        return Err(StoreError::InvalidShop("`shop` must not be empty".into()));
    }
    if shop.len() > MAX_SHOP_BYTES {
        let mut cut = 32;
        while !shop.is_char_boundary(cut) {
            cut -= 1;
        }
        return Err(StoreError::InvalidShop(format!(
            "shop `{}...` is {} bytes long; a shop name has at most {MAX_SHOP_BYTES} bytes",
            &shop[..cut],
            shop.len()
        )));
    }
    if shop.chars().any(char::is_control) {
        return Err(StoreError::InvalidShop(format!(
            "shop \"{}\" contains a control character; a shop name cannot",
            shop.escape_debug()
        )));
    }
    Ok(())
}

/// What the store has noticed in `--rules-dir` since it started; each case
/// is counted once, when first seen.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StoreCounters {
    /// Files that could not be read or compiled (each version of a file once).
    pub files_rejected: u64,
    /// Files ignored because an earlier file (by name) defines the same shop.
    pub files_duplicate: u64,
    /// Serving files deleted while their shop kept serving.
    pub files_deleted: u64,
    /// Shops served from `data/revisions` at start-up, their file broken or gone.
    pub shops_restored: u64,
    /// Cluster mode: revisions applied from the rules topic that could not be
    /// mirrored to `data/revisions` or `--rules-dir` (they serve all the same).
    pub mirror_failures: u64,
}

#[derive(Default)]
struct Counters {
    files_rejected: AtomicU64,
    files_duplicate: AtomicU64,
    files_deleted: AtomicU64,
    shops_restored: AtomicU64,
    mirror_failures: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct ShopRules {
    serving: ArcSwap<Served>,
    /// Revisions in order; also serializes writers of this shop.
    history: Mutex<ShopHistory>,
}

struct ShopHistory {
    revisions: Vec<RevisionInfo>,
    /// The next revision number: never reused within a process, even after a
    /// failed write whose revision file could not be removed.
    next: u64,
    /// The file in `--rules-dir` the shop serves from or was last written
    /// to; `None` when it serves from `data/revisions` only.
    file: Option<PathBuf>,
    /// Cluster mode: every revision's text, by revision. A rollback applied
    /// from the rules topic reads it here, never from this replica's disk,
    /// so it decides the same on every replica (`docs/cluster.md`).
    texts: HashMap<u64, Arc<str>>,
}

/// What the store last saw in one `--rules-dir` file.
struct SeenFile {
    content: Arc<str>,
    /// The shop its current content defines (`None`: broken).
    shop: Option<Box<str>>,
    /// The last shop it held validly: a push of that shop may rewrite it.
    owner: Option<Box<str>>,
    /// Already reported as a duplicate of an earlier file.
    reported_duplicate: bool,
    /// Could not be read when last seen (reported then).
    unreadable: bool,
}

/// Every shop's rule sets.
pub struct RuleStore {
    shops: DashMap<Box<str>, Arc<ShopRules>, RandomState>,
    rules_dir: PathBuf,
    revisions_dir: PathBuf,
    /// What each `--rules-dir` file held when last seen (ours or a hand edit).
    seen: Mutex<HashMap<PathBuf, SeenFile>>,
    /// Serializes every writer (push, rollback, a sync of the directory): a
    /// file read from `--rules-dir` and the revision it becomes cannot
    /// interleave with a push of the same shop, so a sync never reverts a push.
    writing: Mutex<()>,
    /// Whether the start-up sync (which restores shops from history) ran.
    started: std::sync::atomic::AtomicBool,
    counters: Counters,
    /// Bounds on a rule file (`--max-rule-file-bytes` and friends).
    limits: vitrine_core::rules::Limits,
    /// The shops this replica serves; files of others are skipped.
    served_shops: crate::cluster::shops::Shops,
    /// Cluster mode: revisions come only from the rules topic
    /// ([`RuleStore::apply_change`]); the rules directory proposes changes
    /// ([`RuleStore::scan_dir`]) instead of installing them.
    clustered: bool,
}

impl std::fmt::Debug for RuleStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleStore")
            .field("shops", &self.shops.len())
            .field("rules_dir", &self.rules_dir)
            .finish()
    }
}

/// What kind of problem a [`FileProblem`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// The file or directory could not be read.
    Unreadable,
    /// The file does not compile, or names an invalid shop.
    Invalid,
    /// An earlier file (by name) defines the same shop: this one is ignored.
    Duplicate,
    /// A serving file was deleted; its shop keeps serving.
    Deleted,
    /// A shop serves from `data/revisions`: its file is broken or gone.
    Restored,
    /// A valid file could not be installed (persisting failed).
    Failed,
}

/// A problem met while syncing `--rules-dir` (the rest of the files still load).
#[derive(Debug)]
pub struct FileProblem {
    /// The file.
    pub path: PathBuf,
    /// What is wrong, one line per error (`line:column: message` for rule errors).
    pub message: String,
    /// What kind of problem.
    pub kind: ProblemKind,
}

/// What a sync of `--rules-dir` did.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Shops whose serving revision changed, with the new revision.
    pub swapped: Vec<(String, u64)>,
    /// Files that could not be used.
    pub problems: Vec<FileProblem>,
    /// Cluster mode: the changes the directory asks for, to go through the
    /// rules topic (nothing was installed).
    pub proposals: Vec<Proposal>,
    /// Cluster mode, first scan: files that differed from the serving
    /// revision and were rewritten from it (the topic wins over a stale copy).
    pub rewritten: Vec<PathBuf>,
}

/// Cluster mode: a change a `--rules-dir` file asks for.
#[derive(Debug, Clone)]
pub struct Proposal {
    /// The file.
    pub path: PathBuf,
    /// The shop it defines.
    pub shop: String,
    /// Its text (valid).
    pub content: Arc<str>,
    /// The revision the shop served when the edit was seen (0: none), so
    /// that an edit never overwrites a push it did not see.
    pub expected: u64,
    /// A seed: only if the shop has no rules yet.
    pub if_absent: bool,
}

impl SyncReport {
    fn problem(&mut self, kind: ProblemKind, path: &Path, message: String) {
        self.problems.push(FileProblem {
            path: path.to_path_buf(),
            message,
            kind,
        });
    }
}

impl RuleStore {
    /// A store persisting to `rules_dir` and `data_dir/revisions`; loads
    /// nothing yet (see [`RuleStore::rescan`]).
    pub fn new(rules_dir: &Path, data_dir: &Path) -> RuleStore {
        RuleStore {
            shops: DashMap::default(),
            rules_dir: rules_dir.to_path_buf(),
            revisions_dir: data_dir.join("revisions"),
            seen: Mutex::new(HashMap::new()),
            writing: Mutex::new(()),
            started: std::sync::atomic::AtomicBool::new(false),
            counters: Counters::default(),
            limits: vitrine_core::rules::Limits::default(),
            served_shops: crate::cluster::shops::Shops::all(),
            clustered: false,
        }
    }

    /// The same store, holding only `shops` (`--shops`): rule files of
    /// other shops are skipped.
    pub fn with_shops(mut self, shops: crate::cluster::shops::Shops) -> RuleStore {
        self.served_shops = shops;
        self
    }

    /// The same store in cluster mode: it starts empty, takes revisions only
    /// from [`RuleStore::apply_change`] (the rules topic, in log order), and
    /// never reads history from `data/revisions` (the topic holds it).
    pub fn clustered(mut self) -> RuleStore {
        self.clustered = true;
        self
    }

    /// Whether the first rescan of `--rules-dir` ran.
    pub fn scanned(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    /// Whether the store is in cluster mode.
    pub fn is_clustered(&self) -> bool {
        self.clustered
    }

    /// The same store, holding every rule file to `limits`.
    pub fn with_limits(mut self, limits: vitrine_core::rules::Limits) -> RuleStore {
        self.limits = limits;
        self
    }

    /// The bounds every rule file is held to.
    pub fn limits(&self) -> &vitrine_core::rules::Limits {
        &self.limits
    }

    /// Runs `f` on the shop's serving rule set, if it has one. One atomic
    /// load; nothing is held after `f` returns.
    #[inline]
    pub fn with_serving<R>(&self, shop: &str, f: impl FnOnce(&Served) -> R) -> Option<R> {
        let entry = self.shops.get(shop)?;
        let served = entry.serving.load();
        Some(f(&served))
    }

    /// Whether a rule set serves `shop`.
    pub fn serves(&self, shop: &str) -> bool {
        self.shops.contains_key(shop)
    }

    /// The serving rule set of a shop.
    pub fn serving(&self, shop: &str) -> Option<Arc<Served>> {
        self.shops.get(shop).map(|s| s.serving.load_full())
    }

    /// Every shop with its serving revision, sorted by shop.
    pub fn shops(&self) -> Vec<(String, u64)> {
        let mut all: Vec<_> = self
            .shops
            .iter()
            .map(|s| (s.key().to_string(), s.serving.load().revision))
            .collect();
        all.sort();
        all
    }

    /// What the store has noticed in `--rules-dir` so far.
    pub fn counters(&self) -> StoreCounters {
        let c = &self.counters;
        StoreCounters {
            files_rejected: c.files_rejected.load(Ordering::Relaxed),
            files_duplicate: c.files_duplicate.load(Ordering::Relaxed),
            files_deleted: c.files_deleted.load(Ordering::Relaxed),
            shops_restored: c.shops_restored.load(Ordering::Relaxed),
            mirror_failures: c.mirror_failures.load(Ordering::Relaxed),
        }
    }

    /// Bytes of rule-file text the store holds: each shop's serving text and
    /// the last-seen text of each `--rules-dir` file (shared text counted once).
    pub fn text_bytes_held(&self) -> usize {
        let mut counted: HashSet<*const u8> = HashSet::new();
        let mut total = 0;
        let mut add = |text: &Arc<str>| {
            if counted.insert(text.as_ptr()) {
                total += text.len();
            }
        };
        for shop in &self.shops {
            add(&shop.serving.load().content);
            for text in shop.history.lock().texts.values() {
                add(text);
            }
        }
        for seen in self.seen.lock().values() {
            add(&seen.content);
        }
        total
    }

    /// Validates and compiles `content`; unless `dry_run`, makes it the
    /// shop's serving rule set as a new revision. Returns the rule set with
    /// its (for a dry run: would-be) revision.
    pub fn push(&self, content: &str, origin: Origin, dry_run: bool, now_ms: i64) -> Result<Arc<Served>, StoreError> {
        self.push_expecting(content, origin, dry_run, now_ms, 0)
    }

    /// [`RuleStore::push`] as a compare-and-set: with `expected` (not 0), the
    /// shop must serve that revision when the push applies.
    pub fn push_expecting(
        &self,
        content: &str,
        origin: Origin,
        dry_run: bool,
        now_ms: i64,
        expected: u64,
    ) -> Result<Arc<Served>, StoreError> {
        self.push_checked(content, origin, dry_run, now_ms, expected, &|_| Ok(()))
    }

    /// [`RuleStore::push_expecting`] with one more check of the compiled
    /// rules before anything changes (a dry run runs it too): the engine's
    /// refusal of a time-zone change (`crate::zones::check`).
    pub fn push_checked(
        &self,
        content: &str,
        origin: Origin,
        dry_run: bool,
        now_ms: i64,
        expected: u64,
        check: &dyn Fn(&RuleSet) -> Result<(), StoreError>,
    ) -> Result<Arc<Served>, StoreError> {
        let rules = self.compile(content)?;
        check(&rules)?;
        if dry_run {
            // What the push would answer: refused for a shop outside --shops.
            if !self.served_shops.serves(&rules.shop) {
                return Err(StoreError::NotServed {
                    shop: rules.shop.to_string(),
                    shops: self.served_shops.describe(),
                });
            }
            let revision = self.shops.get(&*rules.shop).map_or(1, |s| s.history.lock().next);
            return Ok(Arc::new(Served {
                rules,
                revision,
                content: content.into(),
            }));
        }
        let shop = rules.shop.to_string();
        let change = Change {
            shop: &shop,
            kind: ChangeKind::Push(content),
            expected,
            if_absent: false,
            origin,
            created_ms: now_ms,
        };
        self.apply_compiled(&change, Some(rules)).map(Applied::served)
    }

    /// Serves an earlier revision again, as a new revision.
    pub fn rollback(&self, shop: &str, to: u64, now_ms: i64) -> Result<u64, StoreError> {
        self.rollback_expecting(shop, to, now_ms, 0)
    }

    /// [`RuleStore::rollback`] as a compare-and-set (see [`RuleStore::push_expecting`]).
    pub fn rollback_expecting(&self, shop: &str, to: u64, now_ms: i64, expected: u64) -> Result<u64, StoreError> {
        let change = Change {
            shop,
            kind: ChangeKind::Rollback(to),
            expected,
            if_absent: false,
            origin: Origin::Rollback,
            created_ms: now_ms,
        };
        Ok(self.apply_change(&change)?.served().revision)
    }

    /// Validates and compiles a rule file, and checks its shop name.
    pub fn compile(&self, content: &str) -> Result<RuleSet, StoreError> {
        let rules = RuleSet::load_with(content, &self.limits).map_err(StoreError::Invalid)?;
        check_shop_name(&rules.shop)?;
        Ok(rules)
    }

    /// Applies one change, deciding it against the shop's state right now
    /// (under the store's write lock): the one way revisions are made, for a
    /// local push or rollback and for a record of the rules topic alike, so
    /// every replica that applies the same changes in the same order holds
    /// the same revisions and history.
    pub fn apply_change(&self, change: &Change<'_>) -> Result<Applied, StoreError> {
        self.apply_compiled(change, None)
    }

    fn apply_compiled(&self, change: &Change<'_>, compiled: Option<RuleSet>) -> Result<Applied, StoreError> {
        if !self.served_shops.serves(change.shop) {
            return Err(StoreError::NotServed {
                shop: change.shop.to_string(),
                shops: self.served_shops.describe(),
            });
        }
        let _writing = self.writing.lock();
        let serving = self.serving(change.shop);
        let serving_revision = serving.as_ref().map_or(0, |s| s.revision);
        if change.expected != 0 && change.expected != serving_revision {
            return Err(StoreError::RevisionMismatch {
                shop: change.shop.to_string(),
                expected: change.expected,
                serving: serving_revision,
            });
        }
        if let (true, Some(serving)) = (change.if_absent, serving) {
            return Ok(Applied::Unchanged(serving));
        }
        let (rules, content) = match change.kind {
            ChangeKind::Push(content) => {
                let rules = match compiled {
                    Some(rules) => rules,
                    None => self.compile(content)?,
                };
                if *rules.shop != *change.shop {
                    return Err(StoreError::InvalidShop(format!(
                        "the file defines shop `{}`, the change is for shop `{}`",
                        rules.shop, change.shop
                    )));
                }
                (rules, Arc::<str>::from(content))
            }
            ChangeKind::Rollback(to) => {
                let (found, _) = self.get(change.shop, to)?;
                // An accepted revision compiles again; if a newer engine rejects it, say so.
                let rules = RuleSet::load_with(&found.content, &self.limits).map_err(StoreError::Invalid)?;
                (rules, found.content)
            }
        };
        self.install(change.shop, rules, content, change.origin, change.created_ms, None)
            .map(Applied::Changed)
    }

    /// A revision of a shop (0 = the serving one) and whether it is serving.
    /// The text of any but the serving revision is read from `data/revisions`.
    pub fn get(&self, shop: &str, revision: u64) -> Result<(Revision, bool), StoreError> {
        let entry = self.entry(shop)?;
        let serving = entry.serving.load_full();
        let want = if revision == 0 { serving.revision } else { revision };
        let info = {
            let history = entry.history.lock();
            history.revisions.iter().find(|r| r.revision == want).copied()
        };
        let info = match info {
            Some(info) => info,
            None if want == serving.revision => {
                // Served without a history entry cannot happen; answer anyway.
                return Ok((
                    Revision {
                        revision: want,
                        created_ms: 0,
                        origin: Origin::File,
                        content: serving.content.clone(),
                    },
                    true,
                ));
            }
            None => {
                return Err(StoreError::UnknownRevision {
                    shop: shop.to_string(),
                    revision: want,
                })
            }
        };
        let kept = self.clustered.then(|| entry.history.lock().texts.get(&want).cloned());
        let content = if want == serving.revision {
            serving.content.clone()
        } else if let Some(kept) = kept {
            // Cluster mode: held in memory (every replica has it), or none
            // (cannot happen: every revision applied keeps its text).
            kept.ok_or_else(|| StoreError::UnknownRevision {
                shop: shop.to_string(),
                revision: want,
            })?
        } else {
            let path = self.revisions_dir.join(file_name_stem(shop)).join(info.file_name());
            read_rule_file(&path, self.limits.max_file_bytes)
                .map_err(|source| StoreError::History {
                    shop: shop.to_string(),
                    revision: want,
                    source,
                })?
                .into()
        };
        Ok((
            Revision {
                revision: info.revision,
                created_ms: info.created_ms,
                origin: info.origin,
                content,
            },
            want == serving.revision,
        ))
    }

    /// A shop's revisions, oldest first, and the serving one.
    pub fn list(&self, shop: &str) -> Result<(Vec<RevisionInfo>, u64), StoreError> {
        let entry = self.entry(shop)?;
        let history = entry.history.lock();
        Ok((history.revisions.clone(), entry.serving.load().revision))
    }

    fn entry(&self, shop: &str) -> Result<Arc<ShopRules>, StoreError> {
        self.shops
            .get(shop)
            .map(|s| s.value().clone())
            .ok_or_else(|| StoreError::UnknownShop(shop.to_string()))
    }

    /// Persists and swaps in a compiled rule set as the shop's next revision.
    /// `file` names the `--rules-dir` file it came from (a hand edit), which
    /// then is not rewritten. The caller holds `writing`.
    fn install(
        &self,
        shop: &str,
        rules: RuleSet,
        content: Arc<str>,
        origin: Origin,
        now_ms: i64,
        file: Option<&Path>,
    ) -> Result<Arc<Served>, StoreError> {
        let entry = match self.shops.get(shop) {
            Some(e) => e.value().clone(),
            None => return self.create(shop, rules, content, origin, now_ms, file),
        };
        let mut history = entry.history.lock();
        let served = self.record(shop, &mut history, rules, content, origin, now_ms, file)?;
        entry.serving.store(served.clone());
        Ok(served)
    }

    /// The first revision a process serves for a shop: the last persisted one
    /// when the file equals it (a restart), else a new revision.
    fn create(
        &self,
        shop: &str,
        rules: RuleSet,
        content: Arc<str>,
        origin: Origin,
        now_ms: i64,
        file: Option<&Path>,
    ) -> Result<Arc<Served>, StoreError> {
        let revisions = if self.clustered {
            Vec::new()
        } else {
            self.load_history(shop)
        };
        let mut history = ShopHistory {
            next: revisions.last().map_or(1, |r| r.revision + 1),
            revisions,
            file: None,
            texts: HashMap::new(),
        };
        // A file equal to the last revision is a restart; a push always
        // makes a revision (and writes the shop's file).
        let same_as_last = file.is_some()
            && history
                .revisions
                .last()
                .and_then(|last| self.read_revision(shop, last).ok())
                .is_some_and(|text| *text == *content);
        let served = match (same_as_last, history.revisions.last(), file) {
            (true, Some(last), Some(f)) => {
                history.file = Some(f.to_path_buf());
                self.note_written(f, shop, &content);
                Arc::new(Served {
                    rules,
                    revision: last.revision,
                    content,
                })
            }
            _ => self.record(shop, &mut history, rules, content, origin, now_ms, file)?,
        };
        let entry = ShopRules {
            serving: ArcSwap::new(served.clone()),
            history: Mutex::new(history),
        };
        self.shops.insert(shop.into(), Arc::new(entry));
        Ok(served)
    }

    fn read_revision(&self, shop: &str, info: &RevisionInfo) -> std::io::Result<String> {
        fs::read_to_string(self.revisions_dir.join(file_name_stem(shop)).join(info.file_name()))
    }

    /// Persists the next revision and appends it to the history.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        shop: &str,
        history: &mut ShopHistory,
        rules: RuleSet,
        content: Arc<str>,
        origin: Origin,
        now_ms: i64,
        file: Option<&Path>,
    ) -> Result<Arc<Served>, StoreError> {
        let info = RevisionInfo {
            revision: history.next,
            created_ms: now_ms,
            origin,
        };
        match self.persist(shop, history, &info, &content, file) {
            Ok(written) => history.file = Some(written),
            // Cluster mode: the rules topic decides and every replica applies;
            // the disk only mirrors it for humans. A replica that skipped the
            // revision because of its disk would number the next ones apart.
            Err(e) if self.clustered => {
                bump(&self.counters.mirror_failures);
                tracing::error!(
                    shop,
                    revision = info.revision,
                    "revision applied from the rules topic but not mirrored to disk (it serves all the same): {e}"
                );
            }
            Err(e) => return Err(e),
        }
        if self.clustered {
            history.texts.insert(info.revision, content.clone());
        }
        history.next = info.revision + 1;
        history.revisions.push(info);
        Ok(Arc::new(Served {
            rules,
            revision: info.revision,
            content,
        }))
    }

    /// Writes the revision record and, unless it came from that file, the
    /// shop's rule file; returns the rule file. All or nothing: when the
    /// rule file cannot be written, the revision file is removed again (and
    /// if even that fails, its number is never reused by this process).
    fn persist(
        &self,
        shop: &str,
        history: &mut ShopHistory,
        info: &RevisionInfo,
        content: &Arc<str>,
        file: Option<&Path>,
    ) -> Result<PathBuf, StoreError> {
        let dir = self.revisions_dir.join(file_name_stem(shop));
        fs::create_dir_all(&dir)?;
        let revision_path = dir.join(info.file_name());
        if let Err(e) = write_atomic(&revision_path, content.as_bytes()) {
            self.undo_revision(history, &dir, &revision_path);
            return Err(e.into());
        }
        let target = match file {
            Some(f) => f.to_path_buf(),
            None => match self.write_rule_file(shop, history.file.as_deref(), content) {
                Ok(target) => target,
                Err(e) => {
                    self.undo_revision(history, &dir, &revision_path);
                    return Err(e.into());
                }
            },
        };
        self.note_written(&target, shop, content);
        Ok(target)
    }

    /// Removes a revision file whose rule file could not be written.
    fn undo_revision(&self, history: &mut ShopHistory, dir: &Path, revision_path: &Path) {
        let removed = match fs::remove_file(revision_path) {
            Ok(()) => sync_dir(dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = removed {
            tracing::error!(
                path = %revision_path.display(),
                "cannot remove the revision file of a failed write: {e}"
            );
            history.next += 1;
        }
    }

    /// Writes a shop's rule file (see [`RuleStore::target_file`]); on
    /// failure, puts back what the file held before.
    fn write_rule_file(&self, shop: &str, current: Option<&Path>, content: &str) -> std::io::Result<PathBuf> {
        let target = self.target_file(shop, current)?;
        let before = match read_rule_file(&target, self.limits.max_file_bytes) {
            Ok(b) => Some(b.into_bytes()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let written = fs::create_dir_all(&self.rules_dir).and_then(|()| write_atomic(&target, content.as_bytes()));
        if let Err(e) = written {
            // The rename may have happened before the directory fsync failed.
            let restored = match &before {
                Some(b) => write_atomic(&target, b),
                None => match fs::remove_file(&target) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                },
            };
            if let Err(r) = restored {
                tracing::error!(path = %target.display(), "cannot restore the rule file after a failed write: {r}");
            }
            return Err(e);
        }
        Ok(target)
    }

    /// The `--rules-dir` file a push or rollback of `shop` writes: the file it
    /// serves from when that file last held this shop (or is gone), else the
    /// first of `<shop>.yaml`, `<shop>~1.yaml`, ... that no file takes.
    fn target_file(&self, shop: &str, current: Option<&Path>) -> std::io::Result<PathBuf> {
        let seen = self.seen.lock();
        let usable = |path: &Path| match seen.get(path) {
            Some(s) => s.owner.as_deref() == Some(shop),
            None => !path.exists(),
        };
        if let Some(p) = current {
            if usable(p) {
                return Ok(p.to_path_buf());
            }
        }
        let stem = file_name_stem(shop);
        for n in 0..=MAX_FILE_NAME_TRIES {
            let path = self.rules_dir.join(if n == 0 {
                format!("{stem}.yaml")
            } else {
                format!("{stem}~{n}.yaml")
            });
            if usable(&path) {
                return Ok(path);
            }
        }
        Err(std::io::Error::other(format!(
            "every file name for shop `{shop}` in {} is taken by another file",
            self.rules_dir.display()
        )))
    }

    /// Remembers that `path` now holds `content`, a valid file of `shop`.
    fn note_written(&self, path: &Path, shop: &str, content: &Arc<str>) {
        self.seen.lock().insert(
            path.to_path_buf(),
            SeenFile {
                content: content.clone(),
                shop: Some(shop.into()),
                owner: Some(shop.into()),
                reported_duplicate: false,
                unreadable: false,
            },
        );
    }

    /// The persisted history of a shop, oldest first (empty when none): file
    /// names only, no text. Two files of one revision number (left by an
    /// older version after a failed write) count once, the newest.
    fn load_history(&self, shop: &str) -> Vec<RevisionInfo> {
        self.history_in(&self.revisions_dir.join(file_name_stem(shop)))
    }

    fn history_in(&self, dir: &Path) -> Vec<RevisionInfo> {
        let Ok(entries) = fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut revisions: Vec<RevisionInfo> = entries
            .filter_map(Result::ok)
            .filter_map(|e| RevisionInfo::parse_file_name(e.file_name().to_str()?))
            .collect();
        revisions.sort_by_key(|r| (r.revision, r.created_ms));
        let mut deduped: Vec<RevisionInfo> = Vec::with_capacity(revisions.len());
        for r in revisions {
            match deduped.last_mut() {
                Some(last) if last.revision == r.revision => *last = r,
                _ => deduped.push(r),
            }
        }
        deduped
    }

    /// Loads every `*.yaml` of `--rules-dir` whose content changed since the
    /// last rescan (all of them at start-up). Invalid files are reported and
    /// change nothing; a file equal to what its shop serves is a no-op; the
    /// first valid file (by name) of a shop serves it, later ones are
    /// reported once and ignored. At start-up, a shop with history in
    /// `data/revisions` but no valid file serves its newest revision.
    pub fn rescan(&self, now_ms: i64) -> SyncReport {
        let mut report = SyncReport::default();
        let _writing = self.writing.lock();
        let listed = self.list_rules_dir(&mut report);
        if let Some(paths) = &listed {
            self.forget_deleted(paths, &mut report);
            let mut claimed: HashMap<Box<str>, PathBuf> = HashMap::new();
            let first = !self.started.load(Ordering::Relaxed);
            for path in paths {
                self.sync_file(path, &mut claimed, now_ms, first, &mut report);
            }
        }
        if !self.started.swap(true, Ordering::Relaxed) && !self.clustered {
            self.restore_from_history(&mut report);
        }
        report
    }

    fn list_rules_dir(&self, report: &mut SyncReport) -> Option<Vec<PathBuf>> {
        match fs::read_dir(&self.rules_dir) {
            Ok(entries) => {
                let mut paths: Vec<PathBuf> = entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                    .collect();
                paths.sort();
                Some(paths)
            }
            Err(e) => {
                bump(&self.counters.files_rejected);
                report.problem(
                    ProblemKind::Unreadable,
                    &self.rules_dir,
                    format!("cannot read the rules directory: {e}"),
                );
                None
            }
        }
    }

    /// Forgets files that are gone; a shop that served from one keeps
    /// serving its last revision, and says so once.
    fn forget_deleted(&self, paths: &[PathBuf], report: &mut SyncReport) {
        let present: HashSet<&Path> = paths.iter().map(PathBuf::as_path).collect();
        let gone: Vec<PathBuf> = {
            let mut seen = self.seen.lock();
            let gone: Vec<PathBuf> = seen
                .keys()
                .filter(|p| !present.contains(p.as_path()))
                .cloned()
                .collect();
            for p in &gone {
                seen.remove(p);
            }
            gone
        };
        for path in gone {
            for shop in self.shops.iter() {
                let history = shop.history.lock();
                if history.file.as_deref() == Some(path.as_path()) {
                    bump(&self.counters.files_deleted);
                    report.problem(
                        ProblemKind::Deleted,
                        &path,
                        format!(
                            "deleted; shop `{}` keeps serving revision {} (a deleted file is not an instruction to stop serving: push or roll back to change it)",
                            shop.key(),
                            shop.serving.load().revision
                        ),
                    );
                }
            }
        }
    }

    /// Syncs one file of the (sorted) listing.
    fn sync_file(
        &self,
        path: &Path,
        claimed: &mut HashMap<Box<str>, PathBuf>,
        now_ms: i64,
        first: bool,
        report: &mut SyncReport,
    ) {
        let content: Arc<str> = match read_rule_file(path, self.limits.max_file_bytes) {
            Ok(c) => c.into(),
            Err(e) => {
                let mut seen = self.seen.lock();
                if seen.get(path).is_some_and(|s| s.unreadable) {
                    return; // Reported when it became unreadable.
                }
                let owner = seen.get(path).and_then(|s| s.owner.clone());
                seen.insert(
                    path.to_path_buf(),
                    SeenFile {
                        content: Arc::from(""),
                        shop: None,
                        owner,
                        reported_duplicate: false,
                        unreadable: true,
                    },
                );
                drop(seen);
                bump(&self.counters.files_rejected);
                report.problem(ProblemKind::Unreadable, path, format!("cannot read: {e}"));
                return;
            }
        };
        let known = self
            .seen
            .lock()
            .get(path)
            .filter(|s| !s.unreadable)
            .and_then(|s| (*s.content == *content).then(|| (s.shop.clone(), s.reported_duplicate)));
        let changed = known.is_none();
        let (shop, rules, reported_duplicate) = match known {
            // Unchanged and broken: reported when it changed.
            Some((None, _)) => return,
            Some((Some(shop), reported)) => (shop, None, reported),
            None => {
                let previous_owner = self.seen.lock().get(path).and_then(|s| s.owner.clone());
                let loaded = RuleSet::load_with(&content, &self.limits)
                    .map_err(|e| e.to_string())
                    .and_then(|r| check_shop_name(&r.shop).map(|()| r).map_err(|e| e.to_string()));
                match loaded {
                    Ok(rules) => {
                        let shop: Box<str> = (*rules.shop).into();
                        self.seen.lock().insert(
                            path.to_path_buf(),
                            SeenFile {
                                content: content.clone(),
                                shop: Some(shop.clone()),
                                owner: Some(shop.clone()),
                                reported_duplicate: false,
                                unreadable: false,
                            },
                        );
                        (shop, Some(rules), false)
                    }
                    Err(message) => {
                        self.seen.lock().insert(
                            path.to_path_buf(),
                            SeenFile {
                                content,
                                shop: None,
                                owner: previous_owner,
                                reported_duplicate: false,
                                unreadable: false,
                            },
                        );
                        bump(&self.counters.files_rejected);
                        report.problem(ProblemKind::Invalid, path, message);
                        return;
                    }
                }
            }
        };
        if !self.served_shops.serves(&shop) {
            // Another replica group's shop (`--shops`): not an error.
            return;
        }
        if let Some(first) = claimed.get(&shop) {
            if !reported_duplicate {
                bump(&self.counters.files_duplicate);
                report.problem(
                    ProblemKind::Duplicate,
                    path,
                    format!("shop `{shop}` is already defined by {}; file ignored", first.display()),
                );
                if let Some(s) = self.seen.lock().get_mut(path) {
                    s.reported_duplicate = true;
                }
            }
            return;
        }
        claimed.insert(shop.clone(), path.to_path_buf());
        if let Some(s) = self.seen.lock().get_mut(path) {
            s.reported_duplicate = false;
        }
        if let Some(entry) = self.shops.get(&*shop).map(|e| e.value().clone()) {
            if *entry.serving.load().content == *content {
                // Serving already (a restart, our own write, a winner that
                // equals what serves): it is the shop's file from now on.
                entry.history.lock().file = Some(path.to_path_buf());
                return;
            }
        }
        if self.clustered {
            // Only what changed since the last look is a hand edit. A file
            // the store knows that differs from what serves is a mirror
            // write that failed, or an edit the topic already refused: pushing
            // it again would overwrite revisions it never saw.
            if changed {
                self.propose(path, &shop, content, first, report);
            }
            return;
        }
        let rules = match rules {
            Some(r) => r,
            None => match RuleSet::load_with(&content, &self.limits) {
                Ok(r) => r,
                Err(e) => {
                    report.problem(ProblemKind::Invalid, path, e.to_string());
                    return;
                }
            },
        };
        match self.install(&shop, rules, content, Origin::File, now_ms, Some(path)) {
            Ok(served) => report.swapped.push((shop.to_string(), served.revision)),
            Err(e) => report.problem(ProblemKind::Failed, path, e.to_string()),
        }
    }

    /// Forgets what a `--rules-dir` file held, so the next scan looks at it
    /// again (a proposal from it could not go through).
    pub fn forget_file(&self, path: &Path) {
        self.seen.lock().remove(path);
    }

    /// Cluster mode: a valid file that differs from what its shop serves.
    /// A shop without rules gets a seed; at the first scan (start) a served
    /// shop's file is a stale copy and is rewritten from the topic; later,
    /// it is a hand edit and becomes a push expecting the serving revision.
    fn propose(&self, path: &Path, shop: &str, content: Arc<str>, first: bool, report: &mut SyncReport) {
        let serving = self.serving(shop);
        match serving {
            None => report.proposals.push(Proposal {
                path: path.to_path_buf(),
                shop: shop.to_string(),
                content,
                expected: 0,
                if_absent: true,
            }),
            Some(served) if first => match write_atomic(path, served.content.as_bytes()) {
                Ok(()) => {
                    self.note_written(path, shop, &served.content);
                    if let Some(entry) = self.shops.get(shop) {
                        entry.history.lock().file = Some(path.to_path_buf());
                    }
                    report.rewritten.push(path.to_path_buf());
                }
                Err(e) => report.problem(
                    ProblemKind::Failed,
                    path,
                    format!(
                        "differs from revision {} the rules topic serves, and cannot be rewritten: {e}",
                        served.revision
                    ),
                ),
            },
            Some(served) => report.proposals.push(Proposal {
                path: path.to_path_buf(),
                shop: shop.to_string(),
                content,
                expected: served.revision,
                if_absent: false,
            }),
        }
    }

    /// Serves, for every shop with history in `data/revisions` but no valid
    /// file in `--rules-dir`, its newest revision that compiles.
    fn restore_from_history(&self, report: &mut SyncReport) {
        let Ok(entries) = fs::read_dir(&self.revisions_dir) else {
            return;
        };
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        let loaded: HashSet<String> = self.shops.iter().map(|s| file_name_stem(s.key())).collect();
        for dir in dirs {
            let Some(stem) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
                continue;
            };
            if loaded.contains(&stem) {
                continue;
            }
            let revisions = self.history_in(&dir);
            let newest = revisions.iter().rev().take(MAX_RESTORE_ATTEMPTS).find_map(|info| {
                let path = dir.join(info.file_name());
                let content: Arc<str> = read_rule_file(&path, self.limits.max_file_bytes).ok()?.into();
                let rules = RuleSet::load_with(&content, &self.limits).ok()?;
                (file_name_stem(&rules.shop) == stem && check_shop_name(&rules.shop).is_ok()).then_some((
                    info.revision,
                    rules,
                    content,
                    path,
                ))
            });
            let Some((revision, rules, content, path)) = newest else {
                report.problem(
                    ProblemKind::Invalid,
                    &dir,
                    format!(
                        "no file in {} defines this shop, and none of its newest revisions compiles: not served",
                        self.rules_dir.display()
                    ),
                );
                continue;
            };
            let shop = rules.shop.to_string();
            bump(&self.counters.shops_restored);
            report.problem(
                ProblemKind::Restored,
                &path,
                format!(
                    "shop `{shop}` has no valid file in {}: serving its last revision {revision}",
                    self.rules_dir.display()
                ),
            );
            report.swapped.push((shop.clone(), revision));
            let history = ShopHistory {
                next: revisions.last().map_or(1, |r| r.revision + 1),
                revisions,
                file: None,
                texts: HashMap::new(),
            };
            let entry = ShopRules {
                serving: ArcSwap::new(Arc::new(Served {
                    rules,
                    revision,
                    content,
                })),
                history: Mutex::new(history),
            };
            self.shops.insert(shop.into(), Arc::new(entry));
        }
    }
}

/// A file-name-safe form of a shop name: `[A-Za-z0-9_.-]` kept, anything
/// else (and a leading dot) as `%XX`. One-to-one, never contains `/`, `~`,
/// NUL or starts with `.`; for a name that passes [`check_shop_name`] at most
/// `3 * MAX_SHOP_BYTES` bytes.
pub fn file_name_stem(shop: &str) -> String {
    let mut out = String::with_capacity(shop.len());
    for (i, b) in shop.bytes().enumerate() {
        let keep = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use tempfile::TempDir;

    const NOW: i64 = 1_795_132_800_000;

    fn rules(shop: &str, banner: &str) -> String {
        format!("shop: {shop}\nbanners:\n  - banner: {banner}\n")
    }

    fn store(dir: &TempDir) -> RuleStore {
        RuleStore::new(&dir.path().join("rules"), &dir.path().join("data"))
    }

    fn banner_of(store: &RuleStore, shop: &str) -> String {
        let served = store.serving(shop).expect("the shop serves");
        let last = served.content.lines().last().unwrap();
        last.trim().trim_start_matches("- ").to_string()
    }

    fn revisions(store: &RuleStore, shop: &str) -> Vec<u64> {
        store.list(shop).unwrap().0.iter().map(|r| r.revision).collect()
    }

    fn kinds(report: &SyncReport) -> Vec<ProblemKind> {
        report.problems.iter().map(|p| p.kind).collect()
    }

    /// Regression (hardening #15a): the pushed shop name becomes a file name
    /// that is never too long and never a path: separators, `..`, NUL and a
    /// leading dot are escaped, and the mapping is one-to-one.
    #[test]
    fn shop_names_map_to_safe_bounded_file_names() {
        assert_eq!(file_name_stem("demo-apparel"), "demo-apparel");
        assert_eq!(file_name_stem(".."), "%2E.");
        assert_eq!(file_name_stem("a/b"), "a%2Fb");
        assert_eq!(file_name_stem("a\\b"), "a%5Cb");
        assert_eq!(file_name_stem("a\0b"), "a%00b");
        assert_eq!(file_name_stem("a~1"), "a%7E1");
        assert_eq!(file_name_stem("é"), "%C3%A9");
        // One-to-one: an escape cannot be confused with a kept name.
        assert_ne!(file_name_stem("%2F"), file_name_stem("/"));
        // The longest accepted name, every byte escaped, still fits with the
        // longest alternative suffix.
        let worst = "é".repeat(MAX_SHOP_BYTES / 2);
        check_shop_name(&worst).unwrap();
        let name = format!("{}~{MAX_FILE_NAME_TRIES}.yaml", file_name_stem(&worst));
        assert!(name.len() <= 255, "{} bytes", name.len());
    }

    /// Regression (hardening #15a): names the store cannot keep are user errors.
    #[test]
    fn invalid_shop_names_are_rejected_with_a_clear_message() {
        let long = "s".repeat(300);
        let e = check_shop_name(&long).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "shop `{}...` is 300 bytes long; a shop name has at most 80 bytes",
                "s".repeat(32)
            )
        );
        let e = check_shop_name("a\u{0}b").unwrap_err().to_string();
        assert_eq!(e, "shop \"a\\0b\" contains a control character; a shop name cannot");
        assert!(check_shop_name("").is_err());
        check_shop_name(&"s".repeat(MAX_SHOP_BYTES)).unwrap();
    }

    /// Regression (hardening #15a): a push of a shop name longer than a file
    /// name can be is INVALID_ARGUMENT (`InvalidShop`), not an I/O failure,
    /// and writes nothing.
    #[test]
    fn a_push_with_an_overlong_shop_name_is_invalid_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        store.rescan(NOW);
        let shop = "x".repeat(300);
        let err = store.push(&rules(&shop, "b"), Origin::Push, false, NOW).unwrap_err();
        assert!(matches!(err, StoreError::InvalidShop(_)), "{err:?}");
        let err = store.push(&rules(&shop, "b"), Origin::Push, true, NOW).unwrap_err();
        assert!(matches!(err, StoreError::InvalidShop(_)), "{err:?}");
        assert!(store.shops().is_empty());
        assert!(!dir.path().join("data/revisions").exists());
    }

    /// Regression (hardening #7): a shop whose file is broken at start-up
    /// serves its newest revision from `data/revisions`; List, Get and
    /// Rollback work; the broken file and the restore are reported.
    #[test]
    fn a_broken_file_at_start_up_serves_the_last_good_revision() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = store(&dir);
            store.rescan(NOW);
            store.push(&rules("s", "one"), Origin::Push, false, NOW).unwrap();
            store.push(&rules("s", "two"), Origin::Push, false, NOW + 1).unwrap();
        }
        fs::write(dir.path().join("rules/s.yaml"), "shop: s\nbanners: [oops\n").unwrap();

        let store = store(&dir);
        let report = store.rescan(NOW + 2);
        assert_eq!(kinds(&report), [ProblemKind::Invalid, ProblemKind::Restored]);
        assert_eq!(report.swapped, [("s".to_string(), 2)]);
        assert!(
            report.problems[0].message.contains(':'),
            "{}",
            report.problems[0].message
        );
        assert_eq!(banner_of(&store, "s"), "banner: two");
        assert_eq!(store.shops(), [("s".to_string(), 2)]);
        assert_eq!(revisions(&store, "s"), [1, 2]);
        let (first, serving) = store.get("s", 1).unwrap();
        assert_eq!((&*first.content, serving), (&*rules("s", "one"), false));
        assert_eq!(store.rollback("s", 1, NOW + 3).unwrap(), 3);
        assert_eq!(banner_of(&store, "s"), "banner: one");
        let c = store.counters();
        assert_eq!((c.files_rejected, c.shops_restored), (1, 1));
        // The broken file is reported once, not at every poll.
        assert!(store.rescan(NOW + 4).problems.is_empty());
    }

    /// Regression (hardening #7): a deleted file keeps its shop serving, at
    /// run time (reported once) and after a restart (from `data/revisions`).
    #[test]
    fn a_deleted_file_keeps_its_shop_serving() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = store(&dir);
            store.rescan(NOW);
            store.push(&rules("s", "one"), Origin::Push, false, NOW).unwrap();
            fs::remove_file(dir.path().join("rules/s.yaml")).unwrap();
            let report = store.rescan(NOW + 1);
            assert_eq!(kinds(&report), [ProblemKind::Deleted]);
            assert_eq!(store.counters().files_deleted, 1);
            assert!(store.rescan(NOW + 2).problems.is_empty());
            assert_eq!(banner_of(&store, "s"), "banner: one");
        }
        let store = store(&dir);
        let report = store.rescan(NOW + 3);
        assert_eq!(kinds(&report), [ProblemKind::Restored]);
        assert_eq!(store.shops(), [("s".to_string(), 1)]);
        // A push writes the file again.
        store.push(&rules("s", "two"), Origin::Push, false, NOW + 4).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("rules/s.yaml")).unwrap(),
            rules("s", "two")
        );
    }

    /// An unreadable file (here a directory named like a rule file) is
    /// reported once, not at every poll.
    #[test]
    fn an_unreadable_file_is_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("rules/x.yaml")).unwrap();
        let store = store(&dir);
        assert_eq!(kinds(&store.rescan(NOW)), [ProblemKind::Unreadable]);
        assert!(store.rescan(NOW + 1).problems.is_empty());
        assert_eq!(store.counters().files_rejected, 1);
    }

    /// Regression (hardening #8): a push of shop `foo` does not overwrite
    /// `foo.yaml` when that file holds shop `bar`; both survive a restart.
    #[test]
    fn a_push_never_overwrites_another_shops_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("rules")).unwrap();
        fs::write(dir.path().join("rules/foo.yaml"), rules("bar", "bar")).unwrap();
        {
            let store = store(&dir);
            store.rescan(NOW);
            store.push(&rules("foo", "foo"), Origin::Push, false, NOW).unwrap();
            assert_eq!(
                fs::read_to_string(dir.path().join("rules/foo.yaml")).unwrap(),
                rules("bar", "bar")
            );
            assert_eq!(
                fs::read_to_string(dir.path().join("rules/foo~1.yaml")).unwrap(),
                rules("foo", "foo")
            );
            // The next push of foo rewrites its own file.
            store.push(&rules("foo", "foo2"), Origin::Push, false, NOW + 1).unwrap();
            assert_eq!(
                fs::read_to_string(dir.path().join("rules/foo~1.yaml")).unwrap(),
                rules("foo", "foo2")
            );
        }
        let store = store(&dir);
        let report = store.rescan(NOW + 2);
        assert!(report.problems.is_empty(), "{report:?}");
        assert_eq!(store.shops(), [("bar".to_string(), 1), ("foo".to_string(), 2)]);
        assert_eq!(banner_of(&store, "foo"), "banner: foo2");
    }

    /// Regression (hardening #8): a file edited to hold another shop is that
    /// shop's file; a push of the shop it held before writes a new file.
    #[test]
    fn a_push_after_its_file_changed_shop_writes_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        store.rescan(NOW);
        store.push(&rules("foo", "foo"), Origin::Push, false, NOW).unwrap();
        fs::write(dir.path().join("rules/foo.yaml"), rules("bar", "bar")).unwrap();
        store.rescan(NOW + 1);
        store.push(&rules("foo", "foo2"), Origin::Push, false, NOW + 2).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("rules/foo.yaml")).unwrap(),
            rules("bar", "bar")
        );
        assert_eq!(banner_of(&store, "bar"), "banner: bar");
    }

    /// Regression (hardening #9): the first file by name wins at start-up and
    /// at every poll; a duplicate added at run time is reported once and
    /// ignored, pushes keep going to the winner, and a restart serves the same.
    #[test]
    fn a_duplicate_file_added_at_run_time_does_not_take_the_shop_over() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("rules")).unwrap();
        fs::write(dir.path().join("rules/b.yaml"), rules("s", "b")).unwrap();
        let store = store(&dir);
        store.rescan(NOW);
        fs::write(dir.path().join("rules/c.yaml"), rules("s", "c")).unwrap();
        let report = store.rescan(NOW + 1);
        assert_eq!(kinds(&report), [ProblemKind::Duplicate]);
        assert!(report.swapped.is_empty());
        assert_eq!(banner_of(&store, "s"), "banner: b");
        assert!(store.rescan(NOW + 2).problems.is_empty(), "reported once");
        assert_eq!(store.counters().files_duplicate, 1);

        store.push(&rules("s", "pushed"), Origin::Push, false, NOW + 3).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("rules/b.yaml")).unwrap(),
            rules("s", "pushed")
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("rules/c.yaml")).unwrap(),
            rules("s", "c")
        );
        assert!(store.rescan(NOW + 4).swapped.is_empty());
        assert_eq!(banner_of(&store, "s"), "banner: pushed");
        drop(store);

        let store = RuleStore::new(&dir.path().join("rules"), &dir.path().join("data"));
        let report = store.rescan(NOW + 5);
        assert_eq!(kinds(&report), [ProblemKind::Duplicate]);
        assert_eq!(banner_of(&store, "s"), "banner: pushed");
        assert_eq!(store.shops(), [("s".to_string(), 2)]);
    }

    /// Regression (hardening #9): a file that sorts first wins at the poll as
    /// it would at a restart, and the former winner is the duplicate.
    #[test]
    fn a_file_sorting_first_wins_at_the_poll_as_at_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("rules")).unwrap();
        fs::write(dir.path().join("rules/b.yaml"), rules("s", "b")).unwrap();
        let store = store(&dir);
        store.rescan(NOW);
        fs::write(dir.path().join("rules/a.yaml"), rules("s", "a")).unwrap();
        let report = store.rescan(NOW + 1);
        assert_eq!(kinds(&report), [ProblemKind::Duplicate]);
        assert_eq!(report.problems[0].path, dir.path().join("rules/b.yaml"));
        assert_eq!(banner_of(&store, "s"), "banner: a");
        assert!(store.rescan(NOW + 2).problems.is_empty());
        store.push(&rules("s", "pushed"), Origin::Push, false, NOW + 3).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("rules/a.yaml")).unwrap(),
            rules("s", "pushed")
        );
    }

    /// Regression (hardening #13): a push whose rule file cannot be written
    /// leaves no revision file behind (the rules dir is replaced by a plain
    /// file: a fault that stops root too); after a restart the history is
    /// what was accepted, and the next push takes the next number.
    #[test]
    fn a_failed_push_leaves_no_revision_behind() {
        let dir = tempfile::tempdir().unwrap();
        let rules_dir = dir.path().join("rules");
        {
            let store = store(&dir);
            store.rescan(NOW);
            store.push(&rules("s", "one"), Origin::Push, false, NOW).unwrap();
            fs::remove_dir_all(&rules_dir).unwrap();
            fs::write(&rules_dir, "not a directory").unwrap();
            for n in 1..=2 {
                let err = store
                    .push(&rules("s", "two"), Origin::Push, false, NOW + n)
                    .unwrap_err();
                assert!(matches!(err, StoreError::Io(_)), "{err:?}");
            }
            assert_eq!(banner_of(&store, "s"), "banner: one");
            assert_eq!(revisions(&store, "s"), [1]);
        }
        let files: Vec<_> = fs::read_dir(dir.path().join("data/revisions/s"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(files, [format!("{:010}-push-{NOW}.yaml", 1)]);
        fs::remove_file(&rules_dir).unwrap();
        fs::create_dir_all(&rules_dir).unwrap();
        let store = store(&dir);
        store.rescan(NOW + 5);
        assert_eq!(revisions(&store, "s"), [1]);
        let served = store.push(&rules("s", "two"), Origin::Push, false, NOW + 6).unwrap();
        assert_eq!(served.revision, 2);
    }

    /// Regression (hardening #18): only the serving revision's text stays in
    /// memory; older revisions are read back from `data/revisions`.
    #[test]
    fn only_the_serving_revision_text_is_held_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        store.rescan(NOW);
        let padding = format!("# {}\n", "x".repeat(100_000));
        let text = |n: usize| format!("{padding}{}", rules("s", &format!("b{n}")));
        for n in 0..20 {
            store.push(&text(n), Origin::Push, false, NOW + n as i64).unwrap();
        }
        let held = store.text_bytes_held();
        assert!(held <= text(19).len(), "{held} bytes held for 20 revisions");
        assert_eq!(*store.get("s", 1).unwrap().0.content, *text(0));
        assert_eq!(store.rollback("s", 1, NOW + 100).unwrap(), 21);
        assert_eq!(*store.serving("s").unwrap().content, *text(0));
    }

    #[test]
    fn read_rule_file_refuses_fifos_devices_and_oversized_files_without_reading_them() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.yaml");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let e = read_rule_file(&fifo, 1024).unwrap_err();
        assert_eq!(e.to_string(), "not a regular file");
        let zero = dir.path().join("zero.yaml");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert_eq!(
            read_rule_file(&zero, 1024).unwrap_err().to_string(),
            "not a regular file"
        );
        let big = dir.path().join("big.yaml");
        fs::write(&big, "x".repeat(1025)).unwrap();
        assert_eq!(
            read_rule_file(&big, 1024).unwrap_err().to_string(),
            "larger than the limit of 1024 bytes (--max-rule-file-bytes)"
        );
        fs::write(&big, "x".repeat(1024)).unwrap();
        assert_eq!(read_rule_file(&big, 1024).unwrap().len(), 1024);
    }

    /// Regression (attack on the hardened server): a FIFO in `--rules-dir`
    /// blocked start-up, the poll and every push behind it; a link to
    /// `/dev/zero` grew memory by gigabytes a second. Both are now a
    /// rejected file, and the rest of the directory loads.
    #[test]
    fn a_fifo_or_a_device_in_the_rules_dir_is_a_rejected_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        fs::create_dir_all(dir.path().join("rules")).unwrap();
        fs::write(dir.path().join("rules/a.yaml"), rules("a", "x")).unwrap();
        assert!(std::process::Command::new("mkfifo")
            .arg(dir.path().join("rules/b.yaml"))
            .status()
            .unwrap()
            .success());
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("rules/c.yaml")).unwrap();
        store.rescan(NOW);
        assert_eq!(banner_of(&store, "a"), "banner: x");
        assert_eq!(store.counters().files_rejected, 2);
    }

    /// Decodes a stem (test only): proves the escaping one-to-one.
    fn unescape(stem: &str) -> Vec<u8> {
        let b = stem.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                out.push(u8::from_str_radix(&stem[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        out
    }

    /// Issue 12: names that differ only in case or punctuation, reserved
    /// names and names with `/` or NUL map to distinct, safe, bounded stems.
    #[test]
    fn file_name_stems_never_collide_and_are_never_paths() {
        let names = [
            "shop", "Shop", "SHOP", "sh.op", "sh-op", "sh_op", "sh op", "sh%20op", "sh/op", "sh%2Fop", "sh\\op",
            ".shop", "%2Eshop", ".", "..", "...", "a.", "a..b", "a\0", "a%00", "~", "a~1", "CON", "nul", "é",
            "e\u{301}",
        ];
        let stems: Vec<String> = names.iter().map(|n| file_name_stem(n)).collect();
        assert_eq!(
            stems,
            [
                "shop",
                "Shop",
                "SHOP",
                "sh.op",
                "sh-op",
                "sh_op",
                "sh%20op",
                "sh%2520op",
                "sh%2Fop",
                "sh%252Fop",
                "sh%5Cop",
                "%2Eshop",
                "%252Eshop",
                "%2E",
                "%2E.",
                "%2E..",
                "a.",
                "a..b",
                "a%00",
                "a%2500",
                "%7E",
                "a%7E1",
                "CON",
                "nul",
                "%C3%A9",
                "e%CC%81",
            ]
        );
        let distinct: HashSet<&String> = stems.iter().collect();
        assert_eq!(distinct.len(), names.len(), "{stems:?}");
        for (name, stem) in names.iter().zip(&stems) {
            assert_eq!(unescape(stem), name.as_bytes(), "{stem} decodes back");
            assert!(
                stem.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-%".contains(&b)),
                "{stem}: only [A-Za-z0-9_.-%]"
            );
            assert!(!stem.starts_with('.'), "{stem}: never hidden, never . or ..");
            assert!(stem.len() <= 3 * name.len());
        }
        // Bounded: the worst accepted name (every byte escaped) is 3 bytes a byte.
        let worst = "/".repeat(MAX_SHOP_BYTES);
        check_shop_name(&worst).unwrap();
        assert_eq!(file_name_stem(&worst).len(), 3 * MAX_SHOP_BYTES);
    }

    /// Shops whose names differ only in case or punctuation get files of
    /// their own (on a case-insensitive file system `Shop` takes `~1`).
    #[test]
    fn shops_differing_in_case_or_punctuation_get_files_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        store.rescan(NOW);
        for (i, shop) in ["shop", "Shop", "sh.op", "\"sh/op\"", "\"..\""].iter().enumerate() {
            store
                .push(&rules(shop, "b"), Origin::Push, false, NOW + i as i64)
                .unwrap();
        }
        let mut files: Vec<String> = fs::read_dir(dir.path().join("rules"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        let case_insensitive = !files.contains(&"Shop.yaml".to_string());
        let mut want = vec!["%2E..yaml", "sh%2Fop.yaml", "sh.op.yaml", "shop.yaml"];
        want.push(if case_insensitive { "Shop~1.yaml" } else { "Shop.yaml" });
        want.sort_unstable();
        assert_eq!(files, want);
        // A restart reads each back as its own shop.
        let again = RuleStore::new(&dir.path().join("rules"), &dir.path().join("data"));
        assert!(again.rescan(NOW + 9).problems.is_empty());
        let mut shops: Vec<String> = again.shops().into_iter().map(|(s, _)| s).collect();
        shops.sort();
        assert_eq!(shops, ["..", "Shop", "sh.op", "sh/op", "shop"]);
    }

    #[test]
    fn revision_file_names_round_trip_and_strangers_are_ignored() {
        let info = RevisionInfo {
            revision: 7,
            created_ms: NOW,
            origin: Origin::Rollback,
        };
        assert_eq!(info.file_name(), "0000000007-rollback-1795132800000.yaml");
        assert_eq!(RevisionInfo::parse_file_name(&info.file_name()), Some(info));
        let before_1970 = RevisionInfo {
            revision: 1,
            created_ms: -5,
            origin: Origin::File,
        };
        assert_eq!(
            RevisionInfo::parse_file_name(&before_1970.file_name()),
            Some(before_1970)
        );
        for stranger in [
            "notes.txt",
            "0000000001-push-1.yml",
            "0000000001-bogus-1.yaml",
            "x-push-1.yaml",
            "0000000001-push.yaml",
            "0000000001-push-soon.yaml",
            ".yaml",
        ] {
            assert_eq!(RevisionInfo::parse_file_name(stranger), None, "{stranger}");
        }
    }

    /// Issue 12: history, get and rollback, across a restart.
    #[test]
    fn rollback_serves_an_old_text_as_a_new_revision_and_history_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        store.rescan(NOW);
        let push = |store: &RuleStore, banner: &str, dry_run: bool, at: i64| {
            store
                .push(&rules("s", banner), Origin::Push, dry_run, at)
                .unwrap()
                .revision
        };
        assert_eq!(push(&store, "one", false, NOW), 1);
        assert_eq!(push(&store, "two", false, NOW + 1), 2);
        // A dry run answers the revision it would get, and changes nothing.
        assert_eq!(push(&store, "dry", true, NOW + 2), 3);
        assert_eq!(
            (store.serving("s").unwrap().revision, banner_of(&store, "s")),
            (2, "banner: two".into())
        );
        assert_eq!(store.rollback("s", 1, NOW + 3).unwrap(), 3);
        assert_eq!(banner_of(&store, "s"), "banner: one");
        assert_eq!(
            fs::read_to_string(dir.path().join("rules/s.yaml")).unwrap(),
            rules("s", "one")
        );
        let history = |store: &RuleStore| {
            let (revisions, serving) = store.list("s").unwrap();
            let list: Vec<(u64, Origin, i64)> =
                revisions.iter().map(|r| (r.revision, r.origin, r.created_ms)).collect();
            (list, serving)
        };
        let want = (
            vec![
                (1, Origin::Push, NOW),
                (2, Origin::Push, NOW + 1),
                (3, Origin::Rollback, NOW + 3),
            ],
            3,
        );
        assert_eq!(history(&store), want);
        let (two, serving) = store.get("s", 2).unwrap();
        assert_eq!((&*two.content, serving), (rules("s", "two").as_str(), false));
        let (current, serving) = store.get("s", 0).unwrap();
        assert_eq!(
            (current.revision, &*current.content, serving),
            (3, rules("s", "one").as_str(), true)
        );
        assert!(matches!(
            store.rollback("s", 9, NOW + 4),
            Err(StoreError::UnknownRevision { revision: 9, .. })
        ));
        assert!(matches!(store.rollback("t", 1, NOW + 4), Err(StoreError::UnknownShop(s)) if s == "t"));
        assert!(matches!(
            store.get("s", 4),
            Err(StoreError::UnknownRevision { revision: 4, .. })
        ));
        drop(store);

        // A restart: the same history, and numbering continues after it.
        let again = RuleStore::new(&dir.path().join("rules"), &dir.path().join("data"));
        again.rescan(NOW + 5);
        assert_eq!(history(&again), want);
        assert_eq!(&*again.get("s", 2).unwrap().0.content, rules("s", "two"));
        assert_eq!(again.rollback("s", 2, NOW + 6).unwrap(), 4);
        assert_eq!(banner_of(&again, "s"), "banner: two");
    }

    /// Issue 12: at start-up, of several files naming one shop, the first
    /// by name serves; the others are reported once, as duplicates.
    #[test]
    fn the_rescan_at_start_up_lets_the_first_file_by_name_win() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("rules")).unwrap();
        for (file, banner) in [("c.yaml", "c"), ("a.yaml", "a"), ("b.yaml", "b")] {
            fs::write(dir.path().join("rules").join(file), rules("s", banner)).unwrap();
        }
        fs::write(dir.path().join("rules/other.yaml"), rules("t", "t")).unwrap();
        fs::write(dir.path().join("rules/notes.txt"), "not a rule file").unwrap();
        let store = store(&dir);
        let report = store.rescan(NOW);
        assert_eq!(banner_of(&store, "s"), "banner: a");
        assert_eq!(banner_of(&store, "t"), "banner: t");
        let mut swapped = report.swapped.clone();
        swapped.sort();
        assert_eq!(swapped, [("s".to_string(), 1), ("t".to_string(), 1)]);
        let problems: Vec<(ProblemKind, PathBuf)> = report.problems.iter().map(|p| (p.kind, p.path.clone())).collect();
        assert_eq!(
            problems,
            [
                (ProblemKind::Duplicate, dir.path().join("rules/b.yaml")),
                (ProblemKind::Duplicate, dir.path().join("rules/c.yaml")),
            ]
        );
        assert_eq!(store.counters().files_duplicate, 2);
        // A rescan with nothing changed reports nothing and swaps nothing.
        let quiet = store.rescan(NOW + 1);
        assert_eq!((quiet.swapped.len(), quiet.problems.len()), (0, 0));
        assert_eq!(store.counters().files_duplicate, 2);
    }
}
