//! One connection with the host: frames in, sessions dispatched, frames out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cove_protocol::io::{FrameReader, ReadError};
use cove_protocol::{
    AgentError, ErrorCode, Frame, FrameBody, Reply, Request, Stream, TtySize, frame,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};

use crate::exec::Reaper;
use crate::{exec, files, process};

/// What the agent needs to serve requests.
#[derive(Debug)]
pub struct Agent {
    /// Reaps every child (as PID 1, orphans too).
    pub reaper: Arc<Reaper>,
    /// When the agent started serving, for uptime.
    pub started: Instant,
    /// Guest uptime (ms) when the kernel ran the agent.
    pub kernel_boot_ms: u64,
    /// Milliseconds spent mounting the root.
    pub setup_ms: u64,
    /// Milliseconds of each setup step, for the console log.
    pub setup_steps: String,
    /// True when this process is the guest's init (stops the guest on `Shutdown`).
    pub pid1: bool,
    /// The processes execs started, while they run.
    pub table: Arc<crate::process::Table>,
}

/// Sent by the connection to a running session.
#[derive(Debug)]
pub enum Inbound {
    /// Data from the host.
    Data(Stream, Vec<u8>),
    /// End of a host stream.
    Eof(Stream),
    /// A signal for the exec.
    Signal(i32),
    /// A new terminal size.
    Resize(TtySize),
    /// Stop now.
    Cancel,
}

/// What the writer task is handed.
#[derive(Debug)]
enum Out {
    /// Encoded frames.
    Frame(Vec<u8>),
    /// Everything before this is written; then nothing until the thaw count passes this one
    /// (see `Request::Freeze`).
    Freeze(u64),
}

/// A session's way back to the host.
#[derive(Debug, Clone)]
pub struct Outbox {
    session: u32,
    out: mpsc::Sender<Out>,
    credit: Arc<Semaphore>,
    /// Set when the host connection that opened the session is gone (a restore said hello):
    /// the session's work goes on, its output is dropped.
    detached: Arc<AtomicBool>,
}

impl Outbox {
    /// Sends a reply.
    pub async fn reply(&self, reply: &Reply) {
        self.frame(cove_protocol::msg_frame(self.session, reply))
            .await;
    }

    /// Sends a `Data` frame already encoded in `frame` (see `frame::put_data_prefix`) carrying
    /// `len` payload bytes, waiting for credit first.
    pub async fn data_encoded(&self, frame: Vec<u8>, len: usize) {
        let n = u32::try_from(len).expect("chunks are small");
        match self.credit.acquire_many(n).await {
            Ok(p) => p.forget(),
            Err(_) => return,
        }
        if !self.detached.load(Ordering::Relaxed) {
            let _ = self.out.send(Out::Frame(frame)).await;
        }
    }

    /// The session id.
    pub fn session(&self) -> u32 {
        self.session
    }

    /// Ends one of the agent's streams.
    pub async fn eof(&self, stream: Stream) {
        self.frame(Frame {
            session: self.session,
            body: FrameBody::Eof(stream),
        })
        .await;
    }

    /// Ends this session's data: a sender waiting for credit gives up (replies still go).
    pub fn close(&self) {
        self.credit.close();
    }

    /// True when both are the same session of the same connection.
    pub fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.credit, &other.credit)
    }

    /// Grants the host credit for `n` more bytes.
    pub async fn grant(&self, n: usize) {
        if n == 0 {
            return;
        }
        let n = u32::try_from(n).expect("chunks are small");
        self.frame(Frame {
            session: self.session,
            body: FrameBody::Window(n),
        })
        .await;
    }

    async fn frame(&self, f: Frame) {
        let mut buf = Vec::new();
        frame::encode(&f, &mut buf);
        // A closed writer means the connection is gone; the session ends with it.
        if !self.detached.load(Ordering::Relaxed) {
            let _ = self.out.send(Out::Frame(buf)).await;
        }
    }
}

struct SessionEntry {
    inbox: mpsc::UnboundedSender<Inbound>,
    credit: Arc<Semaphore>,
    detached: Arc<AtomicBool>,
}

type Sessions = Arc<Mutex<HashMap<u32, SessionEntry>>>;

/// Serves one host connection until it ends. Returns `true` when the host asked for a shutdown.
pub async fn serve<R, W>(agent: Arc<Agent>, reader: R, mut writer: W) -> bool
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(256);
    // Thaws since the connection started; a freeze waits for the next one.
    let (thaw_tx, mut thaw_rx) = tokio::sync::watch::channel(0u64);
    thaw_rx.mark_unchanged();
    // The writer batches whatever frames are queued into one write.
    let writer_task = tokio::spawn(async move {
        // Small frames (replies, credit) are gathered into one write; a large data frame is
        // written as it is, never copied.
        let mut batch = Vec::with_capacity(64 * 1024);
        while let Some(first) = out_rx.recv().await {
            let mut next = Some(first);
            let mut freeze = None;
            while let Some(item) = next.take() {
                match item {
                    Out::Freeze(at) => {
                        freeze = Some(at);
                        break;
                    }
                    Out::Frame(f) if f.len() >= 16 * 1024 => {
                        if !batch.is_empty() && writer.write_all(&batch).await.is_err() {
                            return;
                        }
                        batch.clear();
                        if writer.write_all(&f).await.is_err() {
                            return;
                        }
                    }
                    Out::Frame(f) => batch.extend_from_slice(&f),
                }
                if batch.len() < 64 * 1024 {
                    next = out_rx.try_recv().ok();
                }
            }
            if !batch.is_empty() && writer.write_all(&batch).await.is_err() {
                return;
            }
            batch.clear();
            if writer.flush().await.is_err() {
                return;
            }
            if let Some(at) = freeze {
                // The stream now ends on a frame boundary; hold everything until a thaw.
                if thaw_rx.wait_for(|n| *n > at).await.is_err() {
                    return;
                }
            }
        }
    });

    let sessions: Sessions = Arc::default();
    let mut reader = FrameReader::new(reader);
    let mut shutdown = false;
    loop {
        let frame = match reader.next().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(ReadError::Io(e)) => {
                eprintln!("cove-agent: connection: {e}");
                break;
            }
            Err(ReadError::Frame(e)) => {
                eprintln!("cove-agent: rejected frame: {e}");
                if let Some(s) = e.session().filter(|s| *s != 0) {
                    let known = sessions.lock().expect("lock").contains_key(&s);
                    if !known {
                        let ob = outbox(s, &out_tx, Arc::new(Semaphore::new(0)));
                        ob.reply(&protocol_error(format!("rejected frame: {e}")))
                            .await;
                    }
                }
                continue;
            }
        };
        let session = frame.session;
        match frame.body {
            FrameBody::Msg(json) => {
                let req = match cove_protocol::decode_msg::<Request>(&json) {
                    Ok(r) => r,
                    Err(e) => {
                        let ob = outbox(session, &out_tx, Arc::new(Semaphore::new(0)));
                        ob.reply(&protocol_error(format!("bad message: {e}"))).await;
                        continue;
                    }
                };
                if session == 0 {
                    if matches!(req, Request::Hello { .. }) {
                        // A (re)connected host: sessions of the previous one are detached, not
                        // killed (their processes live on), and their ids are free again.
                        for (_, e) in sessions.lock().expect("lock").drain() {
                            e.detached.store(true, Ordering::Relaxed);
                            e.credit.close();
                        }
                        thaw_tx.send_modify(|n| *n += 1);
                    }
                    handle_hello(&agent, req, &out_tx).await;
                    continue;
                }
                if matches!(req, Request::Freeze | Request::Thaw) {
                    let ob = outbox(session, &out_tx, Arc::new(Semaphore::new(0)));
                    if matches!(req, Request::Freeze) {
                        let at = *thaw_tx.borrow();
                        ob.reply(&Reply::Ok).await;
                        let _ = out_tx.send(Out::Freeze(at)).await;
                    } else {
                        // Thaw first: while frozen the writer drains nothing, so the queue may be
                        // full and the reply could not be queued.
                        thaw_tx.send_modify(|n| *n += 1);
                        ob.reply(&Reply::Ok).await;
                    }
                    continue;
                }
                let existing = sessions
                    .lock()
                    .expect("lock")
                    .get(&session)
                    .map(|e| e.inbox.clone());
                if let Some(inbox) = existing {
                    let ev = match req {
                        Request::Signal { signal } => Inbound::Signal(signal),
                        Request::Resize(size) => Inbound::Resize(size),
                        Request::Cancel => Inbound::Cancel,
                        other => {
                            eprintln!("cove-agent: session {session} is busy; ignored {other:?}");
                            continue;
                        }
                    };
                    let _ = inbox.send(ev);
                    continue;
                }
                if matches!(req, Request::Shutdown) {
                    shutdown = true;
                }
                start_session(&agent, &sessions, &out_tx, session, req);
                if shutdown {
                    // The reply goes out through the writer; stop reading.
                    break;
                }
            }
            FrameBody::Data(stream, bytes) => {
                send_inbound(&sessions, session, Inbound::Data(stream, bytes))
            }
            FrameBody::Eof(stream) => send_inbound(&sessions, session, Inbound::Eof(stream)),
            FrameBody::Window(n) => {
                if let Some(e) = sessions.lock().expect("lock").get(&session) {
                    // Cap the total so a hostile host cannot overflow the semaphore.
                    if e.credit.available_permits() < (Semaphore::MAX_PERMITS >> 1) {
                        e.credit.add_permits(n as usize);
                    }
                }
            }
        }
    }
    // The host is gone: end every session it had, so no process waits forever on a reader.
    for (_, e) in sessions.lock().expect("lock").drain() {
        let _ = e.inbox.send(Inbound::Cancel);
        e.credit.close();
    }
    // A frozen writer must not wait for a thaw that cannot come; and sessions still holding a
    // sender (detached ones) must not keep it alive: flush briefly, then stop it.
    thaw_tx.send_modify(|n| *n += 1);
    drop(out_tx);
    let mut writer_task = writer_task;
    if tokio::time::timeout(std::time::Duration::from_millis(500), &mut writer_task)
        .await
        .is_err()
    {
        writer_task.abort();
    }
    shutdown
}

fn send_inbound(sessions: &Sessions, session: u32, ev: Inbound) {
    if let Some(e) = sessions.lock().expect("lock").get(&session) {
        let _ = e.inbox.send(ev);
    }
}

fn outbox(session: u32, out: &mpsc::Sender<Out>, credit: Arc<Semaphore>) -> Outbox {
    Outbox {
        session,
        out: out.clone(),
        credit,
        detached: Arc::default(),
    }
}

fn protocol_error(message: String) -> Reply {
    Reply::Error(AgentError {
        code: ErrorCode::Protocol,
        message,
        path: None,
    })
}

async fn handle_hello(agent: &Agent, req: Request, out: &mpsc::Sender<Out>) {
    let ob = outbox(0, out, Arc::new(Semaphore::new(0)));
    let Request::Hello {
        versions,
        client,
        time_unix_ns,
        entropy_hex,
        hostname,
    } = req
    else {
        ob.reply(&protocol_error("session 0 takes only hello".into()))
            .await;
        return;
    };
    let Some(version) = cove_protocol::negotiate(&versions) else {
        ob.reply(&Reply::Error(AgentError {
            code: ErrorCode::Protocol,
            message: format!(
                "no common protocol version: host offers {versions:?}, agent speaks {:?}",
                cove_protocol::SUPPORTED_VERSIONS
            ),
            path: None,
        }))
        .await;
        return;
    };
    ob.reply(&Reply::Hello {
        version,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    })
    .await;
    if agent.pid1 {
        // After a restore the guest's clock is stale and its random state shared with every
        // clone of the snapshot: resync and reseed before anything else runs. Done once the
        // answer is queued — the host's own work after the hello overlaps it — and still
        // before anything else: the connection reads its next request only after this returns.
        if let Some(ns) = time_unix_ns {
            crate::init::set_clock(ns);
        }
        if let Some(hex) = entropy_hex {
            crate::init::add_entropy(&hex);
        }
        if let Some(h) = hostname {
            // A clone's identity is written into its root (machine-id) and must not race the
            // boot's own hostname: when the root is still being built, wait for it off the
            // runtime's thread. (A snapshot's root is nearly always finished, and a thread of
            // its own cost a restored guest ~15 ms.)
            if crate::init::root_ready() {
                crate::init::new_identity(&h);
            } else {
                let _ = tokio::task::spawn_blocking(move || {
                    if crate::init::wait_root().is_ok() {
                        crate::init::new_identity(&h);
                    }
                })
                .await;
            }
        }
    }
    // Logged after the answer is queued, from another thread: the console is slow.
    let line = format!(
        "cove-agent {}: ready for {client} (protocol {version}); kernel {} ms, setup {} ms ({}), hello answered {:.1} ms after start",
        env!("CARGO_PKG_VERSION"),
        agent.kernel_boot_ms,
        agent.setup_ms,
        agent.setup_steps,
        agent.started.elapsed().as_secs_f64() * 1000.0
    );
    tokio::task::spawn_blocking(move || eprintln!("{line}"));
}

fn start_session(
    agent: &Arc<Agent>,
    sessions: &Sessions,
    out: &mpsc::Sender<Out>,
    session: u32,
    req: Request,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let credit = Arc::new(Semaphore::new(cove_protocol::INITIAL_WINDOW as usize));
    let ob = outbox(session, out, credit.clone());
    sessions.lock().expect("lock").insert(
        session,
        SessionEntry {
            inbox: tx,
            credit,
            detached: ob.detached.clone(),
        },
    );
    let agent = agent.clone();
    let sessions = sessions.clone();
    tokio::spawn(async move {
        let reply = run_request(&agent, req, &ob, rx).await;
        // Remove before replying, so a reused session id is always a new session (unless the
        // session was detached: the id may already belong to a new host's session).
        if !ob.detached.load(Ordering::Relaxed) {
            sessions.lock().expect("lock").remove(&session);
        }
        ob.reply(&reply).await;
    });
}

async fn run_request(
    agent: &Arc<Agent>,
    req: Request,
    ob: &Outbox,
    inbox: mpsc::UnboundedReceiver<Inbound>,
) -> Reply {
    // Everything but health and shutdown looks at the sandbox root, which may still be being
    // built just after boot (see `init::setup`): wait for it, off the runtime's thread.
    if !matches!(req, Request::Health | Request::Shutdown)
        && !crate::init::root_ready()
        && let Ok(Err(message)) = tokio::task::spawn_blocking(crate::init::wait_root).await
    {
        return Reply::Error(AgentError {
            code: ErrorCode::Internal,
            message,
            path: None,
        });
    }
    let result = match req {
        Request::Health => Ok(Reply::Health(cove_protocol::Health {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            protocol_version: cove_protocol::PROTOCOL_VERSION,
            uptime_ms: crate::init::uptime_ms(),
            kernel_boot_ms: agent.kernel_boot_ms,
            agent_setup_ms: agent.setup_ms,
        })),
        Request::Exec(e) => exec::run(agent, e, ob, inbox).await,
        Request::ReadFile { path } => files::read_file(path, ob, inbox).await,
        Request::WriteFile {
            path,
            mode,
            parents,
            user,
        } => files::write_file(path, mode, parents, user, ob, inbox).await,
        Request::Stat { path } => files::blocking(move || files::stat(&path)).await,
        Request::List { path } => files::blocking(move || files::list(&path)).await,
        Request::Mkdir {
            path,
            parents,
            mode,
            user,
        } => files::blocking(move || files::mkdir(&path, parents, mode, user.as_deref())).await,
        Request::Remove { path, recursive } => {
            files::blocking(move || files::remove(&path, recursive)).await
        }
        Request::Rename { from, to } => files::blocking(move || files::rename(&from, &to)).await,
        Request::Processes => files::blocking(crate::procs::list).await,
        Request::Connect { port } => crate::relay::connect(port, ob, inbox).await,
        Request::Attach { process } => match agent.table.find(&process) {
            Ok(p) => process::attach(p, ob, inbox).await,
            Err(e) => Err(e),
        },
        Request::Watch { path, recursive } => crate::watch::watch(path, recursive, ob, inbox).await,
        Request::ProcessTable => Ok(Reply::ProcessTable {
            processes: agent.table.list(),
        }),
        Request::Input { process } => match agent.table.find(&process) {
            Ok(p) => process::input(p, ob, inbox).await,
            Err(e) => Err(e),
        },
        Request::CloseInput { process } => agent.table.find(&process).map(|p| {
            p.close_stdin();
            Reply::Ok
        }),
        Request::SignalProcess { process, signal } => agent
            .table
            .find(&process)
            .and_then(|p| p.signal(signal))
            .map(|()| Reply::Ok),
        Request::ResizeProcess { process, size } => agent
            .table
            .find(&process)
            .and_then(|p| p.resize(size))
            .map(|()| Reply::Ok),
        Request::Kill { pid, signal } => {
            files::blocking(move || crate::procs::kill(pid, signal)).await
        }
        Request::Shutdown => {
            if agent.pid1 {
                tokio::spawn(async {
                    // Let the reply reach the host, then stop the guest.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    crate::init::power_off();
                });
            }
            nix::unistd::sync();
            Ok(Reply::Ok)
        }
        Request::Hello { .. } => Err(AgentError {
            code: ErrorCode::Protocol,
            message: "hello belongs on session 0".into(),
            path: None,
        }),
        Request::Freeze | Request::Thaw => Ok(Reply::Ok),
        Request::Signal { .. } | Request::Resize(_) | Request::Cancel => Err(AgentError {
            code: ErrorCode::InvalidRequest,
            message: "no running exec on this session".into(),
            path: None,
        }),
    };
    result.unwrap_or_else(Reply::Error)
}
