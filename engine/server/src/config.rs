//! `vitrine serve` configuration: every flag checked at start-up, every
//! problem reported at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::ServeArgs;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// gRPC listen address.
    pub grpc_addr: SocketAddr,
    /// HTTP listen address for metrics and probes.
    pub metrics_addr: SocketAddr,
    /// Rule files.
    pub rules_dir: PathBuf,
    /// Durable state.
    pub data_dir: PathBuf,
    /// Admin bearer token.
    pub admin_token: Option<String>,
    /// Concurrent calls admitted.
    pub max_in_flight: usize,
    /// Server-side call deadline.
    pub request_timeout: Duration,
    /// Largest request, in bytes.
    pub max_request_bytes: usize,
    /// NOT_SERVING time before closing on SIGTERM.
    pub shutdown_grace: Duration,
    /// Rules directory poll interval.
    pub rules_poll: Duration,
    /// Demo visitors per shop to seed, if any.
    pub demo_visitors: Option<usize>,
}

/// Every problem of a configuration.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

/// Parses `500ms`, `10s`, `2m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 500ms, 10s, 2m"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("`{text}` is not a duration such as 500ms, 10s, 2m")),
    })
}

impl Config {
    /// Checks every flag; all problems at once.
    pub fn from_args(args: &ServeArgs) -> Result<Config, ConfigErrors> {
        let mut problems = Vec::new();
        let mut addr = |flag: &str, value: &str| match value.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                problems.push(format!("--{flag}: `{value}` is not an address such as 127.0.0.1:50051"));
                None
            }
        };
        let grpc_addr = addr("grpc-addr", &args.grpc_addr);
        let metrics_addr = addr("metrics-addr", &args.metrics_addr);
        if let (Some(g), Some(m)) = (grpc_addr, metrics_addr) {
            if g == m && g.port() != 0 {
                problems.push(format!("--grpc-addr and --metrics-addr are both {g}"));
            }
        }
        let mut duration = |flag: &str, value: &str, min: Duration| match parse_duration(value) {
            Ok(d) if d >= min => Some(d),
            Ok(_) => {
                problems.push(format!("--{flag}: must be at least {min:?}"));
                None
            }
            Err(e) => {
                problems.push(format!("--{flag}: {e}"));
                None
            }
        };
        let request_timeout = duration("request-timeout", &args.request_timeout, Duration::from_millis(1));
        let shutdown_grace = duration("shutdown-grace", &args.shutdown_grace, Duration::ZERO);
        let rules_poll = duration("rules-poll", &args.rules_poll, Duration::from_millis(100));
        let mut positive = |flag: &str, value: &str| match value.parse::<usize>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                problems.push(format!("--{flag}: `{value}` is not a whole number above 0"));
                None
            }
        };
        let max_in_flight = positive("max-in-flight", &args.max_in_flight);
        let max_request_bytes = positive("max-request-bytes", &args.max_request_bytes);
        let demo_visitors = positive("demo-visitors", &args.demo_visitors);
        if args.admin_token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            problems.push("--admin-token: must not be empty when set".to_string());
        }
        if args.rules_dir.exists() && !args.rules_dir.is_dir() {
            problems.push(format!("--rules-dir: {} is not a directory", args.rules_dir.display()));
        }
        if args.data_dir.exists() && !args.data_dir.is_dir() {
            problems.push(format!("--data-dir: {} is not a directory", args.data_dir.display()));
        }
        if args.kafka_brokers.is_some() {
            problems.push(
                "--kafka-brokers: Kafka ingest is not part of this build yet; run embedded (events through Ingest/Track)"
                    .to_string(),
            );
        }
        if args.kafka_topic.is_empty() {
            problems.push("--kafka-topic: must not be empty".to_string());
        }
        if args.kafka_group.is_empty() {
            problems.push("--kafka-group: must not be empty".to_string());
        }
        match (
            grpc_addr,
            metrics_addr,
            max_in_flight,
            request_timeout,
            max_request_bytes,
            shutdown_grace,
            rules_poll,
            demo_visitors,
        ) {
            (Some(g), Some(m), Some(mif), Some(rt), Some(mrb), Some(sg), Some(rp), Some(dv)) if problems.is_empty() => {
                Ok(Config {
                    grpc_addr: g,
                    metrics_addr: m,
                    rules_dir: args.rules_dir.clone(),
                    data_dir: args.data_dir.clone(),
                    admin_token: args.admin_token.clone(),
                    max_in_flight: mif,
                    request_timeout: rt,
                    max_request_bytes: mrb,
                    shutdown_grace: sg,
                    rules_poll: rp,
                    demo_visitors: args.demo.then_some(dv),
                })
            }
            _ => Err(ConfigErrors(problems)),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn args(flags: &[&str]) -> ServeArgs {
        let mut argv = vec!["vitrine", "serve"];
        argv.extend_from_slice(flags);
        match Cli::parse_from(argv).command {
            Command::Serve(a) => *a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::from_args(&args(&[])).unwrap();
        assert_eq!(c.grpc_addr.to_string(), "127.0.0.1:50051");
        assert_eq!(c.metrics_addr.to_string(), "127.0.0.1:9898");
        assert_eq!(c.request_timeout, Duration::from_secs(10));
        assert_eq!(c.demo_visitors, None);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let e = Config::from_args(&args(&[
            "--grpc-addr",
            "nowhere",
            "--metrics-addr",
            "127.0.0.1:x",
            "--request-timeout",
            "10 parsecs",
            "--max-in-flight",
            "0",
            "--admin-token",
            " ",
        ]))
        .unwrap_err();
        assert_eq!(
            e.0,
            [
                "--grpc-addr: `nowhere` is not an address such as 127.0.0.1:50051",
                "--metrics-addr: `127.0.0.1:x` is not an address such as 127.0.0.1:50051",
                "--request-timeout: `10 parsecs` is not a duration such as 500ms, 10s, 2m",
                "--max-in-flight: `0` is not a whole number above 0",
                "--admin-token: must not be empty when set",
            ]
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("5").is_err());
    }
}
