//! Streaming exec over WebSocket: stdin, stdout, stderr, terminal resizes, signals, the exit.
//! The messages are in `cove_api::{ExecStart, ExecControl, ExecEvent}`.
//!
//! Backpressure is end to end: output is read from the agent only as fast as the WebSocket
//! takes it, so a slow client holds back the guest's writer through the session's credit window
//! rather than filling coved's memory.

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use cove_api as api;
use cove_host::agent::{Event, SessionSender};
use cove_protocol::{ExecRequest, Reply, Request, Stream, TtySize};

use crate::app::App;
use crate::auth::Auth;
use crate::error::ApiError;
use crate::keys::Scope;
use crate::routes::exec::exec_env;

/// Start a command and stream it (WebSocket; see `ExecStart`, `ExecControl`, `ExecEvent`).
#[utoipa::path(get, path = "/v1/sandboxes/{id}/exec/ws", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 101, description = "Upgraded: send an ExecStart"),
        (status = 404, body = api::Error), (status = 426, description = "Not a WebSocket request", body = api::Error)))]
pub async fn exec_ws(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
    ws: Upgrade,
) -> Result<Response, ApiError> {
    auth.need(Scope::Exec)?;
    let rec = app.owned(&auth.0, &id)?;
    let ws = upgraded(ws)?;
    // The session runs after the upgrade, outside the request: it keeps the caller's actor (a
    // sandbox the idle policy put away is woken by this caller).
    let actor = auth.0.actor.clone();
    let shows_host = auth.0.tenant.is_none();
    Ok(ws.on_upgrade(move |socket| {
        crate::error::SHOWS_HOST.scope(shows_host, async move {
            let mut socket = socket;
            let outcome = cove_host::ACTOR
                .scope(actor, session(&app, &rec, &mut socket))
                .await;
            app.metrics.exec(outcome.is_ok());
            close(&mut socket, outcome).await;
        })
    }))
}

/// Ends a session's socket: the error as an `error` event, then the close frame.
pub(crate) async fn close(socket: &mut WebSocket, outcome: Result<(), ApiError>) {
    let frame = close_frame(outcome.as_ref().err());
    if let Err(e) = outcome {
        let ev = api::ExecEvent::Error(api::Error {
            code: e.code.into(),
            message: crate::error::redact(&e.message),
            request_id: None,
        });
        let _ = socket.send(event(&ev)).await;
    }
    // The client has what it needs (`exit` or `error`) and is let close first: a close frame
    // right behind the last message loses that message in some clients (websockets' sync
    // client for Python, when both arrive in one read), so ours follows only after a moment
    // without theirs.
    let theirs = async {
        while let Some(Ok(m)) = socket.recv().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), theirs).await;
    let _ = socket.send(Message::Close(Some(frame))).await;
}

/// A WebSocket route's upgrade, or why the request is not one.
pub(crate) type Upgrade =
    Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>;

/// The upgrade, or `426` naming what the request lacks.
pub(crate) fn upgraded(ws: Upgrade) -> Result<WebSocketUpgrade, ApiError> {
    ws.map_err(|e| {
        ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            format!("this route is a WebSocket: {}", e.body_text()),
        )
    })
}

/// The close frame that ends a session: normal, or the error's code and message (which the
/// `error` event before it carries whole; a close reason holds at most 123 bytes).
fn close_frame(e: Option<&ApiError>) -> CloseFrame {
    let Some(e) = e else {
        return CloseFrame {
            code: close_code::NORMAL,
            reason: "".into(),
        };
    };
    let code = match e.status {
        StatusCode::PAYLOAD_TOO_LARGE => close_code::SIZE,
        s if s.is_client_error() => close_code::POLICY,
        _ => close_code::ERROR,
    };
    let mut reason = format!("{}: {}", e.code, crate::error::redact(&e.message));
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    reason.truncate(cut);
    CloseFrame {
        code,
        reason: reason.into(),
    }
}

fn event(ev: &api::ExecEvent) -> Message {
    Message::Text(serde_json::to_string(ev).expect("serializes").into())
}

async fn session(
    app: &crate::app::Inner,
    rec: &cove_host::SandboxRecord,
    socket: &mut WebSocket,
) -> Result<(), ApiError> {
    let start: api::ExecStart = match socket.recv().await {
        Some(Ok(Message::Text(t))) => serde_json::from_str(&t).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unprocessable",
                format!("the first message must be an ExecStart: {e}"),
            )
        })?,
        _ => {
            return Err(ApiError::bad_request(
                "the first message must be an ExecStart (text)",
            ));
        }
    };
    let stdin = start.stdin;
    let req = exec_request(app, rec, start)?;
    let client = app.host.connect(&rec.id).await?;
    let ex = client.exec(req).await?;
    relay(ex, socket, stdin).await
}

/// The agent's request for an `ExecStart`.
pub(crate) fn exec_request(
    app: &crate::app::Inner,
    rec: &cove_host::SandboxRecord,
    start: api::ExecStart,
) -> Result<ExecRequest, ApiError> {
    let timeout_ms = crate::routes::exec::timeout_ms(start.timeout_secs)?;
    // The tag's rules (all digits would read as a pid) are the agent's: it answers
    // `invalid_request`, a 400 here.
    let base = exec_env(app, rec, start.cmd, start.env, start.cwd, start.user)?;
    Ok(ExecRequest {
        tty: start.tty.map(|t| TtySize {
            rows: t.rows,
            cols: t.cols,
        }),
        stdin: start.stdin,
        timeout_ms,
        tag: start.tag,
        keep: start.keep,
        ..base
    })
}

/// Relays a started (or attached) process and a WebSocket until the process exits or the
/// client leaves (which ends the session: the agent kills a process that was not kept).
///
/// Output and input run as two halves side by side: stdin waits for the agent's credit (it is
/// granted as the process reads), and a process that reads only while its output is taken
/// (`cat`) would deadlock a loop that did both in turn once its pipes filled.
pub(crate) async fn relay(
    mut ex: cove_host::agent::ExecSession,
    socket: &mut WebSocket,
    stdin: bool,
) -> Result<(), ApiError> {
    use futures::{SinkExt as _, StreamExt as _};
    let _ = socket
        .send(event(&api::ExecEvent::Started { pid: ex.pid }))
        .await;
    let sender = ex.session.sender();
    let (mut out, mut inp) = (&mut *socket).split();
    let output = async {
        loop {
            match ex.next().await? {
                Some(Event::Data(stream, b)) => {
                    let mut m = Vec::with_capacity(b.len() + 1);
                    m.push(if stream == Stream::Stderr { 2 } else { 1 });
                    m.extend_from_slice(&b);
                    if out.send(Message::Binary(m.into())).await.is_err() {
                        // The client left: the session ends with this function, and the agent
                        // kills what the session started unless it was kept.
                        return Ok(());
                    }
                }
                Some(Event::Eof(_)) => {}
                Some(Event::Reply(Reply::Exited(st))) => {
                    let _ = out
                        .send(event(&api::ExecEvent::Exit {
                            exit_code: st.shell_code(),
                            timed_out: st.timed_out,
                        }))
                        .await;
                    return Ok(());
                }
                Some(Event::Reply(Reply::Error(e))) => {
                    return Err(cove_host::ClientError::from(e).into());
                }
                Some(Event::Reply(_)) => {}
                None => {
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "the sandbox went away while the command ran",
                    ));
                }
            }
        }
    };
    let input = async {
        let mut stdin_open = stdin;
        loop {
            match inp.next().await {
                Some(Ok(Message::Binary(b))) if stdin_open => {
                    for chunk in b.chunks(cove_protocol::frame::MAX_DATA_CHUNK) {
                        sender.data(Stream::Stdin, chunk.to_vec()).await?;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    return Err(ApiError::bad_request(
                        "stdin was not asked for (ExecStart.stdin)",
                    ));
                }
                Some(Ok(Message::Text(t))) => {
                    control(&sender, &t, &mut stdin_open).await?;
                }
                Some(Ok(_)) => {}
                // Closed: dropping the session ends the command.
                None => return Ok(()),
                // Broken, or a message over the limit: the client is told why as the socket
                // closes (and the command ends with the session).
                Some(Err(e)) => {
                    let e = e.into_inner();
                    let too_big = matches!(
                        e.downcast_ref::<tungstenite::Error>(),
                        Some(tungstenite::Error::Capacity(_))
                    );
                    return Err(ApiError::new(
                        if too_big {
                            StatusCode::PAYLOAD_TOO_LARGE
                        } else {
                            StatusCode::BAD_REQUEST
                        },
                        if too_big {
                            "payload_too_large"
                        } else {
                            "bad_request"
                        },
                        format!("the WebSocket could not be read: {e}"),
                    ));
                }
            }
        }
    };
    tokio::select! {
        r = output => r,
        r = input => r,
    }
}

async fn control(
    sender: &SessionSender,
    text: &str,
    stdin_open: &mut bool,
) -> Result<(), ApiError> {
    let c: api::ExecControl = serde_json::from_str(text).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable",
            format!("not an ExecControl: {e}"),
        )
    })?;
    match c {
        api::ExecControl::Eof => {
            if std::mem::take(stdin_open) {
                sender.eof(Stream::Stdin).await?;
            }
        }
        api::ExecControl::Resize { rows, cols } => {
            sender
                .request(&Request::Resize(TtySize { rows, cols }))
                .await?;
        }
        api::ExecControl::Signal { signal } => {
            ApiError::check_range("signal", signal, cove_api::limits::SIGNAL)?;
            sender.request(&Request::Signal { signal }).await?;
        }
    }
    Ok(())
}
