//! Installed images: an ext4 disk and its config, under `images/NAME/` of the Cove home.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::HostError;

/// An image's config: how processes run by default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageConfig {
    /// Image name.
    pub name: String,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// Default working directory.
    pub workdir: Option<String>,
    /// Default user.
    pub user: Option<String>,
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
}

/// An installed image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Its name.
    pub name: String,
    /// The ext4 disk.
    pub disk: PathBuf,
    /// Its config.
    pub config: ImageConfig,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Names of installed images.
pub fn installed(home: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(home.join("images"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().join("rootfs.ext4").is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Finds an installed image by name.
pub fn find(home: &Path, name: &str) -> Result<Image, HostError> {
    let missing = || HostError::NoSuchImage {
        name: name.to_string(),
        installed: {
            let v = installed(home);
            if v.is_empty() {
                "none".into()
            } else {
                v.join(", ")
            }
        },
    };
    if !valid_name(name) {
        return Err(missing());
    }
    let dir = home.join("images").join(name);
    let disk = dir.join("rootfs.ext4");
    if !disk.is_file() {
        return Err(missing());
    }
    let cfg_path = dir.join("image.json");
    let config = match std::fs::read(&cfg_path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| HostError::Io {
            what: "parsing the image config",
            path: cfg_path.display().to_string(),
            source: std::io::Error::other(e),
        })?,
        Err(_) => ImageConfig::default(),
    };
    Ok(Image {
        name: name.to_string(),
        disk,
        config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_installed_images_and_refuses_odd_names() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("images/py");
        std::fs::create_dir_all(&img).unwrap();
        std::fs::write(img.join("rootfs.ext4"), b"").unwrap();
        std::fs::write(
            img.join("image.json"),
            br#"{"name":"py","env":["A=1","B=x=y"],"cmd":["python3"]}"#,
        )
        .unwrap();
        let i = find(d.path(), "py").unwrap();
        assert_eq!(
            i.config.env_pairs(),
            vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert_eq!(i.config.cmd, vec!["python3"]);
        let e = find(d.path(), "../py").unwrap_err().to_string();
        assert!(e.contains("installed: py"), "{e}");
        assert!(find(d.path(), "nope").is_err());
    }
}
