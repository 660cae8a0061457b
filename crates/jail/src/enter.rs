//! Entering the jail: what cove-vm does first, as root and single-threaded, before it reads a
//! byte the guest wrote.
//!
//! 1. Move into the sandbox's cgroups (the host made and sized them).
//! 2. `unshare` mount, PID, IPC, UTS, network and cgroup namespaces, then fork: the child is PID 1
//!    of the new PID namespace (when it ends, the kernel kills everything left in it: the
//!    engine cannot outlive it). The parent reports the child's host pid and exits.
//! 3. In the child: a private tmpfs becomes the root; the sandbox's files, the engine's tree and
//!    the granted device nodes are bind-mounted into it at their host paths (read-only unless
//!    the sandbox writes them; nosuid and nodev everywhere but on the device nodes), then
//!    `pivot_root`, the old root detached, the new root made read-only.
//! 4. Every inherited file descriptor past stderr closed; rlimits; the capability bounding set
//!    emptied; the per-sandbox user and group taken (which clears every capability);
//!    `no_new_privs`; not dumpable (nothing in the jail may ptrace cove-vm).

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use crate::JailConfig;
use crate::cgroup::Hierarchy;

/// Where each jail's root is mounted, in its own mount namespace (the host never sees it).
pub const ROOT_MOUNT: &str = "/run/cove-jail";

/// Host directories a sandbox's files must not live under: the jail shows the engine's own
/// tree there.
const SYSTEM_DIRS: [&str; 4] = ["/usr", "/lib", "/lib64", "/etc"];

/// One path of the host shown in the jail, at the same path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// The host path (a file or a directory).
    pub path: PathBuf,
    /// Whether the jail may write it.
    pub writable: bool,
}

/// Why the jail could not be entered. Every step is named: a jail that is half set up never
/// runs an engine.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// A step failed.
    #[error("jail: {step}")]
    Step {
        /// Which.
        step: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Joining the cgroups failed.
    #[error("jail: joining the sandbox's cgroups")]
    Cgroup(#[from] crate::cgroup::CgroupError),
    /// A sandbox file lies where the jail shows the engine's tree.
    #[error("jail: {0} lies under a system directory the jail replaces; move the Cove home")]
    SystemPath(String),
}

fn step<E: Into<std::io::Error>>(what: impl Into<String>) -> impl FnOnce(E) -> JailError {
    let step = what.into();
    move |e| JailError::Step {
        step,
        source: e.into(),
    }
}

fn nix_io(e: nix::Error) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

/// Which side of the fork returned.
#[derive(Debug)]
pub enum Entered {
    /// The jailed child: PID 1 of the jail, with this pid on the host.
    Jailed {
        /// Its pid as the host sees it.
        host_pid: u32,
    },
}

/// Enters the jail `cfg` describes, showing `binds`. Returns only in the jailed child; the
/// parent writes the child's host pid to `report` (the host's pipe) and exits.
///
/// With `netns` (the sandbox's network namespace, which the host made and holds its tap), the
/// jail joins it instead of making an empty one.
///
/// Must be called before any thread is started: `fork` copies only the calling thread.
pub fn enter(
    cfg: &JailConfig,
    binds: &[Bind],
    netns: Option<&Path>,
    report: Option<OwnedFd>,
) -> Result<Entered, JailError> {
    for b in binds {
        if let Some(s) = SYSTEM_DIRS.iter().find(|s| b.path.starts_with(s)) {
            return Err(JailError::SystemPath(format!("{} ({s})", b.path.display())));
        }
    }
    let dirs: Vec<PathBuf> = cfg.cgroups.iter().map(PathBuf::from).collect();
    Hierarchy::join_self(&dirs)?;
    std::fs::create_dir_all(ROOT_MOUNT).map_err(step(format!("making {ROOT_MOUNT}")))?;
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWCGROUP;
    match netns {
        Some(p) => join_netns(p)?,
        None => flags |= CloneFlags::CLONE_NEWNET,
    }
    nix::sched::unshare(flags).map_err(|e| step("unshare")(nix_io(e)))?;
    // The child learns its host pid from the parent, which alone can see it.
    let (r, w) = nix::unistd::pipe().map_err(|e| step("pipe")(nix_io(e)))?;
    // SAFETY: no other thread exists yet (the caller's contract), so the child is a complete
    // copy; it only makes system calls before it returns into the caller's single thread.
    match unsafe { nix::unistd::fork() }.map_err(|e| step("fork")(nix_io(e)))? {
        nix::unistd::ForkResult::Parent { child } => {
            drop(r);
            let pid = child.as_raw().to_ne_bytes();
            let _ = nix::unistd::write(&w, &pid);
            if let Some(report) = report {
                let _ = nix::unistd::write(&report, &pid);
            }
            std::process::exit(0);
        }
        nix::unistd::ForkResult::Child => {
            drop(w);
            let mut b = [0u8; 4];
            let n = nix::unistd::read(&r, &mut b)
                .map_err(|e| step("reading the host pid")(nix_io(e)))?;
            let host_pid = if n == 4 { u32::from_ne_bytes(b) } else { 0 };
            drop(r);
            drop(report);
            set_up_root(cfg, binds)?;
            drop_privileges(cfg)?;
            Ok(Entered::Jailed { host_pid })
        }
    }
}

/// Moves the calling thread (the whole process, while it has one thread) into the network
/// namespace bound at `p`.
pub fn join_netns(p: &Path) -> Result<(), JailError> {
    let what = || format!("entering the network namespace {}", p.display());
    let f = std::fs::File::open(p).map_err(step(what()))?;
    nix::sched::setns(&f, CloneFlags::CLONE_NEWNET).map_err(|e| step(what())(nix_io(e)))
}

fn bind(src: &Path, dst: &Path, flags: MsFlags) -> Result<(), JailError> {
    let what = || format!("bind-mounting {}", src.display());
    nix::mount::mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| step(what())(nix_io(e)))?;
    // A bind takes the source's flags; these need a remount of the bind itself.
    nix::mount::mount(
        None::<&str>,
        dst,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
        None::<&str>,
    )
    .map_err(|e| step(format!("{} (remount)", what()))(nix_io(e)))
}

/// Makes `dst` (inside the new root) a mount point of `src`'s kind.
fn mount_point(src: &Path, dst: &Path) -> Result<(), JailError> {
    let is_dir = std::fs::metadata(src)
        .map_err(step(format!("reading {}", src.display())))?
        .is_dir();
    let parent = if is_dir {
        dst
    } else {
        dst.parent().unwrap_or(dst)
    };
    std::fs::create_dir_all(parent).map_err(step(format!("making {}", parent.display())))?;
    if !is_dir && !dst.exists() {
        std::fs::File::create(dst).map_err(step(format!("making {}", dst.display())))?;
    }
    Ok(())
}

fn set_up_root(cfg: &JailConfig, binds: &[Bind]) -> Result<(), JailError> {
    let root = Path::new(ROOT_MOUNT);
    // Nothing mounted here from now on reaches the host, nor the host's mounts here.
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| step("making the mounts private")(nix_io(e)))?;
    nix::mount::mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=1m"),
    )
    .map_err(|e| step("mounting the jail's root")(nix_io(e)))?;
    let inside = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    // /dev: a tmpfs of its own (the root is nodev) holding device nodes made for this jail, as
    // Firecracker's jailer makes them: the host's nodes stay as they are (`/dev/kvm` is the
    // kvm group's there), the jail's `/dev/kvm` is its user's alone.
    let dev = root.join("dev");
    std::fs::create_dir_all(&dev).map_err(step("making /dev"))?;
    nix::mount::mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=64k"),
    )
    .map_err(|e| step("mounting the jail's /dev")(nix_io(e)))?;
    for d in &cfg.devices {
        make_device(Path::new(d), &inside(Path::new(d)), cfg)?;
    }
    if let Some(tree) = &cfg.engine_root {
        for top in crate::engine_root::TOP {
            let src = Path::new(tree).join(top);
            if src.is_dir() {
                let dst = root.join(top);
                mount_point(&src, &dst)?;
                bind(&src, &dst, ro)?;
            }
        }
    }
    // Parents before children, so a file bound inside a bound directory stays visible.
    let mut binds: Vec<&Bind> = binds.iter().collect();
    binds.sort_by_key(|b| b.path.components().count());
    for b in binds {
        let dst = inside(&b.path);
        mount_point(&b.path, &dst)?;
        let flags = if b.writable {
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC
        } else {
            ro | MsFlags::MS_NOEXEC
        };
        bind(&b.path, &dst, flags)?;
    }
    nix::mount::mount(
        None::<&str>,
        &dev,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=64k"),
    )
    .map_err(|e| step("making the jail's /dev read-only")(nix_io(e)))?;
    std::env::set_current_dir(root).map_err(step("entering the jail's root"))?;
    // pivot_root(".", ".") stacks the old root under the new one; detaching it leaves only the
    // new root (no directory for the old one needed).
    nix::unistd::pivot_root(".", ".").map_err(|e| step("pivot_root")(nix_io(e)))?;
    nix::mount::umount2(".", MntFlags::MNT_DETACH)
        .map_err(|e| step("detaching the host's root")(nix_io(e)))?;
    std::env::set_current_dir("/").map_err(step("entering /"))?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | ro | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| step("making the jail's root read-only")(nix_io(e)))?;
    nix::unistd::sethostname("cove-jail").map_err(|e| step("sethostname")(nix_io(e)))?;
    Ok(())
}

/// Makes device node `dst` like the host's `src` (same kind and number): readable and
/// writable by everyone for the harmless ones (`null`, `zero`, `urandom`, `random`), by the
/// jail's user alone for the rest (`kvm`, `net/tun`).
fn make_device(src: &Path, dst: &Path, cfg: &JailConfig) -> Result<(), JailError> {
    use nix::sys::stat::{Mode, SFlag};
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let what = || format!("making {}", src.display());
    let m = std::fs::metadata(src).map_err(step(what()))?;
    let kind = if m.file_type().is_char_device() {
        SFlag::S_IFCHR
    } else if m.file_type().is_block_device() {
        SFlag::S_IFBLK
    } else {
        return Err(step(what())(std::io::Error::other("not a device node")));
    };
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent).map_err(step(what()))?;
    }
    let shared = matches!(
        src.file_name().and_then(|n| n.to_str()),
        Some("null" | "zero" | "urandom" | "random")
    );
    let mode = if shared { 0o666 } else { 0o600 };
    nix::sys::stat::mknod(dst, kind, Mode::from_bits_truncate(mode), m.rdev())
        .map_err(|e| step(what())(nix_io(e)))?;
    // mknod is filtered by the umask.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dst, std::fs::Permissions::from_mode(mode))
            .map_err(step(what()))?;
    }
    if !shared {
        nix::unistd::chown(
            dst,
            Some(nix::unistd::Uid::from_raw(cfg.uid)),
            Some(nix::unistd::Gid::from_raw(cfg.gid)),
        )
        .map_err(|e| step(what())(nix_io(e)))?;
    }
    Ok(())
}

fn drop_privileges(cfg: &JailConfig) -> Result<(), JailError> {
    // SAFETY: close_range only closes descriptors; 0–2 (stdin, and vm.log as stdout and
    // stderr) stay.
    if unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) } < 0 {
        return Err(step("closing inherited files")(
            std::io::Error::last_os_error(),
        ));
    }
    for (res, v, what) in [
        (libc::RLIMIT_NOFILE, cfg.open_files, "open files"),
        (libc::RLIMIT_FSIZE, cfg.file_size, "file size"),
        (libc::RLIMIT_NPROC, cfg.processes, "processes"),
        (libc::RLIMIT_CORE, 0, "core size"),
    ] {
        let lim = libc::rlimit {
            rlim_cur: v,
            rlim_max: v,
        };
        // SAFETY: setrlimit reads the valid struct above.
        if unsafe { libc::setrlimit(res, &lim) } < 0 {
            return Err(step(format!("limiting {what}"))(
                std::io::Error::last_os_error(),
            ));
        }
    }
    // The bounding set: no capability can come back, whatever runs later.
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments; EINVAL past the last capability ends the loop.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(step("dropping the capability bounding set")(
                std::io::Error::last_os_error(),
            ));
        }
    }
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    let gid = nix::unistd::Gid::from_raw(cfg.gid);
    let uid = nix::unistd::Uid::from_raw(cfg.uid);
    nix::unistd::setgroups(&[]).map_err(|e| step("setgroups")(nix_io(e)))?;
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| step("setresgid")(nix_io(e)))?;
    // From root to a user with every id non-zero: the kernel clears the permitted, effective
    // and ambient capabilities.
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| step("setresuid")(nix_io(e)))?;
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
        return Err(step("no_new_privs")(std::io::Error::last_os_error()));
    }
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if effective_caps() != Some(0) {
        return Err(step("dropping capabilities")(std::io::Error::other(
            "capabilities remain after the change of user",
        )));
    }
    Ok(())
}

/// This thread's effective capabilities, from `capget`.
fn effective_caps() -> Option<u64> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut h = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: capget writes two `Data` for version 3 into the valid array.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) };
    (r == 0).then(|| u64::from(d[0].effective) | (u64::from(d[1].effective) << 32))
}

/// A descriptor number handed over by the host (`--report-fd`), owned from now on.
///
/// # Safety
/// `fd` must be an open descriptor that nothing else in this process owns.
pub unsafe fn take_fd(fd: i32) -> OwnedFd {
    // SAFETY: the caller's contract.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Whether `fd` is open (a report descriptor the host did not pass is not used).
pub fn fd_open(fd: i32) -> bool {
    // SAFETY: F_GETFD on any number only reads the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}
