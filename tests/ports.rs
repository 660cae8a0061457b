//! A sandbox's ports through coved (issue #15): `PORT-ID.DOMAIN` and
//! `/v1/sandboxes/ID/ports/PORT/`, with the traffic token, a signed URL, an API key or public
//! ports; WebSocket and SSE through the proxy; servers bound to the guest's loopback and
//! sandboxes without a network; resume on traffic from pause and hibernation, never for a
//! request that is refused.
//!
//! All traffic is to coved on loopback.

use std::time::Duration;

use cove_tests::{Coved, Sandbox, cove_with_key, ok, wait_until};
use futures_util::{SinkExt, StreamExt};

const WAIT: Duration = Duration::from_secs(90);

/// A small server in the guest's Python: `/` answers `port-ok PATH`, `/events` streams two
/// server-sent events (the second once /tmp/sse-go exists), an upgrade to WebSocket echoes one
/// text frame.
const SERVER: &str = r#"import base64, hashlib, os, socket, sys, threading, time
def serve(c):
    data = b''
    while b'\r\n\r\n' not in data:
        d = c.recv(4096)
        if not d:
            return
        data += d
    head = data.split(b'\r\n\r\n')[0].decode()
    lines = head.split('\r\n')
    path = lines[0].split(' ')[1]
    hdr = {l.split(':', 1)[0].strip().lower(): l.split(':', 1)[1].strip() for l in lines[1:] if ':' in l}
    if hdr.get('upgrade', '').lower() == 'websocket':
        acc = base64.b64encode(hashlib.sha1((hdr['sec-websocket-key'] + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').encode()).digest()).decode()
        c.sendall(('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n' % acc).encode())
        h = c.recv(2)
        n = h[1] & 127
        mask = c.recv(4)
        p = bytearray()
        while len(p) < n:
            p += c.recv(n - len(p))
        for i in range(n):
            p[i] ^= mask[i % 4]
        c.sendall(bytes([0x81, n]) + bytes(p))
        time.sleep(0.5)
    elif path == '/events':
        c.sendall(b'HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\ndata: first\n\n')
        while not os.path.exists('/tmp/sse-go'):
            time.sleep(0.05)
        c.sendall(b'data: second\n\n')
    else:
        body = ('port-ok %s host=%s token=%s' % (path, hdr.get('host', ''), hdr.get('x-cove-traffic-token', '-'))).encode()
        c.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n' % len(body) + body)
    c.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', int(sys.argv[1])))
s.listen(64)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

struct Env {
    coved: Coved,
    key: String,
    addr: String,
}

impl Env {
    fn start() -> Self {
        let _ = cove_tests::home();
        let coved = Coved::start(&[]);
        let key = cove_tests::operator_key();
        let addr = coved.url.trim_start_matches("http://").to_string();
        Self { coved, key, addr }
    }

    fn cove(&self, args: &[&str]) -> String {
        ok(&cove_with_key(&self.coved.url, &self.key, args))
    }

    /// A python sandbox serving [`SERVER`] on the guest's loopback, port 3000.
    fn sandbox(&self, extra: &[&str]) -> Sandbox {
        let mut args = vec!["create", "--image", "python", "--memory", "256"];
        args.extend_from_slice(extra);
        let sb = Sandbox {
            id: self.cove(&args).trim().to_string(),
        };
        ok(&sb.exec(
            &["-i"],
            &["sh", "-c", "cat > /tmp/server.py"],
            SERVER.as_bytes(),
        ));
        ok(&sb.exec(
            &[],
            &[
                "sh",
                "-c",
                "python3 /tmp/server.py 3000 > /tmp/server.log 2>&1 &",
            ],
            b"",
        ));
        sb
    }

    async fn token(&self, id: &str) -> String {
        let v: serde_json::Value = ::reqwest::Client::new()
            .get(format!(
                "{}/v1/sandboxes/{id}/traffic-token",
                self.coved.url
            ))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["token"].as_str().expect("a token").to_string()
    }

    fn state(&self, id: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(&self.cove(&["inspect", id])).unwrap();
        v["state"].as_str().unwrap_or_default().to_string()
    }
}

/// `GET path` to coved at `addr` with `Host: host` and `headers`: status and body.
async fn get(addr: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut r = ::reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .header("host", host);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    match r.send().await {
        Ok(resp) => {
            let s = resp.status().as_u16();
            (s, resp.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// Whether `GET path` comes to answer `status` within [`WAIT`] (asked again until it does).
fn answers(addr: &str, host: &str, path: &str, headers: &[(&str, &str)], status: u16) -> bool {
    wait_until(WAIT, || {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(get(addr, host, path, headers))
        })
        .0 == status
    })
}

/// The connections to sandbox `id`'s VM open now, by inode: the accepted ends of its control
/// socket, as the host's namespace lists them (connected, `03`, with the socket's path).
fn attached(id: &str) -> Vec<String> {
    let needle = format!("/{id}/control.sock");
    std::fs::read_to_string("/proc/self/net/unix")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.ends_with(&needle))
        .filter(|l| l.split_whitespace().nth(5) == Some("03"))
        .filter_map(|l| l.split_whitespace().nth(6).map(str::to_string))
        .collect()
}

fn host_of(port: u16, id: &str) -> String {
    format!("{port}-{id}.cove.localhost")
}

#[tokio::test(flavor = "multi_thread")]
async fn ports_are_served_with_a_token_a_signed_url_or_a_key_and_refused_without() {
    let env = Env::start();
    let sb = tokio::task::block_in_place(|| env.sandbox(&[]));
    let token = env.token(&sb.id).await;
    let host = host_of(3000, &sb.id);
    // The server starts in the background: wait for its first answer.
    assert!(
        answers(
            &env.addr,
            &host,
            "/",
            &[("x-cove-traffic-token", &token)],
            200
        ),
        "the guest's server never answered through coved"
    );
    let (s, body) = get(
        &env.addr,
        &host,
        "/a/b?x=1",
        &[("x-cove-traffic-token", &token)],
    )
    .await;
    assert_eq!(s, 200);
    // The path and query reach the guest; the token does not.
    assert!(body.starts_with("port-ok /a/b?x=1 "), "{body}");
    assert!(body.contains(&format!("host={host}")), "{body}");
    assert!(body.ends_with("token=-"), "{body}");
    // Every request to the sandbox's ports shares one connection to its VM's control socket,
    // kept between requests (not one attach per request): the same socket before and after
    // five more requests.
    // (The exec that started the server may still be closing its own.)
    assert!(
        wait_until(WAIT, || attached(&sb.id).len() == 1),
        "connections to the sandbox's VM: {:?}",
        attached(&sb.id)
    );
    let kept = attached(&sb.id);
    for i in 0..5 {
        let (s, _) = get(
            &env.addr,
            &host,
            &format!("/again/{i}"),
            &[("x-cove-traffic-token", &token)],
        )
        .await;
        assert_eq!(s, 200);
    }
    assert_eq!(attached(&sb.id), kept);
    // Refused without a token, with a wrong one, with another sandbox's.
    assert_eq!(get(&env.addr, &host, "/", &[]).await.0, 401);
    let other = tokio::task::block_in_place(|| Sandbox {
        id: env
            .cove(&["create", "--memory", "256", "--network", "none"])
            .trim()
            .to_string(),
    });
    let other_token = env.token(&other.id).await;
    assert_eq!(
        get(
            &env.addr,
            &host,
            "/",
            &[("x-cove-traffic-token", &other_token)]
        )
        .await
        .0,
        401
    );
    tokio::task::block_in_place(|| drop(other));
    let wrong = "0".repeat(64);
    assert_eq!(
        get(&env.addr, &host, "/", &[("x-cove-traffic-token", &wrong)])
            .await
            .0,
        401
    );
    // A port nothing listens on.
    let (s, body) = get(
        &env.addr,
        &host_of(3001, &sb.id),
        "/",
        &[("x-cove-traffic-token", &token)],
    )
    .await;
    assert_eq!(s, 502, "{body}");
    // Named as such, though the request was already on its way behind the connect.
    assert!(
        body.contains("port_closed") && body.contains("nothing listens on port 3001"),
        "{body}"
    );
    // The `/v1` form with the API key.
    let (s, body) = get(
        &env.addr,
        &env.addr,
        &format!("/v1/sandboxes/{}/ports/3000/p?q=2", sb.id),
        &[("authorization", &format!("Bearer {}", env.key))],
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert!(body.starts_with("port-ok /p?q=2 "), "{body}");
    // The same form with the traffic token and no key; the path reaches the guest as sent.
    let (s, body) = get(
        &env.addr,
        &env.addr,
        &format!("/v1/sandboxes/{}/ports/3000/a%20b%3Fc?d=1", sb.id),
        &[("x-cove-traffic-token", &token)],
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert!(body.starts_with("port-ok /a%20b%3Fc?d=1 "), "{body}");
    // A signed URL works as it is printed (the host part is coved's), and expires.
    let url = tokio::task::block_in_place(|| env.cove(&["url", &sb.id, "3000", "--expires", "1h"]));
    let url = url.trim();
    let rest = url
        .strip_prefix(&format!("http://{host}:"))
        .unwrap_or_else(|| panic!("{url}"));
    let path = &rest[rest.find('/').unwrap()..];
    let (s, body) = get(&env.addr, &host, path, &[]).await;
    assert_eq!(s, 200, "{body}");
    assert!(
        body.starts_with("port-ok /? ") || body.starts_with("port-ok / "),
        "{body}"
    );
    // The signature names the port.
    assert_eq!(
        get(&env.addr, &host_of(3001, &sb.id), path, &[]).await.0,
        401
    );
    let short =
        tokio::task::block_in_place(|| env.cove(&["url", &sb.id, "3000", "--expires", "1s"]));
    let short = short.trim();
    let spath = &short[short.find("/?").unwrap()..];
    assert!(
        answers(&env.addr, &host, spath, &[], 401),
        "a signed URL outlived its expiry"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_and_server_sent_events_pass_through_and_a_sandbox_without_network_serves() {
    let env = Env::start();
    let sb = tokio::task::block_in_place(|| env.sandbox(&["--network", "none"]));
    let token = env.token(&sb.id).await;
    let host = host_of(3000, &sb.id);
    assert!(answers(
        &env.addr,
        &host,
        "/",
        &[("x-cove-traffic-token", &token)],
        200
    ));
    // WebSocket.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}/ws", env.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("host", host.parse().unwrap());
    req.headers_mut()
        .insert("x-cove-traffic-token", token.parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(&env.addr).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("websocket through the proxy");
    assert_eq!(resp.status().as_u16(), 101);
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        "hello-ws".into(),
    ))
    .await
    .unwrap();
    let echoed = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("an echo")
        .expect("a frame")
        .expect("a message");
    assert_eq!(echoed.into_text().unwrap().as_str(), "hello-ws");
    // Server-sent events arrive as they are sent: the first before the response ends.
    let resp = ::reqwest::Client::new()
        .get(format!("http://{}/events", env.addr))
        .header("host", &host)
        .header("x-cove-traffic-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("data: first") {
        let chunk = tokio::time::timeout(WAIT, body.next())
            .await
            .expect("the first event in time")
            .expect("more body")
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!seen.contains("second"));
    tokio::task::block_in_place(|| ok(&sb.exec(&[], &["touch", "/tmp/sse-go"], b"")));
    while !seen.contains("data: second") {
        let chunk = tokio::time::timeout(WAIT, body.next())
            .await
            .expect("the second event in time")
            .expect("more body")
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn traffic_resumes_a_sandbox_put_away_when_idle_and_a_refused_request_does_not() {
    let env = Env::start();
    for on_idle in ["pause", "hibernate"] {
        let sb = tokio::task::block_in_place(|| {
            env.sandbox(&[
                "--public-ports",
                "--idle-timeout",
                "3",
                "--on-idle",
                on_idle,
            ])
        });
        let host = host_of(3000, &sb.id);
        let want = if on_idle == "pause" {
            "paused"
        } else {
            "hibernated"
        };
        assert!(answers(&env.addr, &host, "/", &[], 200));
        // Twice: the second time its network is made again by the wake while the host may
        // still be taking the first one's apart.
        for _ in 0..2 {
            // No connection, no exec, no API call: it is put away.
            assert!(
                wait_until(WAIT, || tokio::task::block_in_place(|| env.state(&sb.id))
                    == want),
                "never {want}"
            );
            // Public ports need no token; a request wakes it and is answered.
            let (s, body) = get(&env.addr, &host, "/woken", &[]).await;
            assert_eq!(s, 200, "{body}");
            assert!(body.starts_with("port-ok /woken"), "{body}");
            assert_eq!(tokio::task::block_in_place(|| env.state(&sb.id)), "running");
        }
    }
    // A refused request never wakes one.
    let sb =
        tokio::task::block_in_place(|| env.sandbox(&["--idle-timeout", "3", "--on-idle", "pause"]));
    let host = host_of(3000, &sb.id);
    assert!(wait_until(WAIT, || tokio::task::block_in_place(
        || env.state(&sb.id)
    ) == "paused"));
    let wrong = "f".repeat(64);
    assert_eq!(
        get(&env.addr, &host, "/", &[("x-cove-traffic-token", &wrong)])
            .await
            .0,
        401
    );
    assert_eq!(get(&env.addr, &host, "/", &[]).await.0, 401);
    assert_eq!(tokio::task::block_in_place(|| env.state(&sb.id)), "paused");
}

#[tokio::test(flavor = "multi_thread")]
async fn port_forward_relays_a_local_port_over_the_api() {
    use std::io::BufRead;
    let env = Env::start();
    let sb = tokio::task::block_in_place(|| env.sandbox(&["--network", "none"]));
    let mut child = cove_tests::cove()
        .args(["port-forward", &sb.id, "0:3000"])
        .env("COVE_HOST", &env.coved.url)
        .env("COVE_API_KEY", &env.key)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let local = line
        .strip_prefix("forwarding ")
        .and_then(|l| l.split(' ').next())
        .unwrap_or_else(|| panic!("cove port-forward said {line:?}"))
        .to_string();
    let fetch = || async {
        match ::reqwest::get(format!("http://{local}/through-forward")).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    };
    assert!(
        wait_until(WAIT, || {
            tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(fetch()))
                .starts_with("port-ok /through-forward")
        }),
        "nothing came through the forward"
    );
    let _ = child.kill();
    let _ = child.wait();
}
