//! envd's polled watchers (`CreateWatcher`, `GetWatcherEvents`, `RemoveWatcher`): coved holds
//! each watch's session with the guest and keeps its events until they are read. Bounded: at
//! most [`PER_SANDBOX`] watchers a sandbox and [`KEPT`] unread events a watcher (the oldest go
//! first); one nobody has read for [`IDLE`] is dropped — at any call, and by a sweep every
//! [`SWEEP`] while any watcher exists (a removed sandbox's watchers are never called again).
//!
//! A watch ends when the guest ends it (the directory went), or when the sandbox stops, pauses
//! or goes: its events are still handed out, and the read after that answers `not_found`, as
//! envd does for a watcher it does not know, so a client does not poll an empty list forever.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
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
/// How often idle watchers are looked for while there are any.
const SWEEP: Duration = Duration::from_secs(60);

/// What a watch's task has gathered.
#[derive(Debug, Default)]
struct Feed {
    events: VecDeque<FsEvent>,
    /// The watch's session is over: nothing more comes.
    ended: bool,
}

type Shared = Arc<Mutex<Feed>>;

#[derive(Debug)]
struct Watcher {
    sandbox: String,
    /// Filled by the task that reads the session.
    feed: Shared,
    read_at: Instant,
    task: tokio::task::AbortHandle,
}

type Table = HashMap<String, Watcher>;

#[derive(Debug, Default)]
struct State {
    table: Table,
    /// A sweeper task runs.
    sweeping: bool,
}

/// Every watcher, by id.
#[derive(Debug, Default)]
pub struct Watchers {
    all: Arc<Mutex<State>>,
}

impl Watchers {
    /// Keeps `session`'s events for sandbox `sandbox`; returns the new watcher's id.
    pub(crate) fn add(&self, sandbox: &str, mut session: Session) -> Result<String, RpcError> {
        let mut state = self.all.lock().expect("lock");
        sweep(&mut state.table, Instant::now());
        if !state.sweeping {
            state.sweeping = true;
            sweeper(Arc::downgrade(&self.all));
        }
        let all = &mut state.table;
        if all.values().filter(|w| w.sandbox == sandbox).count() >= PER_SANDBOX {
            return Err(RpcError::new(
                Code::ResourceExhausted,
                format!("a sandbox holds at most {PER_SANDBOX} watchers: remove one first"),
            ));
        }
        let feed: Shared = Arc::default();
        let sink = feed.clone();
        let task = tokio::spawn(async move {
            while let Some(ev) = session.next().await {
                match ev {
                    Event::Reply(Reply::FsEvent(e)) => {
                        let mut f = sink.lock().expect("lock");
                        if f.events.len() == KEPT {
                            f.events.pop_front();
                        }
                        f.events.push_back(e);
                    }
                    Event::Reply(r) if r.is_final() => break,
                    _ => {}
                }
            }
            sink.lock().expect("lock").ended = true;
        });
        let id = random_id();
        all.insert(
            id.clone(),
            Watcher {
                sandbox: sandbox.to_string(),
                feed,
                read_at: Instant::now(),
                task: task.abort_handle(),
            },
        );
        Ok(id)
    }

    /// The events of watcher `id` (of sandbox `sandbox`) since the last read; `not_found` once
    /// its watch has ended and every event was read.
    pub(crate) fn drain(&self, sandbox: &str, id: &str) -> Result<Vec<FsEvent>, RpcError> {
        let mut state = self.all.lock().expect("lock");
        let all = &mut state.table;
        sweep(all, Instant::now());
        let w = all
            .get_mut(id)
            .filter(|w| w.sandbox == sandbox)
            .ok_or_else(|| not_found(id))?;
        w.read_at = Instant::now();
        let mut f = w.feed.lock().expect("lock");
        if f.ended && f.events.is_empty() {
            drop(f);
            all.remove(id);
            return Err(RpcError::new(
                Code::NotFound,
                format!("watcher {id} has ended (its directory or its sandbox went away)"),
            ));
        }
        Ok(f.events.drain(..).collect())
    }

    /// Ends watcher `id` (of sandbox `sandbox`).
    pub(crate) fn remove(&self, sandbox: &str, id: &str) -> Result<(), RpcError> {
        let mut state = self.all.lock().expect("lock");
        let all = &mut state.table;
        sweep(all, Instant::now());
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

/// Drops the watchers not read since `now - IDLE` (their sessions end with their tasks).
fn sweep(all: &mut Table, now: Instant) {
    all.retain(|_, w| {
        let idle = now.saturating_duration_since(w.read_at) > IDLE;
        if idle {
            w.task.abort();
        }
        !idle
    });
}

/// Sweeps every [`SWEEP`] until no watcher is left (the next one starts another sweeper).
fn sweeper(all: Weak<Mutex<State>>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(SWEEP).await;
            let Some(all) = all.upgrade() else { return };
            let mut state = all.lock().expect("lock");
            sweep(&mut state.table, Instant::now());
            if state.table.is_empty() {
                state.sweeping = false;
                return;
            }
        }
    });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_agent::{self, msg};
    use cove_protocol::{FsEventKind, Request};

    fn created(name: &str) -> Reply {
        Reply::FsEvent(FsEvent {
            name: name.into(),
            kind: FsEventKind::Create,
            dir: false,
        })
    }

    /// A watch the guest ended hands out its last events, then answers `not_found`.
    #[tokio::test]
    async fn an_ended_watch_is_not_found_once_read() {
        let client = fake_agent::client(|req| match req {
            Request::Watch { .. } => vec![
                msg(&Reply::Watching),
                msg(&created("a")),
                msg(&created("b")),
                msg(&Reply::Ok),
            ],
            _ => vec![],
        });
        let session = client.watch_dir("/w", false).await.unwrap();
        let watchers = Watchers::default();
        let id = watchers.add("sb", session).unwrap();
        assert_eq!(
            watchers.drain("other", &id).unwrap_err().code,
            Code::NotFound
        );
        let mut names = Vec::new();
        for _ in 0..200 {
            match watchers.drain("sb", &id) {
                Ok(evs) => names.extend(evs.into_iter().map(|e| e.name)),
                Err(e) => {
                    assert_eq!(e.code, Code::NotFound);
                    assert_eq!(names, ["a", "b"]);
                    assert!(watchers.all.lock().unwrap().table.is_empty(), "forgotten");
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the ended watch was never reported: {names:?}");
    }

    /// A watcher nobody reads goes after IDLE, whatever call comes next.
    #[tokio::test]
    async fn idle_watchers_are_swept() {
        let client = fake_agent::client(|req| match req {
            Request::Watch { .. } => vec![msg(&Reply::Watching)],
            _ => vec![],
        });
        let watchers = Watchers::default();
        let id = watchers
            .add("sb", client.watch_dir("/w", false).await.unwrap())
            .unwrap();
        let task = {
            let all = &mut watchers.all.lock().unwrap().table;
            sweep(all, Instant::now());
            assert!(all.contains_key(&id), "a fresh one stays");
            let task = all[&id].task.clone();
            sweep(all, Instant::now() + IDLE + Duration::from_secs(1));
            assert!(all.is_empty());
            task
        };
        tokio::task::yield_now().await;
        assert!(task.is_finished(), "its task (and session) ended");
    }
}
