//! The E2B-compatible surface: the official `e2b` SDKs (Python, JavaScript) work against coved
//! unchanged. Two parts, both thin adapters over what `/v1` calls (docs/e2b.md):
//!
//! - the control plane (`control`): `/sandboxes`, `/v2/sandboxes`, … with `X-API-KEY` holding a
//!   Cove key (`coved keys create --e2b` gives one in the `e2b_…` form older SDKs insist on),
//!   errors as E2B's `{"code": HTTP status, "message"}`;
//! - the in-sandbox API E2B calls envd (`envd`, `process`, `filesystem`): every sandbox's at
//!   one address, told apart by the `E2b-Sandbox-Id` header the SDKs send when
//!   `E2B_SANDBOX_URL` points at coved (or by host `49983-ID.DOMAIN`), checked against the
//!   sandbox's access token (`X-Access-Token`), carried to the guest's agent.

mod connect;
mod control;
mod envd;
mod filesystem;
mod process;
pub(crate) mod watchers;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{delete, get, post};

use crate::app::App;

/// The envd version the SDKs are told: the newest whose features this surface serves (0.5.7:
/// stdin closing, octet-stream uploads; not 0.6.x's file metadata and watch options).
pub(crate) const ENVD_VERSION: &str = "0.5.7";
/// envd's port in E2B's sandbox addresses (`49983-ID.DOMAIN`).
pub(crate) const ENVD_PORT: u16 = 49983;
/// `clientID` in E2B's answers (E2B names its cluster node there).
pub(crate) const CLIENT_ID: &str = "cove";
/// The template of a create that names none (E2B's default).
pub(crate) const DEFAULT_TEMPLATE: &str = "base";
/// The header that names the sandbox of an envd request.
pub(crate) const SANDBOX_HEADER: &str = "e2b-sandbox-id";

/// The control plane's routes (merged beside `/v1`; errors rewritten by [`errors`]).
pub(crate) fn control_routes() -> axum::Router<App> {
    axum::Router::new()
        .route("/sandboxes", post(control::create).get(control::list))
        .route("/v2/sandboxes", post(control::create).get(control::list))
        .route("/sandboxes/{id}", get(control::get).delete(control::kill))
        .route("/sandboxes/{id}/timeout", post(control::set_timeout))
        .route("/sandboxes/{id}/pause", post(control::pause))
        .route("/sandboxes/{id}/connect", post(control::connect))
        .route("/sandboxes/{id}/resume", post(control::connect))
        .route("/v2/sandboxes/{id}/connect", post(control::connect))
        .route("/sandboxes/{id}/metrics", get(control::metrics))
        .route("/sandboxes/{id}/snapshots", post(control::snapshot))
        .route("/sandboxes/{id}/fork", post(control::fork))
        .route("/snapshots", get(control::snapshots))
        .route("/templates/{id}", delete(control::delete_snapshot))
        .layer(axum::middleware::from_fn(errors))
}

/// Rewrites the control plane's error bodies into E2B's shape: `{"code": <HTTP status>,
/// "message"}` (the SDKs parse every error body and need both).
async fn errors(req: Request, next: axum::middleware::Next) -> Response {
    let res = next.run(req).await;
    if res.status().as_u16() < 400 {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let message = serde_json::from_slice::<cove_api::Error>(&bytes)
        .map(|e| e.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
    let out = serde_json::json!({"code": parts.status.as_u16(), "message": message});
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(out.to_string()))
}

/// Sends a request that names a sandbox in `E2b-Sandbox-Id` to envd (before anything looks for
/// an API key: envd requests carry the sandbox's access token instead).
pub(crate) async fn by_header(
    State(app): State<App>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let id = req
        .headers()
        .get(SANDBOX_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match id {
        Some(id) => envd::serve(app, id, req).await,
        None => next.run(req).await,
    }
}

/// An envd request of sandbox `id` (named by its host, `49983-ID.DOMAIN`).
pub(crate) async fn envd(app: App, id: String, req: Request) -> Response {
    envd::serve(app, id, req).await
}

/// The answer E2B's SDKs read as "this sandbox is not running" (unknown, stopped, paused).
pub(crate) fn not_running(id: &str) -> Response {
    let body = serde_json::json!({
        "code": 502,
        "message": format!("The sandbox {id} was not found"),
    });
    let mut res = Response::new(Body::from(body.to_string()));
    *res.status_mut() = StatusCode::BAD_GATEWAY;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}
