//! `/api/v1/archive` and `/api/v1/replays`: search the archive, and replay jobs (counted and
//! sampled first with a dry run, then run server-side, listable and cancellable).

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{AsOperator, AsViewer};
use super::error::{ApiError, ErrorBody};
use super::{page_limit, ApiJson, AppState, Page};
use pigeon_bus::archive::{ArchiveQuery, ArchivedLetter, KeyField, Position, ReplayJob, ReplaySpec};
use pigeon_bus::deadletter::StoredHeader;

/// An archived letter.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ArchivedView {
    /// The letter id.
    pub letter_id: String,
    /// The archive pigeon that kept it.
    pub pigeon: String,
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// The letter's time (unix ms).
    pub time: i64,
    /// Its tag.
    pub tag: String,
    /// Business keys found in its payload.
    pub keys: BTreeMap<KeyField, String>,
    /// Kafka key, as text (lossy if it is not UTF-8).
    pub key: Option<String>,
    /// Every header.
    #[schema(value_type = Vec<Object>)]
    pub headers: Vec<StoredHeader>,
    /// The payload, when it is JSON.
    pub payload: Option<serde_json::Value>,
    /// The payload as text (lossy), when it is not JSON.
    pub payload_text: Option<String>,
    /// When it was archived (unix ms).
    pub archived_at: i64,
}

impl From<ArchivedLetter> for ArchivedView {
    fn from(letter: ArchivedLetter) -> Self {
        let json = letter.payload.as_deref().and_then(|p| serde_json::from_slice(p).ok());
        let payload_text = match json {
            Some(_) => None,
            None => letter.payload.as_deref().map(|p| String::from_utf8_lossy(p).into_owned()),
        };
        Self {
            letter_id: letter.letter_id,
            pigeon: letter.pigeon_id,
            topic: letter.position.topic,
            partition: letter.position.partition,
            offset: letter.position.offset,
            time: letter.position.time,
            tag: letter.tag,
            keys: letter.keys,
            key: letter.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned()),
            headers: letter.headers,
            payload: json,
            payload_text,
            archived_at: letter.archived_at,
        }
    }
}

/// A search of the archive.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// Which letters.
    pub query: ArchiveQuery,
    /// Letters per page (default 50, at most 500).
    #[serde(default)]
    pub limit: Option<u32>,
    /// From a previous page's `next_cursor`.
    #[serde(default)]
    pub cursor: Option<String>,
}

/// Archived letters in archive order (time, then Kafka position), a page at a time.
#[utoipa::path(post, path = "/archive/search", tag = "archive", request_body = SearchRequest,
    responses((status = 200, body = Page<ArchivedView>), (status = 422, body = ErrorBody)),
    security(("token" = [])))]
pub async fn search(
    _: AsViewer,
    State(state): State<AppState>,
    ApiJson(request): ApiJson<SearchRequest>,
) -> Result<Json<Page<ArchivedView>>, ApiError> {
    check_query(&request.query)?;
    let limit = page_limit(request.limit)?;
    let after = request.cursor.as_deref().map(parse_cursor).transpose()?;
    let letters = state.store.archive().archived(&request.query, after.as_ref(), (limit + 1) as u32).await?;
    let page = Page::from_overfetch(letters, limit, |l| cursor(&l.position));
    Ok(Json(Page {
        items: page.items.into_iter().map(ArchivedView::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// One archived letter.
#[utoipa::path(get, path = "/archive/{letter_id}", tag = "archive",
    params(("letter_id" = String, Path, description = "letter id")),
    responses((status = 200, body = ArchivedView), (status = 404, body = ErrorBody)),
    security(("token" = [])))]
pub async fn get(
    _: AsViewer,
    State(state): State<AppState>,
    Path(letter_id): Path<String>,
) -> Result<Json<ArchivedView>, ApiError> {
    match state.store.archive().archived_letter(&letter_id).await? {
        Some(letter) => Ok(Json(letter.into())),
        None => Err(ApiError::not_found(format!("archived letter {letter_id:?}"))),
    }
}

/// What a replay would send.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DryRun {
    /// Letters the replay would send.
    pub count: i64,
    /// The first of them, in the order they would be sent.
    pub sample: Vec<ArchivedView>,
}

/// How many letters a dry run shows.
pub const SAMPLE: u32 = 5;

/// Count and sample what a replay would send; sends nothing.
#[utoipa::path(post, path = "/replays/dry-run", tag = "archive", request_body = ReplaySpec,
    responses((status = 200, body = DryRun), (status = 422, body = ErrorBody)),
    security(("token" = [])))]
pub async fn dry_run(
    _: AsViewer,
    State(state): State<AppState>,
    ApiJson(spec): ApiJson<ReplaySpec>,
) -> Result<Json<DryRun>, ApiError> {
    check_spec(&spec)?;
    let archive = state.store.archive();
    let count = archive.count_archived(&spec.query).await?;
    let sample = archive.archived(&spec.query, None, SAMPLE).await?;
    Ok(Json(DryRun { count, sample: sample.into_iter().map(ArchivedView::from).collect() }))
}

/// Start a replay job: it runs on the server, from the archive's order, at the given rate.
#[utoipa::path(post, path = "/replays", tag = "archive", request_body = ReplaySpec,
    responses((status = 201, body = ReplayJob), (status = 422, body = ErrorBody)),
    security(("token" = [])))]
pub async fn create(
    AsOperator(caller): AsOperator,
    State(state): State<AppState>,
    ApiJson(spec): ApiJson<ReplaySpec>,
) -> Result<(StatusCode, Json<ReplayJob>), ApiError> {
    check_spec(&spec)?;
    let archive = state.store.archive();
    let total = archive.count_archived(&spec.query).await?;
    let id = archive.create_replay(&spec, total, &caller.name).await?;
    let job = archive.replay_job(id).await?.ok_or_else(|| ApiError::not_found(format!("replay job {id}")))?;
    Ok((StatusCode::CREATED, Json(job)))
}

/// How many replay jobs to list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Jobs, newest first (default 50, at most 500).
    pub limit: Option<u32>,
}

/// Replay jobs, newest first.
#[utoipa::path(get, path = "/replays", tag = "archive", params(ListParams),
    responses((status = 200, body = Vec<ReplayJob>)),
    security(("token" = [])))]
pub async fn list(
    _: AsViewer,
    State(state): State<AppState>,
    Query(params): Query<ListParams>,
) -> Result<Json<Vec<ReplayJob>>, ApiError> {
    let limit = page_limit(params.limit)?;
    Ok(Json(state.store.archive().replay_jobs(limit as u32).await?))
}

/// One replay job: where it stands.
#[utoipa::path(get, path = "/replays/{id}", tag = "archive",
    params(("id" = i64, Path, description = "job id")),
    responses((status = 200, body = ReplayJob), (status = 404, body = ErrorBody)),
    security(("token" = [])))]
pub async fn job(
    _: AsViewer,
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<ReplayJob>, ApiError> {
    match state.store.archive().replay_job(id).await? {
        Some(job) => Ok(Json(job)),
        None => Err(ApiError::not_found(format!("replay job {id}"))),
    }
}

/// Cancel a pending or running job; its runner stops after the page in flight.
#[utoipa::path(post, path = "/replays/{id}/cancel", tag = "archive",
    params(("id" = i64, Path, description = "job id")),
    responses((status = 200, body = ReplayJob), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("token" = [])))]
pub async fn cancel(
    AsOperator(caller): AsOperator,
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<ReplayJob>, ApiError> {
    let archive = state.store.archive();
    let cancelled = archive.cancel_replay(id, &caller.name).await?;
    let job = archive.replay_job(id).await?.ok_or_else(|| ApiError::not_found(format!("replay job {id}")))?;
    if !cancelled {
        return Err(ApiError::conflict(format!(
            "replay job {id} is {}; only pending and running jobs can be cancelled",
            job.status.as_str()
        )));
    }
    Ok(Json(job))
}

fn check_query(query: &ArchiveQuery) -> Result<(), ApiError> {
    query
        .validate()
        .map_err(|problems| ApiError::invalid("invalid_query", "the archive query is invalid", problems))
}

fn check_spec(spec: &ReplaySpec) -> Result<(), ApiError> {
    spec.validate().map_err(|problems| ApiError::invalid("invalid_replay", "the replay is invalid", problems))
}

/// A page cursor: the position of the last letter shown.
fn cursor(position: &Position) -> String {
    format!("{}/{}/{}/{}", position.time, position.partition, position.offset, position.topic)
}

fn parse_cursor(text: &str) -> Result<Position, ApiError> {
    let bad = || ApiError::bad_request(format!("cursor {text:?} is not one this API gave"));
    let mut parts = text.splitn(4, '/');
    let mut next = || parts.next().ok_or_else(bad);
    let time = next()?.parse().map_err(|_| bad())?;
    let partition = next()?.parse().map_err(|_| bad())?;
    let offset = next()?.parse().map_err(|_| bad())?;
    let topic = next()?.to_owned();
    Ok(Position { time, topic, partition, offset })
}
