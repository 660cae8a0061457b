//! envd's `filesystem.Filesystem` service over the guest agent's file requests: `Stat`,
//! `ListDir` (to a depth), `MakeDir`, `Move`, `Remove`, and watching a directory — as a stream
//! (`WatchDir`) or as a watcher polled for its events (`CreateWatcher`, `GetWatcherEvents`,
//! `RemoveWatcher`; coved keeps each watcher's events until they are read).

use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use cove_host::agent::Event;
use cove_host::{AgentClient, SandboxRecord};
use cove_protocol::{ErrorCode, FileKind, FsEvent, FsEventKind, Reply};
use serde::Deserialize;
use serde_json::json;

use super::connect::{self, Code, RpcError};
use super::envd::{effective_user, user};
use crate::app::App;

/// Entries one `ListDir` returns at most (a deep listing of a big tree is cut there).
const MAX_ENTRIES: usize = 100_000;
/// Levels one `ListDir` descends at most: a path (4096 bytes at most) names no more.
const MAX_DEPTH: u32 = 2048;

#[derive(Debug, Deserialize)]
struct PathRequest {
    path: String,
}

#[derive(Debug, Deserialize)]
struct ListDir {
    path: String,
    #[serde(default)]
    depth: u32,
}

#[derive(Debug, Deserialize)]
struct Move {
    source: String,
    destination: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WatchRequest {
    path: String,
    #[serde(default)]
    recursive: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WatcherRequest {
    watcher_id: String,
}

/// One call of the service.
pub(crate) async fn call(
    app: App,
    rec: SandboxRecord,
    method: String,
    headers: HeaderMap,
    body: Vec<u8>,
) -> Response {
    if method == "WatchDir" {
        return match connect::stream_request::<WatchRequest>(&headers, &body) {
            Ok(r) => watch_stream(app, rec, &headers, r).await,
            Err(e) => connect::failed_stream(e).await,
        };
    }
    run(app, rec, &method, &headers, &body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// An event as envd's JSON has it (`None`: nothing to say to an E2B client).
pub(crate) fn event_json(e: &FsEvent) -> Option<serde_json::Value> {
    let kind = match e.kind {
        FsEventKind::Create => "EVENT_TYPE_CREATE",
        FsEventKind::Write => "EVENT_TYPE_WRITE",
        FsEventKind::Remove => "EVENT_TYPE_REMOVE",
        FsEventKind::Rename => "EVENT_TYPE_RENAME",
        FsEventKind::Chmod => "EVENT_TYPE_CHMOD",
        FsEventKind::Overflow => return None,
    };
    Some(json!({"name": e.name, "type": kind}))
}

/// `WatchDir`: `start`, then each change as `filesystem`, keepalives while quiet; the client
/// closing the stream ends the watch.
async fn watch_stream(
    app: App,
    rec: SandboxRecord,
    headers: &HeaderMap,
    r: WatchRequest,
) -> Response {
    let run = async {
        let who = effective_user(&app, &rec, user(headers)?);
        let client = app
            .host
            .connect(&rec.id)
            .await
            .map_err(crate::error::ApiError::from)?;
        let path = who.resolve(&client, &r.path).await?;
        client.watch_dir(&path, r.recursive).await.map_err(fs_err)
    };
    let mut session = match run.await {
        Ok(s) => s,
        Err(e) => return connect::failed_stream(e).await,
    };
    connect::serve_stream(
        json!({"start": {}}),
        json!({"keepalive": {}}),
        connect::keepalive_interval(headers),
        move |tx| async move {
            loop {
                match session.next().await {
                    Some(Event::Reply(Reply::FsEvent(e))) => {
                        if let Some(j) = event_json(&e)
                            && !tx.send(&json!({"filesystem": j})).await
                        {
                            return None;
                        }
                    }
                    Some(Event::Reply(Reply::Error(e))) => {
                        return Some(fs_err(cove_host::ClientError::from(e)));
                    }
                    Some(Event::Reply(r)) if r.is_final() => return None,
                    Some(_) => {}
                    None => {
                        return Some(RpcError::new(
                            Code::Unavailable,
                            "the sandbox went away during the watch",
                        ));
                    }
                }
            }
        },
    )
}

/// A missing path, an existing one, a bad one: the codes envd gives them.
fn fs_err(e: cove_host::ClientError) -> RpcError {
    if let cove_host::ClientError::Agent(a) = &e {
        let code = match a.code {
            ErrorCode::NotFound => Some(Code::NotFound),
            ErrorCode::AlreadyExists => Some(Code::AlreadyExists),
            ErrorCode::NotADirectory | ErrorCode::IsADirectory | ErrorCode::InvalidRequest => {
                Some(Code::InvalidArgument)
            }
            ErrorCode::PermissionDenied => Some(Code::PermissionDenied),
            ErrorCode::NoSpace => Some(Code::ResourceExhausted),
            _ => None,
        };
        if let Some(c) = code {
            return RpcError::new(c, a.to_string());
        }
    }
    e.into()
}

async fn run(
    app: App,
    rec: SandboxRecord,
    method: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, RpcError> {
    let who = effective_user(&app, &rec, user(headers)?);
    let client = app
        .host
        .connect(&rec.id)
        .await
        .map_err(crate::error::ApiError::from)?;
    match method {
        "Stat" => {
            let r: PathRequest = connect::unary_request(headers, body)?;
            let path = who.resolve(&client, &r.path).await?;
            let entry = stat_entry(&client, &path).await?;
            Ok(connect::unary(&json!({"entry": entry})))
        }
        "ListDir" => {
            let r: ListDir = connect::unary_request(headers, body)?;
            let path = who.resolve(&client, &r.path).await?;
            let st = client.stat(&path).await.map_err(fs_err)?;
            if st.kind != FileKind::Dir {
                return Err(RpcError::new(
                    Code::InvalidArgument,
                    format!("{path} is not a directory"),
                ));
            }
            let mut entries = Vec::new();
            list(&client, &path, r.depth.max(1), &mut entries).await?;
            Ok(connect::unary(&json!({"entries": entries})))
        }
        "MakeDir" => {
            let r: PathRequest = connect::unary_request(headers, body)?;
            let path = who.resolve(&client, &r.path).await?;
            // envd's MakeDir creates the parents, and says when the directory was there.
            if client.stat(&path).await.is_ok() {
                return Err(RpcError::new(
                    Code::AlreadyExists,
                    format!("{path} already exists"),
                ));
            }
            client
                .mkdir_as(&path, true, Some(&who.name))
                .await
                .map_err(fs_err)?;
            let entry = stat_entry(&client, &path).await?;
            Ok(connect::unary(&json!({"entry": entry})))
        }
        "Move" => {
            let r: Move = connect::unary_request(headers, body)?;
            let (from, to) = (
                who.resolve(&client, &r.source).await?,
                who.resolve(&client, &r.destination).await?,
            );
            client.rename(&from, &to).await.map_err(fs_err)?;
            let entry = stat_entry(&client, &to).await?;
            Ok(connect::unary(&json!({"entry": entry})))
        }
        "Remove" => {
            let r: PathRequest = connect::unary_request(headers, body)?;
            let path = who.resolve(&client, &r.path).await?;
            client.remove(&path, true).await.map_err(fs_err)?;
            Ok(connect::unary(&json!({})))
        }
        "CreateWatcher" => {
            let r: WatchRequest = connect::unary_request(headers, body)?;
            let path = who.resolve(&client, &r.path).await?;
            let session = client.watch_dir(&path, r.recursive).await.map_err(fs_err)?;
            let id = app.watchers.add(&rec.id, session)?;
            Ok(connect::unary(&json!({"watcherId": id})))
        }
        "GetWatcherEvents" => {
            let r: WatcherRequest = connect::unary_request(headers, body)?;
            let events = app.watchers.drain(&rec.id, &r.watcher_id)?;
            let events: Vec<serde_json::Value> = events.iter().filter_map(event_json).collect();
            Ok(connect::unary(&json!({"events": events})))
        }
        "RemoveWatcher" => {
            let r: WatcherRequest = connect::unary_request(headers, body)?;
            app.watchers.remove(&rec.id, &r.watcher_id)?;
            Ok(connect::unary(&json!({})))
        }
        other => Err(RpcError::new(
            Code::Unimplemented,
            format!("filesystem.Filesystem/{other} is not a method of this server"),
        )),
    }
}

/// `ls -l`'s permission string.
fn permissions(kind: FileKind, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(match kind {
        FileKind::Dir => 'd',
        FileKind::Symlink => 'l',
        _ => '-',
    });
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

fn file_type(kind: FileKind) -> &'static str {
    match kind {
        FileKind::File => "FILE_TYPE_FILE",
        FileKind::Dir => "FILE_TYPE_DIRECTORY",
        FileKind::Symlink => "FILE_TYPE_SYMLINK",
        FileKind::Other => "FILE_TYPE_UNSPECIFIED",
    }
}

/// EntryInfo, as envd's JSON has it.
#[allow(clippy::too_many_arguments)]
fn entry(
    path: &str,
    kind: FileKind,
    size: u64,
    mode: u32,
    owner: String,
    group: String,
    mtime: i64,
    link: Option<String>,
) -> serde_json::Value {
    let name = path.rsplit('/').next().unwrap_or(path);
    let mut e = json!({
        "name": name,
        "type": file_type(kind),
        "path": path,
        "size": size.to_string(),
        "mode": mode,
        "permissions": permissions(kind, mode),
        "owner": owner,
        "group": group,
        "modifiedTime": super::control::rfc3339(mtime.saturating_mul(1000)),
    });
    if let Some(t) = link {
        e["symlinkTarget"] = json!(t);
    }
    e
}

async fn stat_entry(client: &AgentClient, path: &str) -> Result<serde_json::Value, RpcError> {
    let s = client.stat(path).await.map_err(fs_err)?;
    Ok(entry(
        path,
        s.kind,
        s.size,
        s.mode,
        s.owner.unwrap_or_else(|| s.uid.to_string()),
        s.group.unwrap_or_else(|| s.gid.to_string()),
        s.mtime,
        s.link_target,
    ))
}

/// Entries under `dir` to `depth` levels (1: its own), breadth first.
async fn list(
    client: &AgentClient,
    dir: &str,
    depth: u32,
    out: &mut Vec<serde_json::Value>,
) -> Result<(), RpcError> {
    let mut level = vec![dir.trim_end_matches('/').to_string()];
    for _ in 0..depth.min(MAX_DEPTH) {
        // A tree shallower than the depth asked for ends here.
        if level.is_empty() {
            break;
        }
        let mut next = Vec::new();
        for d in level {
            let entries = match client.list(if d.is_empty() { "/" } else { &d }).await {
                Ok(e) => e,
                // A directory below the first that went away or may not be read is skipped.
                Err(_) if d != dir.trim_end_matches('/') => continue,
                Err(e) => return Err(fs_err(e)),
            };
            for e in entries {
                let path = format!("{d}/{}", e.name);
                if e.kind == FileKind::Dir {
                    next.push(path.clone());
                }
                out.push(entry(
                    &path,
                    e.kind,
                    e.size,
                    e.mode,
                    e.owner.unwrap_or_else(|| e.uid.to_string()),
                    e.group.unwrap_or_else(|| e.gid.to_string()),
                    e.mtime,
                    e.link_target,
                ));
                if out.len() >= MAX_ENTRIES {
                    return Ok(());
                }
            }
        }
        level = next;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A huge depth over a shallow tree stops where the tree does.
    #[tokio::test]
    async fn a_deep_listing_of_a_shallow_tree_ends() {
        use crate::fake_agent::{self, msg};
        use cove_protocol::{DirEntry, Request};
        let lists = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = lists.clone();
        let client = fake_agent::client(move |req| {
            let Request::List { path } = req else {
                return vec![];
            };
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let entries = if path == "/d" {
                vec![DirEntry {
                    name: "sub".into(),
                    kind: FileKind::Dir,
                    size: 0,
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                    mtime: 0,
                    link_target: None,
                    owner: None,
                    group: None,
                }]
            } else {
                vec![]
            };
            vec![msg(&Reply::Entries { entries })]
        });
        let mut out = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            list(&client, "/d/", u32::MAX, &mut out),
        )
        .await
        .expect("it ends")
        .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0]["path"], "/d/sub");
        assert_eq!(lists.load(std::sync::atomic::Ordering::Relaxed), 2);
    }

    #[test]
    fn permissions_read_like_ls() {
        assert_eq!(permissions(FileKind::File, 0o644), "-rw-r--r--");
        assert_eq!(permissions(FileKind::Dir, 0o755), "drwxr-xr-x");
        assert_eq!(permissions(FileKind::Symlink, 0o777), "lrwxrwxrwx");
    }
}
