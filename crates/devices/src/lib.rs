//! Cove's emulated devices.
//!
//! Every device lives in its own folder with the same files (`mod.rs`, `device.rs`, and later
//! `persist.rs`), so that knowing one device tells you where everything is in all of them.
//! Devices reach the VMM only through the [`bus`] module's [`bus::BusDevice`] trait and through
//! event file descriptors; this crate never depends on `cove-vmm`.

pub mod bus;
pub mod cmos;
pub mod i8042;
pub mod serial;
pub mod trigger;

pub use bus::{Bus, BusDevice, BusError};
pub use trigger::EventFdTrigger;
