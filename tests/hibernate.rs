//! A sandbox's whole state survives pause/resume and hibernate/resume: files, a running process
//! with its PID and in-memory state, and the clock comes back in step.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cove_tests::{Sandbox, cove_out, first_non_zero, flip, flip_keeping_mtime, ok, wait_until};

/// Checksums of the 50 files, the counter process's PID, and its counter.
fn observe(sb: &Sandbox) -> (String, String, u64) {
    let sums = ok(&sb.exec(&[], &["sh", "-c", "cd /data && sha256sum f*"], b""));
    let pid = ok(&sb.exec(&[], &["cat", "/tmp/pid"], b""))
        .trim()
        .to_string();
    // The process must be alive (signal 0) under the same PID.
    ok(&sb.exec(&[], &["kill", "-0", &pid], b""));
    let n = ok(&sb.exec(&[], &["cat", "/tmp/counter"], b""))
        .trim()
        .parse()
        .unwrap();
    (sums, pid, n)
}

/// The counting process's count, once it has written one.
fn counter(sb: &Sandbox) -> Option<u64> {
    let o = sb.exec(&[], &["cat", "/tmp/counter"], b"");
    String::from_utf8_lossy(&o.stdout).trim().parse().ok()
}

fn state(sb: &Sandbox) -> String {
    sb.inspect()["state"].as_str().unwrap().to_string()
}

#[test]
fn files_and_processes_survive_pause_and_three_hibernations() {
    let sb = Sandbox::create("busybox", &[]);
    // 50 files of random content, and a process counting in a shell variable (its memory).
    ok(&sb.exec(&[], &["sh", "-c", "mkdir /data && for i in $(seq 1 50); do head -c $((1000 + i * 997)) /dev/urandom > /data/f$i; done"], b""));
    ok(&sb.exec(
        &[],
        &["sh", "-c", "(i=0; while true; do i=$((i+1)); echo $i > /tmp/counter.new; mv /tmp/counter.new /tmp/counter; sleep 0.05; done) >/dev/null 2>&1 & echo $! > /tmp/pid"],
        b"",
    ));
    assert!(cove_tests::wait_until(Duration::from_secs(30), || counter(
        &sb
    )
    .is_some()));
    let (sums, pid, mut last) = observe(&sb);
    assert_eq!(sums.lines().count(), 50);

    ok(&cove_out(&["pause", &sb.id]));
    assert_eq!(state(&sb), "paused");
    let o = sb.exec(&[], &["true"], b"");
    assert_eq!(o.status.code(), Some(125), "a paused sandbox runs nothing");
    assert!(String::from_utf8_lossy(&o.stderr).contains("paused"));
    ok(&cove_out(&["resume", &sb.id]));
    let (s, p, n) = observe(&sb);
    assert_eq!((s.as_str(), p.as_str()), (sums.as_str(), pid.as_str()));
    assert!(n >= last);
    last = n;

    for round in 0..3 {
        ok(&cove_out(&["hibernate", &sb.id]));
        assert_eq!(state(&sb), "hibernated");
        assert!(
            sb.inspect()["host"]["pid"].is_null(),
            "no process while hibernated"
        );
        ok(&cove_out(&["resume", &sb.id]));
        assert_eq!(state(&sb), "running");
        assert!(
            cove_tests::wait_until(Duration::from_secs(30), || counter(&sb)
                .is_some_and(|n| n > last)),
            "round {round}: the counter carries on from {last}"
        );
        let (s, p, n) = observe(&sb);
        assert_eq!(s, sums, "round {round}: files intact");
        assert_eq!(p, pid, "round {round}: same process");
        assert!(
            n > last,
            "round {round}: the counter carries on from {last}, got {n}"
        );
        last = n;
    }
}

#[test]
fn the_clock_is_resynced_after_hibernation() {
    let sb = Sandbox::create("busybox", &[]);
    ok(&cove_out(&["hibernate", &sb.id]));
    std::thread::sleep(Duration::from_secs(10));
    ok(&cove_out(&["resume", &sb.id]));
    let guest: f64 = ok(&sb.exec(&[], &["date", "+%s"], b""))
        .trim()
        .parse()
        .unwrap();
    let host = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((host - guest).abs() <= 1.5, "guest {guest} vs host {host}");
}

#[test]
fn a_corrupted_snapshot_is_refused_and_the_sandbox_stays_hibernated() {
    let sb = Sandbox::create("busybox", &[]);
    ok(&sb.exec(&[], &["sh", "-c", "echo kept > /root/k"], b""));
    ok(&cove_out(&["hibernate", &sb.id]));
    let dir =
        std::path::PathBuf::from(sb.inspect()["host"]["dir"].as_str().unwrap()).join("hibernation");
    // Guest memory first: one flipped byte where the guest wrote. The file is sparse and as big
    // as guest RAM, so it is changed in place: rewriting it whole would make it dense and fill a
    // small CI disk with zeros.
    let memory = dir.join("memory");
    let at = first_non_zero(&memory);
    // This host's copy gone bad while the blob store holds the sandbox's: fetched again, and
    // the wake works.
    flip(&memory, at, 0x01);
    ok(&cove_out(&["resume", &sb.id]));
    assert_eq!(ok(&sb.exec(&[], &["cat", "/root/k"], b"")), "kept\n");
    // Both copies bad (this host's memory, the store's state): refused.
    ok(&cove_out(&["hibernate", &sb.id]));
    let stored_state = cove_tests::home().join(format!("blobs/hibernations/{}/state", sb.id));
    let mid = std::fs::metadata(&stored_state).unwrap().len() / 2;
    flip(&stored_state, mid, 0xff);
    let at = first_non_zero(&memory);
    flip(&memory, at, 0x01);
    let o = cove_out(&["resume", &sb.id]);
    assert_eq!(o.status.code(), Some(125));
    let err = String::from_utf8_lossy(&o.stderr);
    // Checked by the host before any VM starts (a 422), not a start that failed (a 500).
    assert!(
        err.contains("state is corrupted") && !err.contains("failed to start"),
        "{err}"
    );
    assert_eq!(state(&sb), "hibernated");
    let reason = sb.inspect()["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        reason.starts_with("resume failed") && reason.contains("state is corrupted"),
        "{reason}"
    );
    // This host's copy is now the store's (its state bad): refused again without it being
    // consumed, and with the file repaired the sandbox comes back.
    let state_file = dir.join("state");
    let o = cove_out(&["resume", &sb.id]);
    assert_eq!(o.status.code(), Some(125));
    assert_eq!(state(&sb), "hibernated");
    flip(&state_file, mid, 0xff);
    ok(&cove_out(&["resume", &sb.id]));
    assert_eq!(ok(&sb.exec(&[], &["cat", "/root/k"], b"")), "kept\n");
}

#[test]
fn forks_share_the_past_and_diverge_after() {
    let src = Sandbox::create("busybox", &[]);
    ok(&src.exec(
        &[],
        &[
            "sh",
            "-c",
            "head -c 100000 /dev/urandom > /root/data && sha256sum /root/data > /root/sum",
        ],
        b"",
    ));
    ok(&src.exec(
        &[],
        &["sh", "-c", "(i=0; while true; do i=$((i+1)); echo $i > /tmp/counter.new; mv /tmp/counter.new /tmp/counter; sleep 0.05; done) >/dev/null 2>&1 & echo $! > /tmp/pid"],
        b"",
    ));
    let sum = ok(&src.exec(&[], &["cat", "/root/sum"], b""));
    let pid = ok(&src.exec(&[], &["cat", "/tmp/pid"], b""));
    let out = ok(&cove_out(&["fork", &src.id, "--count", "3"]));
    let clones: Vec<Sandbox> = out
        .lines()
        .map(|id| Sandbox { id: id.to_string() })
        .collect();
    assert_eq!(clones.len(), 3);
    let mut randoms = std::collections::HashSet::new();
    let mut ids = std::collections::HashSet::new();
    for (i, c) in clones.iter().enumerate() {
        // The past is shared: files, and the process with its PID, still counting.
        assert_eq!(
            ok(&c.exec(&[], &["sh", "-c", "sha256sum /root/data"], b"")),
            sum
        );
        assert_eq!(ok(&c.exec(&[], &["cat", "/tmp/pid"], b"")), pid);
        ok(&c.exec(&[], &["kill", "-0", pid.trim()], b""));
        // (The counter is replaced atomically: a read never sees it half-written.)
        let count = || -> u64 {
            ok(&c.exec(&[], &["cat", "/tmp/counter"], b""))
                .trim()
                .parse()
                .unwrap()
        };
        let n1 = count();
        assert!(
            cove_tests::wait_until(Duration::from_secs(30), || count() > n1),
            "the clone's copy of the process counts on from {n1}"
        );
        // Each clone is its own machine: its hostname, its random state.
        assert_eq!(ok(&c.exec(&[], &["hostname"], b"")).trim(), c.id);
        randoms.insert(ok(&c.exec(
            &[],
            &["sh", "-c", "head -c 16 /dev/urandom | od -An -tx1"],
            b"",
        )));
        ids.insert(c.id.clone());
        // The future is not: a write in one clone is seen nowhere else.
        ok(&c.exec(
            &[],
            &["sh", "-c", &format!("echo clone{i} > /root/mine")],
            b"",
        ));
    }
    assert_eq!(randoms.len(), 3, "clones never share random state");
    assert_eq!(ids.len(), 3);
    for (i, c) in clones.iter().enumerate() {
        assert_eq!(
            ok(&c.exec(&[], &["cat", "/root/mine"], b"")),
            format!("clone{i}\n")
        );
    }
    let o = src.exec(&[], &["cat", "/root/mine"], b"");
    assert!(
        !o.status.success(),
        "the source did not see its clones' writes"
    );
    assert_eq!(
        ok(&src.exec(&[], &["sh", "-c", "sha256sum /root/data"], b"")),
        sum
    );
    assert!(
        !ok(&cove_out(&["snapshot", "ls", "--json"])).contains(&src.id),
        "fork's snapshot is gone"
    );
}

#[test]
fn named_snapshots_restore_and_templates_replace_boots() {
    let src = Sandbox::create("busybox", &[]);
    ok(&src.exec(&[], &["sh", "-c", "echo kept > /root/note"], b""));
    let name = format!("snap-{}", std::process::id());
    let snap = ok(&cove_out(&["snapshot", &src.id, "--name", &name]))
        .trim()
        .to_string();
    // The source keeps running after a snapshot.
    assert_eq!(ok(&src.exec(&[], &["echo", "alive"], b"")), "alive\n");
    let o = ok(&cove_out(&["create", "--from-snapshot", &name]));
    let restored = Sandbox {
        id: o.trim().to_string(),
    };
    assert_eq!(
        ok(&restored.exec(&[], &["cat", "/root/note"], b"")),
        "kept\n"
    );
    let listed = ok(&cove_out(&["snapshot", "ls", "--json"]));
    assert!(listed.contains(&snap) && listed.contains(&name));
    ok(&cove_out(&["snapshot", "rm", &name]));
    assert!(!ok(&cove_out(&["snapshot", "ls", "--json"])).contains(&snap));
    let o = cove_out(&["create", "--from-snapshot", &name]);
    assert_eq!(o.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no such snapshot"));

    // A template: `create` with the same shape restores it instead of booting.
    let tpl = ok(&cove_out(&[
        "template", "create", "busybox", "--memory", "192",
    ]))
    .trim()
    .to_string();
    // A create with the template's shape.
    let create_192 = || Sandbox {
        id: ok(&cove_out(&[
            "create", "--image", "busybox", "--memory", "192",
        ]))
        .trim()
        .to_string(),
    };
    let from_tpl = create_192();
    let vm: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            std::path::Path::new(from_tpl.inspect()["host"]["dir"].as_str().unwrap())
                .join("vm.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(vm["clone_of"], tpl.as_str(), "restored from the template");
    assert_eq!(
        ok(&from_tpl.exec(&[], &["hostname"], b"")).trim(),
        from_tpl.id
    );
    // The template records the guest (kernel and initramfs) it holds, and the restored sandbox
    // inherits it. A template of another guest — a kernel or agent installed since it was taken,
    // simulated by rewriting that record — no longer replaces boots: the current guest boots.
    let clone_of = |sb: &Sandbox| -> serde_json::Value {
        let dir = std::path::PathBuf::from(sb.inspect()["host"]["dir"].as_str().unwrap());
        let vm: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("vm.json")).unwrap()).unwrap();
        vm["clone_of"].clone()
    };
    let snaps: serde_json::Value =
        serde_json::from_str(&ok(&cove_out(&["snapshot", "ls", "--json"]))).unwrap();
    let tpl_dir = std::path::PathBuf::from(
        snaps
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == tpl.as_str())
            .unwrap()["host"]["dir"]
            .as_str()
            .unwrap(),
    );
    let recorded = std::fs::read_to_string(tpl_dir.join("guest")).unwrap();
    let from_tpl_dir =
        std::path::PathBuf::from(from_tpl.inspect()["host"]["dir"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(from_tpl_dir.join("guest")).unwrap(),
        recorded
    );
    // Restores hash a template's memory only until one check of that file has passed (see
    // `snapshot::verified_before`); a file changed since is checked again and refused, and the
    // create boots instead.
    let verified: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tpl_dir.join("verified.json")).unwrap()).unwrap();
    // The QEMU version each restore checks is recorded by the snapshot, as QEMU states it.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tpl_dir.join("manifest.json")).unwrap()).unwrap();
    // The engine's QEMU binary, as the sandbox's config names it.
    let vm_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(from_tpl_dir.join("vm.json")).unwrap()).unwrap();
    let qemu = std::process::Command::new(vm_json["qemu"].as_str().unwrap())
        .arg("--version")
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&qemu.stdout)
        .lines()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(verified["qemu"]["version"], line.as_str());
    assert_eq!(manifest["engine_version"], line.as_str());
    assert!(verified["memory"]["blake3"].is_string(), "{verified}");
    let at = first_non_zero(&tpl_dir.join("memory"));
    flip(&tpl_dir.join("memory"), at, 0x01);
    let after_change = create_192();
    assert!(
        clone_of(&after_change).is_null(),
        "a template changed since its check was restored"
    );
    drop(after_change);
    flip(&tpl_dir.join("memory"), at, 0x01);
    std::fs::write(tpl_dir.join("guest"), "0000000000000000-0000000000000000").unwrap();
    let booted = create_192();
    assert!(
        clone_of(&booted).is_null(),
        "a template of another guest was restored"
    );
    let booted_dir = std::path::PathBuf::from(booted.inspect()["host"]["dir"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(booted_dir.join("guest")).unwrap(),
        recorded,
        "the boot records the home's guest"
    );
    ok(&cove_out(&["snapshot", "rm", &tpl]));
}

#[test]
fn a_full_disk_during_a_snapshot_is_a_clear_error_and_the_sandbox_keeps_running() {
    // A Cove home on a 64 MiB tmpfs: the guest assets fit, a snapshot of a 256 MiB guest with
    // tens of MiB of touched memory does not.
    let home = std::env::temp_dir().join(format!("cove-full-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
        .arg(&home)
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a tmpfs (tests run as root)");
    let _mount = TmpfsHome(home.clone());
    let src = cove_tests::home();
    for f in ["kernel/vmlinux", "kernel/initramfs.cpio"] {
        std::fs::create_dir_all(home.join(f).parent().unwrap()).unwrap();
        std::fs::copy(src.join(f), home.join(f)).unwrap();
    }
    let run = |args: &[&str]| {
        cove_tests::cove()
            .env("COVE_HOME", &home)
            .args(args)
            .output()
            .unwrap()
    };
    let layout = cove_tests::default_layout("busybox");
    ok(&run(&[
        "image",
        "import",
        "--quiet",
        "--name",
        "busybox",
        layout.to_str().unwrap(),
    ]));
    let o = run(&["create", "--memory", "256", "--disk", "256"]);
    let id = ok(&o).trim().to_string();
    // Touch memory so the snapshot has something to write.
    ok(&run(&[
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "head -c 40000000 /dev/urandom > /dev/shm/fill",
    ]));
    let o = run(&["snapshot", &id]);
    assert_eq!(o.status.code(), Some(125));
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        err.contains("No space left") || err.contains("space"),
        "{err}"
    );
    // Nothing half-written is left, and the sandbox carries on.
    assert!(ok(&run(&["snapshot", "ls", "--json"])).trim() == "[]");
    assert_eq!(
        ok(&run(&["exec", &id, "--", "echo", "running"])),
        "running\n"
    );
    assert!(
        std::fs::read_dir(home.join("snapshots"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0
    );
    ok(&run(&["rm", "-f", &id]));
}

/// A tmpfs Cove home that is taken down however the test ends: its sandboxes are removed and
/// the mount lazily detached, so a failed assertion leaves no mount and no guest behind.
struct TmpfsHome(std::path::PathBuf);

impl Drop for TmpfsHome {
    fn drop(&mut self) {
        let cove = |args: &[&str]| {
            cove_tests::cove()
                .env("COVE_HOME", &self.0)
                .args(args)
                .output()
        };
        if let Ok(o) = cove(&["ls", "-q"]) {
            for id in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = cove(&["rm", "-f", id]);
            }
        }
        // The coved this home's commands started goes with it.
        let _ = cove(&["daemon", "stop"]);
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn killing_cove_vm_during_a_snapshot_leaves_a_usable_state_or_a_failed_sandbox() {
    let sb = Sandbox::create("busybox", &[]);
    ok(&sb.exec(
        &[],
        &["sh", "-c", "head -c 30000000 /dev/urandom > /dev/shm/fill"],
        b"",
    ));
    let pid = sb.inspect()["host"]["pid"].as_u64().unwrap();
    let mut snap = cove_tests::cove()
        .args(["snapshot", &sb.id])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(60));
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
    let finished = snap.wait().unwrap();
    let v = sb.inspect();
    let snaps = ok(&cove_out(&["snapshot", "ls", "--json"]));
    if finished.success() && snaps.contains(&sb.id) {
        // The snapshot completed before the kill: it must restore.
        let listed: Vec<serde_json::Value> = serde_json::from_str(&snaps).unwrap();
        let s = listed
            .iter()
            .find(|s| s["sandbox"] == sb.id.as_str())
            .unwrap();
        let o = ok(&cove_out(&[
            "create",
            "--from-snapshot",
            s["id"].as_str().unwrap(),
        ]));
        let restored = Sandbox {
            id: o.trim().to_string(),
        };
        assert_eq!(ok(&restored.exec(&[], &["echo", "ok"], b"")), "ok\n");
        ok(&cove_out(&["snapshot", "rm", s["id"].as_str().unwrap()]));
    } else {
        // It did not: no snapshot is recorded, and the sandbox says why it is gone.
        assert!(!snaps.contains(&sb.id), "{snaps}");
        assert_eq!(v["state"], "failed", "{v}");
        assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()));
    }
}

#[test]
fn idle_and_ttl_policies_are_enforced_and_the_next_request_resumes() {
    let paused = Sandbox::create("busybox", &["--idle-timeout", "2", "--on-idle", "pause"]);
    let hibernated = Sandbox::create(
        "busybox",
        &["--idle-timeout", "2", "--on-idle", "hibernate"],
    );
    let expiring = Sandbox::create("busybox", &["--ttl", "3"]);
    ok(&paused.exec(&[], &["sh", "-c", "echo 1 > /root/a"], b""));
    ok(&hibernated.exec(&[], &["sh", "-c", "echo 2 > /root/b"], b""));
    assert!(cove_tests::wait_until(Duration::from_secs(20), || state(
        &paused
    ) == "paused"
        && state(&hibernated) == "hibernated"
        && state(&expiring) == "stopped"));
    assert_eq!(paused.inspect()["reason"], "idle");
    // Each change is recorded with its true actor: the idle policy, the time to live.
    let actor_of = |sb: &Sandbox, state: &str| -> String {
        let log = ok(&cove_out(&["events", "--sandbox", &sb.id, "--json"]));
        log.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|e| e["state"] == state)
            .unwrap_or_else(|| panic!("no {state} event for {}: {log}", sb.id))["actor"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(actor_of(&paused, "paused"), "idle-policy");
    assert_eq!(actor_of(&hibernated, "hibernated"), "idle-policy");
    assert_eq!(actor_of(&expiring, "stopped"), "ttl");
    assert_eq!(actor_of(&expiring, "running"), "local");
    // An idle hibernation reaches the blob store like an explicit one (coved copies it: a
    // jailed cove-vm sees no blob store).
    let stored = cove_tests::home().join(format!(
        "blobs/hibernations/{}/manifest.json",
        hibernated.id
    ));
    assert!(
        wait_until(Duration::from_secs(60), || stored.is_file()),
        "{}",
        stored.display()
    );
    assert!(
        expiring.inspect()["reason"]
            .as_str()
            .unwrap()
            .contains("time to live")
    );
    // The next request brings idle sandboxes back, state intact; an expired one stays down.
    assert_eq!(ok(&paused.exec(&[], &["cat", "/root/a"], b"")), "1\n");
    assert_eq!(ok(&hibernated.exec(&[], &["cat", "/root/b"], b"")), "2\n");
    assert_eq!(state(&paused), "running");
    assert_eq!(state(&hibernated), "running");
    assert_eq!(expiring.exec(&[], &["true"], b"").status.code(), Some(125));
    let o = cove_out(&["create", "--on-idle", "sleep", "--idle-timeout", "5"]);
    assert_eq!(o.status.code(), Some(125));
}

#[test]
fn a_hibernated_sandbox_resumes_from_the_blob_store_alone() {
    // As on another host: no local copy of the hibernation or of the disk, only the store.
    let sb = Sandbox::create("busybox", &[]);
    ok(&sb.exec(&[], &["sh", "-c", "head -c 200000 /dev/urandom > /root/r; sha256sum /root/r > /root/sum; sleep 1000 & echo $! > /tmp/pid"], b""));
    let sum = ok(&sb.exec(&[], &["cat", "/root/sum"], b""));
    let pid = ok(&sb.exec(&[], &["cat", "/tmp/pid"], b""));
    ok(&cove_out(&["hibernate", &sb.id]));
    let dir = std::path::PathBuf::from(sb.inspect()["host"]["dir"].as_str().unwrap());
    std::fs::remove_dir_all(dir.join("hibernation")).unwrap();
    std::fs::remove_file(dir.join("disk.ext4")).unwrap();
    ok(&cove_out(&["resume", &sb.id]));
    assert_eq!(
        ok(&sb.exec(&[], &["sh", "-c", "sha256sum /root/r"], b"")),
        sum
    );
    ok(&sb.exec(&[], &["kill", "-0", pid.trim()], b""));
}

#[test]
fn a_paused_sandbox_can_be_snapshotted_forked_and_hibernated() {
    let sb = Sandbox::create("busybox", &[]);
    ok(&sb.exec(&[], &["sh", "-c", "echo paused-state > /root/p"], b""));
    ok(&cove_out(&["pause", &sb.id]));
    let snap = ok(&cove_out(&["snapshot", &sb.id])).trim().to_string();
    assert_eq!(
        state(&sb),
        "paused",
        "a snapshot leaves a paused sandbox paused"
    );
    let clone = Sandbox {
        id: ok(&cove_out(&["fork", &sb.id])).trim().to_string(),
    };
    assert_eq!(
        ok(&clone.exec(&[], &["cat", "/root/p"], b"")),
        "paused-state\n"
    );
    assert_eq!(state(&sb), "paused");
    ok(&cove_out(&["hibernate", &sb.id]));
    ok(&cove_out(&["resume", &sb.id]));
    assert_eq!(
        ok(&sb.exec(&[], &["cat", "/root/p"], b"")),
        "paused-state\n"
    );
    ok(&cove_out(&["snapshot", "rm", &snap]));
}

/// A byte of a snapshot changed in place with its modification time put back (what a careful
/// tamperer does, and what an mtime-keyed check missed) is refused at the next restore: the
/// remembered check is keyed on the change time too, which cannot be put back. Before the
/// tamper, the sealed snapshot's remembered check is current (its restores hash nothing).
#[test]
fn a_tamper_that_keeps_the_mtime_is_refused() {
    let src = Sandbox::create("busybox", &[]);
    let snap = ok(&cove_out(&["snapshot", &src.id])).trim().to_string();
    let dir = cove_tests::home().join("snapshots").join(&snap);
    assert!(
        cove_store::verified::current(&dir, "memory").is_some(),
        "sealing kept the snapshot's check"
    );
    let restored = Sandbox {
        id: ok(&cove_out(&["create", "--from-snapshot", &snap]))
            .trim()
            .to_string(),
    };
    assert_eq!(ok(&restored.exec(&[], &["echo", "ok"], b"")), "ok\n");

    let memory = dir.join("memory");
    flip_keeping_mtime(&memory, first_non_zero(&memory), 0x01);
    let o = cove_out(&["create", "--from-snapshot", &snap]);
    assert_eq!(o.status.code(), Some(125));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("corrupted"), "{err}");
    // Refused by the host's check before anything started: no sandbox is left of it.
    let all: Vec<serde_json::Value> =
        serde_json::from_str(&ok(&cove_out(&["ls", "--json"]))).unwrap();
    assert!(
        !all.iter().any(|s| s["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&format!("snapshots/{snap}/")))),
        "{all:?}"
    );
    ok(&cove_out(&["snapshot", "rm", &snap]));
}

/// Bit rot — a byte changed while the file's identity stays what the remembered check names —
/// passes a restore's check; the scrub finds it, drops the host's copy (the blob store holds
/// the snapshot) and the next restore fetches the stored copy and runs.
#[test]
fn a_scrub_finds_what_the_remembered_check_cannot() {
    let src = Sandbox::create("busybox", &[]);
    ok(&src.exec(&[], &["sh", "-c", "echo kept > /root/note"], b""));
    let snap = ok(&cove_out(&["snapshot", &src.id])).trim().to_string();
    let dir = cove_tests::home().join("snapshots").join(&snap);
    let memory = dir.join("memory");
    let mut entry = cove_store::verified::current(&dir, "memory").expect("a remembered check");
    flip(&memory, first_non_zero(&memory), 0x01);
    // What rot looks like to the record: nothing it keys on has moved.
    entry["identity"] = cove_store::verified::identity(&memory).unwrap().into();
    cove_store::verified::remember(&dir, "memory", entry);
    assert!(cove_store::verified::current(&dir, "memory").is_some());

    let o = cove_out(&["scrub", "--only", &snap, "--json"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["checked"], 1, "{s}");
    let found = &s["corrupted"][0];
    assert_eq!(found["held"], "snapshot", "{s}");
    assert_eq!(found["id"], snap.as_str(), "{s}");
    assert_eq!(found["action"], "refetch", "{s}");
    assert!(
        found["error"]
            .as_str()
            .unwrap()
            .contains("memory is corrupted"),
        "{s}"
    );
    assert!(!memory.exists(), "the host's copy is gone");

    let restored = Sandbox {
        id: ok(&cove_out(&["create", "--from-snapshot", &snap]))
            .trim()
            .to_string(),
    };
    assert_eq!(
        ok(&restored.exec(&[], &["cat", "/root/note"], b"")),
        "kept\n"
    );
    // The fetched copy was checked once, by the host, and that check is remembered (a jailed
    // restore cannot write it into the sealed snapshot: each would hash it again).
    assert!(cove_store::verified::current(&dir, "memory").is_some());
    let o = cove_out(&["scrub", "--only", &snap, "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    ok(&cove_out(&["snapshot", "rm", &snap]));
}

/// A template changed in place with its mtime put back is not restored: the create that would
/// have used it is checked by the host first, boots instead, works, and says why.
#[test]
fn a_tampered_template_is_booted_around() {
    // A shape no other test uses, so no other create meets this template meanwhile.
    let tpl = ok(&cove_out(&[
        "template", "create", "busybox", "--memory", "176",
    ]))
    .trim()
    .to_string();
    let memory = cove_tests::home()
        .join("snapshots")
        .join(&tpl)
        .join("memory");
    flip_keeping_mtime(&memory, first_non_zero(&memory), 0x01);
    let sb = Sandbox {
        id: ok(&cove_out(&[
            "create", "--image", "busybox", "--memory", "176",
        ]))
        .trim()
        .to_string(),
    };
    assert_eq!(ok(&sb.exec(&[], &["echo", "booted"], b"")), "booted\n");
    let vm: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            std::path::Path::new(sb.inspect()["host"]["dir"].as_str().unwrap()).join("vm.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(vm["clone_of"].is_null(), "booted, not restored: {vm}");
    // And it says so: on the sandbox, and as the cause of its `running` event.
    let reason = sb.inspect()["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        reason.starts_with("booted instead of restoring a template")
            && reason.contains(&tpl)
            && reason.contains("failed its check"),
        "{reason}"
    );
    let events = ok(&cove_out(&["events", "--sandbox", &sb.id, "--json"]));
    assert!(
        events.lines().any(|l| {
            let e: serde_json::Value = serde_json::from_str(l).unwrap();
            e["state"] == "running" && e["cause"].as_str() == Some(reason.as_str())
        }),
        "{events}"
    );
    drop(sb);
    ok(&cove_out(&["snapshot", "rm", &tpl]));
}
