//! The command line: `serve`, `demo`, `rules validate`, `rules push`.
//!
//! Every `serve` flag has a `VITRINE_*` environment variable. Values are
//! taken as text here and checked together by [`crate::config`], so that a
//! misconfigured start reports every problem at once.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Vitrine: real-time personalization decisions for storefronts.
#[derive(Debug, Parser)]
#[command(name = "vitrine", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log lines on standard error: `text` for people, `json` for a log
    /// pipeline (one object per line: timestamp, level, target, message and
    /// the event's fields). Colour only when standard error is a terminal.
    #[arg(long, global = true, env = "VITRINE_LOG_FORMAT", default_value = "text", value_enum)]
    pub log_format: LogFormat,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the engine: gRPC on --grpc-addr, metrics on --metrics-addr.
    Serve(Box<ServeArgs>),
    /// Run the engine offline on the rule files with a generated stream of
    /// behavior, and print audience sizes and explained decisions.
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
    /// Reports from a running server.
    Report {
        #[command(subcommand)]
        command: ReportCommand,
    },
    /// Ask a server's gRPC health service whether it serves: exit 0 when
    /// SERVING, 1 when NOT_SERVING or unknown, 2 when it cannot be reached
    /// (a Docker HEALTHCHECK, a Kubernetes exec probe).
    Health(HealthArgs),
    /// Kafka tools for tests and demos.
    #[command(hide = true)]
    Kafka {
        #[command(subcommand)]
        command: KafkaCommand,
    },
}

/// `vitrine kafka ...` (hidden: a test and demo aid, not an operator surface).
#[derive(Debug, Subcommand)]
pub enum KafkaCommand {
    /// Produce JSON events, one per line, to a topic, keyed by their visitor.
    ///
    /// Reads FILE, or standard input when none; waits for every delivery and
    /// exits 1 if any failed.
    Produce {
        /// Bootstrap servers.
        #[arg(long, env = "VITRINE_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
        brokers: String,
        /// The topic.
        #[arg(long, env = "VITRINE_KAFKA_TOPIC", default_value = "vitrine.behavior")]
        topic: String,
        /// A librdkafka property, KEY=VALUE (repeatable), as `serve --kafka-option`.
        #[arg(long = "kafka-option", value_name = "KEY=VALUE")]
        kafka_options: Vec<String>,
        /// How each event is sent: `json` as read, or `proto` (a protobuf
        /// `vitrine.v1.Event` with header `content-type:
        /// application/x-protobuf`; every line must then be a valid event).
        #[arg(long, value_enum, default_value_t = Encoding::Json)]
        encoding: Encoding,
        /// JSON lines; standard input when absent.
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
    },
}

/// `vitrine report ...`.
#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// What each entry with a holdout does (Reports/Lift): treated vs held-out
    /// visitors, conversions within --window after their first exposure,
    /// lift with its 95% interval, spend per visitor.
    ///
    /// Exit 0 with the report, 1 when the server refuses the request (unknown
    /// shop or id, bad window), 2 when it cannot be asked.
    Lift(LiftArgs),
}

/// `vitrine report lift` flags.
#[derive(Debug, Clone, Args)]
pub struct LiftArgs {
    /// The shop.
    #[arg(long)]
    pub shop: String,
    /// One benefit or banner id; all entries with a holdout when absent.
    #[arg(long)]
    pub id: Option<String>,
    /// Conversion window after a visitor's first exposure, e.g. 7d, 48h.
    #[arg(long, default_value = "7d")]
    pub window: String,
    /// Only exposures from this instant (RFC 3339, or ms since the epoch).
    #[arg(long)]
    pub from: Option<String>,
    /// Only exposures before this instant (RFC 3339, or ms since the epoch).
    #[arg(long)]
    pub to: Option<String>,
    /// One JSON object per row instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The server.
    #[arg(long, env = "VITRINE_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// Dial over TLS, trusting the CAs of this PEM file.
    #[arg(long, env = "VITRINE_REPORT_TLS_CA", value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// The name the server's certificate must carry (default: the host of --addr).
    #[arg(long, value_name = "NAME")]
    pub tls_name: Option<String>,
    /// Client certificate (PEM), for a server with --tls-client-ca.
    #[arg(long, env = "VITRINE_REPORT_TLS_CERT", value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, env = "VITRINE_REPORT_TLS_KEY", value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// `vitrine health` flags.
#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// The server's gRPC address, HOST:PORT; a wildcard host (0.0.0.0, [::])
    /// is asked on loopback, so the address `serve` listens on works as is.
    #[arg(long, env = "VITRINE_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub addr: String,
    /// The service asked about; `vitrine.v1.Decision` follows readiness, the
    /// empty name is always SERVING while the process answers.
    #[arg(long, default_value = "vitrine.v1.Decision")]
    pub service: String,
    /// Give up (exit 2) after this long, e.g. 2s, 500ms.
    #[arg(long, default_value = "2s")]
    pub timeout: String,
    /// Dial over TLS, trusting the CAs of this PEM file.
    #[arg(long, env = "VITRINE_HEALTH_TLS_CA", value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// The name the server's certificate must carry (default: the host of --addr).
    #[arg(long, value_name = "NAME")]
    pub tls_name: Option<String>,
    /// Client certificate (PEM), for a server with --tls-client-ca.
    #[arg(long, env = "VITRINE_HEALTH_TLS_CERT", value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, env = "VITRINE_HEALTH_TLS_KEY", value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// `vitrine serve` flags (README, "Operational surface").
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// gRPC listen address.
    #[arg(long, env = "VITRINE_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: String,
    /// HTTP listen address for /metrics, /healthz and /readyz.
    #[arg(long, env = "VITRINE_METRICS_ADDR", default_value = "127.0.0.1:9898")]
    pub metrics_addr: String,
    /// Rule files loaded at start-up, watched for edits, and kept in sync with pushes.
    #[arg(long, env = "VITRINE_RULES_DIR", default_value = "rules")]
    pub rules_dir: PathBuf,
    /// Where durable state lives: rule revisions, the claims and events journals, snapshots.
    #[arg(long, env = "VITRINE_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Kafka bootstrap servers; none = embedded mode (events through Ingest/Track).
    #[arg(long, env = "VITRINE_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Behavior topic.
    #[arg(long, env = "VITRINE_KAFKA_TOPIC", default_value = "vitrine.behavior")]
    pub kafka_topic: String,
    /// Kafka consumer group id: the name this replica commits its offsets under.
    #[arg(long, env = "VITRINE_KAFKA_GROUP", default_value = "vitrine")]
    pub kafka_group: String,
    /// Topic that rejected Kafka messages are forwarded to (original key and
    /// payload, the reason in the `vitrine-reject-reason` header); none = drop them.
    #[arg(long, env = "VITRINE_KAFKA_DEAD_LETTER_TOPIC")]
    pub kafka_dead_letter_topic: Option<String>,
    /// Kafka messages larger than this many bytes are rejected as `oversized`.
    #[arg(long, env = "VITRINE_KAFKA_MAX_MESSAGE_BYTES", default_value = "65536")]
    pub kafka_max_message_bytes: String,
    /// How behavior messages are encoded: `json`; `proto` (protobuf
    /// `vitrine.v1.Event`s); or `header`: each message's `content-type`
    /// header says (none or `application/json`: JSON;
    /// `application/x-protobuf`: protobuf; anything else is rejected as
    /// `unknown_content_type`), at librdkafka's cost of parsing every
    /// message's headers.
    #[arg(long, env = "VITRINE_KAFKA_ENCODING", value_enum, default_value_t = MessageEncoding::Json)]
    pub kafka_encoding: MessageEncoding,
    /// Where a starting replica reads each partition from: `earliest` rebuilds
    /// the in-memory index from the retained log; `committed` resumes from the
    /// group's committed offsets (earliest where none).
    #[arg(long, env = "VITRINE_KAFKA_START", default_value = "earliest")]
    pub kafka_start: String,
    /// Shops this replica holds and serves: comma-separated names or globs
    /// (`*`, `?`); `*` = every shop. Events, rules and claims of other shops
    /// are skipped; calls for them fail FAILED_PRECONDITION.
    #[arg(long, env = "VITRINE_SHOPS", default_value = "*")]
    pub shops: String,
    /// A librdkafka property for every Kafka client Vitrine makes (behavior
    /// consumer, dead-letter and cluster producers, cluster readers, admin),
    /// KEY=VALUE, repeatable, applied after Vitrine's own settings and after
    /// --kafka-options-file: SASL, TLS, tuning. Keys Vitrine's guarantees
    /// rest on are refused. In the environment: one KEY=VALUE per line.
    #[arg(
        long = "kafka-option",
        value_name = "KEY=VALUE",
        env = "VITRINE_KAFKA_OPTIONS",
        value_delimiter = '\n',
        hide_env_values = true
    )]
    pub kafka_options: Vec<String>,
    /// A file of librdkafka properties, one KEY=VALUE per line (`#` starts a
    /// comment line), applied like --kafka-option (which wins over it).
    #[arg(long, env = "VITRINE_KAFKA_OPTIONS_FILE", value_name = "PATH")]
    pub kafka_options_file: Option<PathBuf>,
    /// Cluster topic of rule changes: with --kafka-brokers, every Push and
    /// Rollback goes through it and every replica applies it in order.
    #[arg(long, env = "VITRINE_KAFKA_RULES_TOPIC", default_value = "vitrine.rules")]
    pub kafka_rules_topic: String,
    /// Cluster topic of claims: with --kafka-brokers, caps and budgets hold
    /// across every replica reading it.
    #[arg(long, env = "VITRINE_KAFKA_CLAIMS_TOPIC", default_value = "vitrine.claims")]
    pub kafka_claims_topic: String,
    /// With --kafka-brokers: the longest a Push, Rollback or Claim waits for
    /// its record to be written and applied; past it, UNAVAILABLE.
    #[arg(long, env = "VITRINE_CLUSTER_TIMEOUT", default_value = "5s")]
    pub cluster_timeout: String,
    /// Bearer token required by Rules/Push, Rules/Rollback and Ingest/Track when set:
    /// printable ASCII, no space at either end, at most 4096 bytes (it travels in a header).
    #[arg(long, env = "VITRINE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Largest rule file (push, --rules-dir), in bytes.
    #[arg(long, env = "VITRINE_MAX_RULE_FILE_BYTES", default_value = "1048576")]
    pub max_rule_file_bytes: String,
    /// Most audiences one rule file may define.
    #[arg(long, env = "VITRINE_MAX_AUDIENCES", default_value = "1000")]
    pub max_audiences: String,
    /// Longest expression (a rule file's or Audiences/Size's), in bytes.
    #[arg(long, env = "VITRINE_MAX_EXPRESSION_BYTES", default_value = "4096")]
    pub max_expression_bytes: String,
    /// Deepest nesting of parentheses and `not` in one expression.
    #[arg(long, env = "VITRINE_MAX_EXPRESSION_DEPTH", default_value = "64")]
    pub max_expression_depth: String,
    /// Longest chain of audience references (`a: b`, `b: c`, ...).
    #[arg(long, env = "VITRINE_MAX_REFERENCE_DEPTH", default_value = "64")]
    pub max_reference_depth: String,
    /// Deepest nesting of an expression with its audiences inlined: the
    /// recursion depth of a decision or a size.
    #[arg(long, env = "VITRINE_MAX_INLINED_DEPTH", default_value = "512")]
    pub max_inlined_depth: String,
    /// Deepest nesting of YAML lists and mappings in a rule file.
    #[arg(long, env = "VITRINE_MAX_YAML_DEPTH", default_value = "64")]
    pub max_yaml_depth: String,
    /// Errors listed for a rejected rule file; more are counted ("... and K more errors").
    #[arg(long, env = "VITRINE_MAX_RULE_ERRORS", default_value = "100")]
    pub max_rule_errors: String,
    /// gRPC connections open at once; one more is closed on arrival (counted
    /// in vitrine_connections_closed_total{reason="limit"}). Lowered at start
    /// to fit the process's open-files limit.
    #[arg(long, env = "VITRINE_MAX_CONNECTIONS", default_value = "1024")]
    pub max_connections: String,
    /// HTTP (metrics and probes) connections open at once.
    #[arg(long, env = "VITRINE_MAX_HTTP_CONNECTIONS", default_value = "64")]
    pub max_http_connections: String,
    /// A connection (either port) with no call open for this long is closed.
    #[arg(long, env = "VITRINE_IDLE_TIMEOUT", default_value = "120s")]
    pub idle_timeout: String,
    /// A connection (either port) that has not sent a complete first request
    /// (HTTP/1: a request's headers) within this is closed.
    #[arg(long, env = "VITRINE_HANDSHAKE_TIMEOUT", default_value = "10s")]
    pub handshake_timeout: String,
    /// Certificate chain (PEM, leaf first): with --tls-key, both ports
    /// (gRPC and HTTP) speak TLS only.
    #[arg(long, env = "VITRINE_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "VITRINE_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM): clients must present a certificate signed by one (mutual TLS).
    #[arg(long, env = "VITRINE_TLS_CLIENT_CA", value_name = "PEM")]
    pub tls_client_ca: Option<PathBuf>,
    /// How often the TLS files are checked for a renewed certificate.
    #[arg(long, env = "VITRINE_TLS_RELOAD", default_value = "5s")]
    pub tls_reload: String,
    /// Calls arrived and not yet answered; beyond it calls fail fast with RESOURCE_EXHAUSTED.
    #[arg(long, env = "VITRINE_MAX_IN_FLIGHT", default_value = "256")]
    pub max_in_flight: String,
    /// Longest a call may wait for its turn before it is shed with RESOURCE_EXHAUSTED; 0 = no bound.
    #[arg(long, env = "VITRINE_MAX_QUEUE_WAIT", default_value = "50ms")]
    pub max_queue_wait: String,
    /// Longest time a call may take (a client's shorter grpc-timeout wins), e.g. 5s, 500ms.
    #[arg(long, env = "VITRINE_REQUEST_TIMEOUT", default_value = "10s")]
    pub request_timeout: String,
    /// Largest request accepted, in bytes.
    #[arg(long, env = "VITRINE_MAX_REQUEST_BYTES", default_value = "4194304")]
    pub max_request_bytes: String,
    /// On SIGTERM: how long health reports NOT_SERVING before the listener closes.
    #[arg(long, env = "VITRINE_SHUTDOWN_GRACE", default_value = "1s")]
    pub shutdown_grace: String,
    /// How often --rules-dir is checked for edited files.
    #[arg(long, env = "VITRINE_RULES_POLL", default_value = "2s")]
    pub rules_poll: String,
    /// How often the audience index is snapshotted to --data-dir/snapshots
    /// (also at shutdown); 0 = only at shutdown. A restart replays the log
    /// since the last snapshot, so this bounds restart time.
    #[arg(long, env = "VITRINE_SNAPSHOT_INTERVAL", default_value = "5m")]
    pub snapshot_interval: String,
    /// Snapshots kept; older ones are deleted (and the events journal they
    /// needed with them). A damaged newest snapshot falls back to an older one.
    #[arg(long, env = "VITRINE_SNAPSHOT_KEEP", default_value = "3")]
    pub snapshot_keep: String,
    /// Size of a claims-journal segment file, in bytes. At each snapshot,
    /// once the journal holds more than one segment, the claims ledger's
    /// state is written to --data-dir/claims/ledger.state and the segments
    /// it covers are deleted: a restart replays at most about this much.
    #[arg(long, env = "VITRINE_CLAIMS_SEGMENT_BYTES", default_value = "67108864")]
    pub claims_segment_bytes: String,
    /// Tokio worker threads serving gRPC and HTTP; 0 = one per core but
    /// one (at least 1), leaving a core to journal fsyncs, Kafka apply
    /// threads, pushes and snapshots.
    #[arg(long, env = "VITRINE_WORKER_THREADS", default_value = "0")]
    pub worker_threads: String,
    /// Put the heap on transparent huge pages where the kernel gives them
    /// on request (`madvise`): the process restarts itself once, in place,
    /// with glibc's `glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1`
    /// (decisions at 1M visitors ~12% faster; how the restore treats them:
    /// --huge-pages-restore). A `GLIBC_TUNABLES` that already names
    /// `glibc.malloc.hugetlb` is left as it is; no restart under setuid or
    /// file capabilities (glibc ignores the tunables there). on|off.
    // `Set`: a `bool` field is otherwise a flag that takes no value, and
    // `--huge-pages off` would be refused as an unexpected argument.
    #[arg(
        long,
        env = "VITRINE_HUGE_PAGES",
        default_value = "on",
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub huge_pages: bool,
    /// With huge pages on: how the snapshot's restore takes its memory.
    /// `fault`: on huge pages as it faults in (the fastest restore where
    /// the kernel has free 2 MiB blocks; where it has not, each fault waits
    /// for memory compaction); `hold`: on 4 KiB pages, huge pages switched
    /// off for the process until the state is restored, then the kernel's
    /// khugepaged moves it onto them (a few minutes for 1M visitors; no
    /// compaction stalls, but a slower restore on free memory); `auto`:
    /// `hold` when the kernel's free 2 MiB blocks (/proc/buddyinfo) are
    /// fewer than twice what the snapshot restores into (about four times
    /// its size), else `fault`.
    #[arg(long, env = "VITRINE_HUGE_PAGES_RESTORE", value_enum, default_value_t = RestorePages::Auto)]
    pub huge_pages_restore: RestorePages,
    /// Seed every shop of --rules-dir with a generated demo stream of behavior
    /// (per shop at most the first 200 items, 50 categories and 32 tags its
    /// rule file names).
    #[arg(long, env = "VITRINE_DEMO")]
    pub demo: bool,
    /// Demo visitors per shop (with --demo).
    #[arg(long, env = "VITRINE_DEMO_VISITORS", default_value = "2000")]
    pub demo_visitors: String,
    /// Cluster topic of the decision log: with --kafka-brokers, every
    /// Decide is published to it (JSON, key = visitor) and every replica
    /// applies it as exposures.
    #[arg(long, env = "VITRINE_KAFKA_DECISIONS_TOPIC", default_value = "vitrine.decisions")]
    pub kafka_decisions_topic: String,
    /// Without --kafka-brokers: also append every decision record to this
    /// file as a JSON line (buffered; rotated by --decision-log-max-bytes).
    #[arg(long, env = "VITRINE_DECISION_LOG", value_name = "FILE")]
    pub decision_log: Option<PathBuf>,
    /// Decision records queued between Decide and the decision log's
    /// drainer; when full, records are dropped and counted
    /// (vitrine_decision_log_dropped_total), never a Decide slowed or failed.
    /// About 160 bytes per slot are reserved at start. 0 = no decision log
    /// (no exposures: offered(...) and the lift report see nothing).
    #[arg(long, env = "VITRINE_DECISION_LOG_QUEUE", default_value = "65536")]
    pub decision_log_queue: String,
    /// --decision-log rotates (FILE -> FILE.1 -> ...) before it would pass this many bytes.
    #[arg(long, env = "VITRINE_DECISION_LOG_MAX_BYTES", default_value = "268435456")]
    pub decision_log_max_bytes: String,
    /// Rotated --decision-log files kept (FILE.1 newest); 0 = none.
    #[arg(long, env = "VITRINE_DECISION_LOG_KEEP", default_value = "4")]
    pub decision_log_keep: String,
    /// Do not serve the rule studio (the page at /studio on the HTTP port
    /// and its JSON API at /studio/api/); by default it is served.
    #[arg(long = "no-studio", env = "VITRINE_NO_STUDIO")]
    pub no_studio: bool,
    /// Largest studio request body, in bytes; larger ones get 413. Default:
    /// twice --max-rule-file-bytes plus 64 KiB (a rule file's text inside
    /// JSON, where a quote, backslash or newline takes two bytes).
    #[arg(long, env = "VITRINE_STUDIO_MAX_BODY", value_name = "BYTES")]
    pub studio_max_body: Option<String>,
    /// Rule files the studio compiles at once (validate, publish, try); a
    /// call past it waits up to --request-timeout for a turn, then gets 429.
    #[arg(long, env = "VITRINE_STUDIO_MAX_COMPILES", default_value = "2")]
    pub studio_max_compiles: String,
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
    /// Push a rule file to a running server (Rules/Push).
    ///
    /// Prints the new revision and each audience's size; on a rejected file,
    /// `FILE:LINE:COLUMN: message` for every error and exit code 1.
    Push {
        /// The rule file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The server.
        #[arg(long, env = "VITRINE_ADDR", default_value = "http://127.0.0.1:50051")]
        addr: String,
        /// Bearer token for the admin RPCs.
        #[arg(long, env = "VITRINE_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// Validate and size the audiences without swapping.
        #[arg(long)]
        dry_run: bool,
        /// Push only if the shop serves this revision (0 = any); else the
        /// push fails ABORTED and nothing changes.
        #[arg(long, default_value_t = 0)]
        expected_revision: u64,
        /// Dial over TLS (a server with --tls-cert), trusting the CAs of this PEM file.
        #[arg(long, env = "VITRINE_PUSH_TLS_CA", value_name = "PEM")]
        tls_ca: Option<PathBuf>,
        /// The name the server's certificate must carry (default: the host of --addr).
        #[arg(long, value_name = "NAME")]
        tls_name: Option<String>,
        /// Client certificate (PEM), for a server with --tls-client-ca.
        #[arg(long, env = "VITRINE_PUSH_TLS_CERT", value_name = "PEM", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The client certificate's key (PEM).
        #[arg(long, env = "VITRINE_PUSH_TLS_KEY", value_name = "PEM", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
}

/// How the consumer learns a behavior message's encoding (`--kafka-encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum MessageEncoding {
    /// Every message is JSON; headers are not read (the cheapest for JSON).
    #[default]
    Json,
    /// Every message is a protobuf `vitrine.v1.Event`; headers are not read
    /// (the cheapest of all).
    #[value(name = "proto", alias = "protobuf")]
    Protobuf,
    /// Each message's `content-type` header says:
    /// topics that mix both, at librdkafka's cost of parsing every
    /// message's headers.
    Header,
}

/// How a behavior message's payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Encoding {
    /// One JSON object (`Event::from_json`).
    #[default]
    Json,
    /// One protobuf `vitrine.v1.Event` (`Event::from_proto`).
    #[value(name = "proto", alias = "protobuf")]
    Protobuf,
}

/// How a restore takes its memory when malloc advises huge pages
/// (`--huge-pages-restore`; `huge_pages::hold`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RestorePages {
    /// `Hold` when the kernel lacks free 2 MiB blocks for the restore, else `Fault`.
    #[default]
    Auto,
    /// Huge pages switched off for the process while the state is restored.
    Hold,
    /// Huge pages as the restore faults its memory in.
    Fault,
}
