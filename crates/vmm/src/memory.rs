//! Guest RAM: anonymous mappings from `vm-memory`, registered with KVM as memory slots.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress, mmap::FromRangesError,
};

use crate::layout::MemoryLayout;

/// Cove's guest memory type: anonymous mmap regions, no dirty bitmap (yet).
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Errors from creating or registering guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Map the guest's RAM.
    #[error("map guest memory")]
    Map(#[source] FromRangesError),
    /// Find the host address of a region (cannot happen for a region we just mapped).
    #[error("host address of guest region at {0:#x}")]
    HostAddress(u64, #[source] vm_memory::GuestMemoryError),
    /// A region is larger than the host's address space.
    #[error("guest region at {0:#x} is too large for this host")]
    RegionTooLarge(u64),
    /// KVM_SET_USER_MEMORY_REGION.
    #[error("register guest memory slot {slot} with KVM")]
    Register {
        /// The memory slot.
        slot: u32,
        /// The ioctl's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM_GET_DIRTY_LOG (the slot was registered without the dirty log).
    #[error("read the dirty log of memory slot {slot}")]
    DirtyLog {
        /// The memory slot.
        slot: u32,
        /// The ioctl's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// More regions than slot numbers.
    #[error("too many guest memory regions")]
    TooManyRegions,
}

/// Maps anonymous RAM for every range of `layout`.
pub fn create(layout: &MemoryLayout) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges = layout
        .ram_ranges()
        .into_iter()
        .map(|(start, len)| {
            usize::try_from(len)
                .map(|len| (start, len))
                .map_err(|_| MemoryError::RegionTooLarge(start.0))
        })
        .collect::<Result<Vec<(GuestAddress, usize)>, _>>()?;
    GuestMemoryMmap::from_ranges(&ranges).map_err(MemoryError::Map)
}

/// Tells KVM about every region of `memory`, one slot per region, numbered from 0.
pub fn register(vm: &VmFd, memory: &GuestMemoryMmap) -> Result<(), MemoryError> {
    register_with(vm, memory, false)
}

/// [`register`], with KVM logging the pages the guest writes (`KVM_MEM_LOG_DIRTY_PAGES`) or
/// not. Registering a slot again with other flags is how KVM turns the log on and off.
pub fn register_with(
    vm: &VmFd,
    memory: &GuestMemoryMmap,
    log_dirty: bool,
) -> Result<(), MemoryError> {
    for (index, region) in memory.iter().enumerate() {
        let slot = u32::try_from(index).map_err(|_| MemoryError::TooManyRegions)?;
        let start = region.start_addr().0;
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|e| MemoryError::HostAddress(start, e))?;
        let kvm_region = kvm_userspace_memory_region {
            slot,
            flags: if log_dirty {
                kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES
            } else {
                0
            },
            guest_phys_addr: start,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: `host` is the start of a live mapping of `region.len()` bytes owned by
        // `memory`; the caller keeps `memory` alive as long as the VM (both live in `Vm`, which
        // drops the VM fd first). Regions of a `GuestMemoryMmap` never overlap, and each gets
        // its own slot.
        unsafe { vm.set_user_memory_region(kvm_region) }
            .map_err(|source| MemoryError::Register { slot, source })?;
    }
    Ok(())
}

/// The pages of one memory region written since the last look: bit `i` of the bitmap is the
/// page at `start + i * 4096`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyRegion {
    /// The region's first guest address.
    pub start: GuestAddress,
    /// One bit per 4 KiB page.
    pub bitmap: Vec<u64>,
}

impl DirtyRegion {
    /// The guest addresses of the dirty pages.
    pub fn pages(&self) -> impl Iterator<Item = GuestAddress> + '_ {
        self.bitmap.iter().enumerate().flat_map(move |(w, bits)| {
            (0..64u64)
                .filter(move |b| bits & (1 << b) != 0)
                .map(move |b| GuestAddress(self.start.0 + ((w as u64) * 64 + b) * 4096))
        })
    }
}

/// Reads (and clears) KVM's log of the pages the guest wrote in each region of `memory`,
/// registered with [`register_with`] and `log_dirty`.
pub fn dirty_log(vm: &VmFd, memory: &GuestMemoryMmap) -> Result<Vec<DirtyRegion>, MemoryError> {
    memory
        .iter()
        .enumerate()
        .map(|(index, region)| {
            let slot = u32::try_from(index).map_err(|_| MemoryError::TooManyRegions)?;
            let len = usize::try_from(region.len())
                .map_err(|_| MemoryError::RegionTooLarge(region.start_addr().0))?;
            let bitmap = vm
                .get_dirty_log(slot, len)
                .map_err(|source| MemoryError::DirtyLog { slot, source })?;
            Ok(DirtyRegion {
                start: region.start_addr(),
                bitmap,
            })
        })
        .collect()
}
