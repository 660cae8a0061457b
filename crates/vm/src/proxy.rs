//! The link to the guest agent, shared by every attached client.
//!
//! cove-vm holds the one connection to the agent's port and gives each client session a global
//! id on it, so many clients (CLI invocations, coved) run sessions at once. Frames from the agent
//! are routed back by that id; everything read from the guest is treated as hostile: a bad frame
//! is logged and dropped, never trusted to name a client.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cove_protocol::io::{FrameReader, ReadError};
use cove_protocol::{Frame, FrameBody, Reply, Request, frame};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// Where a global session's frames go.
#[derive(Debug)]
struct Route {
    client: u64,
    local: u32,
    to_client: mpsc::UnboundedSender<Vec<u8>>,
    /// Data bytes the agent may still send: the window the client granted. A hostile guest that
    /// ignores it could otherwise make cove-vm and the client buffer without bound.
    credit: u64,
    /// Frames other than data the agent sent on this session, and the data frames the client
    /// sent (each may be answered by one credit frame): the first may not outgrow the second.
    control_frames: u64,
    client_data_frames: u64,
    /// The client asked for a directory watch on it: one `fs_event` per change, as many as the
    /// guest's changes. They are not counted against the allowance (the host's client bounds
    /// what it queues per session and turns a flood into one `overflow`), or a watch would be
    /// cut after 64 changes.
    watch: bool,
}

impl Route {
    fn new(client: u64, local: u32, to_client: mpsc::UnboundedSender<Vec<u8>>) -> Self {
        Self {
            client,
            local,
            to_client,
            credit: u64::from(cove_protocol::INITIAL_WINDOW),
            control_frames: 0,
            client_data_frames: 0,
            watch: false,
        }
    }

    /// Accounts for a frame from the agent; false when it breaks the protocol's limits.
    fn admit(&mut self, body: &FrameBody) -> bool {
        match body {
            FrameBody::Data(_, b) => {
                let n = b.len() as u64;
                if n > self.credit {
                    return false;
                }
                self.credit -= n;
                true
            }
            FrameBody::Msg(_) if self.watch => true,
            _ => {
                self.control_frames += 1;
                self.control_frames <= CONTROL_FRAME_ALLOWANCE + self.client_data_frames
            }
        }
    }
}

/// Non-data frames a session may receive beyond one per data frame the client sent: a started
/// or file-start reply, three end-of-streams and a final reply, with room to spare.
const CONTROL_FRAME_ALLOWANCE: u64 = 64;

/// The agent connection.
#[derive(Debug)]
pub struct Link {
    to_agent: mpsc::Sender<Vec<u8>>,
    routes: Mutex<HashMap<u32, Route>>,
    next_session: AtomicU32,
    next_client: AtomicU64,
    hello: Mutex<Option<oneshot::Sender<Reply>>>,
    /// When a frame last crossed the link, either way.
    last_activity: Mutex<std::time::Instant>,
    /// Clients' frames are held while this is true (a freeze for a snapshot), so nothing
    /// is half-delivered to the guest when its vCPUs stop.
    frozen: tokio::sync::watch::Sender<bool>,
    /// Taken for reading while a client frame is forwarded, for writing to freeze: a freeze
    /// never lands in the middle of one.
    gate: tokio::sync::RwLock<()>,
}

impl Link {
    /// Starts the reader and writer tasks over an agent connection.
    pub fn start<R, W>(reader: R, mut writer: W) -> Arc<Self>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1024);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(256 * 1024);
            while let Some(first) = rx.recv().await {
                batch.clear();
                batch.extend_from_slice(&first);
                while batch.len() < 256 * 1024 {
                    match rx.try_recv() {
                        Ok(more) => batch.extend_from_slice(&more),
                        Err(_) => break,
                    }
                }
                if writer.write_all(&batch).await.is_err() {
                    break;
                }
            }
        });
        let link = Arc::new(Self {
            to_agent: tx,
            routes: Mutex::default(),
            next_session: AtomicU32::new(1),
            next_client: AtomicU64::new(1),
            hello: Mutex::default(),
            last_activity: Mutex::new(std::time::Instant::now()),
            frozen: tokio::sync::watch::Sender::new(false),
            gate: tokio::sync::RwLock::new(()),
        });
        let l = link.clone();
        tokio::spawn(async move { l.read_agent(reader).await });
        link
    }

    /// Says hello on session 0 and waits for the agent's answer.
    pub async fn hello(
        &self,
        time_unix_ns: u64,
        entropy_hex: String,
        hostname: Option<String>,
    ) -> Result<Reply, String> {
        let (tx, rx) = oneshot::channel();
        *self.hello.lock().expect("lock") = Some(tx);
        self.send(&cove_protocol::msg_frame(
            0,
            &Request::Hello {
                versions: cove_protocol::SUPPORTED_VERSIONS.to_vec(),
                client: format!("cove-vm {}", env!("CARGO_PKG_VERSION")),
                time_unix_ns: Some(time_unix_ns),
                entropy_hex: Some(entropy_hex),
                hostname,
            },
        ))
        .await;
        rx.await
            .map_err(|_| "the agent connection closed".to_string())
    }

    /// Runs one request on a session of cove-vm's own; returns its final reply.
    pub async fn request(&self, req: &Request) -> Result<Reply, String> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let client = self.next_client.fetch_add(1, Ordering::Relaxed);
        let global = self.next_session.fetch_add(1, Ordering::Relaxed);
        self.routes
            .lock()
            .expect("lock")
            .insert(global, Route::new(client, 1, tx));
        self.send(&cove_protocol::msg_frame(global, req)).await;
        let mut dec = cove_protocol::Decoder::new();
        while let Some(bytes) = rx.recv().await {
            dec.extend(&bytes);
            while let Some(Ok(f)) = dec.decode_next() {
                if let FrameBody::Msg(json) = f.body
                    && let Ok(r) = cove_protocol::decode_msg::<Reply>(&json)
                    && r.is_final()
                {
                    return Ok(r);
                }
            }
        }
        Err("the agent connection closed".into())
    }

    /// Stops forwarding clients' frames, then asks the agent to freeze its side (see
    /// `Request::Freeze`): afterwards nothing crosses the link until [`Link::thaw`].
    pub async fn freeze(&self) -> Result<Reply, String> {
        {
            let _no_frame_in_flight = self.gate.write().await;
            self.frozen.send_replace(true);
        }
        self.request(&Request::Freeze).await
    }

    /// Ends a freeze on both sides.
    pub async fn thaw(&self) -> Result<Reply, String> {
        let r = self.request(&Request::Thaw).await;
        self.frozen.send_replace(false);
        r
    }

    /// How long nothing has happened: no session open and no frame either way.
    pub fn idle_for(&self) -> std::time::Duration {
        if !self.routes.lock().expect("lock").is_empty() {
            return std::time::Duration::ZERO;
        }
        self.last_activity.lock().expect("lock").elapsed()
    }

    /// Counts as activity (a control operation, a resume).
    pub fn touch(&self) {
        *self.last_activity.lock().expect("lock") = std::time::Instant::now();
    }

    async fn send(&self, f: &Frame) {
        self.touch();
        let mut buf = Vec::new();
        frame::encode(f, &mut buf);
        let _ = self.to_agent.send(buf).await;
    }

    async fn read_agent<R: AsyncRead + Unpin>(&self, reader: R) {
        let mut reader = FrameReader::new(reader);
        loop {
            let f = match reader.next().await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(ReadError::Frame(e)) => {
                    eprintln!("cove-vm: dropped a bad frame from the guest: {e}");
                    continue;
                }
                Err(ReadError::Io(e)) => {
                    eprintln!("cove-vm: agent connection: {e}");
                    break;
                }
            };
            self.touch();
            if f.session == 0 {
                if let FrameBody::Msg(json) = &f.body
                    && let Ok(reply) = cove_protocol::decode_msg::<Reply>(json)
                    && let Some(tx) = self.hello.lock().expect("lock").take()
                {
                    let _ = tx.send(reply);
                }
                continue;
            }
            let final_reply = match &f.body {
                FrameBody::Msg(json) => cove_protocol::decode_msg::<Reply>(json)
                    .map(|r| r.is_final())
                    .unwrap_or(false),
                _ => false,
            };
            let broken = {
                let mut routes = self.routes.lock().expect("lock");
                let Some(route) = routes.get_mut(&f.session) else {
                    continue; // a session that ended, or one the guest made up
                };
                if route.admit(&f.body) {
                    let mut buf = Vec::new();
                    frame::encode(
                        &Frame {
                            session: route.local,
                            body: f.body,
                        },
                        &mut buf,
                    );
                    let _ = route.to_client.send(buf);
                    if final_reply {
                        routes.remove(&f.session);
                    }
                    None
                } else {
                    routes.remove(&f.session)
                }
            };
            if let Some(route) = broken {
                eprintln!(
                    "cove-vm: the guest broke flow control on session {}; cancelled",
                    f.session
                );
                reply_error(
                    &route.to_client,
                    route.local,
                    "the sandbox broke the protocol's flow control on this session; it was cancelled".into(),
                );
                self.send(&cove_protocol::msg_frame(f.session, &Request::Cancel))
                    .await;
            }
        }
        // The guest is gone: every client learns it by its connection closing.
        self.routes.lock().expect("lock").clear();
    }

    /// Serves an attached client until it disconnects.
    pub async fn serve_client<R, W>(self: &Arc<Self>, reader: R, mut writer: W)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let client = self.next_client.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let writer_task = tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = first;
                while batch.len() < 256 * 1024 {
                    match rx.try_recv() {
                        Ok(more) => batch.extend_from_slice(&more),
                        Err(_) => break,
                    }
                }
                if writer.write_all(&batch).await.is_err() {
                    break;
                }
            }
        });
        // The client's own session ids → global ids.
        let mut locals: HashMap<u32, u32> = HashMap::new();
        let mut reader = FrameReader::new(reader);
        loop {
            let f = match reader.next().await {
                Ok(Some(f)) => f,
                Ok(None) | Err(ReadError::Io(_)) => break,
                Err(ReadError::Frame(e)) => {
                    if let Some(s) = e.session().filter(|s| *s != 0 && !locals.contains_key(s)) {
                        reply_error(&tx, s, format!("rejected frame: {e}"));
                    }
                    continue;
                }
            };
            if f.session == 0 {
                reply_error(&tx, 0, "session 0 belongs to cove-vm".into());
                continue;
            }
            // Forget sessions the agent has ended, so the client may reuse their ids.
            locals.retain(|_, g| self.routes.lock().expect("lock").contains_key(g));
            let global = match locals.get(&f.session) {
                Some(g) => *g,
                None => {
                    if !matches!(f.body, FrameBody::Msg(_)) {
                        continue; // data for a session that is over
                    }
                    let g = self.next_session.fetch_add(1, Ordering::Relaxed);
                    self.routes
                        .lock()
                        .expect("lock")
                        .insert(g, Route::new(client, f.session, tx.clone()));
                    locals.insert(f.session, g);
                    g
                }
            };
            // Held while the link is frozen; the gate keeps a freeze from starting mid-frame.
            let _in_flight = loop {
                let mut frozen = self.frozen.subscribe();
                let _ = frozen.wait_for(|f| !*f).await;
                let g = self.gate.read().await;
                if !*self.frozen.borrow() {
                    break g;
                }
            };
            if let Some(route) = self.routes.lock().expect("lock").get_mut(&global) {
                match &f.body {
                    FrameBody::Window(n) => {
                        route.credit = route.credit.saturating_add(u64::from(*n))
                    }
                    FrameBody::Data(..) => route.client_data_frames += 1,
                    FrameBody::Msg(json) => {
                        if matches!(
                            cove_protocol::decode_msg::<Request>(json),
                            Ok(Request::Watch { .. })
                        ) {
                            route.watch = true;
                        }
                    }
                    _ => {}
                }
            }
            self.send(&Frame {
                session: global,
                body: f.body,
            })
            .await;
        }
        // The client left: cancel what it still had running.
        let open: Vec<u32> = {
            let mut routes = self.routes.lock().expect("lock");
            let ids: Vec<u32> = routes
                .iter()
                .filter(|(_, r)| r.client == client)
                .map(|(g, _)| *g)
                .collect();
            for g in &ids {
                routes.remove(g);
            }
            ids
        };
        for g in open {
            self.send(&cove_protocol::msg_frame(g, &Request::Cancel))
                .await;
        }
        drop(tx);
        writer_task.abort();
    }
}

fn reply_error(tx: &mpsc::UnboundedSender<Vec<u8>>, session: u32, message: String) {
    let mut buf = Vec::new();
    frame::encode(
        &cove_protocol::msg_frame(
            session,
            &Reply::Error(cove_protocol::AgentError {
                code: cove_protocol::ErrorCode::Protocol,
                message,
                path: None,
            }),
        ),
        &mut buf,
    );
    let _ = tx.send(buf);
}

#[cfg(test)]
mod tests {
    use super::*;
    use cove_protocol::frame::FrameKind;
    use cove_protocol::{Health, Stream};
    use tokio::io::{AsyncReadExt, DuplexStream};

    /// A link to a fake agent with one attached client: (the client's end, the agent's end).
    fn link_with_client() -> (DuplexStream, DuplexStream) {
        let (agent_end, vm_end) = tokio::io::duplex(1 << 20);
        let (vr, vw) = tokio::io::split(vm_end);
        let link = Link::start(vr, vw);
        let (client_end, served_end) = tokio::io::duplex(1 << 20);
        let (sr, sw) = tokio::io::split(served_end);
        tokio::spawn(async move { link.serve_client(sr, sw).await });
        (client_end, agent_end)
    }

    /// A hostile guest sends malformed frames and frames for sessions nobody opened; the client's
    /// own session still gets exactly its own answer, and the link keeps serving.
    #[tokio::test]
    async fn hostile_guest_frames_are_dropped_and_the_link_keeps_serving() {
        let (client_end, agent_end) = link_with_client();
        let (mut cr, mut cw) = tokio::io::split(client_end);
        let (mut ar, mut aw) = tokio::io::split(agent_end);

        // The client opens its session 7 with a health request.
        let mut out = Vec::new();
        frame::encode(&cove_protocol::msg_frame(7, &Request::Health), &mut out);
        cw.write_all(&out).await.unwrap();
        // The guest sees it under a global id.
        let mut fr = FrameReader::new(&mut ar);
        let f = fr.next().await.unwrap().unwrap();
        let global = f.session;

        // Garbage first: unknown kind, short frame, oversized header, bad JSON, data for a
        // session that does not exist, then the real answer.
        let mut bad = Vec::new();
        frame::encode_raw(global, 0x99, b"x", &mut bad);
        bad.extend_from_slice(&3u32.to_le_bytes());
        bad.extend_from_slice(&[0, 0, 0]);
        frame::encode_raw(global, FrameKind::Msg as u8, b"{\"type\":", &mut bad);
        frame::encode(
            &Frame {
                session: global + 1000,
                body: FrameBody::Data(Stream::Stdout, b"not yours".to_vec()),
            },
            &mut bad,
        );
        let health = Reply::Health(Health {
            agent_version: "t".into(),
            protocol_version: 1,
            uptime_ms: 5,
            kernel_boot_ms: 1,
            agent_setup_ms: 1,
        });
        frame::encode(&cove_protocol::msg_frame(global, &health), &mut bad);
        aw.write_all(&bad).await.unwrap();

        // The client gets its answer on its own id, and nothing of the garbage but the
        // undecodable message, which is relayed as bytes for the client to reject.
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        let mut dec = cove_protocol::Decoder::new();
        let answer = loop {
            let n = cr.read(&mut buf).await.unwrap();
            assert!(n > 0, "the link closed");
            dec.extend(&buf[..n]);
            let mut done = None;
            while let Some(r) = dec.decode_next() {
                let f = r.unwrap();
                assert_eq!(f.session, 7, "only the client's own session reaches it");
                if let FrameBody::Msg(json) = &f.body
                    && let Ok(r) = cove_protocol::decode_msg::<Reply>(json)
                {
                    done = Some(r);
                }
                got.push(f);
            }
            if let Some(r) = done {
                break r;
            }
        };
        assert_eq!(answer, health);
        assert!(got.iter().all(|f| !matches!(f.body, FrameBody::Data(..))));
    }

    /// A guest that ignores the client's window gets its session cancelled instead of making
    /// cove-vm buffer without bound; the client sees a protocol error, not a flood.
    #[tokio::test]
    async fn a_guest_ignoring_flow_control_is_cut_off() {
        let (client_end, agent_end) = link_with_client();
        let (cr, mut cw) = tokio::io::split(client_end);
        let (ar, mut aw) = tokio::io::split(agent_end);

        let mut out = Vec::new();
        frame::encode(&cove_protocol::msg_frame(3, &Request::Health), &mut out);
        cw.write_all(&out).await.unwrap();
        let mut fr = FrameReader::new(ar);
        let global = fr.next().await.unwrap().unwrap().session;

        // 2 MiB of data against a 1 MiB window, never credited back (the client reads slowly).
        let flood = tokio::spawn(async move {
            for _ in 0..32 {
                let mut b = Vec::new();
                frame::encode(
                    &Frame {
                        session: global,
                        body: FrameBody::Data(Stream::Stdout, vec![0u8; 64 * 1024]),
                    },
                    &mut b,
                );
                if aw.write_all(&b).await.is_err() {
                    break;
                }
            }
            aw
        });
        // cove-vm tells the guest to cancel the session.
        let cancel = loop {
            let f = fr.next().await.unwrap().unwrap();
            if let FrameBody::Msg(json) = f.body {
                break (
                    f.session,
                    cove_protocol::decode_msg::<Request>(&json).unwrap(),
                );
            }
        };
        assert_eq!(cancel, (global, Request::Cancel));
        let _aw = flood.await.unwrap();

        // The client got at most its window of data, then a protocol error.
        let mut reader = FrameReader::new(cr);
        let mut data = 0usize;
        let err = loop {
            let f = reader.next().await.unwrap().unwrap();
            assert_eq!(f.session, 3);
            match f.body {
                FrameBody::Data(_, b) => data += b.len(),
                FrameBody::Msg(json) => break cove_protocol::decode_msg::<Reply>(&json).unwrap(),
                _ => {}
            }
        };
        assert!(data <= cove_protocol::INITIAL_WINDOW as usize, "{data}");
        assert!(matches!(err, Reply::Error(e) if e.code == cove_protocol::ErrorCode::Protocol));
    }
}
