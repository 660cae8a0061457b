//! The process table: every process an exec started, for as long as it runs.
//!
//! A process is not its session. Its output is read by pumps that belong to the process and
//! handed to whichever sessions follow it (the exec that started it, `Attach`es after it), or
//! dropped when none does: a process nobody follows never blocks on a full pipe. When the
//! process exits its output is delivered (within the grace below) and its followers get
//! `Exited`; the pumps then go on draining the pipes until the last writer closes them, so a
//! background child (`sh -c 'server &'`) keeps a readable stdout instead of dying of `SIGPIPE`.
//!
//! Followers never wait on each other. The pumps only queue output: each follower has a queue
//! of its own, which a task of its own hands to its session as the host grants credit, and no
//! lock is held across an await. A pump reads on only while the follower that sets the pace has
//! room in its queue: the exec's own session while it follows — so a slow client holds its own
//! process back through its credit window, exactly as when it is alone — and otherwise the
//! fastest follower. Any other follower that falls [`QUEUE_MAX`] behind is cut: its session
//! ends with `cancelled` ("fell behind"), and the process and its other followers go on. So a
//! follower sees all of the output from when it started following, in order, or a prefix of it
//! and that error; never output with a hole in it.
//!
//! Entries are keyed by pid and outlive the exit while the output drains; a pid the kernel gave
//! again meanwhile belongs to the new process. Once its process has been reaped an entry takes
//! no more signals: its pid, the group's id, may name another process by then.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cove_protocol::{
    AgentError, ErrorCode, ExitStatus, ProcessRef, Reply, Stream, TableEntry, TtySize,
};
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::exec::Reaper;
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

/// The pumps read on while the follower that sets the pace has less than this queued (beyond
/// what its host's credit window already holds).
const QUEUE_PACE: usize = 256 << 10;

/// A follower with this much queued has fallen too far behind the one that sets the pace, and
/// is cut. Well above [`QUEUE_PACE`], so followers as fast as the pace are never cut by jitter.
pub const QUEUE_MAX: usize = 4 << 20;

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

    /// Refuses a tag that is malformed or already names a running process. All digits is
    /// malformed: wherever a process is named by pid or tag (`attach`, `/commands/{pid or
    /// tag}`), that reads as a pid.
    pub fn check_tag(&self, tag: Option<&str>) -> Result<(), AgentError> {
        let Some(tag) = tag else { return Ok(()) };
        let invalid = |message: String| AgentError {
            code: ErrorCode::InvalidRequest,
            message,
            path: None,
        };
        if tag.is_empty() || tag.len() > MAX_TAG_LEN || tag.contains('\0') {
            return Err(invalid(format!(
                "a tag is 1 to {MAX_TAG_LEN} bytes without NUL"
            )));
        }
        if tag.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(format!(
                "tag {tag:?}: all digits names a pid; give a tag with a letter"
            )));
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
    list: Vec<Follower>,
    /// Stdout, stderr ended (or were cut after the exit): new followers get `Eof` at once.
    ended: [bool; 2],
    /// Everything is queued: output is dropped from now on.
    closed: bool,
}

impl Followers {
    /// True when the follower that sets the pace has room for another chunk: the exec's own
    /// session while it follows, otherwise the fastest.
    fn ready(&self) -> bool {
        match self.list.iter().find(|f| f.own) {
            Some(own) => own.queued() < QUEUE_PACE,
            None => self.list.iter().any(|f| f.queued() < QUEUE_PACE),
        }
    }

    /// Queues a chunk read into `buf` (after room for its frame header) for every follower,
    /// cutting first those that fell too far behind.
    fn queue_data(&mut self, mut buf: Vec<u8>, n: usize, stream: Stream) {
        use cove_protocol::frame::put_data_prefix;
        self.list.retain(|f| {
            let behind = f.queued() >= QUEUE_MAX;
            if behind {
                f.cut();
            }
            !behind
        });
        let Some((last, rest)) = self.list.split_last() else {
            return;
        };
        // No copy when one session follows.
        for f in rest {
            let mut copy = buf.clone();
            put_data_prefix(&mut copy, f.ob.session(), stream, n);
            f.push(Item::Data(copy, n));
        }
        put_data_prefix(&mut buf, last.ob.session(), stream, n);
        last.push(Item::Data(buf, n));
    }

    /// Ends `stream` for every follower, after what is queued.
    fn queue_eof(&mut self, stream: Stream) {
        self.ended[slot(stream)] = true;
        for f in &self.list {
            f.push(Item::Eof(stream));
        }
    }
}

fn slot(s: Stream) -> usize {
    usize::from(s == Stream::Stderr)
}

/// What a follower's task hands its session, in order.
#[derive(Debug)]
enum Item {
    /// An encoded `Data` frame and its payload length.
    Data(Vec<u8>, usize),
    /// The end of a stream.
    Eof(Stream),
    /// It fell behind: the rest is dropped and its session ends.
    Cut,
}

/// How a follower's task ended.
#[derive(Debug, Clone, Copy)]
enum Delivered {
    /// Its queue was closed (the output is all delivered, or it left).
    All,
    /// It was cut for falling behind.
    Cut,
}

/// One session following a process: the pumps' end of its queue.
#[derive(Debug)]
struct Follower {
    ob: Outbox,
    queue: mpsc::UnboundedSender<Item>,
    /// Payload bytes queued and not yet handed to the session (the chunk waiting for credit
    /// included); bounded by the pace and by cutting, not by the channel.
    queued: Arc<AtomicUsize>,
    /// The exec's own session: it sets the pace while it follows.
    own: bool,
}

/// The follower's task's end of its queue.
#[derive(Debug)]
struct Backlog {
    ob: Outbox,
    items: mpsc::UnboundedReceiver<Item>,
    queued: Arc<AtomicUsize>,
}

impl Follower {
    fn new(ob: &Outbox, own: bool) -> (Self, Backlog) {
        let (queue, items) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let f = Self {
            ob: ob.clone(),
            queue,
            queued: queued.clone(),
            own,
        };
        (
            f,
            Backlog {
                ob: ob.clone(),
                items,
                queued,
            },
        )
    }

    fn queued(&self) -> usize {
        self.queued.load(Relaxed)
    }

    fn push(&self, item: Item) {
        if let Item::Data(_, n) = &item {
            self.queued.fetch_add(*n, Relaxed);
        }
        // The receiver lives until the queue is closed or cut: a send cannot fail before.
        let _ = self.queue.send(item);
    }

    /// Cuts it off: its credit is closed, so what is queued is dropped at once, then its
    /// session ends.
    fn cut(&self) {
        self.ob.close();
        let _ = self.queue.send(Item::Cut);
    }
}

/// A follower's task, handing its queue to its session; it ends once all that is due to the
/// session is handed over, or when the follower is cut.
#[derive(Debug)]
pub struct Following(JoinHandle<Delivered>);

/// One running process.
#[derive(Debug)]
pub struct Proc {
    /// What the table shows.
    entry: TableEntry,
    /// Signals go through the reaper: never to a group whose leader it has reaped.
    reaper: Arc<Reaper>,
    stdin: Mutex<Option<mpsc::UnboundedSender<StdinMsg>>>,
    /// The terminal's master side, for resizes.
    pty: Option<FdIo>,
    /// Taken to queue (never across an await), so an `Eof` never overtakes data and a follower
    /// added mid-way sees only whole chunks.
    followers: Mutex<Followers>,
    /// Wakes a pump waiting for the pace: a follower took a chunk, left or was cut, or the
    /// output was closed.
    room: Notify,
    /// How it ended, once its output is all queued.
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
    /// Registers a started process and the session that started it as its first follower
    /// (the one that sets the pace while it follows), answers `Started`, and starts its pumps
    /// and its supervisor. The process is in the table until its output is all queued after
    /// its exit.
    pub async fn start(
        table: &Arc<Table>,
        reaper: &Arc<Reaper>,
        entry: TableEntry,
        io: Io,
        exit: oneshot::Receiver<WaitStatus>,
        timeout: Option<Duration>,
        first: &Outbox,
    ) -> (Arc<Self>, Following) {
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
        let (follower, backlog) = Follower::new(first, true);
        if tty {
            // Terminal mode has no stderr stream.
            follower.push(Item::Eof(Stream::Stderr));
        }
        let me = Arc::new(Self {
            entry,
            reaper: reaper.clone(),
            stdin: Mutex::default(),
            pty,
            followers: Mutex::new(Followers {
                list: vec![follower],
                ended: [false, tty],
                closed: false,
            }),
            room: Notify::new(),
            done: watch::channel(None).0,
            activity: Activity::new(),
        });
        // An exited process whose output was still draining may have had this pid: the pid is
        // the new one's now.
        table.procs.lock().expect("lock").insert(pid, me.clone());
        first.reply(&Reply::Started { pid }).await;
        let following = Following(tokio::spawn(me.clone().deliver(backlog)));
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
        (me, following)
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.entry.pid
    }

    /// Sends `sig` to its process group; `not_found` once the process has exited (been
    /// reaped), even while its output is still being delivered.
    pub fn signal(&self, sig: i32) -> Result<(), AgentError> {
        let sig = Signal::try_from(sig).map_err(|_| AgentError {
            code: ErrorCode::InvalidRequest,
            message: format!("no signal {sig}"),
            path: None,
        })?;
        if self.reaper.signal_group(self.pid(), sig) {
            Ok(())
        } else {
            Err(AgentError {
                code: ErrorCode::NotFound,
                message: format!("pid {} has exited", self.pid()),
                path: None,
            })
        }
    }

    /// Sends `sig` to its process group unless it has exited.
    fn kill(&self, sig: Signal) {
        let _ = self.reaper.signal_group(self.pid(), sig);
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

    /// Adds a follower: `Started`, then output from now on; only `Eof`s when the output is
    /// already all queued (the caller waits for `done`).
    async fn follow(self: &Arc<Self>, ob: &Outbox) -> Following {
        ob.reply(&Reply::Started { pid: self.pid() }).await;
        let (follower, backlog) = Follower::new(ob, false);
        {
            let mut f = self.followers.lock().expect("lock");
            for s in [Stream::Stdout, Stream::Stderr] {
                if f.closed || f.ended[slot(s)] {
                    follower.push(Item::Eof(s));
                }
            }
            if !f.closed {
                f.list.push(follower);
            }
        }
        Following(tokio::spawn(self.clone().deliver(backlog)))
    }

    /// Removes a follower; what is queued for it is dropped (its credit is closed).
    fn unfollow(&self, ob: &Outbox) {
        ob.close();
        self.followers
            .lock()
            .expect("lock")
            .list
            .retain(|f| !f.ob.same(ob));
        // It may have set the pace.
        self.room.notify_waiters();
    }

    /// A follower's task: hands its queue to its session as the host grants credit.
    async fn deliver(self: Arc<Self>, mut b: Backlog) -> Delivered {
        while let Some(item) = b.items.recv().await {
            match item {
                Item::Data(frame, n) => {
                    b.ob.data_encoded(frame, n).await;
                    b.queued.fetch_sub(n, Relaxed);
                    self.room.notify_waiters();
                }
                Item::Eof(s) => b.ob.eof(s).await,
                Item::Cut => return Delivered::Cut,
            }
        }
        Delivered::All
    }

    async fn pump<R: AsyncRead + Unpin>(self: Arc<Self>, mut r: R, stream: Stream) {
        use cove_protocol::frame::{DATA_PREFIX_LEN, MAX_DATA_CHUNK};
        loop {
            // Read straight into the frame's buffer after room for its header: no zeroing, no
            // copy when one session follows.
            let mut buf = Vec::with_capacity(DATA_PREFIX_LEN + MAX_DATA_CHUNK);
            buf.resize(DATA_PREFIX_LEN, 0);
            let n = match r.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            self.queue_data(buf, n, stream).await;
        }
        let mut f = self.followers.lock().expect("lock");
        if !f.closed && !f.ended[slot(stream)] {
            f.queue_eof(stream);
        }
    }

    /// Queues a chunk for every follower once the one that sets the pace has room; drops it
    /// when nobody follows.
    async fn queue_data(&self, buf: Vec<u8>, n: usize, stream: Stream) {
        let mut waiting = false;
        loop {
            // Registered before looking, so a wake-up between the look and the wait counts.
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut f = self.followers.lock().expect("lock");
                if f.closed || f.list.is_empty() {
                    break;
                }
                self.activity.touch();
                if f.ready() {
                    f.queue_data(buf, n, stream);
                    break;
                }
            }
            if !waiting {
                waiting = true;
                self.activity.sending.fetch_add(1, Relaxed);
            }
            room.await;
        }
        if waiting {
            self.activity.sending.fetch_sub(1, Relaxed);
        }
    }

    /// Waits for the exit (killing the group at the time limit), queues what output is due,
    /// then leaves the table and publishes the status.
    async fn supervise(
        self: Arc<Self>,
        table: Arc<Table>,
        exit: oneshot::Receiver<WaitStatus>,
        pumps: Vec<JoinHandle<()>>,
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
                    self.kill(Signal::SIGKILL);
                }
            }
        }
        {
            let mut f = self.followers.lock().expect("lock");
            f.closed = true;
            for s in [Stream::Stdout, Stream::Stderr] {
                if !f.ended[slot(s)] {
                    f.queue_eof(s);
                }
            }
            // Their tasks end once they have handed over what is queued.
            f.list.clear();
        }
        self.room.notify_waiters();
        self.close_stdin();
        {
            // The pid may name a newer process by now.
            let mut procs = table.procs.lock().expect("lock");
            if procs
                .get(&self.pid())
                .is_some_and(|p| Arc::ptr_eq(p, &self))
            {
                procs.remove(&self.pid());
            }
        }
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

/// `Attach`: follows `p` on session `ob` from now on, as [`follow`] does; a `Cancel` only
/// detaches.
pub async fn attach(
    p: Arc<Proc>,
    ob: &Outbox,
    inbox: mpsc::UnboundedReceiver<Inbound>,
) -> Result<Reply, AgentError> {
    let following = p.follow(ob).await;
    follow(p, ob, inbox, following, false).await
}

/// Follows `p` on session `ob` until its output is delivered and it exited (`Exited`), the
/// session falls too far behind (`cancelled`), or the session ends. `kill_on_cancel`: a
/// `Cancel` kills the process group (an exec without `keep`); otherwise it only detaches.
pub async fn follow(
    p: Arc<Proc>,
    ob: &Outbox,
    mut inbox: mpsc::UnboundedReceiver<Inbound>,
    following: Following,
    kill_on_cancel: bool,
) -> Result<Reply, AgentError> {
    let mut following = following.0;
    loop {
        tokio::select! {
            delivered = &mut following => {
                if let Ok(Delivered::Cut) = delivered {
                    return Err(AgentError {
                        code: ErrorCode::Cancelled,
                        message: format!(
                            "fell {} MiB behind the output of pid {}, whose pace another \
                             follower sets; read faster, or attach again to follow it from now on",
                            QUEUE_MAX >> 20,
                            p.pid()
                        ),
                        path: None,
                    });
                }
                // Its queue is closed only once the output is all queued: the status follows.
                let mut done = p.done.subscribe();
                let st = done.wait_for(Option::is_some).await.ok().and_then(|s| *s);
                return Ok(Reply::Exited(st.unwrap_or_default()));
            }
            ev = inbox.recv() => match ev {
                Some(Inbound::Data(Stream::Stdin, bytes)) => {
                    if let Err(e) = p.write_stdin(bytes, ob) {
                        p.unfollow(ob);
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
                        p.kill(Signal::SIGKILL);
                    }
                    p.unfollow(ob);
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
                    p.unfollow(ob);
                    if kill_on_cancel {
                        p.close_stdin();
                        if p.pty.is_some() {
                            p.kill(Signal::SIGHUP);
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
    /// Pumps now waiting for the follower that sets the pace (for its host's credit).
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A tag is a name: never empty, long, with a NUL, or all digits (that reads as a pid).
    #[test]
    fn tags_are_names_and_never_pids() {
        let t = Table::default();
        let long = "x".repeat(MAX_TAG_LEN + 1);
        for bad in ["", "42", "0", "a\0b", long.as_str()] {
            let e = t.check_tag(Some(bad)).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidRequest, "{bad:?}");
        }
        let longest = "x".repeat(MAX_TAG_LEN);
        for good in ["worker", "4a", "-1", " 1", longest.as_str()] {
            t.check_tag(Some(good)).unwrap();
        }
        t.check_tag(None).unwrap();
    }
}
