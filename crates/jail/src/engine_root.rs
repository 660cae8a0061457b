//! The files an engine program needs and nothing else: the program, the shared libraries the
//! dynamic loader resolves for it (and for its accelerator modules), the loader's cache, and
//! the firmware it loads. Built once per program identity under the host's jail directory and
//! shown read-only in every jail, so a jail costs a handful of bind mounts, not one per library.
//!
//! Files are hard links where the host's files share a filesystem with the Cove home (no copy,
//! no space), copies otherwise; a tree is built under a temporary name and renamed, so a
//! half-built one is never used.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Why an engine's tree could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EngineRootError {
    /// `ldd` could not list what the program needs.
    #[error("listing the libraries of {program} with ldd: {detail}")]
    Ldd {
        /// The program.
        program: String,
        /// What went wrong.
        detail: String,
    },
    /// A file could not be placed.
    #[error("placing {path} in the engine's jail tree")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The top-level directories a tree may hold; the jail shows each that exists.
pub const TOP: [&str; 4] = ["usr", "lib", "lib64", "etc"];

/// What identifies a program's build without reading it (device, inode, size, mtime).
fn identity(p: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some(format!(
        "{:x}-{:x}-{:x}-{:x}",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime()
    ))
}

/// The tree for QEMU at `qemu` under `dir` (built when missing). Besides what `ldd` lists, it
/// holds QEMU's accelerator modules (Debian builds TCG as one) and the microvm firmware.
pub fn qemu(dir: &Path, qemu: &Path) -> Result<PathBuf, EngineRootError> {
    let qemu = std::fs::canonicalize(qemu).map_err(|source| EngineRootError::Io {
        path: qemu.display().to_string(),
        source,
    })?;
    let id = identity(&qemu).unwrap_or_else(|| "unknown".into());
    let name = qemu.file_name().and_then(|n| n.to_str()).unwrap_or("qemu");
    let root = dir.join(format!("{name}-{id}"));
    if root.join("usr").is_dir() {
        return Ok(root);
    }
    let mut files = vec![qemu.clone()];
    let modules: Vec<PathBuf> = [
        "/usr/lib/x86_64-linux-gnu/qemu",
        "/usr/lib64/qemu",
        "/usr/lib/qemu",
    ]
    .iter()
    .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
    .map(|e| e.path())
    .filter(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("accel-") && n.ends_with(".so"))
    })
    .collect();
    for m in &modules {
        files.push(m.clone());
    }
    for p in std::iter::once(&qemu).chain(&modules) {
        files.extend(libraries(p)?);
    }
    for fw in [
        "bios-microvm.bin",
        "qboot.rom",
        "pvh.bin",
        "linuxboot_dma.bin",
        "kvmvapic.bin",
    ] {
        let p = Path::new("/usr/share/qemu").join(fw);
        if p.exists() {
            files.push(p);
        }
    }
    files.push(PathBuf::from("/etc/ld.so.cache"));
    build(&root, &files)?;
    Ok(root)
}

/// The shared libraries and loader `ldd` resolves for `program`, as absolute paths.
fn libraries(program: &Path) -> Result<Vec<PathBuf>, EngineRootError> {
    let err = |detail: String| EngineRootError::Ldd {
        program: program.display().to_string(),
        detail,
    };
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        return Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = Vec::new();
    for line in text.lines() {
        // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
        let path = match line.split_once("=>") {
            Some((_, r)) => r.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        } else if line.contains("not found") {
            return Err(err(line.trim().to_string()));
        }
    }
    Ok(libs)
}

/// Places `files` (absolute paths, symlinks resolved to their content) under `root`, at their
/// own paths.
fn build(root: &Path, files: &[PathBuf]) -> Result<(), EngineRootError> {
    // Each builder its own: two creates of one process may build at once (the first rename
    // wins, the other's tree is dropped).
    static BUILDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = root.with_extension(format!("tmp{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let io = |p: &Path| {
        let path = p.display().to_string();
        move |source| EngineRootError::Io { path, source }
    };
    for f in files {
        let rel = f.strip_prefix("/").unwrap_or(f);
        let dst = tmp.join(rel);
        if dst.exists() {
            continue;
        }
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let real = std::fs::canonicalize(f).map_err(io(f))?;
        if std::fs::hard_link(&real, &dst).is_err() {
            std::fs::copy(&real, &dst).map_err(io(f))?;
        }
    }
    match std::fs::rename(&tmp, root) {
        Ok(()) => Ok(()),
        // Another process built it meanwhile: theirs is as good.
        Err(_) if root.join("usr").is_dir() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => Err(io(root)(e)),
    }
}
