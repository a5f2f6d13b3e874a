//! `/api/v1/letters/{id}/trace` and `/api/v1/letters/trace`: a letter's path through the bus
//! (where it was read, the pigeons and outputs, acknowledgement, dead letters, archive row,
//! replays, modules' receipts), by id, or for the archived letters a business key and a time
//! window select.

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::AsViewer;
use super::error::{ApiError, ErrorBody};
use super::{ApiJson, AppState};
use pigeon_bus::archive::ArchiveQuery;
use pigeon_bus::trace::{trace, LetterTrace};

/// The most letters one trace request follows.
pub const MAX_TRACES: u32 = 20;
/// The longest letter id looked up.
const MAX_ID: usize = 200;

/// A letter's path.
#[utoipa::path(get, path = "/letters/{letter_id}/trace", tag = "letters",
    params(("letter_id" = String, Path, description = "letter id")),
    responses((status = 200, body = LetterTrace), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("token" = [])))]
pub async fn get(
    _: AsViewer,
    State(state): State<AppState>,
    Path(letter_id): Path<String>,
) -> Result<Json<LetterTrace>, ApiError> {
    let letter_id = letter_id.trim();
    if letter_id.is_empty() || letter_id.len() > MAX_ID {
        return Err(ApiError::invalid(
            "invalid_letter_id",
            "a letter id is 1 to 200 bytes",
            vec![format!("{} bytes given", letter_id.len())],
        ));
    }
    let found = traced(&state, letter_id).await?;
    let nothing = found.source.is_none()
        && found.dead_letters.is_empty()
        && found.archive.is_none()
        && found.receipts.is_empty();
    if nothing {
        let why = found.notes.join("; ");
        return Err(ApiError::not_found(format!("letter {letter_id:?} ({why})")));
    }
    Ok(Json(found))
}

/// Which archived letters to trace.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TraceRequest {
    /// The letters: a time window, and business keys, a topic, a tag or an archive pigeon.
    pub query: ArchiveQuery,
    /// At most this many (default and most: 20).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// The paths of the archived letters a query selects, oldest first.
#[utoipa::path(post, path = "/letters/trace", tag = "letters", request_body = TraceRequest,
    responses((status = 200, body = Vec<LetterTrace>), (status = 422, body = ErrorBody)),
    security(("token" = [])))]
pub async fn search(
    _: AsViewer,
    State(state): State<AppState>,
    ApiJson(request): ApiJson<TraceRequest>,
) -> Result<Json<Vec<LetterTrace>>, ApiError> {
    request
        .query
        .validate()
        .map_err(|problems| ApiError::invalid("invalid_query", "the query is invalid", problems))?;
    let limit = request.limit.unwrap_or(MAX_TRACES);
    if !(1..=MAX_TRACES).contains(&limit) {
        return Err(ApiError::invalid(
            "invalid_limit",
            "limit is 1 to 20 letters",
            vec![format!("limit {limit}")],
        ));
    }
    let letters = state.store.archive().archived(&request.query, None, limit).await?;
    let mut traces = Vec::with_capacity(letters.len());
    for letter in letters {
        traces.push(traced(&state, &letter.letter_id).await?);
    }
    Ok(Json(traces))
}

async fn traced(state: &AppState, letter_id: &str) -> Result<LetterTrace, ApiError> {
    let routes = state.tables.as_ref().map(|t| t.current());
    Ok(trace(state.store.as_ref(), routes, state.lookup.clone(), letter_id).await?)
}
