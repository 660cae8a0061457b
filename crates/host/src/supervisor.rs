//! The host's side of one cove-vm: starting it detached, finding it alive, ending it, asking
//! it over its control socket, and reading how it ended.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cove_model::SandboxDir;
use cove_protocol::control::{ControlRequest, ControlResponse, ExitRecord, VmEnd, VmStatus};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::error::io_err;
use crate::{HostError, SandboxRecord};

/// What cove-vm last wrote to `status.json`.
pub(crate) fn live_status(dir: &SandboxDir) -> Option<VmStatus> {
    serde_json::from_slice(&crate::fsutil::read_untrusted(&dir.status(), RECORD_MAX).ok()?).ok()
}

/// Most bytes read of a status or exit record (a jail writes them; they are a few hundred).
const RECORD_MAX: u64 = 64 * 1024;

pub(crate) fn not_running(rec: SandboxRecord) -> HostError {
    HostError::NotRunning {
        id: rec.id,
        state: rec.state,
        reason: rec.reason,
    }
}

/// This process as the operations it carries out record it: `PID:START` (its start time in
/// clock ticks since boot tells a recycled pid apart). A record left `creating` or
/// `hibernating` by a process that is gone was interrupted; see [`process_alive`].
pub(crate) fn this_process() -> &'static str {
    static ME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ME.get_or_init(|| {
        let pid = std::process::id();
        format!("{pid}:{}", start_time(pid).unwrap_or(0))
    })
}

/// Whether the process an operation recorded (`PID:START`) still runs.
pub(crate) fn process_alive(op: &str) -> bool {
    let Some((pid, start)) = op.split_once(':') else {
        return false;
    };
    match (pid.parse::<u32>(), start.parse::<u64>()) {
        (Ok(pid), Ok(start)) => start_time(pid) == Some(start),
        _ => false,
    }
}

/// A process's start time (`/proc/PID/stat` field 22); none when it is gone or a zombie.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name: state is the 3rd field, starttime the 22nd.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    if matches!(f.first(), Some(&("Z" | "X"))) {
        return None;
    }
    f.get(19)?.parse().ok()
}

/// The cove-vm binary: `COVE_VM_BIN`, or beside the running executable.
pub(crate) fn vm_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("COVE_VM_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().unwrap_or(Path::new("."));
    // Test binaries live one level down, in target/*/deps.
    for d in [dir, dir.parent().unwrap_or(dir)] {
        let p = d.join("cove-vm");
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from("cove-vm")
}

/// Starts cove-vm detached (own session, no terminal), so it outlives its caller; returns its
/// pid. A jailed cove-vm forks into its PID namespace and the process started here exits: the
/// pid comes back on a pipe (`--report-fd 3`), written by cove-vm before it forks or by the
/// jail's parent after.
pub(crate) fn spawn_vm(dir: &Path) -> Result<u32, HostError> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let log = std::fs::File::create(SandboxDir::at(dir).vm_log())
        .map_err(io_err("creating vm.log", dir))?;
    let bin = vm_binary();
    let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| io_err("making a pipe", dir)(std::io::Error::from(e)))?;
    let w = report_w.as_raw_fd();
    let mut cmd = std::process::Command::new(&bin);
    cmd.arg("--dir")
        .arg(dir)
        .arg("--report-fd")
        .arg("3")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(io_err("creating vm.log", dir))?)
        .stderr(log);
    // SAFETY: setsid and dup2 are async-signal-safe and touch nothing of the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Already 3: dup2 would leave it close-on-exec; clear the flag instead.
            let moved = if w == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(w, 3)
            };
            if moved < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(io_err(
        "starting cove-vm (build it with `cargo build`, or set COVE_VM_BIN)",
        &bin,
    ))?;
    drop(report_w);
    let mut b = [0u8; 4];
    let reported = std::fs::File::from(report_r).read_exact(&mut b).is_ok();
    let pid = if reported {
        u32::from_ne_bytes(b)
    } else {
        child.id()
    };
    // Reap it whenever it ends, so a long-lived caller keeps no zombie.
    std::thread::spawn(move || child.wait());
    Ok(pid)
}

/// True while `pid` is a live cove-vm (not a zombie, not a recycled pid).
pub(crate) fn vm_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state letter follows the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, r)| r.split_whitespace().next());
    if matches!(state, Some("Z" | "X")) {
        return false;
    }
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|b| *b == 0)
                .next()
                .is_some_and(|a0| a0.ends_with(b"cove-vm"))
        })
        .unwrap_or(false)
}

/// Ends a cove-vm: SIGTERM (it kills its VM), then SIGKILL after a grace period.
pub(crate) async fn kill_vm(pid: u32) {
    let p = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
    if !vm_alive(pid) {
        return;
    }
    let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while vm_alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if vm_alive(pid) {
        let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
        while vm_alive(pid) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// How a cove-vm ended, from its `exit.json`; none while it runs or when it left no record
/// (killed outright). A record this build cannot read says so as a crash.
pub(crate) fn vm_end(dir: &SandboxDir) -> Option<VmEnd> {
    let b = crate::fsutil::read_untrusted(&dir.exit(), RECORD_MAX).ok()?;
    Some(match serde_json::from_slice::<ExitRecord>(&b) {
        Ok(r) => r.end,
        Err(e) => VmEnd::Crashed {
            reason: format!("its exit record is unreadable ({e})"),
        },
    })
}

/// The text of a failed VM's end, for a start or resume that failed.
pub(crate) fn failure_text(dir: &SandboxDir) -> Option<String> {
    vm_end(dir).map(|e| e.to_string())
}

/// One control request. Waits for the socket to appear while `pid` lives.
pub(crate) async fn control(
    socket: &Path,
    req: &ControlRequest,
    pid: Option<u32>,
) -> Result<VmStatus, String> {
    let conn = loop {
        match tokio::net::UnixStream::connect(socket).await {
            Ok(c) => break c,
            Err(e) => {
                if pid.is_some_and(vm_alive) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                return Err(format!("cove-vm is not running ({e})"));
            }
        }
    };
    let (r, mut w) = conn.into_split();
    let mut line = serde_json::to_vec(req).expect("serializes");
    line.push(b'\n');
    w.write_all(&line).await.map_err(|e| e.to_string())?;
    let mut resp = String::new();
    BufReader::new(r)
        .read_line(&mut resp)
        .await
        .map_err(|e| e.to_string())?;
    match serde_json::from_str::<ControlResponse>(resp.trim()) {
        Ok(ControlResponse::Ok { status }) => Ok(status),
        Ok(ControlResponse::Error { message }) => Err(message),
        Err(_) => Err("cove-vm ended without answering".into()),
    }
}

/// The status cove-vm reports for a running sandbox, with the engine's pid as the host sees
/// it (a jailed cove-vm knows only its PID namespace's numbering): its child.
pub async fn vm_status(rec: &SandboxRecord) -> Result<VmStatus, String> {
    let mut st = control(Path::new(&rec.socket), &ControlRequest::Status, None).await?;
    // The pids are the host's, not what a (possibly compromised) cove-vm says they are.
    if let Some(pid) = rec.pid {
        st.pid = pid;
    }
    if st.vmm_pid.is_some() {
        st.vmm_pid = cove_jail::inspect::children(st.pid).first().copied();
    }
    Ok(st)
}

/// What a sandbox uses on this host, read from outside the guest (whatever runs in it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Usage {
    /// CPU time of the process that runs the guest (its vCPUs and devices), seconds.
    pub cpu_seconds: f64,
    /// Its resident memory: the guest memory touched so far, plus the VMM's own.
    pub memory_bytes: u64,
    /// The guest's memory size.
    pub memory_limit_bytes: u64,
    /// Blocks the sandbox's writable disk holds on this host.
    pub disk_bytes: u64,
    /// The writable disk's size.
    pub disk_limit_bytes: u64,
}

/// CPU seconds and resident bytes of a process, from `/proc`.
pub(crate) fn process_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Some((ticks as f64 / hz as f64, rss_kb * 1024))
}
