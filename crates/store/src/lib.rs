//! The blob store: snapshots and hibernated sandboxes, through `object_store`.
//!
//! Shared by the host (snapshots, `cove hibernate`) and cove-vm (an idle hibernation).
//!
//! A local folder (`$COVE_HOME/blobs`) by default, or an S3 bucket (any S3-compatible server:
//! `COVE_BLOBS=s3://BUCKET[/PREFIX]`, see [`BlobStore::from_url`]), which hosts sharing it
//! resume each other's hibernations from. Each snapshot directory becomes objects under a
//! prefix, one per file. Sparse files (guest
//! memory, disks) are stored in a sparse container so a 256 MiB guest that touched 40 MiB costs
//! 40 MiB:
//!
//! ```text
//! "COVESPR1" | size: u64 | segments: u64 | (offset: u64, len: u64) × segments | data …
//! ```
//!
//! (all little-endian). Integrity is not this layer's job: the snapshot manifest's checksums are
//! verified by the engine before anything is restored.

pub mod verified;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use futures::StreamExt;
use object_store::ObjectStore;
use object_store::ObjectStoreExt;
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use tokio::io::AsyncWriteExt;

const MAGIC: &[u8; 8] = b"COVESPR1";

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object store refused or failed.
    #[error("blob store: {0}")]
    Store(#[from] object_store::Error),
    /// A local file operation failed.
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
    /// A stored sparse container is malformed.
    #[error("stored object {0} is malformed")]
    Malformed(String),
    /// The store's address cannot be used.
    #[error("blob store {url}: {why}")]
    Config {
        /// As given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.display().to_string();
    move |source| StoreError::Io { what, path, source }
}

/// Files kept sparse in the store.
fn is_sparse(name: &str) -> bool {
    name == "memory" || name.starts_with("disk")
}

/// Where snapshots and hibernated sandboxes are kept.
#[derive(Debug, Clone)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    /// The folder of a local store.
    root: Option<std::path::PathBuf>,
    /// What [`BlobStore::from_url`] opens it again from (another process of this host).
    url: String,
}

impl BlobStore {
    /// The local-folder store of a Cove home (`HOME/blobs`).
    pub fn local(home: &Path) -> Result<Self, StoreError> {
        Self::at(&home.join("blobs"))
    }

    /// A local-folder store rooted at `root`.
    pub fn at(root: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(root).map_err(io("creating", root))?;
        Ok(Self {
            // Deleting a prefix leaves no empty folders behind (a removed sandbox's
            // `hibernations/ID/` used to stay).
            store: Arc::new(LocalFileSystem::new_with_prefix(root)?.with_automatic_cleanup(true)),
            root: Some(root.to_path_buf()),
            url: root.display().to_string(),
        })
    }

    /// The store `url` names:
    /// - `s3://BUCKET[/PREFIX]`: an S3 bucket, every key under `PREFIX`. The credentials,
    ///   region and server come from the usual environment (`AWS_ACCESS_KEY_ID`,
    ///   `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`; `AWS_ENDPOINT` for an S3-compatible server,
    ///   `AWS_ALLOW_HTTP=true` for one without TLS). Requests are path-style, which every
    ///   S3-compatible server serves.
    /// - `file://PATH` or a plain absolute path: a local folder.
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let bad = |why: &str| StoreError::Config {
            url: url.to_string(),
            why: why.to_string(),
        };
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("name a bucket: s3://BUCKET[/PREFIX]"));
            }
            let s3 = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_virtual_hosted_style_request(false)
                .build()
                .map_err(|e| bad(&e.to_string()))?;
            let prefix = prefix.trim_matches('/');
            let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
            };
            return Ok(Self {
                store,
                root: None,
                url: url.to_string(),
            });
        }
        let path = url.strip_prefix("file://").unwrap_or(url);
        if !path.starts_with('/') {
            return Err(bad("an s3://BUCKET[/PREFIX] address, or an absolute path"));
        }
        Self::at(Path::new(path))
    }

    /// Where the store is: its folder, or its `s3://` address (what [`BlobStore::from_url`]
    /// takes).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether the store is a folder of this host (not one hosts share).
    pub fn is_local(&self) -> bool {
        self.root.is_some()
    }

    /// Uploads every file of `dir` under `prefix`; the manifest goes last, so a listing that has
    /// one has everything.
    pub async fn upload_dir(&self, prefix: &str, dir: &Path) -> Result<(), StoreError> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map_err(io("reading", dir))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort_by_key(|n| (n == "manifest.json", n.clone()));
        for name in names {
            self.upload_file(
                &format!("{prefix}/{name}"),
                &dir.join(&name),
                is_sparse(&name),
            )
            .await?;
        }
        Ok(())
    }

    /// Uploads one file (sparse files in the sparse container).
    pub async fn upload_file(
        &self,
        key: &str,
        file: &Path,
        sparse: bool,
    ) -> Result<(), StoreError> {
        let mut w = BufWriter::new(self.store.clone(), ObjectPath::from(key));
        let r = Self::write_object(&mut w, file, sparse).await;
        if r.is_err() {
            // An S3 multipart upload cut short keeps its parts (unlisted, and billed) until
            // it is aborted.
            let _ = w.abort().await;
        }
        r
    }

    async fn write_object(w: &mut BufWriter, file: &Path, sparse: bool) -> Result<(), StoreError> {
        let mut f = std::fs::File::open(file).map_err(io("opening", file))?;
        let size = f.metadata().map_err(io("reading", file))?.len();
        let segments = if sparse {
            let segs = data_segments(&f, size).map_err(io("scanning", file))?;
            let mut head = Vec::with_capacity(24 + 16 * segs.len());
            head.extend_from_slice(MAGIC);
            head.extend_from_slice(&size.to_le_bytes());
            head.extend_from_slice(&(segs.len() as u64).to_le_bytes());
            for (o, l) in &segs {
                head.extend_from_slice(&o.to_le_bytes());
                head.extend_from_slice(&l.to_le_bytes());
            }
            w.write_all(&head).await.map_err(io("uploading", file))?;
            segs
        } else {
            vec![(0, size)]
        };
        let mut buf = vec![0u8; 1 << 20];
        for (off, len) in segments {
            f.seek(SeekFrom::Start(off)).map_err(io("reading", file))?;
            let mut left = len;
            while left > 0 {
                let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
                f.read_exact(&mut buf[..n]).map_err(io("reading", file))?;
                w.write_all(&buf[..n])
                    .await
                    .map_err(io("uploading", file))?;
                left -= n as u64;
            }
        }
        w.shutdown().await.map_err(io("uploading", file))?;
        Ok(())
    }

    /// Downloads every object under `prefix` into `dir` (created), written under a temporary
    /// name and renamed, so a failed download leaves nothing half-made.
    pub async fn download_dir(&self, prefix: &str, dir: &Path) -> Result<(), StoreError> {
        let tmp = dir.with_extension("download");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io("creating", &tmp))?;
        let r = async {
            let mut list = self.store.list(Some(&ObjectPath::from(prefix)));
            let mut names = Vec::new();
            while let Some(meta) = list.next().await {
                let meta = meta?;
                if let Some(name) = meta.location.filename() {
                    names.push(name.to_string());
                }
            }
            if !names.iter().any(|n| n == "manifest.json") {
                return Err(StoreError::Malformed(format!("{prefix} (no manifest)")));
            }
            for name in names {
                self.download_file(
                    &format!("{prefix}/{name}"),
                    &tmp.join(&name),
                    is_sparse(&name),
                )
                .await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = r {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        let _ = std::fs::remove_dir_all(dir);
        std::fs::rename(&tmp, dir).map_err(io("renaming", &tmp))
    }

    /// Downloads one object into `file` (a sparse container back into a sparse file).
    pub async fn download_file(
        &self,
        key: &str,
        file: &Path,
        sparse: bool,
    ) -> Result<(), StoreError> {
        let raw = if sparse {
            file.with_extension("sparse")
        } else {
            file.to_path_buf()
        };
        let mut out = std::fs::File::create(&raw).map_err(io("creating", &raw))?;
        let mut stream = self.store.get(&ObjectPath::from(key)).await?.into_stream();
        while let Some(chunk) = stream.next().await {
            out.write_all(&chunk?).map_err(io("writing", &raw))?;
        }
        out.sync_all().map_err(io("syncing", &raw))?;
        drop(out);
        if sparse {
            let r = unpack_sparse(&raw, file, key);
            let _ = std::fs::remove_file(&raw);
            r?;
        }
        Ok(())
    }

    /// Deletes every object under `prefix`.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<(), StoreError> {
        let mut list = self.store.list(Some(&ObjectPath::from(prefix)));
        let mut keys = Vec::new();
        while let Some(meta) = list.next().await {
            keys.push(meta?.location);
        }
        for k in keys {
            self.store.delete(&k).await?;
        }
        // An upload cut short (its coved killed) leaves a folder, and possibly staging files
        // (`NAME#N`), that no listing shows: in a local store the prefix's whole folder goes.
        let whole = !prefix.is_empty() && prefix.split('/').all(|c| !c.is_empty() && c != "..");
        if let (Some(root), true) = (&self.root, whole) {
            let dir = root.join(prefix);
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io("removing", &dir)(e));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Whether the object `key` exists; an error when the store cannot say (a failed
    /// request is not an absence: the caller would upload or fetch again for nothing).
    pub async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        match self.store.head(&ObjectPath::from(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Keys and sizes of the objects under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let mut list = self.store.list(Some(&ObjectPath::from(prefix)));
        let mut out = Vec::new();
        while let Some(meta) = list.next().await {
            let meta = meta?;
            out.push((meta.location.to_string(), meta.size));
        }
        Ok(out)
    }

    /// Deletes one object.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.store.delete(&ObjectPath::from(key)).await?;
        Ok(())
    }

    /// True when a complete upload exists under `prefix`.
    pub async fn has(&self, prefix: &str) -> bool {
        self.store
            .head(&ObjectPath::from(format!("{prefix}/manifest.json")))
            .await
            .is_ok()
    }
}

/// Writes the sparse container `packed` out as the sparse file `out`.
fn unpack_sparse(packed: &Path, out: &Path, key: &str) -> Result<(), StoreError> {
    let bad = || StoreError::Malformed(key.to_string());
    let mut f = std::fs::File::open(packed).map_err(io("opening", packed))?;
    let total = f.metadata().map_err(io("reading", packed))?.len();
    let mut head = [0u8; 24];
    f.read_exact(&mut head).map_err(|_| bad())?;
    if &head[..8] != MAGIC {
        return Err(bad());
    }
    let size = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
    let n = u64::from_le_bytes(head[16..24].try_into().expect("8 bytes"));
    // The segment table must fit in the object: a hostile count cannot make us allocate.
    if n.checked_mul(16).is_none_or(|t| t > total) {
        return Err(bad());
    }
    let mut table = vec![0u8; usize::try_from(n * 16).map_err(|_| bad())?];
    f.read_exact(&mut table).map_err(|_| bad())?;
    let mut o = std::fs::File::create(out).map_err(io("creating", out))?;
    o.set_len(size).map_err(io("sizing", out))?;
    let mut buf = vec![0u8; 1 << 20];
    for seg in table.chunks(16) {
        let off = u64::from_le_bytes(seg[..8].try_into().expect("8 bytes"));
        let len = u64::from_le_bytes(seg[8..].try_into().expect("8 bytes"));
        if off.checked_add(len).is_none_or(|end| end > size) {
            return Err(bad());
        }
        o.seek(SeekFrom::Start(off)).map_err(io("writing", out))?;
        let mut left = len;
        while left > 0 {
            let k = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
            f.read_exact(&mut buf[..k]).map_err(|_| bad())?;
            o.write_all(&buf[..k]).map_err(io("writing", out))?;
            left -= k as u64;
        }
    }
    o.sync_all().map_err(io("syncing", out))
}

/// Data segments of a file, `(offset, len)`, from `SEEK_DATA`/`SEEK_HOLE`.
pub fn data_segments(f: &std::fs::File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: i64 = 0;
    let end = i64::try_from(size).unwrap_or(i64::MAX);
    while pos < end {
        // SAFETY: lseek on a valid fd; no memory is touched.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        out.push((data.unsigned_abs(), (hole - data).unsigned_abs()));
        pos = hole;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_store_address_is_an_s3_bucket_or_an_absolute_folder() {
        let dir = tempfile::tempdir().unwrap();
        let local = BlobStore::from_url(&dir.path().display().to_string()).unwrap();
        assert!(local.is_local());
        let file = BlobStore::from_url(&format!("file://{}", dir.path().display())).unwrap();
        assert_eq!(file.url(), dir.path().display().to_string());
        for bad in ["s3://", "s3:///prefix", "relative/blobs", "gs://bucket"] {
            let e = BlobStore::from_url(bad).unwrap_err();
            assert!(matches!(e, StoreError::Config { .. }), "{bad}: {e}");
        }
        let s3 = BlobStore::from_url("s3://bucket/some/prefix/").unwrap();
        assert!(!s3.is_local());
        assert_eq!(s3.url(), "s3://bucket/some/prefix/");
    }
    use super::*;

    #[tokio::test]
    async fn deleting_a_prefix_takes_what_an_interrupted_upload_left() {
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::at(tmp.path()).unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("manifest.json"), b"{}").unwrap();
        store.upload_dir("hibernations/a", &src).await.unwrap();
        // What a killed upload leaves: a staging file no listing shows, and an empty folder.
        std::fs::write(tmp.path().join("hibernations/a/memory#1"), b"partial").unwrap();
        std::fs::create_dir_all(tmp.path().join("hibernations/b")).unwrap();
        store.delete_prefix("hibernations/a").await.unwrap();
        store.delete_prefix("hibernations/b").await.unwrap();
        assert!(!tmp.path().join("hibernations/a").exists());
        assert!(!tmp.path().join("hibernations/b").exists());
        assert!(tmp.path().join("src/manifest.json").exists());
    }

    #[tokio::test]
    async fn directories_roundtrip_sparse_and_plain() {
        let home = tempfile::tempdir().unwrap();
        let store = BlobStore::local(home.path()).unwrap();
        let src = home.path().join("snap");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("manifest.json"), b"{}").unwrap();
        std::fs::write(src.join("state"), vec![3u8; 5000]).unwrap();
        let mut m = std::fs::File::create(src.join("memory")).unwrap();
        m.set_len(64 << 20).unwrap();
        m.seek(SeekFrom::Start(7 << 20)).unwrap();
        m.write_all(&[9u8; 123_456]).unwrap();
        drop(m);
        store.upload_dir("snapshots/x", &src).await.unwrap();
        assert!(store.has("snapshots/x").await);
        let blob = home.path().join("blobs/snapshots/x/memory");
        assert!(
            std::fs::metadata(&blob).unwrap().len() < 200_000,
            "holes are not stored"
        );
        let dst = home.path().join("back");
        store.download_dir("snapshots/x", &dst).await.unwrap();
        for f in ["manifest.json", "state", "memory"] {
            assert_eq!(
                std::fs::read(src.join(f)).unwrap(),
                std::fs::read(dst.join(f)).unwrap(),
                "{f}"
            );
        }
        store.delete_prefix("snapshots/x").await.unwrap();
        assert!(!store.has("snapshots/x").await);
        assert!(
            !home.path().join("blobs/snapshots/x").exists(),
            "no empty folder is left"
        );
        assert!(
            store
                .download_dir("snapshots/x", &home.path().join("none"))
                .await
                .is_err()
        );
    }

    #[test]
    fn malformed_containers_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("p");
        let mut bad = MAGIC.to_vec();
        bad.extend_from_slice(&100u64.to_le_bytes());
        bad.extend_from_slice(&u64::MAX.to_le_bytes()); // absurd segment count
        std::fs::write(&p, &bad).unwrap();
        assert!(unpack_sparse(&p, &d.path().join("o"), "k").is_err());
        let mut bad = MAGIC.to_vec();
        bad.extend_from_slice(&100u64.to_le_bytes());
        bad.extend_from_slice(&1u64.to_le_bytes());
        bad.extend_from_slice(&90u64.to_le_bytes());
        bad.extend_from_slice(&50u64.to_le_bytes()); // past the end
        bad.extend_from_slice(&[0u8; 50]);
        std::fs::write(&p, &bad).unwrap();
        assert!(unpack_sparse(&p, &d.path().join("o"), "k").is_err());
    }
}
