//! A sandbox's TCP ports, reached through its agent (`Request::Connect`): the one way in that
//! works for every sandbox — a server bound to the guest's loopback only, a sandbox whose
//! network is `none`, one whose policy blocks everything.

use cove_protocol::frame::MAX_DATA_CHUNK;
use cove_protocol::{Reply, Request, Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::oneshot;

use crate::agent::{AgentClient, ClientError, Deadline, Event};

/// Bytes buffered each way between the caller's end and the session.
const BUFFER: usize = 256 << 10;

/// A connection to a guest's port, as [`AgentClient::connect_port`] gives it: the byte stream,
/// usable at once, and whether the agent's connect succeeded.
#[derive(Debug)]
pub struct PortStream {
    /// The caller's end: what is written before the guest's side is connected waits in the
    /// session for it (paced by the agent's credit); a failed connect ends it (EOF).
    pub stream: DuplexStream,
    /// The agent's answer to the connect: `Ok` once connected, else why not (nothing listens,
    /// the deadline passed).
    pub opened: oneshot::Receiver<Result<(), ClientError>>,
}

impl PortStream {
    /// Waits for the connect's outcome, then hands the stream over.
    pub async fn connected(self) -> Result<DuplexStream, ClientError> {
        match self.opened.await {
            Ok(Ok(())) => Ok(self.stream),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Closed),
        }
    }
}

impl AgentClient {
    /// Opens a TCP connection to `port` in the guest. It returns as soon as the request is
    /// sent, without waiting for the guest's side: what the caller writes at once travels
    /// behind the connect (one round trip to the guest saved on every proxied request), and
    /// `opened` says how the connect went. The caller's end closes when the guest's side has
    /// closed and every byte has been read (or at once when the connect failed), and dropping it
    /// closes the connection in the guest.
    pub async fn connect_port(&self, port: u16) -> Result<PortStream, ClientError> {
        let mut s = self.open(&Request::Connect { port }).await?;
        let (ours, theirs) = tokio::io::duplex(BUFFER);
        let (mut rd, mut wr) = tokio::io::split(ours);
        let sender = s.sender();
        // Caller to guest: credit from the agent paces it; the agent keeps what arrives
        // before its connect completes, and drops it if the connect fails.
        tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATA_CHUNK];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = sender.eof(Stream::Stdin).await;
                        break;
                    }
                    Ok(n) => {
                        if sender.data(Stream::Stdin, buf[..n].to_vec()).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let (tell, opened) = oneshot::channel();
        // Guest to caller, once connected: `next` credits the agent back as data is taken.
        tokio::spawn(async move {
            let outcome = match s.next_by(&Deadline::call("a connection to a port")).await {
                Ok(Some(Event::Reply(Reply::Connected))) => Ok(()),
                Ok(Some(Event::Reply(Reply::Error(e)))) => Err(e.into()),
                Ok(Some(other)) => Err(ClientError::Unexpected(format!("{other:?}"))),
                Ok(None) => Err(ClientError::Closed),
                Err(e) => Err(e),
            };
            let failed = outcome.is_err();
            let _ = tell.send(outcome);
            if failed {
                let _ = wr.shutdown().await;
                return;
            }
            let cancel = s.sender();
            while let Some(ev) = s.next().await {
                match ev {
                    Event::Data(_, b) => {
                        if wr.write_all(&b).await.is_err() {
                            // The caller is gone: end the connection in the guest.
                            let _ = cancel.request(&Request::Cancel).await;
                            break;
                        }
                    }
                    Event::Eof(_) => {
                        let _ = wr.shutdown().await;
                    }
                    Event::Reply(r) if r.is_final() => break,
                    Event::Reply(_) => {}
                }
            }
            let _ = wr.shutdown().await;
        });
        Ok(PortStream {
            stream: theirs,
            opened,
        })
    }
}
