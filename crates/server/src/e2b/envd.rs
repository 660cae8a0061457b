//! envd, E2B's in-sandbox API, served by coved for every sandbox: the request names the sandbox
//! (`E2b-Sandbox-Id`, or host `49983-ID.DOMAIN`) and carries its access token
//! (`X-Access-Token`); the token is checked before anything is looked up. Then `GET /health`,
//! `GET`/`POST /files`, and the Connect services `process.Process` and `filesystem.Filesystem`,
//! each carried to the guest's agent like `/v1`'s exec and files.

use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use cove_host::{AgentClient, ClientError, SandboxRecord};
use cove_protocol::ErrorCode;
use futures::TryStreamExt as _;
use tokio::io::AsyncReadExt as _;

use super::connect::{Code, RpcError};
use crate::app::App;
use crate::error::ApiError;
use crate::routes::files::{DownloadError, download_body, file_err};

/// The header carrying the sandbox's access token.
const TOKEN_HEADER: &str = "x-access-token";
/// The largest RPC request body read (files go over `/files`).
const RPC_BODY_LIMIT: usize = 8 << 20;

/// One envd request of sandbox `id`.
pub(crate) async fn serve(app: App, id: String, req: Request) -> Response {
    let token = req
        .headers()
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok());
    if !token.is_some_and(|t| app.traffic.check_envd(&id, t)) {
        let body = serde_json::json!({
            "code": 401,
            "message": "a wrong or missing access token (X-Access-Token) for this sandbox",
        });
        return (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    }
    // Only the whole id (a token is a whole id's); only a running sandbox answers.
    let rec = match app.host.get(&id) {
        Ok(r) if r.id == id && r.state.takes_sessions() => r,
        _ => return super::not_running(&id),
    };
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let who = cove_host::Actor::Traffic;
    cove_host::ACTOR
        .scope(who, async move {
            match (method, path.as_str()) {
                (Method::GET, "/health") => StatusCode::NO_CONTENT.into_response(),
                (Method::GET, "/files") => files_get(&app, &rec, req).await,
                (Method::POST, "/files") => files_post(&app, &rec, req).await,
                (Method::POST, p) if p.starts_with("/process.Process/") => {
                    let m = p["/process.Process/".len()..].to_string();
                    rpc(req, |h, b| super::process::call(app, rec, m, h, b)).await
                }
                (Method::POST, p) if p.starts_with("/filesystem.Filesystem/") => {
                    let m = p["/filesystem.Filesystem/".len()..].to_string();
                    rpc(req, |h, b| super::filesystem::call(app, rec, m, h, b)).await
                }
                _ => RpcError::new(Code::NotFound, format!("no such envd route: {path}"))
                    .into_response(),
            }
        })
        .await
}

/// Reads an RPC's body and runs it.
async fn rpc<F, Fut>(req: Request, f: F) -> Response
where
    F: FnOnce(HeaderMap, Vec<u8>) -> Fut,
    Fut: Future<Output = Response>,
{
    let (parts, body) = req.into_parts();
    match axum::body::to_bytes(body, RPC_BODY_LIMIT).await {
        Ok(b) => f(parts.headers, b.to_vec()).await,
        Err(e) => RpcError::new(
            Code::ResourceExhausted,
            format!("the request body could not be read (at most {RPC_BODY_LIMIT} bytes): {e}"),
        )
        .into_response(),
    }
}

/// The user a request runs as: `Authorization: Basic base64(USER:)` (RPCs) or `username=`
/// (`/files`); none: the image's default user.
pub(crate) fn user(headers: &HeaderMap) -> Result<Option<String>, RpcError> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || {
        RpcError::new(
            Code::Unauthenticated,
            "Authorization: give Basic base64(USER:)",
        )
    };
    let b64 = v
        .to_str()
        .ok()
        .and_then(|s| s.strip_prefix("Basic "))
        .ok_or_else(bad)?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let name = text.split(':').next().unwrap_or("");
    Ok((!name.is_empty()).then(|| name.to_string()))
}

/// The user a request runs as, by name, with the image's default when it names none.
pub(crate) fn effective_user(app: &App, rec: &SandboxRecord, user: Option<String>) -> Who {
    Who {
        name: user
            .or_else(|| app.host.image_of(rec).ok().and_then(|i| i.config.user))
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "root".into()),
        home: tokio::sync::OnceCell::new(),
    }
}

/// The most of a guest's `/etc/passwd` the host reads.
const PASSWD_MAX: usize = 1 << 20;
/// How long the host waits for it.
const PASSWD_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The user a request runs as (`name`, a uid, or `uid:gid`), and where its relative paths
/// start: its home in the guest's `/etc/passwd`, read when a path first needs it.
#[derive(Debug)]
pub(crate) struct Who {
    pub(crate) name: String,
    home: tokio::sync::OnceCell<String>,
}

impl Who {
    /// A path as envd reads it: absolute, or relative to the user's home (`~`, `~/…` or a
    /// plain relative path). Another user's home (`~name/…`) is refused, as envd refuses it.
    pub(crate) async fn resolve(
        &self,
        client: &AgentClient,
        path: &str,
    ) -> Result<String, RpcError> {
        if let Some(p) = Self::absolute(path)? {
            return Ok(p);
        }
        let rest = match path {
            "" | "~" => "",
            p if p.starts_with("~/") => &p[2..],
            p if p.starts_with('~') => {
                return Err(RpcError::new(
                    Code::InvalidArgument,
                    format!("{p}: another user's home cannot be named; give an absolute path"),
                ));
            }
            p => p,
        };
        let home = match self.home.get() {
            Some(h) => h.clone(),
            None => {
                let h = self.home_in(client).await?;
                self.home.get_or_init(|| async { h }).await.clone()
            }
        };
        let home = home.trim_end_matches('/');
        Ok(if rest.is_empty() {
            if home.is_empty() {
                "/".into()
            } else {
                home.to_string()
            }
        } else {
            format!("{home}/{rest}")
        })
    }

    /// `path` when it is absolute (no home needed), `None` when it is relative.
    pub(crate) fn absolute(path: &str) -> Result<Option<String>, RpcError> {
        if path.contains('\0') {
            return Err(RpcError::new(Code::InvalidArgument, "a path has no NUL"));
        }
        Ok(path.starts_with('/').then(|| path.to_string()))
    }

    /// The user's home as the guest's `/etc/passwd` has it; a user the file does not name
    /// (or one with a relative home) gets envd's defaults, `/root` or `/home/NAME`. A file
    /// that cannot be read within [`PASSWD_WAIT`] (a guest's FIFO), or is larger than
    /// [`PASSWD_MAX`], is an error: a guessed home could send a write or a removal elsewhere.
    async fn home_in(&self, client: &AgentClient) -> Result<String, RpcError> {
        let user = self.name.split(':').next().unwrap_or_default();
        let mut text = Capped(Vec::new());
        let unreadable = |why: String| {
            RpcError::new(
                Code::Unavailable,
                format!("the sandbox's /etc/passwd, for {user}'s home: {why}"),
            )
        };
        match tokio::time::timeout(PASSWD_WAIT, client.read_file("/etc/passwd", &mut text)).await {
            Ok(Ok(_)) => {}
            // No file names nobody: the defaults.
            Ok(Err(ClientError::Agent(e))) if e.code == ErrorCode::NotFound => {}
            Ok(Err(e)) => return Err(unreadable(e.to_string())),
            Err(_) => return Err(unreadable(format!("not read within {PASSWD_WAIT:?}"))),
        }
        let entries = cove_protocol::passwd::parse(&String::from_utf8_lossy(&text.0));
        Ok(cove_protocol::passwd::find(&entries, user)
            .map(|e| e.home.clone())
            .filter(|h| h.starts_with('/'))
            .unwrap_or_else(|| match user {
                "root" | "0" => "/root".into(),
                _ => format!("/home/{user}"),
            }))
    }
}

/// A buffer that refuses to grow past [`PASSWD_MAX`] (a guest's file is the guest's to make
/// as large as it likes).
struct Capped(Vec<u8>);

impl tokio::io::AsyncWrite for Capped {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.0.len() + buf.len() > PASSWD_MAX {
            return std::task::Poll::Ready(Err(std::io::Error::other("/etc/passwd is too large")));
        }
        self.0.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// `/files`' query.
#[derive(Debug, Default, serde::Deserialize)]
struct FilesQuery {
    path: Option<String>,
    username: Option<String>,
}

fn files_query(req: &Request) -> Result<FilesQuery, ApiError> {
    let q = req.uri().query().unwrap_or("");
    serde_urlencoded_lite(q)
}

/// A small form decoder for `path` and `username` (unknown keys, such as a signature, are
/// left alone).
fn serde_urlencoded_lite(q: &str) -> Result<FilesQuery, ApiError> {
    let mut out = FilesQuery::default();
    for kv in q.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let v = percent_decode(&v.replace('+', " "))?;
        match k {
            "path" => out.path = Some(v),
            "username" | "user" => out.username = Some(v).filter(|u| !u.is_empty()),
            _ => {}
        }
    }
    Ok(out)
}

/// A percent-encoded query part (`%2F` to `/`), which must decode to UTF-8.
pub(crate) fn percent_decode(s: &str) -> Result<String, ApiError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            // Two hex digits exactly (`from_str_radix` alone would take a sign: `%+f`).
            let v = b
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| ApiError::bad_request("a bad percent escape in the query"))?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ApiError::bad_request("the query is not UTF-8"))
}

/// envd's error body for `/files`: `{"code": status, "message"}`.
fn files_error(e: ApiError) -> Response {
    let status = e.status;
    let body =
        serde_json::json!({"code": status.as_u16(), "message": crate::error::redact(&e.message)});
    (status, axum::Json(body)).into_response()
}

/// `GET /files?path=`: the file, streamed.
async fn files_get(app: &App, rec: &SandboxRecord, req: Request) -> Response {
    let run = async move {
        let q = files_query(&req)?;
        let user = effective_user(app, rec, q.username);
        let path = q
            .path
            .ok_or_else(|| ApiError::bad_request("path: give the file's path"))?;
        let client = app.host.connect(&rec.id).await?;
        let path = user
            .resolve(&client, &path)
            .await
            .map_err(|e| ApiError::bad_request(e.message))?;
        // A missing file is a 404 and a directory a 400, as envd has them (not a broken stream).
        let body = download_body(client, path).await.map_err(|e| match e {
            DownloadError::Stat(e) => file_err(e),
            e @ DownloadError::Directory(_) => ApiError::bad_request(e.to_string()),
        })?;
        Ok::<_, ApiError>(
            ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response(),
        )
    };
    run.await.unwrap_or_else(files_error)
}

/// `POST /files`: a multipart body (a part named `file` per file, its file name the path, or
/// `?path=` for one) or an octet-stream body for `?path=` (gzip when `Content-Encoding` says
/// so). Answers the files written: `[{"name", "type": "file", "path"}]`.
async fn files_post(app: &App, rec: &SandboxRecord, req: Request) -> Response {
    let run = async move {
        let q = files_query(&req)?;
        let user = effective_user(app, rec, q.username.clone());
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let gzip = req
            .headers()
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
        let client = app.host.connect(&rec.id).await?;
        let mut written = Vec::new();
        if ct.starts_with("multipart/form-data") {
            let boundary = multer::parse_boundary(&ct)
                .map_err(|e| ApiError::bad_request(format!("multipart: {e}")))?;
            let mut mp = multer::Multipart::new(req.into_body().into_data_stream(), boundary);
            let mut one = q.path.clone();
            while let Some(field) = mp
                .next_field()
                .await
                .map_err(|e| ApiError::bad_request(format!("multipart: {e}")))?
            {
                let name = one
                    .take()
                    .or_else(|| field.file_name().map(str::to_string))
                    .ok_or_else(|| {
                        ApiError::bad_request("a file part needs a file name (its path) or ?path=")
                    })?;
                let path = user
                    .resolve(&client, &name)
                    .await
                    .map_err(|e| ApiError::bad_request(e.message))?;
                let stream = field.map_err(std::io::Error::other);
                let mut reader = tokio_util::io::StreamReader::new(stream);
                client
                    .write_file_as(&path, None, Some(&user.name), &mut reader)
                    .await
                    .map_err(file_err)?;
                written.push(entry(&path));
            }
        } else {
            let path = q
                .path
                .ok_or_else(|| ApiError::bad_request("path: give the file's path"))?;
            let path = user
                .resolve(&client, &path)
                .await
                .map_err(|e| ApiError::bad_request(e.message))?;
            let stream = req
                .into_body()
                .into_data_stream()
                .map_err(std::io::Error::other);
            let reader = tokio_util::io::StreamReader::new(stream);
            let mut reader: Box<dyn tokio::io::AsyncRead + Unpin + Send> = if gzip {
                Box::new(async_compression::tokio::bufread::GzipDecoder::new(reader))
            } else {
                Box::new(reader)
            };
            client
                .write_file_as(&path, None, Some(&user.name), &mut reader)
                .await
                .map_err(file_err)?;
            // A gzip stream with trailing garbage is refused by the decoder above; nothing
            // more to read.
            let _ = reader.read(&mut [0u8; 1]).await;
            written.push(entry(&path));
        }
        Ok::<_, ApiError>(axum::Json(written).into_response())
    };
    run.await.unwrap_or_else(files_error)
}

/// A written file as `/files` reports it.
fn entry(path: &str) -> serde_json::Value {
    let name = path.rsplit('/').next().unwrap_or(path);
    serde_json::json!({"name": name, "type": "file", "path": path})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_escapes_are_decoded_and_bad_ones_refused() {
        assert_eq!(percent_decode("a%2Fb%20c").unwrap(), "a/b c");
        assert_eq!(percent_decode("%C3%A9").unwrap(), "é");
        for bad in ["%", "%2", "%zz", "%+f", "%-1", "%FF"] {
            assert!(percent_decode(bad).is_err(), "{bad}");
        }
    }

    /// A client whose guest's `/etc/passwd` is `passwd` (none: the file is missing).
    fn guest_with_passwd(passwd: Option<Vec<u8>>) -> AgentClient {
        use crate::fake_agent::{self, msg};
        use cove_protocol::{FrameBody, Reply, Request, Stream};
        fake_agent::client(move |req| match (&req, &passwd) {
            (Request::ReadFile { path }, Some(text)) if path == "/etc/passwd" => text
                .chunks(64 << 10)
                .map(|c| FrameBody::Data(Stream::Stdout, c.to_vec()))
                .chain([msg(&Reply::Done {
                    bytes: text.len() as u64,
                })])
                .collect(),
            _ => vec![msg(&Reply::Error(cove_protocol::AgentError {
                code: ErrorCode::NotFound,
                message: "no such file".into(),
                path: None,
            }))],
        })
    }

    fn who(name: &str) -> Who {
        Who {
            name: name.into(),
            home: tokio::sync::OnceCell::new(),
        }
    }

    #[tokio::test]
    async fn relative_paths_start_at_the_home_the_guests_passwd_gives() {
        let c = guest_with_passwd(Some(
            b"root:x:0:0:root:/root:/bin/sh\nsvc:x:999:999::/srv/svc/:/bin/false\n\
              top:x:5:5::/:/bin/sh\nrel:x:6:6::home/rel:/bin/sh\n"
                .to_vec(),
        ));
        let svc = who("svc");
        assert_eq!(
            svc.resolve(&c, "note.txt").await.unwrap(),
            "/srv/svc/note.txt"
        );
        assert_eq!(svc.resolve(&c, "~").await.unwrap(), "/srv/svc");
        assert_eq!(svc.resolve(&c, "~/a/b").await.unwrap(), "/srv/svc/a/b");
        assert_eq!(svc.resolve(&c, "/etc/x").await.unwrap(), "/etc/x");
        assert_eq!(svc.resolve(&c, "").await.unwrap(), "/srv/svc");
        // By uid, and `uid:gid`.
        assert_eq!(who("999:5").resolve(&c, "x").await.unwrap(), "/srv/svc/x");
        assert_eq!(who("top").resolve(&c, "x").await.unwrap(), "/x");
        assert_eq!(who("top").resolve(&c, "~").await.unwrap(), "/");
        // A relative home, or a user the file does not name: envd's defaults.
        assert_eq!(who("rel").resolve(&c, "x").await.unwrap(), "/home/rel/x");
        assert_eq!(
            who("nobody").resolve(&c, "x").await.unwrap(),
            "/home/nobody/x"
        );
        // Another user's home is refused, as envd refuses it; so is a NUL.
        let e = svc.resolve(&c, "~root/x").await.unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument, "{}", e.message);
        assert!(svc.resolve(&c, "a\0b").await.is_err());
        // No /etc/passwd at all: the defaults.
        let none = guest_with_passwd(None);
        assert_eq!(who("root").resolve(&none, "x").await.unwrap(), "/root/x");
        assert_eq!(
            who("user").resolve(&none, "x").await.unwrap(),
            "/home/user/x"
        );
    }

    #[tokio::test]
    async fn a_passwd_too_large_to_read_is_an_error_not_a_guessed_home() {
        let c = guest_with_passwd(Some(vec![b'x'; PASSWD_MAX + 1]));
        let e = who("user").resolve(&c, "x").await.unwrap_err();
        assert_eq!(e.code, Code::Unavailable, "{}", e.message);
        assert!(e.message.contains("/etc/passwd"), "{}", e.message);
        // An absolute path needs no home.
        assert_eq!(who("user").resolve(&c, "/x").await.unwrap(), "/x");
    }

    #[test]
    fn the_files_query_names_path_and_user() {
        let q = serde_urlencoded_lite("path=%2Ftmp%2Fa+b&username=u&signature=x").unwrap();
        assert_eq!(q.path.as_deref(), Some("/tmp/a b"));
        assert_eq!(q.username.as_deref(), Some("u"));
    }
}
