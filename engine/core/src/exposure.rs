//! Exposures: decisions applied to the index as offers and hold-outs.

use crate::eval::decide::Slot;
use crate::index::ShopIndex;

/// One decision as the index records it: what `visitor` was offered and
/// which entries were held out from it, at `ts_ms`.
#[derive(Debug, Clone, Copy)]
pub struct Exposure<'a> {
    /// When the decision was made, ms since the Unix epoch.
    pub ts_ms: i64,
    /// The visitor decided for.
    pub visitor: &'a str,
    /// The banner shown, if any.
    pub banner: Option<&'a str>,
    /// The benefit offered, if any.
    pub benefit: Option<&'a str>,
    /// Entries the visitor was eligible for but held out from.
    pub held_out: &'a [(Slot, &'a str)],
}

impl ShopIndex {
    /// Records `e` in the visitor's profile and the exposure bitmaps; true
    /// if anything was new.
    pub fn apply_exposure(&self, e: &Exposure<'_>) -> bool {
        let _ = e;
        false // placeholder: the index side lands with the exposures change
    }
}
