//! The scrub: every snapshot, template and hibernation kept on this host hashed again in full
//! and compared with its manifest. A restore trusts a check it remembers while the file's
//! identity (inode, size, times) is unchanged; bit rot changes none of those, so only reading
//! everything finds it. The hashing is cove-vm's (`--verify-snapshot`), the one reader of a
//! snapshot's manifest.

use std::path::PathBuf;

use cove_model::{Held, SandboxState, ScrubAction, ScrubFinding, Scrubbed};

use crate::{Host, HostError, supervisor};

/// Whether `dir` is a directory (not a link) the host owns: a sealed snapshot.
fn sealed_dir(dir: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir() && m.uid() == me)
}

impl Host {
    /// Hashes every file of the snapshot in `dir` (cove-vm `--verify-snapshot`, unjailed: it
    /// only reads, and remembers each pass in the snapshot's record). A mismatch is
    /// [`HostError::SnapshotCorrupted`] naming the file; a snapshot that could not be read,
    /// another error.
    pub(crate) async fn verify_snapshot(&self, dir: &std::path::Path) -> Result<(), HostError> {
        let o = tokio::process::Command::new(supervisor::vm_binary())
            .arg("--dir")
            .arg(dir)
            .arg("--verify-snapshot")
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|source| HostError::Io {
                what: "starting cove-vm to check a snapshot",
                path: dir.display().to_string(),
                source,
            })?;
        match o.status.code() {
            Some(0) => Ok(()),
            Some(3) => Err(HostError::SnapshotCorrupted(
                String::from_utf8_lossy(&o.stdout).trim().to_string(),
            )),
            _ => Err(HostError::Io {
                what: "checking a snapshot",
                path: dir.display().to_string(),
                source: std::io::Error::other(
                    String::from_utf8_lossy(&o.stderr).trim().to_string(),
                ),
            }),
        }
    }

    /// Scrubs every copy kept here, one after another (it reads everything: a scrub is meant to
    /// run in the background, coved's every `COVE_SCRUB_HOURS`). A corrupted copy loses its
    /// remembered check (a restore hashes it and refuses it) and, when the blob store holds the
    /// snapshot too, is removed so the next restore fetches that copy.
    /// `only`: just this snapshot or hibernated sandbox (its id).
    pub async fn scrub(&self, only: Option<&str>) -> Result<Scrubbed, HostError> {
        let mut targets: Vec<(Held, String, PathBuf, String)> = Vec::new();
        for s in self.db.list_snapshots()? {
            let dir = self.home.join("snapshots").join(&s.id);
            let held = if s.template {
                Held::Template
            } else {
                Held::Snapshot
            };
            targets.push((held, s.id.clone(), dir, format!("snapshots/{}", s.id)));
        }
        for r in self.db.list()? {
            if r.state == SandboxState::Hibernated {
                let key = format!("hibernations/{}", r.id);
                targets.push((
                    Held::Hibernation,
                    r.id.clone(),
                    r.layout().hibernation(),
                    key,
                ));
            }
        }
        if let Some(only) = only {
            targets.retain(|t| t.1 == only);
        }
        let mut out = Scrubbed::default();
        for (held, id, dir, key) in targets {
            // A hibernation is checked as the sandbox's operation (a resume waits for no scrub
            // but a scrub never reads what a resumed jail writes next): still hibernated, and
            // its directory still the sealed one (the host's, not a link).
            let _busy = (held == Held::Hibernation).then(|| self.busy(&id));
            if held == Held::Hibernation
                && (!matches!(self.db.find(&id), Ok(Some(r)) if r.state == SandboxState::Hibernated)
                    || !sealed_dir(&dir))
            {
                continue;
            }
            if !dir.join("manifest.json").is_file() {
                continue; // only in the blob store: checked when it is fetched
            }
            out.checked += 1;
            let error = match self.verify_snapshot(&dir).await {
                Ok(()) => continue,
                Err(HostError::SnapshotCorrupted(reason)) => reason,
                Err(e) => {
                    tracing::warn!("scrub: {} could not be checked: {e}", dir.display());
                    continue;
                }
            };
            let _ = std::fs::remove_file(dir.join("verified.json"));
            let action = if self.blobs.has(&key).await && std::fs::remove_dir_all(&dir).is_ok() {
                ScrubAction::Refetch
            } else {
                ScrubAction::Refused
            };
            tracing::warn!("scrub: {held:?} {id}: {error} ({action:?})");
            out.corrupted.push(ScrubFinding {
                held,
                id,
                error,
                action,
            });
        }
        Ok(out)
    }
}
