//! Lift: what an entry with a holdout adds, measured on its control group.
//!
//! For a banner or benefit, the **treated** group is the visitors a decision
//! offered it to, the **control** group the visitors who were eligible but
//! held out of it (they got what the rule file gives without that entry).
//! A visitor in both groups (offered on one day, held out on another: the
//! holdout share changed, or the rule file did) counts in the group its
//! *first* exposure in the range put it in. A visitor **converted** when it
//! has a purchase in the shop within `window` after that first exposure;
//! the group's spend is the sum of those purchases.
//!
//! * `rate` = converted / visitors (0 for an empty group);
//! * `lift` = treated rate - control rate;
//! * the 95% interval of `lift` is Agresti and Caffo's for a difference of
//!   proportions: Wald's interval after adding one conversion and one
//!   non-conversion to each group, `q_i = (x_i + 1) / (n_i + 2)`,
//!   `(q1 - q2) +- 1.96 * sqrt(q1 (1 - q1) / (n1 + 2) + q2 (1 - q2) / (n2 + 2))`,
//!   cut to `[-1, 1]`. Plain Wald collapses to a point when a group has no
//!   conversion (11 held-out visitors, none converted: "+15 points, [+8, +23]");
//!   this one stays honest for small groups and rates near 0 or 1. With an
//!   empty group it is `[-1, 1]` (nothing is known), never NaN;
//! * `spend` is per visitor of the group (0 for an empty group).
//!
//! Exact on the index's data, computed by bitmap algebra where it can be:
//! the groups' candidates are the unions of the entry's day columns over the
//! range; each candidate's first exposure, group and purchases are then read
//! from its profile, shard by shard. What is approximate is the time
//! resolution: exposures and purchases are kept to the hour, so an exposure
//! is in `[from_ms, to_ms)` when its hour *starts* there, and the conversion
//! window covers the exposure's whole hour onwards (`window` hours from the
//! start of it: a purchase earlier in the same hour counts).
//! `docs/measurement.md` has the same with examples.

use roaring::RoaringBitmap;

use crate::exposure::day_of_hour;
use crate::index::{ShopIndex, SHARDS, SHARD_BITS};
use crate::rules::RuleSet;
use crate::rules::Slot;
use crate::time::{HourRange, Window, HOUR_MS, MAX_WINDOW_HOURS};

/// The z value of a two-sided 95% interval.
pub const Z_95: f64 = 1.96;

/// What a lift report asks for.
#[derive(Debug, Clone, Copy)]
pub struct LiftQuery<'a> {
    /// A banner or benefit id; `None` = every entry with a holdout.
    pub id: Option<&'a str>,
    /// Conversion window after the first exposure (at most 400d).
    pub window: Window,
    /// Exposures from this instant (ms), inclusive; 0 = unbounded.
    pub from_ms: i64,
    /// Exposures until this instant (ms), exclusive; 0 = unbounded.
    pub to_ms: i64,
}

/// One entry's report.
#[derive(Debug, Clone, PartialEq)]
pub struct LiftRow {
    /// Banner or benefit.
    pub slot: Slot,
    /// Its id.
    pub id: String,
    /// Visitors offered it.
    pub treated: u64,
    /// Visitors eligible but held out.
    pub control: u64,
    /// Treated visitors with a purchase within the window after their first exposure.
    pub treated_converted: u64,
    /// Control visitors with a purchase within the window after their first exposure.
    pub control_converted: u64,
    /// `treated_converted / treated` (0 when empty).
    pub treated_rate: f64,
    /// `control_converted / control` (0 when empty).
    pub control_rate: f64,
    /// `treated_rate - control_rate`.
    pub lift: f64,
    /// Low end of the 95% interval of `lift`.
    pub ci_low: f64,
    /// High end of the 95% interval of `lift`.
    pub ci_high: f64,
    /// Spend within the window per treated visitor (0 when empty).
    pub treated_spend: f64,
    /// Spend within the window per control visitor (0 when empty).
    pub control_spend: f64,
}

/// Why a lift report cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LiftError {
    /// The rule set has no banner or benefit with this id.
    #[error("unknown id `{0}`: no banner or benefit of the shop's rule set has it")]
    UnknownId(String),
    /// The window is empty or longer than 400 days.
    #[error("invalid window `{0}`: expected 1h to 400d")]
    Window(Window),
    /// `from_ms` or `to_ms` is negative, or `from_ms` is after `to_ms`.
    #[error("invalid range: from_ms {from_ms} and to_ms {to_ms} must be >= 0, and from_ms <= to_ms unless to_ms is 0 (unbounded)")]
    Range {
        /// As asked.
        from_ms: i64,
        /// As asked.
        to_ms: i64,
    },
}

/// Counts of one group.
#[derive(Debug, Clone, Copy, Default)]
struct Group {
    visitors: u64,
    converted: u64,
    spend: f64,
}

impl Group {
    fn rate(&self) -> f64 {
        ratio(self.converted as f64, self.visitors)
    }
}

fn ratio(x: f64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        x / n as f64
    }
}

/// The first hour starting at or after `ms` (ms >= 0), as a `u32` hour.
fn hour_at_or_after(ms: i64) -> u32 {
    let h = ms.div_euclid(HOUR_MS) + i64::from(ms.rem_euclid(HOUR_MS) != 0);
    h.clamp(0, i64::from(u32::MAX)) as u32
}

/// The lift report of the entries `q` asks for, in file order (banners,
/// then benefits).
pub fn lift(rules: &RuleSet, shop: Option<&ShopIndex>, q: &LiftQuery<'_>) -> Result<Vec<LiftRow>, LiftError> {
    if q.window.amount == 0 || q.window.hours() > u64::from(MAX_WINDOW_HOURS) {
        return Err(LiftError::Window(q.window));
    }
    if q.from_ms < 0 || q.to_ms < 0 || (q.to_ms != 0 && q.from_ms > q.to_ms) {
        return Err(LiftError::Range {
            from_ms: q.from_ms,
            to_ms: q.to_ms,
        });
    }
    let banners = rules.banners.iter().map(|b| (Slot::Banner, &*b.id, b.holdout_bp));
    let benefits = rules.benefits.iter().map(|b| (Slot::Benefit, &*b.id, b.holdout_bp));
    let entries: Vec<(Slot, &str)> = banners
        .chain(benefits)
        .filter(|&(_, id, bp)| match q.id {
            Some(want) => id == want,
            None => bp > 0,
        })
        .map(|(slot, id, _)| (slot, id))
        .collect();
    if let (Some(id), true) = (q.id, entries.is_empty()) {
        return Err(LiftError::UnknownId(id.to_string()));
    }
    // Exposure hours in range: those starting in [from, to).
    // On the shop's clock, like the exposures' hours.
    let range = shop.and_then(|shop| {
        let first = hour_at_or_after(shop.clock_ms(q.from_ms));
        let last = match q.to_ms {
            0 => Some(u32::MAX),
            to => hour_at_or_after(shop.clock_ms(to)).checked_sub(1),
        };
        last.filter(|&l| l >= first)
            .map(|last| (shop, HourRange { first, last }))
    });
    Ok(entries
        .into_iter()
        .map(|(slot, id)| {
            let (treated, control) = match range {
                Some((shop, range)) => groups(shop, slot, id, range, q.window),
                None => Default::default(),
            };
            row(slot, id, treated, control)
        })
        .collect())
}

/// The treated and control groups of one entry.
fn groups(shop: &ShopIndex, slot: Slot, id: &str, range: HourRange, window: Window) -> (Group, Group) {
    let ex = &shop.exposures;
    let Some(key) = ex.key(slot, id) else {
        return Default::default();
    };
    let (first_day, last_day) = (day_of_hour(range.first), day_of_hour(range.last));
    // The unions are copied out: no column lock is held while profiles are read.
    let candidates: RoaringBitmap = match ex.days.get(&key) {
        Some(days) => days.union(false, first_day, last_day) | days.union(true, first_day, last_day),
        None => return Default::default(),
    };
    let span = window.hours().min(u64::from(u32::MAX)) as u32;
    let mut by_shard: Vec<Vec<u32>> = vec![Vec::new(); SHARDS];
    for v in &candidates {
        by_shard[v as usize & (SHARDS - 1)].push(v);
    }
    let mut out = [Group::default(); 2];
    for (shard, ids) in by_shard.iter().enumerate().filter(|(_, ids)| !ids.is_empty()) {
        shop.with_shard(shard, |profiles| {
            for &v in ids {
                let Some(p) = profiles.get((v >> SHARD_BITS) as usize) else {
                    continue;
                };
                // Facts are sorted by hour: the first match is the first exposure
                // (offered before held out within one hour).
                let Some(first) = p
                    .exposures()
                    .iter()
                    .skip_while(|f| f.hour < range.first)
                    .take_while(|f| f.hour <= range.last)
                    .find(|f| f.entry == key)
                else {
                    continue;
                };
                let after = HourRange {
                    first: first.hour,
                    last: first.hour.saturating_add(span - 1),
                };
                let (count, spend) = p.purchases_in(after);
                let group = &mut out[usize::from(first.held_out)];
                group.visitors += 1;
                group.converted += u64::from(count > 0);
                group.spend += spend;
            }
        });
    }
    (out[0], out[1])
}

fn row(slot: Slot, id: &str, treated: Group, control: Group) -> LiftRow {
    let (p1, p2) = (treated.rate(), control.rate());
    let lift = p1 - p2;
    let (ci_low, ci_high) = interval(treated, control);
    LiftRow {
        slot,
        id: id.to_string(),
        treated: treated.visitors,
        control: control.visitors,
        treated_converted: treated.converted,
        control_converted: control.converted,
        treated_rate: p1,
        control_rate: p2,
        lift,
        ci_low,
        ci_high,
        treated_spend: ratio(treated.spend, treated.visitors),
        control_spend: ratio(control.spend, control.visitors),
    }
}

/// The 95% interval of `treated rate - control rate` (Agresti-Caffo, cut to
/// `[-1, 1]`; `[-1, 1]` when a group is empty).
fn interval(treated: Group, control: Group) -> (f64, f64) {
    if treated.visitors == 0 || control.visitors == 0 {
        return (-1.0, 1.0);
    }
    let adjusted = |g: Group| {
        let n = g.visitors as f64 + 2.0;
        ((g.converted as f64 + 1.0) / n, n)
    };
    let ((q1, n1), (q2, n2)) = (adjusted(treated), adjusted(control));
    let se = (q1 * (1.0 - q1) / n1 + q2 * (1.0 - q2) / n2).sqrt();
    let centre = q1 - q2;
    ((centre - Z_95 * se).max(-1.0), (centre + Z_95 * se).min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Unit;

    const WEEK: Window = Window {
        amount: 7,
        unit: Unit::Days,
    };

    fn query(id: Option<&str>) -> LiftQuery<'_> {
        LiftQuery {
            id,
            window: WEEK,
            from_ms: 0,
            to_ms: 0,
        }
    }

    fn rules() -> RuleSet {
        RuleSet::load(
            "shop: s\nbanners:\n  - banner: gold\n    holdout: 5%\n  - banner: plain\nbenefits:\n  - id: c10\n    kind: coupon\n    holdout: 10%\n  - id: pts\n    kind: points\n",
        )
        .unwrap()
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let r = rules();
        let err = |q: LiftQuery<'_>| lift(&r, None, &q).unwrap_err().to_string();
        assert_eq!(
            err(query(Some("nope"))),
            "unknown id `nope`: no banner or benefit of the shop's rule set has it"
        );
        let long = Window {
            amount: 401,
            unit: Unit::Days,
        };
        assert_eq!(
            err(LiftQuery {
                window: long,
                ..query(None)
            }),
            "invalid window `401d`: expected 1h to 400d"
        );
        assert_eq!(
            err(LiftQuery {
                from_ms: 10,
                to_ms: 5,
                ..query(None)
            }),
            "invalid range: from_ms 10 and to_ms 5 must be >= 0, and from_ms <= to_ms unless to_ms is 0 (unbounded)"
        );
        assert!(lift(
            &r,
            None,
            &LiftQuery {
                from_ms: 10,
                ..query(None)
            }
        )
        .is_ok());
    }

    #[test]
    fn entries_with_a_holdout_in_file_order_or_the_one_asked() {
        let r = rules();
        let ids = |q| {
            lift(&r, None, &q)
                .unwrap()
                .into_iter()
                .map(|row| (row.slot, row.id))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ids(query(None)),
            [(Slot::Banner, "gold".to_string()), (Slot::Benefit, "c10".to_string())]
        );
        assert_eq!(ids(query(Some("pts"))), [(Slot::Benefit, "pts".to_string())]);
        let empty = &lift(&r, None, &query(Some("gold"))).unwrap()[0];
        assert_eq!(
            (empty.treated, empty.lift, empty.ci_low, empty.ci_high),
            (0, 0.0, -1.0, 1.0)
        );
    }

    #[test]
    fn agresti_caffo_interval_of_a_difference_of_proportions() {
        let g = |visitors, converted| Group {
            visitors,
            converted,
            spend: 10.0 * converted as f64,
        };
        let r = row(Slot::Benefit, "x", g(100, 20), g(50, 5));
        let (q1, q2): (f64, f64) = (21.0 / 102.0, 6.0 / 52.0);
        let se = (q1 * (1.0 - q1) / 102.0 + q2 * (1.0 - q2) / 52.0).sqrt();
        assert_eq!((r.treated_rate, r.control_rate), (0.2, 0.1));
        assert!((r.lift - 0.1).abs() < 1e-15);
        assert!((r.ci_low - (q1 - q2 - 1.96 * se)).abs() < 1e-15);
        assert!((r.ci_high - (q1 - q2 + 1.96 * se)).abs() < 1e-15);
        assert_eq!((r.treated_spend, r.control_spend), (2.0, 1.0));
        // A control group without a conversion is no proof: Wald's interval
        // would be [+8, +23] points here; this one holds 0.
        let small = row(Slot::Benefit, "x", g(91, 14), g(11, 0));
        assert!(small.ci_low < 0.0 && small.lift < small.ci_high, "{small:?}");
        let all = row(Slot::Benefit, "x", g(10, 10), g(10, 0));
        assert!(all.ci_low > 0.5 && all.ci_high == 1.0, "cut to 1: {all:?}");
        let none = row(Slot::Benefit, "x", g(0, 0), g(10, 3));
        assert_eq!((none.ci_low, none.ci_high, none.treated_spend), (-1.0, 1.0, 0.0));
    }

    #[test]
    fn range_bounds_round_up_to_the_hour() {
        assert_eq!(hour_at_or_after(0), 0);
        assert_eq!(hour_at_or_after(1), 1);
        assert_eq!(hour_at_or_after(HOUR_MS), 1);
        assert_eq!(hour_at_or_after(HOUR_MS + 1), 2);
    }
}
