//! The SQLite store: one file in the Cove home (`state.db`), the embedded default.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use cove_model::{Actor, EventState, NetworkPolicy, Reason, SandboxState};
use rusqlite::{Connection, OptionalExtension, params};

use crate::{
    EventRecord, Limits, SandboxRecord, SnapshotRecord, StateError, StateStore, blocking, now_ms,
};

/// What an owner's sandboxes hold (all but the stopped and failed): count, vCPUs, memory.
fn held(conn: &Connection, owner: &str) -> Result<(u32, u32, u64), StateError> {
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
}

/// Schema migrations (`migrations/sqlite/`), applied in order; `PRAGMA user_version` records
/// how many ran.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/sqlite/0001_sandboxes.sql"),
    include_str!("../migrations/sqlite/0002_snapshots.sql"),
    include_str!("../migrations/sqlite/0003_image_names.sql"),
    include_str!("../migrations/sqlite/0004_owners_labels_env.sql"),
    include_str!("../migrations/sqlite/0005_events.sql"),
    include_str!("../migrations/sqlite/0006_names_per_owner.sql"),
    include_str!("../migrations/sqlite/0007_typed_reasons.sql"),
    include_str!("../migrations/sqlite/0008_op.sql"),
    include_str!("../migrations/sqlite/0009_network.sql"),
    include_str!("../migrations/sqlite/0010_expires_at.sql"),
];

fn log_event(
    conn: &Connection,
    s: &SandboxRecord,
    state: EventState,
    actor: &Actor,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO events (at, sandbox, owner, state, actor, cause) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            now_ms(),
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
) -> Result<Option<T>, StateError> {
    let one = |sql: &str, args: &[&str]| -> Result<Option<T>, StateError> {
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

/// The SQLite store.
#[derive(Debug)]
pub struct SqliteStore {
    /// The database file, absolute.
    path: std::path::PathBuf,
    /// One connection, locked per call: the host is shared by concurrent requests (coved), and
    /// no lock is held beyond one method.
    conn: Mutex<Connection>,
}

const COLUMNS: &str = "id, name, image, state, cpus, memory_mib, disk_mib, created_at, engine, accel, pid, socket, dir, boot_ms, reason, image_digest, owner, labels, env, reason_kind, updated_at, op, network, expires_at";

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
        engine: parsed(r, 8)?,
        accel: parsed(r, 9)?,
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
        network: json_col(r, 22)?,
        expires_at: r.get(23)?,
    })
}

impl SqliteStore {
    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable: SQLite rolled back.
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens (creating and migrating) the database.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // Switching a new database to WAL, and migrating it, can meet another process doing the
        // same: SQLite reports that as busy without calling the busy handler, so retry here.
        retry_busy(|| conn.pragma_update(None, "journal_mode", "WAL"))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let db = Self {
            path: std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
            conn: Mutex::new(conn),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match db.migrate() {
                Err(StateError::Sqlite(rusqlite::Error::SqliteFailure(e, _)))
                    if is_busy(e.code) && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                r => return r.map(|()| db),
            }
        }
    }

    fn migrate(&self) -> Result<(), StateError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let done: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let done = usize::try_from(done).unwrap_or(0);
        if done > MIGRATIONS.len() {
            return Err(StateError::SchemaTooNew {
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
}

impl StateStore for SqliteStore {
    fn id(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }

    /// Records a new sandbox, and its first state as an event of `actor`.
    fn insert(
        &self,
        s: &SandboxRecord,
        actor: &Actor,
        limits: Option<&Limits>,
    ) -> Result<(), StateError> {
        blocking(|| {
            let mut conn = self.conn();
            // Write-locked from the start: a deferred transaction that reads and then writes can
            // meet SQLITE_BUSY_SNAPSHOT under concurrent writers, which no busy timeout waits out.
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            // Admission in the same (write-locked) transaction as the insert.
            if let (Some(l), Some(owner)) = (limits, s.owner.as_deref()) {
                l.admit(owner, held(&tx, owner)?, s)?;
            }
            let r = tx.execute(
                &format!("INSERT INTO sandboxes ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24)"),
                params![s.id, s.name, s.image, s.state.as_str(), s.cpus, s.memory_mib, s.disk_mib, s.created_at, s.engine.as_str(), s.accel.as_str(), s.pid, s.socket, s.dir, s.boot_ms, s.reason.as_ref().and_then(Reason::detail), s.image_digest, s.owner, serde_json::to_string(&s.labels).expect("serializes"), serde_json::to_string(&s.env).expect("serializes"), s.reason.as_ref().map(Reason::kind), s.updated_at, s.op, serde_json::to_string(&s.network).expect("serializes"), s.expires_at],
            );
            match r {
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    Err(StateError::NameTaken(s.name.clone().unwrap_or_default()))
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
    fn update(&self, s: &mut SandboxRecord, actor: &Actor) -> Result<(), StateError> {
        blocking(|| {
            let mut conn = self.conn();
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let old: SandboxState = tx
                .query_row("SELECT state FROM sandboxes WHERE id = ?1", [&s.id], |r| {
                    parsed(r, 0)
                })
                .optional()?
                .ok_or_else(|| StateError::NoSuchSandbox(s.id.clone()))?;
            old.check(s.state).map_err(|err| StateError::Transition {
                id: s.id.clone(),
                err,
            })?;
            let moved = old != s.state;
            if moved {
                s.updated_at = now_ms();
            }
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
    fn events(
        &self,
        after: i64,
        owner: Option<&str>,
        sandbox: Option<&str>,
        limit: u32,
    ) -> Result<Vec<EventRecord>, StateError> {
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
    fn prune_events(&self, before_ms: i64) -> Result<usize, StateError> {
        blocking(|| {
            let conn = self.conn();
            Ok(retry_busy(|| {
                conn.execute("DELETE FROM events WHERE at < ?1", [before_ms])
            })?)
        })
    }

    /// Finds a sandbox by id, name, `owner/name`, or unique id prefix. A name that several
    /// owners use finds none (their `owner/name` does).
    fn find(&self, key: &str) -> Result<Option<SandboxRecord>, StateError> {
        blocking(|| find_in(&self.conn(), "sandboxes", COLUMNS, key, row))
    }

    /// The sandbox `owner` (none: local use) named `name`.
    fn find_named(
        &self,
        owner: Option<&str>,
        name: &str,
    ) -> Result<Option<SandboxRecord>, StateError> {
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
    fn list(&self) -> Result<Vec<SandboxRecord>, StateError> {
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
    fn set_expiry(&self, id: &str, expires_at: Option<i64>) -> Result<(), StateError> {
        blocking(|| {
            let n = self.conn().execute(
                "UPDATE sandboxes SET expires_at = ?2 WHERE id = ?1",
                params![id, expires_at],
            )?;
            if n == 0 {
                return Err(StateError::NoSuchSandbox(id.to_string()));
            }
            Ok(())
        })
    }

    fn set_network(
        &self,
        id: &str,
        policy: &NetworkPolicy,
        actor: &Actor,
    ) -> Result<(), StateError> {
        let text = serde_json::to_string(policy).expect("serializes");
        blocking(|| {
            let mut conn = self.conn();
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let owner: Option<Option<String>> = tx
                .query_row("SELECT owner FROM sandboxes WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .optional()?;
            let Some(owner) = owner else {
                return Err(StateError::NoSuchSandbox(id.to_string()));
            };
            tx.execute(
                "UPDATE sandboxes SET network = ?2 WHERE id = ?1",
                params![id, text],
            )?;
            tx.execute(
                "INSERT INTO events (at, sandbox, owner, state, actor, cause) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    now_ms(),
                    id,
                    owner,
                    EventState::Network.as_str(),
                    actor.to_string(),
                    policy.to_string()
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    fn delete(&self, id: &str, actor: &Actor) -> Result<(), StateError> {
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
    fn insert_snapshot(
        &self,
        s: &SnapshotRecord,
        limits: Option<&Limits>,
    ) -> Result<(), StateError> {
        blocking(|| {
            let mut conn = self.conn();
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            // Admission in the same (write-locked) transaction as the insert.
            if let (Some(l), Some(owner)) = (limits, s.owner.as_deref()) {
                let n: i64 = tx.query_row(
                    "SELECT count(*) FROM snapshots WHERE owner = ?1 AND template = 0",
                    [owner],
                    |r| r.get(0),
                )?;
                l.admit_snapshot(owner, u32::try_from(n).unwrap_or(u32::MAX))?;
            }
            let r = tx.execute(
                &format!("INSERT INTO snapshots ({SNAP_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"),
                params![s.id, s.name, s.sandbox, s.image, s.cpus, s.memory_mib, s.disk_mib, s.created_at, s.dir, s.template, s.image_digest, s.owner],
            );
            match r {
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    Err(StateError::NameTaken(s.name.clone().unwrap_or_default()))
                }
                r => {
                    r?;
                    tx.commit()?;
                    Ok(())
                }
            }
        })
    }

    /// Finds a snapshot by id, name, `owner/name`, or unique id prefix. A name that several
    /// owners use finds none (their `owner/name` does).
    fn find_snapshot(&self, key: &str) -> Result<Option<SnapshotRecord>, StateError> {
        blocking(|| find_in(&self.conn(), "snapshots", SNAP_COLUMNS, key, snap_row))
    }

    /// The snapshot `owner` (none: local use) named `name`.
    fn find_snapshot_named(
        &self,
        owner: Option<&str>,
        name: &str,
    ) -> Result<Option<SnapshotRecord>, StateError> {
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
    fn list_snapshots(&self) -> Result<Vec<SnapshotRecord>, StateError> {
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
    fn delete_snapshot(&self, id: &str) -> Result<(), StateError> {
        blocking(|| {
            self.conn()
                .execute("DELETE FROM snapshots WHERE id = ?1", [id])?;
            Ok(())
        })
    }

    /// What `owner`'s sandboxes hold (all but the stopped and failed): how many, their vCPUs
    /// and memory (MiB). One query, for admission: no listing, no lock held over a scan.
    fn held_by(&self, owner: &str) -> Result<(u32, u32, u64), StateError> {
        blocking(|| held(&self.conn(), owner))
    }

    /// Sandboxes using an image.
    fn using_image(&self, digest: &str) -> Result<Vec<String>, StateError> {
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
    fn set_image_name(&self, name: &str, digest: &str, now: i64) -> Result<(), StateError> {
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
    fn image_name(&self, name: &str) -> Result<Option<String>, StateError> {
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
    fn image_names(&self) -> Result<Vec<(String, String)>, StateError> {
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
    fn remove_image_name(&self, name: &str) -> Result<(), StateError> {
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
    use crate::tests::owned;

    #[test]
    fn the_suite_on_sqlite() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state.db");
        crate::tests::suite(&SqliteStore::open(&path).unwrap(), &|| {
            Box::new(SqliteStore::open(&path).unwrap())
        });
        // Reopening keeps the data and does not re-run migrations.
        let db = SqliteStore::open(&path).unwrap();
        assert!(!db.list().unwrap().is_empty());
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
        let db = SqliteStore::open(&path).unwrap();
        let r = db.find_named(Some("acme"), "web").unwrap().unwrap();
        assert_eq!((r.id.as_str(), r.cpus), ("bbbb00000001", 2));
        assert_eq!(r.labels.get("k").map(String::as_str), Some("v"));
        let s = db
            .find_snapshot_named(Some("acme"), "base")
            .unwrap()
            .unwrap();
        assert_eq!(s.id, "cccc00000001");
        // The same name under another owner is now allowed.
        db.insert(
            &owned("bbbb00000002", Some("blue"), "web"),
            &Actor::Local,
            None,
        )
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
        let db = SqliteStore::open(&path).unwrap();
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
}
