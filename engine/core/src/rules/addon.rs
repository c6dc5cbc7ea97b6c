//! The smart add-on: `items.add_on` of a rule file.
//!
//! ```yaml
//! items:
//!   add_on:
//!     threshold: 99               # e.g. free shipping from 99
//!     cart_total: ctx.cart_total  # the request attribute holding the cart's value
//! ```
//!
//! When the request's cart total (a number in the named context value) is
//! below `threshold`, a decision's items slot starts with items whose known
//! price (the latest `price` events carried, see [`crate::index`]) covers
//! the gap `threshold - cart total`, cheapest first, taken from the
//! complements of the context item and the matching pools, with the reason
//! `add_on`; the rest of the slot is filled as without an add-on.
//! [`crate::eval::decide`] applies it.

use super::plan::CtxKey;
use super::yaml::Node;
use super::Loader;

/// A validated `add_on` block.
#[derive(Debug, Clone, PartialEq)]
pub struct AddOn {
    /// The cart value to help reach (> 0).
    pub threshold: f64,
    /// The context value that holds the cart's value.
    pub cart_total: CtxKey,
}

impl AddOn {
    /// The gap `threshold - cart total` when the cart total is a number
    /// below the threshold; `None` when the add-on does not apply.
    pub fn gap(&self, cart_total: &str) -> Option<f64> {
        let total = super::plan::number(cart_total)?;
        // A finite gap only: 1e308 minus -1e308 is infinite, which no price
        // covers and a JSON renderer cannot print.
        Some(self.threshold - total).filter(|gap| *gap > 0.0 && gap.is_finite())
    }
}

const ADD_ON_KEYS: &[&str] = &["threshold", "cart_total"];

/// The context value `cart_total` reads when the file names none.
pub const DEFAULT_CART_TOTAL: &str = "ctx.cart_total";

/// Whether `name` may follow `ctx.` (the expression lexer's identifier).
fn is_ctx_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Loader<'_> {
    /// A number greater than 0.
    pub(super) fn positive(&mut self, node: &Node, what: &str) -> Option<f64> {
        let text = self.string(node, what)?;
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 => Some(v),
            _ => {
                self.error(
                    node.pos(),
                    format!("{what} must be a number greater than 0, found `{text}`"),
                );
                None
            }
        }
    }

    /// `items.add_on`.
    pub(super) fn add_on(&mut self, node: &Node) -> Option<AddOn> {
        let fields = self.fields(node, "`add_on`", ADD_ON_KEYS)?;
        let threshold = match fields.get("threshold") {
            Some(n) => self.positive(n, "`threshold`"),
            None => {
                self.error(node.pos(), "add_on needs a threshold");
                None
            }
        };
        let cart_total = match fields.get("cart_total") {
            Some(n) => {
                let text = self.string(n, "`cart_total`")?;
                match text.strip_prefix("ctx.").filter(|name| is_ctx_name(name)) {
                    Some(name) => Some(CtxKey::from_name(name)),
                    None => {
                        self.error(
                            n.pos(),
                            format!("`cart_total` must name a request value as ctx.NAME, e.g. ctx.cart_total, found `{text}`"),
                        );
                        None
                    }
                }
            }
            None => Some(CtxKey::Attr("cart_total".into())),
        };
        Some(AddOn {
            threshold: threshold?,
            cart_total: cart_total?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gap_is_there_only_below_the_threshold_with_a_number() {
        let a = AddOn {
            threshold: 99.0,
            cart_total: CtxKey::Attr("cart_total".into()),
        };
        assert_eq!(a.gap("60"), Some(39.0));
        assert_eq!(a.gap("98.5"), Some(0.5));
        assert_eq!(a.gap("-1"), Some(100.0));
        assert_eq!(a.gap("99"), None);
        assert_eq!(a.gap("150"), None);
        for not_a_number in ["", "abc", "NaN", "inf", "-inf", " 60", "60 "] {
            assert_eq!(a.gap(not_a_number), None, "{not_a_number:?}");
        }
        assert!(is_ctx_name("cart_total") && is_ctx_name("_x1") && is_ctx_name("Total"));
        assert!(!is_ctx_name("") && !is_ctx_name("1x") && !is_ctx_name("a.b") && !is_ctx_name("a-b"));
    }
}
