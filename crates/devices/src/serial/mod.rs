//! The 8250/16550 UART at the PC's COM1 (ports 0x3f8..0x400, IRQ 4), built on `vm-superio`.
//!
//! The guest's console: Linux writes its boot log here (`console=ttyS0`). What the guest
//! transmits goes to any [`std::io::Write`]; the interrupt line is an event fd that the VMM binds
//! to the in-kernel irqchip with an irqfd.

mod device;
mod persist;

pub use device::{SerialDevice, SerialError, SerialOut};
pub use persist::SerialPersist;

/// Base of COM1 in the I/O port space.
pub const COM1_BASE: u64 = 0x3f8;
/// Number of UART registers.
pub const COM1_LEN: u64 = 8;
/// COM1's interrupt line on the legacy PIC / IOAPIC.
pub const COM1_IRQ: u32 = 4;
