//! What the state store records of sandboxes and snapshots.

use std::collections::BTreeMap;

use cove_model::{Reason, SandboxDir, SandboxState};
use serde::Serialize;

/// A sandbox as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SandboxRecord {
    /// 12 hex digits.
    pub id: String,
    /// Optional unique name.
    pub name: Option<String>,
    /// Image name.
    pub image: String,
    /// The image's manifest digest (what its disk is).
    pub image_digest: String,
    /// Where it is in its life.
    pub state: SandboxState,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Writable disk in MiB.
    pub disk_mib: u32,
    /// Creation time, milliseconds since the epoch.
    pub created_at: i64,
    /// Engine running it.
    pub engine: String,
    /// Engine acceleration.
    pub accel: String,
    /// Pid of its cove-vm.
    pub pid: Option<u32>,
    /// Its control socket.
    pub socket: String,
    /// Its directory.
    pub dir: String,
    /// Milliseconds from cove-vm start to agent ready.
    pub boot_ms: Option<i64>,
    /// Why it is in its state, where that needs saying (failed, stopped, put away when idle).
    pub reason: Option<Reason>,
    /// When its state last changed, milliseconds since the epoch.
    pub updated_at: i64,
    /// The process that last wrote it (`PID:START`), to tell an operation in progress from one
    /// whose process is gone.
    pub op: Option<String>,
    /// Its owner (coved's tenant); none when created locally.
    pub owner: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Environment every exec in it gets (over the image's).
    pub env: BTreeMap<String, String>,
}

impl SandboxRecord {
    /// Its directory and the files in it.
    pub fn layout(&self) -> SandboxDir {
        SandboxDir::at(&self.dir)
    }
}

/// A sandbox being started.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) rec: SandboxRecord,
    pub(crate) pid: u32,
}

/// A snapshot as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotRecord {
    /// 12 hex digits.
    pub id: String,
    /// Optional unique name.
    pub name: Option<String>,
    /// The sandbox it was taken from.
    pub sandbox: Option<String>,
    /// Its image.
    pub image: String,
    /// The image's manifest digest.
    pub image_digest: String,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Writable disk in MiB.
    pub disk_mib: u32,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// Its directory.
    pub dir: String,
    /// The template of its image.
    pub template: bool,
    /// Its owner (coved's tenant); none for local snapshots and templates.
    pub owner: Option<String>,
}
