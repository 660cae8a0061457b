//! The state database: one SQLite file under the Cove home.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use cove_model::{Actor, EventState, Reason, SandboxState};
use rusqlite::{Connection, OptionalExtension, params};

use crate::supervisor::this_process;
use crate::{HostError, SandboxRecord, SnapshotRecord};

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    r"
CREATE TABLE sandboxes (
    id          TEXT PRIMARY KEY,
    name        TEXT UNIQUE,
    image       TEXT NOT NULL,
    state       TEXT NOT NULL,
    cpus        INTEGER NOT NULL,
    memory_mib  INTEGER NOT NULL,
    disk_mib    INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    engine      TEXT NOT NULL,
    accel       TEXT NOT NULL,
    pid         INTEGER,
    socket      TEXT NOT NULL,
    dir         TEXT NOT NULL,
    boot_ms     INTEGER,
    reason      TEXT
);
",
    r"
CREATE TABLE snapshots (
    id          TEXT PRIMARY KEY,
    name        TEXT UNIQUE,
    sandbox     TEXT,
    image       TEXT NOT NULL,
    cpus        INTEGER NOT NULL,
    memory_mib  INTEGER NOT NULL,
    disk_mib    INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    dir         TEXT NOT NULL,
    template    INTEGER NOT NULL DEFAULT 0
);
",
    // Images are content-addressed (cove-image); names point at manifest digests, and what
    // a sandbox or snapshot runs on is pinned by digest, so re-pointing a name moves nothing.
    r"
CREATE TABLE image_names (
    name        TEXT PRIMARY KEY,
    digest      TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
);
ALTER TABLE sandboxes ADD COLUMN image_digest TEXT NOT NULL DEFAULT '';
ALTER TABLE snapshots ADD COLUMN image_digest TEXT NOT NULL DEFAULT '';
",
    // Who a sandbox or snapshot belongs to (coved's tenant; none for local use), the sandbox's
    // labels, and the environment every exec in it gets (JSON).
    r"
ALTER TABLE sandboxes ADD COLUMN owner TEXT;
ALTER TABLE sandboxes ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
ALTER TABLE sandboxes ADD COLUMN env TEXT NOT NULL DEFAULT '{}';
ALTER TABLE snapshots ADD COLUMN owner TEXT;
CREATE INDEX sandboxes_owner ON sandboxes (owner);
",
    // Every state a sandbox enters (and its removal), with who asked and why: the event log.
    r"
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    sandbox     TEXT NOT NULL,
    owner       TEXT,
    state       TEXT NOT NULL,
    actor       TEXT NOT NULL,
    cause       TEXT
);
CREATE INDEX events_owner ON events (owner, seq);
",
    // Names are unique per owner (each tenant of a coved has its own namespace; local use is
    // the owner-less one), so the column-level UNIQUE goes: SQLite drops a constraint only by
    // rebuilding the table. `events_at` serves the retention sweep.
    r"
CREATE TABLE sandboxes_new (
    id          TEXT PRIMARY KEY,
    name        TEXT,
    image       TEXT NOT NULL,
    state       TEXT NOT NULL,
    cpus        INTEGER NOT NULL,
    memory_mib  INTEGER NOT NULL,
    disk_mib    INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    engine      TEXT NOT NULL,
    accel       TEXT NOT NULL,
    pid         INTEGER,
    socket      TEXT NOT NULL,
    dir         TEXT NOT NULL,
    boot_ms     INTEGER,
    reason      TEXT,
    image_digest TEXT NOT NULL DEFAULT '',
    owner       TEXT,
    labels      TEXT NOT NULL DEFAULT '{}',
    env         TEXT NOT NULL DEFAULT '{}'
);
INSERT INTO sandboxes_new (id, name, image, state, cpus, memory_mib, disk_mib, created_at, engine, accel, pid, socket, dir, boot_ms, reason, image_digest, owner, labels, env)
    SELECT id, name, image, state, cpus, memory_mib, disk_mib, created_at, engine, accel, pid, socket, dir, boot_ms, reason, image_digest, owner, labels, env FROM sandboxes;
DROP TABLE sandboxes;
ALTER TABLE sandboxes_new RENAME TO sandboxes;
CREATE INDEX sandboxes_owner ON sandboxes (owner);
CREATE UNIQUE INDEX sandboxes_name ON sandboxes (coalesce(owner, ''), name);
CREATE TABLE snapshots_new (
    id          TEXT PRIMARY KEY,
    name        TEXT,
    sandbox     TEXT,
    image       TEXT NOT NULL,
    cpus        INTEGER NOT NULL,
    memory_mib  INTEGER NOT NULL,
    disk_mib    INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    dir         TEXT NOT NULL,
    template    INTEGER NOT NULL DEFAULT 0,
    image_digest TEXT NOT NULL DEFAULT '',
    owner       TEXT
);
INSERT INTO snapshots_new (id, name, sandbox, image, cpus, memory_mib, disk_mib, created_at, dir, template, image_digest, owner)
    SELECT id, name, sandbox, image, cpus, memory_mib, disk_mib, created_at, dir, template, image_digest, owner FROM snapshots;
DROP TABLE snapshots;
ALTER TABLE snapshots_new RENAME TO snapshots;
CREATE UNIQUE INDEX snapshots_name ON snapshots (coalesce(owner, ''), name);
CREATE INDEX events_at ON events (at);
",
    // Reasons become typed (`reason_kind` the kind, `reason` its detail) and each sandbox
    // records when its state last changed. Rows written before are converted from the
    // sentences this build's older versions wrote; events by `cove-vm` name their true actor.
    r"
ALTER TABLE sandboxes ADD COLUMN reason_kind TEXT;
ALTER TABLE sandboxes ADD COLUMN updated_at INTEGER NOT NULL DEFAULT 0;
UPDATE sandboxes SET updated_at = created_at;
UPDATE sandboxes SET reason_kind = CASE
    WHEN reason = 'idle' THEN 'idle'
    WHEN reason = 'stopped' THEN 'stopped'
    WHEN reason LIKE 'stopped: its time to live%' THEN 'expired'
    WHEN reason LIKE 'resume failed: %' THEN 'resume_failed'
    WHEN reason LIKE 'not in the blob store: %' THEN 'not_stored'
    WHEN reason LIKE 'failed to start: %' THEN 'start_failed'
    WHEN reason LIKE 'its cove-vm process vanished%' THEN 'vanished'
    ELSE 'crashed' END
  WHERE reason IS NOT NULL;
UPDATE sandboxes SET reason = NULL WHERE reason_kind IN ('idle', 'stopped', 'expired', 'vanished');
UPDATE sandboxes SET reason = substr(reason, 16) WHERE reason_kind = 'resume_failed';
UPDATE sandboxes SET reason = substr(reason, 24) WHERE reason_kind = 'not_stored';
UPDATE sandboxes SET reason = substr(reason, 18) WHERE reason_kind = 'start_failed';
UPDATE events SET actor = CASE
    WHEN cause = 'idle' THEN 'idle-policy'
    WHEN cause LIKE '%time to live%' THEN 'ttl'
    ELSE 'reconcile' END
  WHERE actor = 'cove-vm';
",
    // The process that last wrote each sandbox (`PID:START`): a record left in the middle of
    // an operation by a process that is gone was interrupted, and is reconciled at once.
    r"
ALTER TABLE sandboxes ADD COLUMN op TEXT;
",
];

tokio::task_local! {
    /// Who is acting, for the event log: coved sets the caller's API key around each request;
    /// unset is the host's administrator ([`Actor::Local`]). Background actors (reconcile) pass
    /// their own explicitly.
    pub static ACTOR: Actor;
}

/// The actor of the task running now.
pub(crate) fn current_actor() -> Actor {
    ACTOR.try_with(Clone::clone).unwrap_or_default()
}

/// One entry of the event log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
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

fn log_event(
    conn: &Connection,
    s: &SandboxRecord,
    state: EventState,
    actor: &Actor,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO events (at, sandbox, owner, state, actor, cause) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            crate::now_ms(),
            s.id,
            s.owner,
            state.as_str(),
            actor.to_string(),
            s.reason.as_ref().map(ToString::to_string)
        ],
    )?;
    Ok(())
}

/// A column holding one of the model's names (a state, an actor): a value this build cannot
/// parse is a corrupt or newer database, reported as such.
fn parsed<T: std::str::FromStr<Err = cove_model::ParseError>>(
    r: &rusqlite::Row<'_>,
    i: usize,
) -> rusqlite::Result<T> {
    let s: String = r.get(i)?;
    s.parse().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// The reason columns (`reason_kind`, `reason`).
fn reason_col(
    r: &rusqlite::Row<'_>,
    kind: usize,
    detail: usize,
) -> rusqlite::Result<Option<Reason>> {
    let Some(k) = r.get::<_, Option<String>>(kind)? else {
        return Ok(None);
    };
    Reason::from_parts(&k, r.get(detail)?)
        .map(Some)
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(
                kind,
                rusqlite::types::Type::Text,
                Box::new(e),
            )
        })
}

/// Finds a row of `table` by id, then by name (one owner's only: a name that several owners
/// use is ambiguous), then by `owner/name`, then by a unique id prefix of at least 4.
fn find_in<T>(
    conn: &Connection,
    table: &str,
    columns: &str,
    key: &str,
    row: fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Option<T>, HostError> {
    let one = |sql: &str, args: &[&str]| -> Result<Option<T>, HostError> {
        let mut stmt = conn.prepare(&format!(
            "SELECT {columns} FROM {table} WHERE {sql} LIMIT 2"
        ))?;
        let mut found: Vec<T> = stmt
            .query_map(rusqlite::params_from_iter(args), row)?
            .collect::<Result<_, _>>()?;
        Ok(if found.len() == 1 { found.pop() } else { None })
    };
    if let Some(r) = one("id = ?1", &[key])? {
        return Ok(Some(r));
    }
    let named: i64 = conn.query_row(
        &format!("SELECT count(*) FROM {table} WHERE name = ?1"),
        [key],
        |r| r.get(0),
    )?;
    if named > 0 {
        return one("name = ?1", &[key]);
    }
    if let Some((owner, name)) = key.split_once('/') {
        return one("owner = ?1 AND name = ?2", &[owner, name]);
    }
    if key.len() < 4 {
        return Ok(None);
    }
    one("substr(id, 1, length(?1)) = ?1", &[key])
}

fn is_busy(code: rusqlite::ErrorCode) -> bool {
    matches!(
        code,
        rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
    )
}

/// Runs `f` again while SQLite answers busy (up to 10 s).
fn retry_busy<T>(mut f: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match f() {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if is_busy(e.code) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            r => return r,
        }
    }
}

/// Runs `f`, which blocks on the database (a lock, a query, a write), telling tokio so when on
/// a worker of a multi-threaded runtime (coved): that worker's other tasks move to another one
/// meanwhile. Elsewhere (a blocking thread, a current-thread runtime, no runtime) it just runs.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// An open state database.
#[derive(Debug)]
pub struct Db {
    /// One connection, locked per call: the host is shared by concurrent requests (coved), and
    /// no lock is held beyond one method.
    conn: Mutex<Connection>,
}

const COLUMNS: &str = "id, name, image, state, cpus, memory_mib, disk_mib, created_at, engine, accel, pid, socket, dir, boot_ms, reason, image_digest, owner, labels, env, reason_kind, updated_at, op";

const SNAP_COLUMNS: &str = "id, name, sandbox, image, cpus, memory_mib, disk_mib, created_at, dir, template, image_digest, owner";

fn snap_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SnapshotRecord> {
    Ok(SnapshotRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        sandbox: r.get(2)?,
        image: r.get(3)?,
        cpus: r.get(4)?,
        memory_mib: r.get(5)?,
        disk_mib: r.get(6)?,
        created_at: r.get(7)?,
        dir: r.get(8)?,
        template: r.get(9)?,
        image_digest: r.get(10)?,
        owner: r.get(11)?,
    })
}

/// A JSON column (labels, env): written by this code, so a bad value is a corrupt database.
fn json_col<T: serde::de::DeserializeOwned>(
    r: &rusqlite::Row<'_>,
    i: usize,
) -> rusqlite::Result<T> {
    let s: String = r.get(i)?;
    serde_json::from_str(&s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SandboxRecord> {
    Ok(SandboxRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        image: r.get(2)?,
        state: parsed(r, 3)?,
        cpus: r.get(4)?,
        memory_mib: r.get(5)?,
        disk_mib: r.get(6)?,
        created_at: r.get(7)?,
        engine: r.get(8)?,
        accel: r.get(9)?,
        pid: r.get(10)?,
        socket: r.get(11)?,
        dir: r.get(12)?,
        boot_ms: r.get(13)?,
        reason: reason_col(r, 19, 14)?,
        image_digest: r.get(15)?,
        owner: r.get(16)?,
        labels: json_col(r, 17)?,
        env: json_col(r, 18)?,
        updated_at: r.get(20)?,
        op: r.get(21)?,
    })
}

impl Db {
    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable: SQLite rolled back.
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens (creating and migrating) the database.
    pub fn open(path: &Path) -> Result<Self, HostError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // Switching a new database to WAL, and migrating it, can meet another process doing the
        // same: SQLite reports that as busy without calling the busy handler, so retry here.
        retry_busy(|| conn.pragma_update(None, "journal_mode", "WAL"))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let db = Self {
            conn: Mutex::new(conn),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match db.migrate() {
                Err(HostError::Db(rusqlite::Error::SqliteFailure(e, _)))
                    if is_busy(e.code) && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                r => return r.map(|()| db),
            }
        }
    }

    fn migrate(&self) -> Result<(), HostError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let done: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let done = usize::try_from(done).unwrap_or(0);
        if done > MIGRATIONS.len() {
            return Err(HostError::SchemaTooNew {
                found: done,
                known: MIGRATIONS.len(),
            });
        }
        for m in &MIGRATIONS[done..] {
            tx.execute_batch(m)?;
        }
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(MIGRATIONS.len()).unwrap_or(0),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Records a new sandbox, and its first state as an event of `actor`.
    pub fn insert(&self, s: &SandboxRecord, actor: &Actor) -> Result<(), HostError> {
        blocking(|| {
            let mut conn = self.conn();
            // Write-locked from the start: a deferred transaction that reads and then writes can
            // meet SQLITE_BUSY_SNAPSHOT under concurrent writers, which no busy timeout waits out.
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let r = tx.execute(
                &format!("INSERT INTO sandboxes ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22)"),
                params![s.id, s.name, s.image, s.state.as_str(), s.cpus, s.memory_mib, s.disk_mib, s.created_at, s.engine, s.accel, s.pid, s.socket, s.dir, s.boot_ms, s.reason.as_ref().and_then(Reason::detail), s.image_digest, s.owner, serde_json::to_string(&s.labels).expect("serializes"), serde_json::to_string(&s.env).expect("serializes"), s.reason.as_ref().map(Reason::kind), s.updated_at, this_process()],
            );
            match r {
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    Err(HostError::NameTaken(s.name.clone().unwrap_or_default()))
                }
                r => {
                    r?;
                    log_event(&tx, s, EventState::Entered(s.state), actor)?;
                    tx.commit()?;
                    Ok(())
                }
            }
        })
    }

    /// Updates state, pid, boot time and reason in one transaction with the event of a new
    /// state (by `actor`). The move is checked against the lifecycle's table
    /// ([`SandboxState::check`]) with the state stored now, so two writers cannot both move a
    /// sandbox from the same state. A record that is gone is an error.
    pub fn update(&self, s: &mut SandboxRecord, actor: &Actor) -> Result<(), HostError> {
        blocking(|| {
            let mut conn = self.conn();
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let old: SandboxState = tx
                .query_row("SELECT state FROM sandboxes WHERE id = ?1", [&s.id], |r| {
                    parsed(r, 0)
                })
                .optional()?
                .ok_or_else(|| HostError::NoSuchSandbox(s.id.clone()))?;
            old.check(s.state).map_err(|err| HostError::Transition {
                id: s.id.clone(),
                err,
            })?;
            let moved = old != s.state;
            if moved {
                s.updated_at = crate::now_ms();
            }
            s.op = Some(this_process().to_string());
            tx.execute(
                "UPDATE sandboxes SET state = ?2, pid = ?3, boot_ms = ?4, reason_kind = ?5, reason = ?6, updated_at = ?7, op = ?8 WHERE id = ?1",
                params![
                    s.id,
                    s.state.as_str(),
                    s.pid,
                    s.boot_ms,
                    s.reason.as_ref().map(Reason::kind),
                    s.reason.as_ref().and_then(Reason::detail),
                    s.updated_at,
                    s.op
                ],
            )?;
            if moved {
                log_event(&tx, s, EventState::Entered(s.state), actor)?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// The event log after `seq`, oldest first: everything, or one owner's, or one sandbox's.
    pub fn events(
        &self,
        after: i64,
        owner: Option<&str>,
        sandbox: Option<&str>,
        limit: u32,
    ) -> Result<Vec<EventRecord>, HostError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT seq, at, sandbox, owner, state, actor, cause FROM events
             WHERE seq > ?1 AND (?2 IS NULL OR owner = ?2) AND (?3 IS NULL OR sandbox = ?3)
             ORDER BY seq LIMIT ?4",
        )?;
        let v = stmt
            .query_map(params![after, owner, sandbox, limit], |r| {
                Ok(EventRecord {
                    seq: r.get(0)?,
                    at: r.get(1)?,
                    sandbox: r.get(2)?,
                    owner: r.get(3)?,
                    state: parsed(r, 4)?,
                    actor: parsed(r, 5)?,
                    cause: r.get(6)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(v)
    }

    /// Drops events older than `before_ms` (milliseconds since the epoch); returns how many.
    pub fn prune_events(&self, before_ms: i64) -> Result<usize, HostError> {
        blocking(|| {
            let conn = self.conn();
            Ok(retry_busy(|| {
                conn.execute("DELETE FROM events WHERE at < ?1", [before_ms])
            })?)
        })
    }

    /// Finds a sandbox by id, name, `owner/name`, or unique id prefix. A name that several
    /// owners use finds none (their `owner/name` does).
    pub fn find(&self, key: &str) -> Result<Option<SandboxRecord>, HostError> {
        blocking(|| find_in(&self.conn(), "sandboxes", COLUMNS, key, row))
    }

    /// The sandbox `owner` (none: local use) named `name`.
    pub fn find_named(
        &self,
        owner: Option<&str>,
        name: &str,
    ) -> Result<Option<SandboxRecord>, HostError> {
        Ok(self
            .conn()
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM sandboxes WHERE coalesce(owner, '') = ?1 AND name = ?2"
                ),
                [owner.unwrap_or_default(), name],
                row,
            )
            .optional()?)
    }

    /// Every sandbox, oldest first.
    pub fn list(&self) -> Result<Vec<SandboxRecord>, HostError> {
        blocking(|| {
            let conn = self.conn();
            let mut stmt = conn.prepare(&format!(
                "SELECT {COLUMNS} FROM sandboxes ORDER BY created_at, id"
            ))?;
            let v = stmt.query_map([], row)?.collect::<Result<_, _>>()?;
            Ok(v)
        })
    }

    /// Forgets a sandbox; its removal is an event of `actor`.
    pub fn delete(&self, id: &str, actor: &Actor) -> Result<(), HostError> {
        blocking(|| {
            let mut conn = self.conn();
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let rec = tx
                .query_row(
                    &format!("SELECT {COLUMNS} FROM sandboxes WHERE id = ?1"),
                    [id],
                    row,
                )
                .optional()?;
            tx.execute("DELETE FROM sandboxes WHERE id = ?1", [id])?;
            if let Some(mut rec) = rec {
                rec.reason = None;
                log_event(&tx, &rec, EventState::Removed, actor)?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Records a snapshot.
    pub fn insert_snapshot(&self, s: &SnapshotRecord) -> Result<(), HostError> {
        blocking(|| {
            let r = self.conn().execute(
                &format!("INSERT INTO snapshots ({SNAP_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"),
                params![s.id, s.name, s.sandbox, s.image, s.cpus, s.memory_mib, s.disk_mib, s.created_at, s.dir, s.template, s.image_digest, s.owner],
            );
            match r {
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    Err(HostError::NameTaken(s.name.clone().unwrap_or_default()))
                }
                r => r.map(drop).map_err(Into::into),
            }
        })
    }

    /// Finds a snapshot by id, name, `owner/name`, or unique id prefix. A name that several
    /// owners use finds none (their `owner/name` does).
    pub fn find_snapshot(&self, key: &str) -> Result<Option<SnapshotRecord>, HostError> {
        blocking(|| find_in(&self.conn(), "snapshots", SNAP_COLUMNS, key, snap_row))
    }

    /// The snapshot `owner` (none: local use) named `name`.
    pub fn find_snapshot_named(
        &self,
        owner: Option<&str>,
        name: &str,
    ) -> Result<Option<SnapshotRecord>, HostError> {
        Ok(self
            .conn()
            .query_row(
                &format!(
                    "SELECT {SNAP_COLUMNS} FROM snapshots WHERE coalesce(owner, '') = ?1 AND name = ?2"
                ),
                [owner.unwrap_or_default(), name],
                snap_row,
            )
            .optional()?)
    }

    /// Every snapshot, oldest first.
    pub fn list_snapshots(&self) -> Result<Vec<SnapshotRecord>, HostError> {
        blocking(|| {
            let conn = self.conn();
            let mut stmt = conn.prepare(&format!(
                "SELECT {SNAP_COLUMNS} FROM snapshots ORDER BY created_at, id"
            ))?;
            let v = stmt.query_map([], snap_row)?.collect::<Result<_, _>>()?;
            Ok(v)
        })
    }

    /// Forgets a snapshot.
    pub fn delete_snapshot(&self, id: &str) -> Result<(), HostError> {
        blocking(|| {
            self.conn()
                .execute("DELETE FROM snapshots WHERE id = ?1", [id])?;
            Ok(())
        })
    }

    /// What `owner`'s sandboxes hold (all but the stopped and failed): how many, their vCPUs
    /// and memory (MiB). One query, for admission: no listing, no lock held over a scan.
    pub fn held_by(&self, owner: &str) -> Result<(u32, u32, u64), HostError> {
        blocking(|| {
            let conn = self.conn();
            let (n, cpus, mem): (i64, i64, i64) = conn.query_row(
                "SELECT count(*), coalesce(sum(cpus), 0), coalesce(sum(memory_mib), 0) FROM sandboxes
                 WHERE owner = ?1 AND state NOT IN (?2, ?3)",
                [
                    owner,
                    SandboxState::Stopped.as_str(),
                    SandboxState::Failed.as_str(),
                ],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            Ok((
                u32::try_from(n).unwrap_or(u32::MAX),
                u32::try_from(cpus).unwrap_or(u32::MAX),
                u64::try_from(mem).unwrap_or(0),
            ))
        })
    }

    /// Sandboxes using an image.
    pub fn using_image(&self, digest: &str) -> Result<Vec<String>, HostError> {
        blocking(|| {
            let conn = self.conn();
            let mut stmt = conn.prepare(
                "SELECT 'sandbox ' || id FROM sandboxes WHERE image_digest = ?1 AND state NOT IN (?2, ?3)
                 UNION ALL SELECT 'snapshot ' || id FROM snapshots WHERE image_digest = ?1 AND template = 0",
            )?;
            let v = stmt
                .query_map(
                    [
                        digest,
                        SandboxState::Stopped.as_str(),
                        SandboxState::Failed.as_str(),
                    ],
                    |r| r.get(0),
                )?
                .collect::<Result<_, _>>()?;
            Ok(v)
        })
    }

    /// Points an image name at a digest.
    pub fn set_image_name(&self, name: &str, digest: &str, now: i64) -> Result<(), HostError> {
        blocking(|| {
            self.conn().execute(
                "INSERT INTO image_names (name, digest, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET digest = ?2, updated_at = ?3",
                params![name, digest, now],
            )?;
            Ok(())
        })
    }

    /// The digest a name points at.
    pub fn image_name(&self, name: &str) -> Result<Option<String>, HostError> {
        blocking(|| {
            Ok(self
                .conn()
                .query_row(
                    "SELECT digest FROM image_names WHERE name = ?1",
                    [name],
                    |r| r.get(0),
                )
                .optional()?)
        })
    }

    /// Every (name, digest), by name.
    pub fn image_names(&self) -> Result<Vec<(String, String)>, HostError> {
        blocking(|| {
            let conn = self.conn();
            let mut stmt = conn.prepare("SELECT name, digest FROM image_names ORDER BY name")?;
            let v = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            Ok(v)
        })
    }

    /// Removes a name.
    pub fn remove_image_name(&self, name: &str) -> Result<(), HostError> {
        blocking(|| {
            self.conn()
                .execute("DELETE FROM image_names WHERE name = ?1", [name])?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, name: Option<&str>) -> SandboxRecord {
        SandboxRecord {
            id: id.into(),
            name: name.map(str::to_string),
            image: "busybox".into(),
            image_digest: "sha256:b".into(),
            owner: Some("t1".into()),
            labels: [("app".to_string(), "web".to_string())].into(),
            env: Default::default(),
            state: SandboxState::Running,
            cpus: 1,
            memory_mib: 256,
            disk_mib: 1024,
            created_at: 1,
            engine: "qemu".into(),
            accel: "tcg".into(),
            pid: Some(42),
            socket: "/x/control.sock".into(),
            dir: "/x".into(),
            boot_ms: None,
            reason: None,
            updated_at: 1,
            op: None,
        }
    }

    #[test]
    fn insert_find_update_delete() {
        let d = tempfile::tempdir().unwrap();
        let db = Db::open(&d.path().join("state.db")).unwrap();
        db.insert(&rec("abcdef123456", Some("web")), &Actor::Local)
            .unwrap();
        db.insert(&rec("abcd99999999", None), &Actor::Local)
            .unwrap();
        assert!(matches!(
            db.insert(&rec("ffff00000000", Some("web")), &Actor::Local),
            Err(HostError::NameTaken(_))
        ));
        assert_eq!(db.find("web").unwrap().unwrap().id, "abcdef123456");
        assert_eq!(db.find("abcdef").unwrap().unwrap().id, "abcdef123456");
        assert!(db.find("abcd").unwrap().is_none(), "ambiguous prefix");
        assert!(db.find("abc").unwrap().is_none(), "prefix too short");
        let mut r = db.find("abcd99999999").unwrap().unwrap();
        r.state = SandboxState::Failed;
        r.reason = Some(Reason::Crashed("gone".into()));
        db.update(&mut r, &Actor::Reconcile).unwrap();
        assert_eq!(
            db.find("abcd99999999").unwrap().unwrap().reason,
            Some(Reason::Crashed("gone".into()))
        );
        // Nothing leaves failed: the table is checked against the stored state.
        r.state = SandboxState::Running;
        assert!(matches!(
            db.update(&mut r, &Actor::Local),
            Err(HostError::Transition { .. })
        ));
        db.delete("abcdef123456", &Actor::Local).unwrap();
        assert_eq!(db.list().unwrap().len(), 1);
        assert!(
            db.using_image("sha256:b").unwrap().is_empty(),
            "a failed sandbox does not hold its image"
        );
        db.insert(&rec("eeee00000000", None), &Actor::Local)
            .unwrap();
        assert_eq!(
            db.using_image("sha256:b").unwrap(),
            vec!["sandbox eeee00000000".to_string()]
        );
        db.set_image_name("busybox", "sha256:b", 1).unwrap();
        db.set_image_name("busybox", "sha256:c", 2).unwrap();
        assert_eq!(
            db.image_name("busybox").unwrap().as_deref(),
            Some("sha256:c")
        );
        db.remove_image_name("busybox").unwrap();
        assert!(db.image_names().unwrap().is_empty());
        // The event log: each new state once, removals too, with the actor.
        let log = db.events(0, Some("t1"), Some("eeee00000000"), 100).unwrap();
        assert_eq!(
            log.iter().map(|e| e.state.as_str()).collect::<Vec<_>>(),
            ["running"]
        );
        let mut r = db.find("eeee00000000").unwrap().unwrap();
        db.update(&mut r, &Actor::Local).unwrap();
        r.state = SandboxState::Paused;
        r.reason = Some(Reason::Idle);
        db.update(&mut r, &Actor::IdlePolicy).unwrap();
        assert!(r.updated_at > 1, "a move stamps the record");
        r.state = SandboxState::Failed;
        r.reason = Some(Reason::Vanished);
        db.update(&mut r, &Actor::Reconcile).unwrap();
        let log = db.events(0, None, Some("eeee00000000"), 100).unwrap();
        let seen: Vec<(EventState, Actor)> =
            log.iter().map(|e| (e.state, e.actor.clone())).collect();
        assert_eq!(
            seen,
            [
                (EventState::Entered(SandboxState::Running), Actor::Local),
                (EventState::Entered(SandboxState::Paused), Actor::IdlePolicy),
                (EventState::Entered(SandboxState::Failed), Actor::Reconcile)
            ]
        );
        assert_eq!(log[1].cause.as_deref(), Some("idle"));
        assert_eq!(log[2].cause, Some(Reason::Vanished.to_string()));
        assert!(db.events(log[2].seq, None, None, 100).unwrap().is_empty());
        assert!(db.events(0, Some("other"), None, 100).unwrap().is_empty());
        // Reopening keeps the data and does not re-run migrations.
        drop(db);
        let db = Db::open(&d.path().join("state.db")).unwrap();
        assert_eq!(db.list().unwrap().len(), 2);
    }

    fn owned(id: &str, owner: Option<&str>, name: &str) -> SandboxRecord {
        SandboxRecord {
            owner: owner.map(str::to_string),
            ..rec(id, Some(name))
        }
    }

    #[test]
    fn names_are_unique_per_owner() {
        let d = tempfile::tempdir().unwrap();
        let db = Db::open(&d.path().join("state.db")).unwrap();
        for r in [
            owned("aaaa00000001", Some("acme"), "web"),
            owned("aaaa00000002", Some("blue"), "web"),
            owned("aaaa00000003", None, "api"),
        ] {
            db.insert(&r, &Actor::Local).unwrap();
        }
        for dup in [
            owned("aaaa00000004", Some("acme"), "web"),
            owned("aaaa00000005", None, "api"),
        ] {
            assert!(matches!(
                db.insert(&dup, &Actor::Local),
                Err(HostError::NameTaken(_))
            ));
        }
        let id = |r: Option<SandboxRecord>| r.map(|r| r.id);
        assert_eq!(
            id(db.find_named(Some("acme"), "web").unwrap()).as_deref(),
            Some("aaaa00000001")
        );
        assert_eq!(
            id(db.find_named(Some("blue"), "web").unwrap()).as_deref(),
            Some("aaaa00000002")
        );
        assert!(db.find_named(Some("blue"), "api").unwrap().is_none());
        assert!(db.find_named(None, "web").unwrap().is_none());
        assert_eq!(
            id(db.find_named(None, "api").unwrap()).as_deref(),
            Some("aaaa00000003")
        );
        // Locally a name two owners use finds neither; `owner/name` finds each.
        assert!(db.find("web").unwrap().is_none());
        assert_eq!(
            id(db.find("blue/web").unwrap()).as_deref(),
            Some("aaaa00000002")
        );
        assert_eq!(id(db.find("api").unwrap()).as_deref(), Some("aaaa00000003"));
    }

    #[test]
    fn migrating_a_version_5_database_keeps_its_rows() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state.db");
        {
            let conn = Connection::open(&path).unwrap();
            for m in &MIGRATIONS[..5] {
                conn.execute_batch(m).unwrap();
            }
            conn.pragma_update(None, "user_version", 5).unwrap();
            conn.execute(
                "INSERT INTO sandboxes (id, name, image, state, cpus, memory_mib, disk_mib, created_at, engine, accel, socket, dir, owner, labels)
                 VALUES ('bbbb00000001', 'web', 'busybox', 'running', 2, 256, 1024, 7, 'qemu', 'tcg', '/s', '/d', 'acme', '{\"k\":\"v\"}')",
                [],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO snapshots (id, name, image, cpus, memory_mib, disk_mib, created_at, dir, owner)
                 VALUES ('cccc00000001', 'base', 'busybox', 1, 256, 1024, 8, '/d', 'acme')",
                [],
            )
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        let r = db.find_named(Some("acme"), "web").unwrap().unwrap();
        assert_eq!((r.id.as_str(), r.cpus), ("bbbb00000001", 2));
        assert_eq!(r.labels.get("k").map(String::as_str), Some("v"));
        let s = db
            .find_snapshot_named(Some("acme"), "base")
            .unwrap()
            .unwrap();
        assert_eq!(s.id, "cccc00000001");
        // The same name under another owner is now allowed.
        db.insert(&owned("bbbb00000002", Some("blue"), "web"), &Actor::Local)
            .unwrap();
    }

    #[test]
    fn migrating_a_version_6_database_types_its_reasons_and_actors() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state.db");
        {
            let conn = Connection::open(&path).unwrap();
            for m in &MIGRATIONS[..6] {
                conn.execute_batch(m).unwrap();
            }
            conn.pragma_update(None, "user_version", 6).unwrap();
            for (id, state, reason) in [
                ("eeee00000001", "paused", Some("idle")),
                (
                    "eeee00000002",
                    "stopped",
                    Some("stopped: its time to live ran out"),
                ),
                (
                    "eeee00000003",
                    "hibernated",
                    Some("resume failed: bad manifest"),
                ),
                ("eeee00000004", "failed", Some("failed to start: no agent")),
                (
                    "eeee00000005",
                    "failed",
                    Some("the VM stopped unexpectedly: killed"),
                ),
                ("eeee00000006", "running", None),
            ] {
                conn.execute(
                    "INSERT INTO sandboxes (id, image, state, cpus, memory_mib, disk_mib, created_at, engine, accel, socket, dir, reason)
                     VALUES (?1, 'busybox', ?2, 1, 256, 1024, 7, 'qemu', 'tcg', '/s', '/d', ?3)",
                    params![id, state, reason],
                )
                .unwrap();
            }
            conn.execute(
                "INSERT INTO events (at, sandbox, state, actor, cause) VALUES
                 (1, 'eeee00000001', 'paused', 'cove-vm', 'idle'),
                 (2, 'eeee00000002', 'stopped', 'cove-vm', 'stopped: its time to live ran out'),
                 (3, 'eeee00000005', 'failed', 'cove-vm', 'the VM stopped unexpectedly'),
                 (4, 'eeee00000006', 'running', 'key:k1', NULL)",
                [],
            )
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        let reason = |id| db.find(id).unwrap().unwrap().reason;
        assert_eq!(reason("eeee00000001"), Some(Reason::Idle));
        assert_eq!(reason("eeee00000002"), Some(Reason::Expired));
        assert_eq!(
            reason("eeee00000003"),
            Some(Reason::ResumeFailed("bad manifest".into()))
        );
        assert_eq!(
            reason("eeee00000004"),
            Some(Reason::StartFailed("no agent".into()))
        );
        assert_eq!(
            reason("eeee00000005"),
            Some(Reason::Crashed(
                "the VM stopped unexpectedly: killed".into()
            ))
        );
        assert_eq!(reason("eeee00000006"), None);
        assert_eq!(db.find("eeee00000006").unwrap().unwrap().updated_at, 7);
        let actors: Vec<Actor> = db
            .events(0, None, None, 10)
            .unwrap()
            .into_iter()
            .map(|e| e.actor)
            .collect();
        assert_eq!(
            actors,
            [
                Actor::IdlePolicy,
                Actor::Ttl,
                Actor::Reconcile,
                Actor::Key("k1".into())
            ]
        );
    }

    #[test]
    fn prune_events_drops_only_older_ones() {
        let d = tempfile::tempdir().unwrap();
        let db = Db::open(&d.path().join("state.db")).unwrap();
        db.insert(&rec("dddd00000001", None), &Actor::Local)
            .unwrap();
        assert_eq!(db.prune_events(0).unwrap(), 0);
        assert_eq!(db.events(0, None, None, 10).unwrap().len(), 1);
        assert_eq!(db.prune_events(crate::now_ms() + 1).unwrap(), 1);
        assert!(db.events(0, None, None, 10).unwrap().is_empty());
    }
}
