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
    for (index, region) in memory.iter().enumerate() {
        let slot = u32::try_from(index).map_err(|_| MemoryError::TooManyRegions)?;
        let start = region.start_addr().0;
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|e| MemoryError::HostAddress(start, e))?;
        let kvm_region = kvm_userspace_memory_region {
            slot,
            flags: 0,
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
