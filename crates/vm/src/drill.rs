//! The escape drill: run in place of the engine, inside a jail entered exactly as for a real
//! sandbox, it tries what a process that took over the VMM would try next, and prints one JSON
//! line per try saying whether the jail stopped it and how. `tests/jail.rs` runs it and checks
//! that every try was stopped.
//!
//! Targets come from the command line as `KIND=VALUE` pairs separated by commas: `read=PATH`
//! (a file of the host or of another sandbox), `connect=PATH` (a Unix socket such as coved's),
//! `ptrace=PID` (a neighbour's host pid), `write=PATH` (a place outside the jail's own files).

use std::ffi::CString;
use std::path::Path;

use serde_json::json;

fn report(what: &str, target: &str, blocked: bool, how: String) {
    println!(
        "{}",
        json!({ "try": what, "target": target, "blocked": blocked, "how": how })
    );
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Runs every try; returns once all are reported.
pub fn run(dir: &Path, targets: &str) -> anyhow::Result<()> {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    report("run as root", "", uid != 0, format!("uid {uid}"));
    for t in targets.split(',').filter(|t| !t.is_empty()) {
        let (kind, value) = t.split_once('=').unwrap_or((t, ""));
        match kind {
            "read" => match std::fs::read(value) {
                Ok(b) => report("read", value, false, format!("read {} bytes", b.len())),
                Err(e) => report("read", value, true, e.to_string()),
            },
            "write" => match std::fs::write(value, b"escaped") {
                Ok(()) => report("write", value, false, "written".into()),
                Err(e) => report("write", value, true, e.to_string()),
            },
            "connect" => match std::os::unix::net::UnixStream::connect(value) {
                Ok(_) => report("connect", value, false, "connected".into()),
                Err(e) => report("connect", value, true, e.to_string()),
            },
            "ptrace" => {
                let pid: libc::pid_t = value.parse().unwrap_or(0);
                // SAFETY: PTRACE_ATTACH with a pid and null pointers.
                let r = unsafe {
                    libc::ptrace(
                        libc::PTRACE_ATTACH,
                        pid,
                        std::ptr::null_mut::<libc::c_void>(),
                        std::ptr::null_mut::<libc::c_void>(),
                    )
                };
                if r == 0 {
                    report("ptrace", value, false, "attached".into());
                } else {
                    report("ptrace", value, true, errno().to_string());
                }
            }
            _ => report(kind, value, false, "unknown try".into()),
        }
    }
    for dev in ["/dev/kvm", "/dev/mem", "/dev/vda"] {
        match std::fs::File::open(dev) {
            Ok(_) => report("open device", dev, false, "opened".into()),
            Err(e) => report("open device", dev, true, e.to_string()),
        }
    }
    for p in ["/escape", "/usr/escape"] {
        match std::fs::write(p, b"escaped") {
            Ok(()) => report("write outside the sandbox", p, false, "written".into()),
            Err(e) => report("write outside the sandbox", p, true, e.to_string()),
        }
    }
    let target = CString::new("/").expect("no nul");
    // SAFETY: mount with valid C strings; expected to fail.
    let r = unsafe {
        libc::mount(
            target.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    report(
        "mount",
        "/",
        r != 0,
        if r == 0 {
            "mounted".into()
        } else {
            errno().to_string()
        },
    );
    // SAFETY: setuid(0) is expected to fail.
    let r = unsafe { libc::setuid(0) };
    report(
        "become root",
        "setuid(0)",
        r != 0,
        if r == 0 {
            "became root".into()
        } else {
            errno().to_string()
        },
    );
    fork_bomb();
    memory_hog();
    bad_syscall(dir);
    Ok(())
}

/// Forks until the kernel refuses (the PIDs limit), then ends the children.
fn fork_bomb() {
    let mut children = Vec::new();
    let mut refusal = None;
    while children.len() < 10_000 {
        // SAFETY: the child only pauses until it is killed.
        match unsafe { libc::fork() } {
            0 => loop {
                // SAFETY: pause has no preconditions.
                unsafe { libc::pause() };
            },
            -1 => {
                refusal = Some(errno());
                break;
            }
            pid => children.push(pid),
        }
    }
    for c in &children {
        // SAFETY: kill and waitpid on our own children.
        unsafe {
            libc::kill(*c, libc::SIGKILL);
            libc::waitpid(*c, std::ptr::null_mut(), 0);
        }
    }
    report(
        "fork past the PIDs limit",
        "fork()",
        refusal.is_some(),
        match refusal {
            Some(e) => format!("refused after {} children: {e}", children.len()),
            None => format!("{} children started", children.len()),
        },
    );
}

/// A child allocates and touches memory until something stops it (the memory cgroup's OOM
/// killer), up to 8 GiB.
fn memory_hog() {
    // SAFETY: the child only allocates, touches and exits.
    match unsafe { libc::fork() } {
        0 => {
            let mut held: Vec<Vec<u8>> = Vec::new();
            for _ in 0..(8 * 1024 / 64) {
                let mut chunk = vec![0u8; 64 << 20];
                for i in (0..chunk.len()).step_by(4096) {
                    chunk[i] = 1;
                }
                held.push(chunk);
            }
            // SAFETY: ends the child.
            unsafe { libc::_exit(0) };
        }
        -1 => report(
            "allocate past the memory limit",
            "8 GiB",
            false,
            format!("could not fork: {}", errno()),
        ),
        pid => {
            let mut st = 0;
            // SAFETY: waits for our own child.
            unsafe { libc::waitpid(pid, &mut st, 0) };
            let killed = libc::WIFSIGNALED(st);
            report(
                "allocate past the memory limit",
                "8 GiB",
                killed,
                if killed {
                    format!("killed by signal {}", libc::WTERMSIG(st))
                } else {
                    format!("exited {}", libc::WEXITSTATUS(st))
                },
            );
        }
    }
}

/// A child puts itself under cove-vm's allow-list and makes a call the list lacks.
fn bad_syscall(dir: &Path) {
    // SAFETY: the child installs the filter and makes one system call.
    match unsafe { libc::fork() } {
        0 => {
            if cove_jail::seccomp::install(&dir.join("drill-exit.json")).is_err() {
                // SAFETY: ends the child.
                unsafe { libc::_exit(3) };
            }
            // SAFETY: unshare with no flags is harmless; the filter must stop it first.
            unsafe { libc::unshare(0) };
            // SAFETY: ends the child.
            unsafe { libc::_exit(0) };
        }
        -1 => report(
            "a system call outside the allow-list",
            "unshare",
            false,
            format!("could not fork: {}", errno()),
        ),
        pid => {
            let mut st = 0;
            // SAFETY: waits for our own child.
            unsafe { libc::waitpid(pid, &mut st, 0) };
            let code = libc::WIFEXITED(st).then(|| libc::WEXITSTATUS(st));
            let stopped = code == Some(cove_jail::seccomp::EXIT_BAD_SYSCALL);
            let record = std::fs::read_to_string(dir.join("drill-exit.json")).unwrap_or_default();
            report(
                "a system call outside the allow-list",
                "unshare",
                stopped,
                format!("exit status {code:?}; exit record: {record}"),
            );
        }
    }
}
