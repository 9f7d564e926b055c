//! Serve owns the HTTP surface of a running pipeline: `/metrics` in the
//! Prometheus text format, `/healthz` (the process is alive and its threads
//! run) and `/readyz` (the dataset is open, partitions are assigned and the
//! sink is not stalled).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// Liveness and readiness, set by the pipeline.
#[derive(Default)]
pub struct Health {
    pub alive: AtomicBool,
    pub ready: AtomicBool,
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

pub fn router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, health })
}

async fn metrics_handler(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

fn status(ok: bool, what: &'static str) -> (StatusCode, &'static str) {
    if ok {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, what)
    }
}

async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    status(s.health.alive.load(Ordering::SeqCst), "pipeline stopped\n")
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    status(
        s.health.ready.load(Ordering::SeqCst),
        "not ready: no partitions assigned yet, or the sink is stalled (agentaudit_sink_stalled)\n",
    )
}

/// Binds the listener; returns the bound address (useful with port 0).
pub async fn bind(addr: SocketAddr) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
