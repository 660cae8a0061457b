//! Kicking a vCPU thread out of `KVM_RUN`.
//!
//! The owner sends the vCPU a command on its channel and then signals the thread with
//! [`kick_signal`]. The handler sets `kvm_run.immediate_exit` on that thread's vCPU, so the
//! signal cannot be lost in the window between the thread checking its channel and entering
//! `KVM_RUN`: either `KVM_RUN` is already running and returns `EINTR`, or it starts, sees
//! `immediate_exit` and returns `EINTR` without entering the guest. The thread then clears the
//! flag and reads its channel.

use std::cell::Cell;
use std::ptr;
use std::sync::OnceLock;

use kvm_bindings::kvm_run;
use kvm_ioctls::VcpuFd;
use libc::{c_int, c_void, siginfo_t};
use vmm_sys_util::errno;
use vmm_sys_util::signal::{SIGRTMIN, register_signal_handler};

thread_local! {
    // The `kvm_run` of the vCPU this thread runs, or null. Const-initialised and without a
    // destructor, so reading it is a plain TLS load, safe inside a signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(ptr::null_mut()) };
}

/// The real-time signal used to kick vCPU threads.
pub fn kick_signal() -> c_int {
    SIGRTMIN()
}

extern "C" fn handle_kick(_: c_int, _: *mut siginfo_t, _: *mut c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: `run` was set by `ThreadRegistration::new` on this very thread from a live
        // `VcpuFd`'s kvm_run mapping, and is cleared before that `VcpuFd` is dropped. The
        // handler runs on the same thread, so nothing else writes the field concurrently; the
        // kernel only reads `immediate_exit` when KVM_RUN starts.
        unsafe { ptr::write_volatile(&raw mut (*run).immediate_exit, 1) };
    }
}

/// Installs the kick handler for the process (once; later calls return the first result).
pub fn install_handler() -> Result<(), errno::Error> {
    static INSTALLED: OnceLock<Result<(), errno::Error>> = OnceLock::new();
    *INSTALLED.get_or_init(|| register_signal_handler(kick_signal(), handle_kick))
}

/// While alive, kicks on this thread set `immediate_exit` on `vcpu`.
#[derive(Debug)]
pub struct ThreadRegistration(());

impl ThreadRegistration {
    /// Registers `vcpu` for this thread. Drop the registration before `vcpu`.
    pub fn new(vcpu: &mut VcpuFd) -> Self {
        let run: *mut kvm_run = vcpu.get_kvm_run();
        KVM_RUN.with(|cell| cell.set(run));
        Self(())
    }
}

impl Drop for ThreadRegistration {
    fn drop(&mut self) {
        KVM_RUN.with(|cell| cell.set(ptr::null_mut()));
    }
}
