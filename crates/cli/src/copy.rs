//! `cove cp`: one file between this machine and a sandbox, streamed both ways through the
//! coved's file API.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tokio::io::{AsyncRead, AsyncWrite};

/// A sandbox's files, however they are reached.
pub(crate) trait Files {
    /// True when `path` is a directory.
    async fn is_dir(&self, path: &str) -> bool;
    /// Replaces `path` with what `from` yields.
    async fn upload<R: AsyncRead + Unpin>(
        &self,
        path: &str,
        mode: Option<u32>,
        from: &mut R,
    ) -> anyhow::Result<()>;
    /// Streams `path` into `to`.
    async fn download<W: AsyncWrite + Unpin>(&self, path: &str, to: &mut W) -> anyhow::Result<()>;
}

/// One sandbox of a coved.
pub(crate) struct Remote<'a> {
    pub client: &'a cove_sdk::Client,
    pub id: String,
}

impl Files for Remote<'_> {
    async fn is_dir(&self, path: &str) -> bool {
        self.client
            .stat(&self.id, path)
            .await
            .is_ok_and(|s| s.kind == "dir")
    }
    async fn upload<R: AsyncRead + Unpin>(
        &self,
        path: &str,
        mode: Option<u32>,
        from: &mut R,
    ) -> anyhow::Result<()> {
        self.client.upload(&self.id, path, mode, from).await?;
        Ok(())
    }
    async fn download<W: AsyncWrite + Unpin>(&self, path: &str, to: &mut W) -> anyhow::Result<()> {
        self.client.download(&self.id, path, to).await?;
        Ok(())
    }
}

/// One side of a copy.
#[derive(Debug, PartialEq, Eq)]
enum Side {
    /// A path here; `-` is stdin or stdout.
    Local(String),
    /// `ID:/path` in a sandbox.
    Sandbox(String, String),
}

fn parse(s: &str) -> Side {
    match s.split_once(':') {
        Some((id, path)) if !id.is_empty() && !id.contains('/') && path.starts_with('/') => {
            Side::Sandbox(id.to_string(), path.to_string())
        }
        _ => Side::Local(s.to_string()),
    }
}

fn base_name(p: &str) -> Option<&str> {
    Path::new(p).file_name().and_then(|n| n.to_str())
}

/// The sandbox a copy involves.
fn sandbox_of(src: &str, dst: &str) -> anyhow::Result<String> {
    match (parse(src), parse(dst)) {
        (Side::Sandbox(id, _), Side::Local(_)) | (Side::Local(_), Side::Sandbox(id, _)) => Ok(id),
        (Side::Sandbox(..), Side::Sandbox(..)) => {
            bail!("copy between two sandboxes through this machine: cp to a local file first")
        }
        (Side::Local(_), Side::Local(_)) => {
            bail!("one side of cove cp must be ID:/path in a sandbox")
        }
    }
}

/// Runs `cove cp SRC DST` through the coved.
pub async fn run(client: &cove_sdk::Client, src: &str, dst: &str) -> anyhow::Result<()> {
    let id = sandbox_of(src, dst)?;
    copy(&Remote { client, id }, src, dst).await
}

async fn copy(client: &impl Files, src: &str, dst: &str) -> anyhow::Result<()> {
    match (parse(src), parse(dst)) {
        (Side::Local(l), Side::Sandbox(_, mut path)) => {
            // Into a directory: keep the file's name.
            let into_dir = path.ends_with('/') || client.is_dir(&path).await;
            if into_dir {
                let name = base_name(&l)
                    .filter(|_| l != "-")
                    .context("copying stdin into a directory needs a file name")?;
                path = format!("{}/{name}", path.trim_end_matches('/'));
            }
            if l == "-" {
                client.upload(&path, None, &mut tokio::io::stdin()).await?;
            } else {
                let meta = std::fs::metadata(&l).with_context(|| format!("cannot read {l}"))?;
                if meta.is_dir() {
                    bail!("{l} is a directory; cove cp copies single files");
                }
                let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
                let mut f = tokio::fs::File::open(&l)
                    .await
                    .with_context(|| format!("cannot open {l}"))?;
                client.upload(&path, Some(mode), &mut f).await?;
            }
        }
        (Side::Sandbox(_, path), Side::Local(l)) => {
            if l == "-" {
                client.download(&path, &mut tokio::io::stdout()).await?;
                return Ok(());
            }
            let mut target = PathBuf::from(&l);
            if target.is_dir() {
                target = target.join(base_name(&path).context("the source names no file")?);
            }
            // Written beside the target and renamed: a failed copy leaves nothing half-made.
            let tmp = target.with_file_name(format!(
                ".{}.cove-partial",
                target
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("copy")
            ));
            let mut f = tokio::fs::File::create(&tmp)
                .await
                .with_context(|| format!("cannot create {}", tmp.display()))?;
            let r = client.download(&path, &mut f).await;
            if let Err(e) = r {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            f.sync_all().await?;
            drop(f);
            std::fs::rename(&tmp, &target)
                .with_context(|| format!("cannot write {}", target.display()))?;
        }
        // Refused by `sandbox_of` before anything was opened.
        _ => unreachable!("cp sides were checked"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_are_told_apart() {
        assert_eq!(
            parse("abc:/x/y"),
            Side::Sandbox("abc".into(), "/x/y".into())
        );
        assert_eq!(parse("./a:/b"), Side::Local("./a:/b".into()));
        assert_eq!(parse("a:b"), Side::Local("a:b".into()));
        assert_eq!(parse("-"), Side::Local("-".into()));
        assert_eq!(parse(":/x"), Side::Local(":/x".into()));
    }
}
