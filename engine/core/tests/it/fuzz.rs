//! Random-input tests of the rule language (hardening, issue 11): the
//! expression parser and the rule-file loader take arbitrary text and
//! structured hostile shapes (deep nesting, long audience chains, shared
//! references, token and YAML soups) without panicking, and every error
//! they report points inside the text.
//!
//! 256 cases per property by default; a long run:
//! `PROPTEST_CASES=100000 cargo test -p vitrine-core --release --test it fuzz`

use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::FileFailurePersistence;

use vitrine_core::event::Fields;
use vitrine_core::rules::expr;
use vitrine_core::rules::yaml::Pos;
use vitrine_core::{
    audience_sizes, decide, size_of, Context, DecideRequest, Event, Index, MemoryLedger, RuleSet, ShopIndex,
};

fn config() -> ProptestConfig {
    ProptestConfig {
        // Next to the crate's manifest (cargo runs tests from there).
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/it/fuzz.txt",
        ))),
        ..ProptestConfig::default()
    }
}

/// Whether `pos` lies in `text` (or just past the end of a line or of the text).
fn within(text: &str, pos: Pos) -> bool {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.split('\n').collect();
    let line = pos.line as usize;
    line >= 1 && line <= lines.len() && pos.column >= 1 && pos.column as usize <= lines[line - 1].chars().count() + 1
}

/// Loads `text`; on errors, checks that each is well-formed. On success,
/// sizes and decides over a small shop, which must not panic either.
fn load_checked(text: &str) -> Result<(), TestCaseError> {
    match RuleSet::load(text) {
        Ok(rules) => {
            let shop = shop(&rules.shop);
            let _ = audience_sizes(&rules, Some(&shop), &vitrine_core::MemoryLedger::new(), NOW);
            for a in rules.plan.audiences() {
                let _ = size_of(
                    Some(&rules),
                    Some(&shop),
                    &vitrine_core::MemoryLedger::new(),
                    &a.name,
                    NOW,
                );
            }
            let index = Index::new();
            for v in ["v1", "v2", ""] {
                let _ = decide(
                    &rules,
                    Some(&shop),
                    &MemoryLedger::new(),
                    &DecideRequest {
                        visitor: v,
                        context: Context {
                            page: "item",
                            ..Context::default()
                        },
                        explain: true,
                        now_ms: NOW,
                        ..DecideRequest::default()
                    },
                );
            }
            drop(index);
        }
        Err(errors) => {
            prop_assert!(!errors.0.is_empty() || errors.1 > 0);
            prop_assert!(errors.0.len() <= vitrine_core::rules::DEFAULT_MAX_ERRORS);
            for e in &errors.0 {
                prop_assert!(within(text, e.pos), "{e} is outside the text {text:?}");
                prop_assert!(!e.message.is_empty());
            }
        }
    }
    Ok(())
}

const NOW: i64 = 1_794_325_500_000;

/// Two visitors with a tag, a view and a purchase.
fn shop(name: &str) -> ShopIndex {
    let shop = ShopIndex::new(name);
    let base = Fields {
        shop: Some(name.to_string().into()),
        ts: Some(NOW - 3_600_000),
        ..Fields::default()
    };
    for v in ["v1", "v2"] {
        for fields in [
            Fields {
                action: Some("tag".into()),
                tag: Some("x".into()),
                ..base.clone()
            },
            Fields {
                action: Some("view".into()),
                item: Some("i".into()),
                category: Some("c".into()),
                ..base.clone()
            },
            Fields {
                action: Some("purchase".into()),
                item: Some("i".into()),
                price: Some(10.0),
                ..base.clone()
            },
        ] {
            let fields = Fields {
                visitor: Some(v.to_string().into()),
                ..fields
            };
            if let Ok(event) = Event::validate(fields) {
                shop.apply(&event);
            }
        }
    }
    shop
}

/// Parses `text`; an error's offset lies in the text, on a character boundary.
fn parse_checked(text: &str) -> Result<(), TestCaseError> {
    if let Err(e) = expr::parse(text) {
        prop_assert!(e.offset <= text.len(), "{e:?} past the end of {text:?}");
        prop_assert!(text.is_char_boundary(e.offset), "{e:?} inside a character of {text:?}");
        prop_assert!(!e.message.is_empty());
    }
    Ok(())
}

const EXPR_TOKENS: &[&str] = &[
    "(",
    ")",
    "not",
    "and",
    "or",
    "true",
    "false",
    "a",
    "b",
    "tag(\"x\")",
    "viewed(7d)",
    "purchased(30d, item=\"i\")",
    "carted(12h, category=\"c\")",
    "spend(365d)",
    ">=",
    "==",
    "10",
    "member_tier",
    "ctx.page",
    "in",
    "[",
    "]",
    ",",
    "\"",
    "\"x\"",
    "\\",
    "7d",
    "401d",
    "0h",
    "=",
    ".",
    "é",
    "-1",
    "1e400",
    "\n",
    "viewed",
    "ctx",
    "(((",
    ")))",
];

const YAML_TOKENS: &[&str] = &[
    "shop: s\n",
    "audiences:\n",
    "  a: ",
    "  b: ",
    "banners:\n",
    "  - when: ",
    "    banner: x\n",
    "items:\n",
    "  limit: 3\n",
    "benefits:\n",
    "  - id: b\n",
    "    kind: k\n",
    "tag(\"x\")",
    "a",
    "b",
    " or ",
    " and ",
    "not ",
    "(",
    ")",
    "\n",
    "- ",
    ": ",
    "[",
    "]",
    "{",
    "}",
    "---\n",
    "...\n",
    "&x ",
    "*x",
    "!!str ",
    "\"",
    "'",
    "|\n",
    ">\n",
    "#",
    "\t",
    "\r",
    "\0",
    "\u{feff}",
    "\u{1}",
    "é",
    "~",
    "  ",
    "? ",
    "%YAML 1.2\n",
];

/// An audience section: `n` audiences, each referencing random others
/// (cycles included) with random operators.
fn audience_graph() -> impl Strategy<Value = String> {
    (1usize..80)
        .prop_flat_map(|n| {
            let refs = prop::collection::vec(
                prop::collection::vec((0..n + 2, select(&[" or ", " and ", " and not "][..])), 0..4),
                n,
            );
            (Just(n), refs, prop::collection::vec(0..n + 2, 0..4))
        })
        .prop_map(|(n, refs, whens)| {
            let mut s = String::from("shop: s\naudiences:\n");
            for (i, out) in refs.iter().enumerate() {
                s.push_str(&format!("  a{i}: tag(\"x\")"));
                for (to, op) in out {
                    s.push_str(&format!("{op}a{to}"));
                }
                s.push('\n');
            }
            s.push_str("banners:\n");
            for w in whens {
                s.push_str(&format!("  - when: a{w} or ctx.page == \"item\"\n    banner: b{w}\n"));
            }
            s.push_str(&format!("  - banner: fallback{n}\n"));
            s
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_expr_arbitrary_text(text in any::<String>()) {
        parse_checked(&text)?;
    }

    #[test]
    fn fuzz_expr_token_soup(tokens in prop::collection::vec(select(EXPR_TOKENS), 0..60)) {
        let text = tokens.join(" ");
        parse_checked(&text)?;
        let shop = shop("s");
        let _ = size_of(None, Some(&shop), &vitrine_core::MemoryLedger::new(), &text, NOW);
    }

    /// Nesting of parentheses and `not` up to 5,000 levels: accepted up to
    /// the limit, refused past it, never a stack overflow.
    #[test]
    fn fuzz_expr_deep_nesting(levels in prop::collection::vec(any::<bool>(), 0..5_000)) {
        let mut text = String::new();
        for &paren in &levels {
            text.push_str(if paren { "(" } else { "not " });
        }
        text.push_str("tag(\"x\")");
        for &paren in levels.iter().rev() {
            if paren {
                text.push(')');
            }
        }
        let limits = expr::Limits { max_bytes: usize::MAX, ..expr::Limits::default() };
        let parsed = expr::parse_with(&text, &limits);
        prop_assert_eq!(parsed.is_ok(), levels.len() <= expr::DEFAULT_MAX_DEPTH, "{:?}", parsed.err());
        parse_checked(&text)?;
    }

    #[test]
    fn fuzz_rules_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2_000)) {
        load_checked(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn fuzz_rules_yaml_soup(tokens in prop::collection::vec(select(YAML_TOKENS), 0..80)) {
        load_checked(&tokens.concat())?;
    }

    /// Random reference graphs: cycles, shared references, undefined names.
    #[test]
    fn fuzz_rules_audience_graphs(source in audience_graph()) {
        load_checked(&source)?;
    }

    /// Chains of 1..300 audiences with doubled references: loaded (and
    /// sized, decided) when within the limits, refused past them.
    #[test]
    fn fuzz_rules_deep_chains(n in 1usize..300, doubled in any::<bool>()) {
        let mut s = String::from("shop: s\naudiences:\n");
        for i in 0..n {
            if doubled {
                s.push_str(&format!("  a{i}: a{j} or not a{j}\n", j = i + 1));
            } else {
                s.push_str(&format!("  a{i}: a{}\n", i + 1));
            }
        }
        s.push_str(&format!("  a{n}: tag(\"x\")\n"));
        // The reference chain (64) binds first: the doubled shape has 3 plan
        // nodes per level, 193 at 64 levels, within the inlined depth of 512.
        prop_assert_eq!(RuleSet::load(&s).is_ok(), n <= 64);
        load_checked(&s)?;
    }
}
