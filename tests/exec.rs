//! Running processes in a real guest: codes, streams, stdin, env, users, terminals, concurrency.

use cove_host::agent::Event;
use cove_protocol::{ExecRequest, Reply, Request, Stream, TtySize};
use cove_tests::{Sandbox, cove_out, sha256, text};

fn req(argv: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[test]
fn cli_run_passes_exit_codes_and_keeps_streams_apart() {
    let o = cove_out(&[
        "run",
        "--memory",
        "256",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 0",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(text(&o), "out\n");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "err\n");

    let o = cove_out(&["run", "--memory", "256", "--", "sh", "-c", "exit 1"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = cove_out(&["run", "--memory", "256", "--", "sh", "-c", "kill -9 $$"]);
    assert_eq!(o.status.code(), Some(137), "SIGKILL is 128 + 9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_semantics_in_one_sandbox() {
    let sb = Sandbox::create("busybox", &[]);
    let c = sb.client().await;

    // Exit codes and signals through the library.
    let o = c.output(req(&["sh", "-c", "exit 42"]), None).await.unwrap();
    assert_eq!(o.status.code, Some(42));
    let o = c
        .output(req(&["sh", "-c", "kill -TERM $$"]), None)
        .await
        .unwrap();
    assert_eq!((o.status.code, o.status.signal), (None, Some(15)));

    // stdout and stderr are separate and binary-safe.
    let o = c
        .output(
            req(&["sh", "-c", "printf '\\000\\377out'; printf 'e\\001rr' >&2"]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(o.stdout, b"\x00\xffout");
    assert_eq!(o.stderr, b"e\x01rr");

    // stdin is piped through and closable.
    let input: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let o = c.output(req(&["cat"]), Some(input.clone())).await.unwrap();
    assert_eq!(o.stdout.len(), input.len());
    assert_eq!(sha256(&o.stdout), sha256(&input));

    // env, cwd and user are honoured.
    let mut r = req(&["sh", "-c", "echo $GREETING; pwd; id -u; id -g; echo $HOME"]);
    r.env = vec![("GREETING".into(), "hello world".into())];
    r.cwd = Some("/tmp".into());
    r.user = Some("nobody".into());
    let o = c.output(r, None).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "hello world\n/tmp\n65534\n65534\n/nonexistent\n"
    );
    let mut r = req(&["id"]);
    r.user = Some("1000:1001".into());
    let o = c.output(r, None).await.unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("uid=1000 gid=1001"),
        "{:?}",
        o
    );
    let mut r = req(&["true"]);
    r.user = Some("mallory".into());
    let e = c.output(r, None).await.unwrap_err().to_string();
    assert!(e.contains("no such user"), "{e}");
    let mut r = req(&["true"]);
    r.cwd = Some("/does/not/exist".into());
    let e = c.output(r, None).await.unwrap_err().to_string();
    assert!(e.contains("/does/not/exist"), "{e}");
    let e = c
        .output(req(&["no-such-program"]), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("executable not found"), "{e}");

    // Timeouts kill the process group.
    let mut r = req(&["sh", "-c", "sleep 30 & sleep 30"]);
    r.timeout_ms = Some(300);
    let o = c.output(r, None).await.unwrap();
    assert!(
        o.status.timed_out && o.status.signal == Some(9),
        "{:?}",
        o.status
    );

    // A signal reaches the process.
    let mut ex = c.exec(req(&["sleep", "30"])).await.unwrap();
    ex.session
        .sender()
        .request(&Request::Signal { signal: 2 })
        .await
        .unwrap();
    let st = loop {
        if let Event::Reply(Reply::Exited(st)) = ex.session.next().await.unwrap() {
            break st;
        }
    };
    assert_eq!(st.signal, Some(2));

    // 20 concurrent execs, each with its own output.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let o = c
                .output(
                    req(&[
                        "sh",
                        "-c",
                        &format!("sleep 0.2; echo job{i}; exit {}", i % 7),
                    ]),
                    None,
                )
                .await
                .unwrap();
            (i, o)
        }));
    }
    for t in tasks {
        let (i, o) = t.await.unwrap();
        assert_eq!(String::from_utf8_lossy(&o.stdout), format!("job{i}\n"));
        assert_eq!(o.status.code, Some(i % 7));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_mib_of_output_arrives_intact() {
    let sb = Sandbox::create("busybox", &[]);
    let c = sb.client().await;
    // Deterministic content, checksummed in the guest and here.
    let script = "dd if=/dev/urandom of=/tmp/out bs=1048576 count=50 2>/dev/null && sha256sum /tmp/out >&2 && cat /tmp/out";
    let o = c.output(req(&["sh", "-c", script]), None).await.unwrap();
    assert_eq!(o.status.code, Some(0));
    assert_eq!(o.stdout.len(), 50 << 20);
    let guest_sum = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        guest_sum.split_whitespace().next().unwrap(),
        sha256(&o.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pty_names_a_terminal_and_follows_resizes() {
    let sb = Sandbox::create("busybox", &[]);
    let c = sb.client().await;
    let mut r = req(&["sh", "-c", "tty; stty size; read x; stty size; exit 5"]);
    r.tty = Some(TtySize { rows: 24, cols: 80 });
    r.stdin = true;
    let mut ex = c.exec(r).await.unwrap();
    let tx = ex.session.sender();
    let mut out = String::new();
    let mut resized = false;
    let status = loop {
        match ex.session.next().await.expect("session open") {
            Event::Data(Stream::Stdout, b) => {
                out.push_str(&String::from_utf8_lossy(&b));
                if !resized && out.contains("24 80") {
                    resized = true;
                    tx.request(&Request::Resize(TtySize {
                        rows: 50,
                        cols: 132,
                    }))
                    .await
                    .unwrap();
                    tx.data(Stream::Stdin, b"\n".to_vec()).await.unwrap();
                }
            }
            Event::Data(..) | Event::Eof(_) => {}
            Event::Reply(Reply::Exited(st)) => break st,
            Event::Reply(other) => panic!("{other:?}"),
        }
    };
    assert_eq!(status.code, Some(5));
    let lines: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert!(lines[0].starts_with("/dev/pts/"), "{out:?}");
    assert!(
        lines.contains(&"24 80") && lines.contains(&"50 132"),
        "{out:?}"
    );
}

#[test]
fn cli_exec_pipes_stdin_and_env() {
    let sb = Sandbox::create("busybox", &[]);
    let o = sb.exec(
        &["-i", "-e", "A=1", "-w", "/etc"],
        &["sh", "-c", "cat; echo $A; pwd"],
        b"piped\n",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(text(&o), "piped\n1\n/etc\n");
    let o = sb.exec(&[], &["no-such-program"], b"");
    assert_eq!(o.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&o.stderr).contains("executable not found"));
}

#[test]
fn python_image_runs_python() {
    let o = cove_out(&[
        "run",
        "--image",
        "python",
        "--memory",
        "256",
        "--",
        "python3",
        "-c",
        "import sys; print(sum(range(10)), sys.version_info[0])",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(text(&o), "45 3\n");
}
