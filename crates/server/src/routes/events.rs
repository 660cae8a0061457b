//! The event log over HTTP: every lifecycle transition of the tenant's sandboxes, as NDJSON
//! (one `Event` per line) or, with `Accept: text/event-stream`, as server-sent events; with
//! `follow=true` the stream stays open and new events arrive as they are recorded.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use cove_api as api;
use serde::Deserialize;

use crate::app::App;
use crate::auth::Auth;
use crate::error::ApiError;
use crate::keys::Scope;

/// How often a followed stream looks for new events (the log is shared with the CLI and other
/// coveds, so it is read, not pushed).
const POLL: Duration = Duration::from_millis(200);

/// `GET /v1/events` options.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only events after this sequence number (default: from the start).
    after: Option<i64>,
    /// Only this sandbox's.
    sandbox: Option<String>,
    /// Keep the stream open for new events.
    #[serde(default)]
    follow: bool,
}

/// An event as `shows_host` (the host's administrator or an operator) or a tenant reads it.
fn event(e: cove_host::EventRecord, shows_host: bool) -> api::Event {
    api::Event {
        seq: e.seq,
        at: e.at,
        sandbox: e.sandbox,
        state: e.state,
        actor: e.actor,
        cause: e
            .cause
            .as_deref()
            .map(|c| crate::error::redact_for(shows_host, c)),
    }
}

/// Lifecycle events of the tenant's sandboxes (NDJSON, or SSE with `Accept: text/event-stream`).
#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventsQuery),
    responses((status = 200, content_type = "application/x-ndjson", body = api::Event)))]
pub async fn events(
    State(app): State<App>,
    auth: Auth,
    headers: HeaderMap,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    auth.need(Scope::Read)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let after = q.after.unwrap_or(0);
    ApiError::check_range("after", after, cove_api::limits::SEQ)?;
    let sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let tenant = auth.0.tenant.clone();
    let shows_host = tenant.is_none();
    // Read the first batch now, so a broken database is an error status, not a cut stream.
    let first = app
        .host
        .events(after, tenant.as_deref(), q.sandbox.as_deref(), 1000)?;
    let state = (app, tenant, q, first, false);
    let stream =
        futures::stream::unfold(state, move |(app, tenant, q, mut batch, done)| async move {
            if done {
                return None;
            }
            loop {
                if !batch.is_empty() {
                    let mut out = String::new();
                    let mut last = 0;
                    for e in batch.drain(..) {
                        last = e.seq;
                        let json =
                            serde_json::to_string(&event(e, shows_host)).expect("serializes");
                        if sse {
                            out.push_str(&format!("id: {last}\ndata: {json}\n\n"));
                        } else {
                            out.push_str(&json);
                            out.push('\n');
                        }
                    }
                    let q = EventsQuery {
                        after: Some(last),
                        ..q
                    };
                    return Some((Ok::<_, std::io::Error>(out), (app, tenant, q, batch, false)));
                }
                match app.host.events(
                    q.after.unwrap_or(0),
                    tenant.as_deref(),
                    q.sandbox.as_deref(),
                    1000,
                ) {
                    Ok(b) if !b.is_empty() => batch = b,
                    // Caught up: the end, or (following) a wait for more.
                    Ok(_) if !q.follow => return None,
                    Ok(_) => tokio::time::sleep(POLL).await,
                    Err(e) => {
                        tracing::error!("reading the event log: {e}");
                        return Some((
                            Err(std::io::Error::other(e.to_string())),
                            (app, tenant, q, batch, true),
                        ));
                    }
                }
            }
        });
    let ct = if sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    Ok((
        [
            (header::CONTENT_TYPE, ct),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}
