//! One error type for every failure a client can see. `Display` is exactly the message the
//! client reads; causes travel in the variant, are logged once, and never reach the body.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};

/// The 503 text is fixed by the public API: upstream trouble is never described to clients.
pub const UNAVAILABLE: &str = "Service temporarily unavailable";

#[derive(Debug, derive_more::Display)]
pub enum ApiError {
    /// Text we wrote ourselves, e.g. `field required: 'model'`.
    #[display("{_0}")]
    BadRequest(String),
    #[display("Invalid API key")]
    Unauthorized,
    #[display("Insufficient credits")]
    InsufficientCredits,
    #[display("{_0}")]
    NotFound(String),
    /// Carries the value of the `Allow` header: the methods the resource does take.
    #[display("Method not allowed")]
    MethodNotAllowed(&'static str),
    #[display("{_0}")]
    Conflict(String),
    #[display("Request body too large: the limit is {_0} bytes")]
    PayloadTooLarge(usize),
    #[display("Request body not received in time")]
    BodyTimeout,
    /// Any upstream or dependency failure; the cause is logged, the client sees only 503.
    #[display("{UNAVAILABLE}")]
    Unavailable(anyhow::Error),
    #[display("Internal server error")]
    Internal(anyhow::Error),
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest(message.into())
    }

    pub fn model_not_found(model: &str) -> Self {
        Self::NotFound(format!("Model '{model}' not found"))
    }

    /// The envelope every error body uses: `{"error":{"message":…}}`.
    pub fn envelope(status: StatusCode, message: &str) -> HttpResponse {
        let body = serde_json::json!({ "error": { "message": message } });
        let mut res = HttpResponse::build(status);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            res.insert_header((header::RETRY_AFTER, "1"));
        }
        res.json(body)
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> Self {
        Self::Internal(err)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::InsufficientCredits => StatusCode::PAYMENT_REQUIRED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            Self::Unavailable(cause) => log::warn!("unavailable: {cause:#}"),
            Self::Internal(cause) => log::error!("internal error: {cause:#}"),
            _ => {}
        }
        let mut res = Self::envelope(self.status_code(), &self.to_string());
        if let Self::MethodNotAllowed(allow) = self {
            res.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static(allow));
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    fn body_of(err: ApiError) -> (u16, String) {
        let res = err.error_response();
        let status = res.status().as_u16();
        let bytes = res.into_body().try_into_bytes().unwrap_or_default();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[test]
    fn unavailable_never_shows_its_cause() {
        let (status, body) =
            body_of(ApiError::Unavailable(anyhow::anyhow!("secret-upstream-detail")));
        assert_eq!(status, 503);
        assert_eq!(body, r#"{"error":{"message":"Service temporarily unavailable"}}"#);
    }

    #[test]
    fn internal_never_shows_its_cause() {
        let (status, body) =
            body_of(ApiError::Internal(anyhow::anyhow!("disk I/O error at /var/x")));
        assert_eq!(status, 500);
        assert!(!body.contains("disk"));
    }

    #[test]
    fn documented_messages_are_exact() {
        assert_eq!(body_of(ApiError::Unauthorized).1, r#"{"error":{"message":"Invalid API key"}}"#);
        assert_eq!(
            body_of(ApiError::InsufficientCredits).1,
            r#"{"error":{"message":"Insufficient credits"}}"#
        );
        assert_eq!(
            body_of(ApiError::model_not_found("nonexistent-model")).1,
            r#"{"error":{"message":"Model 'nonexistent-model' not found"}}"#
        );
    }
}
