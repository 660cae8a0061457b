//! The Connect protocol (connectrpc.com/docs/protocol), JSON codec only, as the E2B SDKs speak
//! it to envd: unary calls are a bare JSON body both ways (`application/json`); a server stream
//! answers `application/connect+json` with envelopes — a flags byte, a big-endian u32 length,
//! that many bytes of JSON — ending with an end-of-stream envelope (flag `0x02`) that carries
//! `{}` or `{"error": {"code", "message"}}`.
//!
//! Written here rather than taken from a crate: the Rust Connect crates generate their types
//! from `.proto` files with a protobuf toolchain, while these few messages are plain serde types
//! (the SDKs' JSON form of them), and the framing is the thirty lines below.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::error::ApiError;

/// The content type of a streaming call, exactly (the Python SDK compares it whole).
pub(crate) const STREAM_CONTENT_TYPE: &str = "application/connect+json";
/// An envelope's flag: the last one, carrying the stream's end.
const END_STREAM: u8 = 0x02;
/// An envelope's flag: compressed (never sent, refused when received).
const COMPRESSED: u8 = 0x01;
/// The largest request message taken (files go over `/files`, not RPCs).
const MAX_MESSAGE: usize = 4 << 20;
/// Keepalives while a stream is silent, unless the client asks for another interval.
const KEEPALIVE: Duration = Duration::from_secs(50);

/// A Connect error code (the protocol's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Code {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    Unauthenticated,
    ResourceExhausted,
    DeadlineExceeded,
    Unimplemented,
    Unavailable,
    Internal,
}

impl Code {
    fn name(self) -> &'static str {
        match self {
            Self::InvalidArgument => "invalid_argument",
            Self::NotFound => "not_found",
            Self::AlreadyExists => "already_exists",
            Self::PermissionDenied => "permission_denied",
            Self::Unauthenticated => "unauthenticated",
            Self::ResourceExhausted => "resource_exhausted",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::Unimplemented => "unimplemented",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    /// The HTTP status the protocol gives a unary error of this code.
    fn status(self) -> StatusCode {
        match self {
            Self::InvalidArgument => StatusCode::BAD_REQUEST,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::PermissionDenied => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::AlreadyExists => StatusCode::CONFLICT,
            Self::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Self::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A failed call.
#[derive(Debug, Clone)]
pub(crate) struct RpcError {
    pub code: Code,
    pub message: String,
}

impl RpcError {
    pub(crate) fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({"code": self.code.name(), "message": crate::error::redact(&self.message)})
    }
}

/// Cove's API errors as Connect codes: one mapping, by the status the rest of coved chose.
impl From<ApiError> for RpcError {
    fn from(e: ApiError) -> Self {
        let code = match e.status {
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => Code::InvalidArgument,
            StatusCode::UNAUTHORIZED => Code::Unauthenticated,
            StatusCode::FORBIDDEN => Code::PermissionDenied,
            StatusCode::NOT_FOUND => Code::NotFound,
            StatusCode::CONFLICT => Code::AlreadyExists,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::INSUFFICIENT_STORAGE => {
                Code::ResourceExhausted
            }
            StatusCode::GATEWAY_TIMEOUT => Code::DeadlineExceeded,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY => Code::Unavailable,
            _ => Code::Internal,
        };
        Self::new(code, e.message)
    }
}

impl From<cove_host::ClientError> for RpcError {
    fn from(e: cove_host::ClientError) -> Self {
        ApiError::from(e).into()
    }
}

/// A unary error: the code's status and `{"code", "message"}`.
impl IntoResponse for RpcError {
    fn into_response(self) -> Response {
        (self.code.status(), axum::Json(self.json())).into_response()
    }
}

/// A unary call's request message.
pub(crate) fn unary_request<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, RpcError> {
    let ct = content_type(headers);
    if !(ct == "application/json" || ct.starts_with("application/json;")) {
        return Err(RpcError::new(
            Code::InvalidArgument,
            format!("content type {ct:?}: this server speaks Connect with JSON (application/json)"),
        ));
    }
    decode(body)
}

/// A server-streaming call's one request message (its first envelope).
pub(crate) fn stream_request<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, RpcError> {
    let ct = content_type(headers);
    if ct != STREAM_CONTENT_TYPE {
        return Err(RpcError::new(
            Code::InvalidArgument,
            format!("content type {ct:?}: a stream is {STREAM_CONTENT_TYPE}"),
        ));
    }
    match envelopes(body)?.into_iter().next() {
        Some(m) => decode(m),
        None => Err(RpcError::new(
            Code::InvalidArgument,
            "the request holds no message",
        )),
    }
}

/// Every message envelope of a request body (a client stream's), end-of-stream excluded.
pub(crate) fn envelopes(mut body: &[u8]) -> Result<Vec<&[u8]>, RpcError> {
    let bad = |m: &str| RpcError::new(Code::InvalidArgument, format!("malformed envelope: {m}"));
    let mut out = Vec::new();
    while !body.is_empty() {
        if body.len() < 5 {
            return Err(bad("a header is 5 bytes"));
        }
        let flags = body[0];
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        if flags & COMPRESSED != 0 {
            return Err(bad("compression is not supported"));
        }
        if len > MAX_MESSAGE || body.len() - 5 < len {
            return Err(bad("its length runs past the body"));
        }
        if flags & END_STREAM == 0 {
            out.push(&body[5..5 + len]);
        }
        body = &body[5 + len..];
    }
    Ok(out)
}

fn decode<T: DeserializeOwned>(json: &[u8]) -> Result<T, RpcError> {
    if json.len() > MAX_MESSAGE {
        return Err(RpcError::new(
            Code::ResourceExhausted,
            "the message is too large",
        ));
    }
    serde_json::from_slice(json)
        .map_err(|e| RpcError::new(Code::InvalidArgument, format!("malformed message: {e}")))
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// A unary call's answer.
pub(crate) fn unary<T: Serialize>(msg: &T) -> Response {
    axum::Json(msg).into_response()
}

fn envelope(flags: u8, json: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(5 + json.len());
    b.push(flags);
    b.extend_from_slice(&u32::try_from(json.len()).expect("small").to_be_bytes());
    b.extend_from_slice(json);
    Bytes::from(b)
}

/// The sending end of a server stream.
#[derive(Debug, Clone)]
pub(crate) struct StreamTx(mpsc::Sender<Bytes>);

impl StreamTx {
    /// Sends a message; false once the client is gone.
    pub(crate) async fn send<T: Serialize>(&self, msg: &T) -> bool {
        let json = serde_json::to_vec(msg).expect("messages serialize");
        self.0.send(envelope(0, &json)).await.is_ok()
    }

    /// Resolves once the client has gone (the response body was dropped).
    pub(crate) async fn closed(&self) {
        self.0.closed().await;
    }

    /// Ends the stream, well or with an error.
    pub(crate) async fn end(self, error: Option<RpcError>) {
        let body = match error {
            None => serde_json::json!({}),
            Some(e) => serde_json::json!({"error": e.json()}),
        };
        let _ = self
            .0
            .send(envelope(
                END_STREAM,
                &serde_json::to_vec(&body).expect("serializes"),
            ))
            .await;
    }
}

/// A streaming answer whose messages come from the returned sender, each flushed as it is sent.
/// An error before any message is an end-of-stream envelope too (status 200), as every client
/// reads it.
pub(crate) fn stream() -> (StreamTx, Response) {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let body = Body::from_stream(tokio_stream_from(rx).map(Ok::<Bytes, std::convert::Infallible>));
    let mut res = Response::new(body);
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(STREAM_CONTENT_TYPE),
    );
    (StreamTx(tx), res)
}

/// The interval between keepalives: the SDKs' `Keepalive-Ping-Interval` (seconds), else 50 s.
pub(crate) fn keepalive_interval(headers: &HeaderMap) -> Duration {
    headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map_or(KEEPALIVE, Duration::from_secs)
}

/// A streaming answer fed by `pump` in a task of its own: `start` first, `keepalive` every
/// `every` while the stream is otherwise silent, then the end `pump` returns. The client
/// leaving ends it at once, even while the pump waits on a quiet source (a silent process, a
/// still directory): the pump is dropped with what it holds, so its session with the guest
/// ends too.
pub(crate) fn serve_stream<P, F>(
    start: serde_json::Value,
    keepalive: serde_json::Value,
    every: Duration,
    pump: P,
) -> Response
where
    P: FnOnce(StreamTx) -> F,
    F: Future<Output = Option<RpcError>> + Send + 'static,
{
    let (tx, res) = stream();
    let pump = pump(tx.clone());
    tokio::spawn(async move {
        if !tx.send(&start).await {
            return;
        }
        // The pump is polled in place, never restarted: a keepalive cannot cancel a read
        // halfway and lose what it read.
        tokio::pin!(pump);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                end = &mut pump => return tx.end(end).await,
                () = tx.closed() => return,
                _ = tick.tick() => {
                    if !tx.send(&keepalive).await {
                        return;
                    }
                }
            }
        }
    });
    res
}

/// A stream that only says why it failed.
pub(crate) async fn failed_stream(e: RpcError) -> Response {
    let (tx, res) = stream();
    tx.end(Some(e)).await;
    res
}

use futures::StreamExt as _;

fn tokio_stream_from(mut rx: mpsc::Receiver<Bytes>) -> impl futures::Stream<Item = Bytes> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client leaving a quiet stream ends its pump at once (and what the pump holds, such
    /// as a session with the guest), not at the next message that can no longer be sent.
    #[tokio::test]
    async fn a_client_leaving_a_quiet_stream_drops_its_pump() {
        let (held, gone) = tokio::sync::oneshot::channel::<()>();
        let res = serve_stream(
            serde_json::json!({"start": {}}),
            serde_json::json!({"keepalive": {}}),
            Duration::from_millis(20),
            move |_tx| async move {
                let _held = held;
                std::future::pending::<()>().await;
                None
            },
        );
        let mut body = res.into_body().into_data_stream();
        let first = body.next().await.unwrap().unwrap();
        assert_eq!(envelopes(&first).unwrap(), [&br#"{"start":{}}"#[..]]);
        let second = body.next().await.unwrap().unwrap();
        assert_eq!(envelopes(&second).unwrap(), [&br#"{"keepalive":{}}"#[..]]);
        drop(body);
        tokio::time::timeout(Duration::from_secs(5), gone)
            .await
            .expect("the pump was dropped")
            .unwrap_err();
    }

    /// A pump that ends ends the stream with its end envelope.
    #[tokio::test]
    async fn a_pump_ends_its_stream() {
        let res = serve_stream(
            serde_json::json!({"start": {}}),
            serde_json::json!({"keepalive": {}}),
            Duration::from_secs(60),
            |tx| async move {
                tx.send(&serde_json::json!({"n": 1})).await;
                Some(RpcError::new(Code::NotFound, "gone"))
            },
        );
        let all = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(envelopes(&all).unwrap().len(), 2);
        assert!(all.ends_with(br#"{"error":{"code":"not_found","message":"gone"}}"#));
    }

    #[test]
    fn envelopes_are_read_and_malformed_ones_refused() {
        let mut body = envelope(0, br#"{"a":1}"#).to_vec();
        body.extend_from_slice(&envelope(0, br#"{"b":2}"#));
        body.extend_from_slice(&envelope(END_STREAM, b"{}"));
        let got = envelopes(&body).unwrap();
        assert_eq!(got, [&br#"{"a":1}"#[..], &br#"{"b":2}"#[..]]);
        assert!(envelopes(&body[..body.len() - 1]).is_err(), "a cut body");
        assert!(envelopes(&[0, 0, 0]).is_err(), "a cut header");
        assert!(envelopes(&envelope(COMPRESSED, b"{}")).is_err());
        assert!(
            envelopes(&[0, 0xff, 0xff, 0xff, 0xff]).is_err(),
            "a huge length"
        );
    }
}
