//! The operational HTTP surface beside gRPC: `/metrics` (Prometheus text),
//! `/healthz` (the process answers) and `/readyz` (it should get traffic).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

/// What the probes read.
#[derive(Debug, Clone)]
pub struct Probes {
    /// Set once start-up is done; cleared when shutdown begins.
    pub ready: Arc<AtomicBool>,
    /// The Prometheus recorder's handle.
    pub metrics: PrometheusHandle,
}

/// The router of the metrics address.
pub fn router(probes: Probes) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(probes)
}

async fn metrics(State(p): State<Probes>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        p.metrics.render(),
    )
}

async fn readyz(State(p): State<Probes>) -> impl IntoResponse {
    if p.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
