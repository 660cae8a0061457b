//! The `kvm` engine: Cove's own VMM (`cove-vmm`) running the guest in this process.
//!
//! The same guest as the qemu engine: the kernel and initramfs, COM1 as the console (copied into
//! `console.log`), the CMOS clock (without it Linux waits on a clock update that never ends, as
//! under QEMU without an RTC), one virtio-blk per disk (the agent finds them by serial), the agent's
//! virtio-console port `cove.agent` with its host side on `agent.sock`, virtio-rng, and (for a
//! sandbox with a network) virtio-net on the tap the host made in the sandbox's namespace, the
//! same tap and guest address as under QEMU. The devices
//! are described on the kernel command line (`virtio_mmio.device=`, `acpi=off`); the MP table
//! gives the vCPUs. `reboot=k` turns the agent's power-off into an i8042 reset, which ends the VM.
//!
//! A snapshot is the VMM's state file and a sparse memory file; a restore maps that memory file
//! `MAP_PRIVATE`, so a restored sandbox starts without reading its memory and clones of one
//! snapshot share the pages none of them wrote.

use cove_model::{Accel, VmEngine};
use std::fs::File;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use cove_protocol::control::VmConfig;
use cove_virtio::block::BlockConfig;
use cove_virtio::net::NetConfig;
use cove_vmm::persist;
use cove_vmm::virtio::DeviceSpec;
use cove_vmm::{KernelConfig, Vm, VmExit};
use tokio::sync::watch;

use super::{EngineError, EngineFuture, RunningVm};
use crate::snapshot::{self, Manifest};

/// What a snapshot of this engine must match to be restored by it.
pub const ENGINE_VERSION: &str = concat!("cove-vmm ", env!("CARGO_PKG_VERSION"), " state 1");
/// The CPU model the guest sees: the host's CPUID through Cove's CPU template.
pub const CPU_MODEL: &str = "cove-template-1";

/// A guest run by Cove's own VMM.
#[derive(Debug)]
pub struct Kvm {
    vm: Arc<Mutex<Vm>>,
    ended: watch::Receiver<Option<String>>,
    killed: Arc<AtomicBool>,
    waker: vmm_sys_util::eventfd::EventFd,
    agent_socket: PathBuf,
    cfg: VmConfig,
}

fn vmm(e: impl std::fmt::Display) -> EngineError {
    EngineError::Vmm(e.to_string())
}

fn lock(vm: &Mutex<Vm>) -> std::sync::MutexGuard<'_, Vm> {
    vm.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The kernel command line: the qemu engine's, with the devices the kernel cannot discover.
fn cmdline(cfg: &VmConfig, devices: &str) -> String {
    // reboot=k: the agent's power-off becomes an i8042 reset, which ends the VM.
    format!(
        "{} reboot=k acpi=off cove.hostname={}{} {devices}",
        super::GUEST_CMDLINE,
        cfg.id,
        super::net_cmdline(cfg)
    )
}

/// `aa:bb:cc:dd:ee:ff` as bytes.
fn parse_mac(s: &str) -> Result<[u8; 6], EngineError> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = parts
            .next()
            .filter(|p| p.len() == 2)
            .and_then(|p| u8::from_str_radix(p, 16).ok())
            .ok_or_else(|| vmm(format!("bad MAC address {s:?}")))?;
    }
    if parts.next().is_some() {
        return Err(vmm(format!("bad MAC address {s:?}")));
    }
    Ok(mac)
}

/// The guest's serial output on its way to `console.log`: written by a vCPU thread, which must
/// never block on it (a stuck log writer would hold the vCPU, and a stop with it), so what the
/// socket cannot take at once is dropped, as a UART with nobody listening loses it.
struct ConsoleOut(std::os::unix::net::UnixStream);

impl std::io::Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.write(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(buf.len()),
            r => r,
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Kvm {
    /// Boots `cfg` (or restores `cfg.restore`), with its sockets and logs in `dir`.
    pub async fn start(cfg: &VmConfig, dir: &Path) -> Result<Self, EngineError> {
        let vcpus = u8::try_from(cfg.cpus).map_err(|_| {
            EngineError::Vmm(format!("{} vCPUs is more than the VMM takes", cfg.cpus))
        })?;
        let restore = cfg.restore.as_ref().map(PathBuf::from);
        let mut vm = match &restore {
            Some(snap) => {
                // Everything is checked before the VM is built: a bad snapshot is refused, never
                // half-restored.
                let m = Manifest::read(snap)?;
                m.check(
                    VmEngine::Kvm,
                    ENGINE_VERSION,
                    CPU_MODEL,
                    cfg.memory_mib,
                    cfg.cpus,
                )?;
                m.check_nic(cfg.net.is_some())?;
                for name in ["memory", "state"] {
                    snapshot::verify(snap, name, m.files.get(name))?;
                }
                for d in cfg.disks.iter().filter(|d| !d.read_only) {
                    if let Some(want) = m.files.get(&format!("disk-{}", d.serial))
                        && &snapshot::sum_like(Path::new(&d.path), want)? != want
                    {
                        return Err(snapshot::SnapshotError::Corrupted(d.path.clone()).into());
                    }
                }
                let state = persist::read_state(&snap.join("state")).map_err(vmm)?;
                let memory = File::open(snap.join("memory"))
                    .map_err(|e| vmm(format!("opening {}: {e}", snap.join("memory").display())))?;
                Vm::restore(&state, &memory).map_err(vmm)?
            }
            None => Vm::new(cove_vmm::VmConfig {
                vcpu_count: vcpus,
                mem_size: u64::from(cfg.memory_mib) << 20,
            })
            .map_err(vmm)?,
        };
        let (console, console_host) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| vmm(format!("console stream: {e}")))?;
        console
            .set_nonblocking(true)
            .map_err(|e| vmm(format!("console stream: {e}")))?;
        vm.add_serial(Box::new(ConsoleOut(console))).map_err(vmm)?;
        vm.add_i8042().map_err(vmm)?;
        vm.add_cmos().map_err(vmm)?;
        for d in &cfg.disks {
            vm.add_virtio(
                &format!("disk-{}", d.serial),
                DeviceSpec::Block(BlockConfig {
                    path: PathBuf::from(&d.path),
                    read_only: d.read_only,
                    serial: d.serial.clone(),
                }),
            )
            .map_err(vmm)?;
        }
        let agent_socket = dir.join("agent.sock");
        let _ = std::fs::remove_file(&agent_socket);
        let listener = UnixListener::bind(&agent_socket)
            .map_err(|e| vmm(format!("binding {}: {e}", agent_socket.display())))?;
        vm.add_virtio("agent", DeviceSpec::Console(listener))
            .map_err(vmm)?;
        vm.add_virtio("rng", DeviceSpec::Rng).map_err(vmm)?;
        if let Some(n) = &cfg.net {
            if n.user_mode {
                return Err(vmm(
                    "user-mode networking is QEMU's; the kvm engine uses the tap",
                ));
            }
            // cove-vm is in the sandbox's namespace already: the tap is attached there.
            vm.add_virtio(
                "net",
                DeviceSpec::Net(NetConfig {
                    tap: n.tap.clone(),
                    mac: parse_mac(&n.mac)?,
                }),
            )
            .map_err(vmm)?;
        }
        console_host
            .set_nonblocking(true)
            .map_err(|e| vmm(format!("console stream: {e}")))?;
        tokio::spawn(super::qemu::keep_console_from(
            tokio::net::UnixStream::from_std(console_host)
                .map_err(|e| vmm(format!("console stream: {e}")))?,
            dir.join("console.log"),
        ));
        if restore.is_some() {
            vm.resume().map_err(vmm)?;
        } else {
            let info = vm
                .load_kernel(&KernelConfig {
                    kernel: PathBuf::from(&cfg.kernel),
                    initramfs: Some(PathBuf::from(&cfg.initramfs)),
                    cmdline: cmdline(cfg, &vm.virtio_cmdline()),
                })
                .map_err(vmm)?;
            vm.start(info.entry).map_err(vmm)?;
        }
        let mut watch_exits = vm
            .take_exit_watch()
            .ok_or_else(|| vmm("the VM's exit events are gone"))?;
        let waker = watch_exits.waker().map_err(vmm)?;
        let killed = Arc::new(AtomicBool::new(false));
        let (tx, ended) = watch::channel(None);
        let k = killed.clone();
        std::thread::Builder::new()
            .name("vm-exit".into())
            .spawn(move || {
                let how = loop {
                    match watch_exits.wait(std::time::Duration::from_secs(3600)) {
                        Ok(Some(VmExit::Reset)) => break "the guest powered off".to_string(),
                        Ok(Some(VmExit::Vcpu { vcpu, reason })) => {
                            break format!("vCPU {vcpu} stopped: {reason:?}");
                        }
                        Ok(None) if k.load(Ordering::SeqCst) => break "killed".to_string(),
                        Ok(None) => {}
                        Err(e) => break format!("waiting for the VM: {e}"),
                    }
                };
                let _ = tx.send(Some(how));
            })
            .map_err(|e| vmm(format!("spawning the exit watcher: {e}")))?;
        Ok(Self {
            vm: Arc::new(Mutex::new(vm)),
            ended,
            killed,
            waker,
            agent_socket,
            cfg: cfg.clone(),
        })
    }

    /// Runs `f` on the VM off the async threads (vCPU acknowledgements block briefly).
    async fn with_vm<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Vm) -> Result<T, cove_vmm::VmError> + Send + 'static,
    ) -> Result<T, EngineError> {
        let vm = self.vm.clone();
        tokio::task::spawn_blocking(move || f(&mut lock(&vm)))
            .await
            .map_err(|e| vmm(format!("VMM task: {e}")))?
            .map_err(vmm)
    }
}

impl RunningVm for Kvm {
    fn agent_socket(&self) -> PathBuf {
        self.agent_socket.clone()
    }

    fn vmm_pid(&self) -> Option<u32> {
        None
    }

    fn accel(&self) -> Accel {
        Accel::Kvm
    }

    fn wait(&mut self) -> EngineFuture<'_, String> {
        Box::pin(async move {
            let mut ended = self.ended.clone();
            match ended.wait_for(Option::is_some).await {
                Ok(how) => how.clone().unwrap_or_default(),
                Err(_) => "the exit watcher is gone".into(),
            }
        })
    }

    fn kill(&mut self) {
        let _ = lock(&self.vm).stop();
        self.killed.store(true, Ordering::SeqCst);
        let _ = self.waker.write(1);
    }

    fn pause(&mut self) -> EngineFuture<'_, Result<(), EngineError>> {
        Box::pin(self.with_vm(Vm::pause))
    }

    fn resume(&mut self) -> EngineFuture<'_, Result<(), EngineError>> {
        Box::pin(self.with_vm(Vm::resume))
    }

    fn save<'a>(&'a mut self, dir: &'a Path) -> EngineFuture<'a, Result<Manifest, EngineError>> {
        Box::pin(async move {
            let state = dir.join("state");
            let memory = dir.join("memory");
            let (s, m) = (state.clone(), memory.clone());
            self.with_vm(move |vm| {
                let snap = vm.snapshot()?;
                persist::write_state(&s, &snap)
                    .map_err(|e| cove_vmm::VmError::DeviceState("state file", e.to_string()))?;
                let f = File::create(&m)
                    .map_err(|e| cove_vmm::VmError::DeviceState("memory file", e.to_string()))?;
                persist::memory::save(vm.memory(), &f)?;
                f.sync_all()
                    .map_err(|e| cove_vmm::VmError::DeviceState("memory file", e.to_string()))?;
                Ok(())
            })
            .await?;
            let mut files = std::collections::BTreeMap::new();
            files.insert("state".to_string(), snapshot::sum(&state)?);
            files.insert("memory".to_string(), snapshot::sum(&memory)?);
            Ok(Manifest {
                format: snapshot::FORMAT,
                engine: VmEngine::Kvm,
                engine_version: ENGINE_VERSION.into(),
                accel: Accel::Kvm,
                cpu: CPU_MODEL.into(),
                // The template passes the host's other features through: a restore needs them.
                cpu_flags: snapshot::host_cpu_flags(),
                memory_mib: self.cfg.memory_mib,
                cpus: self.cfg.cpus,
                created_at: super::now_secs(),
                files,
                nic: self.cfg.net.is_some(),
            })
        })
    }
}

impl Drop for Kvm {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guest that says "K" on COM1 forever (no Linux boots on this project's emulated KVM; the
    /// engine's plumbing is the same).
    const TICKER: &str = "
        .intel_syntax noprefix
        .code64
        .text
        .globl _start
    _start:
        mov dx, 0x3f8
        mov al, 'K'
    1:  out dx, al
        mov ecx, 2000
    2:  dec ecx
        jnz 2b
        jmp 1b
    ";

    fn assemble(dir: &Path) -> PathBuf {
        let src = dir.join("ticker.S");
        std::fs::write(&src, TICKER).unwrap();
        let (obj, elf) = (dir.join("ticker.o"), dir.join("ticker.elf"));
        let ok = std::process::Command::new("as")
            .args(["--64", "-o"])
            .arg(&obj)
            .arg(&src)
            .status()
            .expect("GNU as (binutils)")
            .success()
            && std::process::Command::new("ld")
                .args([
                    "-m",
                    "elf_x86_64",
                    "-nostdlib",
                    "-static",
                    "-Ttext=0x100000",
                ])
                .args(["-e", "_start", "-o"])
                .arg(&elf)
                .arg(&obj)
                .status()
                .expect("GNU ld (binutils)")
                .success();
        assert!(ok, "assembling the test guest");
        elf
    }

    fn config(dir: &Path, kernel: &Path, restore: Option<&Path>) -> VmConfig {
        let initramfs = dir.join("initramfs");
        std::fs::write(&initramfs, b"07070100").unwrap();
        let disk = dir.join("disk");
        if !disk.exists() {
            std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
        }
        VmConfig {
            id: "kvmtest".into(),
            engine: VmEngine::Kvm,
            accel: Accel::Kvm,
            kernel: kernel.display().to_string(),
            initramfs: initramfs.display().to_string(),
            cpus: 1,
            memory_mib: 64,
            disks: vec![cove_protocol::control::DiskConfig {
                path: disk.display().to_string(),
                read_only: false,
                serial: "d0".into(),
            }],
            tsc_khz: None,
            qemu: String::new(),
            restore: restore.map(|p| p.display().to_string()),
            clone_of: None,
            expires_at: None,
            idle_timeout_secs: None,
            on_idle: None,
            on_expire: None,
            blob_store: None,
            jail: None,
            net: None,
        }
    }

    /// A directory with the test guest assembled in it, and three empty ones: two sandboxes'
    /// and a snapshot's.
    fn workspace() -> (tempfile::TempDir, PathBuf, [PathBuf; 3]) {
        let t = tempfile::tempdir().unwrap();
        let kernel = assemble(t.path());
        let dirs = ["a", "b", "snap"].map(|d| t.path().join(d));
        for d in &dirs {
            std::fs::create_dir_all(d).unwrap();
        }
        (t, kernel, dirs)
    }

    /// Whether this process holds tap `name` open (tun's fdinfo names the interface).
    fn holds_tap(name: &str) -> bool {
        std::fs::read_dir("/proc/self/fdinfo")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .any(|info| info.lines().any(|l| l == format!("iff:\t{name}")))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sandbox_with_a_network_gets_its_tap_and_a_snapshot_keeps_it() {
        assert!(
            Path::new("/dev/kvm").exists() && Path::new("/dev/net/tun").exists(),
            "/dev/kvm or /dev/net/tun is missing: the kvm engine's network test needs both"
        );
        let (t, kernel, [a, b, snap]) = workspace();
        let tap = format!("cvt{}", std::process::id() % 100_000);
        let with_net = |restore: Option<&Path>| {
            let mut c = config(t.path(), &kernel, restore);
            c.net = Some(cove_protocol::control::NetConfig {
                netns: String::new(),
                tap: tap.clone(),
                mac: "02:c0:5e:00:00:02".into(),
                address: "169.254.127.2/30".into(),
                gateway: "169.254.127.1".into(),
                user_mode: false,
            });
            c
        };
        let cfg = with_net(None);
        assert!(
            cmdline(&cfg, "").contains(" cove.net=169.254.127.2/30,169.254.127.1 "),
            "{}",
            cmdline(&cfg, "")
        );
        let mut vm = Kvm::start(&cfg, &a).await.unwrap();
        assert!(holds_tap(&tap), "the engine attached {tap}");
        wait_log_above(&a, 100).await;
        vm.pause().await.unwrap();
        let m = vm.save(&snap).await.unwrap();
        m.write(&snap).unwrap();
        assert!(m.nic, "the snapshot records its network device");
        vm.kill();
        drop(vm);
        assert!(!holds_tap(&tap), "a killed VM lets its tap go");
        // A restore needs the device its snapshot had, and gets the tap again.
        let e = Kvm::start(&config(t.path(), &kernel, Some(&snap)), &b)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("network"), "{e}");
        let mut back = Kvm::start(&with_net(Some(&snap)), &b).await.unwrap();
        assert!(holds_tap(&tap));
        wait_log_above(&b, 100).await;
        back.kill();
        drop(back);
        // User-mode networking is QEMU's alone.
        let mut user = with_net(None);
        if let Some(n) = user.net.as_mut() {
            n.user_mode = true;
        }
        assert!(Kvm::start(&user, &b).await.is_err());
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &tap])
            .status();
    }

    async fn log_len(dir: &Path) -> u64 {
        std::fs::metadata(dir.join("console.log")).map_or(0, |m| m.len())
    }

    async fn wait_log_above(dir: &Path, n: u64) -> u64 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let len = log_len(dir).await;
            if len > n {
                return len;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "console.log stuck at {len}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_engine_boots_pauses_snapshots_and_restores_a_guest() {
        assert!(
            Path::new("/dev/kvm").exists(),
            "/dev/kvm is missing: the kvm engine's tests run real guests on KVM"
        );
        let (t, kernel, [a, b, snap]) = workspace();
        let mut vm = Kvm::start(&config(t.path(), &kernel, None), &a)
            .await
            .unwrap();
        assert_eq!((vm.accel(), vm.vmm_pid()), (Accel::Kvm, None));
        // The agent port's host side accepts connections (cove-vm's proxy connects here).
        std::os::unix::net::UnixStream::connect(vm.agent_socket()).unwrap();
        wait_log_above(&a, 100).await;

        vm.pause().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let paused_at = log_len(&a).await;
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        assert_eq!(
            log_len(&a).await,
            paused_at,
            "a paused guest prints nothing"
        );
        let m = vm.save(&snap).await.unwrap();
        m.write(&snap).unwrap();
        assert_eq!((m.engine, m.cpu.as_str()), (VmEngine::Kvm, CPU_MODEL));
        assert!(m.files["memory"].size == 64 << 20);
        vm.resume().await.unwrap();
        wait_log_above(&a, paused_at).await;
        vm.kill();
        assert_eq!(vm.wait().await, "killed");
        drop(vm);

        // A new engine from the snapshot: the guest goes on printing where it was.
        let mut back = Kvm::start(&config(t.path(), &kernel, Some(&snap)), &b)
            .await
            .unwrap();
        wait_log_above(&b, 100).await;
        assert!(
            std::fs::read(b.join("console.log"))
                .unwrap()
                .iter()
                .all(|&c| c == b'K'),
            "only the guest's output"
        );
        back.kill();
        drop(back);

        // The first restore remembered its check; a second one trusts it while the files are
        // unchanged.
        assert!(snap.join("verified.json").is_file());
        let m = Manifest::read(&snap).unwrap();
        assert!(snapshot::verified_before(
            &snap,
            "memory",
            &m.files["memory"]
        ));

        // A snapshot for another shape, or a damaged one, is refused before anything runs.
        let mut wrong = config(t.path(), &kernel, Some(&snap));
        wrong.memory_mib = 128;
        let e = Kvm::start(&wrong, &b).await.unwrap_err();
        assert!(e.to_string().contains("incompatible"), "{e}");
        let mem = snap.join("memory");
        let f = std::fs::OpenOptions::new().write(true).open(&mem).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"x", 0x100000).unwrap();
        let e = Kvm::start(&config(t.path(), &kernel, Some(&snap)), &b)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("corrupted"), "{e}");
    }
}
