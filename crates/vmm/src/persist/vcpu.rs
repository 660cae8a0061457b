//! A vCPU's architectural state: what `KVM_GET_*` reads from a stopped vCPU and `KVM_SET_*`
//! puts into a fresh one.
//!
//! Saved: general registers, special registers, the XSAVE area (x87/SSE/AVX state; the legacy
//! 4 KiB `KVM_GET_XSAVE`, enough because the CPU template hides the XSAVE components that need
//! more, such as AMX), XCRs, the local APIC, MSRs, pending events, the multiprocessing state,
//! debug registers, CPUID and the TSC frequency. Restore writes them in the order KVM needs:
//! CPUID before anything that depends on the features it enables, the APIC base MSR before the
//! APIC registers, events and the MP state last.

use kvm_bindings::{
    CpuId, Msrs, kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::{Kvm, VcpuFd};
use serde::{Deserialize, Serialize};

/// Most MSRs one `KVM_GET_MSRS` call is asked for.
const MSR_CHUNK: usize = 64;

/// Why a vCPU's state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    /// A `KVM_GET_*` or `KVM_SET_*` ioctl failed.
    #[error("{what} on vCPU {vcpu}")]
    Ioctl {
        /// The ioctl.
        what: &'static str,
        /// The vCPU.
        vcpu: u32,
        /// The error KVM returned.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM took fewer MSRs than the snapshot holds.
    #[error("vCPU {vcpu}: KVM accepted {set} of {total} MSRs (the first refused is {index:#x})")]
    MsrRefused {
        /// The vCPU.
        vcpu: u32,
        /// How many were set.
        set: usize,
        /// How many there were.
        total: usize,
        /// The first one refused.
        index: u32,
    },
    /// A list is longer than KVM's fixed-size arrays allow.
    #[error("vCPU {vcpu}: {what} has too many entries ({len})")]
    TooMany {
        /// The vCPU.
        vcpu: u32,
        /// Which list.
        what: &'static str,
        /// Its length.
        len: usize,
    },
}

/// One vCPU's state.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// Its index (also its APIC id).
    pub id: u32,
    /// General-purpose registers, RIP and RFLAGS.
    pub regs: kvm_regs,
    /// Segments, control registers, EFER, descriptor tables, the APIC base.
    pub sregs: kvm_sregs,
    /// The XSAVE area.
    pub xsave: kvm_xsave,
    /// Extended control registers (XCR0).
    pub xcrs: kvm_xcrs,
    /// The local APIC's registers.
    pub lapic: kvm_lapic_state,
    /// Model-specific registers, by index.
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions, interrupts, NMIs and SMIs.
    pub events: kvm_vcpu_events,
    /// Running, halted, waiting for INIT/SIPI.
    pub mp_state: kvm_mp_state,
    /// DR0–DR3, DR6, DR7.
    pub debugregs: kvm_debugregs,
    /// The CPUID the guest sees.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// The guest TSC frequency, where KVM reports it.
    #[serde(default)]
    pub tsc_khz: Option<u32>,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("id", &self.id)
            .field("rip", &format_args!("{:#x}", self.regs.rip))
            .field("msrs", &self.msrs.len())
            .field("cpuid", &self.cpuid.len())
            .finish_non_exhaustive()
    }
}

/// Reads the MSRs in `indices` that this vCPU has, in chunks; one KVM refuses (it stops a
/// `KVM_GET_MSRS` at the first it does not know) is left out and the rest still read.
fn read_msrs(
    fd: &VcpuFd,
    vcpu: u32,
    indices: &[u32],
) -> Result<Vec<kvm_msr_entry>, VcpuStateError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(MSR_CHUNK)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| VcpuStateError::TooMany {
            vcpu,
            what: "MSRs",
            len: entries.len(),
        })?;
        let n = fd
            .get_msrs(&mut msrs)
            .map_err(|source| VcpuStateError::Ioctl {
                what: "KVM_GET_MSRS",
                vcpu,
                source,
            })?
            .min(chunk.len());
        out.extend_from_slice(&msrs.as_slice()[..n]);
        // Skip the one refused (if any) and go on after it.
        rest = &rest[(n + 1).min(rest.len())..];
        if n == chunk.len() {
            continue;
        }
        tracing::debug!(
            vcpu,
            msr = chunk[n],
            "MSR not saved: KVM does not read it here"
        );
    }
    Ok(out)
}

/// The MSRs KVM says it can save and restore on this host.
pub fn msr_index_list(kvm: &Kvm) -> Result<Vec<u32>, VcpuStateError> {
    Ok(kvm
        .get_msr_index_list()
        .map_err(|source| VcpuStateError::Ioctl {
            what: "KVM_GET_MSR_INDEX_LIST",
            vcpu: 0,
            source,
        })?
        .as_slice()
        .to_vec())
}

/// Reads the state of a stopped vCPU (its thread out of `KVM_RUN`). `msrs` are the indices
/// to save (from [`msr_index_list`]; those this vCPU does not have are left out).
pub fn save(fd: &VcpuFd, id: u32, msrs: &[u32]) -> Result<VcpuState, VcpuStateError> {
    let io = |what: &'static str| {
        move |source| VcpuStateError::Ioctl {
            what,
            vcpu: id,
            source,
        }
    };
    let cpuid = fd
        .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(io("KVM_GET_CPUID2"))?;
    let saved_msrs = read_msrs(fd, id, msrs)?;
    Ok(VcpuState {
        id,
        regs: fd.get_regs().map_err(io("KVM_GET_REGS"))?,
        sregs: fd.get_sregs().map_err(io("KVM_GET_SREGS"))?,
        xsave: fd.get_xsave().map_err(io("KVM_GET_XSAVE"))?,
        xcrs: fd.get_xcrs().map_err(io("KVM_GET_XCRS"))?,
        lapic: fd.get_lapic().map_err(io("KVM_GET_LAPIC"))?,
        msrs: saved_msrs,
        events: fd.get_vcpu_events().map_err(io("KVM_GET_VCPU_EVENTS"))?,
        mp_state: fd.get_mp_state().map_err(io("KVM_GET_MP_STATE"))?,
        debugregs: fd.get_debug_regs().map_err(io("KVM_GET_DEBUGREGS"))?,
        cpuid: cpuid.as_slice().to_vec(),
        tsc_khz: fd.get_tsc_khz().ok(),
    })
}

/// Writes `s` into a fresh vCPU of a VM being restored (before its thread first runs).
pub fn restore(fd: &VcpuFd, s: &VcpuState) -> Result<(), VcpuStateError> {
    let id = s.id;
    let io = |what: &'static str| {
        move |source| VcpuStateError::Ioctl {
            what,
            vcpu: id,
            source,
        }
    };
    let cpuid = CpuId::from_entries(&s.cpuid).map_err(|_| VcpuStateError::TooMany {
        vcpu: id,
        what: "CPUID",
        len: s.cpuid.len(),
    })?;
    fd.set_cpuid2(&cpuid).map_err(io("KVM_SET_CPUID2"))?;
    if let Some(khz) = s.tsc_khz {
        // A host whose TSC runs at another rate scales the guest's where KVM can; where it
        // cannot, the guest's kvmclock still corrects for it.
        if let Err(e) = fd.set_tsc_khz(khz) {
            tracing::warn!(vcpu = id, khz, "KVM_SET_TSC_KHZ: {e}");
        }
    }
    fd.set_sregs(&s.sregs).map_err(io("KVM_SET_SREGS"))?;
    fd.set_regs(&s.regs).map_err(io("KVM_SET_REGS"))?;
    // SAFETY: `s.xsave` is a whole `kvm_xsave` (the legacy 4 KiB area KVM_SET_XSAVE reads), owned
    // by `s` for the call.
    unsafe { fd.set_xsave(&s.xsave) }.map_err(io("KVM_SET_XSAVE"))?;
    fd.set_xcrs(&s.xcrs).map_err(io("KVM_SET_XCRS"))?;
    fd.set_debug_regs(&s.debugregs)
        .map_err(io("KVM_SET_DEBUGREGS"))?;
    for chunk in s.msrs.chunks(MSR_CHUNK) {
        let msrs = Msrs::from_entries(chunk).map_err(|_| VcpuStateError::TooMany {
            vcpu: id,
            what: "MSRs",
            len: chunk.len(),
        })?;
        let n = fd.set_msrs(&msrs).map_err(io("KVM_SET_MSRS"))?;
        if n != chunk.len() {
            return Err(VcpuStateError::MsrRefused {
                vcpu: id,
                set: n,
                total: chunk.len(),
                index: chunk[n].index,
            });
        }
    }
    fd.set_lapic(&s.lapic).map_err(io("KVM_SET_LAPIC"))?;
    fd.set_vcpu_events(&s.events)
        .map_err(io("KVM_SET_VCPU_EVENTS"))?;
    fd.set_mp_state(s.mp_state)
        .map_err(io("KVM_SET_MP_STATE"))?;
    Ok(())
}
