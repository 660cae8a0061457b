//! The `/v1` routes, one module per resource, merged into one router whose OpenAPI document is
//! built from the same handlers. Each handler checks the caller's scope, finds the caller's
//! resource ([`crate::app::Inner::owned`]) and calls the `host` library.

pub(crate) mod admin;
pub(crate) mod commands;
pub(crate) mod events;
pub(crate) mod exec;
pub(crate) mod files;
pub(crate) mod images;
mod limits;
pub(crate) mod meta;
pub(crate) mod ports;
pub(crate) mod pulls;
pub(crate) mod sandboxes;
pub(crate) mod snapshots;
pub(crate) mod ws;

use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use cove_api as api;
use cove_host::{SandboxRecord, SnapshotRecord};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::App;
use crate::app::BODY_LIMIT;
use crate::error::{ApiError, REQUEST_ID};
use crate::keys::Principal;

/// A sandbox as the API shows it to `p` (with where it runs for the host's administrator).
pub(crate) fn sandbox(p: &Principal, r: SandboxRecord) -> api::Sandbox {
    let host = p.tenant.is_none().then(|| api::SandboxHost {
        owner: r.owner.clone(),
        engine: r.engine,
        accel: r.accel,
        dir: r.dir.clone(),
        socket: r.socket.clone(),
        pid: r.pid,
        updated_at: r.updated_at,
        vm: None,
        jail: None,
        net: None,
    });
    api::Sandbox {
        id: r.id,
        name: r.name,
        state: r.state,
        image: r.image,
        image_digest: r.image_digest,
        cpus: r.cpus,
        memory_mib: r.memory_mib,
        disk_mib: r.disk_mib,
        created_at: r.created_at,
        boot_ms: r.boot_ms,
        reason: r.reason.map(|r| crate::error::redact(&r.to_string())),
        labels: r.labels,
        env: r.env,
        network: r.network,
        host,
    }
}

/// A snapshot as the API shows it to `p` (with where it is kept for the host's administrator).
pub(crate) fn snapshot(p: &Principal, s: SnapshotRecord) -> api::Snapshot {
    let host = p.tenant.is_none().then(|| api::SnapshotHost {
        owner: s.owner.clone(),
        dir: s.dir.clone(),
    });
    api::Snapshot {
        id: s.id,
        name: s.name,
        sandbox: s.sandbox,
        image: s.image,
        cpus: s.cpus,
        memory_mib: s.memory_mib,
        disk_mib: s.disk_mib,
        created_at: s.created_at,
        template: s.template,
        host,
    }
}

pub(crate) static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();

#[derive(OpenApi)]
#[openapi(
    info(title = "Cove API", description = "MicroVM sandboxes: create, run code, lifecycle."),
    modifiers(&Security),
    security(("api_key" = [])),
)]
struct Doc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        doc.components.get_or_insert_default().add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The API routes and their OpenAPI document (built from the same handlers, so neither can
/// list a route the other lacks).
pub fn routes() -> (axum::Router<App>, utoipa::openapi::OpenApi) {
    let (router, mut doc) = OpenApiRouter::with_openapi(Doc::openapi())
        .routes(routes!(sandboxes::create, sandboxes::list))
        .routes(routes!(sandboxes::get, sandboxes::delete))
        .routes(routes!(sandboxes::pause))
        .routes(routes!(sandboxes::resume))
        .routes(routes!(sandboxes::hibernate))
        .routes(routes!(sandboxes::stop))
        .routes(routes!(sandboxes::snapshot))
        .routes(routes!(sandboxes::fork))
        .routes(routes!(sandboxes::network))
        .routes(routes!(ports::token))
        .routes(routes!(ports::url))
        .routes(routes!(ports::tcp))
        .routes(routes!(exec::exec))
        .routes(routes!(ws::exec_ws))
        .routes(routes!(files::download, files::upload, files::remove))
        .routes(routes!(files::stat))
        .routes(routes!(files::list))
        .routes(routes!(files::watch))
        .routes(routes!(files::mkdir))
        .routes(routes!(files::rename))
        .routes(routes!(events::events))
        .routes(routes!(exec::logs))
        .routes(routes!(exec::metrics))
        .routes(routes!(exec::list_processes))
        .routes(routes!(exec::kill_process))
        .routes(routes!(commands::start, commands::list))
        .routes(routes!(commands::attach))
        .routes(routes!(commands::stdin))
        .routes(routes!(commands::signal))
        .routes(routes!(commands::resize))
        .routes(routes!(snapshots::list))
        .routes(routes!(snapshots::delete))
        .routes(routes!(images::list))
        .routes(routes!(images::get, images::delete))
        .routes(routes!(pulls::start))
        .routes(routes!(admin::import))
        .routes(routes!(admin::prune))
        .routes(routes!(admin::create_template))
        .routes(routes!(admin::info))
        .routes(routes!(admin::scrub))
        .routes(routes!(pulls::follow))
        .routes(routes!(meta::openapi))
        .routes(routes!(meta::metrics))
        .split_for_parts();
    limits::publish(&mut doc);
    (router, doc)
}

/// Answers every request with an id (header `x-request-id`, error bodies, the log line), and
/// counts it.
async fn request_id(
    State(app): State<App>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = format!(
        "{:x}-{:x}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let t = Instant::now();
    let mut res = REQUEST_ID.scope(id.clone(), next.run(req)).await;
    app.metrics.request(res.status().as_u16());
    tracing::info!(
        request_id = %id,
        %method,
        path,
        status = res.status().as_u16(),
        ms = t.elapsed().as_secs_f64() * 1e3,
        "request"
    );
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert("x-request-id", v);
    }
    res
}

pub(crate) async fn no_route() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        "no such route; see /v1/openapi.json",
    )
}

/// The whole service.
pub fn router(app: App) -> axum::Router {
    let (api, doc) = routes();
    let _ = DOC.set(doc.to_pretty_json().expect("the document serializes"));
    // A sandbox's ports, any method: documented in docs/api.md (a proxy has no schema).
    api.route(
        "/v1/sandboxes/{id}/ports/{port}",
        axum::routing::any(ports::by_path),
    )
    .route(
        "/v1/sandboxes/{id}/ports/{port}/{*rest}",
        axum::routing::any(ports::by_path),
    )
    // E2B's control plane beside /v1 (docs/e2b.md).
    .merge(crate::e2b::control_routes())
    .fallback(no_route)
    .method_not_allowed_fallback(|| async {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not take that method; see /v1/openapi.json",
        )
    })
    .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
    .layer(axum::middleware::from_fn_with_state(
        app.clone(),
        crate::auth::identify,
    ))
    // Before any key is looked at: `PORT-ID.DOMAIN` is the sandbox's, not the API's; nor is
    // a request naming a sandbox in `E2b-Sandbox-Id` (E2B's envd, with its access token).
    .layer(axum::middleware::from_fn_with_state(
        app.clone(),
        ports::by_host,
    ))
    .layer(axum::middleware::from_fn_with_state(
        app.clone(),
        crate::e2b::by_header,
    ))
    .layer(axum::middleware::from_fn_with_state(
        app.clone(),
        request_id,
    ))
    .with_state(app)
}
