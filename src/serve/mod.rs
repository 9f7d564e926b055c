//! Serve owns the HTTP surface of a running pipeline: `/metrics` in the
//! Prometheus text format, `/healthz` (the process is alive and its threads
//! run) and `/readyz` (the dataset is open, partitions are assigned and the
//! sink is not stalled).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;

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

/// Most connections served at once; more are closed on accept. The HTTP
/// surface shares the process's file descriptors with the sink and Kafka.
pub const MAX_CONNECTIONS: usize = 64;
/// A client must send its request headers within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed after this long, kept alive or not: a scraper
/// reconnects, an idle holder of a slot does not keep it.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Serves `app` on `listener` with a header timeout and a connection cap,
/// which `axum::serve` does not offer: a neighbour on the network that opens
/// connections and sends nothing would otherwise hold them, and descriptors,
/// for ever.
pub async fn run(listener: tokio::net::TcpListener, app: Router, metrics: Arc<Metrics>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    metrics.http_connections_limit.set(MAX_CONNECTIONS as i64);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, mostly: wait for some to close.
                tracing::warn!(error = %e, "accepting an HTTP connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.http_connections_refused.inc();
            drop(stream);
            continue;
        };
        metrics.http_connections.inc();
        let service = TowerToHyperService::new(app.clone());
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
            metrics.http_connections.dec();
            drop(slot);
        });
    }
}
