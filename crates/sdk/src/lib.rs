//! Rust client of Cove's HTTP API: what the `cove` CLI uses when `COVE_HOST` and `COVE_API_KEY`
//! are set.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cove_sdk::Error> {
//! let cove = cove_sdk::Client::new("http://127.0.0.1:7070", "cove_…")?;
//! let sb = cove.create(&cove_api::CreateSandbox { image: Some("python".into()), ..Default::default() }).await?;
//! let out = cove.exec(&sb.id, &cove_api::Exec { cmd: vec!["python3".into(), "-c".into(), "print(6*7)".into()], ..Default::default() }).await?;
//! assert_eq!(out.stdout, "42\n");
//! cove.delete(&sb.id).await?;
//! # Ok(()) }
//! ```

use futures::{SinkExt as _, StreamExt as _};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest as _};

pub use cove_api as api;

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// coved answered with an error (its message is the whole sentence; the status and the
    /// stable code are in the value).
    #[error("{}", error.message)]
    Api {
        /// The HTTP status.
        status: StatusCode,
        /// Its body.
        error: api::Error,
    },
    /// The request did not complete.
    #[error("cannot reach coved at {url}: {source}")]
    Http {
        /// Where.
        url: String,
        /// Why.
        source: reqwest::Error,
    },
    /// The WebSocket failed.
    #[error("exec stream: {0}")]
    WebSocket(#[from] tungstenite::Error),
    /// coved said something this client does not understand.
    #[error("unexpected answer from coved: {0}")]
    Protocol(String),
}

/// A coved and a key.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    /// coved's Unix socket, when it is reached through one (`base` is then `http://localhost`).
    unix: Option<std::path::PathBuf>,
    key: String,
    /// The WebSocket's TLS settings when a CA of the caller's own is trusted.
    ws_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// An event of a streaming exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecOutput {
    /// The command started.
    Started(u32),
    /// Bytes on stdout.
    Stdout(Vec<u8>),
    /// Bytes on stderr.
    Stderr(Vec<u8>),
    /// It ended: exit code (128 + N for signal N), and whether its timeout killed it.
    Exit(i32, bool),
}

/// A byte stream to coved: TCP or a Unix socket.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + std::fmt::Debug {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + std::fmt::Debug> Io for T {}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<Box<dyn Io>>>;

/// A running command: send stdin and controls, receive output until `Exit`.
#[derive(Debug)]
pub struct ExecStream {
    /// Stdin and controls.
    pub input: ExecInput,
    /// Output and the exit.
    pub output: ExecReader,
}

/// The sending half of an [`ExecStream`].
#[derive(Debug)]
pub struct ExecInput {
    tx: futures::stream::SplitSink<Ws, Message>,
}

/// The receiving half of an [`ExecStream`].
#[derive(Debug)]
pub struct ExecReader {
    rx: futures::stream::SplitStream<Ws>,
    /// The exit (or an error) was read: nothing follows (coved waits for the client to close).
    done: bool,
}

impl Client {
    /// A client of the coved at `base` (`http://host:port`, `https://…`, `host:port`, or
    /// `unix:/path/coved.sock`).
    pub fn new(base: &str, key: &str) -> Result<Self, Error> {
        Self::with_ca(base, key, None)
    }

    /// Likewise, also trusting the CA certificate `ca_pem` (for a coved with a certificate of
    /// its own).
    pub fn with_ca(base: &str, key: &str, ca_pem: Option<&[u8]>) -> Result<Self, Error> {
        let unix = base.strip_prefix("unix:").map(std::path::PathBuf::from);
        let base = if unix.is_some() {
            "http://localhost".to_string()
        } else if base.contains("://") {
            base.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", base.trim_end_matches('/'))
        };
        let mut b = reqwest::Client::builder();
        if let Some(p) = &unix {
            b = b.unix_socket(p.clone());
        }
        // Plain HTTP (a Unix socket, a loopback port) needs no roots: loading the system's
        // certificates took ~6 ms of every CLI command.
        if !base.starts_with("https://") {
            b = b.tls_certs_only(std::iter::empty());
        }
        let mut ws_tls = None;
        if let Some(pem) = ca_pem {
            let cert = reqwest::Certificate::from_pem(pem).map_err(|source| Error::Http {
                url: base.clone(),
                source,
            })?;
            b = b.add_root_certificate(cert);
            ws_tls = Some(std::sync::Arc::new(ws_tls_config(pem)?));
        }
        let http = b.build().map_err(|source| Error::Http {
            url: base.clone(),
            source,
        })?;
        Ok(Self {
            http,
            base,
            unix,
            key: key.to_string(),
            ws_tls,
        })
    }

    /// From `COVE_HOST`, `COVE_API_KEY` and (optionally) `COVE_CA_CERT`, a PEM file; `None`
    /// when `COVE_HOST` is not set.
    pub fn from_env() -> Option<Result<Self, Error>> {
        let host = std::env::var("COVE_HOST").ok().filter(|h| !h.is_empty())?;
        let key = std::env::var("COVE_API_KEY").unwrap_or_default();
        let ca = match std::env::var_os("COVE_CA_CERT") {
            Some(p) => match std::fs::read(&p) {
                Ok(pem) => Some(pem),
                Err(e) => {
                    return Some(Err(Error::Protocol(format!(
                        "reading COVE_CA_CERT {}: {e}",
                        std::path::Path::new(&p).display()
                    ))));
                }
            },
            None => None,
        };
        Some(Self::with_ca(&host, &key, ca.as_deref()))
    }

    /// Where coved is: its base URL, or `unix:PATH` for a Unix socket.
    pub fn base(&self) -> String {
        match &self.unix {
            Some(p) => format!("unix:{}", p.display()),
            None => self.base.clone(),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<reqwest::Response, Error> {
        let url = format!("{}{path}", self.base);
        let mut r = self.http.request(method, &url).bearer_auth(&self.key);
        if let Some(b) = body {
            r = r.json(b);
        }
        let res = r.send().await.map_err(|source| Error::Http {
            url: url.clone(),
            source,
        })?;
        check(res).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, Error> {
        let res = self.send(method, path, body).await?;
        let url = res.url().to_string();
        res.json()
            .await
            .map_err(|source| Error::Http { url, source })
    }

    /// Creates a sandbox (running when this returns).
    pub async fn create(&self, req: &api::CreateSandbox) -> Result<api::Sandbox, Error> {
        self.call(Method::POST, "/v1/sandboxes", Some(req)).await
    }

    /// Every sandbox of this key's tenant, oldest first (all pages).
    pub async fn list(&self) -> Result<Vec<api::Sandbox>, Error> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/sandboxes?limit=1000&cursor={c}"),
                None => "/v1/sandboxes?limit=1000".into(),
            };
            let page: api::SandboxList = self.call(Method::GET, &path, None::<&()>).await?;
            out.extend(page.items);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(out),
            }
        }
    }

    /// One sandbox.
    pub async fn get(&self, id: &str) -> Result<api::Sandbox, Error> {
        let id = &segment(id);
        self.call(Method::GET, &format!("/v1/sandboxes/{id}"), None::<&()>)
            .await
    }

    /// Removes a sandbox, stopping it first if it runs.
    pub async fn delete(&self, id: &str) -> Result<(), Error> {
        self.remove(id, true).await
    }

    /// Removes a sandbox; without `force`, one that still runs is refused (`409`).
    pub async fn remove(&self, id: &str, force: bool) -> Result<(), Error> {
        let id = &segment(id);
        self.send(
            Method::DELETE,
            &format!("/v1/sandboxes/{id}?force={force}"),
            None::<&()>,
        )
        .await
        .map(drop)
    }

    /// `pause`, `resume` or `hibernate`.
    pub async fn lifecycle(&self, id: &str, op: &str) -> Result<api::Sandbox, Error> {
        let id = &segment(id);
        self.call(
            Method::POST,
            &format!("/v1/sandboxes/{id}/{op}"),
            None::<&()>,
        )
        .await
    }

    /// Snapshots a sandbox (it keeps running).
    pub async fn snapshot(&self, id: &str, name: Option<&str>) -> Result<api::Snapshot, Error> {
        let id = &segment(id);
        let req = api::TakeSnapshot {
            name: name.map(str::to_string),
        };
        self.call(
            Method::POST,
            &format!("/v1/sandboxes/{id}/snapshot"),
            Some(&req),
        )
        .await
    }

    /// A sandbox's traffic token (send it as `X-Cove-Traffic-Token` to reach its ports).
    pub async fn traffic_token(&self, id: &str) -> Result<String, Error> {
        let id = &segment(id);
        let t: api::TrafficToken = self
            .call(
                Method::GET,
                &format!("/v1/sandboxes/{id}/traffic-token"),
                None::<&()>,
            )
            .await?;
        Ok(t.token)
    }

    /// A signed URL to a port of a sandbox.
    pub async fn sign_url(&self, id: &str, req: &api::SignUrl) -> Result<api::PortUrl, Error> {
        let id = &segment(id);
        self.call(Method::POST, &format!("/v1/sandboxes/{id}/urls"), Some(req))
            .await
    }

    /// Replaces a sandbox's network policy.
    pub async fn set_network(
        &self,
        id: &str,
        policy: &api::NetworkPolicy,
    ) -> Result<api::Sandbox, Error> {
        let id = &segment(id);
        self.call(
            Method::PUT,
            &format!("/v1/sandboxes/{id}/network"),
            Some(policy),
        )
        .await
    }

    /// Forks a running sandbox into `count` new ones.
    pub async fn fork(&self, id: &str, count: u32) -> Result<Vec<api::Sandbox>, Error> {
        let id = &segment(id);
        let l: api::List<api::Sandbox> = self
            .call(
                Method::POST,
                &format!("/v1/sandboxes/{id}/fork"),
                Some(&api::Fork { count: Some(count) }),
            )
            .await?;
        Ok(l.items)
    }

    /// Runs a command to its end.
    pub async fn exec(&self, id: &str, req: &api::Exec) -> Result<api::ExecResult, Error> {
        let id = &segment(id);
        self.call(Method::POST, &format!("/v1/sandboxes/{id}/exec"), Some(req))
            .await
    }

    /// Starts a command in the background (it runs until it exits; see [`Client::attach`]).
    pub async fn start_command(
        &self,
        id: &str,
        start: &api::ExecStart,
    ) -> Result<api::Command, Error> {
        let id = &segment(id);
        self.call(
            Method::POST,
            &format!("/v1/sandboxes/{id}/commands"),
            Some(start),
        )
        .await
    }

    /// The sandbox's running commands.
    pub async fn commands(&self, id: &str) -> Result<Vec<api::Command>, Error> {
        let id = &segment(id);
        let l: api::List<api::Command> = self
            .call(
                Method::GET,
                &format!("/v1/sandboxes/{id}/commands"),
                None::<&()>,
            )
            .await?;
        Ok(l.items)
    }

    /// Follows a running command (by pid or tag) from now on; dropping the stream leaves it
    /// running.
    pub async fn attach(&self, id: &str, command: &str) -> Result<ExecStream, Error> {
        let (id, command) = (&segment(id), &segment(command));
        let ws = self
            .websocket(&format!("/v1/sandboxes/{id}/commands/{command}/ws"))
            .await?;
        let (tx, rx) = ws.split();
        Ok(ExecStream {
            input: ExecInput { tx },
            output: ExecReader { rx, done: false },
        })
    }

    /// Writes to a running command's stdin; `eof` closes it after.
    pub async fn command_stdin(
        &self,
        id: &str,
        command: &str,
        bytes: Vec<u8>,
        eof: bool,
    ) -> Result<(), Error> {
        let (id, command) = (&segment(id), &segment(command));
        let url = format!(
            "{}/v1/sandboxes/{id}/commands/{command}/stdin?eof={eof}",
            self.base
        );
        let res = self
            .http
            .post(&url)
            .bearer_auth(&self.key)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(bytes)
            .send()
            .await
            .map_err(|source| Error::Http { url, source })?;
        check(res).await.map(drop)
    }

    /// Sends a signal to a running command's process group.
    pub async fn signal_command(&self, id: &str, command: &str, signal: i32) -> Result<(), Error> {
        let (id, command) = (&segment(id), &segment(command));
        self.send(
            Method::POST,
            &format!("/v1/sandboxes/{id}/commands/{command}/signal"),
            Some(&api::Kill {
                signal: Some(signal),
            }),
        )
        .await
        .map(drop)
    }

    /// The guest's console log.
    pub async fn logs(&self, id: &str) -> Result<Vec<u8>, Error> {
        let id = &segment(id);
        let res = self
            .send(
                Method::GET,
                &format!("/v1/sandboxes/{id}/logs"),
                None::<&()>,
            )
            .await?;
        let url = res.url().to_string();
        Ok(res
            .bytes()
            .await
            .map_err(|source| Error::Http { url, source })?
            .to_vec())
    }

    /// The tenant's snapshots.
    pub async fn snapshots(&self) -> Result<Vec<api::Snapshot>, Error> {
        let l: api::List<api::Snapshot> =
            self.call(Method::GET, "/v1/snapshots", None::<&()>).await?;
        Ok(l.items)
    }

    /// Deletes a snapshot.
    pub async fn delete_snapshot(&self, id: &str) -> Result<(), Error> {
        let id = &segment(id);
        self.send(Method::DELETE, &format!("/v1/snapshots/{id}"), None::<&()>)
            .await
            .map(drop)
    }

    /// Installed images.
    pub async fn images(&self) -> Result<Vec<api::Image>, Error> {
        let l: api::List<api::Image> = self.call(Method::GET, "/v1/images", None::<&()>).await?;
        Ok(l.items)
    }

    /// One image in full, by name, reference, digest or unique digest prefix.
    pub async fn image(&self, key: &str) -> Result<api::ImageDetail, Error> {
        self.call(
            Method::GET,
            &format!("/v1/images/{}", segment(key)),
            None::<&()>,
        )
        .await
    }

    /// A path's metadata.
    pub async fn stat(&self, id: &str, path: &str) -> Result<api::FileStat, Error> {
        let id = &segment(id);
        self.call(
            Method::GET,
            &format!("/v1/sandboxes/{id}/files/stat?path={}", query_escape(path)),
            None::<&()>,
        )
        .await
    }

    /// A directory's entries.
    pub async fn list_dir(&self, id: &str, path: &str) -> Result<Vec<api::DirEntry>, Error> {
        let id = &segment(id);
        let l: api::List<api::DirEntry> = self
            .call(
                Method::GET,
                &format!("/v1/sandboxes/{id}/files/list?path={}", query_escape(path)),
                None::<&()>,
            )
            .await?;
        Ok(l.items)
    }

    /// Creates a directory.
    pub async fn mkdir(&self, id: &str, path: &str, parents: bool) -> Result<(), Error> {
        let id = &segment(id);
        let body = api::Mkdir {
            path: path.into(),
            parents,
        };
        self.send(
            Method::POST,
            &format!("/v1/sandboxes/{id}/files/mkdir"),
            Some(&body),
        )
        .await
        .map(drop)
    }

    /// Removes a path (`recursive` for a directory with content).
    pub async fn remove_path(&self, id: &str, path: &str, recursive: bool) -> Result<(), Error> {
        let id = &segment(id);
        self.send(
            Method::DELETE,
            &format!(
                "/v1/sandboxes/{id}/files?path={}&recursive={recursive}",
                query_escape(path)
            ),
            None::<&()>,
        )
        .await
        .map(drop)
    }

    /// Renames a path within the sandbox.
    pub async fn rename(&self, id: &str, from: &str, to: &str) -> Result<(), Error> {
        let id = &segment(id);
        let body = api::Rename {
            from: from.into(),
            to: to.into(),
        };
        self.send(
            Method::POST,
            &format!("/v1/sandboxes/{id}/files/rename"),
            Some(&body),
        )
        .await
        .map(drop)
    }

    /// Starts an image pull; follow it with [`Client::pull_progress`].
    pub async fn pull(&self, req: &api::Pull) -> Result<api::PullStarted, Error> {
        self.call(Method::POST, "/v1/images/pull", Some(req)).await
    }

    /// A pull's progress, one JSON object per line, to its `complete` or `failed` line;
    /// `each` sees every line as it arrives. Returns the last one.
    pub async fn pull_progress(
        &self,
        id: &str,
        mut each: impl FnMut(&serde_json::Value),
    ) -> Result<serde_json::Value, Error> {
        let mut res = self
            .send(Method::GET, &format!("/v1/images/pulls/{id}"), None::<&()>)
            .await?;
        let url = res.url().to_string();
        let mut buf = Vec::new();
        let mut last = serde_json::Value::Null;
        while let Some(chunk) = res.chunk().await.map_err(|source| Error::Http {
            url: url.clone(),
            source,
        })? {
            buf.extend_from_slice(&chunk);
            while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                let v: serde_json::Value = serde_json::from_slice(&line)
                    .map_err(|e| Error::Protocol(format!("pull progress: {e}")))?;
                each(&v);
                last = v;
            }
        }
        Ok(last)
    }

    /// The event log (every state a sandbox entered, and removals, with who and why) after
    /// `after`, of one sandbox or all the caller sees; with `follow`, `each` keeps getting new
    /// events until the connection ends.
    pub async fn events(
        &self,
        after: i64,
        sandbox: Option<&str>,
        follow: bool,
        mut each: impl FnMut(api::Event),
    ) -> Result<(), Error> {
        let mut path = format!("/v1/events?after={after}&follow={follow}");
        if let Some(s) = sandbox {
            path.push_str(&format!("&sandbox={}", query_escape(s)));
        }
        let res = self.send(Method::GET, &path, None::<&()>).await?;
        json_lines(res, "event log", &mut |e| {
            each(e);
            true
        })
        .await
    }

    /// Watches a directory of a sandbox: `each` gets every change as it happens, until the
    /// directory goes or `each` returns false.
    pub async fn watch(
        &self,
        id: &str,
        path: &str,
        recursive: bool,
        mut each: impl FnMut(api::FsEvent) -> bool,
    ) -> Result<(), Error> {
        let id = &segment(id);
        let path = format!(
            "/v1/sandboxes/{id}/files/watch?path={}&recursive={recursive}",
            query_escape(path)
        );
        let res = self.send(Method::GET, &path, None::<&()>).await?;
        json_lines(res, "watch", &mut each).await
    }

    /// Boots `req.image` once and keeps its snapshot as the template of that image and shape.
    pub async fn create_template(&self, req: &api::CreateTemplate) -> Result<api::Snapshot, Error> {
        self.call(Method::POST, "/v1/templates", Some(req)).await
    }

    /// Imports a `docker save` archive or an OCI layout tar read from `from`, streamed.
    pub async fn import_image<R: tokio::io::AsyncRead + Unpin>(
        &self,
        from: &mut R,
        name: Option<&str>,
        pick: Option<&str>,
    ) -> Result<api::Image, Error> {
        let mut url = format!("{}/v1/images/import?", self.base);
        if let Some(n) = name {
            url.push_str(&format!("name={}&", query_escape(n)));
        }
        if let Some(p) = pick {
            url.push_str(&format!("ref={}&", query_escape(p)));
        }
        let url = url.trim_end_matches(['&', '?']).to_string();
        self.put_stream(url, "application/x-tar", from, "the archive")
            .await
    }

    /// PUTs what `from` yields to `url` as a streamed body of `content_type` and parses the JSON
    /// answer. The body reads a pipe that this task fills from `from`, so `from` may be
    /// borrowed; `what` names it in errors.
    async fn put_stream<R: tokio::io::AsyncRead + Unpin, T: serde::de::DeserializeOwned>(
        &self,
        url: String,
        content_type: &str,
        from: &mut R,
        what: &str,
    ) -> Result<T, Error> {
        let (mut w, r) = tokio::io::duplex(256 << 10);
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(r));
        let send = self
            .http
            .put(&url)
            .bearer_auth(&self.key)
            .header("content-type", content_type)
            .body(body)
            .send();
        let fill = async {
            let r = tokio::io::copy(from, &mut w).await;
            drop(w);
            r
        };
        let (res, filled) = tokio::join!(send, fill);
        let res = res.map_err(|source| Error::Http {
            url: url.clone(),
            source,
        })?;
        filled.map_err(|e| Error::Protocol(format!("reading {what}: {e}")))?;
        check(res)
            .await?
            .json()
            .await
            .map_err(|source| Error::Http { url, source })
    }

    /// What the host runs.
    pub async fn info(&self) -> Result<api::Info, Error> {
        self.call(Method::GET, "/v1/info", None::<&()>).await
    }

    /// Removes an image name (the image goes with its last name), or an image by digest (an
    /// admin key). Returns the removed image's digest, if the image went.
    pub async fn delete_image(&self, image: &str) -> Result<Option<String>, Error> {
        let r: api::ImageRemoved = self
            .call(
                Method::DELETE,
                &format!("/v1/images/{}", query_escape(image).replace('/', "%2F")),
                None::<&()>,
            )
            .await?;
        Ok(r.removed)
    }

    /// Removes unnamed unused images and unneeded cached layers (an admin key).
    pub async fn prune_images(&self) -> Result<api::Pruned, Error> {
        self.call(Method::POST, "/v1/images/prune", None::<&()>)
            .await
    }

    /// Hashes every snapshot, template and hibernation kept on the host again (the host's
    /// administrator).
    /// `only`: one snapshot or hibernated sandbox (its id).
    pub async fn scrub(&self, only: Option<&str>) -> Result<api::Scrubbed, Error> {
        let path = match only {
            Some(id) => format!("/v1/scrub?only={}", query_escape(id)),
            None => "/v1/scrub".to_string(),
        };
        self.call(Method::POST, &path, None::<&()>).await
    }

    /// Uploads `from` to `path` (replaced atomically, parents created), streamed.
    pub async fn upload<R: tokio::io::AsyncRead + Unpin>(
        &self,
        id: &str,
        path: &str,
        mode: Option<u32>,
        from: &mut R,
    ) -> Result<api::Written, Error> {
        let id = &segment(id);
        let mut url = format!(
            "{}/v1/sandboxes/{id}/files?path={}",
            self.base,
            query_escape(path)
        );
        if let Some(m) = mode {
            url.push_str(&format!("&mode={m:o}"));
        }
        self.put_stream(url, "application/octet-stream", from, "the upload")
            .await
    }

    /// Downloads `path` into `to`, streamed; returns the bytes written.
    pub async fn download<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        id: &str,
        path: &str,
        to: &mut W,
    ) -> Result<u64, Error> {
        let id = &segment(id);
        use tokio::io::AsyncWriteExt as _;
        let mut res = self
            .send(
                Method::GET,
                &format!("/v1/sandboxes/{id}/files?path={}", query_escape(path)),
                None::<&()>,
            )
            .await?;
        let url = res.url().to_string();
        let mut n = 0;
        while let Some(chunk) = res.chunk().await.map_err(|source| Error::Http {
            url: url.clone(),
            source,
        })? {
            to.write_all(&chunk)
                .await
                .map_err(|e| Error::Protocol(format!("writing the download: {e}")))?;
            n += chunk.len() as u64;
        }
        to.flush()
            .await
            .map_err(|e| Error::Protocol(format!("writing the download: {e}")))?;
        Ok(n)
    }

    /// Starts a command and streams it.
    pub async fn exec_stream(&self, id: &str, start: &api::ExecStart) -> Result<ExecStream, Error> {
        let id = &segment(id);
        let mut ws = self
            .websocket(&format!("/v1/sandboxes/{id}/exec/ws"))
            .await?;
        ws.send(Message::Text(
            serde_json::to_string(start).expect("serializes").into(),
        ))
        .await?;
        let (tx, rx) = ws.split();
        Ok(ExecStream {
            input: ExecInput { tx },
            output: ExecReader { rx, done: false },
        })
    }

    /// Opens a TCP connection to `port` of a sandbox and relays it with `io` (a local
    /// connection, say) until either side closes; returns the bytes relayed each way (to the
    /// sandbox, from it).
    pub async fn relay_port<S>(&self, id: &str, port: u16, io: S) -> Result<(u64, u64), Error>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let id = &segment(id);
        let ws = self
            .websocket(&format!("/v1/sandboxes/{id}/tcp/{port}"))
            .await?;
        let (mut tx, mut rx) = ws.split();
        let (mut rd, mut wr) = tokio::io::split(io);
        let up = async {
            let mut n = 0u64;
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => {
                        n += k as u64;
                        if tx
                            .send(Message::Binary(buf[..k].to_vec().into()))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
            let _ = tx.send(Message::Close(None)).await;
            n
        };
        let down = async {
            let mut n = 0u64;
            while let Some(Ok(m)) = rx.next().await {
                match m {
                    Message::Binary(b) => {
                        n += b.len() as u64;
                        if wr.write_all(&b).await.is_err() {
                            break;
                        }
                    }
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            let _ = wr.shutdown().await;
            n
        };
        Ok(tokio::join!(up, down))
    }

    /// A WebSocket to `path` of coved, with the key.
    async fn websocket(&self, path: &str) -> Result<Ws, Error> {
        let url = format!(
            "{}{path}",
            self.base
                .replacen("http://", "ws://", 1)
                .replacen("https://", "wss://", 1)
        );
        let mut req = url.as_str().into_client_request()?;
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", self.key)
                .parse()
                .map_err(|_| Error::Protocol("the API key is not a valid header".into()))?,
        );
        let connector = self
            .ws_tls
            .clone()
            .map(tokio_tungstenite::Connector::Rustls);
        let stream: Box<dyn Io> = match &self.unix {
            Some(p) => Box::new(
                tokio::net::UnixStream::connect(p)
                    .await
                    .map_err(|e| Error::Protocol(format!("connecting to {}: {e}", p.display())))?,
            ),
            None => {
                let uri = req.uri();
                let host = uri.host().unwrap_or("localhost").to_string();
                let port = uri
                    .port_u16()
                    .unwrap_or(if uri.scheme_str() == Some("wss") {
                        443
                    } else {
                        80
                    });
                let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
                    .await
                    .map_err(|e| Error::Protocol(format!("connecting to {host}:{port}: {e}")))?;
                let _ = tcp.set_nodelay(true);
                Box::new(tcp)
            }
        };
        let ws = match tokio_tungstenite::client_async_tls_with_config(req, stream, None, connector)
            .await
        {
            Ok((c, _)) => c,
            // A refusal before the upgrade carries coved's JSON error.
            Err(tungstenite::Error::Http(res)) => {
                let status =
                    StatusCode::from_u16(res.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
                let body = res.body().clone().unwrap_or_default();
                let error = serde_json::from_slice(&body).unwrap_or(api::Error {
                    code: "unknown".into(),
                    message: String::from_utf8_lossy(&body).into_owned(),
                    request_id: None,
                });
                return Err(Error::Api { status, error });
            }
            Err(e) => return Err(e.into()),
        };
        Ok(ws)
    }
}

/// rustls settings trusting the platform's roots and the CA certificates in `pem`.
fn ws_tls_config(pem: &[u8]) -> Result<rustls::ClientConfig, Error> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    for c in CertificateDer::pem_slice_iter(pem) {
        let c = c.map_err(|e| Error::Protocol(format!("the CA certificate: {e}")))?;
        roots
            .add(c)
            .map_err(|e| Error::Protocol(format!("the CA certificate: {e}")))?;
    }
    Ok(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Protocol(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// A success, or coved's JSON error as [`Error::Api`].
async fn check(res: reqwest::Response) -> Result<reqwest::Response, Error> {
    let status = res.status();
    if status.is_success() {
        return Ok(res);
    }
    let text = res.text().await.unwrap_or_default();
    let error = serde_json::from_str(&text).unwrap_or(api::Error {
        code: "unknown".into(),
        message: text,
        request_id: None,
    });
    Err(Error::Api { status, error })
}

/// Percent-encodes one path segment: a sandbox or snapshot named `tenant/name` (as the host's
/// administrator names them) stays one segment.
/// Reads a response of JSON lines, handing each to `each` as it arrives, until the response
/// ends or `each` returns false.
async fn json_lines<T: DeserializeOwned>(
    mut res: reqwest::Response,
    what: &str,
    each: &mut impl FnMut(T) -> bool,
) -> Result<(), Error> {
    let url = res.url().to_string();
    let mut buf = Vec::new();
    while let Some(chunk) = res.chunk().await.map_err(|source| Error::Http {
        url: url.clone(),
        source,
    })? {
        buf.extend_from_slice(&chunk);
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let v = serde_json::from_slice(&line)
                .map_err(|e| Error::Protocol(format!("{what}: {e}")))?;
            if !each(v) {
                return Ok(());
            }
        }
    }
    Ok(())
}

fn segment(s: &str) -> String {
    percent_encode(s, b"-_.~")
}

/// Percent-encodes a query value (paths may hold anything but NUL).
fn query_escape(s: &str) -> String {
    percent_encode(s, b"/-_.~")
}

/// Every byte but ASCII letters, digits and `keep` as `%XX`.
fn percent_encode(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl ExecInput {
    /// Sends stdin bytes.
    pub async fn stdin(&mut self, bytes: &[u8]) -> Result<(), Error> {
        Ok(self.tx.send(Message::Binary(bytes.to_vec().into())).await?)
    }

    /// Sends a control message (end of stdin, resize, signal).
    pub async fn control(&mut self, c: &api::ExecControl) -> Result<(), Error> {
        Ok(self
            .tx
            .send(Message::Text(
                serde_json::to_string(c).expect("serializes").into(),
            ))
            .await?)
    }
}

impl ExecReader {
    /// The next output; `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<Result<ExecOutput, Error>> {
        if self.done {
            return None;
        }
        loop {
            let msg = match self.rx.next().await? {
                Ok(m) => m,
                Err(e) => return Some(Err(e.into())),
            };
            match msg {
                Message::Binary(b) => {
                    let (tag, data) = b.split_first()?;
                    return Some(Ok(match tag {
                        2 => ExecOutput::Stderr(data.to_vec()),
                        _ => ExecOutput::Stdout(data.to_vec()),
                    }));
                }
                Message::Text(t) => {
                    let ev: api::ExecEvent = match serde_json::from_str(&t) {
                        Ok(ev) => ev,
                        Err(e) => return Some(Err(Error::Protocol(e.to_string()))),
                    };
                    return Some(match ev {
                        api::ExecEvent::Started { pid } => Ok(ExecOutput::Started(pid)),
                        api::ExecEvent::Exit {
                            exit_code,
                            timed_out,
                        } => {
                            self.done = true;
                            Ok(ExecOutput::Exit(exit_code, timed_out))
                        }
                        api::ExecEvent::Error(error) => Err(Error::Api {
                            status: StatusCode::UNPROCESSABLE_ENTITY,
                            error,
                        }),
                    });
                }
                Message::Close(_) => return None,
                _ => {}
            }
        }
    }
}
