//! A sandbox's TCP ports, reached through its agent (`Request::Connect`): the one way in that
//! works for every sandbox — a server bound to the guest's loopback only, a sandbox whose
//! network is `none`, one whose policy blocks everything.

use cove_protocol::frame::MAX_DATA_CHUNK;
use cove_protocol::{Reply, Request, Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use crate::agent::{AgentClient, ClientError, Deadline, Event};

/// Bytes buffered each way between the caller's end and the session.
const BUFFER: usize = 256 << 10;

impl AgentClient {
    /// Opens a TCP connection to `port` in the guest. The caller's end is a byte stream; it
    /// closes when the guest's side has closed and every byte has been read, and dropping it
    /// closes the connection in the guest.
    pub async fn connect_port(&self, port: u16) -> Result<DuplexStream, ClientError> {
        let mut s = self.open(&Request::Connect { port }).await?;
        match s.next_by(&Deadline::call("a connection to a port")).await? {
            Some(Event::Reply(Reply::Connected)) => {}
            Some(Event::Reply(Reply::Error(e))) => return Err(e.into()),
            Some(other) => return Err(ClientError::Unexpected(format!("{other:?}"))),
            None => return Err(ClientError::Closed),
        }
        let (ours, theirs) = tokio::io::duplex(BUFFER);
        let (mut rd, mut wr) = tokio::io::split(ours);
        let sender = s.sender();
        // Caller to guest: credit from the agent paces it.
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
        // Guest to caller: `next` credits the agent back as data is taken.
        tokio::spawn(async move {
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
        Ok(theirs)
    }
}
