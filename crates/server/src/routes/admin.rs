//! Host administration through the API: templates, image imports, and what the host runs.

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use cove_api as api;
use cove_host::CreateSpec;
use futures::TryStreamExt as _;
use serde::Deserialize;

use crate::app::App;
use crate::auth::Auth;
use crate::error::{ApiError, Json};
use crate::keys::Scope;

/// Boot an image once and keep its snapshot as the template of that image and shape (`operator`).
#[utoipa::path(post, path = "/v1/templates", tag = "images", request_body = api::CreateTemplate,
    responses((status = 201, body = api::Snapshot), (status = 422, body = api::Error)))]
pub async fn create_template(
    State(app): State<App>,
    auth: Auth,
    Json(req): Json<api::CreateTemplate>,
) -> Result<(StatusCode, Json<api::Snapshot>), ApiError> {
    auth.need(Scope::Operator)?;
    let d = CreateSpec::default();
    let spec = CreateSpec {
        image: req.image,
        cpus: req.cpus.unwrap_or(d.cpus),
        memory_mib: req.memory_mib.unwrap_or(d.memory_mib),
        disk_mib: req.disk_mib.unwrap_or(d.disk_mib),
        network: req.network.map(|mode| cove_api::NetworkPolicy {
            mode,
            ..Default::default()
        }),
        // The boot that makes the template is the tenant's sandbox while it runs: it counts
        // against its quota (a tenant at its limit had booted a 4-vCPU template VM).
        limits: app.limits(&auth.0)?,
        owner: auth.0.tenant.clone(),
        ..d
    };
    cove_host::validate(&spec)?;
    let s = crate::app::run_op(&app, &auth, "template", |app| async move {
        app.host.template_create(&spec).await
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(crate::routes::snapshot(&auth.0, s)),
    ))
}

/// `PUT /v1/images/import` options.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    /// Name for the image (default: the names the archive gives).
    name: Option<String>,
    /// Which image of an archive holding several.
    #[serde(rename = "ref")]
    pick: Option<String>,
}

/// Import a `docker save` archive or an OCI layout tar, sent as the body (`operator`; streamed to
/// a temporary file, any size).
#[utoipa::path(put, path = "/v1/images/import", tag = "images", params(ImportQuery),
    request_body(content = Vec<u8>, content_type = "application/x-tar"),
    responses((status = 201, body = api::Image), (status = 422, body = api::Error)))]
pub async fn import(
    State(app): State<App>,
    auth: Auth,
    q: Result<Query<ImportQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Result<(StatusCode, Json<api::Image>), ApiError> {
    auth.need(Scope::Operator)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let internal = |e: std::io::Error| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    };
    let dir = app.host.home().join("tmp");
    std::fs::create_dir_all(&dir).map_err(internal)?;
    let tmp = tempfile::Builder::new()
        .prefix("upload-")
        .suffix(".tar")
        .tempfile_in(&dir)
        .map_err(internal)?;
    let mut file = tokio::fs::File::create(tmp.path())
        .await
        .map_err(internal)?;
    let mut reader =
        tokio_util::io::StreamReader::new(body.into_data_stream().map_err(std::io::Error::other));
    tokio::io::copy(&mut reader, &mut file)
        .await
        .map_err(|e| ApiError::bad_request(format!("receiving the archive: {e}")))?;
    drop(file);
    let info = app
        .host
        .image_import(
            tmp.path(),
            q.pick.as_deref(),
            q.name.as_deref(),
            &cove_host::images::NoProgress,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(api::Image {
            digest: info.meta.digest,
            names: info.names,
            content_bytes: info.meta.content_bytes,
            created_at: info.meta.created_at,
            used_by: Vec::new(),
        }),
    ))
}

/// Remove images that no name points at and nothing uses, and cached layers no image needs
/// (`operator`).
#[utoipa::path(post, path = "/v1/images/prune", tag = "images",
    responses((status = 200, body = api::Pruned), (status = 403, body = api::Error)))]
pub async fn prune(State(app): State<App>, auth: Auth) -> Result<Json<api::Pruned>, ApiError> {
    auth.need(Scope::Operator)?;
    let (removed, freed_bytes) = app.host.image_prune().await?;
    Ok(Json(api::Pruned {
        removed,
        freed_bytes,
    }))
}

/// Hash every snapshot, template and hibernation kept on this host again and compare each with
/// its manifest (the host's administrator only: it reads everything). A corrupted copy is
/// refused at its next restore, or fetched again from the blob store where that holds one.
#[utoipa::path(post, path = "/v1/scrub", tag = "meta", params(ScrubQuery),
    responses((status = 200, body = api::Scrubbed), (status = 403, body = api::Error)))]
pub async fn scrub(
    State(app): State<App>,
    auth: Auth,
    q: Result<Query<ScrubQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<api::Scrubbed>, ApiError> {
    auth.need(Scope::Operator)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    Ok(Json(app.host.scrub(q.only.as_deref()).await?))
}

/// `POST /v1/scrub` options.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScrubQuery {
    /// Only this snapshot, or this hibernated sandbox (its whole id).
    only: Option<String>,
}

/// What this host runs: versions, the engine, the images.
#[utoipa::path(get, path = "/v1/info", tag = "meta", responses((status = 200, body = api::Info)))]
pub async fn info(State(app): State<App>, auth: Auth) -> Result<Json<api::Info>, ApiError> {
    auth.need(Scope::Read)?;
    let engine = match cove_host::engine::choose(None) {
        Ok(c) => format!("{} ({})", c.engine, c.accel),
        Err(e) => format!("none: {e}"),
    };
    Ok(Json(api::Info {
        version: env!("CARGO_PKG_VERSION").into(),
        protocol_version: cove_protocol::PROTOCOL_VERSION,
        engine,
        images: app
            .host
            .image_list()?
            .into_iter()
            .flat_map(|i| i.names)
            .collect(),
        // Runs QEMU and may hash the guest's files: off the async workers.
        host: if auth.is_local() {
            let app = app.clone();
            Some(
                tokio::task::spawn_blocking(move || host_info(&app.host))
                    .await
                    .map_err(|e| {
                        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
                    })?,
            )
        } else {
            None
        },
    }))
}

/// The host as its administrator sees it.
fn host_info(host: &cove_host::Host) -> api::HostInfo {
    let choice = cove_host::engine::choose(None);
    let qemu = choice.as_ref().ok().and_then(|c| {
        let out = std::process::Command::new(&c.qemu)
            .arg("--version")
            .output()
            .ok()?;
        String::from_utf8(out.stdout)
            .ok()?
            .lines()
            .next()
            .map(str::to_string)
    });
    let asset = |p: std::path::PathBuf| api::Asset {
        present: p.is_file(),
        path: p.display().to_string(),
    };
    let v = cove_host::engine::probe();
    api::HostInfo {
        home: host.home().display().to_string(),
        engine: choice.as_ref().ok().map(|c| api::EngineInfo {
            engine: c.engine,
            accel: c.accel,
            reason: c.reason.clone(),
        }),
        engine_error: choice.as_ref().err().map(ToString::to_string),
        virtualisation: api::Virtualisation {
            dev_kvm: v.dev_kvm,
            hw_virt: v.hw_virt,
            kvm_pvm: v.kvm_pvm,
        },
        qemu,
        kernel: asset(host.kernel()),
        initramfs: asset(host.initramfs()),
        guest: host.guest_identity().ok(),
        tsc_khz: cove_host::engine::tsc_khz(host.home()),
        isolation: cove_host::isolation::probe(),
        jail_off: host.jail_off().map(str::to_string),
        network: {
            let (off, pool, services) = host.network_info();
            api::NetworkInfo {
                off,
                pool: pool.to_string(),
                services: services.map(|p| [p.dns, p.http, p.tls]),
            }
        },
    }
}
