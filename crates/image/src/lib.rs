//! Cove's images: any OCI or Docker image becomes an ext4 disk that sandboxes share read-only.
//!
//! Sources: OCI distribution registries ([`Images::pull`]), `docker save` archives and OCI
//! layouts, as a directory or a tar ([`Images::import`]), and plain directories
//! ([`Images::import_rootfs`], which packs the directory into a one-layer image first). All of
//! them meet in one pipeline: layers are verified (the compressed digest from the manifest and
//! the uncompressed `diff_id` from the config), stacked in a staging directory by
//! [`unpack::Unpacker`], and written to a disk with `mkfs.ext4 -d` (no loop mounts).
//!
//! Layout under the Cove home:
//! ```text
//! images/HEX/rootfs.ext4     the disk (HEX: the manifest digest's hex)
//! images/HEX/image.json      ImageMeta: digest, config, layers, sizes
//! images/HEX/manifest.json   the manifest and the config, as pulled
//! images/HEX/config.json
//! images/.locks/HEX.lock     held while an image is built: concurrent pulls do the work once
//! tmp/images/                staging (removed by the next builder of the same digest)
//! ```
//! Layers pulled from registries are kept in the blob store under `layers/sha256/HEX`, and every
//! built image under `images/HEX/`, so another host can fetch instead of rebuilding.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use cove_store::{BlobStore, StoreError};
use futures::{StreamExt as _, TryStreamExt as _};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

mod disk;
mod registry;
mod source;
pub mod unpack;

pub use registry::{PullOptions, docker_credentials, parse_reference};
pub use source::write_rootfs_layout;

/// Errors of the image pipeline.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A layer is not a readable (compressed) tar stream.
    #[error("a layer is not a valid tar stream: {0}")]
    Layer(std::io::Error),
    /// A layer entry would escape the root or is otherwise unsafe.
    #[error("refused the image: entry {entry:?}: {why}")]
    UnsafeEntry {
        /// The entry's name as written in the layer.
        entry: String,
        /// Why it was refused.
        why: String,
    },
    /// Content does not match its digest.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    Digest {
        /// The blob.
        what: String,
        /// From the manifest or config.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// The image's metadata is malformed or inconsistent.
    #[error("malformed image: {0}")]
    Malformed(String),
    /// The image is valid but Cove cannot run it.
    #[error("unsupported image: {0}")]
    Unsupported(String),
    /// The registry refused or failed.
    #[error("registry: {0}")]
    Registry(String),
    /// A reference could not be parsed.
    #[error("invalid image reference {reference:?}: {why}")]
    Reference {
        /// As given.
        reference: String,
        /// Why.
        why: String,
    },
    /// `mkfs.ext4` failed.
    #[error("building the image disk: {0}")]
    Mkfs(String),
    /// The blob store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ImageError {
    pub(crate) fn io(what: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            what,
            path: path.display().to_string(),
            source,
        }
    }
}

/// How an image's processes run by default (from the OCI config).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageConfig {
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// Default working directory.
    pub workdir: Option<String>,
    /// Default user (`name`, `uid`, `uid:gid`, `name:group`).
    pub user: Option<String>,
    /// Prepended to the default command.
    pub entrypoint: Vec<String>,
    /// Default command.
    pub cmd: Vec<String>,
}

impl ImageConfig {
    /// The environment as pairs.
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect()
    }

    /// What runs when no command is given: the entrypoint followed by the command.
    pub fn default_argv(&self) -> Vec<String> {
        self.entrypoint
            .iter()
            .chain(self.cmd.iter())
            .cloned()
            .collect()
    }
}

/// One layer as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// Digest of the blob as stored (compressed).
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// Blob size in bytes.
    pub size: u64,
    /// Digest of the uncompressed tar.
    pub diff_id: String,
}

/// An installed image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMeta {
    /// The manifest digest (`sha256:…`): the image's identity.
    pub digest: String,
    /// The config blob's digest.
    pub config_digest: String,
    /// Where it came from (a reference, an archive path, a directory).
    pub source: String,
    /// When it was installed, milliseconds since the epoch.
    pub created_at: i64,
    /// Layers, bottom first.
    pub layers: Vec<LayerInfo>,
    /// Bytes of file content in the root filesystem.
    pub content_bytes: u64,
    /// Entries in the root filesystem.
    pub entries: u64,
    /// Device nodes left out (see docs/images.md).
    pub devices_skipped: u64,
    /// Size of the disk file.
    pub disk_bytes: u64,
    /// How processes run by default.
    pub config: ImageConfig,
    /// Names the source gave the image (docker `RepoTags`, a layout's image name).
    #[serde(default)]
    pub source_names: Vec<String>,
}

impl ImageMeta {
    /// The digest's hex: the image's directory name.
    pub fn hex(&self) -> &str {
        self.digest.strip_prefix("sha256:").unwrap_or(&self.digest)
    }

    /// The short id shown in listings.
    pub fn short_id(&self) -> &str {
        &self.hex()[..12.min(self.hex().len())]
    }
}

/// What the pipeline is doing, for progress displays (and, as JSON, coved's pull progress,
/// which the CLI reads back).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The manifest is known.
    Resolved {
        /// The manifest digest.
        digest: String,
        /// Number of layers.
        layers: usize,
        /// Their total (compressed) size.
        bytes: u64,
    },
    /// The image is already installed: nothing to do.
    Installed {
        /// The manifest digest.
        digest: String,
    },
    /// A layer download starts.
    Download {
        /// The layer digest.
        digest: String,
        /// Its size.
        size: u64,
    },
    /// Bytes of a layer arrived.
    Downloaded {
        /// The layer digest.
        digest: String,
        /// Bytes so far.
        done: u64,
    },
    /// A layer was found in the blob store and not downloaded.
    LayerCached {
        /// The layer digest.
        digest: String,
        /// Its size.
        size: u64,
    },
    /// Unpacking a layer.
    Unpack {
        /// 0-based index.
        index: usize,
        /// Layers in all.
        of: usize,
        /// Compressed bytes read so far of this layer.
        done: u64,
        /// Its compressed size.
        size: u64,
    },
    /// Writing the ext4 disk.
    Disk {
        /// Content bytes going in.
        bytes: u64,
    },
    /// Installed.
    Done {
        /// The image.
        digest: String,
        /// Seconds from start.
        secs: f64,
    },
}

/// Receives [`Event`]s.
pub trait Progress: Send + Sync {
    /// One event.
    fn event(&self, ev: &Event);
}

/// Progress that goes nowhere.
#[derive(Debug, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn event(&self, _: &Event) {}
}

/// Layer downloads in flight at once for one image.
const PARALLEL_DOWNLOADS: usize = 3;

/// Manifests, indexes and configs are small: anything larger is refused before it is parsed.
pub(crate) const META_LIMIT: u64 = 4 << 20;

/// `sha256:HEX` of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&sha2::Sha256::digest(bytes)))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The hex part of a `sha256:` digest, checked.
pub(crate) fn digest_hex(d: &str) -> Result<&str, ImageError> {
    d.strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .filter(|h| !h.bytes().any(|b| b.is_ascii_uppercase()))
        .ok_or_else(|| ImageError::Unsupported(format!("digest {d:?} (only sha256 is supported)")))
}

/// A reader that hashes and counts what passes through.
pub(crate) struct HashReader<R> {
    inner: R,
    hasher: sha2::Sha256,
    pub(crate) n: u64,
}

impl<R: Read> HashReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: sha2::Sha256::new(),
            n: 0,
        }
    }
    /// Reads to the end (tar streams end before their padding does) and returns the digest.
    pub(crate) fn finish(mut self) -> std::io::Result<(String, u64)> {
        std::io::copy(&mut self, &mut std::io::sink())?;
        Ok((format!("sha256:{}", hex(&self.hasher.finalize())), self.n))
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
}

/// A resolved image, ready to build: its manifest, config, and where each layer blob is.
#[derive(Debug)]
pub(crate) struct Resolved {
    pub(crate) digest: String,
    pub(crate) manifest: Vec<u8>,
    pub(crate) config: Vec<u8>,
    pub(crate) config_digest: String,
    pub(crate) layers: Vec<source::Layer>,
    pub(crate) source: String,
    pub(crate) names: Vec<String>,
}

/// The images of one Cove home.
#[derive(Debug, Clone)]
pub struct Images {
    dir: PathBuf,
    tmp: PathBuf,
    blobs: BlobStore,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Images {
    /// The images of the Cove home `home`, with its blob store.
    pub fn open(home: &Path, blobs: BlobStore) -> Result<Self, ImageError> {
        let dir = home.join("images");
        let tmp = home.join("tmp").join("images");
        for d in [&dir, &tmp, &dir.join(".locks")] {
            std::fs::create_dir_all(d).map_err(|e| ImageError::io("creating", d, e))?;
        }
        Ok(Self { dir, tmp, blobs })
    }

    /// The image whose manifest digest is `digest` (`sha256:HEX` or `HEX`), if installed.
    pub fn get(&self, digest: &str) -> Option<ImageMeta> {
        let full = format!(
            "sha256:{}",
            digest.strip_prefix("sha256:").unwrap_or(digest)
        );
        let dir = self.dir.join(digest_hex(&full).ok()?);
        let meta: ImageMeta =
            serde_json::from_slice(&std::fs::read(dir.join("image.json")).ok()?).ok()?;
        dir.join("rootfs.ext4").is_file().then_some(meta)
    }

    /// The disk of an installed image.
    pub fn disk(&self, meta: &ImageMeta) -> PathBuf {
        self.dir.join(meta.hex()).join("rootfs.ext4")
    }

    /// Every installed image, newest first.
    pub fn list(&self) -> Vec<ImageMeta> {
        let mut v: Vec<ImageMeta> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| self.get(&e.file_name().to_string_lossy()))
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by_key(|m| std::cmp::Reverse(m.created_at));
        v
    }

    /// Deletes an installed image: its directory and its copy in the blob store.
    pub async fn remove(&self, digest: &str) -> Result<(), ImageError> {
        let hex = digest_hex(digest)?.to_string();
        let _lock = self.lock(&hex).await?;
        let dir = self.dir.join(&hex);
        // The metadata goes first: a half-removed image is never taken for an installed one.
        let _ = std::fs::remove_file(dir.join("image.json"));
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ImageError::io("removing", &dir, e)),
        }
        self.blobs.delete_prefix(&format!("images/{hex}")).await?;
        Ok(())
    }

    /// Deletes cached layer blobs that no installed image uses, and staging left by killed
    /// builders. Returns the bytes freed.
    pub async fn prune_layers(&self) -> Result<u64, ImageError> {
        let keep: std::collections::HashSet<String> = self
            .list()
            .iter()
            .flat_map(|m| m.layers.iter().map(|l| l.digest.clone()))
            .collect();
        let mut freed = 0;
        for (key, size) in self.blobs.list("layers/sha256").await? {
            let digest = format!("sha256:{}", key.rsplit('/').next().unwrap_or_default());
            if !keep.contains(&digest) {
                self.blobs.delete(&key).await?;
                freed += size;
            }
        }
        if let Ok(rd) = std::fs::read_dir(&self.tmp) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let stale = match name.strip_prefix("build-") {
                    // A staging directory whose builder is gone: its lock is free.
                    Some(hex) => matches!(self.try_lock(hex), Ok(Some(_))),
                    // An import's scratch space: an hour old is long past any import.
                    None => e
                        .metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age.as_secs() > 3600),
                };
                if stale {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(freed)
    }

    fn lock_file(&self, hex: &str) -> Result<(std::fs::File, PathBuf), ImageError> {
        let path = self.dir.join(".locks").join(format!("{hex}.lock"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| ImageError::io("opening", &path, e))?;
        Ok((f, path))
    }

    /// Holds the build lock of one digest (waiting for another builder to finish).
    async fn lock(&self, hex: &str) -> Result<nix::fcntl::Flock<std::fs::File>, ImageError> {
        let (f, path) = self.lock_file(hex)?;
        tokio::task::spawn_blocking(move || {
            nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| ImageError::io("locking", &path, e.into()))
        })
        .await
        .expect("lock task")
    }

    /// The build lock of one digest, if no one holds it.
    fn try_lock(&self, hex: &str) -> Result<Option<nix::fcntl::Flock<std::fs::File>>, ImageError> {
        if digest_hex(&format!("sha256:{hex}")).is_err() {
            return Ok(None);
        }
        let (f, _) = self.lock_file(hex)?;
        Ok(nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).ok())
    }

    /// Pulls `reference` from its registry.
    pub async fn pull(
        &self,
        reference: &str,
        opts: &PullOptions,
        progress: &dyn Progress,
    ) -> Result<ImageMeta, ImageError> {
        let start = Instant::now();
        let (resolved, puller) = registry::resolve(reference, opts).await?;
        self.build(resolved, Some(&puller), progress, start).await
    }

    /// Imports a `docker save` archive or an OCI layout (a directory or a tar of one).
    /// `reference` picks one image of a layout that holds several (by its ref name annotation).
    pub async fn import(
        &self,
        path: &Path,
        reference: Option<&str>,
        progress: &dyn Progress,
    ) -> Result<ImageMeta, ImageError> {
        let start = Instant::now();
        let scratch = self.scratch()?;
        let resolved = {
            let (path, scratch, reference) = (
                path.to_path_buf(),
                scratch.path().to_path_buf(),
                reference.map(str::to_string),
            );
            tokio::task::spawn_blocking(move || {
                source::resolve_local(&path, &scratch, reference.as_deref())
            })
            .await
            .expect("import task")?
        };
        self.build(resolved, None, progress, start).await
    }

    /// Imports a plain directory as a one-layer image.
    pub async fn import_rootfs(
        &self,
        dir: &Path,
        config: ImageConfig,
        progress: &dyn Progress,
    ) -> Result<ImageMeta, ImageError> {
        let start = Instant::now();
        let scratch = self.scratch()?;
        let resolved = {
            let (dir, scratch) = (dir.to_path_buf(), scratch.path().to_path_buf());
            tokio::task::spawn_blocking(move || source::pack_rootfs(&dir, &scratch, &config))
                .await
                .expect("pack task")?
        };
        self.build(resolved, None, progress, start).await
    }

    fn scratch(&self) -> Result<tempfile::TempDir, ImageError> {
        tempfile::Builder::new()
            .prefix("import-")
            .tempdir_in(&self.tmp)
            .map_err(|e| ImageError::io("creating a directory in", &self.tmp, e))
    }

    /// The one pipeline: fetch what is missing, verify, unpack, build the disk, install.
    async fn build(
        &self,
        r: Resolved,
        puller: Option<&registry::Puller>,
        progress: &dyn Progress,
        start: Instant,
    ) -> Result<ImageMeta, ImageError> {
        let hex = digest_hex(&r.digest)?.to_string();
        if let Some(m) = self.get(&hex) {
            progress.event(&Event::Installed {
                digest: r.digest.clone(),
            });
            return Ok(m);
        }
        progress.event(&Event::Resolved {
            digest: r.digest.clone(),
            layers: r.layers.len(),
            bytes: r.layers.iter().map(|l| l.size).sum(),
        });
        let lock = self.lock(&hex).await?;
        // Another builder may have finished while this one waited.
        if let Some(m) = self.get(&hex) {
            progress.event(&Event::Installed {
                digest: r.digest.clone(),
            });
            return Ok(m);
        }
        let config = source::parse_config(&r.config, r.layers.len())?;
        // Staging belongs to whoever holds the lock: what a killed builder left goes now.
        let stage = self.tmp.join(format!("build-{hex}"));
        let _ = std::fs::remove_dir_all(&stage);
        std::fs::create_dir_all(&stage).map_err(|e| ImageError::io("creating", &stage, e))?;
        let result = self.build_in(&r, &config, &stage, puller, progress).await;
        let _ = std::fs::remove_dir_all(&stage);
        drop(lock);
        let meta = result?;
        progress.event(&Event::Done {
            digest: meta.digest.clone(),
            secs: start.elapsed().as_secs_f64(),
        });
        Ok(meta)
    }

    async fn build_in(
        &self,
        r: &Resolved,
        config: &source::Config,
        stage: &Path,
        puller: Option<&registry::Puller>,
        progress: &dyn Progress,
    ) -> Result<ImageMeta, ImageError> {
        let hex = digest_hex(&r.digest)?;
        // Every layer as a local file; registry layers download a few at a time.
        // (Collected first: a lazy Map in the stream trips the compiler's Send check.)
        let fetches: Vec<_> = r
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| async move {
                match (&l.path, puller) {
                    (Some(p), _) => Ok(p.clone()),
                    (None, Some(p)) => {
                        let f = stage.join(format!("layer-{i}"));
                        self.fetch_layer(p, l, &f, progress).await?;
                        Ok(f)
                    }
                    (None, None) => Err(ImageError::Malformed(format!(
                        "layer {} is missing",
                        l.digest
                    ))),
                }
            })
            .collect();
        let files: Vec<PathBuf> = futures::stream::iter(fetches)
            .buffered(PARALLEL_DOWNLOADS)
            .try_collect()
            .await?;
        let root = stage.join("root");
        let unpacked = {
            let (layers, root, diff_ids) =
                (r.layers.clone(), root.clone(), config.diff_ids.clone());
            // Events cross from the blocking task; the channel closes when the task ends.
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let task = tokio::task::spawn_blocking(move || {
                source::unpack_all(&layers, &files, &diff_ids, &root, &|ev| {
                    let _ = tx.send(ev);
                })
            });
            while let Some(ev) = rx.recv().await {
                progress.event(&ev);
            }
            task.await.expect("unpack task")?
        };
        progress.event(&Event::Disk {
            bytes: unpacked.bytes,
        });
        let out = stage.join("out");
        std::fs::create_dir_all(&out).map_err(|e| ImageError::io("creating", &out, e))?;
        let disk = out.join("rootfs.ext4");
        {
            let (root, disk) = (root.clone(), disk.clone());
            tokio::task::spawn_blocking(move || disk::build(&root, &disk, unpacked))
                .await
                .expect("mkfs task")?;
        }
        let _ = std::fs::remove_dir_all(&root);
        let disk_bytes = std::fs::metadata(&disk)
            .map_err(|e| ImageError::io("inspecting", &disk, e))?
            .len();
        let meta = ImageMeta {
            digest: r.digest.clone(),
            config_digest: r.config_digest.clone(),
            source: r.source.clone(),
            created_at: now_ms(),
            layers: r
                .layers
                .iter()
                .zip(&config.diff_ids)
                .map(|(l, d)| LayerInfo {
                    digest: l.digest.clone(),
                    media_type: l.media_type.clone(),
                    size: l.size,
                    diff_id: d.clone(),
                })
                .collect(),
            content_bytes: unpacked.bytes,
            entries: unpacked.entries,
            devices_skipped: unpacked.devices_skipped,
            disk_bytes,
            config: config.run.clone(),
            source_names: r.names.clone(),
        };
        for (name, bytes) in [("manifest.json", &r.manifest), ("config.json", &r.config)] {
            write_synced(&out.join(name), bytes)?;
        }
        // image.json last: it is what marks the image installed.
        write_synced(
            &out.join("image.json"),
            &serde_json::to_vec_pretty(&meta).expect("serializes"),
        )?;
        std::fs::File::open(&disk)
            .and_then(|f| f.sync_all())
            .map_err(|e| ImageError::io("syncing", &disk, e))?;
        let dest = self.dir.join(hex);
        let _ = std::fs::remove_dir_all(&dest);
        std::fs::rename(&out, &dest).map_err(|e| ImageError::io("installing", &dest, e))?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        // The blob store's copy, for other hosts; the marker (image.json) goes last.
        let key = format!("images/{hex}");
        self.blobs
            .upload_file(
                &format!("{key}/rootfs.ext4"),
                &dest.join("rootfs.ext4"),
                true,
            )
            .await?;
        for name in ["manifest.json", "config.json", "image.json"] {
            self.blobs
                .upload_file(&format!("{key}/{name}"), &dest.join(name), false)
                .await?;
        }
        Ok(meta)
    }

    /// A registry layer into `file`: from the blob store when cached there, else downloaded
    /// (verified by its digest) and then cached.
    async fn fetch_layer(
        &self,
        puller: &registry::Puller,
        l: &source::Layer,
        file: &Path,
        progress: &dyn Progress,
    ) -> Result<(), ImageError> {
        let hex = digest_hex(&l.digest)?;
        let key = format!("layers/sha256/{hex}");
        // A store that cannot say is a miss: the layer comes from the registry.
        if self.blobs.exists(&key).await.unwrap_or(false) {
            progress.event(&Event::LayerCached {
                digest: l.digest.clone(),
                size: l.size,
            });
            return Ok(self.blobs.download_file(&key, file, false).await?);
        }
        puller.layer(l, file, progress).await?;
        self.blobs.upload_file(&key, file, false).await?;
        Ok(())
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| ImageError::io("creating", path, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| ImageError::io("writing", path, e))
}
