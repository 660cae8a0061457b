//! `Watch`: a directory's changes, from inotify, as `fs_event` replies until the session is
//! cancelled. A recursive watch adds every subdirectory, and each one made later as it appears.
//! The agent's own temporary files (an atomic write's `.NAME.cove-N`) are not reported: the
//! write shows as the target's `create` (or `rename` over it).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use cove_protocol::{AgentError, ErrorCode, FsEvent, FsEventKind, Reply};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use crate::server::{Inbound, Outbox};

/// Directories one recursive watch follows at most (inotify watches are a kernel resource).
const MAX_DIRS: usize = 8192;

fn mask() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_ONLYDIR
}

fn err(e: nix::Error, what: &str, path: &Path) -> AgentError {
    AgentError {
        code: ErrorCode::from_errno(e as i32),
        message: format!("{what}: {e}"),
        path: Some(path.display().to_string()),
    }
}

/// The inotify instance, as the runtime registers it.
struct InoFd(Inotify);

impl std::os::fd::AsRawFd for InoFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd as _;
        self.0.as_fd().as_raw_fd()
    }
}

struct Watcher {
    fd: AsyncFd<InoFd>,
    /// Each watch's directory, relative to the root ("" for the root).
    dirs: HashMap<WatchDescriptor, String>,
    root: PathBuf,
    recursive: bool,
}

impl Watcher {
    fn add(&mut self, rel: &str) -> Result<(), AgentError> {
        if self.dirs.len() >= MAX_DIRS {
            return Ok(());
        }
        let p = if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        };
        let wd = self
            .fd
            .get_ref()
            .0
            .add_watch(&p, mask())
            .map_err(|e| err(e, "watching", &p))?;
        self.dirs.insert(wd, rel.to_string());
        if self.recursive
            && let Ok(rd) = std::fs::read_dir(&p)
        {
            for ent in rd.flatten() {
                if ent.file_type().is_ok_and(|t| t.is_dir()) {
                    let name = ent.file_name().to_string_lossy().into_owned();
                    let child = if rel.is_empty() {
                        name
                    } else {
                        format!("{rel}/{name}")
                    };
                    // One that went away meanwhile is no error.
                    let _ = self.add(&child);
                }
            }
        }
        Ok(())
    }
}

/// Runs one `Watch` session.
pub async fn watch(
    path: String,
    recursive: bool,
    ob: &Outbox,
    mut inbox: mpsc::UnboundedReceiver<Inbound>,
) -> Result<Reply, AgentError> {
    let root = crate::files::absolute(&path)?;
    if !root.is_dir() {
        return Err(AgentError {
            code: if root.exists() {
                ErrorCode::NotADirectory
            } else {
                ErrorCode::NotFound
            },
            message: "not a directory".into(),
            path: Some(path),
        });
    }
    let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
        .map_err(|e| err(e, "inotify", &root))?;
    // SAFETY: the Inotify is moved into the AsyncFd: its fd stays open and the same file
    // description until the AsyncFd drops it.
    let fd = unsafe { AsyncFd::register(InoFd(ino)) }.map_err(|e| AgentError {
        code: ErrorCode::Internal,
        message: format!("inotify: {e}"),
        path: None,
    })?;
    let mut w = Watcher {
        fd,
        dirs: HashMap::new(),
        root,
        recursive,
    };
    w.add("")?;
    ob.reply(&Reply::Watching).await;
    loop {
        tokio::select! {
            ev = inbox.recv() => match ev {
                Some(Inbound::Cancel) | None => {
                    return Err(AgentError {
                        code: ErrorCode::Cancelled,
                        message: "watch ended".into(),
                        path: None,
                    });
                }
                Some(_) => {}
            },
            ready = w.fd.readable() => {
                let Ok(mut guard) = ready else { continue };
                let events = match guard.get_inner().0.read_events() {
                    Ok(evs) => evs,
                    Err(nix::errno::Errno::EAGAIN) => {
                        guard.clear_ready();
                        continue;
                    }
                    Err(e) => return Err(err(e, "reading inotify", &w.root)),
                };
                drop(guard);
                for ev in events {
                    if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                        send(ob, String::new(), FsEventKind::Overflow, false).await;
                        continue;
                    }
                    let Some(dir) = w.dirs.get(&ev.wd).cloned() else { continue };
                    let is_dir = ev.mask.contains(AddWatchFlags::IN_ISDIR);
                    let name = ev.name.map(|n| n.to_string_lossy().into_owned());
                    if name.as_deref().is_some_and(is_own_temp) {
                        continue;
                    }
                    let rel = match &name {
                        Some(n) if dir.is_empty() => n.clone(),
                        Some(n) => format!("{dir}/{n}"),
                        None => dir.clone(),
                    };
                    let m = ev.mask;
                    let kind = if m.intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO) {
                        if is_dir && w.recursive && name.is_some() {
                            let _ = w.add(&rel);
                        }
                        FsEventKind::Create
                    } else if m.contains(AddWatchFlags::IN_MODIFY) {
                        FsEventKind::Write
                    } else if m.intersects(AddWatchFlags::IN_DELETE | AddWatchFlags::IN_DELETE_SELF) {
                        FsEventKind::Remove
                    } else if m.intersects(AddWatchFlags::IN_MOVED_FROM | AddWatchFlags::IN_MOVE_SELF) {
                        FsEventKind::Rename
                    } else if m.contains(AddWatchFlags::IN_ATTRIB) {
                        FsEventKind::Chmod
                    } else {
                        // IN_IGNORED: a watch went with its directory.
                        w.dirs.remove(&ev.wd);
                        continue;
                    };
                    // A subdirectory's own removal is reported by its parent; the root's ends
                    // the watch.
                    let self_event = name.is_none();
                    if self_event && !dir.is_empty() {
                        continue;
                    }
                    send(ob, rel, kind, is_dir || self_event).await;
                    if self_event && matches!(kind, FsEventKind::Remove | FsEventKind::Rename) {
                        return Ok(Reply::Ok);
                    }
                }
            }
        }
    }
}

async fn send(ob: &Outbox, name: String, kind: FsEventKind, dir: bool) {
    ob.reply(&Reply::FsEvent(FsEvent { name, kind, dir })).await;
}

/// The temporary name of an atomic write in progress (see `files::PendingFile`).
fn is_own_temp(name: &str) -> bool {
    name.starts_with('.')
        && name
            .rsplit_once(".cove-")
            .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_temporaries_are_told_apart() {
        assert!(is_own_temp(".a.txt.cove-12345"));
        assert!(!is_own_temp("a.txt.cove-12345"));
        assert!(!is_own_temp(".cove-x"));
        assert!(!is_own_temp(".bashrc"));
    }
}
