//! The import pipeline end to end (no guest): OCI layouts and docker archives with gzip, zstd
//! and plain layers become ext4 disks whose files are read back with debugfs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use cove_image::{Event, ImageConfig, ImageError, Images, Progress, sha256_digest};
use cove_store::BlobStore;

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(size);
    h
}

/// A layer tar from (name, body) pairs: a body of `None` is a directory, `Some` a file, and a
/// name `a -> b` a symlink.
fn layer(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, body) in entries {
        if let Some((n, t)) = name.split_once(" -> ") {
            let mut h = header(tar::EntryType::Symlink, 0o777, 0);
            b.append_link(&mut h, n, t).unwrap();
            continue;
        }
        match body {
            None => {
                let mut h = header(tar::EntryType::Directory, 0o755, 0);
                b.append_data(&mut h, name, std::io::empty()).unwrap();
            }
            Some(data) => {
                let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
                b.append_data(&mut h, name, *data).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// A layer whose one file name is written raw (hostile names the tar crate would refuse).
fn raw_layer(name: &str) -> Vec<u8> {
    let mut h = header(tar::EntryType::Regular, 0o644, 1);
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &b"x"[..]).unwrap();
    b.into_inner().unwrap()
}

#[derive(Clone, Copy)]
enum Comp {
    Tar,
    Gzip,
    Zstd,
}

fn compress(tar: &[u8], c: Comp) -> (Vec<u8>, &'static str) {
    match c {
        Comp::Tar => (tar.to_vec(), "application/vnd.oci.image.layer.v1.tar"),
        Comp::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).unwrap();
            (
                e.finish().unwrap(),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        }
        Comp::Zstd => (
            zstd::encode_all(tar, 1).unwrap(),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
    }
}

fn put_blob(dir: &Path, bytes: &[u8]) -> String {
    let d = sha256_digest(bytes);
    let p = dir.join("blobs/sha256");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join(d.strip_prefix("sha256:").unwrap()), bytes).unwrap();
    d
}

fn config_json(diff_ids: &[String]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin", "GREETING=hi"], "WorkingDir": "/work",
                    "User": "1000:1000", "Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo hi"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

/// Writes an OCI layout of the layers; returns its manifest digest.
fn oci_layout(dir: &Path, layers: &[(Vec<u8>, Comp)]) -> String {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut descs = vec![];
    let mut diff_ids = vec![];
    for (tar, c) in layers {
        diff_ids.push(sha256_digest(tar));
        let (blob, mt) = compress(tar, *c);
        let d = put_blob(dir, &blob);
        descs.push(serde_json::json!({"mediaType": mt, "digest": d, "size": blob.len()}));
    }
    let cfg = config_json(&diff_ids);
    let cd = put_blob(dir, &cfg);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cfg.len()},
        "layers": descs,
    }))
    .unwrap();
    let md = put_blob(dir, &manifest);
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": md, "size": manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": "test"}}],
        }))
        .unwrap(),
    )
    .unwrap();
    md
}

/// Writes a `docker save` style archive (a tar) of uncompressed layers.
fn docker_archive(path: &Path, layers: &[Vec<u8>]) {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        b.append_data(&mut h, name, data).unwrap();
    };
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256_digest(l)).collect();
    let cfg = config_json(&diff_ids);
    let cfg_name = format!("{}.json", &sha256_digest(&cfg)[7..]);
    add(&cfg_name, &cfg);
    let mut names = vec![];
    for (i, l) in layers.iter().enumerate() {
        let n = format!("layer{i}/layer.tar");
        add(&n, l);
        names.push(n);
    }
    let m = serde_json::to_vec(&serde_json::json!([
        {"Config": cfg_name, "RepoTags": ["demo:1"], "Layers": names}
    ]))
    .unwrap();
    add("manifest.json", &m);
    std::fs::write(path, b.into_inner().unwrap()).unwrap();
}

fn tar_dir(dir: &Path, out: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

/// Reads a file out of an ext4 image without mounting it.
fn debugfs_cat(disk: &Path, path: &str) -> Option<String> {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(disk)
        .output()
        .expect("debugfs (e2fsprogs)");
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    (!err.contains("File not found")).then_some(s)
}

fn debugfs_stat(disk: &Path, path: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", &format!("stat {path}")])
        .arg(disk)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[derive(Default)]
struct Events(Mutex<Vec<String>>);

impl Progress for Events {
    fn event(&self, ev: &Event) {
        let name = match ev {
            Event::Resolved { .. } => "resolved",
            Event::Installed { .. } => "installed",
            Event::Done { .. } => "done",
            Event::Disk { .. } => "disk",
            _ => return,
        };
        self.0.lock().unwrap().push(name.into());
    }
}

fn store(home: &Path) -> Images {
    Images::open(home, BlobStore::local(home).unwrap()).unwrap()
}

fn stacked_layers() -> Vec<Vec<u8>> {
    vec![
        layer(&[
            ("etc", None),
            ("etc/keep", Some(b"keep")),
            ("etc/gone", Some(b"gone")),
            ("opq", None),
            ("opq/old", Some(b"old")),
            ("swap", Some(b"file")),
            ("bin", None),
            ("bin/sh", Some(b"#!")),
            ("link -> etc/keep", None),
        ]),
        layer(&[
            ("etc/.wh.gone", Some(b"")),
            ("opq/.wh..wh..opq", Some(b"")),
            ("opq/new", Some(b"new")),
            ("swap", None),
            ("swap/child", Some(b"dir now")),
        ]),
        layer(&[
            ("work", None),
            ("work/hello.txt", Some(b"hello from layer 3")),
        ]),
    ]
}

fn no_leftovers(home: &Path) {
    let left: Vec<_> = std::fs::read_dir(home.join("tmp/images"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "staging left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_layout_with_mixed_compression_becomes_a_disk() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let ls = stacked_layers();
    let layout = t.path().join("layout");
    let digest = oci_layout(
        &layout,
        &[
            (ls[0].clone(), Comp::Gzip),
            (ls[1].clone(), Comp::Zstd),
            (ls[2].clone(), Comp::Tar),
        ],
    );
    let images = store(&home);
    let ev = Events::default();
    let m = images.import(&layout, None, &ev).await.unwrap();
    assert_eq!(m.digest, digest);
    assert_eq!(m.layers.len(), 3);
    assert_eq!(
        m.config,
        ImageConfig {
            env: vec!["PATH=/bin".into(), "GREETING=hi".into()],
            workdir: Some("/work".into()),
            user: Some("1000:1000".into()),
            entrypoint: vec!["/bin/sh".into(), "-c".into()],
            cmd: vec!["echo hi".into()],
        }
    );
    let disk = images.disk(&m);
    assert_eq!(debugfs_cat(&disk, "/etc/keep").as_deref(), Some("keep"));
    assert_eq!(debugfs_cat(&disk, "/etc/gone"), None);
    assert_eq!(debugfs_cat(&disk, "/opq/old"), None);
    assert_eq!(debugfs_cat(&disk, "/opq/new").as_deref(), Some("new"));
    assert_eq!(
        debugfs_cat(&disk, "/swap/child").as_deref(),
        Some("dir now")
    );
    assert_eq!(
        debugfs_cat(&disk, "/work/hello.txt").as_deref(),
        Some("hello from layer 3")
    );
    assert!(debugfs_stat(&disk, "/link").contains("Type: symlink"));
    assert_eq!(images.list().len(), 1);
    assert!(images.get(&digest).is_some());
    no_leftovers(&home);

    // The same image again: a cache hit, nothing rebuilt.
    let ev2 = Events::default();
    let again = images.import(&layout, None, &ev2).await.unwrap();
    assert_eq!(again, m);
    assert_eq!(*ev2.0.lock().unwrap(), vec!["installed".to_string()]);

    // The layout as a tar, and by its ref name: the same image.
    let tarred = t.path().join("layout.tar");
    tar_dir(&layout, &tarred);
    let from_tar = images
        .import(&tarred, Some("test"), &Events::default())
        .await
        .unwrap();
    assert_eq!(from_tar.digest, digest);
    let e = images
        .import(&layout, Some("nope"), &Events::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no image named \"nope\""), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_archives_import_and_concurrent_imports_build_once() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let archive = t.path().join("demo.tar");
    docker_archive(&archive, &stacked_layers());
    let images = store(&home);
    let ev = std::sync::Arc::new(Events::default());
    let runs: Vec<_> = (0..3)
        .map(|_| {
            let (images, archive, ev) = (images.clone(), archive.clone(), ev.clone());
            tokio::spawn(async move { images.import(&archive, None, &*ev).await })
        })
        .collect();
    let mut digests = vec![];
    for r in runs {
        digests.push(r.await.unwrap().unwrap().digest);
    }
    digests.dedup();
    assert_eq!(digests.len(), 1);
    let done = ev.0.lock().unwrap().iter().filter(|e| *e == "disk").count();
    assert_eq!(done, 1, "one build for three concurrent imports");
    let m = images.get(&digests[0]).unwrap();
    assert_eq!(
        debugfs_cat(&images.disk(&m), "/swap/child").as_deref(),
        Some("dir now")
    );
    // By tag; an unknown tag is refused.
    assert!(
        images
            .import(&archive, Some("demo:1"), &Events::default())
            .await
            .is_ok()
    );
    assert!(
        images
            .import(&archive, Some("demo:2"), &Events::default())
            .await
            .is_err()
    );
    no_leftovers(&home);
}

fn assert_nothing_installed(images: &Images, home: &Path) {
    assert!(images.list().is_empty(), "{:?}", images.list());
    no_leftovers(home);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_truncated_and_hostile_images_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let images = store(&home);
    let good = stacked_layers();

    // A blob whose bytes do not match its digest.
    let layout = t.path().join("corrupt");
    oci_layout(&layout, &[(good[0].clone(), Comp::Tar)]);
    // A file's content (not a header, whose own checksum would catch it first).
    let blob = find_blob_containing(&layout, b"file");
    let mut bytes = std::fs::read(&blob).unwrap();
    let i = bytes.windows(4).position(|w| w == b"file").unwrap();
    bytes[i] = b'F';
    std::fs::write(&blob, &bytes).unwrap();
    let e = images
        .import(&layout, None, &Events::default())
        .await
        .unwrap_err();
    assert!(matches!(e, ImageError::Digest { .. }), "{e}");
    assert_nothing_installed(&images, &home);

    // A gzip layer cut short.
    let layout = t.path().join("truncated");
    oci_layout(&layout, &[(good[0].clone(), Comp::Gzip)]);
    let blob = largest_blob(&layout);
    let bytes = std::fs::read(&blob).unwrap();
    std::fs::write(&blob, &bytes[..bytes.len() / 2]).unwrap();
    let e = images
        .import(&layout, None, &Events::default())
        .await
        .unwrap_err();
    assert!(
        matches!(e, ImageError::Layer(_) | ImageError::Digest { .. }),
        "{e}"
    );
    assert_nothing_installed(&images, &home);

    // Path traversal, absolute names, and a write through a symlink that leaves the root.
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let escape = format!("esc -> {}", outside.display());
    for (layers, entry) in [
        (vec![raw_layer("../../evil")], "../../evil"),
        (vec![raw_layer("/etc/evil")], "/etc/evil"),
        (
            vec![
                layer(&[(escape.as_str(), None)]),
                layer(&[("esc/pwned", Some(b"x"))]),
            ],
            "esc/pwned",
        ),
    ] {
        let layout = t
            .path()
            .join(format!("hostile-{}", entry.replace('/', "_")));
        oci_layout(
            &layout,
            &layers
                .into_iter()
                .map(|l| (l, Comp::Gzip))
                .collect::<Vec<_>>(),
        );
        let e = images
            .import(&layout, None, &Events::default())
            .await
            .unwrap_err();
        match &e {
            ImageError::UnsafeEntry { entry: got, .. } => assert_eq!(got, entry),
            other => panic!("{entry}: expected a refusal, got {other}"),
        }
        assert!(e.to_string().contains(entry), "{e}");
        assert_nothing_installed(&images, &home);
    }
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    assert!(!t.path().join("evil").exists());

    // Not an image at all.
    let e = images
        .import(t.path(), None, &Events::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("neither an OCI layout"), "{e}");
}

fn blobs(layout: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect()
}

fn find_blob_containing(layout: &Path, needle: &[u8]) -> PathBuf {
    blobs(layout)
        .into_iter()
        .find(|p| {
            std::fs::read(p)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
        })
        .unwrap()
}

fn largest_blob(layout: &Path) -> PathBuf {
    blobs(layout)
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_directory_imports_as_a_one_layer_image() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("rootfs");
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::write(root.join("usr/bin/tool"), b"tool").unwrap();
    std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
    std::fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool2")).unwrap();
    let images = store(&t.path().join("home"));
    let cfg = ImageConfig {
        cmd: vec!["tool".into()],
        ..Default::default()
    };
    let m = images
        .import_rootfs(&root, cfg.clone(), &Events::default())
        .await
        .unwrap();
    assert_eq!(m.config, cfg);
    let disk = images.disk(&m);
    assert_eq!(
        debugfs_cat(&disk, "/usr/bin/tool2").as_deref(),
        Some("tool")
    );
    assert!(debugfs_stat(&disk, "/bin").contains("Type: symlink"));
    // The same content is the same image.
    let again = images
        .import_rootfs(&root, cfg, &Events::default())
        .await
        .unwrap();
    assert_eq!(again.digest, m.digest);
}
