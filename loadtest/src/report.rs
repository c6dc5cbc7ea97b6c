//! Latency recording and the summaries printed at the end: a table for
//! people, one JSON object for scripts.
//!
//! Latencies are microseconds from a request's *intended* send time (see
//! [`crate::pacer`]) to its answer, kept in an HDR histogram (3 significant
//! digits, 1 µs to 1 hour). Only successful calls enter the histogram; every
//! failure is counted by its gRPC status code name (`ResourceExhausted`,
//! `Unavailable`, `DeadlineExceeded` — also used when no answer came within
//! `--timeout` —, ...) plus two client-side names: `ClientOverload` (the
//! load generator's own in-flight limit was reached, the request was not
//! sent) and `Unfinished` (still unanswered when the phase was drained).
//!
//! JSON shape of one phase (`errors` maps a code name to its count, `{}`
//! when there were none; `errors_total` is their sum):
//! `{"p50_us", "p90_us", "p99_us", "p999_us", "max_us", "mean_us",
//! "achieved_rps", "requests", "ok", "errors_total", "errors": {code: count}}`.
//!
//! `run --json` prints exactly one object on stdout:
//! `{"decide": PHASE, "baseline": PHASE, "p99_ratio" (decide p99 / baseline
//! p99, null without answers), "mode", "rate", "duration_s", "warmup_s",
//! "connections", "pacer_max_lag_us", "background": null or {"events_rate",
//! "events_sent", "events_accepted", "events_rejected", "track_errors",
//! "push_every_s", "pushes", "push_errors", "push_max_ms"}}`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// The error name of a request that got no answer within `--timeout`.
pub const TIMEOUT: &str = "DeadlineExceeded";
/// The error name of a request the generator did not send because its own
/// in-flight limit was reached.
pub const CLIENT_OVERLOAD: &str = "ClientOverload";
/// The error name of a request still unanswered when the phase was drained.
pub const UNFINISHED: &str = "Unfinished";

/// The name a gRPC status code is reported under, e.g. `ResourceExhausted`.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "Ok",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// The outcomes of one kind of request in one phase.
#[derive(Debug, Clone)]
pub struct Recorder {
    latency_us: Histogram<u64>,
    requests: u64,
    errors: BTreeMap<String, u64>,
    first_intended: Option<Instant>,
    last_done: Option<Instant>,
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder::new()
    }
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Recorder {
        Recorder {
            // 1 µs .. 1 h at 3 significant digits; larger values saturate.
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .unwrap_or_else(|_| unreachable!("constant, valid bounds")),
            requests: 0,
            errors: BTreeMap::new(),
            first_intended: None,
            last_done: None,
        }
    }

    /// One request meant to go out at `intended` and finished at `done`:
    /// `Ok` or the name of its error.
    pub fn record(&mut self, intended: Instant, done: Instant, outcome: Result<(), &str>) {
        self.requests += 1;
        self.first_intended = Some(self.first_intended.map_or(intended, |f| f.min(intended)));
        self.last_done = Some(self.last_done.map_or(done, |l| l.max(done)));
        match outcome {
            Ok(()) => {
                let us = done.saturating_duration_since(intended).as_micros();
                self.latency_us
                    .saturating_record(u64::try_from(us).unwrap_or(u64::MAX).max(1));
            }
            Err(name) => self.error(name, 1),
        }
    }

    /// `n` requests that failed without an answer time.
    pub fn error(&mut self, name: &str, n: u64) {
        if n == 0 {
            return;
        }
        *self.errors.entry(name.to_string()).or_default() += n;
    }

    /// `n` requests that never got counted otherwise (see [`UNFINISHED`]).
    pub fn unfinished(&mut self, n: u64) {
        self.requests += n;
        self.error(UNFINISHED, n);
    }

    /// `n` requests not sent (see [`CLIENT_OVERLOAD`]).
    pub fn overloaded(&mut self, intended: Instant, n: u64) {
        self.requests += n;
        self.first_intended = Some(self.first_intended.map_or(intended, |f| f.min(intended)));
        self.error(CLIENT_OVERLOAD, n);
    }

    /// Adds what `other` recorded (same histogram bounds, so nothing is lost).
    pub fn merge(&mut self, other: &Recorder) {
        self.requests += other.requests;
        // Both histograms have the bounds of `Recorder::new`: adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
        for (name, n) in &other.errors {
            *self.errors.entry(name.clone()).or_default() += n;
        }
        self.first_intended = match (self.first_intended, other.first_intended) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_done = match (self.last_done, other.last_done) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    /// Everything recorded, for another process to merge
    /// ([`Recorder::from_part`]): the histogram as `[value_us, count]`
    /// pairs, requests, errors, and the span from the first intended send
    /// to the last answer.
    pub fn to_part(&self) -> Value {
        let counts: Vec<[u64; 2]> = self
            .latency_us
            .iter_recorded()
            .map(|v| [v.value_iterated_to(), v.count_at_value()])
            .collect();
        let span_us = match (self.first_intended, self.last_done) {
            (Some(first), Some(last)) => Some(last.saturating_duration_since(first).as_micros() as u64),
            _ => None,
        };
        json!({"counts": counts, "requests": self.requests, "errors": self.errors, "span_us": span_us})
    }

    /// A recorder from [`Recorder::to_part`]'s object, its span laid from
    /// `start`; `None` if the object is not one.
    pub fn from_part(part: &Value, start: Instant) -> Option<Recorder> {
        let mut r = Recorder::new();
        for pair in part.get("counts")?.as_array()? {
            let (value, count) = (pair.get(0)?.as_u64()?, pair.get(1)?.as_u64()?);
            r.latency_us.saturating_record_n(value.max(1), count);
        }
        r.requests = part.get("requests")?.as_u64()?;
        for (name, n) in part.get("errors")?.as_object()? {
            r.error(name, n.as_u64()?);
        }
        if let Some(span) = part.get("span_us")?.as_u64() {
            r.first_intended = Some(start);
            r.last_done = start.checked_add(Duration::from_micros(span));
        }
        Some(r)
    }

    /// Percentiles, achieved rate and errors.
    pub fn summary(&self) -> Summary {
        let h = &self.latency_us;
        let ok = h.len();
        let q = |quantile: f64| if ok == 0 { 0 } else { h.value_at_quantile(quantile) };
        let elapsed = match (self.first_intended, self.last_done) {
            (Some(first), Some(last)) => last.saturating_duration_since(first).as_secs_f64(),
            _ => 0.0,
        };
        Summary {
            requests: self.requests,
            ok,
            p50_us: q(0.50),
            p90_us: q(0.90),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if ok == 0 { 0 } else { h.max() },
            mean_us: if ok == 0 { 0.0 } else { h.mean() },
            achieved_rps: if elapsed > 0.0 { ok as f64 / elapsed } else { 0.0 },
            errors: self.errors.clone(),
        }
    }
}

/// What one kind of request did in one phase.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Requests scheduled in the measured window.
    pub requests: u64,
    /// Successful answers (the histogram's population).
    pub ok: u64,
    /// Median latency from the intended send time, µs.
    pub p50_us: u64,
    /// 90th percentile, µs.
    pub p90_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// 99.9th percentile, µs.
    pub p999_us: u64,
    /// Slowest successful answer, µs.
    pub max_us: u64,
    /// Mean, µs.
    pub mean_us: f64,
    /// Successful answers per second, from the first intended send to the
    /// last answer: below the target rate when the server falls behind.
    pub achieved_rps: f64,
    /// Failures by code name.
    pub errors: BTreeMap<String, u64>,
}

impl Summary {
    /// All failures.
    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The JSON object of this phase (module docs).
    pub fn to_json(&self) -> Value {
        json!({
            "p50_us": self.p50_us,
            "p90_us": self.p90_us,
            "p99_us": self.p99_us,
            "p999_us": self.p999_us,
            "max_us": self.max_us,
            "mean_us": round2(self.mean_us),
            "achieved_rps": round2(self.achieved_rps),
            "requests": self.requests,
            "ok": self.ok,
            "errors_total": self.errors_total(),
            "errors": self.errors,
        })
    }

    /// `errors` as `Code=n Code=n`, or `none`.
    pub fn errors_text(&self) -> String {
        if self.errors.is_empty() {
            return "none".into();
        }
        let parts: Vec<String> = self.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
        parts.join(" ")
    }
}

/// `a.p99 / b.p99`, when both have answers.
pub fn p99_ratio(a: &Summary, b: &Summary) -> Option<f64> {
    (a.ok > 0 && b.ok > 0 && b.p99_us > 0).then(|| a.p99_us as f64 / b.p99_us as f64)
}

/// Rounds for display and JSON (two decimals).
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The latency table, one row per `(label, summary)`.
pub fn table(rows: &[(&str, &Summary)]) -> String {
    let mut out = format!(
        "{:<10} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>11}  errors\n",
        "phase", "requests", "ok", "p50", "p90", "p99", "p99.9", "max", "achieved/s"
    );
    for (label, s) in rows {
        out.push_str(&format!(
            "{:<10} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>11.1}  {}\n",
            label,
            s.requests,
            s.ok,
            s.p50_us,
            s.p90_us,
            s.p99_us,
            s.p999_us,
            s.max_us,
            s.achieved_rps,
            s.errors_text()
        ));
    }
    out
}

/// What the background load did during the decide phase.
#[derive(Debug, Clone, Default)]
pub struct BackgroundStats {
    /// Target events per second (0 = none sent).
    pub events_rate: f64,
    /// Events sent via Ingest/Track.
    pub events_sent: u64,
    /// Of them, accepted by the server.
    pub events_accepted: u64,
    /// Of them, rejected (per event) by the server.
    pub events_rejected: u64,
    /// Failed Track calls by code name.
    pub track_errors: BTreeMap<String, u64>,
    /// How long the events were sent for.
    pub seconds: f64,
    /// Interval between Rules/Push calls, if any.
    pub push_every: Option<Duration>,
    /// Successful pushes.
    pub pushes: u64,
    /// Failed pushes by code name.
    pub push_errors: BTreeMap<String, u64>,
    /// Slowest successful push.
    pub push_max: Duration,
    /// Sum of successful push times.
    pub push_total: Duration,
}

impl BackgroundStats {
    /// One line for people, or none when there was no background load.
    pub fn text(&self) -> Option<String> {
        let mut parts = Vec::new();
        if self.events_rate > 0.0 {
            let rate = if self.seconds > 0.0 {
                self.events_sent as f64 / self.seconds
            } else {
                0.0
            };
            parts.push(format!(
                "{} events via Ingest/Track ({rate:.0}/s of {:.0}/s asked; {} accepted, {} rejected), failed calls: {}",
                self.events_sent,
                self.events_rate,
                self.events_accepted,
                self.events_rejected,
                errors_text(&self.track_errors)
            ));
        }
        if let Some(every) = self.push_every {
            let mean_ms = if self.pushes > 0 {
                self.push_total.as_secs_f64() * 1e3 / self.pushes as f64
            } else {
                0.0
            };
            parts.push(format!(
                "{} Rules/Push every {every:?} (mean {mean_ms:.1} ms, max {:.1} ms), failed: {}",
                self.pushes,
                self.push_max.as_secs_f64() * 1e3,
                errors_text(&self.push_errors)
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    /// The JSON object of the background load.
    pub fn to_json(&self) -> Value {
        json!({
            "events_rate": self.events_rate,
            "events_sent": self.events_sent,
            "events_accepted": self.events_accepted,
            "events_rejected": self.events_rejected,
            "track_errors": self.track_errors,
            "push_every_s": self.push_every.map(|d| d.as_secs_f64()),
            "pushes": self.pushes,
            "push_errors": self.push_errors,
            "push_max_ms": round2(self.push_max.as_secs_f64() * 1e3),
        })
    }
}

fn errors_text(errors: &BTreeMap<String, u64>) -> String {
    Summary {
        errors: errors.clone(),
        ..Summary::default()
    }
    .errors_text()
}

/// The result of `vitrine-loadtest run`.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The server.
    pub addr: String,
    /// `sequential` or `interleaved`.
    pub mode: &'static str,
    /// Requests per second of each kind.
    pub rate: f64,
    /// Measured duration of each phase.
    pub duration: Duration,
    /// Discarded warm-up before each phase.
    pub warmup: Duration,
    /// HTTP/2 connections.
    pub connections: usize,
    /// vitrine.v1.Decision/Decide.
    pub decide: Summary,
    /// grpc.health.v1.Health/Check.
    pub baseline: Summary,
    /// Background load during the decide phase.
    pub background: Option<BackgroundStats>,
    /// The latest the pacer handed out a tick (already inside the latencies).
    pub pacer_max_lag: Duration,
}

impl RunReport {
    /// What the mode means, in words.
    pub fn mode_text(&self) -> &'static str {
        match self.mode {
            "interleaved" => {
                "interleaved: one schedule alternating baseline and decide requests, each at the rate \
                 (so the server sees twice the rate), both measured over the same time"
            }
            _ => "sequential: the baseline phase first, then the decide phase, same rate and duration",
        }
    }

    /// The report for people.
    pub fn text(&self) -> String {
        let mut out = format!(
            "open loop: {} req/s for {:?} per kind after a {:?} warm-up (discarded), {} HTTP/2 connection(s) to {}\n\
             {}\n\
             baseline = grpc.health.v1.Health/Check, decide = vitrine.v1.Decision/Decide\n\
             latencies in µs from each request's intended send time (queueing included)\n\n",
            self.rate,
            self.duration,
            self.warmup,
            self.connections,
            self.addr,
            self.mode_text(),
        );
        out.push_str(&table(&[("baseline", &self.baseline), ("decide", &self.decide)]));
        out.push('\n');
        match p99_ratio(&self.decide, &self.baseline) {
            Some(r) => out.push_str(&format!("decide p99 / baseline p99 = {r:.2}\n")),
            None => out.push_str("decide p99 / baseline p99 = n/a (a phase had no successful answer)\n"),
        }
        if let Some(line) = self.background.as_ref().and_then(BackgroundStats::text) {
            out.push_str(&format!("background during decide: {line}\n"));
        }
        out.push_str(&format!(
            "pacer: latest tick handed out {:.3} ms after its intended time (already counted in the latencies)\n",
            self.pacer_max_lag.as_secs_f64() * 1e3
        ));
        out
    }

    /// The report for scripts: one JSON object.
    pub fn json(&self) -> Value {
        json!({
            "decide": self.decide.to_json(),
            "baseline": self.baseline.to_json(),
            "p99_ratio": p99_ratio(&self.decide, &self.baseline).map(round2),
            "mode": self.mode,
            "rate": self.rate,
            "duration_s": self.duration.as_secs_f64(),
            "warmup_s": self.warmup.as_secs_f64(),
            "connections": self.connections,
            "background": self.background.as_ref().map(BackgroundStats::to_json),
            "pacer_max_lag_us": u64::try_from(self.pacer_max_lag.as_micros()).unwrap_or(u64::MAX),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_from_intended_time() {
        let mut r = Recorder::new();
        let t0 = Instant::now();
        // 1000 requests, one per ms, answered after 1..=1000 µs.
        for i in 0..1000u64 {
            let intended = t0 + Duration::from_millis(i);
            r.record(intended, intended + Duration::from_micros(i + 1), Ok(()));
        }
        r.record(t0, t0 + Duration::from_millis(5), Err("Unavailable"));
        r.record(t0, t0, Err("Unavailable"));
        r.overloaded(t0, 2);
        r.unfinished(1);
        let s = r.summary();
        assert_eq!(s.requests, 1005);
        assert_eq!(s.ok, 1000);
        assert_eq!(s.p50_us, 500);
        assert_eq!(s.p90_us, 900);
        assert_eq!(s.p99_us, 990);
        assert_eq!(s.p999_us, 999);
        assert_eq!(s.max_us, 1000);
        // 1000 answers between t0 and t0 + 1000 ms.
        assert!((s.achieved_rps - 1000.0).abs() < 1.0, "{}", s.achieved_rps);
        assert_eq!(s.errors_total(), 5);
        assert_eq!(s.errors_text(), "ClientOverload=2 Unavailable=2 Unfinished=1");
        assert_eq!(code_name(tonic::Code::ResourceExhausted), "ResourceExhausted");
    }

    #[test]
    fn empty_phase_is_all_zero() {
        let s = Recorder::new().summary();
        assert_eq!(s, Summary::default());
        assert_eq!(s.errors_text(), "none");
        assert_eq!(p99_ratio(&s, &s), None);
    }

    #[test]
    fn json_shape() {
        let mut r = Recorder::new();
        let t0 = Instant::now();
        r.record(t0, t0 + Duration::from_micros(250), Ok(()));
        r.record(t0, t0 + Duration::from_micros(250), Err("NotFound"));
        let v = r.summary().to_json();
        for key in [
            "p50_us",
            "p90_us",
            "p99_us",
            "p999_us",
            "max_us",
            "achieved_rps",
            "errors",
            "errors_total",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["p99_us"], 250);
        assert_eq!(v["errors"], json!({"NotFound": 1}));
        assert_eq!(v["errors_total"], 1);
        let a = Summary {
            ok: 1,
            p99_us: 300,
            ..Summary::default()
        };
        let b = Summary {
            ok: 1,
            p99_us: 100,
            ..Summary::default()
        };
        assert_eq!(p99_ratio(&a, &b), Some(3.0));
        let t = table(&[("decide", &a), ("baseline", &b)]);
        assert_eq!(t.lines().count(), 3);
        assert!(t.lines().nth(1).unwrap().starts_with("decide "));
    }
}
