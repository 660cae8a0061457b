//! Images end to end: a real registry (Debian's docker-registry) with and without basic auth,
//! images pushed with skopeo (gzip and zstd layers, a multi-platform index), pulled by tag and by
//! digest, booted, and checked from inside the guest; docker archives; hostile and corrupt images.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cove_tests::{Registry, Sandbox, TempDir, cove, cove_out, default_layout, sha256, text};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(args: &[&str]) -> String {
    let o = cove_out(args);
    assert!(o.status.success(), "cove {args:?}: {}", stderr(&o));
    text(&o)
}

fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256(bytes))
}

/// An OCI layout being assembled: starts as a copy of the busybox layout.
struct Layout {
    dir: PathBuf,
    /// New layers are zstd-compressed (else gzip).
    zstd: bool,
    manifest: serde_json::Value,
    config: serde_json::Value,
}

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

/// Layer contents, one entry at a time.
struct L(tar::Builder<Vec<u8>>);

impl L {
    fn new() -> Self {
        Self(tar::Builder::new(Vec::new()))
    }
    fn dir(mut self, n: &str) -> Self {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        self.0.append_data(&mut h, n, std::io::empty()).unwrap();
        self
    }
    fn file(self, n: &str, body: &[u8]) -> Self {
        self.owned(n, body, 0o644, 0, 0)
    }
    fn owned(mut self, n: &str, body: &[u8], mode: u32, uid: u64, gid: u64) -> Self {
        let mut h = header(tar::EntryType::Regular, mode, body.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.0.append_data(&mut h, n, body).unwrap();
        self
    }
    fn raw(mut self, n: &str, body: &[u8]) -> Self {
        let mut h = header(tar::EntryType::Regular, 0o644, body.len() as u64);
        h.as_old_mut().name[..n.len()].copy_from_slice(n.as_bytes());
        h.set_cksum();
        self.0.append(&h, body).unwrap();
        self
    }
    fn symlink(mut self, n: &str, t: &str) -> Self {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        self.0.append_link(&mut h, n, t).unwrap();
        self
    }
    fn hardlink(mut self, n: &str, t: &str) -> Self {
        let mut h = header(tar::EntryType::Link, 0o644, 0);
        self.0.append_link(&mut h, n, t).unwrap();
        self
    }
    fn device(mut self, n: &str) -> Self {
        let mut h = header(tar::EntryType::Char, 0o666, 0);
        self.0.append_data(&mut h, n, std::io::empty()).unwrap();
        self
    }
    fn done(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

impl Layout {
    fn from_busybox(dir: &Path) -> Self {
        let base = default_layout("busybox");
        let st = Command::new("cp")
            .arg("-r")
            .arg(&base)
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success());
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
        let read = |d: &serde_json::Value| -> serde_json::Value {
            let hex = d
                .as_str()
                .unwrap()
                .strip_prefix("sha256:")
                .unwrap()
                .to_string();
            serde_json::from_slice(&std::fs::read(dir.join("blobs/sha256").join(hex)).unwrap())
                .unwrap()
        };
        let manifest = read(&index["manifests"][0]["digest"]);
        let config = read(&manifest["config"]["digest"]);
        Self {
            dir: dir.to_path_buf(),
            zstd: false,
            manifest,
            config,
        }
    }

    fn blob(&self, bytes: &[u8]) -> String {
        let d = digest_of(bytes);
        std::fs::write(self.dir.join("blobs/sha256").join(&d[7..]), bytes).unwrap();
        d
    }

    /// Appends a gzip (or zstd) layer.
    fn push_layer(&mut self, tar: &[u8]) {
        use std::io::Write;
        let (blob, mt) = if self.zstd {
            (
                zstd::encode_all(tar, 3).unwrap(),
                "application/vnd.oci.image.layer.v1.tar+zstd",
            )
        } else {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).unwrap();
            (
                e.finish().unwrap(),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        };
        let d = self.blob(&blob);
        self.manifest["layers"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "mediaType": mt,
                "digest": d, "size": blob.len(),
            }));
        self.config["rootfs"]["diff_ids"]
            .as_array_mut()
            .unwrap()
            .push(digest_of(tar).into());
    }

    /// Writes config and manifest; returns the manifest's descriptor.
    fn seal(&mut self) -> serde_json::Value {
        let cfg = serde_json::to_vec(&self.config).unwrap();
        let cd = self.blob(&cfg);
        self.manifest["config"]["digest"] = cd.into();
        self.manifest["config"]["size"] = cfg.len().into();
        let m = serde_json::to_vec(&self.manifest).unwrap();
        let md = self.blob(&m);
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md, "size": m.len(),
        })
    }

    fn write_index(&self, entries: Vec<serde_json::Value>) {
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": entries}))
                .unwrap(),
        )
        .unwrap();
    }

    /// A layout of one image, tagged `tag`; returns its manifest digest.
    fn finish(mut self, tag: &str) -> String {
        let mut d = self.seal();
        d["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
        self.write_index(vec![d.clone()]);
        d["digest"].as_str().unwrap().to_string()
    }
}

/// Busybox plus three layers that exercise every overlay rule.
fn stacked(dir: &Path, zstd: bool) -> Layout {
    let mut l = Layout::from_busybox(dir);
    l.zstd = zstd;
    l.push_layer(
        &L::new()
            .dir("etc/cove-test")
            .file("etc/cove-test/keep", b"keep")
            .file("etc/cove-test/gone", b"gone")
            .dir("opq")
            .file("opq/old", b"old")
            .file("swap", b"file")
            .dir("back")
            .file("back/inner", b"inner")
            .owned("owned", b"x", 0o4750, 1234, 4321)
            .symlink("link", "etc/cove-test/keep")
            .device("dev-node")
            .done(),
    );
    l.push_layer(
        &L::new()
            .file("etc/cove-test/.wh.gone", b"")
            .file("opq/.wh..wh..opq", b"")
            .file("opq/new", b"new")
            .dir("swap")
            .file("swap/child", b"child")
            .file("back", b"now a file")
            .hardlink("hard", "etc/cove-test/keep")
            .done(),
    );
    l.push_layer(
        &L::new()
            .file("swap", b"a file again")
            .dir("back")
            .file("back/again", b"a dir again")
            .dir("work")
            .done(),
    );
    let c = &mut l.config["config"];
    c["Env"]
        .as_array_mut()
        .unwrap()
        .push("GREETING=hello".into());
    c["WorkingDir"] = "/work".into();
    c["Entrypoint"] = serde_json::json!(["sh", "-c"]);
    c["Cmd"] = serde_json::json!(["echo $GREETING from $(pwd)"]);
    l
}

const CHECK: &str = r#"
cat /etc/cove-test/keep; echo
test ! -e /etc/cove-test/gone && echo whiteout-ok
test ! -e /opq/old && cat /opq/new && echo
cat /swap; echo
cat /back/again; echo
test ! -e /back/inner && echo back-ok
stat -c '%u:%g %a' /owned
readlink /link
[ "$(stat -c %i /hard)" = "$(stat -c %i /etc/cove-test/keep)" ] && echo hardlink-ok
test ! -e /dev-node && echo no-device
"#;

const EXPECTED: &str = "keep\nwhiteout-ok\nnew\na file again\na dir again\nback-ok\n1234:4321 4750\netc/cove-test/keep\nhardlink-ok\nno-device\n";

fn check_in_guest(image: &str) {
    let o = cove_out(&["run", "--image", image, "--", "sh", "-c", CHECK]);
    assert!(o.status.success(), "{image}: {}", stderr(&o));
    assert_eq!(text(&o), EXPECTED, "{image}");
}

#[test]
fn pull_from_a_registry_boot_and_check_every_layer_rule() {
    let reg = Registry::start(None);
    let tmp = TempDir::new("stack");
    let layout = tmp.0.join("layout");
    let digest = stacked(&layout, false).finish("stack");
    let src = format!("oci:{}:stack", layout.display());
    reg.push(&src, "cove/stack:gzip", None, None);
    let zlayout = tmp.0.join("zstd");
    stacked(&zlayout, true).finish("stack");
    reg.push(
        &format!("oci:{}:stack", zlayout.display()),
        "cove/stack:zstd",
        None,
        None,
    );

    // By tag, gzip layers as built.
    let gz = format!("{}/cove/stack:gzip", reg.addr);
    let out = ok(&["image", "pull", "--insecure", &gz]);
    assert_eq!(out, format!("{digest} {gz}\n"));
    check_in_guest(&gz);
    // No command: the image's entrypoint and command, env and working directory.
    let o = cove_out(&["run", "--image", &gz]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(text(&o), "hello from /work\n");

    // The same layers compressed with zstd: another manifest, the same files.
    let zs = format!("{}/cove/stack:zstd", reg.addr);
    let out = ok(&["image", "pull", "--insecure", &zs]);
    let zdigest = out.split_whitespace().next().unwrap().to_string();
    assert_ne!(zdigest, digest);
    let info: serde_json::Value = serde_json::from_str(&ok(&["image", "inspect", &zs])).unwrap();
    assert!(
        info["layers"]
            .as_array()
            .unwrap()
            .iter()
            .skip(1)
            .all(|l| l["media_type"].as_str().unwrap().ends_with("+zstd")),
        "{info}"
    );
    check_in_guest(&zs);

    // By digest: already installed, so a cache hit that still checks the registry's manifest.
    let by_digest = format!("{}/cove/stack@{digest}", reg.addr);
    let out = ok(&["image", "pull", "--insecure", &by_digest]);
    assert_eq!(out, format!("{digest}\n"), "a pull by digest names nothing");
    let o = cove_out(&["run", "--image", &by_digest, "--", "cat", "/swap"]);
    assert_eq!(text(&o), "a file again", "{}", stderr(&o));

    // Plain HTTPS is the default: this registry speaks HTTP, so without --insecure it fails.
    let o = cove_out(&["image", "pull", &gz]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("registry"), "{}", stderr(&o));

    // A multi-platform index: linux/amd64 is chosen (the arm64 entry is not even an image
    // Cove could unpack: it would fail).
    let tmp2 = TempDir::new("index");
    let mut multi = stacked(&tmp2.0.join("layout"), false);
    let amd = multi.seal();
    multi.push_layer(&L::new().raw("../not-for-amd64", b"x").done());
    let arm = multi.seal();
    let mut entries = vec![];
    for (d, arch) in [(&arm, "arm64"), (&amd, "amd64")] {
        let mut d = d.clone();
        d["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
        entries.push(d);
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    }))
    .unwrap();
    let index_digest = multi.blob(&index);
    multi.write_index(vec![serde_json::json!({
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": index_digest, "size": index.len(),
        "annotations": {"org.opencontainers.image.ref.name": "multi"},
    })]);
    let c = Command::new("skopeo")
        .args(["copy", "--quiet", "--all", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:multi", multi.dir.display()))
        .arg(format!("docker://{}/cove/multi:1", reg.addr))
        .output()
        .unwrap();
    assert!(c.status.success(), "{}", stderr(&c));
    let multi_ref = format!("{}/cove/multi:1", reg.addr);
    let out = ok(&["image", "pull", "--insecure", &multi_ref]);
    assert!(out.starts_with(amd["digest"].as_str().unwrap()), "{out}");

    // The names go (the registry's port is new every run); the images stay cached.
    for r in [&gz, &zs, &multi_ref] {
        let out = ok(&["image", "rm", r]);
        assert!(
            out.starts_with("untagged") || out.starts_with("removed"),
            "{out}"
        );
    }
}

#[test]
fn basic_auth_from_flags_and_docker_config() {
    let reg = Registry::start(Some(("cove", "s3cret")));
    let tmp = TempDir::new("auth");
    let layout = tmp.0.join("layout");
    // Unique content, so nothing of it is cached from another test.
    let mut l = Layout::from_busybox(&layout);
    let nonce = format!("{:?}", std::time::SystemTime::now());
    l.push_layer(&L::new().file("nonce", nonce.as_bytes()).done());
    let digest = l.finish("auth");
    reg.push(
        &format!("oci:{}:auth", layout.display()),
        "private/img:1",
        Some("cove:s3cret"),
        None,
    );
    let r = format!("{}/private/img:1", reg.addr);
    let pull = |extra: &[&str], password: Option<&str>, docker_config: Option<&Path>| {
        let mut c = cove();
        c.args(["image", "pull", "--insecure", "--quiet"])
            .args(extra)
            .arg(&r);
        c.env(
            "DOCKER_CONFIG",
            docker_config.unwrap_or(Path::new("/nonexistent")),
        );
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            if let Some(p) = password {
                stdin.write_all(format!("{p}\n").as_bytes()).unwrap();
            }
        }
        child.wait_with_output().unwrap()
    };
    let o = pull(&[], None, None);
    assert!(!o.status.success(), "anonymous pull of a private image");
    let o = pull(
        &["--username", "cove", "--password-stdin"],
        Some("wrong"),
        None,
    );
    assert!(!o.status.success(), "wrong password");
    let o = pull(
        &["--username", "cove", "--password-stdin"],
        Some("s3cret"),
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(text(&o).starts_with(&digest));
    // Credentials from a docker config.json (base64 of user:password).
    let cfgdir = tmp.0.join("docker");
    std::fs::create_dir_all(&cfgdir).unwrap();
    let b64 = Command::new("base64")
        .arg("-w0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"cove:s3cret")?;
            c.wait_with_output()
        })
        .unwrap();
    let auth = String::from_utf8(b64.stdout).unwrap();
    std::fs::write(
        cfgdir.join("config.json"),
        serde_json::to_vec(&serde_json::json!({"auths": {reg.addr.clone(): {"auth": auth}}}))
            .unwrap(),
    )
    .unwrap();
    let o = pull(&[], None, Some(&cfgdir));
    assert!(o.status.success(), "{}", stderr(&o));
    let sb = Sandbox::create(&r, &[]);
    let o = sb.exec(&[], &["cat", "/nonce"], b"");
    assert_eq!(text(&o), nonce);
    drop(sb);
    assert_eq!(ok(&["image", "rm", &r]), format!("removed {digest}\n"));
}

#[test]
fn hostile_and_corrupt_images_are_refused_and_leave_nothing() {
    let reg = Registry::start(None);
    let tmp = TempDir::new("hostile");
    let mut refused = vec![];
    let nonce = format!("{:?}", std::time::SystemTime::now());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "traversal",
            L::new().raw("../../escape", b"x").done(),
            "../../escape",
        ),
        (
            "absolute",
            L::new().raw("/etc/evil", b"x").done(),
            "/etc/evil",
        ),
        (
            "symlink",
            L::new()
                .symlink("esc", "/tmp")
                .file("esc/cove-pwned", nonce.as_bytes())
                .done(),
            "esc/cove-pwned",
        ),
    ];
    for (name, layer, entry) in cases {
        let dir = tmp.0.join(name);
        let mut l = Layout::from_busybox(&dir);
        l.push_layer(&layer);
        refused.push(l.finish(name));
        reg.push(
            &format!("oci:{}:{name}", dir.display()),
            &format!("evil/{name}:1"),
            None,
            None,
        );
        let o = cove_out(&[
            "image",
            "pull",
            "--insecure",
            &format!("{}/evil/{name}:1", reg.addr),
        ]);
        assert!(!o.status.success(), "{name} was accepted");
        let err = stderr(&o);
        assert!(
            err.contains("refused the image") && err.contains(entry),
            "{name}: {err}"
        );
    }
    assert!(!Path::new("/tmp/cove-pwned").exists());

    // A blob the registry serves with bytes that do not match its digest.
    let dir = tmp.0.join("corrupt");
    let mut l = Layout::from_busybox(&dir);
    l.push_layer(&L::new().file("nonce", nonce.as_bytes()).done());
    let layer = l.manifest["layers"].as_array().unwrap().last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    refused.push(l.finish("corrupt"));
    reg.push(
        &format!("oci:{}:corrupt", dir.display()),
        "evil/corrupt:1",
        None,
        None,
    );
    let hex = &layer[7..];
    let data = reg
        .storage
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let mut bytes = std::fs::read(&data).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    let o = cove_out(&[
        "image",
        "pull",
        "--insecure",
        &format!("{}/evil/corrupt:1", reg.addr),
    ]);
    assert!(!o.status.success(), "a corrupt blob was accepted");
    assert!(
        stderr(&o).to_lowercase().contains("digest"),
        "{}",
        stderr(&o)
    );

    // Nothing of them was installed (other tests share the home: look for these digests).
    let installed = ok(&["image", "ls", "--quiet"]);
    for d in refused {
        assert!(!installed.contains(&d), "{d} was installed");
    }
}

#[test]
fn docker_archives_import_and_images_in_use_are_kept() {
    let tmp = TempDir::new("archive");
    let layout = tmp.0.join("layout");
    let mut l = Layout::from_busybox(&layout);
    let nonce = format!("{:?}", std::time::SystemTime::now());
    l.push_layer(&L::new().file("nonce", nonce.as_bytes()).done());
    l.finish("arch");
    let archive = tmp.0.join("image.tar");
    let o = Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:arch", layout.display()))
        .arg(format!(
            "docker-archive:{}:cove-test/archive:v1",
            archive.display()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = ok(&["image", "import", "--quiet", archive.to_str().unwrap()]);
    assert!(out.contains("cove-test/archive:v1"), "{out}");
    let name = "docker.io/cove-test/archive:v1";
    let info: serde_json::Value = serde_json::from_str(&ok(&["image", "inspect", name])).unwrap();
    let digest = info["digest"].as_str().unwrap().to_string();

    // In use: refused, and still there; after the sandbox goes, removed.
    let sb = Sandbox::create(name, &[]);
    assert_eq!(text(&sb.exec(&[], &["cat", "/nonce"], b"")), nonce);
    let o = cove_out(&["image", "rm", name]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(&format!("in use by sandbox {}", sb.id)),
        "{}",
        stderr(&o)
    );
    ok(&["image", "inspect", &digest]);
    drop(sb);
    let out = ok(&["image", "rm", name]);
    assert_eq!(out, format!("removed {digest}\n"));
    let o = cove_out(&["image", "inspect", &digest]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no such image"), "{}", stderr(&o));
    let o = cove_out(&["run", "--image", name, "--", "true"]);
    assert!(!o.status.success());
}
