//! The demo's measured stream: decisions for the demo visitors through the
//! real Decide path (so the decision log records them as exposures), then
//! purchases after them, in which one kind of benefit really works.
//!
//! Each demo visitor gets one decision at a fixed instant three days (and a
//! few hours) before the seed's `now`. A visitor offered [`WORKS`] (a
//! benefit with a 10% holdout) buys within the next three days with
//! probability [`TREATED_RATE`]; every other visitor, its held-out control
//! group included, with [`BASE_RATE`]. So `vitrine report lift --window 7d`
//! finds that benefit's lift with an interval clear of 0, and no lift
//! distinguishable from 0 for the other benefits with a holdout (their
//! groups buy alike). The demo personas' own purchases in the window add
//! to both groups. Deterministic: a fixed seed per shop.

use std::borrow::Cow;

use vitrine_core::event::Fields;
use vitrine_core::hash::SplitMix64;
use vitrine_core::Event;
use vitrine_proto::v1 as pb;

use crate::state::Engine;

/// The benefit that really works: (shop, benefit id).
pub const WORKS: (&str, &str) = ("demo-apparel", "win-back-20");
/// Purchase probability of a visitor offered [`WORKS`].
pub const TREATED_RATE: f64 = 0.30;
/// Purchase probability of every other visitor.
pub const BASE_RATE: f64 = 0.08;

const DAY: i64 = 86_400_000;
const HOUR: i64 = 3_600_000;

/// Decides for `visitors` demo visitors of `shop` (`v-0000`, ...) at
/// instants before `now_ms` and applies the purchases that follow; returns
/// how many decisions were made and how many purchases applied.
pub fn seed(engine: &Engine, shop: &str, visitors: usize, now_ms: i64) -> (usize, usize) {
    if engine.rules.serving(shop).is_none() {
        return (0, 0);
    }
    let works = (shop == WORKS.0).then_some(WORKS.1);
    let mut rng = SplitMix64::new(0x11f7 ^ shop.len() as u64);
    let (mut decided, mut bought) = (0, 0);
    for n in 0..visitors {
        let visitor = format!("v-{n:04}");
        let at = now_ms - 3 * DAY - rng.below(12) as i64 * HOUR;
        let request = pb::DecideRequest {
            shop: shop.to_string(),
            visitor: visitor.clone(),
            now_ms: at,
            ..Default::default()
        };
        let Ok(response) = crate::api::grpc::decide(engine, &request) else {
            continue;
        };
        decided += 1;
        let treated = response.benefit.as_ref().is_some_and(|b| works == Some(b.id.as_str()));
        let rate = if treated { TREATED_RATE } else { BASE_RATE };
        let draw = rng.below(1_000_000) as f64 / 1_000_000.0;
        let (hours, price) = (1 + rng.below(71) as i64, 20 + rng.below(19) * 10);
        if draw >= rate {
            continue;
        }
        let fields = Fields {
            shop: Some(Cow::Owned(shop.to_string())),
            visitor: Some(Cow::Owned(visitor)),
            action: Some(Cow::Borrowed("purchase")),
            item: Some(Cow::Owned(
                response
                    .items
                    .first()
                    .map_or_else(|| "sku-demo".to_string(), |i| i.id.clone()),
            )),
            price: Some(price as f64),
            quantity: Some(1),
            ts: Some(at + hours * HOUR),
            id: Some(Cow::Owned(format!("demo-lift-{n}"))),
            ..Fields::default()
        };
        if let Ok(event) = Event::validate(fields).and_then(|e| engine.admit(e)) {
            engine.apply(&event);
            bought += 1;
        }
    }
    (decided, bought)
}
