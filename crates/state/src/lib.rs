//! Cove's state store: sandboxes, snapshots, image names and the event log, behind one trait
//! ([`StateStore`]) with two implementations — SQLite, a file in the Cove home (the embedded
//! default), and PostgreSQL (`coved --database postgres://…`), the store several hosts will share. The
//! schema is in `migrations/` (SQL files, one series per dialect); the same test suite runs
//! against both.
//!
//! The store keeps the lifecycle's rules where two writers meet: every state change is checked
//! against the transition table ([`SandboxState::check`]) with the state stored *now*, and
//! written with its event in one transaction.
//!
//! Calls block (a lock, a query, a round trip to the server). On a worker of a multi-threaded
//! tokio runtime each call tells tokio so (`block_in_place`), so the runtime's other tasks move
//! on; the PostgreSQL client, which drives its own runtime, needs that too.

mod postgres;
mod sqlite;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::Path;

use cove_model::{
    Actor, EventState, NetworkPolicy, Reason, SandboxDir, SandboxState, TransitionError,
};
use serde::Serialize;

pub use crate::postgres::PostgresStore;
#[doc(hidden)]
pub use crate::postgres::testing;
pub use crate::sqlite::SqliteStore;

/// What the store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The name is in use (by the same owner).
    #[error("the name {0:?} is already in use")]
    NameTaken(String),
    /// No record has that id.
    #[error("no such sandbox: {0}")]
    NoSuchSandbox(String),
    /// The lifecycle does not allow the move (another writer moved the sandbox first).
    #[error("sandbox {id}: {err}")]
    Transition {
        /// The sandbox.
        id: String,
        /// The move refused.
        err: TransitionError,
    },
    /// The database's schema is newer than this build.
    #[error(
        "the state database has schema version {found}, newer than this build knows ({known}); upgrade cove"
    )]
    SchemaTooNew {
        /// Version found.
        found: usize,
        /// Versions known.
        known: usize,
    },
    /// A value this build cannot read (a corrupt or newer database).
    #[error("state database: {0}")]
    Corrupt(#[from] cove_model::ParseError),
    /// Admitting the sandbox would take its owner past a limit.
    #[error("the {what} quota of tenant {owner} is {max}; {have} in use, {add} more asked for")]
    OverQuota {
        /// Whose.
        owner: String,
        /// Which limit (`sandboxes`, `vCPUs`, `memory (MiB)`).
        what: &'static str,
        /// The limit.
        max: u64,
        /// What the owner holds now.
        have: u64,
        /// What the sandbox would add.
        add: u64,
    },
    /// A number out of the column's range.
    #[error("state database: {0} is out of range")]
    OutOfRange(&'static str),
    /// The `--database` URL names no store this build has.
    #[error("unknown database {0:?}: give a path (SQLite) or postgres://USER@HOST:PORT/DB")]
    UnknownDatabase(String),
    /// SQLite failed.
    #[error("state database (SQLite)")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed.
    #[error("state database (PostgreSQL)")]
    Postgres(#[from] ::postgres::Error),
}

/// The state of one host, or of several sharing a database.
pub trait StateStore: Send + Sync + std::fmt::Debug {
    /// Which store this is (`sqlite:PATH`, `postgres://USER@HOST:PORT/DB`): written beside what
    /// it records on disk, so a home shared by two stores' coveds (the embedded one and one on
    /// PostgreSQL, say) never sweeps the other's files as orphans.
    fn id(&self) -> String;

    /// Records a new sandbox, and its first state as an event of `actor`. With `limits`, the
    /// owner's holdings ([`StateStore::held_by`]) are counted in the same transaction, with
    /// inserts of the same owner serialized, so concurrent creates cannot together pass a
    /// limit each passes alone.
    fn insert(
        &self,
        s: &SandboxRecord,
        actor: &Actor,
        limits: Option<&Limits>,
    ) -> Result<(), StateError>;
    /// Updates state, pid, boot time, reason and writer in one transaction with the event of a
    /// new state (by `actor`), the move checked against the lifecycle's table with the state
    /// stored now. A record that is gone is [`StateError::NoSuchSandbox`].
    fn update(&self, s: &mut SandboxRecord, actor: &Actor) -> Result<(), StateError>;
    /// Forgets a sandbox; its removal is an event of `actor`.
    fn delete(&self, id: &str, actor: &Actor) -> Result<(), StateError>;
    /// Records sandbox `id`'s new network policy, and a `network` event by `actor` naming it.
    fn set_network(
        &self,
        id: &str,
        policy: &NetworkPolicy,
        actor: &Actor,
    ) -> Result<(), StateError>;
    /// Records when sandbox `id`'s time to live ends (none: never).
    fn set_expiry(&self, id: &str, expires_at: Option<i64>) -> Result<(), StateError>;
    /// A sandbox by id, name (when one owner uses it), `owner/name`, or unique id prefix of at
    /// least 4.
    fn find(&self, key: &str) -> Result<Option<SandboxRecord>, StateError>;
    /// The sandbox `owner` (none: the administrator's) named `name`.
    fn find_named(
        &self,
        owner: Option<&str>,
        name: &str,
    ) -> Result<Option<SandboxRecord>, StateError>;
    /// Every sandbox, oldest first.
    fn list(&self) -> Result<Vec<SandboxRecord>, StateError>;
    /// What `owner`'s sandboxes hold (all but the stopped and failed): how many, their vCPUs
    /// and memory (MiB).
    fn held_by(&self, owner: &str) -> Result<(u32, u32, u64), StateError>;
    /// The event log after `seq`, oldest first: everything, or one owner's, or one sandbox's.
    fn events(
        &self,
        after: i64,
        owner: Option<&str>,
        sandbox: Option<&str>,
        limit: u32,
    ) -> Result<Vec<EventRecord>, StateError>;
    /// Drops events older than `before_ms`; returns how many.
    fn prune_events(&self, before_ms: i64) -> Result<usize, StateError>;
    /// Records a snapshot.
    fn insert_snapshot(
        &self,
        s: &SnapshotRecord,
        limits: Option<&Limits>,
    ) -> Result<(), StateError>;
    /// A snapshot by id, name, `owner/name`, or unique id prefix.
    fn find_snapshot(&self, key: &str) -> Result<Option<SnapshotRecord>, StateError>;
    /// The snapshot `owner` named `name`.
    fn find_snapshot_named(
        &self,
        owner: Option<&str>,
        name: &str,
    ) -> Result<Option<SnapshotRecord>, StateError>;
    /// Every snapshot, oldest first.
    fn list_snapshots(&self) -> Result<Vec<SnapshotRecord>, StateError>;
    /// Forgets a snapshot.
    fn delete_snapshot(&self, id: &str) -> Result<(), StateError>;
    /// What uses an image: `sandbox ID` (not stopped or failed) and `snapshot ID` (not
    /// templates).
    fn using_image(&self, digest: &str) -> Result<Vec<String>, StateError>;
    /// Points an image name at a digest.
    fn set_image_name(&self, name: &str, digest: &str, now: i64) -> Result<(), StateError>;
    /// The digest a name points at.
    fn image_name(&self, name: &str) -> Result<Option<String>, StateError>;
    /// Every (name, digest), by name.
    fn image_names(&self) -> Result<Vec<(String, String)>, StateError>;
    /// Removes a name.
    fn remove_image_name(&self, name: &str) -> Result<(), StateError>;
}

/// What an owner may hold at most: coved's quota of a tenant. Stopped and failed sandboxes
/// hold nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Sandboxes.
    pub sandboxes: u32,
    /// Their vCPUs.
    pub vcpus: u32,
    /// Their memory, MiB.
    pub memory_mib: u64,
    /// Snapshots (each holds a copy of a guest's memory and disk).
    pub snapshots: u32,
}

impl Limits {
    /// Whether `owner`, holding `held` snapshots, may add one.
    pub fn admit_snapshot(&self, owner: &str, held: u32) -> Result<(), StateError> {
        if held >= self.snapshots {
            return Err(StateError::OverQuota {
                owner: owner.to_string(),
                what: "snapshots",
                max: self.snapshots.into(),
                have: held.into(),
                add: 1,
            });
        }
        Ok(())
    }

    /// Whether `owner`, holding `held` (sandboxes, vCPUs, MiB), may add `s`.
    pub fn admit(
        &self,
        owner: &str,
        held: (u32, u32, u64),
        s: &SandboxRecord,
    ) -> Result<(), StateError> {
        self.admit_many(owner, held, 1, s.cpus, s.memory_mib)
    }

    /// Whether `owner`, holding `held`, may add `count` sandboxes of `cpus` and `memory_mib`
    /// each (a fork's clones).
    pub fn admit_many(
        &self,
        owner: &str,
        held: (u32, u32, u64),
        count: u32,
        cpus: u32,
        memory_mib: u32,
    ) -> Result<(), StateError> {
        let over = |what, max: u64, have: u64, add: u64| StateError::OverQuota {
            owner: owner.to_string(),
            what,
            max,
            have,
            add,
        };
        let add_cpus = cpus.saturating_mul(count);
        let add_mem = u64::from(memory_mib).saturating_mul(count.into());
        if held.0.saturating_add(count) > self.sandboxes {
            return Err(over(
                "sandboxes",
                self.sandboxes.into(),
                held.0.into(),
                count.into(),
            ));
        }
        if held.1.saturating_add(add_cpus) > self.vcpus {
            return Err(over(
                "vCPUs",
                self.vcpus.into(),
                held.1.into(),
                add_cpus.into(),
            ));
        }
        if held.2.saturating_add(add_mem) > self.memory_mib {
            return Err(over("memory (MiB)", self.memory_mib, held.2, add_mem));
        }
        Ok(())
    }
}

/// Opens the store `database` names: `postgres://…` (or `postgresql://…`), or a SQLite file
/// (`sqlite:PATH` or a plain path).
pub fn open(database: &str) -> Result<Box<dyn StateStore>, StateError> {
    if database.starts_with("postgres://") || database.starts_with("postgresql://") {
        return Ok(Box::new(PostgresStore::connect(database)?));
    }
    let path = database.strip_prefix("sqlite:").unwrap_or(database);
    if path.contains("://") {
        return Err(StateError::UnknownDatabase(database.to_string()));
    }
    Ok(Box::new(SqliteStore::open(Path::new(path))?))
}

/// Runs `f`, which blocks, telling tokio so when on a worker of a multi-threaded runtime (its
/// other tasks move to another worker, and a client with a runtime of its own may block on it);
/// elsewhere (a blocking thread, a current-thread runtime, no runtime) it just runs.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Milliseconds since the epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// One entry of the event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventRecord {
    /// Increasing sequence number.
    pub seq: i64,
    /// Milliseconds since the epoch.
    pub at: i64,
    /// The sandbox.
    pub sandbox: String,
    /// Its owner.
    pub owner: Option<String>,
    /// The state it entered, or its removal.
    pub state: EventState,
    /// Who caused it.
    pub actor: Actor,
    /// Why, when there is a reason (an error, idle, an expired time to live, …).
    pub cause: Option<String>,
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
    /// Where it is in its life.
    pub state: SandboxState,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Writable disk in MiB.
    pub disk_mib: u32,
    /// Creation time, milliseconds since the epoch.
    pub created_at: i64,
    /// Engine running it.
    pub engine: cove_model::VmEngine,
    /// Engine acceleration.
    pub accel: cove_model::Accel,
    /// Pid of its cove-vm.
    pub pid: Option<u32>,
    /// Its control socket.
    pub socket: String,
    /// Its directory.
    pub dir: String,
    /// Milliseconds from cove-vm start to agent ready.
    pub boot_ms: Option<i64>,
    /// Why it is in its state, where that needs saying (failed, stopped, put away when idle).
    pub reason: Option<Reason>,
    /// When its state last changed, milliseconds since the epoch.
    pub updated_at: i64,
    /// The process that last wrote it (`PID:START`), to tell an operation in progress from one
    /// whose process is gone.
    pub op: Option<String>,
    /// Its owner (coved's tenant); none when created locally.
    pub owner: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Environment every exec in it gets (over the image's).
    pub env: BTreeMap<String, String>,
    /// Its network policy.
    pub network: NetworkPolicy,
    /// When its time to live ends, milliseconds since the epoch (cove-vm stops it then).
    pub expires_at: Option<i64>,
}

impl SandboxRecord {
    /// Its directory and the files in it.
    pub fn layout(&self) -> SandboxDir {
        SandboxDir::at(&self.dir)
    }
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
