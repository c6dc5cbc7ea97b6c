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
    /// [`Profile::has_action_in`] with the latest hours already decoded
    /// (`latest` must be this profile's [`Profile::latest_hours`]): the same
    /// answer, the same scan when the latest entries do not settle it.
    #[inline]
    pub(crate) fn has_action_in_given(&self, latest: &Latest, actions: ActionSet, range: HourRange) -> bool {
        self.has_action_by(|action| latest[usize::from(action & 3)], actions, range)
    }

    /// Whether any entry of `actions` lies in `range`, where `latest(action)`
    /// is 1 + the hour of the action's latest entry (0: none): O(1) when the
    /// latest entries settle it, a scan otherwise. The body of
    /// [`Profile::has_action_in`] and [`Profile::has_action_in_given`]
    /// (always inlined: a decision's behavior atoms run it; callgrind counted
    /// 10 instructions a decision more with a plain `#[inline]`).
    #[inline(always)]
    pub(super) fn has_action_by(&self, latest: impl Fn(u8) -> u32, actions: ActionSet, range: HourRange) -> bool {
        let mut maybe = false;
        for action in actions.iter() {
            match latest(action as u8) {
                0 => {}
                l if range.contains(l - 1) => return true,
                l => maybe |= l - 1 > range.last,
            }
        }
        maybe && self.any_entry(range, |e| actions.contains(Action::BEHAVIORS[e.action as usize]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::MAX_ENTRY_HOUR;

    /// `has_action_in_given` with the decoded latest hours answers as
    /// `has_action_in` does, for profiles of every packing width, latest
    /// hours near and far (the head's 15-bit offsets and their `FAR` code),
    /// and windows before, around and after the entries.
    #[test]
    fn latest_hours_answer_as_has_action_in() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let sets = Action::BEHAVIORS.map(ActionSet::one);
        for case in 0..300 {
            let base = next(1 << 20) as u32;
            let spread = [24, 2_000, 40_000, 200_000][case % 4];
            let items = [1_000, 1 << 20, 1 << 25][case % 3];
            let mut entries: Vec<Entry> = (0..1 + next(40))
                .map(|_| Entry {
                    hour: (base + next(spread) as u32).min(MAX_ENTRY_HOUR),
                    action: next(4) as u8,
                    item: next(items) as u32,
                    category: next(300) as u32,
                })
                .collect();
            entries.sort();
            entries.dedup();
            let mut p = Profile::default();
            p.set_entries(&entries);
            let latest = p.latest_hours();
            for _ in 0..40 {
                let first = (base + next(spread + 48) as u32).saturating_sub(24);
                let range = HourRange {
                    first,
                    last: first + next(spread) as u32,
                };
                for actions in sets.into_iter().chain([ActionSet::ALL]) {
                    assert_eq!(
                        p.has_action_in_given(&latest, actions, range),
                        p.has_action_in(actions, range),
                        "case {case}, {actions:?}, {range:?}"
                    );
                }
            }
        }
    }
}
