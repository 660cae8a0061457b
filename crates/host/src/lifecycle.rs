//! Creating, stopping, pausing, resuming, hibernating and removing sandboxes. Each operation
//! checks the state it starts from, drives the sandbox's cove-vm over its control socket with
//! a deadline, and records the state it leaves (the store checks the move against the
//! lifecycle's table and writes its event in the same transaction).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cove_model::{Reason, SandboxDir, SandboxState};
use cove_protocol::control::{ControlRequest, DiskConfig, VmConfig, VmEnd, VmState};

use crate::error::io_err;
use crate::fsutil::{copy_sparse_file, make_disk, new_id, now_ms, write_atomic};
use crate::jail;
use crate::record::Pending;
use crate::record::current_actor;
use crate::spec::validate;
use crate::supervisor::{control, failure_text, kill_vm, not_running, spawn_vm, vm_alive, vm_end};
use crate::{CreateSpec, Host, HostError, Image, SandboxRecord, SnapshotRecord, engine};

/// How far in the past a new expiry may lie: a caller's "now" (E2B's `timeout: 0`) reaches the
/// host a moment later. Anything older is a mistake (seconds given as milliseconds, say).
const EXPIRY_SLACK_MS: i64 = 60_000;

/// Refuses an expiry (milliseconds since the epoch) more than [`EXPIRY_SLACK_MS`] before `now`
/// or more than [`MAX_TIMEOUT_SECS`](crate::MAX_TIMEOUT_SECS) after it.
fn check_expiry(at: i64, now: i64) -> Result<(), HostError> {
    let max_ms = i64::try_from(crate::MAX_TIMEOUT_SECS * 1000).expect("ten years fit");
    if (now.saturating_sub(EXPIRY_SLACK_MS)..=now.saturating_add(max_ms)).contains(&at) {
        Ok(())
    } else {
        Err(HostError::InvalidSetting {
            what: "expiry",
            value: format!(
                "{at} ms since the epoch ({} s from now)",
                at.saturating_sub(now) / 1000
            ),
            allowed: format!(
                "from now to 10 years ({} s) from now",
                crate::MAX_TIMEOUT_SECS
            ),
        })
    }
}

impl Host {
    /// Creates a sandbox and waits until its agent answers. It is restored from
    /// `spec.from_snapshot`, or from the image's template when one fits, or booted.
    ///
    /// A template that cannot be used is not the user's problem: the sandbox is booted, and
    /// says so ([`Reason::TemplateSkipped`] on it until its next move, on its `running` event,
    /// and in coved's log).
    pub async fn create(&self, spec: &CreateSpec) -> Result<SandboxRecord, HostError> {
        let (from, mut skipped) = match &spec.from_snapshot {
            Some(key) => (Some(self.snapshot_record(key)?), None),
            None if spec.use_template => self.template_for(spec)?,
            None => (None, None),
        };
        let explicit = spec.from_snapshot.is_some();
        // Here, and checked: a snapshot whose check is not remembered is hashed by the host
        // first (once: the pass is remembered), so a corrupted one is refused before anything
        // starts (`422`), and a template that is corrupted is booted around.
        let from = match from {
            Some(s) => match self.ready_snapshot(&s).await {
                Ok(()) => Some(s),
                Err(e @ HostError::SnapshotCorrupted(_)) if !explicit => {
                    skipped = Some(format!("template {} failed its check: {e}", s.id));
                    None
                }
                Err(e) => return Err(e),
            },
            None => None,
        };
        let boot = |skipped: Option<String>| async move {
            let mut pending = self.begin(spec, None).await?;
            if let Some(why) = skipped {
                tracing::warn!("{why}; booting instead");
                pending.rec.reason = Some(Reason::TemplateSkipped(why));
            }
            self.finish(pending).await
        };
        let Some(from) = from else {
            return boot(skipped).await;
        };
        let pending = self.begin(spec, Some(&from)).await?;
        match self.finish(pending).await {
            // A template that no longer restores (a new QEMU, say): boot instead.
            Err(HostError::StartFailed { id, reason }) if !explicit => {
                let _ = self.remove(&id, true).await;
                boot(Some(format!(
                    "template {} would not restore: {reason}",
                    from.id
                )))
                .await
            }
            r => r,
        }
    }

    pub(crate) async fn begin(
        &self,
        spec: &CreateSpec,
        from: Option<&SnapshotRecord>,
    ) -> Result<Pending, HostError> {
        validate(spec)?;
        let image = match from {
            // A restore runs on exactly the disk its snapshot was taken on.
            Some(s) => self.image_by_digest(&s.image, &s.image_digest)?,
            None => self.image(&spec.image)?,
        };
        for (what, p) in [
            ("guest kernel", self.kernel()),
            ("initramfs", self.initramfs()),
        ] {
            if !p.is_file() {
                return Err(HostError::MissingAsset {
                    what,
                    path: p.display().to_string(),
                });
            }
        }
        // A restore runs on the engine that took its snapshot, unless told otherwise.
        let requested = spec.engine.or_else(|| {
            from.and_then(|s| crate::snapshots::snapshot_engine(Path::new(&s.dir)))
                .map(Into::into)
        });
        let choice = engine::choose(requested)?;
        let id = new_id();
        let layout = SandboxDir::new(&self.home, &id);
        let dir = layout.path().to_path_buf();
        let socket = layout.control_socket();
        if layout.console_socket().as_os_str().len() > 100 {
            return Err(HostError::SocketPathTooLong {
                path: socket.display().to_string(),
            });
        }
        // The guest it will run: the snapshot's for a restore, this home's for a boot.
        let guest = match from {
            Some(s) => std::fs::read_to_string(Path::new(&s.dir).join(crate::GUEST_FILE)).ok(),
            None => Some(self.guest_identity()?),
        };
        // A restore gets the network device its snapshot had.
        let network = self.network_for(
            spec.network.as_ref(),
            from.map(|s| crate::network::snapshot_nic(Path::new(&s.dir))),
        )?;
        // A restore keeps the snapshot's machine shape.
        let (cpus, memory_mib, disk_mib) = match from {
            Some(s) => (s.cpus, s.memory_mib, s.disk_mib),
            None => (spec.cpus, spec.memory_mib, spec.disk_mib),
        };
        let now = now_ms();
        let mut rec = SandboxRecord {
            id: id.clone(),
            name: spec.name.clone(),
            image: image.name.clone(),
            image_digest: image.digest.clone(),
            state: SandboxState::Creating,
            cpus,
            memory_mib,
            disk_mib,
            created_at: now,
            engine: choice.engine,
            accel: choice.accel,
            pid: None,
            socket: socket.display().to_string(),
            dir: dir.display().to_string(),
            boot_ms: None,
            reason: None,
            owner: spec.owner.clone(),
            labels: spec.labels.clone(),
            env: spec.env.clone(),
            network,
            updated_at: now,
            op: None,
            expires_at: spec
                .ttl_secs
                .map(|t| now.saturating_add(i64::try_from(t).unwrap_or(i64::MAX / 2_000) * 1000)),
        };
        // The record first, then the directory: a directory without a record is then always
        // an orphan (the start-up sweep removes it), and a record without its directory is a
        // create that was interrupted (reconciled as such).
        rec.op = Some(crate::supervisor::this_process().to_string());
        self.db
            .insert(&rec, &current_actor(), spec.limits.as_ref())?;
        crate::fault::point("create.recorded");
        let started = async {
            std::fs::create_dir_all(&dir)
                .map_err(io_err("creating the sandbox directory", &dir))?;
            std::fs::write(layout.store(), self.db.id())
                .map_err(io_err("recording the store", &dir))?;
            if let Some(g) = guest {
                std::fs::write(layout.guest(), g).map_err(io_err("recording the guest", &dir))?;
            }
            self.start_vm(&mut rec, &image, &choice, &dir, from, spec)
                .await
        }
        .await;
        match started {
            Ok(pid) => {
                crate::fault::point("create.spawned");
                Ok(Pending { rec, pid })
            }
            Err(e) => {
                rec.state = SandboxState::Failed;
                rec.reason = Some(Reason::StartFailed(e.to_string()));
                let _ = self.record(&mut rec);
                Err(e)
            }
        }
    }

    pub(crate) async fn finish(&self, p: Pending) -> Result<SandboxRecord, HostError> {
        let Pending { mut rec, pid } = p;
        let dir = PathBuf::from(&rec.dir);
        let status = control(
            Path::new(&rec.socket),
            &ControlRequest::WaitReady,
            Some(pid),
        )
        .await;
        let e = match status {
            Ok(s) if s.state == VmState::Running => {
                crate::fault::point("create.ready");
                rec.state = SandboxState::Running;
                rec.boot_ms = s.boot_ms.and_then(|v| i64::try_from(v).ok());
                self.record(&mut rec)?;
                return Ok(rec);
            }
            Ok(s) => HostError::StartFailed {
                id: rec.id.clone(),
                reason: s.reason.unwrap_or_else(|| format!("{:?}", s.state)),
            },
            Err(reason) => {
                kill_vm(pid).await;
                HostError::StartFailed {
                    id: rec.id.clone(),
                    reason: failure_text(&SandboxDir::at(&dir)).unwrap_or(reason),
                }
            }
        };
        rec.state = SandboxState::Failed;
        rec.reason = Some(Reason::StartFailed(match &e {
            HostError::StartFailed { reason, .. } => reason.clone(),
            other => other.to_string(),
        }));
        let _ = self.record(&mut rec);
        Err(e)
    }

    pub(crate) async fn start_vm(
        &self,
        rec: &mut SandboxRecord,
        image: &Image,
        choice: &engine::EngineChoice,
        dir: &Path,
        from: Option<&SnapshotRecord>,
        policy: &CreateSpec,
    ) -> Result<u32, HostError> {
        let disk = SandboxDir::at(dir).disk();
        match from {
            // The clone's own disk: a sparse copy of the snapshot's (the snapshot stays intact).
            Some(s) => copy_sparse_file(&Path::new(&s.dir).join("disk-cove-rw"), &disk).await?,
            None => make_disk(&disk, rec.disk_mib).await?,
        }
        let mut cfg = VmConfig {
            id: rec.id.clone(),
            engine: choice.engine,
            accel: choice.accel,
            kernel: self.kernel().display().to_string(),
            initramfs: self.initramfs().display().to_string(),
            cpus: rec.cpus,
            memory_mib: rec.memory_mib,
            disks: vec![
                DiskConfig {
                    path: image.disk.display().to_string(),
                    read_only: true,
                    serial: "cove-image".into(),
                },
                DiskConfig {
                    path: disk.display().to_string(),
                    read_only: false,
                    serial: "cove-rw".into(),
                },
            ],
            tsc_khz: engine::tsc_khz(&self.home),
            qemu: choice.qemu.clone(),
            restore: from.map(|s| s.dir.clone()),
            clone_of: from.map(|s| s.id.clone()),
            // cove-vm counts in seconds: a partial second still ends within the next one.
            expires_at: rec
                .expires_at
                .map(|ms| u64::try_from(ms).unwrap_or(0).div_ceil(1000)),
            idle_timeout_secs: policy.idle_timeout_secs,
            on_idle: policy.on_idle,
            on_expire: policy.on_expire,
            blob_store: Some(self.blobs.url().to_string()),
            jail: None,
            net: None,
        };
        self.jail.prepare(&mut cfg, dir)?;
        let nic = match from {
            Some(s) => crate::network::snapshot_nic(Path::new(&s.dir)),
            None => rec.network.mode == cove_model::NetworkMode::Egress,
        };
        self.attach_network(&mut cfg, &rec.network, nic).await?;
        write_atomic(
            &SandboxDir::at(dir).vm_config(),
            &serde_json::to_vec_pretty(&cfg).expect("serializes"),
        )?;
        let pid = spawn_vm(dir)?;
        rec.pid = Some(pid);
        if let Err(e) = self.record(rec) {
            // The record is gone or moved on (a removal raced this start): the VM is nobody's.
            kill_vm(pid).await;
            return Err(e);
        }
        Ok(pid)
    }

    /// Stops a sandbox's guest (flushing its disk) and keeps its files.
    pub async fn stop(&self, key: &str) -> Result<SandboxRecord, HostError> {
        let mut rec = self.get(key)?;
        let _busy = self.busy(&rec.id);
        if let Some(pid) = rec.pid.filter(|p| vm_alive(*p)) {
            let _ = control(Path::new(&rec.socket), &ControlRequest::Stop, Some(pid)).await;
            let deadline = Instant::now() + Duration::from_secs(10);
            while vm_alive(pid) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if vm_alive(pid) {
                kill_vm(pid).await;
            }
            rec.state = SandboxState::Stopped;
            rec.reason = Some(Reason::Stopped);
            rec.pid = None;
            self.record(&mut rec)?;
        }
        Ok(rec)
    }

    /// Stops a running sandbox's vCPUs; its memory stays resident.
    pub async fn pause(&self, key: &str) -> Result<SandboxRecord, HostError> {
        let mut rec = self.get(key)?;
        let _busy = self.busy(&rec.id);
        match rec.state {
            SandboxState::Paused => return Ok(rec),
            SandboxState::Running => {}
            _ => return Err(not_running(rec)),
        }
        self.vm_op(&rec, &ControlRequest::Pause).await?;
        crate::fault::point("pause.paused");
        rec.state = SandboxState::Paused;
        self.record(&mut rec)?;
        Ok(rec)
    }

    /// Moves the end of a sandbox's time to live (milliseconds since the epoch; none: it has
    /// none). A sandbox with a VM (running, paused, unhealthy) has its cove-vm told at once (a
    /// time already come ends it within its next policy check); a hibernated one keeps it for
    /// when it wakes. A time more than a minute ago, or further away than
    /// [`MAX_TIMEOUT_SECS`](crate::MAX_TIMEOUT_SECS), is refused (`InvalidSetting`).
    ///
    /// cove-vm, which acts on the time, is told first; `vm.json` (what a wake reads) and the
    /// record follow. So a refusal or a lost cove-vm changes nothing, and a failed write puts
    /// cove-vm back on the old time: the VM, its file and the record never disagree for long.
    pub async fn set_expiry(
        &self,
        key: &str,
        expires_at: Option<i64>,
    ) -> Result<SandboxRecord, HostError> {
        if let Some(at) = expires_at {
            check_expiry(at, now_ms())?;
        }
        let id = self.get(key)?.id;
        // Not beside a wake, which reads the configuration this rewrites.
        let _turn = self.turn(&id).await;
        let mut rec = self.get(&id)?;
        let live = rec.state.is_active() || rec.state == SandboxState::Unhealthy;
        if !live && rec.state != SandboxState::Hibernated {
            return Err(not_running(rec));
        }
        // cove-vm counts in seconds: a partial second still ends within the next one.
        let secs = expires_at.map(|ms| u64::try_from(ms).unwrap_or(0).div_ceil(1000));
        let layout = rec.layout();
        let old = crate::fsutil::vm_config(&layout)?;
        if live {
            self.vm_op(&rec, &ControlRequest::SetExpiry { expires_at: secs })
                .await?;
        }
        let cfg = VmConfig {
            expires_at: secs,
            ..old.clone()
        };
        let persisted = write_atomic(
            &layout.vm_config(),
            &serde_json::to_vec_pretty(&cfg).expect("serializes"),
        )
        .and_then(|()| Ok(self.db.set_expiry(&rec.id, expires_at)?));
        if let Err(e) = persisted {
            // Back to the old time everywhere (a failed atomic write left vm.json as it was;
            // a failed record write did not).
            let _ = write_atomic(
                &layout.vm_config(),
                &serde_json::to_vec_pretty(&old).expect("serializes"),
            );
            if live {
                let undo = ControlRequest::SetExpiry {
                    expires_at: old.expires_at,
                };
                if let Err(u) = self.vm_op(&rec, &undo).await {
                    tracing::warn!("sandbox {}: putting its old expiry back: {u}", rec.id);
                }
            }
            return Err(e);
        }
        rec.expires_at = expires_at;
        Ok(rec)
    }

    /// Runs a paused sandbox again, or restores a hibernated one (same id, files and processes).
    pub async fn resume(&self, key: &str) -> Result<SandboxRecord, HostError> {
        let id = self.get(key)?.id;
        // One at a time: a second wake finds the first one's work done.
        let _turn = self.turn(&id).await;
        let mut rec = self.get(&id)?;
        let _busy = self.busy(&rec.id);
        match rec.state {
            SandboxState::Running => Ok(rec),
            SandboxState::Paused => {
                self.vm_op(&rec, &ControlRequest::Resume).await?;
                rec.state = SandboxState::Running;
                rec.reason = None;
                self.record(&mut rec)?;
                Ok(rec)
            }
            SandboxState::Hibernated => {
                let dir = PathBuf::from(&rec.dir);
                let layout = rec.layout();
                let snap = layout.hibernation();
                let key = format!("hibernations/{}", rec.id);
                // Another host hibernated it, or the cache is gone: fetch it from the store.
                if !snap.join("manifest.json").is_file() {
                    std::fs::create_dir_all(&dir)
                        .map_err(io_err("creating the sandbox directory", &dir))?;
                    self.blobs.download_dir(&key, &snap).await?;
                }
                // What a jail wrote is taken by the host before it is read (sealing is
                // idempotent: a hibernation from the blob store is the host's already).
                jail::Jails::seal(&snap)?;
                // Checked by the host unless its pass is remembered (a hibernation changed
                // behind the record's back, or fetched from the store): a corrupted one is
                // refused (422) and the sandbox stays hibernated, untouched.
                let checked = match self.check_unless_remembered(&snap).await {
                    // This host's copy went bad, the store's is the sandbox's: fetched again.
                    Err(HostError::SnapshotCorrupted(why)) if self.blobs.has(&key).await => {
                        tracing::warn!("sandbox {}: {why}; fetching it again", rec.id);
                        let _ = std::fs::remove_dir_all(&snap);
                        self.blobs.download_dir(&key, &snap).await?;
                        jail::Jails::seal(&snap)?;
                        self.check_unless_remembered(&snap).await
                    }
                    r => r,
                };
                if let Err(e) = checked {
                    // Said on the sandbox, unless its reason says something a resume needs
                    // more (that it is not in the store).
                    if matches!(e, HostError::SnapshotCorrupted(_))
                        && !matches!(rec.reason, Some(Reason::NotStored(_)))
                    {
                        rec.reason = Some(Reason::ResumeFailed(e.to_string()));
                        self.record(&mut rec)?;
                    }
                    return Err(e);
                }
                let stored_disk = snap.join("disk-cove-rw");
                if stored_disk.is_file() {
                    if layout.disk().is_file() {
                        let _ = std::fs::remove_file(&stored_disk);
                    } else {
                        std::fs::rename(&stored_disk, layout.disk())
                            .map_err(io_err("placing the sandbox disk", &dir))?;
                    }
                }
                // The host's own file (a jail cannot replace it; refused if it is not).
                let mut cfg = crate::fsutil::vm_config(&layout)?;
                if cfg.id != rec.id {
                    return Err(HostError::Jail {
                        id: rec.id,
                        reason: "its vm.json names another sandbox".into(),
                    });
                }
                // A time to live that ran out (it hibernated the sandbox) is spent: woken on
                // request, the sandbox runs without one.
                if rec.expires_at.is_some_and(|t| t <= now_ms()) {
                    cfg.expires_at = None;
                    self.db.set_expiry(&rec.id, None)?;
                    rec.expires_at = None;
                }
                cfg.restore = Some(snap.display().to_string());
                cfg.tsc_khz = engine::tsc_khz(&self.home);
                cfg.blob_store = Some(self.blobs.url().to_string());
                let nic = cfg.net.is_some();
                self.jail.prepare(&mut cfg, &dir)?;
                if let Err(e) = self.attach_network(&mut cfg, &rec.network, nic).await {
                    self.vm_ended(&rec.id);
                    return Err(e);
                }
                let spawned = write_atomic(
                    &layout.vm_config(),
                    &serde_json::to_vec_pretty(&cfg).expect("serializes"),
                )
                .and_then(|()| spawn_vm(&dir));
                let pid = match spawned {
                    Ok(pid) => pid,
                    Err(e) => {
                        // Still hibernated: it has no VM, so no network either.
                        self.vm_ended(&rec.id);
                        return Err(e);
                    }
                };
                rec.pid = Some(pid);
                rec.state = SandboxState::Resuming;
                if let Err(e) = self.record(&mut rec) {
                    kill_vm(pid).await;
                    self.vm_ended(&rec.id);
                    return Err(e);
                }
                crate::fault::point("wake.spawned");
                match control(
                    Path::new(&rec.socket),
                    &ControlRequest::WaitReady,
                    Some(pid),
                )
                .await
                {
                    Ok(s) if s.state == VmState::Running => {
                        crate::fault::point("wake.ready");
                        rec.state = SandboxState::Running;
                        rec.reason = None;
                        self.record(&mut rec)?;
                        // The snapshot is stale from here on (the guest runs and writes its disk).
                        let _ = std::fs::remove_dir_all(&snap);
                        let _ = self.blobs.delete_prefix(&key).await;
                        Ok(rec)
                    }
                    other => {
                        kill_vm(pid).await;
                        let reason = match other {
                            Ok(s) => s.reason.unwrap_or_else(|| format!("{:?}", s.state)),
                            Err(e) => failure_text(&layout).unwrap_or(e),
                        };
                        // The snapshot is untouched: the sandbox stays hibernated, and says why.
                        rec.state = SandboxState::Hibernated;
                        rec.pid = None;
                        rec.reason = Some(Reason::ResumeFailed(reason.clone()));
                        self.record(&mut rec)?;
                        Err(HostError::StartFailed { id: rec.id, reason })
                    }
                }
            }
            _ => Err(not_running(rec)),
        }
    }

    /// Saves a running or paused sandbox's whole state beside it and stops its VM: it then costs
    /// only disk, and `resume` brings it back.
    pub async fn hibernate(&self, key: &str) -> Result<SandboxRecord, HostError> {
        let mut rec = self.get(key)?;
        let before = rec.state;
        if !before.is_active() {
            return Err(not_running(rec));
        }
        let _busy = self.busy(&rec.id);
        let layout = rec.layout();
        let snap = layout.hibernation();
        let _ = std::fs::remove_dir_all(&snap);
        // Recorded first: a host killed from here on leaves `hibernating`, which the next
        // reconcile settles from what cove-vm did.
        rec.state = SandboxState::Hibernating;
        self.record(&mut rec)?;
        crate::fault::point("hibernate.recorded");
        let req = ControlRequest::Hibernate {
            dir: snap.display().to_string(),
        };
        if let Err(e) = self.vm_op(&rec, &req).await {
            // The answer can be lost if cove-vm ends first; its exit record says what happened.
            if let Some(pid) = rec.pid {
                let deadline = Instant::now() + Duration::from_secs(10);
                while vm_alive(pid) && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            if !matches!(vm_end(&layout), Some(VmEnd::Hibernated { .. })) {
                if rec.pid.is_some_and(vm_alive) {
                    // cove-vm carries on as it was (it resumes a failed save).
                    rec.state = before;
                    self.record(&mut rec)?;
                } else {
                    self.settle(&mut rec, false)?;
                }
                return Err(e);
            }
        }
        if let Some(pid) = rec.pid {
            let deadline = Instant::now() + Duration::from_secs(10);
            while vm_alive(pid) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // Saved: whatever is left of it must not run on unrecorded.
            kill_vm(pid).await;
        }
        // Everything in its jail ends (a cove-vm that disguised itself included) before the
        // host takes what the jail wrote: the host's and read-only before it is stored.
        self.vm_ended(&rec.id);
        jail::Jails::drop_aliases(layout.path(), "disk.ext4");
        let sealed = jail::Jails::seal(&snap).and_then(|()| jail::Jails::host_file(&layout.disk()));
        if let Err(e) = sealed {
            let _ = std::fs::remove_dir_all(&snap);
            rec.state = SandboxState::Failed;
            rec.pid = None;
            rec.reason = Some(Reason::Crashed(e.to_string()));
            self.record(&mut rec)?;
            return Err(e);
        }
        // Into the blob store (with the disk), so any host can resume it; the local copy stays
        // as this host's cache.
        let key = format!("hibernations/{}", rec.id);
        crate::fault::point("hibernate.saved");
        let uploaded = async {
            self.blobs
                .upload_file(&format!("{key}/disk-cove-rw"), &layout.disk(), true)
                .await?;
            crate::fault::point("hibernate.uploading");
            self.blobs.upload_dir(&key, &snap).await
        }
        .await;
        rec.state = SandboxState::Hibernated;
        rec.pid = None;
        rec.reason = uploaded
            .as_ref()
            .err()
            .map(|e| Reason::NotStored(e.to_string()));
        self.record(&mut rec)?;
        Ok(rec)
    }

    pub(crate) async fn vm_op(
        &self,
        rec: &SandboxRecord,
        req: &ControlRequest,
    ) -> Result<(), HostError> {
        let Err(reason) = control(Path::new(&rec.socket), req, None).await else {
            return Ok(());
        };
        // Whose fault: a guest whose agent is silent (it did not freeze for a snapshot) is
        // marked unresponsive; anything else is the host's.
        // (Only a VM left running can answer a probe: a paused one stays paused.)
        if matches!(
            req,
            ControlRequest::Snapshot { .. } | ControlRequest::Hibernate { .. }
        ) && rec.pid.is_some_and(vm_alive)
            && crate::supervisor::live_status(&rec.layout())
                .is_some_and(|st| st.state == cove_protocol::control::VmState::Running)
            && !crate::agent::answers(Path::new(&rec.socket)).await
        {
            self.unresponsive.mark(&rec.id, reason.clone());
            return Err(HostError::GuestUnresponsive {
                id: rec.id.clone(),
                state: SandboxState::Running,
                reason,
            });
        }
        Err(HostError::Operation {
            id: rec.id.clone(),
            reason,
        })
    }

    /// Removes a sandbox: its VM, its files and its record. A running one needs `force`.
    pub async fn remove(&self, key: &str, force: bool) -> Result<SandboxRecord, HostError> {
        let id = self.get(key)?.id;
        // Not while it is being woken: the wake finishes first (its VM is then killed here).
        let _turn = self.turn(&id).await;
        let rec = self.get(&id)?;
        let _busy = self.busy(&rec.id);
        if let Some(pid) = rec.pid.filter(|p| vm_alive(*p)) {
            if !force && rec.state.has_vm() {
                return Err(HostError::StillRunning(rec.id));
            }
            kill_vm(pid).await;
        }
        let _ = self
            .blobs
            .delete_prefix(&format!("hibernations/{}", rec.id))
            .await;
        // Its cgroup, guest RAM (of a cove-vm killed outright) and user.
        self.jail.removed(&rec.id);
        cove_state::blocking(|| self.net.destroy(&rec.id));
        crate::fault::point("delete.killed");
        // Where the sandbox lives by construction (a recorded path is not trusted for deletion).
        let dir = &self.home.join("sandboxes").join(&rec.id);
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_err("removing the sandbox directory", dir)(e));
            }
            _ => {}
        }
        crate::fault::point("delete.removed");
        self.db.delete(&rec.id, &current_actor())?;
        // Only now: until the record is gone, this removal is the sandbox's operation (a look
        // at it meanwhile would record the VM it killed as a failure).
        self.unresponsive.clear(&rec.id);
        self.forget_ops(&rec.id);
        Ok(rec)
    }

    /// The file the console log is appended to (rotated to `console.log.1` past 1 MiB).
    pub fn console_log(&self, rec: &SandboxRecord) -> PathBuf {
        rec.layout().console_log()
    }

    /// The console log of a sandbox: the rotated part (`console.log.1`), then the current one.
    pub fn logs(&self, key: &str) -> Result<Vec<u8>, HostError> {
        let rec = self.get(key)?;
        let mut out = Vec::new();
        for name in ["console.log.1", "console.log"] {
            let p = Path::new(&rec.dir).join(name);
            // Written by the jail: never through a link it may have left (a link, or anything
            // but a plain file, reads as no log).
            match crate::fsutil::read_untrusted(&p, 4 << 20) {
                Ok(b) => out.extend(b),
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        || e.kind() == std::io::ErrorKind::Other
                        || e.raw_os_error() == Some(libc::ELOOP) => {}
                Err(e) => return Err(io_err("reading the console log", &p)(e)),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_run_from_about_now_to_ten_years_on() {
        let now = 1_700_000_000_000;
        let ten_years = 315_360_000_000;
        for ok in [now, now - 1_000, now - EXPIRY_SLACK_MS, now + ten_years] {
            assert!(check_expiry(ok, now).is_ok(), "{ok}");
        }
        // Seconds given as milliseconds (1970), before the epoch, past ten years.
        for bad in [1_700_000_000, -1, i64::MIN, now + ten_years + 1, i64::MAX] {
            assert!(
                matches!(
                    check_expiry(bad, now),
                    Err(HostError::InvalidSetting { what: "expiry", .. })
                ),
                "{bad}"
            );
        }
    }
}
