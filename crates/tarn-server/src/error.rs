//! Rockset-shaped error responses: `{"message","type","line","column","error_id"}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tarn_common::TarnError;

/// A [`TarnError`] that axum can send.
#[derive(Debug)]
pub struct ApiError(pub TarnError);

impl From<TarnError> for ApiError {
    fn from(e: TarnError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let status =
            StatusCode::from_u16(e.kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut body = json!({
            "message": e.message,
            "type": e.kind.rockset_type(),
            "error_id": uuid::Uuid::new_v4().to_string(),
        });
        if let (Some(l), Some(c)) = (e.line, e.column) {
            body["line"] = json!(l);
            body["column"] = json!(c);
        }
        if status.is_server_error() {
            tracing::error!(status = status.as_u16(), message = %body["message"], "request failed");
        }
        (status, axum::Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
