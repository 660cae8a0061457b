//! Where things live in guest physical memory (x86_64).
//!
//! ```text
//! 0x0000_0000  real-mode IVT and BIOS data area (RAM, left zero)
//! 0x0000_0500  GDT                     (BOOT_GDT_START)
//! 0x0000_0520  IDT (empty)             (BOOT_IDT_START)
//! 0x0000_7000  zero page / boot_params (ZERO_PAGE_START)
//! 0x0000_8ff0  initial stack top       (BOOT_STACK_POINTER)
//! 0x0000_9000  PML4, PDPT, PD          (PML4_START, PDPTE_START, PDE_START)
//! 0x0002_0000  kernel command line     (CMDLINE_START, up to CMDLINE_MAX_SIZE)
//! 0x0009_fc00  EBDA .. 1 MiB: reserved (not RAM in the e820 map)
//! 0x0010_0000  kernel (HIMEM_START) .. initramfs at the top of low RAM
//! 0xd000_0000  32-bit MMIO gap .. 4 GiB (devices; KVM's TSS and identity-map pages)
//! 0x1_0000_0000 RAM above 4 GiB when the guest has more than the gap leaves below it
//! ```

use vm_memory::GuestAddress;

/// The GDT the boot vCPU starts with.
pub const BOOT_GDT_START: u64 = 0x500;
/// An empty IDT: the guest installs its own before enabling interrupts.
pub const BOOT_IDT_START: u64 = 0x520;
/// The Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU (grows down towards the zero page).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page-map level 4 of the boot page tables.
pub const PML4_START: u64 = 0x9000;
/// The one page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// The one page directory: 512 × 2 MiB pages = the first 1 GiB, identity mapped.
pub const PDE_START: u64 = 0xb000;
/// The kernel command line (NUL terminated).
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line, including the NUL. Linux x86 accepts 2048 bytes by default; this is
/// the space reserved for it, not a promise the kernel will read all of it.
pub const CMDLINE_MAX_SIZE: usize = 0x1000;
/// Start of the extended BIOS data area: the end of usable low RAM in the e820 map.
pub const EBDA_START: u64 = 0x9fc00;
/// Start of "high" memory (1 MiB), where kernels are loaded.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap: no RAM between here and 4 GiB.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 1 << 32;
/// KVM's three-page TSS region (needed on Intel for real-mode emulation), inside the gap.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// KVM's identity-map page, just below the TSS.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
/// Boot page tables map this much, identity, with 2 MiB pages.
pub const IDENTITY_MAPPED_SIZE: u64 = 1 << 30;
/// The initramfs is placed at a multiple of this.
pub const INITRAMFS_ALIGN: u64 = 0x20_0000;

// The boot structures must not overlap each other, and KVM's pages must be in the MMIO gap.
const _: () = {
    assert!(BOOT_IDT_START + 8 <= ZERO_PAGE_START);
    assert!(ZERO_PAGE_START + 0x1000 <= BOOT_STACK_POINTER);
    assert!(BOOT_STACK_POINTER < PML4_START);
    assert!(PDE_START + 0x1000 <= CMDLINE_START);
    assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
    assert!(KVM_IDENTITY_MAP_ADDRESS >= MMIO_GAP_START);
    assert!(KVM_TSS_ADDRESS >= MMIO_GAP_START);
};

/// Errors from [`MemoryLayout::new`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    /// The guest needs room for the boot structures and a kernel.
    #[error("guest memory of {size:#x} bytes is too small (minimum {min:#x})")]
    TooSmall {
        /// Requested size.
        size: u64,
        /// Smallest accepted size.
        min: u64,
    },
    /// The size must be a whole number of pages.
    #[error("guest memory size {0:#x} is not a multiple of 4 KiB")]
    Unaligned(u64),
    /// The size does not fit in the address space.
    #[error("guest memory size {0:#x} is too large")]
    TooLarge(u64),
}

/// The e820 memory types Cove reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E820Type {
    /// Usable RAM.
    Ram = 1,
    /// Reserved: the guest must not use it.
    Reserved = 2,
}

/// One entry of the e820 map handed to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Start of the range.
    pub addr: u64,
    /// Length of the range.
    pub size: u64,
    /// What the range is.
    pub kind: E820Type,
}

/// The guest's RAM ranges, derived from its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLayout {
    size: u64,
}

impl MemoryLayout {
    /// Smallest guest: the boot structures below 1 MiB plus a few MiB for a kernel.
    pub const MIN_SIZE: u64 = 4 << 20;

    /// The layout of a guest with `size` bytes of RAM.
    pub fn new(size: u64) -> Result<Self, LayoutError> {
        if size < Self::MIN_SIZE {
            return Err(LayoutError::TooSmall {
                size,
                min: Self::MIN_SIZE,
            });
        }
        if !size.is_multiple_of(0x1000) {
            return Err(LayoutError::Unaligned(size));
        }
        // RAM above the gap ends at 4 GiB + (size - gap start); keep that well inside 2^64 and
        // inside what a usize can map.
        if size > (1 << 46) || usize::try_from(size).is_err() {
            return Err(LayoutError::TooLarge(size));
        }
        Ok(Self { size })
    }

    /// Total RAM.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// End (exclusive) of the RAM below the MMIO gap.
    pub fn low_ram_end(&self) -> u64 {
        self.size.min(MMIO_GAP_START)
    }

    /// The RAM ranges as (start, length): one below the gap, and one from 4 GiB if needed.
    pub fn ram_ranges(&self) -> Vec<(GuestAddress, u64)> {
        let low = self.low_ram_end();
        let mut ranges = vec![(GuestAddress(0), low)];
        if self.size > low {
            ranges.push((GuestAddress(MMIO_GAP_END), self.size - low));
        }
        ranges
    }

    /// The e820 map: RAM below the EBDA, RAM from 1 MiB to the gap, RAM above 4 GiB.
    pub fn e820(&self) -> Vec<E820Entry> {
        let mut map = vec![
            E820Entry {
                addr: 0,
                size: EBDA_START,
                kind: E820Type::Ram,
            },
            E820Entry {
                addr: HIMEM_START,
                size: self.low_ram_end() - HIMEM_START,
                kind: E820Type::Ram,
            },
        ];
        if self.size > self.low_ram_end() {
            map.push(E820Entry {
                addr: MMIO_GAP_END,
                size: self.size - self.low_ram_end(),
                kind: E820Type::Ram,
            });
        }
        map
    }

    /// Where an initramfs of `len` bytes goes: the highest `INITRAMFS_ALIGN`-aligned address
    /// where it still ends below the top of low RAM, and above `kernel_end`.
    pub fn initramfs_address(&self, len: u64, kernel_end: u64) -> Option<u64> {
        let start = self.low_ram_end().checked_sub(len)? & !(INITRAMFS_ALIGN - 1);
        (start >= kernel_end.max(HIMEM_START)).then_some(start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_all_low_ram() {
        let l = MemoryLayout::new(128 << 20).unwrap();
        assert_eq!(l.ram_ranges(), vec![(GuestAddress(0), 128 << 20)]);
        let e = l.e820();
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].addr + e[1].size, 128 << 20);
    }

    #[test]
    fn big_guest_skips_the_mmio_gap() {
        let l = MemoryLayout::new(4 << 30).unwrap();
        let r = l.ram_ranges();
        assert_eq!(r[0], (GuestAddress(0), MMIO_GAP_START));
        assert_eq!(r[1], (GuestAddress(1 << 32), (4 << 30) - MMIO_GAP_START));
        assert_eq!(l.e820().len(), 3);
        assert_eq!(r.iter().map(|(_, len)| len).sum::<u64>(), 4 << 30);
    }

    #[test]
    fn rejects_bad_sizes() {
        assert!(matches!(
            MemoryLayout::new(1 << 20),
            Err(LayoutError::TooSmall { .. })
        ));
        assert_eq!(
            MemoryLayout::new((64 << 20) + 1),
            Err(LayoutError::Unaligned((64 << 20) + 1))
        );
        assert!(matches!(
            MemoryLayout::new(!0xfff),
            Err(LayoutError::TooLarge(_))
        ));
    }

    #[test]
    fn initramfs_goes_high_and_aligned() {
        let l = MemoryLayout::new(128 << 20).unwrap();
        let a = l.initramfs_address(0x1234, 0x20_0000).unwrap();
        assert_eq!(a % INITRAMFS_ALIGN, 0);
        assert!(a + 0x1234 <= 128 << 20);
        assert_eq!(a, (128 << 20) - INITRAMFS_ALIGN);
        // Does not fit above the kernel.
        assert_eq!(l.initramfs_address(127 << 20, 0x20_0000), None);
        assert_eq!(l.initramfs_address(u64::MAX, 0), None);
    }
}
