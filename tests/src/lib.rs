//! Fixture for end-to-end tests: a Cove home with the real guest kernel and images, the `cove`
//! binary, and sandboxes that remove themselves.
//!
//! These tests never skip: without QEMU, the kernel or the images they fail with what to run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use cove_host::AgentClient;

/// The Cove home the tests use: `COVE_TEST_HOME`, else `target/cove-test-home`.
pub fn home() -> PathBuf {
    let home = std::env::var_os("COVE_TEST_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/cove-test-home"));
    for need in [
        "kernel/vmlinux",
        "kernel/initramfs.cpio",
        "images/busybox/rootfs.ext4",
        "images/python/rootfs.ext4",
    ] {
        assert!(
            home.join(need).is_file(),
            "{} is missing: run `make test` (or guest/setup.sh {}) first; end-to-end tests never skip",
            home.join(need).display(),
            home.display()
        );
    }
    assert!(
        Path::new("/usr/bin/qemu-system-x86_64").is_file()
            || std::env::var_os("COVE_QEMU").is_some(),
        "qemu-system-x86_64 is missing: run `make setup`"
    );
    home
}

fn bin_dir() -> PathBuf {
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

/// Runs `cove ARGS` and returns its output.
pub fn cove_out(args: &[&str]) -> Output {
    cove().args(args).output().expect("running cove")
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
