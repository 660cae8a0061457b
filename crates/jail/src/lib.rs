//! The second wall around a sandbox: the jail its cove-vm and VMM run in.
//!
//! The VM is the first wall; this crate assumes it can fall (a bug in QEMU's device emulation
//! or in cove-vm, reachable from guest code) and limits what the process that falls can do:
//! - [`enter`] (cove-vm, as root, before the engine starts): new mount, PID, IPC, UTS, network
//!   and cgroup namespaces; `pivot_root` into a tmpfs that shows only the sandbox's own files,
//!   the engine's program and libraries, and the device nodes it needs; a per-sandbox
//!   unprivileged user with no capabilities, `no_new_privs`, rlimits and no inherited files;
//! - [`seccomp`] (cove-vm, once the engine runs): cove-vm's system-call allow-list;
//! - [`cgroup`] (the host): a cgroup per sandbox, sized from its spec, under a parent that
//!   keeps a reserve for the host itself;
//! - [`uids`], [`engine_root`] and [`inspect`] (the host): the user each sandbox runs as, the
//!   engine's minimal file tree, and what a running jail looks like from outside.
//!
//! `docs/threat-model.md` says what each layer stops and what stays trusted.

pub mod cgroup;
pub mod engine_root;
pub mod enter;
pub mod inspect;
pub mod seccomp;
pub mod uids;

pub use cove_protocol::control::JailConfig;
