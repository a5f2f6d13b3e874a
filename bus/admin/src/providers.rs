//! `/providers`: the modules that registered, their instances' liveness and their capabilities.

use axum::extract::State;
use axum::Json;

use super::auth::AsViewer;
use super::error::{ApiError, ErrorBody};
use super::AppState;
use pigeon_bus::registry::{self, ProviderView};
use pigeon_bus::store::now_ms;

/// Every module that ever registered: live or not, with its instances (live, stale or left)
/// and capabilities (retired ones included). A capability is a destination `module/name`.
#[utoipa::path(get, path = "/providers", tag = "providers",
    responses((status = 200, body = Vec<ProviderView>), (status = 401, body = ErrorBody)),
    security(("token" = [])))]
pub async fn list(_: AsViewer, State(state): State<AppState>) -> Result<Json<Vec<ProviderView>>, ApiError> {
    let instances = state.store.module_instances().await?;
    let capabilities = state.store.capabilities().await?;
    Ok(Json(registry::providers(instances, capabilities, now_ms())))
}
