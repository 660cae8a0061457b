//! Running processes: pipes or a PTY, signals, timeouts, and reaping.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cove_protocol::{AgentError, ErrorCode, ExecRequest, ExitStatus, Reply, Stream, TtySize};
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::fdio::FdIo;
use crate::server::{Agent, Inbound, Outbox};
use crate::user::{self, Identity};

/// How long an exec waits, after its process exited, for output pipes that something else (a
/// background child) still holds open.
const OUTPUT_GRACE: Duration = Duration::from_millis(250);

/// After its process exited, an exec delivers output for at most this long while something
/// keeps writing (a chatty background child), unless the host is the one holding it up.
const OUTPUT_DRAIN_MAX: Duration = Duration::from_secs(5);

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Collects exit statuses. As PID 1 it reaps every child, orphans included (`waitpid(-1)`);
/// elsewhere (tests) only the children it started.
#[derive(Debug)]
pub struct Reaper {
    pid1: bool,
    waiting: Mutex<HashMap<i32, oneshot::Sender<WaitStatus>>>,
}

impl Reaper {
    /// Starts the reaper's SIGCHLD loop on the current runtime.
    pub fn start(pid1: bool) -> Arc<Self> {
        let me = Arc::new(Self {
            pid1,
            waiting: Mutex::default(),
        });
        let r = me.clone();
        tokio::spawn(async move {
            let mut sig = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
                .expect("SIGCHLD handler");
            loop {
                // A timer as well as the signal: signals coalesce, a stray child is never missed.
                let _ = tokio::time::timeout(Duration::from_secs(1), sig.recv()).await;
                r.reap();
            }
        });
        me
    }

    fn reap(&self) {
        let mut waiting = self.waiting.lock().expect("lock");
        if self.pid1 {
            loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(st) => {
                        if let Some(pid) = st.pid()
                            && let Some(tx) = waiting.remove(&pid.as_raw())
                        {
                            let _ = tx.send(st);
                        }
                    }
                }
            }
        } else {
            let pids: Vec<i32> = waiting.keys().copied().collect();
            for pid in pids {
                match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) => {}
                    Ok(st) => {
                        if let Some(tx) = waiting.remove(&pid) {
                            let _ = tx.send(st);
                        }
                    }
                    Err(_) => {
                        waiting.remove(&pid);
                    }
                }
            }
        }
    }
}

fn err(code: ErrorCode, message: impl Into<String>, path: Option<&str>) -> AgentError {
    AgentError {
        code,
        message: message.into(),
        path: path.map(str::to_string),
    }
}

/// Runs one exec session to its end.
pub async fn run(
    agent: &Arc<Agent>,
    req: ExecRequest,
    ob: &Outbox,
    mut inbox: mpsc::UnboundedReceiver<Inbound>,
) -> Result<Reply, AgentError> {
    let Some(program) = req.argv.first().cloned() else {
        return Err(err(ErrorCode::InvalidRequest, "argv is empty", None));
    };
    if req.argv.iter().any(|a| a.contains('\0')) {
        return Err(err(
            ErrorCode::InvalidRequest,
            "argv contains a NUL byte",
            None,
        ));
    }
    let ident = match &req.user {
        None => Identity::root(),
        Some(spec) => user::resolve(Path::new("/"), spec).ok_or_else(|| {
            err(
                ErrorCode::NotFound,
                format!("no such user in /etc/passwd: {spec}"),
                None,
            )
        })?,
    };
    let cwd = req.cwd.clone().unwrap_or_else(|| {
        if Path::new(&ident.home).is_dir() {
            ident.home.clone()
        } else {
            "/".into()
        }
    });
    match std::fs::metadata(&cwd) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(err(
                ErrorCode::NotADirectory,
                "working directory is not a directory",
                Some(&cwd),
            ));
        }
        Err(e) => return Err(io_err(&e, "working directory", &cwd)),
    }

    let mut cmd = Command::new(&program);
    cmd.args(&req.argv[1..]).env_clear().current_dir(&cwd);
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOME".into(), ident.home.clone()),
    ];
    if let Some(name) = &ident.name {
        env.push(("USER".into(), name.clone()));
        env.push(("LOGNAME".into(), name.clone()));
    }
    if req.tty.is_some() {
        env.push(("TERM".into(), "xterm-256color".into()));
    }
    for (k, v) in &req.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(err(
                ErrorCode::InvalidRequest,
                format!("invalid environment variable {k:?}"),
                None,
            ));
        }
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    cmd.envs(env);

    let pty = match req.tty {
        Some(size) => {
            Some(Pty::open(size).map_err(|e| io_err(&e, "opening a terminal", "/dev/ptmx"))?)
        }
        None => None,
    };
    match &pty {
        Some(p) => {
            let slave = || p.slave.try_clone().map(Stdio::from);
            let e = |e: io::Error| io_err(&e, "terminal", "/dev/pts");
            cmd.stdin(slave().map_err(e)?)
                .stdout(slave().map_err(e)?)
                .stderr(slave().map_err(e)?);
        }
        None => {
            cmd.stdin(if req.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        }
    }
    let tty = pty.is_some();
    let (uid, gid, groups) = (ident.uid, ident.gid, ident.groups.clone());
    let drop_privileges = uid != 0 || gid != 0;
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (setsid, ioctl, setgroups, setgid, setuid) on values
    // computed before the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            if drop_privileges
                && (libc::setgroups(groups.len(), groups.as_ptr()) < 0
                    || libc::setgid(gid) < 0
                    || libc::setuid(uid) < 0)
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }

    let mut child_pipes = (None, None, None);
    let spawned = agent.reaper.spawn_with(&mut cmd, |child| {
        child_pipes = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    });
    drop(cmd);
    let (pid, exit_rx) = spawned.map_err(|e| {
        // ENOEXEC: a file the kernel cannot run (no shebang, another architecture).
        const ENOEXEC: i32 = 8;
        if e.kind() == io::ErrorKind::NotFound {
            err(
                ErrorCode::ProgramNotFound,
                format!("executable not found: {program}"),
                None,
            )
        } else if e.kind() == io::ErrorKind::PermissionDenied || e.raw_os_error() == Some(ENOEXEC) {
            err(
                ErrorCode::ProgramNotRunnable,
                format!("cannot run {program}: {e}"),
                Some(&program),
            )
        } else {
            io_err(&e, "starting the process", &program)
        }
    })?;
    let pgid = Pid::from_raw(i32::try_from(pid).expect("pid fits"));
    // Until the session owns the process, an early return must not leave it running.
    let mut guard = KillOnDrop(Some(pgid));
    ob.reply(&Reply::Started { pid }).await;

    // Output pumps and the stdin writer run as their own tasks: a child that does not read its
    // stdin must never stop us from draining its stdout.
    let mut pumps = Vec::new();
    let activity = PumpActivity::new();
    let (stdin_tx, stdin_rx) = mpsc::unbounded_channel::<Option<Vec<u8>>>();
    let mut resize_fd = None;
    match pty {
        Some(p) => {
            let master =
                FdIo::new(p.master, true).map_err(|e| io_err(&e, "terminal", "/dev/ptmx"))?;
            resize_fd = Some(master.clone());
            pumps.push(tokio::spawn(pump(
                master.clone(),
                Stream::Stdout,
                ob.clone(),
                activity.clone(),
            )));
            tokio::spawn(stdin_writer(Some(master), stdin_rx, ob.clone()));
        }
        None => {
            let (stdin, stdout, stderr) = child_pipes;
            let stdin = stdin
                .map(|s| tokio::net::unix::pipe::Sender::from_owned_fd(OwnedFd::from(s)))
                .transpose()
                .map_err(|e| io_err(&e, "stdin pipe", &program))?;
            tokio::spawn(stdin_writer(stdin, stdin_rx, ob.clone()));
            for (pipe, stream) in [
                (stdout.map(OwnedFd::from), Stream::Stdout),
                (stderr.map(OwnedFd::from), Stream::Stderr),
            ] {
                if let Some(fd) = pipe {
                    let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)
                        .map_err(|e| io_err(&e, "output pipe", &program))?;
                    pumps.push(tokio::spawn(pump(rx, stream, ob.clone(), activity.clone())));
                }
            }
        }
    }
    if tty {
        // Terminal mode has no stderr stream: say so, so the host can stop waiting for it.
        ob.eof(Stream::Stderr).await;
    }

    guard.0 = None;
    let deadline = req
        .timeout_ms
        .map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
    let mut timed_out = false;
    let mut cancelled = false;
    let mut status = None;
    let mut exit_rx = exit_rx;
    let pump_handles: Vec<tokio::task::AbortHandle> =
        pumps.iter().map(|p| p.abort_handle()).collect();
    let mut pumps_done = futures_join(pumps);
    let mut drain_deadline = None;
    let mut exited_at = None;
    let mut outputs_closed = false;
    let mut inbox_open = true;
    loop {
        if status.is_some() && outputs_closed {
            break;
        }
        tokio::select! {
            st = &mut exit_rx, if status.is_none() => {
                status = Some(st.ok());
                exited_at = Some(tokio::time::Instant::now());
                // Output still in the pipes arrives at once; a background child that keeps them
                // open (`sh -c 'server &'`) must not hold the exec open with it.
                drain_deadline = Some(tokio::time::Instant::now() + OUTPUT_GRACE);
            }
            _ = sleep_until(drain_deadline), if status.is_some() && !outputs_closed => {
                let exited_long_ago =
                    exited_at.is_some_and(|t: tokio::time::Instant| t.elapsed() > OUTPUT_DRAIN_MAX);
                // Waiting for the host's credit is the host's pace: never cut that short. Fresh
                // output is followed for a while, not for ever.
                if activity.sending() || (activity.recent_data(OUTPUT_GRACE) && !exited_long_ago) {
                    // Still delivering (or waiting for the host's credit): nothing is cut short.
                    drain_deadline = Some(tokio::time::Instant::now() + OUTPUT_GRACE);
                } else {
                    for p in &pump_handles {
                        p.abort();
                    }
                    ob.eof(Stream::Stdout).await;
                    ob.eof(Stream::Stderr).await;
                    outputs_closed = true;
                }
            }
            _ = &mut pumps_done, if !outputs_closed => {
                outputs_closed = true;
            }
            ev = inbox.recv(), if inbox_open => match ev {
                Some(Inbound::Data(Stream::Stdin, bytes)) => { let _ = stdin_tx.send(Some(bytes)); }
                Some(Inbound::Eof(Stream::Stdin)) => { let _ = stdin_tx.send(None); }
                Some(Inbound::Data(..) | Inbound::Eof(_)) => {}
                Some(Inbound::Signal(n)) => {
                    if let Ok(sig) = Signal::try_from(n) {
                        let _ = killpg(pgid, sig);
                    }
                }
                Some(Inbound::Resize(size)) => {
                    if let Some(m) = &resize_fd {
                        let _ = set_winsize(m.raw(), size);
                    }
                }
                // The host connection is gone for good (a restore detached this session): the
                // process lives on, its output is dropped.
                // Its stdin is closed (nobody can write to it any more), and a terminal hangs up.
                None => {
                    inbox_open = false;
                    let _ = stdin_tx.send(None);
                    if tty {
                        let _ = killpg(pgid, Signal::SIGHUP);
                    }
                }
                Some(Inbound::Cancel) => {
                    cancelled = true;
                    let _ = killpg(pgid, Signal::SIGKILL);
                    if status.is_some() {
                        // Stray holders of the output pipes may remain; do not wait for them.
                        break;
                    }
                }
            },
            _ = sleep_until(deadline), if !timed_out && status.is_none() => {
                timed_out = true;
                let _ = killpg(pgid, Signal::SIGKILL);
            }
        }
    }
    drop(stdin_tx);
    // Whatever ended the loop, no pump outlives the session.
    for p in &pump_handles {
        p.abort();
    }
    if cancelled {
        return Err(err(ErrorCode::Cancelled, "exec cancelled", None));
    }
    let status = status.flatten();
    let (code, signal) = match status {
        Some(WaitStatus::Exited(_, c)) => (Some(c), None),
        Some(WaitStatus::Signaled(_, s, _)) => (None, Some(s as i32)),
        _ => (None, None),
    };
    Ok(Reply::Exited(ExitStatus {
        code,
        signal,
        timed_out,
    }))
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A future that completes when every task has.
fn futures_join(
    tasks: Vec<tokio::task::JoinHandle<()>>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(async move {
        for t in tasks {
            let _ = t.await;
        }
    })
}

/// Kills a process group when dropped, unless disarmed.
struct KillOnDrop(Option<Pid>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0 {
            let _ = killpg(p, Signal::SIGKILL);
        }
    }
}

/// What the output pumps of one exec are doing, so the exec can tell a drained pipe held open
/// by a background child from output still on its way.
#[derive(Debug)]
struct PumpActivity {
    start: std::time::Instant,
    /// Pumps now handing data to the host (possibly waiting for credit).
    sending: std::sync::atomic::AtomicUsize,
    /// Milliseconds since `start` of the last read that returned data.
    last_data_ms: std::sync::atomic::AtomicU64,
}

impl PumpActivity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            start: std::time::Instant::now(),
            sending: Default::default(),
            last_data_ms: Default::default(),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A pump is handing data to the host (or waiting for its credit).
    fn sending(&self) -> bool {
        self.sending.load(std::sync::atomic::Ordering::Relaxed) > 0
    }

    /// Data was read from the pipes within `within`.
    fn recent_data(&self, within: Duration) -> bool {
        let within = u64::try_from(within.as_millis()).unwrap_or(u64::MAX);
        let last = self.last_data_ms.load(std::sync::atomic::Ordering::Relaxed);
        self.now_ms().saturating_sub(last) < within
    }
}

async fn pump<R: AsyncRead + Unpin>(
    mut r: R,
    stream: Stream,
    ob: Outbox,
    activity: Arc<PumpActivity>,
) {
    use cove_protocol::frame::{DATA_PREFIX_LEN, MAX_DATA_CHUNK, put_data_prefix};
    use std::sync::atomic::Ordering::Relaxed;
    loop {
        // Read straight into the frame's buffer after room for its header: no zeroing, no copy.
        let mut buf = Vec::with_capacity(DATA_PREFIX_LEN + MAX_DATA_CHUNK);
        buf.resize(DATA_PREFIX_LEN, 0);
        match r.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                activity.sending.fetch_add(1, Relaxed);
                activity.last_data_ms.store(activity.now_ms(), Relaxed);
                put_data_prefix(&mut buf, ob.session(), stream, n);
                ob.data_encoded(buf, n).await;
                activity.last_data_ms.store(activity.now_ms(), Relaxed);
                activity.sending.fetch_sub(1, Relaxed);
            }
        }
    }
    ob.eof(stream).await;
}

async fn stdin_writer<W: AsyncWrite + Unpin>(
    mut w: Option<W>,
    mut rx: mpsc::UnboundedReceiver<Option<Vec<u8>>>,
    ob: Outbox,
) {
    while let Some(msg) = rx.recv().await {
        match msg {
            Some(bytes) => {
                let n = bytes.len();
                if let Some(pipe) = w.as_mut()
                    && pipe.write_all(&bytes).await.is_err()
                {
                    // The child closed its stdin: keep granting so the host is never stuck.
                    w = None;
                }
                ob.grant(n).await;
            }
            None => w = None,
        }
    }
}

fn io_err(e: &io::Error, what: &str, path: &str) -> AgentError {
    let code = e
        .raw_os_error()
        .map_or(ErrorCode::Internal, ErrorCode::from_errno);
    err(code, format!("{what}: {e}"), Some(path))
}

impl Reaper {
    /// Spawns and lets `take` grab the child's pipes, all under the reaper's lock.
    fn spawn_with(
        &self,
        cmd: &mut Command,
        take: impl FnOnce(&mut std::process::Child),
    ) -> io::Result<(u32, oneshot::Receiver<WaitStatus>)> {
        let mut waiting = self.waiting.lock().expect("lock");
        let mut child = cmd.spawn()?;
        take(&mut child);
        let pid = child.id();
        let (tx, rx) = oneshot::channel();
        waiting.insert(i32::try_from(pid).expect("pid fits"), tx);
        Ok((pid, rx))
    }
}

/// A new pseudo-terminal pair.
struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
}

impl Pty {
    fn open(size: TtySize) -> io::Result<Self> {
        let ws = nix::pty::Winsize {
            ws_row: size.rows,
            ws_col: size.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let r = nix::pty::openpty(Some(&ws), None).map_err(io::Error::from)?;
        Ok(Self {
            master: r.master,
            slave: r.slave,
        })
    }
}

fn set_winsize(fd: i32, size: TtySize) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the valid pointer; fd is our PTY master.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
