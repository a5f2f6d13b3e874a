//! `/api/v1/tokens`: token management, for admins.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::AsAdmin;
use super::error::{ApiError, ErrorBody};
use super::{ApiJson, AppState};
use pigeon_bus::store::{NewToken, Token};
use pigeon_bus::token::{self, Role};

/// A token as listed: never its value.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    /// Name.
    pub name: String,
    /// Role.
    #[schema(value_type = String, example = "operator")]
    pub role: Role,
    /// Created (unix ms).
    pub created_at: i64,
    /// Created by.
    pub created_by: String,
    /// Revoked (unix ms), if it was.
    pub revoked_at: Option<i64>,
}

impl From<Token> for TokenView {
    fn from(t: Token) -> Self {
        Self {
            name: t.name,
            role: t.role,
            created_at: t.created_at,
            created_by: t.created_by,
            revoked_at: t.revoked_at,
        }
    }
}

/// A token to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// Unique name, never reused.
    pub name: String,
    /// `viewer`, `operator` or `admin`.
    #[schema(value_type = String, example = "operator")]
    pub role: Role,
}

/// A created token: the only time its value is shown.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    /// Name.
    pub name: String,
    /// Role.
    #[schema(value_type = String)]
    pub role: Role,
    /// The secret value; keep it, it is not stored.
    pub token: String,
}

/// List tokens.
#[utoipa::path(get, path = "/tokens", tag = "tokens",
    responses((status = 200, body = Vec<TokenView>), (status = 403, body = ErrorBody)),
    security(("token" = [])))]
pub async fn list(_: AsAdmin, State(state): State<AppState>) -> Result<Json<Vec<TokenView>>, ApiError> {
    Ok(Json(state.store.tokens().await?.into_iter().map(TokenView::from).collect()))
}

/// Create a token.
#[utoipa::path(post, path = "/tokens", tag = "tokens", request_body = CreateToken,
    responses((status = 201, body = CreatedToken), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("token" = [])))]
pub async fn create(
    AsAdmin(caller): AsAdmin,
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CreateToken>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    token::validate_name(&request.name)
        .map_err(|e| ApiError::invalid("invalid_token", e.clone(), vec![e]))?;
    let value = token::generate();
    let new = NewToken { name: request.name.clone(), role: request.role, hash: token::hash(&value) };
    state.store.create_token(&new, &caller.name).await?;
    Ok((StatusCode::CREATED, Json(CreatedToken { name: request.name, role: request.role, token: value })))
}

/// Revoke a token.
#[utoipa::path(delete, path = "/tokens/{name}", tag = "tokens", params(("name" = String, Path, description = "token name")),
    responses((status = 204, description = "revoked"), (status = 404, body = ErrorBody)),
    security(("token" = [])))]
pub async fn revoke(
    AsAdmin(caller): AsAdmin,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.store.revoke_token(&name, &caller.name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("active token {name:?}")))
    }
}
