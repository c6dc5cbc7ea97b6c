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
        self.tags.iter().any(|t| t.present)
    }

    /// The entries whose hour lies in `range`, oldest first: two binary
    /// searches (entries are sorted by hour first), so a scan of a window
    /// touches only that window's entries and tests nothing per entry.
    #[inline]
    pub(crate) fn entries_in(&self, range: HourRange) -> &[Entry] {
        let start = self.entries.partition_point(|e| e.hour < range.first);
        let end = self.entries.partition_point(|e| e.hour <= range.last).max(start);
        &self.entries[start..end]
    }
}
