//! The admin HTTP server. For now: health. The admin API grows here under `/api/v1`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use crate::router::RouterStats;

/// What the HTTP handlers can see.
#[derive(Clone)]
pub struct AppState {
    /// Set once the router consumes.
    pub ready: Arc<AtomicBool>,
    /// Router counters.
    pub stats: Arc<RouterStats>,
}

/// The HTTP application.
pub fn app(state: AppState) -> Router {
    Router::new().route("/healthz", get(healthz)).route("/metrics", get(metrics)).with_state(state)
}

/// Router counters in the Prometheus text format.
async fn metrics(State(state): State<AppState>) -> String {
    let stats = &state.stats;
    let mut out = String::new();
    for (name, help, value) in [
        ("pigeon_letters_in_total", "Source letters read by the router.", &stats.letters_in),
        ("pigeon_letters_out_total", "Outputs handed to the producer.", &stats.letters_out),
        ("pigeon_dead_letters_total", "Letters and outputs the router dead-lettered.", &stats.dead_lettered),
        ("pigeon_in_flight_peak", "Most letters one partition had in flight at once.", &stats.in_flight_peak),
    ] {
        let kind = if name.ends_with("_total") { "counter" } else { "gauge" };
        let value = value.load(Ordering::Relaxed);
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
    }
    out
}

/// 200 once the router consumes, 503 before.
async fn healthz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    #[tokio::test]
    async fn healthz_answers_once_the_router_consumes() {
        let state = AppState { ready: Arc::new(AtomicBool::new(false)), stats: Arc::default() };
        let request = || Request::get("/healthz").body(Body::empty()).unwrap();
        let response = app(state.clone()).oneshot(request()).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        state.ready.store(true, Ordering::Release);
        let response = app(state).oneshot(request()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_show_the_router_counters() {
        let state = AppState { ready: Arc::new(AtomicBool::new(true)), stats: Arc::default() };
        state.stats.letters_in.store(7, Ordering::Relaxed);
        state.stats.in_flight_peak.store(3, Ordering::Relaxed);
        let response =
            app(state).oneshot(Request::get("/metrics").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(text.contains("\npigeon_letters_in_total 7\n"), "{text}");
        assert!(text.contains("# TYPE pigeon_in_flight_peak gauge\npigeon_in_flight_peak 3\n"), "{text}");
    }
}
