//! Images: list and remove (pulls are `pulls`, imports and pruning `admin`).

use axum::extract::{Path, State};
use cove_api as api;

use crate::app::App;
use crate::auth::Auth;
use crate::error::{ApiError, Json};
use crate::keys::Scope;

/// Installed images (shared by every tenant of this host).
#[utoipa::path(get, path = "/v1/images", tag = "images",
    responses((status = 200, body = api::List<api::Image>)))]
pub(crate) async fn list(
    State(app): State<App>,
    auth: Auth,
) -> Result<Json<api::List<api::Image>>, ApiError> {
    auth.need(Scope::Read)?;
    // Who uses an image is the tenant's own business: other keys — a tenant's admin key too —
    // see only their own users; the host's administrator sees all.
    let admin = auth.0.tenant.is_none();
    let mine: std::collections::HashSet<String> = if admin {
        std::collections::HashSet::new()
    } else {
        app.host
            .list()?
            .into_iter()
            .filter(|r| auth.0.sees(r.owner.as_deref()))
            .map(|r| format!("sandbox {}", r.id))
            .chain(
                app.host
                    .snapshots()?
                    .into_iter()
                    .filter(|s| auth.0.sees(s.owner.as_deref()))
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

/// One image in full: by name, reference, digest or unique digest prefix.
#[utoipa::path(get, path = "/v1/images/{image}", tag = "images",
    params(("image" = String, Path, description = "Name, reference, digest (sha256:…) or digest prefix")),
    responses((status = 200, body = api::ImageDetail), (status = 404, body = api::Error)))]
pub(crate) async fn get(
    State(app): State<App>,
    auth: Auth,
    Path(image): Path<String>,
) -> Result<Json<api::ImageDetail>, ApiError> {
    auth.need(Scope::Read)?;
    let i = match app.host.image_inspect(&image) {
        Ok(i) => i,
        Err(cove_host::HostError::NoSuchImage { .. }) => {
            return Err(ApiError::not_found("image", &image));
        }
        Err(e) => return Err(e.into()),
    };
    let admin = auth.0.tenant.is_none();
    let used_by = if admin {
        i.used_by
    } else {
        let sees = |u: &String| {
            let (kind, id) = u.split_once(' ').unwrap_or(("", u));
            match kind {
                "sandbox" => app.owned(&auth.0, id).is_ok(),
                _ => app.owned_snapshot(&auth.0, id).is_ok(),
            }
        };
        i.used_by.into_iter().filter(sees).collect()
    };
    let disk = auth
        .is_local()
        .then(|| app.host.images().disk(&i.meta).display().to_string());
    let m = i.meta;
    Ok(Json(api::ImageDetail {
        image: api::Image {
            digest: m.digest,
            names: i.names,
            content_bytes: m.content_bytes,
            created_at: m.created_at,
            used_by,
        },
        config_digest: m.config_digest,
        source: m.source,
        layers: m
            .layers
            .into_iter()
            .map(|l| api::ImageLayer {
                digest: l.digest,
                media_type: l.media_type,
                size: l.size,
                diff_id: l.diff_id,
            })
            .collect(),
        entries: m.entries,
        devices_skipped: m.devices_skipped,
        disk_bytes: m.disk_bytes,
        config: api::ImageConfig {
            env: m.config.env,
            workdir: m.config.workdir,
            user: m.config.user,
            entrypoint: m.config.entrypoint,
            cmd: m.config.cmd,
        },
        disk,
    }))
}

/// Remove an image name, or an image by digest (`operator`): like `cove image rm`, a name that is
/// one of several only goes itself; the image goes with its last name, refused (409) while
/// sandboxes or snapshots use it. Names with `/` or `:` are sent percent-encoded.
#[utoipa::path(delete, path = "/v1/images/{image}", tag = "images",
    params(("image" = String, Path, description = "Name, reference or manifest digest (sha256:…)")),
    responses((status = 200, body = api::ImageRemoved), (status = 404, body = api::Error),
        (status = 409, body = api::Error)))]
pub(crate) async fn delete(
    State(app): State<App>,
    auth: Auth,
    Path(image): Path<String>,
) -> Result<Json<api::ImageRemoved>, ApiError> {
    auth.need(Scope::Operator)?;
    if let Some(hex) = image.strip_prefix("sha256:")
        && (hex.len() != 64 || app.host.images().get(&image).is_none())
    {
        return Err(ApiError::not_found("image", &image));
    }
    let removed = app.host.image_remove(&image).await?;
    Ok(Json(api::ImageRemoved { removed }))
}
