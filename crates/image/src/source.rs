//! Local sources (OCI layouts, `docker save` archives, plain directories), the image config,
//! and the verified unpacking of every layer.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use serde::Deserialize;

use crate::unpack::{UnpackStats, Unpacker};
use crate::{
    Event, HashReader, ImageConfig, ImageError, META_LIMIT, Resolved, digest_hex, sha256_digest,
};

/// A layer of a resolved image.
#[derive(Debug, Clone)]
pub(crate) struct Layer {
    pub(crate) digest: String,
    pub(crate) media_type: String,
    pub(crate) size: u64,
    /// The blob on local disk, for local sources; registry layers are fetched by the builder.
    pub(crate) path: Option<PathBuf>,
}

/// Layer media types Cove unpacks (the compression itself is detected from the bytes).
fn check_media_type(mt: &str) -> Result<(), ImageError> {
    const OK: &[&str] = &[
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.diff.tar.zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    ];
    if OK.contains(&mt) {
        Ok(())
    } else {
        Err(ImageError::Unsupported(format!(
            "layer media type {mt:?} (Cove unpacks tar, tar+gzip and tar+zstd layers)"
        )))
    }
}

/// The parts of the config Cove uses.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) diff_ids: Vec<String>,
    pub(crate) run: ImageConfig,
}

/// Parses and checks an image config: linux/amd64, one diff_id per layer.
pub(crate) fn parse_config(bytes: &[u8], layers: usize) -> Result<Config, ImageError> {
    let c = ImageConfiguration::from_reader(bytes)
        .map_err(|e| ImageError::Malformed(format!("the image config: {e}")))?;
    let (os, arch) = (c.os().to_string(), c.architecture().to_string());
    if os != "linux" || arch != "amd64" {
        return Err(ImageError::Unsupported(format!(
            "the image is for {os}/{arch}; Cove runs linux/amd64"
        )));
    }
    let diff_ids = c.rootfs().diff_ids().clone();
    if diff_ids.len() != layers {
        return Err(ImageError::Malformed(format!(
            "the manifest has {layers} layers but the config lists {} diff_ids",
            diff_ids.len()
        )));
    }
    for d in &diff_ids {
        digest_hex(d)?;
    }
    let run = c
        .config()
        .as_ref()
        .map(|k| ImageConfig {
            env: k.env().clone().unwrap_or_default(),
            workdir: k.working_dir().clone().filter(|w| !w.is_empty()),
            user: k.user().clone().filter(|u| !u.is_empty()),
            entrypoint: k.entrypoint().clone().unwrap_or_default(),
            cmd: k.cmd().clone().unwrap_or_default(),
        })
        .unwrap_or_default();
    Ok(Config { diff_ids, run })
}

/// The manifest's layers as [`Layer`]s (not yet located).
pub(crate) fn manifest_layers(m: &ImageManifest) -> Result<Vec<Layer>, ImageError> {
    m.layers()
        .iter()
        .map(|d| {
            let mt = d.media_type().to_string();
            check_media_type(&mt)?;
            let digest = d.digest().to_string();
            digest_hex(&digest)?;
            Ok(Layer {
                digest,
                media_type: mt,
                size: d.size(),
                path: None,
            })
        })
        .collect()
}

/// Reads a local file whole, refusing anything over `limit` bytes (manifests, configs).
fn read_small(path: &Path, limit: u64) -> Result<Vec<u8>, ImageError> {
    let f = File::open(path).map_err(|e| ImageError::io("opening", path, e))?;
    let mut v = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut v)
        .map_err(|e| ImageError::io("reading", path, e))?;
    if v.len() as u64 > limit {
        return Err(ImageError::Malformed(format!(
            "{} is larger than {limit} bytes",
            path.display()
        )));
    }
    Ok(v)
}

/// Resolves a local archive or layout.
pub(crate) fn resolve_local(
    path: &Path,
    scratch: &Path,
    reference: Option<&str>,
) -> Result<Resolved, ImageError> {
    let meta = std::fs::metadata(path).map_err(|e| ImageError::io("opening", path, e))?;
    let dir = if meta.is_dir() {
        path.to_path_buf()
    } else {
        let d = scratch.join("archive");
        extract_outer(path, &d)?;
        d
    };
    let mut r = if dir.join("index.json").is_file() {
        oci_layout(&dir, reference)?
    } else if dir.join("manifest.json").is_file() {
        docker_archive(&dir, reference)?
    } else {
        return Err(ImageError::Malformed(format!(
            "{} is neither an OCI layout (index.json) nor a docker archive (manifest.json)",
            path.display()
        )));
    };
    r.source = path.display().to_string();
    Ok(r)
}

/// Unpacks an archive's own files (not the layers inside it) into `dest`. Only regular files
/// and directories are taken, with the same name rules as layers.
fn extract_outer(archive: &Path, dest: &Path) -> Result<(), ImageError> {
    let f = File::open(archive).map_err(|e| ImageError::io("opening", archive, e))?;
    let mut ar = tar::Archive::new(BufReader::with_capacity(1 << 20, f));
    std::fs::create_dir_all(dest).map_err(|e| ImageError::io("creating", dest, e))?;
    for e in ar.entries().map_err(ImageError::Layer)? {
        let mut e = e.map_err(ImageError::Layer)?;
        let name = e.path().map_err(ImageError::Layer)?.into_owned();
        let Some(rel) = crate::unpack::relative_name(&name)? else {
            continue;
        };
        let out = dest.join(&rel);
        match e.header().entry_type() {
            tar::EntryType::Directory => {
                std::fs::create_dir_all(&out).map_err(|e| ImageError::io("creating", &out, e))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(p) = out.parent() {
                    std::fs::create_dir_all(p).map_err(|e| ImageError::io("creating", p, e))?;
                }
                let mut f = File::create(&out).map_err(|e| ImageError::io("creating", &out, e))?;
                let n = std::io::copy(&mut e, &mut f).map_err(ImageError::Layer)?;
                if n != e.size() {
                    return Err(ImageError::Malformed(format!(
                        "{} is truncated at {}",
                        archive.display(),
                        name.display()
                    )));
                }
            }
            // Symlinks (docker's legacy layer paths) and anything else are not needed.
            _ => {}
        }
    }
    Ok(())
}

/// A blob of an OCI layout, checked to be a file inside it.
fn blob_path(dir: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    let hex = digest_hex(digest)?;
    Ok(dir.join("blobs").join("sha256").join(hex))
}

fn read_blob(dir: &Path, digest: &str) -> Result<Vec<u8>, ImageError> {
    let p = blob_path(dir, digest)?;
    let bytes = read_small(&p, META_LIMIT)?;
    let actual = sha256_digest(&bytes);
    if actual != digest {
        return Err(ImageError::Digest {
            what: format!("blob {}", p.display()),
            expected: digest.to_string(),
            actual,
        });
    }
    Ok(bytes)
}

/// An OCI image layout directory.
fn oci_layout(dir: &Path, reference: Option<&str>) -> Result<Resolved, ImageError> {
    let index = ImageIndex::from_reader(&read_small(&dir.join("index.json"), META_LIMIT)?[..])
        .map_err(|e| ImageError::Malformed(format!("index.json: {e}")))?;
    let entries = index.manifests();
    let pick = match reference {
        Some(want) => entries
            .iter()
            .find(|d| {
                d.annotations().as_ref().is_some_and(|a| {
                    a.get("org.opencontainers.image.ref.name")
                        .is_some_and(|n| n == want)
                        || a.get("io.containerd.image.name").is_some_and(|n| n == want)
                })
            })
            .ok_or_else(|| {
                ImageError::Malformed(format!("the layout has no image named {want:?}"))
            })?,
        None if entries.len() == 1 => &entries[0],
        None if entries.is_empty() => {
            return Err(ImageError::Malformed(
                "the layout's index.json is empty".into(),
            ));
        }
        None => {
            // Several: a platform index of one image is resolved below; several images are not.
            return Err(ImageError::Malformed(format!(
                "the layout holds {} images: name one with --ref",
                entries.len()
            )));
        }
    };
    let mut digest = pick.digest().to_string();
    let mut bytes = read_blob(dir, &digest)?;
    // A nested index (one image, several platforms): take linux/amd64.
    for _ in 0..4 {
        if !is_index(&bytes) {
            break;
        }
        digest = linux_amd64(&bytes, &format!("image index {digest}"))?;
        bytes = read_blob(dir, &digest)?;
    }
    let manifest = ImageManifest::from_reader(&bytes[..])
        .map_err(|e| ImageError::Malformed(format!("manifest {digest}: {e}")))?;
    let config_digest = manifest.config().digest().to_string();
    let config = read_blob(dir, &config_digest)?;
    // A full name (containerd's annotation, or a ref name that is more than a bare tag).
    let ann = pick.annotations().clone().unwrap_or_default();
    let names = ann
        .get("io.containerd.image.name")
        .or_else(|| {
            ann.get("org.opencontainers.image.ref.name")
                .filter(|n| n.contains(['/', ':']))
        })
        .cloned()
        .into_iter()
        .collect();
    let mut layers = manifest_layers(&manifest)?;
    for l in &mut layers {
        l.path = Some(blob_path(dir, &l.digest)?);
    }
    Ok(Resolved {
        digest,
        manifest: bytes,
        config,
        config_digest,
        layers,
        source: String::new(),
        names,
    })
}

/// True when a manifest's bytes are an image index or a docker manifest list.
pub(crate) fn is_index(bytes: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct M {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    serde_json::from_slice::<M>(bytes).is_ok_and(|m| {
        m.manifests.is_some()
            || m.media_type.is_some_and(|t| {
                t == "application/vnd.oci.image.index.v1+json"
                    || t == "application/vnd.docker.distribution.manifest.list.v2+json"
            })
    })
}

/// The digest of the linux/amd64 image of an index (`what` names the index in errors).
pub(crate) fn linux_amd64(index: &[u8], what: &str) -> Result<String, ImageError> {
    let idx = ImageIndex::from_reader(index)
        .map_err(|e| ImageError::Malformed(format!("{what}: {e}")))?;
    idx.manifests()
        .iter()
        .find(|d| {
            d.platform().as_ref().is_some_and(|p| {
                p.os().to_string() == "linux" && p.architecture().to_string() == "amd64"
            })
        })
        .map(|d| d.digest().to_string())
        .ok_or_else(|| ImageError::Unsupported(format!("{what} has no linux/amd64 image")))
}

/// The OCI manifest of a config and layers, as Cove writes it for sources that have none.
fn oci_manifest(config_digest: &str, config_len: usize, layers: &[Layer]) -> Vec<u8> {
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| serde_json::json!({"mediaType": l.media_type, "digest": l.digest, "size": l.size}))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_len,
        },
        "layers": layers,
    }))
    .expect("serializes")
}

/// A `docker save` archive (extracted): `manifest.json` names the config and the layer files.
/// Such an archive has no manifest digest, so Cove writes the OCI manifest it stands for and
/// uses that manifest's digest as the image's identity.
fn docker_archive(dir: &Path, reference: Option<&str>) -> Result<Resolved, ImageError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Entry {
        config: String,
        #[serde(default)]
        repo_tags: Option<Vec<String>>,
        layers: Vec<String>,
    }
    let entries: Vec<Entry> =
        serde_json::from_slice(&read_small(&dir.join("manifest.json"), META_LIMIT)?)
            .map_err(|e| ImageError::Malformed(format!("manifest.json: {e}")))?;
    let e = match reference {
        Some(want) => entries
            .iter()
            .find(|e| {
                e.repo_tags
                    .as_ref()
                    .is_some_and(|t| t.iter().any(|t| t == want))
            })
            .ok_or_else(|| {
                ImageError::Malformed(format!("the archive has no image tagged {want:?}"))
            })?,
        None if entries.len() == 1 => &entries[0],
        None => {
            return Err(ImageError::Malformed(format!(
                "the archive holds {} images: name one with --ref",
                entries.len()
            )));
        }
    };
    let inside = |name: &str| -> Result<PathBuf, ImageError> {
        let rel = crate::unpack::relative_name(Path::new(name))?
            .ok_or_else(|| ImageError::Malformed(format!("manifest.json names {name:?}")))?;
        Ok(dir.join(rel))
    };
    let config = read_small(&inside(&e.config)?, META_LIMIT)?;
    let config_digest = sha256_digest(&config);
    let mut layers = Vec::new();
    for name in &e.layers {
        let p = inside(name)?;
        let f = File::open(&p).map_err(|e| ImageError::io("opening", &p, e))?;
        let mut head = [0u8; 4];
        let mut r = HashReader::new(BufReader::with_capacity(1 << 20, f));
        let got = r
            .read(&mut head)
            .map_err(|e| ImageError::io("reading", &p, e))?;
        let media_type = match compression(&head[..got]) {
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
        };
        let (digest, size) = r.finish().map_err(|e| ImageError::io("reading", &p, e))?;
        layers.push(Layer {
            digest,
            media_type: media_type.into(),
            size,
            path: Some(p),
        });
    }
    let manifest = oci_manifest(&config_digest, config.len(), &layers);
    Ok(Resolved {
        digest: sha256_digest(&manifest),
        manifest,
        config,
        config_digest,
        layers,
        source: String::new(),
        names: e.repo_tags.clone().unwrap_or_default(),
    })
}

/// Packs a directory as a one-layer image in `scratch`.
pub(crate) fn pack_rootfs(
    dir: &Path,
    scratch: &Path,
    config: &ImageConfig,
) -> Result<Resolved, ImageError> {
    if !dir.is_dir() {
        return Err(ImageError::io(
            "reading",
            dir,
            std::io::Error::from(std::io::ErrorKind::NotADirectory),
        ));
    }
    let layer = scratch.join("layer.tar");
    let f = File::create(&layer).map_err(|e| ImageError::io("creating", &layer, e))?;
    let mut b = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, f));
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    b.append_dir_all(".", dir)
        .map_err(|e| ImageError::io("packing", dir, e))?;
    b.into_inner()
        .and_then(|w| w.into_inner().map_err(std::io::IntoInnerError::into_error))
        .and_then(|f| f.sync_all())
        .map_err(|e| ImageError::io("writing", &layer, e))?;
    let (digest, size) = HashReader::new(BufReader::new(
        File::open(&layer).map_err(|e| ImageError::io("opening", &layer, e))?,
    ))
    .finish()
    .map_err(|e| ImageError::io("reading", &layer, e))?;
    let mut cfg = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [digest]},
        "config": {},
    });
    let c = &mut cfg["config"];
    if !config.env.is_empty() {
        c["Env"] = serde_json::json!(config.env);
    }
    if let Some(w) = &config.workdir {
        c["WorkingDir"] = serde_json::json!(w);
    }
    if let Some(u) = &config.user {
        c["User"] = serde_json::json!(u);
    }
    if !config.entrypoint.is_empty() {
        c["Entrypoint"] = serde_json::json!(config.entrypoint);
    }
    if !config.cmd.is_empty() {
        c["Cmd"] = serde_json::json!(config.cmd);
    }
    let config_bytes = serde_json::to_vec(&cfg).expect("serializes");
    let config_digest = sha256_digest(&config_bytes);
    let layers = vec![Layer {
        digest,
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        size,
        path: Some(layer),
    }];
    let manifest = oci_manifest(&config_digest, config_bytes.len(), &layers);
    Ok(Resolved {
        digest: sha256_digest(&manifest),
        manifest,
        config: config_bytes,
        config_digest,
        layers,
        source: dir.display().to_string(),
        names: vec![],
    })
}

/// Packs a directory as a one-layer image and writes it to `out` as an OCI image layout tar:
/// what `cove image import-rootfs` sends to a coved, since the directory lives on the client's
/// machine. A coved importing it gets the digest a local import of the same tree gets.
pub fn write_rootfs_layout(
    dir: &Path,
    config: &ImageConfig,
    out: &mut dyn std::io::Write,
) -> Result<String, ImageError> {
    let scratch = tempfile::tempdir().map_err(|e| ImageError::io("creating", dir, e))?;
    let r = pack_rootfs(dir, scratch.path(), config)?;
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": r.digest,
            "size": r.manifest.len(),
        }],
    }))
    .expect("serializes");
    let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    let mut b = tar::Builder::new(out);
    let mut put = |name: &str, bytes: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, bytes)
    };
    let wrote = put("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
        .and_then(|()| put("index.json", &index))
        .and_then(|()| put(&blob(&r.digest), &r.manifest))
        .and_then(|()| put(&blob(&r.config_digest), &r.config));
    let out_path = Path::new("(layout)");
    wrote.map_err(|e| ImageError::io("writing", out_path, e))?;
    for l in &r.layers {
        let path = l.path.as_deref().expect("packed layers are files");
        b.append_path_with_name(path, blob(&l.digest))
            .map_err(|e| ImageError::io("writing", path, e))?;
    }
    b.finish()
        .map_err(|e| ImageError::io("writing", out_path, e))?;
    Ok(r.digest)
}

enum Compression {
    Gzip,
    Zstd,
    None,
}

fn compression(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Counts bytes read for progress events.
struct Counted<'a, R> {
    inner: R,
    n: u64,
    last: u64,
    report: &'a dyn Fn(u64),
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        if self.n - self.last >= 4 << 20 {
            self.last = self.n;
            (self.report)(self.n);
        }
        Ok(n)
    }
}

/// Unpacks every layer in order into `root`, verifying each blob's digest and size and each
/// uncompressed stream's diff_id as it goes. Any mismatch fails the whole image (the staging
/// directory is the caller's to throw away).
pub(crate) fn unpack_all(
    layers: &[Layer],
    files: &[PathBuf],
    diff_ids: &[String],
    root: &Path,
    emit: &dyn Fn(Event),
) -> Result<UnpackStats, ImageError> {
    let mut u = Unpacker::new(root)?;
    let of = layers.len();
    for (index, ((l, file), diff_id)) in layers.iter().zip(files).zip(diff_ids).enumerate() {
        let f = File::open(file).map_err(|e| ImageError::io("opening", file, e))?;
        let report = |done| {
            emit(Event::Unpack {
                index,
                of,
                done,
                size: l.size,
            })
        };
        report(0);
        let counted = Counted {
            inner: BufReader::with_capacity(1 << 20, f),
            n: 0,
            last: 0,
            report: &report,
        };
        let mut blob = HashReader::new(counted);
        let mut head = [0u8; 4];
        let mut got = 0;
        while got < head.len() {
            let n = blob.read(&mut head[got..]).map_err(ImageError::Layer)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        let prefix = std::io::Cursor::new(head[..got].to_vec());
        let (blob_digest, blob_size, tar_digest) = {
            let raw = prefix.chain(&mut blob);
            let decoded: Box<dyn Read + '_> = match compression(&head[..got]) {
                Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(
                    BufReader::with_capacity(1 << 20, raw),
                )),
                Compression::Zstd => {
                    Box::new(zstd::stream::read::Decoder::new(raw).map_err(ImageError::Layer)?)
                }
                Compression::None => Box::new(raw),
            };
            let mut tar = HashReader::new(decoded);
            u.apply(&mut tar)?;
            let (tar_digest, _) = tar.finish().map_err(ImageError::Layer)?;
            let (d, n) = blob.finish().map_err(ImageError::Layer)?;
            (d, n, tar_digest)
        };
        if blob_digest != l.digest || blob_size != l.size {
            return Err(ImageError::Digest {
                what: format!("layer {} ({} bytes read)", l.digest, blob_size),
                expected: format!("{} ({} bytes)", l.digest, l.size),
                actual: blob_digest,
            });
        }
        if &tar_digest != diff_id {
            return Err(ImageError::Digest {
                what: format!("the uncompressed layer {}", l.digest),
                expected: diff_id.clone(),
                actual: tar_digest,
            });
        }
        report(blob_size);
    }
    Ok(u.stats())
}
