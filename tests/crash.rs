//! Crash consistency: coved killed (SIGKILL, by its own fault injection: `COVE_FAULT`) at each
//! step of create, pause, hibernate, wake, fork and delete. A new coved recovers the home when
//! it starts; then every sandbox is in a state the API explains (no `creating`, `resuming` or
//! `hibernating` left over, a reason on every failure), no directory, snapshot or VM is left
//! without its record, and removing the tenant's sandboxes leaves nothing behind.

use std::collections::HashSet;
use std::process::Output;

use cove_tests::cove_with_key as cove;
use cove_tests::{Coved, api_key, home};
use serde_json::Value;

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn json(o: &Output) -> Value {
    serde_json::from_str(&ok(o)).unwrap()
}

/// The tenant's sandboxes, by id.
fn sandboxes(url: &str, key: &str) -> Vec<Value> {
    json(&cove(url, key, &["ls", "--json"]))
        .as_array()
        .unwrap()
        .clone()
}

/// The cove-vm processes serving sandbox directory `dir`.
fn vms_in(dir: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| {
            let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
            args.first().is_some_and(|a| a.ends_with(b"cove-vm"))
                && args
                    .windows(2)
                    .any(|w| w[0] == b"--dir" && w[1] == dir.as_bytes())
        })
        .count()
}

/// What the home holds must be explained by the records: every sandbox directory has a record
/// (a create writes its record first), and every snapshot directory has one or is being taken
/// by a live process (its marker says which).
fn nothing_unexplained() {
    let home = home();
    let dirs: Vec<String> = std::fs::read_dir(home.join("sandboxes"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let snap_dirs: Vec<String> = std::fs::read_dir(home.join("snapshots"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.contains('.'))
                .collect()
        })
        .unwrap_or_default();
    // Listed after the directories were read: anything created meanwhile is recorded.
    let local = |args: &[&str]| -> Value {
        let o = cove_tests::cove_out(args);
        serde_json::from_str(&ok(&o)).unwrap()
    };
    let ids: HashSet<String> = local(&["ls", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    // A removal (directory first, record last) may have finished in between: only what is
    // still there after the listing counts. Directories of another store's coved sharing the
    // home (tests/postgres.rs) are that store's to explain.
    let local_store = format!("sqlite:{}", home.join("state.db").display());
    let theirs =
        |p: std::path::PathBuf| std::fs::read_to_string(p).is_ok_and(|s| s.trim() != local_store);
    for d in &dirs {
        let dir = home.join("sandboxes").join(d);
        assert!(
            ids.contains(d) || !dir.exists() || theirs(dir.join("store")),
            "sandbox directory {d} has no record"
        );
    }
    let snaps: HashSet<String> = local(&["snapshot", "ls", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    for d in &snap_dirs {
        let dir = home.join("snapshots").join(d);
        if snaps.contains(d) || !dir.exists() || theirs(dir.join("store")) {
            continue;
        }
        let taker =
            std::fs::read_to_string(home.join(format!("snapshots/{d}.taking"))).unwrap_or_default();
        let pid = taker.split(':').next().unwrap_or("");
        assert!(
            !pid.is_empty() && std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "snapshot directory {d} has no record and no live taker"
        );
    }
}

/// One fault: `prepare` readies a sandbox with a healthy coved, `op` runs the operation
/// against a coved that dies at `point`; `check` looks at the tenant's sandboxes after a new
/// coved recovered the home.
fn crash_at(
    point: &str,
    prepare: impl Fn(&str, &str) -> Option<String>,
    op: impl Fn(&str, &str, Option<&str>) -> Output,
    check: impl Fn(&str, &str, Option<&str>, &[Value]),
) {
    let tenant = format!("crash-{}-{}", point.replace('.', "-"), std::process::id());
    let key = api_key(&tenant, "exec");
    let healthy = Coved::start(&[]);
    let id = prepare(&healthy.url, &key);
    drop(healthy);
    let mut faulty = Coved::start_with("127.0.0.1:0", &[], &[("COVE_FAULT", point)]);
    let o = op(&faulty.url, &key, id.as_deref());
    assert!(
        !o.status.success(),
        "{point}: the operation should have lost its coved: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let status = faulty.child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{point}: coved was to kill itself there"
    );
    // A new coved recovers the home before it serves.
    let server = Coved::start(&[]);
    let all = sandboxes(&server.url, &key);
    for s in &all {
        let state = s["state"].as_str().unwrap();
        assert!(
            !["creating", "resuming", "hibernating"].contains(&state),
            "{point}: {s} is left in the middle of an operation"
        );
        if state == "failed" {
            assert!(s["reason"].as_str().is_some_and(|r| !r.is_empty()), "{s}");
        }
    }
    check(&server.url, &key, id.as_deref(), &all);
    nothing_unexplained();
    // Everything the tenant has goes, and leaves nothing.
    for s in &all {
        let sid = s["id"].as_str().unwrap();
        ok(&cove(&server.url, &key, &["rm", "-f", sid]));
        let dir = home().join("sandboxes").join(sid);
        assert!(!dir.exists(), "{point}: {} is left", dir.display());
        assert_eq!(
            vms_in(&dir.display().to_string()),
            0,
            "{point}: a VM is left"
        );
        assert!(!home().join("blobs/hibernations").join(sid).exists());
        assert!(!std::path::Path::new(&format!("/dev/shm/cove-{sid}.mem")).exists());
    }
    let snaps = json(&cove(&server.url, &key, &["snapshot", "ls", "--json"]));
    assert_eq!(snaps, serde_json::json!([]), "{point}: snapshots are left");
}

fn create(url: &str, key: &str) -> Option<String> {
    Some(ok(&cove(url, key, &["create", "--memory", "256"])))
}

fn state_of(all: &[Value], id: &str) -> String {
    all.iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("{id} is not listed: {all:?}"))["state"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_create_interrupted_at_each_step_ends_running_or_failed() {
    for point in ["create.recorded", "create.spawned", "create.ready"] {
        crash_at(
            point,
            |_, _| None,
            |url, key, _| cove(url, key, &["create", "--memory", "256"]),
            |_, _, _, all| {
                assert_eq!(all.len(), 1, "{point}: {all:?}");
                let want = if point == "create.recorded" {
                    "failed"
                } else {
                    "running"
                };
                assert_eq!(all[0]["state"], want, "{point}: {}", all[0]);
            },
        );
    }
}

#[test]
fn a_pause_or_a_hibernation_interrupted_ends_where_the_vm_is() {
    crash_at(
        "pause.paused",
        create,
        |url, key, id| cove(url, key, &["pause", id.unwrap()]),
        |_, _, id, all| assert_eq!(state_of(all, id.unwrap()), "paused"),
    );
    crash_at(
        "hibernate.recorded",
        create,
        |url, key, id| cove(url, key, &["hibernate", id.unwrap()]),
        |_, _, id, all| assert_eq!(state_of(all, id.unwrap()), "running"),
    );
    for point in ["hibernate.saved", "hibernate.uploading"] {
        crash_at(
            point,
            |url, key| {
                let id = create(url, key).unwrap();
                ok(&cove(
                    url,
                    key,
                    &["exec", &id, "--", "sh", "-c", "echo kept > /root/f"],
                ));
                Some(id)
            },
            |url, key, id| cove(url, key, &["hibernate", id.unwrap()]),
            |url, key, id, all| {
                let id = id.unwrap();
                assert_eq!(state_of(all, id), "hibernated", "{point}");
                // The copy to the blob store is finished (by the recovery, or by the periodic
                // pass of another coved sharing this home that recorded the hibernation first):
                // any host resumes it.
                let manifest = home().join(format!("blobs/hibernations/{id}/manifest.json"));
                assert!(
                    cove_tests::wait_until(std::time::Duration::from_secs(30), || {
                        manifest.is_file()
                    }),
                    "{point}: the hibernation did not reach the blob store"
                );
                ok(&cove(url, key, &["resume", id]));
                assert_eq!(
                    ok(&cove(url, key, &["exec", id, "--", "cat", "/root/f"])),
                    "kept"
                );
            },
        );
    }
}

#[test]
fn a_wake_interrupted_ends_running() {
    for point in ["wake.spawned", "wake.ready"] {
        crash_at(
            point,
            |url, key| {
                let id = create(url, key).unwrap();
                ok(&cove(url, key, &["hibernate", &id]));
                Some(id)
            },
            |url, key, id| cove(url, key, &["resume", id.unwrap()]),
            |url, key, id, all| {
                let id = id.unwrap();
                assert_eq!(state_of(all, id), "running", "{point}");
                ok(&cove(url, key, &["exec", id, "--", "true"]));
                // The stale hibernation went with the recovery, here and in the blob store.
                let dir = home().join("sandboxes").join(id);
                assert!(!dir.join("hibernation").exists(), "{point}");
                assert!(
                    !home().join("blobs/hibernations").join(id).exists(),
                    "{point}"
                );
            },
        );
    }
}

#[test]
fn a_fork_interrupted_leaves_no_snapshot_behind() {
    for point in ["fork.snapshot", "fork.clones"] {
        crash_at(
            point,
            create,
            |url, key, id| cove(url, key, &["fork", id.unwrap(), "--count", "2"]),
            |_, _, id, all| {
                assert_eq!(state_of(all, id.unwrap()), "running", "{point}");
                // The clones that had started run; none was started before the snapshot.
                let clones = all.len() - 1;
                assert_eq!(
                    clones,
                    if point == "fork.clones" { 2 } else { 0 },
                    "{all:?}"
                );
                for s in all {
                    assert_eq!(s["state"], "running", "{point}: {s}");
                }
            },
        );
    }
}

#[test]
fn a_removal_interrupted_is_finished_by_the_next() {
    for point in ["delete.killed", "delete.removed"] {
        crash_at(
            point,
            create,
            |url, key, id| cove(url, key, &["rm", "-f", id.unwrap()]),
            |_, _, id, all| {
                // The VM is gone: the record says so, and the next removal finishes the job.
                assert_eq!(state_of(all, id.unwrap()), "failed", "{point}");
            },
        );
    }
}

/// cove-vm killed (SIGKILL) while its sandbox runs, is paused, or is being hibernated: the
/// sandbox is `failed` with the reason and an event of the reconcile, and removing it leaves
/// no directory, guest RAM or process behind.
#[test]
fn a_killed_cove_vm_fails_its_sandbox_and_removal_leaves_nothing() {
    let tenant = format!("vmkill-{}", std::process::id());
    let key = api_key(&tenant, "exec");
    let server = Coved::start(&[]);
    for step in ["running", "paused", "hibernating"] {
        let id = ok(&cove(&server.url, &key, &["create", "--memory", "256"]));
        let inspected =
            serde_json::from_str::<Value>(&ok(&cove_tests::cove_out(&["inspect", &id]))).unwrap();
        let pid = inspected["host"]["pid"].as_u64().unwrap();
        let dir = inspected["host"]["dir"].as_str().unwrap().to_string();
        match step {
            "paused" => {
                ok(&cove(&server.url, &key, &["pause", &id]));
            }
            "hibernating" => {
                // Killed while it saves: the hibernation request loses its VM.
                ok(&cove(
                    &server.url,
                    &key,
                    &[
                        "exec",
                        &id,
                        "--",
                        "sh",
                        "-c",
                        "head -c 30000000 /dev/urandom > /dev/shm/f",
                    ],
                ));
                let mut hib = cove_tests::cove()
                    .args(["hibernate", &id])
                    .env("COVE_HOST", &server.url)
                    .env("COVE_API_KEY", &key)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap();
                // Once the save has begun (its directory appears), or it is already done.
                cove_tests::wait_until(std::time::Duration::from_secs(30), || {
                    std::path::Path::new(&dir).join("hibernation.tmp").exists()
                        || !cove_tests::alive(pid)
                });
                kill_9(pid);
                let _ = hib.wait();
            }
            _ => {}
        }
        kill_9(pid);
        let state = |id: &str| -> Value {
            serde_json::from_str(&ok(&cove(&server.url, &key, &["inspect", id]))).unwrap()
        };
        assert!(
            cove_tests::wait_until(std::time::Duration::from_secs(20), || {
                let s = state(&id);
                s["state"] == "failed" || s["state"] == "hibernated"
            }),
            "{step}: {}",
            state(&id)
        );
        let s = state(&id);
        if s["state"] == "failed" {
            assert!(s["reason"].as_str().is_some_and(|r| !r.is_empty()), "{s}");
            let log = ok(&cove(
                &server.url,
                &key,
                &["events", "--sandbox", &id, "--json"],
            ));
            assert!(
                log.lines()
                    .any(|l| l.contains("\"failed\"") && l.contains("\"reconcile\"")),
                "{step}: {log}"
            );
        }
        ok(&cove(&server.url, &key, &["rm", &id]));
        assert!(
            !std::path::Path::new(&dir).exists(),
            "{step}: {dir} is left"
        );
        assert!(!std::path::Path::new(&format!("/dev/shm/cove-{id}.mem")).exists());
        assert!(!home().join("blobs/hibernations").join(&id).exists());
        assert!(!cove_tests::alive(pid));
    }
}

fn kill_9(pid: u64) {
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
}
