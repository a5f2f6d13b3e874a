//! The one error type of the admin API: a stable JSON shape, client errors explained,
//! internal ones logged and hidden.

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use pigeon_bus::store::StoreError;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `invalid_pigeon`, `unauthorized`.
    pub code: &'static str,
    /// One sentence for a person.
    pub message: String,
    /// Every individual problem, when there are several.
    pub details: Vec<String>,
}

/// An API error.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
    /// Sent as `Retry-After` (whole seconds).
    retry_after: Option<std::time::Duration>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody { code, message: message.into(), details: Vec::new() },
            retry_after: None,
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401: no valid token.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: the token's role is too weak.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{} not found", what.into()))
    }

    /// 503: a part the request needs is not available here or now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 503 with a `Retry-After` hint: try again after `after`.
    pub fn unavailable_for(message: impl Into<String>, after: std::time::Duration) -> Self {
        Self { retry_after: Some(after), ..Self::unavailable(message) }
    }

    /// 429 with a `Retry-After` hint: the bus has as many requests in hand as it takes.
    pub fn too_many_requests(message: impl Into<String>) -> Self {
        let error = Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", message);
        Self { retry_after: Some(std::time::Duration::from_secs(1)), ..error }
    }

    /// 409.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 422 with every problem listed.
    pub fn invalid(code: &'static str, message: impl Into<String>, details: Vec<String>) -> Self {
        let mut error = Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message);
        error.body.details = details;
        error
    }

    /// 500: logged here, hidden from the client.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(error = %error, "admin API internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the bus's log")
    }

    /// The individual problems.
    pub fn details(&self) -> &[String] {
        &self.body.details
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if let Some(after) = self.retry_after {
            let seconds = after.as_secs().max(1);
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict(message) => ApiError::conflict(message),
            // The database away (or a lost race): the same request may work in a moment.
            other if other.is_transient() => {
                tracing::warn!(error = %other, "admin API: the store is unavailable");
                ApiError::unavailable_for(
                    "the store is unavailable; try again shortly",
                    std::time::Duration::from_secs(1),
                )
            }
            other => ApiError::internal(other),
        }
    }
}

/// What a handler that panicked answers (`CatchPanicLayer`): a 500 in the usual shape; the
/// panic is logged, and the server goes on.
pub fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = pigeon_core::fault::panic_text(panic.as_ref());
    ApiError::internal(format!("a request handler panicked: {message}")).into_response()
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> Self {
        Self::bad_request(rejection.body_text())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let message = rejection.body_text();
        match status {
            StatusCode::PAYLOAD_TOO_LARGE => Self::new(status, "payload_too_large", message),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::new(status, "unsupported_media_type", message),
            // Valid JSON of the wrong shape.
            StatusCode::UNPROCESSABLE_ENTITY => {
                Self::invalid("invalid_request", message.clone(), vec![message])
            }
            _ => Self::new(StatusCode::BAD_REQUEST, "bad_request", message),
        }
    }
}
