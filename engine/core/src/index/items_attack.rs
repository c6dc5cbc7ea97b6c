//! The popularity of [`ItemView`] under attack: writers (serialized by
//! the item's shard lock, as `ShopIndex::apply` runs them) adding purchases
//! while readers read without a lock, and clocks at day 0, before the
//! latest purchase, at the old word's bound (day 2^21) and near `u32::MAX`.
//! A reader may only see a popularity some sequential history gives: here
//! between 0 and the purchases added in its window, and, once the writers
//! are done, exactly the count of the ring.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;

use super::*;
use crate::hash::SplitMix64;

/// The count over the 7 days ending `today`, written from the ring.
fn counted(info: &ItemInfo, today: u32) -> u32 {
    info.buys
        .iter()
        .filter(|(day, _)| *day <= today && u64::from(today) - u64::from(*day) < 7)
        .map(|(_, n)| *n)
        .sum()
}

/// Days around `base`: purchases on them, and the clocks readers use.
fn scenario(base: u32, seed: u64) -> (Vec<u32>, Vec<u32>) {
    let mut rng = SplitMix64::new(seed);
    // Days from base - 7 to base + 7 (slots collide: a later day replaces
    // an earlier one), clamped to the u32 range and below u32::MAX - 7.
    let top = u32::MAX - 7;
    let buys = (0..20_000)
        .map(|_| {
            let offset = (rng.next_u64() % 15) as i64 - 7;
            (i64::from(base) + offset).clamp(0, i64::from(top)) as u32
        })
        .collect();
    let todays = [-8i64, -1, 0, 3, 6, 7, 13]
        .iter()
        .map(|&d| (i64::from(base) + d).clamp(0, i64::from(top)) as u32)
        .collect();
    (buys, todays)
}

#[test]
fn readers_see_only_sequential_popularities_while_writers_add() {
    const WRITERS: usize = 3;
    const READERS: usize = 3;
    for (round, base) in [0, 5, 20_000, (1 << 21) - 3, (1 << 21) + 2, u32::MAX - 20, u32::MAX - 7]
        .into_iter()
        .enumerate()
    {
        let (buys, todays) = scenario(base, round as u64 + 1);
        // The most a sequential history can count on `today`: every
        // purchase in its window (replacements only remove).
        let bound: Vec<u32> = todays
            .iter()
            .map(|&t| {
                buys.iter()
                    .filter(|&&d| d <= t && u64::from(t) - u64::from(d) < 7)
                    .count() as u32
            })
            .collect();
        let table = ItemTable::default();
        let id = table.intern("x");
        let done = AtomicBool::new(false);
        let start = Barrier::new(WRITERS + READERS);
        std::thread::scope(|scope| {
            let writers: Vec<_> = (0..WRITERS)
                .map(|w| {
                    let (table, buys, start) = (&table, &buys, &start);
                    scope.spawn(move || {
                        start.wait();
                        for &day in buys.iter().skip(w).step_by(WRITERS) {
                            table.update(id, |info| info.add_buy(day));
                        }
                    })
                })
                .collect();
            let readers: Vec<_> = (0..READERS)
                .map(|_| {
                    let (table, todays, bound, done, start) = (&table, &todays, &bound, &done, &start);
                    scope.spawn(move || {
                        start.wait();
                        let view = table.view(id).unwrap_or_else(|| panic!("no view"));
                        let mut reads = 0u64;
                        loop {
                            let last = done.load(Ordering::Acquire);
                            for (&today, &most) in todays.iter().zip(bound) {
                                let seen = view.popularity(today);
                                assert!(seen <= most, "base {base}: {seen} on day {today}, at most {most}");
                                reads += 1;
                            }
                            if last {
                                return reads;
                            }
                        }
                    })
                })
                .collect();
            for w in writers {
                w.join().unwrap_or_else(|_| panic!("a writer failed"));
            }
            done.store(true, Ordering::Release);
            for r in readers {
                assert!(r.join().unwrap_or_else(|_| panic!("a reader failed")) > 0);
            }
        });
        let info = table
            .facts(id, |info| info.clone())
            .unwrap_or_else(|| panic!("no facts"));
        let view = table.view(id).unwrap_or_else(|| panic!("no view"));
        for &today in &todays {
            assert_eq!(
                view.popularity(today),
                counted(&info, today),
                "base {base}, today {today}"
            );
        }
        // The final ring is the one any order of the same purchases gives.
        let mut sequential = info.clone();
        sequential.buys = [(0, 0); POPULARITY_DAYS];
        for &day in &buys {
            sequential.add_buy(day);
        }
        assert_eq!(info.buys, sequential.buys, "base {base}");
    }
}

/// Clocks before, at and after purchases on day 0, at the old word's bound and
/// near `u32::MAX`: the view's popularity is the ring's count.
#[test]
fn popularity_on_every_clock_around_the_purchases() {
    for base in [0u32, 1, 6, 7, (1 << 21) - 1, 1 << 21, u32::MAX - 14] {
        for pattern in 0..8u32 {
            let table = ItemTable::default();
            let id = table.intern("x");
            for k in 0..8u32 {
                if pattern >> (k % 3) & 1 == 1 || k == pattern {
                    let day = base.saturating_add(k).min(u32::MAX - 7);
                    table.update(id, |info| info.add_buy(day));
                }
            }
            let info = table
                .facts(id, |info| info.clone())
                .unwrap_or_else(|| panic!("no facts"));
            let view = table.view(id).unwrap_or_else(|| panic!("no view"));
            let from = base.saturating_sub(3);
            let to = base.saturating_add(20).min(u32::MAX - 7);
            for today in from..=to {
                assert_eq!(
                    view.popularity(today),
                    counted(&info, today),
                    "base {base}, pattern {pattern}, today {today}: {:?}",
                    info.buys
                );
            }
        }
    }
}
