//! `/api/v1/audit`: who changed what, when, with before and after.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use super::auth::AsViewer;
use super::error::{ApiError, ErrorBody};
use super::{ApiQuery, AppState, Page};

/// One recorded mutation (the store's `AuditEntry`, named `AuditView` in the OpenAPI document).
pub use pigeon_bus::store::AuditEntry as AuditView;

/// Paging of the audit log.
#[derive(Debug, Deserialize, IntoParams)]
pub struct AuditQuery {
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// The audit log, newest first.
#[utoipa::path(get, path = "/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = Page<AuditView>), (status = 401, body = ErrorBody)),
    security(("token" = [])))]
pub async fn list(
    _: AsViewer,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Page<AuditView>>, ApiError> {
    let limit = super::page_limit(q.limit)?;
    let before = super::id_cursor(q.cursor.as_deref())?;
    let items: Vec<AuditView> = state.store.audit(before, limit as u32 + 1).await?;
    Ok(Json(Page::from_overfetch(items, limit, |a| a.id.to_string())))
}
