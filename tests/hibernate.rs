//! A sandbox's whole state survives pause/resume and hibernate/resume: files, a running process
//! with its PID and in-memory state, and the clock comes back in step.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cove_tests::{Sandbox, cove_out, text};

fn ok(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    text(o)
}

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
        &["sh", "-c", "(i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.05; done) >/dev/null 2>&1 & echo $! > /tmp/pid"],
        b"",
    ));
    std::thread::sleep(Duration::from_millis(300));
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
        assert!(sb.inspect()["pid"].is_null(), "no process while hibernated");
        ok(&cove_out(&["resume", &sb.id]));
        assert_eq!(state(&sb), "running");
        std::thread::sleep(Duration::from_millis(200));
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
    ok(&cove_out(&["hibernate", &sb.id]));
    let dir = std::path::PathBuf::from(sb.inspect()["dir"].as_str().unwrap()).join("hibernation");
    let state_file = dir.join("state");
    let good = std::fs::read(&state_file).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    std::fs::write(&state_file, &bad).unwrap();
    let o = cove_out(&["resume", &sb.id]);
    assert_eq!(o.status.code(), Some(125));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("corrupted"), "{err}");
    assert_eq!(state(&sb), "hibernated");
    // The snapshot was not consumed: with the file repaired the sandbox comes back.
    std::fs::write(&state_file, &good).unwrap();
    ok(&cove_out(&["resume", &sb.id]));
    assert_eq!(ok(&sb.exec(&[], &["echo", "back"], b"")), "back\n");
}
