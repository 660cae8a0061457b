//! The image disk: `mkfs.ext4 -d` from the staging directory (no loop mounts, no root needed
//! beyond what unpacking took).

use std::path::Path;
use std::process::Command;

use crate::ImageError;
use crate::unpack::UnpackStats;

/// Blocks of metadata and slack to add beyond the content (bytes).
const HEADROOM: u64 = 32 << 20;

/// The disk's size and inode count for what was unpacked. Every entry may take a block of its
/// own (small files, directories, symlinks), and ext4 needs room for its tables; the file is
/// sparse, so generous sizing costs little.
pub(crate) fn sizing(s: UnpackStats) -> (u64, u64) {
    let data = s.bytes + s.entries * 4096;
    let size = (data + data / 8 + HEADROOM).div_ceil(1 << 20) << 20;
    let inodes = s.entries + s.entries / 4 + 1024;
    (size, inodes)
}

/// Writes `root` into a new ext4 file `disk`.
pub(crate) fn build(root: &Path, disk: &Path, s: UnpackStats) -> Result<(), ImageError> {
    let (size, inodes) = sizing(s);
    let _ = std::fs::remove_file(disk);
    let out = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-L",
            "cove-image",
            "-m",
            "0",
            "-O",
            "^has_journal",
        ])
        .args(["-N", &inodes.to_string()])
        .args(["-E", "root_owner=0:0,nodiscard"])
        .arg("-d")
        .arg(root)
        .arg(disk)
        .arg(format!("{}k", size / 1024))
        .output()
        .map_err(|e| {
            ImageError::Mkfs(format!("running mkfs.ext4 (install e2fsprogs ≥ 1.43): {e}"))
        })?;
    if !out.status.success() {
        let _ = std::fs::remove_file(disk);
        return Err(ImageError::Mkfs(format!(
            "mkfs.ext4 failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizing_leaves_room_for_many_small_files() {
        let (size, inodes) = sizing(UnpackStats {
            entries: 100_000,
            bytes: 1 << 20,
            ..Default::default()
        });
        assert!(size > 100_000 * 4096, "{size}");
        assert!(inodes > 100_000);
        assert_eq!(size % (1 << 20), 0);
    }
}
