//! File helpers of the host: atomic writes, sparse copies, sandbox disks, ids and clocks.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::HostError;
use crate::error::io_err;

/// Removes snapshot directories a cove-vm left half-written (it was killed mid-snapshot): they
/// are never trusted, only wasted space. Ten minutes old is far past any snapshot in progress.
pub(crate) fn remove_stale_partials(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let partial = p.extension().is_some_and(|x| x == "tmp" || x == "download");
        let stale = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(600));
        if partial && stale {
            let _ = std::fs::remove_dir_all(&p);
        }
    }
}

/// Opens a file a sandbox's jail may have written (its console log, its status and exit
/// records) for reading, the way the host must: without following a link (the jail could have
/// left one to a host file in its place), without blocking on a FIFO, and only if it is a
/// plain file.
pub fn open_untrusted(p: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(p)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a plain file"));
    }
    Ok(f)
}

/// Reads at most `max` bytes of a file a jail may have written (see [`open_untrusted`]).
pub(crate) fn read_untrusted(p: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    open_untrusted(p)?.take(max).read_to_end(&mut out)?;
    Ok(out)
}

/// The sha256 of a file, in hex.
pub(crate) fn sha256_file(path: &Path) -> Result<String, HostError> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(io_err("reading the guest's files", path))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(io_err("reading the guest's files", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

pub(crate) fn new_id() -> String {
    let mut b = [0u8; 6];
    // SAFETY: getrandom writes at most 6 bytes into the valid buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    assert_eq!(n, 6, "getrandom failed");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Writes a file under a temporary name, syncs it, and renames it into place.
///
/// The temporary file is made new (`O_EXCL`, no link followed) under a name no one can guess:
/// a sandbox's directory is writable by its jail, which must not have the host write `vm.json`
/// into a file of its own (it would then own the host's config).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), HostError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp.{}", new_id()));
    let r = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(0o644)
            .open(&tmp)?;
        std::io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.map_err(io_err("writing", path))
}

/// Reads a file the host wrote in a directory a jail may write (`vm.json`), refusing it unless
/// it is a plain file this process owns: a jail can make files there but not one of ours.
pub(crate) fn read_own(path: &Path, max: u64) -> Result<Vec<u8>, HostError> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let f = open_untrusted(path).map_err(io_err("reading", path))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let m = f.metadata().map_err(io_err("reading", path))?;
    if m.uid() != me || m.nlink() != 1 {
        return Err(HostError::Io {
            what: "refusing a file that is not the host's own (a jail may have made it)",
            path: path.display().to_string(),
            source: std::io::Error::other("owned by another user, or with more than one name"),
        });
    }
    let mut out = Vec::new();
    f.take(max)
        .read_to_end(&mut out)
        .map_err(io_err("reading", path))?;
    Ok(out)
}

/// A sandbox's `vm.json` (its VM's configuration), read as the host's own file.
pub(crate) fn vm_config(
    layout: &cove_model::SandboxDir,
) -> Result<cove_protocol::control::VmConfig, HostError> {
    let path = layout.vm_config();
    serde_json::from_slice(&read_own(&path, 1 << 20)?).map_err(|e| HostError::Io {
        what: "parsing vm.json",
        path: path.display().to_string(),
        source: std::io::Error::other(e),
    })
}

/// Copies a (sparse) file: a reflink where the filesystem can, holes kept otherwise. The copy
/// runs in a child process the caller awaits (no async worker is held while it copies).
pub(crate) async fn copy_sparse_file(from: &Path, to: &Path) -> Result<(), HostError> {
    let out = tokio::process::Command::new("cp")
        .args(["--reflink=auto", "--sparse=always"])
        .arg(from)
        .arg(to)
        .output()
        .await
        .map_err(io_err("copying the snapshot disk", from))?;
    if !out.status.success() {
        return Err(HostError::Io {
            what: "copying the snapshot disk",
            path: from.display().to_string(),
            source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        });
    }
    Ok(())
}

/// A sparse ext4 disk for the sandbox's own changes, holding the overlay's `upper` and `work`
/// directories already (the guest then mounts it without writing first). `mkfs.ext4` runs as a
/// child process the caller awaits.
pub(crate) async fn make_disk(path: &Path, mib: u32) -> Result<(), HostError> {
    let skel = path.with_file_name("disk-skel");
    for d in ["upper", "work"] {
        std::fs::create_dir_all(skel.join(d))
            .map_err(io_err("preparing the sandbox disk", &skel))?;
    }
    let f = std::fs::File::create(path).map_err(io_err("creating the sandbox disk", path))?;
    f.set_len(u64::from(mib) << 20)
        .map_err(io_err("sizing the sandbox disk", path))?;
    drop(f);
    let out = tokio::process::Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-L",
            "cove-rw",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1,nodiscard,root_owner=0:0",
        ])
        .arg("-d")
        .arg(&skel)
        .arg(path)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(io_err("running mkfs.ext4 (install e2fsprogs)", path))?;
    let _ = std::fs::remove_dir_all(&skel);
    if !out.status.success() {
        return Err(HostError::Io {
            what: "formatting the sandbox disk",
            path: path.display().to_string(),
            source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        });
    }
    Ok(())
}
