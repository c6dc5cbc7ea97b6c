//! Read-only questions a decision asks of a profile, beyond those in
//! `index/mod.rs`, built on the profile's fields so the layout stays there.

use super::{Entry, Profile};
use crate::time::HourRange;

impl Profile {
    /// Whether the visitor carries any tag now: a decision answers every
    /// `tag(...)` atom of a visitor without tags without looking the tag's
    /// name up in the shop's interner.
    #[inline]
    pub(crate) fn has_any_tag(&self) -> bool {
        self.tags().iter().any(|t| t.present)
    }

    /// The entries whose hour lies in `range`, oldest first: two binary
    /// searches over the packed entries (sorted by hour first), so a scan of
    /// a window unpacks only that window's entries and tests nothing per entry.
    #[inline]
    pub(crate) fn entries_in(&self, range: HourRange) -> impl DoubleEndedIterator<Item = Entry> + '_ {
        self.unpacked(Some(range))
    }
}
