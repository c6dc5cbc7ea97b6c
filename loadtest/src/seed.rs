//! `vitrine-loadtest seed`: pushes each load-test shop's rule file, then
//! streams the generated behavior of its visitors through Ingest/Track.
//!
//! Generation runs on its own thread and hands batches over a bounded
//! channel, so memory stays at a few batches whatever the dataset size,
//! while several Track calls are in flight at once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic::{Code, Status};
use vitrine_proto::v1 as pb;

use crate::client::{self, Auth};
use crate::dataset::{rule_file, shop_name, Batch, Batches, Catalog, DatasetConfig, EventGenerator};
use crate::report::code_name;

/// Settings of `seed`.
#[derive(Debug, Clone)]
pub struct SeedConfig {
    /// The server, HOST:PORT.
    pub addr: String,
    /// Shops `load-0..`.
    pub shops: usize,
    /// Visitors `v-0..` per shop.
    pub visitors: u64,
    /// Events spread over this many days before `now_ms`.
    pub days: u32,
    /// The clock events are spread back from (ms since the epoch).
    pub now_ms: i64,
    /// Seed, catalog size.
    pub dataset: DatasetConfig,
    /// Events per Track call.
    pub batch: usize,
    /// Track calls in flight at once.
    pub concurrency: usize,
    /// Admin token.
    pub auth: Auth,
    /// Also write the rule files here.
    pub write_rules: Option<PathBuf>,
    /// Draw a progress bar (on stderr).
    pub progress: bool,
}

/// The most events the server takes in one Track call.
pub const MAX_BATCH: usize = 10_000;
const ATTEMPTS: u32 = 5;

/// What one Track call (with its retries) did.
#[derive(Debug)]
struct Sent {
    events: u64,
    visitors: u64,
    accepted: u64,
    rejected: Vec<pb::RejectedEvent>,
}

/// Runs the whole seed, printing progress and a summary.
pub async fn seed(config: SeedConfig) -> anyhow::Result<()> {
    if config.shops == 0 || config.visitors == 0 {
        bail!("--shops and --visitors must be at least 1");
    }
    if config.batch == 0 || config.batch > MAX_BATCH {
        bail!("--batch must be between 1 and {MAX_BATCH} (the server's limit per Track call)");
    }
    let catalog = Catalog::new(&config.dataset);
    let channel = client::connect(&config.addr, 1)
        .await?
        .into_iter()
        .next()
        .context("no connection")?;

    push_rules(&config, &catalog, &channel).await?;

    let total_visitors = config.visitors * config.shops as u64;
    let bar = if config.progress {
        let bar = ProgressBar::new(total_visitors);
        if let Ok(style) =
            ProgressStyle::with_template("visitors [{elapsed_precise}] {wide_bar} {pos}/{len} ({eta} left) {msg}")
        {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    };

    // Generation thread -> bounded channel -> at most `concurrency` calls.
    let concurrency = config.concurrency.max(1);
    let (tx, mut rx) = mpsc::channel::<Batch>(concurrency * 2);
    let generator = EventGenerator::new(catalog.clone(), config.days, config.now_ms);
    let batches = Batches::new(generator, config.shops, config.visitors, config.batch);
    let producer = std::thread::Builder::new()
        .name("vitrine-seed-gen".into())
        .spawn(move || {
            for batch in batches {
                if tx.blocking_send(batch).is_err() {
                    break;
                }
            }
        })
        .context("starting the generator thread")?;

    let ingest = pb::ingest_client::IngestClient::new(channel.clone())
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20);
    let started = Instant::now();
    let (mut events, mut accepted, mut rejected) = (0u64, 0u64, 0u64);
    let mut reasons: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut calls: JoinSet<Result<Sent, Status>> = JoinSet::new();
    let mut failure: Option<Status> = None;
    let mut done = |sent: Sent| {
        events += sent.events;
        accepted += sent.accepted;
        rejected += sent.rejected.len() as u64;
        for r in sent.rejected {
            let entry = reasons.entry(r.reason).or_insert((0, r.message));
            entry.0 += 1;
        }
        bar.inc(sent.visitors);
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        bar.set_message(format!("{events} events, {:.0}/s", events as f64 / secs));
    };
    'feed: loop {
        while calls.len() >= concurrency {
            match calls.join_next().await {
                Some(Ok(Ok(sent))) => done(sent),
                Some(Ok(Err(status))) => {
                    failure = Some(status);
                    break 'feed;
                }
                Some(Err(e)) => bail!("a Track task failed: {e}"),
                None => break,
            }
        }
        match rx.recv().await {
            Some(batch) => {
                calls.spawn(track(ingest.clone(), config.auth.clone(), batch));
            }
            None => break,
        }
    }
    if failure.is_none() {
        while let Some(result) = calls.join_next().await {
            match result {
                Ok(Ok(sent)) => done(sent),
                Ok(Err(status)) => {
                    failure = Some(status);
                    break;
                }
                Err(e) => bail!("a Track task failed: {e}"),
            }
        }
    }
    calls.abort_all();
    drop(rx);
    let _ = producer.join();
    bar.finish_and_clear();
    if let Some(status) = failure {
        bail!(
            "Ingest/Track failed after {events} events: {}: {}",
            code_name(status.code()),
            status.message()
        );
    }

    let secs = started.elapsed().as_secs_f64();
    println!(
        "sent {events} events for {total_visitors} visitors of {} shop(s) in {secs:.1} s: {:.0} events/s \
         ({accepted} accepted, {rejected} rejected)",
        config.shops,
        events as f64 / secs.max(1e-9),
    );
    for (reason, (n, example)) in &reasons {
        println!("  rejected {n} x {reason}, e.g. {example}");
    }
    print_sizes(&config, &catalog, &channel).await;
    Ok(())
}

/// Pushes every shop's rule file; on a rejected file prints its errors.
async fn push_rules(config: &SeedConfig, catalog: &Catalog, channel: &Channel) -> anyhow::Result<()> {
    let mut rules = pb::rules_client::RulesClient::new(channel.clone());
    if let Some(dir) = &config.write_rules {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    for i in 0..config.shops {
        let shop = shop_name(i);
        let content = rule_file(i, catalog);
        if let Some(dir) = &config.write_rules {
            let path = dir.join(format!("{shop}.yaml"));
            std::fs::write(&path, &content).with_context(|| format!("writing {}", path.display()))?;
        }
        let request = config.auth.request(pb::PushRequest {
            content,
            dry_run: false,
            expected_revision: 0,
        });
        match rules.push(request).await {
            Ok(r) => {
                let r = r.into_inner();
                println!(
                    "pushed {shop}: revision {}, {} audiences",
                    r.revision,
                    r.audiences.len()
                );
            }
            Err(s) if s.code() == Code::InvalidArgument => {
                eprintln!("the server rejected the generated rule file of {shop}:");
                for line in s.message().lines() {
                    eprintln!("  {shop}.yaml:{line}");
                }
                bail!("rule file of {shop} rejected (a bug in the generator: please report it)");
            }
            Err(s) => bail!("Rules/Push of {shop} failed: {}: {}", code_name(s.code()), s.message()),
        }
    }
    Ok(())
}

/// One Track call, retried with backoff while the server is busy or away.
async fn track(mut ingest: pb::ingest_client::IngestClient<Channel>, auth: Auth, batch: Batch) -> Result<Sent, Status> {
    let mut backoff = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        let mut request = auth.request(pb::TrackRequest {
            events: batch.events.clone(),
        });
        request.set_timeout(Duration::from_secs(60));
        let result = match tokio::time::timeout(Duration::from_secs(65), ingest.track(request)).await {
            Ok(r) => r,
            Err(_) => Err(Status::deadline_exceeded("no answer to Track within 65 s")),
        };
        match result {
            Ok(r) => {
                let r = r.into_inner();
                return Ok(Sent {
                    events: batch.events.len() as u64,
                    visitors: batch.visitors,
                    accepted: u64::from(r.accepted),
                    rejected: r.rejected,
                });
            }
            Err(s) if attempt < ATTEMPTS && matches!(s.code(), Code::ResourceExhausted | Code::Unavailable) => {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                attempt += 1;
            }
            Err(s) => return Err(s),
        }
    }
}

/// Prints each audience's size per shop (a dry-run push sizes them).
async fn print_sizes(config: &SeedConfig, catalog: &Catalog, channel: &Channel) {
    let mut rules = pb::rules_client::RulesClient::new(channel.clone());
    let shown = config.shops.min(4);
    let mut columns = Vec::new();
    for i in 0..shown {
        let request = config.auth.request(pb::PushRequest {
            content: rule_file(i, catalog),
            dry_run: true,
            expected_revision: 0,
        });
        match rules.push(request).await {
            Ok(r) => columns.push(r.into_inner().audiences),
            Err(s) => {
                eprintln!("could not size the audiences: {}: {}", code_name(s.code()), s.message());
                return;
            }
        }
    }
    let Some(first) = columns.first() else { return };
    let mut header = format!("{:<18}", "audience size");
    for i in 0..shown {
        header.push_str(&format!(" {:>10}", shop_name(i)));
    }
    println!("{header}");
    for (row, a) in first.iter().enumerate() {
        let mut line = format!("{:<18}", a.name);
        for column in &columns {
            match column.get(row) {
                Some(c) if c.sizable => line.push_str(&format!(" {:>10}", c.size)),
                Some(_) => line.push_str(&format!(" {:>10}", "(ctx)")),
                None => line.push_str(&format!(" {:>10}", "?")),
            }
        }
        println!("{line}");
    }
}
