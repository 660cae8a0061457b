//! A vCPU's state before it first runs: CPUID from the template, boot MSRs, the local APIC's
//! legacy interrupt pins, and (for a vCPU with an entry point) long-mode registers.

use kvm_bindings::{CpuId, KVM_MP_STATE_RUNNABLE, Msrs, kvm_lapic_state, kvm_mp_state};
use kvm_ioctls::VcpuFd;

use crate::boot::{EntryPoint, configure_sregs, entry_fpu, entry_regs};
use crate::cpu_template::{self, VcpuIdentity};
use crate::msr::boot_msrs;

/// Errors from configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// KVM_SET_CPUID2.
    #[error("set CPUID")]
    SetCpuid(#[source] kvm_ioctls::Error),
    /// Build the MSR list.
    #[error("build the boot MSR list")]
    MsrList(#[source] vmm_sys_util::fam::Error),
    /// KVM_SET_MSRS.
    #[error("set boot MSRs")]
    SetMsrs(#[source] kvm_ioctls::Error),
    /// KVM accepted fewer MSRs than given: the first one it stopped at is not supported here.
    #[error("KVM refused MSR {index:#x} (set {set} of {total})")]
    MsrRefused {
        /// The first MSR not set.
        index: u32,
        /// How many were set.
        set: usize,
        /// How many were given.
        total: usize,
    },
    /// KVM_GET_LAPIC / KVM_SET_LAPIC.
    #[error("configure the local APIC")]
    Lapic(#[source] kvm_ioctls::Error),
    /// KVM_GET_SREGS / KVM_SET_SREGS.
    #[error("set special registers")]
    Sregs(#[source] kvm_ioctls::Error),
    /// KVM_SET_REGS.
    #[error("set registers")]
    Regs(#[source] kvm_ioctls::Error),
    /// KVM_SET_FPU.
    #[error("set FPU state")]
    Fpu(#[source] kvm_ioctls::Error),
    /// KVM_SET_MP_STATE.
    #[error("make the vCPU runnable")]
    MpState(#[source] kvm_ioctls::Error),
}

/// Everything set on a vCPU before it runs.
pub fn configure(
    vcpu: &VcpuFd,
    supported_cpuid: &CpuId,
    id: VcpuIdentity,
    entry: Option<EntryPoint>,
) -> Result<(), SetupError> {
    let mut cpuid = supported_cpuid.clone();
    cpu_template::apply(&mut cpuid, id);
    vcpu.set_cpuid2(&cpuid).map_err(SetupError::SetCpuid)?;

    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(SetupError::MsrList)?;
    let set = vcpu.set_msrs(&msrs).map_err(SetupError::SetMsrs)?;
    if set != entries.len() {
        return Err(SetupError::MsrRefused {
            index: entries.get(set).map_or(0, |e| e.index),
            set,
            total: entries.len(),
        });
    }

    configure_lapic_lints(vcpu)?;

    if let Some(entry) = entry {
        let mut sregs = vcpu.get_sregs().map_err(SetupError::Sregs)?;
        configure_sregs(&mut sregs);
        vcpu.set_sregs(&sregs).map_err(SetupError::Sregs)?;
        vcpu.set_regs(&entry_regs(entry))
            .map_err(SetupError::Regs)?;
        vcpu.set_fpu(&entry_fpu()).map_err(SetupError::Fpu)?;
        if id.apic_id != 0 {
            // An application processor normally waits for INIT/SIPI; one given an entry point
            // starts right away.
            vcpu.set_mp_state(kvm_mp_state {
                mp_state: KVM_MP_STATE_RUNNABLE,
            })
            .map_err(SetupError::MpState)?;
        }
    }
    Ok(())
}

/// Local APIC register offsets of the LINT0 and LINT1 local vector table entries.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
/// Delivery modes (bits 8..=10 of an LVT entry).
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

/// Wires LINT0 to the legacy PIC (ExtINT) and LINT1 to NMI, as PC firmware does; Linux expects
/// this for the "virtual wire" interrupt mode.
fn configure_lapic_lints(vcpu: &VcpuFd) -> Result<(), SetupError> {
    let mut lapic = vcpu.get_lapic().map_err(SetupError::Lapic)?;
    set_lvt_mode(&mut lapic, APIC_LVT0, APIC_MODE_EXTINT);
    set_lvt_mode(&mut lapic, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic).map_err(SetupError::Lapic)
}

fn set_lvt_mode(lapic: &mut kvm_lapic_state, offset: usize, mode: u32) {
    let reg = &mut lapic.regs[offset..offset + 4];
    let mut bytes = [0u8; 4];
    for (b, r) in bytes.iter_mut().zip(reg.iter()) {
        *b = r.to_ne_bytes()[0];
    }
    let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
    for (r, b) in reg.iter_mut().zip(value.to_le_bytes()) {
        *r = std::ffi::c_char::from_ne_bytes([b]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lvt_mode_is_set_without_touching_other_bits() {
        let mut lapic = kvm_lapic_state::default();
        lapic.regs[APIC_LVT0] = 0x30; // a vector
        lapic.regs[APIC_LVT0 + 2] = 0x01; // the mask bit (16)
        set_lvt_mode(&mut lapic, APIC_LVT0, APIC_MODE_EXTINT);
        let got: Vec<u8> = lapic.regs[APIC_LVT0..APIC_LVT0 + 4]
            .iter()
            .map(|c| c.to_ne_bytes()[0])
            .collect();
        assert_eq!(got, vec![0x30, 0x07, 0x01, 0x00]);
    }
}
