//! The CPU state a 64-bit kernel expects at its entry point: a flat GDT, identity-mapped page
//! tables for the first 1 GiB, long mode on, and the Linux 64-bit boot registers.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError};

use crate::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, IDENTITY_MAPPED_SIZE, PDE_START,
    PDPTE_START, PML4_START,
};
use crate::memory::GuestMemoryMmap;

/// CR0: protected mode enable.
pub const X86_CR0_PE: u64 = 1 << 0;
/// CR0: paging.
pub const X86_CR0_PG: u64 = 1 << 31;
/// CR4: physical address extension (required for long mode).
pub const X86_CR4_PAE: u64 = 1 << 5;
/// EFER: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER: long mode active.
pub const EFER_LMA: u64 = 1 << 10;

/// GDT selectors: null, 64-bit code, data, TSS.
pub const GDT_CODE_SELECTOR: u16 = 0x08;
/// Data segment selector.
pub const GDT_DATA_SELECTOR: u16 = 0x10;
/// Task state segment selector.
pub const GDT_TSS_SELECTOR: u16 = 0x18;

/// Errors from writing the boot structures into guest memory.
#[derive(Debug, thiserror::Error)]
pub enum LongModeError {
    /// Write the GDT.
    #[error("write the boot GDT")]
    WriteGdt(#[source] GuestMemoryError),
    /// Write the IDT.
    #[error("write the boot IDT")]
    WriteIdt(#[source] GuestMemoryError),
    /// Write the page tables.
    #[error("write the boot page tables")]
    WritePageTables(#[source] GuestMemoryError),
}

/// A GDT descriptor from its access/flags word (`0xF0FF` mask: flags in the high nibble, access
/// byte in the low byte), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT: null, code (64-bit, present, ring 0), data (read/write), TSS.
pub const BOOT_GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// The `kvm_segment` KVM wants for the GDT descriptor `entry` at `selector`.
pub fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    // Each field is a masked bit-field of the descriptor, so the narrowing casts are exact.
    #[allow(clippy::cast_possible_truncation)]
    let field = |shift: u32, mask: u64| ((entry >> shift) & mask) as u8;
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    #[allow(clippy::cast_possible_truncation)]
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = field(55, 1);
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = field(47, 1);
    kvm_segment {
        base,
        limit,
        selector,
        type_: field(40, 0xf),
        present,
        dpl: field(45, 0x3),
        db: field(54, 1),
        s: field(44, 1),
        l: field(53, 1),
        g,
        avl: field(52, 1),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// Writes the GDT, an empty IDT and the page tables into guest memory.
pub fn write_boot_structures(mem: &GuestMemoryMmap) -> Result<(), LongModeError> {
    for (i, entry) in (0u64..).zip(BOOT_GDT) {
        mem.write_obj(entry, GuestAddress(BOOT_GDT_START + i * 8))
            .map_err(LongModeError::WriteGdt)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(LongModeError::WriteIdt)?;
    write_page_tables(mem).map_err(LongModeError::WritePageTables)
}

/// Present | writable.
const PTE_PRESENT_RW: u64 = 0x3;
/// Present | writable | page size (a 2 MiB page in a page directory).
const PDE_2M_PAGE: u64 = 0x83;

fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), GuestMemoryError> {
    mem.write_obj(PDPTE_START | PTE_PRESENT_RW, GuestAddress(PML4_START))?;
    mem.write_obj(PDE_START | PTE_PRESENT_RW, GuestAddress(PDPTE_START))?;
    let pages = IDENTITY_MAPPED_SIZE >> 21;
    for i in 0..pages {
        mem.write_obj((i << 21) | PDE_2M_PAGE, GuestAddress(PDE_START + i * 8))?;
    }
    Ok(())
}

/// Long-mode special registers: flat segments from the boot GDT, paging on with the boot page
/// tables. Fields not touched here (APIC base, interrupt bitmap) keep KVM's values.
pub fn configure_sregs(sregs: &mut kvm_sregs) {
    let code = segment_from_gdt(BOOT_GDT[1], GDT_CODE_SELECTOR);
    let data = segment_from_gdt(BOOT_GDT[2], GDT_DATA_SELECTOR);
    let tss = segment_from_gdt(BOOT_GDT[3], GDT_TSS_SELECTOR);

    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = u16::try_from(BOOT_GDT.len() * 8 - 1).unwrap_or(u16::MAX);
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;

    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
}

/// Where a vCPU starts: instruction pointer, stack, and the one argument register (`rsi`, which
/// the Linux 64-bit boot protocol uses for the zero page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryPoint {
    /// First instruction.
    pub rip: u64,
    /// Initial stack pointer (also `rbp`).
    pub rsp: u64,
    /// The boot argument.
    pub rsi: u64,
}

impl EntryPoint {
    /// The Linux 64-bit boot protocol: `rsi` = zero page, the boot stack.
    pub fn linux(rip: u64, zero_page: u64) -> Self {
        Self {
            rip,
            rsp: BOOT_STACK_POINTER,
            rsi: zero_page,
        }
    }
}

/// General registers at entry: everything zero except the entry point, and RFLAGS bit 1, which
/// is reserved and must be set.
pub fn entry_regs(entry: EntryPoint) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry.rip,
        rsp: entry.rsp,
        rbp: entry.rsp,
        rsi: entry.rsi,
        ..Default::default()
    }
}

/// FPU at entry: the x87 control word and MXCSR as after FNINIT / reset.
pub fn entry_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestAddress;

    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let code = segment_from_gdt(BOOT_GDT[1], GDT_CODE_SELECTOR);
        assert_eq!((code.l, code.db, code.present, code.s), (1, 0, 1, 1));
        assert_eq!((code.base, code.limit, code.g), (0, 0xffff_ffff, 1));
        assert_eq!(code.type_, 0xb);
        let data = segment_from_gdt(BOOT_GDT[2], GDT_DATA_SELECTOR);
        assert_eq!((data.l, data.db, data.type_), (0, 1, 3));
        let null = segment_from_gdt(BOOT_GDT[0], 0);
        assert_eq!(null.unusable, 1);
    }

    #[test]
    fn page_tables_identity_map_1gib() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_boot_structures(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4 & !0xfff, PDPTE_START);
        let last: u64 = mem.read_obj(GuestAddress(PDE_START + 511 * 8)).unwrap();
        assert_eq!(last, (511 << 21) | 0x83);
        let gdt: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(gdt, BOOT_GDT[1]);
    }

    #[test]
    fn sregs_enter_long_mode() {
        let mut s = kvm_sregs::default();
        configure_sregs(&mut s);
        assert_eq!(s.cr0 & (X86_CR0_PE | X86_CR0_PG), X86_CR0_PE | X86_CR0_PG);
        assert_ne!(s.cr4 & X86_CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cr3, PML4_START);
        assert_eq!(s.gdt.limit, 31);
    }
}
