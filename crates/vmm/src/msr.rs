//! Model-specific registers a vCPU starts with.
//!
//! What a freshly reset x86 CPU has and firmware would have set up before handing over to a
//! kernel: fast string operations enabled, syscall/sysenter MSRs cleared (the kernel programs
//! them), the TSC at zero, and MTRRs enabled with write-back as the default memory type (without
//! this Linux maps all RAM uncached). EFER is not here: it is part of the special registers
//! (see [`crate::boot::configure_sregs`]).

use kvm_bindings::kvm_msr_entry;

/// IA32_SYSENTER_CS.
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
/// IA32_SYSENTER_ESP.
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
/// IA32_SYSENTER_EIP.
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// IA32_STAR (syscall segment selectors).
pub const MSR_STAR: u32 = 0xc000_0081;
/// IA32_LSTAR (64-bit syscall entry).
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// IA32_CSTAR (compat-mode syscall entry).
pub const MSR_CSTAR: u32 = 0xc000_0083;
/// IA32_FMASK (syscall RFLAGS mask).
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
/// IA32_KERNEL_GS_BASE.
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// IA32_TIME_STAMP_COUNTER.
pub const MSR_IA32_TSC: u32 = 0x10;
/// IA32_MISC_ENABLE.
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// IA32_MISC_ENABLE bit 0: fast-string operations.
pub const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 1;
/// IA32_MTRR_DEF_TYPE.
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// MTRR_DEF_TYPE: MTRRs enabled (bit 11), default type write-back (6).
pub const MTRR_ENABLE_WRITE_BACK: u64 = (1 << 11) | 6;

/// The MSRs every vCPU is given before it first runs.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITE_BACK),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}
