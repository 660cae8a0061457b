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
//! sandboxes/ID/                one sandbox (cove_model::SandboxDir): vm.json, disk.ext4,
//!                              sockets, logs, status.json, exit.json
//! ```
//!
//! The host drives each sandbox only through its cove-vm control socket; it never knows which
//! engine runs it. The modules: `spec` (what a create asks for), `record` (what the store
//! keeps), `db` (the store), `supervisor` (one cove-vm seen from the host), `lifecycle` (the
//! operations), `snapshots` (snapshots, templates, forks), `reconcile` (records made to agree
//! with processes), `images`, `agent` (the guest agent's client).

pub mod agent;
pub mod engine;
mod error;
mod fault;
mod fsutil;
pub mod images;
pub mod isolation;
mod jail;
mod lifecycle;
mod network;
mod ports;
pub use ports::PortStream;
mod reconcile;
mod record;
mod scrub;
mod snapshots;
mod spec;
mod supervisor;
pub use cove_store as store;

use std::path::{Path, PathBuf};

use cove_model::{Reason, SandboxState};
use serde::Serialize;

pub use agent::{AgentClient, ClientError};
pub use cove_model::JailReport;
pub use cove_model::{Actor, EventState, SandboxDir};
pub use cove_net::NetError;
pub use cove_state::{EventRecord, Limits, SandboxRecord, SnapshotRecord, StateError, StateStore};
pub use error::HostError;
use error::io_err;
pub(crate) use fsutil::now_ms;
pub use fsutil::open_untrusted;
use fsutil::{remove_stale_partials, sha256_file};
pub use images::{Image, ImageConfig, ImageInfo, normalize};
pub use reconcile::{Recovered, Stored};
pub use record::ACTOR;
pub use spec::{
    CreateSpec, MAX_TIMEOUT_SECS, validate, validate_fork, validate_name, validate_timeout,
};
use supervisor::process_usage;
pub use supervisor::{Usage, vm_status};

/// The file, in a sandbox's or snapshot's directory, naming the guest it runs or holds (see
/// [`Host::guest_identity`]).
pub(crate) const GUEST_FILE: &str = "guest";

pub use cove_model::default_home;

/// One host's sandboxes.
#[derive(Debug)]
pub struct Host {
    home: PathBuf,
    db: Box<dyn StateStore>,
    blobs: store::BlobStore,
    images: cove_image::Images,
    jail: jail::Jails,
    net: cove_net::Networks,
    /// The `net` benchmark's switch (see [`Host::set_user_mode_network`]).
    user_mode_net: std::sync::atomic::AtomicBool,
    /// One wake or network change at a time per sandbox (two requests for a hibernated
    /// sandbox's port must not both start a VM; a policy change must not interleave with the
    /// wake that makes its network).
    turns:
        std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
    /// Sandboxes an operation of this process is changing (pausing, resuming, stopping,
    /// hibernating, removing), with how many: the reconcile leaves their records to those
    /// operations instead of recording what it sees half-way as its own move (or a VM ended on
    /// purpose as a failure).
    busy: std::sync::Mutex<Ops>,
    /// Sandboxes whose agent stopped answering (reported `unhealthy`).
    unresponsive: agent::Unresponsive,
    /// One agent connection per sandbox kept for its ports (see [`Host::connect_for_ports`]).
    /// Each is the VM's process id beside the connection: a wake's new VM gets a new one
    /// even before the old connection is seen to end.
    port_clients: std::sync::Mutex<std::collections::HashMap<String, (Option<u32>, AgentClient)>>,
}

/// The operations of this process, by sandbox: how many are under way, and how many began or
/// ended so far (a reconcile that saw either move while it read the sandbox's VM leaves what it
/// read alone: it may be an operation's doing). An entry goes with its sandbox.
#[derive(Debug, Default)]
struct Ops(std::collections::HashMap<String, OpCount>);

#[derive(Debug, Default, Clone, Copy)]
struct OpCount {
    running: usize,
    turns: u64,
}

/// Marks a sandbox as being changed by an operation of this process until dropped
/// ([`Host::busy`]).
#[derive(Debug)]
pub(crate) struct Busy<'a> {
    host: &'a Host,
    id: String,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut ops = self.host.busy.lock().expect("lock");
        if let Some(c) = ops.0.get_mut(&self.id) {
            c.running = c.running.saturating_sub(1);
            c.turns += 1;
        }
    }
}

impl Host {
    /// Opens the home, creating it if needed, with its own SQLite store (`HOME/state.db`).
    pub fn open(home: &Path) -> Result<Self, HostError> {
        Self::open_with(home, None)
    }

    /// Opens the home with the state store `database` names (`postgres://…` for a PostgreSQL
    /// database several hosts share; a path for a SQLite file), or the home's own.
    pub fn open_with(home: &Path, database: Option<&str>) -> Result<Self, HostError> {
        // Absolute: every path recorded (sandbox and snapshot directories, the VM's disks and
        // kernel) must mean the same to a process started elsewhere, and a relative home once
        // left `rm`'s "inside the home" check failing and the directory behind.
        let home = &std::path::absolute(home).map_err(io_err("resolving the Cove home", home))?;
        std::fs::create_dir_all(home.join("sandboxes"))
            .map_err(io_err("creating the Cove home", home))?;
        let db = match database {
            Some(url) => cove_state::open(url)?,
            None => Box::new(cove_state::SqliteStore::open(&home.join("state.db"))?),
        };
        remove_stale_partials(&home.join("snapshots"));
        // `COVE_BLOBS`: an S3 bucket hosts share (`s3://BUCKET[/PREFIX]`), else the home's
        // own folder.
        let blobs = match std::env::var("COVE_BLOBS").ok().filter(|u| !u.is_empty()) {
            Some(url) => store::BlobStore::from_url(&url)?,
            None => store::BlobStore::local(home)?,
        };
        Ok(Self {
            home: home.to_path_buf(),
            db,
            images: cove_image::Images::open(home, blobs.clone())?,
            blobs,
            jail: jail::Jails::from_env(home),
            net: cove_net::Networks::from_env(home),
            user_mode_net: Default::default(),
            turns: Default::default(),
            busy: Default::default(),
            unresponsive: Default::default(),
            port_clients: Default::default(),
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
        // A file's identity (device, inode, size, modification and change times: copy tools
        // keep a size and an mtime, `cp -p`, `rsync -a`, but a replaced file gets a new inode or
        // ctime), as snapshots' remembered checks use it.
        let stamp = |p: &Path| -> Result<String, HostError> {
            cove_store::verified::identity(p).ok_or_else(|| HostError::Io {
                what: "reading the guest's files",
                path: p.display().to_string(),
                source: std::io::ErrorKind::NotFound.into(),
            })
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

    /// Records a change of `rec` (its state checked against the lifecycle's table) as the
    /// actor of this task (coved sets the caller's key).
    pub(crate) fn record(&self, rec: &mut SandboxRecord) -> Result<(), HostError> {
        self.record_as(rec, &record::current_actor())
    }

    /// Records a change of `rec` as `actor`, naming this process as its writer.
    pub(crate) fn record_as(
        &self,
        rec: &mut SandboxRecord,
        actor: &Actor,
    ) -> Result<(), HostError> {
        rec.op = Some(supervisor::this_process().to_string());
        // What it was before: a record that only restates a sandbox without a VM (a reason
        // added to a hibernation, say) must not take the jail and network a wake of it is
        // making right now.
        // Taken apart only when the stored record is the one the caller read, with a VM: a
        // writer working from an older read (a wake has moved the sandbox since) leaves the
        // new VM's jail and network alone.
        let stored = self.db.find(&rec.id)?;
        let had_vm = stored
            .is_some_and(|r| r.id == rec.id && r.updated_at == rec.updated_at && r.state.has_vm());
        // Recorded without a VM: whatever held its jail and its network goes (the user stays
        // leased) — before the record says so, since whoever reads it may wake the sandbox
        // at once and make them anew.
        if had_vm && !rec.state.has_vm() {
            self.vm_ended(&rec.id);
        }
        self.db.update(rec, actor)?;
        Ok(())
    }

    /// Sandbox `id`'s turn: held while it is woken or its network changed.
    pub(crate) async fn turn(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = self
            .turns
            .lock()
            .expect("lock")
            .entry(id.to_string())
            .or_default()
            .clone();
        m.lock_owned().await
    }

    /// Marks sandbox `id` as being changed by an operation until the guard is dropped.
    pub(crate) fn busy(&self, id: &str) -> Busy<'_> {
        let mut ops = self.busy.lock().expect("lock");
        let c = ops.0.entry(id.to_string()).or_default();
        c.running += 1;
        c.turns += 1;
        Busy {
            host: self,
            id: id.to_string(),
        }
    }

    /// `None` while an operation of this process is changing sandbox `id`; otherwise a mark
    /// that changes as soon as an operation on it begins or ends.
    pub(crate) fn ops_mark(&self, id: &str) -> Option<u64> {
        let c = self
            .busy
            .lock()
            .expect("lock")
            .0
            .get(id)
            .copied()
            .unwrap_or_default();
        (c.running == 0).then_some(c.turns)
    }

    /// Forgets sandbox `id`'s operations (it is removed).
    pub(crate) fn forget_ops(&self, id: &str) {
        self.busy.lock().expect("lock").0.remove(id);
        self.turns.lock().expect("lock").remove(id);
        self.port_clients.lock().expect("lock").remove(id);
    }

    /// This host with its sandboxes started unjailed from here on, as `COVE_JAIL=off` would
    /// (benchmarks measure the jail's cost against it in one run).
    pub fn without_jail(mut self) -> Self {
        self.jail.turn_off("turned off by the caller");
        self
    }

    /// Why sandboxes run without a jail on this host, if they do.
    pub fn jail_off(&self) -> Option<&str> {
        self.jail.off()
    }

    /// Sandbox `rec`'s jail as it is now: none when it was started without one.
    pub fn jail_report(&self, rec: &SandboxRecord) -> Option<JailReport> {
        let cfg = fsutil::vm_config(&rec.layout()).ok()?;
        let pid = rec
            .pid
            .filter(|p| rec.state.has_vm() && supervisor::vm_alive(*p));
        self.jail.report(&cfg, pid)
    }

    /// A client of a running sandbox's agent. Its calls have deadlines; one missed, and the
    /// agent's silence confirmed by a probe, marks the sandbox `unhealthy` (an `unhealthy`
    /// sandbox is still tried: an answer is what brings it back).
    pub async fn connect(&self, key: &str) -> Result<AgentClient, HostError> {
        self.connect_to(self.get(key)?).await
    }

    /// [`Host::connect`] to a sandbox whose record the caller has just read (with
    /// [`Host::get`]): the same, without reading it again.
    pub async fn connect_to(&self, rec: SandboxRecord) -> Result<AgentClient, HostError> {
        let rec = self.ready_for_sessions(rec).await?;
        self.attach(rec).await
    }

    /// [`Host::connect_to`] for a connection to one of the sandbox's ports: the connection
    /// to its agent is kept and shared by every port connection of the sandbox (each is a
    /// session of its own), so a proxied request does not attach to cove-vm again. A kept
    /// connection that has ended (its VM went: a stop, a hibernation) is replaced.
    pub async fn connect_for_ports(&self, rec: SandboxRecord) -> Result<AgentClient, HostError> {
        let rec = self.ready_for_sessions(rec).await?;
        let kept = self
            .port_clients
            .lock()
            .expect("lock")
            .get(&rec.id)
            .cloned();
        if let Some((pid, c)) = kept
            && pid == rec.pid
            && !c.is_closed()
        {
            return Ok(c);
        }
        let (id, pid) = (rec.id.clone(), rec.pid);
        let c = self.attach(rec).await?;
        let mut kept = self.port_clients.lock().expect("lock");
        // A request beside this one may have kept one for the same VM meanwhile: that one
        // stays (this one closes when dropped).
        if let Some((p, k)) = kept.get(&id)
            && *p == pid
            && !k.is_closed()
        {
            return Ok(k.clone());
        }
        // Those of sandboxes whose VM went are forgotten here too.
        kept.retain(|_, (_, c)| !c.is_closed());
        kept.insert(id, (pid, c.clone()));
        Ok(c)
    }

    /// Sandbox `rec`, resumed first when its idle policy put it away; refused unless it takes
    /// sessions.
    async fn ready_for_sessions(&self, mut rec: SandboxRecord) -> Result<SandboxRecord, HostError> {
        // A sandbox the idle policy put away comes back on the next request.
        if matches!(rec.state, SandboxState::Paused | SandboxState::Hibernated)
            && rec.reason == Some(Reason::Idle)
        {
            rec = self.resume(&rec.id).await?;
        }
        if !rec.state.takes_sessions() {
            return Err(HostError::NotRunning {
                id: rec.id,
                state: rec.state,
                reason: rec.reason,
            });
        }
        Ok(rec)
    }

    /// A new connection to sandbox `rec`'s agent.
    async fn attach(&self, rec: SandboxRecord) -> Result<AgentClient, HostError> {
        let watch = agent::Watch {
            id: rec.id.clone(),
            socket: PathBuf::from(&rec.socket),
            marks: self.unresponsive.clone(),
        };
        match AgentClient::connect(&watch.socket).await {
            Ok(c) => Ok(c.watch(watch)),
            Err(e) => {
                if matches!(e, ClientError::Timeout { .. }) && !agent::answers(&watch.socket).await
                {
                    self.unresponsive.mark(&rec.id, e.to_string());
                }
                Err(e.into())
            }
        }
    }

    /// Probes again every sandbox marked unresponsive here or, among `listed` (what the caller
    /// just listed), recorded `unhealthy` (by a coved before a restart, say), all at once: one
    /// whose agent answers is marked no more and recorded `running`; one recorded `unhealthy`
    /// that does not answer is marked here too. coved's watcher calls it every few seconds.
    pub async fn probe_unresponsive(&self, listed: &[SandboxRecord]) {
        let mut ids = self.unresponsive.ids();
        for r in listed {
            if r.state == SandboxState::Unhealthy && !ids.contains(&r.id) {
                ids.push(r.id.clone());
            }
        }
        let mut probes = tokio::task::JoinSet::new();
        for id in ids {
            match self.db.find(&id) {
                Ok(Some(rec)) if rec.state.has_vm() => {
                    probes.spawn(async move {
                        let answers = agent::answers(Path::new(&rec.socket)).await;
                        (rec, answers)
                    });
                }
                Ok(Some(_) | None) => self.unresponsive.clear(&id),
                Err(_) => {}
            }
        }
        while let Some(Ok((mut rec, answers))) = probes.join_next().await {
            if answers {
                self.unresponsive.clear(&rec.id);
                if rec.state == SandboxState::Unhealthy {
                    rec.state = SandboxState::Running;
                    rec.reason = None;
                    if let Err(e) = self.record_as(&mut rec, &cove_model::Actor::Reconcile) {
                        tracing::warn!("sandbox {}: {e}", rec.id);
                    }
                }
            } else if self.unresponsive.get(&rec.id).is_none() {
                let why = match &rec.reason {
                    Some(Reason::Unresponsive(w)) => w.clone(),
                    _ => "no answer to a health check".into(),
                };
                self.unresponsive.mark(&rec.id, why);
            }
        }
    }

    /// The image a sandbox was created from.
    pub fn image_of(&self, rec: &SandboxRecord) -> Result<Image, HostError> {
        self.image_by_digest(&rec.image, &rec.image_digest)
    }

    /// CPU, memory and disk a sandbox uses (zero CPU and memory while it has no VM: hibernated,
    /// stopped).
    pub async fn usage(&self, key: &str) -> Result<Usage, HostError> {
        use std::os::unix::fs::MetadataExt as _;
        let rec = self.get(key)?;
        let disk = rec.layout().disk();
        let mut u = Usage {
            memory_limit_bytes: u64::from(rec.memory_mib) << 20,
            disk_limit_bytes: u64::from(rec.disk_mib) << 20,
            disk_bytes: std::fs::metadata(&disk)
                .map(|m| m.blocks() * 512)
                .unwrap_or(0),
            ..Usage::default()
        };
        if rec.state.is_active()
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
    use crate::fsutil::new_id;

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
