//! The guest's processes, read from `/proc`, and signals to them.

use cove_protocol::{AgentError, ErrorCode, ProcessInfo, Reply};

fn page_size() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

fn clock_ticks() -> u64 {
    // SAFETY: as above.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1)
}

/// One process, or `None` when it ended while being read.
fn read(pid: u32, page: u64, hz: u64) -> Option<ProcessInfo> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = &stat[open + 1..close];
    // After the name: state (field 3), ppid (4), … utime (14), stime (15), … rss (24).
    let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let mut cmdline: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if cmdline.is_empty() {
        cmdline.push(format!("[{comm}]"));
    }
    Some(ProcessInfo {
        pid,
        ppid: u32::try_from(num(1)).unwrap_or(0),
        uid,
        state: f.first().map_or("?", |s| s).to_string(),
        rss_bytes: num(21) * page,
        cpu_ms: (num(11) + num(12)) * 1000 / hz,
        cmdline,
    })
}

/// Every process, by pid.
pub fn list() -> Result<Reply, AgentError> {
    let (page, hz) = (page_size(), clock_ticks());
    let rd = std::fs::read_dir("/proc").map_err(|e| AgentError {
        code: ErrorCode::Internal,
        message: format!("reading /proc: {e}"),
        path: None,
    })?;
    let mut processes: Vec<ProcessInfo> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| read(pid, page, hz))
        .collect();
    processes.sort_by_key(|p| p.pid);
    Ok(Reply::Processes { processes })
}

/// Sends `signal` to `pid`; the agent itself is refused (a sandbox without its agent is lost).
pub fn kill(pid: u32, signal: i32) -> Result<Reply, AgentError> {
    let bad = |message: String| AgentError {
        code: ErrorCode::InvalidRequest,
        message,
        path: None,
    };
    if pid == 0 || pid == 1 || pid == std::process::id() {
        return Err(bad(format!(
            "pid {pid} is the sandbox's agent (or not a process)"
        )));
    }
    let sig = nix::sys::signal::Signal::try_from(signal)
        .map_err(|_| bad(format!("signal {signal}: not a signal")))?;
    let pid_t = i32::try_from(pid).map_err(|_| bad(format!("pid {pid}: out of range")))?;
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid_t), sig) {
        Ok(()) => Ok(Reply::Ok),
        Err(nix::errno::Errno::ESRCH) => Err(AgentError {
            code: ErrorCode::NotFound,
            message: format!("no process {pid}"),
            path: None,
        }),
        Err(e) => Err(AgentError {
            code: ErrorCode::PermissionDenied,
            message: format!("signalling {pid}: {e}"),
            path: None,
        }),
    }
}
