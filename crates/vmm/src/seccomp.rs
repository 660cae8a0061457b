//! seccomp filters, one per kind of VMM thread, each installed by the thread itself before the
//! guest runs on it. A syscall outside a thread's list kills the whole VMM process: a guest that
//! escaped into a vCPU thread finds almost nothing to call.
//!
//! Each allowed syscall says why the thread needs it. The vCPU thread's ioctls are limited to
//! the ones it issues (`KVM_RUN`, `KVM_KVMCLOCK_CTRL` when it pauses, and the reads a snapshot
//! makes of a paused vCPU); everything
//! that sets up or restores a vCPU runs on the VMM's main thread before the vCPU thread starts.

use std::collections::BTreeMap;

use kvm_bindings::{
    KVMIO, kvm_cpuid2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msrs, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iowr_nr};

// The vCPU ioctls (numbers as in linux/kvm.h; kvm-ioctls keeps its own private).
ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
ioctl_iowr_nr!(KVM_GET_CPUID2, KVMIO, 0x91, kvm_cpuid2);
ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
ioctl_io_nr!(KVM_GET_TSC_KHZ, KVMIO, 0xa3);
ioctl_io_nr!(KVM_KVMCLOCK_CTRL, KVMIO, 0xad);
ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// Compiling the filter (a rule the backend refused).
    #[error("build the seccomp filter")]
    Build(#[source] seccompiler::BackendError),
    /// Loading it into the kernel.
    #[error("install the seccomp filter")]
    Install(#[source] seccompiler::Error),
}

fn arg(index: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, SeccompError> {
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, op, value).map_err(SeccompError::Build)
}

fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule, SeccompError> {
    SeccompRule::new(conds).map_err(SeccompError::Build)
}

/// The vCPU thread's filter.
pub fn vcpu_filter() -> Result<BpfProgram, SeccompError> {
    let ioctls = [
        KVM_RUN(),
        KVM_GET_REGS(),
        KVM_GET_SREGS(),
        KVM_GET_MSRS(),
        KVM_GET_LAPIC(),
        KVM_GET_CPUID2(),
        KVM_GET_MP_STATE(),
        KVM_GET_VCPU_EVENTS(),
        KVM_GET_DEBUGREGS(),
        KVM_GET_TSC_KHZ(),
        KVM_GET_XSAVE(),
        KVM_GET_XCRS(),
        KVM_KVMCLOCK_CTRL(),
    ]
    .into_iter()
    .map(|nr| rule(vec![arg(1, SeccompCmpOp::Eq, nr)?]))
    .collect::<Result<Vec<_>, _>>()?;
    let mut rules = common()?;
    // KVM_RUN, KVMCLOCK_CTRL on a pause, and reading a paused vCPU's state for a snapshot.
    rules.insert(libc::SYS_ioctl, ioctls);
    // A guest activating a device (a register write handled on this thread) may move bytes
    // on the console's stream or draw entropy.
    rules.insert(libc::SYS_getrandom, vec![]);
    compile(rules)
}

/// The I/O thread's filter: the virtio devices' work (disk reads, writes and flushes, the agent
/// port's socket, entropy) and its event loop.
pub fn io_filter() -> Result<BpfProgram, SeccompError> {
    let mut rules = common()?;
    for nr in [
        // The event loop and the agent port's listener.
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_ctl,
        libc::SYS_accept4,
        // Disks.
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_preadv,
        libc::SYS_pwritev,
        libc::SYS_fsync,
        libc::SYS_fdatasync,
        // The agent port's socket.
        libc::SYS_recvfrom,
        // virtio-rng.
        libc::SYS_getrandom,
    ] {
        rules.insert(nr, vec![]);
    }
    // Making an accepted connection non-blocking.
    rules.insert(
        libc::SYS_ioctl,
        vec![rule(vec![arg(1, SeccompCmpOp::Eq, libc::FIONBIO)?])?],
    );
    // A disk's discard (a hole punched) and write-zeroes (a range zeroed): only those modes,
    // never growing or shrinking the file.
    let mode = |m: libc::c_int| -> Result<SeccompRule, SeccompError> {
        rule(vec![arg(1, SeccompCmpOp::Eq, u64::from(m.unsigned_abs()))?])
    };
    rules.insert(
        libc::SYS_fallocate,
        vec![
            mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)?,
            mode(libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE)?,
        ],
    );
    compile(rules)
}

/// What every VMM thread needs.
fn common() -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    let none = Vec::new;
    let no_exec = || -> Result<Vec<SeccompRule>, SeccompError> {
        let exec = u64::from(libc::PROT_EXEC.unsigned_abs());
        Ok(vec![rule(vec![arg(2, SeccompCmpOp::MaskedEq(exec), 0)?])?])
    };
    Ok([
        // Devices: serial output, event fds (interrupts, notifications, reset); log lines.
        (libc::SYS_write, none()),
        (libc::SYS_writev, none()),
        (libc::SYS_read, none()),
        (libc::SYS_readv, none()),
        // A serial console or agent port on a connected socket (std sends with MSG_NOSIGNAL;
        // never to an address of the caller's choosing).
        (
            libc::SYS_sendto,
            vec![rule(vec![
                SeccompCondition::new(4, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, 0)
                    .map_err(SeccompError::Build)?,
            ])?],
        ),
        // Channels and locks shared with the other threads.
        (libc::SYS_futex, none()),
        (libc::SYS_sched_yield, none()),
        // Signal handlers (the vCPU kick) return through it.
        (libc::SYS_rt_sigreturn, none()),
        (libc::SYS_rt_sigprocmask, none()),
        // The allocator; memory is never made executable.
        (libc::SYS_mmap, no_exec()?),
        (libc::SYS_mprotect, no_exec()?),
        (libc::SYS_munmap, none()),
        (libc::SYS_madvise, none()),
        (libc::SYS_mremap, none()),
        (libc::SYS_brk, none()),
        // Timestamps of log lines where the vDSO cannot serve them.
        (libc::SYS_clock_gettime, none()),
        // Closing descriptors (a dropped stream, the thread's own at its end); std's debug
        // builds check a descriptor is open before closing it.
        (libc::SYS_close, none()),
        (
            libc::SYS_fcntl,
            vec![rule(vec![arg(
                1,
                SeccompCmpOp::Eq,
                libc::F_GETFD.unsigned_abs().into(),
            )?])?],
        ),
        // The thread's end.
        (libc::SYS_sigaltstack, none()),
        (libc::SYS_exit, none()),
        (libc::SYS_exit_group, none()),
    ]
    .into_iter()
    .collect())
}

fn compile(rules: BTreeMap<i64, Vec<SeccompRule>>) -> Result<BpfProgram, SeccompError> {
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(SeccompError::Build)?;
    SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch,
    )
    .and_then(TryInto::try_into)
    .map_err(SeccompError::Build)
}

/// Installs `filter` on the calling thread (for good: a thread's filter cannot be removed).
pub fn apply(filter: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(filter).map_err(SeccompError::Install)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_compile() {
        assert!(!vcpu_filter().unwrap().is_empty());
        assert!(!io_filter().unwrap().is_empty());
    }
}
