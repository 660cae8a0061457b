//! Image pulls through the API: asynchronous (`202` with an id), their progress an NDJSON
//! stream that replays from the start and follows to a final `complete` or `failed` line.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use cove_api as api;
use cove_host::images::{Event, Progress, PullOptions};

use crate::app::App;
use crate::auth::Auth;
use crate::error::{ApiError, Json};
use crate::keys::Scope;

/// Pulls kept for following: running ones, and finished ones for [`Pulls::KEEP`] (in memory:
/// a restart forgets them; the images they pulled stay).
#[derive(Debug, Default)]
pub struct Pulls {
    map: Mutex<HashMap<String, Arc<Pull>>>,
}

impl Pulls {
    /// How long a finished pull's progress can still be followed.
    pub const KEEP: Duration = Duration::from_secs(3600);

    /// Forgets pulls that finished more than `keep` ago; returns how many.
    pub fn sweep(&self, keep: Duration) -> usize {
        let mut map = self.map.lock().expect("pulls");
        let before = map.len();
        map.retain(|_, p| {
            p.done_at
                .lock()
                .expect("pull done")
                .is_none_or(|t| t.elapsed() < keep)
        });
        before - map.len()
    }
}

/// One pull's progress lines.
#[derive(Debug, Default)]
pub struct Pull {
    lines: Mutex<(Vec<String>, bool)>,
    done_at: Mutex<Option<Instant>>,
    more: tokio::sync::Notify,
}

impl Pull {
    fn push(&self, line: String, last: bool) {
        let mut l = self.lines.lock().expect("pull lines");
        l.0.push(line);
        l.1 |= last;
        drop(l);
        if last {
            *self.done_at.lock().expect("pull done") = Some(Instant::now());
        }
        self.more.notify_waiters();
    }
}

impl Progress for Pull {
    fn event(&self, ev: &Event) {
        self.push(serde_json::to_string(ev).expect("serializes"), false);
    }
}

/// Start pulling an image (`operator`); follow its progress at `/v1/images/pulls/{id}`.
#[utoipa::path(post, path = "/v1/images/pull", tag = "images", request_body = api::Pull,
    responses((status = 202, body = api::PullStarted), (status = 400, body = api::Error),
        (status = 403, body = api::Error)))]
pub async fn start(
    State(app): State<App>,
    auth: Auth,
    Json(req): Json<api::Pull>,
) -> Result<(StatusCode, Json<api::PullStarted>), ApiError> {
    auth.need(Scope::Operator)?;
    // A malformed reference is refused now, not in the stream.
    cove_host::images::parse_reference(&req.reference)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let id = crate::keys::random_hex(8)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let pull = Arc::new(Pull::default());
    app.pulls
        .map
        .lock()
        .expect("pulls")
        .insert(id.clone(), pull.clone());
    let opts = PullOptions {
        insecure: req.insecure,
        credentials: req.username.zip(req.password),
        docker_config: None,
    };
    tokio::spawn(async move {
        let r = app.host.image_pull(&req.reference, &opts, &*pull).await;
        let last = match r {
            Ok(info) => serde_json::json!({
                "type": "complete", "digest": info.meta.digest, "names": info.assigned,
            }),
            Err(e) => {
                let e = ApiError::from(e);
                serde_json::json!({"type": "failed", "error": {"code": e.code, "message": e.message}})
            }
        };
        pull.push(last.to_string(), true);
    });
    Ok((StatusCode::ACCEPTED, Json(api::PullStarted { id })))
}

/// A pull's progress: NDJSON from its start, ending with `complete` (digest, names) or `failed`.
#[utoipa::path(get, path = "/v1/images/pulls/{id}", tag = "images",
    params(("id" = String, Path, description = "Pull id")),
    responses((status = 200, content_type = "application/x-ndjson", body = String),
        (status = 404, body = api::Error)))]
pub async fn follow(
    State(app): State<App>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    auth.need(Scope::Operator)?;
    let pull = app
        .pulls
        .map
        .lock()
        .expect("pulls")
        .get(&id)
        .cloned()
        .ok_or_else(|| ApiError::not_found("pull", &id))?;
    let stream = futures::stream::unfold((pull, 0usize), |(pull, at)| async move {
        loop {
            // Registered before looking, so a line pushed in between still wakes this up.
            let woken = pull.more.notified();
            let (chunk, end) = {
                let l = pull.lines.lock().expect("pull lines");
                let new: String = l.0[at..].iter().map(|s| format!("{s}\n")).collect();
                (new, (l.0.len(), l.1))
            };
            if !chunk.is_empty() {
                drop(woken);
                return Some((Ok::<_, std::io::Error>(chunk), (pull, end.0)));
            }
            if end.1 {
                return None;
            }
            woken.await;
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_forgets_only_finished_pulls_past_keep() {
        let pulls = Pulls::default();
        let running = Arc::new(Pull::default());
        running.push("{}".into(), false);
        let done = Arc::new(Pull::default());
        done.push("{}".into(), true);
        {
            let mut m = pulls.map.lock().unwrap();
            m.insert("running".into(), running);
            m.insert("done".into(), done);
        }
        assert_eq!(pulls.sweep(Pulls::KEEP), 0, "nothing is an hour old");
        assert_eq!(pulls.sweep(Duration::ZERO), 1);
        let m = pulls.map.lock().unwrap();
        assert!(m.contains_key("running") && !m.contains_key("done"));
    }
}
