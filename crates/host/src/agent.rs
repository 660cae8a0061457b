//! Client of a sandbox's agent, through its cove-vm control socket.
//!
//! One connection carries many sessions at once. Each [`Session`] receives its own replies and
//! data; data the agent sends is paced by window credit, which [`Session::next`] grants back as
//! the caller consumes it, so a slow consumer holds at most one window per session in memory.
//!
//! Replies are not paced by credit, so each session's queue is bounded too
//! ([`SESSION_QUEUE_BYTES`]): the connection's one reader never waits for a slow session (that
//! would stall every other one), it gives up on it instead. A watch session that falls behind
//! loses events behind one `overflow` event, as inotify does, and goes on; any other session
//! is cut: its reader gets an `exhausted` error after what it had queued, and the agent a
//! `cancel`. Only a reader that stops reading meets this (or an agent that floods replies): a
//! well-behaved agent's data stays within the window.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cove_protocol::control::{ControlRequest, ControlResponse};
use cove_protocol::io::{FrameReader, ReadError};
use cove_protocol::{
    AgentError, DirEntry, ErrorCode, ExecRequest, ExitStatus, FileStat, Frame, FrameBody, FsEvent,
    FsEventKind, Health, ProcessRef, Reply, Request, Stream, TableEntry, TtySize, frame,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::time::Instant;

/// How long the host waits for an answer the agent owes it at once (a stat, a listing, the
/// start of a process, the next piece of a file): `COVE_AGENT_DEADLINE_SECS`, 30 s by default.
/// The guest is the untrusted side: nothing it does (a fork bomb, a root process that freezes
/// the agent) may hold a caller of the host past a deadline.
pub fn call_deadline() -> Duration {
    static D: OnceLock<Duration> = OnceLock::new();
    *D.get_or_init(|| {
        std::env::var("COVE_AGENT_DEADLINE_SECS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|s| *s > 0)
            .map_or(Duration::from_secs(30), Duration::from_secs)
    })
}

/// How long past a process's own time limit the host waits for the agent to report its end
/// (the agent kills it at the limit; the host only steps in when the agent does not).
pub const EXEC_GRACE: Duration = Duration::from_secs(5);

/// How long a health probe of an agent that missed a deadline waits for its answer.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(5);

/// When the host stops waiting for one answer, and what it was waiting for.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Instant,
    after: Duration,
    what: &'static str,
}

impl Deadline {
    /// `after` from now, for `what`.
    pub fn after(after: Duration, what: &'static str) -> Self {
        Self {
            at: Instant::now() + after,
            after,
            what,
        }
    }

    /// [`call_deadline`] from now.
    pub fn call(what: &'static str) -> Self {
        Self::after(call_deadline(), what)
    }

    /// The deadline of a process that has a time limit of its own: the limit and
    /// [`EXEC_GRACE`]. None without a limit (a shell, a server: they run as long as they like).
    pub fn exec(timeout_ms: Option<u64>) -> Option<Self> {
        timeout_ms.map(|ms| Self::after(Duration::from_millis(ms) + EXEC_GRACE, "a command"))
    }
}

/// The sandboxes whose agent missed a deadline and then a health probe, with what it missed:
/// the host reports them `unhealthy` when it reconciles, and coved's watcher probes them again
/// (an answer clears the mark).
#[derive(Debug, Default, Clone)]
pub struct Unresponsive(Arc<Mutex<HashMap<String, String>>>);

impl Unresponsive {
    /// What sandbox `id`'s agent missed, if it is marked.
    pub fn get(&self, id: &str) -> Option<String> {
        self.0.lock().expect("lock").get(id).cloned()
    }

    /// The sandboxes marked.
    pub fn ids(&self) -> Vec<String> {
        self.0.lock().expect("lock").keys().cloned().collect()
    }

    /// Clears sandbox `id`'s mark (its agent answered, or it is gone).
    pub fn clear(&self, id: &str) {
        self.0.lock().expect("lock").remove(id);
    }

    pub(crate) fn mark(&self, id: &str, why: String) {
        self.0.lock().expect("lock").insert(id.to_string(), why);
    }
}

/// Whether the agent behind `socket` answers a health check within [`PROBE_DEADLINE`].
pub async fn answers(socket: &Path) -> bool {
    matches!(
        tokio::time::timeout(PROBE_DEADLINE, async {
            AgentClient::connect(socket).await?.health().await
        })
        .await,
        Ok(Ok(_))
    )
}

/// What a client does when one of its deadlines passes: probe the agent, and mark the sandbox
/// when the probe gets no answer either (a slow command is not a sick agent).
#[derive(Debug, Clone)]
pub(crate) struct Watch {
    pub(crate) id: String,
    pub(crate) socket: PathBuf,
    pub(crate) marks: Unresponsive,
}

impl Watch {
    fn missed(&self, d: &Deadline) {
        let w = self.clone();
        let why = format!("{}: no answer within {} s", d.what, d.after.as_secs());
        tokio::spawn(async move {
            if !answers(&w.socket).await {
                tracing::warn!("sandbox {}: its agent stopped answering ({why})", w.id);
                w.marks.mark(&w.id, why);
            }
        });
    }
}

/// What went wrong talking to an agent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting to the control socket.
    #[error("connecting to {path}")]
    Connect {
        /// The socket.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// cove-vm refused to attach.
    #[error("the sandbox refused the connection: {0}")]
    Refused(String),
    /// The connection closed before the session ended.
    #[error("the sandbox closed the connection (it stopped or failed)")]
    Closed,
    /// The agent answered something the protocol does not allow here.
    #[error("unexpected answer from the agent: {0}")]
    Unexpected(String),
    /// The agent reported an error.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The agent did not answer within the host's deadline.
    #[error("the sandbox's agent did not answer {what} within {} s", after.as_secs())]
    Timeout {
        /// What was asked.
        what: &'static str,
        /// The deadline.
        after: Duration,
    },
    /// Local I/O (a file being copied).
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

/// Something a session receives.
#[derive(Debug)]
pub enum Event {
    /// A reply.
    Reply(Reply),
    /// Data on a stream.
    Data(Stream, Vec<u8>),
    /// A stream ended.
    Eof(Stream),
}

/// Bytes of unread events one session may hold on the host, counting [`EVENT_COST`] for each:
/// four windows. Data is paced by the window (1 MiB), other replies are few — except a watch's
/// `fs_event`s, which nothing paces.
pub const SESSION_QUEUE_BYTES: usize = 4 * cove_protocol::INITIAL_WINDOW as usize;
/// What a queued event costs beyond its payload (its entry and allocation): a flood of tiny
/// frames fills the queue as surely as big ones.
const EVENT_COST: usize = 64;

/// An open session's place in the connection's table.
struct Slot {
    inbox: Arc<Inbox>,
    credit: Arc<Semaphore>,
}

impl Slot {
    /// The session is over on the host's side: its reader gets what is queued, then the end.
    fn close(&self) {
        self.credit.close();
        self.inbox.close();
    }
}

/// What a session received and its reader has not taken yet: filled by the connection's
/// reader, which never waits on it; bounded by [`SESSION_QUEUE_BYTES`].
#[derive(Debug, Default)]
struct Inbox {
    queue: Mutex<Queue>,
    ready: Notify,
}

#[derive(Debug, Default)]
struct Queue {
    /// The events and what each costs.
    events: VecDeque<(Event, usize)>,
    /// Their cost in all.
    held: usize,
    /// Nothing more comes: the session ended, was cut, or the connection went.
    closed: bool,
    /// A watch: a full queue drops events behind an `overflow` instead of cutting the session.
    watch: bool,
    /// Events taken so far.
    taken: u64,
    /// While an `overflow` this queue added is not yet taken, its number: `fs_event`s are
    /// dropped until then (the reader would see them before the loss they follow).
    overflow_at: Option<u64>,
}

/// What became of an event offered to a queue.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    Queued,
    Dropped,
    /// No room, and not a watch: the session is to be cut.
    Full,
}

impl Queue {
    /// Offers an event whose payload is `size` bytes; `last`: the session's final reply.
    fn push(&mut self, ev: Event, size: usize, last: bool) -> Admit {
        if self.closed {
            return Admit::Dropped;
        }
        let is_fs_event = matches!(ev, Event::Reply(Reply::FsEvent(_)));
        if is_fs_event && self.overflow_at.is_some() {
            return Admit::Dropped;
        }
        // Data on the stream the last event carries joins it (up to a frame's worth): a
        // process writing a byte at a time makes few entries.
        if let Event::Data(stream, b) = &ev
            && let Some((Event::Data(s, last_b), cost)) = self.events.back_mut()
            && s == stream
            && last_b.len() + b.len() <= frame::MAX_DATA_CHUNK
        {
            if self.held + b.len() > SESSION_QUEUE_BYTES {
                return Admit::Full;
            }
            last_b.extend_from_slice(b);
            *cost += b.len();
            self.held += b.len();
            return Admit::Queued;
        }
        let cost = size + EVENT_COST;
        // The final reply always fits (once: the queue closes with it).
        if !last && self.held + cost > SESSION_QUEUE_BYTES {
            if !(self.watch && is_fs_event) {
                return Admit::Full;
            }
            self.overflow_at = Some(self.taken + self.events.len() as u64);
            let overflow = FsEvent {
                name: String::new(),
                kind: FsEventKind::Overflow,
                dir: false,
            };
            self.events
                .push_back((Event::Reply(Reply::FsEvent(overflow)), EVENT_COST));
            self.held += EVENT_COST;
            return Admit::Queued;
        }
        self.events.push_back((ev, cost));
        self.held += cost;
        self.closed |= last;
        Admit::Queued
    }

    fn pop(&mut self) -> Option<Event> {
        let (ev, cost) = self.events.pop_front()?;
        self.held -= cost;
        if self.overflow_at == Some(self.taken) {
            self.overflow_at = None;
        }
        self.taken += 1;
        Some(ev)
    }
}

impl Inbox {
    fn offer(&self, ev: Event, size: usize, last: bool) -> Admit {
        let admit = self.queue.lock().expect("lock").push(ev, size, last);
        if admit == Admit::Queued {
            self.ready.notify_one();
        }
        admit
    }

    /// Ends the queue with `error` after what it holds (past the bound: it is the last).
    fn cut(&self, error: AgentError) {
        let mut q = self.queue.lock().expect("lock");
        q.overflow_at = None;
        q.events
            .push_back((Event::Reply(Reply::Error(error)), EVENT_COST));
        q.held += EVENT_COST;
        q.closed = true;
        drop(q);
        self.ready.notify_one();
    }

    fn close(&self) {
        self.queue.lock().expect("lock").closed = true;
        self.ready.notify_one();
    }

    /// The next event if one is queued.
    fn try_next(&self) -> Option<Event> {
        self.queue.lock().expect("lock").pop()
    }

    /// The next event; `None` once the queue is closed and empty. Cancel-safe: an event is
    /// taken only when it is returned.
    async fn next(&self) -> Option<Event> {
        loop {
            {
                let mut q = self.queue.lock().expect("lock");
                if let Some(ev) = q.pop() {
                    return Some(ev);
                }
                if q.closed {
                    return None;
                }
            }
            // One reader per session: a wake-up stored before this wait is not lost.
            self.ready.notified().await;
        }
    }
}

struct Inner {
    out: mpsc::Sender<Vec<u8>>,
    sessions: Mutex<HashMap<u32, Slot>>,
    next: AtomicU32,
    watch: Mutex<Option<Watch>>,
    /// Set when the reader saw the connection end: a kept client is then of no more use.
    closed: std::sync::atomic::AtomicBool,
}

impl Inner {
    /// Forgets session `id` (its reader gets what is queued, then the end).
    fn end(&self, id: u32) {
        if let Some(s) = self.sessions.lock().expect("lock").remove(&id) {
            s.close();
        }
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner").finish_non_exhaustive()
    }
}

/// A connection to one sandbox's agent.
#[derive(Debug, Clone)]
pub struct AgentClient {
    inner: Arc<Inner>,
}

impl AgentClient {
    /// Attaches to the agent through a cove-vm control socket.
    pub async fn connect(socket: &Path) -> Result<Self, ClientError> {
        let conn = UnixStream::connect(socket)
            .await
            .map_err(|source| ClientError::Connect {
                path: socket.display().to_string(),
                source,
            })?;
        let (r, mut w) = conn.into_split();
        let mut req = serde_json::to_vec(&ControlRequest::Attach).expect("serializes");
        req.push(b'\n');
        let io = |source| ClientError::Connect {
            path: socket.display().to_string(),
            source,
        };
        w.write_all(&req).await.map_err(io)?;
        let mut r = BufReader::new(r);
        let mut line = String::new();
        let d = Deadline::call("the attach");
        tokio::time::timeout_at(d.at, (&mut r).take(64 * 1024).read_line(&mut line))
            .await
            .map_err(|_| ClientError::Timeout {
                what: d.what,
                after: d.after,
            })?
            .map_err(io)?;
        match serde_json::from_str::<ControlResponse>(line.trim()) {
            Ok(ControlResponse::Ok { .. }) => {}
            Ok(ControlResponse::Error { message }) => return Err(ClientError::Refused(message)),
            Err(_) if line.is_empty() => return Err(ClientError::Closed),
            Err(e) => return Err(ClientError::Refused(format!("bad answer: {e}"))),
        }
        Ok(Self::over(r, w))
    }

    /// Runs the client over an already attached stream (also used by tests).
    pub fn over<R, W>(reader: R, mut writer: W) -> Self
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (out, mut rx) = mpsc::channel::<Vec<u8>>(256);
        tokio::spawn(async move {
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
            // Every handle is gone: the agent sees the end (a socket's half closes on drop,
            // other streams only when shut).
            let _ = writer.shutdown().await;
        });
        let inner = Arc::new(Inner {
            out,
            sessions: Mutex::default(),
            next: AtomicU32::new(1),
            watch: Mutex::default(),
            closed: Default::default(),
        });
        // The reader holds the client weakly: once every handle and session is dropped, `out`
        // goes, the writer ends and shuts its half, cove-vm closes, and the reader sees the end
        // (a strong hold kept each dropped client's connection open for the connection's life).
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let mut reader = FrameReader::new(reader);
            loop {
                let f = match reader.next().await {
                    Ok(Some(f)) => f,
                    Ok(None) | Err(ReadError::Io(_)) => break,
                    Err(ReadError::Frame(e)) => {
                        tracing::warn!("dropped a bad frame from the sandbox: {e}");
                        continue;
                    }
                };
                let Some(i) = weak.upgrade() else {
                    break;
                };
                let mut sessions = i.sessions.lock().expect("lock");
                let Some(slot) = sessions.get(&f.session) else {
                    continue;
                };
                let (event, size, last) = match f.body {
                    FrameBody::Window(n) => {
                        if slot.credit.available_permits() < Semaphore::MAX_PERMITS / 2 {
                            slot.credit.add_permits(n as usize);
                        }
                        continue;
                    }
                    FrameBody::Data(s, b) => {
                        let n = b.len();
                        (Event::Data(s, b), n, false)
                    }
                    FrameBody::Eof(s) => (Event::Eof(s), 0, false),
                    FrameBody::Msg(json) => match cove_protocol::decode_msg::<Reply>(&json) {
                        Ok(r) => {
                            let last = r.is_final();
                            (Event::Reply(r), json.len(), last)
                        }
                        Err(e) => {
                            tracing::warn!("undecodable reply from the sandbox: {e}");
                            continue;
                        }
                    },
                };
                match slot.inbox.offer(event, size, last) {
                    Admit::Full => {
                        // Never wait for a slow reader here: every session shares this loop.
                        let slot = sessions.remove(&f.session).expect("looked up above");
                        drop(sessions);
                        tracing::warn!(
                            "session {}: its reader fell {SESSION_QUEUE_BYTES} bytes behind; cut",
                            f.session
                        );
                        slot.credit.close();
                        slot.inbox.cut(AgentError {
                            code: ErrorCode::Exhausted,
                            message: format!(
                                "the sandbox sent more than the host holds for one reader \
                                 ({} MiB unread); the session was cut: read faster, or ask for less",
                                SESSION_QUEUE_BYTES >> 20
                            ),
                            path: None,
                        });
                        let mut buf = Vec::new();
                        frame::encode(
                            &cove_protocol::msg_frame(f.session, &Request::Cancel),
                            &mut buf,
                        );
                        let out = i.out.clone();
                        tokio::spawn(async move {
                            let _ = out.send(buf).await;
                        });
                    }
                    Admit::Queued | Admit::Dropped => {
                        if last && let Some(s) = sessions.remove(&f.session) {
                            s.close();
                        }
                    }
                }
            }
            if let Some(i) = weak.upgrade() {
                i.closed.store(true, Ordering::Release);
                for (_, s) in i.sessions.lock().expect("lock").drain() {
                    s.close();
                }
            }
        });
        Self { inner }
    }

    /// Whether the connection has ended (the sandbox's VM went, or the writer failed): no
    /// session can open on it any more.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire) || self.inner.out.is_closed()
    }

    /// Has a missed deadline probe the agent and mark sandbox `id` when it does not answer.
    pub(crate) fn watch(self, watch: Watch) -> Self {
        *self.inner.watch.lock().expect("lock") = Some(watch);
        self
    }

    /// Opens a session by sending its first request.
    pub async fn open(&self, req: &Request) -> Result<Session, ClientError> {
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let inbox = Arc::new(Inbox::default());
        inbox.queue.lock().expect("lock").watch = matches!(req, Request::Watch { .. });
        let credit = Arc::new(Semaphore::new(cove_protocol::INITIAL_WINDOW as usize));
        self.inner.sessions.lock().expect("lock").insert(
            id,
            Slot {
                inbox: inbox.clone(),
                credit: credit.clone(),
            },
        );
        let s = Session {
            id,
            inbox,
            inner: self.inner.clone(),
            credit,
        };
        s.send(cove_protocol::msg_frame(id, req)).await?;
        Ok(s)
    }

    /// Runs a request whose only answer is its final reply, within [`call_deadline`].
    pub async fn call(&self, req: &Request, what: &'static str) -> Result<Reply, ClientError> {
        let mut s = self.open(req).await?;
        let d = Deadline::call(what);
        loop {
            match s.next_by(&d).await? {
                Some(Event::Reply(Reply::Error(e))) => return Err(e.into()),
                Some(Event::Reply(r)) if r.is_final() => return Ok(r),
                Some(_) => {}
                None => return Err(ClientError::Closed),
            }
        }
    }

    /// Agent health.
    pub async fn health(&self) -> Result<Health, ClientError> {
        match self.call(&Request::Health, "a health check").await? {
            Reply::Health(h) => Ok(h),
            r => Err(ClientError::Unexpected(format!("{r:?}"))),
        }
    }

    /// Starts a process; returns once it runs. A process with a time limit has a deadline on
    /// the host too ([`Deadline::exec`]).
    pub async fn exec(&self, req: ExecRequest) -> Result<ExecSession, ClientError> {
        let timeout_ms = req.timeout_ms;
        let mut s = self.open(&Request::Exec(req)).await?;
        // The start is owed at once; a process with a shorter limit than that owes it sooner.
        let start = match Deadline::exec(timeout_ms) {
            Some(d) if d.after < call_deadline() => d,
            _ => Deadline::call("the start of a process"),
        };
        match s.next_by(&start).await? {
            // The agent's clock for the limit starts with the process: so does the host's.
            Some(Event::Reply(Reply::Started { pid })) => Ok(ExecSession {
                session: s,
                pid,
                deadline: Deadline::exec(timeout_ms),
            }),
            Some(Event::Reply(Reply::Error(e))) => Err(e.into()),
            Some(other) => Err(ClientError::Unexpected(format!("{other:?}"))),
            None => Err(ClientError::Closed),
        }
    }

    /// Runs a process to its end with `stdin` as its input, collecting its output.
    pub async fn output(
        &self,
        mut req: ExecRequest,
        stdin: Option<Vec<u8>>,
    ) -> Result<Output, ClientError> {
        req.stdin = stdin.is_some();
        let mut ex = self.exec(req).await?;
        if let Some(input) = stdin {
            let s = ex.session.sender();
            tokio::spawn(async move {
                for chunk in input.chunks(frame::MAX_DATA_CHUNK) {
                    if s.data(Stream::Stdin, chunk.to_vec()).await.is_err() {
                        return;
                    }
                }
                let _ = s.eof(Stream::Stdin).await;
            });
        }
        let mut out = Output::default();
        loop {
            match ex.next().await? {
                Some(Event::Data(Stream::Stderr, b)) => out.stderr.extend(b),
                Some(Event::Data(_, b)) => out.stdout.extend(b),
                Some(Event::Eof(_)) => {}
                Some(Event::Reply(Reply::Exited(st))) => {
                    out.status = st;
                    return Ok(out);
                }
                Some(Event::Reply(Reply::Error(e))) => return Err(e.into()),
                Some(Event::Reply(r)) => return Err(ClientError::Unexpected(format!("{r:?}"))),
                None => return Err(ClientError::Closed),
            }
        }
    }

    /// Streams a file of the sandbox into `to`; returns its size.
    pub async fn read_file<W: AsyncWrite + Unpin>(
        &self,
        path: &str,
        to: &mut W,
    ) -> Result<u64, ClientError> {
        let mut s = self.open(&Request::ReadFile { path: path.into() }).await?;
        let mut got = 0u64;
        loop {
            // Each piece within the deadline: a large file takes as long as it takes.
            match s.next_by(&Deadline::call("a file's content")).await? {
                Some(Event::Data(_, b)) => {
                    got += b.len() as u64;
                    if let Err(source) = to.write_all(&b).await {
                        // The transfer stops in the guest too (the connection may live on).
                        let _ = s.sender().request(&Request::Cancel).await;
                        return Err(ClientError::Io {
                            what: "writing the copy".into(),
                            source,
                        });
                    }
                }
                Some(Event::Reply(Reply::Done { bytes })) => {
                    to.flush().await.map_err(|source| ClientError::Io {
                        what: "writing the copy".into(),
                        source,
                    })?;
                    // A piece lost on the way (a frame the reader refused) is never a whole
                    // file.
                    if bytes != got {
                        return Err(ClientError::Unexpected(format!(
                            "{path}: the sandbox sent {got} bytes of the {bytes} it counted"
                        )));
                    }
                    return Ok(bytes);
                }
                Some(Event::Reply(Reply::Error(e))) => return Err(e.into()),
                Some(Event::Reply(Reply::FileStart { .. }) | Event::Eof(_)) => {}
                Some(Event::Reply(r)) => return Err(ClientError::Unexpected(format!("{r:?}"))),
                None => return Err(ClientError::Closed),
            }
        }
    }

    /// Replaces a file of the sandbox with what `from` yields; returns the bytes written.
    pub async fn write_file<R: AsyncRead + Unpin>(
        &self,
        path: &str,
        mode: Option<u32>,
        from: &mut R,
    ) -> Result<u64, ClientError> {
        self.write_file_as(path, mode, None, from).await
    }

    /// [`AgentClient::write_file`], the file and the directories made for it belonging to
    /// `user` when given.
    pub async fn write_file_as<R: AsyncRead + Unpin>(
        &self,
        path: &str,
        mode: Option<u32>,
        user: Option<&str>,
        from: &mut R,
    ) -> Result<u64, ClientError> {
        let mut s = self
            .open(&Request::WriteFile {
                path: path.into(),
                mode,
                parents: true,
                user: user.map(str::to_string),
            })
            .await?;
        let sender = s.sender();
        let mut buf = vec![0u8; frame::MAX_DATA_CHUNK];
        loop {
            // An early error (a missing directory, a full disk) ends the upload at once.
            if let Some(ev) = s.inbox.try_next() {
                return finish_write(Some(ev), &mut s).await;
            }
            let n = from
                .read(&mut buf)
                .await
                .map_err(|source| ClientError::Io {
                    what: "reading the source".into(),
                    source,
                })?;
            if n == 0 {
                break;
            }
            // The agent grants credit as it writes: none within the deadline, and it is stuck.
            let d = Deadline::call("a file's content");
            tokio::select! {
                r = sender.data(Stream::Stdin, buf[..n].to_vec()) => r?,
                ev = s.inbox.next() => return finish_write(ev, &mut s).await,
                () = tokio::time::sleep_until(d.at) => return Err(s.missed(&d).await),
            }
        }
        sender.eof(Stream::Stdin).await?;
        let ev = s.next_by(&Deadline::call("the end of a file")).await?;
        finish_write(ev, &mut s).await
    }

    /// Every process of the guest, by pid.
    pub async fn processes(&self) -> Result<Vec<cove_protocol::ProcessInfo>, ClientError> {
        match self.call(&Request::Processes, "the process list").await? {
            Reply::Processes { processes } => Ok(processes),
            r => Err(ClientError::Unexpected(format!("{r:?}"))),
        }
    }

    /// Sends `signal` to one process of the guest.
    pub async fn kill(&self, pid: u32, signal: i32) -> Result<(), ClientError> {
        self.call(&Request::Kill { pid, signal }, "a signal")
            .await
            .map(drop)
    }

    /// Follows a running process of the process table from now on (its output, then
    /// `Exited`); dropping the session detaches without ending the process.
    pub async fn attach(&self, process: ProcessRef) -> Result<ExecSession, ClientError> {
        let mut s = self.open(&Request::Attach { process }).await?;
        match s.next_by(&Deadline::call("an attach")).await? {
            Some(Event::Reply(Reply::Started { pid })) => Ok(ExecSession {
                session: s,
                pid,
                deadline: None,
            }),
            Some(Event::Reply(Reply::Error(e))) => Err(e.into()),
            Some(other) => Err(ClientError::Unexpected(format!("{other:?}"))),
            None => Err(ClientError::Closed),
        }
    }

    /// Watches a directory: the session's events are `fs_event` replies until it is dropped
    /// (or the directory goes: a last `ok`).
    pub async fn watch_dir(&self, path: &str, recursive: bool) -> Result<Session, ClientError> {
        let mut s = self
            .open(&Request::Watch {
                path: path.into(),
                recursive,
            })
            .await?;
        match s.next_by(&Deadline::call("a watch")).await? {
            Some(Event::Reply(Reply::Watching)) => Ok(s),
            Some(Event::Reply(Reply::Error(e))) => Err(e.into()),
            Some(other) => Err(ClientError::Unexpected(format!("{other:?}"))),
            None => Err(ClientError::Closed),
        }
    }

    /// The running processes that execs started.
    pub async fn process_table(&self) -> Result<Vec<TableEntry>, ClientError> {
        match self
            .call(&Request::ProcessTable, "the process table")
            .await?
        {
            Reply::ProcessTable { processes } => Ok(processes),
            r => Err(ClientError::Unexpected(format!("{r:?}"))),
        }
    }

    /// Writes `bytes` to a running process's stdin (which stays open).
    pub async fn input(&self, process: ProcessRef, bytes: &[u8]) -> Result<u64, ClientError> {
        let mut s = self.open(&Request::Input { process }).await?;
        let sender = s.sender();
        let d = Deadline::call("a process's input");
        tokio::select! {
            r = async {
                sender.data(Stream::Stdin, bytes.to_vec()).await?;
                sender.eof(Stream::Stdin).await
            } => r?,
            // An error (no such process, stdin closed) comes at once.
            ev = s.inbox.next() => return finish_write(ev, &mut s).await,
            () = tokio::time::sleep_until(d.at) => return Err(s.missed(&d).await),
        }
        let ev = s.next_by(&d).await?;
        finish_write(ev, &mut s).await
    }

    /// Closes a running process's stdin.
    pub async fn close_input(&self, process: ProcessRef) -> Result<(), ClientError> {
        self.call(&Request::CloseInput { process }, "closing a stdin")
            .await
            .map(drop)
    }

    /// Sends `signal` to a running process's process group.
    pub async fn signal_process(
        &self,
        process: ProcessRef,
        signal: i32,
    ) -> Result<(), ClientError> {
        self.call(&Request::SignalProcess { process, signal }, "a signal")
            .await
            .map(drop)
    }

    /// Resizes a running process's terminal.
    pub async fn resize_process(
        &self,
        process: ProcessRef,
        size: TtySize,
    ) -> Result<(), ClientError> {
        self.call(&Request::ResizeProcess { process, size }, "a resize")
            .await
            .map(drop)
    }

    /// `stat` of a path (not following a final symlink).
    pub async fn stat(&self, path: &str) -> Result<FileStat, ClientError> {
        match self
            .call(&Request::Stat { path: path.into() }, "a stat")
            .await?
        {
            Reply::Stat(s) => Ok(s),
            r => Err(ClientError::Unexpected(format!("{r:?}"))),
        }
    }

    /// Entries of a directory.
    pub async fn list(&self, path: &str) -> Result<Vec<DirEntry>, ClientError> {
        match self
            .call(&Request::List { path: path.into() }, "a directory listing")
            .await?
        {
            Reply::Entries { entries } => Ok(entries),
            r => Err(ClientError::Unexpected(format!("{r:?}"))),
        }
    }

    /// Creates a directory (`parents`: like `mkdir -p`).
    pub async fn mkdir(&self, path: &str, parents: bool) -> Result<(), ClientError> {
        self.mkdir_as(path, parents, None).await
    }

    /// [`AgentClient::mkdir`], what it creates belonging to `user` when given.
    pub async fn mkdir_as(
        &self,
        path: &str,
        parents: bool,
        user: Option<&str>,
    ) -> Result<(), ClientError> {
        self.call(
            &Request::Mkdir {
                path: path.into(),
                parents,
                mode: None,
                user: user.map(str::to_string),
            },
            "a mkdir",
        )
        .await
        .map(drop)
    }

    /// Removes a path (`recursive` for a directory with content).
    pub async fn remove(&self, path: &str, recursive: bool) -> Result<(), ClientError> {
        self.call(
            &Request::Remove {
                path: path.into(),
                recursive,
            },
            "a removal",
        )
        .await
        .map(drop)
    }

    /// Renames a path.
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), ClientError> {
        self.call(
            &Request::Rename {
                from: from.into(),
                to: to.into(),
            },
            "a rename",
        )
        .await
        .map(drop)
    }

    /// Sends raw bytes on the connection (for tests of hostile input).
    pub async fn send_raw(&self, bytes: Vec<u8>) -> Result<(), ClientError> {
        self.inner
            .out
            .send(bytes)
            .await
            .map_err(|_| ClientError::Closed)
    }
}

async fn finish_write(ev: Option<Event>, s: &mut Session) -> Result<u64, ClientError> {
    let mut ev = ev;
    loop {
        match ev {
            Some(Event::Reply(Reply::Done { bytes })) => return Ok(bytes),
            Some(Event::Reply(Reply::Error(e))) => return Err(e.into()),
            Some(Event::Reply(r)) => return Err(ClientError::Unexpected(format!("{r:?}"))),
            Some(_) => ev = s.next_by(&Deadline::call("the end of a file")).await?,
            None => return Err(ClientError::Closed),
        }
    }
}

/// What a finished process left.
#[derive(Debug, Default)]
pub struct Output {
    /// Everything on stdout.
    pub stdout: Vec<u8>,
    /// Everything on stderr.
    pub stderr: Vec<u8>,
    /// How it ended.
    pub status: ExitStatus,
}

/// One session on a connection.
#[derive(Debug)]
pub struct Session {
    id: u32,
    inbox: Arc<Inbox>,
    inner: Arc<Inner>,
    credit: Arc<Semaphore>,
}

/// The sending half of a session, usable from another task.
#[derive(Debug, Clone)]
pub struct SessionSender {
    id: u32,
    inner: Arc<Inner>,
    credit: Arc<Semaphore>,
}

impl SessionSender {
    async fn send(&self, f: Frame) -> Result<(), ClientError> {
        let mut buf = Vec::new();
        frame::encode(&f, &mut buf);
        self.inner
            .out
            .send(buf)
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Sends data, waiting for the agent's credit.
    pub async fn data(&self, stream: Stream, bytes: Vec<u8>) -> Result<(), ClientError> {
        for chunk in bytes.chunks(frame::MAX_DATA_CHUNK) {
            let n = u32::try_from(chunk.len()).expect("small chunk");
            self.credit
                .acquire_many(n)
                .await
                .map_err(|_| ClientError::Closed)?
                .forget();
            self.send(Frame {
                session: self.id,
                body: FrameBody::Data(stream, chunk.to_vec()),
            })
            .await?;
        }
        Ok(())
    }

    /// Ends a stream.
    pub async fn eof(&self, stream: Stream) -> Result<(), ClientError> {
        self.send(Frame {
            session: self.id,
            body: FrameBody::Eof(stream),
        })
        .await
    }

    /// Sends a request on this session (signal, resize, cancel).
    pub async fn request(&self, req: &Request) -> Result<(), ClientError> {
        self.send(cove_protocol::msg_frame(self.id, req)).await
    }
}

impl Session {
    /// A sending half for another task.
    pub fn sender(&self) -> SessionSender {
        SessionSender {
            id: self.id,
            inner: self.inner.clone(),
            credit: self.credit.clone(),
        }
    }

    async fn send(&self, f: Frame) -> Result<(), ClientError> {
        self.sender().send(f).await
    }

    /// The next event; `None` when the connection is gone. Data is credited back on receipt.
    pub async fn next(&mut self) -> Option<Event> {
        let ev = self.inbox.next().await?;
        if let Event::Data(_, b) = &ev
            && !b.is_empty()
        {
            let n = u32::try_from(b.len()).unwrap_or(u32::MAX);
            let _ = self
                .send(Frame {
                    session: self.id,
                    body: FrameBody::Window(n),
                })
                .await;
        }
        Some(ev)
    }

    /// [`Session::next`] by deadline `d`: past it, the session is cancelled (the agent kills
    /// what it started, if it still listens), the agent probed, and the caller gets
    /// [`ClientError::Timeout`]. `Ok(None)` when the connection is gone.
    pub async fn next_by(&mut self, d: &Deadline) -> Result<Option<Event>, ClientError> {
        match tokio::time::timeout_at(d.at, self.next()).await {
            Ok(ev) => Ok(ev),
            Err(_) => Err(self.missed(d).await),
        }
    }

    async fn missed(&mut self, d: &Deadline) -> ClientError {
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            self.send(cove_protocol::msg_frame(self.id, &Request::Cancel)),
        )
        .await;
        self.inner.end(self.id);
        let watch = self.inner.watch.lock().expect("lock").clone();
        if let Some(w) = watch {
            w.missed(d);
        }
        ClientError::Timeout {
            what: d.what,
            after: d.after,
        }
    }
}

/// A dropped session receives nothing more: what the agent still sends for it is discarded as
/// it arrives (the agent is not told: a process started with `keep` runs on, and one without
/// ends with the connection).
impl Drop for Session {
    fn drop(&mut self) {
        self.inner.end(self.id);
    }
}

/// A running process.
#[derive(Debug)]
pub struct ExecSession {
    /// The session: events are its output, then `Exited`.
    pub session: Session,
    /// Its pid in the guest.
    pub pid: u32,
    /// The host's deadline for its end, when it has a time limit.
    deadline: Option<Deadline>,
}

impl ExecSession {
    /// Its next event, within its deadline when it has one (see [`Session::next_by`]).
    pub async fn next(&mut self) -> Result<Option<Event>, ClientError> {
        match &self.deadline {
            Some(d) => self.session.next_by(d).await,
            None => Ok(self.session.next().await),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cove_protocol::frame::FrameKind;

    /// Garbage from the sandbox side does not stop the client: bad frames are dropped and the
    /// session's real answer still arrives.
    #[tokio::test]
    async fn malformed_frames_from_the_sandbox_are_dropped() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let (ar, aw) = tokio::io::split(a);
        let client = AgentClient::over(ar, aw);
        let (br, mut bw) = tokio::io::split(b);
        let call = tokio::spawn(async move { client.stat("/x").await });
        let mut fr = FrameReader::new(br);
        let f = fr.next().await.unwrap().unwrap();
        let mut bad = Vec::new();
        frame::encode_raw(f.session, 0x55, b"??", &mut bad);
        frame::encode_raw(f.session, FrameKind::Msg as u8, b"not json", &mut bad);
        frame::encode_raw(f.session, FrameKind::Window as u8, &[1, 2, 3], &mut bad);
        let st = FileStat {
            path: "/x".into(),
            kind: cove_protocol::FileKind::File,
            size: 1,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            link_target: None,
            owner: None,
            group: None,
        };
        frame::encode(
            &cove_protocol::msg_frame(f.session, &Reply::Stat(st.clone())),
            &mut bad,
        );
        bw.write_all(&bad).await.unwrap();
        assert_eq!(call.await.unwrap().unwrap(), st);
    }

    /// A silent agent holds a session only until its deadline: the caller gets a timeout, and
    /// the agent is told to cancel the session.
    #[tokio::test]
    async fn a_silent_agent_times_out_and_the_session_is_cancelled() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let (ar, aw) = tokio::io::split(a);
        let client = AgentClient::over(ar, aw);
        let mut s = client.open(&Request::Health).await.unwrap();
        let e = s
            .next_by(&Deadline::after(Duration::from_millis(50), "a test"))
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "the sandbox's agent did not answer a test within 0 s"
        );
        let (br, _bw) = tokio::io::split(b);
        let mut fr = FrameReader::new(br);
        let first = fr.next().await.unwrap().unwrap();
        let cancel = fr.next().await.unwrap().unwrap();
        assert_eq!(cancel.session, first.session);
        let FrameBody::Msg(json) = cancel.body else {
            panic!("{cancel:?}")
        };
        assert!(matches!(
            cove_protocol::decode_msg::<Request>(&json).unwrap(),
            Request::Cancel
        ));
    }

    fn fs_event(name: &str) -> Reply {
        Reply::FsEvent(FsEvent {
            name: name.into(),
            kind: FsEventKind::Create,
            dir: false,
        })
    }

    /// A client and the agent's side of its connection: frames the client sent, and a writer.
    fn fake_agent() -> (
        AgentClient,
        FrameReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>,
        tokio::io::WriteHalf<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(8 << 20);
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        (AgentClient::over(ar, aw), FrameReader::new(br), bw)
    }

    async fn reply<W: AsyncWrite + Unpin>(w: &mut W, session: u32, r: &Reply) {
        let mut buf = Vec::new();
        frame::encode(&cove_protocol::msg_frame(session, r), &mut buf);
        w.write_all(&buf).await.unwrap();
    }

    /// Replies until the client has seen them: a health check on another session, answered
    /// after them, comes back.
    async fn health_roundtrip<W: AsyncWrite + Unpin>(
        client: &AgentClient,
        fr: &mut FrameReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>,
        w: &mut W,
    ) {
        let c = client.clone();
        let call = tokio::spawn(async move { c.health().await });
        let f = loop {
            let f = fr.next().await.unwrap().unwrap();
            if let FrameBody::Msg(json) = &f.body
                && matches!(
                    cove_protocol::decode_msg::<Request>(json),
                    Ok(Request::Health)
                )
            {
                break f;
            }
        };
        let h = Health {
            agent_version: "t".into(),
            protocol_version: cove_protocol::PROTOCOL_VERSION,
            uptime_ms: 0,
            kernel_boot_ms: 0,
            agent_setup_ms: 0,
        };
        reply(w, f.session, &Reply::Health(h.clone())).await;
        assert_eq!(call.await.unwrap().unwrap(), h, "other sessions are served");
    }

    /// A watch whose reader stalls loses events behind one `overflow` and goes on; the
    /// connection keeps serving other sessions meanwhile.
    #[tokio::test]
    async fn a_stalled_watch_overflows_instead_of_growing() {
        let (client, mut fr, mut bw) = fake_agent();
        let c = client.clone();
        let watch = tokio::spawn(async move { c.watch_dir("/w", false).await });
        let id = fr.next().await.unwrap().unwrap().session;
        reply(&mut bw, id, &Reply::Watching).await;
        let mut s = watch.await.unwrap().unwrap();
        // Each event costs at least EVENT_COST: this many cannot all be held.
        let n = SESSION_QUEUE_BYTES / EVENT_COST + 10;
        let mut batch = Vec::new();
        for i in 0..n {
            frame::encode(
                &cove_protocol::msg_frame(id, &fs_event(&i.to_string())),
                &mut batch,
            );
        }
        bw.write_all(&batch).await.unwrap();
        health_roundtrip(&client, &mut fr, &mut bw).await;
        reply(&mut bw, id, &fs_event("after")).await;
        health_roundtrip(&client, &mut fr, &mut bw).await;
        let mut names = Vec::new();
        loop {
            match s.next().await.unwrap() {
                Event::Reply(Reply::FsEvent(e)) if e.kind == FsEventKind::Overflow => break,
                Event::Reply(Reply::FsEvent(e)) => names.push(e.name),
                other => panic!("{other:?}"),
            }
        }
        assert!(!names.is_empty() && names.len() < n, "{}", names.len());
        assert!(
            names.iter().enumerate().all(|(i, n)| *n == i.to_string()),
            "the first events, in order"
        );
        // What came after the overflow was taken is delivered again.
        reply(&mut bw, id, &fs_event("later")).await;
        match s.next().await.unwrap() {
            Event::Reply(Reply::FsEvent(e)) => assert_eq!(e.name, "later"),
            other => panic!("{other:?}"),
        }
    }

    /// Any other session whose reader falls that far behind is cut: its reader gets what was
    /// queued, then an error; the agent is told to cancel it; other sessions go on.
    #[tokio::test]
    async fn a_flooded_session_is_cut_not_buffered() {
        let (client, mut fr, mut bw) = fake_agent();
        let c = client.clone();
        let attach = tokio::spawn(async move { c.attach(ProcessRef::Pid(7)).await });
        let id = fr.next().await.unwrap().unwrap().session;
        reply(&mut bw, id, &Reply::Started { pid: 7 }).await;
        let mut ex = attach.await.unwrap().unwrap();
        // A hostile agent repeats a non-final reply without end.
        let mut batch = Vec::new();
        for _ in 0..SESSION_QUEUE_BYTES / EVENT_COST + 10 {
            frame::encode(
                &cove_protocol::msg_frame(id, &Reply::Started { pid: 7 }),
                &mut batch,
            );
        }
        bw.write_all(&batch).await.unwrap();
        let cancel = loop {
            let f = fr.next().await.unwrap().unwrap();
            if f.session == id {
                break f;
            }
        };
        let FrameBody::Msg(json) = cancel.body else {
            panic!("{cancel:?}")
        };
        assert!(matches!(
            cove_protocol::decode_msg::<Request>(&json).unwrap(),
            Request::Cancel
        ));
        health_roundtrip(&client, &mut fr, &mut bw).await;
        let mut started = 0;
        let e = loop {
            match ex.next().await.unwrap() {
                Some(Event::Reply(Reply::Started { .. })) => started += 1,
                Some(Event::Reply(Reply::Error(e))) => break e,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(e.code, ErrorCode::Exhausted);
        assert!(started > 0);
        assert!(
            ex.next().await.unwrap().is_none(),
            "nothing after the error"
        );
    }

    /// Small data on one stream is held as few entries; bytes and their order are kept.
    #[tokio::test]
    async fn tiny_data_frames_are_joined() {
        let (client, mut fr, mut bw) = fake_agent();
        let mut s = client
            .open(&Request::ReadFile { path: "/f".into() })
            .await
            .unwrap();
        let id = fr.next().await.unwrap().unwrap().session;
        let mut batch = Vec::new();
        let n = 200_000usize;
        for i in 0..n {
            let stream = if i == n - 1 {
                Stream::Stderr
            } else {
                Stream::Stdout
            };
            frame::encode(
                &Frame {
                    session: id,
                    body: FrameBody::Data(stream, vec![u8::try_from(i % 251).unwrap()]),
                },
                &mut batch,
            );
        }
        frame::encode(
            &cove_protocol::msg_frame(id, &Reply::Done { bytes: n as u64 }),
            &mut batch,
        );
        bw.write_all(&batch).await.unwrap();
        let (mut out, mut events) = (Vec::new(), 0);
        loop {
            match s.next().await.unwrap() {
                Event::Data(_, b) => {
                    events += 1;
                    out.extend(b);
                }
                Event::Reply(Reply::Done { .. }) => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(out.len(), n);
        assert!(
            out.iter()
                .enumerate()
                .all(|(i, b)| usize::from(*b) == i % 251)
        );
        assert!(events < 10, "{events} entries");
    }

    /// The sandbox closing mid-session ends the session with an error, never a hang.
    #[tokio::test]
    async fn a_closed_connection_ends_sessions() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let (ar, aw) = tokio::io::split(a);
        let client = AgentClient::over(ar, aw);
        let call = tokio::spawn(async move { client.health().await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        drop(b);
        assert!(matches!(call.await.unwrap(), Err(ClientError::Closed)));
    }
}
