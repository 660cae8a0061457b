//! The host's part of each sandbox's jail (`cove_jail`): the user it runs as, its cgroup, the
//! engine's file tree, the ownership of its files, sealing what a jail wrote before the host
//! trusts it, and clean-up once its VM has ended.
//!
//! Ownership, so a jailed cove-vm can write what it must and nothing the host relies on: the
//! sandbox directory is `root:GID` with mode `1770` (the jail creates its sockets, logs and
//! status there; the sticky bit keeps it from removing or replacing the host's files: `vm.json`,
//! `store`, `guest`, `vm.log`, a sealed hibernation), its disk is `root:GID 0660` (written, never
//! replaced), its RAM directory `UID:GID 0700`. A snapshot or hibernation a jail wrote is
//! [sealed](Jails::seal) — made root's and read-only, and refused unless it holds only plain
//! files — before the host reads, stores or restores it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cove_jail::cgroup::{Hierarchy, Limits, Reserve};
use cove_jail::uids::Leases;
use cove_model::{JailReport, SandboxDir};
use cove_protocol::control::{JailConfig, VmConfig};

use crate::HostError;
use crate::error::io_err;

/// Memory a jail may use beyond its guest's RAM: QEMU's own (devices, TCG's translation
/// cache, its libraries) and cove-vm's. Measured: QEMU under TCG holds ~60 MiB besides guest
/// RAM and the cache; cove-vm ~10 MiB.
pub const OVERHEAD_MIB: u64 = 96 + 128;

/// Processes and threads of one jail (cove-vm's runtime, QEMU's threads: one per vCPU, RCU,
/// I/O workers) before `fork` fails: the guest's vCPUs add one each.
pub const PIDS_BASE: u64 = 96;

/// Where engines' trees are kept unless `COVE_JAIL_ENGINES` says otherwise: a host-wide
/// cache (rebuilt from the installed QEMU when missing), on the system's filesystem so its
/// files are hard links rather than copies; a Cove home on its own disk needs no 50 MiB copy.
pub const ENGINES: &str = "/var/cache/cove/engines";

/// The host's jails: whether sandboxes are jailed here, and with what.
#[derive(Debug)]
pub(crate) struct Jails {
    /// None: sandboxes run unjailed, for this reason.
    off: Option<String>,
    leases: Leases,
    cgroups: Option<Hierarchy>,
    /// This home's group of cgroups: `PARENT/HOME-TAG` (several homes may share a host).
    group: String,
    engines: PathBuf,
    /// This home's `sandboxes/` directory: a sandbox's lease names its directory, unique on
    /// the host (the users are the host's, whichever home leases them).
    sandboxes: PathBuf,
}

/// Where the users sandboxes run as are leased unless `COVE_JAIL_LEASES` says otherwise: one
/// place for the whole host, since a user must be unique on the host, not per Cove home.
pub const LEASES: &str = "/var/lib/cove-jail/uids";

impl Jails {
    /// From the environment: `COVE_JAIL` (`on`, the default for root, or `off`),
    /// `COVE_JAIL_UIDS` (`START-END`), `COVE_CGROUP_PARENT` (`cove`), `COVE_JAIL_ENGINES`
    /// ([`ENGINES`]), and the host's reserve,
    /// `COVE_RESERVE_CPUS` (0.25) and `COVE_RESERVE_MEMORY_MIB` (1024).
    pub(crate) fn from_env(home: &Path) -> Self {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let range = env("COVE_JAIL_UIDS")
            .and_then(|r| Leases::parse_range(&r))
            .unwrap_or(cove_jail::uids::DEFAULT_RANGE);
        let parent = env("COVE_CGROUP_PARENT").unwrap_or_else(|| "cove".into());
        let mut off = match env("COVE_JAIL").as_deref() {
            Some("off") => Some("COVE_JAIL=off".to_string()),
            _ if !cove_model::is_root() => Some("the host does not run as root".to_string()),
            _ => None,
        };
        let cgroups = match Hierarchy::detect() {
            Ok(h) => Some(h),
            Err(e) => {
                off.get_or_insert_with(|| e.to_string());
                None
            }
        };
        // A tag of the home's path names its group of cgroups: another home's coved on this
        // host sweeps its own group only.
        let tag = {
            use sha2::Digest;
            let d = sha2::Sha256::digest(home.as_os_str().as_encoded_bytes());
            d.iter()
                .take(6)
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        let group = format!("{parent}/{tag}");
        if off.is_none()
            && let Some(h) = &cgroups
        {
            let reserve = Reserve {
                cpus: env("COVE_RESERVE_CPUS")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0.25),
                memory_bytes: env("COVE_RESERVE_MEMORY_MIB")
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(1024)
                    << 20,
            };
            if let Err(e) = h
                .ensure_parent(&parent, &reserve)
                .and_then(|()| h.ensure_group(&group))
            {
                off = Some(e.to_string());
            }
        }
        if let Some(why) = &off {
            tracing::warn!("sandboxes run without a jail: {why}");
        }
        let leases = env("COVE_JAIL_LEASES").map_or_else(|| PathBuf::from(LEASES), PathBuf::from);
        Self {
            off,
            leases: Leases::new(leases, range),
            cgroups,
            group,
            sandboxes: home.join("sandboxes"),
            engines: env("COVE_JAIL_ENGINES").map_or_else(|| PathBuf::from(ENGINES), PathBuf::from),
        }
    }

    /// Runs sandboxes unjailed from now on, for `why`.
    pub(crate) fn turn_off(&mut self, why: &str) {
        self.off = Some(why.to_string());
    }

    /// Why sandboxes run unjailed here, if they do.
    pub(crate) fn off(&self) -> Option<&str> {
        self.off.as_deref()
    }

    fn cgroup(&self, id: &str) -> String {
        format!("{}/{id}", self.group)
    }

    /// What a lease of sandbox `id` holds: its directory.
    fn holder(&self, id: &str) -> String {
        self.sandboxes.join(id).display().to_string()
    }

    /// Readies sandbox `cfg.id`'s jail before its cove-vm starts: its user (the one it already
    /// holds, else a new lease), its cgroup sized from `cfg`, the engine's tree, and the
    /// ownership of its files. Whatever the last VM left that the host reads (exit and status
    /// records, sockets) is removed first, jailed or not.
    pub(crate) fn prepare(&self, cfg: &mut VmConfig, dir: &Path) -> Result<(), HostError> {
        if cfg.id.is_empty() || !cfg.id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(HostError::Jail {
                id: cfg.id.clone(),
                reason: "a sandbox id is letters and digits".into(),
            });
        }
        clear_leftovers(dir);
        let Some(cgroups) = self.cgroups.as_ref().filter(|_| self.off.is_none()) else {
            cfg.jail = None;
            return Ok(());
        };
        let jail_err = |e: String| HostError::Jail {
            id: cfg.id.clone(),
            reason: e,
        };
        let holder = self.holder(&cfg.id);
        let uid = match cfg.jail.as_ref().map(|j| j.uid) {
            Some(u) if self.leases.held(&holder, u) => u,
            _ => self
                .leases
                .acquire(&holder)
                .map_err(|e| jail_err(e.to_string()))?,
        };
        let memory_bytes = (u64::from(cfg.memory_mib) + OVERHEAD_MIB) << 20;
        let limits = Limits {
            cpus: f64::from(cfg.cpus),
            memory_bytes,
            pids: PIDS_BASE + u64::from(cfg.cpus),
            io_weight: 100,
        };
        let dirs = cgroups
            .create(&self.cgroup(&cfg.id), &limits)
            .map_err(|e| jail_err(format!("{e:#}")))?;
        let engine_root = if cfg.engine == cove_model::VmEngine::Qemu {
            let tree = cove_jail::engine_root::qemu(&self.engines, Path::new(&cfg.qemu))
                .map_err(|e| jail_err(e.to_string()))?;
            Some(tree.display().to_string())
        } else {
            None
        };
        let mut devices = vec!["/dev/null".to_string(), "/dev/urandom".to_string()];
        if cfg.engine == cove_model::VmEngine::Kvm || cfg.accel == cove_model::Accel::Kvm {
            devices.push("/dev/kvm".into());
        }
        let disk_mib = cfg
            .disks
            .iter()
            .filter(|d| !d.read_only)
            .filter_map(|d| std::fs::metadata(&d.path).ok())
            .map(|m| m.len() >> 20)
            .max()
            .unwrap_or(0);
        cfg.jail = Some(JailConfig {
            uid,
            gid: uid,
            cgroups: dirs.iter().map(|d| d.display().to_string()).collect(),
            engine_root,
            devices,
            open_files: 1024,
            file_size: (disk_mib.max(u64::from(cfg.memory_mib)) + 64) << 20,
            processes: limits.pids,
            seccomp: true,
        });
        // The jail sees no blob store: the host stores an idle hibernation.
        cfg.blob_store = None;
        own(dir, 0, uid, 0o1770)?;
        for d in cfg.disks.iter().filter(|d| !d.read_only) {
            own(Path::new(&d.path), 0, uid, 0o660)?;
        }
        for f in LOGS {
            let p = dir.join(f);
            if p.symlink_metadata().is_ok() {
                own(&p, uid, uid, 0o640)?;
            }
        }
        if cfg.engine == cove_model::VmEngine::Qemu {
            let ram = SandboxDir::guest_ram_dir(&cfg.id);
            std::fs::create_dir_all(&ram)
                .map_err(io_err("making the guest RAM directory", &ram))?;
            own(&ram, uid, uid, 0o700)?;
        }
        Ok(())
    }

    /// What is left of sandbox `id`'s jail once its VM has ended: its cgroup and RAM directory.
    /// The user stays leased to it until it is removed.
    pub(crate) fn vm_ended(&self, id: &str) {
        if let Some(h) = &self.cgroups {
            let _ = h.remove(&self.cgroup(id));
        }
        let _ = std::fs::remove_dir_all(SandboxDir::guest_ram_dir(id));
        // Where builds before the jail kept it (a VM of one killed outright left it behind).
        let _ = std::fs::remove_file(format!("/dev/shm/cove-{id}.mem"));
    }

    /// Sandbox `id` is removed: its user goes back to the range.
    pub(crate) fn removed(&self, id: &str) {
        self.vm_ended(id);
        let me = self.holder(id);
        for (uid, holder) in self.leases.all() {
            if holder == me {
                self.leases.release(&me, uid);
            }
        }
    }

    /// The start-up sweep: cgroups and users of sandboxes that are gone (removed while coved
    /// was down, or by a removal that was interrupted). A sandbox on record is left alone:
    /// recording it without a VM (the reconcile of one whose cove-vm died) already removed its
    /// cgroup, and another coved sharing the home may be starting it right now. Returns how
    /// many cgroups and users.
    pub(crate) fn sweep(&self, exists: impl Fn(&str) -> bool) -> (usize, usize) {
        let mut cgroups = 0;
        if let Some(h) = &self.cgroups {
            for id in h.children(&self.group) {
                if !exists(&id) && h.remove(&self.cgroup(&id)).is_ok() {
                    cgroups += 1;
                }
            }
        }
        // This home's leases only: another home's are its own coved's to sweep.
        let users =
            self.leases.sweep(
                |holder| match Path::new(holder).strip_prefix(&self.sandboxes) {
                    Ok(id) => exists(&id.to_string_lossy()),
                    Err(_) => true,
                },
            );
        (cgroups, users)
    }

    /// Sandbox `cfg`'s jail as it is now.
    pub(crate) fn report(&self, cfg: &VmConfig, pid: Option<u32>) -> Option<JailReport> {
        let j = cfg.jail.as_ref()?;
        let mut processes = Vec::new();
        if let Some(pid) = pid {
            let mut next = vec![pid];
            while let Some(p) = next.pop() {
                if let Some(pj) = cove_jail::inspect::process(p) {
                    processes.push(pj);
                    next.extend(cove_jail::inspect::children(p));
                }
            }
        }
        Some(JailReport {
            uid: j.uid,
            cgroup: self.cgroups.as_ref().map(|h| h.read(&self.cgroup(&cfg.id))),
            processes,
            seccomp: j.seccomp,
        })
    }

    /// Makes a snapshot directory a jail wrote the host's: owned by root, read-only, holding
    /// only plain files (a link or anything else is refused: the host would follow it when it
    /// stores or restores the snapshot). The directory is taken first, so the jail can add
    /// nothing while its entries are checked.
    pub(crate) fn seal(dir: &Path) -> Result<(), HostError> {
        // Sealing changes the files' change time, which their remembered checks are keyed on:
        // what was checked before is re-keyed, and the record rewritten is the host's too.
        cove_store::verified::rekey(dir, || Self::seal_files(dir))?;
        let record = dir.join("verified.json");
        if record.symlink_metadata().is_ok() {
            own(&record, 0, 0, 0o444)?;
        }
        Ok(())
    }

    fn seal_files(dir: &Path) -> Result<(), HostError> {
        use std::os::unix::fs::MetadataExt;
        let refuse = |what: String| HostError::Io {
            what: "sealing a snapshot",
            path: dir.display().to_string(),
            source: std::io::Error::other(what),
        };
        // Taken through a descriptor (no link followed): from then on the jail can neither add
        // entries to it nor, in its sticky parent, move or replace it.
        let taken = own(dir, 0, 0, 0o755)?;
        if !taken.is_dir() {
            return Err(refuse("it is not a directory".into()));
        }
        // The path must still name what was taken (the jail could have swapped it for a link
        // between the open and the change of owner): stable from here on.
        let now = std::fs::symlink_metadata(dir).map_err(io_err("sealing a snapshot", dir))?;
        if !now.is_dir() || (now.dev(), now.ino()) != (taken.dev(), taken.ino()) {
            return Err(refuse("it was replaced while it was sealed".into()));
        }
        for e in std::fs::read_dir(dir).map_err(io_err("sealing a snapshot", dir))? {
            let e = e.map_err(io_err("sealing a snapshot", dir))?;
            let p = e.path();
            // A plain file with one name: a hard link would be a file of the jail's choosing
            // (its disk, say) that the host would then own, store or restore.
            let plain = own(&p, 0, 0, 0o444).is_ok_and(|m| m.is_file() && m.nlink() == 1);
            if !plain {
                return Err(refuse(format!(
                    "{} is not a plain file of its own",
                    e.file_name().to_string_lossy()
                )));
            }
        }
        Ok(())
    }

    /// Removes every other name a jail gave file `name` of directory `dir` (hard links it made
    /// in its directory to its disk, say), so the file is the host's alone again. For a
    /// directory whose jail has ended.
    pub(crate) fn drop_aliases(dir: &Path, name: &str) {
        use std::os::unix::fs::MetadataExt;
        let Ok(target) = std::fs::symlink_metadata(dir.join(name)) else {
            return;
        };
        if target.nlink() < 2 {
            return;
        }
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_name() == name {
                continue;
            }
            if std::fs::symlink_metadata(e.path())
                .is_ok_and(|m| (m.dev(), m.ino()) == (target.dev(), target.ino()))
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Whether `p` is a plain file the host owns with one name (a sandbox's disk before it is
    /// uploaded: a jail cannot replace or rename a root-owned entry of its sticky directory).
    pub(crate) fn host_file(p: &Path) -> Result<(), HostError> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(p).map_err(io_err("checking", p))?;
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if m.is_file() && m.uid() == me && m.nlink() == 1 {
            Ok(())
        } else {
            Err(HostError::Io {
                what: "checking",
                path: p.display().to_string(),
                source: std::io::Error::other("not a plain file of the host's own: refused"),
            })
        }
    }
}

/// What a sandbox's directory holds that the host made (everything else there is a jail's).
const HOST_FILES: [&str; 6] = [
    "vm.json",
    "disk.ext4",
    "guest",
    "store",
    "vm.log",
    "hibernation",
];

/// The logs a jail writes that outlive its VM (the console's history across restarts).
const LOGS: [&str; 3] = ["console.log", "console.log.1", "qemu.log"];

/// Before a VM starts: removes what the last one left in the sandbox's directory (sockets,
/// status and exit records, temporary files, unsealed snapshots, anything it made), keeping the
/// host's files, and its logs only where each is a plain file with one name — a link or a hard
/// link in a log's place (to the disk, say) would have the host follow it or hand its target
/// to the next jail. The last VM is gone by then (its cgroup was emptied when it was recorded
/// so), so nothing changes under this.
fn clear_leftovers(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if HOST_FILES.contains(&name.as_str()) {
            continue;
        }
        let m = std::fs::symlink_metadata(e.path());
        let keep = LOGS.contains(&name.as_str())
            && m.as_ref().is_ok_and(|m| m.is_file() && m.nlink() == 1);
        if keep {
            continue;
        }
        if m.is_ok_and(|m| m.is_dir()) {
            let _ = std::fs::remove_dir_all(e.path());
        } else {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Sets a path's owner and mode through a descriptor opened without following a link (a jail
/// may have swapped a file it owned for a link to a host file between a check and a `chmod`).
/// Returns what the path is; refuses anything but a plain file or a directory.
fn own(p: &Path, uid: u32, gid: u32, mode: u32) -> Result<std::fs::Metadata, HostError> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(p)
        .map_err(io_err("opening (no links followed)", p))?;
    let m = f.metadata().map_err(io_err("reading", p))?;
    if !(m.is_file() || m.is_dir()) {
        return Err(HostError::Io {
            what: "taking over",
            path: p.display().to_string(),
            source: std::io::Error::other("neither a plain file nor a directory"),
        });
    }
    std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
        .map_err(io_err("setting the owner of", p))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io_err("setting the mode of", p))?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_snapshot_holds_only_plain_files_and_is_read_only() {
        let t = tempfile::tempdir().unwrap();
        let snap = t.path().join("snap");
        std::fs::create_dir(&snap).unwrap();
        std::fs::write(snap.join("memory"), b"m").unwrap();
        std::fs::write(snap.join("manifest.json"), b"{}").unwrap();
        Jails::seal(&snap).unwrap();
        for name in ["memory", "manifest.json"] {
            let m = std::fs::metadata(snap.join(name)).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, 0o444);
        }
        // A link (to a host file the host would then upload or restore) is refused, and so is
        // a directory where a file belongs.
        let bad = t.path().join("bad");
        std::fs::create_dir(&bad).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", bad.join("memory")).unwrap();
        let e = Jails::seal(&bad).unwrap_err();
        let why = std::error::Error::source(&e).map(ToString::to_string);
        assert!(
            why.as_deref()
                .is_some_and(|w| w.contains("not a plain file")),
            "{e}: {why:?}"
        );
        let nested = t.path().join("nested");
        std::fs::create_dir_all(nested.join("state")).unwrap();
        assert!(Jails::seal(&nested).is_err());
        // The snapshot directory itself must not be a link either.
        std::os::unix::fs::symlink(&snap, t.path().join("link")).unwrap();
        assert!(Jails::seal(&t.path().join("link")).is_err());
    }
}
