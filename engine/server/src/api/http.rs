//! The operational HTTP surface beside gRPC: `/metrics` (Prometheus text),
//! `/healthz` (the process answers) and `/readyz` (it should get traffic),
//! and the rule studio at `/studio` (`crate::api::studio`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

use hyper_util::rt::{TokioIo, TokioTimer};

use crate::api::connections::{accept_loop, ConnectionLimits};
use crate::metrics::{self, LatencyHistogram, Port};
use crate::state::StorageHealth;

/// What the probes read.
#[derive(Debug, Clone)]
pub struct Probes {
    /// Set once start-up is done; cleared when shutdown begins.
    pub ready: Arc<AtomicBool>,
    /// A storage fault makes the replica not ready for good (with its reason).
    pub storage: StorageHealth,
    /// The Prometheus recorder's handle.
    pub metrics: PrometheusHandle,
    /// Decide latency, kept outside the recorder (see `LatencyHistogram`).
    pub decide_latency: Arc<LatencyHistogram>,
    /// The rule studio at `/studio` (`None`: `--no-studio`).
    pub studio: Option<crate::api::studio::Studio>,
}

/// The router of the metrics address.
pub fn router(probes: Probes) -> Router {
    let studio = probes.studio.clone();
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(probes);
    match studio {
        Some(studio) => router.merge(crate::api::studio::routes(studio)),
        None => router,
    }
}

async fn metrics(State(p): State<Probes>) -> impl IntoResponse {
    let mut body = p.metrics.render();
    if !body.is_empty() && !body.ends_with("\n\n") {
        body.push('\n');
    }
    p.decide_latency
        .render(metrics::DECIDE_DURATION, metrics::DECIDE_DURATION_HELP, &mut body);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        body,
    )
}

async fn readyz(State(p): State<Probes>) -> impl IntoResponse {
    if let Some(fault) = p.storage.fault() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: storage fault: {fault}\n"),
        )
    } else if p.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_string())
    }
}

/// Serves the probes router on `listener` (HTTP/1.1, over TLS with `tls`) until `shutdown`
/// completes, with the connection bounds of `limits`; a request's headers
/// must arrive within the handshake timeout.
pub async fn serve(
    listener: tokio::net::TcpListener,
    probes: Probes,
    limits: ConnectionLimits,
    tls: Option<crate::api::tls::Acceptor>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use tonic::codegen::Service as _;

    let router = router(probes);
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.handshake_timeout);
    accept_loop(
        listener,
        Port::Http,
        limits,
        PROBE_DRAIN,
        tls,
        shutdown,
        move |stream, activity| {
            let router = router.clone();
            let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let call = activity.begin();
                let mut router = router.clone();
                async move {
                    let response = router.call(request).await;
                    drop(call);
                    response
                }
            });
            http1.serve_connection(TokioIo::new(stream), service)
        },
    )
    .await;
}

/// How long a scrape or probe in flight may take to finish at shutdown.
const PROBE_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);
