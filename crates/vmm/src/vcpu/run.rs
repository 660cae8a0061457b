//! One `KVM_RUN` and the handling of its exit.

use std::sync::Arc;
use std::sync::mpsc::Sender;

use cove_devices::Bus;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::eventfd::EventFd;

use super::VcpuReport;

/// The port and MMIO buses a vCPU dispatches its exits to.
#[derive(Debug, Clone, Default)]
pub struct Buses {
    /// The x86 I/O port space.
    pub pio: Arc<Bus>,
    /// Memory-mapped I/O.
    pub mmio: Arc<Bus>,
}

/// Why the guest stopped a vCPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuStop {
    /// KVM_EXIT_SHUTDOWN: a triple fault, which on a PC resets the machine.
    Shutdown,
    /// KVM_EXIT_SYSTEM_EVENT with this type (1 shutdown, 2 reset, 3 crash).
    SystemEvent(u32),
    /// KVM_EXIT_FAIL_ENTRY with the hardware reason: the vCPU state is invalid.
    FailEntry(u64),
    /// KVM_EXIT_INTERNAL_ERROR: KVM could not emulate something (on an emulated KVM, an
    /// instruction its emulator does not know).
    InternalError,
    /// KVM_RUN itself failed with this errno.
    RunFailed(i32),
    /// An exit Cove does not handle.
    Unhandled(&'static str),
}

pub(super) struct Runner {
    pub(super) id: u8,
    pub(super) vcpu: VcpuFd,
    pub(super) buses: Buses,
    pub(super) reports: Sender<VcpuReport>,
    pub(super) report_evt: EventFd,
}

impl Runner {
    /// Enters the guest once. Returns `Some` if the guest stopped this vCPU.
    pub(super) fn run_once(&mut self) -> Option<VcpuStop> {
        let id = self.id;
        let buses = &self.buses;
        match self.vcpu.run() {
            Ok(exit) => handle_exit(id, buses, exit),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // Kicked: clear the flag the signal handler set, then go and read commands.
                self.vcpu.set_kvm_immediate_exit(0);
                None
            }
            Err(e) => Some(VcpuStop::RunFailed(e.errno())),
        }
    }

    pub(super) fn report(&self, reason: VcpuStop) {
        let report = VcpuReport {
            vcpu: self.id,
            reason,
        };
        // The VM may already be gone (it is being dropped); nothing is left to tell then.
        if self.reports.send(report).is_ok()
            && let Err(e) = self.report_evt.write(1)
        {
            tracing::error!(vcpu = self.id, error = %e, "cannot signal a vCPU stop");
        }
    }
}

fn handle_exit(id: u8, buses: &Buses, exit: VcpuExit<'_>) -> Option<VcpuStop> {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !buses.pio.read(u64::from(port), data) {
                tracing::debug!(vcpu = id, port, len = data.len(), "read of unclaimed port");
            }
            None
        }
        VcpuExit::IoOut(port, data) => {
            if !buses.pio.write(u64::from(port), data) {
                tracing::debug!(vcpu = id, port, ?data, "write to unclaimed port");
            }
            None
        }
        VcpuExit::MmioRead(addr, data) => {
            if !buses.mmio.read(addr, data) {
                tracing::debug!(vcpu = id, addr, len = data.len(), "read of unclaimed MMIO");
            }
            None
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !buses.mmio.write(addr, data) {
                tracing::debug!(vcpu = id, addr, ?data, "write to unclaimed MMIO");
            }
            None
        }
        // With the in-kernel irqchip KVM handles HLT itself; should it still exit, just re-enter.
        VcpuExit::Hlt | VcpuExit::IrqWindowOpen | VcpuExit::Intr => None,
        VcpuExit::Shutdown => Some(VcpuStop::Shutdown),
        VcpuExit::SystemEvent(kind, _) => Some(VcpuStop::SystemEvent(kind)),
        VcpuExit::FailEntry(reason, _) => Some(VcpuStop::FailEntry(reason)),
        VcpuExit::InternalError => Some(VcpuStop::InternalError),
        VcpuExit::Unknown => Some(VcpuStop::Unhandled("unknown")),
        VcpuExit::Exception => Some(VcpuStop::Unhandled("exception")),
        VcpuExit::Debug(_) => Some(VcpuStop::Unhandled("debug")),
        other => {
            tracing::warn!(vcpu = id, exit = ?other, "unhandled vCPU exit");
            Some(VcpuStop::Unhandled("other"))
        }
    }
}
