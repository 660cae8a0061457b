//! One unprivileged user per sandbox, from a configured range, held for the sandbox's whole
//! life (so its files keep their owner across stops, hibernations and wakes) and released when
//! it is removed.
//!
//! A lease is a file `DIR/UID` naming its holder (the host passes the sandbox's directory,
//! unique on the host whichever Cove home it is in), created with `O_EXCL`: two creates racing
//! for a user cannot both win, and a lease outlives a crash of the process that took it. The
//! start-up sweep releases the leases of sandboxes that no longer exist.

use std::io::Write;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

/// The users sandboxes run as unless configured (`COVE_JAIL_UIDS`): far above any login user
/// or the usual subordinate-id ranges.
pub const DEFAULT_RANGE: RangeInclusive<u32> = 3_000_000_000..=3_000_999_999;

/// Why a user could not be leased.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Every user of the range is held.
    #[error("every user in {0:?} is held by a sandbox; widen COVE_JAIL_UIDS")]
    Exhausted(RangeInclusive<u32>),
    /// The lease directory could not be used.
    #[error("leasing a sandbox user in {path}")]
    Io {
        /// The lease directory.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The leases of one host.
#[derive(Debug, Clone)]
pub struct Leases {
    dir: PathBuf,
    range: RangeInclusive<u32>,
}

impl Leases {
    /// Leases kept in `dir`, of users in `range`.
    pub fn new(dir: impl Into<PathBuf>, range: RangeInclusive<u32>) -> Self {
        Self {
            dir: dir.into(),
            range,
        }
    }

    /// Parses `START-END` (inclusive), as `COVE_JAIL_UIDS` takes it. Root (0) is refused.
    pub fn parse_range(s: &str) -> Option<RangeInclusive<u32>> {
        let (a, b) = s.split_once('-')?;
        let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        (a > 0 && a <= b && b < u32::MAX).then_some(a..=b)
    }

    fn io(&self) -> impl FnOnce(std::io::Error) -> LeaseError + '_ {
        |source| LeaseError::Io {
            path: self.dir.display().to_string(),
            source,
        }
    }

    /// The user sandbox `id` holds, if it holds one.
    pub fn held(&self, id: &str, uid: u32) -> bool {
        self.range.contains(&uid)
            && std::fs::read_to_string(self.dir.join(uid.to_string())).is_ok_and(|s| s == id)
    }

    /// Leases a free user to sandbox `id`. The search starts at a point drawn from the id, so
    /// creates do not all probe the same users first.
    pub fn acquire(&self, id: &str) -> Result<u32, LeaseError> {
        std::fs::create_dir_all(&self.dir).map_err(self.io())?;
        let (start, end) = (*self.range.start(), *self.range.end());
        let span = u64::from(end - start) + 1;
        let seed = id
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        for i in 0..span {
            let uid = start + u32::try_from((seed + i) % span).expect("within the range");
            let path = self.dir.join(uid.to_string());
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(id.as_bytes()).map_err(self.io())?;
                    f.sync_all().map_err(self.io())?;
                    return Ok(uid);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(self.io()(e)),
            }
        }
        Err(LeaseError::Exhausted(self.range.clone()))
    }

    /// Releases `uid` if sandbox `id` holds it.
    pub fn release(&self, id: &str, uid: u32) {
        if self.held(id, uid) {
            let _ = std::fs::remove_file(self.dir.join(uid.to_string()));
        }
    }

    /// Every lease: (user, sandbox id).
    pub fn all(&self) -> Vec<(u32, String)> {
        std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let uid = e.file_name().to_str()?.parse().ok()?;
                Some((uid, std::fs::read_to_string(e.path()).ok()?))
            })
            .collect()
    }

    /// Releases every lease whose sandbox `exists` says is gone; returns how many.
    pub fn sweep(&self, exists: impl Fn(&str) -> bool) -> usize {
        let mut n = 0;
        for (uid, id) in self.all() {
            // Read again just before: the user may have been released and leased anew since.
            if !exists(&id) && self.held(&id, uid) && remove(&self.dir.join(uid.to_string())) {
                n += 1;
            }
        }
        n
    }
}

fn remove(p: &Path) -> bool {
    std::fs::remove_file(p).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_is_leased_once_and_released_by_its_holder_only() {
        let t = tempfile::tempdir().unwrap();
        let l = Leases::new(t.path(), 10..=11);
        let a = l.acquire("aaa").unwrap();
        let b = l.acquire("bbb").unwrap();
        assert_ne!(a, b);
        assert!(matches!(l.acquire("ccc"), Err(LeaseError::Exhausted(_))));
        l.release("bbb", a); // not its lease
        assert!(l.held("aaa", a));
        l.release("aaa", a);
        assert_eq!(l.acquire("ccc").unwrap(), a);
        assert_eq!(l.sweep(|id| id == "ccc"), 1);
        assert_eq!(l.all(), vec![(a, "ccc".to_string())]);
    }

    #[test]
    fn ranges_parse_and_never_include_root() {
        assert_eq!(Leases::parse_range("5-9"), Some(5..=9));
        assert_eq!(Leases::parse_range("0-9"), None);
        assert_eq!(Leases::parse_range("9-5"), None);
        assert_eq!(Leases::parse_range("x"), None);
    }
}
