//! Cove's Python SDK (`sdk/python`) against a real coved and real guests: its pytest suite
//! (every method, sync and async; 20 MiB binary round trips; background commands found again;
//! errors; another tenant's key) and `mypy --strict` over the package, its examples and its
//! tests. The environment comes from `scripts/python-sdk.sh` (`make test` runs it); a missing
//! one fails the test, never skips it.

use std::path::PathBuf;
use std::process::Command;

use cove_tests::{Coved, api_key, bin_dir, coved, home};

fn python() -> PathBuf {
    let cache = std::env::var_os("COVE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/cove"));
    let p = cache.join("python-sdk/venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/python-sdk.sh (make test does); these tests never skip",
        p.display()
    );
    p
}

fn sdk() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sdk/python")
}

fn check(what: &str, out: std::process::Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "{what} failed:\n{stdout}\n{stderr}");
}

#[test]
fn the_python_sdk_passes_its_suite_against_coved() {
    let _ = home();
    let server = Coved::start(&[]);
    let pid = std::process::id();
    let key = api_key(&format!("pysdk-{pid}"), "exec");
    let other = api_key(&format!("pysdk-other-{pid}"), "exec");
    let quota_tenant = format!("pysdk-quota-{pid}");
    let quota = api_key(&quota_tenant, "exec");
    let o = coved()
        .args(["quota", "set", &quota_tenant, "--sandboxes", "0"])
        .args(["--vcpus", "0", "--memory-mib", "0"])
        .output()
        .expect("coved quota set");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tmp = tempfile::tempdir().unwrap();
    check(
        "pytest",
        Command::new(python())
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-o"])
            .arg("tmp_path_retention_count=0")
            .arg(sdk().join("tests"))
            .current_dir(tmp.path())
            .env("COVE_HOST", &server.url)
            .env("COVE_API_KEY", &key)
            .env("COVE_OTHER_KEY", &other)
            .env("COVE_QUOTA_KEY", &quota)
            .env("PYTHONUNBUFFERED", "1")
            .output()
            .expect("running pytest"),
    );
}

#[test]
fn the_python_sdk_is_strictly_typed() {
    let tmp = tempfile::tempdir().unwrap();
    let s = sdk();
    check(
        "mypy --strict",
        Command::new(python())
            .args(["-m", "mypy", "--strict", "--cache-dir"])
            .arg(tmp.path())
            .args([s.join("src/cove"), s.join("examples"), s.join("tests")])
            .output()
            .expect("running mypy"),
    );
}

/// Over a Unix socket (how the SDK reaches the local coved when no host is named), without a
/// key: the host's administrator (the socket's peer is root here). REST, streamed files and the
/// WebSocket exec, sync and async.
#[test]
fn the_python_sdk_reaches_coved_over_its_unix_socket() {
    let _ = home();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("coved.sock");
    let server = Coved::start_on(&format!("unix:{}", sock.display()), &[]);
    let script = r#"
import asyncio
from cove import AsyncSandbox, Sandbox
with Sandbox.create(image="busybox") as s:
    outs = [s.commands.run("echo over-the-socket").stdout for _ in range(5)]
    assert outs == ["over-the-socket\n"] * 5, outs
    assert s.commands.run(["cat"], stdin=b"y" * 3_000_000).stdout_bytes == b"y" * 3_000_000
    s.files.write("/tmp/f", b"x" * 3_000_000)
    assert s.files.read("/tmp/f") == b"x" * 3_000_000
    assert s.id in {i.id for i in Sandbox.list()}
    assert s.info.host is not None, "the administrator's view"
async def main() -> None:
    async with await AsyncSandbox.create(image="busybox") as a:
        assert (await a.commands.run("echo async")).stdout == "async\n"
asyncio.run(main())
print("all passed")
"#;
    let out = Command::new(python())
        .args(["-c", script])
        .env("COVE_HOST", &server.url)
        .env_remove("COVE_API_KEY")
        .output()
        .expect("running python");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    check("the SDK over a Unix socket", out);
    assert!(said.contains("all passed"), "{said}");
}

/// With no host named, the SDK finds this machine's coved on `COVE_HOME/coved.sock` (started
/// with `cove daemon start` when none answers, as the CLI does) and acts as the administrator.
#[test]
fn with_no_host_the_python_sdk_uses_the_local_coved() {
    let home = home();
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = r#"
from cove import Sandbox
with Sandbox.create(image="busybox") as s:
    assert s.commands.run("id -u", user="nobody").stdout == "65534\n"
    assert s.info.host is not None, "the administrator's view"
print("all passed")
"#;
    let out = Command::new(python())
        .args(["-c", script])
        .env("COVE_HOME", &home)
        .env("COVE_VM_BIN", bin_dir().join("cove-vm"))
        .env("PATH", path)
        .env_remove("COVE_HOST")
        .env_remove("COVE_API_KEY")
        .output()
        .expect("running python");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    check("the SDK with no host", out);
    assert!(said.contains("all passed"), "{said}");
}
