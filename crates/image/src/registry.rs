//! Pulls from OCI distribution registries with `oci-client`: references, auth (anonymous,
//! basic, and the bearer-token exchange the client does on a registry's challenge), index
//! resolution to linux/amd64, and verified blob downloads.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_spec::image::ImageManifest;
use tokio::io::AsyncWrite;

use crate::source::{Layer, is_index, linux_amd64, manifest_layers};
use crate::{Event, ImageError, META_LIMIT, Progress, Resolved, sha256_digest};

/// How to reach a registry.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Plain HTTP (for registries on loopback); HTTPS otherwise.
    pub insecure: bool,
    /// User name and password; when absent, `~/.docker/config.json` is consulted, then
    /// anonymous access.
    pub credentials: Option<(String, String)>,
    /// Where `config.json` is (default `$DOCKER_CONFIG`, else `~/.docker`).
    pub docker_config: Option<PathBuf>,
}

/// Credentials for `registry` from a docker `config.json` (`auths.<registry>.auth`, base64 of
/// `user:password`). Credential helpers are not run.
pub fn docker_credentials(registry: &str, config_dir: Option<&Path>) -> Option<(String, String)> {
    use base64::Engine as _;
    let dir = config_dir.map(Path::to_path_buf).or_else(|| {
        std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
    })?;
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).ok()?).ok()?;
    let auths = v.get("auths")?.as_object()?;
    let host_of = |k: &str| {
        let k = k
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        k.split('/').next().unwrap_or(k).to_string()
    };
    let want = if registry == "docker.io" {
        "index.docker.io".to_string()
    } else {
        registry.to_string()
    };
    let entry = auths
        .iter()
        .find(|(k, _)| host_of(k) == want || host_of(k) == registry)?
        .1;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(entry.get("auth")?.as_str()?)
        .ok()?;
    let (u, p) = std::str::from_utf8(&raw).ok()?.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// A registry connection for one image's blobs.
pub(crate) struct Puller {
    client: Client,
    reference: Reference,
}

impl std::fmt::Debug for Puller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Puller")
            .field("reference", &self.reference.whole())
            .finish_non_exhaustive()
    }
}

/// Parses a reference the way docker does (`name` → `docker.io/library/name:latest`).
pub fn parse_reference(reference: &str) -> Result<Reference, ImageError> {
    reference
        .parse::<Reference>()
        .map_err(|e| ImageError::Reference {
            reference: reference.to_string(),
            why: e.to_string(),
        })
}

const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

fn registry_err(reference: &Reference, e: impl std::fmt::Display) -> ImageError {
    ImageError::Registry(format!("{}: {e}", reference.whole()))
}

/// Resolves `reference` to an image manifest and its config.
pub(crate) async fn resolve(
    reference: &str,
    opts: &PullOptions,
) -> Result<(Resolved, Puller), ImageError> {
    let r = parse_reference(reference)?;
    let client = Client::new(ClientConfig {
        protocol: if opts.insecure {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..Default::default()
    });
    let auth = match opts
        .credentials
        .clone()
        .or_else(|| docker_credentials(r.resolve_registry(), opts.docker_config.as_deref()))
    {
        Some((u, p)) => RegistryAuth::Basic(u, p),
        None => RegistryAuth::Anonymous,
    };
    let (mut bytes, mut digest) = client
        .pull_manifest_raw(&r, &auth, MANIFEST_TYPES)
        .await
        .map_err(|e| registry_err(&r, e))?;
    let mut at = r.clone();
    check_manifest(&at, &bytes, &digest)?;
    if is_index(&bytes) {
        at = r.clone_with_digest(linux_amd64(&bytes, &r.whole())?);
        (bytes, digest) = client
            .pull_manifest_raw(&at, &auth, MANIFEST_TYPES)
            .await
            .map_err(|e| registry_err(&at, e))?;
        check_manifest(&at, &bytes, &digest)?;
    }
    let manifest = ImageManifest::from_reader(&bytes[..])
        .map_err(|e| ImageError::Malformed(format!("manifest {digest}: {e}")))?;
    let cd = manifest.config();
    if cd.size() > META_LIMIT {
        return Err(ImageError::Malformed(format!(
            "the config is {} bytes",
            cd.size()
        )));
    }
    let config_digest = cd.digest().to_string();
    let mut config = Vec::new();
    let desc = OciDescriptor {
        media_type: cd.media_type().to_string(),
        digest: config_digest.clone(),
        size: i64::try_from(cd.size()).unwrap_or(i64::MAX),
        ..Default::default()
    };
    // pull_blob checks the digest of what it received.
    client
        .pull_blob(&at, &desc, &mut config)
        .await
        .map_err(|e| registry_err(&at, e))?;
    let layers = manifest_layers(&manifest)?;
    Ok((
        Resolved {
            digest: sha256_digest(&bytes),
            manifest: bytes.to_vec(),
            config,
            config_digest,
            layers,
            source: r.whole(),
            names: vec![r.whole()],
        },
        Puller {
            client,
            reference: at,
        },
    ))
}

/// The manifest's bytes match the digest asked for (when the reference has one) and the one
/// the registry reported.
fn check_manifest(r: &Reference, bytes: &[u8], reported: &str) -> Result<(), ImageError> {
    if bytes.len() as u64 > META_LIMIT {
        return Err(ImageError::Malformed(format!(
            "the manifest of {} is {} bytes",
            r.whole(),
            bytes.len()
        )));
    }
    let actual = sha256_digest(bytes);
    for expected in r.digest().into_iter().chain(Some(reported)) {
        if expected.starts_with("sha256:") && expected != actual {
            return Err(ImageError::Digest {
                what: format!("the manifest of {}", r.whole()),
                expected: expected.to_string(),
                actual,
            });
        }
    }
    Ok(())
}

impl Puller {
    /// Downloads one layer into `file`; the client verifies its digest, and the size is
    /// checked here.
    pub(crate) async fn layer(
        &self,
        l: &Layer,
        file: &Path,
        progress: &dyn Progress,
    ) -> Result<(), ImageError> {
        progress.event(&Event::Download {
            digest: l.digest.clone(),
            size: l.size,
        });
        let f = tokio::fs::File::create(file)
            .await
            .map_err(|e| ImageError::io("creating", file, e))?;
        let mut w = Counting {
            inner: tokio::io::BufWriter::with_capacity(1 << 20, f),
            n: 0,
            last: 0,
            limit: l.size,
            digest: &l.digest,
            progress,
        };
        let desc = OciDescriptor {
            media_type: l.media_type.clone(),
            digest: l.digest.clone(),
            size: i64::try_from(l.size).unwrap_or(i64::MAX),
            ..Default::default()
        };
        self.client
            .pull_blob(&self.reference, &desc, &mut w)
            .await
            .map_err(|e| registry_err(&self.reference, e))?;
        if w.n != l.size {
            return Err(ImageError::Digest {
                what: format!("layer {} (size)", l.digest),
                expected: format!("{} bytes", l.size),
                actual: format!("{} bytes", w.n),
            });
        }
        progress.event(&Event::Downloaded {
            digest: l.digest.clone(),
            done: w.n,
        });
        Ok(())
    }
}

/// Counts what is written, reports progress, and refuses more than the descriptor's size (a
/// registry cannot fill the disk with an endless blob).
struct Counting<'a, W> {
    inner: W,
    n: u64,
    last: u64,
    limit: u64,
    digest: &'a str,
    progress: &'a dyn Progress,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Counting<'_, W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.n + buf.len() as u64 > self.limit {
            return Poll::Ready(Err(std::io::Error::other(format!(
                "the registry sent more than the {} bytes the manifest gives",
                self.limit
            ))));
        }
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.n += n as u64;
            if self.n - self.last >= 1 << 20 {
                self.last = self.n;
                self.progress.event(&Event::Downloaded {
                    digest: self.digest.to_string(),
                    done: self.n,
                });
            }
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
