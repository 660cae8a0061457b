//! A sandbox's process table over `/v1`: commands that run in the background, listed, followed
//! again (WebSocket), written to, signalled and resized by pid or tag. The rules (tags, what a
//! kept command is) live in the agent; these routes only carry them.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use cove_api as api;
use cove_host::ClientError;
use cove_protocol::{ErrorCode, ProcessRef, TableEntry, TtySize};
use serde::Deserialize;

use crate::app::App;
use crate::auth::Auth;
use crate::error::{ApiError, Json};
use crate::keys::Scope;
use crate::routes::ws::{Upgrade, exec_request, relay, upgraded};

/// A `{command}` path segment: all digits is a pid, anything else a tag.
pub(crate) fn command_ref(s: &str) -> ProcessRef {
    match s.parse::<u32>() {
        Ok(pid) if s.bytes().all(|b| b.is_ascii_digit()) => ProcessRef::Pid(pid),
        _ => ProcessRef::Tag(s.to_string()),
    }
}

/// A table entry as the API shows it.
pub(crate) fn command(e: TableEntry) -> api::Command {
    api::Command {
        pid: e.pid,
        tag: e.tag,
        cmd: e.argv,
        env: e.env.into_iter().collect(),
        cwd: e.cwd,
        tty: e.tty,
        stdin: e.stdin,
        keep: e.keep,
        started_at: i64::try_from(e.started_unix_ms).unwrap_or(i64::MAX),
    }
}

/// A command that is not (or no longer) running is the resource the route names: 404.
fn gone(e: ClientError, which: &str) -> ApiError {
    match &e {
        ClientError::Agent(a) if a.code == ErrorCode::NotFound => {
            ApiError::not_found("running command", which)
        }
        _ => e.into(),
    }
}

/// Start a command in the background: it runs until it exits, whoever follows it (see
/// `…/commands/{command}/ws`); its output is dropped while nobody does.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/commands", tag = "commands",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = api::ExecStart,
    responses((status = 201, body = api::Command), (status = 404, body = api::Error),
        (status = 409, description = "The tag names a running command", body = api::Error),
        (status = 422, description = "The program could not run", body = api::Error)))]
pub(crate) async fn start(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
    Json(start): Json<api::ExecStart>,
) -> Result<(StatusCode, Json<api::Command>), ApiError> {
    auth.need(Scope::Exec)?;
    let r = app.owned(&auth.0, &id)?;
    let req = exec_request(
        &app,
        &r,
        api::ExecStart {
            keep: true,
            ..start
        },
    )?;
    let client = app.host.connect(&r.id).await?;
    let ex = client.exec(req.clone()).await;
    app.metrics.exec(ex.is_ok());
    let ex = ex?;
    let entry = TableEntry {
        pid: ex.pid,
        tag: req.tag,
        argv: req.argv,
        env: req.env,
        cwd: req.cwd.unwrap_or_default(),
        tty: req.tty.is_some(),
        stdin: req.stdin || req.tty.is_some(),
        keep: true,
        started_unix_ms: 0,
    };
    // The table knows its working directory and start time; it may also have ended already.
    let listed = client
        .process_table()
        .await?
        .into_iter()
        .find(|e| e.pid == ex.pid);
    Ok((StatusCode::CREATED, Json(command(listed.unwrap_or(entry)))))
}

/// The sandbox's running commands, by pid.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/commands", tag = "commands",
    params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 200, body = api::List<api::Command>), (status = 404, body = api::Error),
        (status = 409, body = api::Error)))]
pub(crate) async fn list(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<api::List<api::Command>>, ApiError> {
    auth.need(Scope::Read)?;
    let r = app.owned(&auth.0, &id)?;
    let items = app
        .host
        .connect(&r.id)
        .await?
        .process_table()
        .await?
        .into_iter()
        .map(command)
        .collect();
    Ok(Json(api::List { items }))
}

/// Follow a running command from now on (WebSocket; the messages of `…/exec/ws` after its
/// `ExecStart`): its output, stdin, `ExecControl`s, then its exit. Closing the socket leaves
/// the command running.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/commands/{command}/ws", tag = "commands",
    params(("id" = String, Path, description = "Sandbox id"),
        ("command" = String, Path, description = "Pid, or tag")),
    responses((status = 101, description = "Upgraded"), (status = 404, body = api::Error),
        (status = 426, description = "Not a WebSocket request", body = api::Error)))]
pub(crate) async fn attach(
    State(app): State<App>,
    auth: Auth,
    Path((id, which)): Path<(String, String)>,
    ws: Upgrade,
) -> Result<Response, ApiError> {
    auth.need(Scope::Exec)?;
    let r = app.owned(&auth.0, &id)?;
    let ws = upgraded(ws)?;
    // Found before the upgrade, so a wrong pid or tag is a plain 404.
    let client = app.host.connect(&r.id).await?;
    let ex = client
        .attach(command_ref(&which))
        .await
        .map_err(|e| gone(e, &which))?;
    let stdin = client
        .process_table()
        .await?
        .iter()
        .any(|e| e.pid == ex.pid && e.stdin);
    let shows_host = auth.0.tenant.is_none();
    Ok(ws.on_upgrade(move |mut socket| {
        crate::error::SHOWS_HOST.scope(shows_host, async move {
            let outcome = relay(ex, &mut socket, stdin).await;
            crate::routes::ws::close(&mut socket, outcome).await;
        })
    }))
}

/// `?eof=true`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StdinQuery {
    /// Close the command's stdin after the body.
    #[serde(default)]
    eof: bool,
}

/// Write the body to a running command's stdin (which stays open unless `eof=true`).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/commands/{command}/stdin", tag = "commands",
    params(("id" = String, Path, description = "Sandbox id"),
        ("command" = String, Path, description = "Pid, or tag"), StdinQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 204, description = "Written"), (status = 400, description = "Its stdin is closed", body = api::Error),
        (status = 404, body = api::Error)))]
pub(crate) async fn stdin(
    State(app): State<App>,
    auth: Auth,
    Path((id, which)): Path<(String, String)>,
    q: Result<Query<StdinQuery>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    auth.need(Scope::Exec)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let r = app.owned(&auth.0, &id)?;
    let client = app.host.connect(&r.id).await?;
    let p = command_ref(&which);
    if !body.is_empty() {
        client
            .input(p.clone(), &body)
            .await
            .map_err(|e| gone(e, &which))?;
    }
    if q.eof {
        client.close_input(p).await.map_err(|e| gone(e, &which))?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The signal a kill asks for (none: 15, SIGTERM), checked against its range.
pub(crate) fn kill_signal(k: &api::Kill) -> Result<i32, ApiError> {
    let signal = k.signal.unwrap_or(15);
    ApiError::check_range("signal", signal, cove_api::limits::SIGNAL)?;
    Ok(signal)
}

/// Send a signal to a running command's process group.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/commands/{command}/signal", tag = "commands",
    params(("id" = String, Path, description = "Sandbox id"),
        ("command" = String, Path, description = "Pid, or tag")),
    request_body = api::Kill,
    responses((status = 204, description = "Sent"), (status = 400, body = api::Error),
        (status = 404, body = api::Error)))]
pub(crate) async fn signal(
    State(app): State<App>,
    auth: Auth,
    Path((id, which)): Path<(String, String)>,
    Json(req): Json<api::Kill>,
) -> Result<StatusCode, ApiError> {
    auth.need(Scope::Exec)?;
    let signal = kill_signal(&req)?;
    let r = app.owned(&auth.0, &id)?;
    app.host
        .connect(&r.id)
        .await?
        .signal_process(command_ref(&which), signal)
        .await
        .map_err(|e| gone(e, &which))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Resize a running command's terminal.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/commands/{command}/resize", tag = "commands",
    params(("id" = String, Path, description = "Sandbox id"),
        ("command" = String, Path, description = "Pid, or tag")),
    request_body = api::TtySize,
    responses((status = 204, description = "Resized"), (status = 400, description = "It has no terminal", body = api::Error),
        (status = 404, body = api::Error)))]
pub(crate) async fn resize(
    State(app): State<App>,
    auth: Auth,
    Path((id, which)): Path<(String, String)>,
    Json(size): Json<api::TtySize>,
) -> Result<StatusCode, ApiError> {
    auth.need(Scope::Exec)?;
    let r = app.owned(&auth.0, &id)?;
    app.host
        .connect(&r.id)
        .await?
        .resize_process(
            command_ref(&which),
            TtySize {
                rows: size.rows,
                cols: size.cols,
            },
        )
        .await
        .map_err(|e| gone(e, &which))?;
    Ok(StatusCode::NO_CONTENT)
}
