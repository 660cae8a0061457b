//! Engines: what runs the guest. Nothing above cove-vm knows which one a sandbox uses; they all
//! boot the same kernel and initramfs and expose the agent's port as a Unix socket.

pub mod qemu;

use std::path::{Path, PathBuf};

use cove_protocol::control::VmConfig;

/// Why an engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Unknown engine {0:?}; this build has `qemu`.
    #[error("unknown engine {0:?}; this build has `qemu`")]
    Unknown(String),
    /// Spawning the VMM failed.
    #[error("starting {program}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A guest being run by an engine.
pub trait RunningVm: Send {
    /// Unix socket connected to the guest agent's port.
    fn agent_socket(&self) -> PathBuf;
    /// Pid of a separate VMM process, if the engine uses one.
    fn vmm_pid(&self) -> Option<u32>;
    /// `tcg`, `kvm`, …
    fn accel(&self) -> String;
    /// Waits for the guest to end; returns a description of how it ended.
    fn wait(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send + '_>>;
    /// Ends the guest now.
    fn kill(&mut self);
}

/// Starts the engine a config names.
pub fn start(cfg: &VmConfig, dir: &Path) -> Result<Box<dyn RunningVm>, EngineError> {
    match cfg.engine.as_str() {
        "qemu" => Ok(Box::new(qemu::Qemu::start(cfg, dir)?)),
        other => Err(EngineError::Unknown(other.to_string())),
    }
}
