//! cove-vm: one sandbox's supervisor.
//!
//! Started detached by the host with `--dir DIR`, where `DIR/vm.json` holds the [`VmConfig`]. It
//! starts the engine, connects to the guest agent, and serves `DIR/control.sock` (see
//! `cove_protocol::control`) until the guest stops. It outlives the CLI that started it. When it
//! ends it leaves `DIR/exit.json` saying why, for the host to report.

mod drill;
mod engine;
mod jail;
mod proxy;
mod snapshot;

use cove_model::VmEngine;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use cove_model::SandboxDir;
use cove_protocol::control::{
    ControlRequest, ControlResponse, ExitRecord, OnExpire, VmConfig, VmEnd, VmState, VmStatus,
};
use cove_protocol::{Reply, Request};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};

/// Supervises one sandbox's VM.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Sandbox directory holding vm.json; sockets and logs are created there.
    #[arg(long)]
    dir: PathBuf,
    /// Print the engine's command line for vm.json as a JSON array and exit (benchmarks
    /// compare against plain QEMU with exactly these arguments).
    #[arg(long)]
    print_engine_args: bool,
    /// A pipe the host reads the jailed process's pid from (the jail forks: the process the
    /// host started exits once the jail runs).
    #[arg(long)]
    report_fd: Option<i32>,
    /// Hash every file of the snapshot in `--dir` against its manifest and exit: 0 when all
    /// match, 3 (with the reason on stdout) when one does not (the host's scrub).
    #[arg(long)]
    verify_snapshot: bool,
    /// Enter the jail vm.json describes, then run the escape drill instead of the engine:
    /// each try is reported as one JSON line on stdout (tests/jail.rs).
    #[arg(long, hide = true)]
    drill: Option<String>,
}

/// How long the agent has to answer after the VM starts.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stop waits for the guest to power off before killing it.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What control connections ask of the VM; the supervisor's main loop carries them out one at
/// a time, so lifecycle operations never overlap.
#[derive(Debug)]
enum VmCommand {
    Stop(oneshot::Sender<Result<(), String>>),
    Pause(oneshot::Sender<Result<(), String>>),
    Resume(oneshot::Sender<Result<(), String>>),
    Hibernate(PathBuf, oneshot::Sender<Result<(), String>>),
    Snapshot(PathBuf, oneshot::Sender<Result<(), String>>),
    SetExpiry(Option<u64>, oneshot::Sender<Result<(), String>>),
}

#[derive(Debug)]
struct Shared {
    /// `status.json` in the sandbox directory, rewritten on every change so the host sees
    /// states cove-vm reached on its own (an idle pause) without asking.
    status_file: PathBuf,
    status: Mutex<VmStatus>,
    changed: watch::Sender<VmState>,
    link: Mutex<Option<Arc<proxy::Link>>>,
    commands: mpsc::Sender<VmCommand>,
    /// Control connections waiting for a command's outcome or writing it: cove-vm does not exit
    /// before they have answered (a stop or hibernate is answered just before the end).
    answering: std::sync::atomic::AtomicUsize,
}

impl Shared {
    fn status(&self) -> VmStatus {
        self.status.lock().expect("lock").clone()
    }

    fn set(&self, f: impl FnOnce(&mut VmStatus)) {
        let mut s = self.status.lock().expect("lock");
        f(&mut s);
        let state = s.state;
        let tmp = self.status_file.with_extension("tmp");
        if std::fs::write(&tmp, serde_json::to_vec(&*s).expect("serializes")).is_ok() {
            let _ = std::fs::rename(&tmp, &self.status_file);
        }
        drop(s);
        self.changed.send_replace(state);
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.verify_snapshot {
        match snapshot::verify_all(&args.dir) {
            Ok(_) => return Ok(()),
            Err(e @ snapshot::SnapshotError::Corrupted(_)) => {
                println!("{e}");
                std::process::exit(3);
            }
            Err(e) => return Err(e.into()),
        }
    }
    if args.print_engine_args {
        let cfg: VmConfig = serde_json::from_slice(
            &std::fs::read(args.dir.join("vm.json")).context("reading vm.json")?,
        )
        .context("parsing vm.json")?;
        let mut argv = vec![cfg.qemu.clone()];
        argv.extend(engine::qemu::args(&cfg, &args.dir));
        println!("{}", serde_json::to_string(&argv)?);
        return Ok(());
    }
    let dir = args.dir.clone();
    let started = Instant::now();
    // The jail comes first, while this is the only thread (the jail forks).
    let host_pid = match jail::enter(&dir, args.report_fd) {
        Ok(pid) => pid,
        Err(e) => {
            write_exit(
                &dir,
                VmEnd::BootFailed {
                    reason: format!("{e:#}"),
                },
            );
            return Err(e);
        }
    };
    if let Some(targets) = &args.drill {
        return drill::run(&dir, targets);
    }
    eprintln!(
        "cove-vm: jail entered in {:.1} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    // Few blocking threads: each is a task of the jail's PIDs limit.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()?;
    let result = rt.block_on(run(args.dir, host_pid));
    let end = match &result {
        Ok(end) => end.clone(),
        // Nothing started (vm.json unreadable, the engine refused, a socket could not be bound).
        Err(e) => VmEnd::BootFailed {
            reason: format!("{e:#}"),
        },
    };
    write_exit(&dir, end.clone());
    let _ = std::fs::remove_file(SandboxDir::at(&dir).control_socket());
    eprintln!("cove-vm: {end}");
    rt.shutdown_timeout(Duration::from_millis(100));
    result.map(|_| ())
}

/// Leaves `exit.json` saying how this cove-vm ended (atomically).
fn write_exit(dir: &Path, end: VmEnd) {
    let exit = ExitRecord {
        end,
        at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let layout = SandboxDir::at(dir);
    let tmp = layout.exit().with_extension("json.tmp");
    // Made new, no link followed: this may run as root (a jail that could not be entered) in
    // a directory an earlier jail wrote.
    let _ = std::fs::remove_file(&tmp);
    let written = {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&serde_json::to_vec(&exit).expect("serializes")))
    };
    if written.is_ok() {
        let _ = std::fs::rename(&tmp, layout.exit());
    }
}

/// Runs the sandbox; returns how it ended. `host_pid` is this process's pid on the host (it
/// differs from its own inside the jail's PID namespace).
async fn run(dir: PathBuf, host_pid: u32) -> anyhow::Result<VmEnd> {
    let t0 = Instant::now();
    let mut cfg: VmConfig = serde_json::from_slice(
        &std::fs::read(dir.join("vm.json"))
            .with_context(|| format!("reading {}/vm.json", dir.display()))?,
    )
    .context("parsing vm.json")?;
    let layout = SandboxDir::at(&dir);
    // What the VM before this one (the one hibernated, say) said is no longer true.
    let _ = std::fs::remove_file(layout.exit());
    let _ = std::fs::remove_file(layout.status());
    for s in ["control.sock", "agent.sock", "qmp.sock", "console.sock"] {
        let _ = std::fs::remove_file(dir.join(s));
    }
    // The kvm engine's vCPU and I/O threads install their own narrower filters as they start
    // (crates/vmm/src/seccomp.rs); cove-vm's list goes on first, so it covers them as well
    // (filters stack; a thread-synced install would fail once threads have filters of their
    // own). The qemu engine starts QEMU first, which the list forbids.
    let seccomp = cfg.jail.as_ref().is_some_and(|j| j.seccomp);
    if seccomp && cfg.engine == VmEngine::Kvm {
        cove_jail::seccomp::install(&layout.exit()).context("jail")?;
    }
    let mut vm = engine::start(&cfg, &dir).await?;
    let (commands, mut command_rx) = mpsc::channel(8);
    let spawned_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let (changed, _) = watch::channel(VmState::Booting);
    let shared = Arc::new(Shared {
        status_file: layout.status(),
        status: Mutex::new(VmStatus {
            state: VmState::Booting,
            engine: cfg.engine,
            accel: vm.accel(),
            pid: host_pid,
            vmm_pid: vm.vmm_pid(),
            agent_version: None,
            boot_ms: None,
            reason: None,
            idle: false,
        }),
        changed,
        link: Mutex::default(),
        commands,
        answering: Default::default(),
    });

    // The control socket answers from the start: a client can wait for readiness on it.
    let listener = UnixListener::bind(layout.control_socket()).context("binding control.sock")?;
    // Everything that needed more than the allow-list (starting the engine, binding sockets)
    // is done.
    if seccomp && cfg.engine != VmEngine::Kvm {
        cove_jail::seccomp::install(&layout.exit()).context("jail")?;
    }
    let s = shared.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let s = s.clone();
            tokio::spawn(async move { handle_control(s, conn).await });
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;

    let socket = vm.agent_socket();
    let boot = async {
        let conn = connect_agent(&socket).await?;
        let connected_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let (r, w) = conn.into_split();
        let link = proxy::Link::start(r, w);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        match link
            .hello(
                u64::try_from(now.as_nanos()).unwrap_or(u64::MAX),
                random_hex(32),
                cfg.clone_of.is_some().then(|| cfg.id.clone()),
            )
            .await?
        {
            Reply::Hello { agent_version, .. } => {
                eprintln!(
                    "cove-vm: engine started at {spawned_ms:.1} ms, agent port connected at {connected_ms:.1} ms, agent answered at {:.1} ms",
                    t0.elapsed().as_secs_f64() * 1000.0
                );
                Ok((link, agent_version))
            }
            Reply::Error(e) => Err(format!("the agent refused hello: {e}")),
            other => Err(format!("unexpected answer to hello: {other:?}")),
        }
    };
    let booted = tokio::select! {
        r = tokio::time::timeout(BOOT_TIMEOUT, boot) => match r {
            Ok(Ok(ok)) => Ok(ok),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("the agent did not answer within {} s", BOOT_TIMEOUT.as_secs())),
        },
        how = vm.wait() => Err(format!("the VM stopped while booting: {how}")),
        _ = term.recv() => Err("terminated while booting".to_string()),
    };
    let (link, agent_version) = match booted {
        Ok(x) => x,
        Err(reason) => {
            vm.kill();
            let reason = with_console_tail(&dir, reason);
            shared.set(|s| {
                s.state = VmState::Failed;
                s.reason = Some(reason.clone());
            });
            return Ok(VmEnd::BootFailed { reason });
        }
    };
    *shared.link.lock().expect("lock") = Some(link.clone());
    let boot_ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
    shared.set(|s| {
        s.state = VmState::Running;
        s.agent_version = Some(agent_version);
        s.boot_ms = Some(boot_ms);
    });

    let end = loop {
        let cmd = tokio::select! {
            how = vm.wait() => break VmEnd::Crashed {
                reason: with_console_tail(&dir, format!("the VM stopped unexpectedly: {how}")),
            },
            _ = term.recv() => {
                vm.kill();
                let _ = vm.wait().await;
                break VmEnd::Crashed { reason: "terminated (SIGTERM)".to_string() };
            }
            cmd = command_rx.recv() => match cmd {
                Some(c) => c,
                None => continue,
            },
            _ = tokio::time::sleep(POLICY_TICK) => {
                match policy(&cfg, &link, shared.status().state) {
                    Some(Policy::Expire) if cfg.on_expire == Some(OnExpire::Hibernate) => {
                        let snap = dir.join("hibernation");
                        let _ = std::fs::remove_dir_all(&snap);
                        let _ = vm.resume().await;
                        if save_snapshot(vm.as_mut(), &link, &snap, false, &[]).await.is_ok() {
                            vm.kill();
                            let _ = vm.wait().await;
                            upload_hibernation(&cfg, &snap).await;
                            break VmEnd::Hibernated { idle: false, expired: true };
                        }
                        // Not saved: the time to live still ends it.
                        let _ = std::fs::remove_dir_all(&snap);
                        let _ = tokio::time::timeout(Duration::from_secs(2), link.request(&Request::Shutdown)).await;
                        if tokio::time::timeout(STOP_GRACE, vm.wait()).await.is_err() {
                            vm.kill();
                            let _ = vm.wait().await;
                        }
                        break VmEnd::Expired;
                    }
                    Some(Policy::Expire) => {
                        let _ = vm.resume().await;
                        let _ = tokio::time::timeout(Duration::from_secs(2), link.request(&Request::Shutdown)).await;
                        if tokio::time::timeout(STOP_GRACE, vm.wait()).await.is_err() {
                            vm.kill();
                            let _ = vm.wait().await;
                        }
                        break VmEnd::Expired;
                    }
                    Some(Policy::Pause) => {
                        let paused = vm.pause().await;
                        if paused.is_ok() {
                            shared.set(|s| {
                                s.state = VmState::Paused;
                                s.idle = true;
                            });
                        }
                    }
                    Some(Policy::Hibernate) => {
                        let snap = dir.join("hibernation");
                        let _ = std::fs::remove_dir_all(&snap);
                        if save_snapshot(vm.as_mut(), &link, &snap, false, &[]).await.is_ok() {
                            vm.kill();
                            let _ = vm.wait().await;
                            upload_hibernation(&cfg, &snap).await;
                            break VmEnd::Hibernated { idle: true, expired: false };
                        }
                        carry_on(vm.as_mut(), &link, false).await;
                        link.touch(); // do not retry at once
                    }
                    None => {}
                }
                continue;
            }
        };
        match cmd {
            VmCommand::SetExpiry(at, tx) => {
                cfg.expires_at = at;
                let _ = tx.send(Ok(()));
            }
            VmCommand::Pause(tx) => {
                let r = vm.pause().await.map_err(|e| format!("pause: {e}"));
                if r.is_ok() {
                    shared.set(|s| {
                        s.state = VmState::Paused;
                        s.idle = false;
                    });
                }
                let _ = tx.send(r);
            }
            VmCommand::Resume(tx) => {
                let r = vm.resume().await.map_err(|e| format!("resume: {e}"));
                if r.is_ok() {
                    link.touch();
                    shared.set(|s| {
                        s.state = VmState::Running;
                        s.idle = false;
                    });
                }
                let _ = tx.send(r);
            }
            VmCommand::Stop(tx) => {
                shared.set(|s| s.state = VmState::Stopping);
                let _ = vm.resume().await; // a paused guest cannot power itself off
                // Ask the guest to flush and power off; kill it if it does not in time.
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), link.request(&Request::Shutdown))
                        .await;
                if tokio::time::timeout(STOP_GRACE, vm.wait()).await.is_err() {
                    vm.kill();
                    let _ = vm.wait().await;
                }
                let _ = tx.send(Ok(()));
                break VmEnd::Stopped;
            }
            VmCommand::Hibernate(snap, tx) => {
                let paused = shared.status().state == VmState::Paused;
                match save_snapshot(vm.as_mut(), &link, &snap, paused, &[]).await {
                    Ok(()) => {
                        vm.kill();
                        let _ = vm.wait().await;
                        let _ = tx.send(Ok(()));
                        break VmEnd::Hibernated {
                            idle: false,
                            expired: false,
                        };
                    }
                    Err(e) => {
                        carry_on(vm.as_mut(), &link, paused).await;
                        let _ = tx.send(Err(format!("hibernate: {e:#}")));
                    }
                }
            }
            VmCommand::Snapshot(snap, tx) => {
                let paused = shared.status().state == VmState::Paused;
                // The writable disks go into the snapshot too: a clone needs its own copy.
                let disks: Vec<(String, PathBuf)> = cfg
                    .disks
                    .iter()
                    .filter(|d| !d.read_only)
                    .map(|d| (d.serial.clone(), PathBuf::from(&d.path)))
                    .collect();
                let r = save_snapshot(vm.as_mut(), &link, &snap, paused, &disks).await;
                carry_on(vm.as_mut(), &link, paused).await;
                let _ = tx.send(r.map_err(|e| format!("snapshot: {e:#}")));
            }
        }
    };
    if let VmEnd::Crashed { reason } = &end {
        shared.set(|s| {
            s.state = VmState::Failed;
            s.reason = Some(reason.clone());
        });
    }
    // Let the connection that asked for the end hear that it happened.
    let deadline = Instant::now() + Duration::from_secs(2);
    while shared.answering.load(std::sync::atomic::Ordering::SeqCst) > 0
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(end)
}

/// Puts an idle hibernation (and the sandbox disk) in the blob store, as `cove hibernate` does,
/// so any host can resume it. The local copy stays as this host's cache; a failed upload only
/// costs that.
async fn upload_hibernation(cfg: &VmConfig, snap: &Path) {
    let Some(root) = &cfg.blob_store else { return };
    let key = format!("hibernations/{}", cfg.id);
    let r = async {
        let store = cove_store::BlobStore::from_url(root)?;
        for d in cfg.disks.iter().filter(|d| !d.read_only) {
            let name = format!("{key}/disk-{}", d.serial);
            store.upload_file(&name, Path::new(&d.path), true).await?;
        }
        store.upload_dir(&key, snap).await
    }
    .await;
    if let Err(e) = r {
        eprintln!("cove-vm: the idle hibernation stays local: {e}");
    }
}

/// After a snapshot (or a failed one), puts the sandbox back as it was: vCPUs running so the
/// agent can take the thaw, the link thawed, then paused again if it was paused. Nothing here
/// waits without a limit.
async fn carry_on(vm: &mut dyn engine::RunningVm, link: &proxy::Link, paused: bool) {
    let _ = vm.resume().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), link.thaw()).await;
    if paused {
        let _ = vm.pause().await;
    }
}

/// Quiesces the agent link, stops the vCPUs and saves the VM into `snap`, with copies of
/// `disks` (serial, path) as `disk-SERIAL`. Written as `snap.tmp`, synced, then renamed, so a crash
/// leaves no half snapshot. The vCPUs stay stopped and the agent frozen.
async fn save_snapshot(
    vm: &mut dyn engine::RunningVm,
    link: &proxy::Link,
    snap: &Path,
    paused: bool,
    disks: &[(String, PathBuf)],
) -> anyhow::Result<()> {
    if paused {
        vm.resume().await?; // the agent must run to answer the freeze
    }
    match tokio::time::timeout(Duration::from_secs(5), link.freeze()).await {
        Ok(Ok(Reply::Ok)) => {}
        Ok(Ok(other)) => anyhow::bail!("the agent refused to freeze: {other:?}"),
        Ok(Err(e)) => anyhow::bail!("freezing the agent: {e}"),
        Err(_) => anyhow::bail!("the agent did not freeze within 5 s"),
    }
    vm.pause().await?;
    let tmp = snap.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let saved = async {
        let mut m = vm.save(&tmp).await?;
        for (serial, path) in disks {
            let name = format!("disk-{serial}");
            let sum = snapshot::copy_sparse(path, &tmp.join(&name))?;
            m.files.insert(name, sum);
        }
        m.write(&tmp)?;
        // What was just written and summed needs no second hashing at its first restore; once
        // the host has sealed the snapshot (made it its own, read-only), only it could change
        // these files, and a change shows in their identity.
        for (name, sum) in &m.files {
            snapshot::remember_verified(&tmp, name, sum);
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = saved {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, snap).with_context(|| format!("renaming {}", tmp.display()))?;
    if let Some(parent) = snap.parent() {
        snapshot::sync_dir(parent)?;
    }
    Ok(())
}

/// How often the time-to-live and idle policies are checked.
const POLICY_TICK: Duration = Duration::from_millis(500);

/// What the sandbox's policies ask for now.
#[derive(Debug, PartialEq, Eq)]
enum Policy {
    Expire,
    Pause,
    Hibernate,
}

fn policy(cfg: &VmConfig, link: &proxy::Link, state: VmState) -> Option<Policy> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if cfg.expires_at.is_some_and(|t| now >= t) {
        return Some(Policy::Expire);
    }
    let limit = Duration::from_secs(cfg.idle_timeout_secs?);
    if state != VmState::Running || link.idle_for() < limit {
        return None;
    }
    match cfg.on_idle.unwrap_or_default() {
        cove_protocol::control::OnIdle::Hibernate => Some(Policy::Hibernate),
        cove_protocol::control::OnIdle::Pause => Some(Policy::Pause),
    }
}

/// `n` random bytes as hex.
fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    // SAFETY: getrandom writes at most `n` bytes into the valid buffer.
    let got = unsafe { libc::getrandom(b.as_mut_ptr().cast(), n, 0) };
    if usize::try_from(got).ok() != Some(n) {
        return String::new();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Appends the last lines of the console log: a failed boot says why there.
fn with_console_tail(dir: &Path, reason: String) -> String {
    let log = std::fs::read(dir.join("console.log")).unwrap_or_default();
    let text = String::from_utf8_lossy(&log[log.len().saturating_sub(2048)..]).into_owned();
    let tail: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = tail[tail.len().saturating_sub(5)..].join(" | ");
    if tail.is_empty() {
        reason
    } else {
        format!("{reason}; console: {tail}")
    }
}

async fn connect_agent(path: &Path) -> Result<UnixStream, String> {
    loop {
        match UnixStream::connect(path).await {
            Ok(c) => return Ok(c),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(e) => return Err(format!("connecting to {}: {e}", path.display())),
        }
    }
}

async fn handle_control(shared: Arc<Shared>, conn: UnixStream) {
    let (r, mut w) = conn.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    // One request line, capped: the control socket is local but still parsed with care.
    match (&mut r).take(64 * 1024).read_line(&mut line).await {
        Ok(0) | Err(_) => return,
        Ok(_) => {}
    }
    let req: ControlRequest = match serde_json::from_str(line.trim()) {
        Ok(r) => r,
        Err(e) => {
            let _ = respond(
                &mut w,
                &ControlResponse::Error {
                    message: format!("bad control request: {e}"),
                },
            )
            .await;
            return;
        }
    };
    match req {
        ControlRequest::Status => {
            let _ = respond(
                &mut w,
                &ControlResponse::Ok {
                    status: shared.status(),
                },
            )
            .await;
        }
        ControlRequest::WaitReady => {
            let mut rx = shared.changed.subscribe();
            let _ = rx.wait_for(|s| *s != VmState::Booting).await;
            let status = shared.status();
            let resp = if status.state == VmState::Running {
                ControlResponse::Ok { status }
            } else {
                ControlResponse::Error {
                    message: status
                        .reason
                        .unwrap_or_else(|| "the VM is not running".into()),
                }
            };
            let _ = respond(&mut w, &resp).await;
        }
        ControlRequest::Stop => answer(&shared, &mut w, VmCommand::Stop).await,
        ControlRequest::Pause => answer(&shared, &mut w, VmCommand::Pause).await,
        ControlRequest::SetExpiry { expires_at } => {
            answer(&shared, &mut w, |tx| VmCommand::SetExpiry(expires_at, tx)).await;
        }
        ControlRequest::Resume => answer(&shared, &mut w, VmCommand::Resume).await,
        ControlRequest::Snapshot { dir } => {
            answer(&shared, &mut w, |tx| {
                VmCommand::Snapshot(PathBuf::from(dir), tx)
            })
            .await;
        }
        ControlRequest::Hibernate { dir } => {
            answer(&shared, &mut w, |tx| {
                VmCommand::Hibernate(PathBuf::from(dir), tx)
            })
            .await;
        }
        ControlRequest::Attach => {
            let link = shared.link.lock().expect("lock").clone();
            let Some(link) = link else {
                let _ = respond(
                    &mut w,
                    &ControlResponse::Error {
                        message: "the agent is not ready".into(),
                    },
                )
                .await;
                return;
            };
            if respond(
                &mut w,
                &ControlResponse::Ok {
                    status: shared.status(),
                },
            )
            .await
            .is_ok()
            {
                // Bytes the client sent right after its request line are already buffered in
                // `r`, so the frame reader takes the BufReader, not the raw half.
                link.serve_client(r, w).await;
            }
        }
    }
}

/// Runs a command and writes its outcome, holding cove-vm open until the answer is out.
async fn answer<W: AsyncWriteExt + Unpin>(
    shared: &Shared,
    w: &mut W,
    make: impl FnOnce(oneshot::Sender<Result<(), String>>) -> VmCommand,
) {
    use std::sync::atomic::Ordering::SeqCst;
    shared.answering.fetch_add(1, SeqCst);
    let r = command(shared, make).await;
    let _ = respond(w, &result(shared, r)).await;
    shared.answering.fetch_sub(1, SeqCst);
}

/// Hands a command to the supervisor's loop and waits for its outcome.
async fn command(
    shared: &Shared,
    make: impl FnOnce(oneshot::Sender<Result<(), String>>) -> VmCommand,
) -> Result<(), String> {
    if shared.status().state == VmState::Booting {
        return Err("the sandbox is still booting".into());
    }
    let (tx, rx) = oneshot::channel();
    shared
        .commands
        .send(make(tx))
        .await
        .map_err(|_| "the VM is shutting down".to_string())?;
    rx.await
        .map_err(|_| "the VM ended during the operation".to_string())?
}

fn result(shared: &Shared, r: Result<(), String>) -> ControlResponse {
    match r {
        Ok(()) => ControlResponse::Ok {
            status: shared.status(),
        },
        Err(message) => ControlResponse::Error { message },
    }
}

async fn respond<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    resp: &ControlResponse,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(resp).expect("responses serialize");
    line.push(b'\n');
    w.write_all(&line).await?;
    w.flush().await
}
