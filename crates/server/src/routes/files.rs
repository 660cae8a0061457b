//! Files of a sandbox over HTTP: downloads and uploads stream (any size, never whole in
//! coved's memory), plus stat, list, mkdir, remove and rename.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use cove_api as api;
use cove_host::ClientError;
use cove_protocol::FileKind;
use futures::TryStreamExt as _;
use serde::Deserialize;

use crate::app::App;
use crate::auth::Auth;
use crate::error::{ApiError, Json};
use crate::keys::Scope;

/// `?path=/abs/path`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PathQuery {
    /// Absolute path in the sandbox.
    path: String,
    /// Permission bits of an uploaded file, octal (default 644).
    #[serde(default)]
    mode: Option<String>,
    /// Remove a directory with its contents.
    #[serde(default)]
    recursive: Option<bool>,
}

fn absolute(p: &str) -> Result<(), ApiError> {
    if p.starts_with('/') && !p.contains('\0') {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "path {p:?}: give an absolute path"
        )))
    }
}

fn query(
    q: Result<Query<PathQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<PathQuery, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    absolute(&q.path)?;
    Ok(q)
}

/// A missing path is the resource the route names: 404 here, not the exec's 422.
fn file_err(e: ClientError) -> ApiError {
    match &e {
        ClientError::Agent(a) if a.code == cove_protocol::ErrorCode::NotFound => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", a.to_string())
        }
        _ => e.into(),
    }
}

fn kind(k: FileKind) -> String {
    match k {
        FileKind::File => "file",
        FileKind::Dir => "dir",
        FileKind::Symlink => "symlink",
        FileKind::Other => "other",
    }
    .into()
}

/// Download a file (streamed).
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), PathQuery),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, body = api::Error)))]
pub async fn download(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
    q: Result<Query<PathQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    auth.need(Scope::Read)?;
    let r = app.owned(&auth.0, &id)?;
    let q = query(q)?;
    let client = app.host.connect(&r.id).await?;
    // Errors that have a status (missing, a directory) come before the first byte.
    let st = client.stat(&q.path).await.map_err(file_err)?;
    if st.kind == FileKind::Dir {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("{} is a directory", q.path),
        ));
    }
    let (mut w, rd) = tokio::io::duplex(256 << 10);
    tokio::spawn(async move {
        // A failure mid-stream ends the body early: the client sees a short read.
        let _ = client.read_file(&q.path, &mut w).await;
    });
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(rd, 256 << 10));
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

/// Upload a file (streamed; replaces it atomically; parents are created).
#[utoipa::path(put, path = "/v1/sandboxes/{id}/files", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), PathQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = api::Written), (status = 404, body = api::Error)))]
pub async fn upload(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
    q: Result<Query<PathQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Result<Json<api::Written>, ApiError> {
    auth.need(Scope::Exec)?;
    let r = app.owned(&auth.0, &id)?;
    let q = query(q)?;
    let mode = match q.mode.as_deref() {
        None => None,
        Some(m) => Some(
            u32::from_str_radix(m, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| ApiError::bad_request(format!("mode {m:?}: octal, up to 7777")))?,
        ),
    };
    let client = app.host.connect(&r.id).await?;
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let mut reader = tokio_util::io::StreamReader::new(stream);
    let bytes = client
        .write_file(&q.path, mode, &mut reader)
        .await
        .map_err(file_err)?;
    Ok(Json(api::Written { bytes }))
}

/// Remove a file or directory.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}/files", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), PathQuery),
    responses((status = 204, description = "Removed"), (status = 404, body = api::Error),
        (status = 409, description = "A directory that is not empty", body = api::Error)))]
pub async fn remove(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
    q: Result<Query<PathQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<StatusCode, ApiError> {
    auth.need(Scope::Exec)?;
    let r = app.owned(&auth.0, &id)?;
    let q = query(q)?;
    let client = app.host.connect(&r.id).await?;
    client
        .remove(&q.path, q.recursive.unwrap_or(false))
        .await
        .map_err(file_err)?;
    Ok(StatusCode::NO_CONTENT)
}

/// A path's metadata (a final symlink is not followed).
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files/stat", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), PathQuery),
    responses((status = 200, body = api::FileStat), (status = 404, body = api::Error)))]
pub async fn stat(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
    q: Result<Query<PathQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<api::FileStat>, ApiError> {
    auth.need(Scope::Read)?;
    let r = app.owned(&auth.0, &id)?;
    let q = query(q)?;
    let s = app
        .host
        .connect(&r.id)
        .await?
        .stat(&q.path)
        .await
        .map_err(file_err)?;
    Ok(Json(api::FileStat {
        path: s.path,
        kind: kind(s.kind),
        size: s.size,
        mode: s.mode,
        uid: s.uid,
        gid: s.gid,
        mtime: s.mtime,
        link_target: s.link_target,
        owner: s.owner,
        group: s.group,
    }))
}

/// A directory's entries.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files/list", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), PathQuery),
    responses((status = 200, body = api::List<api::DirEntry>), (status = 404, body = api::Error)))]
pub async fn list(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
    q: Result<Query<PathQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<api::List<api::DirEntry>>, ApiError> {
    auth.need(Scope::Read)?;
    let r = app.owned(&auth.0, &id)?;
    let q = query(q)?;
    let entries = app
        .host
        .connect(&r.id)
        .await?
        .list(&q.path)
        .await
        .map_err(file_err)?;
    Ok(Json(api::List {
        items: entries
            .into_iter()
            .map(|e| api::DirEntry {
                name: e.name,
                kind: kind(e.kind),
                size: e.size,
                mode: e.mode,
                uid: e.uid,
                gid: e.gid,
                mtime: e.mtime,
                link_target: e.link_target,
                owner: e.owner,
                group: e.group,
            })
            .collect(),
    }))
}

/// Watch a directory: one `FsEvent` (JSON) a line as things change under it, for as long as
/// the response is read (or until the directory goes). `recursive=true` for its subdirectories.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files/watch", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), PathQuery),
    responses((status = 200, content_type = "application/x-ndjson", body = api::FsEvent),
        (status = 404, body = api::Error)))]
pub async fn watch(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
    q: Result<Query<PathQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    use cove_host::agent::Event;
    use cove_protocol::Reply;
    auth.need(Scope::Read)?;
    let r = app.owned(&auth.0, &id)?;
    let q = query(q)?;
    let session = app
        .host
        .connect(&r.id)
        .await?
        .watch_dir(&q.path, q.recursive.unwrap_or(false))
        .await
        .map_err(file_err)?;
    let lines = futures::stream::unfold(session, |mut session| async move {
        loop {
            match session.next().await {
                Some(Event::Reply(Reply::FsEvent(e))) => {
                    let ev = api::FsEvent {
                        name: e.name,
                        kind: fs_kind(e.kind),
                        dir: e.dir,
                    };
                    let mut line = serde_json::to_vec(&ev).expect("serializes");
                    line.push(b'\n');
                    return Some((Ok::<_, std::convert::Infallible>(line), session));
                }
                Some(Event::Reply(r)) if r.is_final() => return None,
                Some(_) => {}
                None => return None,
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(lines),
    )
        .into_response())
}

fn fs_kind(k: cove_protocol::FsEventKind) -> api::FsEventKind {
    use cove_protocol::FsEventKind as K;
    match k {
        K::Create => api::FsEventKind::Create,
        K::Write => api::FsEventKind::Write,
        K::Remove => api::FsEventKind::Remove,
        K::Rename => api::FsEventKind::Rename,
        K::Chmod => api::FsEventKind::Chmod,
        K::Overflow => api::FsEventKind::Overflow,
    }
}

/// Create a directory.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/mkdir", tag = "files",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = api::Mkdir,
    responses((status = 204, description = "Created"), (status = 404, body = api::Error),
        (status = 409, body = api::Error)))]
pub async fn mkdir(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
    Json(req): Json<api::Mkdir>,
) -> Result<StatusCode, ApiError> {
    auth.need(Scope::Exec)?;
    let r = app.owned(&auth.0, &id)?;
    absolute(&req.path)?;
    app.host
        .connect(&r.id)
        .await?
        .mkdir(&req.path, req.parents)
        .await
        .map_err(file_err)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Rename (move) a path within the sandbox.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/rename", tag = "files",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = api::Rename,
    responses((status = 204, description = "Renamed"), (status = 404, body = api::Error)))]
pub async fn rename(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
    Json(req): Json<api::Rename>,
) -> Result<StatusCode, ApiError> {
    auth.need(Scope::Exec)?;
    let r = app.owned(&auth.0, &id)?;
    absolute(&req.from)?;
    absolute(&req.to)?;
    app.host
        .connect(&r.id)
        .await?
        .rename(&req.from, &req.to)
        .await
        .map_err(file_err)?;
    Ok(StatusCode::NO_CONTENT)
}
