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
