//! Sandboxes: create, list, inspect, remove, and their lifecycle (pause, resume, stop,
//! hibernate, snapshot, fork).

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use cove_api as api;
use cove_api::limits;
use cove_host::CreateSpec;
use serde::Deserialize;

use super::sandbox;
use crate::app::{App, run_op};
use crate::auth::Auth;
use crate::error::{ApiError, Json, OptionalJson};
use crate::keys::Scope;

/// Environment names: what a shell can export.
pub(crate) fn check_env(env: &BTreeMap<String, String>) -> Result<(), ApiError> {
    for (k, v) in env {
        if !(limits::ENV_NAME.is_match(k) && limits::ENV_VALUE.is_match(v)) {
            return Err(ApiError::bad_request(format!(
                "invalid environment variable {k:?}: names {}; values {}",
                limits::ENV_NAME.allowed,
                limits::ENV_VALUE.allowed
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
pub(crate) async fn create(
    State(app): State<App>,
    auth: Auth,
    Json(req): Json<api::CreateSandbox>,
) -> Result<(StatusCode, Json<api::Sandbox>), ApiError> {
    let rec = create_sandbox(&app, &auth, req).await?;
    Ok((StatusCode::CREATED, Json(sandbox(&auth.0, rec))))
}

/// Creates a sandbox for `auth`'s tenant (every surface's create).
pub(crate) async fn create_sandbox(
    app: &App,
    auth: &Auth,
    req: api::CreateSandbox,
) -> Result<cove_host::SandboxRecord, ApiError> {
    auth.need(Scope::Exec)?;
    check_env(&req.env)?;
    let from = match &req.snapshot {
        Some(id) => Some(app.owned_snapshot(&auth.0, id)?),
        None => None,
    };
    let spec = CreateSpec {
        from_snapshot: from.as_ref().map(|s| s.id.clone()),
        // Admitted against the tenant's quota as it is recorded (in the store's transaction).
        limits: app.limits(&auth.0)?,
        owner: auth.0.tenant.clone(),
        ..spec_of(req)
    };
    // Settings first: a malformed request is a 400 whatever the quota says.
    cove_host::validate(&spec)?;
    run_op(app, auth, "create", |app| async move {
        app.host.create(&spec).await
    })
    .await
}

/// What a create request asks for (the snapshot to restore, the quota and the owner are the
/// caller's to fill in).
fn spec_of(req: api::CreateSandbox) -> CreateSpec {
    let defaults = CreateSpec::default();
    CreateSpec {
        image: req.image.unwrap_or(defaults.image.clone()),
        cpus: req.cpus.unwrap_or(defaults.cpus),
        memory_mib: req.memory_mib.unwrap_or(defaults.memory_mib),
        disk_mib: req.disk_mib.unwrap_or(defaults.disk_mib),
        ttl_secs: req.ttl_secs,
        idle_timeout_secs: req.idle_timeout_secs,
        on_idle: req.on_idle,
        on_expire: req.on_expire,
        engine: req.engine,
        name: req.name,
        labels: req.labels,
        env: req.env,
        network: req.network,
        ..defaults
    }
}

/// `GET /v1/sandboxes` filters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
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
pub(crate) async fn list(
    State(app): State<App>,
    auth: Auth,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<api::SandboxList>, ApiError> {
    auth.need(Scope::Read)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    ApiError::check_range("limit", limit, limits::PAGE_LIMIT)?;
    let mut want = Vec::new();
    for kv in q.label.iter().flat_map(|l| l.split(',')) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| ApiError::bad_request(format!("label filter {kv:?}: give k=v")))?;
        want.push((k.to_string(), v.to_string()));
    }
    let (page, next_cursor) = page(
        &app,
        &auth,
        |r| {
            q.state.is_none_or(|s| s == r.state)
                && want.iter().all(|(k, v)| r.labels.get(k) == Some(v))
        },
        limit,
        q.cursor.as_deref(),
    )?;
    let items = page.into_iter().map(|r| sandbox(&auth.0, r)).collect();
    Ok(Json(api::SandboxList { items, next_cursor }))
}

/// One page of the sandboxes `auth` sees that pass `keep`, oldest first, and the cursor of the
/// next page when there is one (every surface's list: `/v1`'s `cursor`, E2B's `nextToken`).
/// A malformed cursor is a 400.
pub(crate) fn page(
    app: &App,
    auth: &Auth,
    keep: impl Fn(&cove_host::SandboxRecord) -> bool,
    limit: usize,
    cursor: Option<&str>,
) -> Result<(Vec<cove_host::SandboxRecord>, Option<String>), ApiError> {
    let after = cursor.map(Cursor::parse).transpose()?;
    let mine = app
        .host
        .list()?
        .into_iter()
        .filter(|r| auth.0.sees(r.owner.as_deref()) && keep(r));
    let (items, next) = paginate(
        mine,
        |r| (r.created_at, r.id.as_str()),
        limit,
        after.as_ref(),
    );
    Ok((items, next.map(|c| c.to_string())))
}

/// Where a page of a list ends, as a position in the list's order (oldest first: creation
/// time, then id), not as a sandbox to find: the next page starts after it even when that
/// sandbox has since gone or no longer passes the filter. Wire form `CREATED_AT-ID`, opaque to
/// clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    created_at: i64,
    id: String,
}

impl Cursor {
    pub(crate) fn parse(s: &str) -> Result<Self, ApiError> {
        let bad = || {
            ApiError::bad_request(format!(
                "cursor {s:?} is not one this server gave: pass the last page's cursor as it \
                 came, or none for the first page"
            ))
        };
        let (at, id) = s.split_once('-').ok_or_else(bad)?;
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        let id_ok = (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric());
        if !digits(at) || !id_ok {
            return Err(bad());
        }
        Ok(Self {
            created_at: at.parse().map_err(|_| bad())?,
            id: id.to_string(),
        })
    }

    fn key(&self) -> (i64, &str) {
        (self.created_at, &self.id)
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.created_at, self.id)
    }
}

/// Up to `limit` of `items` (in `key`'s ascending order) that come after `after`, and the
/// cursor of the last one when more follow.
fn paginate<T>(
    items: impl IntoIterator<Item = T>,
    key: impl Fn(&T) -> (i64, &str),
    limit: usize,
    after: Option<&Cursor>,
) -> (Vec<T>, Option<Cursor>) {
    let mut rest = items
        .into_iter()
        .filter(|t| after.is_none_or(|c| key(t) > c.key()));
    let page: Vec<T> = rest.by_ref().take(limit).collect();
    let next = if rest.next().is_some() {
        page.last().map(|t| {
            let (created_at, id) = key(t);
            Cursor {
                created_at,
                id: id.to_string(),
            }
        })
    } else {
        None
    };
    (page, next)
}

/// One sandbox.
#[utoipa::path(get, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 200, body = api::Sandbox), (status = 404, body = api::Error)))]
pub(crate) async fn get(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<api::Sandbox>, ApiError> {
    auth.need(Scope::Read)?;
    let r = app.owned(&auth.0, &id)?;
    // The administrator's view adds cove-vm's own report while it runs.
    let vm = if auth.is_local() && r.state.is_active() {
        cove_host::vm_status(&r).await.ok().map(|s| api::VmReport {
            pid: s.pid,
            vmm_pid: s.vmm_pid,
            agent_version: s.agent_version,
            boot_ms: s.boot_ms,
        })
    } else {
        None
    };
    let jail = if auth.is_local() {
        app.host.jail_report(&r)
    } else {
        None
    };
    let net = if auth.is_local() {
        app.host.network_link(&r.id).map(|a| api::SandboxLink {
            netns: a.netns.display().to_string(),
            host_iface: a.host_iface,
            host_addr: a.host_addr.to_string(),
            sandbox_addr: a.ns_addr.to_string(),
        })
    } else {
        None
    };
    let mut out = sandbox(&auth.0, r);
    if let Some(h) = &mut out.host {
        h.vm = vm;
        h.jail = jail;
        h.net = net;
    }
    Ok(Json(out))
}

/// `DELETE /v1/sandboxes/{id}` options.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeleteQuery {
    /// Remove it even while it runs, stopping it first (the default); `false` refuses (409) a
    /// sandbox whose VM is still there.
    force: Option<bool>,
}

/// Remove a sandbox (stopping it first, unless `force=false`).
#[utoipa::path(delete, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id"), DeleteQuery),
    responses((status = 204, description = "Removed"), (status = 404, body = api::Error),
        (status = 409, description = "Running, and `force=false`", body = api::Error)))]
pub(crate) async fn delete(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
    q: Result<Query<DeleteQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<StatusCode, ApiError> {
    auth.need(Scope::Exec)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let r = app.owned(&auth.0, &id)?;
    let force = q.force.unwrap_or(true);
    run_op(&app, &auth, "delete", |app| async move {
        app.host.remove(&r.id, force).await
    })
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
        pub(crate) async fn $name(
            State(app): State<App>,
            auth: Auth,
            Path(id): Path<String>,
        ) -> Result<Json<api::Sandbox>, ApiError> {
            auth.need(Scope::Exec)?;
            let r = app.owned(&auth.0, &id)?;
            let done = run_op(&app, &auth, $op, |app| async move {
                app.host.$call(&r.id).await
            })
            .await?;
            Ok(Json(sandbox(&auth.0, done)))
        }
    };
}

lifecycle!(
    pause,
    "/v1/sandboxes/{id}/pause",
    "pause",
    pause,
    "Pause a sandbox (its vCPUs stop; memory stays)."
);
lifecycle!(
    resume,
    "/v1/sandboxes/{id}/resume",
    "resume",
    resume,
    "Resume a paused or hibernated sandbox."
);
lifecycle!(
    stop,
    "/v1/sandboxes/{id}/stop",
    "stop",
    stop,
    "Stop a sandbox: its VM ends, its record and files stay until it is removed."
);
lifecycle!(
    hibernate,
    "/v1/sandboxes/{id}/hibernate",
    "hibernate",
    hibernate,
    "Hibernate a sandbox: memory and disk saved, no VM left running."
);

/// Replace a sandbox's network policy. A running or paused sandbox gets it at once (every new
/// packet is checked against it); a hibernated or stopped one when it next runs. A sandbox
/// created with mode `none` has no network device and cannot be given `egress` (409).
#[utoipa::path(put, path = "/v1/sandboxes/{id}/network", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = api::NetworkPolicy,
    responses((status = 200, body = api::Sandbox), (status = 400, body = api::Error),
        (status = 404, body = api::Error),
        (status = 409, description = "Created without a network device", body = api::Error)))]
pub(crate) async fn network(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
    Json(req): Json<api::NetworkPolicy>,
) -> Result<Json<api::Sandbox>, ApiError> {
    auth.need(Scope::Exec)?;
    let r = app.owned(&auth.0, &id)?;
    let done = run_op(&app, &auth, "network", |app| async move {
        app.host.set_network(&r.id, req).await
    })
    .await?;
    Ok(Json(sandbox(&auth.0, done)))
}

/// Snapshot a sandbox; it keeps running.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/snapshot", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body(content = Option<api::TakeSnapshot>),
    responses((status = 201, body = api::Snapshot), (status = 404, body = api::Error)))]
pub(crate) async fn snapshot(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
    OptionalJson(req): OptionalJson<api::TakeSnapshot>,
) -> Result<(StatusCode, Json<api::Snapshot>), ApiError> {
    auth.need(Scope::Exec)?;
    let r = app.owned(&auth.0, &id)?;
    let limits = app.limits(&auth.0)?;
    let s = run_op(&app, &auth, "snapshot", |app| async move {
        app.host
            .snapshot(&r.id, req.name, false, limits.as_ref())
            .await
    })
    .await?;
    Ok((StatusCode::CREATED, Json(super::snapshot(&auth.0, s))))
}

/// Fork a sandbox into new ones; the source keeps running.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/fork", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = api::Fork,
    responses((status = 201, body = api::List<api::Sandbox>), (status = 404, body = api::Error),
        (status = 429, body = api::Error)))]
pub(crate) async fn fork(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
    Json(req): Json<api::Fork>,
) -> Result<(StatusCode, Json<api::List<api::Sandbox>>), ApiError> {
    auth.need(Scope::Exec)?;
    let r = app.owned(&auth.0, &id)?;
    let clones = fork_sandboxes(&app, &auth, r, req.count.unwrap_or(1), None).await?;
    Ok((
        StatusCode::CREATED,
        Json(api::List {
            items: clones.into_iter().map(|r| sandbox(&auth.0, r)).collect(),
        }),
    ))
}

/// Forks `r` into `count` new sandboxes of `auth`'s tenant, each with time to live `ttl_secs`
/// (every surface's fork). All or nothing: a failed fork leaves no clone behind.
pub(crate) async fn fork_sandboxes(
    app: &App,
    auth: &Auth,
    r: cove_host::SandboxRecord,
    count: u32,
    ttl_secs: Option<u64>,
) -> Result<Vec<cove_host::SandboxRecord>, ApiError> {
    cove_host::validate_fork(count, ttl_secs)?;
    // Before the snapshot: a fork that cannot fit is refused without one. Each clone is then
    // admitted as it is recorded.
    app.fits(&auth.0, count, r.cpus, r.memory_mib)?;
    let limits = app.limits(&auth.0)?;
    run_op(app, auth, "fork", |app| async move {
        app.host.fork(&r.id, count, limits, ttl_secs).await
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What coved makes of a create body: a 400 from its checks, or the settings it would
    /// create with.
    fn checked(body: serde_json::Value) -> Result<(), String> {
        let req: api::CreateSandbox = serde_json::from_value(body).map_err(|e| e.to_string())?;
        check_env(&req.env).map_err(|e| e.message)?;
        cove_host::validate(&spec_of(req)).map_err(|e| e.to_string())
    }

    #[test]
    fn creates_are_checked_against_the_limits_the_document_publishes() {
        use api::rules::{FIELDS, Rule};
        let mut seen = 0;
        for &(_, field, rule) in FIELDS.iter().filter(|(s, ..)| *s == "CreateSandbox") {
            // A policy field needs its timeout, as the checks say.
            let with = |v: serde_json::Value| {
                let mut b = serde_json::json!({ field: v });
                if field == "idle_timeout_secs" {
                    b["on_idle"] = "hibernate".into();
                }
                b
            };
            match rule {
                Rule::Int(r) => {
                    assert!(checked(with(r.min.into())).is_ok(), "{field} = {}", r.min);
                    let over = checked(with((r.max + 1).into())).unwrap_err();
                    assert!(over.contains(&r.describe()), "{field}: {over}");
                    if r.min > 0 {
                        assert!(checked(with((r.min - 1).into())).is_err(), "{field}");
                    }
                }
                Rule::Text(p) => {
                    assert!(checked(with("web-1".into())).is_ok());
                    let bad = checked(with("-web".into())).unwrap_err();
                    assert!(bad.contains(p.allowed), "{field}: {bad}");
                }
                Rule::Map { max, keys, values } => {
                    let ok: serde_json::Map<_, _> = (0..max.unwrap_or(3))
                        .map(|i| (format!("K{i}"), "v".into()))
                        .collect();
                    assert!(checked(with(ok.clone().into())).is_ok(), "{field}");
                    if let Some(max) = max {
                        let mut over = ok;
                        over.insert(format!("K{max}"), "v".into());
                        assert!(checked(with(over.into())).is_err(), "{field} over {max}");
                    }
                    let bad_key = checked(with(serde_json::json!({"a=b": "v"}))).unwrap_err();
                    assert!(bad_key.contains(keys.allowed), "{field}: {bad_key}");
                    let bad_value = checked(with(serde_json::json!({"k": "a\u{0}"})));
                    assert!(
                        bad_value.unwrap_err().contains(values.allowed),
                        "{field} value"
                    );
                }
                Rule::Seconds(_) | Rule::Items(_) => unreachable!("not on a create: {field}"),
            }
            seen += 1;
        }
        assert!(seen >= 7, "{seen} create rules");
        // Closed enumerations.
        assert!(checked(serde_json::json!({"engine": "firecracker"})).is_err());
        assert!(checked(serde_json::json!({"on_idle": "sleep", "idle_timeout_secs": 5})).is_err());
    }

    fn key(t: &(i64, String)) -> (i64, &str) {
        (t.0, &t.1)
    }

    fn ids(page: &[(i64, String)]) -> Vec<&str> {
        page.iter().map(|(_, id)| id.as_str()).collect()
    }

    #[test]
    fn a_page_follows_its_cursor_even_when_that_sandbox_is_gone() {
        let all: Vec<(i64, String)> = [(1, "b"), (1, "c"), (2, "a"), (3, "d"), (3, "e")]
            .into_iter()
            .map(|(t, id)| (t, id.to_string()))
            .collect();
        let (first, next) = paginate(all.clone(), key, 2, None);
        assert_eq!(ids(&first), ["b", "c"]);
        let next = Cursor::parse(&next.expect("more follow").to_string()).unwrap();
        // "c" is removed (or stops passing the filter) before the next page is asked for.
        let without_c = all.iter().filter(|t| t.1 != "c").cloned();
        let (second, next) = paginate(without_c, key, 2, Some(&next));
        assert_eq!(ids(&second), ["a", "d"]);
        let next = next.expect("one more");
        assert_eq!(next.to_string(), "3-d");
        let (third, next) = paginate(all.clone(), key, 2, Some(&next));
        assert_eq!((ids(&third), next), (vec!["e"], None));
        // A page that ends the list exactly has no next one.
        assert_eq!(paginate(all.clone(), key, 5, None).1, None);
        // Past the end: an empty page, no cursor.
        let end = Cursor::parse("9-z").unwrap();
        assert_eq!(paginate(all, key, 5, Some(&end)).0.len(), 0);
    }

    #[test]
    fn cursors_round_trip_and_malformed_ones_are_refused() {
        let c = Cursor::parse("1717000000123-0a1b2c3d4e5f").unwrap();
        assert_eq!(c.key(), (1_717_000_000_123, "0a1b2c3d4e5f"));
        assert_eq!(c.to_string(), "1717000000123-0a1b2c3d4e5f");
        for bad in [
            "",
            "0a1b2c3d4e5f",
            "-0a1b2c3d4e5f",
            "12-",
            "+12-abc",
            "x12-abc",
            "12-ab-c",
            "12-ab%20c",
            "99999999999999999999-abc",
        ] {
            let e = Cursor::parse(bad).expect_err(bad);
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
