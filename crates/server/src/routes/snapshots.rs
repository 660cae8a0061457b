//! Snapshots: list and delete (taking one is `POST /v1/sandboxes/{id}/snapshot`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use cove_api as api;

use super::snapshot;
use crate::app::App;
use crate::auth::Auth;
use crate::error::{ApiError, Json};
use crate::keys::Scope;

/// The caller's snapshots (every one, templates included, for the host's administrator).
#[utoipa::path(get, path = "/v1/snapshots", tag = "snapshots",
    responses((status = 200, body = api::List<api::Snapshot>)))]
pub(crate) async fn list(
    State(app): State<App>,
    auth: Auth,
) -> Result<Json<api::List<api::Snapshot>>, ApiError> {
    auth.need(Scope::Read)?;
    let items = app
        .host
        .snapshots()?
        .into_iter()
        .filter(|s| auth.0.sees(s.owner.as_deref()))
        .map(|s| snapshot(&auth.0, s))
        .collect();
    Ok(Json(api::List { items }))
}

/// Delete a snapshot.
#[utoipa::path(delete, path = "/v1/snapshots/{id}", tag = "snapshots",
    params(("id" = String, Path, description = "Snapshot id")),
    responses((status = 204, description = "Deleted"), (status = 404, body = api::Error)))]
pub(crate) async fn delete(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    auth.need(Scope::Exec)?;
    let s = app.owned_snapshot(&auth.0, &id)?;
    app.host.remove_snapshot(&s.id).await?;
    Ok(StatusCode::NO_CONTENT)
}
