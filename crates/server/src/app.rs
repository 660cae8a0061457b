//! What every route shares: the host, keys and quotas, metrics, rate buckets, and the lookups
//! that find the caller's resources (another tenant's is `404`, exactly like a missing one).
//! The routes themselves are in `routes/`, one module per resource; none holds sandbox logic
//! of its own: they call the `host` library.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use cove_host::{Host, HostError, Limits, SandboxRecord, SnapshotRecord};

use crate::auth::Auth;
use crate::error::ApiError;
use crate::keys::{Keys, Principal};
use crate::metrics::Metrics;

/// Output kept per stream of a non-streaming exec.
pub const EXEC_OUTPUT_LIMIT: usize = 1 << 20;
/// Largest JSON request body.
pub const BODY_LIMIT: usize = 1 << 20;

/// A token bucket per key.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// What every handler shares.
#[derive(Debug)]
pub struct Inner {
    /// This host's sandboxes.
    pub host: Host,
    /// Keys and quotas.
    pub keys: Keys,
    /// Metrics.
    pub metrics: Metrics,
    /// Requests per second allowed per key (and as many in a burst).
    pub rate: f64,
    /// `/metrics` is served on the API listener (not moved by `--metrics-listen`).
    pub metrics_on_api: bool,
    buckets: Mutex<HashMap<String, Bucket>>,
    /// Image pulls started through the API.
    pub pulls: crate::routes::pulls::Pulls,
    /// Who may reach sandboxes' ports, and under which domain.
    pub traffic: crate::traffic::Traffic,
    /// The scheme and port of the TCP listener signed URLs name; none on a Unix socket only.
    pub public: Option<(String, u16)>,
    /// What running sandboxes used over the last hour.
    pub usage: crate::usage::History,
    /// E2B's polled directory watchers.
    pub watchers: crate::e2b::watchers::Watchers,
}

/// The shared state.
pub type App = Arc<Inner>;

/// The state for `host` and `keys`.
pub fn state(
    host: Host,
    keys: Keys,
    rate: f64,
    metrics_on_api: bool,
    traffic: crate::traffic::Traffic,
    public: Option<(String, u16)>,
) -> App {
    Arc::new(Inner {
        traffic,
        public,
        host,
        keys,
        metrics: Metrics::default(),
        rate,
        metrics_on_api,
        buckets: Mutex::new(HashMap::new()),
        usage: crate::usage::History::default(),
        watchers: crate::e2b::watchers::Watchers::default(),
        pulls: crate::routes::pulls::Pulls::default(),
    })
}

/// Housekeeping, every ten minutes from the start: the event log's retention, finished pulls,
/// and the rate buckets of keys gone quiet.
pub async fn maintain(app: App, event_retention: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    loop {
        tick.tick().await;
        let cutoff = i64::try_from(event_retention.as_millis())
            .ok()
            .and_then(|keep| now_ms().checked_sub(keep));
        let events = match cutoff.map(|c| app.host.prune_events(c)) {
            Some(Ok(n)) => n,
            Some(Err(e)) => {
                tracing::warn!("pruning the event log: {e}");
                0
            }
            None => 0,
        };
        let pulls = app.pulls.sweep(crate::routes::pulls::Pulls::KEEP);
        let buckets = app.sweep_buckets(Duration::from_secs(60));
        tracing::debug!(events, pulls, buckets, "housekeeping");
    }
}

/// Every `every` (the first one after `every` too: not at start-up, when restores are busiest):
/// the scrub, which finds the bit rot a restore's remembered check cannot see.
pub async fn scrub_every(app: App, every: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tick.tick().await;
        match app.host.scrub(None).await {
            Ok(s) => tracing::info!(checked = s.checked, corrupted = s.corrupted.len(), "scrub"),
            Err(e) => tracing::warn!("scrub: {e}"),
        }
    }
}

/// Every few seconds: records the sandboxes whose cove-vm put them away by itself (an idle
/// pause or hibernation, a time to live that ran out) and stores idle hibernations in the blob
/// store — a jailed cove-vm sees no blob store, so the host copies what it saved.
pub async fn watch_sandboxes(app: App) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    // Hibernations known to be in the blob store, by sandbox and the time its record last
    // changed (a sandbox hibernated again has a new one): not looked up again.
    let mut stored: std::collections::HashSet<(String, i64)> = Default::default();
    loop {
        tick.tick().await;
        let all = match app.host.list() {
            Ok(all) => all,
            Err(e) => {
                tracing::warn!("listing sandboxes: {e}");
                continue;
            }
        };
        // Sandboxes whose agent stopped answering: those that answer again are running again.
        app.host.probe_unresponsive(&all).await;
        let hibernated: Vec<_> = all
            .into_iter()
            .filter(|r| r.state == cove_api::SandboxState::Hibernated)
            .collect();
        stored.retain(|(id, at)| {
            hibernated
                .iter()
                .any(|r| &r.id == id && r.updated_at == *at)
        });
        let unknown: Vec<_> = hibernated
            .iter()
            .filter(|r| !stored.contains(&(r.id.clone(), r.updated_at)))
            .cloned()
            .collect();
        match app.host.store_hibernations(unknown).await {
            Ok(s) => {
                for r in &hibernated {
                    if s.present.contains(&r.id) {
                        stored.insert((r.id.clone(), r.updated_at));
                    }
                }
            }
            Err(e) => tracing::warn!("storing hibernations: {e}"),
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Inner {
    /// Forgets the buckets of keys idle for `idle` (at least a second: a bucket refills
    /// completely within one, so a forgotten one is exactly a new full one).
    fn sweep_buckets(&self, idle: Duration) -> usize {
        let idle = idle.max(Duration::from_secs(1));
        let mut b = self.buckets.lock().expect("buckets");
        let before = b.len();
        b.retain(|_, bucket| bucket.at.elapsed() < idle);
        before - b.len()
    }

    pub(crate) fn take_token(&self, key: &str) -> Result<(), ApiError> {
        let mut b = self.buckets.lock().expect("buckets");
        let now = Instant::now();
        let bucket = b.entry(key.to_string()).or_insert(Bucket {
            tokens: self.rate,
            at: now,
        });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * self.rate)
            .min(self.rate);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "over this key's rate limit of {} requests a second",
                    self.rate
                ),
            ));
        }
        bucket.tokens -= 1.0;
        Ok(())
    }

    /// The caller's sandbox `id`. A tenant's key names a whole id or one of the tenant's
    /// sandbox names: another tenant's, a malformed id and a missing one all read `404`. The
    /// host's administrator names any sandbox as the host does (id, unique id prefix, name,
    /// `owner/name`).
    pub(crate) fn owned(&self, p: &Principal, id: &str) -> Result<SandboxRecord, ApiError> {
        let nf = || ApiError::not_found("sandbox", id);
        let Some(tenant) = &p.tenant else {
            return match self.host.get(id) {
                Err(HostError::NoSuchSandbox(_)) => Err(nf()),
                r => Ok(r?),
            };
        };
        if !is_id(id) {
            return match self.host.get_named(Some(tenant), id) {
                Ok(r) => Ok(r),
                Err(HostError::NoSuchSandbox(_)) => Err(nf()),
                Err(e) => Err(e.into()),
            };
        }
        match self.host.get(id) {
            Ok(r) if r.id == id && p.sees(r.owner.as_deref()) => Ok(r),
            Ok(_) | Err(HostError::NoSuchSandbox(_)) => Err(nf()),
            Err(e) => Err(e.into()),
        }
    }

    /// The caller's snapshot `id`, found as [`Inner::owned`] finds sandboxes.
    pub(crate) fn owned_snapshot(
        &self,
        p: &Principal,
        id: &str,
    ) -> Result<SnapshotRecord, ApiError> {
        let nf = || ApiError::not_found("snapshot", id);
        let Some(tenant) = &p.tenant else {
            return match self.host.snapshot_record(id) {
                Err(HostError::NoSuchSnapshot(_)) => Err(nf()),
                r => Ok(r?),
            };
        };
        if !is_id(id) {
            return match self.host.snapshot_named(Some(tenant), id) {
                Ok(s) => Ok(s),
                Err(HostError::NoSuchSnapshot(_)) => Err(nf()),
                Err(e) => Err(e.into()),
            };
        }
        match self.host.snapshot_record(id) {
            Ok(s) if s.id == id && p.sees(s.owner.as_deref()) => Ok(s),
            Ok(_) | Err(HostError::NoSuchSnapshot(_)) => Err(nf()),
            Err(e) => Err(e.into()),
        }
    }

    /// The caller's limits (its tenant's quota); none for the host's administrator. The store
    /// admits each sandbox against them in the transaction that records it.
    pub(crate) fn limits(&self, p: &Principal) -> Result<Option<Limits>, ApiError> {
        let Some(tenant) = p.tenant.as_deref() else {
            return Ok(None);
        };
        let q = self.keys.quota(tenant).map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })?;
        Ok(Some(Limits {
            sandboxes: q.sandboxes,
            vcpus: q.vcpus,
            memory_mib: q.memory_mib.into(),
            snapshots: q.snapshots,
        }))
    }

    /// Refuses early what cannot fit: `count` more sandboxes of `cpus` and `memory_mib` each
    /// (a fork, before its snapshot is taken). Only a pre-check: the store admits each one.
    pub(crate) fn fits(
        &self,
        p: &Principal,
        count: u32,
        cpus: u32,
        memory_mib: u32,
    ) -> Result<(), ApiError> {
        let (Some(tenant), Some(l)) = (p.tenant.as_deref(), self.limits(p)?) else {
            return Ok(());
        };
        let held = self.host.held_by(tenant)?;
        l.admit_many(tenant, held, count, cpus, memory_mib)
            .map_err(HostError::from)?;
        Ok(())
    }
}

/// Runs a lifecycle operation for `auth` (the event log names its actor), timed into
/// `cove_operation_seconds`. It runs as a task of its own: a client that goes away (a closed
/// connection drops its handler) does not cut an operation in half; it finishes and records
/// its outcome.
pub(crate) async fn run_op<T, Fut>(
    app: &App,
    auth: &Auth,
    op: &'static str,
    f: impl FnOnce(App) -> Fut,
) -> Result<T, ApiError>
where
    T: Send + 'static,
    Fut: Future<Output = Result<T, HostError>> + Send + 'static,
{
    let t = Instant::now();
    let task = tokio::spawn(cove_host::ACTOR.scope(auth.0.actor.clone(), f(app.clone())));
    let r = task.await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the {op} failed: {e}"),
        )
    })?;
    if r.is_ok() {
        app.metrics.operation(op, t.elapsed().as_secs_f64());
    }
    Ok(r?)
}

/// A whole sandbox or snapshot id: 12 hex digits (names never look like one).
pub(crate) fn is_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_hexdigit())
}
