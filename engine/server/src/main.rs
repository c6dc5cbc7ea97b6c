//! `vitrine`: the Vitrine binary. This file only wires the command line to
//! the subcommands.

mod cli;
mod demo;
mod validate;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match cli::Cli::parse().command {
        cli::Command::Demo { rules_dir, visitors } => {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            match demo::run(&rules_dir, visitors, now_ms, &mut std::io::stdout()) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("vitrine demo: {}: {e}", rules_dir.display());
                    ExitCode::FAILURE
                }
            }
        }
        cli::Command::Rules {
            command: cli::RulesCommand::Validate { files },
        } => validate::run(&files, &mut std::io::stdout(), &mut std::io::stderr()),
    }
}
