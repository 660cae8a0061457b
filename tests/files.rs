//! Files in a real guest: large streamed transfers, atomic writes, metadata operations, errors.

use cove_host::ClientError;
use cove_protocol::{ErrorCode, ExecRequest, FileKind};
use cove_tests::{Sandbox, cove_out, sha256, text};

fn code(e: ClientError) -> ErrorCode {
    match e {
        ClientError::Agent(a) => a.code,
        other => panic!("expected an agent error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_mib_file_roundtrip_and_metadata() {
    let sb = Sandbox::create("busybox", &[]);
    let c = sb.client().await;

    // 100 MiB of non-repeating bytes, written, checksummed in the guest, read back.
    let mut data = vec![0u8; 100 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let n = c
        .write_file("/data/big.bin", Some(0o600), &mut &data[..])
        .await
        .unwrap();
    assert_eq!(n, data.len() as u64);
    let o = c
        .output(
            ExecRequest {
                argv: vec!["sha256sum".into(), "/data/big.bin".into()],
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()
            .unwrap(),
        sha256(&data)
    );
    let mut back = Vec::new();
    let n = c.read_file("/data/big.bin", &mut back).await.unwrap();
    assert_eq!(n, data.len() as u64);
    assert_eq!(sha256(&back), sha256(&data));

    let st = c.stat("/data/big.bin").await.unwrap();
    assert_eq!(
        (st.kind, st.size, st.mode),
        (FileKind::File, data.len() as u64, 0o600)
    );

    // A rewrite replaces the file whole.
    c.write_file("/data/big.bin", None, &mut &b"small"[..])
        .await
        .unwrap();
    let mut back = Vec::new();
    c.read_file("/data/big.bin", &mut back).await.unwrap();
    assert_eq!(back, b"small");

    // mkdir -p, list, rename, remove.
    c.mkdir("/data/a/b/c", true).await.unwrap();
    c.mkdir("/data/a/b/c", true).await.unwrap();
    assert_eq!(
        code(c.mkdir("/data/a/b/c", false).await.unwrap_err()),
        ErrorCode::AlreadyExists
    );
    c.write_file("/data/a/b/c/f.txt", None, &mut &b"hi"[..])
        .await
        .unwrap();
    c.rename("/data/a/b/c/f.txt", "/data/a/g.txt")
        .await
        .unwrap();
    let names: Vec<(String, FileKind)> = c
        .list("/data/a")
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.name, e.kind))
        .collect();
    assert_eq!(
        names,
        vec![
            ("b".into(), FileKind::Dir),
            ("g.txt".into(), FileKind::File)
        ]
    );
    assert_eq!(
        code(c.remove("/data/a", false).await.unwrap_err()),
        ErrorCode::NotEmpty
    );
    c.remove("/data/a", true).await.unwrap();
    assert_eq!(
        code(c.stat("/data/a").await.unwrap_err()),
        ErrorCode::NotFound
    );

    // Missing paths are typed errors naming the path; no temporary file is left behind.
    let e = c.read_file("/nope/x", &mut Vec::new()).await.unwrap_err();
    let ClientError::Agent(a) = e else { panic!() };
    assert_eq!(
        (a.code, a.path.as_deref()),
        (ErrorCode::NotFound, Some("/nope/x"))
    );
    assert_eq!(
        code(c.list("/nope").await.unwrap_err()),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(c.rename("/nope", "/data/x").await.unwrap_err()),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(c.read_file("/data", &mut Vec::new()).await.unwrap_err()),
        ErrorCode::IsADirectory
    );
    assert_eq!(
        code(c.stat("relative").await.unwrap_err()),
        ErrorCode::InvalidRequest
    );
    let leftovers: Vec<String> = c
        .list("/data")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(leftovers, vec!["big.bin"]);
}

#[test]
fn cli_cp_both_ways() {
    let sb = Sandbox::create("busybox", &[]);
    let dir = std::env::temp_dir().join(format!("cove-cp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("in.txt");
    std::fs::write(&src, b"copied through cove\n").unwrap();
    let to = format!("{}:/root/", sb.id);
    let o = cove_out(&["cp", src.to_str().unwrap(), &to]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = sb.exec(&[], &["cat", "/root/in.txt"], b"");
    assert_eq!(text(&o), "copied through cove\n");
    let back = dir.join("out.txt");
    let o = cove_out(&[
        "cp",
        &format!("{}:/root/in.txt", sb.id),
        back.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&back).unwrap(), b"copied through cove\n");
    let o = cove_out(&["cp", &format!("{}:/missing", sb.id), back.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/missing"));
    assert_eq!(
        std::fs::read(&back).unwrap(),
        b"copied through cove\n",
        "a failed copy changes nothing"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Just after a boot the agent answers while its sandbox root is still being mounted (see
/// `cove_agent::init::setup`): every request sent at once must still see the finished root —
/// the image's files, /tmp, /dev/shm, /proc — never the initramfs underneath. Under emulation
/// the root takes ~50 ms of guest time after the hello and these requests arrive within a few:
/// with the wait taken out of the agent, this test failed on every run (`/bin` not found). On a
/// host fast enough to finish the root first, it still checks the answers, not the race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_sent_at_once_after_a_boot_see_the_finished_root() {
    let host = cove_host::Host::open(&cove_tests::home()).unwrap();
    let rec = host
        .create(&cove_host::CreateSpec {
            memory_mib: 256,
            // A real boot: a template's restore would bring a root finished long ago.
            use_template: false,
            ..Default::default()
        })
        .await
        .unwrap();
    let sb = Sandbox { id: rec.id.clone() };
    let c = host.connect(&sb.id).await.unwrap();
    // The three kinds of request, sent together before anything else.
    let mut early: &[u8] = b"early";
    let (written, listed, procs) = tokio::join!(
        c.write_file("/tmp/early", None, &mut early),
        c.list("/bin"),
        c.processes(),
    );
    assert_eq!(written.unwrap(), 5);
    assert!(
        listed.unwrap().iter().any(|e| e.name == "busybox"),
        "/bin is the image's"
    );
    assert!(procs.unwrap().iter().any(|p| p.pid == 1));
    let o = c
        .output(
            ExecRequest {
                argv: vec![
                    "sh".into(),
                    "-c".into(),
                    "cat /tmp/early; grep -c ' /dev/shm \\| /dev/pts ' /proc/mounts; hostname"
                        .into(),
                ],
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("early2\n{}\n", sb.id)
    );
}
