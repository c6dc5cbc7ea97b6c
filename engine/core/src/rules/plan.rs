//! Compiled audience expressions: one arena of nodes per rule set.
//!
//! Every audience of a file and every `when` of its banners, pools and
//! benefits is a node in the same arena; a reference to an audience is a
//! [`Node::Audience`] that points at the audience's slot. Evaluating for one
//! visitor memoizes each audience in a [`Memo`], so an audience that several
//! expressions use is evaluated at most once per decision, and `and` / `or`
//! stop at the first operand that settles the result.
//!
//! [`Plan::eval`] is a recursive walk that spends a call only on operators:
//! an operand that is an atom, a constant, an audience (its memo, or its
//! root's operator), or the `not` of one of these is answered in its
//! operator's loop, and a `when` that names an audience already in the memo
//! is answered at the caller. The atoms asked, and their order, are those of
//! a walk that calls itself for every node (a unit test compares the two).

use std::sync::Arc;

use crate::event::ActionSet;
use crate::rules::expr::{Behavior, Cmp, CtxTest, Expr, Filter, Metric, OfferFilter};
use crate::rules::tiers::Tiers;
use crate::time::Window;

/// Index of a node in a [`Plan`].
pub type NodeId = u32;

/// A compiled expression node.
#[derive(Debug, Clone)]
pub enum Node {
    /// `true` / `false`.
    Const(bool),
    /// All children hold.
    And(Box<[NodeId]>),
    /// Some child holds.
    Or(Box<[NodeId]>),
    /// The child does not hold.
    Not(NodeId),
    /// The audience with this slot.
    Audience(u32),
    /// A leaf test.
    Atom(Atom),
}

/// A leaf test of an expression.
#[derive(Debug, Clone)]
pub enum Atom {
    /// An event of one of `actions` within `window`, optionally for an item or category.
    Behavior {
        actions: ActionSet,
        window: Window,
        filter: Option<Filter>,
    },
    /// A purchase metric over `window` compared with `value`.
    Metric {
        metric: Metric,
        window: Window,
        cmp: Cmp,
        value: f64,
    },
    /// The member tier compared with `value`.
    Tier { cmp: Cmp, value: f64 },
    /// The visitor carries the tag.
    Tag(Box<str>),
    /// A test of the request context.
    Ctx { key: CtxKey, test: CtxTest },
    /// Whole days of the shop's calendar since the latest event of one of
    /// `actions` (at or before now), compared with `value`; false without one.
    DaysSince { actions: ActionSet, cmp: Cmp, value: f64 },
    /// The tier the visitor's history earns under the plan's `tiers`, compared with `value`.
    PreviewTier { cmp: Cmp, value: f64 },
    /// A decision offered the visitor one of `offers` within `window`.
    Offered { window: Window, offers: Offers },
    /// The visitor was granted one of `offers` (benefits) within `window`.
    Claimed { window: Window, offers: Offers },
}

/// What `offered(...)` and `claimed(...)` look for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offers {
    /// Any benefit (no filter).
    AnyBenefit,
    /// These benefits: one for `benefit=`, those of the kind for `kind=`
    /// (resolved against the rule file's benefits when it is compiled; none
    /// when no benefit has that kind).
    Benefits {
        /// The kind asked for, if any.
        kind: Option<Arc<str>>,
        /// The benefit ids.
        ids: Box<[Arc<str>]>,
    },
    /// That banner (`offered` only).
    Banner(Arc<str>),
}

/// Which request-context value a `ctx.` atom reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtxKey {
    /// `ctx.page`
    Page,
    /// `ctx.item`
    Item,
    /// `ctx.region`
    Region,
    /// `ctx.device`
    Device,
    /// `ctx.channel`
    Channel,
    /// Any other `ctx.NAME`, read from the request's attributes.
    Attr(Box<str>),
}

impl CtxKey {
    pub(crate) fn from_name(name: &str) -> CtxKey {
        match name {
            "page" => CtxKey::Page,
            "item" => CtxKey::Item,
            "region" => CtxKey::Region,
            "device" => CtxKey::Device,
            "channel" => CtxKey::Channel,
            other => CtxKey::Attr(other.into()),
        }
    }
}

impl CtxTest {
    /// Applies the test to a context value (missing values are "").
    pub fn test(&self, value: &str) -> bool {
        match self {
            CtxTest::Cmp(cmp, want) => cmp.test(value, want.as_str()),
            CtxTest::In(values) => values.iter().any(|v| v == value),
            CtxTest::Num(cmp, want) => number(value).is_some_and(|v| cmp.test(v, *want)),
        }
    }
}

/// A context value read as a number: `None` when it is not a finite number
/// (missing values are "", which is not one). Allocation-free.
pub fn number(value: &str) -> Option<f64> {
    value.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// A named audience of a rule set.
#[derive(Debug, Clone)]
pub struct AudienceDef {
    /// Its name in the file.
    pub name: Arc<str>,
    /// Its expression's root node.
    pub root: NodeId,
    /// Whether it reads the request context (directly or through another audience).
    pub uses_ctx: bool,
}

/// The compiled expressions of one rule set.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    nodes: Vec<Node>,
    audiences: Vec<AudienceDef>,
    /// The file's `tiers` block, which `preview_tier` atoms read.
    pub tiers: Option<Arc<Tiers>>,
}

/// Answers the leaf tests of an expression for one visitor and request.
pub trait Facts {
    /// Whether the atom holds.
    fn atom(&self, atom: &Atom) -> bool;
}

/// Per-decision memory of which audiences were already evaluated.
#[derive(Debug, Clone, Default)]
pub struct Memo {
    states: Vec<u8>,
}

const UNKNOWN: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;

impl Memo {
    /// A memo for a plan with `audiences` audiences.
    pub fn new(audiences: usize) -> Memo {
        Memo {
            states: vec![UNKNOWN; audiences],
        }
    }

    /// Forgets every result, keeping the allocation.
    pub fn reset(&mut self, audiences: usize) {
        self.states.clear();
        self.states.resize(audiences, UNKNOWN);
    }

    /// Gives back memory beyond `keep` audiences (a memo reused across decisions).
    pub fn trim(&mut self, keep: usize) {
        self.states.shrink_to(keep);
    }
}

impl Plan {
    /// The node with this id.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }

    /// All audiences, in file order.
    pub fn audiences(&self) -> &[AudienceDef] {
        &self.audiences
    }

    /// Every leaf test of every expression, for tools that list what a rule set reads.
    pub fn atoms(&self) -> impl Iterator<Item = &Atom> {
        self.nodes.iter().filter_map(|n| match n {
            Node::Atom(a) => Some(a),
            _ => None,
        })
    }

    /// The slot of the audience with this name.
    pub fn audience(&self, name: &str) -> Option<u32> {
        self.audiences.iter().position(|a| &*a.name == name).map(|i| i as u32)
    }

    /// Reserves audience slots in file order, before their expressions are compiled.
    pub(crate) fn declare_audiences(&mut self, names: &[Arc<str>]) {
        self.audiences = names
            .iter()
            .map(|name| AudienceDef {
                name: name.clone(),
                root: 0,
                uses_ctx: false,
            })
            .collect();
    }

    /// Sets a declared audience's expression.
    pub(crate) fn define_audience(&mut self, slot: u32, root: NodeId) {
        self.audiences[slot as usize].root = root;
    }

    /// Computes `uses_ctx` for every audience; call once all are defined.
    ///
    /// Each audience is visited once (an iterative depth-first walk over the
    /// references, memoized), so the work is linear in the plan; an audience
    /// reached again while it is being visited (a cycle, which the loader
    /// refuses anyway) counts as not reading the context.
    pub(crate) fn finish(&mut self) {
        let n = self.audiences.len();
        // Per audience: whether it reads `ctx.` itself, and the audiences it references.
        let mut direct = vec![false; n];
        let mut refs: Vec<Vec<u32>> = vec![Vec::new(); n];
        for slot in 0..n {
            let mut stack = vec![self.audiences[slot].root];
            while let Some(id) = stack.pop() {
                match self.node(id) {
                    Node::And(xs) | Node::Or(xs) => stack.extend(xs.iter().copied()),
                    Node::Not(x) => stack.push(*x),
                    Node::Audience(t) => refs[slot].push(*t),
                    Node::Atom(Atom::Ctx { .. }) => direct[slot] = true,
                    Node::Atom(_) | Node::Const(_) => {}
                }
            }
        }
        const NEW: u8 = 0;
        const OPEN: u8 = 1;
        const DONE: u8 = 2;
        let mut state = vec![NEW; n];
        let mut uses = direct;
        for start in 0..n {
            if state[start] != NEW {
                continue;
            }
            state[start] = OPEN;
            let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
            while let Some(&mut (slot, ref mut next)) = stack.last_mut() {
                if let Some(&to) = refs[slot].get(*next) {
                    *next += 1;
                    let to = to as usize;
                    if to < n && state[to] == NEW {
                        state[to] = OPEN;
                        stack.push((to, 0));
                    }
                } else {
                    let via = refs[slot]
                        .iter()
                        .any(|&t| (t as usize) < n && state[t as usize] == DONE && uses[t as usize]);
                    uses[slot] |= via;
                    state[slot] = DONE;
                    stack.pop();
                }
            }
        }
        for (a, u) in self.audiences.iter_mut().zip(uses) {
            a.uses_ctx = u;
        }
    }

    /// Whether the expression at `id` reads the request context, directly or
    /// through an audience (whose `uses_ctx` `Plan::finish` computed).
    pub fn uses_ctx(&self, id: NodeId) -> bool {
        let mut stack = vec![id];
        while let Some(id) = stack.pop() {
            match self.node(id) {
                Node::And(xs) | Node::Or(xs) => stack.extend(xs.iter().copied()),
                Node::Not(x) => stack.push(*x),
                Node::Audience(slot) => {
                    if self.audiences.get(*slot as usize).is_some_and(|a| a.uses_ctx) {
                        return true;
                    }
                }
                Node::Atom(Atom::Ctx { .. }) => return true,
                Node::Atom(_) | Node::Const(_) => {}
            }
        }
        false
    }

    fn push(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        (self.nodes.len() - 1) as NodeId
    }

    /// Compiles an expression whose audience references have been checked.
    /// An unknown reference compiles to `false`. A loop over an explicit
    /// stack: children are pushed before their parent, as a recursive
    /// compiler would, without recursion.
    pub fn compile(&mut self, expr: &Expr) -> NodeId {
        enum Task<'e> {
            Visit(&'e Expr),
            And(usize),
            Or(usize),
            Not,
        }
        let mut tasks = vec![Task::Visit(expr)];
        let mut done: Vec<NodeId> = Vec::new();
        while let Some(task) = tasks.pop() {
            let node = match task {
                Task::Visit(Expr::And(xs)) => {
                    tasks.push(Task::And(xs.len()));
                    tasks.extend(xs.iter().rev().map(Task::Visit));
                    continue;
                }
                Task::Visit(Expr::Or(xs)) => {
                    tasks.push(Task::Or(xs.len()));
                    tasks.extend(xs.iter().rev().map(Task::Visit));
                    continue;
                }
                Task::Visit(Expr::Not(x)) => {
                    tasks.push(Task::Not);
                    tasks.push(Task::Visit(x));
                    continue;
                }
                Task::And(n) => Node::And(done.split_off(done.len() - n).into()),
                Task::Or(n) => Node::Or(done.split_off(done.len() - n).into()),
                Task::Not => match done.pop() {
                    Some(x) => Node::Not(x),
                    None => Node::Const(true),
                },
                Task::Visit(leaf) => self.leaf(leaf),
            };
            let id = self.push(node);
            done.push(id);
        }
        done.pop().unwrap_or_else(|| self.push(Node::Const(false)))
    }

    /// The node of an expression without children.
    fn leaf(&self, expr: &Expr) -> Node {
        match expr {
            Expr::Const(b) => Node::Const(*b),
            Expr::And(_) | Expr::Or(_) | Expr::Not(_) => Node::Const(false),
            Expr::Ref { name, .. } => match self.audience(name) {
                Some(slot) => Node::Audience(slot),
                None => Node::Const(false),
            },
            Expr::Behavior {
                behavior,
                window,
                filter,
            } => Node::Atom(Atom::Behavior {
                actions: ActionSet::of(*behavior),
                window: *window,
                filter: filter.clone(),
            }),
            Expr::Metric {
                metric,
                window,
                cmp,
                value,
            } => Node::Atom(Atom::Metric {
                metric: *metric,
                window: *window,
                cmp: *cmp,
                value: *value,
            }),
            Expr::Tier { cmp, value } => Node::Atom(Atom::Tier {
                cmp: *cmp,
                value: *value,
            }),
            Expr::Tag(tag) => Node::Atom(Atom::Tag(tag.as_str().into())),
            Expr::Ctx { key, test, .. } => Node::Atom(Atom::Ctx {
                key: CtxKey::from_name(key),
                test: test.clone(),
            }),
            Expr::DaysSince { action, cmp, value } => Node::Atom(Atom::DaysSince {
                actions: ActionSet::of(*action),
                cmp: *cmp,
                value: *value,
            }),
            Expr::PreviewTier { cmp, value } => Node::Atom(Atom::PreviewTier {
                cmp: *cmp,
                value: *value,
            }),
            Expr::Offered { window, filter } => Node::Atom(Atom::Offered {
                window: *window,
                offers: Offers::of(filter.as_ref()),
            }),
            Expr::Claimed { window, filter } => Node::Atom(Atom::Claimed {
                window: *window,
                offers: Offers::of(filter.as_ref()),
            }),
        }
    }

    /// Resolves every `kind=` of `offered`/`claimed` to the ids of the
    /// benefits of that kind, given as (id, kind) in file order. Called once
    /// the file's benefits are known (and by sizes, for their expression).
    pub fn resolve_kinds<'b>(&mut self, benefits: impl Iterator<Item = (&'b Arc<str>, &'b str)> + Clone) {
        for node in &mut self.nodes {
            if let Node::Atom(
                Atom::Offered {
                    offers: Offers::Benefits { kind: Some(kind), ids },
                    ..
                }
                | Atom::Claimed {
                    offers: Offers::Benefits { kind: Some(kind), ids },
                    ..
                },
            ) = node
            {
                *ids = benefits
                    .clone()
                    .filter(|(_, k)| *k == &**kind)
                    .map(|(id, _)| id.clone())
                    .collect();
            }
        }
    }

    /// Evaluates the expression at `id` for one visitor.
    ///
    /// Recursive, which keeps the hot path lean: the loader bounds the
    /// nesting depth of every expression with its audiences inlined
    /// ([`crate::rules::Limits::max_inlined_depth`]), and so the stack.
    /// The operands of `and`, `or` and `not` that are leaves (an atom, a
    /// constant, an audience already in the memo, or the `not` of one) are
    /// answered in the operator's own loop, without a call per operand;
    /// every operand is still evaluated in order and only until one settles
    /// the result, so the atoms asked are exactly those of a plain walk.
    ///
    /// A `when` that names an audience already in the memo is answered here,
    /// inlined at the caller.
    #[inline]
    pub fn eval(&self, id: NodeId, facts: &impl Facts, memo: &mut Memo) -> bool {
        if let Some(Node::Audience(slot)) = self.nodes.get(id as usize) {
            match memo.states.get(*slot as usize) {
                Some(&TRUE) => return true,
                Some(&FALSE) => return false,
                _ => {}
            }
        }
        self.eval_node(id, facts, memo)
    }

    /// [`Plan::eval`] past its memo check: the one frame an operator costs.
    fn eval_node(&self, id: NodeId, facts: &impl Facts, memo: &mut Memo) -> bool {
        match self.node(id) {
            Node::Const(b) => *b,
            Node::And(xs) => {
                for &x in xs.iter() {
                    if !self.operand(x, facts, memo) {
                        return false;
                    }
                }
                true
            }
            Node::Or(xs) => {
                for &x in xs.iter() {
                    if self.operand(x, facts, memo) {
                        return true;
                    }
                }
                false
            }
            Node::Not(x) => !self.settle(*x, facts, memo),
            Node::Audience(slot) => self.eval_audience(*slot, facts, memo),
            Node::Atom(atom) => facts.atom(atom),
        }
    }

    /// An operand of `and` / `or`: a `not` of a leaf answered here, anything else by [`Plan::settle`].
    #[inline(always)]
    fn operand(&self, id: NodeId, facts: &impl Facts, memo: &mut Memo) -> bool {
        match self.node(id) {
            Node::Not(x) => !self.settle(*x, facts, memo),
            _ => self.settle(id, facts, memo),
        }
    }

    /// A leaf answered in place (an atom, a constant, a memoized audience);
    /// anything else through [`Plan::eval`] / [`Plan::eval_audience`].
    #[inline(always)]
    fn settle(&self, id: NodeId, facts: &impl Facts, memo: &mut Memo) -> bool {
        match self.node(id) {
            Node::Atom(atom) => facts.atom(atom),
            Node::Const(b) => *b,
            Node::Audience(slot) => match memo.states.get(*slot as usize) {
                Some(&TRUE) => true,
                Some(&FALSE) => false,
                _ => self.eval_audience(*slot, facts, memo),
            },
            _ => self.eval_node(id, facts, memo),
        }
    }

    /// Evaluates an audience for one visitor, at most once per memo.
    pub fn eval_audience(&self, slot: u32, facts: &impl Facts, memo: &mut Memo) -> bool {
        let s = slot as usize;
        if memo.states.len() <= s {
            memo.states.resize(self.audiences.len(), UNKNOWN);
        }
        match memo.states.get(s) {
            Some(&TRUE) => true,
            Some(&FALSE) => false,
            _ => {
                let result = self.eval_node(self.audiences[s].root, facts, memo);
                if let Some(state) = memo.states.get_mut(s) {
                    *state = if result { TRUE } else { FALSE };
                }
                result
            }
        }
    }
}

impl Offers {
    fn of(filter: Option<&OfferFilter>) -> Offers {
        match filter {
            None => Offers::AnyBenefit,
            Some(OfferFilter::Benefit(id)) => Offers::Benefits {
                kind: None,
                ids: Box::new([Arc::from(id.as_str())]),
            },
            Some(OfferFilter::Kind(kind)) => Offers::Benefits {
                kind: Some(kind.as_str().into()),
                ids: Box::new([]),
            },
            Some(OfferFilter::Banner(id)) => Offers::Banner(id.as_str().into()),
        }
    }
}

impl ActionSet {
    /// The actions a behavior atom looks for.
    pub fn of(behavior: Behavior) -> ActionSet {
        use crate::event::Action;
        match behavior {
            Behavior::Visited => ActionSet::ALL,
            Behavior::Viewed => ActionSet::one(Action::View),
            Behavior::Carted => ActionSet::one(Action::Cart),
            Behavior::Favorited => ActionSet::one(Action::Favorite),
            Behavior::Purchased => ActionSet::one(Action::Purchase),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    struct Counting<'a> {
        calls: &'a Cell<u32>,
    }

    impl Facts for Counting<'_> {
        fn atom(&self, atom: &Atom) -> bool {
            self.calls.set(self.calls.get() + 1);
            matches!(atom, Atom::Tag(t) if &**t == "yes")
        }
    }

    /// Regression (hardening #3): `finish` walked every path through the
    /// audience references (`a_i: a_{i+1} or a_{i+1}`: 2^n paths); it now
    /// visits each audience once. 200 levels would never finish otherwise.
    #[test]
    fn finish_is_linear_in_shared_references() {
        let n = 200;
        let names: Vec<Arc<str>> = (0..=n).map(|i| Arc::from(format!("a{i}"))).collect();
        let mut plan = Plan::default();
        plan.declare_audiences(&names);
        for i in 0..n {
            let e = crate::rules::expr::parse(&format!("a{} or a{}", i + 1, i + 1)).unwrap();
            let root = plan.compile(&e);
            plan.define_audience(i, root);
        }
        let last = plan.compile(&crate::rules::expr::parse("ctx.page == \"x\"").unwrap());
        plan.define_audience(n, last);
        plan.finish();
        assert!(plan.audiences().iter().all(|a| a.uses_ctx));
        let top = plan.compile(&crate::rules::expr::parse("tag(\"t\") and a0").unwrap());
        assert!(plan.uses_ctx(top));
    }

    /// Records the tags asked, in order; `y...` tags hold.
    struct Recording<'a> {
        asked: &'a std::cell::RefCell<Vec<String>>,
    }

    impl Facts for Recording<'_> {
        fn atom(&self, atom: &Atom) -> bool {
            let Atom::Tag(t) = atom else { return false };
            self.asked.borrow_mut().push(t.to_string());
            t.starts_with('y')
        }
    }

    /// The plain recursive walk `Plan::eval` replaced: every node one call.
    fn reference(plan: &Plan, id: NodeId, facts: &impl Facts, memo: &mut Vec<Option<bool>>) -> bool {
        match plan.node(id) {
            Node::Const(b) => *b,
            Node::And(xs) => xs.iter().all(|&x| reference(plan, x, facts, memo)),
            Node::Or(xs) => xs.iter().any(|&x| reference(plan, x, facts, memo)),
            Node::Not(x) => !reference(plan, *x, facts, memo),
            Node::Audience(slot) => match memo[*slot as usize] {
                Some(b) => b,
                None => {
                    let b = reference(plan, plan.audiences[*slot as usize].root, facts, memo);
                    memo[*slot as usize] = Some(b);
                    b
                }
            },
            Node::Atom(atom) => facts.atom(atom),
        }
    }

    /// `eval` answers leaves in the operators' loops and memoized audiences
    /// at the caller: the same answers, and the same atoms asked in the same
    /// order, as a walk that calls itself for every node.
    #[test]
    fn eval_asks_the_atoms_a_plain_walk_asks_in_its_order() {
        let audiences = [
            ("a", "tag(\"y1\") and not tag(\"n1\")"),
            ("b", "not a or (tag(\"n2\") and a)"),
            ("c", "(a or tag(\"y2\")) and not (b or not tag(\"y3\"))"),
            ("d", "not not c or true and not false"),
        ];
        let whens = [
            "a",
            "not a",
            "b and c",
            "d or a",
            "not b and not tag(\"n3\") and (c or d)",
            "tag(\"n4\") or not (a and b) or c",
            "true",
            "not (false)",
            "c and (tag(\"y4\") or d) and not (tag(\"n5\") or b)",
        ];
        let names: Vec<Arc<str>> = audiences.iter().map(|(n, _)| Arc::from(*n)).collect();
        let mut plan = Plan::default();
        plan.declare_audiences(&names);
        for (slot, (_, text)) in audiences.iter().enumerate() {
            let root = plan.compile(&crate::rules::expr::parse(text).unwrap());
            plan.define_audience(slot as u32, root);
        }
        plan.finish();
        let roots: Vec<NodeId> = whens
            .iter()
            .map(|w| plan.compile(&crate::rules::expr::parse(w).unwrap()))
            .collect();
        // Every order of three `when`s, so audiences are met memoized and not.
        let n = roots.len();
        for (i, j, k) in (0..n).flat_map(|i| (0..n).flat_map(move |j| (0..n).map(move |k| (i, j, k)))) {
            let (got, want) = (std::cell::RefCell::new(Vec::new()), std::cell::RefCell::new(Vec::new()));
            let mut memo = Memo::new(audiences.len());
            let mut plain = vec![None; audiences.len()];
            for r in [roots[i], roots[j], roots[k]] {
                let a = plan.eval(r, &Recording { asked: &got }, &mut memo);
                let b = reference(&plan, r, &Recording { asked: &want }, &mut plain);
                assert_eq!(a, b, "whens {i} {j} {k}");
            }
            assert_eq!(got.borrow().as_slice(), want.borrow().as_slice(), "whens {i} {j} {k}");
        }
    }

    #[test]
    fn compile_keeps_children_before_parents() {
        let mut plan = Plan::default();
        let root = plan.compile(&crate::rules::expr::parse("a or not (tag(\"x\") and true)").unwrap());
        assert_eq!(root as usize, plan.nodes.len() - 1);
        let Node::Or(xs) = plan.node(root) else { panic!() };
        assert!(matches!(plan.node(xs[0]), Node::Const(false)));
        let Node::Not(inner) = plan.node(xs[1]) else { panic!() };
        let Node::And(ys) = plan.node(*inner) else { panic!() };
        assert!(matches!(plan.node(ys[0]), Node::Atom(Atom::Tag(t)) if &**t == "x"));
        assert!(matches!(plan.node(ys[1]), Node::Const(true)));
    }

    #[test]
    fn audiences_are_evaluated_once_and_and_short_circuits() {
        let mut plan = Plan::default();
        plan.declare_audiences(&["a".into(), "b".into()]);
        let a = plan.compile(&crate::rules::expr::parse("tag(\"yes\")").unwrap());
        plan.define_audience(0, a);
        let b = plan.compile(&crate::rules::expr::parse("a and tag(\"no\")").unwrap());
        plan.define_audience(1, b);
        plan.finish();
        let when = plan.compile(&crate::rules::expr::parse("a and a and b and b").unwrap());
        let calls = Cell::new(0);
        let mut memo = Memo::new(2);
        assert!(!plan.eval(when, &Counting { calls: &calls }, &mut memo));
        assert_eq!(calls.get(), 2, "tag(yes) once for a, tag(no) once for b");
        let short = plan.compile(&crate::rules::expr::parse("false and a").unwrap());
        let mut memo = Memo::new(2);
        calls.set(0);
        assert!(!plan.eval(short, &Counting { calls: &calls }, &mut memo));
        assert_eq!(calls.get(), 0);
    }
}
