//! Port relays: a TCP connection to a port of the guest, carried over the host's session
//! (`Request::Connect`). This is how coved reaches a sandbox's ports whatever its network: a
//! server bound to the guest's loopback only, or a sandbox with no network device at all.

use std::net::{Ipv4Addr, SocketAddr};

use cove_protocol::frame::{DATA_PREFIX_LEN, MAX_DATA_CHUNK, put_data_prefix};
use cove_protocol::{AgentError, ErrorCode, Reply, Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::server::{Inbound, Outbox};

fn refused(port: u16, e: &std::io::Error) -> AgentError {
    let code = e
        .raw_os_error()
        .map_or(ErrorCode::Internal, ErrorCode::from_errno);
    AgentError {
        code,
        message: format!("nothing accepts connections on port {port} in the sandbox ({e})"),
        path: None,
    }
}

/// The guest's own addresses to try, in order: loopback, then its network address.
fn targets(port: u16) -> Vec<SocketAddr> {
    let mut out = vec![SocketAddr::from((Ipv4Addr::LOCALHOST, port))];
    if let Some((addr, _, _)) =
        crate::init::cmdline_value("cove.net").and_then(|s| crate::net::parse(&s))
    {
        out.push(SocketAddr::from((addr, port)));
    }
    out
}

/// Serves one `Connect`: connects, answers `Connected`, then relays both ways until both
/// directions have closed (`Done` with the bytes relayed) or the host cancels.
pub async fn connect(
    port: u16,
    ob: &Outbox,
    mut inbox: mpsc::UnboundedReceiver<Inbound>,
) -> Result<Reply, AgentError> {
    if port == 0 {
        return Err(AgentError {
            code: ErrorCode::InvalidRequest,
            message: "port 0".into(),
            path: None,
        });
    }
    let mut last = None;
    let mut stream = None;
    for t in targets(port) {
        match TcpStream::connect(t).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let Some(stream) = stream else {
        let e = last.unwrap_or_else(|| std::io::Error::from_raw_os_error(libc::ECONNREFUSED));
        return Err(refused(port, &e));
    };
    let _ = stream.set_nodelay(true);
    ob.reply(&Reply::Connected).await;
    let (mut rd, mut wr) = stream.into_split();
    let out = ob.clone();
    let session = ob.session();
    // Guest to host, straight into frame buffers; paced by the host's credit.
    let mut up = tokio::spawn(async move {
        let mut total = 0u64;
        loop {
            // Read into the frame's spare capacity: nothing is zeroed first (64 KiB a read,
            // which an emulated guest feels on every proxied request).
            let mut buf = Vec::with_capacity(DATA_PREFIX_LEN + MAX_DATA_CHUNK);
            buf.resize(DATA_PREFIX_LEN, 0);
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    put_data_prefix(&mut buf, session, Stream::Stdout, n);
                    out.data_encoded(buf, n).await;
                    total += n as u64;
                }
            }
        }
        out.eof(Stream::Stdout).await;
        total
    });
    let mut down = 0u64;
    let mut down_open = true;
    let mut up_total = None;
    while down_open || up_total.is_none() {
        tokio::select! {
            // Still read after the host's end closed: a cancel may follow.
            ev = inbox.recv() => match ev {
                Some(Inbound::Data(Stream::Stdin, bytes)) => {
                    if !down_open {
                        // Past the host's end or the guest's: dropped.
                    } else if wr.write_all(&bytes).await.is_err() {
                        // The guest's side is gone: what the host sends next is dropped.
                        down_open = false;
                    } else {
                        down += bytes.len() as u64;
                    }
                    ob.grant(bytes.len()).await;
                }
                Some(Inbound::Eof(Stream::Stdin)) => {
                    if down_open {
                        let _ = wr.shutdown().await;
                    }
                    down_open = false;
                }
                Some(Inbound::Cancel) | None => {
                    up.abort();
                    return Err(AgentError {
                        code: ErrorCode::Cancelled,
                        message: "connection cancelled".into(),
                        path: None,
                    });
                }
                Some(_) => {}
            },
            r = &mut up, if up_total.is_none() => {
                up_total = Some(r.unwrap_or(0));
            }
        }
    }
    Ok(Reply::Done {
        bytes: down + up_total.unwrap_or(0),
    })
}
