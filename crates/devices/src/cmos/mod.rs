//! The PC's CMOS real-time clock (MC146818) at ports 0x70/0x71, reduced to what a Linux guest
//! reads at boot: the wall-clock time, and an "update in progress" flag that is never set.
//!
//! Without it every read returns all-ones, the UIP bit included, and Linux waits for the update
//! to finish before reading the time (under QEMU without an RTC that cost a second of boot). The
//! time is the host's UTC at the moment of the read, in BCD, 24-hour mode; writes are accepted
//! and ignored (a guest cannot set the host's clock). Cove's agent sets the guest's clock
//! precisely after boot and after every restore anyway.

mod device;

pub use device::CmosDevice;

/// The index port; the data port is `CMOS_BASE + 1`.
pub const CMOS_BASE: u64 = 0x70;
/// Ports 0x70..=0x71.
pub const CMOS_LEN: u64 = 2;
