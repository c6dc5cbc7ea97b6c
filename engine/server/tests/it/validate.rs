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
