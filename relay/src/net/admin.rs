//! The admin HTTP listener: Prometheus `/metrics`, `/healthz`, `/readyz`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

/// Lines services add to `/readyz` (the directory's reachability, say): each is called on
/// every request. They inform; readiness itself is the drain flag.
pub type StatusBoard = Arc<std::sync::Mutex<Vec<Arc<dyn Fn() -> String + Send + Sync>>>>;

#[derive(Clone)]
struct AdminState {
    prometheus: PrometheusHandle,
    ready: Arc<AtomicBool>,
    status: StatusBoard,
}

pub fn router(prometheus: PrometheusHandle, ready: Arc<AtomicBool>, status: StatusBoard) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AdminState {
            prometheus,
            ready,
            status,
        })
}

async fn metrics(State(s): State<AdminState>) -> String {
    // Refreshed on every scrape: gauges that are not updated expire (see the exporter's idle
    // timeout in node.rs).
    let ready = if s.ready.load(Ordering::Relaxed) {
        1.0
    } else {
        0.0
    };
    ::metrics::gauge!("meridian_ready").set(ready);
    s.prometheus.render()
}

async fn readyz(State(s): State<AdminState>) -> (StatusCode, String) {
    let (code, mut text) = if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready (starting or draining)\n".to_string(),
        )
    };
    let lines: Vec<_> = s.status.lock().map(|l| l.clone()).unwrap_or_default();
    for line in lines {
        text.push_str(&line());
        text.push('\n');
    }
    (code, text)
}
