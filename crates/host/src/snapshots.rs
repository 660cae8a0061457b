//! Snapshots, templates and forks: a snapshot is a saved machine (memory, device state,
//! disks) in the blob store with this host's copy as a cache; a template is its image's
//! snapshot taken right after the agent first answered; a fork is a snapshot restored N times.

use std::path::{Path, PathBuf};

use cove_protocol::control::ControlRequest;

use crate::error::io_err;
use crate::fsutil::{new_id, now_ms};
use crate::spec::{validate_fork, validate_name};
use crate::supervisor::{not_running, this_process};
use cove_state::Limits;

/// In a snapshot's directory: which store records it.
pub(crate) const STORE_FILE: &str = "store";
/// The marker of a snapshot being taken (its record does not exist yet).
pub(crate) const TAKING: &str = "taking";
/// The marker of a fork's temporary snapshot.
pub(crate) const FORKING: &str = "forking";
use crate::{CreateSpec, GUEST_FILE, Host, HostError, SandboxRecord, SnapshotRecord, engine};

impl Host {
    /// N new sandboxes from a running (or paused) one: a snapshot, then N restores, each with its
    /// own disk copy, hostname, machine-id, entropy and a clock set to now. The source keeps
    /// running.
    /// With `limits`, each clone is admitted against its owner's limits as it is recorded; with
    /// `ttl_secs`, each clone is created with that time to live (as a create's `ttl_secs`).
    pub async fn fork(
        &self,
        key: &str,
        count: u32,
        limits: Option<Limits>,
        ttl_secs: Option<u64>,
    ) -> Result<Vec<SandboxRecord>, HostError> {
        // Before the snapshot: a bad setting costs nothing and leaves nothing behind.
        validate_fork(count, ttl_secs)?;
        let source = self.get(key)?;
        // The fork's snapshot lives only until the clones have started: it stays local.
        // A fork's snapshot lives only until its clones start: no quota of snapshots counts it.
        let snap = self
            .take_snapshot(&source.id, None, false, false, None)
            .await?;
        crate::fault::point("fork.snapshot");
        // Clones belong to the source's owner and carry its labels and environment.
        let spec = CreateSpec {
            image: snap.image.clone(),
            name: None,
            cpus: snap.cpus,
            memory_mib: snap.memory_mib,
            disk_mib: snap.disk_mib,
            from_snapshot: Some(snap.id.clone()),
            use_template: false,
            // A clone restores on the engine that took the snapshot.
            engine: Some(source.engine.into()),
            limits,
            ttl_secs,
            owner: source.owner,
            labels: source.labels,
            env: source.env,
            network: Some(source.network),
            ..CreateSpec::default()
        };
        // All clones start at once, then each is awaited: they restore in parallel.
        let mut pending = Vec::new();
        let mut result = Ok(());
        for _ in 0..count {
            match self.begin(&spec, Some(&snap)).await {
                Ok(p) => pending.push(p),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let mut out = Vec::new();
        crate::fault::point("fork.clones");
        for p in pending {
            match self.finish(p).await {
                Ok(r) => out.push(r),
                Err(e) if result.is_ok() => result = Err(e),
                Err(_) => {}
            }
        }
        // The clones hold their own copies of memory and disk: the snapshot is no longer needed.
        let _ = self.remove_snapshot(&snap.id).await;
        if result.is_err() {
            // All or nothing: clones that did start are not left running unannounced.
            for c in &out {
                let _ = self.remove(&c.id, true).await;
            }
        }
        result.map(|()| out)
    }

    /// Takes a snapshot of a running or paused sandbox, which keeps running. `template` marks it
    /// as its image's template (used by `create` for that image). With `limits`, the snapshot
    /// is admitted against its owner's quota of snapshots as it is recorded.
    pub async fn snapshot(
        &self,
        key: &str,
        name: Option<String>,
        template: bool,
        limits: Option<&Limits>,
    ) -> Result<SnapshotRecord, HostError> {
        self.take_snapshot(key, name, template, true, limits).await
    }

    pub(crate) async fn take_snapshot(
        &self,
        key: &str,
        name: Option<String>,
        template: bool,
        store: bool,
        limits: Option<&Limits>,
    ) -> Result<SnapshotRecord, HostError> {
        if let Some(n) = &name {
            validate_name(n)?;
        }
        let rec = self.get(key)?;
        if !rec.state.is_active() {
            return Err(not_running(rec));
        }
        // Refused before any work when the owner is at its quota already (the store admits it
        // again, in the insert's transaction): a tenant at its limit costs the host no saves.
        if let (Some(l), Some(owner)) = (limits, rec.owner.as_deref()) {
            let held = self
                .db
                .list_snapshots()?
                .iter()
                .filter(|s| s.owner.as_deref() == Some(owner) && !s.template)
                .count();
            l.admit_snapshot(owner, u32::try_from(held).unwrap_or(u32::MAX))?;
        }
        let id = new_id();
        let dir = self.home.join("snapshots").join(&id);
        std::fs::create_dir_all(self.home.join("snapshots"))
            .map_err(io_err("creating the snapshot store", &self.home))?;
        // Who is taking it, until its record exists: a directory without a record whose taker
        // is gone is an orphan (see `Host::recover`).
        let taking = self.snapshot_marker(&id, TAKING);
        std::fs::write(&taking, format!("{}\n{}", this_process(), self.db.id()))
            .map_err(io_err("marking the snapshot in progress", &taking))?;
        // Written in the sandbox's directory (all a jailed cove-vm sees), sealed there, then
        // moved into the store (the same filesystem: the Cove home).
        let out = rec.layout().snapshot_out(&id);
        let saved = self
            .vm_op(
                &rec,
                &ControlRequest::Snapshot {
                    dir: out.display().to_string(),
                },
            )
            .await;
        let saved = saved.and_then(|()| {
            crate::jail::Jails::seal(&out)?;
            std::fs::rename(&out, &dir).map_err(io_err("moving the snapshot into the store", &dir))
        });
        if let Err(e) = saved {
            let _ = std::fs::remove_dir_all(&out);
            let _ = std::fs::remove_file(&taking);
            return Err(e);
        }
        crate::fault::point("snapshot.saved");
        let _ = std::fs::write(dir.join(STORE_FILE), self.db.id());
        // The guest the snapshot holds travels with it (templates are matched on it).
        if let Ok(g) = std::fs::read(rec.layout().guest()) {
            let _ = std::fs::write(dir.join(GUEST_FILE), g);
        }
        // Stored in the blob store; the local directory stays as this host's cache.
        let uploaded = if store {
            self.blobs
                .upload_dir(&format!("snapshots/{id}"), &dir)
                .await
        } else {
            Ok(())
        };
        if let Err(e) = uploaded {
            let _ = std::fs::remove_dir_all(&dir);
            let _ = std::fs::remove_file(&taking);
            let _ = self.blobs.delete_prefix(&format!("snapshots/{id}")).await;
            return Err(e.into());
        }
        let snap = SnapshotRecord {
            id,
            name,
            sandbox: Some(rec.id.clone()),
            image: rec.image.clone(),
            image_digest: rec.image_digest.clone(),
            cpus: rec.cpus,
            memory_mib: rec.memory_mib,
            disk_mib: rec.disk_mib,
            created_at: now_ms(),
            dir: dir.display().to_string(),
            template,
            // Templates are the host's; a fork's passing snapshot is nobody's (no tenant lists
            // it, no quota counts it).
            owner: if template || !store {
                None
            } else {
                rec.owner.clone()
            },
        };
        // A fork's snapshot lives only until its clones have started: marked as such, a fork
        // that was interrupted leaves nothing the start-up sweep does not find.
        if !store {
            let _ = std::fs::write(self.snapshot_marker(&snap.id, FORKING), this_process());
        }
        let inserted = self.db.insert_snapshot(&snap, limits);
        let _ = std::fs::remove_file(&taking);
        if let Err(e) = inserted {
            let _ = std::fs::remove_dir_all(&dir);
            let _ = std::fs::remove_file(self.snapshot_marker(&snap.id, FORKING));
            // Refused (a quota, say): the stored copy goes too, or it would outlive any record.
            if store {
                let _ = self
                    .blobs
                    .delete_prefix(&format!("snapshots/{}", snap.id))
                    .await;
            }
            return Err(e.into());
        }
        Ok(snap)
    }

    /// The marker beside snapshot `id`'s directory saying a process is taking it (`TAKING`) or
    /// forking from it (`FORKING`).
    pub(crate) fn snapshot_marker(&self, id: &str, kind: &str) -> PathBuf {
        self.home.join("snapshots").join(format!("{id}.{kind}"))
    }

    /// Boots a sandbox from `image`, snapshots it as the image's template, and removes it.
    /// `create` for that image (with the same cpus, memory and disk) then restores instead of
    /// booting.
    pub async fn template_create(&self, spec: &CreateSpec) -> Result<SnapshotRecord, HostError> {
        let boot = CreateSpec {
            use_template: false,
            from_snapshot: None,
            name: None,
            ..spec.clone()
        };
        let rec = self.create(&boot).await?;
        let r = async {
            // The agent answers while its sandbox root is still being mounted (it finishes in
            // the background); a template must hold the finished root, or every restore would
            // redo that work. Any file request waits for it.
            self.connect(&rec.id).await?.stat("/").await?;
            self.snapshot(&rec.id, None, true, None).await
        }
        .await;
        self.remove(&rec.id, true).await?;
        let snap = r?;
        // One template per image, shape and device set (with a network device or without):
        // the new one replaces older ones.
        let nic = crate::network::snapshot_nic(Path::new(&snap.dir));
        for old in self.db.list_snapshots()? {
            if old.template
                && old.id != snap.id
                && old.image_digest == snap.image_digest
                && (old.cpus, old.memory_mib, old.disk_mib)
                    == (snap.cpus, snap.memory_mib, snap.disk_mib)
                && crate::network::snapshot_nic(Path::new(&old.dir)) == nic
            {
                let _ = self.remove_snapshot(&old.id).await;
            }
        }
        Ok(snap)
    }

    /// The image's template that fits `spec`, if any; or, when the one that fits holds
    /// another guest than this host boots, why it is skipped.
    pub(crate) fn template_for(
        &self,
        spec: &CreateSpec,
    ) -> Result<(Option<SnapshotRecord>, Option<String>), HostError> {
        let digest = self.image(&spec.image)?.digest;
        // A template restores only on the engine that took it (a host whose engine changed
        // boots until a new template is made).
        let engine = engine::choose(spec.engine).ok().map(|c| c.engine);
        let guest = self.guest_identity().ok();
        // A template restores with the device it was taken with: one with a network device
        // for a sandbox that gets one, one without for `none`.
        let nic = self
            .network_for(spec.network.as_ref(), None)
            .ok()
            .map(|p| p.mode)
            == Some(cove_model::NetworkMode::Egress);
        let found = self.db.list_snapshots()?.into_iter().rev().find(|s| {
            s.template
                && s.image_digest == digest
                && (s.cpus, s.memory_mib, s.disk_mib) == (spec.cpus, spec.memory_mib, spec.disk_mib)
                && snapshot_engine(Path::new(&s.dir)).is_some_and(|e| Some(e) == engine)
                && crate::network::snapshot_nic(Path::new(&s.dir)) == nic
        });
        // A template of another guest (taken before a new kernel or agent was installed, or
        // before templates recorded their guest) would bring the old one back: boot instead.
        Ok(match found {
            Some(s) => {
                let theirs = std::fs::read_to_string(Path::new(&s.dir).join(GUEST_FILE)).ok();
                if theirs.is_some() && theirs == guest {
                    (Some(s), None)
                } else {
                    let why = format!(
                        "template {} holds another guest kernel or agent than this host boots \
                         (remake it: cove template create)",
                        s.id
                    );
                    (None, Some(why))
                }
            }
            None => (None, None),
        })
    }

    /// Fetches a snapshot from the blob store when this host has no cached copy.
    /// [`Host::ensure_local`], then a check by the host of any file of the snapshot whose pass
    /// is not remembered (a jailed restore cannot remember one in the sealed snapshot).
    pub(crate) async fn ready_snapshot(&self, s: &SnapshotRecord) -> Result<(), HostError> {
        self.ensure_local(s).await?;
        self.check_unless_remembered(Path::new(&s.dir)).await
    }

    /// Hashes the snapshot in `dir` as the host unless a pass of its `memory` and `state` as
    /// they are now is remembered: a corrupted one is [`HostError::SnapshotCorrupted`] (422)
    /// before any VM starts, and a good one is remembered (the jailed restore that follows
    /// trusts it).
    pub(crate) async fn check_unless_remembered(&self, dir: &Path) -> Result<(), HostError> {
        if ["memory", "state"]
            .iter()
            .any(|f| cove_store::verified::current(dir, f).is_none())
        {
            self.verify_snapshot(dir).await?;
        }
        Ok(())
    }

    pub(crate) async fn ensure_local(&self, s: &SnapshotRecord) -> Result<(), HostError> {
        let dir = Path::new(&s.dir);
        if !dir.join("manifest.json").is_file() {
            self.blobs
                .download_dir(&format!("snapshots/{}", s.id), dir)
                .await?;
            // Checked once here, as the host, and remembered: the jailed restores that follow
            // cannot record a check in the (sealed) snapshot, and would each hash it again.
            if let Err(e) = self.verify_snapshot(dir).await {
                let _ = std::fs::remove_dir_all(dir);
                return Err(e);
            }
        }
        Ok(())
    }

    /// A snapshot by id, unique id prefix or name.
    pub fn snapshot_record(&self, key: &str) -> Result<SnapshotRecord, HostError> {
        self.db
            .find_snapshot(key)?
            .ok_or_else(|| HostError::NoSuchSnapshot(key.to_string()))
    }

    /// Every snapshot.
    pub fn snapshots(&self) -> Result<Vec<SnapshotRecord>, HostError> {
        Ok(self.db.list_snapshots()?)
    }

    /// Deletes a snapshot and its files.
    pub async fn remove_snapshot(&self, key: &str) -> Result<SnapshotRecord, HostError> {
        let s = self.snapshot_record(key)?;
        self.blobs
            .delete_prefix(&format!("snapshots/{}", s.id))
            .await?;
        // Where the snapshot lives by construction (a recorded path is not trusted for deletion).
        let dir = &self.home.join("snapshots").join(&s.id);
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_err("removing the snapshot", dir)(e));
            }
            _ => {}
        }
        self.db.delete_snapshot(&s.id)?;
        let _ = std::fs::remove_file(self.snapshot_marker(&s.id, FORKING));
        Ok(s)
    }

    /// The snapshot that `owner` (none: local use) named `name`.
    pub fn snapshot_named(
        &self,
        owner: Option<&str>,
        name: &str,
    ) -> Result<SnapshotRecord, HostError> {
        self.db
            .find_snapshot_named(owner, name)?
            .ok_or_else(|| HostError::NoSuchSnapshot(name.to_string()))
    }
}

/// The engine a snapshot directory was taken with (from its manifest), if it is readable.
pub(crate) fn snapshot_engine(dir: &Path) -> Option<cove_model::VmEngine> {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).ok()?).ok()?;
    m["engine"].as_str()?.parse().ok()
}
