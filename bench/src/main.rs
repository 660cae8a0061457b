//! Benchmarks of Cove's hot paths. Each prints one JSON line.
//!
//! - `boot`: cove-vm start → agent answered, 10 runs; beside it, in the same run, plain QEMU
//!   booting the same kernel and initramfs to the init's first console line; and create → a
//!   first `true` run in the new sandbox, what a user waits for.
//! - `exec`: round trip of `true` in a running sandbox (100 runs, p50/p99), and stdout MB/s.
//! - `api`: what coved adds: create-from-template and exec of `true` through HTTP against the
//!   same calls through the `host` library, interleaved in one run (p50/p99 each).
//! - `net`: sandbox networking (see `net.rs`).
//! - `netns`: a sandbox network's own making, change and removal, without a VM (`netns.rs`).
//! - `image-import`: importing the `python` OCI layout into a fresh home (3 runs), a second
//!   import of the same digest (the cache hit, 20 runs), and beside them, in the same run, the
//!   plain tools doing the same work (`tar -xzf` of the layer, then `mkfs.ext4 -d`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use cove_host::agent::Event;
use cove_host::{CreateSpec, Host};
use cove_protocol::{ExecRequest, Reply};
use serde_json::json;

/// The nearest-rank percentile, `per_mille` in thousandths.
fn percentile(sorted: &[f64], per_mille: usize) -> f64 {
    let i = ((sorted.len() - 1) * per_mille + 500) / 1000;
    sorted[i.min(sorted.len() - 1)]
}

mod kvm;
mod net;
mod netns;
mod sdks;

fn summary(mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(f64::total_cmp);
    json!({
        "min": v[0],
        "median": percentile(&v, 500),
        "p99": percentile(&v, 990),
        "max": v[v.len() - 1],
        "runs": v.len(),
    })
}

fn ms(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1000.0 * 10.0).round() / 10.0
}

/// A 256 MiB busybox sandbox that always boots (never restored from a template).
fn bench_spec() -> CreateSpec {
    CreateSpec {
        memory_mib: 256,
        use_template: false,
        ..Default::default()
    }
}

/// The engine's exact QEMU command line for a (stopped) sandbox, from `cove-vm`, with the
/// serial console written by QEMU to `console.log` (cove-vm is not there to copy it).
fn engine_argv(dir: &Path) -> anyhow::Result<Vec<String>> {
    let vm = std::env::current_exe()?.with_file_name("cove-vm");
    let out = Command::new(&vm)
        .arg("--dir")
        .arg(dir)
        .arg("--print-engine-args")
        .output()?;
    if !out.status.success() {
        bail!(
            "cove-vm --print-engine-args: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let argv: Vec<String> = serde_json::from_slice(&out.stdout)?;
    // Plain QEMU runs unjailed, as root, and with `exec:` migration: without the jail's
    // `-sandbox` (which forbids QEMU to start a program).
    let mut argv = without(&argv, |opt, _| opt == "-sandbox");
    for a in &mut argv {
        if a.starts_with("socket,id=con,") {
            *a = format!("file,id=con,path={}", dir.join("console.log").display());
        }
    }
    Ok(argv)
}

/// Drops options (with their values) whose value passes `drop`, and the machine's memory
/// backend when that is dropped too.
fn without(argv: &[String], drop: impl Fn(&str, &str) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < argv.len() {
        if i + 1 < argv.len() && argv[i].starts_with('-') && drop(&argv[i], &argv[i + 1]) {
            i += 2;
            continue;
        }
        out.push(argv[i].clone());
        i += 1;
    }
    if !out.iter().any(|a| a.starts_with("memory-backend-file")) {
        for a in &mut out {
            *a = a.replace(",memory-backend=mem", "");
        }
    }
    out
}

/// The engine's command line with no devices: kernel, initramfs, machine and console only.
fn bare(argv: &[String]) -> Vec<String> {
    without(argv, |opt, val| {
        matches!(opt, "-drive" | "-device" | "-qmp")
            || (opt == "-chardev" && !val.contains("id=con,"))
    })
}

/// Runs QEMU with `argv` plus `COVE_FIRST_LINE=1` on the kernel command line, and times it to
/// the init's first console line (the agent prints one at once when told to).
fn time_to_init(argv: &[String], dir: &Path) -> anyhow::Result<f64> {
    let mut argv = argv.to_vec();
    let i = argv
        .iter()
        .position(|a| a == "-append")
        .context("no -append")?;
    argv[i + 1].push_str(" COVE_FIRST_LINE=1");
    let console = dir.join("console.log");
    let _ = std::fs::remove_file(&console);
    let t = Instant::now();
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let found = loop {
        if std::fs::read(&console)
            .is_ok_and(|b| b.windows(23).any(|w| w == b"cove-agent: init starte"))
        {
            break Some(ms(t));
        }
        if t.elapsed().as_secs() > 30 {
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    let _ = child.kill();
    let _ = child.wait();
    found.context("plain QEMU never reached init")
}

/// Runs `true` in sandbox `id` through a new connection and checks that it succeeded.
async fn run_true(host: &Host, id: &str) -> anyhow::Result<()> {
    let o = host
        .connect(id)
        .await?
        .output(
            ExecRequest {
                argv: vec!["true".into()],
                ..Default::default()
            },
            None,
        )
        .await?;
    anyhow::ensure!(o.status.code == Some(0), "true failed: {:?}", o.status);
    Ok(())
}

async fn boot(host: &Host, runs: usize) -> anyhow::Result<serde_json::Value> {
    let spec = bench_spec();
    let (mut boot, mut create, mut first_exec, mut plain_bare, mut same) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Interleaved, so all see the same machine load.
    for _ in 0..runs {
        let t = Instant::now();
        let rec = host.create(&spec).await?;
        create.push(ms(t));
        boot.push(rec.boot_ms.context("boot time")? as f64);
        // What a user waits for: the sandbox created and a first command run in it.
        run_true(host, &rec.id).await?;
        first_exec.push(ms(t));
        host.stop(&rec.id).await?;
        let dir = PathBuf::from(&rec.dir);
        let r = engine_argv(&dir).and_then(|argv| {
            Ok((
                time_to_init(&argv, &dir)?,
                time_to_init(&bare(&argv), &dir)?,
            ))
        });
        host.remove(&rec.id, true).await?;
        let (s_ms, b_ms) = r?;
        same.push(s_ms);
        plain_bare.push(b_ms);
    }
    let b = summary(boot);
    let bare = summary(plain_bare);
    let same = summary(same);
    let ratio = |p: &serde_json::Value| {
        let r = b["median"].as_f64().unwrap_or(0.0) / p["median"].as_f64().unwrap_or(1.0);
        (r * 100.0).round() / 100.0
    };
    Ok(json!({
        "bench": "boot",
        "engine": cove_host::engine::choose(None)?,
        "agent_ready_ms": b,
        "create_total_ms": summary(create),
        "create_to_first_exec_ms": summary(first_exec),
        "plain_qemu_to_init_ms": bare,
        "plain_qemu_same_devices_to_init_ms": same,
        "ratio_median": ratio(&bare),
        "ratio_median_same_devices": ratio(&same),
    }))
}

async fn exec(host: &Host, runs: usize) -> anyhow::Result<serde_json::Value> {
    let rec = host.create(&bench_spec()).await?;
    let result = async {
        let c = host.connect(&rec.id).await?;
        let req = |argv: &[&str]| ExecRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        // Warm up the guest's page cache for `true`.
        c.output(req(&["true"]), None).await?;
        let mut rt = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            let o = c.output(req(&["true"]), None).await?;
            rt.push(ms(t));
            if o.status.code != Some(0) {
                bail!("true failed: {:?}", o.status);
            }
        }
        // Throughput: 256 MiB of stdout, counted as it arrives.
        let mib = 256;
        let t = Instant::now();
        let mut ex = c
            .exec(req(&[
                "dd",
                "if=/dev/zero",
                "bs=1M",
                &format!("count={mib}"),
            ]))
            .await?;
        let mut bytes = 0usize;
        loop {
            match ex.session.next().await.context("connection closed")? {
                Event::Data(cove_protocol::Stream::Stdout, b) => bytes += b.len(),
                Event::Reply(Reply::Exited(_)) => break,
                _ => {}
            }
        }
        let secs = t.elapsed().as_secs_f64();
        if bytes != mib << 20 {
            bail!("got {bytes} bytes of stdout, expected {}", mib << 20);
        }
        Ok(json!({
            "bench": "exec",
            "true_round_trip_ms": summary(rt),
            "stdout_mb_per_s": ((bytes as f64 / 1e6 / secs) * 10.0).round() / 10.0,
            "stdout_bytes": bytes,
        }))
    }
    .await;
    host.remove(&rec.id, true).await?;
    result
}

/// A neighbour that burns every vCPU it has: how much slower `true` round-trips in a sandbox
/// beside it, jailed (cgroups give each sandbox its share) and not (every vCPU thread competes
/// on its own).
async fn noisy_neighbour(jailed: &Host, bare: &Host) -> anyhow::Result<serde_json::Value> {
    let mut out = serde_json::Map::new();
    for (name, host) in [("jailed", jailed), ("unjailed", bare)] {
        let quiet = host.create(&bench_spec()).await?;
        let noisy = host
            .create(&CreateSpec {
                cpus: 2,
                ..bench_spec()
            })
            .await?;
        let result = async {
            let c = host.connect(&quiet.id).await?;
            let req = ExecRequest {
                argv: vec!["true".into()],
                ..Default::default()
            };
            c.output(req.clone(), None).await?;
            let mut idle = Vec::new();
            for _ in 0..20 {
                let t = Instant::now();
                c.output(req.clone(), None).await?;
                idle.push(ms(t));
            }
            let burner = host.connect(&noisy.id).await?;
            let burn = tokio::spawn(async move {
                let argv = [
                    "sh",
                    "-c",
                    "(while :; do :; done) & (while :; do :; done) & sleep 3600",
                ];
                burner
                    .output(
                        ExecRequest {
                            argv: argv.iter().map(|s| s.to_string()).collect(),
                            ..Default::default()
                        },
                        None,
                    )
                    .await
            });
            // Both loops running: the neighbour's CPU time climbs at two seconds a second.
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            let mut busy = Vec::new();
            for _ in 0..20 {
                let t = Instant::now();
                c.output(req.clone(), None).await?;
                busy.push(ms(t));
            }
            burn.abort();
            let (i, b) = (summary(idle), summary(busy));
            let factor = b["median"].as_f64().unwrap_or(0.0) / i["median"].as_f64().unwrap_or(1.0);
            anyhow::Ok(json!({ "idle_ms": i, "beside_a_burning_neighbour_ms": b,
                "slowdown_median": (factor * 100.0).round() / 100.0 }))
        }
        .await;
        host.remove(&noisy.id, true).await?;
        host.remove(&quiet.id, true).await?;
        out.insert(name.to_string(), result?);
    }
    Ok(serde_json::Value::Object(out))
}

/// A tiny QMP client for the plain-QEMU comparison (the engine's own lives in cove-vm).
struct PlainQmp {
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>>,
    w: tokio::net::unix::OwnedWriteHalf,
}

impl PlainQmp {
    async fn connect(path: &Path) -> anyhow::Result<Self> {
        use tokio::io::AsyncBufReadExt;
        let t = Instant::now();
        let conn = loop {
            match tokio::net::UnixStream::connect(path).await {
                Ok(c) => break c,
                Err(_) if t.elapsed().as_secs() < 10 => {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await
                }
                Err(e) => return Err(e.into()),
            }
        };
        let (r, w) = conn.into_split();
        let mut q = Self {
            lines: tokio::io::BufReader::new(r).lines(),
            w,
        };
        q.lines.next_line().await?;
        q.cmd(json!({"execute": "qmp_capabilities"})).await?;
        Ok(q)
    }

    async fn cmd(&mut self, v: serde_json::Value) -> anyhow::Result<serde_json::Value> {
        use tokio::io::AsyncWriteExt;
        let mut line = serde_json::to_vec(&v)?;
        line.push(b'\n');
        self.w.write_all(&line).await?;
        while let Some(l) = self.lines.next_line().await? {
            let v: serde_json::Value = serde_json::from_str(&l)?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                bail!("qmp: {e}");
            }
        }
        bail!("qmp closed")
    }

    async fn wait_migration(&mut self) -> anyhow::Result<()> {
        loop {
            let v = self.cmd(json!({"execute": "query-migrate"})).await?;
            match v["status"].as_str() {
                Some("completed") => return Ok(()),
                Some("failed" | "cancelled") => bail!("migration failed: {v}"),
                _ => tokio::time::sleep(std::time::Duration::from_millis(1)).await,
            }
        }
    }
}

/// Plain QEMU with Cove's devices but ordinary (anonymous) guest RAM, booted, then saved with
/// its own full migration to a file and restored from it: (save ms, restore ms).
async fn plain_save_restore(host: &Host, work: &Path) -> anyhow::Result<(f64, f64)> {
    // A stopped sandbox gives the exact command line; RAM goes back to QEMU's default.
    let rec = host.create(&bench_spec()).await?;
    host.stop(&rec.id).await?;
    let dir = PathBuf::from(&rec.dir);
    let argv = without(&engine_argv(&dir)?, |opt, val| {
        opt == "-object" && val.starts_with("memory-backend-file")
    });
    let state = work.join("plain-state");
    let qmp_path = dir.join("qmp.sock");
    let spawn = |extra: &[&str]| {
        let _ = std::fs::remove_file(&qmp_path);
        Command::new(&argv[0])
            .args(&argv[1..])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    };
    let mut q1 = spawn(&[])?;
    let mut qmp = PlainQmp::connect(&qmp_path).await?;
    // Let the guest reach its agent, as a Cove sandbox would be.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let t = Instant::now();
    qmp.cmd(json!({"execute": "stop"})).await?;
    qmp.cmd(
        json!({"execute": "migrate-set-parameters", "arguments": {"max-bandwidth": 1u64 << 40}}),
    )
    .await?;
    qmp.cmd(json!({"execute": "migrate", "arguments": {"uri": format!("exec:cat > '{}'", state.display())}})).await?;
    qmp.wait_migration().await?;
    let save = ms(t);
    let _ = q1.kill();
    let _ = q1.wait();
    let t = Instant::now();
    let mut q2 = spawn(&["-incoming", "defer"])?;
    let mut qmp = PlainQmp::connect(&qmp_path).await?;
    qmp.cmd(json!({"execute": "migrate-incoming", "arguments": {"uri": format!("exec:cat '{}'", state.display())}})).await?;
    qmp.wait_migration().await?;
    let restore = ms(t);
    let _ = q2.kill();
    let _ = q2.wait();
    let _ = std::fs::remove_file(&state);
    host.remove(&rec.id, true).await?;
    Ok((save, restore))
}

async fn lifecycle(host: &Host) -> anyhow::Result<serde_json::Value> {
    let spec = bench_spec();
    let work = std::env::temp_dir().join(format!("cove-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let first_exec = |id: String| async move { run_true(host, &id).await };
    let rec = host.create(&spec).await?;
    first_exec(rec.id.clone()).await?;
    let (mut pause, mut resume, mut snapshot, mut hibernate, mut wake) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..10 {
        let t = Instant::now();
        host.pause(&rec.id).await?;
        pause.push(ms(t));
        let t = Instant::now();
        host.resume(&rec.id).await?;
        resume.push(ms(t));
    }
    for _ in 0..5 {
        let t = Instant::now();
        let s = host.snapshot(&rec.id, None, false, None).await?;
        snapshot.push(ms(t));
        host.remove_snapshot(&s.id).await?;
        let t = Instant::now();
        host.hibernate(&rec.id).await?;
        hibernate.push(ms(t));
        let t = Instant::now();
        host.resume(&rec.id).await?;
        first_exec(rec.id.clone()).await?;
        wake.push(ms(t));
    }
    let mut fork = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let clones = host.fork(&rec.id, 5, None, None).await?;
        fork.push(ms(t));
        for c in clones {
            host.remove(&c.id, true).await?;
        }
    }
    host.remove(&rec.id, true).await?;
    let tpl = host.template_create(&spec).await?;
    let mut from_template = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let r = host
            .create(&CreateSpec {
                use_template: true,
                ..spec.clone()
            })
            .await?;
        first_exec(r.id.clone()).await?;
        from_template.push(ms(t));
        host.remove(&r.id, true).await?;
    }
    host.remove_snapshot(&tpl.id).await?;
    let (mut plain_save, mut plain_restore) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let (s, r) = plain_save_restore(host, &work).await?;
        plain_save.push(s);
        plain_restore.push(r);
    }
    let _ = std::fs::remove_dir_all(&work);
    let hib = summary(hibernate);
    let wk = summary(wake);
    let ps = summary(plain_save);
    let pr = summary(plain_restore);
    let ratio = |a: &serde_json::Value, b: &serde_json::Value| {
        ((a["median"].as_f64().unwrap_or(0.0) / b["median"].as_f64().unwrap_or(1.0)) * 100.0)
            .round()
            / 100.0
    };
    Ok(json!({
        "bench": "lifecycle",
        "memory_mib": 256,
        "pause_ms": summary(pause),
        "resume_ms": summary(resume),
        "snapshot_ms": summary(snapshot),
        "ratio_hibernate_to_plain_save": ratio(&hib, &ps),
        "ratio_wake_to_plain_restore": ratio(&wk, &pr),
        "hibernate_ms": hib,
        "wake_to_first_exec_ms": wk,
        "template_create_to_first_exec_ms": summary(from_template),
        "fork_of_5_ms": summary(fork),
        "plain_qemu_save_ms": ps,
        "plain_qemu_restore_ms": pr,
    }))
}

/// What checking a snapshot costs at restore: a 512 MiB guest that wrote 240 MiB of random
/// data into memory, snapshotted; restores to the first exec with the check remembered (the
/// usual case: the snapshot was saved or checked on this host and is unchanged) against ones
/// that hash every file first (the record removed: a snapshot fetched from the blob store, or
/// changed), interleaved; and the hash alone (`cove-vm --verify-snapshot`, the scrub's).
async fn verification_cost(host: &Host, home: &Path) -> anyhow::Result<serde_json::Value> {
    let spec = CreateSpec {
        memory_mib: 512,
        ..bench_spec()
    };
    let rec = host.create(&spec).await?;
    let fill = host
        .connect(&rec.id)
        .await?
        .output(
            ExecRequest {
                argv: vec![
                    "sh".into(),
                    "-c".into(),
                    "head -c 240000000 /dev/urandom > /dev/shm/fill".into(),
                ],
                ..Default::default()
            },
            None,
        )
        .await?;
    anyhow::ensure!(fill.status.code == Some(0), "fill: {:?}", fill.status);
    let snap = host.snapshot(&rec.id, None, false, None).await?;
    host.remove(&rec.id, true).await?;
    let dir = home.join("snapshots").join(&snap.id);
    let allocated_mib = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(dir.join("memory"))?.blocks() * 512 / (1 << 20)
    };
    let (mut cached, mut hashed, mut hash) = (Vec::new(), Vec::new(), Vec::new());
    let result = async {
        for _ in 0..3 {
            for rehash in [false, true] {
                if rehash {
                    std::fs::remove_file(dir.join("verified.json"))?;
                }
                let t = Instant::now();
                let r = host
                    .create(&CreateSpec {
                        from_snapshot: Some(snap.id.clone()),
                        ..spec.clone()
                    })
                    .await?;
                run_true(host, &r.id).await?;
                if rehash { &mut hashed } else { &mut cached }.push(ms(t));
                host.remove(&r.id, true).await?;
            }
            // The hash alone, which also remembers the check again for the next round.
            let t = Instant::now();
            let o = Command::new(std::env::current_exe()?.with_file_name("cove-vm"))
                .arg("--dir")
                .arg(&dir)
                .arg("--verify-snapshot")
                .output()?;
            anyhow::ensure!(o.status.success(), "verify: {:?}", o);
            hash.push(ms(t));
        }
        anyhow::Ok(())
    }
    .await;
    host.remove_snapshot(&snap.id).await?;
    result?;
    let (c, h) = (summary(cached), summary(hashed));
    let added = h["median"].as_f64().unwrap_or(0.0) - c["median"].as_f64().unwrap_or(0.0);
    Ok(json!({
        "memory_mib": 512,
        "memory_file_allocated_mib": allocated_mib,
        "restore_to_first_exec_remembered_ms": c,
        "restore_to_first_exec_hashed_ms": h,
        "hash_alone_ms": summary(hash),
        "hashing_adds_pct": ((added / c["median"].as_f64().unwrap_or(1.0)) * 1000.0).round() / 10.0,
    }))
}

/// What the jail costs: the same operations on the same home, jailed (`jailed`) and not
/// (`bare`), interleaved so both see the same machine; medians and their difference.
async fn jail_cost(jailed: &Host, bare: &Host) -> anyhow::Result<serde_json::Value> {
    let spec = bench_spec();
    let tpl = jailed.template_create(&spec).await?;
    let hosts = [("jailed", jailed), ("unjailed", bare)];
    let mut figures: std::collections::BTreeMap<&str, [Vec<f64>; 2]> = Default::default();
    let mut add =
        |what: &'static str, i: usize, v: f64| figures.entry(what).or_default()[i].push(v);
    let result = async {
        for round in 0..5 {
            for (i, (_, host)) in hosts.iter().enumerate() {
                let t = Instant::now();
                let r = host
                    .create(&CreateSpec {
                        use_template: true,
                        ..spec.clone()
                    })
                    .await?;
                run_true(host, &r.id).await?;
                add("template_create_to_first_exec_ms", i, ms(t));
                let t = Instant::now();
                host.hibernate(&r.id).await?;
                add("hibernate_ms", i, ms(t));
                let t = Instant::now();
                host.resume(&r.id).await?;
                run_true(host, &r.id).await?;
                add("wake_to_first_exec_ms", i, ms(t));
                if round < 4 {
                    let t = Instant::now();
                    let clones = host.fork(&r.id, 2, None, None).await?;
                    add("fork_of_2_ms", i, ms(t));
                    for c in clones {
                        host.remove(&c.id, true).await?;
                    }
                    let t = Instant::now();
                    let b = host
                        .create(&CreateSpec {
                            use_template: false,
                            ..spec.clone()
                        })
                        .await?;
                    run_true(host, &b.id).await?;
                    add("boot_to_first_exec_ms", i, ms(t));
                    host.remove(&b.id, true).await?;
                }
                host.remove(&r.id, true).await?;
            }
        }
        anyhow::Ok(())
    }
    .await;
    jailed.remove_snapshot(&tpl.id).await?;
    result?;
    let mut out = serde_json::Map::new();
    for (what, [j, u]) in figures {
        let (j, u) = (summary(j), summary(u));
        let cost = j["median"].as_f64().unwrap_or(0.0) - u["median"].as_f64().unwrap_or(0.0);
        out.insert(
            what.to_string(),
            json!({ "jailed": j, "unjailed": u, "cost_median_ms": (cost * 10.0).round() / 10.0 }),
        );
    }
    Ok(serde_json::Value::Object(out))
}

/// A coved on a free loopback port over `home`, killed on drop.
struct Coved(std::process::Child, String);

impl Drop for Coved {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A new key of `tenant` with `scope`.
fn key_for(home: &Path, tenant: Option<&str>, scope: &str) -> anyhow::Result<String> {
    let coved = std::env::current_exe()?.with_file_name("coved");
    let mut c = Command::new(&coved);
    c.arg("--home")
        .arg(home)
        .args(["keys", "create", "--scope", scope]);
    if let Some(t) = tenant {
        c.args(["--tenant", t]);
    }
    let out = c.stderr(Stdio::null()).output()?;
    if !out.status.success() {
        bail!("coved keys create failed");
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// A coved over `home` on a free loopback port, with `extra` arguments.
fn start_coved(home: &Path, extra: &[&str]) -> anyhow::Result<Coved> {
    start_coved_with(home, extra, &[])
}

/// [`start_coved`] with `env` set (`COVE_JAIL=off`, say).
fn start_coved_with(home: &Path, extra: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Coved> {
    use std::io::BufRead;
    let coved = std::env::current_exe()?.with_file_name("coved");
    let mut child = Command::new(&coved)
        .arg("--home")
        .arg(home)
        .args(["--listen", "127.0.0.1:0", "--rate-limit", "100000"])
        .args(extra)
        .envs(env.iter().copied())
        .env("COVE_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("coved stdout")?).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("coved: listening on ")
        .with_context(|| format!("coved said {line:?}"))?
        .to_string();
    Ok(Coved(child, format!("http://{addr}")))
}

/// The same burst of creates with coved on PostgreSQL (a server started for it, on loopback):
/// a template is made there first (templates are records of the store), by image digest (image
/// names are too).
async fn creates_on_postgres(
    host: &Host,
    home: &Path,
    http: &reqwest::Client,
    n: usize,
) -> anyhow::Result<serde_json::Value> {
    let pg = cove_state::testing::Server::start();
    let server = start_coved(home, &["--database", &pg.url("bench")])?;
    let key = key_for(
        home,
        Some(&format!("bench-pg-{}", std::process::id())),
        "exec",
    )?;
    // Templates are the operator's.
    let operator = key_for(home, None, "operator")?;
    let digest = host.image("busybox")?.digest;
    let res = http
        .post(format!("{}/v1/templates", server.1))
        .bearer_auth(&operator)
        .json(&json!({"image": digest, "memory_mib": 256}))
        .send()
        .await?;
    let tpl: serde_json::Value = res.json().await?;
    let tpl = tpl["id"]
        .as_str()
        .with_context(|| format!("template: {tpl}"))?
        .to_string();
    let r = concurrent_creates(http, &server.1, &key, n, &digest, "postgresql").await;
    http.delete(format!("{}/v1/snapshots/{tpl}", server.1))
        .bearer_auth(&operator)
        .send()
        .await?;
    r
}

async fn api(host: &Host, home: &Path) -> anyhow::Result<serde_json::Value> {
    let tenant = format!("bench-{}", std::process::id());
    let key = key_for(home, Some(&tenant), "exec")?;
    let server = start_coved(home, &[])?;
    let unjailed = start_coved_with(home, &[], &[("COVE_JAIL", "off")])?;
    let mut api_create_unjailed = Vec::new();
    let http = reqwest::Client::new();
    let spec = CreateSpec {
        memory_mib: 256,
        ..Default::default()
    };
    let tpl = host.template_create(&spec).await?;
    let (mut lib_create, mut api_create) = (Vec::new(), Vec::new());
    let (mut lib_exec, mut api_exec, mut cli_exec) = (Vec::new(), Vec::new(), Vec::new());
    let result = async {
        let body = json!({"memory_mib": 256});
        // One create through the coved at `url`, timed, then its removal.
        let api_create_ms = |url: &str| {
            let (http, key, body) = (&http, &key, &body);
            let url = url.to_string();
            async move {
                let t = Instant::now();
                let res = http
                    .post(format!("{url}/v1/sandboxes"))
                    .bearer_auth(key)
                    .json(body)
                    .send()
                    .await?;
                let took = ms(t);
                let v: serde_json::Value = res.json().await?;
                let id = v["id"].as_str().with_context(|| format!("create: {v}"))?;
                http.delete(format!("{url}/v1/sandboxes/{id}"))
                    .bearer_auth(key)
                    .send()
                    .await?;
                anyhow::Ok(took)
            }
        };
        // Interleaved, so both see the same machine.
        for _ in 0..10 {
            let t = Instant::now();
            let r = host.create(&spec).await?;
            lib_create.push(ms(t));
            host.remove(&r.id, true).await?;
            api_create.push(api_create_ms(&server.1).await?);
            // The same through a coved that jails nothing: the jail's cost over the API.
            api_create_unjailed.push(api_create_ms(&unjailed.1).await?);
        }
        let rec = host
            .create(&CreateSpec {
                owner: Some(tenant.clone()),
                ..spec.clone()
            })
            .await?;
        let r = async {
            let req = ExecRequest {
                argv: vec!["true".into()],
                ..Default::default()
            };
            let url = format!("{}/v1/sandboxes/{}/exec", server.1, rec.id);
            let body = json!({"cmd": ["true"]});
            for i in 0..101 {
                // The library as an API client of it would use it: a connection per call.
                let t = Instant::now();
                let c = host.connect(&rec.id).await?;
                c.output(req.clone(), None).await?;
                let lib = ms(t);
                let t = Instant::now();
                let res = http.post(&url).bearer_auth(&key).json(&body).send().await?;
                let v: serde_json::Value = res.json().await?;
                let over_api = ms(t);
                if v["exit_code"] != 0 {
                    bail!("exec: {v}");
                }
                // The CLI as a user runs it: a new process, over the local coved's socket.
                let t = Instant::now();
                let out = cli(home, &["exec", &rec.id, "--", "true"])?;
                let over_cli = ms(t);
                if !out.status.success() {
                    bail!("cove exec: {}", String::from_utf8_lossy(&out.stderr));
                }
                // The first of each warms caches.
                if i > 0 {
                    lib_exec.push(lib);
                    api_exec.push(over_api);
                    cli_exec.push(over_cli);
                }
            }
            Ok(())
        }
        .await;
        host.remove(&rec.id, true).await?;
        r
    }
    .await;
    // 50 creates from the template at once, through coved (the store is SQLite here).
    let burst = if result.is_ok() {
        Some(concurrent_creates(&http, &server.1, &key, 50, "busybox", "sqlite").await)
    } else {
        None
    };
    host.remove_snapshot(&tpl.id).await?;
    result?;
    let burst = burst.transpose()?;
    let burst_pg = creates_on_postgres(host, home, &http, 50).await?;
    let (lib_ls, cli_ls) = ls_with_records(host, home, 1000).await?;
    let med = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        percentile(&v, 500)
    };
    Ok(json!({
        "bench": "api",
        "create_from_template_ms": {"library": summary(lib_create.clone()), "api": summary(api_create.clone()),
            "api_unjailed": summary(api_create_unjailed.clone())},
        "create_added_ms_p50": med(&api_create) - med(&lib_create),
        "jail_cost_api_create_ms_p50": med(&api_create) - med(&api_create_unjailed),
        "exec_true_ms": {"library": summary(lib_exec.clone()), "api": summary(api_exec.clone())},
        "exec_added_ms_p50": med(&api_exec) - med(&lib_exec),
        "cli_exec_true_ms": summary(cli_exec.clone()),
        "cli_exec_added_ms_p50": med(&cli_exec) - med(&lib_exec),
        "ls_1000_ms": {"library": summary(lib_ls.clone()), "cli": summary(cli_ls.clone())},
        "concurrent_creates": [burst, burst_pg],
    }))
}

/// `cove ARGS` over the local coved of `home` (started on the first call).
fn cli(home: &Path, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(
        Command::new(std::env::current_exe()?.with_file_name("cove"))
            .args(args)
            .env("COVE_HOME", home)
            .env_remove("COVE_HOST")
            .stdin(Stdio::null())
            .output()?,
    )
}

/// `n` creates from the template sent at once; the wall time until all answered, and each one's.
async fn concurrent_creates(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    n: usize,
    image: &str,
    store: &str,
) -> anyhow::Result<serde_json::Value> {
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (http, base, key) = (http.clone(), base.to_string(), key.to_string());
        let image = image.to_string();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let res = http
                .post(format!("{base}/v1/sandboxes"))
                .bearer_auth(&key)
                .json(&json!({"memory_mib": 256, "image": image}))
                .send()
                .await?;
            let v: serde_json::Value = res.json().await?;
            anyhow::Ok((ms(t), v["id"].as_str().map(str::to_string), v))
        }));
    }
    let mut each = Vec::new();
    let mut ids = Vec::new();
    let mut failed = None;
    for task in tasks {
        let (took, id, answer) = task.await??;
        each.push(took);
        match id {
            Some(id) => ids.push(id),
            None => failed = Some(answer),
        }
    }
    let wall = ms(t);
    let created = ids.len();
    for id in ids {
        http.delete(format!("{base}/v1/sandboxes/{id}"))
            .bearer_auth(key)
            .send()
            .await?;
    }
    if let Some(e) = failed {
        bail!("only {created} of {n} concurrent creates succeeded; one said {e}");
    }
    Ok(json!({
        "count": n,
        "store": store,
        "wall_ms": wall,
        "per_second": n as f64 / (wall / 1000.0),
        "each_ms": summary(each),
    }))
}

/// `cove ls` and the library's list with `n` stopped sandboxes on record (written straight into
/// the store, then removed: stopped records are all a listing reads).
async fn ls_with_records(
    host: &Host,
    home: &Path,
    n: usize,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let db = rusqlite::Connection::open(home.join("state.db"))?;
    db.busy_timeout(std::time::Duration::from_secs(10))?;
    let sql = |q: String| -> anyhow::Result<()> { Ok(db.execute_batch(&q)?) };
    let owner = format!("bench-ls-{}", std::process::id());
    let mut q = String::from("BEGIN;");
    for i in 0..n {
        q.push_str(&format!(
            "INSERT INTO sandboxes (id, image, state, cpus, memory_mib, disk_mib, created_at, engine, accel, socket, dir, owner, reason_kind, updated_at) \
             VALUES ('b{:011x}', 'busybox', 'stopped', 1, 256, 1024, 0, 'qemu', 'tcg', '/nonexistent', '/nonexistent', '{owner}', 'stopped', 0);",
            (std::process::id() as usize) * 100_000 + i
        ));
    }
    q.push_str("COMMIT;");
    sql(q)?;
    let (mut lib, mut over_cli) = (Vec::new(), Vec::new());
    let timed = async {
        for _ in 0..11 {
            let t = Instant::now();
            let all = host.list()?;
            lib.push(ms(t));
            if all.len() < n {
                bail!("the store lists {} sandboxes", all.len());
            }
            let t = Instant::now();
            let out = cli(home, &["ls"])?;
            over_cli.push(ms(t));
            if !out.status.success() {
                bail!("cove ls: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        anyhow::Ok(())
    }
    .await;
    sql(format!("DELETE FROM sandboxes WHERE owner = '{owner}';"))?;
    timed?;
    // The first of each warms caches.
    Ok((lib[1..].to_vec(), over_cli[1..].to_vec()))
}

/// The `python` image's OCI layout (cached by guest/images/build.sh).
fn python_layout() -> anyhow::Result<PathBuf> {
    let out = Command::new("guest/images/build.sh")
        .arg("python")
        .stderr(Stdio::inherit())
        .output()
        .context("guest/images/build.sh python")?;
    if !out.status.success() {
        bail!("building the python layout failed");
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

async fn image_import(home: &Path) -> anyhow::Result<serde_json::Value> {
    let layout = python_layout()?;
    let scratch = home.join("tmp/bench-image");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let mut cold = Vec::new();
    let mut meta = None;
    for i in 0..3 {
        let h = scratch.join(format!("home-{i}"));
        let host = Host::open(&h)?;
        let t = Instant::now();
        let info = host
            .image_import(
                &layout,
                None,
                Some("python"),
                &cove_host::images::NoProgress,
            )
            .await?;
        cold.push(t.elapsed().as_secs_f64());
        meta = Some(info.meta);
        // Keep the last home for the cache hits.
        if i < 2 {
            drop(host);
            std::fs::remove_dir_all(&h)?;
        }
    }
    let meta = meta.expect("three runs");
    let host = Host::open(&scratch.join("home-2"))?;
    let mut hit = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        host.image_import(
            &layout,
            None,
            Some("python"),
            &cove_host::images::NoProgress,
        )
        .await?;
        hit.push(t.elapsed().as_secs_f64() * 1e3);
    }
    // The same work with the plain tools: unpack the layer, write the disk.
    let layer = layout
        .join("blobs/sha256")
        .join(meta.layers[0].digest.trim_start_matches("sha256:"));
    let mut plain = Vec::new();
    for _ in 0..3 {
        let root = scratch.join("plain-root");
        let disk = scratch.join("plain.ext4");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root)?;
        let t = Instant::now();
        let ok = Command::new("tar")
            .args(["--numeric-owner", "-xzf"])
            .arg(&layer)
            .arg("-C")
            .arg(&root)
            .status()?
            .success()
            && Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0", "-O", "^has_journal", "-d"])
                .arg(&root)
                .arg(&disk)
                .arg(format!("{}", meta.disk_bytes / 1024))
                .stdout(Stdio::null())
                .status()?
                .success();
        if !ok {
            bail!("the plain tar + mkfs run failed");
        }
        plain.push(t.elapsed().as_secs_f64());
    }
    std::fs::remove_dir_all(&scratch)?;
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        percentile(&v, 500)
    };
    let cold_med = med(cold.clone());
    let plain_med = med(plain.clone());
    Ok(json!({
        "bench": "image-import",
        "image": "python",
        "layer_mb": meta.layers.iter().map(|l| l.size).sum::<u64>() as f64 / 1e6,
        "content_mb": meta.content_bytes as f64 / 1e6,
        "entries": meta.entries,
        "import_s": summary(cold),
        "layer_mb_per_s": meta.layers.iter().map(|l| l.size).sum::<u64>() as f64 / 1e6 / cold_med,
        "content_mb_per_s": meta.content_bytes as f64 / 1e6 / cold_med,
        "cache_hit_ms": summary(hit),
        "plain_tar_mkfs_s": summary(plain),
        "ratio_to_plain": cold_med / plain_med,
    }))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).map(String::as_str).unwrap_or("");
    if which == "kvm" {
        // Cove's own VMM needs no Cove home: it runs purpose-built guest programs.
        println!("{}", tokio::task::spawn_blocking(kvm::run).await??);
        return Ok(());
    }
    if which == "netns" {
        // The network alone: no Cove home, no VM.
        println!("{}", netns::run().await?);
        return Ok(());
    }
    let home = cove_host::default_home();
    let host = Host::open(Path::new(&home))?;
    let line = match which {
        "boot" => boot(&host, 10).await?,
        "exec" => {
            let mut line = exec(&host, 100).await?;
            if host.jail_off().is_none() {
                let bare = Host::open(Path::new(&home))?.without_jail();
                line["noisy_neighbour"] = noisy_neighbour(&host, &bare).await?;
            }
            line
        }
        "lifecycle" => {
            let mut line = lifecycle(&host).await?;
            line["verification"] = verification_cost(&host, Path::new(&home)).await?;
            if host.jail_off().is_none() {
                let bare = Host::open(Path::new(&home))?.without_jail();
                line["jail"] = jail_cost(&host, &bare).await?;
            }
            line
        }
        // The snapshot check's part of `lifecycle` alone.
        "verify" => json!({
            "bench": "verify",
            "verification": verification_cost(&host, Path::new(&home)).await?,
        }),
        "image-import" => image_import(Path::new(&home)).await?,
        "api" => api(&host, Path::new(&home)).await?,
        "net" => net::run(&host, Path::new(&home)).await?,
        "e2b" => sdks::run(&host, Path::new(&home), sdks::E2B).await?,
        "sdk" => sdks::run(&host, Path::new(&home), sdks::PYTHON).await?,
        _ => bail!(
            "usage: bench/run boot|exec|lifecycle|verify|image-import|api|net|netns|e2b|sdk|kvm"
        ),
    };
    println!("{line}");
    Ok(())
}
