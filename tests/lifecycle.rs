//! Sandboxes outlive the CLI, are found again, are marked failed when their VM dies, and leave
//! nothing behind when removed.

use std::path::PathBuf;
use std::time::Duration;

use cove_tests::{Sandbox, alive, cove_out, text, wait_until};

/// A relative `COVE_HOME` is resolved once: the recorded directory is absolute, and a removal
/// through the absolute home (or from anywhere else) leaves nothing behind. It used to keep the
/// relative path, which the removal's "inside the home" check then failed to match.
#[test]
fn a_relative_home_is_recorded_absolute_and_rm_leaves_nothing() {
    let home = cove_tests::home();
    let o = cove_tests::cove()
        .current_dir(home.parent().unwrap())
        .env("COVE_HOME", home.file_name().unwrap())
        .args(["create", "--memory", "256"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let sb = Sandbox {
        id: text(&o).trim().to_string(),
    };
    let dir = PathBuf::from(sb.inspect()["host"]["dir"].as_str().unwrap());
    assert!(dir.is_absolute() && dir.is_dir(), "{}", dir.display());
    assert_eq!(sb.exec(&[], &["echo", "ok"], b"").stdout, b"ok\n");
    let o = cove_out(&["rm", "-f", &sb.id]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!dir.exists(), "no file left");
}

#[test]
fn sandbox_survives_the_cli_and_rm_leaves_nothing() {
    let sb = Sandbox::create(
        "busybox",
        &["--name", &format!("life-{}", std::process::id())],
    );
    // Each cove invocation is a new process: the sandbox is found again through the state DB.
    let o = sb.exec(&[], &["sh", "-c", "echo 1 > /root/mark"], b"");
    assert!(o.status.success());
    let o = sb.exec(&[], &["cat", "/root/mark"], b"");
    assert_eq!(text(&o), "1\n");
    let ls = text(&cove_out(&["ls"]));
    assert!(
        ls.lines()
            .any(|l| l.starts_with(&sb.id) && l.contains("running")),
        "{ls}"
    );
    let ids = text(&cove_out(&["ls", "-q"]));
    assert!(ids.lines().any(|l| l == sb.id));

    let v = sb.inspect();
    let pid = v["host"]["pid"].as_u64().unwrap();
    let qemu = v["host"]["vm"]["vmm_pid"].as_u64().unwrap();
    let dir = PathBuf::from(v["host"]["dir"].as_str().unwrap());
    assert!(alive(pid) && alive(qemu) && dir.is_dir());
    let logs = cove_out(&["logs", &sb.id]);
    // The agent logs one line once it has answered the host: its version and boot timings.
    assert!(
        wait_until(Duration::from_secs(5), || text(&cove_out(&[
            "logs", &sb.id
        ]))
        .contains(": ready for cove-vm")),
        "{}",
        text(&logs)
    );

    let o = cove_out(&["rm", &sb.id]);
    assert_eq!(o.status.code(), Some(125), "a running sandbox needs -f");
    let o = cove_out(&["rm", "-f", &sb.id]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!alive(pid) && !alive(qemu), "no process left");
    assert!(!dir.exists(), "no file left");
    assert!(!text(&cove_out(&["ls", "-q"])).contains(&sb.id));
    let o = sb.exec(&[], &["true"], b"");
    assert_eq!(o.status.code(), Some(125));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).trim(),
        format!("cove: no such sandbox: {}", sb.id)
    );
}

#[test]
fn a_vanished_vm_is_marked_failed_with_the_reason() {
    let sb = Sandbox::create("busybox", &[]);
    let v = sb.inspect();
    let qemu = v["host"]["vm"]["vmm_pid"].as_u64().unwrap();
    // Kill the VM under cove-vm's feet.
    kill_9(qemu);
    assert!(wait_until(Duration::from_secs(10), || {
        sb.inspect()["state"].as_str() == Some("failed")
    }));
    let v = sb.inspect();
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("stopped unexpectedly"),
        "{v}"
    );
    // The host noticed the end: the event names the reconcile, with the reason as its cause.
    let log = text(&cove_out(&["events", "--sandbox", &sb.id, "--json"]));
    let failed: serde_json::Value = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["state"] == "failed")
        .unwrap_or_else(|| panic!("{log}"));
    assert_eq!(failed["actor"], "reconcile", "{failed}");
    assert!(
        failed["cause"]
            .as_str()
            .is_some_and(|c| c.contains("stopped unexpectedly")),
        "{failed}"
    );
    let o = sb.exec(&[], &["true"], b"");
    assert_eq!(o.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("failed"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn stop_keeps_the_sandbox_record() {
    let sb = Sandbox::create("busybox", &[]);
    let pid = sb.inspect()["host"]["pid"].as_u64().unwrap();
    let o = cove_out(&["stop", &sb.id]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!alive(pid));
    assert_eq!(sb.inspect()["state"], "stopped");
}

fn kill_9(pid: u64) {
    let o = std::process::Command::new("kill")
        .arg("-9")
        .arg(pid.to_string())
        .output()
        .unwrap();
    assert!(o.status.success());
}

#[test]
fn info_names_the_engine_and_why() {
    let o = cove_out(&["info", "--json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["host"]["engine"]["engine"], "qemu");
    let hw = v["host"]["virtualisation"]["hw_virt"].as_bool().unwrap()
        && v["host"]["virtualisation"]["dev_kvm"].as_bool().unwrap();
    assert_eq!(
        v["host"]["engine"]["accel"] == "kvm",
        hw,
        "auto uses KVM only when it is hardware-backed"
    );
    assert!(v["host"]["kernel"]["present"].as_bool().unwrap());
    // What the host offers for isolation, against what the filesystem says on its own.
    let iso = &v["host"]["isolation"];
    let fs = std::process::Command::new("stat")
        .args(["-f", "-c", "%T", "/sys/fs/cgroup"])
        .output()
        .unwrap();
    let unified_root = String::from_utf8_lossy(&fs.stdout).trim() == "cgroup2fs";
    assert_eq!(iso["cgroups"] == "v2", unified_root, "{iso}");
    assert_eq!(
        iso["seccomp"].as_bool().unwrap(),
        std::path::Path::new("/proc/sys/kernel/seccomp").is_dir(),
        "{iso}"
    );
    for ns in ["mnt", "pid", "net", "ipc", "uts"] {
        assert!(
            iso["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n == ns),
            "{iso}"
        );
    }
    // The guest identity templates are matched on: sha256 prefixes of the kernel and initramfs.
    let sum = |p: &str| {
        let o = std::process::Command::new("sha256sum")
            .arg(p)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)[..16].to_string()
    };
    assert_eq!(
        v["host"]["guest"].as_str().unwrap(),
        format!(
            "{}-{}",
            sum(v["host"]["kernel"]["path"].as_str().unwrap()),
            sum(v["host"]["initramfs"]["path"].as_str().unwrap())
        )
    );
}

/// Space the guest frees goes back to the host: a 256 MiB file written to the sandbox's disk
/// takes that much of the host's disk file, and deleting it gives it back (the writable disk is
/// mounted with online discard; QEMU punches the freed blocks out of the file), and `fstrim`
/// runs on the disk's filesystem.
#[test]
fn space_the_guest_frees_returns_to_the_host() {
    use std::os::unix::fs::MetadataExt;
    let sb = Sandbox::create("busybox", &[]);
    let disk =
        std::path::PathBuf::from(sb.inspect()["host"]["dir"].as_str().unwrap()).join("disk.ext4");
    let used = || std::fs::metadata(&disk).unwrap().blocks() * 512;
    let before = used();
    let o = sb.exec(
        &[],
        &[
            "sh",
            "-c",
            "dd if=/dev/zero of=/root/big bs=1M count=256 2>/dev/null && sync",
        ],
        b"",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let full = used();
    assert!(full >= before + (200 << 20), "{before} → {full}");
    let o = sb.exec(&[], &["sh", "-c", "rm /root/big && sync"], b"");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        cove_tests::wait_until(Duration::from_secs(60), || used() + (200 << 20) <= full),
        "{before} → {full} → {}",
        used()
    );
    // fstrim works too, on the disk's own filesystem (the overlay root cannot be trimmed).
    let o = sb.exec(&[], &["fstrim", "-v", "/run/cove/disk"], b"");
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("trimmed"),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}
