//! Fixture for end-to-end tests: a Cove home with the real guest kernel and images, the `cove`
//! binary, and sandboxes that remove themselves.
//!
//! These tests never skip: without QEMU, the kernel or the images they fail with what to run.

pub mod net;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use cove_host::AgentClient;

/// The Cove home the tests use: `COVE_TEST_HOME`, else `target/cove-test-home`.
pub fn home() -> PathBuf {
    let home = std::env::var_os("COVE_TEST_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/cove-test-home"));
    for need in ["kernel/vmlinux", "kernel/initramfs.cpio"] {
        assert!(
            home.join(need).is_file(),
            "{} is missing: run `make test` (or guest/setup.sh {}) first; end-to-end tests never skip",
            home.join(need).display(),
            home.display()
        );
    }
    let host = cove_host::Host::open(&home).expect("opening the test home");
    for image in ["busybox", "python", "base"] {
        if let Err(e) = host.image(image) {
            panic!(
                "{e}: run `make test` (or guest/setup.sh {}) first; end-to-end tests never skip",
                home.display()
            );
        }
    }
    assert!(
        Path::new("/usr/bin/qemu-system-x86_64").is_file()
            || std::env::var_os("COVE_QEMU").is_some(),
        "qemu-system-x86_64 is missing: run `make setup`"
    );
    home
}

/// Where the workspace's binaries are (`target/<profile>`).
pub fn bin_dir() -> PathBuf {
    // Test executables live in target/<profile>/deps; the binaries one level up.
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// The `cove` CLI, with the test home.
pub fn cove() -> Command {
    let bin = bin_dir().join("cove");
    assert!(
        bin.is_file(),
        "{} is missing: build the workspace first (`cargo build`)",
        bin.display()
    );
    let mut c = Command::new(bin);
    c.env("COVE_HOME", home())
        .env("COVE_VM_BIN", bin_dir().join("cove-vm"));
    c
}

/// `cove ARGS` against the coved at `url` with `key` (`COVE_HOST`, `COVE_API_KEY`).
pub fn cove_with_key(url: &str, key: &str, args: &[&str]) -> Output {
    cove()
        .args(args)
        .env("COVE_HOST", url)
        .env("COVE_API_KEY", key)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running cove")
}

/// Runs `cove ARGS` and returns its output.
pub fn cove_out(args: &[&str]) -> Output {
    cove().args(args).output().expect("running cove")
}

/// Stdout as text, after asserting the command succeeded (its stdout and stderr otherwise).
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}{}",
        text(o),
        String::from_utf8_lossy(&o.stderr)
    );
    text(o)
}

/// Stdout as text.
pub fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A sandbox created through the CLI and removed (`cove rm -f`) when dropped.
#[derive(Debug)]
pub struct Sandbox {
    /// Its id.
    pub id: String,
}

impl Sandbox {
    /// `cove create --image IMAGE EXTRA...`.
    pub fn create(image: &str, extra: &[&str]) -> Self {
        let mut args = vec!["create", "--image", image, "--memory", "256"];
        args.extend_from_slice(extra);
        let o = cove_out(&args);
        assert!(
            o.status.success(),
            "cove create failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Self {
            id: text(&o).trim().to_string(),
        }
    }

    /// A client of its agent.
    pub async fn client(&self) -> AgentClient {
        let host = cove_host::Host::open(&home()).expect("open home");
        host.connect(&self.id)
            .await
            .expect("connect to the sandbox")
    }

    /// `cove exec ID -- ARGS` with `stdin`.
    pub fn exec(&self, opts: &[&str], args: &[&str], stdin: &[u8]) -> Output {
        use std::io::Write;
        let mut a = vec!["exec"];
        a.extend_from_slice(opts);
        a.push(&self.id);
        a.push("--");
        a.extend_from_slice(args);
        let mut child = cove()
            .args(&a)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn cove exec");
        let mut si = child.stdin.take().expect("stdin");
        let input = stdin.to_vec();
        let w = std::thread::spawn(move || {
            let _ = si.write_all(&input);
        });
        let out = child.wait_with_output().expect("cove exec");
        let _ = w.join();
        out
    }

    /// The cove-vm pid and the sandbox directory, from `cove inspect`.
    pub fn inspect(&self) -> serde_json::Value {
        let o = cove_out(&["inspect", &self.id]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).expect("inspect JSON")
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = cove_out(&["rm", "-f", &self.id]);
    }
}

/// The offset of the first non-zero byte of `path`, read a MiB at a time.
pub fn first_non_zero(path: &std::path::Path) -> u64 {
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut base = 0u64;
    loop {
        let n = f.read(&mut buf).unwrap();
        assert!(n > 0, "{} is all zeros", path.display());
        if let Some(i) = buf[..n].iter().position(|b| *b != 0) {
            return base + i as u64;
        }
        base += n as u64;
    }
}

/// XORs one byte of `path` in place with `mask` (twice restores it).
pub fn flip(path: &std::path::Path, at: u64, mask: u8) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= mask;
    f.write_all_at(&b, at).unwrap();
}

/// [`flip`], then the file's modification time put back as it was (what a careful tamperer
/// does; the change time moves all the same).
pub fn flip_keeping_mtime(path: &std::path::Path, at: u64, mask: u8) {
    let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
    flip(path, at, mask);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert_eq!(std::fs::metadata(path).unwrap().modified().unwrap(), mtime);
}

/// Polls `f` until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// True while a process exists.
pub fn alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

/// Hex sha256.
pub fn sha256(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// A real OCI registry (Debian's `docker-registry`, CNCF distribution) on 127.0.0.1, with its
/// own storage and config; stopped when dropped.
#[derive(Debug)]
pub struct Registry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Its storage root (for tests that tamper with blobs).
    pub storage: PathBuf,
    child: std::process::Child,
    _dir: TempDir,
}

/// A temporary directory under `target/`, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh directory named after `tag`.
    pub fn new(tag: &str) -> Self {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
            "../target/test-tmp/{tag}-{}-{:08x}",
            std::process::id(),
            rand_u32()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("creating a test directory");
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    u32::from_le_bytes(b)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Registry {
    /// Starts a registry; with `htpasswd` = (user, password), it demands basic auth.
    pub fn start(htpasswd: Option<(&str, &str)>) -> Self {
        let bin = Path::new("/usr/bin/docker-registry");
        assert!(
            bin.is_file(),
            "docker-registry is missing: run scripts/test-deps.sh (make test does)"
        );
        let dir = TempDir::new("registry");
        let storage = dir.0.join("storage");
        let port = free_port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        );
        if let Some((user, password)) = htpasswd {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("htpasswd (apache2-utils): run scripts/test-deps.sh");
            assert!(out.status.success(), "htpasswd failed");
            let file = dir.0.join("htpasswd");
            std::fs::write(&file, &out.stdout).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: cove-test\n    path: {}\n",
                file.display()
            ));
        }
        let cfg = dir.0.join("config.yml");
        std::fs::write(&cfg, config).unwrap();
        // Its log (every 404 of a HEAD is an "error" there) stays in its directory.
        let log = std::fs::File::create(dir.0.join("registry.log")).unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting docker-registry");
        let addr = format!("127.0.0.1:{port}");
        let up = wait_until(Duration::from_secs(20), || {
            std::net::TcpStream::connect(&addr).is_ok()
        });
        assert!(up, "docker-registry did not listen on {addr}");
        Self {
            addr,
            storage,
            child,
            _dir: dir,
        }
    }

    /// `skopeo copy SRC docker://ADDR/DEST` (plain HTTP), with optional credentials and layer
    /// compression (`gzip`, `zstd`).
    pub fn push(&self, src: &str, dest: &str, creds: Option<&str>, compress: Option<&str>) {
        let mut c = Command::new("skopeo");
        c.args(["copy", "--quiet", "--dest-tls-verify=false"]);
        if let Some(creds) = creds {
            c.args(["--dest-creds", creds]);
        }
        if let Some(f) = compress {
            c.args(["--dest-compress-format", f, "--dest-compress"]);
        }
        c.arg(src).arg(format!("docker://{}/{dest}", self.addr));
        let out = c.output().expect("skopeo: run scripts/test-deps.sh");
        assert!(
            out.status.success(),
            "skopeo copy {src} → {dest}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where `scripts/test-deps.sh` installs the S3-compatible server the suite uses (`s3s-fs`, an
/// S3 server over a folder, built from crates.io).
pub const S3_SERVER: &str = "/var/cache/cove/tools/s3s-fs-0.14.1/bin/s3s-fs";

/// A real S3-compatible server on 127.0.0.1 over a throw-away folder, with one bucket;
/// killed when dropped.
#[derive(Debug)]
pub struct S3 {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The bucket (a folder of `root`).
    pub bucket: String,
    /// The folder the server keeps its buckets in.
    pub root: PathBuf,
    child: std::process::Child,
    _dir: TempDir,
}

impl S3 {
    /// The access key the server takes.
    pub const KEY: &'static str = "cove-test";
    /// Its secret.
    pub const SECRET: &'static str = "cove-test-secret";

    /// Starts a server with bucket `cove`.
    pub fn start() -> Self {
        let bin = Path::new(S3_SERVER);
        assert!(
            bin.is_file(),
            "{S3_SERVER} is missing: run scripts/test-deps.sh (make test does)"
        );
        let dir = TempDir::new("s3");
        let root = dir.0.join("data");
        let bucket = "cove".to_string();
        std::fs::create_dir_all(root.join(&bucket)).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.0.join("s3.log")).unwrap();
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", Self::KEY, "--secret-key", Self::SECRET])
            .arg(&root)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting the S3 server");
        let mut child = child;
        let addr = format!("127.0.0.1:{port}");
        // Listening, and still running (not another process that took the port first).
        let up = wait_until(Duration::from_secs(20), || {
            std::net::TcpStream::connect(&addr).is_ok()
        });
        let running = matches!(child.try_wait(), Ok(None));
        assert!(
            up && running,
            "the S3 server did not listen on {addr}: {}",
            std::fs::read_to_string(dir.0.join("s3.log")).unwrap_or_default()
        );
        Self {
            endpoint: format!("http://{addr}"),
            bucket,
            root,
            child,
            _dir: dir,
        }
    }

    /// The environment that points Cove's blob store at bucket prefix `prefix` here.
    pub fn env(&self, prefix: &str) -> Vec<(String, String)> {
        vec![
            (
                "COVE_BLOBS".into(),
                format!("s3://{}/{prefix}", self.bucket),
            ),
            ("AWS_ACCESS_KEY_ID".into(), Self::KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), Self::SECRET.into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ENDPOINT".into(), self.endpoint.clone()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
        ]
    }

    /// Where the server keeps object `key` of the bucket.
    pub fn object(&self, key: &str) -> PathBuf {
        self.root.join(&self.bucket).join(key)
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The OCI layout of a default image (cached by guest/images/build.sh).
pub fn default_layout(name: &str) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest/images/build.sh");
    let out = Command::new(script)
        .arg(name)
        .stderr(std::process::Stdio::null())
        .output()
        .expect("guest/images/build.sh");
    assert!(out.status.success(), "building the {name} layout failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A coved on 127.0.0.1 (a free port) over the test home; killed when dropped.
#[derive(Debug)]
pub struct Coved {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its process.
    pub child: std::process::Child,
}

/// `coved ARGS` with the test home.
pub fn coved() -> Command {
    let bin = bin_dir().join("coved");
    assert!(
        bin.is_file(),
        "{} is missing: build the workspace first",
        bin.display()
    );
    let mut c = Command::new(bin);
    c.env("COVE_HOME", home())
        .env("COVE_VM_BIN", bin_dir().join("cove-vm"));
    c
}

/// A new key of the host's operator (`coved keys create --scope operator`: no tenant).
pub fn operator_key() -> String {
    let o = coved()
        .args(["keys", "create", "--scope", "operator"])
        .output()
        .expect("coved keys create");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    text(&o).trim().to_string()
}

/// A new API key (`coved keys create`).
pub fn api_key(tenant: &str, scope: &str) -> String {
    let o = coved()
        .args(["keys", "create", "--tenant", tenant, "--scope", scope])
        .output()
        .expect("coved keys create");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    text(&o).trim().to_string()
}

impl Coved {
    /// Starts coved on a free loopback port with `extra` arguments and waits for its
    /// listening line.
    pub fn start(extra: &[&str]) -> Self {
        Self::start_on("127.0.0.1:0", extra)
    }

    /// Starts coved listening on `listen` (`HOST:PORT` or `unix:/path`).
    pub fn start_on(listen: &str, extra: &[&str]) -> Self {
        Self::start_with(listen, extra, &[])
    }

    /// Starts coved listening on `listen` with `env` set (`COVE_FAULT`, say).
    pub fn start_with(listen: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        use std::io::BufRead;
        let mut child = coved()
            .args(["--listen", listen])
            .args(extra)
            .envs(env.iter().copied())
            .env("COVE_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("starting coved");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("coved: listening on ")
            .unwrap_or_else(|| panic!("coved said {line:?}"))
            .to_string();
        Self {
            url: if addr.starts_with("unix:") {
                addr
            } else {
                format!("http://{addr}")
            },
            child,
        }
    }
}

impl Drop for Coved {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
