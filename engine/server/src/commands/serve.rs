//! `vitrine serve`: wires the engine to its listeners and background tasks,
//! and shuts down in order (health NOT_SERVING, grace period, drain).

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::Context as _;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::Routes;
use tonic_health::server::HealthReporter;
use vitrine_proto::v1 as pb;

use crate::api::grpc::Service;
use crate::api::http::{self, Probes};
use crate::api::transport::{self, Limits};
use crate::clock::now_ms;
use crate::cluster::rules::RulesLog;
use crate::config::Config;
use crate::ingest::Ingest;
use crate::metrics::{self, Metrics, PushResult};
use crate::rules_store::{Origin, RuleStore, SyncReport};
use crate::state::{Engine, StorageHealth};
use crate::storage::restore::{load_snapshot, lock_data_dir, restore_from, snapshot_loop, KafkaPositions, Snapshotter};
use crate::storage::snapshots::{SnapshotDir, Written};

/// The process-wide Prometheus recorder (installed once, shared by every
/// server a test process starts).
fn recorder() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    // Servers starting at once (tests) must not both try to install it.
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let _installing = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = metrics::install().context("installing the Prometheus recorder")?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    /// Where gRPC listens.
    pub grpc_addr: SocketAddr,
    /// Where /metrics, /healthz and /readyz listen.
    pub metrics_addr: SocketAddr,
    /// The engine, for in-process tests and tools.
    pub engine: Arc<Engine>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
    snapshotter: Arc<Snapshotter>,
    failpoints: Failpoints,
    /// `data-dir/vitrine.lock`, held while the server lives.
    _data_lock: Arc<std::fs::File>,
}

/// The journals' failpoints, for fault-injection tests.
#[derive(Debug, Clone)]
pub struct Failpoints {
    /// The events journal's writer.
    pub events: Arc<crate::storage::wal::Failpoints>,
    /// The claims journal's writer.
    pub claims: Arc<crate::storage::wal::Failpoints>,
}

/// How often the data directory and its lock file are checked to still be
/// the ones the server opened (hardening #17).
pub const DATA_DIR_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a shutdown waits for the Kafka consumer's final commit and close.
const INGEST_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How often the background task compacts the index's bitmaps
/// (`ShopIndex::compact`: closed days once, and again after late events;
/// item, tag and tier bitmaps every time); the first tick after start
/// compacts a restored index.
pub const INDEX_COMPACT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(300);

/// Every service whose health is reported, with "" (the server as a whole).
const HEALTH_SERVICES: [&str; 7] = [
    "",
    "vitrine.v1.Decision",
    "vitrine.v1.Benefits",
    "vitrine.v1.Rules",
    "vitrine.v1.Audiences",
    "vitrine.v1.Ingest",
    "vitrine.v1.Reports",
];

/// Reports every service SERVING or NOT_SERVING.
async fn set_health(reporter: &HealthReporter, serving: bool) {
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    for name in HEALTH_SERVICES {
        reporter.set_service_status(name, status).await;
    }
}

fn log_sync(report: &SyncReport) {
    for (shop, revision) in &report.swapped {
        tracing::info!(shop, revision, "rule file loaded");
        metrics::rule_push(Origin::File, PushResult::Accepted);
        metrics::rule_revision(shop, *revision);
    }
    for p in &report.problems {
        metrics::rule_push(Origin::File, PushResult::Rejected);
        for line in p.message.lines() {
            tracing::error!("{}:{line}", p.path.display());
        }
    }
}

/// A restore faults its whole index in within a second. With malloc
/// advising huge pages, each 2 MiB fault takes a free 2 MiB block, and
/// where the kernel has too few it compacts memory while the restore waits
/// (restart 0.96 -> 1.31 s on a long-running host, README "the fourth
/// round"); on 4 KiB pages (`huge_pages::hold`) nothing waits, but the
/// restore takes ~0.3 s longer on a host with free blocks (README "the
/// fifth round" and "the sixth"). `Auto` holds only when the free 2 MiB
/// blocks are fewer than twice what the snapshot restores into (about four
/// times its size).
fn restore_pages(policy: crate::config::RestorePages, snapshots: &SnapshotDir) -> crate::huge_pages::Held {
    use crate::config::RestorePages;
    let hold = match policy {
        RestorePages::Fault => false,
        RestorePages::Hold => true,
        RestorePages::Auto => {
            let needed = largest_snapshot_bytes(snapshots).saturating_mul(4).saturating_mul(2);
            let free = crate::huge_pages::free_huge_bytes();
            needed > 0 && free.is_some_and(|free| free < needed)
        }
    };
    let pages = if hold {
        crate::huge_pages::hold()
    } else {
        crate::huge_pages::Held::none()
    };
    if pages.is_held() {
        tracing::info!(?policy, "huge pages: held back while the state is restored");
    }
    pages
}

/// The size of the largest snapshot file in `snapshots` (0: none): the
/// newest, which the restore loads, is about as large as the others kept.
fn largest_snapshot_bytes(snapshots: &SnapshotDir) -> u64 {
    std::fs::read_dir(snapshots.dir()).map_or(0, |entries| {
        entries
            .filter_map(|e| e.ok()?.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .max()
            .unwrap_or(0)
    })
}

/// Starts everything; returns once the state is restored, both listeners
/// are bound and the rules (and the demo stream, with `--demo`) are loaded.
pub async fn start(config: Config) -> anyhow::Result<Server> {
    std::fs::create_dir_all(&config.rules_dir)
        .with_context(|| format!("creating --rules-dir {}", config.rules_dir.display()))?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating --data-dir {}", config.data_dir.display()))?;
    let data_lock = Arc::new(lock_data_dir(&config.data_dir)?);
    let snapshots = SnapshotDir::open(&config.data_dir, config.snapshot_keep)
        .with_context(|| format!("opening {}/snapshots", config.data_dir.display()))?;
    // The snapshot loads (most of a restart) while the recorder is
    // installed (its clock calibrates for up to 200 ms) and the rules
    // directory is read: loading records no metric and needs no rules. The
    // task holds the data directory's lock for as long as it reads. Huge
    // pages may wait until the state is in memory (`restore_pages`).
    let pages = restore_pages(config.huge_pages_restore, &snapshots);
    let loading = {
        let lock = data_lock.clone();
        tokio::task::spawn_blocking(move || {
            let _held = lock;
            load_snapshot(&snapshots).map(|s| (s, snapshots))
        })
    };
    let handle = recorder()?;
    let storage = StorageHealth::default();
    let mut store = RuleStore::new(&config.rules_dir, &config.data_dir)
        .with_limits(config.rule_limits)
        .with_shops(config.shops.clone());
    if config.kafka.is_some() {
        // Cluster mode: the rules topic fills the store; the rules
        // directory seeds it once the topic is read (`seed_rules`).
        store = store.clustered();
    } else {
        log_sync(&store.rescan(now_ms()));
    }
    let data_dir = config.data_dir.clone();
    let (claims_segment_bytes, restore_storage) = (config.claims_segment_bytes, storage.clone());
    // Journal replay creates shops' indexes on their rules' zones (the
    // rules directory is read above; in cluster mode the store is still empty).
    let zones: std::collections::HashMap<String, vitrine_core::time::Zone> = store
        .shops()
        .into_iter()
        .map(|(shop, _)| {
            let zone = crate::zones::zone_for(&store, &shop);
            (shop, zone)
        })
        .collect();
    let (snapshot, snapshots) = loading.await.context("loading the snapshot")??;
    let restored = tokio::task::spawn_blocking(move || {
        restore_from(snapshot, &data_dir, claims_segment_bytes, &restore_storage, &zones)
    })
    .await
    .context("restoring state")??;
    if pages.is_held() {
        match pages.release() {
            Ok(()) => tracing::info!("huge pages: on again; khugepaged moves the restored memory onto them"),
            Err(e) => tracing::warn!(error = %e, "huge pages: could not switch them back on: 4 KiB pages"),
        }
    }
    let failpoints = Failpoints {
        events: restored.events.failpoints(),
        claims: restored.ledger.failpoints(),
    };
    let ledger = restored.ledger.clone();
    let mut kafka_config = config.kafka.clone();
    if let Some(k) = &mut kafka_config {
        match &restored.position.kafka {
            Some(p) if p.topic == k.topic => k.resume = Some(p.offsets.clone()),
            Some(p) => tracing::warn!(
                snapshot_topic = %p.topic,
                topic = %k.topic,
                "the snapshot was taken from another topic: its offsets are ignored"
            ),
            None => {}
        }
    }
    // Cluster mode: the claims topic decides claims (docs/cluster.md).
    if let Some(k) = &kafka_config {
        crate::cluster::ensure_topics(k, &config.rule_limits).await;
    }
    let claims_log = match &kafka_config {
        Some(k) => Some(Arc::new(
            crate::cluster::claims::start(&config.data_dir, k, config.shops.clone()).await?,
        )),
        None => None,
    };
    let engine_ledger: Arc<dyn vitrine_core::ClaimLedger> = match &claims_log {
        Some(log) => log.ledger(),
        None => restored.ledger,
    };
    let mut engine = Engine::with_parts(
        restored.index,
        store,
        engine_ledger,
        Some(restored.events),
        Metrics::new(),
    );
    engine.storage = storage.clone();
    engine.cluster.shops = config.shops.clone();
    if let Some(log) = claims_log {
        let _ = engine.cluster.claims.set(log);
    }
    let engine = Arc::new(engine);
    crate::decisions::drain::start(&engine, &config.decision_log, kafka_config.as_ref())?;
    let decisions_config = kafka_config
        .as_ref()
        .map(|k| crate::decisions::consumer_config(k, restored.position.decisions.as_ref()));
    // Cluster mode: the rules topic (read from its beginning).
    let mut rules_seeded = None;
    if let Some(k) = &kafka_config {
        let log = RulesLog::start(&engine, k, crate::cluster::producer::replica_id())
            .context("starting the rules topic reader")?;
        let _ = engine.cluster.rules.set(log);
        let track = crate::cluster::track::TrackLog::start(k, crate::cluster::producer::replica_id())
            .context("starting the behavior topic writer")?;
        let _ = engine.cluster.track.set(track);
        rules_seeded = Some(watch::channel(false));
        if config.demo_visitors.is_some() {
            tracing::warn!(
                "--demo seeds its generated visitors only without --kafka-brokers: produce events to the topic instead"
            );
        }
    }
    if let (Some(visitors), None) = (config.demo_visitors, &kafka_config) {
        let now = now_ms();
        for (shop, _) in engine.rules.shops() {
            if let Some(served) = engine.rules.serving(&shop) {
                for event in crate::commands::demo::events(&served.rules, visitors, now) {
                    engine.apply(&event);
                }
                // Decisions through the decision log, and purchases after them.
                let (decided, bought) = crate::commands::demo_lift::seed(&engine, &shop, visitors, now);
                tracing::info!(shop, decided, bought, "demo: decisions logged, purchases after them");
            }
        }
    }

    // The rule files were read before the restore: report zones they changed.
    engine.check_zones();

    let grpc_listener = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("binding --grpc-addr {}", config.grpc_addr))?;
    let metrics_listener = TcpListener::bind(config.metrics_addr)
        .await
        .with_context(|| format!("binding --metrics-addr {}", config.metrics_addr))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let metrics_addr = metrics_listener.local_addr()?;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(vitrine_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(vitrine_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let service = Service::new(engine.clone(), config.admin_token.clone());
    let studio = config.studio.then(|| {
        crate::api::studio::Studio::new(
            service.clone(),
            config.studio_max_body,
            config.request_timeout,
            config.studio_max_compiles,
        )
    });
    let limit = config.max_request_bytes;
    let decision = pb::decision_server::DecisionServer::new(service.clone()).max_decoding_message_size(limit);
    let benefits = pb::benefits_server::BenefitsServer::new(service.clone()).max_decoding_message_size(limit);
    let rules = pb::rules_server::RulesServer::new(service.clone()).max_decoding_message_size(limit);
    let audiences = pb::audiences_server::AudiencesServer::new(service.clone()).max_decoding_message_size(limit);
    let reports = pb::reports_server::ReportsServer::new(service.clone()).max_decoding_message_size(limit);
    let ingest = pb::ingest_server::IngestServer::new(service).max_decoding_message_size(limit);
    // Embedded, the engine is ready now; with Kafka, once the rules topic is
    // read and seeded (events of a shop are applied only once its rules are
    // known) and then the behavior consumer has caught up.
    let ingest_positions: Arc<OnceLock<KafkaPositions>> = Arc::new(OnceLock::new());
    let decisions_positions: Arc<OnceLock<KafkaPositions>> = Arc::new(OnceLock::new());
    let reader = |k: &crate::config::KafkaConfig, positions: &Arc<OnceLock<KafkaPositions>>| {
        let (positions, resume) = (positions.clone(), k.resume.clone().unwrap_or_default());
        let read: KafkaPositions = Box::new(move || positions.get().map_or_else(|| resume.clone(), |read| read()));
        (k.topic.clone(), read)
    };
    let snapshotter = Arc::new(Snapshotter {
        engine: engine.clone(),
        ledger,
        dir: snapshots,
        kafka: kafka_config.as_ref().map(|k| reader(k, &ingest_positions)),
        decisions: decisions_config.as_ref().map(|k| reader(k, &decisions_positions)),
    });
    let ready_now = kafka_config.is_none();
    set_health(&health_reporter, ready_now).await;
    let health = Arc::new(tokio::sync::Mutex::new(health_reporter));

    let ready = Arc::new(AtomicBool::new(ready_now));
    metrics::ready(ready_now);
    // TLS on both ports (README, "TLS"), its files watched for renewals.
    let tls = match config.tls.clone() {
        Some(files) => Some(Arc::new(crate::api::tls::Tls::load(files).context("TLS")?)),
        None => None,
    };
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();

    if let Some(k) = kafka_config.clone() {
        tracing::info!(
            "NOT_SERVING until the rules topic is read and the Kafka consumer has caught up with the behavior topic"
        );
        let (seeded_tx, seeded) = rules_seeded.unwrap_or_else(|| watch::channel(true));
        tasks.push(tokio::spawn(seed_rules(engine.clone(), seeded_tx, stopped.clone())));
        tasks.push(tokio::spawn(run_ingest(
            engine.clone(),
            k,
            decisions_config.map(|d| (d, decisions_positions)),
            seeded,
            ingest_positions,
            ready.clone(),
            health.clone(),
            storage.clone(),
            stopped.clone(),
        )));
    }
    tasks.push(tokio::spawn(not_serving_on_fault(
        storage.clone(),
        ready.clone(),
        health.clone(),
        stopped.clone(),
    )));
    tasks.push(tokio::spawn(watch_data_dir(
        config.data_dir.clone(),
        data_lock.clone(),
        storage.clone(),
        stopped.clone(),
    )));

    // gRPC: on stop, report NOT_SERVING, wait the grace period, then drain.
    let grace = config.shutdown_grace;
    let mut grpc_stop = stopped.clone();
    let draining = {
        let ready = ready.clone();
        let health = health.clone();
        async move {
            let _ = grpc_stop.wait_for(|s| *s).await;
            // Under the lock, so a consumer catching up right now cannot
            // turn the server back to SERVING.
            let health = health.lock().await;
            ready.store(false, Ordering::Release);
            metrics::ready(false);
            set_health(&health, false).await;
            drop(health);
            tracing::info!("shutting down: health is NOT_SERVING, draining in {grace:?}");
            tokio::time::sleep(grace).await;
        }
    };
    let routes = Routes::new(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(decision)
        .add_service(benefits)
        .add_service(rules)
        .add_service(audiences)
        .add_service(reports)
        .add_service(ingest);
    let limits = Limits {
        max_in_flight: config.max_in_flight,
        max_queue_wait: config.max_queue_wait,
        request_timeout: config.request_timeout,
    };
    let grpc_connections = config.grpc_connections;
    let grpc_tls = tls.as_ref().map(|t| t.grpc.clone());
    tasks.push(tokio::spawn(async move {
        transport::serve(grpc_listener, routes, limits, grpc_connections, grpc_tls, draining)
            .await
            .context("gRPC server")
    }));

    let probes = Probes {
        ready: ready.clone(),
        storage: storage.clone(),
        metrics: handle.clone(),
        decide_latency: engine.metrics.decide_duration.clone(),
        studio,
    };
    let mut http_stop = stopped.clone();
    let http_connections = config.http_connections;
    let http_tls = tls.as_ref().map(|t| t.http.clone());
    if let Some(tls) = tls {
        let stopped = stopped.clone();
        tasks.push(tokio::spawn(async move {
            tls.watch(stopped).await;
            Ok(())
        }));
    }
    tasks.push(tokio::spawn(async move {
        http::serve(metrics_listener, probes, http_connections, http_tls, async move {
            let _ = http_stop.wait_for(|s| *s).await;
        })
        .await;
        Ok(())
    }));

    if let Some(interval) = config.snapshot_interval {
        tasks.push(tokio::spawn(snapshot_loop(
            snapshotter.clone(),
            interval,
            stopped.clone(),
        )));
    }
    tasks.push(tokio::spawn(background(
        engine.clone(),
        handle,
        config.rules_poll,
        stopped,
    )));

    tracing::info!(%grpc_addr, %metrics_addr, "vitrine serving");
    Ok(Server {
        grpc_addr,
        metrics_addr,
        engine,
        stop,
        tasks,
        snapshotter,
        failpoints,
        _data_lock: data_lock,
    })
}

/// Turns health NOT_SERVING (gRPC) and not ready (`/readyz`) for good when
/// storage faults (see [`crate::state`]'s "Storage faults").
async fn not_serving_on_fault(
    storage: StorageHealth,
    ready: Arc<AtomicBool>,
    health: Arc<tokio::sync::Mutex<HealthReporter>>,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut fault = storage.subscribe();
    tokio::select! {
        seen = fault.wait_for(|f| f.is_some()) => if seen.is_err() { return Ok(()) },
        _ = stopped.wait_for(|s| *s) => return Ok(()),
    }
    // Under the lock, so that a consumer catching up now cannot turn it back.
    let health = health.lock().await;
    ready.store(false, Ordering::Release);
    metrics::ready(false);
    set_health(&health, false).await;
    tracing::error!("NOT_SERVING: storage fault; restart the server once the disk is fixed");
    Ok(())
}

/// The identity of a file: (device, inode).
fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    (meta.dev(), meta.ino())
}

/// Checks every [`DATA_DIR_CHECK_INTERVAL`] that `--data-dir` and its lock
/// file are still the ones the server opened; a removed or replaced one is
/// a storage fault (hardening #17): writes would go to unlinked files,
/// lost at restart, and the lock no longer keeps a second server away.
async fn watch_data_dir(
    data_dir: std::path::PathBuf,
    lock: Arc<std::fs::File>,
    storage: StorageHealth,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let dir = std::fs::metadata(&data_dir)
        .map(|m| identity(&m))
        .with_context(|| format!("reading {}", data_dir.display()))?;
    let held = lock
        .metadata()
        .map(|m| identity(&m))
        .context("reading the data-dir lock")?;
    let lock_path = data_dir.join("vitrine.lock");
    let mut ticker = tokio::time::interval(DATA_DIR_CHECK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.wait_for(|s| *s) => return Ok(()),
        }
        let check = |path: &Path, want: (u64, u64)| match std::fs::metadata(path) {
            Ok(m) if identity(&m) == want => None,
            Ok(_) => Some(format!(
                "{} was replaced by another file while the server ran",
                path.display()
            )),
            Err(e) => Some(format!("{} is gone ({e}) while the server ran", path.display())),
        };
        if let Some(problem) = check(&data_dir, dir).or_else(|| check(&lock_path, held)) {
            storage.trip(format!(
                "data directory lost: {problem}; acknowledged writes would not survive a restart"
            ));
            return Ok(());
        }
    }
}

/// The Kafka consumer's life beside the server: started once the rules are
/// seeded, SERVING once it has caught up (unless shutdown began first), and
/// stopped (final commit) on shutdown.
#[allow(clippy::too_many_arguments)]
async fn run_ingest(
    engine: Arc<Engine>,
    config: crate::config::KafkaConfig,
    decisions: Option<(crate::config::KafkaConfig, Arc<OnceLock<KafkaPositions>>)>,
    mut seeded: watch::Receiver<bool>,
    positions: Arc<OnceLock<KafkaPositions>>,
    ready: Arc<AtomicBool>,
    health: Arc<tokio::sync::Mutex<HealthReporter>>,
    storage: StorageHealth,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut stopping = stopped.clone();
    tokio::select! {
        done = seeded.wait_for(|s| *s) => if done.is_err() { return Ok(()) },
        _ = stopping.wait_for(|s| *s) => return Ok(()),
    }
    let kafka = Ingest::start(engine.clone(), &config).context("starting Kafka ingest")?;
    let _ = positions.set(Box::new(kafka.positions_reader()));
    let mut caught_up = kafka.caught_up();
    // The decisions topic: a second consumer of the same kind, applying
    // records as exposures (crate::decisions).
    let decisions = match decisions {
        Some((d, positions)) => {
            let ingest = Ingest::start(engine.clone(), &d).context("starting the decisions topic consumer")?;
            let _ = positions.set(Box::new(ingest.positions_reader()));
            Some(ingest)
        }
        None => None,
    };
    let mut decisions_caught_up = decisions.as_ref().map(Ingest::caught_up);
    // false: shutdown began first, or the consumer thread ended before
    // catching up (logged).
    let caught = tokio::select! {
        up = async {
            let decisions_up = match &mut decisions_caught_up {
                Some(c) => c.wait_for(|c| *c).await.is_ok(),
                None => true,
            };
            caught_up.wait_for(|c| *c).await.is_ok() && decisions_up && engine.cluster.caught_up().await
        } => up,
        _ = async { stopping.wait_for(|s| *s).await.is_ok() } => false,
    };
    if caught {
        let health = health.lock().await;
        if !*stopped.borrow() && storage.fault().is_none() {
            ready.store(true, Ordering::Release);
            metrics::ready(true);
            set_health(&health, true).await;
            tracing::info!("SERVING: the rules topic is read and the index holds the behavior topic up to its high watermarks at start");
        }
    }
    let _ = stopped.wait_for(|s| *s).await;
    tokio::task::spawn_blocking(move || {
        kafka.stop(INGEST_STOP_TIMEOUT);
        if let Some(d) = decisions {
            d.stop(INGEST_STOP_TIMEOUT);
        }
    })
    .await?;
    Ok(())
}

/// Periodic work: pick up edited rule files, refresh index gauges, compact
/// the index's bitmaps every [`INDEX_COMPACT_INTERVAL`], and run the
/// exporter's upkeep.
async fn background(
    engine: Arc<Engine>,
    handle: PrometheusHandle,
    poll: std::time::Duration,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    let mut compacted_at: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.wait_for(|s| *s) => return Ok(()),
        }
        let e = engine.clone();
        let refresh_stats = ticks.is_multiple_of(5);
        ticks += 1;
        let compact = compacted_at.is_none_or(|t| t.elapsed() >= INDEX_COMPACT_INTERVAL);
        if compact {
            compacted_at = Some(std::time::Instant::now());
        }
        let scan = !e.rules.is_clustered() || e.cluster.rules.get().is_some_and(|_| e.rules.scanned());
        let report = tokio::task::spawn_blocking(move || {
            let report = if scan {
                e.rules.rescan(now_ms())
            } else {
                SyncReport::default()
            };
            e.check_zones();
            if refresh_stats {
                for shop in e.index.shops() {
                    metrics::index_stats(shop.name(), &shop.stats());
                }
            }
            if compact {
                for shop in e.index.shops() {
                    let bitmaps = shop.compact(now_ms());
                    tracing::debug!(shop = shop.name(), bitmaps, "index bitmaps compacted");
                }
            }
            report
        })
        .await?;
        log_sync(&report);
        if let Some(log) = engine.cluster.rules.get() {
            crate::cluster::rules::propose(&engine, log, report.proposals).await;
        }
        handle.run_upkeep();
    }
}

/// Cluster mode: once the rules topic is read up to where it stood at
/// start, the first scan of `--rules-dir` seeds the shops the topic lacks
/// (and rewrites stale copies from the topic); then the replica may serve.
async fn seed_rules(
    engine: Arc<Engine>,
    seeded: watch::Sender<bool>,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let Some(log) = engine.cluster.rules.get() else {
        return Ok(());
    };
    let mut caught_up = log.caught_up();
    tokio::select! {
        read = caught_up.wait_for(|c| *c) => if read.is_err() { return Ok(()) },
        _ = stopped.wait_for(|s| *s) => return Ok(()),
    }
    let e = engine.clone();
    let report = tokio::task::spawn_blocking(move || e.rules.rescan(now_ms())).await?;
    log_sync(&report);
    for path in &report.rewritten {
        tracing::info!(file = %path.display(), "rule file differed from what the rules topic serves: rewritten from the topic (edits made while this replica was down are not pushed)");
    }
    crate::cluster::rules::propose(&engine, log, report.proposals).await;
    tracing::info!(
        shops = engine.rules.shops().len(),
        "rules topic read and --rules-dir seeded"
    );
    let _ = seeded.send(true);
    Ok(())
}

impl Server {
    /// Stops: NOT_SERVING, grace period, drain in-flight calls, close.
    /// Then, with nothing left writing, takes the final snapshot.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let mut result = Ok(());
        for task in self.tasks {
            if let Err(e) = task.await.map_err(anyhow::Error::from).and_then(|r| r) {
                result = result.and(Err(e));
            }
        }
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(log) = engine.cluster.rules.get() {
                log.stop();
            }
            // No Decide runs any more: drain the decision log (embedded, its
            // exposures are then in the final snapshot).
            if let Some(log) = engine.decisions.log() {
                log.stop(crate::decisions::drain::STOP_TIMEOUT);
            }
        })
        .await?;
        let snapshotter = self.snapshotter;
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || snapshotter.take())
            .await?
            .context("the final snapshot")?;
        if let Some(claims) = engine.cluster.claims.get().cloned() {
            tokio::task::spawn_blocking(move || claims.stop()).await?;
        }
        result
    }

    /// The journals' failpoints (fault-injection tests).
    pub fn failpoints(&self) -> &Failpoints {
        &self.failpoints
    }

    /// Writes a snapshot now (what the periodic task does); for tests and tools.
    pub async fn snapshot(&self) -> anyhow::Result<Written> {
        let snapshotter = self.snapshotter.clone();
        Ok(tokio::task::spawn_blocking(move || snapshotter.take()).await??)
    }

    /// Serves until `signal` resolves, then shuts down.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        signal.await;
        self.shutdown().await
    }
}
