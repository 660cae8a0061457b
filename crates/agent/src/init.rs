//! PID 1 duties: mount the sandbox root, switch into it, set up the guest, stop it.
//!
//! Disk layout (DESIGN.md, Guest): the image disk (ext4, read-only, shared by every sandbox of
//! the image) is the lower layer of an overlay whose upper layer lives on the sandbox's own disk.
//! Disks are found by their virtio-blk serial (`cove-image`, `cove-rw`), never by probe order.

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use nix::mount::{MsFlags, mount};

/// Serial of the image disk.
pub const IMAGE_SERIAL: &str = "cove-image";
/// Serial of the sandbox's writable disk.
pub const RW_SERIAL: &str = "cove-rw";
/// Name of the virtio-console port that carries the protocol.
pub const PORT_NAME: &str = "cove.agent";

/// A setup step that failed.
#[derive(Debug)]
pub struct SetupError {
    step: String,
    source: io::Error,
}

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.step, self.source)
    }
}

impl std::error::Error for SetupError {}

fn step<T>(what: impl Into<String>, r: Result<T, impl Into<io::Error>>) -> Result<T, SetupError> {
    r.map_err(|e| SetupError {
        step: what.into(),
        source: e.into(),
    })
}

fn mnt(
    src: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), SetupError> {
    let _ = std::fs::create_dir_all(target);
    step(
        format!("mount {fstype} on {target}"),
        mount(Some(src), target, Some(fstype), flags, data),
    )
}

fn find_disk(serial: &str) -> Option<String> {
    let rd = std::fs::read_dir("/sys/block").ok()?;
    for ent in rd.flatten() {
        let name = ent.file_name().to_string_lossy().into_owned();
        let s = std::fs::read_to_string(ent.path().join("serial")).unwrap_or_default();
        if s.trim() == serial {
            return Some(format!("/dev/{name}"));
        }
    }
    None
}

/// Mounts everything and switches into the sandbox root. Runs once, as PID 1.
/// Milliseconds each setup step took, for the console log.
#[derive(Debug, Default)]
pub struct SetupTimes {
    last: Option<std::time::Instant>,
    steps: Vec<(&'static str, f64)>,
}

impl SetupTimes {
    /// Ends the step named `step` (the first call only starts the clock).
    pub fn mark(&mut self, step: &'static str) {
        let now = std::time::Instant::now();
        if let Some(t) = self.last {
            self.steps.push((step, (now - t).as_secs_f64() * 1000.0));
        }
        self.last = Some(now);
    }
}

impl std::fmt::Display for SetupTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (s, ms)) in self.steps.iter().enumerate() {
            write!(f, "{}{s} {ms:.1}", if i > 0 { ", " } else { "" })?;
        }
        Ok(())
    }
}

///
/// Returns the agent's port, opened as early as possible: the host's hello is already waiting
/// on it, and the VMM starts delivering it once the guest side is open (measured: opening it
/// after the mounts left the hello waiting 36 ms).
///
/// Only the pseudo filesystems and the port are set up here. The sandbox root (disks, overlay,
/// switch root, PTYs, cgroups, hostname, loopback) is built by a background thread at the lowest
/// priority while the agent starts its runtime and answers the host's hello, and every request
/// that touches the guest waits for it (see [`wait_root`]): under emulation the mounts cost
/// ~55 ms of guest CPU that the host's own work after the hello (recording the sandbox,
/// answering its client, the client's next request) now overlaps. A root that cannot be built
/// answers the waiting requests with the reason, prints it on the console and stops the guest.
pub fn setup(times: &mut SetupTimes) -> Result<Option<OwnedFd>, SetupError> {
    times.mark("start");
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    mnt("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, None)?;
    mnt("proc", "/proc", "proc", nosuid, None)?;
    mnt("sysfs", "/sys", "sysfs", nosuid, None)?;
    console_to_serial();
    if let Ok(f) = std::fs::OpenOptions::new().write(true).open("/dev/urandom") {
        let _ = URANDOM.set(f);
    }

    let port = match open_port() {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("cove-agent: {e}; retrying after setup");
            None
        }
    };
    times.mark("pseudo-fs and port");
    *ROOT
        .0
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = RootState::Building;
    let spawned = std::thread::Builder::new()
        .name("root".into())
        .spawn(move || {
            // Nice 19: the hello path runs first, the root whenever that path waits. (On Linux
            // the nice value is per thread, and `who = 0` is the calling thread.)
            // SAFETY: setpriority with constant arguments.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, 0, 19);
            }
            let mut t = SetupTimes::default();
            let started = std::time::Instant::now();
            match build_root(nosuid, &mut t) {
                Ok(()) => {
                    root_state(RootState::Ready);
                    eprintln!(
                        "cove-agent: root ready {:.1} ms after setup began ({t})",
                        started.elapsed().as_secs_f64() * 1000.0
                    );
                    warm_up();
                }
                Err(e) => {
                    // Requests waiting for the root hear why; then the guest stops, and the
                    // host marks the sandbox failed with this line from the console.
                    *ROOT_ERROR
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e.to_string());
                    root_state(RootState::Failed);
                    eprintln!("cove-agent: setup failed: {e}");
                    std::thread::sleep(Duration::from_millis(500));
                    power_off();
                }
            }
        });
    if let Err(e) = spawned {
        return Err(SetupError {
            step: "starting the root thread".into(),
            source: e,
        });
    }
    Ok(port)
}

/// Environment variable that makes the agent exit at once: [`warm_up`] runs it so.
pub const WARM_UP_ENV: &str = "COVE_AGENT_WARM_UP";

/// Runs one throwaway process (the agent itself, which exits at once) at the lowest priority,
/// so the guest's first user command does not pay alone for the first fork, exec, exit and
/// reap: under emulation each kernel and agent code path costs most the first time it runs,
/// and the first exec of a sandbox measured ~60 ms slower than the next. The child is the
/// agent's own binary (`/proc/self/exe` reaches it from inside the new root), never a program
/// of the user's image; the reaper collects it like any orphan.
fn warm_up() {
    // fork and execve by hand, not `std::process::Command`: when its exec fails, the standard
    // library waits for the child and asserts that the wait worked — but PID 1's reaper may
    // have collected the child first, and a panic in PID 1 (built with `panic = "abort"`)
    // panics the kernel. User execs hold the reaper's lock across the spawn; this one has no
    // reason to. A fork (copying the agent's page tables), as an exec with a hook does, is the
    // costly path to have run once.
    let path = c"/proc/self/exe";
    let Ok(var) = std::ffi::CString::new(format!("{WARM_UP_ENV}=1")) else {
        return;
    };
    let argv = [path.as_ptr(), std::ptr::null()];
    let env = [var.as_ptr(), std::ptr::null()];
    // SAFETY: fork has no preconditions; what the child does is below.
    match unsafe { libc::fork() } {
        // SAFETY: the child calls only async-signal-safe functions (setsid, execve, _exit) on
        // pointers prepared before the fork, which stay valid until the exec.
        0 => unsafe {
            libc::setsid();
            libc::execve(path.as_ptr(), argv.as_ptr(), env.as_ptr());
            libc::_exit(127)
        },
        -1 => eprintln!("cove-agent: warm-up: {}", io::Error::last_os_error()),
        // Not waited for here: the reaper collects every child, orphans included.
        _ => {}
    }
}

/// Mounts the disks under an overlay, switches into it and finishes the root.
fn build_root(nosuid: MsFlags, times: &mut SetupTimes) -> Result<(), SetupError> {
    times.mark("start");
    let image = find_disk(IMAGE_SERIAL);
    let rw = find_disk(RW_SERIAL);
    // The sandbox disk's own filesystem, kept open across the switch of root so it can be shown
    // again under the new one (`/run/cove/disk`, see [`show_disk`]).
    let mut disk_dir = None;
    times.mark("find disks");
    let root = "/run/cove/root";
    match image {
        Some(dev) => {
            mnt(
                &dev,
                "/run/cove/image",
                "ext4",
                MsFlags::MS_RDONLY,
                Some("noload"),
            )?;
            // Mounted one after the other: in parallel they were slower under emulation.
            let upper = match rw {
                Some(rw) => {
                    mnt(
                        &rw,
                        "/run/cove/rw",
                        "ext4",
                        MsFlags::MS_NOATIME,
                        // `discard`: blocks the guest frees are handed back at once (virtio-blk
                        // discard; QEMU punches them out of the host's disk file), so a sandbox
                        // that wrote and deleted a gigabyte does not keep it on the host.
                        Some("noinit_itable,discard"),
                    )?;
                    disk_dir = std::fs::File::open("/run/cove/rw").ok();
                    "/run/cove/rw"
                }
                None => {
                    eprintln!("cove-agent: no writable disk; changes live in memory");
                    mnt(
                        "tmpfs",
                        "/run/cove/rw",
                        "tmpfs",
                        MsFlags::empty(),
                        Some("mode=0755"),
                    )?;
                    "/run/cove/rw"
                }
            };
            times.mark("mount disks");
            // The host formats the disk with these directories; a tmpfs needs them made.
            for d in ["upper", "work"] {
                let p = format!("{upper}/{d}");
                if !Path::new(&p).is_dir() {
                    step(format!("mkdir {p}"), std::fs::create_dir_all(&p))?;
                }
            }
            // No index, redirects, metacopy or xino: features a sandbox root does not need.
            let opts = format!(
                "lowerdir=/run/cove/image,upperdir={upper}/upper,workdir={upper}/work,index=off,redirect_dir=off,metacopy=off,xino=off"
            );
            mnt("overlay", root, "overlay", MsFlags::empty(), Some(&opts))?;
            times.mark("overlay");
        }
        None => {
            eprintln!("cove-agent: no image disk; running in the initramfs");
            mnt("tmpfs", root, "tmpfs", MsFlags::empty(), Some("mode=0755"))?;
        }
    }

    // Move the pseudo filesystems into the new root, then make it `/` (as switch_root does).
    // The agent's other threads hold only open descriptors here (the port, the console), which
    // the moves leave working; nothing of theirs looks up a path until the root is ready.
    for d in ["dev", "proc", "sys"] {
        let target = format!("{root}/{d}");
        let _ = std::fs::create_dir_all(&target);
        step(
            format!("move /{d}"),
            mount(
                Some(format!("/{d}").as_str()),
                target.as_str(),
                None::<&str>,
                MsFlags::MS_MOVE,
                None::<&str>,
            ),
        )?;
    }
    step("chdir to the new root", std::env::set_current_dir(root))?;
    step(
        "move the new root to /",
        mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>),
    )?;
    step("chroot", nix::unistd::chroot("."))?;
    step("chdir /", std::env::set_current_dir("/"))?;
    times.mark("switch root");
    // As before the root moved off the hello's path: a pseudo filesystem that will not mount
    // (an image whose /run is odd, say) is logged, not fatal.
    if let Err(e) = finish_root(nosuid) {
        eprintln!("cove-agent: {e}");
    }
    if let Some(d) = disk_dir
        && let Err(e) = show_disk(&d)
    {
        eprintln!("cove-agent: {e}");
    }
    if let Some(h) = cmdline_value("cove.hostname") {
        let _ = nix::unistd::sethostname(&h);
    }
    if let Err(e) = loopback_up() {
        eprintln!("cove-agent: loopback: {e}");
    }
    if let Some(spec) = cmdline_value("cove.net")
        && let Err(e) = crate::net::configure(&spec)
    {
        eprintln!("cove-agent: network: {e}");
    }
    times.mark("finish");
    Ok(())
}

/// The mounts and links a root needs beyond the disks: PTYs, shared memory, /run, cgroups.
fn finish_root(nosuid: MsFlags) -> Result<(), SetupError> {
    mnt(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    let _ = std::fs::remove_file("/dev/ptmx");
    step(
        "link /dev/ptmx",
        std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx"),
    )?;
    mnt("tmpfs", "/dev/shm", "tmpfs", nosuid, Some("mode=1777"))?;
    mnt(
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    mnt("cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid, None)?;
    for (l, t) in [
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
    ] {
        let _ = std::os::unix::fs::symlink(l, t);
    }
    let _ = std::fs::create_dir_all("/tmp");
    let _ = std::fs::set_permissions("/tmp", std::os::unix::fs::PermissionsExt::from_mode(0o1777));
    Ok(())
}

/// Mounts the sandbox disk's ext4 (the overlay's upper layer lives there) at `/run/cove/disk`,
/// root's alone: the overlay root cannot be trimmed, this can (`fstrim /run/cove/disk`, or
/// `fstrim -a`), though online `discard` already hands freed blocks back.
fn show_disk(dir: &std::fs::File) -> Result<(), SetupError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::PermissionsExt;
    step(
        "mkdir /run/cove/disk",
        std::fs::create_dir_all("/run/cove/disk"),
    )?;
    step(
        "chmod /run/cove",
        std::fs::set_permissions("/run/cove", std::fs::Permissions::from_mode(0o700)),
    )?;
    let from = format!("/proc/self/fd/{}", dir.as_raw_fd());
    step(
        "bind the sandbox disk at /run/cove/disk",
        mount(
            Some(from.as_str()),
            "/run/cove/disk",
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        ),
    )
}

/// /dev/urandom, opened before the root thread moves /dev (see [`add_entropy`]).
static URANDOM: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();

/// Where the sandbox root stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RootState {
    /// No root is being built (the agent is not PID 1, or setup has not started).
    Absent,
    /// The root thread is at work.
    Building,
    /// The root is mounted and switched into.
    Ready,
    /// The root could not be built; the guest is stopping.
    Failed,
}

/// Why the root could not be built.
static ROOT_ERROR: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// The root's state, and the condition its waiters sleep on.
static ROOT: (std::sync::Mutex<RootState>, std::sync::Condvar) = (
    std::sync::Mutex::new(RootState::Absent),
    std::sync::Condvar::new(),
);

/// Set once the root is known to be ready: later requests skip the lock.
static ROOT_READY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn root_state(state: RootState) {
    *ROOT
        .0
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = state;
    if state == RootState::Ready {
        ROOT_READY.store(true, std::sync::atomic::Ordering::Release);
    }
    ROOT.1.notify_all();
}

/// True when [`wait_root`] has nothing to wait for.
pub fn root_ready() -> bool {
    ROOT_READY.load(std::sync::atomic::Ordering::Acquire)
        || *ROOT
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            == RootState::Absent
}

/// Blocks until the sandbox root is ready (at once when none is being built); an error names
/// why it could not be built (the guest is then stopping).
pub fn wait_root() -> Result<(), String> {
    let mut state = ROOT
        .0
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    while *state == RootState::Building {
        state = ROOT
            .1
            .wait(state)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
    }
    if *state == RootState::Failed {
        drop(state);
        let why = ROOT_ERROR
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .unwrap_or_default();
        return Err(format!(
            "the sandbox root could not be built ({why}); the guest is stopping"
        ));
    }
    Ok(())
}

/// Points stdin at /dev/null and stdout and stderr at the serial console (the sandbox's
/// console log). The kernel may have started us with none of 0, 1 and 2 open.
fn console_to_serial() {
    use std::os::fd::IntoRawFd;
    let null = std::fs::File::open("/dev/null").map(IntoRawFd::into_raw_fd);
    let con = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/console")
        .map(IntoRawFd::into_raw_fd);
    // SAFETY: dup2 and close on fds we just opened and own; 0, 1 and 2 are ours to set as init.
    unsafe {
        if let Ok(n) = null {
            libc::dup2(n, 0);
            if n > 2 {
                libc::close(n);
            }
        }
        if let Ok(c) = con {
            libc::dup2(c, 1);
            libc::dup2(c, 2);
            if c > 2 {
                libc::close(c);
            }
        }
    }
}

pub(crate) fn cmdline_value(key: &str) -> Option<String> {
    let c = std::fs::read_to_string("/proc/cmdline").ok()?;
    c.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=').map(str::to_string))
}

fn loopback_up() -> io::Result<()> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `s` is a fresh fd that nothing else owns.
    let sock: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(s) };
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, b) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = libc::c_char::from_ne_bytes([*b]);
    }
    let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the valid ifreq.
    unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::c_short::try_from(libc::IFF_UP).unwrap_or(1);
        if libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Opens the protocol's virtio-console port, waiting for it to appear (up to 10 s).
pub fn open_port() -> io::Result<OwnedFd> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(rd) = std::fs::read_dir("/sys/class/virtio-ports") {
            for ent in rd.flatten() {
                let name = std::fs::read_to_string(ent.path().join("name")).unwrap_or_default();
                if name.trim() == PORT_NAME {
                    let dev = Path::new("/dev").join(ent.file_name());
                    let f = std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(&dev)?;
                    return Ok(f.into());
                }
            }
        }
        if std::time::Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no virtio port named {PORT_NAME}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Guest uptime in milliseconds (CLOCK_BOOTTIME).
pub fn uptime_ms() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(t) => {
            u64::try_from(t.tv_sec()).unwrap_or(0) * 1000
                + u64::try_from(t.tv_nsec()).unwrap_or(0) / 1_000_000
        }
        Err(_) => 0,
    }
}

/// Sets the guest's wall clock.
pub fn set_clock(unix_ns: u64) {
    let ts = libc::timespec {
        tv_sec: i64::try_from(unix_ns / 1_000_000_000).unwrap_or(0),
        tv_nsec: i64::try_from(unix_ns % 1_000_000_000).unwrap_or(0),
    };
    // SAFETY: clock_settime reads the valid timespec.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } < 0 {
        eprintln!(
            "cove-agent: setting the clock: {}",
            io::Error::last_os_error()
        );
    }
}

/// Mixes host-provided random bytes (hex) into the guest's pool and reseeds the CRNG at once.
pub fn add_entropy(hex: &str) {
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    // The descriptor opened at setup: the hello that brings the entropy may arrive while the
    // root thread has /dev moved away from its path.
    let opened;
    let f = match URANDOM.get() {
        Some(f) => f,
        None => match std::fs::OpenOptions::new().write(true).open("/dev/urandom") {
            Ok(f) => {
                opened = f;
                &opened
            }
            Err(e) => {
                eprintln!("cove-agent: /dev/urandom: {e}");
                return;
            }
        },
    };
    use std::io::Write;
    let _ = (&*f).write_all(&bytes);
    // RNDRESEEDCRNG = _IO('R', 0x07): reseed now rather than at the next interval.
    let fd = std::os::fd::AsRawFd::as_raw_fd(f);
    // SAFETY: an argument-less ioctl on an open /dev/urandom.
    unsafe {
        libc::ioctl(fd, 0x5207);
    }
}

/// Takes a new identity (a fork): hostname, and a fresh machine-id where the image has one.
pub fn new_identity(hostname: &str) {
    let _ = nix::unistd::sethostname(hostname);
    if std::path::Path::new("/etc/machine-id").exists() {
        let mut b = [0u8; 16];
        // SAFETY: getrandom writes at most 16 bytes into the valid buffer.
        let _ = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
        let id: String = b.iter().map(|x| format!("{x:02x}")).collect();
        let _ = std::fs::write("/etc/machine-id", format!("{id}\n"));
    }
}

/// Flushes and stops the guest. The VMM runs with "no reboot": a reboot ends it.
pub fn power_off() -> ! {
    nix::unistd::sync();
    // SAFETY: reboot(2) with a valid command; as PID 1 this ends the guest.
    unsafe {
        libc::reboot(libc::RB_AUTOBOOT);
    }
    std::process::exit(0);
}
