//! Cove's CPU template: what a guest's CPUID says, derived from `KVM_GET_SUPPORTED_CPUID`.
//!
//! KVM reports what this host can give a guest. Cove does not pass that through unchanged,
//! because a Cove guest may be snapshotted on one host and restored on another (templates,
//! hibernation): a process that saw a feature at boot keeps using it after the restore, and
//! faults if the new host lacks it. The template therefore hides features that vary between
//! otherwise compatible x86 hosts, or that a VM cannot keep across a snapshot:
//!
//! | leaf | what is hidden | why |
//! |------|----------------|-----|
//! | 0x1 ECX | DTES64, MONITOR, DS-CPL, VMX, SMX, EST, TM2, SDBG, PDCM | host power, debug-store and virtualisation features: no nested VMs, no MWAIT idle, no perf-capabilities MSR |
//! | 0x1 EDX | DS, ACPI thermal, TM | debug store and thermal monitoring are host facilities |
//! | 0x6 | everything | thermal and power management (the host's business) |
//! | 0x7.0 EBX | SGX, HLE, RTM, MPX, PQM, PQE, AVX-512 (all), Intel PT | TSX is turned off by microcode on many hosts; MPX is gone from new CPUs; AVX-512 differs between CPU generations of one fleet; SGX, RDT and PT are host resources |
//! | 0x7.0 ECX | AVX-512 VBMI/VBMI2/VNNI/BITALG/VPOPCNTDQ, WAITPKG, SGX-LC | AVX-512 as above; WAITPKG (UMWAIT) would let a guest idle on the host's core |
//! | 0x7.0 EDX | AVX-512 4VNNIW/4FMAPS/VP2INTERSECT/FP16, AMX (BF16, TILE, INT8) | as AVX-512; AMX needs a large per-task state the snapshot would have to carry |
//! | 0xa | everything | no virtual PMU: counters do not survive a snapshot and leak host activity |
//! | 0xd | AVX-512 (opmask, ZMM) and AMX state components | consistent with the features hidden above |
//!
//! What the template sets:
//! - leaf 0x1: the hypervisor bit (ECX bit 31), so the guest knows it is virtualised and looks
//!   for KVM's paravirtual leaves at 0x4000_0000; the vCPU's initial APIC id (EBX 31:24); the
//!   logical-processor count (EBX 23:16) and HTT when there is more than one vCPU;
//! - leaves 0xb and 0x1f (extended topology): one thread per core, all vCPUs in one package, and
//!   the vCPU's x2APIC id in EDX;
//! - leaf 0x4 (cache parameters): the number of cores per package (EAX 31:26) and one thread per
//!   cache (EAX 25:14 = 0).
//!
//! The template is deliberately a baseline, not a model of a named CPU: what remains is what KVM
//! supports here minus the list above. A snapshot records the resulting CPUID so that a restore
//! can refuse a host that cannot provide it (not done yet).

use kvm_bindings::{CpuId, kvm_cpuid_entry2};

/// The CPU topology and identity of one vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuIdentity {
    /// This vCPU's (x2)APIC id; Cove uses the vCPU index.
    pub apic_id: u8,
    /// How many vCPUs the VM has.
    pub vcpu_count: u8,
}

const fn bit(n: u32) -> u32 {
    1 << n
}

/// CPUID.1:ECX bits the template hides.
pub const LEAF1_ECX_HIDDEN: u32 = bit(2) // DTES64
    | bit(3) // MONITOR/MWAIT
    | bit(4) // DS-CPL
    | bit(5) // VMX
    | bit(6) // SMX
    | bit(7) // EST
    | bit(8) // TM2
    | bit(11) // SDBG
    | bit(15); // PDCM
/// CPUID.1:EDX bits the template hides.
pub const LEAF1_EDX_HIDDEN: u32 = bit(21) // DS
    | bit(22) // ACPI thermal
    | bit(29); // TM
/// CPUID.7.0:EBX bits the template hides.
pub const LEAF7_EBX_HIDDEN: u32 = bit(2) // SGX
    | bit(4) // HLE
    | bit(11) // RTM
    | bit(12) // PQM
    | bit(14) // MPX
    | bit(15) // PQE
    | bit(16) // AVX512F
    | bit(17) // AVX512DQ
    | bit(21) // AVX512_IFMA
    | bit(25) // Intel PT
    | bit(26) // AVX512PF
    | bit(27) // AVX512ER
    | bit(28) // AVX512CD
    | bit(30) // AVX512BW
    | bit(31); // AVX512VL
/// CPUID.7.0:ECX bits the template hides.
pub const LEAF7_ECX_HIDDEN: u32 = bit(1) // AVX512_VBMI
    | bit(5) // WAITPKG
    | bit(6) // AVX512_VBMI2
    | bit(11) // AVX512_VNNI
    | bit(12) // AVX512_BITALG
    | bit(14) // AVX512_VPOPCNTDQ
    | bit(30); // SGX_LC
/// CPUID.7.0:EDX bits the template hides.
pub const LEAF7_EDX_HIDDEN: u32 = bit(2) // AVX512_4VNNIW
    | bit(3) // AVX512_4FMAPS
    | bit(8) // AVX512_VP2INTERSECT
    | bit(22) // AMX_BF16
    | bit(23) // AVX512_FP16
    | bit(24) // AMX_TILE
    | bit(25); // AMX_INT8
/// XSAVE state components (CPUID.0xd.0:EAX) the template hides: AVX-512 opmask, ZMM_Hi256,
/// Hi16_ZMM, and AMX TILECFG/TILEDATA.
pub const XSAVE_HIDDEN_COMPONENTS: u32 = bit(5) | bit(6) | bit(7) | bit(17) | bit(18);

/// The hypervisor-present bit, CPUID.1:ECX bit 31.
pub const LEAF1_ECX_HYPERVISOR: u32 = bit(31);
/// Hyper-threading / multi-core present, CPUID.1:EDX bit 28.
pub const LEAF1_EDX_HTT: u32 = bit(28);

/// Applies the template to `cpuid` (as returned by `KVM_GET_SUPPORTED_CPUID`) for one vCPU.
pub fn apply(cpuid: &mut CpuId, id: VcpuIdentity) {
    for entry in cpuid.as_mut_slice() {
        apply_entry(entry, id);
    }
}

fn apply_entry(e: &mut kvm_cpuid_entry2, id: VcpuIdentity) {
    let apic_id = u32::from(id.apic_id);
    let count = u32::from(id.vcpu_count.max(1));
    match e.function {
        0x1 => {
            e.ecx &= !LEAF1_ECX_HIDDEN;
            e.ecx |= LEAF1_ECX_HYPERVISOR;
            e.edx &= !LEAF1_EDX_HIDDEN;
            // EBX: [31:24] initial APIC id, [23:16] logical processors, [15:8] CLFLUSH size.
            e.ebx = (apic_id << 24) | (count << 16) | (e.ebx & 0xffff);
            if count > 1 {
                e.edx |= LEAF1_EDX_HTT;
            } else {
                e.edx &= !LEAF1_EDX_HTT;
            }
        }
        0x4 => {
            // EAX [31:26]: cores per package - 1; [25:14]: threads sharing this cache - 1.
            e.eax &= !(0x3f << 26 | 0xfff << 14);
            e.eax |= (count - 1) << 26;
        }
        0x6 | 0xa => {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        0x7 if e.index == 0 => {
            e.ebx &= !LEAF7_EBX_HIDDEN;
            e.ecx &= !LEAF7_ECX_HIDDEN;
            e.edx &= !LEAF7_EDX_HIDDEN;
        }
        0xb | 0x1f => apply_topology(e, apic_id, count),
        0xd => match e.index {
            0 => e.eax &= !XSAVE_HIDDEN_COMPONENTS,
            i if i < 32 && XSAVE_HIDDEN_COMPONENTS & bit(i) != 0 => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            _ => {}
        },
        _ => {}
    }
}

/// Extended topology: level 0 is SMT (one thread per core), level 1 is the core level holding
/// every vCPU; higher levels are invalid.
fn apply_topology(e: &mut kvm_cpuid_entry2, apic_id: u32, count: u32) {
    // Bits of the x2APIC id that address cores in the package.
    let core_bits = u32::BITS - (count - 1).leading_zeros();
    let (shift, processors, level_type) = match e.index {
        0 => (0, 1, 1),
        1 => (core_bits, count, 2),
        _ => (0, 0, 0),
    };
    e.eax = shift;
    e.ebx = processors;
    e.ecx = (level_type << 8) | (e.index & 0xff);
    e.edx = apic_id;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: u32::MAX,
            ebx: u32::MAX,
            ecx: u32::MAX,
            edx: u32::MAX,
            ..Default::default()
        }
    }

    fn templated(entries: &[kvm_cpuid_entry2], id: VcpuIdentity) -> Vec<kvm_cpuid_entry2> {
        let mut cpuid = CpuId::from_entries(entries).unwrap();
        apply(&mut cpuid, id);
        cpuid.as_slice().to_vec()
    }

    const TWO: VcpuIdentity = VcpuIdentity {
        apic_id: 1,
        vcpu_count: 2,
    };

    #[test]
    fn leaf1_identity_and_masks() {
        let e = templated(&[entry(1, 0)], TWO)[0];
        assert_eq!(e.ebx >> 24, 1, "APIC id");
        assert_eq!((e.ebx >> 16) & 0xff, 2, "logical processors");
        assert_eq!(e.ebx & 0xffff, 0xffff, "CLFLUSH and brand kept");
        assert_ne!(e.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(e.ecx & LEAF1_ECX_HIDDEN, 0);
        assert_eq!(e.edx & LEAF1_EDX_HIDDEN, 0);
        assert_ne!(e.edx & LEAF1_EDX_HTT, 0);

        let single = VcpuIdentity {
            apic_id: 0,
            vcpu_count: 1,
        };
        assert_eq!(templated(&[entry(1, 0)], single)[0].edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn leaf7_hides_unportable_features_only_in_subleaf0() {
        let e = templated(&[entry(7, 0), entry(7, 1)], TWO);
        assert_eq!(e[0].ebx & LEAF7_EBX_HIDDEN, 0);
        assert_eq!(e[0].ecx & LEAF7_ECX_HIDDEN, 0);
        assert_eq!(e[0].edx & LEAF7_EDX_HIDDEN, 0);
        assert_ne!(e[0].ebx & bit(5), 0, "AVX2 stays");
        assert_eq!(e[1].ebx, u32::MAX, "subleaf 1 untouched");
    }

    #[test]
    fn pmu_and_power_leaves_are_empty() {
        for e in templated(&[entry(6, 0), entry(0xa, 0)], TWO) {
            assert_eq!((e.eax, e.ebx, e.ecx, e.edx), (0, 0, 0, 0));
        }
    }

    #[test]
    fn topology_reports_x2apic_id_and_levels() {
        let four = VcpuIdentity {
            apic_id: 3,
            vcpu_count: 4,
        };
        let e = templated(&[entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)], four);
        assert_eq!((e[0].eax, e[0].ebx, e[0].ecx >> 8), (0, 1, 1));
        assert_eq!((e[1].eax, e[1].ebx, e[1].ecx >> 8), (2, 4, 2));
        assert_eq!((e[2].ebx, e[2].ecx >> 8), (0, 0));
        assert!(e.iter().all(|e| e.edx == 3));
    }

    #[test]
    fn xsave_hides_avx512_and_amx_state() {
        let e = templated(&[entry(0xd, 0), entry(0xd, 5), entry(0xd, 2)], TWO);
        assert_eq!(e[0].eax & XSAVE_HIDDEN_COMPONENTS, 0);
        assert_eq!(e[1].eax, 0);
        assert_eq!(e[2].eax, u32::MAX, "AVX state stays");
    }
}
