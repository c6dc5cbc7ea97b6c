//! The items slot's signals: what a visitor's recent history says about
//! each candidate item (carted, favorited, bought, its category viewed, its
//! popularity), and the reasons the renderer is given. Shared by the
//! ranking in [`crate::eval::decide`] and the add-on in [`crate::eval::addon`].

use std::sync::Arc;

use crate::event::Action;
use crate::index::{Profile, ShopIndex, NONE};
use crate::rules::catalog::UNKNOWN;
use crate::rules::RuleSet;
use crate::time::{Unit, Window};

/// How far back the visitor's carts, favorites and category views shape the ranking.
pub const AFFINITY_WINDOW: Window = Window {
    amount: 30,
    unit: Unit::Days,
};

/// Why an item is in the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ItemReason {
    /// Completes the item in the request's context.
    Complement,
    /// The visitor carted it (within 30 days) and has not bought it.
    InCart,
    /// The visitor favorited it (within 30 days) and has not bought it.
    Favorited,
    /// The visitor viewed its category within 30 days.
    ViewedCategory,
    /// Bought by the shop's buyers in the last 7 days.
    Popular,
    /// From a matching pool, in the author's order.
    Pool,
    /// Its known price covers what the cart lacks to reach the add-on threshold.
    AddOn,
}

impl ItemReason {
    /// Every reason, in declaration (and rank) order: `ALL[r as usize] == r`.
    pub const ALL: [ItemReason; 7] = [
        ItemReason::Complement,
        ItemReason::InCart,
        ItemReason::Favorited,
        ItemReason::ViewedCategory,
        ItemReason::Popular,
        ItemReason::Pool,
        ItemReason::AddOn,
    ];

    /// The short reason sent to the renderer.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemReason::Complement => "complement",
            ItemReason::InCart => "in_cart",
            ItemReason::Favorited => "favorited",
            ItemReason::ViewedCategory => "viewed_category",
            ItemReason::Popular => "popular",
            ItemReason::Pool => "pool",
            ItemReason::AddOn => "add_on",
        }
    }
}

/// One recommended item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick<'r> {
    /// Item id.
    pub id: &'r str,
    /// Why it is there.
    pub reason: ItemReason,
}

/// What the visitor's recent history says about items.
#[derive(Default)]
pub(crate) struct Signals<'a> {
    shop: Option<&'a ShopIndex>,
    today: u32,
    /// (item id, bit 0 carted, bit 1 favorited, bit 2 bought) within the
    /// affinity window: up to [`FEW_ITEMS`] entries sorted by item with
    /// flags merged; more, in the profile's order (see [`Signals::flags`]).
    items: Vec<(u32, u8)>,
    /// The same, an item once with its flags merged, in an open-addressing
    /// table (`flags` 0: empty slot) of a power-of-two size at least twice
    /// the entries, built only past [`FEW_ITEMS`] entries.
    table: Vec<(u32, u8)>,
    /// (category id, views) within the affinity window.
    categories: Vec<(u32, u32)>,
    /// Item ids bought within `exclude_purchased`.
    excluded: Vec<u32>,
}

/// The memory of [`Signals`], handed back by [`Signals::into_buffers`]
/// for the next decision.
#[derive(Debug, Default)]
pub(crate) struct SignalBuffers {
    items: Vec<(u32, u8)>,
    table: Vec<(u32, u8)>,
    categories: Vec<(u32, u32)>,
    excluded: Vec<u32>,
}

impl SignalBuffers {
    /// Gives back memory beyond `keep` elements per buffer, so one visitor
    /// with a huge history does not leave a thread holding it.
    pub(crate) fn trim(&mut self, keep: usize) {
        self.items.shrink_to(keep);
        self.table.shrink_to(keep);
        self.categories.shrink_to(keep);
        self.excluded.shrink_to(keep);
    }
}

/// Category ids below this are counted in an array on the stack.
const FEW_CATEGORIES: usize = 64;

/// Item entries up to this many are sorted for binary search; past it they
/// go into [`Signals::table`] (a heavy visitor's hundreds: sorting them took
/// a fifth of such a decision's instructions).
const FEW_ITEMS: usize = 16;

const CARTED: u8 = 1;
const FAVORITED: u8 = 2;
const BOUGHT: u8 = 4;

/// The flag of each behavior (an entry's `action`, `Action::BEHAVIORS`
/// order); views count toward their category instead.
const ITEM_FLAG: [u8; 4] = {
    let mut flags = [0; 4];
    flags[Action::Cart as usize] = CARTED;
    flags[Action::Favorite as usize] = FAVORITED;
    flags[Action::Purchase as usize] = BOUGHT;
    flags
};

impl<'a> Signals<'a> {
    /// The signals at clock reading `now_ms` (the shop's clock, `clock_of`).
    #[cfg(test)]
    pub(super) fn of(
        shop: Option<&'a ShopIndex>,
        profile: Option<&Profile>,
        exclude: Option<Window>,
        now_ms: i64,
    ) -> Signals<'a> {
        Signals::reusing(shop, profile, exclude, now_ms, SignalBuffers::default())
    }

    /// [`Signals::of`] in `buffers`' memory (cleared first): what a
    /// decision's scratch keeps between decisions, so that reading the
    /// signals allocates nothing once the buffers have grown.
    pub(super) fn reusing(
        shop: Option<&'a ShopIndex>,
        profile: Option<&Profile>,
        exclude: Option<Window>,
        now_ms: i64,
        buffers: SignalBuffers,
    ) -> Signals<'a> {
        let SignalBuffers {
            mut items,
            mut table,
            mut categories,
            mut excluded,
        } = buffers;
        items.clear();
        table.clear();
        categories.clear();
        excluded.clear();
        let mut s = Signals {
            shop,
            today: ShopIndex::today(now_ms),
            items,
            table,
            categories,
            excluded,
        };
        let Some(p) = profile else { return s };
        if let Some(w) = exclude {
            let range = w.range(now_ms);
            s.excluded
                .extend(p.purchases().iter().filter(|b| range.contains(b.hour)).map(|b| b.item));
        }
        let range = AFFINITY_WINDOW.range(now_ms);
        // Views per category: the first `FEW_CATEGORIES` ids counted in
        // place, any other in the list (each category once either way).
        let mut few = [0u32; FEW_CATEGORIES];
        let mut few_used = 0;
        p.entries_in(range).for_each(|e| {
            let flag = ITEM_FLAG[usize::from(e.action & 3)];
            if flag != 0 {
                s.items.push((e.item, flag));
            } else if let Some(n) = few.get_mut(e.category as usize) {
                *n += 1;
                few_used = few_used.max(e.category as usize + 1);
            } else if e.category != NONE {
                match s.categories.iter_mut().find(|(c, _)| *c == e.category) {
                    Some((_, n)) => *n += 1,
                    None => s.categories.push((e.category, 1)),
                }
            }
        });
        s.categories.extend(
            few[..few_used]
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(c, n)| (c as u32, *n)),
        );
        if s.items.len() <= FEW_ITEMS {
            // Sorted by item with flags merged, for binary search.
            s.items.sort_unstable_by_key(|(i, _)| *i);
            s.items.dedup_by(|(item, flag), (kept, kept_flag)| {
                let same = item == kept;
                if same {
                    *kept_flag |= *flag;
                }
                same
            });
        } else {
            s.table.resize((2 * s.items.len()).next_power_of_two(), (0, 0));
            for &(item, flag) in &s.items {
                let at = slot(&s.table, item);
                let (kept, kept_flag) = &mut s.table[at];
                *kept = item;
                *kept_flag |= flag;
            }
        }
        s
    }

    /// The flags of `item` within the affinity window (0: none).
    #[inline]
    fn flags(&self, item: u32) -> u8 {
        if self.table.is_empty() {
            self.items
                .binary_search_by_key(&item, |(i, _)| *i)
                .map_or(0, |at| self.items[at].1)
        } else {
            self.table[slot(&self.table, item)].1
        }
    }

    /// The buffers, for the next decision's [`Signals::reusing`].
    pub(super) fn into_buffers(self) -> SignalBuffers {
        SignalBuffers {
            items: self.items,
            table: self.table,
            categories: self.categories,
            excluded: self.excluded,
        }
    }

    /// The rank class and strength within the class of the item with id
    /// `item` in the shop's item table (or [`UNKNOWN`] for an item the shop
    /// has not seen), or `None` when the visitor bought it within
    /// `exclude_purchased`. The item's facts are read by id, without a lock.
    pub(super) fn judge_id(&self, item: u32) -> Option<(ItemReason, u32)> {
        let Some(shop) = self.shop.filter(|_| item != UNKNOWN) else {
            return Some((ItemReason::Pool, 0));
        };
        if self.excluded.contains(&item) {
            return None;
        }
        let flags = self.flags(item);
        if flags & BOUGHT == 0 {
            if flags & CARTED != 0 {
                return Some((ItemReason::InCart, 0));
            }
            if flags & FAVORITED != 0 {
                return Some((ItemReason::Favorited, 0));
            }
        }
        let Some(info) = shop.items.view(item) else {
            return Some((ItemReason::Pool, 0));
        };
        let category = info.category();
        if let Some((_, views)) = self.categories.iter().find(|(c, _)| *c == category && category != NONE) {
            return Some((ItemReason::ViewedCategory, *views));
        }
        Some(match info.popularity(self.today) {
            0 => (ItemReason::Pool, 0),
            n => (ItemReason::Popular, n),
        })
    }
}

/// Where `item` is in `table` (a power of two in size, at most half full,
/// `flags` 0 marking empty slots), or the empty slot where it goes:
/// Fibonacci hashing, then linear probing.
#[inline]
fn slot(table: &[(u32, u8)], item: u32) -> usize {
    let mask = table.len() - 1;
    let hash = u64::from(item).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut at = hash.checked_shr(64 - table.len().trailing_zeros()).unwrap_or(0) as usize & mask;
    while table[at].1 != 0 && table[at].0 != item {
        at = (at + 1) & mask;
    }
    at
}

#[cfg(test)]
impl Signals<'_> {
    /// [`Signals::judge_id`] of the item named `item`.
    pub(super) fn judge(&self, item: &str) -> Option<(ItemReason, u32)> {
        self.judge_id(self.shop.and_then(|s| s.item_id(item)).unwrap_or(UNKNOWN))
    }
}

/// Where an item of the rule file sits: `list` is a pool's index, or
/// [`ItemAt::COMPLEMENTS`] for the context item's complements; `pos` its
/// place in that list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ItemAt {
    pub(crate) list: u32,
    pub(crate) pos: u32,
}

impl ItemAt {
    pub(crate) const COMPLEMENTS: u32 = u32::MAX;

    /// The item's id.
    #[inline]
    pub(crate) fn id<'r>(self, rules: &'r RuleSet, complements: &'r [Arc<str>]) -> &'r str {
        let list = match self.list {
            ItemAt::COMPLEMENTS => complements,
            pool => rules.items.pools.get(pool as usize).map_or(&[][..], |p| &p.items[..]),
        };
        list.get(self.pos as usize).map_or("", |id| &**id)
    }
}
