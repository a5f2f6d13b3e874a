//! Bearer tokens: who is calling, and whether their role allows it.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::error::ApiError;
use super::AppState;
use crate::token::{self, Role};

/// The authenticated caller.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Token name: the actor in the audit log.
    pub name: String,
    /// Token role.
    pub role: Role,
}

impl Caller {
    /// Fails with 403 unless the caller's role is at least `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this needs the {role} role; token {:?} is {}",
                self.name, self.role
            )))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("send a token: Authorization: Bearer <token>"))?;
        let value = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <token>`"))?;
        let found = state.store.token_by_hash(&token::hash(value.trim())).await?;
        let token = found.ok_or_else(|| ApiError::unauthorized("unknown or revoked token"))?;
        Ok(Caller { name: token.name, role: token.role })
    }
}
