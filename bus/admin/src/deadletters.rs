//! `/api/v1/dead-letters`: what could not be delivered, its history, and the operator's
//! retry, edit and discard. Every change is audited.

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{AsOperator, AsViewer};
use super::error::{ApiError, ErrorBody};
use super::{ApiJson, ApiQuery, AppState, Page};
use pigeon_bus::deadletter::{
    Attempt, DeadLetter, DeadLetterFilter, ErrorKind, Selection, Status, StoredHeader,
};

/// A dead letter as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterView {
    /// Store id.
    pub id: i64,
    /// The letter's id.
    pub letter_id: String,
    /// The pigeon that carried it, when one matched.
    pub pigeon: Option<String>,
    /// That pigeon's version.
    pub pigeon_version: Option<i64>,
    /// Source topic.
    pub source_topic: String,
    /// Source partition.
    pub source_partition: i32,
    /// Source offset.
    pub source_offset: i64,
    /// The destination that failed, if the failure is about one.
    pub dest_topic: Option<String>,
    /// Its tag.
    pub dest_tag: Option<String>,
    /// Kafka key, as text (lossy if it is not UTF-8).
    pub key: Option<String>,
    /// Headers, as stored.
    #[schema(value_type = Vec<Object>)]
    pub headers: Vec<StoredHeader>,
    /// The payload, when it is JSON.
    pub payload: Option<serde_json::Value>,
    /// The payload as text (lossy), when it is not JSON.
    pub payload_text: Option<String>,
    /// What went wrong.
    pub error_kind: ErrorKind,
    /// The latest error.
    pub error_message: String,
    /// Delivery attempts so far (the router's first included).
    pub attempts: i32,
    /// Where it stands.
    pub status: Status,
    /// When the retrier takes it next (unix ms), if pending.
    pub next_attempt_at: Option<i64>,
    /// First stored (unix ms).
    pub created_at: i64,
    /// Last changed (unix ms).
    pub updated_at: i64,
}

impl From<DeadLetter> for DeadLetterView {
    fn from(d: DeadLetter) -> Self {
        let l = d.letter;
        let json = l.payload.as_deref().and_then(|p| serde_json::from_slice(p).ok());
        let payload_text = match (&json, &l.payload) {
            (None, Some(bytes)) => Some(String::from_utf8_lossy(bytes).into_owned()),
            _ => None,
        };
        Self {
            id: d.id,
            letter_id: l.letter_id,
            pigeon: l.pigeon_id,
            pigeon_version: l.pigeon_version,
            source_topic: l.source_topic,
            source_partition: l.source_partition,
            source_offset: l.source_offset,
            dest_topic: l.dest_topic,
            dest_tag: l.dest_tag,
            key: l.key.map(|k| String::from_utf8_lossy(&k).into_owned()),
            headers: l.headers,
            payload: json,
            payload_text,
            error_kind: l.error_kind,
            error_message: l.error_message,
            attempts: d.attempts,
            status: d.status,
            next_attempt_at: d.next_attempt_at,
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }
}

/// A dead letter with its history.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterDetail {
    /// The dead letter.
    pub letter: DeadLetterView,
    /// Every retry and its outcome, oldest first.
    pub attempts: Vec<Attempt>,
}

/// Filters and paging of the list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only this pigeon's.
    pub pigeon: Option<String>,
    /// Only in this status: pending, retrying, delivered, parked or discarded.
    pub status: Option<Status>,
    /// Only of this error kind: produce, handler, script, malformed, dictionary or internal.
    pub kind: Option<ErrorKind>,
    /// Only those stored at or after this time (unix ms).
    pub since: Option<i64>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Which dead letters to act on: `ids`, or every one `filter` matches (not both).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SelectionBody {
    /// These dead letters.
    pub ids: Option<Vec<i64>>,
    /// Every dead letter this matches.
    pub filter: Option<DeadLetterFilter>,
}

impl SelectionBody {
    fn selection(self) -> Result<Selection, ApiError> {
        match (self.ids, self.filter) {
            (Some(ids), None) if !ids.is_empty() && ids.len() <= 10_000 => Ok(Selection::Ids(ids)),
            (Some(_), None) => Err(ApiError::bad_request("ids must list 1 to 10000 dead letters")),
            (None, Some(filter)) => Ok(Selection::Filter(filter)),
            (Some(_), Some(_)) => Err(ApiError::bad_request("give ids or filter, not both")),
            (None, None) => Err(ApiError::bad_request("give ids or filter (an empty filter selects all)")),
        }
    }
}

/// How many dead letters an action changed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Changed {
    /// Pending or parked dead letters that changed (others are left alone).
    pub count: u64,
}

/// Dead letters, newest first.
#[utoipa::path(get, path = "/dead-letters", tag = "dead-letters", params(ListQuery),
    responses((status = 200, body = Page<DeadLetterView>), (status = 400, body = ErrorBody)),
    security(("token" = [])))]
pub async fn list(
    _: AsViewer,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Page<DeadLetterView>>, ApiError> {
    let limit = super::page_limit(q.limit)?;
    let before = super::id_cursor(q.cursor.as_deref())?;
    let filter =
        DeadLetterFilter { pigeon_id: q.pigeon, status: q.status, error_kind: q.kind, since: q.since };
    let items: Vec<DeadLetterView> = state
        .store
        .dead_letters(&filter, before, limit as u32 + 1)
        .await?
        .into_iter()
        .map(DeadLetterView::from)
        .collect();
    Ok(Json(Page::from_overfetch(items, limit, |d| d.id.to_string())))
}

/// One dead letter with its attempt history.
#[utoipa::path(get, path = "/dead-letters/{id}", tag = "dead-letters",
    params(("id" = i64, Path, description = "dead letter id")),
    responses((status = 200, body = DeadLetterDetail), (status = 404, body = ErrorBody)),
    security(("token" = [])))]
pub async fn get(
    _: AsViewer,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DeadLetterDetail>, ApiError> {
    let id = dead_letter_id(&id)?;
    let letter =
        state.store.dead_letter(id).await?.ok_or_else(|| ApiError::not_found(format!("dead letter {id}")))?;
    let attempts = state.store.dead_letter_attempts(id).await?;
    Ok(Json(DeadLetterDetail { letter: letter.into(), attempts }))
}

/// Redrive pending and parked dead letters now: a failed delivery is sent again as it was
/// (payload edits included); a letter a script or reading failed goes through the current
/// version of its pigeon.
#[utoipa::path(post, path = "/dead-letters/retry", tag = "dead-letters", request_body = SelectionBody,
    responses((status = 200, body = Changed), (status = 400, body = ErrorBody)),
    security(("token" = [])))]
pub async fn retry(
    AsOperator(caller): AsOperator,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<SelectionBody>,
) -> Result<Json<Changed>, ApiError> {
    let count = state.store.retry_dead_letters(&body.selection()?, &caller.name).await?;
    Ok(Json(Changed { count }))
}

/// Discard pending and parked dead letters (they are kept, marked discarded).
#[utoipa::path(post, path = "/dead-letters/discard", tag = "dead-letters", request_body = SelectionBody,
    responses((status = 200, body = Changed), (status = 400, body = ErrorBody)),
    security(("token" = [])))]
pub async fn discard(
    AsOperator(caller): AsOperator,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<SelectionBody>,
) -> Result<Json<Changed>, ApiError> {
    let count = state.store.discard_dead_letters(&body.selection()?, &caller.name).await?;
    Ok(Json(Changed { count }))
}

/// Replace a pending or parked dead letter's payload (any JSON value), to fix it before a
/// retry.
#[utoipa::path(put, path = "/dead-letters/{id}/payload", tag = "dead-letters",
    params(("id" = i64, Path, description = "dead letter id")),
    request_body = Object,
    responses((status = 200, body = DeadLetterView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("token" = [])))]
pub async fn edit(
    AsOperator(caller): AsOperator,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(payload): ApiJson<serde_json::Value>,
) -> Result<Json<DeadLetterView>, ApiError> {
    let id = dead_letter_id(&id)?;
    let bytes = serde_json::to_vec(&payload).map_err(ApiError::internal)?;
    if !state.store.edit_dead_letter(id, &bytes, &caller.name).await? {
        return Err(match state.store.dead_letter(id).await? {
            None => ApiError::not_found(format!("dead letter {id}")),
            Some(d) => ApiError::conflict(format!(
                "dead letter {id} is {}; only pending and parked ones can be edited",
                d.status
            )),
        });
    }
    let letter =
        state.store.dead_letter(id).await?.ok_or_else(|| ApiError::not_found(format!("dead letter {id}")))?;
    Ok(Json(letter.into()))
}

fn dead_letter_id(text: &str) -> Result<i64, ApiError> {
    text.parse().map_err(|_| ApiError::bad_request(format!("dead letter id {text:?} is not a number")))
}
