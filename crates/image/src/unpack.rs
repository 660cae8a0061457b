//! Applies image layers to a staging directory, as overlayfs would stack them.
//!
//! Written here rather than with `tar::Entry::unpack_in` because a layer is not a plain archive:
//! whiteouts and opaque directories delete what lower layers made, a non-directory replaces a
//! directory, ownership is numeric, and the rules for what may be written are stricter than the
//! tar crate's (which follows symlinks already on disk when it creates parents).
//!
//! The rules (docs/images.md):
//! - names are relative: an absolute name or a `..` component refuses the image;
//! - nothing is written through a symlink: every parent of an entry must be a real directory
//!   (missing parents are created), and the entry itself replaces whatever was at its name
//!   without following it;
//! - hard links must name an existing non-directory inside the root, by the same rules;
//! - character and block devices are not created (a sandbox's `/dev` is the guest kernel's
//!   devtmpfs); FIFOs are.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;
use tar::EntryType;

use crate::ImageError;

/// What one or more layers put into the root.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UnpackStats {
    /// Entries written (files, directories, links, FIFOs).
    pub entries: u64,
    /// Bytes of regular-file content.
    pub bytes: u64,
    /// Device nodes left out by policy.
    pub devices_skipped: u64,
    /// Extended attributes the staging filesystem refused.
    pub xattrs_failed: u64,
}

fn refuse(entry: &Path, why: impl Into<String>) -> ImageError {
    ImageError::UnsafeEntry {
        entry: entry.display().to_string(),
        why: why.into(),
    }
}

/// The entry's name as a clean relative path; `None` for the root itself.
pub(crate) fn relative_name(name: &Path) -> Result<Option<PathBuf>, ImageError> {
    let mut out = PathBuf::new();
    for c in name.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(p) => out.push(p),
            Component::ParentDir => return Err(refuse(name, "`..` would leave the root")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(refuse(name, "absolute names are not allowed"));
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Makes sure every parent of `rel` under `root` is a real directory, creating missing ones.
fn parents(root: &Path, rel: &Path, entry: &Path) -> Result<(), ImageError> {
    let mut at = root.to_path_buf();
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    for c in parent.components() {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(refuse(
                    entry,
                    format!(
                        "it would be written through the symlink {}",
                        at.strip_prefix(root).unwrap_or(&at).display()
                    ),
                ));
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(refuse(
                    entry,
                    format!(
                        "its parent {} is not a directory",
                        at.strip_prefix(root).unwrap_or(&at).display()
                    ),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir(&at).map_err(|e| ImageError::io("creating", &at, e))?;
                std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| ImageError::io("setting the mode of", &at, e))?;
            }
            Err(e) => return Err(ImageError::io("inspecting", &at, e)),
        }
    }
    Ok(())
}

/// Removes whatever is at `path` (a directory with its contents), without following symlinks.
fn remove_any(path: &Path) -> Result<(), ImageError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            std::fs::remove_dir_all(path).map_err(|e| ImageError::io("removing", path, e))
        }
        Ok(_) => std::fs::remove_file(path).map_err(|e| ImageError::io("removing", path, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ImageError::io("inspecting", path, e)),
    }
}

fn set_times(path: &Path, mtime: u64) {
    let t = TimeSpec::new(i64::try_from(mtime).unwrap_or(0), 0);
    // Best effort: a timestamp is not worth refusing an image for.
    let _ = utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    );
}

/// Applies the layers to `root`, one after another.
#[derive(Debug)]
pub struct Unpacker {
    root: PathBuf,
    stats: UnpackStats,
}

impl Unpacker {
    /// Unpacks into `root` (created if missing).
    pub fn new(root: &Path) -> Result<Self, ImageError> {
        std::fs::create_dir_all(root).map_err(|e| ImageError::io("creating", root, e))?;
        Ok(Self {
            root: root.to_path_buf(),
            stats: UnpackStats::default(),
        })
    }

    /// What was written so far.
    pub fn stats(&self) -> UnpackStats {
        self.stats
    }

    /// Applies one uncompressed layer tar stream.
    pub fn apply(&mut self, layer: impl Read) -> Result<(), ImageError> {
        let mut ar = tar::Archive::new(layer);
        // Names this layer created: its own whiteouts and opaque markers leave them alone.
        let mut mine: HashSet<PathBuf> = HashSet::new();
        // Directory times are set last: writing into a directory changes its mtime.
        let mut dir_times: Vec<(PathBuf, u64)> = Vec::new();
        let entries = ar.entries().map_err(ImageError::Layer)?;
        for entry in entries {
            let mut entry = entry.map_err(ImageError::Layer)?;
            let name = entry.path().map_err(ImageError::Layer)?.into_owned();
            let Some(rel) = relative_name(&name)? else {
                // `./` itself: the root directory's metadata is the image builder's to keep.
                continue;
            };
            let file_name = rel.file_name().unwrap_or_default().as_bytes().to_vec();
            parents(&self.root, &rel, &name)?;
            let path = self.root.join(&rel);
            if let Some(hidden) = file_name.strip_prefix(b".wh.") {
                let dir = path.parent().unwrap_or(&self.root).to_path_buf();
                if hidden == b".wh..opq" {
                    self.opaque(&dir, &mine)?;
                } else {
                    if hidden.is_empty() {
                        return Err(refuse(&name, "an empty whiteout"));
                    }
                    let target = dir.join(OsStr::from_bytes(hidden));
                    if !mine.contains(&target) {
                        remove_any(&target)?;
                    }
                }
                continue;
            }
            let h = entry.header();
            let kind = h.entry_type();
            let mode = h.mode().map_err(ImageError::Layer)? & 0o7777;
            let uid = h.uid().map_err(ImageError::Layer)?;
            let gid = h.gid().map_err(ImageError::Layer)?;
            let mtime = h.mtime().unwrap_or(0);
            match kind {
                EntryType::Directory => {
                    match std::fs::symlink_metadata(&path) {
                        Ok(m) if m.is_dir() => {}
                        _ => {
                            remove_any(&path)?;
                            std::fs::create_dir(&path)
                                .map_err(|e| ImageError::io("creating", &path, e))?;
                        }
                    }
                    dir_times.push((path.clone(), mtime));
                }
                EntryType::Regular | EntryType::Continuous => {
                    remove_any(&path)?;
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .custom_flags(libc::O_NOFOLLOW)
                        .mode(0o600)
                        .open(&path)
                        .map_err(|e| ImageError::io("creating", &path, e))?;
                    let n = io::copy(&mut entry, &mut f).map_err(ImageError::Layer)?;
                    if n != entry.size() {
                        return Err(ImageError::Layer(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("truncated at {}", name.display()),
                        )));
                    }
                    self.stats.bytes += n;
                }
                EntryType::Symlink => {
                    let target = entry
                        .link_name()
                        .map_err(ImageError::Layer)?
                        .ok_or_else(|| refuse(&name, "a symlink without a target"))?;
                    remove_any(&path)?;
                    std::os::unix::fs::symlink(&target, &path)
                        .map_err(|e| ImageError::io("creating the symlink", &path, e))?;
                }
                EntryType::Link => {
                    let target = entry
                        .link_name()
                        .map_err(ImageError::Layer)?
                        .ok_or_else(|| refuse(&name, "a hard link without a target"))?
                        .into_owned();
                    let trel = match relative_name(&target) {
                        Ok(Some(t)) => t,
                        Ok(None) => return Err(refuse(&name, "a hard link to the root")),
                        Err(ImageError::UnsafeEntry { why, .. }) => {
                            return Err(refuse(
                                &name,
                                format!("its link target {}: {why}", target.display()),
                            ));
                        }
                        Err(e) => return Err(e),
                    };
                    parents(&self.root, &trel, &name)?;
                    let tpath = self.root.join(&trel);
                    match std::fs::symlink_metadata(&tpath) {
                        Ok(m) if !m.is_dir() => {}
                        Ok(_) => return Err(refuse(&name, "a hard link to a directory")),
                        Err(_) => {
                            return Err(refuse(
                                &name,
                                format!("a hard link to {}, which does not exist", trel.display()),
                            ));
                        }
                    }
                    if tpath != path {
                        remove_any(&path)?;
                        // linkat without AT_SYMLINK_FOLLOW: a link to a symlink links the
                        // symlink itself.
                        std::fs::hard_link(&tpath, &path)
                            .map_err(|e| ImageError::io("linking", &path, e))?;
                    }
                    // A hard link shares the target's inode: its metadata is the target's.
                    mine.insert(path);
                    self.stats.entries += 1;
                    continue;
                }
                EntryType::Fifo => {
                    remove_any(&path)?;
                    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
                        .map_err(|e| ImageError::io("creating the FIFO", &path, e.into()))?;
                }
                EntryType::Char | EntryType::Block => {
                    self.stats.devices_skipped += 1;
                    continue;
                }
                EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName => {
                    continue;
                }
                other => {
                    return Err(refuse(
                        &name,
                        format!("unsupported tar entry type {other:?}"),
                    ));
                }
            }
            let owner = std::os::unix::fs::lchown(
                &path,
                Some(u32::try_from(uid).map_err(|_| refuse(&name, "uid out of range"))?),
                Some(u32::try_from(gid).map_err(|_| refuse(&name, "gid out of range"))?),
            );
            owner.map_err(|e| ImageError::io("setting the owner of", &path, e))?;
            if kind != EntryType::Symlink {
                // After chown, which clears set-id bits.
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| ImageError::io("setting the mode of", &path, e))?;
            }
            if let Some(exts) = entry.pax_extensions().map_err(ImageError::Layer)? {
                for ext in exts {
                    let ext = ext.map_err(ImageError::Layer)?;
                    if let Some(attr) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.")
                        && kind != EntryType::Symlink
                        && xattr::set(&path, OsStr::from_bytes(attr), ext.value_bytes()).is_err()
                    {
                        self.stats.xattrs_failed += 1;
                    }
                }
            }
            if kind != EntryType::Directory {
                set_times(&path, mtime);
            }
            mine.insert(path);
            self.stats.entries += 1;
        }
        for (dir, mtime) in dir_times.iter().rev() {
            set_times(dir, *mtime);
        }
        Ok(())
    }

    /// An opaque directory: what lower layers put in `dir` goes.
    fn opaque(&self, dir: &Path, mine: &HashSet<PathBuf>) -> Result<(), ImageError> {
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(ImageError::io("reading", dir, e)),
        };
        for e in rd {
            let p = e.map_err(|e| ImageError::io("reading", dir, e))?.path();
            if !mine.contains(&p) {
                remove_any(&p)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A layer built entry by entry.
    pub(crate) struct Layer(tar::Builder<Vec<u8>>);

    impl Layer {
        pub(crate) fn new() -> Self {
            Self(tar::Builder::new(Vec::new()))
        }
        fn header(kind: EntryType, mode: u32) -> tar::Header {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h.set_size(0);
            h
        }
        pub(crate) fn dir(mut self, name: &str) -> Self {
            let mut h = Self::header(EntryType::Directory, 0o755);
            self.0.append_data(&mut h, name, io::empty()).unwrap();
            self
        }
        pub(crate) fn file(self, name: &str, body: &[u8]) -> Self {
            self.file_owned(name, body, 0o644, 0, 0)
        }
        pub(crate) fn file_owned(
            mut self,
            name: &str,
            body: &[u8],
            mode: u32,
            uid: u64,
            gid: u64,
        ) -> Self {
            let mut h = Self::header(EntryType::Regular, mode);
            h.set_uid(uid);
            h.set_gid(gid);
            h.set_size(body.len() as u64);
            self.0.append_data(&mut h, name, body).unwrap();
            self
        }
        /// An entry whose name is written raw into the header (the tar crate refuses `..` and
        /// absolute names in `append_data`, as a hostile builder would not).
        pub(crate) fn raw_file(mut self, name: &str, body: &[u8]) -> Self {
            let mut h = Self::header(EntryType::Regular, 0o644);
            h.set_size(body.len() as u64);
            let n = name.as_bytes();
            h.as_old_mut().name[..n.len()].copy_from_slice(n);
            h.set_cksum();
            self.0.append(&h, body).unwrap();
            self
        }
        pub(crate) fn symlink(mut self, name: &str, target: &str) -> Self {
            let mut h = Self::header(EntryType::Symlink, 0o777);
            self.0.append_link(&mut h, name, target).unwrap();
            self
        }
        pub(crate) fn hardlink(mut self, name: &str, target: &str) -> Self {
            let mut h = Self::header(EntryType::Link, 0o644);
            self.0.append_link(&mut h, name, target).unwrap();
            self
        }
        pub(crate) fn device(mut self, name: &str) -> Self {
            let mut h = Self::header(EntryType::Char, 0o666);
            self.0.append_data(&mut h, name, io::empty()).unwrap();
            self
        }
        pub(crate) fn fifo(mut self, name: &str) -> Self {
            let mut h = Self::header(EntryType::Fifo, 0o600);
            self.0.append_data(&mut h, name, io::empty()).unwrap();
            self
        }
        pub(crate) fn build(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
    }

    fn apply_all(layers: &[Vec<u8>]) -> (tempfile::TempDir, Result<UnpackStats, ImageError>) {
        let d = tempfile::tempdir().unwrap();
        let mut u = Unpacker::new(&d.path().join("root")).unwrap();
        for l in layers {
            if let Err(e) = u.apply(&l[..]) {
                return (d, Err(e));
            }
        }
        let s = u.stats();
        (d, Ok(s))
    }

    fn read(d: &tempfile::TempDir, p: &str) -> String {
        std::fs::read_to_string(d.path().join("root").join(p)).unwrap()
    }

    fn exists(d: &tempfile::TempDir, p: &str) -> bool {
        std::fs::symlink_metadata(d.path().join("root").join(p)).is_ok()
    }

    #[test]
    fn layers_stack_with_whiteouts_opaque_dirs_and_links() {
        let l1 = Layer::new()
            .dir("etc")
            .file("etc/keep", b"keep")
            .file("etc/gone", b"gone")
            .dir("opq")
            .file("opq/old", b"old")
            .file("swap", b"was a file")
            .dir("back")
            .file("back/inner", b"inner")
            .file_owned("owned", b"x", 0o4750, 1234, 4321)
            .symlink("link", "etc/keep")
            .device("dev/null")
            .fifo("pipe")
            .build();
        let l2 = Layer::new()
            .file("etc/.wh.gone", b"")
            .dir("opq")
            .file("opq/new", b"new")
            .file("opq/.wh..wh..opq", b"")
            .dir("swap")
            .file("swap/child", b"now a dir")
            .file("back", b"now a file")
            .hardlink("hard", "etc/keep")
            .build();
        let l3 = Layer::new()
            .file("swap", b"a file again")
            .dir("back")
            .file("back/again", b"a dir again")
            .build();
        let (d, stats) = apply_all(&[l1, l2, l3]);
        let stats = stats.unwrap();
        assert_eq!(read(&d, "etc/keep"), "keep");
        assert!(!exists(&d, "etc/gone"), "whiteout removes the lower file");
        assert!(
            !exists(&d, "opq/old"),
            "opaque dir hides the lower contents"
        );
        assert_eq!(read(&d, "opq/new"), "new", "but keeps its own layer's");
        assert_eq!(read(&d, "swap"), "a file again");
        assert_eq!(read(&d, "back/again"), "a dir again");
        assert!(!exists(&d, "back/inner"));
        let m = std::fs::metadata(d.path().join("root/owned")).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1234, 4321, 0o4750));
        assert_eq!(
            std::fs::read_link(d.path().join("root/link")).unwrap(),
            Path::new("etc/keep")
        );
        let a = std::fs::metadata(d.path().join("root/etc/keep")).unwrap();
        let b = std::fs::metadata(d.path().join("root/hard")).unwrap();
        assert_eq!(a.ino(), b.ino(), "hard link shares the inode");
        assert!(!exists(&d, "dev/null"), "devices are left out");
        assert_eq!(stats.devices_skipped, 1);
        use std::os::unix::fs::FileTypeExt;
        assert!(
            std::fs::symlink_metadata(d.path().join("root/pipe"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
        assert_eq!(m.mtime(), 1_700_000_000);
    }

    fn refused(layers: &[Vec<u8>], entry: &str) -> tempfile::TempDir {
        let (d, r) = apply_all(layers);
        match r {
            Err(ImageError::UnsafeEntry { entry: e, why }) => {
                assert_eq!(e, entry, "{why}");
            }
            other => panic!("expected a refusal of {entry}, got {other:?}"),
        }
        d
    }

    #[test]
    fn hostile_layers_are_refused_and_write_nothing_outside() {
        let d = refused(
            &[Layer::new().raw_file("../escape", b"x").build()],
            "../escape",
        );
        assert!(!d.path().join("escape").exists());
        refused(
            &[Layer::new().raw_file("/etc/evil", b"x").build()],
            "/etc/evil",
        );
        refused(
            &[Layer::new().raw_file("a/../../up", b"x").build()],
            "a/../../up",
        );
        // A symlink pointing out of the root, then a write through it.
        let outside = tempfile::tempdir().unwrap();
        let l = Layer::new()
            .symlink("esc", outside.path().to_str().unwrap())
            .file("esc/pwned", b"x")
            .build();
        refused(&[l], "esc/pwned");
        assert!(!outside.path().join("pwned").exists());
        // The same across layers, and through a relative link.
        let l1 = Layer::new().symlink("up", "../../..").build();
        let l2 = Layer::new().file("up/pwned", b"x").build();
        refused(&[l1, l2], "up/pwned");
        // A hard link to something outside the root.
        refused(
            &[Layer::new().hardlink("h", "../../etc/passwd").build()],
            "h",
        );
        // A hard link through a symlink.
        let l = Layer::new()
            .symlink("s", "/etc")
            .hardlink("h", "s/passwd")
            .build();
        refused(&[l], "h");
        // A whiteout through a symlink must not delete outside.
        let victim = tempfile::tempdir().unwrap();
        std::fs::write(victim.path().join("keep"), b"k").unwrap();
        let l1 = Layer::new()
            .symlink("v", victim.path().to_str().unwrap())
            .build();
        let l2 = Layer::new().file("v/.wh.keep", b"").build();
        refused(&[l1, l2], "v/.wh.keep");
        assert!(victim.path().join("keep").exists());
    }

    #[test]
    fn a_file_replacing_a_symlink_does_not_follow_it() {
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("t");
        std::fs::write(&target, b"original").unwrap();
        let l1 = Layer::new().symlink("f", target.to_str().unwrap()).build();
        let l2 = Layer::new().file("f", b"replaced").build();
        let (d, r) = apply_all(&[l1, l2]);
        r.unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "original");
        assert_eq!(read(&d, "f"), "replaced");
    }

    #[test]
    fn truncated_layers_are_refused() {
        let l = Layer::new().file("big", &[7u8; 10_000]).build();
        let cut = &l[..4096];
        let d = tempfile::tempdir().unwrap();
        let mut u = Unpacker::new(&d.path().join("root")).unwrap();
        let e = u.apply(cut).unwrap_err();
        assert!(matches!(e, ImageError::Layer(_)), "{e:?}");
    }
}
