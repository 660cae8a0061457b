//! Cove's virtio devices and the virtio-mmio transport that puts them on the MMIO bus.
//!
//! The layout follows the rest of `cove-devices`: the transport in [`mmio`], the contract every
//! device implements in [`device`], descriptor-chain helpers shared by the devices in [`queue`],
//! and one folder per device (`rng/`, `block/`, `console/`, `net/`), each with `device.rs` (what the
//! device does) and `persist.rs` (its serde state for snapshots).
//!
//! Everything in this crate treats the guest as hostile: register values, ring addresses,
//! descriptor chains and request headers are validated before use, and a bad value is logged and
//! refused without panicking and without touching memory outside the guest's regions.

pub mod block;
pub mod console;
pub mod device;
#[cfg(any(test, feature = "test-utils"))]
pub mod fuzzing;
pub mod mmio;
pub mod net;
pub mod persist;
pub mod queue;
pub mod rng;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;

pub use device::{ActivateError, Interrupt, IrqLine, VirtioDevice};
pub use mmio::MmioTransport;

/// The guest memory type the devices work on (the same alias as the VMM's).
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Feature bits common to every device (virtio 1.x, section 6).
pub mod features {
    /// The device complies with virtio 1.0 or later; the transport refuses drivers without it.
    pub const VIRTIO_F_VERSION_1: u32 = 32;
}

/// Device-status bits written by the driver (virtio 1.x, section 2.1).
pub mod status {
    /// The guest OS has noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest OS knows how to drive the device.
    pub const DRIVER: u32 = 2;
    /// The driver is set up and ready to drive the device.
    pub const DRIVER_OK: u32 = 4;
    /// The driver has acknowledged the features it understands.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error from which it cannot recover without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The guest gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// Device type numbers (virtio 1.x, section 5).
pub mod device_type {
    /// virtio-net.
    pub const NET: u32 = 1;
    /// virtio-blk.
    pub const BLOCK: u32 = 2;
    /// virtio-console.
    pub const CONSOLE: u32 = 3;
    /// virtio-rng (entropy).
    pub const RNG: u32 = 4;
}
