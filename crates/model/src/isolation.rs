//! What a host offers for the second wall around a sandbox: cgroups, namespaces, seccomp. The
//! host probes it (`cove_host::isolation`); the API shows it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How the cgroup hierarchies are mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum CgroupMode {
    /// One unified (v2) hierarchy at `/sys/fs/cgroup`.
    V2,
    /// v1 controllers under `/sys/fs/cgroup/<controller>`, plus a unified hierarchy without
    /// controllers at `/sys/fs/cgroup/unified` (systemd's "hybrid").
    Hybrid,
    /// v1 controllers only.
    V1,
    /// No cgroup hierarchy is mounted.
    None,
}

/// What a host offers to isolate a sandbox's supervisor and VMM beyond the VM (`cove info`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Isolation {
    /// How cgroups are mounted.
    pub cgroups: CgroupMode,
    /// The controllers that can limit a sandbox (`cpu`, `memory`, `pids`, `io` or `blkio`, …):
    /// v2's enabled at the root, or v1's mounted hierarchies.
    pub controllers: Vec<String>,
    /// The namespace kinds the kernel has (`mnt`, `pid`, `net`, `ipc`, `uts`, `user`, `cgroup`,
    /// `time`).
    pub namespaces: Vec<String>,
    /// Whether user namespaces may be created (`user.max_user_namespaces` above 0).
    pub user_namespaces: bool,
    /// Whether seccomp filters are available.
    pub seccomp: bool,
    /// The seccomp actions the kernel has (`kill_process`, `errno`, …).
    pub seccomp_actions: Vec<String>,
}

impl fmt::Display for CgroupMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V2 => "v2",
            Self::Hybrid => "hybrid",
            Self::V1 => "v1",
            Self::None => "none",
        })
    }
}

/// One sandbox's jail as the host sees it (`cove inspect`, the administrator's view).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct JailReport {
    /// The unprivileged user (and group) its processes run as.
    pub uid: u32,
    /// Its cgroup, read back from the kernel; none where the host has no cgroups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<CgroupReport>,
    /// Its processes (cove-vm, then the engine), as `/proc` shows them; none while it is not
    /// running.
    pub processes: Vec<JailProcess>,
    /// Whether cove-vm runs under its seccomp allow-list and QEMU under its `-sandbox`.
    pub seccomp: bool,
}

/// What a sandbox's cgroup holds now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct CgroupReport {
    /// Its directories (one on v2, one per controller on v1).
    pub paths: Vec<String>,
    /// CPU quota, in CPUs (none: unlimited).
    pub cpus: Option<f64>,
    /// Memory limit, bytes.
    pub memory_limit_bytes: Option<u64>,
    /// Memory in use now, bytes.
    pub memory_bytes: Option<u64>,
    /// Most processes and threads.
    pub pids_limit: Option<u64>,
    /// Processes and threads now.
    pub pids: Option<u64>,
    /// Relative I/O weight (1–10000), where the host's I/O scheduler offers one.
    pub io_weight: Option<u16>,
}

/// One process of a jail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct JailProcess {
    /// Its pid on the host.
    pub pid: u32,
    /// Its program's name (`cove-vm`, `qemu-system-x86`).
    pub name: String,
    /// Real, effective, saved and filesystem user ids.
    pub uids: Vec<u32>,
    /// Whether `no_new_privs` is set.
    pub no_new_privs: bool,
    /// Seccomp mode: 0 none, 1 strict, 2 filter.
    pub seccomp: u8,
    /// Effective capabilities, a bit mask (0: none).
    pub cap_eff: u64,
    /// The namespaces it does not share with coved (`mnt`, `pid`, `net`, `ipc`, `uts`,
    /// `cgroup`).
    pub own_namespaces: Vec<String>,
    /// Whether its root directory is not the host's.
    pub own_root: bool,
}
