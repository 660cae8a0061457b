//! The agent's request handling, served over an in-memory stream on the host (no guest): the
//! protocol paths, hostile frames, exec and file requests against a temporary directory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cove_agent::exec::Reaper;
use cove_agent::server::{self, Agent};
use cove_host::agent::Event;
use cove_host::{AgentClient, ClientError};
use cove_protocol::frame::{self, FrameKind};
use cove_protocol::io::FrameReader;
use cove_protocol::{
    ErrorCode, ExecRequest, FrameBody, ProcessRef, Reply, Request, Stream, TtySize,
};
use tokio::io::AsyncWriteExt;

/// How long a test waits for something that should happen at once (generous: CI shares two
/// cores between many builds).
const CONDITION_DEADLINE: Duration = Duration::from_secs(20);

fn agent() -> Arc<Agent> {
    Arc::new(Agent {
        reaper: Reaper::start(false),
        started: Instant::now(),
        kernel_boot_ms: 1,
        setup_ms: 2,
        setup_steps: String::new(),
        pid1: false,
        table: Arc::default(),
    })
}

/// An agent serving one end of a pipe pair; the client holds the other.
fn pair() -> AgentClient {
    connect(agent())
}

/// A new connection to `agent` (a new host connection: a `Hello` is not needed here).
fn connect(agent: Arc<Agent>) -> AgentClient {
    let (a, b) = tokio::io::duplex(1 << 20);
    let (ar, aw) = tokio::io::split(a);
    tokio::spawn(server::serve(agent, ar, aw));
    let (br, bw) = tokio::io::split(b);
    AgentClient::over(br, bw)
}

fn req(argv: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn exec_reports_codes_streams_and_stdin() {
    let c = pair();
    let o = c
        .output(req(&["sh", "-c", "echo out; echo err >&2; exit 3"]), None)
        .await
        .unwrap();
    assert_eq!(
        (o.stdout.as_slice(), o.stderr.as_slice(), o.status.code),
        (&b"out\n"[..], &b"err\n"[..], Some(3))
    );
    let o = c
        .output(req(&["cat"]), Some(vec![7u8; 3 << 20]))
        .await
        .unwrap();
    assert_eq!(
        o.stdout.len(),
        3 << 20,
        "more than the window: credit flows both ways"
    );
    let e = c.output(req(&[]), None).await.unwrap_err();
    assert!(
        matches!(e, ClientError::Agent(ref a) if a.code == ErrorCode::InvalidRequest),
        "{e}"
    );
    let mut r = req(&["env"]);
    r.env = vec![("BAD=KEY".into(), "x".into())];
    assert!(c.output(r, None).await.is_err());
}

#[tokio::test]
async fn health_reports_versions_and_timings() {
    let c = pair();
    let h = c.health().await.unwrap();
    assert_eq!(h.protocol_version, cove_protocol::PROTOCOL_VERSION);
    assert_eq!((h.kernel_boot_ms, h.agent_setup_ms), (1, 2));
    assert_eq!(h.agent_version, env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn file_requests_against_a_directory() {
    let c = pair();
    let d = tempfile::tempdir().unwrap();
    let p = |s: &str| d.path().join(s).display().to_string();
    let n = c
        .write_file(&p("a/b/f"), Some(0o640), &mut &b"content"[..])
        .await
        .unwrap();
    assert_eq!(n, 7);
    let mut back = Vec::new();
    c.read_file(&p("a/b/f"), &mut back).await.unwrap();
    assert_eq!(back, b"content");
    assert_eq!(c.stat(&p("a/b/f")).await.unwrap().mode, 0o640);
    // A write into a missing directory without parents fails at once, before any data.
    let e = c
        .call(
            &Request::WriteFile {
                path: p("zz/f"),
                mode: None,
                parents: false,
                user: None,
            },
            "a write",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::Agent(ref a) if a.code == ErrorCode::NotFound),
        "{e}"
    );
    // No temporary file is left beside the target.
    let listing: Vec<String> = c
        .list(&p("a/b"))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(listing, vec!["f"]);
    let e = c.remove("/", true).await.unwrap_err();
    assert!(matches!(e, ClientError::Agent(ref a) if a.code == ErrorCode::InvalidRequest));
}

/// Raw frames at the agent: each bad one gets a protocol error on its session and the
/// connection goes on serving.
#[tokio::test]
async fn malformed_frames_are_answered_and_skipped() {
    let (a, b) = tokio::io::duplex(1 << 20);
    let (ar, aw) = tokio::io::split(a);
    tokio::spawn(server::serve(agent(), ar, aw));
    let (br, mut bw) = tokio::io::split(b);
    let mut bytes = Vec::new();
    frame::encode_raw(3, 0x42, b"?", &mut bytes);
    frame::encode_raw(4, FrameKind::Msg as u8, b"\xff\xfe", &mut bytes);
    frame::encode_raw(5, FrameKind::Eof as u8, &[], &mut bytes);
    frame::encode(
        &cove_protocol::msg_frame(
            0,
            &Request::Hello {
                versions: vec![999],
                client: "t".into(),
                time_unix_ns: None,
                entropy_hex: None,
                hostname: None,
            },
        ),
        &mut bytes,
    );
    frame::encode(&cove_protocol::msg_frame(6, &Request::Health), &mut bytes);
    bw.write_all(&bytes).await.unwrap();
    let mut r = FrameReader::new(br);
    let mut errs = Vec::new();
    loop {
        let f = r.next().await.unwrap().unwrap();
        let FrameBody::Msg(json) = f.body else {
            continue;
        };
        match cove_protocol::decode_msg::<Reply>(&json).unwrap() {
            Reply::Error(e) => errs.push((f.session, e.code)),
            Reply::Health(_) => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        errs,
        vec![
            (3, ErrorCode::Protocol),
            (4, ErrorCode::Protocol),
            (5, ErrorCode::Protocol),
            (0, ErrorCode::Protocol)
        ]
    );
}

/// `freeze` cuts the outgoing stream at a frame boundary: nothing more is sent until a `thaw`
/// (or, after a restore, a new `hello`).
#[tokio::test]
async fn freeze_holds_output_until_thaw() {
    let c = pair();
    assert!(matches!(
        c.call(&Request::Freeze, "a freeze").await.unwrap(),
        Reply::Ok
    ));
    let c2 = c.clone();
    let health = tokio::spawn(async move { c2.health().await });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!health.is_finished(), "a frozen agent sends nothing");
    // The thaw's own answer and the held one both arrive.
    let c3 = c.clone();
    let thaw = tokio::spawn(async move { c3.call(&Request::Thaw, "a thaw").await });
    assert!(health.await.unwrap().is_ok());
    assert!(matches!(thaw.await.unwrap().unwrap(), Reply::Ok));
}

/// A background child holding the output pipes open does not hold the exec open: it ends
/// shortly after its process, with all the output written before.
#[tokio::test]
async fn background_children_do_not_hold_an_exec_open() {
    let c = pair();
    let t = std::time::Instant::now();
    let o = c
        .output(req(&["sh", "-c", "sleep 30 & echo started; exit 4"]), None)
        .await
        .unwrap();
    assert_eq!(
        (o.stdout.as_slice(), o.status.code),
        (&b"started\n"[..], Some(4))
    );
    assert!(
        t.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn processes_are_listed_and_signalled_but_never_the_agent() {
    let c = pair();
    let mut ex = c.exec(req(&["sleep", "30"])).await.unwrap();
    let ps = c.processes().await.unwrap();
    let me = ps
        .iter()
        .find(|p| p.pid == ex.pid)
        .expect("the exec is listed");
    assert_eq!(me.cmdline, ["sleep", "30"]);
    assert_eq!(me.ppid, std::process::id(), "a child of the agent");
    assert!(ps.iter().any(|p| p.pid == std::process::id()));
    // The agent itself (here: this test process) cannot be signalled.
    let e = c.kill(std::process::id(), 9).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Agent(a) if a.code == ErrorCode::InvalidRequest),
        "{e}"
    );
    let e = c.kill(1, 9).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Agent(a) if a.code == ErrorCode::InvalidRequest),
        "{e}"
    );
    let e = c.kill(ex.pid, 999).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Agent(a) if a.code == ErrorCode::InvalidRequest),
        "{e}"
    );
    c.kill(ex.pid, 9).await.unwrap();
    loop {
        match ex.session.next().await {
            Some(cove_host::agent::Event::Reply(Reply::Exited(st))) => {
                assert_eq!(st.signal, Some(9));
                break;
            }
            Some(_) => {}
            None => panic!("the session ended without an exit"),
        }
    }
    let e = c.kill(ex.pid, 9).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Agent(a) if a.code == ErrorCode::NotFound),
        "{e}"
    );
}

/// Reads a session's events until `want` is in its stdout; returns that stdout.
async fn stdout_until(ex: &mut cove_host::agent::ExecSession, want: &str) -> String {
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains(want) {
        match ex.next().await.unwrap() {
            Some(Event::Data(Stream::Stdout, b)) => out.extend(b),
            Some(Event::Reply(r)) if r.is_final() => panic!("ended before {want:?}: {r:?}"),
            Some(_) => {}
            None => panic!("the session ended before {want:?}"),
        }
    }
    String::from_utf8(out).unwrap()
}

/// Events until the exit; the stdout seen on the way and the status.
async fn until_exit(ex: &mut cove_host::agent::ExecSession) -> (String, cove_protocol::ExitStatus) {
    let mut out = Vec::new();
    loop {
        match ex.next().await.unwrap() {
            Some(Event::Data(Stream::Stdout, b)) => out.extend(b),
            Some(Event::Reply(Reply::Exited(st))) => return (String::from_utf8(out).unwrap(), st),
            Some(Event::Reply(r)) if r.is_final() => panic!("{r:?}"),
            Some(_) => {}
            None => panic!("the session ended without an exit"),
        }
    }
}

/// A kept process outlives the connection that started it; another connection finds it by
/// tag, writes to its stdin, follows its output, closes its stdin and sees it exit; then it
/// has left the table.
#[tokio::test]
async fn kept_processes_outlive_their_session_and_are_found_again() {
    let a = agent();
    let first = connect(a.clone());
    let mut r = req(&[
        "sh",
        "-c",
        "echo ready; while read l; do echo got-$l; done; echo bye; exit 5",
    ]);
    r.stdin = true;
    r.keep = true;
    r.tag = Some("worker".into());
    r.env = vec![("MINE".into(), "1".into())];
    let mut ex = first.exec(r.clone()).await.unwrap();
    let pid = ex.pid;
    stdout_until(&mut ex, "ready").await;
    // The same tag cannot name two running processes.
    let e = first.exec(r).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Agent(x) if x.code == ErrorCode::AlreadyExists),
        "{e}"
    );
    drop(ex);
    drop(first);

    let second = connect(a.clone());
    let table = second.process_table().await.unwrap();
    let entry = table.iter().find(|e| e.pid == pid).expect("still running");
    assert_eq!(
        (entry.tag.as_deref(), entry.keep, entry.stdin, entry.tty),
        (Some("worker"), true, true, false)
    );
    assert_eq!(entry.env, [("MINE".to_string(), "1".to_string())]);
    let by_tag = ProcessRef::Tag("worker".into());
    let mut att = second.attach(by_tag.clone()).await.unwrap();
    assert_eq!(att.pid, pid);
    // Two followers see the same output.
    let mut att2 = second.attach(ProcessRef::Pid(pid)).await.unwrap();
    assert_eq!(second.input(by_tag.clone(), b"one\n").await.unwrap(), 4);
    assert!(
        stdout_until(&mut att, "got-one")
            .await
            .contains("got-one\n")
    );
    assert!(
        stdout_until(&mut att2, "got-one")
            .await
            .contains("got-one\n")
    );
    // A detached follower leaves the process running.
    att2.session
        .sender()
        .request(&Request::Cancel)
        .await
        .unwrap();
    second.input(ProcessRef::Pid(pid), b"two\n").await.unwrap();
    stdout_until(&mut att, "got-two").await;
    second.close_input(by_tag.clone()).await.unwrap();
    let (rest, st) = until_exit(&mut att).await;
    assert!(rest.contains("bye"), "{rest:?}");
    assert_eq!(st.code, Some(5));
    assert!(
        second
            .process_table()
            .await
            .unwrap()
            .iter()
            .all(|e| e.pid != pid)
    );
    let e = second.attach(by_tag.clone()).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Agent(x) if x.code == ErrorCode::NotFound),
        "{e}"
    );
    let e = second.input(by_tag, b"x").await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Agent(x) if x.code == ErrorCode::NotFound),
        "{e}"
    );
}

/// Without `keep`, a cancelled exec (or its lost connection) takes its process group with it;
/// a signal by tag reaches the process; a closed stdin refuses input.
#[tokio::test]
async fn unkept_processes_end_with_their_session_and_take_signals() {
    let a = agent();
    let c = connect(a.clone());
    // Far longer than the test: its end proves the kill, not its own.
    let mut r = req(&["sleep", "600"]);
    r.tag = Some("s".into());
    let ex = c.exec(r).await.unwrap();
    let pid = ex.pid;
    let e = c
        .input(ProcessRef::Tag("s".into()), b"x")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Agent(x) if x.code == ErrorCode::InvalidRequest),
        "{e}"
    );
    drop(ex);
    drop(c);
    let c = connect(a.clone());
    // The process is gone once the agent has seen the connection end: wait for that.
    let t = Instant::now();
    while c
        .process_table()
        .await
        .unwrap()
        .iter()
        .any(|e| e.pid == pid)
    {
        assert!(
            t.elapsed() < CONDITION_DEADLINE,
            "an unkept process outlived its connection"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut r = req(&["sleep", "30"]);
    r.tag = Some("t".into());
    r.keep = true;
    let ex = c.exec(r).await.unwrap();
    let mut att = c.attach(ProcessRef::Tag("t".into())).await.unwrap();
    drop(ex);
    let e = c
        .signal_process(ProcessRef::Tag("t".into()), 999)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Agent(x) if x.code == ErrorCode::InvalidRequest),
        "{e}"
    );
    let e = c
        .resize_process(ProcessRef::Tag("t".into()), TtySize { rows: 1, cols: 1 })
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Agent(x) if x.code == ErrorCode::InvalidRequest),
        "{e}"
    );
    c.signal_process(ProcessRef::Tag("t".into()), 15)
        .await
        .unwrap();
    let (_, st) = until_exit(&mut att).await;
    assert_eq!(st.signal, Some(15));
}

/// A follower that never reads holds back neither the others nor the exit: once it falls
/// `QUEUE_MAX` behind it is cut (its session ends with `cancelled`, after a prefix of the
/// output), and new followers attach meanwhile. The exec's own session sets the pace while it
/// follows; without it, the fastest follower does.
#[tokio::test]
async fn a_stalled_follower_holds_back_neither_the_others_nor_the_exit() {
    let c = pair();
    let want: String = (1..=1_000_000).map(|i| format!("{i}\n")).collect();
    assert!(want.len() > cove_protocol::INITIAL_WINDOW as usize + cove_agent::process::QUEUE_MAX);
    for own in [true, false] {
        let mut r = req(&["sh", "-c", "read go; seq 1 1000000; exit 7"]);
        r.stdin = true;
        r.keep = true;
        let mut ex = c.exec(r).await.unwrap();
        let pid = ex.pid;
        let mut stalled = c.attach(ProcessRef::Pid(pid)).await.unwrap();
        let mut lead = if own {
            ex
        } else {
            // The exec's session detaches; the process is followed by attaches only.
            ex.session.sender().request(&Request::Cancel).await.unwrap();
            match ex.next().await.unwrap() {
                Some(Event::Reply(Reply::Error(e))) => assert_eq!(e.code, ErrorCode::Cancelled),
                other => panic!("{other:?}"),
            }
            c.attach(ProcessRef::Pid(pid)).await.unwrap()
        };
        c.input(ProcessRef::Pid(pid), b"go\n").await.unwrap();
        let run = async {
            // Well past what the stalled follower was granted: a new follower still gets in.
            let mut out = Vec::new();
            while out.len() < 2 * cove_protocol::INITIAL_WINDOW as usize {
                match lead.next().await.unwrap() {
                    Some(Event::Data(Stream::Stdout, b)) => out.extend(b),
                    other => panic!("{other:?}"),
                }
            }
            let mut late = c.attach(ProcessRef::Pid(pid)).await.unwrap();
            let late = tokio::spawn(async move { until_exit(&mut late).await });
            let (rest, st) = until_exit(&mut lead).await;
            out.extend(rest.into_bytes());
            (String::from_utf8(out).unwrap(), st, late.await.unwrap())
        };
        let (out, st, (late_out, late_st)) = tokio::time::timeout(Duration::from_secs(120), run)
            .await
            .expect("a stalled follower held the others back");
        assert!(out == want, "own={own}: the lead sees all of it, in order");
        assert_eq!(st.code, Some(7));
        assert!(
            !late_out.is_empty() && want.ends_with(&late_out),
            "own={own}"
        );
        assert_eq!(late_st.code, Some(7));
        let mut seen = Vec::new();
        let end = loop {
            match stalled.next().await.unwrap() {
                Some(Event::Data(Stream::Stdout, b)) => seen.extend(b),
                Some(Event::Reply(r)) if r.is_final() => break r,
                Some(_) => {}
                None => panic!("the stalled session ended without a reply"),
            }
        };
        assert!(
            matches!(&end, Reply::Error(e) if e.code == ErrorCode::Cancelled),
            "{end:?}"
        );
        assert!(
            want.as_bytes().starts_with(&seen) && seen.len() < want.len(),
            "own={own}: a prefix, then the cut ({} bytes)",
            seen.len()
        );
    }
}

/// Once its process has exited, an entry whose output is still being delivered takes no
/// signal (`not_found`): its process group is not signalled, and the pid may name another
/// process by then.
#[tokio::test]
async fn exited_processes_take_no_signals() {
    let c = pair();
    // The shell exits at once; its background child, in its process group, writes more than
    // the session (not read yet) takes, so the entry stays while that output waits.
    let mut ex = c
        .exec(req(&["sh", "-c", "head -c 8000000 /dev/zero & exit 3"]))
        .await
        .unwrap();
    let pid = ex.pid;
    let t = Instant::now();
    while c.processes().await.unwrap().iter().any(|p| p.pid == pid) {
        assert!(t.elapsed() < CONDITION_DEADLINE, "pid {pid} was not reaped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        c.process_table()
            .await
            .unwrap()
            .iter()
            .any(|e| e.pid == pid),
        "still delivering its output"
    );
    let e = c.signal_process(ProcessRef::Pid(pid), 9).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Agent(x) if x.code == ErrorCode::NotFound),
        "{e}"
    );
    let mut n = 0;
    let st = loop {
        match ex.next().await.unwrap() {
            Some(Event::Data(Stream::Stdout, b)) => n += b.len(),
            Some(Event::Reply(Reply::Exited(st))) => break st,
            Some(Event::Reply(r)) if r.is_final() => panic!("{r:?}"),
            Some(_) => {}
            None => panic!("the session ended without an exit"),
        }
    };
    assert_eq!(
        (n, st.code),
        (8_000_000, Some(3)),
        "the group was not signalled"
    );
}

/// A process's background child keeps running after the exec ends, and may still write to
/// the exec's stdout (nobody reads it any more; it does not die of SIGPIPE).
#[tokio::test]
async fn background_children_outlive_their_exec_and_may_still_write() {
    let c = pair();
    let d = tempfile::tempdir().unwrap();
    let flag = d.path().join("alive");
    let script = format!(
        "(sleep 1; echo late; echo late >&2; echo yes > {f}.tmp && mv {f}.tmp {f}) & echo started",
        f = flag.display()
    );
    let o = c.output(req(&["sh", "-c", &script]), None).await.unwrap();
    assert_eq!(o.stdout, b"started\n");
    let t = std::time::Instant::now();
    while !flag.exists() {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(60),
            "the child died"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A terminal process found again by pid takes resizes.
#[tokio::test]
async fn attached_terminals_resize() {
    let c = pair();
    let mut r = req(&["sh", "-c", "read x; stty size"]);
    r.tty = Some(TtySize { rows: 10, cols: 20 });
    r.keep = true;
    let ex = c.exec(r).await.unwrap();
    let pid = ex.pid;
    drop(ex);
    let mut att = c.attach(ProcessRef::Pid(pid)).await.unwrap();
    c.resize_process(ProcessRef::Pid(pid), TtySize { rows: 33, cols: 77 })
        .await
        .unwrap();
    c.input(ProcessRef::Pid(pid), b"go\r").await.unwrap();
    let (out, st) = until_exit(&mut att).await;
    assert!(out.contains("33 77"), "{out:?}");
    assert_eq!(st.code, Some(0));
}

/// Events of a watch until `want` has been seen.
async fn until(
    s: &mut cove_host::agent::Session,
    seen: &mut Vec<cove_protocol::FsEvent>,
    want: cove_protocol::FsEvent,
) {
    while !seen.contains(&want) {
        match s.next().await {
            Some(Event::Reply(Reply::FsEvent(e))) => seen.push(e),
            other => panic!("{other:?} before {want:?}; saw {seen:?}"),
        }
    }
}

/// A recursive watch reports what changes under a directory, subdirectories made later
/// included, without the agent's own temporary files; removing the directory ends it.
#[tokio::test]
async fn watches_report_changes_until_the_directory_goes() {
    use cove_protocol::{FsEvent, FsEventKind};
    let c = pair();
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("w");
    std::fs::create_dir(&root).unwrap();
    let mut s = c.watch_dir(root.to_str().unwrap(), true).await.unwrap();
    let mut seen: Vec<FsEvent> = Vec::new();
    let ev = |name: &str, kind, dir| FsEvent {
        name: name.into(),
        kind,
        dir,
    };
    c.write_file(root.join("a.txt").to_str().unwrap(), None, &mut &b"x"[..])
        .await
        .unwrap();
    until(&mut s, &mut seen, ev("a.txt", FsEventKind::Create, false)).await;
    std::fs::create_dir(root.join("sub")).unwrap();
    until(&mut s, &mut seen, ev("sub", FsEventKind::Create, true)).await;
    std::fs::write(root.join("sub/b"), "1").unwrap();
    until(&mut s, &mut seen, ev("sub/b", FsEventKind::Create, false)).await;
    until(&mut s, &mut seen, ev("sub/b", FsEventKind::Write, false)).await;
    std::fs::rename(root.join("a.txt"), root.join("c.txt")).unwrap();
    until(&mut s, &mut seen, ev("a.txt", FsEventKind::Rename, false)).await;
    until(&mut s, &mut seen, ev("c.txt", FsEventKind::Create, false)).await;
    assert!(
        seen.iter().all(|e| !e.name.contains(".cove-")),
        "the agent's temporary files are not reported: {seen:?}"
    );
    std::fs::remove_dir_all(&root).unwrap();
    loop {
        match s.next().await {
            Some(Event::Reply(Reply::FsEvent(_))) => {}
            Some(Event::Reply(Reply::Ok)) => break,
            other => panic!("{other:?}"),
        }
    }
    let e = c.watch_dir("/nonexistent-dir", false).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Agent(x) if x.code == ErrorCode::NotFound),
        "{e}"
    );
}
