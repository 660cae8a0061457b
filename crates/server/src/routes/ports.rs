//! A sandbox's ports through coved: `http(s)://PORT-ID.DOMAIN/…` (routed on the Host header)
//! and `/v1/sandboxes/ID/ports/PORT/…`. Each request reaches the guest over a port relay of its
//! agent (`AgentClient::connect_port`), so a server bound to the guest's loopback is reachable,
//! and so is a sandbox without a network. HTTP/1.1 to the guest; the client may speak HTTP/1.1
//! or HTTP/2; bodies stream both ways; an upgrade (WebSocket) becomes a byte pipe.
//!
//! Access: the sandbox's traffic token, a signed URL, an API key that sees the sandbox (on the
//! `/v1` form), or none for a sandbox with public ports. A request that is refused never wakes
//! the sandbox; one that is let through wakes a sandbox its idle policy put away.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, Uri, Version, header};
use axum::response::{IntoResponse, Response};
use cove_api as api;
use cove_api::limits;
use cove_host::{ClientError, HostError};
use hyper_util::rt::TokioIo;

use crate::app::{App, is_id};
use crate::auth::Auth;
use crate::error::{ApiError, Json};
use crate::keys::{Principal, Scope};
use crate::traffic::{self, TOKEN_HEADER};

/// `PORT-ID.DOMAIN[:LISTEN]` → port and sandbox id.
pub(crate) fn parse_host(host: &str, domain: &str) -> Option<(u16, String)> {
    let name = match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let sub = name
        .to_ascii_lowercase()
        .strip_suffix(&domain.to_ascii_lowercase())?
        .strip_suffix('.')?
        .to_string();
    let (port, id) = sub.split_once('-')?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    is_id(id).then(|| (port, id.to_string()))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Middleware: a request whose Host names a sandbox's port goes there; anything else on.
pub(crate) async fn by_host(
    State(app): State<App>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_string()));
    match host.and_then(|h| parse_host(&h, &app.traffic.domain)) {
        // E2B's envd address of a sandbox is coved's, not a port of the guest.
        Some((crate::e2b::ENVD_PORT, id)) => crate::e2b::envd(app, id, req).await,
        Some((port, id)) => serve(app, &id, port, Form::Host, req)
            .await
            .unwrap_or_else(IntoResponse::into_response),
        None => next.run(req).await,
    }
}

/// Any request under `/v1/sandboxes/{id}/ports/{port}/`.
pub(crate) async fn by_path(
    State(app): State<App>,
    Path(params): Path<Vec<(String, String)>>,
    req: Request,
) -> Response {
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let (Some(id), Some(port)) = (get("id"), get("port")) else {
        return ApiError::bad_request("a sandbox id and a port").into_response();
    };
    let Some(port) = port.parse::<u16>().ok().filter(|p| *p > 0) else {
        return ApiError::bad_request(format!("invalid port {port:?}: 1 to 65535")).into_response();
    };
    // The path under the port as it was sent (still percent-encoded): past
    // `/v1/sandboxes/ID/ports/PORT`.
    let raw = req.uri().path();
    let rest = raw
        .match_indices('/')
        .nth(5)
        .map_or("/", |(i, _)| &raw[i..])
        .to_string();
    let caller = crate::auth::identified(req.extensions());
    serve(app, &id, port, Form::Path { caller, rest }, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// How a request named the port.
enum Form {
    /// `PORT-ID.DOMAIN`: the path is the guest's.
    Host,
    /// `/v1/sandboxes/ID/ports/PORT/REST`: the caller's key (if it sent one) may let it in.
    Path {
        caller: Option<Principal>,
        rest: String,
    },
}

/// Lets the request through to `port` of sandbox `id`, or says why not.
async fn serve(
    app: App,
    id: &str,
    port: u16,
    form: Form,
    mut req: Request,
) -> Result<Response, ApiError> {
    // A key that sees the sandbox lets its owner in on the `/v1` form.
    let by_key = match &form {
        Form::Path {
            caller: Some(p), ..
        } if p.allows(Scope::Exec) => app.owned(p, id).ok(),
        _ => None,
    };
    let keyed = by_key.is_some();
    let rec = match by_key {
        Some(r) => r,
        None => {
            let token = req
                .headers()
                .get(TOKEN_HEADER)
                .and_then(|v| v.to_str().ok());
            let checked = if is_id(id) {
                app.traffic
                    .check(id, port, token, req.uri().query(), now_secs())
            } else {
                Err(traffic::Denied::Wrong)
            };
            // A token is checked before anything is looked up; only a sandbox with public
            // ports is looked up without one.
            let found = match app.host.get(id) {
                Ok(r) if r.id == id => Some(r),
                _ => None,
            };
            match (checked, found) {
                (Ok(()), Some(r)) => r,
                (Ok(()), None) => return Err(ApiError::not_found("sandbox", id)),
                (Err(_), Some(r)) if r.network.public_ports => r,
                (Err(denied), _) => return Err(ApiError::unauthorized(denied.message())),
            }
        }
    };
    // The wake (if the sandbox is put away) runs to its end even if the client leaves, as the
    // caller's key or as `traffic`.
    let actor = if keyed {
        cove_host::ACTOR.try_with(Clone::clone).unwrap_or_default()
    } else {
        cove_host::Actor::Traffic
    };
    let a = app.clone();
    let record = rec.clone();
    let client = tokio::spawn(
        cove_host::ACTOR.scope(actor, async move { a.host.connect_for_ports(record).await }),
    )
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    // The request follows the connect without waiting for it; a connect that failed shows as
    // the stream ending, and `opened` says why.
    let cove_host::PortStream { stream, mut opened } = client
        .connect_port(port)
        .await
        .map_err(|e| port_error(e, port, &rec.id))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(bad_gateway)?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let upgrade = req.headers().contains_key(header::UPGRADE);
    let client_side = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    // The path under the port (the `/v1` form's prefix gone), the query without the signed
    // URL's parameters; the token and, on the `/v1` form, the Authorization header are Cove's,
    // not the guest's.
    let path = match &form {
        Form::Path { rest, .. } => rest.clone(),
        Form::Host => parts.uri.path().to_string(),
    };
    let query = parts
        .uri
        .query()
        .map(traffic::strip_query)
        .unwrap_or_default();
    let target = if query.is_empty() {
        path
    } else {
        format!("{path}?{query}")
    };
    let authority = parts.uri.authority().map(|a| a.as_str().to_string());
    parts.uri = Uri::try_from(target).map_err(|e| ApiError::bad_request(e.to_string()))?;
    parts.headers.remove(TOKEN_HEADER);
    if matches!(form, Form::Path { .. }) {
        parts.headers.remove(header::AUTHORIZATION);
    }
    if parts.version == Version::HTTP_2 {
        // HTTP/2 carries the host in the URI; the guest speaks HTTP/1.1.
        if let Some(a) = authority
            && !parts.headers.contains_key(header::HOST)
            && let Ok(v) = HeaderValue::from_str(&a)
        {
            parts.headers.insert(header::HOST, v);
        }
    }
    parts.version = Version::HTTP_11;
    let mut resp = match sender.send_request(Request::from_parts(parts, body)).await {
        Ok(r) => r,
        // The agent's answer comes before the stream ends.
        Err(e) => {
            return Err(match opened.try_recv() {
                Ok(Err(why)) => port_error(why, port, &rec.id),
                _ => bad_gateway(e),
            });
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_side) = client_side
    {
        let guest_side = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            if let (Ok(c), Ok(g)) = (client_side.await, guest_side.await) {
                let _ =
                    tokio::io::copy_bidirectional(&mut TokioIo::new(c), &mut TokioIo::new(g)).await;
            }
        });
    }
    Ok(resp.map(Body::new))
}

/// A relay that did not open: `502 port_closed` when nothing listens, else the agent's error.
fn port_error(e: ClientError, port: u16, id: &str) -> ApiError {
    match e {
        ClientError::Agent(a) if a.code == cove_protocol::ErrorCode::Refused => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "port_closed",
            format!("nothing listens on port {port} in sandbox {id}"),
        ),
        e => ApiError::from(HostError::Client(e)),
    }
}

fn bad_gateway(e: hyper::Error) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "bad_gateway",
        format!("the sandbox's server: {e}"),
    )
}

/// A sandbox's traffic token: send it as `X-Cove-Traffic-Token` to reach its ports.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/traffic-token", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 200, body = api::TrafficToken), (status = 404, body = api::Error)))]
pub(crate) async fn token(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<api::TrafficToken>, ApiError> {
    auth.need(Scope::Exec)?;
    let r = app.owned(&auth.0, &id)?;
    Ok(Json(api::TrafficToken {
        token: app.traffic.token(&r.id),
    }))
}

/// A signed URL to one port of a sandbox, valid until it expires (no token needed).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/urls", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = api::SignUrl,
    responses((status = 200, body = api::PortUrl), (status = 404, body = api::Error),
        (status = 409, description = "coved has no TCP listener to name", body = api::Error)))]
pub(crate) async fn url(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
    Json(req): Json<api::SignUrl>,
) -> Result<Json<api::PortUrl>, ApiError> {
    auth.need(Scope::Exec)?;
    let r = app.owned(&auth.0, &id)?;
    ApiError::check_range("port", req.port, limits::PORT)?;
    let secs = req.expires_secs.unwrap_or(3600);
    ApiError::check_range("expires_secs", secs, limits::URL_EXPIRES_SECS)?;
    let Some((scheme, listen_port)) = app.public.clone() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "this coved serves no TCP listener a URL could name; start it with --listen HOST:PORT",
        ));
    };
    let expires_at = now_secs() + secs;
    let sig = app.traffic.sign(&r.id, req.port, expires_at);
    let q = format!(
        "{}={expires_at}&{}={sig}",
        traffic::EXPIRES_PARAM,
        traffic::SIGNATURE_PARAM
    );
    Ok(Json(api::PortUrl {
        url: format!(
            "{scheme}://{}-{}.{}:{listen_port}/?{q}",
            req.port, r.id, app.traffic.domain
        ),
        expires_at: i64::try_from(expires_at).unwrap_or(i64::MAX) * 1000,
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn hosts_name_a_port_and_a_sandbox() {
        let p = |h| super::parse_host(h, "cove.localhost");
        assert_eq!(
            p("8080-abcdef012345.cove.localhost"),
            Some((8080, "abcdef012345".into()))
        );
        assert_eq!(
            p("3000-ABCDEF012345.Cove.Localhost:7070"),
            Some((3000, "abcdef012345".into()))
        );
        assert_eq!(p("cove.localhost"), None);
        assert_eq!(p("0-abcdef012345.cove.localhost"), None);
        assert_eq!(p("80-abcdef01234.cove.localhost"), None);
        assert_eq!(p("80-abcdef012345.evil.localhost"), None);
        assert_eq!(p("80-abcdef012345xcove.localhost"), None);
    }
}

/// A raw TCP connection to a port of a sandbox, as a WebSocket of binary messages
/// (`cove port-forward`): each message carries bytes one way; a close ends both.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/tcp/{port}", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id"),
        ("port" = u16, Path, description = "The guest's TCP port")),
    responses((status = 101, description = "Upgraded: binary messages carry the bytes"),
        (status = 404, body = api::Error),
        (status = 502, description = "Nothing listens on the port", body = api::Error)))]
pub(crate) async fn tcp(
    State(app): State<App>,
    auth: Auth,
    Path((id, port)): Path<(String, String)>,
    ws: super::ws::Upgrade,
) -> Result<Response, ApiError> {
    use axum::extract::ws::Message;
    use futures::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    auth.need(Scope::Exec)?;
    let rec = app.owned(&auth.0, &id)?;
    let ws = super::ws::upgraded(ws)?;
    let Some(port) = port.parse::<u16>().ok().filter(|p| *p > 0) else {
        return Err(ApiError::bad_request(format!(
            "invalid port {port:?}: 1 to 65535"
        )));
    };
    // Connected before the upgrade: a closed port is a plain 502.
    let stream = cove_host::ACTOR
        .scope(auth.0.actor.clone(), async {
            let client = app.host.connect_for_ports(rec.clone()).await?;
            let opening = client
                .connect_port(port)
                .await
                .map_err(|e| port_error(e, port, &rec.id))?;
            opening
                .connected()
                .await
                .map_err(|e| port_error(e, port, &rec.id))
        })
        .await?;
    Ok(ws.on_upgrade(move |socket| async move {
        let (mut tx, mut rx) = socket.split();
        let (mut rd, mut wr) = tokio::io::split(stream);
        let down = async {
            while let Some(Ok(m)) = rx.next().await {
                match m {
                    Message::Binary(b) if wr.write_all(&b).await.is_err() => break,
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            let _ = wr.shutdown().await;
        };
        let up = async {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx
                            .send(Message::Binary(buf[..n].to_vec().into()))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
            let _ = tx.send(Message::Close(None)).await;
        };
        // Either side closing ends the relay.
        tokio::select! {
            () = down => {}
            () = up => {}
        }
    }))
}
