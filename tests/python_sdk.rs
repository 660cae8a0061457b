//! Cove's Python SDK (`sdk/python`) against a real coved and real guests: its pytest suite
//! (every method, sync and async; 20 MiB binary round trips; background commands found again;
//! errors; another tenant's key) and `mypy --strict` over the package, its examples and its
//! tests. The environment comes from `scripts/python-sdk.sh` (`make test` runs it); a missing
//! one fails the test, never skips it.

use std::path::PathBuf;
use std::process::Command;

use cove_tests::{Coved, api_key, coved, home};

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
