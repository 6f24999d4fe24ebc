//! Error responses of the HTTP API, and the request body extractor that
//! turns every malformed body into one of them.
//!
//! Every error the API returns is JSON of the form `{"error": "…"}`,
//! including those made by the routing and limit layers, which
//! [`json_errors`] rewrites.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::db::DbError;

/// Largest request body the API accepts, in bytes.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// An error response: a status and a sentence that names the value and
/// the fix.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    pub fn proposal_not_found(number: u64) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("proposal {number} not found"),
        )
    }

    /// Logs a server-side failure and returns a 500 error. The details
    /// go to the log only, and the client is pointed there.
    pub fn internal(operation: &str, error: &dyn std::fmt::Display) -> Self {
        tracing::error!(%error, "{operation} failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{operation} failed on the server; see the server log"),
        )
    }
}

impl From<DbError> for ApiError {
    fn from(error: DbError) -> Self {
        Self::internal("a database operation", &error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({ "error": self.message }));
        (self.status, body).into_response()
    }
}

/// A JSON request body of type `T`. An empty body counts as `{}`, so
/// that requests whose fields are all optional may send nothing.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(
        request: Request,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let is_json = is_json_content_type(request.headers());
        let bytes = Bytes::from_request(request, state).await.map_err(
            |rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    too_large()
                } else {
                    ApiError::bad_request(format!(
                        "the request body could not be read: {}",
                        rejection.body_text()
                    ))
                }
            },
        )?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "the request body must be JSON; send it with the header \
                 Content-Type: application/json",
            ));
        } else {
            &bytes
        };
        serde_json::from_slice(bytes)
            .map(JsonBody)
            .map_err(|error| {
                if error.is_data() {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!("invalid request body: {error}"),
                    )
                } else {
                    ApiError::bad_request(format!(
                        "the request body is not valid JSON: {error}"
                    ))
                }
            })
    }
}

fn is_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return false;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the request body is larger than the limit of {MAX_BODY_BYTES} \
             bytes; send a smaller body"
        ),
    )
}

/// Rewrites error responses that are not JSON yet, such as those of the
/// router, the body limit and the timeout layers, into `{"error": …}`.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    if is_json_content_type(response.headers()) {
        return response;
    }
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => too_large().message,
        StatusCode::REQUEST_TIMEOUT => "the request took too long and was \
                                        cancelled; try again"
            .to_owned(),
        StatusCode::NOT_FOUND => {
            format!("no endpoint {method} {path}; the API lives under /api/v1")
        }
        StatusCode::METHOD_NOT_ALLOWED => {
            format!("{path} does not accept {method}")
        }
        other => {
            let text = axum::body::to_bytes(response.into_body(), 4096)
                .await
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .unwrap_or_default();
            let reason = other.canonical_reason().unwrap_or("error");
            if text.trim().is_empty() {
                reason.to_owned()
            } else {
                format!("{reason}: {}", text.trim())
            }
        }
    };
    let mut rewritten = ApiError::new(status, message).into_response();
    *rewritten.status_mut() = status;
    rewritten
}

/// A response with an exact byte body and content type.
pub fn bytes_response(content_type: &'static str, bytes: Vec<u8>) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(bytes))
        .expect("a static header is valid")
}
