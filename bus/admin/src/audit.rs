//! `/api/v1/audit`: who changed what, when, with before and after.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::AsViewer;
use super::error::{ApiError, ErrorBody};
use super::{ApiQuery, AppState, Page};
use pigeon_bus::store::AuditEntry;

/// One recorded mutation.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditView {
    /// Increasing id.
    pub id: i64,
    /// When (unix ms).
    pub at: i64,
    /// Token name (or local tool) that acted.
    pub actor: String,
    /// What, e.g. `pigeon.update`.
    pub action: String,
    /// On what, e.g. `pigeon/gift-progress`.
    pub target: String,
    /// Before, if it existed.
    pub before: Option<serde_json::Value>,
    /// After, if it still exists.
    pub after: Option<serde_json::Value>,
}

impl From<AuditEntry> for AuditView {
    fn from(a: AuditEntry) -> Self {
        Self {
            id: a.id,
            at: a.at,
            actor: a.actor,
            action: a.action,
            target: a.target,
            before: a.before,
            after: a.after,
        }
    }
}

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
    let items: Vec<AuditView> =
        state.store.audit(before, limit as u32 + 1).await?.into_iter().map(AuditView::from).collect();
    Ok(Json(Page::from_overfetch(items, limit, |a| a.id.to_string())))
}
