//! `vitrine serve` configuration: every flag checked at start-up, every
//! problem reported at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::api::connections::ConnectionLimits;
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
    /// Bounds on a rule file and its expressions.
    pub rule_limits: vitrine_core::rules::Limits,
    /// The shops this replica holds and serves (`--shops`).
    pub shops: crate::cluster::shops::Shops,
    /// Bounds on gRPC connections.
    pub grpc_connections: ConnectionLimits,
    /// Bounds on HTTP (metrics and probes) connections.
    pub http_connections: ConnectionLimits,
    /// Concurrent calls admitted.
    pub max_in_flight: usize,
    /// Server-side call deadline.
    pub request_timeout: Duration,
    /// The longest a call may wait for its turn before it is shed; `None` = no bound.
    pub max_queue_wait: Option<Duration>,
    /// Largest request, in bytes.
    pub max_request_bytes: usize,
    /// NOT_SERVING time before closing on SIGTERM.
    pub shutdown_grace: Duration,
    /// Rules directory poll interval.
    pub rules_poll: Duration,
    /// Demo visitors per shop to seed, if any.
    pub demo_visitors: Option<usize>,
    /// Kafka ingest; `None` = embedded mode (events through Ingest/Track).
    pub kafka: Option<KafkaConfig>,
    /// Periodic snapshots; `None` = only at shutdown.
    pub snapshot_interval: Option<Duration>,
    /// Snapshots kept.
    pub snapshot_keep: usize,
    /// Claims-journal segment size: compaction runs at a snapshot once the journal holds more.
    pub claims_segment_bytes: u64,
    /// Tokio worker threads; `None` = [`default_worker_threads`].
    pub worker_threads: Option<usize>,
    /// How the restore takes its memory when malloc advises huge pages
    /// (`--huge-pages-restore`).
    pub huge_pages_restore: RestorePages,
    /// TLS on both ports; `None` = plaintext.
    pub tls: Option<crate::api::tls::TlsFiles>,
    /// The decision log (`--decision-log*`).
    pub decision_log: DecisionLogConfig,
    /// Serve the rule studio at `/studio` on the HTTP port (`--no-studio`: not).
    pub studio: bool,
    /// Largest studio request body, in bytes (`--studio-max-body`).
    pub studio_max_body: usize,
    /// Rule files the studio compiles at once (`--studio-max-compiles`).
    pub studio_max_compiles: usize,
}

/// Slack of the default `--studio-max-body` over twice the largest rule file.
pub const STUDIO_BODY_SLACK: usize = 64 * 1024;

/// The default `--studio-max-body` for rule files of at most `max_file_bytes`:
/// the file's text as a JSON string (a quote, backslash or newline takes two
/// bytes) and the request's other fields.
pub fn default_studio_max_body(max_file_bytes: usize) -> usize {
    max_file_bytes.saturating_mul(2).saturating_add(STUDIO_BODY_SLACK)
}

/// Longest `--admin-token`, in bytes: it travels in one header, and HTTP/2
/// peers bound a request's headers at 16 KiB.
pub const MAX_ADMIN_TOKEN_BYTES: usize = 4096;

/// Why no client could ever send `token` as `authorization: Bearer <token>`
/// (every admin call would then be refused): header values are ASCII
/// without control characters, and a space at either end is trimmed away.
fn admin_token_problem(token: &str) -> Option<String> {
    if token.len() > MAX_ADMIN_TOKEN_BYTES {
        Some(format!(
            "longer than {MAX_ADMIN_TOKEN_BYTES} bytes: it must fit in one request header"
        ))
    } else if !token.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        Some("only printable ASCII (no control character, no accented letter): it is sent in a header".to_string())
    } else if token.starts_with(' ') || token.ends_with(' ') {
        Some("must not begin or end with a space: a header value loses them on the way".to_string())
    } else {
        None
    }
}

/// Tokio workers when `--worker-threads` is 0: one per core but one, at
/// least 1. Measured on 2 cores with the load generator beside the server
/// (`vitrine-loadtest run --rate 10000`, server CPU time per request): 1
/// worker 44.4-44.5 us, 2 workers 52.1-52.7 us; Decide runs inline and
/// hyper spawns a task per stream, so a second worker mostly adds
/// cross-thread wake-ups, while blocking work (fsyncs, pushes, snapshots,
/// Kafka apply threads) has its own threads to run on.
pub fn default_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

/// File descriptors kept free of connections: journals, snapshots, rule
/// files, Kafka sockets, the listeners.
pub const RESERVED_FILES: usize = 256;

/// `max_grpc`, lowered (with a warning) so that both ports' connections and
/// [`RESERVED_FILES`] fit in `open_files`, the process's soft open-files
/// limit (at least 16 connections are kept).
pub fn fit_open_files(max_grpc: usize, max_http: usize, open_files: Option<u64>) -> usize {
    let Some(open_files) = open_files.and_then(|n| usize::try_from(n).ok()) else {
        return max_grpc;
    };
    let room = open_files.saturating_sub(RESERVED_FILES + max_http).max(16);
    if max_grpc > room {
        tracing::warn!(
            open_files,
            max_connections = max_grpc,
            lowered_to = room,
            "--max-connections does not fit the open-files limit (ulimit -n) beside --max-http-connections and {RESERVED_FILES} files kept for the journals and snapshots; lowered"
        );
        return room;
    }
    max_grpc
}

/// The soft open-files limit of this process (`ulimit -n`), from
/// `/proc/self/limits`; `None` when unknown or unlimited.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// Where a starting consumer begins reading each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaStart {
    /// The earliest retained offset: the index is rebuilt from the whole
    /// retained log (the index lives in memory, so a process starts empty).
    Earliest,
    /// The group's committed offsets (earliest where none): for a consumer
    /// whose index already holds everything before them.
    Committed,
}

/// Which topic a consumer reads, and so how its messages are decoded and
/// applied. A replica runs one consumer per stream, each with its own
/// partitions, offsets, readiness and snapshot position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stream {
    /// Behavior events (`--kafka-topic`), applied as events.
    #[default]
    Behavior,
    /// Decision records (`--kafka-decisions-topic`), applied as exposures
    /// ([`crate::decisions::apply`]).
    Decisions,
}

/// Kafka ingest settings (`--kafka-*`).
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// The behavior topic.
    pub topic: String,
    /// Consumer group id: the name offsets are committed under.
    pub group: String,
    /// Where rejected messages are forwarded, if anywhere.
    pub dead_letter_topic: Option<String>,
    /// Messages larger than this are rejected as `oversized`.
    pub max_message_bytes: usize,
    /// Where a starting consumer begins.
    pub start: KafkaStart,
    /// How often the topic's partition count is checked (topics can grow).
    pub partition_check: Duration,
    /// Threads decoding and applying events (partition p goes to thread
    /// `p % apply_threads`).
    pub apply_threads: usize,
    /// The cluster topic of rule changes.
    pub rules_topic: String,
    /// The cluster topic of claims.
    pub claims_topic: String,
    /// The cluster topic of decisions (the decision log).
    pub decisions_topic: String,
    /// Which stream a consumer reads: the behavior topic, or (a second
    /// consumer) the decisions topic.
    pub stream: Stream,
    /// The longest a call through a cluster topic waits for its answer.
    pub cluster_timeout: Duration,
    /// Extra librdkafka properties (`--kafka-option`, `--kafka-options-file`),
    /// applied last to every client; checked by [`crate::kafka_options`].
    pub options: Vec<(String, String)>,
    /// (partition, next offset) from the snapshot the index was loaded
    /// from: those partitions resume there, whatever `start` says, and
    /// partitions the snapshot does not list read from their beginning.
    /// `None`: no snapshot of this topic; `start` decides.
    pub resume: Option<Vec<(i32, i64)>>,
    /// How behavior payloads are encoded, or that each message's
    /// `content-type` header says (`--kafka-encoding`).
    pub encoding: crate::cli::MessageEncoding,
}

impl KafkaConfig {
    /// Defaults for everything but the brokers.
    pub fn new(brokers: impl Into<String>) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers.into(),
            topic: "vitrine.behavior".to_string(),
            group: "vitrine".to_string(),
            dead_letter_topic: None,
            max_message_bytes: 64 << 10,
            start: KafkaStart::Earliest,
            partition_check: Duration::from_secs(30),
            // A core for the poll thread and librdkafka, the others apply
            // (the index's shard locks let them run in parallel); at most 8.
            // Measured on 2 cores: 1 apply thread 630-740k events/s, 2 540-610k.
            apply_threads: std::thread::available_parallelism()
                .map_or(1, |n| n.get().saturating_sub(1))
                .clamp(1, 8),
            rules_topic: "vitrine.rules".to_string(),
            claims_topic: "vitrine.claims".to_string(),
            decisions_topic: "vitrine.decisions".to_string(),
            stream: Stream::Behavior,
            cluster_timeout: Duration::from_secs(5),
            options: Vec::new(),
            resume: None,
            encoding: crate::cli::MessageEncoding::Json,
        }
    }
}

/// Kafka's rule for topic names: 1..=249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn topic_problem(flag: &str, name: &str) -> Option<String> {
    if name.is_empty() {
        return Some(format!("--{flag}: must not be empty"));
    }
    let legal = name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    (!legal)
        .then(|| format!("--{flag}: `{name}` is not a Kafka topic name (at most 249 of a-z, A-Z, 0-9, `.`, `_`, `-`)"))
}

/// Bootstrap servers: a comma-separated list of `host:port`.
fn brokers_problem(brokers: &str) -> Option<String> {
    let bad: Vec<&str> = brokers
        .split(',')
        .map(str::trim)
        .filter(|b| match b.rsplit_once(':') {
            Some((host, port)) => {
                host.is_empty() || host.contains("://") || port.parse::<u16>().map_or(true, |p| p == 0)
            }
            None => true,
        })
        .collect();
    if brokers.trim().is_empty() {
        Some("--kafka-brokers: must not be empty when set".to_string())
    } else if bad.is_empty() {
        None
    } else {
        Some(format!(
            "--kafka-brokers: {} not host:port (e.g. 127.0.0.1:9092,127.0.0.1:9093)",
            bad.iter().map(|b| format!("`{b}`")).collect::<Vec<_>>().join(", ")
        ))
    }
}

/// Every problem of a configuration.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

pub use crate::cli::RestorePages;

/// Parses `500ms`, `10s`, `2m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 500ms, 10s, 2m"))?;
    let seconds = |per: u64| {
        n.checked_mul(per)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("`{text}` is too long a duration"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => seconds(60),
        "h" => seconds(3600),
        _ => Err(format!("`{text}` is not a duration such as 500ms, 10s, 2m")),
    }
}

impl Config {
    /// Every flag at its default, but listening on ephemeral loopback
    /// ports over `dir/rules` and `dir/data` (tests, examples, tools), so
    /// that a new flag never needs a new line where a configuration is made.
    pub fn local(dir: &std::path::Path) -> Config {
        use clap::Parser;
        let rules = dir.join("rules");
        let data = dir.join("data");
        let argv = [
            "vitrine".as_ref(),
            "serve".as_ref(),
            "--grpc-addr=127.0.0.1:0".as_ref(),
            "--metrics-addr=127.0.0.1:0".as_ref(),
            "--rules-dir".as_ref(),
            rules.as_os_str(),
            "--data-dir".as_ref(),
            data.as_os_str(),
        ];
        let args = match crate::cli::Cli::try_parse_from(argv).map(|c| c.command) {
            Ok(crate::cli::Command::Serve(args)) => args,
            other => unreachable!("the default serve flags parse: {other:?}"),
        };
        match Config::from_args(&args) {
            Ok(config) => config,
            Err(e) => unreachable!("the default configuration is valid: {e}"),
        }
    }

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
        let idle_timeout = duration("idle-timeout", &args.idle_timeout, Duration::from_secs(1));
        let handshake_timeout = duration("handshake-timeout", &args.handshake_timeout, Duration::from_millis(100));
        let cluster_timeout = duration("cluster-timeout", &args.cluster_timeout, Duration::from_millis(1));
        let tls_reload = duration("tls-reload", &args.tls_reload, Duration::from_millis(100));
        let max_queue_wait = match args.max_queue_wait.as_str() {
            "0" => Some(Duration::ZERO),
            text => duration("max-queue-wait", text, Duration::from_millis(1)),
        };
        let snapshot_interval = match args.snapshot_interval.as_str() {
            "0" => Some(Duration::ZERO),
            text => duration("snapshot-interval", text, Duration::ZERO),
        };
        let mut positive = |flag: &str, value: &str| match value.parse::<usize>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                problems.push(format!("--{flag}: `{value}` is not a whole number above 0"));
                None
            }
        };
        let max_in_flight = positive("max-in-flight", &args.max_in_flight);
        let rule_limits = (
            positive("max-rule-file-bytes", &args.max_rule_file_bytes),
            positive("max-audiences", &args.max_audiences),
            positive("max-expression-bytes", &args.max_expression_bytes),
            positive("max-expression-depth", &args.max_expression_depth),
            positive("max-reference-depth", &args.max_reference_depth),
            positive("max-inlined-depth", &args.max_inlined_depth),
            positive("max-yaml-depth", &args.max_yaml_depth),
            positive("max-rule-errors", &args.max_rule_errors),
        );
        let rule_limits = match rule_limits {
            (Some(f), Some(a), Some(eb), Some(ed), Some(r), Some(i), Some(y), Some(e)) => {
                Some(vitrine_core::rules::Limits {
                    max_file_bytes: f,
                    max_audiences: a,
                    max_expression_bytes: eb,
                    max_expression_depth: ed,
                    max_reference_depth: r,
                    max_inlined_depth: i,
                    max_yaml_depth: y,
                    max_errors: e,
                })
            }
            _ => None,
        };
        let connections = (
            positive("max-connections", &args.max_connections),
            positive("max-http-connections", &args.max_http_connections),
            idle_timeout,
            handshake_timeout,
        );
        let connections = match connections {
            (Some(grpc), Some(http), Some(idle_timeout), Some(handshake_timeout)) => {
                let limits = |max| ConnectionLimits {
                    max,
                    idle_timeout,
                    handshake_timeout,
                };
                let grpc = fit_open_files(grpc, http, open_files_limit());
                Some((limits(grpc), limits(http)))
            }
            _ => None,
        };
        let max_request_bytes = positive("max-request-bytes", &args.max_request_bytes);
        let studio_max_body = match &args.studio_max_body {
            Some(v) => positive("studio-max-body", v),
            None => Some(default_studio_max_body(
                rule_limits.map_or(vitrine_core::rules::DEFAULT_MAX_FILE_BYTES, |l| l.max_file_bytes),
            )),
        };
        let studio_max_compiles = positive("studio-max-compiles", &args.studio_max_compiles);
        let demo_visitors = positive("demo-visitors", &args.demo_visitors);
        let kafka_max_message_bytes = positive("kafka-max-message-bytes", &args.kafka_max_message_bytes);
        let snapshot_keep = positive("snapshot-keep", &args.snapshot_keep);
        let claims_segment_bytes = positive("claims-segment-bytes", &args.claims_segment_bytes);
        let worker_threads = match args.worker_threads.parse::<usize>() {
            Ok(0) => Some(None),
            Ok(n) if n <= 1024 => Some(Some(n)),
            _ => {
                problems.push(format!(
                    "--worker-threads: `{}` is not a whole number from 0 (one per core) to 1024",
                    args.worker_threads
                ));
                None
            }
        };
        if args.admin_token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            problems.push("--admin-token: must not be empty when set".to_string());
        } else if let Some(problem) = args.admin_token.as_deref().and_then(admin_token_problem) {
            problems.push(format!("--admin-token: {problem}"));
        }
        if args.rules_dir.exists() && !args.rules_dir.is_dir() {
            problems.push(format!("--rules-dir: {} is not a directory", args.rules_dir.display()));
        }
        if args.data_dir.exists() && !args.data_dir.is_dir() {
            problems.push(format!("--data-dir: {} is not a directory", args.data_dir.display()));
        }
        if let Some(brokers) = &args.kafka_brokers {
            problems.extend(brokers_problem(brokers));
        }
        problems.extend(topic_problem("kafka-topic", &args.kafka_topic));
        if args.kafka_group.trim().is_empty() {
            problems.push("--kafka-group: must not be empty".to_string());
        }
        if let Some(dlt) = &args.kafka_dead_letter_topic {
            problems.extend(topic_problem("kafka-dead-letter-topic", dlt));
            if *dlt == args.kafka_topic {
                problems.push("--kafka-dead-letter-topic: must differ from --kafka-topic".to_string());
            }
            if args.kafka_brokers.is_none() {
                problems.push("--kafka-dead-letter-topic: needs --kafka-brokers".to_string());
            }
        }
        problems.extend(topic_problem("kafka-rules-topic", &args.kafka_rules_topic));
        problems.extend(topic_problem("kafka-claims-topic", &args.kafka_claims_topic));
        problems.extend(topic_problem("kafka-decisions-topic", &args.kafka_decisions_topic));
        let decision_log = DecisionLogConfig::from_args(args, &mut problems);
        let topics = [
            ("kafka-topic", Some(&args.kafka_topic)),
            ("kafka-dead-letter-topic", args.kafka_dead_letter_topic.as_ref()),
            ("kafka-rules-topic", Some(&args.kafka_rules_topic)),
            ("kafka-claims-topic", Some(&args.kafka_claims_topic)),
            ("kafka-decisions-topic", Some(&args.kafka_decisions_topic)),
        ];
        for (i, (flag, name)) in topics.iter().enumerate() {
            if let Some(name) = name {
                if let Some((other, _)) = topics[..i].iter().find(|(_, n)| *n == Some(*name)) {
                    if !(*flag == "kafka-dead-letter-topic" && *other == "kafka-topic") {
                        problems.push(format!("--{flag}: must differ from --{other} (both `{name}`)"));
                    }
                }
            }
        }
        let shops = match crate::cluster::shops::Shops::parse(&args.shops) {
            Ok(shops) => Some(shops),
            Err(e) => {
                problems.push(e);
                None
            }
        };
        let kafka_options = match crate::kafka_options::collect(args.kafka_options_file.as_deref(), &args.kafka_options)
        {
            Ok(o) => o,
            Err(p) => {
                problems.extend(p);
                Vec::new()
            }
        };
        if args.kafka_brokers.is_none() && (!kafka_options.is_empty() || args.kafka_options_file.is_some()) {
            problems.push("--kafka-option, --kafka-options-file: need --kafka-brokers".to_string());
        }
        let kafka_start = match args.kafka_start.as_str() {
            "earliest" => Some(KafkaStart::Earliest),
            "committed" => Some(KafkaStart::Committed),
            other => {
                problems.push(format!(
                    "--kafka-start: `{other}` is neither `earliest` nor `committed`"
                ));
                None
            }
        };
        let tls = crate::api::tls::TlsFiles::from_flags(
            args.tls_cert.as_deref(),
            args.tls_key.as_deref(),
            args.tls_client_ca.as_deref(),
            tls_reload,
            &mut problems,
        );
        match (
            grpc_addr,
            metrics_addr,
            max_in_flight,
            request_timeout,
            max_queue_wait,
            max_request_bytes,
            shutdown_grace,
            rules_poll,
            demo_visitors,
            kafka_max_message_bytes,
            kafka_start,
            snapshot_interval,
            snapshot_keep,
            worker_threads,
            connections,
            claims_segment_bytes,
            rule_limits,
            cluster_timeout,
            shops,
        ) {
            (
                Some(g),
                Some(m),
                Some(mif),
                Some(rt),
                Some(mqw),
                Some(mrb),
                Some(sg),
                Some(rp),
                Some(dv),
                Some(kmb),
                Some(ks),
                Some(si),
                Some(sk),
                Some(wt),
                Some((gc, hc)),
                Some(csb),
                Some(rl),
                Some(ct),
                Some(sh),
            ) if problems.is_empty() => Ok(Config {
                huge_pages_restore: args.huge_pages_restore,
                grpc_addr: g,
                metrics_addr: m,
                rules_dir: args.rules_dir.clone(),
                data_dir: args.data_dir.clone(),
                admin_token: args.admin_token.clone(),
                rule_limits: rl,
                shops: sh,
                grpc_connections: gc,
                http_connections: hc,
                max_in_flight: mif,
                request_timeout: rt,
                max_queue_wait: (!mqw.is_zero()).then_some(mqw),
                max_request_bytes: mrb,
                shutdown_grace: sg,
                rules_poll: rp,
                demo_visitors: args.demo.then_some(dv),
                kafka: args.kafka_brokers.as_ref().map(|brokers| KafkaConfig {
                    brokers: brokers.split(',').map(str::trim).collect::<Vec<_>>().join(","),
                    topic: args.kafka_topic.clone(),
                    group: args.kafka_group.clone(),
                    dead_letter_topic: args.kafka_dead_letter_topic.clone(),
                    max_message_bytes: kmb,
                    start: ks,
                    rules_topic: args.kafka_rules_topic.clone(),
                    claims_topic: args.kafka_claims_topic.clone(),
                    decisions_topic: args.kafka_decisions_topic.clone(),
                    cluster_timeout: ct,
                    options: kafka_options,
                    encoding: args.kafka_encoding,
                    ..KafkaConfig::new("")
                }),
                snapshot_interval: (!si.is_zero()).then_some(si),
                snapshot_keep: sk,
                worker_threads: wt,
                claims_segment_bytes: csb as u64,
                tls,
                decision_log,
                studio: !args.no_studio,
                studio_max_body: studio_max_body.unwrap_or_default(),
                studio_max_compiles: studio_max_compiles.unwrap_or(1),
            }),
            _ => Err(ConfigErrors(problems)),
        }
    }
}

/// The decision log's settings (`--decision-log*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionLogConfig {
    /// Records queued at most; more are dropped and counted. 0: no
    /// decision log (decisions still get ids; no exposures are recorded).
    pub queue: usize,
    /// JSON-lines file of every record (embedded mode only).
    pub file: Option<PathBuf>,
    /// The file rotates before it would pass this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`FILE.1` newest ... `FILE.<keep>`).
    pub keep: usize,
}

impl Default for DecisionLogConfig {
    fn default() -> DecisionLogConfig {
        DecisionLogConfig {
            queue: DecisionLogConfig::DEFAULT_QUEUE,
            file: None,
            max_bytes: DecisionLogConfig::DEFAULT_MAX_BYTES,
            keep: DecisionLogConfig::DEFAULT_KEEP,
        }
    }
}

impl DecisionLogConfig {
    /// Default of `--decision-log-queue`.
    pub const DEFAULT_QUEUE: usize = 65_536;
    /// Default of `--decision-log-max-bytes` (256 MiB).
    pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;
    /// Default of `--decision-log-keep`.
    pub const DEFAULT_KEEP: usize = 4;
    /// The largest `--decision-log-queue` (each slot reserves about 160 bytes
    /// at start: 16M slots would be 2.5 GiB).
    pub const MAX_QUEUE: usize = 16 << 20;
    /// The most `--decision-log-keep`.
    pub const MAX_KEEP: usize = 1000;
    /// The smallest `--decision-log-max-bytes`.
    pub const MIN_MAX_BYTES: u64 = 4096;

    /// Checks the flags' values; problems go to `problems` (all at once).
    pub fn from_args(args: &ServeArgs, problems: &mut Vec<String>) -> DecisionLogConfig {
        let mut config = DecisionLogConfig {
            file: args.decision_log.clone(),
            ..DecisionLogConfig::default()
        };
        match args.decision_log_queue.parse::<usize>() {
            Ok(n) if n <= Self::MAX_QUEUE => config.queue = n,
            _ => problems.push(format!(
                "--decision-log-queue: `{}` is not a whole number from 0 (off) to {}",
                args.decision_log_queue,
                Self::MAX_QUEUE
            )),
        }
        if config.queue == 0 && args.decision_log.is_some() {
            problems.push("--decision-log: needs a --decision-log-queue above 0".to_string());
        }
        match args.decision_log_max_bytes.parse::<u64>() {
            Ok(n) if n >= Self::MIN_MAX_BYTES => config.max_bytes = n,
            _ => problems.push(format!(
                "--decision-log-max-bytes: `{}` is not a whole number of at least {}",
                args.decision_log_max_bytes,
                Self::MIN_MAX_BYTES
            )),
        }
        match args.decision_log_keep.parse::<usize>() {
            Ok(n) if n <= Self::MAX_KEEP => config.keep = n,
            _ => problems.push(format!(
                "--decision-log-keep: `{}` is not a whole number from 0 to {}",
                args.decision_log_keep,
                Self::MAX_KEEP
            )),
        }
        if let Some(file) = &args.decision_log {
            if file.is_dir() {
                problems.push(format!("--decision-log: {} is a directory", file.display()));
            }
            if args.kafka_brokers.is_some() {
                problems.push(
                    "--decision-log: only without --kafka-brokers (with Kafka the decisions topic is the log)"
                        .to_string(),
                );
            }
        }
        config
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
        assert_eq!(c.max_queue_wait, Some(Duration::from_millis(50)));
        assert_eq!(c.demo_visitors, None);
        // The flags' defaults are the core's: `rules validate` (which has no
        // flags) checks a file exactly as a default server loads it.
        assert_eq!(c.rule_limits, vitrine_core::rules::Limits::default());
        assert_eq!(c.grpc_connections.max.min(1024), c.grpc_connections.max);
        assert_eq!(c.http_connections.max, 64);
        assert_eq!(c.grpc_connections.idle_timeout, Duration::from_secs(120));
        assert_eq!(c.grpc_connections.handshake_timeout, Duration::from_secs(10));
    }

    #[test]
    fn connections_are_fitted_to_the_open_files_limit() {
        assert_eq!(fit_open_files(1024, 64, None), 1024);
        assert_eq!(fit_open_files(1024, 64, Some(1 << 20)), 1024);
        assert_eq!(fit_open_files(1024, 64, Some(1024)), 1024 - 64 - RESERVED_FILES);
        assert_eq!(fit_open_files(1024, 64, Some(100)), 16, "at least 16");
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
            "--max-queue-wait",
            "5us",
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
                "--max-queue-wait: `5us` is not a duration such as 500ms, 10s, 2m",
                "--max-in-flight: `0` is not a whole number above 0",
                "--admin-token: must not be empty when set",
            ]
        );
    }

    #[test]
    fn an_admin_token_no_header_can_carry_is_refused() {
        for (token, why) in [
            ("sécret", "only printable ASCII"),
            ("tab\there", "only printable ASCII"),
            ("trailing ", "must not begin or end with a space"),
            (" leading", "must not begin or end with a space"),
        ] {
            let e = Config::from_args(&args(&["--admin-token", token])).unwrap_err();
            assert!(
                e.0.len() == 1 && e.0[0].starts_with("--admin-token: ") && e.0[0].contains(why),
                "{token:?}: {:?}",
                e.0
            );
        }
        let long = "x".repeat(MAX_ADMIN_TOKEN_BYTES + 1);
        let e = Config::from_args(&args(&["--admin-token", &long])).unwrap_err();
        assert_eq!(
            e.0,
            ["--admin-token: longer than 4096 bytes: it must fit in one request header"]
        );
        for token in ["s3cret", "with inner space", &"x".repeat(MAX_ADMIN_TOKEN_BYTES)] {
            let c = Config::from_args(&args(&["--admin-token", token])).unwrap();
            assert_eq!(c.admin_token.as_deref(), Some(token));
        }
    }

    #[test]
    fn kafka_flags_make_a_kafka_config() {
        let c = Config::from_args(&args(&[
            "--kafka-brokers",
            "127.0.0.1:9092, 127.0.0.1:9093",
            "--kafka-dead-letter-topic",
            "vitrine.dead",
            "--kafka-max-message-bytes",
            "1024",
            "--kafka-start",
            "committed",
        ]))
        .unwrap();
        let k = c.kafka.unwrap();
        assert_eq!(k.brokers, "127.0.0.1:9092,127.0.0.1:9093");
        assert_eq!((k.topic.as_str(), k.group.as_str()), ("vitrine.behavior", "vitrine"));
        assert_eq!(k.dead_letter_topic.as_deref(), Some("vitrine.dead"));
        assert_eq!(k.max_message_bytes, 1024);
        assert_eq!(k.start, KafkaStart::Committed);
        assert!(
            Config::from_args(&args(&[])).unwrap().kafka.is_none(),
            "embedded by default"
        );
    }

    #[test]
    fn cluster_flags_are_checked_with_the_others() {
        let e = Config::from_args(&args(&[
            "--kafka-brokers",
            "127.0.0.1:9092",
            "--kafka-rules-topic",
            "rules topic",
            "--kafka-claims-topic",
            "vitrine.behavior",
            "--cluster-timeout",
            "0s",
            "--shops",
            "a\u{7}b",
        ]))
        .unwrap_err();
        assert_eq!(
            e.0,
            [
                "--cluster-timeout: must be at least 1ms",
                "--kafka-rules-topic: `rules topic` is not a Kafka topic name (at most 249 of a-z, A-Z, 0-9, `.`, `_`, `-`)",
                "--kafka-claims-topic: must differ from --kafka-topic (both `vitrine.behavior`)",
                "--shops: \"a\\u{7}b\" holds a control character",
            ]
        );
        let c = Config::from_args(&args(&[
            "--kafka-brokers",
            "127.0.0.1:9092",
            "--cluster-timeout",
            "250ms",
        ]))
        .unwrap();
        let k = c.kafka.unwrap();
        assert_eq!(
            (k.rules_topic.as_str(), k.claims_topic.as_str()),
            ("vitrine.rules", "vitrine.claims")
        );
        assert_eq!(k.cluster_timeout, Duration::from_millis(250));
    }

    #[test]
    fn every_kafka_problem_is_reported_at_once() {
        let e = Config::from_args(&args(&[
            "--kafka-brokers",
            "tcp://127.0.0.1:9092,broker",
            "--kafka-topic",
            "behavior events",
            "--kafka-group",
            " ",
            "--kafka-dead-letter-topic",
            "behavior events",
            "--kafka-max-message-bytes",
            "0",
            "--kafka-start",
            "latest",
        ]))
        .unwrap_err();
        assert_eq!(
            e.0,
            [
                "--kafka-max-message-bytes: `0` is not a whole number above 0",
                "--kafka-brokers: `tcp://127.0.0.1:9092`, `broker` not host:port (e.g. 127.0.0.1:9092,127.0.0.1:9093)",
                "--kafka-topic: `behavior events` is not a Kafka topic name (at most 249 of a-z, A-Z, 0-9, `.`, `_`, `-`)",
                "--kafka-group: must not be empty",
                "--kafka-dead-letter-topic: `behavior events` is not a Kafka topic name (at most 249 of a-z, A-Z, 0-9, `.`, `_`, `-`)",
                "--kafka-dead-letter-topic: must differ from --kafka-topic",
                "--kafka-start: `latest` is neither `earliest` nor `committed`",
            ]
        );
        let e = Config::from_args(&args(&["--kafka-dead-letter-topic", "vitrine.dead"])).unwrap_err();
        assert_eq!(e.0, ["--kafka-dead-letter-topic: needs --kafka-brokers"]);
    }

    #[test]
    fn kafka_options_reach_every_client_through_the_kafka_config() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, b"# tuning\nclient.rack=a\nsocket.keepalive.enable=true\n").unwrap();
        let path = file.path().to_str().unwrap();
        let c = Config::from_args(&args(&[
            "--kafka-brokers",
            "127.0.0.1:9092",
            "--kafka-options-file",
            path,
            // One KEY=VALUE per line, as VITRINE_KAFKA_OPTIONS holds them.
            "--kafka-option",
            "client.rack=b\nsocket.nagle.disable=true\n",
        ]))
        .unwrap();
        let options = c.kafka.unwrap().options;
        let pairs: Vec<(&str, &str)> = options.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("client.rack", "a"),
                ("socket.keepalive.enable", "true"),
                ("client.rack", "b"),
                ("socket.nagle.disable", "true"),
            ]
        );
        let e = Config::from_args(&args(&["--kafka-option", "client.rack=a"])).unwrap_err();
        assert_eq!(e.0, ["--kafka-option, --kafka-options-file: need --kafka-brokers"]);
        let e = Config::from_args(&args(&[
            "--kafka-brokers",
            "127.0.0.1:9092",
            "--kafka-option",
            "enable.auto.commit=false",
            "--kafka-option",
            "group.id=x",
            "--kafka-option",
            "sasl.password",
        ]))
        .unwrap_err();
        assert_eq!(e.0.len(), 3, "every problem at once: {:?}", e.0);
        assert!(e.0[0].starts_with("--kafka-option #1: `enable.auto.commit` is refused: "));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("5").is_err());
        assert!(
            parse_duration("18446744073709551615h").is_err(),
            "overflow is an error, not a panic"
        );
        assert!(parse_duration("99999999999999999999s").is_err());
    }

    #[test]
    fn decision_log_flags_are_checked_all_at_once() {
        let c = Config::from_args(&args(&[])).unwrap();
        assert_eq!(c.decision_log, DecisionLogConfig::default());
        assert_eq!(c.decision_log.queue, 65_536);
        let c = Config::from_args(&args(&["--kafka-brokers", "127.0.0.1:9092"])).unwrap();
        assert_eq!(c.kafka.unwrap().decisions_topic, "vitrine.decisions");
        let e = Config::from_args(&args(&[
            "--decision-log-queue",
            "lots",
            "--decision-log-max-bytes",
            "100",
            "--decision-log-keep",
            "1001",
            "--decision-log",
            "/tmp",
            "--kafka-brokers",
            "127.0.0.1:9092",
            "--kafka-decisions-topic",
            "vitrine.claims",
        ]))
        .unwrap_err();
        assert_eq!(
            e.0,
            [
                "--decision-log-queue: `lots` is not a whole number from 0 (off) to 16777216",
                "--decision-log-max-bytes: `100` is not a whole number of at least 4096",
                "--decision-log-keep: `1001` is not a whole number from 0 to 1000",
                "--decision-log: /tmp is a directory",
                "--decision-log: only without --kafka-brokers (with Kafka the decisions topic is the log)",
                "--kafka-decisions-topic: must differ from --kafka-claims-topic (both `vitrine.claims`)",
            ]
        );
        let e = Config::from_args(&args(&["--decision-log-queue", "0", "--decision-log", "d.jsonl"])).unwrap_err();
        assert_eq!(e.0, ["--decision-log: needs a --decision-log-queue above 0"]);
    }

    #[test]
    fn the_studio_is_on_by_default_and_its_body_limit_follows_the_rule_file_limit() {
        let c = Config::from_args(&args(&[])).unwrap();
        assert!(c.studio);
        assert_eq!(c.studio_max_body, 2 * (1 << 20) + 64 * 1024);
        let c = Config::from_args(&args(&["--no-studio", "--max-rule-file-bytes", "1000"])).unwrap();
        assert!(!c.studio);
        assert_eq!(c.studio_max_body, 2000 + STUDIO_BODY_SLACK);
        let c = Config::from_args(&args(&["--studio-max-body", "5000"])).unwrap();
        assert_eq!(c.studio_max_body, 5000);
        let e = Config::from_args(&args(&["--studio-max-body", "0"])).unwrap_err();
        assert_eq!(e.0, ["--studio-max-body: `0` is not a whole number above 0"]);
        assert_eq!(c.studio_max_compiles, 2);
        let c = Config::from_args(&args(&["--studio-max-compiles", "1"])).unwrap();
        assert_eq!(c.studio_max_compiles, 1);
        let e = Config::from_args(&args(&["--studio-max-compiles", "0"])).unwrap_err();
        assert_eq!(e.0, ["--studio-max-compiles: `0` is not a whole number above 0"]);
    }
}
