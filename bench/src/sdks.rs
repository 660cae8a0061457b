//! `e2b` and `sdk`: a Python SDK against Cove's Rust SDK on `/v1`, in one run on one coved.
//!
//! `e2b`: E2B's official Python SDK on Cove's E2B surface (`bench/e2b/round.py`, the newest 2.x
//! from `scripts/e2b-sdks.sh`; goal: ratios ≤ 1.2). `sdk`: Cove's own Python SDK
//! (`bench/sdk/round.py`, from `scripts/python-sdk.sh`; goal ≤ 1.3). Each measures
//! `Sandbox.create()` → the first `commands.run` answered, and a `commands.run` round trip;
//! through the Rust SDK: create → the same command's exec answered, and its round trip. All run
//! `/bin/bash -l -c true` (what E2B's SDK runs), so the difference is the surface, not the
//! shell. All create from the `base` template, in alternating rounds so both see the same
//! machine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use cove_host::{CreateSpec, Host};
use serde_json::json;

use crate::{ms, start_coved, summary};

const ROUNDS: usize = 5;
const CREATES_PER_ROUND: usize = 2;
const RUNS_PER_CREATE: usize = 5;

/// A Python SDK to measure.
#[derive(Debug, Clone, Copy)]
pub struct Sdk {
    /// The bench's name, and its figures' prefix.
    pub name: &'static str,
    /// Its venv's python, under `COVE_CACHE`.
    venv_python: &'static str,
    /// The script that runs a round (`bench/NAME/round.py`), and what installs the venv.
    script: &'static str,
    installer: &'static str,
    /// The key in the form E2B's SDK checks.
    e2b_key: bool,
}

/// E2B's SDK on the E2B surface.
pub const E2B: Sdk = Sdk {
    name: "e2b",
    venv_python: "e2b/py-latest/bin/python",
    script: "e2b/round.py",
    installer: "scripts/e2b-sdks.sh",
    e2b_key: true,
};

/// Cove's Python SDK on `/v1`.
pub const PYTHON: Sdk = Sdk {
    name: "sdk",
    venv_python: "python-sdk/venv/bin/python",
    script: "sdk/round.py",
    installer: "scripts/python-sdk.sh",
    e2b_key: false,
};

fn python(sdk: Sdk) -> anyhow::Result<PathBuf> {
    let cache = std::env::var_os("COVE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/cove"));
    let p = cache.join(sdk.venv_python);
    if !p.exists() {
        bail!("{} is missing: run {}", p.display(), sdk.installer);
    }
    Ok(p)
}

fn key(home: &Path, tenant: &str, e2b: bool) -> anyhow::Result<String> {
    let coved = std::env::current_exe()?.with_file_name("coved");
    let out = Command::new(coved)
        .arg("--home")
        .arg(home)
        .args(["keys", "create", "--tenant", tenant, "--scope", "exec"])
        .args(e2b.then_some("--e2b"))
        .output()?;
    if !out.status.success() {
        bail!("coved keys create failed");
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// Runs the bench.
pub async fn run(host: &Host, home: &Path, sdk: Sdk) -> anyhow::Result<serde_json::Value> {
    let py = python(sdk)?;
    let tenant = format!("bench-{}-{}", sdk.name, std::process::id());
    let key = key(home, &tenant, sdk.e2b_key)?;
    let server = start_coved(home, &[])?;
    // Both surfaces restore the same template (the base image's, E2B's default shape).
    let tpl = host
        .template_create(&CreateSpec {
            image: "base".into(),
            ..Default::default()
        })
        .await?;
    let client = cove_sdk::Client::new(&server.1, &key)?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(sdk.script);
    let (mut py_create, mut py_run, mut v1_create, mut v1_run) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let bash = |c: &str| cove_api::Exec {
        cmd: vec!["/bin/bash".into(), "-l".into(), "-c".into(), c.into()],
        ..Default::default()
    };
    let result = async {
        for _ in 0..ROUNDS {
            let out = Command::new(&py)
                .arg(&script)
                .args([CREATES_PER_ROUND.to_string(), RUNS_PER_CREATE.to_string()])
                .env("E2B_API_URL", &server.1)
                .env("E2B_SANDBOX_URL", &server.1)
                .env("E2B_API_KEY", &key)
                .env("COVE_HOST", &server.1)
                .env("COVE_API_KEY", &key)
                .output()?;
            if !out.status.success() {
                bail!("round.py: {}", String::from_utf8_lossy(&out.stderr));
            }
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)
                .with_context(|| String::from_utf8_lossy(&out.stdout).into_owned())?;
            let nums = |k: &str| -> Vec<f64> {
                v[k].as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(serde_json::Value::as_f64)
                    .collect()
            };
            py_create.extend(nums("create_first_ms"));
            py_run.extend(nums("run_ms"));
            for _ in 0..CREATES_PER_ROUND {
                let t = Instant::now();
                let sb = client
                    .create(&cove_api::CreateSandbox {
                        image: Some("base".into()),
                        ..Default::default()
                    })
                    .await?;
                client.exec(&sb.id, &bash("true")).await?;
                v1_create.push(ms(t));
                for _ in 0..RUNS_PER_CREATE {
                    let t = Instant::now();
                    client.exec(&sb.id, &bash("true")).await?;
                    v1_run.push(ms(t));
                }
                client.delete(&sb.id).await?;
            }
        }
        anyhow::Ok(())
    }
    .await;
    let _ = host.remove_snapshot(&tpl.id).await;
    result?;
    let med = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let n = sdk.name;
    Ok(json!({
        "bench": n,
        format!("{n}_create_to_first_run_ms"): summary(py_create.clone()),
        "v1_create_to_first_run_ms": summary(v1_create.clone()),
        "create_ratio": (med(&py_create) / med(&v1_create) * 100.0).round() / 100.0,
        format!("{n}_run_ms"): summary(py_run.clone()),
        "v1_run_ms": summary(v1_run.clone()),
        "run_ratio": (med(&py_run) / med(&v1_run) * 100.0).round() / 100.0,
    }))
}
