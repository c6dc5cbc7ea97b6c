//! Rule files (`rules/README.md` teaches the language): YAML text in, a
//! validated and compiled [`RuleSet`] out, or every error of the file with
//! its `line:column`.
//!
//! Loading goes parse (YAML to positioned nodes) -> validate (shape, ids,
//! windows, timestamps, audience references and cycles, collecting every
//! error) -> compile (expressions into one [`Plan`]). A file is accepted or
//! rejected whole.
//!
//! The second edition's blocks live in their own modules: [`tiers`] (the
//! `tiers` block the `preview_tier` atom and a decision's tier preview
//! read, kept on the [`Plan`]) and [`addon`] (`items.add_on`); banners take
//! `params`, `starts` and `ends`, pools `starts` and `ends`, as benefits do.

pub mod addon;
pub mod catalog;
pub mod expr;
pub mod plan;
pub mod tiers;
pub mod yaml;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::time::{parse_timestamp_in, Window, Zone};
use expr::Expr;
use plan::{NodeId, Plan};
use yaml::{Node, Pos};

/// One problem in a rule file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RuleError {
    /// Where, in the file.
    pub pos: Pos,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.pos, self.message)
    }
}

/// The problems of a rejected rule file: the first ones found (at most
/// [`Limits::max_errors`]), in file order, and how many more there were.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RuleErrors(
    /// The errors kept, sorted by position.
    pub Vec<RuleError>,
    /// How many more errors were found and only counted.
    pub usize,
);

impl RuleErrors {
    /// The errors kept, sorted by position.
    pub fn errors(&self) -> &[RuleError] {
        &self.0
    }

    /// How many more errors were found past the bound and only counted.
    pub fn omitted(&self) -> usize {
        self.1
    }

    /// The closing line of a truncated list: `... and K more errors`.
    pub fn omitted_line(&self) -> Option<String> {
        match self.1 {
            0 => None,
            1 => Some("... and 1 more error".into()),
            k => Some(format!("... and {k} more errors")),
        }
    }
}

impl fmt::Display for RuleErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        if let Some(line) = self.omitted_line() {
            if !self.0.is_empty() {
                f.write_str("\n")?;
            }
            f.write_str(&line)?;
        }
        Ok(())
    }
}

/// Bounds on a rule file, each with a default: what one file may cost to
/// load, and how deep its evaluation may recurse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest rule file, in bytes.
    pub max_file_bytes: usize,
    /// Deepest nesting of YAML lists and mappings.
    pub max_yaml_depth: usize,
    /// Longest expression, in bytes.
    pub max_expression_bytes: usize,
    /// Deepest nesting of parentheses and `not` in one expression.
    pub max_expression_depth: usize,
    /// Most audiences in one file.
    pub max_audiences: usize,
    /// Longest chain of audience references (`a: b`, `b: c` is 2 from `a`).
    pub max_reference_depth: usize,
    /// Deepest nesting of an expression with every audience it references
    /// inlined, counting each `and`, `or`, `not`, reference and atom on the
    /// path: the recursion depth of a decision or a size.
    pub max_inlined_depth: usize,
    /// Errors reported; more are only counted.
    pub max_errors: usize,
}

/// Default of [`Limits::max_file_bytes`]: 1 MiB.
pub const DEFAULT_MAX_FILE_BYTES: usize = 1 << 20;
/// Default of [`Limits::max_audiences`].
pub const DEFAULT_MAX_AUDIENCES: usize = 1_000;
/// Default of [`Limits::max_reference_depth`].
pub const DEFAULT_MAX_REFERENCE_DEPTH: usize = 64;
/// Default of [`Limits::max_inlined_depth`].
pub const DEFAULT_MAX_INLINED_DEPTH: usize = 512;
/// Default of [`Limits::max_errors`].
pub const DEFAULT_MAX_ERRORS: usize = 100;

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            max_yaml_depth: yaml::DEFAULT_MAX_DEPTH,
            max_expression_bytes: expr::DEFAULT_MAX_BYTES,
            max_expression_depth: expr::DEFAULT_MAX_DEPTH,
            max_audiences: DEFAULT_MAX_AUDIENCES,
            max_reference_depth: DEFAULT_MAX_REFERENCE_DEPTH,
            max_inlined_depth: DEFAULT_MAX_INLINED_DEPTH,
            max_errors: DEFAULT_MAX_ERRORS,
        }
    }
}

impl Limits {
    /// The bounds of one expression.
    pub fn expression(&self) -> expr::Limits {
        expr::Limits {
            max_bytes: self.max_expression_bytes,
            max_depth: self.max_expression_depth,
        }
    }
}

/// A part of a decision, and the section of the rule file that decides it:
/// what an explanation step, a held-out entry or an exposure is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    /// The banner (`banners`).
    Banner,
    /// The items (`items`).
    Items,
    /// The benefit (`benefits`).
    Benefit,
}

/// A banner entry: the first whose `when` holds wins.
#[derive(Debug, Clone)]
pub struct Banner {
    /// Condition; `None` always matches.
    pub when: Option<NodeId>,
    /// The banner id handed to the renderer.
    pub id: Arc<str>,
    /// Passed through to the renderer untouched, in file order.
    pub params: Vec<(Arc<str>, Arc<str>)>,
    /// Shown from this instant (ms), inclusive.
    pub starts: Option<i64>,
    /// Shown until this instant (ms), exclusive.
    pub ends: Option<i64>,
    /// Share of the audience held out, in basis points (0..=10000).
    pub holdout_bp: u32,
}

impl Banner {
    /// Whether `now_ms` lies in `[starts, ends)`.
    pub fn in_window(&self, now_ms: i64) -> bool {
        in_window(self.starts, self.ends, now_ms)
    }
}

/// Whether `now_ms` lies in `[starts, ends)` (an absent bound is open).
#[inline]
pub fn in_window(starts: Option<i64>, ends: Option<i64>, now_ms: i64) -> bool {
    starts.is_none_or(|s| now_ms >= s) && ends.is_none_or(|e| now_ms < e)
}

/// A pool of candidate items.
#[derive(Debug, Clone)]
pub struct Pool {
    /// Condition; `None` always matches.
    pub when: Option<NodeId>,
    /// Items, in the author's order.
    pub items: Vec<Arc<str>>,
    /// Contributes from this instant (ms), inclusive.
    pub starts: Option<i64>,
    /// Contributes until this instant (ms), exclusive.
    pub ends: Option<i64>,
}

impl Pool {
    /// Whether `now_ms` lies in `[starts, ends)`.
    pub fn in_window(&self, now_ms: i64) -> bool {
        in_window(self.starts, self.ends, now_ms)
    }
}

/// The `items` section.
#[derive(Debug, Clone)]
pub struct ItemRules {
    /// At most this many items in a decision.
    pub limit: u32,
    /// Never show what the visitor bought within this window.
    pub exclude_purchased: Option<Window>,
    /// Candidate pools.
    pub pools: Vec<Pool>,
    /// Cross-sell items per context item.
    pub complements: HashMap<Box<str>, Vec<Arc<str>>>,
    /// The smart add-on, if the file has one.
    pub add_on: Option<addon::AddOn>,
    /// The pools' and complements' items by rule-local id, computed when
    /// the file is loaded (so the section is not edited afterwards).
    pub(crate) catalog: catalog::ItemCatalog,
}

/// The per-visitor cap of a benefit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    /// At most this many grants per visitor...
    pub per_visitor: u32,
    /// ...within this window (milliseconds, exact).
    pub window: Window,
}

/// A benefit that may be offered and claimed.
#[derive(Debug, Clone)]
pub struct Benefit {
    /// Id, unique in the file.
    pub id: Arc<str>,
    /// Condition; `None` always matches.
    pub when: Option<NodeId>,
    /// Free text: coupon, points, gift, ticket, ...
    pub kind: Arc<str>,
    /// Passed through to the renderer untouched, in file order.
    pub params: Vec<(Arc<str>, Arc<str>)>,
    /// Offered from this instant (ms), inclusive.
    pub starts: Option<i64>,
    /// Offered until this instant (ms), exclusive.
    pub ends: Option<i64>,
    /// At most this many grants in total.
    pub budget: Option<u64>,
    /// At most this many grants per visitor per window.
    pub cap: Option<Cap>,
    /// Share of the audience held out, in basis points (0..=10000).
    pub holdout_bp: u32,
}

impl Benefit {
    /// Whether `now_ms` lies in `[starts, ends)`.
    pub fn in_window(&self, now_ms: i64) -> bool {
        self.starts.is_none_or(|s| now_ms >= s) && self.ends.is_none_or(|e| now_ms < e)
    }
}

/// A validated, compiled rule file.
#[derive(Debug, Clone)]
pub struct RuleSet {
    /// The storefront it governs.
    pub shop: Arc<str>,
    /// Every compiled expression.
    pub plan: Plan,
    /// Banner entries, in order.
    pub banners: Vec<Banner>,
    /// The items section: read-only once loaded ([`RuleSet::items`]), so
    /// the rule-local item catalog built with it always describes it.
    pub(crate) items: ItemRules,
    /// Benefits, by priority.
    pub benefits: Vec<Benefit>,
    /// The shop's time zone (`timezone:`, UTC by default): day windows,
    /// `days_since` and `starts`/`ends` without an offset follow its clock.
    pub zone: Zone,
}

/// The item limit when a file sets none.
pub const DEFAULT_ITEM_LIMIT: u32 = 10;
/// The largest item limit a file or request may ask for.
pub const MAX_ITEM_LIMIT: u32 = 100;
/// Most entries of a file (banners and benefits together) with a holdout
/// above 0%: a decision holds a visitor out of at most this many, and its
/// decision record lists every one (`crate::exposure::MAX_HELD_OUT`).
pub const MAX_HOLDOUT_ENTRIES: usize = 64;

impl RuleSet {
    /// The items section, as loaded: read-only, so that the rule-local
    /// item ids computed with it (`rules::catalog`) always describe it.
    ///
    /// ```
    /// let rules = vitrine_core::RuleSet::load("shop: s\nitems:\n  pools:\n    - items: [a, b]\n").unwrap();
    /// assert_eq!(rules.items().pools[0].items.len(), 2);
    /// ```
    ///
    /// ```compile_fail
    /// let mut rules = vitrine_core::RuleSet::load("shop: s\nitems:\n  pools:\n    - items: [a, b]\n").unwrap();
    /// rules.items.pools[0].items.push("c".into()); // the section cannot be edited
    /// ```
    #[inline]
    pub fn items(&self) -> &ItemRules {
        &self.items
    }

    /// Parses, validates and compiles a rule file within the default [`Limits`].
    pub fn load(source: &str) -> Result<RuleSet, RuleErrors> {
        RuleSet::load_with(source, &Limits::default())
    }

    /// Parses, validates and compiles a rule file within `limits`.
    pub fn load_with(source: &str, limits: &Limits) -> Result<RuleSet, RuleErrors> {
        let source = yaml::strip_bom(source);
        let mut loader = Loader {
            source,
            lines: yaml::Lines::new(source),
            limits: *limits,
            errors: Vec::new(),
            omitted: 0,
            depths: Vec::new(),
            zone: Zone::utc(),
            holdouts: 0,
        };
        let result = loader.load();
        let mut errors = loader.errors;
        match result {
            Some(rules) if errors.is_empty() && loader.omitted == 0 => Ok(rules),
            _ => {
                errors.sort();
                errors.dedup();
                Err(RuleErrors(errors, loader.omitted))
            }
        }
    }

    /// The benefit with this id.
    pub fn benefit(&self, id: &str) -> Option<&Benefit> {
        self.benefits.iter().find(|b| &*b.id == id)
    }
}

struct Loader<'s> {
    source: &'s str,
    lines: yaml::Lines<'s>,
    limits: Limits,
    errors: Vec<RuleError>,
    /// Errors past `limits.max_errors`, counted only.
    omitted: usize,
    /// Each audience's nesting with its references inlined, once known.
    depths: Vec<Option<Depth>>,
    /// The file's `timezone:`, read before anything that reads a timestamp.
    zone: Zone,
    /// Entries with a holdout above 0% so far (at most [`MAX_HOLDOUT_ENTRIES`]).
    holdouts: usize,
}

/// How deep an expression nests with its audience references inlined.
#[derive(Debug, Clone, Copy, Default)]
struct Depth {
    /// Audience references along the deepest chain.
    refs: usize,
    /// Plan nodes along the deepest path.
    nodes: usize,
    /// Whether some audience it references is already over a limit (and reported).
    inner_over: bool,
}

/// An expression as written, with where it stands.
struct Written<'n> {
    expr: Expr,
    value: &'n str,
    pos: Pos,
}

const TOP_KEYS: &[&str] = &["shop", "audiences", "banners", "items", "benefits", "timezone", "tiers"];
const BANNER_KEYS: &[&str] = &["when", "banner", "params", "starts", "ends", "holdout"];
const ITEMS_KEYS: &[&str] = &["limit", "exclude_purchased", "pools", "complements", "add_on"];
const POOL_KEYS: &[&str] = &["when", "items", "starts", "ends"];
const BENEFIT_KEYS: &[&str] = &[
    "id", "when", "kind", "params", "starts", "ends", "budget", "cap", "holdout",
];
const CAP_KEYS: &[&str] = &["per_visitor", "window"];

type Fields<'n> = HashMap<&'n str, &'n Node>;

impl<'s> Loader<'s> {
    /// Whether the error list is full: further errors are only counted.
    fn full(&self) -> bool {
        self.errors.len() >= self.limits.max_errors
    }

    fn has_errors(&self) -> bool {
        !self.errors.is_empty() || self.omitted > 0
    }

    fn error(&mut self, pos: Pos, message: impl Into<String>) {
        if self.full() {
            self.omitted += 1;
            return;
        }
        self.errors.push(RuleError {
            pos,
            message: message.into(),
        });
    }

    /// An error at a byte offset of an expression; its position is only
    /// computed when the error is kept.
    fn error_in(&mut self, written: &Written<'_>, offset: usize, message: impl Into<String>) {
        if self.full() {
            self.omitted += 1;
            return;
        }
        let pos = self.pos_in(written, offset);
        self.error(pos, message);
    }

    /// The entries of a mapping, reporting unknown and duplicate keys.
    fn fields<'n>(&mut self, node: &'n Node, what: &str, allowed: &[&str]) -> Option<Fields<'n>> {
        let Node::Map { entries, .. } = node else {
            self.error(node.pos(), format!("{what} must be a mapping, found {}", node.kind()));
            return None;
        };
        let mut fields: Fields<'n> = HashMap::new();
        let mut seen: HashMap<&str, Pos> = HashMap::new();
        for (key, value) in entries {
            let Some(name) = key.as_str() else {
                self.error(key.pos(), format!("keys of {what} must be plain names"));
                continue;
            };
            if let Some(first) = seen.get(name) {
                self.error(
                    key.pos(),
                    format!("duplicate key `{name}` in {what} (first at {first})"),
                );
                continue;
            }
            seen.insert(name, key.pos());
            if !allowed.contains(&name) {
                self.error(
                    key.pos(),
                    format!(
                        "unknown key `{name}` in {what}; expected one of: {}",
                        allowed.join(", ")
                    ),
                );
                continue;
            }
            fields.insert(name, value);
        }
        Some(fields)
    }

    fn string<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n str> {
        match node {
            Node::Scalar { value, .. } if !node.is_null() && !value.is_empty() => Some(value),
            Node::Scalar { .. } => {
                self.error(node.pos(), format!("{what} must not be empty"));
                None
            }
            _ => {
                self.error(node.pos(), format!("{what} must be a string, found {}", node.kind()));
                None
            }
        }
    }

    fn list<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n [Node]> {
        match node {
            Node::Seq { items, .. } => Some(items),
            _ => {
                self.error(node.pos(), format!("{what} must be a list, found {}", node.kind()));
                None
            }
        }
    }

    fn integer(&mut self, node: &Node, what: &str, min: u64, max: u64) -> Option<u64> {
        let text = self.string(node, what)?;
        match text.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.error(
                    node.pos(),
                    format!("{what} must be a whole number from {min} to {max}, found `{text}`"),
                );
                None
            }
        }
    }

    fn window(&mut self, node: &Node, what: &str) -> Option<Window> {
        let text = self.string(node, what)?;
        match Window::parse(text) {
            Ok(w) => Some(w),
            Err(message) => {
                self.error(node.pos(), message);
                None
            }
        }
    }

    /// An RFC 3339 timestamp; without an offset, a wall-clock time of the
    /// file's `timezone:` (read first, wherever the file writes it).
    fn timestamp(&mut self, node: &Node, what: &str) -> Option<(i64, Pos)> {
        let text = self.string(node, what)?;
        match parse_timestamp_in(text, &self.zone) {
            Some(ms) => Some((ms, node.pos())),
            None => {
                self.error(
                    node.pos(),
                    format!("invalid timestamp `{text}`: expected RFC 3339, e.g. 2026-11-10T23:30:00+08:00"),
                );
                None
            }
        }
    }

    /// The `timezone:` of the file: an IANA name the built-in database knows.
    fn timezone(&mut self, node: &Node) -> Option<Zone> {
        let name = self.string(node, "`timezone`")?;
        let zone = Zone::get(name);
        if zone.is_none() {
            let shown: String = name.chars().take(crate::time::MAX_ZONE_NAME_BYTES).collect();
            self.error(node.pos(), format!("unknown time zone `{shown}`"));
        }
        zone
    }

    /// A `holdout:` percentage, counting the entries that have one.
    fn holdout(&mut self, node: &Node) -> u32 {
        let bp = self.percentage(node, "`holdout`").unwrap_or(0);
        if bp > 0 {
            self.holdouts += 1;
            if self.holdouts == MAX_HOLDOUT_ENTRIES + 1 {
                self.error(
                    node.pos(),
                    format!(
                        "more than {MAX_HOLDOUT_ENTRIES} banners and benefits have a holdout (a decision record lists each entry a visitor is held out of)"
                    ),
                );
            }
        }
        bp
    }

    fn percentage(&mut self, node: &Node, what: &str) -> Option<u32> {
        let text = self.string(node, what)?;
        let bp = text
            .strip_suffix('%')
            .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit() || c == '.'))
            .and_then(|n| n.parse::<f64>().ok())
            .filter(|p| (0.0..=100.0).contains(p))
            .map(|p| (p * 100.0).round() as u32);
        if bp.is_none() {
            self.error(
                node.pos(),
                format!("invalid percentage `{text}`: expected 0% to 100%, e.g. 10%"),
            );
        }
        bp
    }

    /// Parses an expression, mapping a syntax error into the file.
    fn expression<'n>(&mut self, node: &'n Node, what: &str) -> Option<Written<'n>> {
        let value = self.string(node, what)?;
        match expr::parse_with(value, &self.limits.expression()) {
            Ok(expr) => Some(Written {
                expr,
                value,
                pos: node.pos(),
            }),
            Err(e) => {
                if self.full() {
                    self.omitted += 1;
                } else {
                    let pos = self.lines.pos_in_scalar(node.pos(), value, e.offset);
                    self.error(pos, e.message);
                }
                None
            }
        }
    }

    fn pos_in(&self, written: &Written<'_>, offset: usize) -> Pos {
        self.lines.pos_in_scalar(written.pos, written.value, offset)
    }

    /// How deep `expr` nests with the audiences it references inlined (those
    /// whose depth is not known yet, in a cycle, count as leaves).
    fn inlined_depth(&self, expr: &Expr, defined: &HashMap<&str, usize>) -> Depth {
        let mut depth = Depth::default();
        let mut stack = vec![(expr, 1usize)];
        while let Some((e, level)) = stack.pop() {
            match e {
                Expr::And(xs) | Expr::Or(xs) => stack.extend(xs.iter().map(|x| (x, level + 1))),
                Expr::Not(x) => stack.push((x, level + 1)),
                Expr::Ref { name, .. } => {
                    depth.nodes = depth.nodes.max(level);
                    let inner = defined
                        .get(name.as_str())
                        .and_then(|&t| self.depths.get(t).copied().flatten());
                    if let Some(inner) = inner {
                        depth.refs = depth.refs.max(inner.refs.saturating_add(1));
                        depth.nodes = depth.nodes.max(level.saturating_add(inner.nodes));
                        depth.inner_over |= inner.inner_over || self.over(&inner);
                    }
                }
                _ => depth.nodes = depth.nodes.max(level),
            }
        }
        depth
    }

    fn over(&self, d: &Depth) -> bool {
        d.refs > self.limits.max_reference_depth || d.nodes > self.limits.max_inlined_depth
    }

    /// Reports an expression nested too deeply once its references are
    /// inlined, unless an audience it references already was.
    fn check_depth(&mut self, d: &Depth, pos: Pos, what: &str) {
        if d.inner_over || !self.over(d) {
            return;
        }
        let message = if d.refs > self.limits.max_reference_depth {
            format!(
                "{what} is nested too deeply: a chain of {} audience references starts here, more than the limit of {}",
                d.refs, self.limits.max_reference_depth
            )
        } else {
            format!(
                "{what} is nested too deeply: {} levels with its audience references inlined, more than the limit of {}",
                d.nodes, self.limits.max_inlined_depth
            )
        };
        self.error(pos, message);
    }

    /// Reports references to audiences that do not exist.
    fn check_refs(&mut self, written: &Written<'_>, defined: &HashMap<&str, usize>) {
        let mut missing = Vec::new();
        written.expr.walk(&mut |e| {
            if let Expr::Ref { name, span } = e {
                if !defined.contains_key(name.as_str()) {
                    missing.push((name.clone(), span.start));
                }
            }
        });
        for (name, offset) in missing {
            self.error_in(written, offset, format!("undefined audience `{name}`"));
        }
    }

    fn load(&mut self) -> Option<RuleSet> {
        if self.source.len() > self.limits.max_file_bytes {
            let pos = self.lines.position_of(self.limits.max_file_bytes);
            self.error(
                pos,
                format!(
                    "rule file is {} bytes, more than the limit of {} bytes",
                    self.source.len(),
                    self.limits.max_file_bytes
                ),
            );
            return None;
        }
        let root = match yaml::parse_with(self.source, self.limits.max_yaml_depth) {
            Ok(Some(root)) => root,
            Ok(None) => {
                self.error(
                    Pos { line: 1, column: 1 },
                    "empty rule file: expected a mapping with at least `shop`",
                );
                return None;
            }
            Err(e) => {
                self.error(e.pos, e.message);
                return None;
            }
        };
        self.check_no_aliases(&root);
        let top = self.fields(&root, "the rule file", TOP_KEYS)?;

        let shop = match top.get("shop") {
            Some(node) => self.string(node, "`shop`"),
            None => {
                self.error(root.pos(), "missing required key `shop`");
                None
            }
        };
        // Before any timestamp: `starts`/`ends` without an offset read it.
        if let Some(zone) = top.get("timezone").and_then(|node| self.timezone(node)) {
            self.zone = zone;
        }

        // Audiences: names first, so that references in any order resolve.
        let mut names: Vec<Arc<str>> = Vec::new();
        let mut defined: HashMap<&str, usize> = HashMap::new();
        let mut written: Vec<Option<Written<'_>>> = Vec::new();
        if let Some(node) = top.get("audiences") {
            if let Node::Map { entries, .. } = node {
                let mut first_at: HashMap<&str, Pos> = HashMap::new();
                if let Some((key, _)) = entries.get(self.limits.max_audiences) {
                    self.error(
                        key.pos(),
                        format!(
                            "too many audiences: more than the limit of {} in one file",
                            self.limits.max_audiences
                        ),
                    );
                }
                for (key, value) in entries.iter().take(self.limits.max_audiences) {
                    let Some(name) = key.as_str() else {
                        self.error(key.pos(), "audience names must be plain names");
                        continue;
                    };
                    if let Some(first) = first_at.get(name) {
                        self.error(
                            key.pos(),
                            format!("duplicate audience `{name}` (first defined at {first})"),
                        );
                        continue;
                    }
                    first_at.insert(name, key.pos());
                    if !expr::is_audience_name(name) {
                        self.error(
                            key.pos(),
                            format!("invalid audience name `{name}`: use lower-case letters, digits and `_`, not starting with a digit, and not a keyword"),
                        );
                        continue;
                    }
                    defined.insert(name, names.len());
                    names.push(name.into());
                    written.push(self.expression(value, &format!("audience `{name}`")));
                }
            } else if !node.is_null() {
                self.error(
                    node.pos(),
                    format!("`audiences` must be a mapping, found {}", node.kind()),
                );
            }
        }
        for w in written.iter().flatten() {
            self.check_refs(w, &defined);
        }
        self.check_cycles(&names, &written, &defined);

        let mut plan = Plan::default();
        plan.declare_audiences(&names);
        for (slot, w) in written.iter().enumerate() {
            if let Some(w) = w {
                let root = plan.compile(&w.expr);
                plan.define_audience(slot as u32, root);
            }
        }
        if !self.has_errors() {
            plan.finish();
        }
        plan.tiers = top.get("tiers").and_then(|node| self.tiers(node)).map(Arc::new);

        let banners = top
            .get("banners")
            .map(|node| self.banners(node, &defined, &mut plan))
            .unwrap_or_default();
        let items = match top.get("items") {
            Some(node) if !node.is_null() => self.items(node, &defined, &mut plan),
            _ => None,
        };
        let benefits = top
            .get("benefits")
            .map(|node| self.benefits(node, &defined, &mut plan))
            .unwrap_or_default();
        plan.resolve_kinds(benefits.iter().map(|b| (&b.id, &*b.kind)));

        Some(RuleSet {
            shop: shop?.into(),
            plan,
            banners,
            items: items.unwrap_or(ItemRules {
                limit: DEFAULT_ITEM_LIMIT,
                exclude_purchased: None,
                pools: Vec::new(),
                complements: HashMap::new(),
                add_on: None,
                catalog: catalog::ItemCatalog::default(),
            }),
            benefits,
            zone: self.zone.clone(),
        })
    }

    fn check_no_aliases(&mut self, node: &Node) {
        match node {
            Node::Alias { pos } => self.error(*pos, "YAML aliases are not supported in rule files"),
            Node::Seq { items, .. } => items.iter().for_each(|n| self.check_no_aliases(n)),
            Node::Map { entries, .. } => entries.iter().for_each(|(k, v)| {
                self.check_no_aliases(k);
                self.check_no_aliases(v);
            }),
            Node::Scalar { .. } => {}
        }
    }

    /// Reports each reference cycle once, at the reference that closes it.
    fn check_cycles(&mut self, names: &[Arc<str>], written: &[Option<Written<'_>>], defined: &HashMap<&str, usize>) {
        // Edges: audience -> (referenced audience, byte offset of the reference).
        let edges: Vec<Vec<(usize, usize)>> = written
            .iter()
            .map(|w| {
                let mut out = Vec::new();
                if let Some(w) = w {
                    w.expr.walk(&mut |e| {
                        if let Expr::Ref { name, span } = e {
                            if let Some(&to) = defined.get(name.as_str()) {
                                out.push((to, span.start));
                            }
                        }
                    });
                }
                out
            })
            .collect();
        // Iterative DFS with colors: 0 new, 1 on the stack, 2 done. An
        // audience is done once every audience it references is (or is on
        // the stack: a cycle), which is when its inlined depth is known.
        self.depths = vec![None; names.len()];
        let mut color = vec![0u8; names.len()];
        for start in 0..names.len() {
            if color[start] != 0 {
                continue;
            }
            let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
            color[start] = 1;
            while let Some(&mut (node, ref mut next)) = stack.last_mut() {
                if let Some(&(to, offset)) = edges[node].get(*next) {
                    *next += 1;
                    match color[to] {
                        0 => {
                            color[to] = 1;
                            stack.push((to, 0));
                        }
                        // Past the error bound only counted: the path costs the stack's length.
                        1 if self.full() => self.omitted += 1,
                        1 => {
                            let from = stack.iter().position(|&(n, _)| n == to).unwrap_or(0);
                            let mut path: Vec<&str> = stack[from..].iter().map(|&(n, _)| &*names[n]).collect();
                            path.push(&names[to]);
                            let message = format!("audience reference cycle: {}", path.join(" -> "));
                            if let Some(w) = &written[node] {
                                self.error_in(w, offset, message);
                            }
                        }
                        _ => {}
                    }
                } else {
                    if let Some(w) = &written[node] {
                        let depth = self.inlined_depth(&w.expr, defined);
                        self.check_depth(&depth, w.pos, &format!("audience `{}`", names[node]));
                        self.depths[node] = Some(depth);
                    } else {
                        self.depths[node] = Some(Depth::default());
                    }
                    color[node] = 2;
                    stack.pop();
                }
            }
        }
    }

    fn when(&mut self, fields: &Fields<'_>, defined: &HashMap<&str, usize>, plan: &mut Plan) -> Option<NodeId> {
        let node = fields.get("when")?;
        let written = self.expression(node, "`when`")?;
        self.check_refs(&written, defined);
        let depth = self.inlined_depth(&written.expr, defined);
        self.check_depth(&depth, written.pos, "`when`");
        Some(plan.compile(&written.expr))
    }

    fn banners(&mut self, node: &Node, defined: &HashMap<&str, usize>, plan: &mut Plan) -> Vec<Banner> {
        let mut banners = Vec::new();
        for entry in self.list(node, "`banners`").unwrap_or_default() {
            let Some(fields) = self.fields(entry, "a banner", BANNER_KEYS) else {
                continue;
            };
            let when = self.when(&fields, defined, plan);
            let id = match fields.get("banner") {
                Some(n) => self.string(n, "`banner`"),
                None => {
                    self.error(entry.pos(), "banner entry is missing required key `banner`");
                    None
                }
            };
            let params = fields.get("params").map(|n| self.params(n)).unwrap_or_default();
            let (starts, ends) = self.schedule(&fields);
            let holdout_bp = fields.get("holdout").map_or(0, |n| self.holdout(n));
            if let Some(id) = id {
                banners.push(Banner {
                    when,
                    id: id.into(),
                    params,
                    starts,
                    ends,
                    holdout_bp,
                });
            }
        }
        banners
    }

    fn item_list(&mut self, node: &Node, what: &str) -> Vec<Arc<str>> {
        let mut items = Vec::new();
        for n in self.list(node, what).unwrap_or_default() {
            if let Some(id) = self.string(n, "an item id") {
                items.push(Arc::from(id));
            }
        }
        items
    }

    fn items(&mut self, node: &Node, defined: &HashMap<&str, usize>, plan: &mut Plan) -> Option<ItemRules> {
        let fields = self.fields(node, "`items`", ITEMS_KEYS)?;
        let limit = match fields.get("limit") {
            Some(n) => self
                .integer(n, "`limit`", 1, u64::from(MAX_ITEM_LIMIT))
                .map(|v| v as u32),
            None => Some(DEFAULT_ITEM_LIMIT),
        };
        let exclude_purchased = fields
            .get("exclude_purchased")
            .and_then(|n| self.window(n, "`exclude_purchased`"));
        let mut pools = Vec::new();
        if let Some(n) = fields.get("pools") {
            for entry in self.list(n, "`pools`").unwrap_or_default() {
                let Some(pool) = self.fields(entry, "a pool", POOL_KEYS) else {
                    continue;
                };
                let when = self.when(&pool, defined, plan);
                let (starts, ends) = self.schedule(&pool);
                match pool.get("items") {
                    Some(n) => {
                        let items = self.item_list(n, "`items` of a pool");
                        pools.push(Pool {
                            when,
                            items,
                            starts,
                            ends,
                        });
                    }
                    None => self.error(entry.pos(), "pool is missing required key `items`"),
                }
            }
        }
        let mut complements = HashMap::new();
        if let Some(n) = fields.get("complements") {
            if let Node::Map { entries, .. } = n {
                for (key, value) in entries {
                    let Some(item) = self.string(key, "an item id") else {
                        continue;
                    };
                    let list = self.item_list(value, "complements");
                    if complements.insert(Box::from(item), list).is_some() {
                        self.error(key.pos(), format!("duplicate key `{item}` in `complements`"));
                    }
                }
            } else {
                self.error(n.pos(), format!("`complements` must be a mapping, found {}", n.kind()));
            }
        }
        let add_on = fields.get("add_on").and_then(|n| self.add_on(n));
        let catalog = catalog::ItemCatalog::of(pools.iter().map(|p| &p.items[..]), &complements);
        Some(ItemRules {
            limit: limit?,
            exclude_purchased,
            pools,
            complements,
            add_on,
            catalog,
        })
    }

    fn benefits(&mut self, node: &Node, defined: &HashMap<&str, usize>, plan: &mut Plan) -> Vec<Benefit> {
        let mut benefits = Vec::new();
        let mut first_at: HashMap<&str, Pos> = HashMap::new();
        for entry in self.list(node, "`benefits`").unwrap_or_default() {
            let Some(fields) = self.fields(entry, "a benefit", BENEFIT_KEYS) else {
                continue;
            };
            let id = match fields.get("id") {
                Some(n) => self.string(n, "`id`").map(|id| (id, n.pos())),
                None => {
                    self.error(entry.pos(), "benefit is missing required key `id`");
                    None
                }
            };
            if let Some((id, pos)) = id {
                if let Some(first) = first_at.get(id) {
                    self.error(pos, format!("duplicate benefit id `{id}` (first defined at {first})"));
                } else {
                    first_at.insert(id, pos);
                }
            }
            let when = self.when(&fields, defined, plan);
            let kind = match fields.get("kind") {
                Some(n) => self.string(n, "`kind`"),
                None => {
                    self.error(entry.pos(), "benefit is missing required key `kind`");
                    None
                }
            };
            let mut params = Vec::new();
            if let Some(n) = fields.get("params") {
                match n {
                    Node::Map { entries, .. } => {
                        for (k, v) in entries {
                            match (k.as_str(), v) {
                                (Some(k), Node::Scalar { value, .. }) => {
                                    params.push((Arc::from(k), Arc::from(value.as_str())))
                                }
                                _ => self.error(v.pos(), "`params` must map names to strings"),
                            }
                        }
                    }
                    _ if n.is_null() => {}
                    _ => self.error(n.pos(), format!("`params` must be a mapping, found {}", n.kind())),
                }
            }
            let starts = fields.get("starts").and_then(|n| self.timestamp(n, "`starts`"));
            let ends = fields.get("ends").and_then(|n| self.timestamp(n, "`ends`"));
            if let (Some((s, _)), Some((e, end_pos))) = (starts, ends) {
                if s >= e {
                    self.error(end_pos, "`ends` must be after `starts`");
                }
            }
            let budget = fields
                .get("budget")
                .and_then(|n| self.integer(n, "`budget`", 0, u64::MAX));
            let cap = fields.get("cap").and_then(|n| {
                let cap = self.fields(n, "`cap`", CAP_KEYS)?;
                let per_visitor = match cap.get("per_visitor") {
                    Some(v) => self.integer(v, "`per_visitor`", 1, u64::from(u32::MAX)),
                    None => {
                        self.error(n.pos(), "`cap` is missing required key `per_visitor`");
                        None
                    }
                };
                let window = match cap.get("window") {
                    Some(v) => self.window(v, "`window`"),
                    None => {
                        self.error(n.pos(), "`cap` is missing required key `window`");
                        None
                    }
                };
                Some(Cap {
                    per_visitor: per_visitor? as u32,
                    window: window?,
                })
            });
            let holdout_bp = fields.get("holdout").map_or(0, |n| self.holdout(n));
            if let (Some((id, _)), Some(kind)) = (id, kind) {
                benefits.push(Benefit {
                    id: id.into(),
                    when,
                    kind: kind.into(),
                    params,
                    starts: starts.map(|(ms, _)| ms),
                    ends: ends.map(|(ms, _)| ms),
                    budget,
                    cap,
                    holdout_bp,
                });
            }
        }
        benefits
    }

    /// A `params` mapping of names to strings, in file order (`null` is none).
    fn params(&mut self, n: &Node) -> Vec<(Arc<str>, Arc<str>)> {
        let mut params = Vec::new();
        match n {
            Node::Map { entries, .. } => {
                for (k, v) in entries {
                    match (k.as_str(), v) {
                        (Some(k), Node::Scalar { value, .. }) => params.push((Arc::from(k), Arc::from(value.as_str()))),
                        _ => self.error(v.pos(), "`params` must map names to strings"),
                    }
                }
            }
            _ if n.is_null() => {}
            _ => self.error(n.pos(), format!("`params` must be a mapping, found {}", n.kind())),
        }
        params
    }

    /// The optional `starts` / `ends` of an entry, `ends` after `starts`.
    fn schedule(&mut self, fields: &Fields<'_>) -> (Option<i64>, Option<i64>) {
        let starts = fields.get("starts").and_then(|n| self.timestamp(n, "`starts`"));
        let ends = fields.get("ends").and_then(|n| self.timestamp(n, "`ends`"));
        if let (Some((s, _)), Some((e, end_pos))) = (starts, ends) {
            if s >= e {
                self.error(end_pos, "`ends` must be after `starts`");
            }
        }
        (starts.map(|(ms, _)| ms), ends.map(|(ms, _)| ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The errors of a rejected file as `line:column: message` lines.
    fn errors_with(source: &str, limits: &Limits) -> Vec<String> {
        match RuleSet::load_with(source, limits) {
            Ok(_) => panic!("expected errors, the file loaded:\n{source}"),
            Err(e) => e.to_string().lines().map(str::to_string).collect(),
        }
    }

    fn errors(source: &str) -> Vec<String> {
        errors_with(source, &Limits::default())
    }

    /// Each kind of mistake, with its message at its `line:column`, sorted
    /// by position, every one of the file at once.
    #[test]
    fn each_validation_error_has_its_message_at_its_position() {
        let cases: &[(&str, &[&str])] = &[
            (
                r#"shop: s
audiences:
  a: visited(7d)
  a: tag("x")
"#,
                &[r#"4:3: duplicate audience `a` (first defined at 3:3)"#],
            ),
            (
                r#"shop: s
audiences:
  9lives: true
  and: true
"#,
                &[
                    r#"3:3: invalid audience name `9lives`: use lower-case letters, digits and `_`, not starting with a digit, and not a keyword"#,
                    r#"4:3: invalid audience name `and`: use lower-case letters, digits and `_`, not starting with a digit, and not a keyword"#,
                ],
            ),
            (
                r#"shop: s
audiences:
  a: b
"#,
                &[r#"3:6: undefined audience `b`"#],
            ),
            (
                r#"shop: s
audiences:
  a: b
  b: c
  c: a
"#,
                &[r#"5:6: audience reference cycle: a -> b -> c -> a"#],
            ),
            (
                r#"shop: s
audiences:
  a: visited(7x)
"#,
                &[r#"3:14: invalid window `7x`: expected a whole number followed by h or d, e.g. 7d or 12h"#],
            ),
            (
                r#"shop: s
audiences:
  a: visited(401d)
"#,
                &[r#"3:14: invalid window `401d`: longer than the maximum of 400d"#],
            ),
            (
                r#"shop: s
audiences:
  a: ctx.region ==
"#,
                &[r#"3:19: expected a string in double quotes, found the end of the expression"#],
            ),
            (
                r#"shop: s
banners:
  - when: true
"#,
                &[r#"3:5: banner entry is missing required key `banner`"#],
            ),
            (
                r#"shop: s
banners: {}
"#,
                &[r#"2:10: `banners` must be a list, found a mapping"#],
            ),
            (
                r#"shop: s
items:
  limit: 0
  pools:
    - when: true
"#,
                &[
                    r#"3:10: `limit` must be a whole number from 1 to 100, found `0`"#,
                    r#"5:7: pool is missing required key `items`"#,
                ],
            ),
            (
                r#"shop: s
items:
  complements:
    sku-1: [a]
    sku-1: [b]
"#,
                &[r#"5:5: duplicate key `sku-1` in `complements`"#],
            ),
            (
                r#"shop: s
benefits:
  - kind: coupon
  - id: x
  - id: y
    kind: k
  - id: y
    kind: k
"#,
                &[
                    r#"3:5: benefit is missing required key `id`"#,
                    r#"4:5: benefit is missing required key `kind`"#,
                    r#"7:9: duplicate benefit id `y` (first defined at 5:9)"#,
                ],
            ),
            (
                r#"shop: s
benefits:
  - id: x
    kind: k
    starts: 2026-11-11T00:00:00Z
    ends: 2026-11-10T00:00:00Z
    holdout: 120%
    cap: {}
    params: { a: [1] }
"#,
                &[
                    r#"6:11: `ends` must be after `starts`"#,
                    r#"7:14: invalid percentage `120%`: expected 0% to 100%, e.g. 10%"#,
                    r#"8:10: `cap` is missing required key `per_visitor`"#,
                    r#"8:10: `cap` is missing required key `window`"#,
                    r#"9:18: `params` must map names to strings"#,
                ],
            ),
            (
                r#"shop: s
benefits:
  - id: x
    kind: k
    starts: yesterday
    budget: -1
"#,
                &[
                    r#"5:13: invalid timestamp `yesterday`: expected RFC 3339, e.g. 2026-11-10T23:30:00+08:00"#,
                    r#"6:13: `budget` must be a whole number from 0 to 18446744073709551615, found `-1`"#,
                ],
            ),
            (
                r#"audiences:
  a: true
"#,
                &[r#"1:1: missing required key `shop`"#],
            ),
            (
                r#"shop: s
shop: t
colour: red
"#,
                &[
                    r#"2:1: duplicate key `shop` in the rule file (first at 1:1)"#,
                    r#"3:1: unknown key `colour` in the rule file; expected one of: shop, audiences, banners, items, benefits, timezone, tiers"#,
                ],
            ),
            (
                r#"shop: s
audiences: &x
  a: true
banners: *x
"#,
                &[
                    r#"4:10: YAML aliases are not supported in rule files"#,
                    r#"4:10: `banners` must be a list, found an alias"#,
                ],
            ),
            (
                r#"shop: ""
"#,
                &[r#"1:7: `shop` must not be empty"#],
            ),
            (
                r#"- a
- b
"#,
                &[r#"1:1: the rule file must be a mapping, found a list"#],
            ),
        ];
        for (source, want) in cases {
            assert_eq!(errors(source), *want, "{source}");
        }
    }

    /// The second edition's mistakes (tiers, add-on, banner params and
    /// schedules, pool schedules), each at its `line:column`.
    #[test]
    fn second_edition_errors_have_their_message_at_their_position() {
        let cases: &[(&str, &[&str])] = &[
            (
                r#"shop: s
tiers:
  by: spend(365d)
  levels:
    - { tier: 1, name: silver, at: 500 }
    - { tier: 1, name: gold, at: 400 }
    - { tier: 3, name: silver, at: 0 }
"#,
                &[
                    r#"6:15: `tier` must be greater than the previous level's (1)"#,
                    r#"6:34: `at` must be greater than the previous level's (500)"#,
                    r#"7:24: duplicate level name `silver` (first at 5:24)"#,
                    r#"7:36: `at` must be a number greater than 0, found `0`"#,
                ],
            ),
            (
                r#"shop: s
tiers:
  by: sales(30d)
  levels: []
"#,
                &[
                    r#"3:7: `by` must be spend(W) or purchase_count(W), e.g. spend(365d), found `sales(30d)`"#,
                    r#"4:11: `levels` must not be empty"#,
                ],
            ),
            (
                r#"shop: s
tiers:
  by: purchase_count(30x)
  levels:
    - { tier: 0, name: a, at: 1 }
    - { name: b }
"#,
                &[
                    r#"3:7: invalid window `30x`: expected a whole number followed by h or d, e.g. 7d or 12h"#,
                    r#"5:15: `tier` must be a whole number from 1 to 4294967295, found `0`"#,
                    r#"6:9: level is missing required key `at`"#,
                    r#"6:9: level is missing required key `tier`"#,
                ],
            ),
            (
                r#"shop: s
tiers:
  levels: {}
"#,
                &[
                    r#"3:3: `tiers` is missing required key `by`"#,
                    r#"3:11: `levels` must be a list, found a mapping"#,
                ],
            ),
            (
                r#"shop: s
items:
  add_on:
    cart_total: cart_total
"#,
                &[
                    r#"4:5: add_on needs a threshold"#,
                    r#"4:17: `cart_total` must name a request value as ctx.NAME, e.g. ctx.cart_total, found `cart_total`"#,
                ],
            ),
            (
                r#"shop: s
items:
  add_on:
    threshold: 0
    cart_total: ctx.cart-total
"#,
                &[
                    r#"4:16: `threshold` must be a number greater than 0, found `0`"#,
                    r#"5:17: `cart_total` must name a request value as ctx.NAME, e.g. ctx.cart_total, found `ctx.cart-total`"#,
                ],
            ),
            (
                r#"shop: s
items:
  add_on: 99
"#,
                &[r#"3:11: `add_on` must be a mapping, found a scalar"#],
            ),
            (
                r#"shop: s
banners:
  - banner: gold
    params: [a, b]
    starts: 2026-11-12T00:00:00Z
    ends: 2026-11-11T00:00:00Z
  - banner: silver
    params: { a: { b: c } }
    ends: soon
items:
  pools:
    - items: [a]
      starts: 2026-11-12T00:00:00Z
      ends: 2026-11-12T00:00:00Z
"#,
                &[
                    r#"4:13: `params` must be a mapping, found a list"#,
                    r#"6:11: `ends` must be after `starts`"#,
                    r#"8:20: `params` must map names to strings"#,
                    r#"9:11: invalid timestamp `soon`: expected RFC 3339, e.g. 2026-11-10T23:30:00+08:00"#,
                    r#"14:13: `ends` must be after `starts`"#,
                ],
            ),
            (
                r#"shop: s
audiences:
  a: preview_tier >= x
  b: ctx.cart_total > 9x
"#,
                &[r#"3:22: expected a number, found `x`"#, r#"4:23: invalid number `9x`"#],
            ),
        ];
        for (source, want) in cases {
            assert_eq!(errors(source), *want, "{source}");
        }
        let many: String = (1..=33)
            .map(|i| format!("    - {{ tier: {i}, name: l{i}, at: {i} }}\n"))
            .collect();
        assert_eq!(
            errors(&format!("shop: s\ntiers:\n  by: spend(30d)\n  levels:\n{many}")),
            ["37:9: too many levels: more than the limit of 32"]
        );
    }

    #[test]
    fn the_second_edition_loads() {
        let rules = RuleSet::load(
            r#"shop: s
tiers:
  by: purchase_count(90d)
  levels:
    - { tier: 1, name: silver, at: 2 }
    - { tier: 3, name: gold, at: 5.5 }
audiences:
  gold_soon: preview_tier == 1 and ctx.cart_total >= 50
banners:
  - when: gold_soon
    banner: almost-gold
    params: { image: "g.jpg" }
    starts: 2026-11-10T00:00:00Z
    ends: 2026-11-12T00:00:00Z
items:
  add_on: { threshold: 99.5 }
  pools:
    - items: [a]
      starts: 2026-11-11T00:00:00Z
"#,
        )
        .unwrap();
        let tiers = rules.plan.tiers.as_deref().unwrap();
        assert_eq!(tiers.metric, expr::Metric::PurchaseCount);
        assert_eq!(
            tiers
                .levels
                .iter()
                .map(|l| (l.tier, &*l.name, l.at))
                .collect::<Vec<_>>(),
            [(1, "silver", 2.0), (3, "gold", 5.5)]
        );
        let b = &rules.banners[0];
        assert_eq!(b.params, [(Arc::from("image"), Arc::from("g.jpg"))]);
        assert_eq!((b.starts, b.ends), (Some(1_794_268_800_000), Some(1_794_441_600_000)));
        assert!(!b.in_window(1_794_268_800_000 - 1) && b.in_window(1_794_268_800_000));
        assert!(b.in_window(1_794_441_600_000 - 1) && !b.in_window(1_794_441_600_000));
        let add_on = rules.items.add_on.as_ref().unwrap();
        assert_eq!(
            (add_on.threshold, &add_on.cart_total),
            (99.5, &plan::CtxKey::Attr("cart_total".into()))
        );
        assert_eq!(
            (rules.items.pools[0].starts, rules.items.pools[0].ends),
            (Some(1_794_355_200_000), None)
        );
    }

    fn chain(n: usize) -> String {
        let mut s = String::from("shop: s\naudiences:\n");
        for i in 0..n {
            s.push_str(&format!("  a{i}: a{}\n", i + 1));
        }
        s.push_str(&format!("  a{n}: true\n"));
        s
    }

    #[test]
    fn reference_chains_are_bounded() {
        let limits = Limits {
            max_reference_depth: 3,
            ..Limits::default()
        };
        assert!(RuleSet::load_with(&chain(3), &limits).is_ok());
        assert_eq!(errors_with(&chain(4), &limits), ["3:7: audience `a0` is nested too deeply: a chain of 4 audience references starts here, more than the limit of 3"]);
    }

    #[test]
    fn errors_past_max_errors_are_counted_in_a_closing_line() {
        let source = "shop: s\nbanners:\n  - banner: a\n    x1: 1\n  - banner: b\n    x2: 2\n  - banner: c\n    x3: 3\n  - banner: d\n    x4: 4\n";
        let all = errors(source);
        assert_eq!(all.len(), 4, "{all:?}");
        let capped = |max_errors| {
            errors_with(
                source,
                &Limits {
                    max_errors,
                    ..Limits::default()
                },
            )
        };
        assert_eq!(capped(2), [all[0].as_str(), all[1].as_str(), "... and 2 more errors"]);
        assert_eq!(
            capped(3),
            [
                all[0].as_str(),
                all[1].as_str(),
                all[2].as_str(),
                "... and 1 more error"
            ]
        );
        assert_eq!(capped(4), all);
        match RuleSet::load_with(
            source,
            &Limits {
                max_errors: 1,
                ..Limits::default()
            },
        ) {
            Err(e) => assert_eq!((e.errors().len(), e.omitted()), (1, 3)),
            Ok(_) => panic!("loaded"),
        }
        assert_eq!(RuleErrors(Vec::new(), 0).omitted_line(), None);
        assert_eq!(RuleErrors(Vec::new(), 5).to_string(), "... and 5 more errors");
    }

    #[test]
    fn a_file_is_accepted_whole_or_rejected_whole() {
        let good = "shop: s\naudiences:\n  vip: member_tier >= 4\nbanners:\n  - when: vip\n    banner: gold\n  - banner: default\nitems:\n  limit: 3\n  pools:\n    - items: [a, b]\nbenefits:\n  - id: pts\n    kind: points\n    holdout: 10%\n    cap: { per_visitor: 2, window: 30d }\n";
        let rules = RuleSet::load(good).unwrap();
        assert_eq!(&*rules.shop, "s");
        assert_eq!(
            rules.banners.iter().map(|b| &*b.id).collect::<Vec<_>>(),
            ["gold", "default"]
        );
        assert_eq!(rules.items.limit, 3);
        let b = rules.benefit("pts").unwrap();
        assert_eq!((b.holdout_bp, b.cap.map(|c| c.per_visitor)), (1_000, Some(2)));
        // One mistake anywhere, even in the last benefit, rejects the file:
        // there is no partial rule set to serve.
        let bad = good.replace("window: 30d", "window: 30");
        assert_eq!(
            errors(&bad),
            ["16:36: invalid window `30`: expected a whole number followed by h or d, e.g. 7d or 12h"]
        );
    }

    #[test]
    fn time_zone_and_recency_errors_are_pinned() {
        assert_eq!(
            errors("shop: s\n# Mars has no IANA zone yet\ntimezone: Mars/Base\n"),
            ["3:11: unknown time zone `Mars/Base`"]
        );
        assert_eq!(
            errors("shop: s\ntimezone: [Asia/Shanghai]\n"),
            ["2:11: `timezone` must be a string, found a list"]
        );
        assert_eq!(
            errors("shop: s\naudiences:\n  a: days_since(7d) > 3\n  b: days_since(buy) > 3\n  c: avg_order(30d)\n  d: days_since(view\n"),
            [
                "3:17: days_since takes an action, not a window",
                "4:17: unknown action `buy` in `days_since`: expected visit, view, cart, favorite or purchase",
                "5:20: expected a comparison (==, !=, <, <=, >, >=), found the end of the expression",
                "6:21: expected `)`, found the end of the expression",
            ]
        );
        // A starts without an offset in a zone the file does not know is not
        // reported a second time: it reads as UTC.
        assert_eq!(
            errors(
                "shop: s\nbenefits:\n  - id: b\n    kind: k\n    starts: 2026-11-11T00:00:00\ntimezone: Mars/Base\n"
            ),
            ["6:11: unknown time zone `Mars/Base`"]
        );
    }

    #[test]
    fn timestamps_without_an_offset_are_wall_clock_times_of_the_file_zone() {
        // `timezone:` written after the timestamps still applies to them.
        let file = "shop: s\nbenefits:\n  - id: b\n    kind: k\n    starts: 2026-11-11T00:00:00\n    ends: 2026-11-12T00:00:00Z\ntimezone: Asia/Shanghai\n";
        let rules = RuleSet::load(file).unwrap();
        assert_eq!(rules.zone.name(), "Asia/Shanghai");
        let b = rules.benefit("b").unwrap();
        assert_eq!(b.starts, crate::time::parse_rfc3339("2026-11-10T16:00:00Z"));
        assert_eq!(b.ends, crate::time::parse_rfc3339("2026-11-12T00:00:00Z"));
        // Without `timezone:`, UTC.
        let utc = RuleSet::load(&file.replace("timezone: Asia/Shanghai\n", "")).unwrap();
        assert!(utc.zone.is_utc());
        assert_eq!(
            utc.benefit("b").unwrap().starts,
            crate::time::parse_rfc3339("2026-11-11T00:00:00Z")
        );
    }

    /// Offers, claims and banner holdouts: mistakes at their `line:column`.
    #[test]
    fn offers_claims_and_banner_holdouts_report_their_mistakes() {
        let source = "shop: s\naudiences:\n  a: offered(7d, item=\"x\")\n  b: claimed(30d, banner=\"y\")\n  c: offered()\nbanners:\n  - banner: x\n    holdout: 101%\n";
        assert_eq!(
            errors(source),
            [
                "3:18: expected `benefit`, `kind` or `banner`, found `item`",
                "4:19: expected `benefit` or `kind`, found `banner`",
                "5:14: expected a window such as 7d or 12h, found `)`",
                "8:14: invalid percentage `101%`: expected 0% to 100%, e.g. 10%",
            ]
        );
    }
}
