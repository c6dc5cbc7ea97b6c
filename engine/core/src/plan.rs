//! Compiled audience expressions: one arena of nodes per rule set.
//!
//! Every audience of a file and every `when` of its banners, pools and
//! benefits is a node in the same arena; a reference to an audience is a
//! [`Node::Audience`] that points at the audience's slot. Evaluating for one
//! visitor memoizes each audience in a [`Memo`], so an audience that several
//! expressions use is evaluated at most once per decision, and `and` / `or`
//! stop at the first operand that settles the result.

use std::sync::Arc;

use crate::event::ActionSet;
use crate::expr::{Behavior, Cmp, CtxTest, Expr, Filter, Metric};
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
    fn from_name(name: &str) -> CtxKey {
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
        }
    }
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

    /// Computes `uses_ctx` for every audience; call once all are defined (no cycles).
    pub(crate) fn finish(&mut self) {
        for slot in 0..self.audiences.len() {
            let uses = self.uses_ctx(self.audiences[slot].root);
            self.audiences[slot].uses_ctx = uses;
        }
    }

    /// Whether the expression at `id` reads the request context.
    pub fn uses_ctx(&self, id: NodeId) -> bool {
        match self.node(id) {
            Node::Const(_) => false,
            Node::And(xs) | Node::Or(xs) => xs.iter().any(|&x| self.uses_ctx(x)),
            Node::Not(x) => self.uses_ctx(*x),
            Node::Audience(slot) => self.uses_ctx(self.audiences[*slot as usize].root),
            Node::Atom(Atom::Ctx { .. }) => true,
            Node::Atom(_) => false,
        }
    }

    fn push(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        (self.nodes.len() - 1) as NodeId
    }

    /// Compiles an expression whose audience references have been checked.
    /// An unknown reference compiles to `false`.
    pub fn compile(&mut self, expr: &Expr) -> NodeId {
        let node = match expr {
            Expr::Const(b) => Node::Const(*b),
            Expr::And(xs) => Node::And(xs.iter().map(|x| self.compile(x)).collect()),
            Expr::Or(xs) => Node::Or(xs.iter().map(|x| self.compile(x)).collect()),
            Expr::Not(x) => Node::Not(self.compile(x)),
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
        };
        self.push(node)
    }

    /// Evaluates the expression at `id` for one visitor.
    pub fn eval(&self, id: NodeId, facts: &impl Facts, memo: &mut Memo) -> bool {
        match self.node(id) {
            Node::Const(b) => *b,
            Node::And(xs) => xs.iter().all(|&x| self.eval(x, facts, memo)),
            Node::Or(xs) => xs.iter().any(|&x| self.eval(x, facts, memo)),
            Node::Not(x) => !self.eval(*x, facts, memo),
            Node::Audience(slot) => self.eval_audience(*slot, facts, memo),
            Node::Atom(atom) => facts.atom(atom),
        }
    }

    /// Evaluates an audience for one visitor, at most once per memo.
    pub fn eval_audience(&self, slot: u32, facts: &impl Facts, memo: &mut Memo) -> bool {
        let s = slot as usize;
        if memo.states.len() <= s {
            memo.states.resize(self.audiences.len(), UNKNOWN);
        }
        match memo.states[s] {
            TRUE => true,
            FALSE => false,
            _ => {
                let result = self.eval(self.audiences[s].root, facts, memo);
                memo.states[s] = if result { TRUE } else { FALSE };
                result
            }
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

    #[test]
    fn audiences_are_evaluated_once_and_and_short_circuits() {
        let mut plan = Plan::default();
        plan.declare_audiences(&["a".into(), "b".into()]);
        let a = plan.compile(&crate::expr::parse("tag(\"yes\")").unwrap());
        plan.define_audience(0, a);
        let b = plan.compile(&crate::expr::parse("a and tag(\"no\")").unwrap());
        plan.define_audience(1, b);
        plan.finish();
        let when = plan.compile(&crate::expr::parse("a and a and b and b").unwrap());
        let calls = Cell::new(0);
        let mut memo = Memo::new(2);
        assert!(!plan.eval(when, &Counting { calls: &calls }, &mut memo));
        assert_eq!(calls.get(), 2, "tag(yes) once for a, tag(no) once for b");
        let short = plan.compile(&crate::expr::parse("false and a").unwrap());
        let mut memo = Memo::new(2);
        calls.set(0);
        assert!(!plan.eval(short, &Counting { calls: &calls }, &mut memo));
        assert_eq!(calls.get(), 0);
    }
}
