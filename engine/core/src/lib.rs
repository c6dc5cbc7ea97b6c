//! Vitrine's engine core: the rule language, the audience index and decisions.
//!
//! Data flows one way, and the folders follow it: rule files are parsed
//! ([`rules::yaml`], [`rules::expr`]), validated and compiled ([`rules`],
//! [`rules::plan`]) into an immutable [`RuleSet`]; behavior events are
//! validated ([`event`]) and applied to a per-shop [`ShopIndex`] ([`index`]);
//! a decision ([`eval::decide`]) evaluates the compiled plan for one visitor
//! against that visitor's profile, while audience sizes ([`eval::size`])
//! evaluate the same plan as bitmap algebra over the whole shop. Claims
//! ([`claims`]) count grants against caps and budgets; [`snapshot`] encodes
//! the index for restarts; [`codec`] is the byte codec of every on-disk
//! format (here and in the server); [`time`] and [`hash`] are the shared
//! arithmetic.
//!
//! The key design choice: the index keeps every event in two shapes, columns
//! (roaring bitmaps of visitors per action and day, tag and tier) for
//! population questions, and rows (one compact profile per visitor) for
//! one-visitor questions. A decision reads one profile under one shard lock
//! and never scans bitmaps; an audience size never loops over all visitors
//! unless the expression forces it. The crate is pure: no async, no I/O.

pub mod claims;
pub mod codec;
pub mod eval;
pub mod event;
pub mod exposure;
pub mod hash;
pub mod index;
pub mod rules;
pub mod snapshot;
pub mod time;

pub use claims::{ClaimLedger, ClaimOutcome, Grants, LedgerClaim, LedgerError, LedgerImage, MemoryLedger};
pub use eval::decide::{claim, decide, prepare_claim, ClaimRequest, Context, DecideRequest, Decision};
pub use eval::size::{audience_sizes, size_of, size_of_with, SizeError};
pub use event::{Action, Event, EventError, RejectReason};
pub use exposure::Exposure;
pub use index::{Index, IndexStats, ShopIndex};
pub use rules::{Limits, RuleError, RuleErrors, RuleSet};
pub use snapshot::{Snapshot, SnapshotError};
