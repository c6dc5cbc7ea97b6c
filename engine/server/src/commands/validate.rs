//! `vitrine rules validate FILE...`: the rule author's offline check.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use vitrine_core::RuleSet;

use crate::rules_store::check_shop_name;

/// Validates every file; reports each error as `file:line:column: message`,
/// and a shop name the server would refuse (see [`check_shop_name`]).
pub fn run(files: &[PathBuf], out: &mut impl Write, err: &mut impl Write) -> ExitCode {
    let mut failed = false;
    for path in files {
        let name = path.display();
        let source =
            match crate::rules_store::read_rule_file(path, vitrine_core::rules::Limits::default().max_file_bytes) {
                Ok(s) => s,
                Err(e) => {
                    failed = true;
                    let _ = writeln!(err, "{name}: cannot read: {e}");
                    continue;
                }
            };
        match RuleSet::load(&source) {
            Ok(rules) => {
                if let Err(e) = check_shop_name(&rules.shop) {
                    failed = true;
                    let _ = writeln!(err, "{name}: {e}");
                    continue;
                }
                let _ = writeln!(
                    out,
                    "{name}: ok (shop {}, {} audiences, {} banners, {} pools, {} benefits)",
                    rules.shop,
                    rules.plan.audiences().len(),
                    rules.banners.len(),
                    rules.items().pools.len(),
                    rules.benefits.len()
                );
            }
            Err(errors) => {
                failed = true;
                for e in &errors.0 {
                    let _ = writeln!(err, "{name}:{e}");
                }
                if let Some(line) = errors.omitted_line() {
                    let _ = writeln!(err, "{name}: {line}");
                }
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// Regression (hardening #15a): validate refuses the shop names Push
    /// refuses, with the same message.
    #[test]
    fn a_shop_name_push_would_refuse_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("long.yaml");
        std::fs::write(&file, format!("shop: {}\n", "s".repeat(100))).unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run(std::slice::from_ref(&file), &mut out, &mut err);
        assert_eq!(code, ExitCode::FAILURE);
        assert_eq!(
            String::from_utf8(err).unwrap(),
            format!(
                "{}: shop `{}...` is 100 bytes long; a shop name has at most 80 bytes\n",
                file.display(),
                "s".repeat(32)
            )
        );
        assert!(out.is_empty());
    }
}
