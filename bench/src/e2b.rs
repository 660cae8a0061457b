//! `e2b`: the E2B-compatible surface against Cove's own `/v1`, in one run on one coved.
//!
//! Through the official Python SDK (`bench/e2b/round.py`, the newest 2.x from
//! `scripts/e2b-sdks.sh`): `Sandbox.create()` → first `commands.run("true")` answered, and a
//! `commands.run("true")` round trip. Through Cove's Rust SDK on `/v1`: create → the same
//! command's exec answered, and its round trip. The SDKs run `/bin/bash -l -c true`, so `/v1`
//! runs that too: the difference is the surface, not the shell. Both create from the `base`
//! template, in alternating rounds so both see the same machine. Goal: ratios ≤ 1.2.

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

fn python() -> anyhow::Result<PathBuf> {
    let cache = std::env::var_os("COVE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/cove"));
    let p = cache.join("e2b/py-latest/bin/python");
    if !p.exists() {
        bail!("{} is missing: run scripts/e2b-sdks.sh", p.display());
    }
    Ok(p)
}

fn e2b_key(home: &Path, tenant: &str) -> anyhow::Result<String> {
    let coved = std::env::current_exe()?.with_file_name("coved");
    let out = Command::new(coved)
        .arg("--home")
        .arg(home)
        .args(["keys", "create", "--tenant", tenant, "--e2b"])
        .output()?;
    if !out.status.success() {
        bail!("coved keys create failed");
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// Runs the bench.
pub async fn run(host: &Host, home: &Path) -> anyhow::Result<serde_json::Value> {
    let py = python()?;
    let tenant = format!("bench-e2b-{}", std::process::id());
    let key = e2b_key(home, &tenant)?;
    let server = start_coved(home, &[])?;
    // Both surfaces restore the same template (the base image's, E2B's default shape).
    let tpl = host
        .template_create(&CreateSpec {
            image: "base".into(),
            ..Default::default()
        })
        .await?;
    let client = cove_sdk::Client::new(&server.1, &key)?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2b/round.py");
    let (mut e2b_create, mut e2b_run, mut v1_create, mut v1_run) =
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
            e2b_create.extend(nums("create_first_ms"));
            e2b_run.extend(nums("run_ms"));
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
    Ok(json!({
        "bench": "e2b",
        "e2b_create_to_first_run_ms": summary(e2b_create.clone()),
        "v1_create_to_first_run_ms": summary(v1_create.clone()),
        "create_ratio": (med(&e2b_create) / med(&v1_create) * 100.0).round() / 100.0,
        "e2b_run_ms": summary(e2b_run.clone()),
        "v1_run_ms": summary(v1_run.clone()),
        "run_ratio": (med(&e2b_run) / med(&v1_run) * 100.0).round() / 100.0,
    }))
}
