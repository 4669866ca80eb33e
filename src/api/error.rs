//! API errors: every failure is a JSON body `{error, message}` with a fitting status code.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::contract::store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after_s: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }

    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub(crate) fn not_found(job_id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "JOB_NOT_FOUND",
            format!("job {job_id} not found"),
        )
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "BACKEND_UNAVAILABLE",
            message,
        )
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::QueueFull { active, max_jobs } => ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                code: "JOB_QUEUE_FULL",
                message: format!("job queue is full ({active}/{max_jobs}); retry later"),
                retry_after_s: Some(5),
            },
            StoreError::NotFound(id) => ApiError::not_found(&id),
            StoreError::EmptyTenant => {
                ApiError::bad_request("TENANT_INVALID", "tenant id is empty")
            }
            StoreError::Redis { .. } | StoreError::Queue(_) => {
                tracing::warn!(error = %e, "redis unavailable");
                ApiError::unavailable("the job store is unavailable; retry later")
            }
            StoreError::Duplicate(_) | StoreError::BadPayload { .. } => {
                tracing::error!(error = %e, "job store error");
                ApiError::internal("could not store the job")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(json!({"error": self.code, "message": self.message})),
        )
            .into_response();
        if let Some(s) = self.retry_after_s {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}
