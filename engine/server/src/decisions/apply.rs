//! Applying a decision record to the index as an exposure: the same step
//! for a record of this process (embedded) and one read back from the
//! decisions topic (cluster), so every replica records the same offers.

use vitrine_core::eval::decide::Slot;
use vitrine_core::{Exposure, ExposureError};

use super::record::{self, Record, Wire};
use crate::metrics::decisions::RecordRejected;
use crate::state::Engine;

/// What became of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Handed to the shop's index.
    Exposure,
    /// An anonymous decision: logged, nothing to record per visitor.
    Anonymous,
    /// A shop outside `--shops`: another replica group's.
    OtherShop,
}

/// Applies a record of this process's own decision.
pub fn apply_own(engine: &Engine, r: &Record) -> Result<Applied, RecordRejected> {
    let held: Vec<(Slot, &str)> = r.held_out.iter().map(|(s, id)| (*s, &**id)).collect();
    apply(
        engine,
        &r.shop,
        &Exposure {
            ts_ms: r.ts_ms,
            visitor: r.visitor(),
            banner: r.banner.as_deref(),
            benefit: r.benefit.as_deref(),
            held_out: &held,
        },
    )
}

/// Applies a record read back from the decisions topic.
pub fn apply_wire(engine: &Engine, w: &Wire<'_>) -> Result<Applied, RecordRejected> {
    let held: Vec<(Slot, &str)> = w.held_out_slots().collect();
    apply(
        engine,
        &w.shop,
        &Exposure {
            ts_ms: w.ts,
            visitor: &w.visitor,
            banner: w.banner.as_deref(),
            benefit: w.benefit.as_deref(),
            held_out: &held,
        },
    )
}

/// Decodes and applies one message of the decisions topic, counting what
/// became of it; `None` is a tombstone.
pub fn apply_message(engine: &Engine, payload: Option<&[u8]>) -> Result<Applied, RecordRejected> {
    let outcome = match payload {
        None => Err(RecordRejected::Tombstone),
        Some(bytes) => record::parse(bytes).and_then(|w| apply_wire(engine, &w)),
    };
    if let Err(reason) = outcome {
        engine.decisions.rejected(reason);
    }
    outcome
}

fn apply(engine: &Engine, shop: &str, e: &Exposure<'_>) -> Result<Applied, RecordRejected> {
    if !engine.cluster.shops.serves(shop) {
        return Ok(Applied::OtherShop);
    }
    if !engine.rules.serves(shop) {
        return Err(RecordRejected::UnknownShop);
    }
    if e.visitor.is_empty() {
        return Ok(Applied::Anonymous);
    }
    // A shop's first state may be an exposure (a Decide before any event):
    // its index counts hours on the zone of its rule file, as for an event.
    let index = engine
        .index
        .shop_or_create_in(shop, || crate::zones::zone_for(&engine.rules, shop));
    index.try_apply_exposure(e).map_err(|err| match err {
        ExposureError::TooManyEntries => RecordRejected::TooManyEntries,
        ExposureError::MissingVisitor | ExposureError::BadId { .. } => RecordRejected::BadId,
        ExposureError::TooManyHeldOut(_) => RecordRejected::TooMany,
        ExposureError::HeldOutOfItems => RecordRejected::BadSlot,
        ExposureError::BadInstant(_) => RecordRejected::BadTs,
    })?;
    engine.decisions.exposure_applied();
    Ok(Applied::Exposure)
}
