//! API keys and tenants, in `COVE_HOME/coved.db` (SQLite).
//!
//! A key is 256 random bits, shown once (`cove_` + 64 hex digits, or `e2b_` + 64 hex digits
//! for the E2B SDKs, which check that form; either works everywhere) and stored only as its
//! sha256: a database leak gives no usable key, and with that much entropy a slow hash adds
//! nothing. A key belongs to one tenant and has scopes: `read`, `exec` (implies read, and
//! creating, changing and removing the tenant's sandboxes), `admin` (implies exec). An
//! `operator` key belongs to no tenant: it acts as the host's administrator does (every
//! tenant's resources, and what every tenant shares: images, templates, the scrub).

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::Path;
use std::sync::Mutex;

use cove_host::Actor;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use sha2::Digest as _;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// List and inspect.
    Read,
    /// Create, change, exec in and remove sandboxes.
    Exec,
    /// Everything of its tenant's.
    Admin,
    /// The host's operator (no tenant): every tenant's resources, and what they all share —
    /// images, templates, the scrub.
    Operator,
}

impl Scope {
    /// Parses `read`, `exec` or `admin`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Self::Read),
            "exec" => Some(Self::Exec),
            "admin" => Some(Self::Admin),
            "operator" => Some(Self::Operator),
            _ => None,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Exec => "exec",
            Self::Admin => "admin",
            Self::Operator => "operator",
        }
    }
}

/// Who is asking: a key of a tenant, or the host's administrator (a root caller on coved's
/// Unix socket, checked by its peer credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Who acts, for the event log.
    pub actor: Actor,
    /// The tenant whose resources it sees; none for the host's administrator, who sees every
    /// tenant's and creates owner-less ones.
    pub tenant: Option<String>,
    /// Its highest scope (the others are implied).
    pub scope: Scope,
}

impl Principal {
    /// The host's administrator.
    pub fn local() -> Self {
        Self {
            actor: Actor::Local,
            tenant: None,
            scope: Scope::Operator,
        }
    }

    /// True when the key's scope covers `need`.
    pub fn allows(&self, need: Scope) -> bool {
        self.scope >= need
    }

    /// Whether it may see a resource of `owner`: its tenant's own, or everything for the
    /// host's administrator.
    pub fn sees(&self, owner: Option<&str>) -> bool {
        match &self.tenant {
            None => true,
            Some(t) => owner == Some(t.as_str()),
        }
    }

    /// The key's id (rate limits are per key); none for the host's administrator.
    pub fn key_id(&self) -> Option<&str> {
        match &self.actor {
            Actor::Key(id) => Some(id),
            _ => None,
        }
    }
}

/// A key as listed (never its secret).
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    /// Id (12 hex digits).
    pub id: String,
    /// Tenant; none for an operator's key.
    pub tenant: Option<String>,
    /// Scope.
    pub scope: Scope,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// When it was revoked.
    pub revoked_at: Option<i64>,
}

/// A tenant's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Quota {
    /// Sandboxes not stopped or failed.
    pub sandboxes: u32,
    /// Their vCPUs.
    pub vcpus: u32,
    /// Their memory.
    pub memory_mib: u32,
    /// Snapshots (templates are the host's and count against none).
    pub snapshots: u32,
}

impl Default for Quota {
    fn default() -> Self {
        Self {
            sandboxes: 100,
            vcpus: 64,
            memory_mib: 64 << 10,
            snapshots: 100,
        }
    }
}

const MIGRATIONS: &[&str] = &[
    r"
CREATE TABLE keys (
    id          TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    scope       TEXT NOT NULL,
    hash        TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE TABLE quotas (
    tenant      TEXT PRIMARY KEY,
    sandboxes   INTEGER NOT NULL,
    vcpus       INTEGER NOT NULL,
    memory_mib  INTEGER NOT NULL
);
",
    r"
ALTER TABLE quotas ADD COLUMN snapshots INTEGER NOT NULL DEFAULT 100;
",
];

/// The key store.
#[derive(Debug)]
pub struct Keys {
    conn: Mutex<Connection>,
}

/// `bytes` random bytes from the kernel, as hex.
pub(crate) fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut b = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    }))
}

fn hash(secret: &str) -> String {
    sha2::Sha256::digest(secret.as_bytes())
        .iter()
        .fold(String::new(), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Tenant names: what fits in logs and metrics labels unquoted.
pub fn valid_tenant(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 64
        && t.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Applies the migrations not applied yet, under the write lock; returns the version found (a
/// version newer than this build knows is left alone for the caller to refuse).
fn migrate(conn: &mut Connection) -> rusqlite::Result<usize> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let done: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let done = usize::try_from(done).unwrap_or(0);
    if done > MIGRATIONS.len() {
        return Ok(done);
    }
    for m in &MIGRATIONS[done..] {
        tx.execute_batch(m)?;
    }
    tx.pragma_update(
        None,
        "user_version",
        i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX),
    )?;
    tx.commit()?;
    Ok(done)
}

/// Runs `f` again while SQLite says the database is busy or locked (up to 10 s).
fn retry_locked<T>(mut f: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match f() {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            r => return r,
        }
    }
}

impl Keys {
    /// Opens (creating and migrating) the store.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // Several processes opening the store at once (coved and `coved keys`), or one opening
        // it after another was killed mid-write (WAL recovery): SQLite answers some of those
        // lock waits with "busy" at once instead of using the busy timeout, so retry them.
        retry_locked(|| {
            let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                conn.pragma_update(None, "journal_mode", "WAL")?;
            }
            Ok(())
        })?;
        let done = retry_locked(|| migrate(&mut conn))?;
        anyhow::ensure!(
            done <= MIGRATIONS.len(),
            "coved.db has schema version {done}, newer than this coved knows; upgrade it"
        );
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new key for `tenant` (none: an operator's key, and only that); returns its info and
    /// the secret (shown once).
    #[cfg(test)]
    pub fn create(&self, tenant: Option<&str>, scope: Scope) -> anyhow::Result<(KeyInfo, String)> {
        self.create_as(tenant, scope, "cove_")
    }

    /// A new key for `tenant` whose secret starts with `prefix` (`cove_`, or `e2b_` for the
    /// E2B SDKs); returns its info and the secret (shown once).
    pub fn create_as(
        &self,
        tenant: Option<&str>,
        scope: Scope,
        prefix: &str,
    ) -> anyhow::Result<(KeyInfo, String)> {
        match tenant {
            Some(t) => {
                anyhow::ensure!(
                    valid_tenant(t),
                    "invalid tenant {t:?}: 1 to 64 of a-z, 0-9, - and _"
                );
                anyhow::ensure!(
                    scope != Scope::Operator,
                    "an operator's key belongs to no tenant (leave --tenant out)"
                );
            }
            None => anyhow::ensure!(
                scope == Scope::Operator,
                "a key of scope {} belongs to a tenant (--tenant)",
                scope.name()
            ),
        }
        let id = random_hex(6)?;
        let secret = format!("{prefix}{}", random_hex(32)?);
        let created_at = now_ms();
        let conn = self.conn();
        retry_locked(|| {
            conn.execute(
                "INSERT INTO keys (id, tenant, scope, hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, tenant.unwrap_or(""), scope.name(), hash(&secret), created_at],
            )
        })?;
        drop(conn);
        Ok((
            KeyInfo {
                id,
                tenant: tenant.map(str::to_string),
                scope,
                created_at,
                revoked_at: None,
            },
            secret,
        ))
    }

    /// The principal of a presented secret; `None` for unknown or revoked keys.
    pub fn authenticate(&self, secret: &str) -> anyhow::Result<Option<Principal>> {
        let row: Option<(String, String, String)> = self
            .conn()
            .query_row(
                "SELECT id, tenant, scope FROM keys WHERE hash = ?1 AND revoked_at IS NULL",
                [hash(secret)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        Ok(row.and_then(|(key_id, tenant, scope)| {
            let scope = Scope::parse(&scope)?;
            // Only an operator's key has no tenant (`create` keeps it so).
            let tenant = match scope {
                Scope::Operator => None,
                _ if tenant.is_empty() => return None,
                _ => Some(tenant),
            };
            Some(Principal {
                actor: Actor::Key(key_id),
                tenant,
                scope,
            })
        }))
    }

    /// Every key, oldest first.
    pub fn list(&self) -> anyhow::Result<Vec<KeyInfo>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, tenant, scope, created_at, revoked_at FROM keys ORDER BY created_at, id",
        )?;
        let v = stmt
            .query_map([], |r| {
                let scope: String = r.get(2)?;
                let tenant: String = r.get(1)?;
                Ok(KeyInfo {
                    id: r.get(0)?,
                    tenant: (!tenant.is_empty()).then_some(tenant),
                    scope: Scope::parse(&scope).unwrap_or(Scope::Read),
                    created_at: r.get(3)?,
                    revoked_at: r.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(v)
    }

    /// Revokes a key; false when there is no such (unrevoked) key.
    pub fn revoke(&self, id: &str) -> anyhow::Result<bool> {
        let n = self.conn().execute(
            "UPDATE keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            params![id, now_ms()],
        )?;
        Ok(n == 1)
    }

    /// A tenant's quota (the defaults unless set).
    pub fn quota(&self, tenant: &str) -> anyhow::Result<Quota> {
        let q = self
            .conn()
            .query_row(
                "SELECT sandboxes, vcpus, memory_mib, snapshots FROM quotas WHERE tenant = ?1",
                [tenant],
                |r| {
                    Ok(Quota {
                        sandboxes: r.get(0)?,
                        vcpus: r.get(1)?,
                        memory_mib: r.get(2)?,
                        snapshots: r.get(3)?,
                    })
                },
            )
            .optional()?;
        Ok(q.unwrap_or_default())
    }

    /// Sets a tenant's quota.
    pub fn set_quota(&self, tenant: &str, q: Quota) -> anyhow::Result<()> {
        anyhow::ensure!(valid_tenant(tenant), "invalid tenant {tenant:?}");
        self.conn().execute(
            "INSERT INTO quotas (tenant, sandboxes, vcpus, memory_mib, snapshots)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(tenant) DO UPDATE SET sandboxes = ?2, vcpus = ?3, memory_mib = ?4,
             snapshots = ?5",
            params![tenant, q.sandboxes, q.vcpus, q.memory_mib, q.snapshots],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_authenticate_until_revoked_and_are_stored_hashed() {
        let d = tempfile::tempdir().unwrap();
        let keys = Keys::open(&d.path().join("coved.db")).unwrap();
        let (info, secret) = keys.create(Some("acme"), Scope::Exec).unwrap();
        assert!(
            secret.starts_with("cove_") && secret.len() == 69,
            "{secret}"
        );
        let p = keys.authenticate(&secret).unwrap().unwrap();
        assert_eq!((p.tenant.as_deref(), p.scope), (Some("acme"), Scope::Exec));
        assert!(p.allows(Scope::Read) && p.allows(Scope::Exec) && !p.allows(Scope::Admin));
        assert!(keys.authenticate("cove_wrong").unwrap().is_none());
        let (_, e2b) = keys.create_as(Some("acme"), Scope::Exec, "e2b_").unwrap();
        assert!(e2b.starts_with("e2b_") && e2b[4..].bytes().all(|b| b.is_ascii_hexdigit()));
        let p = keys.authenticate(&e2b).unwrap().unwrap();
        assert_eq!(p.tenant.as_deref(), Some("acme"));
        // The database, its WAL and shared memory: the secret is in none of them.
        for f in std::fs::read_dir(d.path()).unwrap().flatten() {
            let raw = std::fs::read(f.path()).unwrap();
            assert!(
                !raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "the secret itself is stored in {}",
                f.path().display()
            );
        }
        assert!(keys.revoke(&info.id).unwrap());
        assert!(!keys.revoke(&info.id).unwrap());
        assert!(keys.authenticate(&secret).unwrap().is_none());
        assert!(keys.create(Some("Bad Tenant"), Scope::Read).is_err());
        // An operator's key has no tenant, and only it has none.
        assert!(keys.create(None, Scope::Admin).is_err());
        assert!(keys.create(Some("acme"), Scope::Operator).is_err());
        let (_, op) = keys.create(None, Scope::Operator).unwrap();
        let p = keys.authenticate(&op).unwrap().unwrap();
        assert_eq!((p.tenant.as_deref(), p.scope), (None, Scope::Operator));
        assert!(p.allows(Scope::Admin));
        assert_eq!(keys.quota("acme").unwrap(), Quota::default());
        let q = Quota {
            sandboxes: 1,
            vcpus: 2,
            memory_mib: 512,
            snapshots: 3,
        };
        keys.set_quota("acme", q).unwrap();
        assert_eq!(keys.quota("acme").unwrap(), q);
    }

    #[test]
    fn many_openers_of_a_new_store_all_get_in() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("coved.db");
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let k = Keys::open(&path).unwrap();
                    k.create(Some(&format!("t{i}")), Scope::Read).unwrap();
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(Keys::open(&path).unwrap().list().unwrap().len(), 8);
    }
}
