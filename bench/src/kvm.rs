//! `bench/run kvm`: Cove's own VMM, timed from outside the process that runs it
//! (`cove-kvm-guest`), with the purpose-built guest programs in `bench/guests`.
//!
//! - `start_ms`: a `cove-vm` process (kvm engine) start → its control socket answering, with a
//!   purpose-built guest as the kernel (as the issue defines it; the guest cannot speak the agent
//!   protocol, so the process is killed once the socket answers).
//! - `first_output_ms`: process start → the guest's first output (VM, memory, kernel load,
//!   vCPU) in a bare VMM process.
//! - `restore_ms`: process start → a restored guest's first output.
//! - `snapshot_ms`, `snapshot_bytes`: pause, save and sync a 128 MiB guest that touched 8 MiB.
//! - `rss_kib`: resident memory of a restored VM process at its guest's first output.
//! - `vms_per_s`: 50 VMs started and run to their end in sequence.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, ensure};
use serde_json::json;

use crate::summary;

fn assemble(name: &str, out: &Path) -> anyhow::Result<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("guests")
        .join(format!("{name}.S"));
    let obj = out.join(format!("{name}.o"));
    let elf = out.join(format!("{name}.elf"));
    let ok = Command::new("as")
        .args(["--64", "-o"])
        .arg(&obj)
        .arg(&src)
        .status()
        .context("running as (binutils)")?
        .success()
        && Command::new("ld")
            .args([
                "-m",
                "elf_x86_64",
                "-nostdlib",
                "-static",
                "--build-id=none",
            ])
            .args([
                "-z",
                "max-page-size=0x1000",
                "-Ttext=0x100000",
                "-e",
                "_start",
                "-o",
            ])
            .arg(&elf)
            .arg(&obj)
            .status()
            .context("running ld (binutils)")?
            .success();
    ensure!(ok, "assembling {}", src.display());
    Ok(elf)
}

fn guest_process(args: &[&str]) -> anyhow::Result<Child> {
    let bin = std::env::current_exe()?.with_file_name("cove-kvm-guest");
    Command::new(&bin)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

/// Milliseconds from `t` to the first byte `child` prints.
fn first_output(child: &mut Child, t: Instant) -> anyhow::Result<f64> {
    let mut b = [0u8; 1];
    child
        .stdout
        .as_mut()
        .context("stdout")?
        .read_exact(&mut b)
        .context("the guest printed nothing")?;
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

fn rss_kib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}

/// Starts `cove-vm` on a kvm-engine config whose kernel is `elf`; milliseconds until its
/// control socket accepts a connection.
fn control_socket_ms(dir: &Path, elf: &str) -> anyhow::Result<f64> {
    std::fs::create_dir_all(dir)?;
    let initramfs = dir.join("initramfs");
    std::fs::write(&initramfs, b"07070100")?;
    let cfg = json!({
        "id": "bench", "engine": "kvm", "accel": "kvm", "kernel": elf,
        "initramfs": initramfs, "cpus": 1, "memory_mib": 128, "disks": [], "qemu": "",
    });
    std::fs::write(dir.join("vm.json"), serde_json::to_vec(&cfg)?)?;
    let bin = std::env::current_exe()?.with_file_name("cove-vm");
    let sock = dir.join("control.sock");
    let t = Instant::now();
    let mut child = Command::new(&bin)
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let ms = loop {
        if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
            break t.elapsed().as_secs_f64() * 1000.0;
        }
        ensure!(
            t.elapsed().as_secs() < 10,
            "cove-vm's control socket never answered"
        );
        std::thread::sleep(std::time::Duration::from_micros(100));
    };
    child.kill()?;
    child.wait()?;
    Ok(ms)
}

pub fn run() -> anyhow::Result<serde_json::Value> {
    let dir = std::env::temp_dir().join(format!("cove-bench-kvm-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let hello = assemble("hello", &dir)?;
    let touch = assemble("touch", &dir)?;
    let hello = hello.to_str().context("path")?;
    let touch = touch.to_str().context("path")?;

    let mut control = Vec::new();
    for i in 0..20 {
        control.push(control_socket_ms(&dir.join(format!("vm{i}")), hello)?);
    }
    let mut start = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let mut c = guest_process(&["boot", hello, "128"])?;
        start.push(first_output(&mut c, t)?);
        ensure!(c.wait()?.success(), "a boot failed");
    }
    let t = Instant::now();
    for _ in 0..50 {
        let out = guest_process(&["boot", hello, "128"])?.wait_with_output()?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let vms_per_s = 50.0 / t.elapsed().as_secs_f64();

    let mut snapshot_ms = Vec::new();
    let mut snapshot_bytes = 0;
    let snap = dir.join("snap");
    for _ in 0..5 {
        let _ = std::fs::remove_dir_all(&snap);
        std::fs::create_dir_all(&snap)?;
        let out = guest_process(&["snapshot", touch, "128", snap.to_str().context("path")?])?
            .wait_with_output()?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stderr)?;
        snapshot_ms.push(v["snapshot_ms"].as_f64().context("snapshot_ms")?);
        snapshot_bytes = v["bytes"].as_u64().context("bytes")?;
    }

    let mut restore = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let mut c = guest_process(&["restore", snap.to_str().context("path")?])?;
        restore.push(first_output(&mut c, t)?);
        rss.push(rss_kib(c.id())?);
        c.kill()?;
        c.wait()?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let med = |v: &[f64]| summary(v.to_vec())["median"].clone();
    Ok(json!({
        "bench": "kvm",
        "start_ms": med(&control),
        "first_output_ms": med(&start),
        "restore_ms": med(&restore),
        "snapshot_ms": med(&snapshot_ms),
        "snapshot_bytes": snapshot_bytes,
        "touched_bytes": 8 << 20,
        "rss_kib": med(&rss),
        "vms_per_s": vms_per_s,
        "detail": {
            "start_ms": summary(control),
            "first_output_ms": summary(start),
            "restore_ms": summary(restore),
            "snapshot_ms": summary(snapshot_ms),
            "rss_kib": summary(rss),
        },
    }))
}
