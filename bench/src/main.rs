//! Benchmarks of Cove's hot paths. Each prints one JSON line.
//!
//! - `boot`: cove-vm start → agent answered, 10 runs; beside it, in the same run, plain QEMU
//!   booting the same kernel and initramfs to the init's first console line.
//! - `exec`: round trip of `true` in a running sandbox (100 runs, p50/p99), and stdout MB/s.

use std::io::BufRead;
use std::path::Path;
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).map(String::as_str).unwrap_or("");
    let home = cove_host::default_home();
    let host = Host::open(Path::new(&home))?;
    let line = match which {
        "boot" => boot(&host, 10).await?,
        "exec" => exec(&host, 100).await?,
        _ => bail!("usage: bench/run boot|exec"),
    };
    println!("{line}");
    Ok(())
}
