//! The VM-wide state KVM keeps in the kernel: the in-kernel interrupt controllers (the two
//! 8259 PICs and the IOAPIC), the PIT, and kvmclock.

use kvm_bindings::{
    KVM_CLOCK_TSC_STABLE, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    kvm_clock_data, kvm_irqchip, kvm_pit_state2,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

/// Why the VM's state could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct VmStateError {
    /// The ioctl that failed.
    what: &'static str,
    /// The error KVM returned.
    #[source]
    source: kvm_ioctls::Error,
}

/// The in-kernel devices' state.
#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    /// The master 8259.
    pub pic_master: kvm_irqchip,
    /// The slave 8259.
    pub pic_slave: kvm_irqchip,
    /// The IOAPIC.
    pub ioapic: kvm_irqchip,
    /// The 8254 PIT.
    pub pit: kvm_pit_state2,
    /// kvmclock: the guest's notion of time.
    pub clock: kvm_clock_data,
}

impl std::fmt::Debug for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmState")
            .field("clock_ns", &self.clock.clock)
            .finish_non_exhaustive()
    }
}

fn chip(fd: &VmFd, id: u32) -> Result<kvm_irqchip, VmStateError> {
    let mut c = kvm_irqchip {
        chip_id: id,
        ..Default::default()
    };
    fd.get_irqchip(&mut c).map_err(|source| VmStateError {
        what: "KVM_GET_IRQCHIP",
        source,
    })?;
    Ok(c)
}

/// Reads the state of a VM whose vCPUs are all stopped.
pub fn save(fd: &VmFd) -> Result<VmState, VmStateError> {
    Ok(VmState {
        pic_master: chip(fd, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: chip(fd, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: chip(fd, KVM_IRQCHIP_IOAPIC)?,
        pit: fd.get_pit2().map_err(|source| VmStateError {
            what: "KVM_GET_PIT2",
            source,
        })?,
        clock: fd.get_clock().map_err(|source| VmStateError {
            what: "KVM_GET_CLOCK",
            source,
        })?,
    })
}

/// Writes `s` into a fresh VM (irqchip and PIT created, vCPUs not yet running).
pub fn restore(fd: &VmFd, s: &VmState) -> Result<(), VmStateError> {
    let io = |what: &'static str| move |source| VmStateError { what, source };
    fd.set_pit2(&s.pit).map_err(io("KVM_SET_PIT2"))?;
    // KVM_SET_CLOCK takes no flags but its own; TSC_STABLE is only ever reported.
    let mut clock = s.clock;
    clock.flags &= !KVM_CLOCK_TSC_STABLE;
    fd.set_clock(&clock).map_err(io("KVM_SET_CLOCK"))?;
    for c in [&s.pic_master, &s.pic_slave, &s.ioapic] {
        fd.set_irqchip(c).map_err(io("KVM_SET_IRQCHIP"))?;
    }
    Ok(())
}
