//! The official E2B SDKs against coved, unchanged: the Python `e2b` SDK (2.45.1 and the newest
//! 2.x) runs `tests/e2b/scenario.py`, node's `e2b` runs `tests/e2b/scenario.cjs` (commands and
//! files). The SDKs come from PyPI and npm through `scripts/e2b-sdks.sh` (`make test` runs it);
//! a missing one fails the test, never skips it.

use std::path::PathBuf;
use std::process::Command;

use cove_tests::{Coved, coved, home};

fn sdk(name: &str) -> PathBuf {
    let cache = std::env::var_os("COVE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/cove"));
    let p = cache.join("e2b").join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/e2b-sdks.sh (make test does); the E2B tests never skip",
        p.display()
    );
    p
}

/// A key of `tenant` in the form the E2B SDKs check.
fn e2b_key(tenant: &str) -> String {
    let o = coved()
        .args(["keys", "create", "--tenant", tenant, "--e2b"])
        .output()
        .expect("coved keys create");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

fn tenant(tag: &str) -> String {
    format!("e2b-{tag}-{}", std::process::id())
}

/// Runs `program args` with the E2B environment pointed at `server`; asserts it passed.
fn run(server: &Coved, tag: &str, program: PathBuf, args: &[PathBuf]) {
    run_with(server, tag, program, args, &[]);
}

fn run_with(
    server: &Coved,
    tag: &str,
    program: PathBuf,
    args: &[PathBuf],
    env: &[(&str, PathBuf)],
) {
    let _ = home();
    let key = e2b_key(&tenant(tag));
    let other = e2b_key(&tenant(&format!("{tag}-other")));
    let out = Command::new(&program)
        .args(args)
        .env("E2B_API_URL", &server.url)
        .env("E2B_SANDBOX_URL", &server.url)
        .env("E2B_API_KEY", &key)
        .env("OTHER_API_KEY", &other)
        .env("PYTHONUNBUFFERED", "1")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("running the scenario");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{} {:?} failed:\n{stdout}\n{stderr}",
        program.display(),
        args
    );
    assert!(stdout.contains("all passed"), "{stdout}");
}

fn scenario(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("e2b")
        .join(name)
}

#[test]
fn python_sdk_2_45_works_unchanged() {
    let server = Coved::start(&[]);
    run(
        &server,
        "py245",
        sdk("py-2.45.1").join("bin/python"),
        &[scenario("scenario.py")],
    );
}

#[test]
fn python_sdk_newest_works_unchanged() {
    let server = Coved::start(&[]);
    run(
        &server,
        "pynew",
        sdk("py-latest").join("bin/python"),
        &[scenario("scenario.py")],
    );
}

#[test]
fn node_sdk_commands_and_files_work_unchanged() {
    let server = Coved::start(&[]);
    run_with(
        &server,
        "node",
        PathBuf::from("node"),
        &[scenario("scenario.cjs")],
        &[("E2B_MODULE", sdk("npm").join("node_modules/e2b"))],
    );
}
