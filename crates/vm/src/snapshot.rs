//! Snapshot directories: the engine's state, the guest memory, the manifest.
//!
//! ```text
//! DIR/manifest.json   format, engine and version, CPU model, memory size, vCPUs, and for each
//!                     file its size and sparse sum (see below)
//! DIR/state           the engine's device state (QEMU: its migration stream, RAM excluded)
//! DIR/memory          guest RAM, sparse: pages never touched are holes
//! ```
//!
//! A snapshot is written into `DIR.tmp`, every file fsynced, then renamed to `DIR`: a crash
//! leaves either no snapshot or a whole one. Restoring checks the manifest against this engine
//! and verifies every checksum before the VM starts, so a corrupted or foreign snapshot is refused,
//! never half-restored.
//!
//! The sparse sum of a file hashes, for each 4 KiB page that is not all zeros, its offset
//! (u64 LE) and its bytes, in order. Pages are found through `SEEK_DATA`/`SEEK_HOLE`, so holes
//! cost nothing to hash or copy, and the sum does not depend on whether zeros are stored as
//! holes or as bytes. Format 2 (`blake3`) is BLAKE3 of two BLAKE3 digests: of the non-zero
//! pages' bytes, concatenated, and of their offsets (u64 LE); the pages are hashed in whole
//! runs, which BLAKE3's SIMD takes 3.8× as fast as SHA-256 with the CPU's SHA extensions
//! (and the interleaved form of format 1 would take at 2.2× SHA-256's time). That is what
//! the first restore of a snapshot fetched from the blob store waits for. Format 1's SHA-256
//! sums (`sha256`) are still read.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use cove_model::{Accel, VmEngine};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Version of the snapshot layout this build writes (it reads this one and every earlier one).
pub const FORMAT: u32 = 2;

/// Why a snapshot could not be written or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file operation failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The manifest is missing or unreadable.
    #[error("snapshot manifest {0} is unreadable: {1}")]
    Manifest(String, String),
    /// The snapshot cannot run here.
    #[error("snapshot is incompatible: {0}")]
    Incompatible(String),
    /// A file does not match its checksum.
    #[error("snapshot file {0} is corrupted (checksum mismatch)")]
    Corrupted(String),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.display().to_string();
    move |source| SnapshotError::Io { what, path, source }
}

/// One file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    /// Apparent size.
    pub size: u64,
    /// Sparse BLAKE3, hex (what this build writes).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub blake3: String,
    /// Sparse SHA-256, hex (what format 1 wrote).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
}

/// The hash of a sparse sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algo {
    /// What this build writes.
    Blake3,
    /// What format 1 wrote.
    Sha256,
}

impl FileSum {
    /// The hash this sum was made with (a sum is checked by making the same one).
    pub fn algo(&self) -> Algo {
        if self.blake3.is_empty() && !self.sha256.is_empty() {
            Algo::Sha256
        } else {
            Algo::Blake3
        }
    }

    /// Its hash's name and value, as `verified.json` keeps them.
    fn digest(&self) -> (&'static str, &str) {
        match self.algo() {
            Algo::Blake3 => ("blake3", &self.blake3),
            Algo::Sha256 => ("sha256", &self.sha256),
        }
    }
}

/// A sparse sum being made.
enum Hasher {
    /// The pages' bytes, and their offsets.
    Blake3(Box<(blake3::Hasher, blake3::Hasher)>),
    Sha256(Sha256),
}

impl Hasher {
    fn new(algo: Algo) -> Self {
        match algo {
            Algo::Blake3 => Self::Blake3(Box::default()),
            Algo::Sha256 => Self::Sha256(Sha256::new()),
        }
    }

    /// Adds a run of non-zero pages at `off` (whole pages, but for a file's last one).
    fn run(&mut self, off: u64, run: &[u8]) {
        match self {
            Self::Blake3(h) => {
                let (pages, offsets) = &mut **h;
                pages.update(run);
                for i in 0..run.len().div_ceil(PAGE) {
                    offsets.update(&(off + (i * PAGE) as u64).to_le_bytes());
                }
            }
            Self::Sha256(h) => {
                for (i, page) in run.chunks(PAGE).enumerate() {
                    h.update((off + (i * PAGE) as u64).to_le_bytes());
                    h.update(page);
                }
            }
        }
    }

    fn finish(self, size: u64) -> FileSum {
        match self {
            Self::Blake3(h) => {
                let (pages, offsets) = *h;
                let mut top = blake3::Hasher::new();
                top.update(pages.finalize().as_bytes());
                top.update(offsets.finalize().as_bytes());
                FileSum {
                    size,
                    blake3: top.finalize().to_hex().to_string(),
                    sha256: String::new(),
                }
            }
            Self::Sha256(h) => FileSum {
                size,
                blake3: String::new(),
                sha256: hex(&h.finalize()),
            },
        }
    }
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Layout version ([`FORMAT`]).
    pub format: u32,
    /// Engine that wrote it.
    pub engine: VmEngine,
    /// Its exact version (a migration stream is only read by the same QEMU).
    pub engine_version: String,
    /// Acceleration it ran under.
    pub accel: Accel,
    /// CPU model the guest saw.
    pub cpu: String,
    /// With the `host` model, the host CPU's feature flags: a restore needs them all.
    #[serde(default)]
    pub cpu_flags: Vec<String>,
    /// Guest memory.
    pub memory_mib: u32,
    /// vCPUs.
    pub cpus: u32,
    /// Seconds since the epoch.
    pub created_at: u64,
    /// `state` and `memory`.
    pub files: std::collections::BTreeMap<String, FileSum>,
    /// The guest had a network device (a restore must give it one, and only then).
    #[serde(default)]
    pub nic: bool,
}

impl Manifest {
    /// Reads and parses `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Self, SnapshotError> {
        let p = dir.join("manifest.json");
        let b = std::fs::read(&p)
            .map_err(|e| SnapshotError::Manifest(p.display().to_string(), e.to_string()))?;
        let m: Self = serde_json::from_slice(&b)
            .map_err(|e| SnapshotError::Manifest(p.display().to_string(), e.to_string()))?;
        if !(1..=FORMAT).contains(&m.format) {
            return Err(SnapshotError::Incompatible(format!(
                "layout version {} (this build reads 1 to {FORMAT})",
                m.format
            )));
        }
        Ok(m)
    }

    /// Writes `dir/manifest.json` and syncs it.
    pub fn write(&self, dir: &Path) -> Result<(), SnapshotError> {
        let p = dir.join("manifest.json");
        let mut f = File::create(&p).map_err(io("creating", &p))?;
        f.write_all(&serde_json::to_vec_pretty(self).expect("serializes"))
            .and_then(|()| f.sync_all())
            .map_err(io("writing", &p))
    }

    /// Refuses a snapshot this engine cannot run.
    pub fn check(
        &self,
        engine: VmEngine,
        engine_version: &str,
        cpu: &str,
        memory_mib: u32,
        cpus: u32,
    ) -> Result<(), SnapshotError> {
        let bad = |what: String| Err(SnapshotError::Incompatible(what));
        if self.engine != engine {
            return bad(format!("taken by engine {}, this is {engine}", self.engine));
        }
        if self.engine_version != engine_version {
            return bad(format!(
                "taken by {}, this host runs {engine_version}",
                self.engine_version
            ));
        }
        if self.cpu != cpu {
            return bad(format!(
                "taken with CPU model {}, this host gives {cpu}",
                self.cpu
            ));
        }
        if !self.cpu_flags.is_empty() {
            let here = host_cpu_flags();
            let missing: Vec<&str> = self
                .cpu_flags
                .iter()
                .filter(|f| !here.contains(f))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                return bad(format!("this host's CPU lacks {}", missing.join(" ")));
            }
        }
        if self.memory_mib != memory_mib || self.cpus != cpus {
            return bad(format!(
                "taken with {} MiB and {} vCPUs, asked to restore with {memory_mib} MiB and {cpus}",
                self.memory_mib, self.cpus
            ));
        }
        Ok(())
    }

    /// Refuses a restore whose device set differs from the snapshot's: a guest that had a
    /// network device gets one, a guest that had none gets none.
    pub fn check_nic(&self, nic: bool) -> Result<(), SnapshotError> {
        match (self.nic, nic) {
            (true, false) => Err(SnapshotError::Incompatible(
                "taken with a network device; restore it with a network (not mode none)".into(),
            )),
            (false, true) => Err(SnapshotError::Incompatible(
                "taken without a network device; restore it with network mode none".into(),
            )),
            _ => Ok(()),
        }
    }
}

/// The host CPU's feature flags (`/proc/cpuinfo`), sorted.
pub fn host_cpu_flags() -> Vec<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mut flags: Vec<String> = info
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, f)| f.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    flags.sort();
    flags
}

pub use cove_store::verified::{identity, remember};

/// Whether `snap/name` was checked against `want` on this host and has not changed since. A
/// template is restored by every create of its image: hashing its memory each time would cost
/// about as much as the rest of the restore (8 MiB take ~5 ms with the CPU's SHA extensions,
/// several times that without), so a check is remembered in `snap/verified.json`, keyed by the
/// file's identity and its sum. Both engines use it.
pub fn verified_before(snap: &Path, name: &str, want: &FileSum) -> bool {
    let (algo, digest) = want.digest();
    !digest.is_empty()
        && cove_store::verified::current(snap, name)
            .is_some_and(|e| e[algo] == digest && e["size"] == want.size)
}

/// Records that `snap/name` matched `sum` (best effort: a failed write only costs a new check).
pub fn remember_verified(snap: &Path, name: &str, sum: &FileSum) {
    let Some(id) = identity(&snap.join(name)) else {
        return;
    };
    let (algo, digest) = sum.digest();
    let mut entry = serde_json::json!({ "identity": id, "size": sum.size });
    entry[algo] = digest.into();
    remember(snap, name, entry);
}

/// Checks `snap/name` against the manifest's `want`, hashing it only when no passed check of
/// this very file is remembered; a pass is remembered.
pub fn verify(snap: &Path, name: &str, want: Option<&FileSum>) -> Result<(), SnapshotError> {
    if want.is_some_and(|w| verified_before(snap, name, w)) {
        return Ok(());
    }
    let path = snap.join(name);
    let got = match want {
        Some(w) => sum_like(&path, w)?,
        None => sum(&path)?,
    };
    accept(snap, name, want, &got)
}

/// Hashes every file of the snapshot in `snap` again, whatever was remembered, and compares
/// each with its manifest: the scrub, which finds what no file identity shows (bit rot), and
/// the host's check of a snapshot it fetched. Each pass is remembered (by the host, which runs
/// this unjailed: a jailed restore cannot write into a sealed snapshot, so without this a
/// fetched snapshot would be hashed at every restore).
///
/// Run as root on what a jail wrote: a manifest names only files of the snapshot's own
/// directory (one plain name each), and each is opened without following a link, without
/// blocking, and only if it is a plain file.
pub fn verify_all(snap: &Path) -> Result<usize, SnapshotError> {
    use std::os::unix::fs::OpenOptionsExt;
    let m = Manifest::read(snap)?;
    for (name, want) in &m.files {
        let plain_name = !name.is_empty()
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !plain_name {
            // Not a file of the snapshot: the manifest is what is corrupted.
            return Err(SnapshotError::Corrupted(
                snap.join("manifest.json").display().to_string(),
            ));
        }
        let path = snap.join(name);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .map_err(io("opening", &path))?;
        if !f.metadata().map_err(io("reading", &path))?.is_file() {
            return Err(SnapshotError::Corrupted(path.display().to_string()));
        }
        accept(snap, name, Some(want), &sum_of(f, &path, want.algo())?)?;
    }
    Ok(m.files.len())
}

/// Compares `got`, the sum of `snap/name` just computed, with the manifest's `want`: refuses a
/// mismatch, remembers a match.
pub fn accept(
    snap: &Path,
    name: &str,
    want: Option<&FileSum>,
    got: &FileSum,
) -> Result<(), SnapshotError> {
    if want != Some(got) {
        return Err(SnapshotError::Corrupted(
            snap.join(name).display().to_string(),
        ));
    }
    remember_verified(snap, name, got);
    Ok(())
}

/// Size of the pages the sparse sum and copy work in.
const PAGE: usize = 4096;

/// Calls `run(offset, bytes)` for every run of consecutive pages of `f` that are not all zeros
/// (at most 1 MiB each), in order.
fn for_each_run(
    f: &mut File,
    path: &Path,
    mut run: impl FnMut(u64, &[u8]) -> Result<(), SnapshotError>,
) -> Result<u64, SnapshotError> {
    let size = f.metadata().map_err(io("reading", path))?.len();
    let mut buf = vec![0u8; 1 << 20];
    for (off, len) in cove_store::data_segments(f, size).map_err(io("scanning", path))? {
        f.seek(SeekFrom::Start(off)).map_err(io("reading", path))?;
        let mut pos = off;
        let mut left = len;
        while left > 0 {
            let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
            f.read_exact(&mut buf[..n]).map_err(io("reading", path))?;
            let mut start = None;
            for (i, p) in buf[..n].chunks(PAGE).enumerate() {
                match (p.iter().any(|b| *b != 0), start) {
                    (true, None) => start = Some(i * PAGE),
                    (false, Some(s)) => {
                        run(pos + s as u64, &buf[s..i * PAGE])?;
                        start = None;
                    }
                    _ => {}
                }
            }
            if let Some(s) = start {
                run(pos + s as u64, &buf[s..n])?;
            }
            pos += n as u64;
            left -= n as u64;
        }
    }
    Ok(size)
}

/// Copies `src` to `dst`, leaving zero pages as holes, hashing as it goes (the sum a new
/// manifest holds); syncs `dst`.
pub fn copy_sparse(src: &Path, dst: &Path) -> Result<FileSum, SnapshotError> {
    let (size, h) = copy_sparse_with(src, dst, Some(Algo::Blake3))?;
    Ok(h.map(|h| h.finish(size)).expect("hashed"))
}

/// [`copy_sparse`] with the sum made as `want` was (to compare with it).
pub fn copy_sparse_like(src: &Path, dst: &Path, want: &FileSum) -> Result<FileSum, SnapshotError> {
    let (size, h) = copy_sparse_with(src, dst, Some(want.algo()))?;
    Ok(h.map(|h| h.finish(size)).expect("hashed"))
}

/// [`copy_sparse`] for a source already verified (see [`verified_before`]): nothing hashed.
pub fn copy_sparse_unhashed(src: &Path, dst: &Path) -> Result<(), SnapshotError> {
    copy_sparse_with(src, dst, None).map(|_| ())
}

/// The copy behind them: the source's size, and its sparse sum's hasher when `hash` names one.
fn copy_sparse_with(
    src: &Path,
    dst: &Path,
    hash: Option<Algo>,
) -> Result<(u64, Option<Hasher>), SnapshotError> {
    let mut s = File::open(src).map_err(io("opening", src))?;
    let size = s.metadata().map_err(io("reading", src))?.len();
    let mut d = File::create(dst).map_err(io("creating", dst))?;
    d.set_len(size).map_err(io("sizing", dst))?;
    let mut h = hash.map(Hasher::new);
    let mut next = 0u64; // where `d`'s cursor is
    // Whole runs of pages per write: a guest's memory is mostly long runs, and a write per
    // page cost more than the hashing.
    for_each_run(&mut s, src, |off, run| {
        if let Some(h) = h.as_mut() {
            h.run(off, run);
        }
        if off != next {
            d.seek(SeekFrom::Start(off)).map_err(io("writing", dst))?;
        }
        d.write_all(run).map_err(io("writing", dst))?;
        next = off + run.len() as u64;
        Ok(())
    })?;
    d.sync_all().map_err(io("syncing", dst))?;
    Ok((size, h))
}

/// The sparse sum of a file, as a new manifest holds it.
pub fn sum(path: &Path) -> Result<FileSum, SnapshotError> {
    sum_of(
        File::open(path).map_err(io("opening", path))?,
        path,
        Algo::Blake3,
    )
}

/// The sparse sum of a file made as `want` was (to compare with it).
pub fn sum_like(path: &Path, want: &FileSum) -> Result<FileSum, SnapshotError> {
    sum_of(
        File::open(path).map_err(io("opening", path))?,
        path,
        want.algo(),
    )
}

/// The sum of the open file `f` (at `path`, for errors) with `algo`.
fn sum_of(mut f: File, path: &Path, algo: Algo) -> Result<FileSum, SnapshotError> {
    let mut h = Hasher::new(algo);
    let size = for_each_run(&mut f, path, |off, run| {
        h.run(off, run);
        Ok(())
    })?;
    Ok(h.finish(size))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Syncs a directory (after creating or renaming entries in it).
pub fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host's check reads what a jail wrote: a manifest naming a file outside the
    /// snapshot, or a file that is a link, is refused as corrupted and nothing else is read;
    /// the plain files of a good one pass, and the pass is remembered.
    #[test]
    fn the_full_check_reads_only_plain_files_of_the_snapshot() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("secret");
        std::fs::write(&outside, b"host data").unwrap();
        let snap = d.path().join("snap");
        std::fs::create_dir(&snap).unwrap();
        std::fs::write(snap.join("memory"), b"guest memory").unwrap();
        let m = |files: Vec<(&str, FileSum)>| Manifest {
            format: FORMAT,
            engine: VmEngine::Qemu,
            engine_version: "x".into(),
            accel: Accel::Tcg,
            cpu: "max".into(),
            cpu_flags: vec![],
            memory_mib: 128,
            cpus: 1,
            created_at: 0,
            files: files.into_iter().map(|(n, s)| (n.to_string(), s)).collect(),
            nic: false,
        };
        let good = sum(&snap.join("memory")).unwrap();
        m(vec![("memory", good.clone())]).write(&snap).unwrap();
        assert_eq!(verify_all(&snap).unwrap(), 1);
        assert!(verified_before(&snap, "memory", &good));
        for name in ["../secret", "/etc/passwd", ".hidden"] {
            m(vec![(name, sum(&outside).unwrap())])
                .write(&snap)
                .unwrap();
            assert!(
                matches!(verify_all(&snap), Err(SnapshotError::Corrupted(p)) if p.ends_with("manifest.json")),
                "{name}"
            );
        }
        std::os::unix::fs::symlink(&outside, snap.join("state")).unwrap();
        m(vec![("state", sum(&outside).unwrap())])
            .write(&snap)
            .unwrap();
        assert!(verify_all(&snap).is_err(), "a link is not followed");
    }

    /// A snapshot of format 1 (SHA-256 sums) still verifies, and its tampered copy does not;
    /// new sums are BLAKE3, and each remembered check names its hash.
    #[test]
    fn format_one_sha256_sums_are_still_checked() {
        let d = tempfile::tempdir().unwrap();
        let snap = d.path().join("snap");
        std::fs::create_dir(&snap).unwrap();
        let memory = snap.join("memory");
        let mut f = File::create(&memory).unwrap();
        f.set_len(8 << 20).unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(&[9u8; 5000]).unwrap();
        drop(f);
        let new = sum(&memory).unwrap();
        assert_eq!(
            (new.algo(), new.blake3.len(), new.sha256.as_str()),
            (Algo::Blake3, 64, "")
        );
        // Format 1's sum of the same file: SHA-256 over the same (offset, page) sequence.
        let mut h = Sha256::new();
        for (i, page) in [9u8; 5000].chunks(PAGE).enumerate() {
            let mut p = page.to_vec();
            p.resize(PAGE, 0);
            h.update(((1u64 << 20) + (i * PAGE) as u64).to_le_bytes());
            h.update(&p);
        }
        let old = FileSum {
            size: 8 << 20,
            blake3: String::new(),
            sha256: hex(&h.finalize()),
        };
        assert_eq!(sum_like(&memory, &old).unwrap(), old);
        let mut m: serde_json::Value = serde_json::json!({
            "format": 1, "engine": "qemu", "engine_version": "x", "accel": "tcg", "cpu": "max",
            "memory_mib": 8, "cpus": 1, "created_at": 0,
            "files": {"memory": {"size": 8 << 20, "sha256": old.sha256}},
        });
        std::fs::write(snap.join("manifest.json"), m.to_string()).unwrap();
        assert_eq!(Manifest::read(&snap).unwrap().files["memory"], old);
        assert_eq!(verify_all(&snap).unwrap(), 1);
        assert!(verified_before(&snap, "memory", &old));
        assert!(
            !verified_before(&snap, "memory", &new),
            "remembered under its own hash"
        );
        // A changed byte fails the old sum as it fails a new one.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&memory)
            .unwrap();
        f.seek(SeekFrom::Start((1 << 20) + 10)).unwrap();
        f.write_all(&[8]).unwrap();
        drop(f);
        assert!(matches!(
            verify_all(&snap),
            Err(SnapshotError::Corrupted(_))
        ));
        // A later format than this build's is refused by name.
        m["format"] = (FORMAT + 1).into();
        std::fs::write(snap.join("manifest.json"), m.to_string()).unwrap();
        assert!(matches!(
            Manifest::read(&snap),
            Err(SnapshotError::Incompatible(_))
        ));
    }

    #[test]
    fn sparse_copy_keeps_holes_and_checksums_match() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        let mut f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::Start(5 << 20)).unwrap();
        f.write_all(&[7u8; 10_000]).unwrap();
        f.seek(SeekFrom::Start(40 << 20)).unwrap();
        f.write_all(b"tail").unwrap();
        drop(f);
        let dst = d.path().join("dst");
        let a = copy_sparse(&src, &dst).unwrap();
        assert_eq!(a, sum(&dst).unwrap());
        assert_eq!(a, sum(&src).unwrap());
        // Zeros written out as bytes sum the same as holes.
        let dense = d.path().join("dense");
        std::fs::write(&dense, std::fs::read(&src).unwrap()).unwrap();
        assert_eq!(sum(&dense).unwrap(), a);
        // The same bytes at other offsets are another file.
        let moved = d.path().join("moved");
        let mut f = File::create(&moved).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::Start(6 << 20)).unwrap();
        f.write_all(&[7u8; 10_000]).unwrap();
        f.seek(SeekFrom::Start(40 << 20)).unwrap();
        f.write_all(b"tail").unwrap();
        drop(f);
        assert_ne!(sum(&moved).unwrap(), a);
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        use std::os::unix::fs::MetadataExt;
        assert!(
            std::fs::metadata(&dst).unwrap().blocks() * 512 < 1 << 20,
            "holes stay holes"
        );
        // One changed byte changes the sum.
        let mut f = std::fs::OpenOptions::new().write(true).open(&dst).unwrap();
        f.seek(SeekFrom::Start((5 << 20) + 3)).unwrap();
        f.write_all(&[8]).unwrap();
        drop(f);
        assert_ne!(sum(&dst).unwrap(), a);
    }

    #[test]
    fn copies_coalesce_runs_across_chunks_and_keep_zero_pages_inside_them_as_holes() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        let mut f = File::create(&src).unwrap();
        f.set_len(8 << 20).unwrap();
        // A run across the first 1 MiB read boundary, one zero page inside it, a run that
        // ends exactly at a boundary, and a lone last page.
        let mut run = vec![0u8; 6 * PAGE];
        for (i, b) in run.iter_mut().enumerate() {
            *b = u8::try_from(i % 251).unwrap() | 1;
        }
        run[3 * PAGE..4 * PAGE].fill(0);
        f.seek(SeekFrom::Start((1 << 20) - 2 * PAGE as u64))
            .unwrap();
        f.write_all(&run).unwrap();
        f.seek(SeekFrom::Start((3 << 20) - 3 * PAGE as u64))
            .unwrap();
        f.write_all(&[9u8; 3 * PAGE]).unwrap();
        f.seek(SeekFrom::Start((8 << 20) - PAGE as u64)).unwrap();
        f.write_all(&[5u8; PAGE]).unwrap();
        drop(f);
        let hashed = d.path().join("hashed");
        let unhashed = d.path().join("unhashed");
        let a = copy_sparse(&src, &hashed).unwrap();
        copy_sparse_unhashed(&src, &unhashed).unwrap();
        assert_eq!(
            a,
            sum(&src).unwrap(),
            "run-wise hashing is the page-wise sum"
        );
        assert_eq!(std::fs::metadata(&unhashed).unwrap().len(), 8 << 20);
        let want = std::fs::read(&src).unwrap();
        assert_eq!(std::fs::read(&hashed).unwrap(), want);
        assert_eq!(std::fs::read(&unhashed).unwrap(), want);
        use std::os::unix::fs::MetadataExt;
        for p in [&hashed, &unhashed] {
            // 5 + 3 + 1 data pages; the zero page inside the first run stays a hole.
            assert!(std::fs::metadata(p).unwrap().blocks() * 512 <= 9 * PAGE as u64);
        }
    }

    #[test]
    fn manifest_checks_refuse_other_engines_and_sizes() {
        let m = Manifest {
            format: FORMAT,
            engine: VmEngine::Qemu,
            engine_version: "7.2".into(),
            accel: Accel::Tcg,
            cpu: "max".into(),
            cpu_flags: vec![],
            memory_mib: 256,
            cpus: 1,
            created_at: 0,
            files: Default::default(),
            nic: true,
        };
        assert!(m.check(VmEngine::Qemu, "7.2", "max", 256, 1).is_ok());
        assert!(m.check_nic(true).is_ok());
        assert!(m.check_nic(false).is_err());
        for e in [
            m.check(VmEngine::Kvm, "7.2", "max", 256, 1),
            m.check(VmEngine::Qemu, "8.0", "max", 256, 1),
            m.check(VmEngine::Qemu, "7.2", "host", 256, 1),
            m.check(VmEngine::Qemu, "7.2", "max", 512, 1),
        ] {
            assert!(
                e.unwrap_err()
                    .to_string()
                    .starts_with("snapshot is incompatible")
            );
        }
        let d = tempfile::tempdir().unwrap();
        let foreign = Manifest {
            cpu_flags: vec!["no-such-cpu-feature".into()],
            ..m.clone()
        };
        let e = foreign
            .check(VmEngine::Qemu, "7.2", "max", 256, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no-such-cpu-feature"), "{e}");
        std::fs::write(d.path().join("manifest.json"), br#"{"format": 99}"#).unwrap();
        assert!(Manifest::read(d.path()).is_err());
    }
}
