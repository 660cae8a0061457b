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
use crate::supervisor::{live_status, vm_alive, vm_end};
use crate::{EventRecord, Host, HostError, SandboxRecord};

/// How long an operation may keep a sandbox `creating` before its cove-vm exists, or
/// `hibernating` while its VM still runs, before the host takes it for interrupted (the caller
/// was killed) and reconciles it.
const IN_FLIGHT_LIMIT: Duration = Duration::from_secs(120);

impl Host {
    /// Every sandbox, each reconciled.
    pub fn list(&self) -> Result<Vec<SandboxRecord>, HostError> {
        let mut all = self.db.list()?;
        for rec in &mut all {
            self.reconcile(rec)?;
        }
        Ok(all)
    }

    /// What `owner`'s sandboxes hold (all but the stopped and failed): how many, their vCPUs
    /// and memory in MiB, as recorded (a sandbox whose VM died counts until a read reconciles
    /// it; coved reconciles every record when it starts).
    pub fn held_by(&self, owner: &str) -> Result<(u32, u32, u64), HostError> {
        self.db.held_by(owner)
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
        let in_flight = wait_for_owner
            && now_ms() - rec.updated_at
                < i64::try_from(IN_FLIGHT_LIMIT.as_millis()).unwrap_or(i64::MAX);
        // A hibernation in progress finishes its own record (its VM reports running while the
        // snapshot is saved, then ends before the upload).
        if rec.state == SandboxState::Hibernating && in_flight {
            return Ok(());
        }
        if rec.pid.is_some_and(vm_alive) {
            let Some(st) = live_status(&rec.layout()) else {
                return Ok(());
            };
            let (state, reason, actor) = match st.state {
                // cove-vm paused it by itself for its idle policy: take its word.
                VmState::Paused if st.idle => {
                    (SandboxState::Paused, Some(Reason::Idle), Actor::IdlePolicy)
                }
                VmState::Paused => (SandboxState::Paused, None, Actor::Reconcile),
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
        if rec.state == SandboxState::Creating && rec.pid.is_none() && in_flight {
            return Ok(()); // another invocation is still creating it
        }
        let (state, reason, actor) = match vm_end(&rec.layout()) {
            Some(VmEnd::Hibernated { idle: true }) => (
                SandboxState::Hibernated,
                Some(Reason::Idle),
                Actor::IdlePolicy,
            ),
            // Saved on request; the caller did not live to record it (or this is that caller,
            // reading the record first).
            Some(VmEnd::Hibernated { idle: false }) => {
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
        rec.pid = None;
        // The guest RAM of a cove-vm killed outright; nothing restores from it.
        let _ = std::fs::remove_file(SandboxDir::guest_ram(&rec.id));
        self.move_to(rec, state, reason, &actor)
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
            self.db.update(rec, &Actor::Reconcile)?;
        }
        rec.state = state;
        rec.reason = reason;
        self.db.update(rec, actor)
    }
}
