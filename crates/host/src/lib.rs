//! One host's sandboxes: creating them (a cove-vm each), finding them again, removing them.
//!
//! Everything lives under the Cove home (`COVE_HOME`; `/var/lib/cove` for root,
//! `~/.local/share/cove` otherwise):
//!
//! ```text
//! state.db                     sandboxes (SQLite)
//! kernel/vmlinux               guest kernel
//! kernel/initramfs.cpio        cove-agent as /init
//! images/NAME/rootfs.ext4      image disk, shared read-only
//! images/NAME/image.json       image config (env, workdir, user, cmd)
//! sandboxes/ID/                one sandbox: vm.json, disk.ext4, sockets, logs, exit.json
//! ```
//!
//! The host drives each sandbox only through its cove-vm control socket; it never knows which
//! engine runs it.

pub mod agent;
mod db;
pub mod engine;
pub mod images;
pub use cove_store as store;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cove_protocol::control::{ControlRequest, ControlResponse, DiskConfig, VmConfig, VmState};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

pub use agent::{AgentClient, ClientError};
use db::Db;
pub use db::{ACTOR, EventRecord};
pub use images::{Image, ImageConfig, ImageInfo, normalize};

/// Errors of host operations. Each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// No sandbox has that id, prefix or name.
    #[error("no such sandbox: {0}")]
    NoSuchSandbox(String),
    /// No snapshot has that id, prefix or name.
    #[error("no such snapshot: {0}")]
    NoSuchSnapshot(String),
    /// The image is not installed.
    #[error(
        "no such image: {name} (installed: {installed}); `cove image pull` or `cove image import` it"
    )]
    NoSuchImage {
        /// The name asked for.
        name: String,
        /// What is there.
        installed: String,
    },
    /// The name is in use.
    #[error("the name {0:?} is already in use")]
    NameTaken(String),
    /// A resource setting is out of range.
    #[error("invalid {what}: {value} (allowed: {allowed})")]
    InvalidSetting {
        /// Which setting.
        what: &'static str,
        /// The value given.
        value: String,
        /// The allowed range.
        allowed: &'static str,
    },
    /// The sandbox is not running.
    #[error("sandbox {id} is {state}{}", reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    NotRunning {
        /// The sandbox.
        id: String,
        /// Its state.
        state: String,
        /// Why, if it failed.
        reason: Option<String>,
    },
    /// The sandbox is running and removal was not forced.
    #[error("sandbox {0} is running; stop it first or use `cove rm -f`")]
    StillRunning(String),
    /// A guest asset is missing.
    #[error("{what} not found at {path}; run `make setup` to build it")]
    MissingAsset {
        /// Which asset.
        what: &'static str,
        /// Where it was expected.
        path: String,
    },
    /// A path is too long for a Unix socket.
    #[error(
        "the Cove home is too deep for Unix sockets ({path} is over 100 bytes); set COVE_HOME to a shorter path"
    )]
    SocketPathTooLong {
        /// The socket path.
        path: String,
    },
    /// The VM failed to start.
    #[error("sandbox {id} failed to start: {reason}")]
    StartFailed {
        /// The sandbox.
        id: String,
        /// Why.
        reason: String,
    },
    /// A lifecycle operation failed; the sandbox keeps its previous state.
    #[error("sandbox {id}: {reason}")]
    Operation {
        /// The sandbox.
        id: String,
        /// Why.
        reason: String,
    },
    /// The image is needed by sandboxes or snapshots.
    #[error("image {image} is in use by {users}; remove them first")]
    ImageInUse {
        /// The image asked for.
        image: String,
        /// What uses it.
        users: String,
    },
    /// The image pipeline failed.
    #[error(transparent)]
    Image(#[from] cove_image::ImageError),
    /// The blob store failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The engine cannot run here.
    #[error("{0}")]
    Engine(#[from] engine::EngineError),
    /// The state database is newer than this build.
    #[error(
        "the state database has schema version {found}, newer than this build knows ({known}); upgrade cove"
    )]
    SchemaTooNew {
        /// Version found.
        found: usize,
        /// Versions known.
        known: usize,
    },
    /// The state database failed.
    #[error("state database")]
    Db(#[from] rusqlite::Error),
    /// A file operation failed.
    #[error("{what}: {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Talking to the sandbox failed.
    #[error(transparent)]
    Client(#[from] ClientError),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> HostError {
    let path = path.display().to_string();
    move |source| HostError::Io { what, path, source }
}

/// A sandbox as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SandboxRecord {
    /// 12 hex digits.
    pub id: String,
    /// Optional unique name.
    pub name: Option<String>,
    /// Image name.
    pub image: String,
    /// The image's manifest digest (what its disk is).
    pub image_digest: String,
    /// `creating`, `running`, `stopped` or `failed`.
    pub state: String,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Writable disk in MiB.
    pub disk_mib: u32,
    /// Creation time, milliseconds since the epoch.
    pub created_at: i64,
    /// Engine running it.
    pub engine: String,
    /// Engine acceleration.
    pub accel: String,
    /// Pid of its cove-vm.
    pub pid: Option<u32>,
    /// Its control socket.
    pub socket: String,
    /// Its directory.
    pub dir: String,
    /// Milliseconds from cove-vm start to agent ready.
    pub boot_ms: Option<i64>,
    /// Why it failed or stopped.
    pub reason: Option<String>,
    /// Its owner (coved's tenant); none when created locally.
    pub owner: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Environment every exec in it gets (over the image's).
    pub env: BTreeMap<String, String>,
}

/// A sandbox being started.
#[derive(Debug)]
struct Pending {
    rec: SandboxRecord,
    pid: u32,
}

/// A snapshot as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotRecord {
    /// 12 hex digits.
    pub id: String,
    /// Optional unique name.
    pub name: Option<String>,
    /// The sandbox it was taken from.
    pub sandbox: Option<String>,
    /// Its image.
    pub image: String,
    /// The image's manifest digest.
    pub image_digest: String,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Writable disk in MiB.
    pub disk_mib: u32,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// Its directory.
    pub dir: String,
    /// The template of its image.
    pub template: bool,
    /// Its owner (coved's tenant); none for local snapshots and templates.
    pub owner: Option<String>,
}

/// What to create.
#[derive(Debug, Clone)]
pub struct CreateSpec {
    /// Image name.
    pub image: String,
    /// Optional unique name.
    pub name: Option<String>,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Writable disk in MiB.
    pub disk_mib: u32,
    /// Restore this snapshot (id or name) instead of booting.
    pub from_snapshot: Option<String>,
    /// Restore the image's template when one fits.
    pub use_template: bool,
    /// Stop the sandbox this many seconds after it was created.
    pub ttl_secs: Option<u64>,
    /// Apply `on_idle` after this many seconds without activity.
    pub idle_timeout_secs: Option<u64>,
    /// `pause` or `hibernate` (default `pause`); the next request resumes it.
    pub on_idle: Option<String>,
    /// Owner recorded on the sandbox.
    pub owner: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Environment for every exec.
    pub env: BTreeMap<String, String>,
}

impl Default for CreateSpec {
    fn default() -> Self {
        Self {
            image: "busybox".into(),
            name: None,
            cpus: 1,
            memory_mib: 512,
            disk_mib: 2048,
            from_snapshot: None,
            use_template: true,
            ttl_secs: None,
            idle_timeout_secs: None,
            on_idle: None,
            owner: None,
            labels: BTreeMap::new(),
            env: BTreeMap::new(),
        }
    }
}

/// The default Cove home for this user.
pub fn default_home() -> PathBuf {
    if let Some(h) = std::env::var_os("COVE_HOME") {
        return PathBuf::from(h);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/cove");
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("cove")
}

/// One host's sandboxes.
#[derive(Debug)]
pub struct Host {
    home: PathBuf,
    db: Db,
    blobs: store::BlobStore,
    images: cove_image::Images,
}

impl Host {
    /// Opens the home, creating it if needed.
    pub fn open(home: &Path) -> Result<Self, HostError> {
        // Absolute: every path recorded (sandbox and snapshot directories, the VM's disks and
        // kernel) must mean the same to a process started elsewhere, and a relative home once
        // left `rm`'s "inside the home" check failing and the directory behind.
        let home = &std::path::absolute(home).map_err(io_err("resolving the Cove home", home))?;
        std::fs::create_dir_all(home.join("sandboxes"))
            .map_err(io_err("creating the Cove home", home))?;
        let db = Db::open(&home.join("state.db"))?;
        remove_stale_partials(&home.join("snapshots"));
        let blobs = store::BlobStore::local(home)?;
        Ok(Self {
            home: home.to_path_buf(),
            db,
            images: cove_image::Images::open(home, blobs.clone())?,
            blobs,
        })
    }

    /// The home directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The guest kernel.
    pub fn kernel(&self) -> PathBuf {
        self.home.join("kernel/vmlinux")
    }

    /// The initramfs.
    pub fn initramfs(&self) -> PathBuf {
        self.home.join("kernel/initramfs.cpio")
    }

    /// What identifies the guest this home boots: the sha256 of its kernel and of its initramfs
    /// (`KERNEL-INITRAMFS`, 16 hex digits each). Each sandbox records the identity it runs
    /// (`guest` in its directory: the one it booted, or its snapshot's), snapshots keep it, and a
    /// template only replaces boots while it matches — after a new kernel or agent is installed,
    /// creates boot the new guest instead of restoring the old one. Cached in
    /// `kernel/identity.json`, recomputed when either file's size or modification time changes.
    pub fn guest_identity(&self) -> Result<String, HostError> {
        #[derive(Serialize, serde::Deserialize, PartialEq)]
        struct Cached {
            kernel: String,
            initramfs: String,
            identity: String,
        }
        // Device, inode, size, and modification and change times: copy tools keep a size and
        // an mtime (`cp -p`, `rsync -a`), but a replaced file gets a new inode or ctime.
        let stamp = |p: &Path| -> Result<String, HostError> {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(p).map_err(io_err("reading the guest's files", p))?;
            Ok(format!(
                "{}:{}:{}:{}.{}:{}.{}",
                m.dev(),
                m.ino(),
                m.size(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec()
            ))
        };
        let (kernel, initramfs) = (self.kernel(), self.initramfs());
        let (k, i) = (stamp(&kernel)?, stamp(&initramfs)?);
        let cache = self.home.join("kernel/identity.json");
        if let Some(c) = std::fs::read(&cache)
            .ok()
            .and_then(|b| serde_json::from_slice::<Cached>(&b).ok())
            && c.kernel == k
            && c.initramfs == i
        {
            return Ok(c.identity);
        }
        let identity = format!(
            "{}-{}",
            &sha256_file(&kernel)?[..16],
            &sha256_file(&initramfs)?[..16]
        );
        // Best effort: without the cache the next call hashes again.
        let tmp = cache.with_extension(format!("json.{}.tmp", std::process::id()));
        let c = Cached {
            kernel: k,
            initramfs: i,
            identity: identity.clone(),
        };
        if serde_json::to_vec(&c)
            .ok()
            .is_some_and(|b| std::fs::write(&tmp, b).is_ok())
        {
            let _ = std::fs::rename(&tmp, &cache);
        }
        Ok(identity)
    }

    /// Creates a sandbox and waits until its agent answers. It is restored from
    /// `spec.from_snapshot`, or from the image's template when one fits, or booted.
    pub async fn create(&self, spec: &CreateSpec) -> Result<SandboxRecord, HostError> {
        let from = match &spec.from_snapshot {
            Some(key) => Some(self.snapshot_record(key)?),
            None if spec.use_template => self.template_for(spec)?,
            None => None,
        };
        let explicit = spec.from_snapshot.is_some();
        if let Some(s) = &from {
            self.ensure_local(s).await?;
        }
        let pending = self.begin(spec, from.as_ref())?;
        match self.finish(pending).await {
            // A template that no longer restores (a new QEMU, say) is not the user's problem:
            // boot instead, and say why in the log.
            Err(HostError::StartFailed { id, reason }) if from.is_some() && !explicit => {
                tracing::warn!("template restore failed ({reason}); booting instead");
                let _ = self.remove(&id, true).await;
                let pending = self.begin(spec, None)?;
                self.finish(pending).await
            }
            r => r,
        }
    }

    /// N new sandboxes from a running (or paused) one: a snapshot, then N restores, each with its
    /// own disk copy, hostname, machine-id, entropy and a clock set to now. The source keeps
    /// running.
    pub async fn fork(&self, key: &str, count: u32) -> Result<Vec<SandboxRecord>, HostError> {
        if !(1..=64).contains(&count) {
            return Err(HostError::InvalidSetting {
                what: "count",
                value: count.to_string(),
                allowed: "1 to 64",
            });
        }
        let source = self.get(key)?;
        // The fork's snapshot lives only until the clones have started: it stays local.
        let snap = self.take_snapshot(&source.id, None, false, false).await?;
        // Clones belong to the source's owner and carry its labels and environment.
        let spec = CreateSpec {
            image: snap.image.clone(),
            name: None,
            cpus: snap.cpus,
            memory_mib: snap.memory_mib,
            disk_mib: snap.disk_mib,
            from_snapshot: Some(snap.id.clone()),
            use_template: false,
            owner: source.owner,
            labels: source.labels,
            env: source.env,
            ..CreateSpec::default()
        };
        // All clones start at once, then each is awaited: they restore in parallel.
        let mut pending = Vec::new();
        let mut result = Ok(());
        for _ in 0..count {
            match self.begin(&spec, Some(&snap)) {
                Ok(p) => pending.push(p),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let mut out = Vec::new();
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

    fn begin(
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
        let choice = engine::choose(None)?;
        let id = new_id();
        let dir = self.home.join("sandboxes").join(&id);
        let socket = dir.join("control.sock");
        if dir.join("console.sock").as_os_str().len() > 100 {
            return Err(HostError::SocketPathTooLong {
                path: socket.display().to_string(),
            });
        }
        // The guest it will run: the snapshot's for a restore, this home's for a boot.
        let guest = match from {
            Some(s) => std::fs::read_to_string(Path::new(&s.dir).join(GUEST_FILE)).ok(),
            None => Some(self.guest_identity()?),
        };
        std::fs::create_dir_all(&dir).map_err(io_err("creating the sandbox directory", &dir))?;
        if let Some(g) = guest
            && let Err(e) = std::fs::write(dir.join(GUEST_FILE), g)
        {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(io_err("recording the guest", &dir)(e));
        }
        // A restore keeps the snapshot's machine shape.
        let (cpus, memory_mib, disk_mib) = match from {
            Some(s) => (s.cpus, s.memory_mib, s.disk_mib),
            None => (spec.cpus, spec.memory_mib, spec.disk_mib),
        };
        let mut rec = SandboxRecord {
            id: id.clone(),
            name: spec.name.clone(),
            image: image.name.clone(),
            image_digest: image.digest.clone(),
            state: "creating".into(),
            cpus,
            memory_mib,
            disk_mib,
            created_at: now_ms(),
            engine: choice.engine.clone(),
            accel: choice.accel.clone(),
            pid: None,
            socket: socket.display().to_string(),
            dir: dir.display().to_string(),
            boot_ms: None,
            reason: None,
            owner: spec.owner.clone(),
            labels: spec.labels.clone(),
            env: spec.env.clone(),
        };
        if let Err(e) = self.db.insert(&rec) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        match self.start_vm(&mut rec, &image, &choice, &dir, from, spec) {
            Ok(pid) => Ok(Pending { rec, pid }),
            Err(e) => {
                rec.state = "failed".into();
                rec.reason = Some(e.to_string());
                let _ = self.db.update(&rec);
                Err(e)
            }
        }
    }

    async fn finish(&self, p: Pending) -> Result<SandboxRecord, HostError> {
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
                rec.state = "running".into();
                rec.boot_ms = s.boot_ms.and_then(|v| i64::try_from(v).ok());
                self.db.update(&rec)?;
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
                    reason: exit_reason(&dir).unwrap_or(reason),
                }
            }
        };
        rec.state = "failed".into();
        rec.reason = Some(match &e {
            HostError::StartFailed { reason, .. } => format!("failed to start: {reason}"),
            other => other.to_string(),
        });
        let _ = self.db.update(&rec);
        Err(e)
    }

    fn start_vm(
        &self,
        rec: &mut SandboxRecord,
        image: &Image,
        choice: &engine::EngineChoice,
        dir: &Path,
        from: Option<&SnapshotRecord>,
        policy: &CreateSpec,
    ) -> Result<u32, HostError> {
        let disk = dir.join("disk.ext4");
        match from {
            // The clone's own disk: a sparse copy of the snapshot's (the snapshot stays intact).
            Some(s) => copy_sparse_file(&Path::new(&s.dir).join("disk-cove-rw"), &disk)?,
            None => make_disk(&disk, rec.disk_mib)?,
        }
        let cfg = VmConfig {
            id: rec.id.clone(),
            engine: choice.engine.clone(),
            accel: choice.accel.clone(),
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
            expires_at: policy.ttl_secs.map(|t| unix_now() + t),
            idle_timeout_secs: policy.idle_timeout_secs,
            on_idle: policy.on_idle.clone(),
            blob_store: Some(self.home.join("blobs").display().to_string()),
        };
        write_atomic(
            &dir.join("vm.json"),
            &serde_json::to_vec_pretty(&cfg).expect("serializes"),
        )?;
        let pid = spawn_vm(dir)?;
        rec.pid = Some(pid);
        self.db.update(rec)?;
        Ok(pid)
    }

    /// Takes a snapshot of a running or paused sandbox, which keeps running. `template` marks it
    /// as its image's template (used by `create` for that image).
    pub async fn snapshot(
        &self,
        key: &str,
        name: Option<String>,
        template: bool,
    ) -> Result<SnapshotRecord, HostError> {
        self.take_snapshot(key, name, template, true).await
    }

    async fn take_snapshot(
        &self,
        key: &str,
        name: Option<String>,
        template: bool,
        store: bool,
    ) -> Result<SnapshotRecord, HostError> {
        if let Some(n) = &name {
            validate_name(n)?;
        }
        let rec = self.get(key)?;
        if !matches!(rec.state.as_str(), "running" | "paused") {
            return Err(not_running(rec));
        }
        let id = new_id();
        let dir = self.home.join("snapshots").join(&id);
        std::fs::create_dir_all(self.home.join("snapshots"))
            .map_err(io_err("creating the snapshot store", &self.home))?;
        self.vm_op(
            &rec,
            &ControlRequest::Snapshot {
                dir: dir.display().to_string(),
            },
        )
        .await?;
        // The guest the snapshot holds travels with it (templates are matched on it).
        if let Ok(g) = std::fs::read(Path::new(&rec.dir).join(GUEST_FILE)) {
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
            owner: if template { None } else { rec.owner.clone() },
        };
        if let Err(e) = self.db.insert_snapshot(&snap) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        Ok(snap)
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
            self.snapshot(&rec.id, None, true).await
        }
        .await;
        self.remove(&rec.id, true).await?;
        let snap = r?;
        // One template per image and shape: the new one replaces older ones.
        for old in self.db.list_snapshots()? {
            if old.template
                && old.id != snap.id
                && old.image_digest == snap.image_digest
                && (old.cpus, old.memory_mib, old.disk_mib)
                    == (snap.cpus, snap.memory_mib, snap.disk_mib)
            {
                let _ = self.remove_snapshot(&old.id).await;
            }
        }
        Ok(snap)
    }

    fn template_for(&self, spec: &CreateSpec) -> Result<Option<SnapshotRecord>, HostError> {
        let digest = self.image(&spec.image)?.digest;
        // A template restores only on the engine that took it (a host whose engine changed
        // boots until a new template is made).
        let engine = engine::choose(None).ok().map(|c| c.engine);
        let guest = self.guest_identity().ok();
        let found = self.db.list_snapshots()?.into_iter().rev().find(|s| {
            s.template
                && s.image_digest == digest
                && (s.cpus, s.memory_mib, s.disk_mib) == (spec.cpus, spec.memory_mib, spec.disk_mib)
                && snapshot_engine(Path::new(&s.dir)).is_some_and(|e| Some(e) == engine)
        });
        // A template of another guest (taken before a new kernel or agent was installed, or
        // before templates recorded their guest) would bring the old one back: boot instead.
        Ok(found.filter(|s| {
            let theirs = std::fs::read_to_string(Path::new(&s.dir).join(GUEST_FILE)).ok();
            let same = theirs.is_some() && theirs == guest;
            if !same {
                tracing::warn!(
                    "template {} holds another guest kernel or agent than this host boots; \
                     booting instead (remake it: cove template create)",
                    s.id
                );
            }
            same
        }))
    }

    /// Fetches a snapshot from the blob store when this host has no cached copy.
    async fn ensure_local(&self, s: &SnapshotRecord) -> Result<(), HostError> {
        let dir = Path::new(&s.dir);
        if !dir.join("manifest.json").is_file() {
            self.blobs
                .download_dir(&format!("snapshots/{}", s.id), dir)
                .await?;
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
        self.db.list_snapshots()
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
        Ok(s)
    }

    /// Every sandbox, with vanished cove-vm processes marked `failed`.
    pub fn list(&self) -> Result<Vec<SandboxRecord>, HostError> {
        let mut all = self.db.list()?;
        for rec in &mut all {
            self.reconcile(rec)?;
        }
        Ok(all)
    }

    /// The event log after `seq` (oldest first, at most `limit`), of one owner or sandbox.
    pub fn events(
        &self,
        after: i64,
        owner: Option<&str>,
        sandbox: Option<&str>,
        limit: u32,
    ) -> Result<Vec<EventRecord>, HostError> {
        self.db.events(after, owner, sandbox, limit)
    }

    /// Drops events older than `before_ms` (milliseconds since the epoch): the event log's
    /// retention. Returns how many went.
    pub fn prune_events(&self, before_ms: i64) -> Result<usize, HostError> {
        self.db.prune_events(before_ms)
    }

    /// The sandbox that `owner` (none: local use) named `name`.
    pub fn get_named(&self, owner: Option<&str>, name: &str) -> Result<SandboxRecord, HostError> {
        let mut rec = self
            .db
            .find_named(owner, name)?
            .ok_or_else(|| HostError::NoSuchSandbox(name.to_string()))?;
        self.reconcile(&mut rec)?;
        Ok(rec)
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

    /// One sandbox by id, name, `owner/name` or unique id prefix.
    pub fn get(&self, key: &str) -> Result<SandboxRecord, HostError> {
        let mut rec = self
            .db
            .find(key)?
            .ok_or_else(|| HostError::NoSuchSandbox(key.to_string()))?;
        self.reconcile(&mut rec)?;
        Ok(rec)
    }

    /// Re-attaches: a recorded sandbox whose cove-vm is gone is marked with how it ended.
    fn reconcile(&self, rec: &mut SandboxRecord) -> Result<(), HostError> {
        if !matches!(
            rec.state.as_str(),
            "running" | "creating" | "paused" | "resuming"
        ) {
            return Ok(());
        }
        if rec.pid.is_some_and(vm_alive) {
            // cove-vm may have paused the sandbox itself (idle policy): take its word.
            if let Some(st) = live_status(Path::new(&rec.dir)) {
                let (state, reason) = match st.state {
                    VmState::Paused => ("paused", st.reason),
                    VmState::Running => ("running", None),
                    _ => return Ok(()),
                };
                // `creating`/`resuming` whose caller went away (an interrupted CLI) but whose VM
                // came up are running sandboxes.
                if rec.state != state || rec.reason != reason {
                    rec.state = state.into();
                    rec.reason = reason;
                    self.db.update(rec)?;
                }
            }
            return Ok(());
        }
        if rec.state == "creating" && rec.pid.is_none() && now_ms() - rec.created_at < 60_000 {
            return Ok(()); // another invocation is still creating it
        }
        let reason = exit_reason(Path::new(&rec.dir)).unwrap_or_else(|| {
            "its cove-vm process vanished (killed, or the host rebooted)".into()
        });
        if reason.starts_with("hibernated") {
            // cove-vm saved it and ended (on request, or for the idle policy).
            rec.state = "hibernated".into();
            rec.reason = (reason == "hibernated (idle)").then(|| "idle".to_string());
        } else {
            rec.state = if reason.starts_with("stopped") {
                "stopped"
            } else {
                "failed"
            }
            .into();
            rec.reason = Some(reason);
        }
        rec.pid = None;
        self.db.update(rec)?;
        Ok(())
    }

    /// A client of a running sandbox's agent.
    pub async fn connect(&self, key: &str) -> Result<AgentClient, HostError> {
        let mut rec = self.get(key)?;
        // A sandbox the idle policy put away comes back on the next request.
        if matches!(rec.state.as_str(), "paused" | "hibernated")
            && rec.reason.as_deref() == Some("idle")
        {
            rec = self.resume(&rec.id).await?;
        }
        if rec.state != "running" {
            return Err(HostError::NotRunning {
                id: rec.id,
                state: rec.state,
                reason: rec.reason,
            });
        }
        Ok(AgentClient::connect(Path::new(&rec.socket)).await?)
    }

    /// The image a sandbox was created from.
    pub fn image_of(&self, rec: &SandboxRecord) -> Result<Image, HostError> {
        self.image_by_digest(&rec.image, &rec.image_digest)
    }

    /// Stops a sandbox's guest (flushing its disk) and keeps its files.
    pub async fn stop(&self, key: &str) -> Result<SandboxRecord, HostError> {
        let mut rec = self.get(key)?;
        if let Some(pid) = rec.pid.filter(|p| vm_alive(*p)) {
            let _ = control(Path::new(&rec.socket), &ControlRequest::Stop, Some(pid)).await;
            let deadline = Instant::now() + Duration::from_secs(10);
            while vm_alive(pid) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if vm_alive(pid) {
                kill_vm(pid).await;
            }
            rec.state = "stopped".into();
            rec.reason = Some("stopped".into());
            rec.pid = None;
            self.db.update(&rec)?;
        }
        Ok(rec)
    }

    /// Stops a running sandbox's vCPUs; its memory stays resident.
    pub async fn pause(&self, key: &str) -> Result<SandboxRecord, HostError> {
        let mut rec = self.get(key)?;
        match rec.state.as_str() {
            "paused" => return Ok(rec),
            "running" => {}
            _ => return Err(not_running(rec)),
        }
        self.vm_op(&rec, &ControlRequest::Pause).await?;
        rec.state = "paused".into();
        self.db.update(&rec)?;
        Ok(rec)
    }

    /// Runs a paused sandbox again, or restores a hibernated one (same id, files and processes).
    pub async fn resume(&self, key: &str) -> Result<SandboxRecord, HostError> {
        let mut rec = self.get(key)?;
        match rec.state.as_str() {
            "running" => Ok(rec),
            "paused" => {
                self.vm_op(&rec, &ControlRequest::Resume).await?;
                rec.state = "running".into();
                rec.reason = None;
                self.db.update(&rec)?;
                Ok(rec)
            }
            "hibernated" => {
                let dir = PathBuf::from(&rec.dir);
                let snap = dir.join("hibernation");
                let key = format!("hibernations/{}", rec.id);
                // Another host hibernated it, or the cache is gone: fetch it from the store.
                if !snap.join("manifest.json").is_file() {
                    std::fs::create_dir_all(&dir)
                        .map_err(io_err("creating the sandbox directory", &dir))?;
                    self.blobs.download_dir(&key, &snap).await?;
                }
                let stored_disk = snap.join("disk-cove-rw");
                if stored_disk.is_file() {
                    if dir.join("disk.ext4").is_file() {
                        let _ = std::fs::remove_file(&stored_disk);
                    } else {
                        std::fs::rename(&stored_disk, dir.join("disk.ext4"))
                            .map_err(io_err("placing the sandbox disk", &dir))?;
                    }
                }
                let mut cfg: VmConfig = serde_json::from_slice(
                    &std::fs::read(dir.join("vm.json")).map_err(io_err("reading vm.json", &dir))?,
                )
                .map_err(|e| HostError::Io {
                    what: "parsing vm.json",
                    path: dir.display().to_string(),
                    source: std::io::Error::other(e),
                })?;
                cfg.restore = Some(snap.display().to_string());
                cfg.tsc_khz = engine::tsc_khz(&self.home);
                write_atomic(
                    &dir.join("vm.json"),
                    &serde_json::to_vec_pretty(&cfg).expect("serializes"),
                )?;
                let pid = spawn_vm(&dir)?;
                rec.pid = Some(pid);
                rec.state = "resuming".into();
                self.db.update(&rec)?;
                match control(
                    Path::new(&rec.socket),
                    &ControlRequest::WaitReady,
                    Some(pid),
                )
                .await
                {
                    Ok(s) if s.state == VmState::Running => {
                        rec.state = "running".into();
                        rec.reason = None;
                        self.db.update(&rec)?;
                        // The snapshot is stale from here on (the guest runs and writes its disk).
                        let _ = std::fs::remove_dir_all(&snap);
                        let _ = self.blobs.delete_prefix(&key).await;
                        Ok(rec)
                    }
                    other => {
                        kill_vm(pid).await;
                        let reason = match other {
                            Ok(s) => s.reason.unwrap_or_else(|| format!("{:?}", s.state)),
                            Err(e) => exit_reason(&dir).unwrap_or(e),
                        };
                        // The snapshot is untouched: the sandbox stays hibernated, and says why.
                        rec.state = "hibernated".into();
                        rec.pid = None;
                        rec.reason = Some(format!("resume failed: {reason}"));
                        self.db.update(&rec)?;
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
        if !matches!(rec.state.as_str(), "running" | "paused") {
            return Err(not_running(rec));
        }
        let dir = PathBuf::from(&rec.dir);
        let snap = dir.join("hibernation");
        let _ = std::fs::remove_dir_all(&snap);
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
            if exit_reason(&dir).as_deref() != Some("hibernated") {
                return Err(e);
            }
        }
        if let Some(pid) = rec.pid {
            let deadline = Instant::now() + Duration::from_secs(10);
            while vm_alive(pid) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        // Into the blob store (with the disk), so any host can resume it; the local copy stays
        // as this host's cache.
        let key = format!("hibernations/{}", rec.id);
        let uploaded = async {
            self.blobs
                .upload_file(&format!("{key}/disk-cove-rw"), &dir.join("disk.ext4"), true)
                .await?;
            self.blobs.upload_dir(&key, &snap).await
        }
        .await;
        rec.state = "hibernated".into();
        rec.pid = None;
        rec.reason = uploaded
            .as_ref()
            .err()
            .map(|e| format!("not in the blob store: {e}"));
        self.db.update(&rec)?;
        Ok(rec)
    }

    async fn vm_op(&self, rec: &SandboxRecord, req: &ControlRequest) -> Result<(), HostError> {
        control(Path::new(&rec.socket), req, None)
            .await
            .map(drop)
            .map_err(|reason| HostError::Operation {
                id: rec.id.clone(),
                reason,
            })
    }

    /// Removes a sandbox: its VM, its files and its record. A running one needs `force`.
    pub async fn remove(&self, key: &str, force: bool) -> Result<SandboxRecord, HostError> {
        let rec = self.get(key)?;
        if let Some(pid) = rec.pid.filter(|p| vm_alive(*p)) {
            if !force
                && matches!(
                    rec.state.as_str(),
                    "running" | "paused" | "creating" | "resuming"
                )
            {
                return Err(HostError::StillRunning(rec.id));
            }
            kill_vm(pid).await;
        }
        let _ = self
            .blobs
            .delete_prefix(&format!("hibernations/{}", rec.id))
            .await;
        // Guest RAM of a cove-vm that was killed outright (it removes the file itself otherwise).
        let _ = std::fs::remove_file(format!("/dev/shm/cove-{}.mem", rec.id));
        // Where the sandbox lives by construction (a recorded path is not trusted for deletion).
        let dir = &self.home.join("sandboxes").join(&rec.id);
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_err("removing the sandbox directory", dir)(e));
            }
            _ => {}
        }
        self.db.delete(&rec.id)?;
        Ok(rec)
    }

    /// The file the console log is appended to (rotated to `console.log.1` past 1 MiB).
    pub fn console_log(&self, rec: &SandboxRecord) -> PathBuf {
        Path::new(&rec.dir).join("console.log")
    }

    /// The console log of a sandbox: the rotated part (`console.log.1`), then the current one.
    pub fn logs(&self, key: &str) -> Result<Vec<u8>, HostError> {
        let rec = self.get(key)?;
        let mut out = Vec::new();
        for name in ["console.log.1", "console.log"] {
            let p = Path::new(&rec.dir).join(name);
            match std::fs::read(&p) {
                Ok(b) => out.extend(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("reading the console log", &p)(e)),
            }
        }
        Ok(out)
    }
}

/// Removes snapshot directories a cove-vm left half-written (it was killed mid-snapshot): they
/// are never trusted, only wasted space. Ten minutes old is far past any snapshot in progress.
fn remove_stale_partials(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let partial = p.extension().is_some_and(|x| x == "tmp" || x == "download");
        let stale = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(600));
        if partial && stale {
            let _ = std::fs::remove_dir_all(&p);
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What cove-vm last wrote to `status.json`.
fn live_status(dir: &Path) -> Option<cove_protocol::control::VmStatus> {
    serde_json::from_slice(&std::fs::read(dir.join("status.json")).ok()?).ok()
}

fn not_running(rec: SandboxRecord) -> HostError {
    HostError::NotRunning {
        id: rec.id,
        state: rec.state,
        reason: rec.reason,
    }
}

/// The engine a snapshot directory was taken with (from its manifest), if it is readable.
/// The file, in a sandbox's or snapshot's directory, naming the guest it runs or holds (see
/// [`Host::guest_identity`]).
const GUEST_FILE: &str = "guest";

/// The sha256 of a file, in hex.
fn sha256_file(path: &Path) -> Result<String, HostError> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(io_err("reading the guest's files", path))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(io_err("reading the guest's files", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn snapshot_engine(dir: &Path) -> Option<String> {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).ok()?).ok()?;
    m["engine"].as_str().map(str::to_string)
}

/// Checks a create's settings (resources and policies) without creating anything.
pub fn validate(spec: &CreateSpec) -> Result<(), HostError> {
    let bad = |what, value: String, allowed| HostError::InvalidSetting {
        what,
        value,
        allowed,
    };
    if !(1..=64).contains(&spec.cpus) {
        return Err(bad("cpus", spec.cpus.to_string(), "1 to 64"));
    }
    if !(128..=262_144).contains(&spec.memory_mib) {
        return Err(bad(
            "memory",
            format!("{} MiB", spec.memory_mib),
            "128 to 262144 MiB",
        ));
    }
    if !(64..=1_048_576).contains(&spec.disk_mib) {
        return Err(bad(
            "disk",
            format!("{} MiB", spec.disk_mib),
            "64 to 1048576 MiB",
        ));
    }
    if let Some(p) = &spec.on_idle
        && !matches!(p.as_str(), "pause" | "hibernate")
    {
        return Err(bad("on-idle", p.clone(), "pause or hibernate"));
    }
    if spec.on_idle.is_some() && spec.idle_timeout_secs.is_none() {
        return Err(bad(
            "on-idle",
            "without --idle-timeout".into(),
            "with --idle-timeout SECS",
        ));
    }
    if spec.ttl_secs == Some(0) || spec.idle_timeout_secs == Some(0) {
        return Err(bad("timeout", "0".into(), "at least 1 second"));
    }
    if let Some(n) = &spec.name {
        validate_name(n)?;
    }
    Ok(())
}

/// A sandbox or snapshot name: 1 to 63 of `[A-Za-z0-9_.-]`, not starting with `-` or `.`, and
/// not 12 hex digits (which reads as an id).
pub fn validate_name(n: &str) -> Result<(), HostError> {
    let ok = !n.is_empty()
        && n.len() <= 63
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !n.starts_with(['-', '.'])
        && !(n.len() == 12 && n.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(HostError::InvalidSetting {
            what: "name",
            value: format!("{n:?}"),
            allowed: "1 to 63 of [A-Za-z0-9_.-], not starting with - or ., not 12 hex digits",
        })
    }
}

fn new_id() -> String {
    let mut b = [0u8; 6];
    // SAFETY: getrandom writes at most 6 bytes into the valid buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    assert_eq!(n, 6, "getrandom failed");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Writes a file under a temporary name, syncs it, and renames it into place.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), HostError> {
    let tmp = path.with_extension("tmp");
    let r = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    r.map_err(io_err("writing", path))
}

/// Copies a (sparse) file: a reflink where the filesystem can, holes kept otherwise.
fn copy_sparse_file(from: &Path, to: &Path) -> Result<(), HostError> {
    let out = std::process::Command::new("cp")
        .args(["--reflink=auto", "--sparse=always"])
        .arg(from)
        .arg(to)
        .output()
        .map_err(io_err("copying the snapshot disk", from))?;
    if !out.status.success() {
        return Err(HostError::Io {
            what: "copying the snapshot disk",
            path: from.display().to_string(),
            source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        });
    }
    Ok(())
}

/// A sparse ext4 disk for the sandbox's own changes, holding the overlay's `upper` and `work`
/// directories already (the guest then mounts it without writing first).
fn make_disk(path: &Path, mib: u32) -> Result<(), HostError> {
    let skel = path.with_file_name("disk-skel");
    for d in ["upper", "work"] {
        std::fs::create_dir_all(skel.join(d))
            .map_err(io_err("preparing the sandbox disk", &skel))?;
    }
    let f = std::fs::File::create(path).map_err(io_err("creating the sandbox disk", path))?;
    f.set_len(u64::from(mib) << 20)
        .map_err(io_err("sizing the sandbox disk", path))?;
    drop(f);
    let out = std::process::Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-L",
            "cove-rw",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1,nodiscard,root_owner=0:0",
        ])
        .arg("-d")
        .arg(&skel)
        .arg(path)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(io_err("running mkfs.ext4 (install e2fsprogs)", path))?;
    let _ = std::fs::remove_dir_all(&skel);
    if !out.status.success() {
        return Err(HostError::Io {
            what: "formatting the sandbox disk",
            path: path.display().to_string(),
            source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        });
    }
    Ok(())
}

/// The cove-vm binary: `COVE_VM_BIN`, or beside the running executable.
fn vm_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("COVE_VM_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().unwrap_or(Path::new("."));
    // Test binaries live one level down, in target/*/deps.
    for d in [dir, dir.parent().unwrap_or(dir)] {
        let p = d.join("cove-vm");
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from("cove-vm")
}

/// Starts cove-vm detached (own session, no terminal), so it outlives its caller.
fn spawn_vm(dir: &Path) -> Result<u32, HostError> {
    use std::os::unix::process::CommandExt;
    let log = std::fs::File::create(dir.join("vm.log")).map_err(io_err("creating vm.log", dir))?;
    let bin = vm_binary();
    let mut cmd = std::process::Command::new(&bin);
    cmd.arg("--dir")
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(io_err("creating vm.log", dir))?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe and touches nothing of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(io_err(
        "starting cove-vm (build it with `cargo build`, or set COVE_VM_BIN)",
        &bin,
    ))?;
    let pid = child.id();
    // Reap it whenever it ends, so a long-lived caller keeps no zombie.
    std::thread::spawn(move || child.wait());
    Ok(pid)
}

/// True while `pid` is a live cove-vm (not a zombie, not a recycled pid).
fn vm_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state letter follows the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, r)| r.split_whitespace().next());
    if matches!(state, Some("Z" | "X")) {
        return false;
    }
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|b| *b == 0)
                .next()
                .is_some_and(|a0| a0.ends_with(b"cove-vm"))
        })
        .unwrap_or(false)
}

/// Ends a cove-vm: SIGTERM (it kills its VM), then SIGKILL after a grace period.
async fn kill_vm(pid: u32) {
    let p = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
    if !vm_alive(pid) {
        return;
    }
    let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while vm_alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if vm_alive(pid) {
        let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
        while vm_alive(pid) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Why a cove-vm ended, from its `exit.json`.
fn exit_reason(dir: &Path) -> Option<String> {
    let b = std::fs::read(dir.join("exit.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&b).ok()?;
    v.get("reason")?.as_str().map(str::to_string)
}

/// One control request. Waits for the socket to appear while `pid` lives.
async fn control(
    socket: &Path,
    req: &ControlRequest,
    pid: Option<u32>,
) -> Result<cove_protocol::control::VmStatus, String> {
    let conn = loop {
        match tokio::net::UnixStream::connect(socket).await {
            Ok(c) => break c,
            Err(e) => {
                if pid.is_some_and(vm_alive) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                return Err(format!("cove-vm is not running ({e})"));
            }
        }
    };
    let (r, mut w) = conn.into_split();
    let mut line = serde_json::to_vec(req).expect("serializes");
    line.push(b'\n');
    w.write_all(&line).await.map_err(|e| e.to_string())?;
    let mut resp = String::new();
    BufReader::new(r)
        .read_line(&mut resp)
        .await
        .map_err(|e| e.to_string())?;
    match serde_json::from_str::<ControlResponse>(resp.trim()) {
        Ok(ControlResponse::Ok { status }) => Ok(status),
        Ok(ControlResponse::Error { message }) => Err(message),
        Err(_) => Err("cove-vm ended without answering".into()),
    }
}

/// The status cove-vm reports for a running sandbox.
pub async fn vm_status(rec: &SandboxRecord) -> Result<cove_protocol::control::VmStatus, String> {
    control(Path::new(&rec.socket), &ControlRequest::Status, None).await
}

/// What a sandbox uses on this host, read from outside the guest (whatever runs in it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Usage {
    /// CPU time of the process that runs the guest (its vCPUs and devices), seconds.
    pub cpu_seconds: f64,
    /// Its resident memory: the guest memory touched so far, plus the VMM's own.
    pub memory_bytes: u64,
    /// The guest's memory size.
    pub memory_limit_bytes: u64,
    /// Blocks the sandbox's writable disk holds on this host.
    pub disk_bytes: u64,
    /// The writable disk's size.
    pub disk_limit_bytes: u64,
}

/// CPU seconds and resident bytes of a process, from `/proc`.
fn process_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Some((ticks as f64 / hz as f64, rss_kb * 1024))
}

impl Host {
    /// CPU, memory and disk a sandbox uses (zero CPU and memory while it has no VM: hibernated,
    /// stopped).
    pub async fn usage(&self, key: &str) -> Result<Usage, HostError> {
        use std::os::unix::fs::MetadataExt as _;
        let rec = self.get(key)?;
        let disk = Path::new(&rec.dir).join("disk.ext4");
        let mut u = Usage {
            memory_limit_bytes: u64::from(rec.memory_mib) << 20,
            disk_limit_bytes: u64::from(rec.disk_mib) << 20,
            disk_bytes: std::fs::metadata(&disk)
                .map(|m| m.blocks() * 512)
                .unwrap_or(0),
            ..Usage::default()
        };
        if matches!(rec.state.as_str(), "running" | "paused")
            && let Ok(st) = vm_status(&rec).await
            && let Some((cpu, rss)) = process_usage(st.vmm_pid.unwrap_or(st.pid))
        {
            u.cpu_seconds = cpu;
            u.memory_bytes = rss;
        }
        Ok(u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_validated() {
        let ok = CreateSpec::default();
        assert!(validate(&ok).is_ok());
        for bad in [
            CreateSpec {
                cpus: 0,
                ..ok.clone()
            },
            CreateSpec {
                cpus: 65,
                ..ok.clone()
            },
            CreateSpec {
                memory_mib: 16,
                ..ok.clone()
            },
            CreateSpec {
                disk_mib: 1,
                ..ok.clone()
            },
            CreateSpec {
                name: Some("../x".into()),
                ..ok.clone()
            },
            CreateSpec {
                name: Some(String::new()),
                ..ok.clone()
            },
            CreateSpec {
                name: Some("0123456789ab".into()),
                ..ok.clone()
            },
        ] {
            let e = validate(&bad).unwrap_err();
            assert!(e.to_string().starts_with("invalid "), "{e}");
        }
    }

    #[test]
    fn ids_are_hex_and_distinct() {
        let a = new_id();
        assert_eq!(a.len(), 12);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, new_id());
    }

    #[test]
    fn a_host_is_shared_across_threads() {
        // coved serves concurrent requests from one Host.
        fn shared<T: Send + Sync>() {}
        shared::<Host>();
    }

    #[tokio::test]
    async fn unknown_sandbox_and_missing_assets_are_clear_errors() {
        let d = tempfile::tempdir().unwrap();
        let host = Host::open(d.path()).unwrap();
        let e = host.get("nope").unwrap_err();
        assert_eq!(e.to_string(), "no such sandbox: nope");
        let e = host.create(&CreateSpec::default()).await.unwrap_err();
        assert!(e.to_string().starts_with("no such image: busybox"), "{e}");
        assert!(
            host.list().unwrap().is_empty(),
            "a refused create leaves no record"
        );
    }
}
