//! Hostile input: bad requests, bad settings, malformed frames at the real guest.

use std::time::Duration;

use cove_protocol::control::{ControlRequest, ControlResponse};
use cove_protocol::frame::{self, FrameKind, MAX_FRAME_LEN};
use cove_protocol::io::FrameReader;
use cove_protocol::{ErrorCode, FrameBody, Reply, Request};
use cove_tests::{Sandbox, cove_out};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

#[test]
fn bad_settings_and_unknown_images_are_refused_clearly() {
    let o = cove_out(&["run", "--image", "no-such-image", "--", "true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).starts_with("cove: no such image: no-such-image (installed: ")
            && stderr(&o).contains("busybox")
            && stderr(&o).ends_with("`cove image pull` or `cove image import` it"),
        "{}",
        stderr(&o)
    );
    for (flag, value) in [("--cpus", "0"), ("--memory", "1"), ("--disk", "1")] {
        let o = cove_out(&["create", flag, value]);
        assert_eq!(o.status.code(), Some(125));
        assert!(stderr(&o).contains("invalid"), "{}", stderr(&o));
    }
    let o = cove_out(&["create", "--name", "../../etc"]);
    assert!(stderr(&o).contains("invalid name"), "{}", stderr(&o));
    let o = cove_out(&["exec", "0123456789ab", "--", "true"]);
    assert_eq!(stderr(&o), "cove: no such sandbox: 0123456789ab");
    // Refused requests leave no record (other tests run sandboxes meanwhile: look for ours).
    let all: Vec<serde_json::Value> =
        serde_json::from_slice(&cove_out(&["ls", "--json"]).stdout).unwrap();
    for s in &all {
        assert_ne!(s["image"], "no-such-image", "{s}");
        assert!(
            s["cpus"] != 0 && s["memory_mib"] != 1 && s["disk_mib"] != 1,
            "{s}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_are_rejected_and_the_connection_keeps_serving() {
    let sb = Sandbox::create("busybox", &[]);
    let socket = sb.inspect()["host"]["socket"].as_str().unwrap().to_string();
    let conn = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let (r, mut w) = conn.into_split();
    let mut line = serde_json::to_vec(&ControlRequest::Attach).unwrap();
    line.push(b'\n');
    w.write_all(&line).await.unwrap();
    let mut r = BufReader::new(r);
    let mut resp = String::new();
    r.read_line(&mut resp).await.unwrap();
    assert!(matches!(
        serde_json::from_str(&resp).unwrap(),
        ControlResponse::Ok { .. }
    ));

    let mut bad = Vec::new();
    frame::encode_raw(5, 0x7f, b"junk", &mut bad); // unknown kind (caught by cove-vm)
    frame::encode_raw(6, FrameKind::Msg as u8, b"{not json", &mut bad); // bad JSON (caught by the agent)
    frame::encode_raw(
        7,
        FrameKind::Msg as u8,
        br#"{"type":"format_disk"}"#,
        &mut bad,
    ); // unknown request
    frame::encode_raw(8, FrameKind::Window as u8, &[1], &mut bad); // short window
    // An oversized frame: header says more than the cap; its bytes follow and are skipped.
    let len = u32::try_from(MAX_FRAME_LEN + 1).unwrap();
    bad.extend_from_slice(&len.to_le_bytes());
    bad.extend_from_slice(&9u32.to_le_bytes());
    bad.push(FrameKind::Data as u8);
    bad.resize(bad.len() + MAX_FRAME_LEN - 4, 0xEE);
    frame::encode(&cove_protocol::msg_frame(10, &Request::Health), &mut bad);
    w.write_all(&bad).await.unwrap();

    let mut reader = FrameReader::new(r);
    let mut errors = std::collections::BTreeMap::new();
    let health = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let f = reader.next().await.unwrap().expect("connection open");
            let FrameBody::Msg(json) = f.body else {
                continue;
            };
            match cove_protocol::decode_msg::<Reply>(&json).unwrap() {
                Reply::Error(e) => {
                    errors.insert(f.session, e.code);
                }
                Reply::Health(h) => break h,
                other => panic!("{other:?}"),
            }
        }
    })
    .await
    .expect("the sandbox still answers after bad frames");
    assert_eq!(health.protocol_version, cove_protocol::PROTOCOL_VERSION);
    for s in [5, 6, 7, 8, 9] {
        assert_eq!(
            errors.get(&s),
            Some(&ErrorCode::Protocol),
            "session {s}: {errors:?}"
        );
    }
    // Other clients are unaffected.
    let c = sb.client().await;
    assert!(c.health().await.unwrap().uptime_ms > 0);
}

#[test]
fn a_guest_flooding_its_console_cannot_fill_the_host_disk() {
    let sb = Sandbox::create("busybox", &[]);
    let dir = std::path::PathBuf::from(sb.inspect()["host"]["dir"].as_str().unwrap());
    // 2.5 MiB at the console, more than the 2 MiB cove-vm keeps.
    let o = sb.exec(
        &[],
        &[
            "sh",
            "-c",
            "dd if=/dev/zero bs=64k count=40 2>/dev/null | tr '\\000' 'x' > /dev/console",
        ],
        b"",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let size = |n: &str| std::fs::metadata(dir.join(n)).map(|m| m.len()).unwrap_or(0);
    assert!(
        size("console.log.1") > 0,
        "the log rotated: {} + {}",
        size("console.log"),
        size("console.log.1")
    );
    assert!(size("console.log") + size("console.log.1") <= 2 << 20);
    let o = sb.exec(&[], &["echo", "still here"], b"");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "still here\n");
}

/// An image disk the guest cannot mount (its ext4 superblock zeroed after the import): the
/// agent answers the hello while its root is being built, so the create succeeds; the first
/// request then gets the reason instead of waiting, the guest stops, and the sandbox is marked
/// failed with the console's line. Nothing else is harmed.
#[test]
fn an_image_disk_that_cannot_be_mounted_fails_the_sandbox_with_the_reason() {
    use std::os::unix::fs::FileExt;
    let dir = cove_tests::TempDir::new("broken-image");
    let root = dir.0.join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    // Unique contents: a digest no other test shares.
    let nonce = format!("{:?} {}", std::time::SystemTime::now(), std::process::id());
    std::fs::write(root.join("etc/nonce"), &nonce).unwrap();
    let name = format!("broken-{}", std::process::id());
    // Removed however the test ends (declared before the sandbox, so dropped after it).
    struct RmImage<'a>(&'a str);
    impl Drop for RmImage<'_> {
        fn drop(&mut self) {
            let _ = cove_out(&["image", "rm", self.0]);
        }
    }
    let _image = RmImage(&name);
    let o = cove_out(&[
        "image",
        "import-rootfs",
        root.to_str().unwrap(),
        "--name",
        &name,
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let digest = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let disk = cove_tests::home()
        .join("images")
        .join(&digest)
        .join("rootfs.ext4");
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.write_all_at(&[0u8; 1024], 1024).unwrap();
    drop(f);

    let o = cove_out(&["create", "--image", &name, "--memory", "256"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let sb = Sandbox {
        id: String::from_utf8_lossy(&o.stdout).trim().to_string(),
    };
    let o = sb.exec(&[], &["true"], b"");
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    let err = stderr(&o);
    // Normally the agent's answer; on a loaded machine the exec may instead reach a guest
    // already stopping, and then the sandbox's failure below is the answer. Either way the
    // reason reaches the user.
    if err.contains("the sandbox root could not be built") {
        assert!(err.contains("mount ext4 on /run/cove/image"), "{err}");
    }
    assert!(
        cove_tests::wait_until(Duration::from_secs(20), || sb.inspect()["state"]
            == "failed"),
        "{}",
        sb.inspect()
    );
    let reason = sb.inspect()["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(reason.contains("setup failed: mount ext4"), "{reason}");
    drop(sb);
    assert!(cove_out(&["image", "rm", &name]).status.success());
}

/// A root process in the guest freezes the agent (the guest's own cgroup freezer): the host's
/// deadlines end every call into it with a timeout error — an exec with a 5 s limit, a listing
/// — the sandbox is reported `unhealthy` with the reason,
/// in `inspect` and in the event log; a snapshot taken before restores into a sandbox that works,
/// and once the agent answers again the sandbox is `running` again.
#[test]
fn a_guest_that_freezes_its_agent_is_unhealthy_and_holds_no_caller() {
    let key = cove_tests::api_key(&format!("sick-{}", std::process::id()), "exec");
    // The deadline for calls that owe an answer at once, short here so the test is quick.
    let server =
        cove_tests::Coved::start_with("127.0.0.1:0", &[], &[("COVE_AGENT_DEADLINE_SECS", "8")]);
    let run = |args: &[&str]| cove_tests::cove_with_key(&server.url, &key, args);
    let ok = |args: &[&str]| {
        let o = run(args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        cove_tests::text(&o).trim().to_string()
    };
    let id = ok(&["create", "--memory", "256"]);
    let snap = ok(&["snapshot", &id]);
    let state = || -> serde_json::Value { serde_json::from_str(&ok(&["inspect", &id])).unwrap() };
    assert_eq!(state()["state"], "running");

    // The agent (PID 1) moved into a frozen group; the shell that did it (not frozen) thaws it
    // 90 s later — nothing outside can reach the guest meanwhile — well after what is checked
    // while it is frozen (about 30 s of deadlines and probes).
    let freeze = "mkdir -p /sys/fs/cgroup/cove-frz && echo 1 > /sys/fs/cgroup/cove-frz/cgroup.procs \
                  && echo 1 > /sys/fs/cgroup/cove-frz/cgroup.freeze; \
                  sleep 90; echo 0 > /sys/fs/cgroup/cove-frz/cgroup.freeze";
    let o = run(&["exec", "--timeout", "5", &id, "--", "sh", "-c", freeze]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("the sandbox's agent did not answer a command within 10 s"),
        "{}",
        stderr(&o)
    );
    assert!(
        cove_tests::wait_until(Duration::from_secs(60), || state()["state"] == "unhealthy"),
        "{}",
        state()
    );
    let s = state();
    assert!(
        s["reason"]
            .as_str()
            .unwrap()
            .starts_with("its agent stopped answering: a command: no answer within 10 s"),
        "{s}"
    );
    // Calls owed at once end at their deadline too.
    let o = run(&["fs", "ls", &id, "/"]);
    assert!(
        stderr(&o).contains("did not answer") && stderr(&o).contains("within 8 s"),
        "{}",
        stderr(&o)
    );
    // What needs its agent is refused, naming the state.
    let o = run(&["hibernate", &id]);
    assert!(
        stderr(&o).starts_with(&format!(
            "cove: sandbox {id} is unhealthy: its agent stopped answering"
        )),
        "{}",
        stderr(&o)
    );
    let events = ok(&["events", "--sandbox", &id, "--json"]);
    assert!(
        events.lines().any(|l| {
            let e: serde_json::Value = serde_json::from_str(l).unwrap();
            e["state"] == "unhealthy" && e["actor"] == "reconcile"
        }),
        "{events}"
    );

    // What is left to do with it: replace it from its snapshot, or wait: once the agent answers
    // coved's probe again, the sandbox is running and serves as before.
    let again = ok(&["create", "--from-snapshot", &snap]);
    assert_eq!(ok(&["exec", &again, "--", "echo", "back"]), "back");
    assert!(
        cove_tests::wait_until(Duration::from_secs(180), || state()["state"] == "running"),
        "{}",
        state()
    );
    assert_eq!(ok(&["exec", &id, "--", "echo", "thawed"]), "thawed");
    let events = ok(&["events", "--sandbox", &id, "--json"]);
    let states: Vec<String> = events
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["state"].to_string())
        .collect();
    assert!(
        states.ends_with(&["\"unhealthy\"".to_string(), "\"running\"".to_string()]),
        "{states:?}"
    );
    ok(&["rm", "-f", &id]);
    ok(&["rm", "-f", &again]);
    ok(&["snapshot", "rm", &snap]);
}

/// A fork bomb in the guest holds no caller either: its exec, limited to 5 s, ends (killed at
/// its limit by the agent, by the host's deadline, or by the guest's OOM killer: whichever the
/// bomb lets happen, the call returns and does not succeed — the `sleep 600` it ends with would
/// otherwise hold it ten minutes), and the sandbox can be removed at once.
#[test]
fn a_fork_bomb_ends_at_its_time_limit_and_the_sandbox_goes() {
    let sb = Sandbox::create("busybox", &[]);
    let o = sb.exec(
        &["--timeout", "5"],
        &["sh", "-c", "b() { b | b & }; b; sleep 600"],
        b"",
    );
    assert!(!o.status.success(), "{:?} {}", o.status, stderr(&o));
    let o = cove_out(&["rm", "-f", &sb.id]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = cove_out(&["inspect", &sb.id]);
    assert_eq!(stderr(&o), format!("cove: no such sandbox: {}", sb.id));
}
