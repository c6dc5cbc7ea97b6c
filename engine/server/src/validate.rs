//! `vitrine rules validate FILE...`: the rule author's offline check.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use vitrine_core::RuleSet;

/// Validates every file; reports each error as `file:line:column: message`.
pub fn run(files: &[PathBuf], out: &mut impl Write, err: &mut impl Write) -> ExitCode {
    let mut failed = false;
    for path in files {
        let name = path.display();
        let source = match std::fs::read_to_string(path) {
            Ok(s) => s,
            Err(e) => {
                failed = true;
                let _ = writeln!(err, "{name}: cannot read: {e}");
                continue;
            }
        };
        match RuleSet::load(&source) {
            Ok(rules) => {
                let _ = writeln!(
                    out,
                    "{name}: ok (shop {}, {} audiences, {} banners, {} pools, {} benefits)",
                    rules.shop,
                    rules.plan.audiences().len(),
                    rules.banners.len(),
                    rules.items.pools.len(),
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
