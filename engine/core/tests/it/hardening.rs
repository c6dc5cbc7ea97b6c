//! Regressions of issue 11 (hardening) in the rule language: bounded
//! nesting, linear validation and sizes, bounded error lists, one document
//! per file, instants at the edge of time.

use std::fmt::Write as _;

use vitrine_core::event::Fields;
use vitrine_core::time::{HOUR_MS, MAX_NOW_MS};
use vitrine_core::{
    audience_sizes, decide, size_of, Context, DecideRequest, Event, Index, MemoryLedger, RuleSet, SizeError,
};

/// The errors of a file as `line:column: message` lines (Display of RuleErrors).
fn errors(source: &str) -> Vec<String> {
    match RuleSet::load(source) {
        Ok(_) => panic!("expected errors, the file loaded"),
        Err(e) => e.to_string().lines().map(str::to_string).collect(),
    }
}

/// A shop with visitors tagged `x`, `y` or both, and the loaded rules.
struct Shop {
    rules: RuleSet,
    index: Index,
}

impl Shop {
    fn new(source: &str) -> Shop {
        let rules = RuleSet::load(source).unwrap();
        let index = Index::new();
        for (v, tags) in [("v1", &["x"][..]), ("v2", &["y"]), ("v3", &["x", "y"]), ("v4", &[])] {
            for tag in tags {
                let fields = Fields {
                    shop: Some(rules.shop.to_string().into()),
                    visitor: Some(v.to_string().into()),
                    action: Some("tag".into()),
                    tag: Some(tag.to_string().into()),
                    ts: Some(1_000),
                    ..Fields::default()
                };
                index.apply(&Event::validate(fields).unwrap());
            }
            let fields = Fields {
                shop: Some(rules.shop.to_string().into()),
                visitor: Some(v.to_string().into()),
                action: Some("view".into()),
                item: Some("i".into()),
                ts: Some(MAX_NOW_MS - HOUR_MS),
                ..Fields::default()
            };
            index.apply(&Event::validate(fields).unwrap());
        }
        Shop { rules, index }
    }

    fn size(&self, expression: &str, now_ms: i64) -> Result<u64, SizeError> {
        let shop = self.index.shop(&self.rules.shop);
        size_of(
            Some(&self.rules),
            shop.as_deref(),
            &vitrine_core::MemoryLedger::new(),
            expression,
            now_ms,
        )
    }

    fn sizes(&self) -> Vec<(String, Option<u64>)> {
        let shop = self.index.shop(&self.rules.shop);
        audience_sizes(&self.rules, shop.as_deref(), &vitrine_core::MemoryLedger::new(), 1_000)
    }

    /// The audiences visitor `v` matches (from the explanation) and the banner.
    fn decide(&self, v: &str, now_ms: i64) -> (Vec<String>, Option<String>) {
        let shop = self.index.shop(&self.rules.shop);
        let d = decide(
            &self.rules,
            shop.as_deref(),
            &MemoryLedger::new(),
            &DecideRequest {
                visitor: v,
                context: Context::default(),
                explain: true,
                now_ms,
                ..DecideRequest::default()
            },
        );
        let audiences = d.explanation.map(|e| e.audiences).unwrap_or_default();
        (audiences, d.banner.map(str::to_string))
    }
}

/// `shop: s`, then `audiences:` with one line per audience (line 3 onwards).
fn file(audiences: impl IntoIterator<Item = String>, banners: &str) -> String {
    let mut s = String::from("shop: s\naudiences:\n");
    for a in audiences {
        let _ = writeln!(s, "  {a}");
    }
    s.push_str(banners);
    s
}

/// Regression (hardening #1): 2,000 nested parentheses (or `not`s) in a
/// rule file or a Size expression overflowed the parser's stack and aborted
/// the process; they are now an error at the offending `line:column`.
#[test]
fn deep_nesting_in_expressions_is_an_error_at_its_position() {
    let parens = format!("{}true{}", "(".repeat(2_000), ")".repeat(2_000));
    assert_eq!(
        errors(&file([format!("a: {parens}")], "")),
        ["3:70: expression nested too deeply: more than 64 levels of parentheses and `not`"]
    );
    let nots = format!("{}true", "not ".repeat(1_000));
    assert_eq!(
        errors(&file([format!("a: {nots}")], "")),
        ["3:262: expression nested too deeply: more than 64 levels of parentheses and `not`"]
    );
    let shop = Shop::new("shop: s\n");
    assert_eq!(
        shop.size(&parens, 1_000),
        Err(SizeError::Syntax {
            column: 65,
            message: "expression nested too deeply: more than 64 levels of parentheses and `not`".into()
        })
    );
    let long = format!("{}true{}", "(".repeat(3_000), ")".repeat(3_000));
    assert_eq!(
        shop.size(&long, 1_000),
        Err(SizeError::Syntax {
            column: 4097,
            message: "expression is 6004 bytes long, more than the limit of 4096 bytes".into()
        })
    );
}

/// Regression (hardening #2): a chain of 10,001 audiences validated, then
/// sizes and decisions recursed 10,001 levels deep and overflowed the stack.
/// Audiences per file and the chain's depth are now bounded at validation.
#[test]
fn audience_chains_are_bounded_at_validation() {
    let chain = |n: usize| {
        (0..n)
            .map(|i| format!("a{i}: a{}", i + 1))
            .chain([format!("a{n}: tag(\"x\")")])
    };
    assert_eq!(
        errors(&file(chain(10_000), "")),
        [
            "937:9: audience `a934` is nested too deeply: a chain of 65 audience references starts here, more than the limit of 64",
            "1002:9: undefined audience `a1000`",
            "1003:3: too many audiences: more than the limit of 1000 in one file",
        ]
    );
    // a35 is the first whose chain is longer than 64 (a35 -> ... -> a100).
    assert_eq!(
        errors(&file(chain(100), "")),
        ["38:8: audience `a35` is nested too deeply: a chain of 65 audience references starts here, more than the limit of 64"]
    );
    // A `when` adds one more reference.
    assert_eq!(
        errors(&file(chain(64), "banners:\n  - when: a0\n    banner: b\n")),
        ["69:11: `when` is nested too deeply: a chain of 65 audience references starts here, more than the limit of 64"]
    );
    // Not only references: nesting once inlined (here `not`s) is bounded too.
    let nots = (0..10)
        .map(|i| format!("n{i}: {}n{}", "not ".repeat(60), i + 1))
        .chain(["n10: true".to_string()]);
    assert_eq!(
        errors(&file(nots, "")),
        ["4:7: audience `n1` is nested too deeply: 550 levels with its audience references inlined, more than the limit of 512"]
    );

    // The deepest nesting allowed (511 plan nodes: 10 x (50 `not` + a
    // reference) + an atom) sizes and decides within a test thread's stack.
    let deepest = (0..10)
        .map(|i| format!("n{i}: {}n{}", "not ".repeat(50), i + 1))
        .chain(["n10: tag(\"x\")".to_string()]);
    let shop = Shop::new(&file(deepest, "banners:\n  - when: n0\n    banner: b\n"));
    assert_eq!(shop.sizes()[0], ("n0".to_string(), Some(2)));
    assert_eq!(shop.size("not not n0", 1_000), Ok(2));
    assert_eq!(shop.decide("v1", 1_000).1.as_deref(), Some("b"));

    // The longest chain allowed sizes and decides.
    let shop = Shop::new(&file(chain(64), "banners:\n  - when: a1\n    banner: b\n"));
    let sizes = shop.sizes();
    assert_eq!(sizes.len(), 65);
    assert!(sizes.iter().all(|(_, s)| *s == Some(2)), "{sizes:?}");
    assert_eq!(shop.size("a0", 1_000), Ok(2));
    let (audiences, banner) = shop.decide("v3", 1_000);
    assert_eq!((audiences.len(), banner.as_deref()), (65, Some("b")));
}

/// Regression (hardening #3): `a_i: a_{i+1} or a_{i+1}` took 25 s to
/// validate at 31 levels, doubling with each. At 60 levels (2^60 paths)
/// validation, sizes and decisions only finish if each audience is visited
/// once, whatever the operators around its references.
#[test]
fn shared_references_are_visited_once() {
    let n = 60;
    for shape in [
        "a{i}: a{j} or a{j}",
        "a{i}: a{j} and a{j}",
        "a{i}: (tag(\"x\") and a{j}) or (tag(\"y\") and not a{j})",
        "a{i}: not (tag(\"y\") and a{j}) and (a{j} or tag(\"x\"))",
    ] {
        let audiences = (0..n)
            .map(|i| {
                shape
                    .replace("{i}", &i.to_string())
                    .replace("{j}", &(i + 1).to_string())
            })
            .chain([format!("a{n}: tag(\"x\") or tag(\"y\")")]);
        let source = file(audiences, "banners:\n  - when: a0 or a1\n    banner: b\n");
        let shop = Shop::new(&source);
        let sizes = shop.sizes();
        assert_eq!(sizes.len(), n + 1);
        let a0 = sizes[0].1;
        assert_eq!(shop.size("a0", 1_000).ok(), a0, "{shape}");
        assert!(shop.size("tag(\"x\") and (a0 or a1)", 1_000).is_ok());
        for v in ["v1", "v2", "v3", "v4"] {
            let (audiences, _) = shop.decide(v, 1_000);
            assert!(audiences.len() <= n + 1);
        }
    }
}

/// Regression (hardening #6): every error was kept (20k errors, quadratic
/// positions, unbounded messages). The first 100 are kept and the rest
/// counted: `... and K more errors`.
#[test]
fn errors_are_bounded_and_counted() {
    let mut source = String::from("shop: s\nbanners:\n");
    for i in 0..20_000 {
        let _ = writeln!(source, "  - when: nope{i}\n    banner: b");
    }
    let lines = errors(&source);
    assert_eq!(lines.len(), 101);
    assert_eq!(lines[0], "3:11: undefined audience `nope0`");
    assert_eq!(lines[99], "201:11: undefined audience `nope99`");
    assert_eq!(lines[100], "... and 19900 more errors");
    let Err(e) = RuleSet::load(&source) else { panic!() };
    assert_eq!(e.0.len(), 100);
}

/// Regression (hardening #14): text after a NUL byte and a second YAML
/// document were silently ignored; both are refused at their position.
#[test]
fn one_text_document_per_file() {
    assert_eq!(
        errors("shop: s\naudiences:\n  a: true\0\nbanners: [{ when: nope, banner: b }]\n"),
        ["3:10: NUL byte: a rule file is text, and nothing after a NUL byte would be read"]
    );
    assert_eq!(
        errors("shop: s\n---\nshop: [broken\n"),
        ["2:1: a rule file holds one YAML document; a second one starts here"]
    );
    assert_eq!(
        errors("shop: s\n...\nshop: t\n"),
        ["3:5: a rule file holds one YAML document; a second one starts here"]
    );
    // A byte order mark may open the file; positions count after it.
    assert!(RuleSet::load("\u{feff}shop: s\n").is_ok());
    assert_eq!(
        errors("\u{feff}shop: s\nbogus: 1\n"),
        ["2:1: unknown key `bogus` in the rule file; expected one of: shop, audiences, banners, items, benefits, timezone, tiers"]
    );
    // Deep YAML is an error, not a stack overflow (past 255 flow levels,
    // yaml-rust2's scanner refuses first).
    let deep = |n| format!("shop: s\nitems: {}1{}\n", "[".repeat(n), "]".repeat(n));
    assert_eq!(
        errors(&deep(100)),
        ["2:71: YAML nested too deeply: more than 64 levels of lists and mappings"]
    );
    assert_eq!(
        errors(&deep(100_000)),
        ["2:263: invalid YAML: recursion limit exceeded"]
    );
    let block = format!("shop: s\nitems:\n{}1\n", "- ".repeat(100_000));
    assert_eq!(
        errors(&block),
        ["3:127: YAML nested too deeply: more than 64 levels of lists and mappings"]
    );
    let big = format!("shop: s\n#{}\n", "x".repeat(1 << 20));
    assert_eq!(
        errors(&big),
        ["2:1048569: rule file is 1048586 bytes, more than the limit of 1048576 bytes"]
    );
}

/// Regression (hardening #16): Size at `now_ms` >= 2^62 panicked (window
/// arithmetic overflowed); at the last instant the engine answers for,
/// windows are exact.
#[test]
fn far_future_instants_do_not_panic_and_the_last_one_is_exact() {
    let shop = Shop::new(&file(
        [
            "one_hour: visited(1h)".to_string(),
            "two_hours: visited(2h)".to_string(),
            "today: visited(1d)".to_string(),
        ],
        "",
    ));
    for now in [1_i64 << 62, i64::MAX] {
        for expr in ["visited(1h)", "visited(400d)", "one_hour or today", "spend(7d) >= 0"] {
            assert!(shop.size(expr, now).is_ok());
        }
        let _ = shop.decide("v1", now);
    }
    assert_eq!(shop.size("visited(1h)", MAX_NOW_MS), Ok(0));
    assert_eq!(shop.size("visited(2h)", MAX_NOW_MS), Ok(4));
    assert_eq!(shop.size("today", MAX_NOW_MS), Ok(4));
    let (audiences, _) = shop.decide("v1", MAX_NOW_MS);
    assert_eq!(audiences, ["two_hours", "today"]);

    // A capped benefit looks back `now - window`, which overflowed at i64::MIN.
    let capped = Shop::new("shop: s\nbenefits:\n  - id: b\n    kind: k\n    cap: { per_visitor: 1, window: 30d }\n");
    for now in [i64::MIN, -1, 0, i64::MAX] {
        let _ = capped.decide("v1", now);
    }
}

/// Hardening #6, cycles: past the error bound, cycles are counted (their
/// paths, each as long as the DFS stack, are not even formatted).
#[test]
fn cycle_reports_are_bounded() {
    let n = 999;
    let audiences = (0..n).map(|i| format!("a{i}: a{} or a0", (i + 1) % n));
    let Err(e) = RuleSet::load(&file(audiences, "")) else {
        panic!("cycles loaded")
    };
    assert_eq!(e.0.len(), 100);
    assert!(e.1 >= n - 100, "every back edge is a cycle: {}", e.1);
    assert!(e.to_string().len() < 100 * 20_000);
}
