//! The command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Vitrine: real-time personalization decisions for storefronts.
#[derive(Debug, Parser)]
#[command(name = "vitrine", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the engine on the rule files with a generated stream of behavior,
    /// and print audience sizes and explained decisions.
    Demo {
        /// Rule files to load (every *.yaml).
        #[arg(long, env = "VITRINE_RULES_DIR", default_value = "rules")]
        rules_dir: PathBuf,
        /// Demo visitors per shop.
        #[arg(long, default_value_t = 2000)]
        visitors: usize,
    },
    /// Work with rule files.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Check rule files offline, with the same errors as Rules/Push.
    ///
    /// Prints `FILE:LINE:COLUMN: message` for every error of every file and
    /// exits 1 if any file is invalid, 0 if all are valid.
    Validate {
        /// Rule files (YAML), one storefront each.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}
