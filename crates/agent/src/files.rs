//! File requests: streamed reads and atomic writes, stat, list, mkdir, remove, rename.

use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use cove_protocol::{AgentError, DirEntry, ErrorCode, FileKind, FileStat, Reply, Stream};
use tokio::sync::mpsc;

use crate::server::{Inbound, Outbox};

fn err_at(e: &io::Error, path: &Path) -> AgentError {
    let code = e
        .raw_os_error()
        .map_or(ErrorCode::Internal, ErrorCode::from_errno);
    // The OS text without the "(os error N)" suffix: the code already says it.
    let msg = e.to_string();
    let msg = msg.split(" (os error").next().unwrap_or(&msg).to_string();
    AgentError {
        code,
        message: msg,
        path: Some(path.display().to_string()),
    }
}

pub(crate) fn absolute(path: &str) -> Result<PathBuf, AgentError> {
    if !path.starts_with('/') || path.contains('\0') {
        return Err(AgentError {
            code: ErrorCode::InvalidRequest,
            message: "paths must be absolute".into(),
            path: Some(path.to_string()),
        });
    }
    Ok(PathBuf::from(path))
}

/// Runs a blocking file operation off the runtime's thread.
pub async fn blocking(
    f: impl FnOnce() -> Result<Reply, AgentError> + Send + 'static,
) -> Result<Reply, AgentError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(AgentError {
            code: ErrorCode::Internal,
            message: format!("file task failed: {e}"),
            path: None,
        })
    })
}

fn kind_of(ft: std::fs::FileType) -> FileKind {
    if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    }
}

/// `Stat`.
pub fn stat(path: &str) -> Result<Reply, AgentError> {
    let p = absolute(path)?;
    let m = std::fs::symlink_metadata(&p).map_err(|e| err_at(&e, &p))?;
    let link_target = m
        .file_type()
        .is_symlink()
        .then(|| std::fs::read_link(&p).ok().map(|t| t.display().to_string()))
        .flatten();
    let names = crate::user::Names::load(Path::new("/"));
    Ok(Reply::Stat(FileStat {
        path: path.to_string(),
        kind: kind_of(m.file_type()),
        size: m.len(),
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime: m.mtime(),
        link_target,
        owner: names.user(m.uid()),
        group: names.group(m.gid()),
    }))
}

/// `List`.
pub fn list(path: &str) -> Result<Reply, AgentError> {
    let p = absolute(path)?;
    let rd = std::fs::read_dir(&p).map_err(|e| err_at(&e, &p))?;
    let names = crate::user::Names::load(Path::new("/"));
    let mut entries = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| err_at(&e, &p))?;
        // An entry removed meanwhile is skipped, not an error.
        let Ok(m) = ent.metadata() else { continue };
        let link_target = m
            .file_type()
            .is_symlink()
            .then(|| std::fs::read_link(ent.path()).ok())
            .flatten()
            .map(|t| t.display().to_string());
        entries.push(DirEntry {
            name: ent.file_name().to_string_lossy().into_owned(),
            kind: kind_of(m.file_type()),
            size: m.len(),
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            mtime: m.mtime(),
            link_target,
            owner: names.user(m.uid()),
            group: names.group(m.gid()),
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Reply::Entries { entries })
}

/// `Mkdir`.
pub fn mkdir(
    path: &str,
    parents: bool,
    mode: Option<u32>,
    user: Option<&str>,
) -> Result<Reply, AgentError> {
    let p = absolute(path)?;
    let owner = owner_of(user)?;
    let mode = mode.unwrap_or(0o755);
    if parents {
        if let Some(parent) = p.parent() {
            create_dirs(parent, owner)?;
        }
        if p.is_dir() {
            return Ok(Reply::Ok);
        }
    }
    create_dir(&p, mode, owner)?;
    Ok(Reply::Ok)
}

/// The uid and gid of a request's `user`.
fn owner_of(user: Option<&str>) -> Result<Option<(u32, u32)>, AgentError> {
    let Some(spec) = user else { return Ok(None) };
    crate::user::resolve(Path::new("/"), spec)
        .map(|i| Some((i.uid, i.gid)))
        .ok_or_else(|| AgentError {
            code: ErrorCode::NotFound,
            message: format!("no such user in /etc/passwd: {spec}"),
            path: None,
        })
}

/// Creates one directory, owned by `owner` when given.
fn create_dir(p: &Path, mode: u32, owner: Option<(u32, u32)>) -> Result<(), AgentError> {
    let mut b = std::fs::DirBuilder::new();
    std::os::unix::fs::DirBuilderExt::mode(&mut b, mode);
    b.create(p).map_err(|e| err_at(&e, p))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(p, Some(uid), Some(gid)).map_err(|e| err_at(&e, p))?;
    }
    Ok(())
}

/// `mkdir -p`, the directories it creates owned by `owner` when given.
fn create_dirs(dir: &Path, owner: Option<(u32, u32)>) -> Result<(), AgentError> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|a| !a.exists()).collect();
    for d in missing.into_iter().rev() {
        match create_dir(d, 0o755, owner) {
            // Made meanwhile by someone else: fine, as with `mkdir -p`.
            Err(e) if e.code == ErrorCode::AlreadyExists && d.is_dir() => {}
            r => r?,
        }
    }
    if !dir.is_dir() {
        return Err(err_at(&io::Error::from_raw_os_error(libc::ENOTDIR), dir));
    }
    Ok(())
}

/// `Remove`.
pub fn remove(path: &str, recursive: bool) -> Result<Reply, AgentError> {
    let p = absolute(path)?;
    if p == Path::new("/") {
        return Err(AgentError {
            code: ErrorCode::InvalidRequest,
            message: "refusing to remove /".into(),
            path: Some(path.into()),
        });
    }
    let m = std::fs::symlink_metadata(&p).map_err(|e| err_at(&e, &p))?;
    let r = if m.is_dir() {
        if recursive {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_dir(&p)
        }
    } else {
        std::fs::remove_file(&p)
    };
    r.map_err(|e| err_at(&e, &p))?;
    Ok(Reply::Ok)
}

/// `Rename`.
pub fn rename(from: &str, to: &str) -> Result<Reply, AgentError> {
    let f = absolute(from)?;
    let t = absolute(to)?;
    std::fs::rename(&f, &t).map_err(|e| {
        // Say which side is missing: the source is the usual culprit.
        let side = if f.symlink_metadata().is_err() {
            &f
        } else {
            &t
        };
        err_at(&e, side)
    })?;
    Ok(Reply::Ok)
}

/// `ReadFile`: `FileStart`, the content as `Data` on stdout, `Eof`, then `Done`.
pub async fn read_file(
    path: String,
    ob: &Outbox,
    mut inbox: mpsc::UnboundedReceiver<Inbound>,
) -> Result<Reply, AgentError> {
    let p = absolute(&path)?;
    let (file, size, mode) = {
        let p = p.clone();
        tokio::task::spawn_blocking(move || -> Result<_, AgentError> {
            let f = std::fs::File::open(&p).map_err(|e| err_at(&e, &p))?;
            let m = f.metadata().map_err(|e| err_at(&e, &p))?;
            if m.is_dir() {
                return Err(err_at(&io::Error::from_raw_os_error(libc::EISDIR), &p));
            }
            Ok((f, m.len(), m.mode() & 0o7777))
        })
        .await
        .map_err(|e| internal(&e))??
    };
    ob.reply(&Reply::FileStart { size, mode }).await;
    // A dedicated thread reads ahead, straight into frame buffers, while the session waits for
    // credit.
    let (tx, mut rx) = mpsc::channel::<io::Result<(Vec<u8>, usize)>>(4);
    let session = ob.session();
    std::thread::spawn(move || {
        use cove_protocol::frame::{DATA_PREFIX_LEN, MAX_DATA_CHUNK, put_data_prefix};
        let mut file = file;
        loop {
            let mut buf = Vec::with_capacity(DATA_PREFIX_LEN + MAX_DATA_CHUNK);
            buf.resize(DATA_PREFIX_LEN, 0);
            match (&mut file)
                .take(MAX_DATA_CHUNK as u64)
                .read_to_end(&mut buf)
            {
                Ok(0) => break,
                Ok(n) => {
                    put_data_prefix(&mut buf, session, Stream::Stdout, n);
                    if tx.blocking_send(Ok((buf, n))).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    break;
                }
            }
        }
    });
    let mut total = 0u64;
    loop {
        tokio::select! {
            chunk = rx.recv() => match chunk {
                Some(Ok((frame, n))) => {
                    total += n as u64;
                    ob.data_encoded(frame, n).await;
                }
                Some(Err(e)) => return Err(err_at(&e, &p)),
                None => break,
            },
            ev = inbox.recv() => if matches!(ev, Some(Inbound::Cancel) | None) {
                return Err(cancelled());
            },
        }
    }
    ob.eof(Stream::Stdout).await;
    Ok(Reply::Done { bytes: total })
}

fn internal(e: &dyn std::fmt::Display) -> AgentError {
    AgentError {
        code: ErrorCode::Internal,
        message: e.to_string(),
        path: None,
    }
}

fn cancelled() -> AgentError {
    AgentError {
        code: ErrorCode::Cancelled,
        message: "transfer cancelled".into(),
        path: None,
    }
}

/// A file being written under a temporary name beside its target; removed unless committed.
struct PendingFile {
    tmp: PathBuf,
    target: PathBuf,
    file: Option<std::fs::File>,
    committed: bool,
    /// Who the file belongs to, when the request named a user.
    owner: Option<(u32, u32)>,
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl PendingFile {
    fn create(
        target: PathBuf,
        parents: bool,
        owner: Option<(u32, u32)>,
    ) -> Result<Self, AgentError> {
        let dir = target
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .ok_or_else(|| AgentError {
                code: ErrorCode::InvalidRequest,
                message: "not a file path".into(),
                path: Some(target.display().to_string()),
            })?
            .to_path_buf();
        if parents {
            create_dirs(&dir, owner)?;
        }
        if target.is_dir() {
            return Err(err_at(&io::Error::from_raw_os_error(libc::EISDIR), &target));
        }
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.cove-{}", std::process::id() ^ rand_u32()));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| {
                // Report the directory the user named, not our temporary name.
                let mut a = err_at(&e, &tmp);
                a.path = Some(if dir.is_dir() {
                    target.display().to_string()
                } else {
                    dir.display().to_string()
                });
                a
            })?;
        Ok(Self {
            tmp,
            target,
            file: Some(file),
            committed: false,
            owner,
        })
    }

    fn commit(mut self, mode: u32) -> Result<(), AgentError> {
        let file = self.file.take().expect("not committed twice");
        let fail = |e: &io::Error, p: &Path| err_at(e, p);
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| fail(&e, &self.target))?;
        // The user asked for; else keep the owner of the file we replace, or take the
        // directory's: a file copied into a user's home belongs to that user.
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                .map_err(|e| fail(&e, &self.target))?;
        } else {
            let owner = std::fs::metadata(&self.target)
                .or_else(|_| std::fs::metadata(self.target.parent().unwrap_or(Path::new("/"))));
            if let Ok(m) = owner {
                let _ = std::os::unix::fs::fchown(&file, Some(m.uid()), Some(m.gid()));
            }
        }
        file.sync_all().map_err(|e| fail(&e, &self.target))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.target).map_err(|e| fail(&e, &self.target))?;
        self.committed = true;
        if let Some(dir) = self.target.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom writes at most 4 bytes into the valid buffer.
    let _ = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 4, 0) };
    u32::from_le_bytes(b)
}

/// `WriteFile`: the `Data` on stdin until `Eof` replaces the file atomically.
pub async fn write_file(
    path: String,
    mode: Option<u32>,
    parents: bool,
    user: Option<String>,
    ob: &Outbox,
    mut inbox: mpsc::UnboundedReceiver<Inbound>,
) -> Result<Reply, AgentError> {
    let target = absolute(&path)?;
    let mode = mode.unwrap_or(0o644) & 0o7777;
    let mut pending = {
        let t = target.clone();
        tokio::task::spawn_blocking(move || {
            PendingFile::create(t, parents, owner_of(user.as_deref())?)
        })
        .await
        .map_err(|e| internal(&e))??
    };
    // Writes happen on a blocking thread; chunks reach it through a small queue, and credit goes
    // back to the host only once a chunk is on disk.
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(8);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<usize>();
    let mut file = pending.file.take().expect("fresh file");
    let writer = tokio::task::spawn_blocking(move || -> io::Result<std::fs::File> {
        while let Some(chunk) = rx.blocking_recv() {
            file.write_all(&chunk)?;
            let _ = done_tx.send(chunk.len());
        }
        Ok(file)
    });
    let mut total = 0u64;
    let mut tx = Some(tx);
    loop {
        tokio::select! {
            ev = inbox.recv() => match ev {
                Some(Inbound::Data(Stream::Stdin, bytes)) => {
                    total += bytes.len() as u64;
                    if let Some(t) = &tx
                        && t.send(bytes).await.is_err()
                    {
                        break; // the writer failed; its error is reported below
                    }
                }
                Some(Inbound::Eof(Stream::Stdin)) => break,
                Some(Inbound::Cancel) | None => {
                    drop(tx.take());
                    let _ = writer.await;
                    return Err(cancelled()); // dropping `pending` removes the temporary file
                }
                Some(_) => {}
            },
            n = done_rx.recv() => match n {
                Some(n) => ob.grant(n).await,
                // The writer stopped before the end of the data: it failed, say why below
                // (the host may be waiting for credit that would never come).
                None => break,
            },
        }
    }
    drop(tx);
    let written = writer.await.map_err(|e| internal(&e))?;
    let file = match written {
        Ok(f) => f,
        Err(e) => return Err(err_at(&e, &target)),
    };
    pending.file = Some(file);
    tokio::task::spawn_blocking(move || pending.commit(mode))
        .await
        .map_err(|e| internal(&e))??;
    Ok(Reply::Done { bytes: total })
}
