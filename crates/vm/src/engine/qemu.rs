//! The `qemu` engine: QEMU's `microvm` machine as a child process.
//!
//! Facts this relies on (checked on QEMU 7.2 with the Cove kernel):
//! - with `acpi=off`, QEMU appends `virtio_mmio.device=` entries to the command line itself;
//! - under TCG the kernel hangs at TSC calibration unless it is told `tsc_early_khz`;
//! - `-no-reboot` turns the agent's reboot (its power-off) into QEMU's exit;
//! - without the RTC (`rtc=off`) the kernel spends a whole second polling for it before giving
//!   up (measured: first init line at 1.75 s with `rtc=off`, 0.75 s with the RTC);
//! - under TCG the local APIC timer has no TSC-deadline mode, and calibrating and verifying it
//!   costs about 220 ms of boot; `nolapic_timer` makes the PIT the clock event device instead
//!   (other vCPUs get ticks by broadcast), measured 0.75 s → 0.51 s to init.

use cove_model::{Accel, VmEngine};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use cove_protocol::control::VmConfig;
use serde_json::json;
use tokio::process::{Child, Command};

use super::qmp::Qmp;
use super::{EngineError, EngineFuture, RunningVm};
use crate::snapshot::{self, Manifest};

/// A running QEMU.
#[derive(Debug)]
pub struct Qemu {
    child: Child,
    agent_socket: PathBuf,
    accel: Accel,
    cfg: VmConfig,
    qmp: Qmp,
    memory: MemoryFile,
    /// The identity of QEMU's binary when it was started (see [`snapshot::identity`]).
    binary: Option<String>,
    /// The sandbox directory (QEMU's sockets).
    dir: PathBuf,
}

/// The guest RAM file, removed when dropped: whether the VM ends or its start fails halfway.
#[derive(Debug)]
struct MemoryFile(PathBuf);

impl Drop for MemoryFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Guest RAM lives in this file (tmpfs), shared with QEMU: a snapshot then needs only the device
/// state from QEMU's migration (`x-ignore-shared`) plus a sparse copy of the file.
pub fn memory_path(cfg: &VmConfig) -> PathBuf {
    cove_model::SandboxDir::guest_ram(&cfg.id)
}

/// The CPU model the guest sees.
pub fn cpu_model(cfg: &VmConfig) -> &'static str {
    if cfg.accel == Accel::Kvm {
        "host"
    } else {
        "max"
    }
}

/// The QEMU command line for a config (public for `cove info` and the benchmarks).
pub fn args(cfg: &VmConfig, dir: &Path) -> Vec<String> {
    // reboot=t: the agent's reboot (its power-off) becomes a triple fault, which -no-reboot
    // turns into QEMU's exit.
    let mut cmdline = format!("{} reboot=t", super::GUEST_CMDLINE);
    if cfg.accel == Accel::Tcg {
        cmdline.push_str(" nolapic_timer");
    }
    if let Some(khz) = cfg.tsc_khz {
        cmdline.push_str(&format!(" tsc_early_khz={khz}"));
    }
    cmdline.push_str(&format!(" cove.hostname={}", cfg.id));
    cmdline.push_str(&super::net_cmdline(cfg));
    let cpu = cpu_model(cfg);
    let memory = format!(
        "memory-backend-file,id=mem,size={}M,mem-path={},share=on",
        cfg.memory_mib,
        memory_path(cfg).display()
    );
    // TCG's translation cache is sized from the host's memory otherwise (up to 1 GiB), which
    // a jail's memory limit would have to allow for.
    let accel = match cfg.accel {
        Accel::Tcg => format!("tcg,tb-size={TCG_CACHE_MIB}"),
        Accel::Kvm => "kvm".to_string(),
    };
    let mut a: Vec<String> = [
        "-M",
        "microvm,acpi=off,x-option-roms=off,rtc=on,memory-backend=mem",
        "-object",
        &memory,
        "-accel",
        &accel,
        "-cpu",
        cpu,
        "-m",
        &cfg.memory_mib.to_string(),
        "-smp",
        &cfg.cpus.to_string(),
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-kernel",
        &cfg.kernel,
        "-initrd",
        &cfg.initramfs,
        "-append",
        &cmdline,
        "-chardev",
        // cove-vm copies the console into a size-capped log (see `keep_console`).
        &format!(
            "socket,id=con,path={},server=on,wait=off",
            dir.join("console.sock").display()
        ),
        "-serial",
        "chardev:con",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (i, d) in cfg.disks.iter().enumerate() {
        let ro = if d.read_only { ",readonly=on" } else { "" };
        a.push("-drive".into());
        a.push(format!(
            "id=d{i},file={},format=raw,if=none,discard=unmap{ro}",
            d.path
        ));
        a.push("-device".into());
        a.push(format!("virtio-blk-device,drive=d{i},serial={}", d.serial));
    }
    if let Some(n) = &cfg.net {
        // The host's tap in the sandbox's namespace (cove-vm is in it); no vhost (no
        // /dev/vhost-net in the jail, and none on these hosts).
        a.push("-netdev".into());
        if n.user_mode {
            let gw = &n.gateway;
            let net = gw.rsplit_once('.').map_or("", |(p, _)| p);
            a.push(format!("user,id=net0,net={net}.0/24,host={gw}"));
        } else {
            a.push(format!(
                "tap,id=net0,ifname={},script=no,downscript=no,vhost=off",
                n.tap
            ));
        }
        a.push("-device".into());
        a.push(format!("virtio-net-device,netdev=net0,mac={}", n.mac));
    }
    let sock = dir.join("agent.sock");
    a.extend(
        [
            "-device",
            "virtio-serial-device,max_ports=2",
            "-chardev",
            &format!("socket,id=agent,path={},server=on,wait=off", sock.display()),
            "-device",
            "virtserialport,chardev=agent,name=cove.agent,nr=1,id=cove-agent",
            "-device",
            "virtio-rng-device",
            "-qmp",
            &format!("unix:{},server=on,wait=off", dir.join("qmp.sock").display()),
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    if cfg.jail.as_ref().is_some_and(|j| j.seccomp) {
        // QEMU's own filter: no obsolete calls, no change of user, no new programs or
        // processes, no scheduler or affinity changes.
        a.push("-sandbox".into());
        a.push("on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny".into());
    }
    a
}

/// TCG's translation cache, MiB (part of the jail's memory overhead).
pub const TCG_CACHE_MIB: u32 = 128;

/// Where QEMU's migration stream passes (a Unix socket cove-vm serves or dials: QEMU itself
/// starts no program, so its sandbox can deny that).
fn migration_socket(dir: &Path) -> PathBuf {
    dir.join("migrate.sock")
}

impl Qemu {
    /// Spawns QEMU for `cfg`, with its files in `dir`: a boot, or a restore of `cfg.restore`.
    pub async fn start(cfg: &VmConfig, dir: &Path) -> Result<Self, EngineError> {
        let memory = MemoryFile(memory_path(cfg));
        let restore = cfg.restore.as_ref().map(PathBuf::from);
        let mut args = args(cfg, dir);
        if let Some(snap) = &restore {
            // Everything is checked before QEMU starts: a bad snapshot is refused, not half-run.
            let m = Manifest::read(snap)?;
            let version = qemu_version_for(&cfg.qemu, snap).await;
            let line = version.as_ref().map_or("unknown", |v| v.line.as_str());
            m.check(
                VmEngine::Qemu,
                line,
                cpu_model(cfg),
                cfg.memory_mib,
                cfg.cpus,
            )?;
            m.check_nic(cfg.net.is_some())?;
            // The memory is copied (QEMU writes the guest's changes back into its file); it is
            // hashed on the way only until one check of this very file has passed here.
            let want = m.files.get("memory");
            let source = snap.join("memory");
            if want.is_some_and(|w| snapshot::verified_before(snap, "memory", w)) {
                snapshot::copy_sparse_unhashed(&source, &memory.0)?;
            } else {
                let got = match want {
                    Some(w) => snapshot::copy_sparse_like(&source, &memory.0, w)?,
                    None => snapshot::copy_sparse(&source, &memory.0)?,
                };
                snapshot::accept(snap, "memory", want, &got)?;
            }
            snapshot::verify(snap, "state", m.files.get("state"))?;
            // A clone's disk was copied from the snapshot by the host: it must match too.
            for (name, want) in &m.files {
                let Some(serial) = name.strip_prefix("disk-") else {
                    continue;
                };
                if let Some(d) = cfg
                    .disks
                    .iter()
                    .find(|d| d.serial == serial && !d.read_only)
                    && &snapshot::sum_like(Path::new(&d.path), want)? != want
                {
                    return Err(snapshot::SnapshotError::Corrupted(d.path.clone()).into());
                }
            }
            args.extend(["-incoming".to_string(), "defer".to_string()]);
        } else {
            let _ = std::fs::remove_file(&memory.0);
        }
        let binary = snapshot::identity(Path::new(&cfg.qemu));
        let mut cmd = Command::new(&cfg.qemu);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir.join("qemu.log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; it only arms a signal for this child.
        unsafe {
            cmd.pre_exec(|| {
                // QEMU must not outlive its supervisor.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| EngineError::Spawn {
            program: cfg.qemu.clone(),
            source,
        })?;
        tokio::spawn(keep_console(
            dir.join("console.sock"),
            dir.join("console.log"),
        ));
        let mut qmp = Qmp::connect(&dir.join("qmp.sock")).await?;
        if let Some(snap) = &restore {
            qmp.execute("migrate-set-capabilities", Some(ignore_shared()))
                .await?;
            let sock = migration_socket(dir);
            let _ = std::fs::remove_file(&sock);
            let uri = format!("unix:{}", quoted_plain(&sock)?);
            qmp.execute("migrate-incoming", Some(json!({ "uri": uri })))
                .await?;
            feed_migration(&sock, &snap.join("state")).await?;
            qmp.wait_migration().await?;
            let _ = std::fs::remove_file(&sock);
            // Without -S the VM runs once the state is in; make sure it does.
            if qmp.execute("query-status", None).await?["running"] != true {
                qmp.execute("cont", None).await?;
            }
        }
        Ok(Self {
            child,
            agent_socket: dir.join("agent.sock"),
            accel: cfg.accel,
            cfg: cfg.clone(),
            qmp,
            memory,
            binary,
            dir: dir.to_path_buf(),
        })
    }
}

/// Writes the state file into QEMU's incoming migration socket (QEMU listens once
/// `migrate-incoming` is accepted).
async fn feed_migration(sock: &Path, state: &Path) -> Result<(), EngineError> {
    let io = |what: &'static str, p: &Path| {
        let path = p.display().to_string();
        move |source| snapshot::SnapshotError::Io { what, path, source }
    };
    let mut conn = tokio::net::UnixStream::connect(sock)
        .await
        .map_err(io("connecting to", sock))?;
    let mut file = tokio::fs::File::open(state)
        .await
        .map_err(io("reading", state))?;
    tokio::io::copy(&mut file, &mut conn)
        .await
        .map_err(io("sending", state))?;
    tokio::io::AsyncWriteExt::shutdown(&mut conn)
        .await
        .map_err(io("sending", state))?;
    Ok(())
}

/// Takes QEMU's outgoing migration connection and writes what it carries to `state`.
async fn drain_migration(
    listener: tokio::net::UnixListener,
    state: PathBuf,
) -> std::io::Result<()> {
    let (mut conn, _) = listener.accept().await?;
    let mut file = tokio::fs::File::create(&state).await?;
    tokio::io::copy(&mut conn, &mut file).await?;
    tokio::io::AsyncWriteExt::flush(&mut file).await
}

/// A path for a QMP URI (no quoting: QEMU takes the rest of a `unix:` URI as the path).
fn quoted_plain(p: &Path) -> Result<String, EngineError> {
    let s = p.display().to_string();
    if s.contains([',', '\n']) {
        return Err(EngineError::BadPath(s));
    }
    Ok(s)
}

fn ignore_shared() -> serde_json::Value {
    json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] })
}

/// QEMU's version line (`qemu --version`), which a snapshot must match exactly.
/// A QEMU binary's version line, with the identity the binary had when it was read (see
/// [`snapshot::identity`]).
#[derive(Debug, Clone)]
struct KnownVersion {
    identity: String,
    line: String,
}

/// What `qemu --version` says, remembered in `snap/verified.json` for the binary's identity
/// (the snapshot records it there when it is taken): running QEMU to ask cost every restore
/// ~15–20 ms. None when QEMU could not be asked (nothing is remembered then).
async fn qemu_version_for(qemu: &str, snap: &Path) -> Option<KnownVersion> {
    let identity = snapshot::identity(Path::new(qemu))?;
    let cached = std::fs::read(snap.join("verified.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    if let Some(v) = &cached
        && v["qemu"]["identity"] == identity.as_str()
        && let Some(line) = v["qemu"]["version"].as_str()
    {
        return Some(KnownVersion {
            identity,
            line: line.to_string(),
        });
    }
    let known = ask_version(qemu).await?;
    remember_qemu_version(qemu, snap, &known);
    Some(known)
}

/// Asks the binary at `qemu` for its version, noting its identity first: a binary replaced
/// while it answers is then simply not remembered.
async fn ask_version(qemu: &str) -> Option<KnownVersion> {
    let identity = snapshot::identity(Path::new(qemu))?;
    let line = qemu_version(qemu).await?;
    Some(KnownVersion { identity, line })
}

/// Records `known` in `snap/verified.json` — only while the binary at `qemu` is still the one
/// that answered (after an upgrade, the running QEMU's version is not the new binary's).
fn remember_qemu_version(qemu: &str, snap: &Path, known: &KnownVersion) {
    if snapshot::identity(Path::new(qemu)).as_deref() == Some(known.identity.as_str()) {
        snapshot::remember(
            snap,
            "qemu",
            json!({ "identity": known.identity, "version": known.line }),
        );
    }
}

/// The first line of `qemu --version`, or None when QEMU cannot be run.
pub async fn qemu_version(qemu: &str) -> Option<String> {
    Command::new(qemu)
        .arg("--version")
        .output()
        .await
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
}

impl Drop for Qemu {
    fn drop(&mut self) {
        // QEMU first; the memory file goes with `self.memory` right after.
        let _ = self.child.start_kill();
    }
}

impl RunningVm for Qemu {
    fn agent_socket(&self) -> PathBuf {
        self.agent_socket.clone()
    }

    fn vmm_pid(&self) -> Option<u32> {
        self.child.id()
    }

    fn accel(&self) -> Accel {
        self.accel
    }

    fn wait(&mut self) -> EngineFuture<'_, String> {
        Box::pin(async move {
            use std::os::unix::process::ExitStatusExt;
            match self.child.wait().await {
                // Its own `-sandbox` (in a jail) ends QEMU with SIGSYS on a forbidden call.
                Ok(st) if st.signal() == Some(libc::SIGSYS) => {
                    "QEMU made a system call its seccomp sandbox forbids, and was stopped (SIGSYS)"
                        .to_string()
                }
                Ok(st) => format!("qemu exited ({st})"),
                Err(e) => format!("waiting for qemu: {e}"),
            }
        })
    }

    fn kill(&mut self) {
        let _ = self.child.start_kill();
    }

    fn pause(&mut self) -> EngineFuture<'_, Result<(), EngineError>> {
        Box::pin(async move {
            self.qmp.execute("stop", None).await?;
            Ok(())
        })
    }

    fn resume(&mut self) -> EngineFuture<'_, Result<(), EngineError>> {
        Box::pin(async move {
            self.qmp.execute("cont", None).await?;
            Ok(())
        })
    }

    fn save<'a>(&'a mut self, dir: &'a Path) -> EngineFuture<'a, Result<Manifest, EngineError>> {
        Box::pin(async move {
            // Device state only: RAM is the shared file, copied below while the vCPUs are stopped.
            self.qmp
                .execute("migrate-set-capabilities", Some(ignore_shared()))
                .await?;
            self.qmp
                .execute(
                    "migrate-set-parameters",
                    Some(json!({ "max-bandwidth": 1u64 << 40 })),
                )
                .await?;
            let state = dir.join("state");
            let sock = migration_socket(&self.dir);
            let _ = std::fs::remove_file(&sock);
            let listener = tokio::net::UnixListener::bind(&sock).map_err(|source| {
                snapshot::SnapshotError::Io {
                    what: "binding",
                    path: sock.display().to_string(),
                    source,
                }
            })?;
            let sink = tokio::spawn(drain_migration(listener, state.clone()));
            let uri = format!("unix:{}", quoted_plain(&sock)?);
            let migrated = async {
                self.qmp
                    .execute("migrate", Some(json!({ "uri": uri })))
                    .await?;
                self.qmp.wait_migration().await
            }
            .await;
            let _ = std::fs::remove_file(&sock);
            if let Err(e) = migrated {
                sink.abort();
                return Err(e.into());
            }
            sink.await
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|r| r)
                .map_err(|source| snapshot::SnapshotError::Io {
                    what: "receiving the migration stream into",
                    path: state.display().to_string(),
                    source,
                })?;
            let memory = snapshot::copy_sparse(&self.memory.0, &dir.join("memory"))?;
            std::fs::File::open(&state)
                .and_then(|f| f.sync_all())
                .map_err(|source| snapshot::SnapshotError::Io {
                    what: "syncing",
                    path: state.display().to_string(),
                    source,
                })?;
            // The running QEMU's own version (its QMP greeting); asking the binary now would
            // name a QEMU upgraded since this one started.
            let version = self.qmp.version().unwrap_or("unknown").to_string();
            // The first restore of this snapshot (a wake, a fork's clones) need not ask QEMU,
            // while the binary is still the one running.
            if let (Some(identity), Some(line)) = (&self.binary, self.qmp.version()) {
                remember_qemu_version(
                    &self.cfg.qemu,
                    dir,
                    &KnownVersion {
                        identity: identity.clone(),
                        line: line.to_string(),
                    },
                );
            }
            let mut files = std::collections::BTreeMap::new();
            files.insert("state".to_string(), snapshot::sum(&state)?);
            files.insert("memory".to_string(), memory);
            let m = Manifest {
                format: snapshot::FORMAT,
                engine: VmEngine::Qemu,
                engine_version: version.clone(),
                accel: self.cfg.accel,
                cpu: cpu_model(&self.cfg).into(),
                // TCG's `max` model is QEMU's own; only `host` depends on this machine's CPU.
                cpu_flags: if cpu_model(&self.cfg) == "host" {
                    snapshot::host_cpu_flags()
                } else {
                    Vec::new()
                },
                memory_mib: self.cfg.memory_mib,
                cpus: self.cfg.cpus,
                created_at: super::now_secs(),
                files,
                nic: self.cfg.net.is_some(),
            };
            m.write(dir)?;
            Ok(m)
        })
    }
}

/// Most bytes kept in `console.log`; past it the log rotates once to `console.log.1`, so a guest
/// that prints without end costs the host at most twice this much disk.
pub const CONSOLE_LOG_MAX: u64 = 1 << 20;

/// Copies the guest's serial console into `console.log`, rotating at [`CONSOLE_LOG_MAX`].
async fn keep_console(sock: PathBuf, log: PathBuf) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let conn = loop {
        match tokio::net::UnixStream::connect(&sock).await {
            Ok(c) => break c,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            Err(e) => {
                eprintln!("cove-vm: console: {e}");
                return;
            }
        }
    };
    keep_console_from(conn, log).await;
}

/// Appends what `conn` carries (the guest's serial console) to `log`, rotating at
/// [`CONSOLE_LOG_MAX`]; ends with the stream.
pub async fn keep_console_from(mut conn: tokio::net::UnixStream, log: PathBuf) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn open(log: &Path) -> std::io::Result<tokio::fs::File> {
        tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .await
    }
    let Ok(mut file) = open(&log).await else {
        return;
    };
    let mut written = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if written + n as u64 > CONSOLE_LOG_MAX {
            let _ = tokio::fs::rename(&log, log.with_extension("log.1")).await;
            match open(&log).await {
                Ok(f) => file = f,
                Err(_) => return,
            }
            written = 0;
        }
        if file.write_all(&buf[..n]).await.is_err() {
            return;
        }
        written += n as u64;
    }
}
