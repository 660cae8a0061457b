//! Finding sandboxes again, and making their records say what their processes did: the host's
//! records are the truth only together with the cove-vm processes and files they point at.
//!
//! Every read of a sandbox goes through [`Host::reconcile`]: a cove-vm that ended (on request,
//! for its time to live or idle policy, or by crashing) is recorded with how it ended, and an
//! idle pause cove-vm made on its own is taken over. Each change is an event of its true actor
//! (the time to live, the idle policy, or the reconcile itself).

use std::time::Duration;

use cove_model::{Actor, Reason, SandboxDir, SandboxState};
use cove_protocol::control::{VmEnd, VmState};

use crate::fsutil::now_ms;
use crate::snapshots::{FORKING, STORE_FILE, TAKING};
use crate::supervisor::{live_status, process_alive, vm_alive, vm_end};
use crate::{EventRecord, Host, HostError, SandboxRecord};

/// How long an operation of a process that still runs may keep a sandbox `creating` before its
/// cove-vm exists, or `hibernating`, before the host takes it for abandoned. An operation whose
/// process is gone (killed, crashed) is reconciled at once.
const IN_FLIGHT_LIMIT: Duration = Duration::from_secs(120);

/// How long a move another live process recorded is left to it: its operation may still be
/// going on (a pause recorded, the resume that follows not yet), and this process's marks know
/// nothing of it. Two processes reconcile one sandbox when a CLI or a second coved opens the
/// home; without this, one recorded the other's resume as its own (`reconcile`) move.
const OTHER_OWNER_GRACE: Duration = Duration::from_secs(10);

impl Host {
    /// Every sandbox as recorded, without looking at its VM or changing anything: for samplers
    /// (a reconcile from them would race the operations they only watch).
    pub fn records(&self) -> Result<Vec<SandboxRecord>, HostError> {
        Ok(self.db.list()?)
    }

    /// Every sandbox, each reconciled. One removed meanwhile is left out; one that cannot be
    /// reconciled now is listed as recorded (the next read tries again) rather than failing
    /// the whole listing.
    pub fn list(&self) -> Result<Vec<SandboxRecord>, HostError> {
        let mut out = Vec::new();
        for mut rec in self.db.list()? {
            match self.reconcile(&mut rec) {
                Ok(()) => out.push(rec),
                Err(HostError::NoSuchSandbox(_)) => {}
                Err(e) => {
                    tracing::warn!("reconciling sandbox {}: {e}", rec.id);
                    out.push(rec);
                }
            }
        }
        Ok(out)
    }

    /// What `owner`'s sandboxes hold (all but the stopped and failed): how many, their vCPUs
    /// and memory in MiB, as recorded (a sandbox whose VM died counts until a read reconciles
    /// it; coved reconciles every record when it starts).
    pub fn held_by(&self, owner: &str) -> Result<(u32, u32, u64), HostError> {
        Ok(self.db.held_by(owner)?)
    }

    /// The event log after `seq` (oldest first, at most `limit`), of one owner or sandbox.
    pub fn events(
        &self,
        after: i64,
        owner: Option<&str>,
        sandbox: Option<&str>,
        limit: u32,
    ) -> Result<Vec<EventRecord>, HostError> {
        Ok(self.db.events(after, owner, sandbox, limit)?)
    }

    /// Drops events older than `before_ms` (milliseconds since the epoch): the event log's
    /// retention. Returns how many went.
    pub fn prune_events(&self, before_ms: i64) -> Result<usize, HostError> {
        Ok(self.db.prune_events(before_ms)?)
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

    /// One sandbox by id, name, `owner/name` or unique id prefix.
    pub fn get(&self, key: &str) -> Result<SandboxRecord, HostError> {
        let mut rec = self
            .db
            .find(key)?
            .ok_or_else(|| HostError::NoSuchSandbox(key.to_string()))?;
        self.reconcile(&mut rec)?;
        Ok(rec)
    }

    /// Makes one record agree with its cove-vm: see the module's doc.
    pub(crate) fn reconcile(&self, rec: &mut SandboxRecord) -> Result<(), HostError> {
        self.settle(rec, true)
    }

    /// [`Host::reconcile`]; `wait_for_owner` leaves a record another operation is still
    /// working on (a recent `creating` with no VM yet, a recent `hibernating`) to that
    /// operation. The operation itself settles with `false` when it fails half-way.
    pub(crate) fn settle(
        &self,
        rec: &mut SandboxRecord,
        wait_for_owner: bool,
    ) -> Result<(), HostError> {
        if !rec.state.has_vm() {
            return Ok(());
        }
        let mark = self.ops_mark(&rec.id);
        if wait_for_owner && mark.is_none() {
            return Ok(());
        }
        let in_flight = wait_for_owner
            && rec.op.as_deref().is_some_and(process_alive)
            && now_ms() - rec.updated_at
                < i64::try_from(IN_FLIGHT_LIMIT.as_millis()).unwrap_or(i64::MAX);
        // An operation in progress finishes its own record: a hibernation (its VM reports
        // running while the snapshot is saved, then ends before the upload), a boot or a
        // restore (its VM may still report the state of the one before).
        if in_flight
            && matches!(
                rec.state,
                SandboxState::Hibernating | SandboxState::Creating | SandboxState::Resuming
            )
        {
            return Ok(());
        }
        let other_owner = wait_for_owner
            && rec
                .op
                .as_deref()
                .is_some_and(|op| op != crate::supervisor::this_process() && process_alive(op))
            && now_ms() - rec.updated_at
                < i64::try_from(OTHER_OWNER_GRACE.as_millis()).unwrap_or(i64::MAX);
        if other_owner {
            return Ok(());
        }
        if rec.pid.is_some_and(vm_alive) {
            let Some(st) = live_status(&rec.layout()) else {
                return Ok(());
            };
            if !self.still_unowned(rec, wait_for_owner, mark)? {
                return Ok(());
            }
            let (state, reason, actor) = match st.state {
                // cove-vm paused it by itself for its idle policy: take its word.
                VmState::Paused if st.idle => {
                    (SandboxState::Paused, Some(Reason::Idle), Actor::IdlePolicy)
                }
                VmState::Paused => (SandboxState::Paused, None, Actor::Reconcile),
                // Its agent missed a deadline and a probe: unhealthy until a probe gets an answer
                // (which records the way back: a process that has no mark of its own, a coved
                // just restarted or the CLI, leaves an `unhealthy` record as it is).
                VmState::Running if rec.state == SandboxState::Unhealthy => return Ok(()),
                VmState::Running if rec.state == SandboxState::Running => {
                    match self.unresponsive.get(&rec.id) {
                        Some(why) => (
                            SandboxState::Unhealthy,
                            Some(Reason::Unresponsive(why)),
                            Actor::Reconcile,
                        ),
                        // What its create said of its template stays while it runs.
                        None => (
                            SandboxState::Running,
                            rec.reason
                                .clone()
                                .filter(|r| matches!(r, Reason::TemplateSkipped(_))),
                            Actor::Reconcile,
                        ),
                    }
                }
                // `creating`/`resuming` whose caller went away (an interrupted CLI) but whose
                // VM came up are running sandboxes; so is a hibernation that did not happen.
                VmState::Running => (SandboxState::Running, None, Actor::Reconcile),
                _ => return Ok(()),
            };
            if rec.state != state || rec.reason != reason {
                self.move_to(rec, state, reason, &actor)?;
            }
            return Ok(());
        }
        let end = vm_end(&rec.layout());
        if !self.still_unowned(rec, wait_for_owner, mark)? {
            return Ok(());
        }
        let (state, reason, actor) = match end {
            Some(VmEnd::Hibernated { expired: true, .. }) => (
                SandboxState::Hibernated,
                Some(Reason::ExpiredHibernated),
                Actor::Ttl,
            ),
            Some(VmEnd::Hibernated { idle: true, .. }) => (
                SandboxState::Hibernated,
                Some(Reason::Idle),
                Actor::IdlePolicy,
            ),
            // Saved on request; the caller did not live to record it (or this is that caller,
            // reading the record first).
            Some(VmEnd::Hibernated { idle: false, .. }) => {
                (SandboxState::Hibernated, None, Actor::Reconcile)
            }
            Some(VmEnd::Expired) => (SandboxState::Stopped, Some(Reason::Expired), Actor::Ttl),
            Some(VmEnd::Stopped) => (
                SandboxState::Stopped,
                Some(Reason::Stopped),
                Actor::Reconcile,
            ),
            Some(VmEnd::BootFailed { reason }) => (
                SandboxState::Failed,
                Some(Reason::StartFailed(reason)),
                Actor::Reconcile,
            ),
            Some(VmEnd::Crashed { reason }) => (
                SandboxState::Failed,
                Some(Reason::Crashed(reason)),
                Actor::Reconcile,
            ),
            None if rec.pid.is_none() => (
                SandboxState::Failed,
                Some(Reason::Interrupted(
                    "the host stopped before its VM was started".into(),
                )),
                Actor::Reconcile,
            ),
            None => (
                SandboxState::Failed,
                Some(Reason::Vanished),
                Actor::Reconcile,
            ),
        };
        // A restore that did not come up leaves its hibernation as it was: the sandbox stays
        // hibernated (resumable again), not failed.
        let (state, reason) = match (rec.state, state) {
            (SandboxState::Resuming, SandboxState::Failed)
                if rec.layout().hibernation().join("manifest.json").is_file() =>
            {
                let why = reason.map(|r| r.to_string()).unwrap_or_default();
                (SandboxState::Hibernated, Some(Reason::ResumeFailed(why)))
            }
            other => (other.1, reason),
        };
        // A hibernation the jail wrote is sealed before anything reads it; one that cannot be
        // (it holds a link, say) is refused.
        let (state, reason) = match state {
            // Whatever is at its place (a link included: sealing refuses it).
            SandboxState::Hibernated if rec.layout().hibernation().symlink_metadata().is_ok() => {
                match crate::jail::Jails::seal(&rec.layout().hibernation()) {
                    Ok(()) => (state, reason),
                    Err(e) => {
                        let _ = std::fs::remove_dir_all(rec.layout().hibernation());
                        (SandboxState::Failed, Some(Reason::Crashed(e.to_string())))
                    }
                }
            }
            _ => (state, reason),
        };
        rec.pid = None;
        // The guest RAM of a cove-vm killed outright; nothing restores from it.
        let _ = std::fs::remove_dir_all(SandboxDir::guest_ram_dir(&rec.id));
        self.move_to(rec, state, reason, &actor)
    }

    /// Whether what settle just read of the VM is still settle's to record. An operation of
    /// this process that began or ended since settle's first look (`mark`: a pause, a resume
    /// that woke an idle sandbox) may be what the VM now shows, or have made what it showed
    /// stale: it records its own moves with its own actor, and the next look settles anything
    /// left. (An operation is marked before it touches the VM and unmarked after it records.)
    /// The record is read again too: another look may have recorded a move since `rec` was read.
    fn still_unowned(
        &self,
        rec: &mut SandboxRecord,
        wait_for_owner: bool,
        mark: Option<u64>,
    ) -> Result<bool, HostError> {
        if !wait_for_owner {
            return Ok(true);
        }
        if self.ops_mark(&rec.id) != mark {
            return Ok(false);
        }
        match self.db.find(&rec.id)? {
            Some(fresh)
                if fresh.state == rec.state
                    && fresh.pid == rec.pid
                    && fresh.updated_at == rec.updated_at =>
            {
                Ok(true)
            }
            Some(fresh) => {
                *rec = fresh;
                Ok(false)
            }
            None => Ok(false),
        }
    }

    /// Records a move the process already made. Where the table has no direct move (a VM that
    /// came up and was put away by its idle policy before its creator recorded it running), the
    /// record goes through `running` first, so every event is a move the lifecycle allows.
    fn move_to(
        &self,
        rec: &mut SandboxRecord,
        state: SandboxState,
        reason: Option<Reason>,
        actor: &Actor,
    ) -> Result<(), HostError> {
        if !rec.state.can_move_to(state)
            && rec.state.can_move_to(SandboxState::Running)
            && SandboxState::Running.can_move_to(state)
        {
            rec.state = SandboxState::Running;
            rec.reason = None;
            self.record_as(rec, &Actor::Reconcile)?;
        }
        rec.state = state;
        rec.reason = reason;
        self.record_as(rec, actor)
    }
}

/// How long [`Host::recover`] waits, in all, for boots and restores whose caller is gone.
const RECOVER_WAIT: Duration = Duration::from_secs(60);

/// What [`Host::recover`] found and put right.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Recovered {
    /// Sandboxes on record.
    pub sandboxes: usize,
    /// Sandbox directories without a record, removed (with any cove-vm still running there).
    pub orphan_dirs: Vec<String>,
    /// Snapshot directories without a record whose taker is gone, and the temporary
    /// snapshots of forks that were interrupted: removed.
    pub orphan_snapshots: Vec<String>,
    /// Hibernations that had not reached the blob store: copied there now.
    pub stored: Vec<String>,
    /// Cgroups of sandboxes that are gone: removed.
    pub jail_cgroups: usize,
    /// Users leased to sandboxes that are gone: released.
    pub jail_users: usize,
    /// Networks of sandboxes that are gone or have no VM: removed.
    pub networks: usize,
}

/// What [`Host::store_hibernations`] found.
#[derive(Debug, Default)]
pub struct Stored {
    /// Hibernations copied into the blob store now.
    pub copied: Vec<String>,
    /// Hibernations in the blob store once it ran (copied now or there already).
    pub present: Vec<String>,
}

/// Waits, until `deadline`, for sandbox `rec`'s VM (process `pid`) to be ready or gone.
async fn wait_ready(rec: &SandboxRecord, pid: u32, deadline: tokio::time::Instant) {
    let _ = tokio::time::timeout_at(
        deadline,
        crate::supervisor::control(
            std::path::Path::new(&rec.socket),
            &cove_protocol::control::ControlRequest::WaitReady,
            Some(pid),
        ),
    )
    .await;
}

impl Host {
    /// Waits, until `deadline`, for the VMs still restoring from snapshot directory `snap`
    /// (a sandbox `creating` or `resuming` whose `vm.json` names it) to be ready or gone.
    async fn wait_for_restores_of(&self, snap: &std::path::Path, deadline: tokio::time::Instant) {
        let Ok(all) = self.db.list() else { return };
        for rec in all {
            if !matches!(rec.state, SandboxState::Creating | SandboxState::Resuming) {
                continue;
            }
            let Some(pid) = rec.pid.filter(|p| vm_alive(*p)) else {
                continue;
            };
            let restores_it = crate::fsutil::vm_config(&rec.layout())
                .ok()
                .and_then(|c| c.restore)
                .is_some_and(|r| std::path::Path::new(&r) == snap);
            if restores_it {
                wait_ready(&rec, pid, deadline).await;
            }
        }
    }

    /// Makes the home agree with itself when coved starts: every record reconciled with its
    /// process, and what an interrupted operation left behind (a process killed in the middle
    /// of a create, a fork, a hibernation, a removal) removed or finished.
    pub async fn recover(&self) -> Result<Recovered, HostError> {
        // Boots and restores whose caller is gone finish first (each within its own limit):
        // then their records say how they ended, and no fork's clone still reads its snapshot
        // when the sweep below removes it.
        let deadline = tokio::time::Instant::now() + RECOVER_WAIT;
        for rec in self.db.list()? {
            if matches!(rec.state, SandboxState::Creating | SandboxState::Resuming)
                && let Some(pid) = rec.pid.filter(|p| vm_alive(*p))
            {
                wait_ready(&rec, pid, deadline).await;
            }
        }
        let all = self.list()?;
        let mut out = Recovered {
            sandboxes: all.len(),
            ..Recovered::default()
        };
        let known: std::collections::HashSet<&str> = all.iter().map(|r| r.id.as_str()).collect();
        // Directories without a record. A create writes its record before its directory, so
        // none of these is a create in progress. Only this store's are touched: another
        // store's coved may share the home.
        let me = self.db.id();
        let ours = |store_file: &std::path::Path| {
            std::fs::read_to_string(store_file).is_ok_and(|s| s.trim() == me)
        };
        let sandboxes = self.home.join("sandboxes");
        for e in std::fs::read_dir(&sandboxes)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if known.contains(name.as_str())
                || !ours(&SandboxDir::at(e.path()).store())
                || self.db.find(&name)?.is_some_and(|r| r.id == name)
            {
                continue;
            }
            for pid in vms_in(&e.path()) {
                crate::supervisor::kill_vm(pid).await;
            }
            let _ = std::fs::remove_dir_all(SandboxDir::guest_ram_dir(&name));
            if std::fs::remove_dir_all(e.path()).is_ok() {
                out.orphan_dirs.push(name);
            }
        }
        // Snapshots: directories without a record whose taker is gone, and forks' temporary
        // snapshots whose fork is gone. A marker names its process and its store.
        let snapshots = self.home.join("snapshots");
        let marker = |id: &str, kind: &str| -> Option<(String, String)> {
            let s = std::fs::read_to_string(self.snapshot_marker(id, kind)).ok()?;
            let mut lines = s.lines();
            let op = lines.next()?.trim().to_string();
            let store = lines.next().unwrap_or_default().trim().to_string();
            Some((op, store))
        };
        let taker_alive =
            |id: &str, kind: &str| marker(id, kind).is_some_and(|(op, _)| process_alive(&op));
        for e in std::fs::read_dir(&snapshots)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some((id, kind)) = name.split_once('.') {
                // A marker of ours whose directory and process are both gone.
                if [TAKING, FORKING].contains(&kind)
                    && !snapshots.join(id).exists()
                    && marker(id, kind).is_some_and(|(op, store)| {
                        !process_alive(&op) && (store == me || store.is_empty())
                    })
                {
                    let _ = std::fs::remove_file(e.path());
                }
                continue;
            }
            let recorded = self.db.find_snapshot(&name)?.is_some_and(|s| s.id == name);
            if recorded {
                if snapshots.join(format!("{name}.{FORKING}")).exists()
                    && !taker_alive(&name, FORKING)
                {
                    // Clones still restoring from it finish first: another coved of this home
                    // may have started them after the list above was read (its fork killed
                    // meanwhile).
                    self.wait_for_restores_of(&e.path(), deadline).await;
                    if self.remove_snapshot(&name).await.is_ok() {
                        out.orphan_snapshots.push(name);
                    }
                }
                continue;
            }
            // Not recorded here: ours only when it says so (written once it was saved) or
            // when our taker's marker says so.
            let mine = ours(&e.path().join(STORE_FILE))
                || marker(&name, TAKING).is_some_and(|(_, store)| store == me);
            if !mine || taker_alive(&name, TAKING) {
                continue;
            }
            let _ = self.blobs.delete_prefix(&format!("snapshots/{name}")).await;
            if std::fs::remove_dir_all(e.path()).is_ok() {
                let _ = std::fs::remove_file(self.snapshot_marker(&name, TAKING));
                out.orphan_snapshots.push(name);
            }
        }
        // Snapshots a cove-vm was writing in its sandbox's directory when it or its taker was
        // killed (`snapshot-SID` and its `.tmp`): never sealed, never used.
        for rec in &all {
            // Where the sandbox lives by construction (a recorded path is not trusted for
            // deletion).
            let dir = self.home.join("sandboxes").join(&rec.id);
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(sid) = name.strip_prefix("snapshot-") else {
                    continue;
                };
                let sid = sid.trim_end_matches(".tmp");
                if !taker_alive(sid, TAKING) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        // A wake that finished without its caller: the hibernation is stale (the guest runs
        // and writes its disk), as the wake itself would have removed it. Stale only when older
        // than the VM's config, which a wake rewrites as it starts the VM: an idle hibernation
        // cove-vm has just written (its record not yet settled) is newer.
        for rec in &all {
            let layout = rec.layout();
            let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified());
            let stale = match (
                modified(&layout.hibernation().join("manifest.json")),
                modified(&layout.vm_config()),
            ) {
                (Ok(saved), Ok(started)) => saved < started,
                _ => false,
            };
            if rec.state.is_active() && stale {
                let _ = std::fs::remove_dir_all(layout.hibernation());
                let _ = self
                    .blobs
                    .delete_prefix(&format!("hibernations/{}", rec.id))
                    .await;
            }
        }
        out.stored = self.store_hibernations(all).await?.copied;
        // Jails of sandboxes that are gone. Looked up one by one: a create by another coved
        // sharing the home records its sandbox before it makes the cgroup.
        // A store that cannot answer keeps everything.
        let exists = |id: &str| {
            self.db
                .find(id)
                .map_or(true, |r| r.is_some_and(|r| r.id == id))
        };
        let (cgroups, users) = self.jail.sweep(exists);
        // Networks of sandboxes that are gone or whose VM is (a cove-vm killed outright, a
        // removal interrupted).
        out.networks = cove_state::blocking(|| {
            self.net.sweep(|id| {
                self.db
                    .find(id)
                    .map_or(true, |r| r.is_some_and(|r| r.id == id && r.state.has_vm()))
            })
        });
        out.jail_cgroups = cgroups;
        out.jail_users = users;
        Ok(out)
    }

    /// Puts hibernations that stayed local (an idle one a jailed cove-vm saved, or a copy
    /// that was interrupted or failed) in the blob store: any host must be able to resume
    /// them. coved runs it at start and every few seconds (remembering which are stored, so a
    /// hibernation is looked up in the blob store once, not at every pass).
    pub async fn store_hibernations(&self, all: Vec<SandboxRecord>) -> Result<Stored, HostError> {
        let mut out = Stored::default();
        for mut rec in all {
            if rec.state != SandboxState::Hibernated {
                continue;
            }
            let layout = rec.layout();
            let key = format!("hibernations/{}", rec.id);
            if !layout.hibernation().join("manifest.json").is_file() {
                continue;
            }
            match self.blobs.exists(&format!("{key}/manifest.json")).await {
                Ok(true) => {
                    out.present.push(rec.id);
                    continue;
                }
                Ok(false) => {}
                // Asked again at the next pass, rather than stored again now.
                Err(e) => {
                    tracing::warn!("the blob store cannot say whether {key} is there: {e}");
                    continue;
                }
            }
            let has_disk = layout.disk().symlink_metadata().is_ok();
            // Never through a link a jail could have left in the disk's place.
            if has_disk && let Err(e) = crate::jail::Jails::host_file(&layout.disk()) {
                tracing::warn!("not storing the hibernation of {}: {e}", rec.id);
                continue;
            }
            let stored = async {
                if has_disk {
                    self.blobs
                        .upload_file(&format!("{key}/disk-cove-rw"), &layout.disk(), true)
                        .await?;
                }
                self.blobs.upload_dir(&key, &layout.hibernation()).await
            }
            .await;
            if stored.is_ok() {
                // Read again: a wake may have moved it during the upload.
                if matches!(rec.reason, Some(Reason::NotStored(_)))
                    && let Some(fresh) = self.db.find(&rec.id)?
                    && fresh.id == rec.id
                    && fresh.state == SandboxState::Hibernated
                {
                    rec = fresh;
                    rec.reason = None;
                    self.record_as(&mut rec, &Actor::Reconcile)?;
                }
                out.copied.push(rec.id.clone());
                out.present.push(rec.id);
            }
        }
        Ok(out)
    }
}

/// The cove-vm processes serving sandbox directory `dir` (from their command lines).
fn vms_in(dir: &std::path::Path) -> Vec<u32> {
    let want = dir.as_os_str().as_encoded_bytes();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let is_vm = args.first().is_some_and(|a0| a0.ends_with(b"cove-vm"));
        if is_vm && args.windows(2).any(|w| w[0] == b"--dir" && w[1] == want) {
            out.push(pid);
        }
    }
    out
}
