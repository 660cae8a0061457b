//! Every error coved answers: a status that fits and `{"code", "message", "request_id"}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cove_api as api;
use cove_host::{ClientError, HostError, StateError};

tokio::task_local! {
    /// The request being served (set by the request-id middleware).
    pub static REQUEST_ID: String;
    /// Whether the caller is the host's administrator, who may read the host's paths (set by
    /// the identify middleware; unset reads as no).
    pub static SHOWS_HOST: bool;
}

/// An error response.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// Stable code.
    pub code: &'static str,
    /// For people.
    pub message: String,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    /// 400.
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", m)
    }
    /// 400 unless `v` is in `range` (one of [`cove_api::limits`], which the OpenAPI document
    /// publishes).
    pub fn check_range<T>(what: &str, v: T, range: cove_api::limits::Range) -> Result<(), Self>
    where
        T: TryInto<u64> + Copy + std::fmt::Display,
    {
        if range.contains(v) {
            Ok(())
        } else {
            Err(Self::bad_request(format!(
                "invalid {what} {v}: {}",
                range.describe()
            )))
        }
    }
    /// 404: also what another tenant's sandbox looks like.
    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such {what}: {id}"),
        )
    }
    /// 401.
    pub fn unauthorized(m: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", m)
    }
    /// 403.
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", m)
    }
}

/// Where this host keeps things (its Cove home, caches, jail and guest memory roots): no error
/// a caller reads names them (coved's own log keeps the whole message of a 5xx).
static HOST_ROOTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// Sets the roots [`redact`] hides: the home and the host-wide places every home shares.
pub(crate) fn set_host_roots(home: &std::path::Path) {
    let cache = std::env::var("COVE_CACHE").unwrap_or_else(|_| "/var/cache/cove".into());
    let mut roots = vec![
        format!("{}/", home.display()),
        format!("{}/", cache.trim_end_matches('/')),
        "/var/lib/cove-jail/".into(),
        "/run/cove-jail/".into(),
        "/dev/shm/cove-".into(),
    ];
    // The longest first: a home inside a cache directory is cut as the home.
    roots.sort_by_key(|r| std::cmp::Reverse(r.len()));
    let _ = HOST_ROOTS.set(roots);
}

/// `message` with every host root replaced by `…/` unless the caller is the host's
/// administrator: a tenant reads `snapshot file …/snapshots/ID/memory is corrupted`, never the
/// host's layout. Paths in the guest (`/root/x: not found`) stay.
pub(crate) fn redact(message: &str) -> String {
    redact_for(SHOWS_HOST.try_with(|s| *s).unwrap_or(false), message)
}

/// [`redact`] for a caller known outside the request (a stream, an upgraded connection):
/// `shows_host` for the host's administrator or an operator.
pub(crate) fn redact_for(shows_host: bool, message: &str) -> String {
    let mut m = message.to_string();
    if shows_host {
        return m;
    }
    for root in HOST_ROOTS.get().into_iter().flatten() {
        if m.contains(root.as_str()) {
            m = m.replace(root.as_str(), "…/");
        }
    }
    m
}

impl From<HostError> for ApiError {
    fn from(e: HostError) -> Self {
        use StatusCode as S;
        let message = e.to_string();
        let (status, code) = match &e {
            HostError::NoSuchSandbox(_) | HostError::NoSuchSnapshot(_) => {
                (S::NOT_FOUND, "not_found")
            }
            HostError::NoSuchImage { .. }
            | HostError::Image(_)
            | HostError::SnapshotCorrupted(_) => (S::UNPROCESSABLE_ENTITY, "unprocessable"),
            HostError::NameTaken(_)
            | HostError::NotRunning { .. }
            | HostError::StillRunning(_)
            | HostError::Transition { .. }
            | HostError::ImageInUse { .. }
            | HostError::NetworkConflict(_) => (S::CONFLICT, "conflict"),
            HostError::InvalidSetting { .. } => (S::BAD_REQUEST, "bad_request"),
            HostError::State(StateError::OverQuota { .. }) => {
                (S::TOO_MANY_REQUESTS, "quota_exceeded")
            }
            HostError::MissingAsset { .. }
            | HostError::Engine(_)
            | HostError::Network(cove_host::NetError::Unavailable(_))
            | HostError::GuestUnresponsive { .. } => (S::SERVICE_UNAVAILABLE, "unavailable"),
            HostError::Client(c) => return client_error(c, message),
            _ => (S::INTERNAL_SERVER_ERROR, "internal"),
        };
        Self::new(status, code, message)
    }
}

fn client_error(c: &ClientError, message: String) -> ApiError {
    use cove_protocol::ErrorCode as C;
    match c {
        ClientError::Agent(a) => {
            let (status, code) = match a.code {
                // A missing program or path is the request's fault, not a missing resource.
                C::NotFound | C::NotADirectory | C::IsADirectory => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable")
                }
                C::InvalidRequest | C::Protocol => (StatusCode::BAD_REQUEST, "bad_request"),
                C::PermissionDenied => (StatusCode::FORBIDDEN, "forbidden"),
                C::AlreadyExists | C::NotEmpty => (StatusCode::CONFLICT, "conflict"),
                C::NoSpace => (StatusCode::INSUFFICIENT_STORAGE, "no_space"),
                C::ProgramNotFound => (StatusCode::UNPROCESSABLE_ENTITY, api::PROGRAM_NOT_FOUND),
                C::ProgramNotRunnable => {
                    (StatusCode::UNPROCESSABLE_ENTITY, api::PROGRAM_NOT_RUNNABLE)
                }
                // The guest failed or ran out of something: its fault, not the host's (a 500
                // would page the host's operator for what a sandbox did to itself).
                C::Refused => (StatusCode::BAD_GATEWAY, "port_closed"),
                C::Exhausted | C::Internal | C::Cancelled => {
                    (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
                }
            };
            // With the path it concerns, when there is one (`/root/x: not found`).
            ApiError::new(status, code, a.to_string())
        }
        // The guest did not answer in time: the host gave up waiting (and may now report the
        // sandbox `unhealthy`).
        ClientError::Timeout { .. } => {
            ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", message)
        }
        _ => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message),
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        let m = e.to_string();
        client_error(&e, m)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // A sandbox's own server (a closed port, a bad answer) is the guest's doing, not coved's.
        if self.status == StatusCode::BAD_GATEWAY {
            tracing::info!(code = self.code, "{}", self.message);
        } else if self.status.is_server_error() {
            tracing::error!(code = self.code, "{}", self.message);
        }
        let body = cove_api::Error {
            code: self.code.into(),
            message: redact(&self.message),
            request_id: REQUEST_ID.try_with(Clone::clone).ok(),
        };
        let mut res = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body is never read, so the connection cannot carry another
            // request: say so, or a client's pool may reuse it and lose its next request.
            res.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        res
    }
}

/// JSON bodies: a malformed or mistyped body is a 400 (or 422 for well-formed JSON of the wrong
/// shape, as axum tells them apart) with this server's error body, not axum's plain text.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for Json<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        use axum::extract::rejection::JsonRejection as R;
        // Every request body of this API is an object: an array (which serde would read as a
        // struct's fields in order) or a scalar is refused, not taken for the defaults.
        match axum::Json::<serde_json::Value>::from_request(req, state).await {
            Ok(axum::Json(v)) if !v.is_object() => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unprocessable",
                "the body must be a JSON object",
            )),
            Ok(axum::Json(v)) => serde_json::from_value::<T>(v).map(Self).map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unprocessable",
                    e.to_string(),
                )
            }),
            Err(R::JsonDataError(e)) => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unprocessable",
                e.body_text(),
            )),
            Err(R::MissingJsonContentType(_)) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "bad_request",
                "send the body as JSON with `content-type: application/json`",
            )),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is over the limit",
            )),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// A JSON body that may be left out (no body reads as `T::default()`); errors as [`Json`].
#[derive(Debug)]
pub struct OptionalJson<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for OptionalJson<T>
where
    T: serde::de::DeserializeOwned + Default,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let empty = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .is_some_and(|v| v == "0")
            || (req
                .headers()
                .get(axum::http::header::CONTENT_TYPE)
                .is_none()
                && req
                    .headers()
                    .get(axum::http::header::CONTENT_LENGTH)
                    .is_none()
                && req
                    .headers()
                    .get(axum::http::header::TRANSFER_ENCODING)
                    .is_none());
        if empty {
            return Ok(Self(T::default()));
        }
        Json::<T>::from_request(req, state)
            .await
            .map(|Json(v)| Self(v))
    }
}
