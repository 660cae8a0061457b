//! envd's `process.Process` service over the guest agent's process table: `Start` runs a
//! command that outlives its stream (an exec with `keep`), `Connect` follows one again,
//! `SendInput`, `CloseStdin`, `SendSignal` and `Update` reach it by pid or tag, `List` shows
//! the table.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use cove_host::SandboxRecord;
use cove_host::agent::{Event, ExecSession};
use cove_protocol::{ProcessRef, Reply, Stream, TtySize};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::connect::{self, Code, RpcError, StreamTx};
use super::envd::{effective_user, user};
use crate::app::App;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProcessConfig {
    cmd: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    envs: BTreeMap<String, String>,
    cwd: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Size {
    cols: u16,
    rows: u16,
}

#[derive(Debug, Deserialize)]
struct Pty {
    size: Size,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartRequest {
    process: ProcessConfig,
    pty: Option<Pty>,
    tag: Option<String>,
    stdin: Option<bool>,
}

/// `{"pid": N}` or `{"tag": T}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Selector {
    pid: Option<u32>,
    tag: Option<String>,
}

impl Selector {
    fn to_ref(&self) -> Result<ProcessRef, RpcError> {
        match (self.pid, &self.tag) {
            (Some(p), _) => Ok(ProcessRef::Pid(p)),
            (None, Some(t)) => Ok(ProcessRef::Tag(t.clone())),
            (None, None) => Err(RpcError::new(
                Code::InvalidArgument,
                "process: give a pid or a tag",
            )),
        }
    }
}

#[derive(Debug, Deserialize)]
struct ByProcess {
    process: Selector,
}

/// Input bytes, base64 (`stdin` for pipes, `pty` for a terminal).
#[derive(Debug, Default, Deserialize)]
struct Input {
    stdin: Option<String>,
    pty: Option<String>,
}

impl Input {
    fn bytes(&self) -> Result<Vec<u8>, RpcError> {
        let b64 = self.stdin.as_deref().or(self.pty.as_deref()).unwrap_or("");
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| RpcError::new(Code::InvalidArgument, format!("input: not base64: {e}")))
    }
}

#[derive(Debug, Deserialize)]
struct SendInput {
    process: Selector,
    #[serde(default)]
    input: Input,
}

/// A signal by name (`SIGNAL_SIGKILL`) or number.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Signal {
    Name(String),
    Number(i32),
}

#[derive(Debug, Deserialize)]
struct SendSignal {
    process: Selector,
    signal: Signal,
}

#[derive(Debug, Deserialize)]
struct Update {
    process: Selector,
    pty: Option<Pty>,
}

/// A table entry as `List` shows it.
#[derive(Debug, Serialize)]
struct ProcessInfo {
    config: serde_json::Value,
    pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<String>,
}

/// One call of the service.
pub(crate) async fn call(
    app: App,
    rec: SandboxRecord,
    method: String,
    headers: HeaderMap,
    body: Vec<u8>,
) -> Response {
    match method.as_str() {
        "Start" => match connect::stream_request::<StartRequest>(&headers, &body) {
            Ok(r) => start(app, rec, &headers, r).await,
            Err(e) => connect::failed_stream(e).await,
        },
        "Connect" => match connect::stream_request::<ByProcess>(&headers, &body) {
            Ok(r) => follow(app, rec, &headers, r).await,
            Err(e) => connect::failed_stream(e).await,
        },
        "StreamInput" => stream_input(app, rec, &headers, &body).await,
        _ => unary(app, rec, &method, &headers, &body)
            .await
            .unwrap_or_else(IntoResponse::into_response),
    }
}

async fn unary(
    app: App,
    rec: SandboxRecord,
    method: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, RpcError> {
    let client = app
        .host
        .connect(&rec.id)
        .await
        .map_err(crate::error::ApiError::from)?;
    match method {
        "List" => {
            let table = client.process_table().await?;
            let processes: Vec<ProcessInfo> = table
                .into_iter()
                .map(|e| {
                    let (cmd, args) = e
                        .argv
                        .split_first()
                        .map_or((String::new(), vec![]), |(c, a)| (c.clone(), a.to_vec()));
                    let envs: BTreeMap<String, String> = e.env.into_iter().collect();
                    ProcessInfo {
                        config: json!({"cmd": cmd, "args": args, "envs": envs, "cwd": e.cwd}),
                        pid: e.pid,
                        tag: e.tag,
                    }
                })
                .collect();
            Ok(connect::unary(&json!({"processes": processes})))
        }
        "SendInput" => {
            let r: SendInput = connect::unary_request(headers, body)?;
            let bytes = r.input.bytes()?;
            client
                .input(r.process.to_ref()?, &bytes)
                .await
                .map_err(gone)?;
            Ok(connect::unary(&json!({})))
        }
        "CloseStdin" => {
            let r: ByProcess = connect::unary_request(headers, body)?;
            client
                .close_input(r.process.to_ref()?)
                .await
                .map_err(gone)?;
            Ok(connect::unary(&json!({})))
        }
        "SendSignal" => {
            let r: SendSignal = connect::unary_request(headers, body)?;
            let n = match &r.signal {
                Signal::Number(n) => *n,
                Signal::Name(s) => match s.as_str() {
                    "SIGNAL_SIGKILL" => 9,
                    "SIGNAL_SIGTERM" => 15,
                    other => {
                        return Err(RpcError::new(
                            Code::InvalidArgument,
                            format!("signal {other:?}: SIGNAL_SIGKILL or SIGNAL_SIGTERM"),
                        ));
                    }
                },
            };
            crate::error::ApiError::check_range("signal", n, cove_api::limits::SIGNAL)?;
            client
                .signal_process(r.process.to_ref()?, n)
                .await
                .map_err(gone)?;
            Ok(connect::unary(&json!({})))
        }
        "Update" => {
            let r: Update = connect::unary_request(headers, body)?;
            if let Some(p) = r.pty {
                client
                    .resize_process(
                        r.process.to_ref()?,
                        TtySize {
                            rows: p.size.rows,
                            cols: p.size.cols,
                        },
                    )
                    .await
                    .map_err(gone)?;
            }
            Ok(connect::unary(&json!({})))
        }
        other => Err(RpcError::new(
            Code::Unimplemented,
            format!("process.Process/{other} is not a method of this server"),
        )),
    }
}

/// A process that is not running is the call's `not_found`.
fn gone(e: cove_host::ClientError) -> RpcError {
    match &e {
        cove_host::ClientError::Agent(a) if a.code == cove_protocol::ErrorCode::NotFound => {
            RpcError::new(Code::NotFound, a.to_string())
        }
        _ => e.into(),
    }
}

/// `Connect-Timeout-Ms`, when the client set one.
fn deadline(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("connect-timeout-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
}

/// `Start`: runs the command (it outlives the stream, as in envd) and streams its events. The
/// call's deadline (`Connect-Timeout-Ms`) is the process's time limit, as in envd.
async fn start(app: App, rec: SandboxRecord, headers: &HeaderMap, r: StartRequest) -> Response {
    let run = async {
        let user = effective_user(&app, &rec, user(headers)?);
        if r.process.cmd.is_empty() {
            return Err(RpcError::new(Code::InvalidArgument, "process.cmd is empty"));
        }
        let cwd = match r.process.cwd.as_deref().filter(|c| !c.is_empty()) {
            Some(c) => match super::envd::Who::absolute(c)? {
                Some(p) => Some(p),
                // A relative one starts at the user's home, which the guest's files say.
                None => {
                    let client = app
                        .host
                        .connect(&rec.id)
                        .await
                        .map_err(crate::error::ApiError::from)?;
                    Some(user.resolve(&client, c).await?)
                }
            },
            None => None,
        };
        let mut argv = vec![r.process.cmd];
        argv.extend(r.process.args);
        let tty = r.pty.map(|p| cove_api::TtySize {
            rows: p.size.rows,
            cols: p.size.cols,
        });
        let start = cove_api::ExecStart {
            cmd: argv,
            env: r.process.envs,
            cwd,
            user: Some(user.name),
            stdin: r.stdin.unwrap_or(false),
            tty,
            timeout_secs: deadline(headers).map(|ms| ms as f64 / 1000.0),
            tag: r.tag,
            keep: true,
        };
        let req = crate::routes::ws::exec_request(&app, &rec, start).map_err(RpcError::from)?;
        let client = app
            .host
            .connect(&rec.id)
            .await
            .map_err(crate::error::ApiError::from)?;
        let ex = client.exec(req).await;
        app.metrics.exec(ex.is_ok());
        let ex = ex?;
        Ok((ex, tty.is_some()))
    };
    match run.await {
        Ok((ex, tty)) => events(ex, tty, connect::keepalive_interval(headers)),
        Err(e) => connect::failed_stream(e).await,
    }
}

/// `Connect`: follows a running process from now on.
async fn follow(app: App, rec: SandboxRecord, headers: &HeaderMap, r: ByProcess) -> Response {
    let run = async {
        let which = r.process.to_ref()?;
        let client = app
            .host
            .connect(&rec.id)
            .await
            .map_err(crate::error::ApiError::from)?;
        let ex = client.attach(which).await.map_err(gone)?;
        let tty = client
            .process_table()
            .await?
            .iter()
            .any(|e| e.pid == ex.pid && e.tty);
        Ok::<_, RpcError>((ex, tty))
    };
    match run.await {
        Ok((ex, tty)) => events(ex, tty, connect::keepalive_interval(headers)),
        Err(e) => connect::failed_stream(e).await,
    }
}

/// The process's events as a stream: `start`, `data` (stdout, stderr, or pty for a terminal),
/// `keepalive` while silent, `end`. The client leaving ends only the stream (and the session
/// following the process); the process runs on.
fn events(mut ex: ExecSession, tty: bool, every: Duration) -> Response {
    connect::serve_stream(
        json!({"event": {"start": {"pid": ex.pid}}}),
        json!({"event": {"keepalive": {}}}),
        every,
        move |tx| async move { pump(&mut ex, &tx, tty).await },
    )
}

async fn pump(ex: &mut ExecSession, tx: &StreamTx, tty: bool) -> Option<RpcError> {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    loop {
        let ev = ex.next().await;
        let msg = match ev {
            Ok(Some(Event::Data(stream, b))) => {
                let key = match (tty, stream) {
                    (true, _) => "pty",
                    (false, Stream::Stderr) => "stderr",
                    (false, _) => "stdout",
                };
                json!({"event": {"data": {key: b64(&b)}}})
            }
            Ok(Some(Event::Eof(_))) => continue,
            Ok(Some(Event::Reply(Reply::Exited(st)))) => {
                if st.timed_out {
                    return Some(RpcError::new(
                        Code::DeadlineExceeded,
                        "the process ran past the call's deadline and was killed",
                    ));
                }
                let (code, status) = match (st.code, st.signal) {
                    (Some(c), _) => (c, format!("exit status {c}")),
                    (None, Some(s)) => (-1, format!("signal: {}", signal_name(s))),
                    (None, None) => (-1, "unknown".to_string()),
                };
                let mut end = json!({"exited": st.code.is_some(), "status": status});
                if code != 0 {
                    end["exitCode"] = json!(code);
                    end["error"] = json!(status);
                }
                tx.send(&json!({"event": {"end": end}})).await;
                return None;
            }
            Ok(Some(Event::Reply(Reply::Error(e)))) => {
                return Some(RpcError::from(cove_host::ClientError::from(e)));
            }
            Ok(Some(Event::Reply(_))) => continue,
            Ok(None) => {
                return Some(RpcError::new(
                    Code::Unavailable,
                    "the sandbox went away while the process ran",
                ));
            }
            Err(e) => return Some(e.into()),
        };
        if !tx.send(&msg).await {
            // The client left: the process runs on (it was started with `keep`).
            return None;
        }
    }
}

fn signal_name(s: i32) -> &'static str {
    match s {
        9 => "killed",
        15 => "terminated",
        2 => "interrupt",
        1 => "hangup",
        6 => "aborted",
        11 => "segmentation fault",
        13 => "broken pipe",
        _ => "signal",
    }
}

/// `StreamInput` (a client stream): every `data` message's input to the process its `start`
/// names; answered with one empty message.
async fn stream_input(app: App, rec: SandboxRecord, headers: &HeaderMap, body: &[u8]) -> Response {
    let run = async {
        let msgs = connect::envelopes(body)?;
        let client = app
            .host
            .connect(&rec.id)
            .await
            .map_err(crate::error::ApiError::from)?;
        let mut target = None;
        for m in msgs {
            let v: serde_json::Value = serde_json::from_slice(m).map_err(|e| {
                RpcError::new(Code::InvalidArgument, format!("malformed message: {e}"))
            })?;
            if let Some(s) = v.get("start") {
                let s: ByProcess = serde_json::from_value(s.clone())
                    .map_err(|e| RpcError::new(Code::InvalidArgument, format!("start: {e}")))?;
                target = Some(s.process.to_ref()?);
            } else if let Some(d) = v.get("data") {
                let input: Input =
                    serde_json::from_value(d.get("input").cloned().unwrap_or_default())
                        .map_err(|e| RpcError::new(Code::InvalidArgument, format!("input: {e}")))?;
                let Some(t) = &target else {
                    return Err(RpcError::new(Code::InvalidArgument, "data before start"));
                };
                client
                    .input(t.clone(), &input.bytes()?)
                    .await
                    .map_err(gone)?;
            }
        }
        Ok(())
    };
    let _ = headers;
    let (tx, res) = connect::stream();
    match run.await {
        Ok(()) => {
            tx.send(&json!({})).await;
            tx.end(None).await;
        }
        Err(e) => tx.end(Some(e)).await,
    }
    res
}
