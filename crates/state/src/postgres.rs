//! The PostgreSQL store: a database outside the host, the one several hosts will share (`coved --database
//! postgres://…`). The schema is `migrations/postgres/`; the version applied is kept in
//! `cove_schema`, and migrations run under an advisory lock, so hosts starting together do not
//! race.
//!
//! The client is the `postgres` crate's synchronous one, like the SQLite store's: it drives a
//! runtime of its own, so every call goes through [`crate::blocking`] (on coved's workers that
//! leaves the async runtime first).

use std::sync::{Mutex, MutexGuard};

use ::postgres::error::SqlState;
use ::postgres::types::ToSql;
use ::postgres::{Client, GenericClient, NoTls, Row};
use cove_model::{Actor, EventState, NetworkPolicy, Reason, SandboxState};

use crate::{
    EventRecord, Limits, SandboxRecord, SnapshotRecord, StateError, StateStore, blocking, now_ms,
};

/// Schema migrations, applied in order.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/postgres/0001_schema.sql"),
    include_str!("../migrations/postgres/0002_network.sql"),
    include_str!("../migrations/postgres/0003_expires_at.sql"),
];

/// Serializes migrations of every host sharing the database (`pg_advisory_xact_lock`).
const MIGRATION_LOCK: i64 = 0x636f_7665; // "cove"

const COLUMNS: &str = "id, name, image, state, cpus, memory_mib, disk_mib, created_at, engine, accel, pid, socket, dir, boot_ms, reason, image_digest, owner, labels, env, reason_kind, updated_at, op, network, expires_at";

const SNAP_COLUMNS: &str = "id, name, sandbox, image, cpus, memory_mib, disk_mib, created_at, dir, template, image_digest, owner";

/// The PostgreSQL store.
pub struct PostgresStore {
    client: Mutex<Client>,
    /// Where, without a password.
    url: String,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// A URL with its password left out, for logs and errors.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or_default();
            format!("{}{user}@{}", &url[..s + 3], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

fn u32_col(r: &Row, name: &'static str) -> Result<u32, StateError> {
    let v: i32 = r.try_get(name)?;
    u32::try_from(v).map_err(|_| StateError::OutOfRange(name))
}

fn i32_of(v: u32, name: &'static str) -> Result<i32, StateError> {
    i32::try_from(v).map_err(|_| StateError::OutOfRange(name))
}

fn json_col<T: serde::de::DeserializeOwned>(r: &Row, name: &'static str) -> Result<T, StateError> {
    let s: String = r.try_get(name)?;
    serde_json::from_str(&s).map_err(|_| StateError::OutOfRange(name))
}

fn row(r: &Row) -> Result<SandboxRecord, StateError> {
    let reason = match r.try_get::<_, Option<String>>("reason_kind")? {
        Some(k) => Some(Reason::from_parts(&k, r.try_get("reason")?)?),
        None => None,
    };
    Ok(SandboxRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        image: r.try_get("image")?,
        image_digest: r.try_get("image_digest")?,
        state: r.try_get::<_, String>("state")?.parse()?,
        cpus: u32_col(r, "cpus")?,
        memory_mib: u32_col(r, "memory_mib")?,
        disk_mib: u32_col(r, "disk_mib")?,
        created_at: r.try_get("created_at")?,
        engine: r.try_get::<_, String>("engine")?.parse()?,
        accel: r.try_get::<_, String>("accel")?.parse()?,
        pid: r
            .try_get::<_, Option<i32>>("pid")?
            .map(|p| u32::try_from(p).map_err(|_| StateError::OutOfRange("pid")))
            .transpose()?,
        socket: r.try_get("socket")?,
        dir: r.try_get("dir")?,
        boot_ms: r.try_get("boot_ms")?,
        reason,
        updated_at: r.try_get("updated_at")?,
        op: r.try_get("op")?,
        owner: r.try_get("owner")?,
        labels: json_col(r, "labels")?,
        env: json_col(r, "env")?,
        network: json_col(r, "network")?,
        expires_at: r.try_get("expires_at")?,
    })
}

fn snap_row(r: &Row) -> Result<SnapshotRecord, StateError> {
    Ok(SnapshotRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        sandbox: r.try_get("sandbox")?,
        image: r.try_get("image")?,
        image_digest: r.try_get("image_digest")?,
        cpus: u32_col(r, "cpus")?,
        memory_mib: u32_col(r, "memory_mib")?,
        disk_mib: u32_col(r, "disk_mib")?,
        created_at: r.try_get("created_at")?,
        dir: r.try_get("dir")?,
        template: r.try_get("template")?,
        owner: r.try_get("owner")?,
    })
}

fn log_event(
    c: &mut impl GenericClient,
    s: &SandboxRecord,
    state: EventState,
    actor: &Actor,
) -> Result<(), StateError> {
    c.execute(
        "INSERT INTO events (at, sandbox, owner, state, actor, cause) VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &now_ms(),
            &s.id,
            &s.owner,
            &state.as_str(),
            &actor.to_string(),
            &s.reason.as_ref().map(ToString::to_string),
        ],
    )?;
    Ok(())
}

/// What an owner's sandboxes hold (all but the stopped and failed): count, vCPUs, memory.
fn held(c: &mut impl GenericClient, owner: &str) -> Result<(u32, u32, u64), StateError> {
    let r = c.query_one(
        "SELECT count(*), coalesce(sum(cpus), 0)::bigint, coalesce(sum(memory_mib), 0)::bigint
         FROM sandboxes WHERE owner = $1 AND state NOT IN ($2, $3)",
        &[
            &owner,
            &SandboxState::Stopped.as_str(),
            &SandboxState::Failed.as_str(),
        ],
    )?;
    let (n, cpus, mem): (i64, i64, i64) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
    Ok((
        u32::try_from(n).unwrap_or(u32::MAX),
        u32::try_from(cpus).unwrap_or(u32::MAX),
        u64::try_from(mem).unwrap_or(0),
    ))
}

/// A unique index refused the row: the name is taken (ids are random and never collide).
fn name_taken(e: &::postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

/// Finds a row of `table` as the SQLite store does: by id, then by name (one owner's only),
/// then by `owner/name`, then by a unique id prefix of at least 4.
fn find_in<T>(
    c: &mut Client,
    table: &str,
    columns: &str,
    key: &str,
    map: fn(&Row) -> Result<T, StateError>,
) -> Result<Option<T>, StateError> {
    let one = |c: &mut Client,
               sql: &str,
               args: &[&(dyn ToSql + Sync)]|
     -> Result<Option<T>, StateError> {
        let rows = c.query(
            &format!("SELECT {columns} FROM {table} WHERE {sql} LIMIT 2"),
            args,
        )?;
        if rows.len() == 1 {
            map(&rows[0]).map(Some)
        } else {
            Ok(None)
        }
    };
    if let Some(r) = one(c, "id = $1", &[&key])? {
        return Ok(Some(r));
    }
    let named: i64 = c
        .query_one(
            &format!("SELECT count(*) FROM {table} WHERE name = $1"),
            &[&key],
        )?
        .try_get(0)?;
    if named > 0 {
        return one(c, "name = $1", &[&key]);
    }
    if let Some((owner, name)) = key.split_once('/') {
        return one(c, "owner = $1 AND name = $2", &[&owner, &name]);
    }
    if key.len() < 4 {
        return Ok(None);
    }
    one(c, "starts_with(id, $1)", &[&key])
}

impl PostgresStore {
    /// Connects (`postgres://USER[:PASSWORD]@HOST:PORT/DB`) and migrates the schema.
    pub fn connect(url: &str) -> Result<Self, StateError> {
        let client = blocking(|| Client::connect(url, NoTls))?;
        let store = Self {
            client: Mutex::new(client),
            url: redacted(url),
        };
        store.migrate()?;
        Ok(store)
    }

    fn client(&self) -> MutexGuard<'_, Client> {
        // A panic while holding the lock leaves the connection usable: the server rolled back.
        self.client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn migrate(&self) -> Result<(), StateError> {
        blocking(|| {
            let mut c = self.client();
            let mut tx = c.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
            tx.batch_execute("CREATE TABLE IF NOT EXISTS cove_schema (version INTEGER NOT NULL)")?;
            let done: Option<i32> = tx
                .query_opt("SELECT version FROM cove_schema", &[])?
                .map(|r| r.get(0));
            let done = usize::try_from(done.unwrap_or(0)).unwrap_or(0);
            if done > MIGRATIONS.len() {
                return Err(StateError::SchemaTooNew {
                    found: done,
                    known: MIGRATIONS.len(),
                });
            }
            for m in &MIGRATIONS[done..] {
                tx.batch_execute(m)?;
            }
            let now = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
            tx.execute("DELETE FROM cove_schema", &[])?;
            tx.execute("INSERT INTO cove_schema (version) VALUES ($1)", &[&now])?;
            tx.commit()?;
            Ok(())
        })
    }
}

impl StateStore for PostgresStore {
    fn id(&self) -> String {
        self.url.clone()
    }

    fn insert(
        &self,
        s: &SandboxRecord,
        actor: &Actor,
        limits: Option<&Limits>,
    ) -> Result<(), StateError> {
        blocking(|| {
            let mut c = self.client();
            let mut tx = c.transaction()?;
            // Admission in the insert's transaction; inserts of one owner take turns on an
            // advisory lock (rows being inserted cannot be locked yet), across hosts too.
            if let (Some(l), Some(owner)) = (limits, s.owner.as_deref()) {
                tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&owner])?;
                l.admit(owner, held(&mut tx, owner)?, s)?;
            }
            let r = tx.execute(
                &format!("INSERT INTO sandboxes ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24)"),
                &[
                    &s.id,
                    &s.name,
                    &s.image,
                    &s.state.as_str(),
                    &i32_of(s.cpus, "cpus")?,
                    &i32_of(s.memory_mib, "memory_mib")?,
                    &i32_of(s.disk_mib, "disk_mib")?,
                    &s.created_at,
                    &s.engine.as_str(),
                    &s.accel.as_str(),
                    &s.pid.map(|p| i32_of(p, "pid")).transpose()?,
                    &s.socket,
                    &s.dir,
                    &s.boot_ms,
                    &s.reason.as_ref().and_then(Reason::detail),
                    &s.image_digest,
                    &s.owner,
                    &serde_json::to_string(&s.labels).expect("serializes"),
                    &serde_json::to_string(&s.env).expect("serializes"),
                    &s.reason.as_ref().map(Reason::kind),
                    &s.updated_at,
                    &s.op,
                    &serde_json::to_string(&s.network).expect("serializes"),
                    &s.expires_at,
                ],
            );
            match r {
                Err(e) if name_taken(&e) => {
                    return Err(StateError::NameTaken(s.name.clone().unwrap_or_default()));
                }
                r => r?,
            };
            log_event(&mut tx, s, EventState::Entered(s.state), actor)?;
            tx.commit()?;
            Ok(())
        })
    }

    fn update(&self, s: &mut SandboxRecord, actor: &Actor) -> Result<(), StateError> {
        blocking(|| {
            let mut c = self.client();
            let mut tx = c.transaction()?;
            // Locked until the commit: a second writer waits, then checks against this one's
            // state.
            let old: SandboxState = tx
                .query_opt(
                    "SELECT state FROM sandboxes WHERE id = $1 FOR UPDATE",
                    &[&s.id],
                )?
                .ok_or_else(|| StateError::NoSuchSandbox(s.id.clone()))?
                .try_get::<_, String>(0)?
                .parse()?;
            old.check(s.state).map_err(|err| StateError::Transition {
                id: s.id.clone(),
                err,
            })?;
            let moved = old != s.state;
            if moved {
                s.updated_at = now_ms();
            }
            tx.execute(
                "UPDATE sandboxes SET state = $2, pid = $3, boot_ms = $4, reason_kind = $5, reason = $6, updated_at = $7, op = $8 WHERE id = $1",
                &[
                    &s.id,
                    &s.state.as_str(),
                    &s.pid.map(|p| i32_of(p, "pid")).transpose()?,
                    &s.boot_ms,
                    &s.reason.as_ref().map(Reason::kind),
                    &s.reason.as_ref().and_then(Reason::detail),
                    &s.updated_at,
                    &s.op,
                ],
            )?;
            if moved {
                log_event(&mut tx, s, EventState::Entered(s.state), actor)?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn set_expiry(&self, id: &str, expires_at: Option<i64>) -> Result<(), StateError> {
        blocking(|| {
            let n = self.client().execute(
                "UPDATE sandboxes SET expires_at = $2 WHERE id = $1",
                &[&id, &expires_at],
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
            let mut c = self.client();
            let mut tx = c.transaction()?;
            let owner: Option<String> = match tx.query_opt(
                "SELECT owner FROM sandboxes WHERE id = $1 FOR UPDATE",
                &[&id],
            )? {
                Some(r) => r.try_get(0)?,
                None => return Err(StateError::NoSuchSandbox(id.to_string())),
            };
            tx.execute(
                "UPDATE sandboxes SET network = $2 WHERE id = $1",
                &[&id, &text],
            )?;
            tx.execute(
                "INSERT INTO events (at, sandbox, owner, state, actor, cause) VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &now_ms(),
                    &id,
                    &owner,
                    &EventState::Network.as_str(),
                    &actor.to_string(),
                    &policy.to_string(),
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    fn delete(&self, id: &str, actor: &Actor) -> Result<(), StateError> {
        blocking(|| {
            let mut c = self.client();
            let mut tx = c.transaction()?;
            let rec = tx
                .query_opt(
                    &format!("SELECT {COLUMNS} FROM sandboxes WHERE id = $1 FOR UPDATE"),
                    &[&id],
                )?
                .map(|r| row(&r))
                .transpose()?;
            tx.execute("DELETE FROM sandboxes WHERE id = $1", &[&id])?;
            if let Some(mut rec) = rec {
                rec.reason = None;
                log_event(&mut tx, &rec, EventState::Removed, actor)?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn find(&self, key: &str) -> Result<Option<SandboxRecord>, StateError> {
        blocking(|| find_in(&mut self.client(), "sandboxes", COLUMNS, key, row))
    }

    fn find_named(
        &self,
        owner: Option<&str>,
        name: &str,
    ) -> Result<Option<SandboxRecord>, StateError> {
        blocking(|| {
            self.client()
                .query_opt(
                    &format!(
                        "SELECT {COLUMNS} FROM sandboxes WHERE coalesce(owner, '') = $1 AND name = $2"
                    ),
                    &[&owner.unwrap_or_default(), &name],
                )?
                .map(|r| row(&r))
                .transpose()
        })
    }

    fn list(&self) -> Result<Vec<SandboxRecord>, StateError> {
        blocking(|| {
            self.client()
                .query(
                    &format!("SELECT {COLUMNS} FROM sandboxes ORDER BY created_at, id"),
                    &[],
                )?
                .iter()
                .map(row)
                .collect()
        })
    }

    fn held_by(&self, owner: &str) -> Result<(u32, u32, u64), StateError> {
        blocking(|| held(&mut *self.client(), owner))
    }

    fn events(
        &self,
        after: i64,
        owner: Option<&str>,
        sandbox: Option<&str>,
        limit: u32,
    ) -> Result<Vec<EventRecord>, StateError> {
        blocking(|| {
            self.client()
                .query(
                    "SELECT seq, at, sandbox, owner, state, actor, cause FROM events
                     WHERE seq > $1 AND ($2::text IS NULL OR owner = $2)
                       AND ($3::text IS NULL OR sandbox = $3)
                     ORDER BY seq LIMIT $4",
                    &[&after, &owner, &sandbox, &i64::from(limit)],
                )?
                .iter()
                .map(|r| {
                    Ok(EventRecord {
                        seq: r.try_get("seq")?,
                        at: r.try_get("at")?,
                        sandbox: r.try_get("sandbox")?,
                        owner: r.try_get("owner")?,
                        state: r.try_get::<_, String>("state")?.parse()?,
                        actor: r.try_get::<_, String>("actor")?.parse()?,
                        cause: r.try_get("cause")?,
                    })
                })
                .collect()
        })
    }

    fn prune_events(&self, before_ms: i64) -> Result<usize, StateError> {
        blocking(|| {
            let n = self
                .client()
                .execute("DELETE FROM events WHERE at < $1", &[&before_ms])?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
    }

    fn insert_snapshot(
        &self,
        s: &SnapshotRecord,
        limits: Option<&Limits>,
    ) -> Result<(), StateError> {
        blocking(|| {
            let mut client = self.client();
            let mut tx = client.transaction()?;
            // Admission under the owner's advisory lock, as a sandbox's (see `insert`).
            if let (Some(l), Some(owner)) = (limits, s.owner.as_deref()) {
                tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&owner])?;
                let n: i64 = tx
                    .query_one(
                        "SELECT count(*) FROM snapshots WHERE owner = $1 AND NOT template",
                        &[&owner],
                    )?
                    .get(0);
                l.admit_snapshot(owner, u32::try_from(n).unwrap_or(u32::MAX))?;
            }
            let r = tx.execute(
                &format!("INSERT INTO snapshots ({SNAP_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"),
                &[
                    &s.id,
                    &s.name,
                    &s.sandbox,
                    &s.image,
                    &i32_of(s.cpus, "cpus")?,
                    &i32_of(s.memory_mib, "memory_mib")?,
                    &i32_of(s.disk_mib, "disk_mib")?,
                    &s.created_at,
                    &s.dir,
                    &s.template,
                    &s.image_digest,
                    &s.owner,
                ],
            );
            match r {
                Err(e) if name_taken(&e) => {
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

    fn find_snapshot(&self, key: &str) -> Result<Option<SnapshotRecord>, StateError> {
        blocking(|| find_in(&mut self.client(), "snapshots", SNAP_COLUMNS, key, snap_row))
    }

    fn find_snapshot_named(
        &self,
        owner: Option<&str>,
        name: &str,
    ) -> Result<Option<SnapshotRecord>, StateError> {
        blocking(|| {
            self.client()
                .query_opt(
                    &format!(
                        "SELECT {SNAP_COLUMNS} FROM snapshots WHERE coalesce(owner, '') = $1 AND name = $2"
                    ),
                    &[&owner.unwrap_or_default(), &name],
                )?
                .map(|r| snap_row(&r))
                .transpose()
        })
    }

    fn list_snapshots(&self) -> Result<Vec<SnapshotRecord>, StateError> {
        blocking(|| {
            self.client()
                .query(
                    &format!("SELECT {SNAP_COLUMNS} FROM snapshots ORDER BY created_at, id"),
                    &[],
                )?
                .iter()
                .map(snap_row)
                .collect()
        })
    }

    fn delete_snapshot(&self, id: &str) -> Result<(), StateError> {
        blocking(|| {
            self.client()
                .execute("DELETE FROM snapshots WHERE id = $1", &[&id])?;
            Ok(())
        })
    }

    fn using_image(&self, digest: &str) -> Result<Vec<String>, StateError> {
        blocking(|| {
            Ok(self
                .client()
                .query(
                    "SELECT 'sandbox ' || id FROM sandboxes WHERE image_digest = $1 AND state NOT IN ($2, $3)
                     UNION ALL SELECT 'snapshot ' || id FROM snapshots WHERE image_digest = $1 AND NOT template",
                    &[
                        &digest,
                        &SandboxState::Stopped.as_str(),
                        &SandboxState::Failed.as_str(),
                    ],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect())
        })
    }

    fn set_image_name(&self, name: &str, digest: &str, now: i64) -> Result<(), StateError> {
        blocking(|| {
            self.client().execute(
                "INSERT INTO image_names (name, digest, updated_at) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET digest = $2, updated_at = $3",
                &[&name, &digest, &now],
            )?;
            Ok(())
        })
    }

    fn image_name(&self, name: &str) -> Result<Option<String>, StateError> {
        blocking(|| {
            Ok(self
                .client()
                .query_opt("SELECT digest FROM image_names WHERE name = $1", &[&name])?
                .map(|r| r.get(0)))
        })
    }

    fn image_names(&self) -> Result<Vec<(String, String)>, StateError> {
        blocking(|| {
            Ok(self
                .client()
                .query("SELECT name, digest FROM image_names ORDER BY name", &[])?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect())
        })
    }

    fn remove_image_name(&self, name: &str) -> Result<(), StateError> {
        blocking(|| {
            self.client()
                .execute("DELETE FROM image_names WHERE name = $1", &[&name])?;
            Ok(())
        })
    }
}

/// A throw-away PostgreSQL server for tests: Debian's server binaries, a data directory of its
/// own, listening on loopback only, stopped and removed when dropped.
#[doc(hidden)]
pub mod testing {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// A running server.
    #[derive(Debug)]
    pub struct Server {
        dir: PathBuf,
        bin: PathBuf,
        port: u16,
    }

    /// The newest installed server's binaries (`/usr/lib/postgresql/VERSION/bin`).
    fn binaries() -> PathBuf {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").is_file())
            .collect();
        found.sort_by_key(|p| {
            p.parent()
                .and_then(|v| v.file_name())
                .and_then(|v| v.to_str())
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0)
        });
        found.pop().unwrap_or_else(|| {
            panic!(
                "no PostgreSQL server under /usr/lib/postgresql: run scripts/test-deps.sh (make test does)"
            )
        })
    }

    /// Runs a server binary as the `postgres` user when this is root (the server refuses root).
    fn as_server_user(bin: &Path) -> Command {
        if cove_model::is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin);
            c
        } else {
            Command::new(bin)
        }
    }

    impl Server {
        /// Creates a data directory and starts the server on a free loopback port.
        pub fn start() -> Self {
            let bin = binaries();
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let dir = std::env::temp_dir().join(format!("cove-pg-{}-{port}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("creating the data directory");
            if cove_model::is_root() {
                let ok = Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&dir)
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(ok, "chown of {} to postgres", dir.display());
            }
            let data = dir.join("data");
            let out = as_server_user(&bin.join("initdb"))
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
                .arg(&data)
                .output()
                .expect("running initdb");
            assert!(
                out.status.success(),
                "initdb: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let server = Self { dir, bin, port };
            let opts = format!(
                "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off",
                server.dir.display()
            );
            let out = as_server_user(&server.bin.join("pg_ctl"))
                .args(["-w", "-t", "60", "-l"])
                .arg(server.dir.join("log"))
                .arg("-D")
                .arg(&data)
                .args(["-o", &opts, "start"])
                .output()
                .expect("running pg_ctl");
            assert!(
                out.status.success(),
                "pg_ctl start: {}{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(server.dir.join("log")).unwrap_or_default()
            );
            server
        }

        /// The URL of database `db` on it (created on first use). Callable from anywhere, an
        /// async runtime included: the client's own runtime runs on a thread of its own.
        pub fn url(&self, db: &str) -> String {
            let admin = format!("postgres://postgres@127.0.0.1:{}/postgres", self.port);
            let name = db.to_string();
            std::thread::spawn(move || {
                let mut c = ::postgres::Client::connect(&admin, ::postgres::NoTls)
                    .expect("connecting to the test server");
                let exists = c
                    .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
                    .expect("listing databases")
                    .is_some();
                if !exists {
                    c.batch_execute(&format!("CREATE DATABASE \"{name}\""))
                        .expect("creating the database");
                }
            })
            .join()
            .expect("creating the test database");
            format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = as_server_user(&self.bin.join("pg_ctl"))
                .args(["-m", "immediate", "-D"])
                .arg(self.dir.join("data"))
                .arg("stop")
                .output();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
