//! `Entries::fold` (one match on the packing width per loop), attacked: for
//! compact, narrow and wide profiles, over whole and windowed ranges, and
//! after entries were taken from the front and the back, `fold` and
//! `for_each` yield exactly what `next()` yields, in the same order.

use crate::hash::SplitMix64;
use crate::index::{Entry, Profile, NONE};
use crate::time::HourRange;

/// Hours of the entries: from here, over 2,000 hours.
const FIRST: u32 = 490_000;

/// `n` entries whose largest item and category are `item_max` and
/// `category_max` (both appear), hours over 2,000, actions all four.
fn entries(rng: &mut SplitMix64, n: usize, item_max: u32, category_max: u32) -> Vec<Entry> {
    let mut es: Vec<Entry> = (0..n)
        .map(|k| Entry {
            hour: FIRST + rng.below(2000) as u32,
            action: rng.below(4) as u8,
            item: match k {
                0 => item_max,
                _ => rng.below(u64::from(item_max) + 1) as u32,
            },
            category: match k {
                1 => category_max,
                _ if rng.below(5) == 0 => NONE,
                _ => rng.below(u64::from(category_max) + 1) as u32,
            },
        })
        .collect();
    es.sort_unstable();
    es.dedup();
    es
}

/// Every way of reading `range`'s entries agrees with `next()`.
fn check(p: &Profile, range: Option<HourRange>, what: &str) {
    let by_next: Vec<Entry> = {
        let mut it = p.unpacked(range);
        std::iter::from_fn(|| it.next()).collect()
    };
    let n = by_next.len();
    assert_eq!(p.unpacked(range).len(), n, "{what}");
    let folded = p.unpacked(range).fold(Vec::new(), |mut v, e| {
        v.push(e);
        v
    });
    assert_eq!(folded, by_next, "{what}: fold");
    let mut each = Vec::new();
    p.unpacked(range).for_each(|e| each.push(e));
    assert_eq!(each, by_next, "{what}: for_each");
    assert_eq!(p.unpacked(range).collect::<Vec<_>>(), by_next, "{what}: collect");
    assert_eq!(
        p.unpacked(range).filter(|e| e.action == 1).count(),
        by_next.iter().filter(|e| e.action == 1).count(),
        "{what}: filter count"
    );
    let mut back: Vec<Entry> = p.unpacked(range).rev().collect();
    back.reverse();
    assert_eq!(back, by_next, "{what}: rev");
    // Partly consumed from the front and the back, then folded.
    for (front, rear) in [(0, 0), (1, 0), (0, 1), (1, 1), (2, 3), (n / 2, n / 3), (n, 0), (0, n)] {
        if front + rear > n {
            continue;
        }
        let mut it = p.unpacked(range);
        let mut taken = Vec::new();
        for _ in 0..front {
            taken.push(it.next().unwrap());
        }
        for _ in 0..rear {
            it.next_back().unwrap();
        }
        assert_eq!(it.len(), n - front - rear, "{what}");
        let mut it2 = it.clone();
        let mut rest = Vec::new();
        it.for_each(|e| rest.push(e));
        assert_eq!(&taken[..], &by_next[..front], "{what}: {front} next()");
        assert_eq!(
            &rest[..],
            &by_next[front..n - rear],
            "{what}: next() x{front}, next_back() x{rear}, for_each"
        );
        let folded = it2.by_ref().fold(0usize, |k, e| {
            assert_eq!(e, by_next[front + k], "{what}: fold after {front}/{rear}, entry {k}");
            k + 1
        });
        assert_eq!(folded, n - front - rear, "{what}");
    }
}

#[test]
fn fold_and_for_each_yield_what_next_yields_at_every_width() {
    let mut rng = SplitMix64::new(17);
    // (what, largest item, largest category): compact holds items below
    // 2^17 and categories below 255, narrow below 2^24 and 2047.
    let widths = [
        ("compact", (1 << 17) - 1, 254),
        ("narrow by item", 1 << 17, 254),
        ("narrow by category", 10, 255),
        ("narrow at its bounds", (1 << 24) - 1, 2046),
        ("wide by item", 1 << 24, 2046),
        ("wide by category", 10, 2047),
        ("wide at u32::MAX - 1", u32::MAX - 1, u32::MAX - 1),
    ];
    for (what, item_max, category_max) in widths {
        for n in [0usize, 1, 2, 3, 17, 200, 3000] {
            let mut es = entries(&mut rng, n.max(2), item_max, category_max);
            es.truncate(n);
            let mut p = Profile::default();
            p.set_entries(&es);
            assert_eq!(p.entries().collect::<Vec<_>>(), es, "{what}: the entries round-trip");
            check(&p, None, &format!("{what}, {n}, whole"));
            for (first, last) in [
                (FIRST, FIRST + 2000),
                (FIRST + 500, FIRST + 1500),
                (FIRST + 700, FIRST + 700),
                (FIRST + 3000, FIRST + 4000),
                (0, FIRST - 1),
            ] {
                check(
                    &p,
                    Some(HourRange { first, last }),
                    &format!("{what}, {n}, hours {first}..={last}"),
                );
            }
        }
    }
}
