//! [`ItemView::popularity`] under attack, as a seqlock on its day.
//!
//! * A model of every interleaving of one reader with one rewrite: the
//!   writer's 17 stores (the day set to [`REWRITING`], the 8 buy words, the
//!   7 popularity words, the new day) are replayed one by one here, the
//!   reader reads the day after any of them and the rest after any later
//!   one (`popularity_with`'s hook). Each read must be the popularity
//!   before or after the rewrite, on every clock around the purchases,
//!   rings whose latest day is `u32::MAX` (the sentinel as a real day) and
//!   rewrites that keep the day.
//! * Writers serialized by the item's shard lock (`ItemTable::update`, as
//!   `ShopIndex::apply` runs them) log their purchases in lock order; many
//!   readers note how many were logged before and after each read; the log
//!   replayed afterwards says which values each read could see.
//! * Sums past `u32::MAX` saturate on every path (the popularity words and
//!   the count of the buys).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};

use super::*;
use crate::hash::SplitMix64;

/// The popularity on `today` of a ring, counted in `u64` and saturated.
fn expected(buys: &[(u32, u32); POPULARITY_DAYS], today: u32) -> u32 {
    let sum: u64 = buys
        .iter()
        .filter(|(day, _)| *day <= today && u64::from(today) - u64::from(*day) < 7)
        .map(|(_, n)| u64::from(*n))
        .sum();
    u32::try_from(sum).unwrap_or(u32::MAX)
}

/// The writer's stores of `ItemView::publish_buys` for `buys`, from step
/// `from` to before step `to` (17 steps: the sentinel, 8 buy words, 7
/// popularity words, the day), in its order.
fn write_steps(view: &ItemView, buys: &[(u32, u32); POPULARITY_DAYS], from: usize, to: usize) {
    let (day, popular) = popularity_from(buys);
    for step in from..to {
        match step {
            0 => view.popular_from.store(REWRITING, Ordering::SeqCst),
            1..=8 => {
                let (d, n) = buys[step - 1];
                view.buys[step - 1].store(u64::from(d) << 32 | u64::from(n), Ordering::SeqCst);
            }
            9..=15 => view.popular[step - 9].store(popular[step - 9], Ordering::SeqCst),
            _ => view.popular_from.store(day, Ordering::SeqCst),
        }
    }
}

const STEPS: usize = 17;

/// Every word of a view, to compare a replayed write with the real one.
fn words(view: &ItemView) -> (u32, Vec<u64>, Vec<u32>) {
    (
        view.popular_from.load(Ordering::SeqCst),
        view.buys.iter().map(|w| w.load(Ordering::SeqCst)).collect(),
        view.popular.iter().map(|w| w.load(Ordering::SeqCst)).collect(),
    )
}

/// A ring built by `add_buy` from `days`, then the counts of `big` slots
/// set to `u32::MAX / 2 + 1` (as a snapshot's rebuild could count them).
fn ring(days: &[u32], big: &[usize]) -> ItemInfo {
    let mut info = fresh(0);
    for &day in days {
        info.add_buy(day);
    }
    for &slot in big {
        if info.buys[slot % POPULARITY_DAYS].1 > 0 {
            info.buys[slot % POPULARITY_DAYS].1 = u32::MAX / 2 + 1;
        }
    }
    info
}

/// Clocks around a ring's days: each day with purchases, 8 before, 8 after,
/// day 0 and `u32::MAX` (the sentinel's value).
fn clocks(infos: &[&ItemInfo]) -> Vec<u32> {
    let mut todays = vec![0, 1, u32::MAX - 1, u32::MAX];
    for info in infos {
        for &(day, _) in &info.buys {
            for d in -8i64..=8 {
                todays.push((i64::from(day) + d).clamp(0, i64::from(u32::MAX)) as u32);
            }
        }
    }
    todays.sort_unstable();
    todays.dedup();
    todays
}

/// One reader against one rewrite, in every interleaving of the model:
/// its read sees the popularity before or after, never another.
#[test]
fn every_interleaving_of_a_read_and_a_rewrite_sees_before_or_after() {
    use proptest::prelude::*;
    let base = prop_oneof![
        Just(0u32),
        Just(100u32),
        Just((1u32 << 21) - 4),
        Just(u32::MAX - 12),
        Just(u32::MAX - 7),
    ];
    let offsets = proptest::collection::vec(0u32..13, 0..10);
    let big = proptest::collection::vec(0usize..8, 0..3);
    proptest!(ProptestConfig::with_cases(96), |(base in base, offsets in offsets, big in big, next in 0u32..13, keep in any::<bool>())| {
        let days: Vec<u32> = offsets.iter().map(|o| base.saturating_add(*o)).collect();
        let old = ring(&days, &big);
        let mut new = old.clone();
        // A purchase on the ring's latest day (the day kept), or any day.
        let latest = old.buys.iter().filter(|(_, n)| *n > 0).map(|(d, _)| *d).max();
        let day = match latest {
            Some(latest) if keep => latest,
            _ => base.saturating_add(next),
        };
        if new.buys[day as usize % POPULARITY_DAYS].1 < u32::MAX / 2 + 1 {
            new.add_buy(day);
        }
        let todays = clocks(&[&old, &new]);
        let reference = ItemView::default();
        reference.publish_buys(&new.buys);
        for s1 in 0..=STEPS {
            for s2 in s1..=STEPS {
                let view = ItemView::default();
                view.publish_buys(&old.buys);
                for &today in &todays {
                    write_steps(&view, &old.buys, 0, STEPS);
                    write_steps(&view, &new.buys, 0, s1);
                    let seen = view.popularity_with(today, || write_steps(&view, &new.buys, s1, s2));
                    let allowed = [expected(&old.buys, today), expected(&new.buys, today)];
                    prop_assert!(
                        allowed.contains(&seen),
                        "day {} read at step {}, rest at {}, today {}: {} not in {:?}\nold {:?}\nnew {:?}",
                        day, s1, s2, today, seen, allowed, old.buys, new.buys
                    );
                }
                write_steps(&view, &new.buys, 0, STEPS);
                prop_assert_eq!(words(&view), words(&reference), "the model's writer is publish_buys");
            }
        }
        for &today in &todays {
            prop_assert_eq!(reference.popularity(today), expected(&new.buys, today), "today {}", today);
        }
    });
}

/// A ring whose latest purchase day is `u32::MAX`, the sentinel's value:
/// readers always count its buys, and get them right on every clock.
#[test]
fn a_ring_whose_latest_day_is_the_sentinel_is_counted() {
    for days in [
        vec![u32::MAX],
        vec![u32::MAX, u32::MAX, u32::MAX - 3],
        vec![u32::MAX - 6, u32::MAX - 7, u32::MAX - 1, u32::MAX],
        (0..16).map(|k| u32::MAX - k).collect(),
    ] {
        let info = ring(&days, &[]);
        let table = ItemTable::default();
        let id = table.intern("x");
        for &day in &days {
            table.update(id, |info| info.add_buy(day));
        }
        let view = table.view(id).unwrap_or_else(|| panic!("no view"));
        assert_eq!(view.popular_from.load(Ordering::SeqCst), REWRITING, "{days:?}");
        for today in (u32::MAX - 20..=u32::MAX).chain([0, 1 << 21]) {
            assert_eq!(
                view.popularity(today),
                expected(&info.buys, today),
                "{days:?} today {today}"
            );
        }
    }
}

/// Mid-rewrite (the day is the sentinel) a reader on day `u32::MAX` counts
/// the buys; it must not take the sentinel for the day the popularity
/// words hold (they are those of day 100 here).
#[test]
fn a_reader_on_the_sentinel_day_during_a_rewrite_counts_the_buys() {
    let info = ring(&[100, 100, 101], &[]);
    let view = ItemView::default();
    view.publish_buys(&info.buys);
    write_steps(&view, &info.buys, 0, 1);
    for today in [u32::MAX, u32::MAX - 1, 100, 101, 106, 107, 108] {
        assert_eq!(view.popularity(today), expected(&info.buys, today), "today {today}");
    }
}

/// Sums past `u32::MAX` saturate, whether the popularity words answer or
/// the buys are counted (the latest day is the sentinel's, the clock is
/// before the latest purchase, or a rewrite is under way).
#[test]
fn sums_past_u32_max_saturate_on_every_path() {
    let half = u32::MAX / 2 + 1;
    for days in [
        [100u32, 101, 102],
        [u32::MAX - 2, u32::MAX - 1, u32::MAX],
        [u32::MAX - 10, u32::MAX - 9, u32::MAX - 8],
    ] {
        let mut buys = [(0, 0); POPULARITY_DAYS];
        for day in days {
            buys[day as usize % POPULARITY_DAYS] = (day, half);
        }
        let view = ItemView::default();
        view.publish_buys(&buys);
        for today in days[0]..=days[2].saturating_add(8) {
            assert_eq!(view.popularity(today), expected(&buys, today), "{days:?} today {today}");
        }
        write_steps(&view, &buys, 0, 1);
        for today in days[0]..=days[2].saturating_add(8) {
            assert_eq!(
                view.popularity(today),
                expected(&buys, today),
                "mid-rewrite, {days:?} today {today}"
            );
        }
    }
}

/// Writers serialized by the shard lock (logging each purchase, in lock
/// order, before it is published) and readers on clocks around the
/// purchases: each read is the popularity of some prefix of the log that
/// was published while it ran, and at the end exactly the ring's count.
/// Rounds with days drawn around a base (the latest day rarely moves), on
/// one day (every rewrite keeps it) and on rising days (most rewrites move
/// it, and readers follow the day being written).
#[test]
fn concurrent_reads_see_a_state_published_while_they_ran() {
    const WRITERS: usize = 2;
    const READERS: usize = 3;
    const PURCHASES: usize = 6_000;
    for (round, (base, spread, rising)) in [
        (0u32, 15u64, false),
        ((1 << 21) - 3, 15, false),
        (u32::MAX - 20, 15, false),
        (u32::MAX - 7, 15, false),
        (u32::MAX - 1, 4, false),
        (500, 1, false),
        (0, 0, true),
        (u32::MAX - (PURCHASES as u32 / 2) + 2, 0, true),
    ]
    .into_iter()
    .enumerate()
    {
        let mut rng = SplitMix64::new(round as u64 + 17);
        // Days base - 7 ..= base + 7 (spread 1: one day), or rising two
        // purchases a day; clamped to the u32 range, u32::MAX itself included.
        let days: Vec<u32> = (0..PURCHASES)
            .map(|i| {
                let offset = if rising {
                    i as i64 / 2
                } else {
                    (rng.next_u64() % spread) as i64 - (spread as i64 / 2)
                };
                (i64::from(base) + offset).clamp(0, i64::from(u32::MAX)) as u32
            })
            .collect();
        let fixed: Vec<u32> = [-9i64, -1, 0, 1, 3, 6, 7, 8, 13]
            .iter()
            .map(|&d| (i64::from(base) + d).clamp(0, i64::from(u32::MAX)) as u32)
            .chain([u32::MAX])
            .collect();
        let table = ItemTable::default();
        let id = table.intern("x");
        let log = Mutex::new(Vec::with_capacity(PURCHASES));
        let logged = AtomicUsize::new(0);
        let done = AtomicBool::new(false);
        let start = Barrier::new(WRITERS + READERS);
        let reads: Vec<Vec<(u32, usize, usize, u32)>> = std::thread::scope(|scope| {
            let writers: Vec<_> = (0..WRITERS)
                .map(|w| {
                    let (table, days, log, logged, start) = (&table, &days, &log, &logged, &start);
                    scope.spawn(move || {
                        start.wait();
                        for &day in days.iter().skip(w).step_by(WRITERS) {
                            table.update(id, |info| {
                                info.add_buy(day);
                                // Under the shard lock: the log's order is the writes'.
                                log.lock().unwrap_or_else(|e| e.into_inner()).push(day);
                                logged.fetch_add(1, Ordering::SeqCst);
                            });
                        }
                    })
                })
                .collect();
            let readers: Vec<_> = (0..READERS)
                .map(|r| {
                    let (table, days, fixed, logged, done, start) = (&table, &days, &fixed, &logged, &done, &start);
                    scope.spawn(move || {
                        start.wait();
                        let view = table.view(id).unwrap_or_else(|| panic!("no view"));
                        let mut reads = Vec::new();
                        let mut k = r;
                        loop {
                            let last = done.load(Ordering::SeqCst);
                            for _ in 0..fixed.len() {
                                k += 1;
                                let before = logged.load(Ordering::SeqCst);
                                let today = if rising {
                                    // Around the day being written now.
                                    let day = days[before.min(PURCHASES - 1)];
                                    day.saturating_add((k % 10) as u32).saturating_sub(1)
                                } else {
                                    fixed[k % fixed.len()]
                                };
                                let seen = view.popularity(today);
                                let after = logged.load(Ordering::SeqCst);
                                if reads.len() < 400_000 {
                                    reads.push((today, before, after, seen));
                                }
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
            done.store(true, Ordering::SeqCst);
            readers
                .into_iter()
                .map(|r| r.join().unwrap_or_else(|_| panic!("a reader failed")))
                .collect()
        });
        // The ring after each prefix of the log.
        let log = log.into_inner().unwrap_or_else(|e| e.into_inner());
        assert_eq!(log.len(), PURCHASES);
        let mut info = fresh(0);
        let mut rings = vec![info.buys];
        for &day in &log {
            info.add_buy(day);
            rings.push(info.buys);
        }
        let mut checked = 0;
        for (today, before, later, seen) in reads.into_iter().flatten() {
            // Logged `before`: the first `before - 1` are published (the
            // last may be publishing); at most `later` are.
            let states = &rings[before.saturating_sub(1)..=later];
            assert!(
                states.iter().any(|ring| expected(ring, today) == seen),
                "round {round}, today {today}: {seen} not in {:?}",
                states.iter().map(|ring| expected(ring, today)).collect::<Vec<_>>()
            );
            checked += 1;
        }
        assert!(checked > 0);
        let view = table.view(id).unwrap_or_else(|| panic!("no view"));
        for today in fixed.iter().copied().chain(days.iter().copied()) {
            assert_eq!(
                view.popularity(today),
                expected(&info.buys, today),
                "round {round}, today {today}"
            );
        }
    }
}
