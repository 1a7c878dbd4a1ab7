//! The one error type of the HTTP layer, with a stable OpenAI-style JSON body:
//! `{"error": {"message", "type", "param", "code"}}`. Details of server faults go to the log,
//! never to the client.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hearth_ipc::{ErrorKind, WorkerError};
use serde::de::DeserializeOwned;

use crate::inference::InferenceError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub param: Option<&'static str>,
    /// Seconds for `Retry-After` on 429/503 (2 when unset).
    pub retry_after: Option<u64>,
    /// Adds `WWW-Authenticate: Bearer` (a 401 on a token route).
    pub bearer_challenge: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            param: None,
            retry_after: None,
            bearer_challenge: false,
        }
    }

    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_value", message)
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// A fault of ours: the detail is logged, the client gets a generic message.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        log::error!(error:% = detail; "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "something went wrong inside the box; the details are in its log",
        )
    }

    /// The OpenAI `type` field.
    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 | 403 => "authentication_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            500..=599 => "server_error",
            _ => "invalid_request_error",
        }
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind(),
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            let secs = self.retry_after.unwrap_or(2);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.bearer_challenge {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<InferenceError> for ApiError {
    fn from(e: InferenceError) -> Self {
        log::warn!(error:% = e; "inference service unreachable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "inference_unavailable",
            "the inference service is starting or restarting; try again in a moment",
        )
    }
}

impl From<WorkerError> for ApiError {
    fn from(e: WorkerError) -> Self {
        let (status, code) = match e.kind {
            ErrorKind::UnknownModel => (StatusCode::NOT_FOUND, "model_not_found"),
            ErrorKind::ModelUnavailable => (StatusCode::UNPROCESSABLE_ENTITY, "model_unavailable"),
            ErrorKind::InvalidRequest => (StatusCode::BAD_REQUEST, "invalid_request"),
            ErrorKind::ContextLength => (StatusCode::BAD_REQUEST, "context_length_exceeded"),
            ErrorKind::Busy => (StatusCode::TOO_MANY_REQUESTS, "model_busy"),
            ErrorKind::Internal => return Self::internal(e.message),
        };
        Self::new(status, code, e.message)
    }
}

/// `axum::Json` whose rejections (bad syntax, wrong types, too large) use [`ApiError`].
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let status = rejection.status();
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "request_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        _ => "invalid_json",
    };
    // Serde's messages name the field and the problem; they reveal nothing internal.
    let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
        StatusCode::BAD_REQUEST
    } else {
        status
    };
    ApiError::new(status, code, rejection.body_text())
}
