//! Running processes: pipes or a PTY, signals, timeouts, and reaping.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cove_protocol::{AgentError, ErrorCode, ExecRequest, Reply, TableEntry, TtySize};
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::sync::{mpsc, oneshot};

use crate::fdio::FdIo;
use crate::process::{self, Io, Proc};
use crate::server::{Agent, Inbound, Outbox};
use crate::user::{self, Identity};

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
    inbox: mpsc::UnboundedReceiver<Inbound>,
) -> Result<Reply, AgentError> {
    agent.table.check_tag(req.tag.as_deref())?;
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
    // Until the table owns the process, an early return must not leave it running.
    let mut guard = KillOnDrop(Some(pgid));
    let io = match pty {
        Some(p) => {
            Io::Tty(FdIo::new(p.master, true).map_err(|e| io_err(&e, "terminal", "/dev/ptmx"))?)
        }
        None => {
            let (stdin, stdout, stderr) = child_pipes;
            let stdin = stdin
                .map(|s| tokio::net::unix::pipe::Sender::from_owned_fd(OwnedFd::from(s)))
                .transpose()
                .map_err(|e| io_err(&e, "stdin pipe", &program))?;
            let rx = |p: Option<OwnedFd>| {
                p.ok_or_else(|| io::Error::other("no pipe"))
                    .and_then(tokio::net::unix::pipe::Receiver::from_owned_fd)
                    .map_err(|e| io_err(&e, "output pipe", &program))
            };
            Io::Pipes {
                stdin,
                stdout: rx(stdout.map(OwnedFd::from))?,
                stderr: rx(stderr.map(OwnedFd::from))?,
            }
        }
    };
    guard.0 = None;
    let entry = TableEntry {
        pid,
        tag: req.tag.clone(),
        argv: req.argv.clone(),
        env: req.env.clone(),
        cwd,
        tty,
        stdin: req.stdin,
        keep: req.keep,
        started_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    };
    let timeout = req.timeout_ms.map(Duration::from_millis);
    let (p, following) =
        Proc::start(&agent.table, &agent.reaper, entry, io, exit_rx, timeout, ob).await;
    process::follow(p, ob, inbox, following, !req.keep).await
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

fn io_err(e: &io::Error, what: &str, path: &str) -> AgentError {
    let code = e
        .raw_os_error()
        .map_or(ErrorCode::Internal, ErrorCode::from_errno);
    err(code, format!("{what}: {e}"), Some(path))
}

impl Reaper {
    /// Sends `sig` to the process group child `pid` leads, unless the child has been reaped:
    /// false then. Under the reaper's lock, so the child cannot be reaped meanwhile — while it
    /// is not, its pid (the group's id) cannot name another process.
    pub(crate) fn signal_group(&self, pid: u32, sig: Signal) -> bool {
        let waiting = self.waiting.lock().expect("lock");
        let pid = i32::try_from(pid).expect("pid fits");
        if !waiting.contains_key(&pid) {
            return false;
        }
        let _ = killpg(Pid::from_raw(pid), sig);
        true
    }

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

pub(crate) fn set_winsize(fd: i32, size: TtySize) -> io::Result<()> {
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
