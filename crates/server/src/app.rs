//! The `/v1` routes. Each handler checks the key's scope, finds the tenant's resource (another
//! tenant's is `404`, exactly like a missing one) and calls the `host` library: coved adds no
//! sandbox logic of its own.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cove_api as api;
use cove_host::agent::Event;
use cove_host::{CreateSpec, Host, HostError, SandboxRecord, SnapshotRecord};
use cove_protocol::{ExecRequest, Reply, Stream};
use serde::Deserialize;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, Json, OptionalJson, REQUEST_ID};
use crate::keys::{Keys, Principal, Scope};
use crate::metrics::Metrics;

/// Output kept per stream of a non-streaming exec.
pub const EXEC_OUTPUT_LIMIT: usize = 1 << 20;
/// Largest JSON request body.
pub const BODY_LIMIT: usize = 1 << 20;

/// Resources a tenant has asked for and not yet got (creates in flight), so concurrent creates
/// cannot together pass a quota each passes alone.
#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    sandboxes: u32,
    vcpus: u32,
    memory_mib: u64,
}

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
    pending: Mutex<HashMap<String, Usage>>,
    buckets: Mutex<HashMap<String, Bucket>>,
    /// Image pulls started through the API.
    pub pulls: crate::pulls::Pulls,
}

/// The shared state.
pub type App = Arc<Inner>;

/// The state for `host` and `keys`.
pub fn state(host: Host, keys: Keys, rate: f64, metrics_on_api: bool) -> App {
    Arc::new(Inner {
        host,
        keys,
        metrics: Metrics::default(),
        rate,
        metrics_on_api,
        pending: Mutex::new(HashMap::new()),
        buckets: Mutex::new(HashMap::new()),
        pulls: crate::pulls::Pulls::default(),
    })
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Auth(pub Principal);

impl Auth {
    /// Refuses (403) unless the key's scope covers `scope`.
    pub(crate) fn need(&self, scope: Scope) -> Result<(), ApiError> {
        if self.0.allows(scope) {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                format!(
                    "this key's scope ({:?}) does not allow this; it needs {scope:?}",
                    self.0.scope
                )
                .to_lowercase(),
            ))
        }
    }
}

impl FromRequestParts<App> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        let secret = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::unauthorized("send an API key as `Authorization: Bearer KEY`")
            })?;
        let p = app
            .keys
            .authenticate(secret.trim())
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?
            .ok_or_else(|| ApiError::unauthorized("unknown or revoked API key"))?;
        app.take_token(&p.key_id)?;
        Ok(Self(p))
    }
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
        let pulls = app.pulls.sweep(crate::pulls::Pulls::KEEP);
        let buckets = app.sweep_buckets(Duration::from_secs(60));
        tracing::debug!(events, pulls, buckets, "housekeeping");
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

    fn take_token(&self, key: &str) -> Result<(), ApiError> {
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

    /// The tenant's sandbox `id` (a whole id, or one of the tenant's sandbox names): another
    /// tenant's, a malformed id and a missing one all read `404`.
    pub(crate) fn owned(&self, p: &Principal, id: &str) -> Result<SandboxRecord, ApiError> {
        let nf = || ApiError::not_found("sandbox", id);
        if !is_id(id) {
            return match self.host.get_named(Some(&p.tenant), id) {
                Ok(r) => Ok(r),
                Err(HostError::NoSuchSandbox(_)) => Err(nf()),
                Err(e) => Err(e.into()),
            };
        }
        match self.host.get(id) {
            Ok(r) if r.id == id && r.owner.as_deref() == Some(p.tenant.as_str()) => Ok(r),
            Ok(_) | Err(HostError::NoSuchSandbox(_)) => Err(nf()),
            Err(e) => Err(e.into()),
        }
    }

    /// `id` is a whole id or one of the tenant's snapshot names.
    fn owned_snapshot(&self, p: &Principal, id: &str) -> Result<SnapshotRecord, ApiError> {
        let nf = || ApiError::not_found("snapshot", id);
        if !is_id(id) {
            return match self.host.snapshot_named(Some(&p.tenant), id) {
                Ok(s) => Ok(s),
                Err(HostError::NoSuchSnapshot(_)) => Err(nf()),
                Err(e) => Err(e.into()),
            };
        }
        match self.host.snapshot_record(id) {
            Ok(s) if s.id == id && s.owner.as_deref() == Some(p.tenant.as_str()) => Ok(s),
            Ok(_) | Err(HostError::NoSuchSnapshot(_)) => Err(nf()),
            Err(e) => Err(e.into()),
        }
    }

    /// Times a lifecycle operation into `cove_operation_seconds`.
    /// Runs a lifecycle operation for `auth` (the event log names the key), timed into
    /// `cove_operation_seconds`.
    async fn timed<T>(
        &self,
        auth: &Auth,
        op: &str,
        f: impl Future<Output = Result<T, HostError>>,
    ) -> Result<T, ApiError> {
        let t = Instant::now();
        let r = cove_host::ACTOR
            .scope(cove_host::Actor::Key(auth.0.key_id.clone()), f)
            .await;
        if r.is_ok() {
            self.metrics.operation(op, t.elapsed().as_secs_f64());
        }
        Ok(r?)
    }

    /// Reserves `want` against the tenant's quota; the guard gives it back.
    fn reserve(&self, tenant: &str, want: Usage) -> Result<Reservation<'_>, ApiError> {
        let quota = self.keys.quota(tenant).map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })?;
        // Under the lock, so no create's reservation ends between the two reads; one indexed
        // query of the tenant's totals, not a scan of every sandbox.
        let mut pending = self.pending.lock().expect("pending");
        let (sandboxes, vcpus, memory_mib) = self.host.held_by(tenant)?;
        let mut used = pending.get(tenant).copied().unwrap_or_default();
        used.sandboxes += sandboxes;
        used.vcpus += vcpus;
        used.memory_mib += memory_mib;
        let over = |what: &str, have: u64, add: u64, max: u64| {
            ApiError::quota(format!(
                "the {what} quota of tenant {tenant} is {max}; {have} in use, {add} more asked for"
            ))
        };
        if used.sandboxes + want.sandboxes > quota.sandboxes {
            return Err(over(
                "sandboxes",
                used.sandboxes.into(),
                want.sandboxes.into(),
                quota.sandboxes.into(),
            ));
        }
        if used.vcpus + want.vcpus > quota.vcpus {
            return Err(over(
                "vCPUs",
                used.vcpus.into(),
                want.vcpus.into(),
                quota.vcpus.into(),
            ));
        }
        if used.memory_mib + want.memory_mib > u64::from(quota.memory_mib) {
            return Err(over(
                "memory (MiB)",
                used.memory_mib,
                want.memory_mib,
                quota.memory_mib.into(),
            ));
        }
        let e = pending.entry(tenant.to_string()).or_default();
        e.sandboxes += want.sandboxes;
        e.vcpus += want.vcpus;
        e.memory_mib += want.memory_mib;
        Ok(Reservation {
            app: self,
            tenant: tenant.to_string(),
            want,
        })
    }
}

/// A quota reservation, returned when dropped (the sandbox then counts itself).
struct Reservation<'a> {
    app: &'a Inner,
    tenant: String,
    want: Usage,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut pending = self.app.pending.lock().expect("pending");
        if let Some(e) = pending.get_mut(&self.tenant) {
            e.sandboxes -= self.want.sandboxes;
            e.vcpus -= self.want.vcpus;
            e.memory_mib -= self.want.memory_mib;
        }
    }
}

/// A whole sandbox or snapshot id: 12 hex digits (names never look like one).
fn is_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn sandbox(r: SandboxRecord) -> api::Sandbox {
    api::Sandbox {
        id: r.id,
        name: r.name,
        state: r.state,
        image: r.image,
        image_digest: r.image_digest,
        cpus: r.cpus,
        memory_mib: r.memory_mib,
        disk_mib: r.disk_mib,
        created_at: r.created_at,
        boot_ms: r.boot_ms,
        reason: r.reason.map(|r| r.to_string()),
        labels: r.labels,
        env: r.env,
    }
}

pub(crate) fn snapshot(s: SnapshotRecord) -> api::Snapshot {
    api::Snapshot {
        id: s.id,
        name: s.name,
        sandbox: s.sandbox,
        image: s.image,
        cpus: s.cpus,
        memory_mib: s.memory_mib,
        disk_mib: s.disk_mib,
        created_at: s.created_at,
    }
}

/// Environment names: what a shell can export.
fn check_env(env: &BTreeMap<String, String>) -> Result<(), ApiError> {
    for (k, v) in env {
        let ok = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !v.contains('\0');
        if !ok {
            return Err(ApiError::bad_request(format!(
                "invalid environment variable {k:?}: names are letters, digits and _, values have no NUL"
            )));
        }
    }
    Ok(())
}

/// Create a sandbox; it is running when this answers.
#[utoipa::path(post, path = "/v1/sandboxes", tag = "sandboxes",
    request_body = api::CreateSandbox,
    responses(
        (status = 201, description = "Created and running", body = api::Sandbox),
        (status = 400, body = api::Error), (status = 422, body = api::Error),
        (status = 429, description = "A quota", body = api::Error),
    ))]
async fn create_sandbox(
    State(app): State<App>,
    auth: Auth,
    Json(req): Json<api::CreateSandbox>,
) -> Result<(StatusCode, Json<api::Sandbox>), ApiError> {
    auth.need(Scope::Exec)?;
    check_env(&req.env)?;
    if req.labels.len() > 64
        || req
            .labels
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > 128 || v.len() > 1024)
    {
        return Err(ApiError::bad_request(
            "labels: at most 64, keys 1 to 128 bytes, values up to 1024",
        ));
    }
    let defaults = CreateSpec::default();
    let from = match &req.snapshot {
        Some(id) => Some(app.owned_snapshot(&auth.0, id)?),
        None => None,
    };
    let spec = CreateSpec {
        image: req.image.unwrap_or(defaults.image.clone()),
        cpus: req.cpus.unwrap_or(defaults.cpus),
        memory_mib: req.memory_mib.unwrap_or(defaults.memory_mib),
        disk_mib: req.disk_mib.unwrap_or(defaults.disk_mib),
        from_snapshot: from.as_ref().map(|s| s.id.clone()),
        ttl_secs: req.ttl_secs,
        idle_timeout_secs: req.idle_timeout_secs,
        on_idle: req.on_idle,
        name: req.name,
        owner: Some(auth.0.tenant.clone()),
        labels: req.labels,
        env: req.env,
        ..defaults
    };
    // Settings first: a malformed request is a 400 whatever the quota says.
    cove_host::validate(&spec)?;
    let (cpus, memory_mib) = from
        .as_ref()
        .map_or((spec.cpus, spec.memory_mib), |s| (s.cpus, s.memory_mib));
    let _reserved = app.reserve(
        &auth.0.tenant,
        Usage {
            sandboxes: 1,
            vcpus: cpus,
            memory_mib: memory_mib.into(),
        },
    )?;
    let rec = app.timed(&auth, "create", app.host.create(&spec)).await?;
    Ok((StatusCode::CREATED, Json(sandbox(rec))))
}

/// `GET /v1/sandboxes` filters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Only sandboxes in this state.
    state: Option<api::SandboxState>,
    /// Only sandboxes with these labels: `k=v`, several separated by commas.
    label: Option<String>,
    /// Page size (1–1000, default 100).
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// List the tenant's sandboxes, oldest first.
#[utoipa::path(get, path = "/v1/sandboxes", tag = "sandboxes", params(ListQuery),
    responses((status = 200, body = api::SandboxList), (status = 400, body = api::Error)))]
async fn list_sandboxes(
    State(app): State<App>,
    auth: Auth,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<api::SandboxList>, ApiError> {
    auth.need(Scope::Read)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit: 1 to 1000"));
    }
    let mut want = Vec::new();
    for kv in q.label.iter().flat_map(|l| l.split(',')) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| ApiError::bad_request(format!("label filter {kv:?}: give k=v")))?;
        want.push((k.to_string(), v.to_string()));
    }
    let mine = app.host.list()?.into_iter().filter(|r| {
        r.owner.as_deref() == Some(auth.0.tenant.as_str())
            && q.state.is_none_or(|s| s == r.state)
            && want.iter().all(|(k, v)| r.labels.get(k) == Some(v))
    });
    // Oldest first; the cursor is the last id of the previous page.
    let mut after = q.cursor.is_none();
    let mut items = Vec::new();
    let mut more = false;
    for r in mine {
        if !after {
            after = q.cursor.as_deref() == Some(r.id.as_str());
            continue;
        }
        if items.len() == limit {
            more = true;
            break;
        }
        items.push(sandbox(r));
    }
    let next_cursor = if more {
        items.last().map(|s| s.id.clone())
    } else {
        None
    };
    Ok(Json(api::SandboxList { items, next_cursor }))
}

/// One sandbox.
#[utoipa::path(get, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 200, body = api::Sandbox), (status = 404, body = api::Error)))]
async fn get_sandbox(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<api::Sandbox>, ApiError> {
    auth.need(Scope::Read)?;
    Ok(Json(sandbox(app.owned(&auth.0, &id)?)))
}

/// Remove a sandbox (stopping it first).
#[utoipa::path(delete, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 204, description = "Removed"), (status = 404, body = api::Error)))]
async fn delete_sandbox(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    auth.need(Scope::Exec)?;
    let r = app.owned(&auth.0, &id)?;
    app.timed(&auth, "delete", app.host.remove(&r.id, true))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

macro_rules! lifecycle {
    ($name:ident, $path:literal, $op:literal, $call:ident, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, tag = "sandboxes",
            params(("id" = String, Path, description = "Sandbox id")),
            responses((status = 200, body = api::Sandbox), (status = 404, body = api::Error),
                (status = 409, description = "Its state forbids this", body = api::Error)))]
        async fn $name(
            State(app): State<App>,
            auth: Auth,
            Path(id): Path<String>,
        ) -> Result<Json<api::Sandbox>, ApiError> {
            auth.need(Scope::Exec)?;
            let r = app.owned(&auth.0, &id)?;
            Ok(Json(sandbox(app.timed(&auth, $op, app.host.$call(&r.id)).await?)))
        }
    };
}

lifecycle!(
    pause_sandbox,
    "/v1/sandboxes/{id}/pause",
    "pause",
    pause,
    "Pause a sandbox (its vCPUs stop; memory stays)."
);
lifecycle!(
    resume_sandbox,
    "/v1/sandboxes/{id}/resume",
    "resume",
    resume,
    "Resume a paused or hibernated sandbox."
);
lifecycle!(
    stop_sandbox,
    "/v1/sandboxes/{id}/stop",
    "stop",
    stop,
    "Stop a sandbox: its VM ends, its record and files stay until it is removed."
);
lifecycle!(
    hibernate_sandbox,
    "/v1/sandboxes/{id}/hibernate",
    "hibernate",
    hibernate,
    "Hibernate a sandbox: memory and disk saved, no VM left running."
);

/// Snapshot a sandbox; it keeps running.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/snapshot", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body(content = Option<api::TakeSnapshot>),
    responses((status = 201, body = api::Snapshot), (status = 404, body = api::Error)))]
async fn snapshot_sandbox(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
    OptionalJson(req): OptionalJson<api::TakeSnapshot>,
) -> Result<(StatusCode, Json<api::Snapshot>), ApiError> {
    auth.need(Scope::Exec)?;
    let r = app.owned(&auth.0, &id)?;
    let s = app
        .timed(&auth, "snapshot", app.host.snapshot(&r.id, req.name, false))
        .await?;
    Ok((StatusCode::CREATED, Json(snapshot(s))))
}

/// Fork a sandbox into new ones; the source keeps running.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/fork", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = api::Fork,
    responses((status = 201, body = api::List<api::Sandbox>), (status = 404, body = api::Error),
        (status = 429, body = api::Error)))]
async fn fork_sandbox(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
    Json(req): Json<api::Fork>,
) -> Result<(StatusCode, Json<api::List<api::Sandbox>>), ApiError> {
    auth.need(Scope::Exec)?;
    let r = app.owned(&auth.0, &id)?;
    let count = req.count.unwrap_or(1);
    let _reserved = app.reserve(
        &auth.0.tenant,
        Usage {
            sandboxes: count,
            vcpus: r.cpus.saturating_mul(count),
            memory_mib: u64::from(r.memory_mib) * u64::from(count),
        },
    )?;
    let clones = app
        .timed(&auth, "fork", app.host.fork(&r.id, count))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(api::List {
            items: clones.into_iter().map(sandbox).collect(),
        }),
    ))
}

/// Run a command to its end and return its output (each stream up to 1 MiB; `*_truncated`
/// says when more was dropped).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/exec", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = api::Exec,
    responses((status = 200, body = api::ExecResult), (status = 404, body = api::Error),
        (status = 409, body = api::Error), (status = 422, description = "The program could not run", body = api::Error)))]
async fn exec_sandbox(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
    Json(req): Json<api::Exec>,
) -> Result<Json<api::ExecResult>, ApiError> {
    auth.need(Scope::Exec)?;
    let r = app.owned(&auth.0, &id)?;
    let timeout_ms = timeout_ms(req.timeout_secs)?;
    let result = run(&app, &r, req, timeout_ms).await;
    app.metrics.exec(result.is_ok());
    Ok(Json(result?))
}

/// `timeout_secs` as the agent's milliseconds.
pub(crate) fn timeout_ms(secs: Option<f64>) -> Result<Option<u64>, ApiError> {
    match secs {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Ok(Some(
            u64::try_from(std::time::Duration::from_secs_f64(s).as_millis().max(1))
                .unwrap_or(u64::MAX),
        )),
        Some(s) => Err(ApiError::bad_request(format!(
            "timeout_secs {s}: more than 0, at most 86400"
        ))),
    }
}

/// An exec's program (the image's entrypoint and command when `cmd` is empty), environment
/// (the image's, the sandbox's, the request's, each over the one before), working directory
/// and user; the caller fills in the rest.
pub(crate) fn exec_env(
    app: &Inner,
    r: &SandboxRecord,
    cmd: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: Option<String>,
    user: Option<String>,
) -> Result<ExecRequest, ApiError> {
    check_env(&env)?;
    let image = app.host.image_of(r).map(|i| i.config).unwrap_or_default();
    let argv = if cmd.is_empty() {
        image.default_argv()
    } else {
        cmd
    };
    if argv.first().is_none_or(String::is_empty) {
        return Err(ApiError::bad_request(
            "cmd: give the program and its arguments (the image has no default command)",
        ));
    }
    let mut all: BTreeMap<String, String> = image.env_pairs().into_iter().collect();
    all.extend(r.env.clone());
    all.extend(env);
    Ok(ExecRequest {
        argv,
        env: all.into_iter().collect(),
        cwd: cwd.or(image.workdir),
        user: user.or(image.user),
        ..ExecRequest::default()
    })
}

async fn run(
    app: &Inner,
    r: &SandboxRecord,
    req: api::Exec,
    timeout_ms: Option<u64>,
) -> Result<api::ExecResult, ApiError> {
    let base = exec_env(app, r, req.cmd, req.env, req.cwd, req.user)?;
    let client = app.host.connect(&r.id).await?;
    let mut ex = client
        .exec(ExecRequest {
            stdin: req.stdin.is_some(),
            timeout_ms,
            ..base
        })
        .await?;
    if let Some(input) = req.stdin {
        let s = ex.session.sender();
        tokio::spawn(async move {
            for chunk in input
                .as_bytes()
                .chunks(cove_protocol::frame::MAX_DATA_CHUNK)
            {
                if s.data(Stream::Stdin, chunk.to_vec()).await.is_err() {
                    return;
                }
            }
            let _ = s.eof(Stream::Stdin).await;
        });
    }
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let (mut out_cut, mut err_cut) = (false, false);
    loop {
        match ex.session.next().await {
            Some(Event::Data(stream, b)) => {
                let (buf, cut) = if stream == Stream::Stderr {
                    (&mut err, &mut err_cut)
                } else {
                    (&mut out, &mut out_cut)
                };
                // Past the limit the output is read and dropped: the command is not stalled.
                let room = EXEC_OUTPUT_LIMIT.saturating_sub(buf.len());
                buf.extend_from_slice(&b[..room.min(b.len())]);
                *cut |= b.len() > room;
            }
            Some(Event::Eof(_)) => {}
            Some(Event::Reply(Reply::Exited(st))) => {
                return Ok(api::ExecResult {
                    exit_code: st.shell_code(),
                    stdout: String::from_utf8_lossy(&out).into_owned(),
                    stderr: String::from_utf8_lossy(&err).into_owned(),
                    stdout_truncated: out_cut,
                    stderr_truncated: err_cut,
                    timed_out: st.timed_out,
                });
            }
            Some(Event::Reply(Reply::Error(e))) => {
                return Err(cove_host::ClientError::from(e).into());
            }
            Some(Event::Reply(other)) => {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("unexpected reply from the agent: {other:?}"),
                ));
            }
            None => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the sandbox went away while the command ran",
                ));
            }
        }
    }
}

/// `GET /v1/sandboxes/{id}/logs` options.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    /// Keep the stream open and send what the guest prints next, until the sandbox is gone.
    #[serde(default)]
    follow: bool,
}

/// The guest's console log (kernel and agent messages), as text; `follow=true` streams on.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/logs", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id"), LogsQuery),
    responses((status = 200, content_type = "text/plain", body = String), (status = 404, body = api::Error)))]
async fn sandbox_logs(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
    q: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    auth.need(Scope::Read)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let r = app.owned(&auth.0, &id)?;
    let bytes = app.host.logs(&r.id)?;
    let ct = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    if !q.follow {
        return Ok((ct, bytes).into_response());
    }
    // Followed: what is there, then what is appended (from the start of the file again when
    // cove-vm rotates it), looked for every 200 ms, until the sandbox is removed.
    let path = app.host.console_log(&r);
    let at = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let first = futures::stream::once(async move { Ok::<_, std::io::Error>(bytes) });
    let rest = futures::stream::unfold(
        (app, r.id, path, at),
        |(app, id, path, mut at)| async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                let len = match std::fs::metadata(&path) {
                    Ok(m) => m.len(),
                    // Removed with its sandbox: the end.
                    Err(_) if app.host.get(&id).is_err() => return None,
                    Err(_) => 0,
                };
                if len < at {
                    at = 0;
                }
                if len > at {
                    use std::io::{Read as _, Seek as _};
                    let mut buf = Vec::new();
                    let read = std::fs::File::open(&path).and_then(|mut f| {
                        f.seek(std::io::SeekFrom::Start(at))?;
                        f.take(len - at).read_to_end(&mut buf)
                    });
                    if read.is_ok() {
                        at += buf.len() as u64;
                        return Some((Ok(buf), (app, id, path, at)));
                    }
                }
                if app.host.get(&id).is_err() {
                    return None;
                }
            }
        },
    );
    use futures::StreamExt as _;
    Ok((ct, axum::body::Body::from_stream(first.chain(rest))).into_response())
}

/// CPU, memory and disk a sandbox uses, measured on the host.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/metrics", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 200, body = api::SandboxMetrics), (status = 404, body = api::Error)))]
async fn sandbox_metrics(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<api::SandboxMetrics>, ApiError> {
    auth.need(Scope::Read)?;
    let r = app.owned(&auth.0, &id)?;
    let u = app.host.usage(&r.id).await?;
    Ok(Json(api::SandboxMetrics {
        cpu_seconds: u.cpu_seconds,
        memory_bytes: u.memory_bytes,
        memory_limit_bytes: u.memory_limit_bytes,
        disk_bytes: u.disk_bytes,
        disk_limit_bytes: u.disk_limit_bytes,
    }))
}

/// The sandbox's processes (every process of the guest, the agent included).
#[utoipa::path(get, path = "/v1/sandboxes/{id}/processes", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 200, body = api::List<api::Process>), (status = 404, body = api::Error),
        (status = 409, body = api::Error)))]
async fn list_processes(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<api::List<api::Process>>, ApiError> {
    auth.need(Scope::Read)?;
    let r = app.owned(&auth.0, &id)?;
    let items = app
        .host
        .connect(&r.id)
        .await?
        .processes()
        .await?
        .into_iter()
        .map(|p| api::Process {
            pid: p.pid,
            ppid: p.ppid,
            uid: p.uid,
            state: p.state,
            rss_bytes: p.rss_bytes,
            cpu_ms: p.cpu_ms,
            cmdline: p.cmdline,
        })
        .collect();
    Ok(Json(api::List { items }))
}

/// Signal one process of the sandbox (never its agent).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/processes/{pid}/kill", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id"), ("pid" = u32, Path, description = "Pid in the guest")),
    request_body = api::Kill,
    responses((status = 204, description = "Sent"), (status = 400, body = api::Error),
        (status = 404, body = api::Error)))]
async fn kill_process(
    State(app): State<App>,
    auth: Auth,
    Path((id, pid)): Path<(String, String)>,
    Json(req): Json<api::Kill>,
) -> Result<StatusCode, ApiError> {
    auth.need(Scope::Exec)?;
    let r = app.owned(&auth.0, &id)?;
    let pid: u32 = pid
        .parse()
        .map_err(|_| ApiError::not_found("process", &pid))?;
    let client = app.host.connect(&r.id).await?;
    match client.kill(pid, req.signal.unwrap_or(15)).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(cove_host::ClientError::Agent(a)) if a.code == cove_protocol::ErrorCode::NotFound => {
            Err(ApiError::not_found("process", &pid.to_string()))
        }
        Err(e) => Err(e.into()),
    }
}

/// The tenant's snapshots.
#[utoipa::path(get, path = "/v1/snapshots", tag = "snapshots",
    responses((status = 200, body = api::List<api::Snapshot>)))]
async fn list_snapshots(
    State(app): State<App>,
    auth: Auth,
) -> Result<Json<api::List<api::Snapshot>>, ApiError> {
    auth.need(Scope::Read)?;
    let items = app
        .host
        .snapshots()?
        .into_iter()
        .filter(|s| s.owner.as_deref() == Some(auth.0.tenant.as_str()))
        .map(snapshot)
        .collect();
    Ok(Json(api::List { items }))
}

/// Delete a snapshot.
#[utoipa::path(delete, path = "/v1/snapshots/{id}", tag = "snapshots",
    params(("id" = String, Path, description = "Snapshot id")),
    responses((status = 204, description = "Deleted"), (status = 404, body = api::Error)))]
async fn delete_snapshot(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    auth.need(Scope::Exec)?;
    let s = app.owned_snapshot(&auth.0, &id)?;
    app.host.remove_snapshot(&s.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Installed images (shared by every tenant of this host).
#[utoipa::path(get, path = "/v1/images", tag = "images",
    responses((status = 200, body = api::List<api::Image>)))]
async fn list_images(
    State(app): State<App>,
    auth: Auth,
) -> Result<Json<api::List<api::Image>>, ApiError> {
    auth.need(Scope::Read)?;
    // Who uses an image is the tenant's own business: other keys see only their own users.
    let admin = auth.0.allows(Scope::Admin);
    let mine: std::collections::HashSet<String> = if admin {
        std::collections::HashSet::new()
    } else {
        let t = Some(auth.0.tenant.as_str());
        app.host
            .list()?
            .into_iter()
            .filter(|r| r.owner.as_deref() == t)
            .map(|r| format!("sandbox {}", r.id))
            .chain(
                app.host
                    .snapshots()?
                    .into_iter()
                    .filter(|s| s.owner.as_deref() == t)
                    .map(|s| format!("snapshot {}", s.id)),
            )
            .collect()
    };
    let items = app
        .host
        .image_list()?
        .into_iter()
        .map(|i| api::Image {
            digest: i.meta.digest,
            names: i.names,
            content_bytes: i.meta.content_bytes,
            created_at: i.meta.created_at,
            used_by: i
                .used_by
                .into_iter()
                .filter(|u| admin || mine.contains(u))
                .collect(),
        })
        .collect();
    Ok(Json(api::List { items }))
}

/// Remove an image name, or an image by digest (`admin`): like `cove image rm`, a name that is
/// one of several only goes itself; the image goes with its last name, refused (409) while
/// sandboxes or snapshots use it. Names with `/` or `:` are sent percent-encoded.
#[utoipa::path(delete, path = "/v1/images/{image}", tag = "images",
    params(("image" = String, Path, description = "Name, reference or manifest digest (sha256:…)")),
    responses((status = 200, body = api::ImageRemoved), (status = 404, body = api::Error),
        (status = 409, body = api::Error)))]
async fn delete_image(
    State(app): State<App>,
    auth: Auth,
    Path(image): Path<String>,
) -> Result<Json<api::ImageRemoved>, ApiError> {
    auth.need(Scope::Admin)?;
    if let Some(hex) = image.strip_prefix("sha256:")
        && (hex.len() != 64 || app.host.images().get(&image).is_none())
    {
        return Err(ApiError::not_found("image", &image));
    }
    let removed = app.host.image_remove(&image).await?;
    Ok(Json(api::ImageRemoved { removed }))
}

/// The OpenAPI document of this API.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "OpenAPI 3 document")))]
async fn openapi() -> Response {
    let doc = DOC.get().map(String::as_str).unwrap_or("{}");
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.to_string(),
    )
        .into_response()
}

/// Prometheus metrics (text format).
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, content_type = "text/plain", body = String)))]
async fn metrics(State(app): State<App>) -> Result<Response, ApiError> {
    if !app.metrics_on_api {
        return Err(no_route().await);
    }
    render_metrics(&app)
}

/// The metrics exposition (also served by `--metrics-listen`).
pub fn render_metrics(app: &Inner) -> Result<Response, ApiError> {
    let mut states = BTreeMap::new();
    for r in app.host.list()? {
        *states.entry(r.state).or_insert(0) += 1;
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(&states),
    )
        .into_response())
}

static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();

#[derive(OpenApi)]
#[openapi(
    info(title = "Cove API", description = "MicroVM sandboxes: create, run code, lifecycle."),
    modifiers(&Security),
    security(("api_key" = [])),
)]
struct Doc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        doc.components.get_or_insert_default().add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The API routes and their OpenAPI document (built from the same handlers, so neither can
/// list a route the other lacks).
pub fn routes() -> (axum::Router<App>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(Doc::openapi())
        .routes(routes!(create_sandbox, list_sandboxes))
        .routes(routes!(get_sandbox, delete_sandbox))
        .routes(routes!(pause_sandbox))
        .routes(routes!(resume_sandbox))
        .routes(routes!(hibernate_sandbox))
        .routes(routes!(stop_sandbox))
        .routes(routes!(snapshot_sandbox))
        .routes(routes!(fork_sandbox))
        .routes(routes!(exec_sandbox))
        .routes(routes!(crate::ws::exec_ws))
        .routes(routes!(
            crate::files::download,
            crate::files::upload,
            crate::files::remove
        ))
        .routes(routes!(crate::files::stat))
        .routes(routes!(crate::files::list))
        .routes(routes!(crate::files::mkdir))
        .routes(routes!(crate::files::rename))
        .routes(routes!(crate::events::events))
        .routes(routes!(sandbox_logs))
        .routes(routes!(sandbox_metrics))
        .routes(routes!(list_processes))
        .routes(routes!(kill_process))
        .routes(routes!(list_snapshots))
        .routes(routes!(delete_snapshot))
        .routes(routes!(list_images))
        .routes(routes!(delete_image))
        .routes(routes!(crate::pulls::start))
        .routes(routes!(crate::admin::import))
        .routes(routes!(crate::admin::prune))
        .routes(routes!(crate::admin::create_template))
        .routes(routes!(crate::admin::info))
        .routes(routes!(crate::pulls::follow))
        .routes(routes!(openapi))
        .routes(routes!(metrics))
        .split_for_parts()
}

/// Answers every request with an id (header `x-request-id`, error bodies, the log line), and
/// counts it.
async fn request_id(
    State(app): State<App>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = format!(
        "{:x}-{:x}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let t = Instant::now();
    let mut res = REQUEST_ID.scope(id.clone(), next.run(req)).await;
    app.metrics.request(res.status().as_u16());
    tracing::info!(
        request_id = %id,
        %method,
        path,
        status = res.status().as_u16(),
        ms = t.elapsed().as_secs_f64() * 1e3,
        "request"
    );
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert("x-request-id", v);
    }
    res
}

async fn no_route() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        "no such route; see /v1/openapi.json",
    )
}

/// The whole service.
pub fn router(app: App) -> axum::Router {
    let (api, doc) = routes();
    let _ = DOC.set(doc.to_pretty_json().expect("the document serializes"));
    api.fallback(no_route)
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method; see /v1/openapi.json",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            request_id,
        ))
        .with_state(app)
}
