//! `cove cp`: one file between this machine and a sandbox, streamed both ways.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use cove_host::Host;
use cove_protocol::FileKind;

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

/// Runs `cove cp SRC DST`.
pub async fn run(host: &Host, src: &str, dst: &str) -> anyhow::Result<()> {
    match (parse(src), parse(dst)) {
        (Side::Local(l), Side::Sandbox(id, mut path)) => {
            let client = host.connect(&id).await?;
            // Into a directory: keep the file's name.
            let into_dir = path.ends_with('/')
                || client
                    .stat(&path)
                    .await
                    .is_ok_and(|s| s.kind == FileKind::Dir);
            if into_dir {
                let name = base_name(&l)
                    .filter(|_| l != "-")
                    .context("copying stdin into a directory needs a file name")?;
                path = format!("{}/{name}", path.trim_end_matches('/'));
            }
            if l == "-" {
                client
                    .write_file(&path, None, &mut tokio::io::stdin())
                    .await?;
            } else {
                let meta = std::fs::metadata(&l).with_context(|| format!("cannot read {l}"))?;
                if meta.is_dir() {
                    bail!("{l} is a directory; cove cp copies single files");
                }
                let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
                let mut f = tokio::fs::File::open(&l)
                    .await
                    .with_context(|| format!("cannot open {l}"))?;
                client.write_file(&path, Some(mode), &mut f).await?;
            }
        }
        (Side::Sandbox(id, path), Side::Local(l)) => {
            let client = host.connect(&id).await?;
            if l == "-" {
                client.read_file(&path, &mut tokio::io::stdout()).await?;
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
            let r = client.read_file(&path, &mut f).await;
            if let Err(e) = r {
                let _ = std::fs::remove_file(&tmp);
                return Err(e.into());
            }
            f.sync_all().await?;
            drop(f);
            std::fs::rename(&tmp, &target)
                .with_context(|| format!("cannot write {}", target.display()))?;
        }
        (Side::Sandbox(..), Side::Sandbox(..)) => {
            bail!("copy between two sandboxes through this machine: cp to a local file first")
        }
        (Side::Local(_), Side::Local(_)) => {
            bail!("one side of cove cp must be ID:/path in a sandbox")
        }
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
