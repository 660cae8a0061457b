//! cove-agent: the guest's PID 1.
//!
//! It mounts the sandbox root (image disk under an overlay on the sandbox's own disk), switches
//! into it, and serves the Cove protocol on a virtio-console port: exec with pipes or a PTY,
//! files, health. The request handling is a library so it can be tested on the host.

pub mod exec;
pub mod fdio;
pub mod files;
pub mod init;
pub mod net;
pub mod process;
pub mod procs;
pub mod relay;
pub mod server;
pub mod user;
pub mod watch;
