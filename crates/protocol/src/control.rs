//! The control socket of `cove-vm` (one per sandbox).
//!
//! A client connects to `control.sock`, writes one JSON [`ControlRequest`] on a line and reads one
//! JSON [`ControlResponse`] line. After a successful `attach`, the connection carries protocol
//! frames to and from the agent: session ids are the client's own (cove-vm maps them), and
//! session 0 is not available (cove-vm has already said hello).
//!
//! [`VmConfig`] is what the host writes to `vm.json` for cove-vm to start from.

use cove_model::{Accel, VmEngine};
pub use cove_model::{OnExpire, OnIdle};
use serde::{Deserialize, Serialize};

/// One request on the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    /// The sandbox's state now.
    Status,
    /// Waits until the agent answered (or the VM failed), then reports the state.
    WaitReady,
    /// Stops the guest (flushing its disks) and ends cove-vm.
    Stop,
    /// Stops the vCPUs; memory stays resident.
    Pause,
    /// Runs the vCPUs again.
    Resume,
    /// Saves the whole VM (device state, memory, writable disks, the manifest) into `dir`; the
    /// sandbox keeps running (or stays paused).
    Snapshot {
        /// Directory to create for the snapshot (must not exist).
        dir: String,
    },
    /// Saves the whole VM (device state, memory, the manifest) into `dir`, then ends cove-vm
    /// and its VM. A later cove-vm started with `restore` set to `dir` carries on from there.
    Hibernate {
        /// Directory to create for the snapshot (must not exist).
        dir: String,
    },
    /// Turns this connection into a stream of agent frames.
    Attach,
    /// Moves the end of the sandbox's time to live (seconds since the epoch; none: never).
    SetExpiry {
        /// The new end.
        expires_at: Option<u64>,
    },
}

/// The one answer to a [`ControlRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ControlResponse {
    /// The request worked.
    Ok {
        /// The state after it.
        status: VmStatus,
    },
    /// It did not.
    Error {
        /// What went wrong.
        message: String,
    },
}

/// What `status` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStatus {
    /// Booting, running, stopping or failed.
    pub state: VmState,
    /// `qemu` or `kvm`.
    pub engine: VmEngine,
    /// How the engine runs the guest (`tcg`, `kvm`).
    pub accel: Accel,
    /// Pid of cove-vm.
    pub pid: u32,
    /// Pid of the engine's child process, if it has one.
    pub vmm_pid: Option<u32>,
    /// Version of the guest agent, once it answered.
    pub agent_version: Option<String>,
    /// Milliseconds from cove-vm's start to the agent's answer.
    pub boot_ms: Option<u64>,
    /// Why it failed.
    pub reason: Option<String>,
    /// Paused by its idle policy (not on request): the next request should resume it.
    #[serde(default)]
    pub idle: bool,
}

/// How a cove-vm ended: what it leaves in `exit.json` (written atomically) for the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "how", rename_all = "snake_case")]
pub enum VmEnd {
    /// Stopped on request.
    Stopped,
    /// Its time to live ran out and it stopped itself.
    Expired,
    /// Saved to its hibernation directory, then ended; `idle` when its idle policy did it.
    Hibernated {
        /// The idle policy hibernated it (not a request).
        idle: bool,
        /// Its time to live ran out (`on_expire` hibernate).
        #[serde(default)]
        expired: bool,
    },
    /// The guest never answered: the boot or restore failed.
    BootFailed {
        /// Why, with the console's last lines.
        reason: String,
    },
    /// The VM ended while it ran (the guest powered off or crashed, the VMM died, a signal).
    Crashed {
        /// Why, with the console's last lines.
        reason: String,
    },
}

/// The content of `exit.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// How it ended.
    pub end: VmEnd,
    /// When, seconds since the epoch.
    pub at: u64,
}

impl std::fmt::Display for VmEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stopped => f.write_str("stopped"),
            Self::Expired => f.write_str("stopped: its time to live ran out"),
            Self::Hibernated { expired: true, .. } => f.write_str("hibernated (expired)"),
            Self::Hibernated { idle: false, .. } => f.write_str("hibernated"),
            Self::Hibernated { idle: true, .. } => f.write_str("hibernated (idle)"),
            Self::BootFailed { reason } | Self::Crashed { reason } => f.write_str(reason),
        }
    }
}

/// States of a cove-vm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// The guest is starting.
    Booting,
    /// The agent answered.
    Running,
    /// vCPUs stopped.
    Paused,
    /// A stop is in progress.
    Stopping,
    /// The guest or its VMM died.
    Failed,
}

/// How to start one sandbox's VM; written by the host as `vm.json` in the sandbox directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// The sandbox id (also the guest hostname).
    pub id: String,
    /// `qemu` or `kvm`.
    pub engine: VmEngine,
    /// `tcg` or `kvm` for the qemu engine; `kvm` for the kvm engine.
    pub accel: Accel,
    /// ELF vmlinux.
    pub kernel: String,
    /// The initramfs holding cove-agent.
    pub initramfs: String,
    /// vCPUs.
    pub cpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Disks in order; the agent finds them by serial.
    pub disks: Vec<DiskConfig>,
    /// Host TSC frequency in kHz (the guest needs it under TCG).
    pub tsc_khz: Option<u64>,
    /// Path of the QEMU binary.
    pub qemu: String,
    /// Start from this snapshot directory (written by `hibernate` or `snapshot`) instead of
    /// booting.
    #[serde(default)]
    pub restore: Option<String>,
    /// Set when the restore makes a new sandbox (fork, snapshot, template): names the sandbox or
    /// snapshot it came from; the guest then takes a new identity (hostname, machine-id).
    #[serde(default)]
    pub clone_of: Option<String>,
    /// When the sandbox ends (seconds since the epoch): cove-vm stops it then.
    #[serde(default)]
    pub expires_at: Option<u64>,
    /// Seconds without activity (no agent session open, no frame either way) before `on_idle`.
    #[serde(default)]
    pub idle_timeout_secs: Option<u64>,
    /// What `idle_timeout_secs` does (none: pause).
    #[serde(default)]
    pub on_idle: Option<OnIdle>,
    /// What `expires_at` does: `stop` (none: the same) or `hibernate`.
    #[serde(default)]
    pub on_expire: Option<OnExpire>,
    /// The blob store, where an idle hibernation is uploaded: a local folder, or an
    /// `s3://` address (credentials from cove-vm's environment, as coved's). Never set
    /// for a jailed cove-vm, which sees no blob store: the host stores its hibernation.
    #[serde(default)]
    pub blob_store: Option<String>,
    /// The jail cove-vm enters before the engine starts; none runs it unjailed (a host that is
    /// not root, or `COVE_JAIL=off`).
    #[serde(default)]
    pub jail: Option<JailConfig>,
    /// The sandbox's network device; none: the guest has none.
    #[serde(default)]
    pub net: Option<NetConfig>,
}

/// The guest's network device and where its tap is: cove-vm enters `netns` before anything
/// else (the jail's other namespaces are made inside it), and the engine attaches to `tap`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The network namespace the host made (`/run/netns/cove-ID`).
    pub netns: String,
    /// The tap in it.
    pub tap: String,
    /// The guest's MAC, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// The guest's address and prefix (`169.254.127.2/30`), the same in every sandbox.
    pub address: String,
    /// Its gateway, which is also its DNS server.
    pub gateway: String,
    /// QEMU's user-mode network (slirp, inside the namespace) instead of the tap: only for the
    /// `net` benchmark's comparison; no policy holds for it.
    #[serde(default)]
    pub user_mode: bool,
}

/// What the host prepared for one sandbox's jail (see `docs/threat-model.md`). cove-vm derives
/// the files the jail shows from the rest of [`VmConfig`]; this says who it runs as and within
/// which limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailConfig {
    /// The unprivileged user the jail runs as (one per sandbox, from the host's range).
    pub uid: u32,
    /// Its group (the same number).
    pub gid: u32,
    /// cgroup directories the host created and sized; cove-vm moves itself into each.
    pub cgroups: Vec<String>,
    /// A directory holding only the engine's program, libraries and firmware (`usr/`, `lib/`,
    /// `lib64/`, `etc/`), shown read-only at the same places inside; none for the kvm engine.
    pub engine_root: Option<String>,
    /// Device nodes shown inside (`/dev/null`, `/dev/urandom`, `/dev/kvm` where granted).
    pub devices: Vec<String>,
    /// Most open files per process.
    pub open_files: u64,
    /// Largest file the jail may write (the bigger of disk and memory, plus slack): no file it
    /// writes grows the host's usage past what the sandbox was given.
    pub file_size: u64,
    /// Most processes and threads of the jail's user.
    pub processes: u64,
    /// Whether cove-vm puts itself under its seccomp allow-list once the engine runs (and QEMU
    /// under its own `-sandbox`).
    pub seccomp: bool,
}

/// One virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// File on the host.
    pub path: String,
    /// Attach read-only.
    pub read_only: bool,
    /// virtio-blk serial, how the guest finds it.
    pub serial: String,
}
