//! Running commands in a sandbox (to their end; the streaming exec is `ws`), its console log,
//! what it uses, and its processes.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use cove_api as api;
use cove_api::limits;
use cove_host::SandboxRecord;
use cove_host::agent::Event;
use cove_protocol::{ExecRequest, Reply, Stream};
use serde::Deserialize;

use super::sandboxes::check_env;
use crate::app::EXEC_OUTPUT_LIMIT;
use crate::app::{App, Inner};
use crate::auth::Auth;
use crate::error::{ApiError, Json};
use crate::keys::Scope;

/// Run a command to its end and return its output (each stream up to 1 MiB; `*_truncated`
/// says when more was dropped).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/exec", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = api::Exec,
    responses((status = 200, body = api::ExecResult), (status = 404, body = api::Error),
        (status = 409, body = api::Error), (status = 422, description = "The program could not run", body = api::Error)))]
pub(crate) async fn exec(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
    Json(req): Json<api::Exec>,
) -> Result<Json<api::ExecResult>, ApiError> {
    auth.need(Scope::Exec)?;
    let r = app.owned(&auth.0, &id)?;
    let timeout_ms = timeout_ms(req.timeout_secs)?;
    let result = run(&app, &r, req, timeout_ms).await;
    app.metrics.exec(result.is_ok());
    Ok(Json(result?))
}

/// `timeout_secs` as the agent's milliseconds.
pub(crate) fn timeout_ms(secs: Option<f64>) -> Result<Option<u64>, ApiError> {
    match secs {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 && s <= limits::EXEC_TIMEOUT_SECS_MAX => Ok(Some(
            u64::try_from(std::time::Duration::from_secs_f64(s).as_millis().max(1))
                .unwrap_or(u64::MAX),
        )),
        Some(s) => Err(ApiError::bad_request(format!(
            "timeout_secs {s}: more than 0, at most {}",
            limits::EXEC_TIMEOUT_SECS_MAX
        ))),
    }
}

/// An exec's program (the image's entrypoint and command when `cmd` is empty), environment
/// (the image's, the sandbox's, the request's, each over the one before), working directory
/// and user; the caller fills in the rest.
pub(crate) fn exec_env(
    app: &Inner,
    r: &SandboxRecord,
    cmd: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: Option<String>,
    user: Option<String>,
) -> Result<ExecRequest, ApiError> {
    check_env(&env)?;
    let image = app.host.image_of(r).map(|i| i.config).unwrap_or_default();
    let argv = if cmd.is_empty() {
        image.default_argv()
    } else {
        cmd
    };
    if argv.first().is_none_or(String::is_empty) {
        return Err(ApiError::bad_request(
            "cmd: give the program and its arguments (the image has no default command)",
        ));
    }
    let mut all: BTreeMap<String, String> = image.env_pairs().into_iter().collect();
    all.extend(r.env.clone());
    all.extend(env);
    Ok(ExecRequest {
        argv,
        env: all.into_iter().collect(),
        cwd: cwd.or(image.workdir),
        user: user.or(image.user),
        ..ExecRequest::default()
    })
}

async fn run(
    app: &Inner,
    r: &SandboxRecord,
    req: api::Exec,
    timeout_ms: Option<u64>,
) -> Result<api::ExecResult, ApiError> {
    let base = exec_env(app, r, req.cmd, req.env, req.cwd, req.user)?;
    let client = app.host.connect(&r.id).await?;
    let mut ex = client
        .exec(ExecRequest {
            stdin: req.stdin.is_some(),
            timeout_ms,
            ..base
        })
        .await?;
    if let Some(input) = req.stdin {
        let s = ex.session.sender();
        tokio::spawn(async move {
            for chunk in input
                .as_bytes()
                .chunks(cove_protocol::frame::MAX_DATA_CHUNK)
            {
                if s.data(Stream::Stdin, chunk.to_vec()).await.is_err() {
                    return;
                }
            }
            let _ = s.eof(Stream::Stdin).await;
        });
    }
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let (mut out_cut, mut err_cut) = (false, false);
    loop {
        match ex.next().await? {
            Some(Event::Data(stream, b)) => {
                let (buf, cut) = if stream == Stream::Stderr {
                    (&mut err, &mut err_cut)
                } else {
                    (&mut out, &mut out_cut)
                };
                // Past the limit the output is read and dropped: the command is not stalled.
                let room = EXEC_OUTPUT_LIMIT.saturating_sub(buf.len());
                buf.extend_from_slice(&b[..room.min(b.len())]);
                *cut |= b.len() > room;
            }
            Some(Event::Eof(_)) => {}
            Some(Event::Reply(Reply::Exited(st))) => {
                return Ok(api::ExecResult {
                    exit_code: st.shell_code(),
                    stdout: String::from_utf8_lossy(&out).into_owned(),
                    stderr: String::from_utf8_lossy(&err).into_owned(),
                    stdout_truncated: out_cut,
                    stderr_truncated: err_cut,
                    timed_out: st.timed_out,
                });
            }
            Some(Event::Reply(Reply::Error(e))) => {
                return Err(cove_host::ClientError::from(e).into());
            }
            Some(Event::Reply(other)) => {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("unexpected reply from the agent: {other:?}"),
                ));
            }
            None => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the sandbox went away while the command ran",
                ));
            }
        }
    }
}

/// `GET /v1/sandboxes/{id}/logs` options.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogsQuery {
    /// Keep the stream open and send what the guest prints next, until the sandbox is gone.
    #[serde(default)]
    follow: bool,
}

/// The guest's console log (kernel and agent messages), as text; `follow=true` streams on.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/logs", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id"), LogsQuery),
    responses((status = 200, content_type = "text/plain", body = String), (status = 404, body = api::Error)))]
pub(crate) async fn logs(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
    q: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    auth.need(Scope::Read)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let r = app.owned(&auth.0, &id)?;
    let bytes = app.host.logs(&r.id)?;
    let ct = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    if !q.follow {
        return Ok((ct, bytes).into_response());
    }
    // Followed: what is there, then what is appended (from the start of the file again when
    // cove-vm rotates it), looked for every 200 ms, until the sandbox is removed.
    let path = app.host.console_log(&r);
    // The jail writes this file: opened without following a link it may have left.
    let size = |p: &std::path::Path| {
        cove_host::open_untrusted(p)
            .and_then(|f| f.metadata())
            .map(|m| m.len())
    };
    let at = size(&path).unwrap_or(0);
    let first = futures::stream::once(async move { Ok::<_, std::io::Error>(bytes) });
    let rest = futures::stream::unfold(
        (app, r.id, path, at),
        move |(app, id, path, mut at)| async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                let len = match size(&path) {
                    Ok(n) => n,
                    // Removed with its sandbox: the end.
                    Err(_) if app.host.get(&id).is_err() => return None,
                    Err(_) => 0,
                };
                if len < at {
                    at = 0;
                }
                if len > at {
                    use std::io::{Read as _, Seek as _};
                    let mut buf = Vec::new();
                    let read = cove_host::open_untrusted(&path).and_then(|mut f| {
                        f.seek(std::io::SeekFrom::Start(at))?;
                        f.take(len - at).read_to_end(&mut buf)
                    });
                    if read.is_ok() {
                        at += buf.len() as u64;
                        return Some((Ok(buf), (app, id, path, at)));
                    }
                }
                if app.host.get(&id).is_err() {
                    return None;
                }
            }
        },
    );
    use futures::StreamExt as _;
    Ok((ct, axum::body::Body::from_stream(first.chain(rest))).into_response())
}

/// CPU, memory and disk a sandbox uses, measured on the host.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/metrics", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 200, body = api::SandboxMetrics), (status = 404, body = api::Error)))]
pub(crate) async fn metrics(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<api::SandboxMetrics>, ApiError> {
    auth.need(Scope::Read)?;
    let r = app.owned(&auth.0, &id)?;
    let u = app.host.usage(&r.id).await?;
    Ok(Json(api::SandboxMetrics {
        cpu_seconds: u.cpu_seconds,
        memory_bytes: u.memory_bytes,
        memory_limit_bytes: u.memory_limit_bytes,
        disk_bytes: u.disk_bytes,
        disk_limit_bytes: u.disk_limit_bytes,
    }))
}

/// The sandbox's processes (every process of the guest, the agent included).
#[utoipa::path(get, path = "/v1/sandboxes/{id}/processes", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 200, body = api::List<api::Process>), (status = 404, body = api::Error),
        (status = 409, body = api::Error)))]
pub(crate) async fn list_processes(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<api::List<api::Process>>, ApiError> {
    auth.need(Scope::Read)?;
    let r = app.owned(&auth.0, &id)?;
    let items = app
        .host
        .connect(&r.id)
        .await?
        .processes()
        .await?
        .into_iter()
        .map(|p| api::Process {
            pid: p.pid,
            ppid: p.ppid,
            uid: p.uid,
            state: p.state,
            rss_bytes: p.rss_bytes,
            cpu_ms: p.cpu_ms,
            cmdline: p.cmdline,
        })
        .collect();
    Ok(Json(api::List { items }))
}

/// Signal one process of the sandbox (never its agent).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/processes/{pid}/kill", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id"), ("pid" = u32, Path, description = "Pid in the guest")),
    request_body = api::Kill,
    responses((status = 204, description = "Sent"), (status = 400, body = api::Error),
        (status = 404, body = api::Error)))]
pub(crate) async fn kill_process(
    State(app): State<App>,
    auth: Auth,
    Path((id, pid)): Path<(String, String)>,
    Json(req): Json<api::Kill>,
) -> Result<StatusCode, ApiError> {
    auth.need(Scope::Exec)?;
    let r = app.owned(&auth.0, &id)?;
    let pid: u32 = pid
        .parse()
        .map_err(|_| ApiError::not_found("process", &pid))?;
    let signal = super::commands::kill_signal(&req)?;
    let client = app.host.connect(&r.id).await?;
    match client.kill(pid, signal).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(cove_host::ClientError::Agent(a)) if a.code == cove_protocol::ErrorCode::NotFound => {
            Err(ApiError::not_found("process", &pid.to_string()))
        }
        Err(e) => Err(e.into()),
    }
}
