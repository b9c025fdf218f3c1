//! An API error as the service sends it: HTTP status, error code and message. Its own module so
//! that the operations (service, fleet, KMS, ECS, throttle) do not import the HTTP front
//! (`api`) that calls them.

use hyper::StatusCode;

/// An API error as the service would send it.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Error code (`__type`).
    pub code: &'static str,
    /// Human message.
    pub message: String,
}

impl ApiError {
    /// A 400 with this code.
    pub fn client(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
        }
    }
}
