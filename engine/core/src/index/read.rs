//! Read-only questions a decision asks of a profile, beyond those in
//! `index/mod.rs`, built on the profile's fields so the layout stays there.

use super::{Entry, Profile};
use crate::event::{Action, ActionSet};
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

/// 1 + the hour of the visitor's latest entry of each action (0: none),
/// decoded once for a decision whose atoms ask it several times (see
/// [`Profile::has_action_in_given`]).
pub(crate) type Latest = [u32; 4];

impl Profile {
    /// The latest hour + 1 of each action, indexed by action (0: none).
    #[inline]
    pub(crate) fn latest_hours(&self) -> Latest {
        self.latest_all()
    }

    /// [`Profile::has_action_in`] with the latest hours already decoded
    /// (`latest` must be this profile's [`Profile::latest_hours`]): the same
    /// answer, the same scan when the latest entries do not settle it.
    #[inline]
    pub(crate) fn has_action_in_given(&self, latest: &Latest, actions: ActionSet, range: HourRange) -> bool {
        let mut maybe = false;
        for action in actions.iter() {
            match latest[usize::from(action as u8 & 3)] {
                0 => {}
                l if range.contains(l - 1) => return true,
                l => maybe |= l - 1 > range.last,
            }
        }
        maybe && self.any_entry(range, |e| actions.contains(Action::BEHAVIORS[e.action as usize]))
    }
}
