//! E2B's control plane (`/sandboxes`, `/v2/sandboxes`, …) over the same calls as `/v1`: each
//! handler turns E2B's request into Cove's, calls what `/v1` calls, and answers in E2B's shape.
//!
//! What E2B calls a paused sandbox is one that costs nothing while it waits and resumes on any
//! host: Cove's hibernated sandbox. A sandbox paused by Cove's idle policy (its memory still
//! resident) is shown as paused too; `connect` resumes either. Stopped and failed sandboxes do
//! not exist for E2B (a timeout's kill is a stop): they answer 404. An unhealthy sandbox (its
//! VM runs, its agent was slow to answer) is running to E2B, as its envd calls are still tried.
//!
//! A sandbox's `envdAccessToken` lets its holder run code in it: it is shown only to a key that
//! may (scope `exec`).

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cove_api as api;
use cove_api::{OnExpire, SandboxState};
use cove_host::SandboxRecord;
use serde::{Deserialize, Serialize};

use super::envd::percent_decode;
use crate::app::{App, run_op};
use crate::auth::Auth;
use crate::error::{ApiError, Json, OptionalJson};
use crate::keys::Scope;
use crate::routes::sandboxes::{create_sandbox, page};

/// A sandbox's lifetime when a create names none (E2B's default).
const DEFAULT_TIMEOUT_SECS: u64 = 300;

/// `POST /sandboxes`, `POST /v2/sandboxes`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NewSandbox {
    #[serde(rename = "templateID")]
    template_id: Option<String>,
    /// Seconds until it ends.
    timeout: Option<u64>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    env_vars: BTreeMap<String, String>,
    /// E2B's own spelling.
    #[serde(rename = "allow_internet_access")]
    allow_internet_access: Option<bool>,
    /// Every envd request needs the sandbox's access token here: nothing to choose.
    #[serde(default)]
    #[allow(dead_code)]
    secure: Option<bool>,
    /// On timeout: pause (`true`: hibernate) or kill (stop).
    auto_pause: Option<bool>,
    network: Option<NetworkConfig>,
    mcp: Option<serde_json::Value>,
    volume_mounts: Option<serde_json::Value>,
}

/// E2B's network settings.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NetworkConfig {
    #[serde(default)]
    allow_out: Vec<String>,
    #[serde(default)]
    deny_out: Vec<String>,
    allow_public_traffic: Option<bool>,
}

/// A sandbox as E2B's create and connect answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct E2bSandbox {
    #[serde(rename = "templateID")]
    template_id: String,
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    #[serde(rename = "clientID")]
    client_id: &'static str,
    alias: String,
    envd_version: &'static str,
    envd_access_token: String,
    domain: String,
}

/// A sandbox as E2B's get and list show it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Detail {
    #[serde(rename = "templateID")]
    template_id: String,
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    #[serde(rename = "clientID")]
    client_id: &'static str,
    alias: String,
    started_at: String,
    end_at: String,
    envd_version: &'static str,
    /// Only for a key of scope `exec` or more: the token runs code in the sandbox.
    #[serde(skip_serializing_if = "Option::is_none")]
    envd_access_token: Option<String>,
    domain: String,
    cpu_count: u32,
    #[serde(rename = "memoryMB")]
    memory_mb: u32,
    #[serde(rename = "diskSizeMB")]
    disk_size_mb: u32,
    state: E2bState,
    metadata: BTreeMap<String, String>,
    allow_internet_access: bool,
}

/// A sandbox's state as E2B names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum E2bState {
    /// Its VM runs (or is starting, or waking).
    Running,
    /// Saved or stopped in memory: `connect` resumes it.
    Paused,
}

impl E2bState {
    /// What E2B calls `s`, or none for a sandbox E2B does not show (a timeout's kill is a stop).
    fn of(s: SandboxState) -> Option<Self> {
        match s {
            SandboxState::Creating
            | SandboxState::Running
            | SandboxState::Resuming
            | SandboxState::Unhealthy => Some(Self::Running),
            SandboxState::Paused | SandboxState::Hibernating | SandboxState::Hibernated => {
                Some(Self::Paused)
            }
            SandboxState::Stopped | SandboxState::Failed => None,
        }
    }

    /// `running` or `paused`, as a list's `state` filter names them.
    fn parse(s: &str) -> Option<Self> {
        match s {
            "running" => Some(Self::Running),
            "paused" => Some(Self::Paused),
            _ => None,
        }
    }
}

/// The sandbox `id` of `auth`'s, as E2B sees it (404 when stopped or failed), and its state.
fn visible(app: &App, auth: &Auth, id: &str) -> Result<(SandboxRecord, E2bState), ApiError> {
    let r = app.owned(&auth.0, id)?;
    match E2bState::of(r.state) {
        Some(s) => Ok((r, s)),
        None => Err(ApiError::not_found("sandbox", id)),
    }
}

fn sandbox(app: &App, r: &SandboxRecord) -> E2bSandbox {
    E2bSandbox {
        template_id: r.image.clone(),
        sandbox_id: r.id.clone(),
        client_id: super::CLIENT_ID,
        alias: r.image.clone(),
        envd_version: super::ENVD_VERSION,
        envd_access_token: app.traffic.envd_token(&r.id),
        domain: app.traffic.domain.clone(),
    }
}

/// `r` (in `state`) as get and list show it to `auth`.
fn detail(app: &App, auth: &Auth, r: SandboxRecord, state: E2bState) -> Detail {
    let s = sandbox(app, &r);
    Detail {
        template_id: s.template_id,
        sandbox_id: s.sandbox_id,
        client_id: s.client_id,
        alias: s.alias,
        started_at: rfc3339(r.created_at),
        // No time to live is an end far away, as E2B's clients need one.
        end_at: rfc3339(r.expires_at.unwrap_or(253_402_300_799_000)),
        envd_version: s.envd_version,
        envd_access_token: auth.0.allows(Scope::Exec).then_some(s.envd_access_token),
        domain: s.domain,
        cpu_count: r.cpus,
        memory_mb: r.memory_mib,
        disk_size_mb: r.disk_mib,
        state,
        allow_internet_access: r.network.mode == cove_api::NetworkMode::Egress,
        metadata: r.labels,
    }
}

/// Milliseconds since the epoch as RFC 3339 (UTC).
pub(crate) fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Create a sandbox from a template (an image, or one of the tenant's snapshots).
pub(crate) async fn create(
    State(app): State<App>,
    auth: Auth,
    Json(req): Json<NewSandbox>,
) -> Result<Response, ApiError> {
    if req.mcp.is_some() || req.volume_mounts.is_some() {
        return Err(ApiError::bad_request(
            "mcp and volumeMounts are not supported by Cove",
        ));
    }
    let template = req
        .template_id
        .unwrap_or_else(|| super::DEFAULT_TEMPLATE.to_string());
    // A snapshot of the tenant's by id or name, else an image.
    let snapshot = app.owned_snapshot(&auth.0, &template).ok().map(|s| s.id);
    let network = match (req.allow_internet_access, req.network) {
        (Some(false), _) => Some(cove_api::NetworkPolicy::none()),
        (_, Some(n)) => Some(
            serde_json::from_value::<cove_api::NetworkPolicy>(serde_json::json!({
                "mode": "egress",
                "allow": n.allow_out,
                "deny": n.deny_out,
                "public_ports": n.allow_public_traffic.unwrap_or(false),
            }))
            .map_err(|e| ApiError::bad_request(format!("network: {e}")))?,
        ),
        _ => None,
    };
    let timeout = req.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS);
    let spec = api::CreateSandbox {
        image: snapshot.is_none().then_some(template),
        snapshot,
        env: req.env_vars,
        labels: req.metadata,
        ttl_secs: Some(timeout.max(1)),
        // E2B's pause is Cove's hibernate.
        on_expire: req.auto_pause.map(|p| {
            if p {
                OnExpire::Hibernate
            } else {
                OnExpire::Stop
            }
        }),
        network,
        ..Default::default()
    };
    let rec = create_sandbox(&app, &auth, spec).await?;
    Ok((StatusCode::CREATED, Json(sandbox(&app, &rec))).into_response())
}

/// One sandbox.
pub(crate) async fn get(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<Detail>, ApiError> {
    auth.need(Scope::Read)?;
    let (r, state) = visible(&app, &auth, &id)?;
    Ok(Json(detail(&app, &auth, r, state)))
}

/// `GET /v2/sandboxes` filters.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ListQuery {
    /// `k=v&k2=v2`, form-encoded, each key and value percent-encoded once more.
    metadata: Option<String>,
    /// `running`, `paused`, or both comma-separated.
    state: Option<String>,
    limit: Option<usize>,
    next_token: Option<String>,
}

/// The tenant's sandboxes, oldest first, a page at a time (`x-next-token`).
pub(crate) async fn list(
    State(app): State<App>,
    auth: Auth,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    auth.need(Scope::Read)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    ApiError::check_range("limit", limit, cove_api::limits::PAGE_LIMIT)?;
    let mut states = Vec::new();
    for s in q
        .state
        .iter()
        .flat_map(|s| s.split(','))
        .filter(|s| !s.is_empty())
    {
        states.push(
            E2bState::parse(s)
                .ok_or_else(|| ApiError::bad_request(format!("state {s:?}: running or paused")))?,
        );
    }
    let want = metadata_filter(q.metadata.as_deref().unwrap_or(""))?;
    let (items, next) = page(
        &app,
        &auth,
        |r| {
            E2bState::of(r.state).is_some_and(|s| states.is_empty() || states.contains(&s))
                && want.iter().all(|(k, v)| r.labels.get(k) == Some(v))
        },
        limit,
        q.next_token.as_deref(),
    )?;
    let body: Vec<Detail> = items
        .into_iter()
        .filter_map(|r| {
            let state = E2bState::of(r.state)?;
            Some(detail(&app, &auth, r, state))
        })
        .collect();
    let mut res = Json(body).into_response();
    if let Some(t) = next.and_then(|t| HeaderValue::from_str(&t).ok()) {
        res.headers_mut().insert("x-next-token", t);
    }
    Ok(res)
}

/// E2B's metadata filter: form-encoded pairs whose keys and values are percent-encoded again.
fn metadata_filter(q: &str) -> Result<Vec<(String, String)>, ApiError> {
    let mut out = Vec::new();
    for kv in q.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let dec = |s: &str| -> Result<String, ApiError> {
            let once = percent_decode(&s.replace('+', " "))?;
            percent_decode(&once)
        };
        out.push((dec(k)?, dec(v)?));
    }
    Ok(out)
}

/// Kill a sandbox: it is removed.
pub(crate) async fn kill(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    auth.need(Scope::Exec)?;
    // A stopped one (its timeout ran out) is removed too, though E2B no longer shows it.
    let r = app.owned(&auth.0, &id)?;
    run_op(&app, &auth, "delete", |app| async move {
        app.host.remove(&r.id, true).await
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `{"timeout": seconds}`.
#[derive(Debug, Deserialize)]
pub(crate) struct Timeout {
    timeout: u64,
}

/// Set when the sandbox ends: `timeout` seconds from now (0: now).
pub(crate) async fn set_timeout(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
    Json(t): Json<Timeout>,
) -> Result<StatusCode, ApiError> {
    auth.need(Scope::Exec)?;
    let (r, _) = visible(&app, &auth, &id)?;
    let at = end_after(t.timeout);
    run_op(&app, &auth, "timeout", |app| async move {
        app.host.set_expiry(&r.id, Some(at)).await
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `secs` from now, in milliseconds since the epoch (saturating: the host refuses an end past
/// [`cove_host::MAX_TIMEOUT_SECS`]).
fn end_after(secs: u64) -> i64 {
    now_ms().saturating_add(i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(1000))
}

/// Pause a sandbox: its whole state is kept and it costs nothing until `connect` (Cove's
/// hibernate). 409 when it is paused already.
pub(crate) async fn pause(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    auth.need(Scope::Exec)?;
    let (r, state) = visible(&app, &auth, &id)?;
    if state == E2bState::Paused {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("sandbox {} is already paused", r.id),
        ));
    }
    run_op(&app, &auth, "pause", |app| async move {
        app.host.hibernate(&r.id).await
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `{"timeout": seconds}`, optional on `/v2`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ConnectBody {
    timeout: Option<u64>,
}

/// Connect to a sandbox: a paused one is resumed (201), a running one answered as it is (200);
/// its end moves to at least `timeout` seconds from now, never earlier.
pub(crate) async fn connect(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<ConnectBody>,
) -> Result<Response, ApiError> {
    auth.need(Scope::Exec)?;
    let (r, state) = visible(&app, &auth, &id)?;
    let at = end_after(body.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS));
    let resumed = state == E2bState::Paused;
    let rec = run_op(&app, &auth, "connect", move |app| async move {
        // Extended first: a sandbox woken past its old end would be stopped at once.
        if r.expires_at.is_some_and(|e| e < at) {
            app.host.set_expiry(&r.id, Some(at)).await?;
        }
        if r.state.takes_sessions() {
            // Running, or unhealthy (its VM runs; a call that gets through heals it): there is
            // nothing to resume.
            app.host.get(&r.id)
        } else {
            app.host.resume(&r.id).await
        }
    })
    .await?;
    let status = if resumed {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(sandbox(&app, &rec))).into_response())
}

/// One metrics sample, E2B's shape.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Metric {
    timestamp: String,
    timestamp_unix: i64,
    cpu_count: u32,
    cpu_used_pct: f64,
    mem_used: u64,
    mem_total: u64,
    mem_cache: u64,
    disk_used: u64,
    disk_total: u64,
}

/// `?start=&end=` (seconds since the epoch).
#[derive(Debug, Deserialize)]
pub(crate) struct Window {
    start: Option<i64>,
    end: Option<i64>,
}

/// What the sandbox used over time: samples coved took while it ran (see `crate::usage`).
pub(crate) async fn metrics(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
    q: Result<Query<Window>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<Metric>>, ApiError> {
    auth.need(Scope::Read)?;
    let Query(w) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let (r, _) = visible(&app, &auth, &id)?;
    let samples = app.usage.series(&app, &r).await;
    let from = w.start.map_or(i64::MIN, |s| s.saturating_mul(1000));
    let to = w.end.map_or(i64::MAX, |s| s.saturating_mul(1000));
    Ok(Json(
        samples
            .into_iter()
            .filter(|s| (from..=to).contains(&s.at_ms))
            .map(|s| Metric {
                timestamp: rfc3339(s.at_ms),
                timestamp_unix: s.at_ms / 1000,
                cpu_count: r.cpus,
                cpu_used_pct: s.cpu_pct,
                mem_used: s.memory_bytes,
                mem_total: s.memory_limit_bytes,
                mem_cache: 0,
                disk_used: s.disk_bytes,
                disk_total: s.disk_limit_bytes,
            })
            .collect(),
    ))
}

/// `{"name"}`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct SnapshotBody {
    name: Option<String>,
}

/// E2B's snapshot: an id and its names.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SnapshotInfo {
    #[serde(rename = "snapshotID")]
    snapshot_id: String,
    names: Vec<String>,
}

fn snapshot_info(s: cove_host::SnapshotRecord) -> SnapshotInfo {
    SnapshotInfo {
        snapshot_id: s.id,
        names: s.name.into_iter().collect(),
    }
}

/// Snapshot a sandbox (it keeps running); a new sandbox starts from it with `templateID`.
pub(crate) async fn snapshot(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<SnapshotBody>,
) -> Result<(StatusCode, Json<SnapshotInfo>), ApiError> {
    auth.need(Scope::Exec)?;
    let (r, _) = visible(&app, &auth, &id)?;
    let limits = app.limits(&auth.0)?;
    let s = run_op(&app, &auth, "snapshot", |app| async move {
        app.host
            .snapshot(&r.id, body.name, false, limits.as_ref())
            .await
    })
    .await?;
    Ok((StatusCode::CREATED, Json(snapshot_info(s))))
}

/// `GET /snapshots` filters.
#[derive(Debug, Deserialize)]
pub(crate) struct SnapshotQuery {
    #[serde(rename = "sandboxID")]
    sandbox_id: Option<String>,
}

/// The tenant's snapshots (templates excluded), optionally of one sandbox.
pub(crate) async fn snapshots(
    State(app): State<App>,
    auth: Auth,
    q: Result<Query<SnapshotQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<SnapshotInfo>>, ApiError> {
    auth.need(Scope::Read)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let all = app.host.snapshots()?;
    Ok(Json(
        all.into_iter()
            .filter(|s| {
                auth.0.sees(s.owner.as_deref())
                    && !s.template
                    && q.sandbox_id
                        .as_deref()
                        .is_none_or(|id| s.sandbox.as_deref() == Some(id))
            })
            .map(snapshot_info)
            .collect(),
    ))
}

/// Delete a snapshot (E2B's `/templates/{id}`); 404 when the tenant has none by that id.
pub(crate) async fn delete_snapshot(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    auth.need(Scope::Exec)?;
    let s = app.owned_snapshot(&auth.0, &id)?;
    if s.template {
        return Err(ApiError::not_found("snapshot", &id));
    }
    app.host.remove_snapshot(&s.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `{"count", "timeout"}`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ForkBody {
    count: Option<u32>,
    timeout: Option<u64>,
}

/// One fork's outcome.
#[derive(Debug, Serialize)]
pub(crate) struct ForkResult {
    sandbox: E2bSandbox,
}

/// Fork a running sandbox into `count` new ones (each its own timeout).
pub(crate) async fn fork(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<ForkBody>,
) -> Result<(StatusCode, Json<Vec<ForkResult>>), ApiError> {
    auth.need(Scope::Exec)?;
    let (r, _) = visible(&app, &auth, &id)?;
    let count = body.count.unwrap_or(1);
    // Each clone is made with its time to live (checked before anything is forked, 0 is a
    // second as in create): none is ever left running without an end.
    let ttl = body.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS).max(1);
    let clones = crate::routes::sandboxes::fork_sandboxes(&app, &auth, r, count, Some(ttl)).await?;
    let out = clones
        .iter()
        .map(|c| ForkResult {
            sandbox: sandbox(&app, c),
        })
        .collect();
    Ok((StatusCode::CREATED, Json(out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(1_796_601_599_000), "2026-12-06T23:59:59.000Z");
    }

    #[test]
    fn metadata_filters_are_decoded_twice() {
        // {"k": "v w", "a&b": "c"} as the SDK sends it, after the query's own decoding.
        assert_eq!(
            metadata_filter("k=v%2520w&a%2526b=c").unwrap(),
            [("k".into(), "v w".into()), ("a&b".into(), "c".into())]
        );
        assert!(metadata_filter("k=%zz").is_err());
    }
}
