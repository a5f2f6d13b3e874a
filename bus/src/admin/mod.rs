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
    Router::new()
        .route("/healthz", get(healthz))
        .with_state(state)
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
        let state = AppState {
            ready: Arc::new(AtomicBool::new(false)),
            stats: Arc::default(),
        };
        let request = || Request::get("/healthz").body(Body::empty()).unwrap();
        let response = app(state.clone()).oneshot(request()).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        state.ready.store(true, Ordering::Release);
        let response = app(state).oneshot(request()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}
