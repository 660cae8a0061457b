//! Images by name. The images themselves are content-addressed by `cove-image` (under
//! `images/HEX/`); this host's state database maps names to manifest digests, and sandboxes and
//! snapshots record the digest they run on, so pulling a newer `name:tag` never changes the disk
//! under a running or hibernated sandbox.

use std::path::{Path, PathBuf};

pub use cove_image::{
    Event, ImageConfig, ImageError, ImageMeta, NoProgress, Progress, PullOptions, parse_reference,
};
use serde::Serialize;

use crate::{Host, HostError, now_ms};

/// An image resolved for a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The name it was asked for by (or its digest).
    pub name: String,
    /// Its manifest digest.
    pub digest: String,
    /// The ext4 disk.
    pub disk: PathBuf,
    /// Its config.
    pub config: ImageConfig,
}

/// An installed image, with the names that point at it and what uses it.
#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    /// The image.
    #[serde(flatten)]
    pub meta: ImageMeta,
    /// Names pointing at it.
    pub names: Vec<String>,
    /// Sandboxes and snapshots that need it (`sandbox ID`, `snapshot ID`).
    pub used_by: Vec<String>,
    /// The names the operation that returned this gave it (pull, import).
    #[serde(skip)]
    pub assigned: Vec<String>,
}

fn hexish(s: &str) -> Option<&str> {
    let h = s.strip_prefix("sha256:").unwrap_or(s);
    (h.len() >= 4 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(h)
}

/// The name a pulled reference is recorded under (`name` → `docker.io/library/name:latest`).
pub fn normalize(reference: &str) -> Option<String> {
    cove_image::parse_reference(reference)
        .ok()
        .map(|r| r.whole())
}

impl Host {
    /// The image store.
    pub fn images(&self) -> &cove_image::Images {
        &self.images
    }

    fn no_such_image(&self, key: &str) -> HostError {
        let names: Vec<String> = self
            .db
            .image_names()
            .map(|v| v.into_iter().map(|(n, _)| n).collect())
            .unwrap_or_default();
        HostError::NoSuchImage {
            name: key.to_string(),
            installed: if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            },
        }
    }

    /// The digest `key` names: an image name, a reference that normalizes to one, or a digest
    /// (`sha256:HEX`, or a unique prefix of the hex of at least 4 digits).
    fn image_digest(&self, key: &str) -> Result<String, HostError> {
        if let Some(d) = self.db.image_name(key)? {
            return Ok(d);
        }
        if let Ok(r) = cove_image::parse_reference(key) {
            if let Some(d) = self.db.image_name(&r.whole())? {
                return Ok(d);
            }
            // `repo@sha256:…`: the digest is the image.
            if let Some(d) = r.digest()
                && self.images.get(d).is_some()
            {
                return Ok(d.to_string());
            }
        }
        if let Some(h) = hexish(key) {
            let found: Vec<ImageMeta> = self
                .images
                .list()
                .into_iter()
                .filter(|m| m.hex().starts_with(h))
                .collect();
            if let [one] = &found[..] {
                return Ok(one.digest.clone());
            }
        }
        Err(self.no_such_image(key))
    }

    /// The installed image `key` names.
    pub fn image(&self, key: &str) -> Result<Image, HostError> {
        let digest = self.image_digest(key)?;
        self.image_by_digest(key, &digest)
    }

    /// The installed image with this digest (what a sandbox or snapshot recorded).
    pub(crate) fn image_by_digest(&self, name: &str, digest: &str) -> Result<Image, HostError> {
        let meta = self
            .images
            .get(digest)
            .ok_or_else(|| HostError::NoSuchImage {
                name: format!("{name} ({digest})"),
                installed: "its disk is no longer installed".into(),
            })?;
        Ok(Image {
            name: name.to_string(),
            digest: meta.digest.clone(),
            disk: self.images.disk(&meta),
            config: meta.config,
        })
    }

    /// The names pointing at a digest.
    fn names_of(&self, digest: &str) -> Result<Vec<String>, HostError> {
        Ok(self
            .db
            .image_names()?
            .into_iter()
            .filter(|(_, d)| d == digest)
            .map(|(n, _)| n)
            .collect())
    }

    fn info(&self, meta: ImageMeta) -> Result<ImageInfo, HostError> {
        let names = self.names_of(&meta.digest)?;
        let used_by = self.db.using_image(&meta.digest)?;
        Ok(ImageInfo {
            meta,
            names,
            used_by,
            assigned: vec![],
        })
    }

    fn name_image(&self, names: &[String], meta: ImageMeta) -> Result<ImageInfo, HostError> {
        for n in names {
            self.db.set_image_name(n, &meta.digest, now_ms())?;
        }
        let mut info = self.info(meta)?;
        info.assigned = names.to_vec();
        Ok(info)
    }

    /// Pulls `reference` and names it by the normalized reference.
    pub async fn image_pull(
        &self,
        reference: &str,
        opts: &PullOptions,
        progress: &dyn Progress,
    ) -> Result<ImageInfo, HostError> {
        let r = cove_image::parse_reference(reference)?;
        let meta = self.images.pull(reference, opts, progress).await?;
        // A pull by digest alone names nothing: the digest is its name.
        let names: Vec<String> = if r.tag().is_some() || r.digest().is_none() {
            vec![r.whole()]
        } else {
            vec![]
        };
        self.name_image(&names, meta)
    }

    /// Imports a docker archive or OCI layout; names it `name`, else by the names the archive
    /// gives (docker `RepoTags`, a layout's full image name annotation).
    pub async fn image_import(
        &self,
        path: &Path,
        pick: Option<&str>,
        name: Option<&str>,
        progress: &dyn Progress,
    ) -> Result<ImageInfo, HostError> {
        let meta = self.images.import(path, pick, progress).await?;
        let names = match name {
            Some(n) => vec![check_name(n)?],
            None => meta.source_names.clone(),
        };
        self.name_image(&names, meta)
    }

    /// Imports a directory as a one-layer image named `name`.
    pub async fn image_import_rootfs(
        &self,
        dir: &Path,
        name: &str,
        config: ImageConfig,
        progress: &dyn Progress,
    ) -> Result<ImageInfo, HostError> {
        let name = check_name(name)?;
        let meta = self.images.import_rootfs(dir, config, progress).await?;
        self.name_image(&[name], meta)
    }

    /// Every installed image, newest first.
    pub fn image_list(&self) -> Result<Vec<ImageInfo>, HostError> {
        self.images
            .list()
            .into_iter()
            .map(|m| self.info(m))
            .collect()
    }

    /// One installed image.
    pub fn image_inspect(&self, key: &str) -> Result<ImageInfo, HostError> {
        let digest = self.image_digest(key)?;
        let meta = self
            .images
            .get(&digest)
            .ok_or_else(|| self.no_such_image(key))?;
        self.info(meta)
    }

    /// Removes a name; the image itself goes when no name points at it any more (or when it is
    /// removed by digest). Refused while a sandbox or a snapshot needs it; its templates go
    /// with it. Returns the removed image's digest, if it went.
    pub async fn image_remove(&self, key: &str) -> Result<Option<String>, HostError> {
        let digest = self.image_digest(key)?;
        let names = self.names_of(&digest)?;
        let normalized = normalize(key);
        // Removing one of several names only untags.
        if names.len() > 1
            && let Some(n) = names
                .iter()
                .find(|n| **n == key || Some(n.as_str()) == normalized.as_deref())
        {
            self.db.remove_image_name(n)?;
            return Ok(None);
        }
        let users = self.db.using_image(&digest)?;
        if !users.is_empty() {
            return Err(HostError::ImageInUse {
                image: key.to_string(),
                users: users.join(", "),
            });
        }
        for s in self.db.list_snapshots()? {
            if s.template && s.image_digest == digest {
                self.remove_snapshot(&s.id).await?;
            }
        }
        for n in &names {
            self.db.remove_image_name(n)?;
        }
        self.images.remove(&digest).await?;
        Ok(Some(digest))
    }

    /// Removes images no name points at and nothing uses, and layer blobs no image needs.
    /// Returns the digests removed and the bytes freed.
    pub async fn image_prune(&self) -> Result<(Vec<String>, u64), HostError> {
        let mut removed = Vec::new();
        let mut freed = 0;
        for info in self.image_list()? {
            if info.names.is_empty() && info.used_by.is_empty() {
                freed += info.meta.disk_bytes;
                self.image_remove(&info.meta.digest).await?;
                removed.push(info.meta.digest);
            }
        }
        freed += self.images.prune_layers().await?;
        Ok((removed, freed))
    }
}

/// Image names: what a reference looks like, without spaces or control characters.
fn check_name(name: &str) -> Result<String, HostError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with(['.', '-', '/'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/@".contains(c));
    if ok {
        Ok(name.to_string())
    } else {
        Err(HostError::InvalidSetting {
            what: "image name",
            value: name.to_string(),
            allowed: "letters, digits and - _ . : / @, not starting with . - or /".into(),
        })
    }
}
