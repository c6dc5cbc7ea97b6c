//! Read-only questions a decision asks of a profile, beyond those in
//! `index/mod.rs`, built on the profile's fields so the layout stays there.

use super::{Entry, Profile, HEAD};
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
        let words = self.facts.get(HEAD..).unwrap_or_default();
        let width = self.width();
        let hour = |i: usize| Entry::hour_of(&words[i * width..(i + 1) * width]);
        let n = words.len() / width;
        let start = partition_point(n, |i| hour(i) < range.first);
        let end = partition_point(n, |i| hour(i) <= range.last).max(start);
        words[start * width..end * width].chunks_exact(width).map(Entry::unpack)
    }
}

/// The first index in `0..n` where `before` turns false (`before` is true
/// then false over the range, as `slice::partition_point` asks).
#[inline]
fn partition_point(n: usize, before: impl Fn(usize) -> bool) -> usize {
    let (mut low, mut high) = (0, n);
    while low < high {
        let mid = low + (high - low) / 2;
        if before(mid) {
            low = mid + 1;
        } else {
            high = mid;
        }
    }
    low
}
