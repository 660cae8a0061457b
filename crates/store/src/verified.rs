//! The record of snapshot files already checked against their manifest on this host
//! (`SNAPSHOT/verified.json`): a template is restored by every create of its image, and hashing
//! its memory each time would cost about as much as the rest of the restore, so a passed check
//! is remembered, keyed by the file's [`identity`]. cove-vm writes it when it saves or first
//! checks a snapshot; the host re-keys it when it seals one ([`rekey`]).

use std::path::Path;

/// What identifies a file's content on this host without reading it: device, inode, size, and
/// modification and change times. A file changed in place gets a new size or times, a replaced
/// one a new inode; the change time cannot be set back by anyone (a byte flipped and the mtime
/// restored with `touch -d` still shows), so only bit rot goes unseen: the scrub's job.
pub fn identity(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(format!(
        "{}:{}:{}:{}.{}:{}.{}",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    ))
}

/// The record, read as untrusted (a jail wrote it before its snapshot was sealed): no link
/// followed, a plain file only, at most 1 MiB.
fn read(snap: &Path) -> serde_json::Value {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let bytes = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(snap.join("verified.json"))
        .ok()
        .filter(|f| f.metadata().is_ok_and(|m| m.is_file()))
        .and_then(|f| {
            let mut b = Vec::new();
            f.take(1 << 20).read_to_end(&mut b).ok().map(|_| b)
        });
    bytes
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(serde_json::Value::is_object)
        .unwrap_or_else(|| serde_json::json!({}))
}

/// What is remembered of `snap/name`, if its file has not changed since.
pub fn current(snap: &Path, name: &str) -> Option<serde_json::Value> {
    let v = read(snap);
    let entry = v.get(name)?;
    let id = identity(&snap.join(name))?;
    (entry["identity"] == id.as_str()).then(|| entry.clone())
}

/// Sets `key` in `snap/verified.json` (best effort, replaced atomically: a failed write only
/// costs a new check).
pub fn remember(snap: &Path, key: &str, value: serde_json::Value) {
    let mut v = read(snap);
    v[key] = value;
    write(snap, &v);
}

fn write(snap: &Path, v: &serde_json::Value) {
    use std::io::Write as _;
    let path = snap.join("verified.json");
    let tmp = snap.join(format!("verified.json.{}", std::process::id()));
    // A new file only (never through a link someone left at that name), then renamed over.
    let _ = std::fs::remove_file(&tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| f.write_all(v.to_string().as_bytes()));
    if written.is_ok() {
        let _ = std::fs::rename(&tmp, &path);
    } else {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// Runs `change` (which changes the files' owner and mode, and so their change time) and, when
/// it succeeds, keeps remembered what was current before it: the entries then name the files'
/// new identities. Entries that were stale stay stale. Returns what `change` returned.
pub fn rekey<T, E>(snap: &Path, change: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    let v = read(snap);
    let fresh: Vec<String> = v
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(name, e)| {
            (e.get("blake3").is_some() || e.get("sha256").is_some())
                && identity(&snap.join(name)).is_some_and(|id| e["identity"] == id.as_str())
        })
        .map(|(name, _)| name.clone())
        .collect();
    let out = change()?;
    if !fresh.is_empty() {
        let mut v = v;
        for name in fresh {
            if let Some(id) = identity(&snap.join(&name)) {
                v[&name]["identity"] = id.into();
            }
        }
        write(snap, &v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_in_place_with_the_mtime_put_back_is_seen() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("memory");
        std::fs::write(&f, b"abcd").unwrap();
        remember(
            t.path(),
            "memory",
            serde_json::json!({"identity": identity(&f).unwrap(), "sha256": "x", "size": 4}),
        );
        assert!(current(t.path(), "memory").is_some());
        let before = std::fs::metadata(&f).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&f, b"abce").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(before)
            .unwrap();
        assert!(current(t.path(), "memory").is_none());
    }

    #[test]
    fn rekey_keeps_what_was_current_and_only_that() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        for (name, p) in [("a", &a), ("b", &b)] {
            remember(
                t.path(),
                name,
                serde_json::json!({"identity": identity(p).unwrap(), "sha256": "x", "size": 1}),
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&b, b"B").unwrap(); // stale from here on
        rekey(t.path(), || {
            for p in [&a, &b] {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o444))?;
            }
            std::io::Result::Ok(())
        })
        .unwrap();
        assert!(current(t.path(), "a").is_some());
        assert!(current(t.path(), "b").is_none());
    }
}
