//! Benchmarks of Cove's hot paths. Each prints one JSON line.
//!
//! - `boot`: cove-vm start → agent answered, 10 runs; beside it, in the same run, plain QEMU
//!   booting the same kernel and initramfs to the init's first console line.
//! - `exec`: round trip of `true` in a running sandbox (100 runs, p50/p99), and stdout MB/s.

use std::io::BufRead;
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

/// Plain QEMU with the same machine, kernel and initramfs as the engine, no devices, timed to
/// the init's first console line (`COVE_FIRST_LINE=1` makes the agent print one at once).
fn plain_qemu(host: &Host, memory: u32) -> anyhow::Result<f64> {
    let khz = cove_host::engine::tsc_khz(host.home()).context("TSC frequency")?;
    let choice = cove_host::engine::choose(None)?;
    let t = Instant::now();
    let mut child = Command::new(&choice.qemu)
        .args(["-M", "microvm,acpi=off,x-option-roms=off,rtc=on", "-accel", &choice.accel])
        .args(["-cpu", if choice.accel == "kvm" { "host" } else { "max" }])
        .args(["-m", &memory.to_string(), "-smp", "1", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(host.kernel())
        .arg("-initrd")
        .arg(host.initramfs())
        .args(["-append", &format!("console=ttyS0 reboot=t panic=-1 quiet 8250.nr_uarts=1 tsc_early_khz={khz} COVE_FIRST_LINE=1{}", if choice.accel == "tcg" { " nolapic_timer" } else { "" })])
        .args(["-serial", "stdio"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let out = child.stdout.take().context("qemu stdout")?;
    let mut found = None;
    for line in std::io::BufReader::new(out).lines() {
        if line?.contains("cove-agent: init started") {
            found = Some(ms(t));
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    found.context("plain QEMU never reached init")
}

/// Plain QEMU with exactly the engine's command line for a (stopped) sandbox, timed to the
/// init's first line in its console log: the guest then does everything Cove's does up to init.
fn plain_same_args(dir: &Path) -> anyhow::Result<f64> {
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
    let mut argv: Vec<String> = serde_json::from_slice(&out.stdout)?;
    let i = argv
        .iter()
        .position(|a| a == "-append")
        .context("no -append")?;
    argv[i + 1].push_str(" COVE_FIRST_LINE=1");
    let console = dir.join("console.log");
    // cove-vm reads the console from a socket; here QEMU writes it to the file itself.
    for a in &mut argv {
        if a.starts_with("socket,id=con,") {
            *a = format!("file,id=con,path={}", console.display());
        }
    }
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

async fn boot(host: &Host, runs: usize) -> anyhow::Result<serde_json::Value> {
    let spec = CreateSpec {
        memory_mib: 256,
        use_template: false,
        ..Default::default()
    };
    let (mut boot, mut create, mut bare, mut same) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Interleaved, so all see the same machine load.
    for _ in 0..runs {
        let t = Instant::now();
        let rec = host.create(&spec).await?;
        create.push(ms(t));
        boot.push(rec.boot_ms.context("boot time")? as f64);
        host.stop(&rec.id).await?;
        let r = plain_same_args(Path::new(&rec.dir));
        host.remove(&rec.id, true).await?;
        same.push(r?);
        bare.push(plain_qemu(host, spec.memory_mib)?);
    }
    let b = summary(boot);
    let bare = summary(bare);
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
        "plain_qemu_to_init_ms": bare,
        "plain_qemu_same_devices_to_init_ms": same,
        "ratio_median": ratio(&bare),
        "ratio_median_same_devices": ratio(&same),
    }))
}

async fn exec(host: &Host, runs: usize) -> anyhow::Result<serde_json::Value> {
    let rec = host
        .create(&CreateSpec {
            memory_mib: 256,
            use_template: false,
            ..Default::default()
        })
        .await?;
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
    let rec = host
        .create(&CreateSpec {
            memory_mib: 256,
            use_template: false,
            ..Default::default()
        })
        .await?;
    host.stop(&rec.id).await?;
    let dir = PathBuf::from(&rec.dir);
    let vm = std::env::current_exe()?.with_file_name("cove-vm");
    let out = Command::new(&vm)
        .arg("--dir")
        .arg(&dir)
        .arg("--print-engine-args")
        .output()?;
    let mut argv: Vec<String> = serde_json::from_slice(&out.stdout)?;
    let mut i = 0;
    while i < argv.len() {
        if argv[i] == "-object" && argv[i + 1].starts_with("memory-backend-file") {
            argv.drain(i..i + 2);
            continue;
        }
        argv[i] = argv[i].replace(",memory-backend=mem", "");
        if argv[i].starts_with("socket,id=con,") {
            argv[i] = format!("file,id=con,path={}", dir.join("console.log").display());
        }
        i += 1;
    }
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
    let spec = CreateSpec {
        memory_mib: 256,
        use_template: false,
        ..Default::default()
    };
    let work = std::env::temp_dir().join(format!("cove-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let first_exec = |id: String| async move {
        let c = host.connect(&id).await?;
        let o = c
            .output(
                ExecRequest {
                    argv: vec!["true".into()],
                    ..Default::default()
                },
                None,
            )
            .await?;
        anyhow::ensure!(o.status.code == Some(0), "true failed");
        anyhow::Ok(())
    };
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
        let s = host.snapshot(&rec.id, None, false).await?;
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
        let clones = host.fork(&rec.id, 5).await?;
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).map(String::as_str).unwrap_or("");
    let home = cove_host::default_home();
    let host = Host::open(Path::new(&home))?;
    let line = match which {
        "boot" => boot(&host, 10).await?,
        "exec" => exec(&host, 100).await?,
        "lifecycle" => lifecycle(&host).await?,
        _ => bail!("usage: bench/run boot|exec|lifecycle"),
    };
    println!("{line}");
    Ok(())
}
