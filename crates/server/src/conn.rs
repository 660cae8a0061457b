//! Serving connections with deadlines on the client: hyper's connection builder, driven here
//! because `axum::serve` sets no timer (so no header deadline) and has no way to set one.
//!
//! - Headers: a request's head (and, on a kept-alive connection, the next one) must arrive
//!   within `COVE_HEADER_TIMEOUT_SECS` (30 s), or the connection is closed: a client that opens
//!   connections and sends nothing, or a byte a minute, holds nothing for long.
//!   The first bytes of a connection too: hyper picks HTTP/1 or HTTP/2 from them (up to the
//!   24 of the HTTP/2 preface) before its own header timer runs, so [`FirstBytes`] holds them
//!   to the same deadline (a client that connects and sends nothing is let go).
//! - Bodies: each next piece of a request body within `COVE_BODY_TIMEOUT_SECS` (60 s), or the
//!   request fails with a `4xx` (a large upload at any speed passes; a stalled one does not).
//! - Upgraded connections (an interactive exec) are the route's: they end when it ends.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tower::ServiceExt as _;

use crate::auth::Peer;

/// A duration in whole seconds from `var`, or `default`.
fn secs(var: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|s| *s > 0)
            .unwrap_or(default),
    )
}

/// How long a request's head may take (`COVE_HEADER_TIMEOUT_SECS`).
pub(crate) fn header_timeout() -> Duration {
    secs("COVE_HEADER_TIMEOUT_SECS", 30)
}

/// How long a request body may pause between pieces (`COVE_BODY_TIMEOUT_SECS`).
pub(crate) fn body_timeout() -> Duration {
    secs("COVE_BODY_TIMEOUT_SECS", 60)
}

/// A connection whose first bytes must arrive by a deadline (see the module's doc).
struct FirstBytes<I> {
    io: I,
    /// Bytes still to come under the deadline.
    left: usize,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<I> FirstBytes<I> {
    fn new(io: I) -> Self {
        Self {
            io,
            left: 24,
            deadline: Some(Box::pin(tokio::time::sleep(header_timeout()))),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FirstBytes<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(d) = this.deadline.as_mut()
            && d.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no request within the header deadline",
            )));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            let n = buf.filled().len() - before;
            this.left = this.left.saturating_sub(n);
            if this.left == 0 || n == 0 {
                this.deadline = None;
            }
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FirstBytes<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Something that accepts connections and says who is at the other end.
pub(crate) trait Accept: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = std::io::Result<(Self::Io, Peer)>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<(Self::Io, Peer)> {
        let (s, _) = tokio::net::TcpListener::accept(self).await?;
        let _ = s.set_nodelay(true);
        Ok((s, Peer::default()))
    }
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<(Self::Io, Peer)> {
        let (s, _) = tokio::net::UnixListener::accept(self).await?;
        let peer = Peer {
            uid: s.peer_cred().ok().map(|c| c.uid()),
        };
        Ok((s, peer))
    }
}

/// Serves `router` on every connection `listener` accepts until `shutdown` completes, then lets
/// the connections finish what they are doing (new requests are refused) for up to 10 s.
pub(crate) async fn serve<L: Accept>(
    listener: L,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Some(header_timeout()));
    builder
        .http2()
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .keep_alive_interval(Some(header_timeout()))
        .keep_alive_timeout(Duration::from_secs(20));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (io, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, say: wait a little rather than spin.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let svc = router.clone().map_request(
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req.map(axum::body::Body::new)
            },
        );
        let conn = builder
            .serve_connection_with_upgrades(
                TokioIo::new(FirstBytes::new(io)),
                TowerToHyperService::new(svc),
            )
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
    Ok(())
}
