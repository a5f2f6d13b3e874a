//! Bearer tokens: who is calling, and whether their role allows it.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::error::ApiError;
use super::AppState;
use pigeon_bus::token::{self, Role};

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

/// Declares an extractor that lets in callers of at least one role, before the body is read.
macro_rules! role_extractor {
    ($(#[$doc:meta])* $name:ident, $role:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub struct $name(pub Caller);

        impl FromRequestParts<AppState> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
                let caller = Caller::from_request_parts(parts, state).await?;
                caller.require($role)?;
                Ok(Self(caller))
            }
        }
    };
}

role_extractor!(
    /// Any valid token, a module's included.
    AsModule,
    Role::Module
);
role_extractor!(
    /// A caller with at least the viewer role.
    AsViewer,
    Role::Viewer
);
role_extractor!(
    /// A caller with at least the operator role.
    AsOperator,
    Role::Operator
);
role_extractor!(
    /// A caller with the admin role.
    AsAdmin,
    Role::Admin
);
