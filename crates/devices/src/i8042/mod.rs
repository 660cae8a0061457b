//! The PS/2 controller (i8042), reduced to what a Linux guest needs: the "pulse reset line"
//! command, which is how Linux reboots with `reboot=k`.
//!
//! Writing 0xFE to the command port (0x64) signals a reset event; the VMM treats it as "the guest
//! asked to restart" and stops the VM cleanly. Everything else is accepted and ignored, and reads
//! return 0 (no data, input buffer empty), which lets Linux's i8042 probe finish quickly.

mod device;

pub use device::I8042Device;

/// First port of the controller (data port); the command/status port is `BASE + 4`.
pub const I8042_BASE: u64 = 0x60;
/// Ports 0x60..=0x64.
pub const I8042_LEN: u64 = 5;
