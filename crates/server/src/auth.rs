//! Who is calling: an API key (`Authorization: Bearer KEY`, any listener), or the host's
//! administrator — a caller on coved's Unix socket whose peer credentials say it is root or
//! the user coved runs as, sending no key. Nobody else is let in without a key.

use axum::extract::FromRequestParts;
use axum::extract::connect_info::ConnectInfo;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};

use crate::app::App;
use crate::error::ApiError;
use crate::keys::{Principal, Scope};

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Auth(pub Principal);

impl Auth {
    /// Refuses (403) unless the caller's scope covers `scope`.
    pub(crate) fn need(&self, scope: Scope) -> Result<(), ApiError> {
        if self.0.allows(scope) {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                format!(
                    "this key's scope ({:?}) does not allow this; it needs {scope:?}",
                    self.0.scope
                )
                .to_lowercase(),
            ))
        }
    }

    /// The host's administrator (see [`Principal::local`]).
    pub(crate) fn is_local(&self) -> bool {
        self.0.tenant.is_none()
    }
}

/// The peer of a connection: its uid where the listener can tell (a Unix socket).
#[derive(Debug, Clone, Copy, Default)]
pub struct Peer {
    /// The connecting process's user id (`SO_PEERCRED`).
    pub uid: Option<u32>,
}

impl Peer {
    /// Root, or the user this coved runs as (who owns its home and everything in it anyway).
    fn is_administrator(self) -> bool {
        self.uid
            .is_some_and(|u| u == 0 || u == nix::unistd::geteuid().as_raw())
    }
}

/// Who the request is from, as the [`identify`] middleware found it.
#[derive(Debug, Clone)]
struct Identified(Result<Principal, ApiError>);

/// Identifies the caller of every request once: its key (and the key's rate limit), or the
/// host's administrator by the socket's peer credentials. The rest of the request runs as that
/// caller's actor, so whatever the host records on the way — a sandbox the idle policy put away
/// and a request wakes, say — names who caused it. Routes that need a caller take [`Auth`].
pub async fn identify(
    axum::extract::State(app): axum::extract::State<App>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let (mut parts, body) = req.into_parts();
    let who = principal(&mut parts, &app);
    req = axum::extract::Request::from_parts(parts, body);
    let actor = who.as_ref().ok().map(|p| p.actor.clone());
    let shows_host = who.as_ref().is_ok_and(|p| p.tenant.is_none());
    req.extensions_mut().insert(Identified(who));
    let run = async move {
        match actor {
            Some(a) => cove_host::ACTOR.scope(a, next.run(req)).await,
            None => next.run(req).await,
        }
    };
    crate::error::SHOWS_HOST.scope(shows_host, run).await
}

/// The caller [`identify`] found for a request, if it found one (routes that also admit other
/// credentials, such as a sandbox's ports, look here instead of taking [`Auth`]).
pub(crate) fn identified(ext: &axum::http::Extensions) -> Option<Principal> {
    ext.get::<Identified>().and_then(|i| i.0.clone().ok())
}

fn principal(parts: &mut Parts, app: &App) -> Result<Principal, ApiError> {
    let bearer = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        // E2B's SDKs send the key as `X-API-KEY`.
        .or_else(|| {
            parts
                .headers
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|s| !s.is_empty())
        });
    let Some(secret) = bearer else {
        let peer = parts
            .extensions
            .get::<ConnectInfo<Peer>>()
            .map(|c| c.0)
            .unwrap_or_default();
        if peer.is_administrator() {
            return Ok(Principal::local());
        }
        return Err(ApiError::unauthorized(
            "send an API key as `Authorization: Bearer KEY`",
        ));
    };
    let p = app
        .keys
        .authenticate(secret)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .ok_or_else(|| ApiError::unauthorized("unknown or revoked API key"))?;
    if let Some(id) = p.key_id() {
        app.take_token(id)?;
    }
    Ok(p)
}

impl FromRequestParts<App> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        match parts.extensions.get::<Identified>() {
            Some(Identified(who)) => who.clone().map(Self),
            // Only a router without the middleware (none is built so) gets here.
            None => principal(parts, app).map(Self),
        }
    }
}
