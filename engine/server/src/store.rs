//! The rule store: one hot-swappable rule set per shop, its revision history,
//! and the files that make both survive a restart.
//!
//! Readers (Decide, Claim, Size) take one [`ArcSwap::load`] of the shop's
//! serving revision and never wait for a writer. Writers (Push, Rollback, a
//! file edited in `--rules-dir`) validate and compile first, outside any
//! lock, then, under the shop's history mutex, assign the next revision,
//! persist it and `store()` it once. A rejected file changes nothing.
//!
//! On disk:
//! * `--rules-dir/<file>.yaml` holds each shop's serving file (pushes
//!   rewrite the file the shop was loaded from, or `<shop>.yaml`), written
//!   atomically (temp file, fsync, rename), so a restart serves the last push.
//! * `--data-dir/revisions/<shop>/<revision>-<origin>-<created_ms>.yaml`
//!   keeps every accepted revision, so `List`, `Get` and `Rollback` survive
//!   restarts and a revision number never names two different files.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ahash::RandomState;
use arc_swap::ArcSwap;
use dashmap::DashMap;
use parking_lot::Mutex;
use vitrine_core::{RuleErrors, RuleSet};

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

    fn parse(s: &str) -> Option<Origin> {
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

/// One entry of a shop's history.
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

/// What a store operation failed on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file is invalid: every error as `line:column: message`.
    #[error("{0}")]
    Invalid(RuleErrors),
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
    /// Persisting failed: nothing was swapped.
    #[error("cannot persist the rule file: {0}")]
    Io(#[from] std::io::Error),
}

struct ShopRules {
    serving: ArcSwap<Served>,
    /// Revisions in order; also serializes writers of this shop.
    history: Mutex<ShopHistory>,
}

struct ShopHistory {
    revisions: Vec<Revision>,
    /// The file in `--rules-dir` that holds the serving revision.
    file: PathBuf,
}

/// Every shop's rule sets.
pub struct RuleStore {
    shops: DashMap<Box<str>, Arc<ShopRules>, RandomState>,
    rules_dir: PathBuf,
    revisions_dir: PathBuf,
    /// Content last seen in each `--rules-dir` file (ours or a hand edit).
    seen: Mutex<HashMap<PathBuf, Arc<str>>>,
    /// Serializes every writer (push, rollback, a file sync): a file read
    /// from `--rules-dir` and the revision it becomes cannot interleave with
    /// a push of the same shop, so a sync never reverts a push.
    writing: Mutex<()>,
}

impl std::fmt::Debug for RuleStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleStore")
            .field("shops", &self.shops.len())
            .field("rules_dir", &self.rules_dir)
            .finish()
    }
}

/// A problem met while syncing `--rules-dir` (the rest of the files still load).
#[derive(Debug)]
pub struct FileProblem {
    /// The file.
    pub path: PathBuf,
    /// What is wrong, one line per error (`line:column: message` for rule errors).
    pub message: String,
}

/// What a sync of `--rules-dir` did.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Shops whose serving revision changed, with the new revision.
    pub swapped: Vec<(String, u64)>,
    /// Files that could not be used.
    pub problems: Vec<FileProblem>,
}

impl RuleStore {
    /// A store persisting to `rules_dir` and `data_dir/revisions`; loads
    /// nothing yet (see [`RuleStore::sync_dir`]).
    pub fn new(rules_dir: &Path, data_dir: &Path) -> RuleStore {
        RuleStore {
            shops: DashMap::default(),
            rules_dir: rules_dir.to_path_buf(),
            revisions_dir: data_dir.join("revisions"),
            seen: Mutex::new(HashMap::new()),
            writing: Mutex::new(()),
        }
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

    /// Validates and compiles `content`; unless `dry_run`, makes it the
    /// shop's serving rule set as a new revision. Returns the rule set with
    /// its (for a dry run: would-be) revision.
    pub fn push(&self, content: &str, origin: Origin, dry_run: bool, now_ms: i64) -> Result<Arc<Served>, StoreError> {
        let rules = RuleSet::load(content).map_err(StoreError::Invalid)?;
        if dry_run {
            let revision = self
                .shops
                .get(&*rules.shop)
                .map_or(1, |s| s.history.lock().next_revision());
            return Ok(Arc::new(Served {
                rules,
                revision,
                content: content.into(),
            }));
        }
        let shop = rules.shop.to_string();
        let _writing = self.writing.lock();
        self.install(&shop, rules, content.into(), origin, now_ms, None)
    }

    /// Serves an earlier revision again, as a new revision.
    pub fn rollback(&self, shop: &str, to: u64, now_ms: i64) -> Result<u64, StoreError> {
        let _writing = self.writing.lock();
        let entry = self.entry(shop)?;
        let content = {
            let history = entry.history.lock();
            history
                .revisions
                .iter()
                .find(|r| r.revision == to)
                .map(|r| r.content.clone())
                .ok_or_else(|| StoreError::UnknownRevision {
                    shop: shop.to_string(),
                    revision: to,
                })?
        };
        // An accepted revision compiles again; if a newer engine rejects it, say so.
        let rules = RuleSet::load(&content).map_err(StoreError::Invalid)?;
        Ok(self
            .install(shop, rules, content, Origin::Rollback, now_ms, None)?
            .revision)
    }

    /// A revision of a shop (0 = the serving one) and whether it is serving.
    pub fn get(&self, shop: &str, revision: u64) -> Result<(Revision, bool), StoreError> {
        let entry = self.entry(shop)?;
        let serving = entry.serving.load().revision;
        let want = if revision == 0 { serving } else { revision };
        let history = entry.history.lock();
        let found = history
            .revisions
            .iter()
            .find(|r| r.revision == want)
            .cloned()
            .ok_or_else(|| StoreError::UnknownRevision {
                shop: shop.to_string(),
                revision: want,
            })?;
        Ok((found, want == serving))
    }

    /// A shop's revisions, oldest first, and the serving one.
    pub fn list(&self, shop: &str) -> Result<(Vec<Revision>, u64), StoreError> {
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
        if let Some(f) = file {
            history.file = f.to_path_buf();
        }
        let served = self.record(shop, &mut history, rules, content, origin, now_ms, file.is_none())?;
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
        let mut history = ShopHistory {
            revisions: self.load_history(shop),
            file: file.map_or_else(|| self.rules_dir.join(file_name(shop)), Path::to_path_buf),
        };
        let served = match history.revisions.last() {
            Some(last) if *last.content == *content => Arc::new(Served {
                rules,
                revision: last.revision,
                content,
            }),
            _ => self.record(shop, &mut history, rules, content, origin, now_ms, file.is_none())?,
        };
        let entry = ShopRules {
            serving: ArcSwap::new(served.clone()),
            history: Mutex::new(history),
        };
        self.shops.insert(shop.into(), Arc::new(entry));
        Ok(served)
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
        write_file: bool,
    ) -> Result<Arc<Served>, StoreError> {
        let record = Revision {
            revision: history.next_revision(),
            created_ms: now_ms,
            origin,
            content,
        };
        self.persist(shop, &history.file, &record, write_file)?;
        let served = Arc::new(Served {
            rules,
            revision: record.revision,
            content: record.content.clone(),
        });
        history.revisions.push(record);
        Ok(served)
    }

    /// Writes the revision record and, unless it came from that file, the
    /// serving file. Both atomically.
    fn persist(&self, shop: &str, file: &Path, record: &Revision, write_file: bool) -> std::io::Result<()> {
        let dir = self.revisions_dir.join(file_name_stem(shop));
        fs::create_dir_all(&dir)?;
        let name = format!(
            "{:010}-{}-{}.yaml",
            record.revision,
            record.origin.as_str(),
            record.created_ms
        );
        write_atomically(&dir.join(name), record.content.as_bytes())?;
        let mut seen = self.seen.lock();
        if write_file {
            fs::create_dir_all(&self.rules_dir)?;
            write_atomically(file, record.content.as_bytes())?;
        }
        seen.insert(file.to_path_buf(), record.content.clone());
        Ok(())
    }

    /// The persisted history of a shop, oldest first (empty when none).
    fn load_history(&self, shop: &str) -> Vec<Revision> {
        let dir = self.revisions_dir.join(file_name_stem(shop));
        let Ok(entries) = fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut revisions: Vec<Revision> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let stem = name.strip_suffix(".yaml")?;
                let mut parts = stem.splitn(3, '-');
                let revision = parts.next()?.parse().ok()?;
                let origin = Origin::parse(parts.next()?)?;
                let created_ms = parts.next()?.parse().ok()?;
                let content = fs::read_to_string(e.path()).ok()?;
                Some(Revision {
                    revision,
                    created_ms,
                    origin,
                    content: content.into(),
                })
            })
            .collect();
        revisions.sort_by_key(|r| r.revision);
        revisions
    }

    /// Loads every `*.yaml` of `--rules-dir` whose content changed since the
    /// last sync (all of them at start-up). Invalid files are reported and
    /// change nothing; a file equal to what its shop serves is a no-op.
    pub fn sync_dir(&self, now_ms: i64) -> SyncReport {
        let mut report = SyncReport::default();
        let mut paths: Vec<PathBuf> = match fs::read_dir(&self.rules_dir) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                .collect(),
            Err(e) => {
                report.problems.push(FileProblem {
                    path: self.rules_dir.clone(),
                    message: format!("cannot read the rules directory: {e}"),
                });
                return report;
            }
        };
        paths.sort();
        // Which shop each file serves, to catch two files for one shop.
        let mut claimed: HashMap<String, PathBuf> = HashMap::new();
        for path in paths {
            let _writing = self.writing.lock();
            let content: Arc<str> = match fs::read_to_string(&path) {
                Ok(c) => c.into(),
                Err(e) => {
                    report.problems.push(FileProblem {
                        path,
                        message: format!("cannot read: {e}"),
                    });
                    continue;
                }
            };
            if self.seen.lock().get(&path).is_some_and(|c| **c == *content) {
                continue;
            }
            let rules = match RuleSet::load(&content) {
                Ok(r) => r,
                Err(errors) => {
                    self.seen.lock().insert(path.clone(), content);
                    report.problems.push(FileProblem {
                        path,
                        message: errors.to_string(),
                    });
                    continue;
                }
            };
            let shop = rules.shop.to_string();
            if let Some(first) = claimed.get(&shop) {
                report.problems.push(FileProblem {
                    message: format!("shop `{shop}` is already defined by {}; file ignored", first.display()),
                    path,
                });
                continue;
            }
            claimed.insert(shop.clone(), path.clone());
            let unchanged = self.with_serving(&shop, |s| *s.content == *content).unwrap_or(false);
            if unchanged {
                self.seen.lock().insert(path, content);
                continue;
            }
            match self.install(&shop, rules, content.clone(), Origin::File, now_ms, Some(&path)) {
                Ok(served) => {
                    let revision = served.revision;
                    self.seen.lock().insert(path, content);
                    report.swapped.push((shop, revision));
                }
                Err(e) => report.problems.push(FileProblem {
                    path,
                    message: e.to_string(),
                }),
            }
        }
        report
    }
}

impl ShopHistory {
    fn next_revision(&self) -> u64 {
        self.revisions.last().map_or(1, |r| r.revision + 1)
    }
}

/// Writes a file so that readers see the old or the new content, never a mix.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    // Make the rename itself durable.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A file-name-safe form of a shop name: `[A-Za-z0-9_.-]` kept, anything
/// else (and a leading dot) as `%XX`.
fn file_name_stem(shop: &str) -> String {
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

fn file_name(shop: &str) -> String {
    format!("{}.yaml", file_name_stem(shop))
}
