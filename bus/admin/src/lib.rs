//! The admin HTTP server: health and metrics, and the admin API under `/api/v1` with its
//! OpenAPI document at `/api/v1/openapi.json`.
//!
//! Every API route is mounted through `utoipa_axum::routes!`, which documents it from the same
//! handler, so the document and the router cannot drift apart.

pub mod archive;
pub mod audit;
pub mod auth;
pub mod deadletters;
pub mod dictionary;
pub mod error;
pub mod fly;
pub mod gate;
pub mod letters;
pub mod pigeons;
pub mod providers;
pub mod stats;
pub mod tokens;
pub mod ui;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;

use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use self::error::ApiError;
use pigeon_bus::router::RouterStats;
use pigeon_bus::store::Store;

/// Largest request body the API reads.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the HTTP handlers can see.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Set once the router consumes.
    pub ready: Arc<AtomicBool>,
    /// Router counters.
    pub stats: Arc<RouterStats>,
    /// Retrier counters.
    pub retrier: Arc<pigeon_bus::retrier::RetrierStats>,
    /// Archiver counters.
    pub archiver: Arc<pigeon_bus::archive::archiver::ArchiverStats>,
    /// Replay runner counters.
    pub replays: Arc<pigeon_bus::archive::replay::ReplayStats>,
    /// Source topic settings: their declared schemas.
    pub sources: Arc<std::collections::BTreeMap<String, pigeon_bus::config::SourceConfig>>,
    /// Sends flown letters (`POST /fly`); absent where the bus has no Kafka.
    pub producer: Option<rdkafka::producer::FutureProducer>,
    /// The watcher's route tables (`POST /fly` flies through them).
    pub tables: Option<pigeon_bus::control::Tables>,
    /// Which roles run and which are down.
    pub health: Arc<pigeon_bus::supervise::Health>,
    /// The threads the API's scripts run on.
    pub scripts: gate::ScriptGate,
    /// Fired when the instance stops: it drains, and is no longer ready.
    pub draining: tokio_util::sync::CancellationToken,
    /// A client that asks the brokers for metadata, whatever roles run: `/readyz` checks
    /// that Kafka answers with it (absent where the bus has no Kafka).
    pub kafka: Option<Arc<rdkafka::consumer::BaseConsumer>>,
    /// How letter traces ask Kafka (absent where the bus has no Kafka).
    pub lookup: Option<pigeon_bus::trace::KafkaLookup>,
}

/// One page of a list, and the cursor of the next (absent on the last page).
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// A page from `limit + 1` fetched items: the extra one only says another page follows,
    /// whose cursor is `cursor_of` the last item kept.
    pub fn from_overfetch(mut items: Vec<T>, limit: usize, cursor_of: impl Fn(&T) -> String) -> Self {
        let next_cursor = (items.len() > limit).then(|| {
            items.truncate(limit);
            cursor_of(&items[limit - 1])
        });
        Self { items, next_cursor }
    }
}

/// Reads a cursor that is the id of the last item of the previous page.
pub fn id_cursor(cursor: Option<&str>) -> Result<Option<i64>, ApiError> {
    cursor
        .map(|c| {
            c.parse::<i64>().map_err(|_| ApiError::bad_request(format!("cursor {c:?} is not one we gave")))
        })
        .transpose()
}

/// Validates a requested page size.
pub fn page_limit(limit: Option<u32>) -> Result<usize, ApiError> {
    match limit.unwrap_or(50) {
        n @ 1..=500 => Ok(n as usize),
        n => Err(ApiError::bad_request(format!("limit must be 1 to 500, got {n}"))),
    }
}

/// JSON body whose rejections use the API's error shape.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// Query string whose rejections use the API's error shape.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

#[derive(OpenApi)]
#[openapi(
    info(title = "Pigeon admin API", description = "Manage the Pigeon event-routing bus."),
    modifiers(&BearerAuth),
    tags((name = "pigeons", description = "Routes"), (name = "tokens", description = "API tokens"),
         (name = "dead-letters", description = "Failed deliveries: retry, edit, discard"),
         (name = "audit", description = "Who changed what"),
         (name = "providers", description = "Modules, their instances and capabilities"),
         (name = "fly", description = "Modules fly letters to pigeons"),
         (name = "dictionary", description = "The field names every module agrees on"),
         (name = "archive", description = "Archived letters: search, and replay jobs"),
         (name = "letters", description = "A letter's path through the bus"),
         (name = "stats", description = "What the pigeons did, cluster-wide"))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("token", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// The API routes and their OpenAPI document, from one source.
pub fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let v1 = OpenApiRouter::new()
        .routes(routes!(pigeons::list, pigeons::create))
        .routes(routes!(pigeons::validate))
        .routes(routes!(pigeons::apply))
        .routes(routes!(pigeons::get, pigeons::update, pigeons::delete))
        .routes(routes!(pigeons::enable))
        .routes(routes!(pigeons::disable))
        .routes(routes!(pigeons::versions))
        .routes(routes!(pigeons::test))
        .routes(routes!(pigeons::test_unsaved))
        .routes(routes!(tokens::list, tokens::create))
        .routes(routes!(tokens::revoke))
        .routes(routes!(deadletters::list))
        .routes(routes!(stats::backlog))
        .routes(routes!(stats::pigeons))
        .routes(routes!(stats::me))
        .routes(routes!(deadletters::get))
        .routes(routes!(deadletters::retry))
        .routes(routes!(deadletters::discard))
        .routes(routes!(deadletters::edit))
        .routes(routes!(audit::list))
        .routes(routes!(providers::list))
        .routes(routes!(fly::fly))
        .routes(routes!(dictionary::list))
        .routes(routes!(dictionary::put, dictionary::delete))
        .routes(routes!(dictionary::drift))
        .routes(routes!(dictionary::schemas))
        .routes(routes!(archive::search))
        .routes(routes!(letters::get))
        .routes(routes!(letters::search))
        .routes(routes!(archive::get))
        .routes(routes!(archive::list, archive::create))
        .routes(routes!(archive::dry_run))
        .routes(routes!(archive::job))
        .routes(routes!(archive::cancel));
    OpenApiRouter::with_openapi(ApiDoc::openapi()).nest("/api/v1", v1).split_for_parts()
}

/// The HTTP application: health and metrics, and the admin API when `with_api` (the admin
/// role).
pub fn app(state: AppState, with_api: bool) -> Router {
    let mut app = Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    if with_api {
        let (api, doc) = api();
        let doc = Arc::new(doc);
        app = app
            .route("/api/v1/openapi.json", get(move || async move { Json(doc.as_ref().clone()) }))
            .merge(limited(api))
            .merge(ui::routes());
    }
    harden(app.fallback(not_found).with_state(state))
}

/// API requests the bus handles at once; past it, 429 at once (health and metrics are not
/// counted).
pub const MAX_CONCURRENT_REQUESTS: usize = 64;
/// How long an API request may take before it is answered 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The API's routes, bounded: [`MAX_CONCURRENT_REQUESTS`] at once (more are refused, not
/// queued) and [`REQUEST_TIMEOUT`] each.
fn limited(api: Router<AppState>) -> Router<AppState> {
    use tower::ServiceBuilder;
    let refused = |error: tower::BoxError| async move {
        if error.is::<tower::load_shed::error::Overloaded>() {
            ApiError::too_many_requests(format!(
                "the bus is handling {MAX_CONCURRENT_REQUESTS} requests; try again shortly"
            ))
        } else if error.is::<tower::timeout::error::Elapsed>() {
            ApiError::unavailable(format!("the request took longer than {} s", REQUEST_TIMEOUT.as_secs()))
        } else {
            ApiError::internal(error)
        }
    };
    api.layer(
        ServiceBuilder::new()
            .layer(axum::error_handling::HandleErrorLayer::new(refused))
            .timeout(REQUEST_TIMEOUT)
            .load_shed()
            .layer(tower::limit::GlobalConcurrencyLimitLayer::new(MAX_CONCURRENT_REQUESTS)),
    )
}

/// What wraps every route: the body limit, and a handler that panics answers 500 in the usual
/// error shape (logged) while the server goes on.
fn harden(app: Router) -> Router {
    app.layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(error::panicked))
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("route {}", uri.path()))
}

/// Prometheus text from the process's recorder (`pigeon_bus::prometheus`): every role's series
/// and the pigeons'. Help text, types and units come with the series.
async fn metrics() -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    let body = pigeon_bus::prometheus::handle().render();
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body)
}

/// 200 `live` while the process serves HTTP (a liveness probe: restart it when this fails).
async fn livez() -> &'static str {
    "live\n"
}

/// How long `/readyz` waits for the store and for Kafka.
const READY_WITHIN: Duration = Duration::from_secs(2);

/// 200 `ready` while this instance can reach the store and Kafka and is not draining; 503
/// saying which is not, one line each. A router that holds no partitions (more instances than
/// partitions) is ready: it takes partitions over when another leaves.
async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    let mut problems = Vec::new();
    if state.draining.is_cancelled() {
        problems.push("draining: the instance is stopping".to_owned());
    }
    match tokio::time::timeout(READY_WITHIN, state.store.ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => problems.push(format!("store: {e}")),
        Err(_) => problems.push(format!("store: no answer within {} s", READY_WITHIN.as_secs())),
    }
    if let Some(kafka) = state.kafka.clone() {
        // A metadata request for one topic: the brokers answer, whatever the topic's state.
        let asked = tokio::task::spawn_blocking(move || {
            kafka.fetch_metadata(Some(pigeon_bus::route::INGRESS), READY_WITHIN).map(|_| ())
        })
        .await;
        match asked {
            Ok(Ok(())) => {}
            Ok(Err(e)) => problems.push(format!("kafka: {e}")),
            Err(e) => problems.push(format!("kafka: the check failed: {e}")),
        }
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready\n".into())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, problems.iter().map(|p| format!("{p}\n")).collect())
    }
}

/// 200 once the router consumes, 503 before.
/// 200 `ok` while every role runs; 503 naming each role that is down (it is being started
/// again) and why, or `starting` before the router consumes.
async fn healthz(State(state): State<AppState>) -> (StatusCode, String) {
    let down = state.health.down();
    if !down.is_empty() {
        let lines: String = down
            .iter()
            .map(|(role, s)| {
                let error = s.error.as_deref().unwrap_or("stopped");
                format!("down: {role} (started again {} times): {error}\n", s.restarts)
            })
            .collect();
        return (StatusCode::SERVICE_UNAVAILABLE, lines);
    }
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ok\n".into())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n".into())
    }
}

#[cfg(test)]
mod tests;
