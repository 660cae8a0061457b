//! A cgroup per sandbox, on cgroups v2 or v1 (as on hosts whose systemd mounts the v1
//! controllers, "hybrid"), under one parent per host: `cove/` by default.
//!
//! The host creates and sizes a sandbox's cgroup before its cove-vm starts, cove-vm moves
//! itself in (its engine follows), and the host removes it once the VM has ended. The parent
//! carries the per-host reserve: sandboxes together get at most the host's memory less the
//! reserve, and its CPUs less the reserved share, so coved and the host stay responsive when
//! every sandbox is busy.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// CFS period the CPU quota is a share of (100 ms, the kernel's default).
pub const CPU_PERIOD_US: u64 = 100_000;

/// The v1 controllers a sandbox is limited by.
const V1_CONTROLLERS: [&str; 4] = ["cpu", "memory", "pids", "blkio"];

/// Why a cgroup could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup hierarchy with the needed controllers is mounted.
    #[error("no cgroup hierarchy with the cpu, memory and pids controllers is mounted under {0}")]
    Unavailable(String),
    /// A cgroup file could not be written.
    #[error("writing {value:?} to {path}")]
    Write {
        /// The file.
        path: String,
        /// What was written.
        value: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A cgroup directory could not be made or removed.
    #[error("{what} {path}")]
    Dir {
        /// Making or removing.
        what: &'static str,
        /// The directory.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What one sandbox may use.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Limits {
    /// CPU time per period, in CPUs (its vCPUs: a guest that spins every vCPU gets that much).
    pub cpus: f64,
    /// Memory of the jail's processes: guest RAM plus the VMM's overhead.
    pub memory_bytes: u64,
    /// Processes and threads.
    pub pids: u64,
    /// Relative I/O weight (1–10000; 100 is the default), where the host's I/O scheduler
    /// offers one.
    pub io_weight: u16,
}

/// The host's share kept out of the sandboxes' reach.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Reserve {
    /// CPUs kept for the host (sandboxes together get the rest).
    pub cpus: f64,
    /// Memory kept for the host.
    pub memory_bytes: u64,
}

/// How cgroups are mounted on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// One unified hierarchy at this root.
    V2(PathBuf),
    /// One hierarchy per controller under this root (`ROOT/cpu`, `ROOT/memory`, …).
    V1(PathBuf),
}

/// What a sandbox's cgroup holds now, read back from the kernel (`cove inspect`).
pub type Report = cove_model::CgroupReport;

impl Hierarchy {
    /// This host's: v2 when `/sys/fs/cgroup` is unified, else v1 when the cpu, memory and pids
    /// controllers are mounted there.
    pub fn detect() -> Result<Self, CgroupError> {
        Self::detect_at(Path::new("/sys/fs/cgroup"))
    }

    /// [`Hierarchy::detect`] under another root (tests).
    pub fn detect_at(root: &Path) -> Result<Self, CgroupError> {
        if root.join("cgroup.controllers").is_file() {
            return Ok(Self::V2(root.to_path_buf()));
        }
        if ["cpu", "memory", "pids"]
            .iter()
            .all(|c| root.join(c).join("cgroup.procs").is_file())
        {
            return Ok(Self::V1(root.to_path_buf()));
        }
        Err(CgroupError::Unavailable(root.display().to_string()))
    }

    /// The directories of cgroup `rel` (`cove/ID`): one on v2, one per controller on v1.
    pub fn dirs(&self, rel: &str) -> Vec<PathBuf> {
        match self {
            Self::V2(root) => vec![root.join(rel)],
            Self::V1(root) => V1_CONTROLLERS
                .iter()
                .map(|c| root.join(c))
                .filter(|d| d.is_dir())
                .map(|d| d.join(rel))
                .collect(),
        }
    }

    /// Makes the host's parent cgroup (idempotent) and gives it the limits that keep
    /// `reserve` for the host.
    pub fn ensure_parent(&self, parent: &str, reserve: &Reserve) -> Result<(), CgroupError> {
        let cpus = f64::from(u32::try_from(online_cpus()).unwrap_or(1));
        let quota = period_share(cpus - reserve.cpus);
        let memory = total_memory()
            .saturating_sub(reserve.memory_bytes)
            .max(256 << 20);
        if let Self::V2(root) = self {
            enable_controllers(root)?;
        }
        for d in self.dirs(parent) {
            make_dir(&d)?;
            if let Self::V2(_) = self {
                enable_controllers(&d)?;
            }
        }
        self.write_limits(parent, Some(quota), memory, None, None)
    }

    /// Makes cgroup `rel` without limits of its own (idempotent): a grouping, such as one
    /// Cove home's sandboxes under the host's parent.
    pub fn ensure_group(&self, rel: &str) -> Result<(), CgroupError> {
        for d in self.dirs(rel) {
            make_dir(&d)?;
            if let Self::V2(_) = self {
                enable_controllers(&d)?;
            }
        }
        Ok(())
    }

    /// Makes the cgroup `rel` (under a parent made by [`Hierarchy::ensure_parent`]) with
    /// `limits`; returns its directories. The CPU quota is capped at the parent's (v1 refuses
    /// a child above its parent).
    pub fn create(&self, rel: &str, limits: &Limits) -> Result<Vec<PathBuf>, CgroupError> {
        let dirs = self.dirs(rel);
        for d in &dirs {
            make_dir(d)?;
        }
        let mut quota = period_share(limits.cpus);
        // The nearest ancestor with a quota bounds it.
        let mut up = Path::new(rel).parent();
        while let Some(a) = up.and_then(Path::to_str).filter(|a| !a.is_empty()) {
            if let Some(p) = self.read(a).cpus {
                quota = quota.min(period_share(p));
                break;
            }
            up = Path::new(a).parent();
        }
        let made = self.write_limits(
            rel,
            Some(quota),
            limits.memory_bytes,
            Some(limits.pids),
            Some(limits.io_weight),
        );
        if let Err(e) = made {
            let _ = self.remove(rel);
            return Err(e);
        }
        Ok(dirs)
    }

    fn write_limits(
        &self,
        rel: &str,
        quota_us: Option<u64>,
        memory: u64,
        pids: Option<u64>,
        io_weight: Option<u16>,
    ) -> Result<(), CgroupError> {
        match self {
            Self::V2(root) => {
                let d = root.join(rel);
                if let Some(q) = quota_us {
                    write(&d.join("cpu.max"), &format!("{q} {CPU_PERIOD_US}"))?;
                }
                write(&d.join("memory.max"), &memory.to_string())?;
                // Swap would let a sandbox hold more than its limit.
                let _ = write(&d.join("memory.swap.max"), "0");
                if let Some(p) = pids {
                    write(&d.join("pids.max"), &p.to_string())?;
                }
                if let Some(w) = io_weight {
                    write_weight(&d, &["io.weight", "io.bfq.weight"], w);
                }
            }
            Self::V1(root) => {
                if let Some(q) = quota_us {
                    let d = root.join("cpu").join(rel);
                    write(&d.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    write(&d.join("cpu.cfs_quota_us"), &q.to_string())?;
                }
                let m = root.join("memory").join(rel);
                write(&m.join("memory.limit_in_bytes"), &memory.to_string())?;
                // Only where swap is accounted; must not be below the limit above.
                let _ = write(&m.join("memory.memsw.limit_in_bytes"), &memory.to_string());
                if let Some(p) = pids {
                    write(
                        &root.join("pids").join(rel).join("pids.max"),
                        &p.to_string(),
                    )?;
                }
                if let Some(w) = io_weight {
                    let b = root.join("blkio").join(rel);
                    // v1's weights run 10–1000.
                    write_weight(&b, &["blkio.weight", "blkio.bfq.weight"], (w / 10).max(10));
                }
            }
        }
        Ok(())
    }

    /// Moves the calling process, which must have one thread, into cgroup `dirs` (as made by
    /// [`Hierarchy::create`]); its threads and children to come are born there.
    ///
    /// On v1 the caller moves its one thread by writing `0` to `tasks`: any other move (a
    /// whole process through `cgroup.procs`, or another task by its pid) takes the kernel's
    /// thread-group lock for writing, which waits for an RCU grace period — measured at 7–10 ms
    /// here, a third of a restore from a template. v2 has no such file (`cgroup.procs` there).
    pub fn join_self(dirs: &[PathBuf]) -> Result<(), CgroupError> {
        for d in dirs {
            let tasks = d.join("tasks");
            let file = if tasks.is_file() {
                tasks
            } else {
                d.join("cgroup.procs")
            };
            write(&file, "0")?;
        }
        Ok(())
    }

    /// Removes cgroup `rel`, killing what is still in it (a cove-vm that is being removed has
    /// been stopped; what is left is a VMM that outlived it). Absent is fine.
    pub fn remove(&self, rel: &str) -> Result<(), CgroupError> {
        for d in self.dirs(rel) {
            if !d.is_dir() {
                continue;
            }
            for _ in 0..100 {
                let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
                let pids: Vec<i32> = procs.lines().filter_map(|l| l.parse().ok()).collect();
                if pids.is_empty() {
                    break;
                }
                for p in pids {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            match std::fs::remove_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(CgroupError::Dir {
                        what: "removing",
                        path: d.display().to_string(),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// The names of the cgroups under `parent` (sandbox ids, for the start-up sweep).
    pub fn children(&self, parent: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .dirs(parent)
            .iter()
            .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// What cgroup `rel` holds now.
    pub fn read(&self, rel: &str) -> Report {
        let num = |p: PathBuf| -> Option<u64> {
            let s = std::fs::read_to_string(p).ok()?;
            s.split_whitespace().next()?.parse().ok()
        };
        // v1 writes "unlimited" as a huge number, v2 as "max" (which does not parse).
        let limit = |v: Option<u64>| v.filter(|n| *n < (1 << 62));
        let paths = self
            .dirs(rel)
            .into_iter()
            .filter(|d| d.is_dir())
            .map(|d| d.display().to_string())
            .collect();
        match self {
            Self::V2(root) => {
                let d = root.join(rel);
                let cpus = std::fs::read_to_string(d.join("cpu.max"))
                    .ok()
                    .and_then(|s| {
                        let mut f = s.split_whitespace();
                        let q: f64 = f.next()?.parse().ok()?;
                        let p: f64 = f.next()?.parse().ok()?;
                        Some(q / p)
                    });
                Report {
                    paths,
                    cpus,
                    memory_limit_bytes: limit(num(d.join("memory.max"))),
                    memory_bytes: num(d.join("memory.current")),
                    pids_limit: num(d.join("pids.max")),
                    pids: num(d.join("pids.current")),
                    io_weight: read_weight(&d, &["io.weight", "io.bfq.weight"]),
                }
            }
            Self::V1(root) => {
                let c = root.join("cpu").join(rel);
                let quota = std::fs::read_to_string(c.join("cpu.cfs_quota_us"))
                    .ok()
                    .and_then(|s| s.trim().parse::<i64>().ok())
                    .filter(|q| *q > 0);
                let period = num(c.join("cpu.cfs_period_us"));
                let m = root.join("memory").join(rel);
                let p = root.join("pids").join(rel);
                Report {
                    paths,
                    cpus: quota.zip(period).map(|(q, p)| q as f64 / p as f64),
                    memory_limit_bytes: limit(num(m.join("memory.limit_in_bytes"))),
                    memory_bytes: num(m.join("memory.usage_in_bytes")),
                    pids_limit: num(p.join("pids.max")),
                    pids: num(p.join("pids.current")),
                    io_weight: read_weight(
                        &root.join("blkio").join(rel),
                        &["blkio.weight", "blkio.bfq.weight"],
                    )
                    .map(|w| w * 10),
                }
            }
        }
    }
}

/// `cpus` of CPU time as microseconds per period: at least a tenth of a CPU, at most 1024.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn period_share(cpus: f64) -> u64 {
    // Clamped first: the cast then neither truncates meaningfully nor loses a sign.
    (cpus.clamp(0.1, 1024.0) * CPU_PERIOD_US as f64) as u64
}

fn make_dir(d: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir_all(d) {
        Ok(()) => Ok(()),
        Err(source) => Err(CgroupError::Dir {
            what: "making",
            path: d.display().to_string(),
            source,
        }),
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.display().to_string(),
        value: value.to_string(),
        source,
    })
}

/// Writes the first weight file the host has (the weight needs a proportional I/O scheduler,
/// BFQ on v1; without one there is none to set, and the report says so).
fn write_weight(dir: &Path, files: &[&str], weight: u16) {
    for f in files {
        let p = dir.join(f);
        if p.is_file() {
            let v = if f.starts_with("io.weight") {
                format!("default {weight}")
            } else {
                weight.to_string()
            };
            let _ = std::fs::write(p, v);
            return;
        }
    }
}

fn read_weight(dir: &Path, files: &[&str]) -> Option<u16> {
    files.iter().find_map(|f| {
        let s = std::fs::read_to_string(dir.join(f)).ok()?;
        // "default 100" on v2's io.weight; a bare number elsewhere.
        s.split_whitespace().find_map(|w| w.parse::<u16>().ok())
    })
}

/// On v2, lets `dir`'s children use the cpu, memory, pids and io controllers (those it has).
fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let have = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let want: Vec<String> = ["cpu", "memory", "pids", "io"]
        .iter()
        .filter(|c| have.split_whitespace().any(|h| h == **c))
        .map(|c| format!("+{c}"))
        .collect();
    write(&dir.join("cgroup.subtree_control"), &want.join(" "))
}

/// CPUs online.
pub fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The host's memory, from `/proc/meminfo`.
pub fn total_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_v1_and_v2_layouts_and_refuses_neither() {
        let t = tempfile::tempdir().unwrap();
        assert!(Hierarchy::detect_at(t.path()).is_err());
        for c in ["cpu", "memory", "pids"] {
            std::fs::create_dir_all(t.path().join(c)).unwrap();
            std::fs::write(t.path().join(c).join("cgroup.procs"), "").unwrap();
        }
        let h = Hierarchy::detect_at(t.path()).unwrap();
        assert_eq!(h, Hierarchy::V1(t.path().to_path_buf()));
        // blkio is not mounted here: a sandbox's cgroup has a directory per mounted one.
        assert_eq!(h.dirs("cove/x").len(), 3);
        std::fs::write(t.path().join("cgroup.controllers"), "cpu memory").unwrap();
        assert_eq!(
            Hierarchy::detect_at(t.path()).unwrap(),
            Hierarchy::V2(t.path().to_path_buf())
        );
    }

    #[test]
    fn reads_back_v2_limits() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("cove/x");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("cpu.max"), "150000 100000\n").unwrap();
        std::fs::write(d.join("memory.max"), "max\n").unwrap();
        std::fs::write(d.join("pids.max"), "64\n").unwrap();
        std::fs::write(d.join("io.weight"), "default 100\n").unwrap();
        let r = Hierarchy::V2(t.path().to_path_buf()).read("cove/x");
        assert_eq!(r.cpus, Some(1.5));
        assert_eq!(r.memory_limit_bytes, None);
        assert_eq!(r.pids_limit, Some(64));
        assert_eq!(r.io_weight, Some(100));
    }
}
