//! Files of a sandbox over HTTP: downloads and uploads stream (any size, never whole in
//! coved's memory), plus stat, list, mkdir, remove and rename.

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use cove_api as api;
use cove_host::{AgentClient, ClientError};
use cove_protocol::FileKind;
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use serde::Deserialize;

use crate::app::App;
use crate::auth::Auth;
use crate::error::{ApiError, Json};
use crate::keys::Scope;

/// `?path=/abs/path`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
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
pub(crate) fn file_err(e: ClientError) -> ApiError {
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
    let body = download_body(client, q.path).await.map_err(|e| match e {
        DownloadError::Stat(e) => file_err(e),
        e @ DownloadError::Directory(_) => {
            ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
        }
    })?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

/// Why a download did not start (nothing was sent: its answer may still have any status).
#[derive(Debug, thiserror::Error)]
pub(crate) enum DownloadError {
    /// Looking at the path failed (the agent's `not_found` for a missing one).
    #[error(transparent)]
    Stat(ClientError),
    /// The path is a directory.
    #[error("{0} is a directory")]
    Directory(String),
}

/// Bytes buffered between the agent's session and the response.
const DOWNLOAD_BUFFER: usize = 256 << 10;

/// A file of a sandbox as a response body, streamed — `/v1`'s download and envd's. What has a
/// status of its own (missing, a directory) is checked before the first byte; a failure after
/// it aborts the response, so the client sees a broken transfer, never a clean end to a short
/// file.
pub(crate) async fn download_body(
    client: AgentClient,
    path: String,
) -> Result<Body, DownloadError> {
    let st = client.stat(&path).await.map_err(DownloadError::Stat)?;
    if st.kind == FileKind::Dir {
        return Err(DownloadError::Directory(path));
    }
    Ok(Body::from_stream(file_stream(client, path)))
}

/// The file's bytes, then an error item if the copy failed (a body stream's error aborts the
/// response) or nothing if it ended well.
fn file_stream(
    client: AgentClient,
    path: String,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let (mut w, rd) = tokio::io::duplex(DOWNLOAD_BUFFER);
    let (done, result) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let r = client.read_file(&path, &mut w).await;
        if let Err(e) = &r {
            tracing::info!("a download of {path} ended early: {e}");
        }
        let _ = done.send(r);
        // `w` goes now: the reader sees the end of what was copied, then the result.
    });
    let end = futures::stream::once(async move {
        match result.await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(Err(std::io::Error::other(e))),
            Err(_) => Some(Err(std::io::Error::other("the download's copy stopped"))),
        }
    })
    .filter_map(std::future::ready);
    tokio_util::io::ReaderStream::with_capacity(rd, DOWNLOAD_BUFFER).chain(end)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_agent::{self, msg};
    use cove_protocol::{AgentError, ErrorCode, FileStat, FrameBody, Reply, Request, Stream};

    fn stat(kind: FileKind) -> Reply {
        Reply::Stat(FileStat {
            path: "/f".into(),
            kind,
            size: 7,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            link_target: None,
            owner: None,
            group: None,
        })
    }

    /// An agent that has `/f` (of `kind`) and sends `content` for it, then `end`.
    fn agent(kind: FileKind, end: Reply) -> AgentClient {
        fake_agent::client(move |req| match req {
            Request::Stat { .. } => vec![msg(&stat(kind))],
            Request::ReadFile { .. } => vec![
                msg(&Reply::FileStart {
                    size: 7,
                    mode: 0o644,
                }),
                FrameBody::Data(Stream::Stdout, b"partial".to_vec()),
                FrameBody::Eof(Stream::Stdout),
                msg(&end),
            ],
            _ => vec![],
        })
    }

    #[tokio::test]
    async fn a_download_streams_the_file() {
        let body = download_body(agent(FileKind::File, Reply::Done { bytes: 7 }), "/f".into())
            .await
            .unwrap();
        let got = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        assert_eq!(&got[..], b"partial");
    }

    /// An agent failing once bytes flowed breaks the body: the client cannot take the part it
    /// got for the whole file (hyper aborts the response on a body error).
    #[tokio::test]
    async fn a_download_that_fails_midway_ends_in_an_error() {
        let failed = Reply::Error(AgentError {
            code: ErrorCode::Internal,
            message: "an I/O error".into(),
            path: None,
        });
        let body = download_body(agent(FileKind::File, failed), "/f".into())
            .await
            .unwrap();
        let e = axum::body::to_bytes(body, usize::MAX).await.unwrap_err();
        assert!(format!("{e:?}").contains("an I/O error"), "{e:?}");
    }

    #[tokio::test]
    async fn a_directory_or_a_missing_file_is_refused_before_any_byte() {
        let dir = download_body(agent(FileKind::Dir, Reply::Ok), "/f".into()).await;
        assert!(matches!(dir, Err(DownloadError::Directory(_))));
        let missing = fake_agent::client(|_| {
            vec![msg(&Reply::Error(AgentError {
                code: ErrorCode::NotFound,
                message: "no such file".into(),
                path: Some("/f".into()),
            }))]
        });
        let Err(DownloadError::Stat(e)) = download_body(missing, "/f".into()).await else {
            panic!("a missing file")
        };
        assert_eq!(file_err(e).status, StatusCode::NOT_FOUND);
    }
}
