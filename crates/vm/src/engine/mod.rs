//! Engines: what runs the guest. Nothing above cove-vm knows which one a sandbox uses; they all
//! boot the same kernel and initramfs, expose the agent's port as a Unix socket, and implement
//! the same lifecycle operations (pause, resume, save to a snapshot directory, restore from one).

pub mod kvm;
pub mod qemu;
pub mod qmp;

use cove_model::{Accel, VmEngine};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use cove_protocol::control::VmConfig;

use crate::snapshot::{Manifest, SnapshotError};

/// The kernel command line both engines start from: the serial console, a reboot on panic, one
/// UART, and the CPU's RNG trusted to seed the kernel's (so early user space never waits for
/// entropy). Each engine adds how the guest's power-off reaches it and what it needs besides.
pub const GUEST_CMDLINE: &str = "console=ttyS0 panic=-1 quiet 8250.nr_uarts=1 random.trust_cpu=on";

/// What the kernel command line says of the guest's network (empty without a device): the agent
/// configures eth0 from it (a restored guest is configured already).
pub fn net_cmdline(cfg: &VmConfig) -> String {
    cfg.net
        .as_ref()
        .map(|n| format!(" cove.net={},{}", n.address, n.gateway))
        .unwrap_or_default()
}

/// Seconds since the epoch, for a snapshot's manifest.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A future borrowed from an engine.
pub type EngineFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why an engine operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Cove's own VMM failed.
    #[error("{0}")]
    Vmm(String),
    /// Spawning the VMM failed.
    #[error("starting {program}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The VMM refused or failed a command.
    #[error(transparent)]
    Qmp(#[from] qmp::QmpError),
    /// Writing or reading a snapshot failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A path cannot be handed to the VMM safely.
    #[error("path {0:?} contains characters the VMM cannot take")]
    BadPath(String),
}

/// A guest being run by an engine.
pub trait RunningVm: Send {
    /// Unix socket connected to the guest agent's port.
    fn agent_socket(&self) -> PathBuf;
    /// Pid of a separate VMM process, if the engine uses one.
    fn vmm_pid(&self) -> Option<u32>;
    /// How it runs the guest.
    fn accel(&self) -> Accel;
    /// Waits for the guest to end; returns a description of how it ended.
    fn wait(&mut self) -> EngineFuture<'_, String>;
    /// Ends the guest now.
    fn kill(&mut self);
    /// Stops the vCPUs (memory stays resident).
    fn pause(&mut self) -> EngineFuture<'_, Result<(), EngineError>>;
    /// Runs the vCPUs again.
    fn resume(&mut self) -> EngineFuture<'_, Result<(), EngineError>>;
    /// With the vCPUs stopped, writes device state, memory and manifest into `dir` (existing,
    /// empty), every file synced.
    fn save<'a>(&'a mut self, dir: &'a Path) -> EngineFuture<'a, Result<Manifest, EngineError>>;
}

/// Starts the engine a config names: a boot, or a restore when `cfg.restore` is set.
pub async fn start(cfg: &VmConfig, dir: &Path) -> Result<Box<dyn RunningVm>, EngineError> {
    match cfg.engine {
        VmEngine::Qemu => Ok(Box::new(qemu::Qemu::start(cfg, dir).await?)),
        VmEngine::Kvm => Ok(Box::new(kvm::Kvm::start(cfg, dir).await?)),
    }
}
