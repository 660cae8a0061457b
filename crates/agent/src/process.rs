//! The process table: every process an exec started, for as long as it runs.
//!
//! A process is not its session. Its output is read by pumps that belong to the process and
//! handed to whichever sessions follow it (the exec that started it, `Attach`es after it), or
//! dropped when none does: a process nobody follows never blocks on a full pipe. When the
//! process exits its output is delivered (within the grace below) and its followers get
//! `Exited`; the pumps then go on draining the pipes until the last writer closes them, so a
//! background child (`sh -c 'server &'`) keeps a readable stdout instead of dying of `SIGPIPE`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cove_protocol::{
    AgentError, ErrorCode, ExitStatus, ProcessRef, Reply, Stream, TableEntry, TtySize,
};
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};

use crate::fdio::FdIo;
use crate::server::{Inbound, Outbox};

/// How long a process's output is followed, after it exited, while nothing arrives on pipes
/// that something else (a background child) still holds open.
const OUTPUT_GRACE: Duration = Duration::from_millis(250);

/// After its process exited, output is delivered for at most this long while something keeps
/// writing (a chatty background child), unless a follower's host is the one holding it up.
const OUTPUT_DRAIN_MAX: Duration = Duration::from_secs(5);

/// Tags are names, not payloads.
const MAX_TAG_LEN: usize = 256;

/// The running processes, by pid.
#[derive(Debug, Default)]
pub struct Table {
    procs: Mutex<HashMap<u32, Arc<Proc>>>,
}

impl Table {
    /// The process `r` names.
    pub fn find(&self, r: &ProcessRef) -> Result<Arc<Proc>, AgentError> {
        let procs = self.procs.lock().expect("lock");
        let found = match r {
            ProcessRef::Pid(pid) => procs.get(pid).cloned(),
            ProcessRef::Tag(tag) => procs
                .values()
                .find(|p| p.entry.tag.as_deref() == Some(tag))
                .cloned(),
        };
        found.ok_or_else(|| AgentError {
            code: ErrorCode::NotFound,
            message: format!("no running process with {r}"),
            path: None,
        })
    }

    /// Every entry, by pid.
    pub fn list(&self) -> Vec<TableEntry> {
        let mut v: Vec<TableEntry> = self
            .procs
            .lock()
            .expect("lock")
            .values()
            .map(|p| {
                let mut e = p.entry.clone();
                e.stdin = p.stdin.lock().expect("lock").is_some();
                e
            })
            .collect();
        v.sort_by_key(|e| e.pid);
        v
    }

    /// Refuses a tag that is malformed or already names a running process.
    pub fn check_tag(&self, tag: Option<&str>) -> Result<(), AgentError> {
        let Some(tag) = tag else { return Ok(()) };
        if tag.is_empty() || tag.len() > MAX_TAG_LEN || tag.contains('\0') {
            return Err(AgentError {
                code: ErrorCode::InvalidRequest,
                message: format!("a tag is 1 to {MAX_TAG_LEN} bytes without NUL"),
                path: None,
            });
        }
        if self
            .procs
            .lock()
            .expect("lock")
            .values()
            .any(|p| p.entry.tag.as_deref() == Some(tag))
        {
            return Err(AgentError {
                code: ErrorCode::AlreadyExists,
                message: format!("a running process already has tag {tag:?}"),
                path: None,
            });
        }
        Ok(())
    }
}

/// What a stdin writer is handed.
#[derive(Debug)]
enum StdinMsg {
    /// Bytes to write; the sender's session is granted credit for them once written.
    Data(Vec<u8>, Outbox),
    /// Close stdin.
    Close,
}

/// Who follows a process's output, and which of its streams already ended.
#[derive(Debug, Default)]
struct Followers {
    list: Vec<Outbox>,
    /// Stdout, stderr ended (or were cut after the exit): new followers get `Eof` at once.
    ended: [bool; 2],
    /// Everything is delivered: output is dropped from now on.
    closed: bool,
}

fn slot(s: Stream) -> usize {
    usize::from(s == Stream::Stderr)
}

/// One running process.
#[derive(Debug)]
pub struct Proc {
    /// What the table shows.
    entry: TableEntry,
    pgid: Pid,
    stdin: Mutex<Option<mpsc::UnboundedSender<StdinMsg>>>,
    /// The terminal's master side, for resizes.
    pty: Option<FdIo>,
    /// Held across a delivery, so an `Eof` never overtakes data and a follower added mid-way
    /// sees only whole chunks.
    followers: tokio::sync::Mutex<Followers>,
    /// How it ended, once its output is delivered.
    done: watch::Sender<Option<ExitStatus>>,
    activity: Activity,
}

/// The pipes or terminal a process was started with.
#[derive(Debug)]
pub enum Io {
    /// Pipes (stdin only when asked for).
    Pipes {
        /// The write end of its stdin.
        stdin: Option<tokio::net::unix::pipe::Sender>,
        /// The read end of its stdout.
        stdout: tokio::net::unix::pipe::Receiver,
        /// The read end of its stderr.
        stderr: tokio::net::unix::pipe::Receiver,
    },
    /// A terminal's master side (stdout and stderr both arrive on it, as stdout).
    Tty(FdIo),
}

impl Proc {
    /// Registers a started process and the session that started it as its first follower,
    /// answers `Started`, and starts its pumps and its supervisor. The process is in the table
    /// until its output is delivered after its exit.
    pub async fn start(
        table: &Arc<Table>,
        entry: TableEntry,
        io: Io,
        exit: oneshot::Receiver<WaitStatus>,
        timeout: Option<Duration>,
        first: &Outbox,
    ) -> Arc<Self> {
        let pid = entry.pid;
        let tty = matches!(io, Io::Tty(_));
        let (stdin_tx, stdin_rx) = mpsc::unbounded_channel();
        // A terminal is always its process's stdin.
        let mut has_stdin = entry.stdin || tty;
        let mut pumps = Vec::new();
        let pty = match &io {
            Io::Tty(m) => Some(m.clone()),
            Io::Pipes { .. } => None,
        };
        let me = Arc::new(Self {
            pgid: Pid::from_raw(i32::try_from(pid).expect("pid fits")),
            entry,
            stdin: Mutex::default(),
            pty,
            followers: tokio::sync::Mutex::new(Followers {
                list: vec![first.clone()],
                // Terminal mode has no stderr stream.
                ended: [false, tty],
                closed: false,
            }),
            done: watch::channel(None).0,
            activity: Activity::new(),
        });
        table.procs.lock().expect("lock").insert(pid, me.clone());
        first.reply(&Reply::Started { pid }).await;
        if tty {
            first.eof(Stream::Stderr).await;
        }
        match io {
            Io::Tty(master) => {
                pumps.push(tokio::spawn(
                    me.clone().pump(master.clone(), Stream::Stdout),
                ));
                tokio::spawn(stdin_writer(Some(master), stdin_rx));
            }
            Io::Pipes {
                stdin,
                stdout,
                stderr,
            } => {
                has_stdin = has_stdin && stdin.is_some();
                tokio::spawn(stdin_writer(stdin, stdin_rx));
                pumps.push(tokio::spawn(me.clone().pump(stdout, Stream::Stdout)));
                pumps.push(tokio::spawn(me.clone().pump(stderr, Stream::Stderr)));
            }
        }
        if has_stdin {
            *me.stdin.lock().expect("lock") = Some(stdin_tx);
        }
        tokio::spawn(me.clone().supervise(table.clone(), exit, pumps, timeout));
        me
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.entry.pid
    }

    /// Sends `sig` to its process group.
    pub fn signal(&self, sig: i32) -> Result<(), AgentError> {
        let sig = Signal::try_from(sig).map_err(|_| AgentError {
            code: ErrorCode::InvalidRequest,
            message: format!("no signal {sig}"),
            path: None,
        })?;
        // The group may be gone already (exited, output still being delivered): not an error.
        let _ = killpg(self.pgid, sig);
        Ok(())
    }

    /// Resizes its terminal.
    pub fn resize(&self, size: TtySize) -> Result<(), AgentError> {
        let Some(m) = &self.pty else {
            return Err(AgentError {
                code: ErrorCode::InvalidRequest,
                message: format!("pid {} has no terminal", self.pid()),
                path: None,
            });
        };
        crate::exec::set_winsize(m.raw(), size).map_err(|e| AgentError {
            code: ErrorCode::Internal,
            message: format!("resizing the terminal: {e}"),
            path: None,
        })
    }

    /// Queues bytes for its stdin; `from` is granted credit once they are written.
    fn write_stdin(&self, bytes: Vec<u8>, from: &Outbox) -> Result<(), AgentError> {
        let stdin = self.stdin.lock().expect("lock");
        match stdin
            .as_ref()
            .map(|s| s.send(StdinMsg::Data(bytes, from.clone())))
        {
            Some(Ok(())) => Ok(()),
            _ => Err(self.stdin_closed()),
        }
    }

    /// Closes its stdin (a second close is not an error).
    pub fn close_stdin(&self) {
        if let Some(s) = self.stdin.lock().expect("lock").take() {
            let _ = s.send(StdinMsg::Close);
        }
    }

    fn stdin_closed(&self) -> AgentError {
        AgentError {
            code: ErrorCode::InvalidRequest,
            message: format!("the stdin of pid {} is not open", self.pid()),
            path: None,
        }
    }

    /// Adds a follower: `Started`, then output from now on. Nothing when the output is already
    /// delivered (the caller waits for `done`).
    async fn follow(&self, ob: &Outbox) {
        let mut f = self.followers.lock().await;
        ob.reply(&Reply::Started { pid: self.pid() }).await;
        for s in [Stream::Stdout, Stream::Stderr] {
            if f.closed || f.ended[slot(s)] {
                ob.eof(s).await;
            }
        }
        if !f.closed {
            f.list.push(ob.clone());
        }
    }

    /// Removes a follower. Its credit is closed first, so a pump waiting on that credit lets
    /// go of the followers' lock.
    async fn unfollow(&self, ob: &Outbox) {
        ob.close();
        self.followers.lock().await.list.retain(|o| !o.same(ob));
    }

    async fn pump<R: AsyncRead + Unpin>(self: Arc<Self>, mut r: R, stream: Stream) {
        use cove_protocol::frame::{DATA_PREFIX_LEN, MAX_DATA_CHUNK, put_data_prefix};
        loop {
            // Read straight into the frame's buffer after room for its header: no zeroing, no
            // copy when one session follows.
            let mut buf = Vec::with_capacity(DATA_PREFIX_LEN + MAX_DATA_CHUNK);
            buf.resize(DATA_PREFIX_LEN, 0);
            let n = match r.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let f = self.followers.lock().await;
            if f.closed || f.list.is_empty() {
                continue;
            }
            self.activity.sending.fetch_add(1, Relaxed);
            self.activity.touch();
            let (last, rest) = f.list.split_last().expect("not empty");
            for ob in rest {
                let mut copy = buf.clone();
                put_data_prefix(&mut copy, ob.session(), stream, n);
                ob.data_encoded(copy, n).await;
            }
            put_data_prefix(&mut buf, last.session(), stream, n);
            last.data_encoded(buf, n).await;
            self.activity.touch();
            self.activity.sending.fetch_sub(1, Relaxed);
        }
        let mut f = self.followers.lock().await;
        if !f.closed && !f.ended[slot(stream)] {
            f.ended[slot(stream)] = true;
            for ob in &f.list {
                ob.eof(stream).await;
            }
        }
    }

    /// Waits for the exit (killing the group at the time limit), delivers what output is due,
    /// then publishes the status and leaves the table.
    async fn supervise(
        self: Arc<Self>,
        table: Arc<Table>,
        exit: oneshot::Receiver<WaitStatus>,
        pumps: Vec<tokio::task::JoinHandle<()>>,
        timeout: Option<Duration>,
    ) {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut exit = exit;
        let mut status = None;
        let mut timed_out = false;
        let mut exited_at: Option<tokio::time::Instant> = None;
        let mut drain_deadline = None;
        let mut pumps_done = Box::pin(async move {
            for p in pumps {
                let _ = p.await;
            }
        });
        let mut pumps_finished = false;
        loop {
            if status.is_some() && pumps_finished {
                break;
            }
            tokio::select! {
                st = &mut exit, if status.is_none() => {
                    status = Some(st.ok());
                    exited_at = Some(tokio::time::Instant::now());
                    // Output still in the pipes arrives at once; a background child that keeps
                    // them open must not hold the exit back with it.
                    drain_deadline = Some(tokio::time::Instant::now() + OUTPUT_GRACE);
                }
                _ = sleep_until(drain_deadline), if status.is_some() => {
                    let exited_long_ago = exited_at.is_some_and(|t| t.elapsed() > OUTPUT_DRAIN_MAX);
                    // Waiting for a host's credit is the host's pace: never cut that short.
                    // Fresh output is followed for a while, not for ever.
                    if self.activity.sending() || (self.activity.recent(OUTPUT_GRACE) && !exited_long_ago) {
                        drain_deadline = Some(tokio::time::Instant::now() + OUTPUT_GRACE);
                    } else {
                        break;
                    }
                }
                // Every writer closed its output: the exit is all that is left to wait for.
                _ = &mut pumps_done, if !pumps_finished => pumps_finished = true,
                _ = sleep_until(deadline), if !timed_out && status.is_none() => {
                    timed_out = true;
                    let _ = killpg(self.pgid, Signal::SIGKILL);
                }
            }
        }
        {
            let mut f = self.followers.lock().await;
            f.closed = true;
            for ob in std::mem::take(&mut f.list) {
                for s in [Stream::Stdout, Stream::Stderr] {
                    if !f.ended[slot(s)] {
                        ob.eof(s).await;
                    }
                }
            }
        }
        self.close_stdin();
        table.procs.lock().expect("lock").remove(&self.pid());
        let (code, signal) = match status.flatten() {
            Some(WaitStatus::Exited(_, c)) => (Some(c), None),
            Some(WaitStatus::Signaled(_, s, _)) => (None, Some(s as i32)),
            _ => (None, None),
        };
        self.done.send_replace(Some(ExitStatus {
            code,
            signal,
            timed_out,
        }));
    }
}

/// Follows `p` on session `ob` until it exits (`Exited`) or the session ends. `kill_on_cancel`:
/// a `Cancel` kills the process group (an exec without `keep`); otherwise it only detaches.
pub async fn follow(
    p: Arc<Proc>,
    ob: &Outbox,
    mut inbox: mpsc::UnboundedReceiver<Inbound>,
    attach: bool,
    kill_on_cancel: bool,
) -> Result<Reply, AgentError> {
    if attach {
        p.follow(ob).await;
    }
    let mut done = p.done.subscribe();
    loop {
        tokio::select! {
            st = async { done.wait_for(Option::is_some).await.ok().and_then(|s| *s) } => {
                return Ok(Reply::Exited(st.unwrap_or_default()));
            }
            ev = inbox.recv() => match ev {
                Some(Inbound::Data(Stream::Stdin, bytes)) => {
                    if let Err(e) = p.write_stdin(bytes, ob) {
                        p.unfollow(ob).await;
                        return Err(e);
                    }
                }
                Some(Inbound::Eof(Stream::Stdin)) => p.close_stdin(),
                Some(Inbound::Data(..) | Inbound::Eof(_)) => {}
                Some(Inbound::Signal(n)) => {
                    let _ = p.signal(n);
                }
                Some(Inbound::Resize(size)) => {
                    let _ = p.resize(size);
                }
                Some(Inbound::Cancel) => {
                    if kill_on_cancel {
                        let _ = killpg(p.pgid, Signal::SIGKILL);
                    }
                    p.unfollow(ob).await;
                    return Err(AgentError {
                        code: ErrorCode::Cancelled,
                        message: if kill_on_cancel { "exec cancelled" } else { "detached" }.into(),
                        path: None,
                    });
                }
                // The host connection is gone for good (a restore detached this session). A
                // process nobody can reach any more (no `keep`) has its stdin closed, and a
                // terminal hangs up.
                None => {
                    p.unfollow(ob).await;
                    if kill_on_cancel {
                        p.close_stdin();
                        if p.pty.is_some() {
                            let _ = killpg(p.pgid, Signal::SIGHUP);
                        }
                    }
                    return Err(AgentError {
                        code: ErrorCode::Cancelled,
                        message: "detached".into(),
                        path: None,
                    });
                }
            },
        }
    }
}

/// `Input`: the session's stdin data to the process's stdin, until `Eof`.
pub async fn input(
    p: Arc<Proc>,
    ob: &Outbox,
    mut inbox: mpsc::UnboundedReceiver<Inbound>,
) -> Result<Reply, AgentError> {
    if p.stdin.lock().expect("lock").is_none() {
        return Err(p.stdin_closed());
    }
    let mut bytes = 0u64;
    while let Some(ev) = inbox.recv().await {
        match ev {
            Inbound::Data(Stream::Stdin, b) => {
                bytes += b.len() as u64;
                p.write_stdin(b, ob)?;
            }
            Inbound::Eof(Stream::Stdin) => return Ok(Reply::Done { bytes }),
            Inbound::Cancel => break,
            _ => {}
        }
    }
    Err(AgentError {
        code: ErrorCode::Cancelled,
        message: "input cancelled".into(),
        path: None,
    })
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn stdin_writer<W: AsyncWrite + Unpin>(
    mut w: Option<W>,
    mut rx: mpsc::UnboundedReceiver<StdinMsg>,
) {
    while let Some(msg) = rx.recv().await {
        match msg {
            StdinMsg::Data(bytes, from) => {
                let n = bytes.len();
                if let Some(pipe) = w.as_mut()
                    && pipe.write_all(&bytes).await.is_err()
                {
                    // The child closed its stdin: keep granting so the host is never stuck.
                    w = None;
                }
                from.grant(n).await;
            }
            // Dropping a pipe's write end closes it; a terminal's master is also its output,
            // and this is only one handle of it.
            StdinMsg::Close => w = None,
        }
    }
}

/// What a process's pumps are doing, so its supervisor can tell a drained pipe held open by a
/// background child from output still on its way.
#[derive(Debug)]
struct Activity {
    start: std::time::Instant,
    /// Pumps now handing data to followers (possibly waiting for credit).
    sending: AtomicUsize,
    /// Milliseconds since `start` of the last data read.
    last_data_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: std::time::Instant::now(),
            sending: AtomicUsize::new(0),
            last_data_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        self.last_data_ms.store(self.now_ms(), Relaxed);
    }

    fn sending(&self) -> bool {
        self.sending.load(Relaxed) > 0
    }

    fn recent(&self, within: Duration) -> bool {
        let within = u64::try_from(within.as_millis()).unwrap_or(u64::MAX);
        self.now_ms()
            .saturating_sub(self.last_data_ms.load(Relaxed))
            < within
    }
}
