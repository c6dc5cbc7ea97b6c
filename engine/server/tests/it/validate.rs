//! `vitrine rules validate`: exit codes and `file:line:column` output.

use std::path::{Path, PathBuf};
use std::process::Command;

fn vitrine() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vitrine"))
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn the_demo_rules_are_valid() {
    let root = repo_root();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("rules"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let names: Vec<&str> = files.iter().filter_map(|p| p.file_name()?.to_str()).collect();
    assert_eq!(
        names,
        ["demo-apparel.yaml", "demo-beauty.yaml", "demo-electronics.yaml"]
    );
    let out = vitrine().arg("rules").arg("validate").args(&files).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.contains(": ok (shop ")).count(),
        files.len(),
        "{stdout}"
    );
}

#[test]
fn errors_name_file_line_and_column_and_exit_1() {
    let dir = std::env::temp_dir().join(format!("vitrine-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "shop: s\naudiences:\n  vip: member_tier >= 4\nbanners:\n  - when: vipp\n    banner: x\n  - banner: y\n    colour: red\n").unwrap();
    let good = dir.join("good.yaml");
    std::fs::write(&good, "shop: g\n").unwrap();
    let out = vitrine()
        .args(["rules", "validate"])
        .arg(&good)
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let bad = bad.display();
    assert_eq!(
        stderr,
        format!(
            "{bad}:5:11: undefined audience `vipp`\n{bad}:8:5: unknown key `colour` in a banner; expected one of: when, banner, params, starts, ends, holdout\n"
        )
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("good.yaml: ok (shop g, 0 audiences"));
    let missing = vitrine()
        .args(["rules", "validate", "/nonexistent/x.yaml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_demo_runs_on_the_demo_rules() {
    let out = vitrine()
        .arg("demo")
        .arg("--rules-dir")
        .arg(repo_root().join("rules"))
        .args(["--visitors", "300"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    for shop in ["demo-apparel", "demo-beauty", "demo-electronics"] {
        assert!(stdout.contains(&format!("== {shop} (")), "{stdout}");
    }
    assert!(stdout.contains("What to try next:"));
    // Personalized: the demo's visitors do not all get the same banner. The
    // demo's stream is seeded and ends at the clock, so the set is exact.
    let banners: std::collections::BTreeSet<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("  banner:"))
        .map(str::trim)
        .collect();
    assert_eq!(
        banners.into_iter().collect::<Vec<_>>(),
        [
            "default",
            "gold-early-access",
            "join-as-gold",
            "laptop-week",
            "still-thinking",
            "we-miss-you",
            "welcome-app",
            "welcome-south",
            "your-cart-is-waiting",
        ],
        "{stdout}"
    );
}

/// The rule language's second edition in one file, as `rules/README.md`
/// teaches it: every new key and atom at once.
const SECOND_EDITION: &str = r#"shop: demo-apparel
timezone: Asia/Shanghai         # IANA zone, default UTC: day windows, "today" and
                                # starts/ends written without an offset follow it
audiences:
  member: member_tier >= 1
  would_be_gold: preview_tier >= 2
  cart_abandoner: carted(7d) and not purchased(7d) and not offered(30d, kind="coupon")
  lapsed: days_since(purchase) >= 45 and avg_order(365d) >= 80
  big_cart: ctx.cart_total >= 99
  vip_hall: claimed(90d, kind="ticket")

tiers:                          # member-tier preview: the tier a visitor's history earns
  by: spend(365d)               # spend(W) or purchase_count(W)
  levels:                       # ascending `at`; a visitor below the first level has tier 0
    - { tier: 1, name: silver,   at: 500 }
    - { tier: 2, name: gold,     at: 2000 }
    - { tier: 3, name: platinum, at: 10000 }

banners:
  - when: would_be_gold and not member
    banner: join-as-gold
    params: { image: "gold-card.jpg", headline: "You are already Gold" }  # passed through
    starts: 2026-11-10T00:00:00          # optional schedule on any banner, pool or benefit;
    ends:   2026-11-12T00:00:00          # no offset = the shop's timezone
    holdout: 5%                          # optional control group on banners too
  - when: vip_hall
    banner: vip-hall

items:
  add_on:                       # smart add-on: help reach a spend threshold
    threshold: 99               # e.g. free shipping from 99
    cart_total: ctx.cart_total  # the request attribute holding the cart's value
  pools:
    - when: cart_abandoner
      items: [sku-101, sku-102]
      starts: 2026-11-11T00:00:00
      ends:   2026-11-12T00:00:00

benefits:
  - id: come-back-10
    when: lapsed and not big_cart
    kind: coupon
    budget: 500
    holdout: 10%
"#;

#[test]
fn the_second_edition_example_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("second-edition.yaml");
    std::fs::write(&file, SECOND_EDITION).unwrap();
    let out = vitrine().arg("rules").arg("validate").arg(&file).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.ends_with(": ok (shop demo-apparel, 6 audiences, 2 banners, 1 pools, 1 benefits)\n"),
        "{stdout}"
    );
    // Without its audiences, the same file names each one it misses.
    let bare = SECOND_EDITION.replace("  vip_hall: claimed(90d, kind=\"ticket\")\n", "");
    std::fs::write(&file, bare).unwrap();
    let out = vitrine().arg("rules").arg("validate").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).ends_with("second-edition.yaml:25:11: undefined audience `vip_hall`\n"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
