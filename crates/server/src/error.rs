//! The one error shape of the API: `{"error": {"code": "...", "message": "..."}}` + a status.
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Body of every error response.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// A stable machine-readable `code` and a message for humans.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// An error response.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for `Retry-After` (429 and 503 answers; 503 defaults to 5).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: None }
    }
    /// Tells the client when to try again (`Retry-After`).
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("upload larger than the {limit}-byte limit"),
        )
    }
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }

    /// The JSON body alone (batch results embed it per file).
    pub fn detail(&self) -> ErrorDetail {
        ErrorDetail { code: self.code.to_string(), message: self.message.clone() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(ErrorBody { error: self.detail() })).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"catsdogs\""));
        }
        let retry_after = match self.status {
            StatusCode::SERVICE_UNAVAILABLE => Some(self.retry_after.unwrap_or(5)),
            StatusCode::TOO_MANY_REQUESTS => Some(self.retry_after.unwrap_or(1)),
            _ => self.retry_after,
        };
        if let Some(secs) = retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<catsdogs_store::StoreError> for ApiError {
    fn from(e: catsdogs_store::StoreError) -> Self {
        metrics::counter!("catsdogs_store_errors_total", "operation" => "request").increment(1);
        if e.is_unavailable() {
            tracing::warn!(error = %e, "store unavailable");
            Self::unavailable("store_unavailable", "the database is unreachable; try again shortly")
        } else {
            tracing::error!(error = %e, "store error");
            Self::internal("database error")
        }
    }
}

impl From<catsdogs_core::ClassifyError> for ApiError {
    fn from(e: catsdogs_core::ClassifyError) -> Self {
        use catsdogs_core::ClassifyError as E;
        use catsdogs_model::preprocess::PreprocessError as P;
        let code = e.code();
        let status = match &e {
            // A multipart body whose file is not an image is a bad request (the seed's 400);
            // 415 stays for a body that is not multipart at all.
            E::Input(P::UnsupportedFormat | P::Empty) => StatusCode::BAD_REQUEST,
            E::Input(_) => StatusCode::UNPROCESSABLE_ENTITY,
            E::NoModel(_) | E::Overloaded | E::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            E::Inference(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, code, e.to_string())
    }
}
