//! envd's polled watchers (`CreateWatcher`, `GetWatcherEvents`, `RemoveWatcher`): coved holds
//! each watch's session with the guest and keeps its events until they are read. Bounded: at
//! most [`PER_SANDBOX`] watchers a sandbox and [`KEPT`] unread events a watcher (the oldest go
//! first); one nobody has read for [`IDLE`] is dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cove_host::agent::{Event, Session};
use cove_protocol::{FsEvent, Reply};

use super::connect::{Code, RpcError};

/// Watchers one sandbox may hold.
const PER_SANDBOX: usize = 64;
/// Unread events a watcher keeps.
const KEPT: usize = 10_000;
/// A watcher not read for this long is dropped.
const IDLE: Duration = Duration::from_secs(600);

type Queue = Arc<Mutex<VecDeque<FsEvent>>>;

#[derive(Debug)]
struct Watcher {
    sandbox: String,
    /// Filled by the task that reads the session.
    events: Queue,
    read_at: Instant,
    task: tokio::task::AbortHandle,
}

/// Every watcher, by id.
#[derive(Debug, Default)]
pub struct Watchers {
    all: Mutex<HashMap<String, Watcher>>,
}

impl Watchers {
    /// Keeps `session`'s events for sandbox `sandbox`; returns the new watcher's id.
    pub(crate) fn add(&self, sandbox: &str, mut session: Session) -> Result<String, RpcError> {
        let mut all = self.all.lock().expect("lock");
        all.retain(|_, w| {
            let idle = w.read_at.elapsed() > IDLE;
            if idle {
                w.task.abort();
            }
            !idle
        });
        if all.values().filter(|w| w.sandbox == sandbox).count() >= PER_SANDBOX {
            return Err(RpcError::new(
                Code::ResourceExhausted,
                format!("a sandbox holds at most {PER_SANDBOX} watchers: remove one first"),
            ));
        }
        let events: Queue = Arc::default();
        let sink = events.clone();
        let task = tokio::spawn(async move {
            while let Some(ev) = session.next().await {
                match ev {
                    Event::Reply(Reply::FsEvent(e)) => {
                        let mut q = sink.lock().expect("lock");
                        if q.len() == KEPT {
                            q.pop_front();
                        }
                        q.push_back(e);
                    }
                    Event::Reply(r) if r.is_final() => break,
                    _ => {}
                }
            }
        });
        let id = random_id();
        all.insert(
            id.clone(),
            Watcher {
                sandbox: sandbox.to_string(),
                events,
                read_at: Instant::now(),
                task: task.abort_handle(),
            },
        );
        Ok(id)
    }

    /// The events of watcher `id` (of sandbox `sandbox`) since the last read.
    pub(crate) fn drain(&self, sandbox: &str, id: &str) -> Result<Vec<FsEvent>, RpcError> {
        let mut all = self.all.lock().expect("lock");
        let w = all
            .get_mut(id)
            .filter(|w| w.sandbox == sandbox)
            .ok_or_else(|| not_found(id))?;
        w.read_at = Instant::now();
        Ok(w.events.lock().expect("lock").drain(..).collect())
    }

    /// Ends watcher `id` (of sandbox `sandbox`).
    pub(crate) fn remove(&self, sandbox: &str, id: &str) -> Result<(), RpcError> {
        let mut all = self.all.lock().expect("lock");
        match all.get(id) {
            Some(w) if w.sandbox == sandbox => {
                w.task.abort();
                all.remove(id);
                Ok(())
            }
            _ => Err(not_found(id)),
        }
    }
}

fn not_found(id: &str) -> RpcError {
    RpcError::new(Code::NotFound, format!("no watcher {id}"))
}

fn random_id() -> String {
    let mut b = [0u8; 16];
    // SAFETY: getrandom writes at most 16 bytes into the valid buffer.
    let _ = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    b.iter().map(|x| format!("{x:02x}")).collect()
}
