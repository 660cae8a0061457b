//! cove-vm's system-call allow-list (built with `seccompiler`, as Firecracker builds its own).
//!
//! Installed on every thread once QEMU runs (qemu engine), or before the VMM starts (kvm engine,
//! whose vCPU and I/O threads then stack their own narrower lists on it): from then on cove-vm
//! only serves its control socket, relays the agent link, talks QMP or runs its own VMM, and
//! writes files in the sandbox's directory. It can no longer start a program, fork, mount, change user, trace,
//! open a network socket (only Unix ones), or load a filter of its own. A call outside the list
//! raises `SIGSYS`; the handler writes the sandbox's exit record naming the call and ends the
//! process, so the host reports the sandbox failed with that reason.
//!
//! This list is the one every thread of cove-vm is under; the kvm engine's vCPU threads (only
//! `KVM_RUN` and the reads of a paused vCPU) and I/O thread add their own, as Firecracker gives
//! each thread kind its own (crates/vmm/src/seccomp.rs).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::path::Path;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The exit status of a cove-vm its filter stopped (128 + SIGSYS).
pub const EXIT_BAD_SYSCALL: i32 = 128 + libc::SIGSYS;

/// Why the filter could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// Building the BPF program failed.
    #[error("building the seccomp filter: {0}")]
    Build(String),
    /// The kernel refused it.
    #[error("installing the seccomp filter: {0}")]
    Install(String),
}

/// Calls allowed whatever their arguments.
const ALLOWED: &[libc::c_long] = &[
    // Files in the sandbox's directory and the snapshot being written.
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_openat,
    libc::SYS_open,
    libc::SYS_close,
    libc::SYS_close_range,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_statfs,
    libc::SYS_fstatfs,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_rmdir,
    libc::SYS_getdents64,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_access,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_getcwd,
    libc::SYS_fchmod,
    libc::SYS_copy_file_range,
    libc::SYS_sendfile,
    libc::SYS_splice,
    libc::SYS_fcntl,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_pipe2,
    libc::SYS_umask,
    libc::SYS_utimensat,
    // ioctl: FIONBIO, FICLONE for reflinks, and KVM's for the kvm engine.
    libc::SYS_ioctl,
    // Unix sockets (their creation is checked below).
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept4,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    // The async runtime.
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_eventfd2,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_gettimeofday,
    libc::SYS_getrandom,
    // Memory.
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    // Which pages of guest memory are resident (the kvm engine's sparse snapshot).
    libc::SYS_mincore,
    // Threads (their creation is checked below) and signals.
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sigaltstack,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_uname,
    libc::SYS_restart_syscall,
    // The engine child: ending it and reaping it (PID namespace: nothing else is visible).
    libc::SYS_kill,
    libc::SYS_tgkill,
    libc::SYS_wait4,
    libc::SYS_waitid,
    libc::SYS_pidfd_open,
    libc::SYS_pidfd_send_signal,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

fn rule(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompRule, SeccompError> {
    let cond = SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value)
        .map_err(|e| SeccompError::Build(e.to_string()))?;
    SeccompRule::new(vec![cond]).map_err(|e| SeccompError::Build(e.to_string()))
}

/// The allow-list as BPF: everything in [`ALLOWED`]; `socket`/`socketpair` for `AF_UNIX` only;
/// `clone` for threads only; `prctl` only to name a thread or set `no_new_privs`; `seccomp` only
/// to add a filter. Anything else traps.
pub fn allow_list() -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|n| (*n, Vec::new())).collect();
    let unix = u64::try_from(libc::AF_UNIX).expect("positive");
    rules.insert(libc::SYS_socket, vec![rule(0, SeccompCmpOp::Eq, unix)?]);
    rules.insert(libc::SYS_socketpair, vec![rule(0, SeccompCmpOp::Eq, unix)?]);
    let thread = u64::try_from(libc::CLONE_THREAD).expect("positive");
    rules.insert(
        libc::SYS_clone,
        vec![rule(0, SeccompCmpOp::MaskedEq(thread), thread)?],
    );
    // clone3 passes its flags in memory a filter cannot read: it is answered ENOSYS (see
    // `no_clone3`) so the C library falls back to clone, checked above.
    rules.insert(libc::SYS_clone3, Vec::new());
    // `prctl` to name a thread, and — with `seccomp` — for the kvm engine's vCPU and I/O threads
    // to add their own narrower filters (a filter can only take calls away).
    rules.insert(
        libc::SYS_prctl,
        vec![
            rule(0, SeccompCmpOp::Eq, libc::PR_SET_NAME as u64)?,
            rule(0, SeccompCmpOp::Eq, libc::PR_GET_NAME as u64)?,
            rule(0, SeccompCmpOp::Eq, libc::PR_SET_NO_NEW_PRIVS as u64)?,
        ],
    );
    rules.insert(
        libc::SYS_seccomp,
        vec![rule(
            0,
            SeccompCmpOp::Eq,
            u64::from(libc::SECCOMP_SET_MODE_FILTER),
        )?],
    );
    compile(rules, SeccompAction::Trap, SeccompAction::Allow)
}

/// `clone3` → ENOSYS; everything else passes to the allow-list (the kernel runs both filters
/// and takes the stricter answer).
fn no_clone3() -> Result<BpfProgram, SeccompError> {
    let rules = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    compile(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(u32::try_from(libc::ENOSYS).expect("positive")),
    )
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    let f = SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)
        .map_err(|e| SeccompError::Build(e.to_string()))?;
    BpfProgram::try_from(f).map_err(|e| SeccompError::Build(e.to_string()))
}

/// Where the `SIGSYS` handler writes the exit record: the temporary and final paths.
static EXIT_PATHS: OnceLock<(CString, CString)> = OnceLock::new();

/// Installs the allow-list on every thread of this process, with a `SIGSYS` handler that
/// writes `exit_record` (atomically, through `exit_record.tmp`) before the process ends.
/// Needs `no_new_privs` (the jail sets it).
pub fn install(exit_record: &Path) -> Result<(), SeccompError> {
    let path = |p: &Path| CString::new(p.as_os_str().as_encoded_bytes()).ok();
    let tmp = exit_record.with_extension("json.sigsys");
    if let (Some(t), Some(f)) = (path(&tmp), path(exit_record)) {
        let _ = EXIT_PATHS.set((t, f));
    }
    // SAFETY: a zeroed sigaction with a valid handler and flags is a complete value; the
    // handler only makes async-signal-safe system calls.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        if libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) < 0 {
            return Err(SeccompError::Install(
                std::io::Error::last_os_error().to_string(),
            ));
        }
    }
    for p in [no_clone3()?, allow_list()?] {
        seccompiler::apply_filter_all_threads(&p)
            .map_err(|e| SeccompError::Install(e.to_string()))?;
    }
    Ok(())
}

/// Writes the exit record naming the refused call, then ends the process. Only system calls
/// the allow-list has, on buffers on the stack.
extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SIGSYS's siginfo: after signo, errno, code (and padding) come the call's address
    // (8 bytes) and its number (an int) — offset 24 on x86_64.
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let nr = unsafe { std::ptr::read_unaligned(info.cast::<u8>().add(24).cast::<i32>()) };
    let mut buf = [0u8; 256];
    let mut n = 0;
    let mut put = |b: &[u8]| {
        let k = b.len().min(buf.len() - n);
        buf[n..n + k].copy_from_slice(&b[..k]);
        n += k;
    };
    put(b"{\"end\":{\"how\":\"crashed\",\"reason\":\"the jail's seccomp filter stopped cove-vm at system call ");
    let mut digits = [0u8; 12];
    let mut d = digits.len();
    let mut v = nr.unsigned_abs();
    loop {
        d -= 1;
        digits[d] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    put(&digits[d..]);
    put(b", which its allow-list does not have\"},\"at\":0}");
    if let Some((tmp, fin)) = EXIT_PATHS.get() {
        // SAFETY: open/write/close/rename on valid C strings and the stack buffer.
        unsafe {
            let fd = libc::open(
                tmp.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
                0o644,
            );
            if fd >= 0 {
                libc::write(fd, buf.as_ptr().cast(), n);
                libc::close(fd);
                libc::rename(tmp.as_ptr(), fin.as_ptr());
            }
        }
    }
    // SAFETY: ends the process at once; nothing else runs.
    unsafe { libc::_exit(EXIT_BAD_SYSCALL) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_compile() {
        assert!(allow_list().unwrap().len() > ALLOWED.len());
        assert!(!no_clone3().unwrap().is_empty());
    }
}
