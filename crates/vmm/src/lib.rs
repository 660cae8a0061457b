//! Cove's own KVM microVM monitor (x86_64).
//!
//! A [`Vm`] owns the KVM VM, its guest memory and its devices' buses; it boots a Linux kernel
//! (or a purpose-built test program) and drives one thread per vCPU through an explicit state
//! machine (see [`vcpu`]). Devices come from `cove-devices`, which never depends on this crate.

pub mod boot;
pub mod cpu_template;
pub mod io;
pub mod layout;
pub mod memory;
pub mod msr;
pub mod persist;
pub mod seccomp;
pub mod vcpu;
pub mod virtio;
mod vm;

pub use boot::{BootInfo, EntryPoint, KernelConfig};
pub use layout::MemoryLayout;
pub use persist::VmSnapshot;
pub use vm::{ExitWatch, MAX_VCPUS, Vm, VmConfig, VmError, VmExit};
