//! `/api/v1/dictionary`: the global field names with their types and aliases.

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{AsOperator, AsViewer};
use super::error::{ApiError, ErrorBody};
use super::{ApiJson, AppState};
use crate::dictionary::{self, Field};
use crate::store::{Drift, StoredField};

/// A dictionary field with its version.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FieldView {
    /// The field.
    #[serde(flatten)]
    pub field: Field,
    /// Version, bumped by every change.
    pub version: i64,
    /// When this version was saved (unix ms; 0 for the seeded vocabulary).
    pub updated_at: i64,
}

impl From<StoredField> for FieldView {
    fn from(f: StoredField) -> Self {
        Self { field: f.field, version: f.version, updated_at: f.updated_at }
    }
}

/// The whole dictionary, by name.
#[utoipa::path(get, path = "/dictionary", tag = "dictionary",
    responses((status = 200, body = Vec<FieldView>), (status = 401, body = ErrorBody)),
    security(("token" = [])))]
pub async fn list(_: AsViewer, State(state): State<AppState>) -> Result<Json<Vec<FieldView>>, ApiError> {
    Ok(Json(state.store.dictionary().await?.into_iter().map(FieldView::from).collect()))
}

/// Create or change a field (a new version; the same one if nothing changed).
#[utoipa::path(put, path = "/dictionary/{name}", tag = "dictionary", request_body = Field,
    params(("name" = String, Path, description = "field name")),
    responses((status = 200, body = FieldView), (status = 422, body = ErrorBody)),
    security(("token" = [])))]
pub async fn put(
    AsOperator(caller): AsOperator,
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(field): ApiJson<Field>,
) -> Result<Json<FieldView>, ApiError> {
    if field.name != name {
        return Err(ApiError::invalid(
            "invalid_field",
            "the body's name differs from the path's",
            vec![format!("name {:?} in the body, {name:?} in the path", field.name)],
        ));
    }
    let others: Vec<Field> = state.store.dictionary().await?.into_iter().map(|f| f.field).collect();
    dictionary::validate(&field, &others)
        .map_err(|problems| ApiError::invalid("invalid_field", "the field is invalid", problems))?;
    if state.store.save_field(&field, &caller.name).await?.changed {
        // Pigeons that hold letters to the dictionary pick the change up at once.
        super::pigeons::announce(&state, Vec::new(), &caller.name);
    }
    let saved = state.store.dictionary().await?.into_iter().find(|f| f.field.name == name);
    Ok(Json(saved.ok_or_else(|| ApiError::not_found(format!("field {name:?}")))?.into()))
}

/// Delete a field; answers it as it was.
#[utoipa::path(delete, path = "/dictionary/{name}", tag = "dictionary",
    params(("name" = String, Path, description = "field name")),
    responses((status = 200, body = FieldView), (status = 404, body = ErrorBody)),
    security(("token" = [])))]
pub async fn delete(
    AsOperator(caller): AsOperator,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<FieldView>, ApiError> {
    match state.store.delete_field(&name, &caller.name).await? {
        Some(deleted) => {
            super::pigeons::announce(&state, Vec::new(), &caller.name);
            Ok(Json(deleted.into()))
        }
        None => Err(ApiError::not_found(format!("field {name:?}"))),
    }
}

/// The drift report: top-level fields the dictionary does not know, per source topic, most
/// seen first. Counted by routers running pigeons in `normalize` or `enforce` mode (the only
/// ones that read payloads), every few seconds.
#[utoipa::path(get, path = "/dictionary/drift", tag = "dictionary",
    responses((status = 200, body = Vec<Drift>), (status = 401, body = ErrorBody)),
    security(("token" = [])))]
pub async fn drift(_: AsViewer, State(state): State<AppState>) -> Result<Json<Vec<Drift>>, ApiError> {
    Ok(Json(state.store.drift().await?))
}
