//! An "upstream" for network tests: a network namespace of the test's own, linked to the host
//! by a veth pair in the benchmarking range (198.18.0.0/15, which no real network routes),
//! serving HTTP on 8080 and 80 (the answer names the Host it got), a TCP echo on 7, a UDP sink
//! on 9, a recorder of first bytes on 443 and a DNS server on 53 (every `*.test` name is the
//! upstream's address, `rebind.test` is 127.0.0.1; it records the names it was asked) from
//! threads that live in it.
//! Traffic in the tests goes only there, to loopback, or into the sandboxes' own namespaces.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// What the HTTP server answers.
pub const HELLO: &str = "hello-upstream";

/// `ip ARGS`, which must succeed.
pub fn ip(args: &[&str]) -> String {
    let o = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        o.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `ip ARGS`, whatever it says.
pub fn ip_quiet(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// What a server of the upstream saw, shared with the test.
pub type Seen<T> = Arc<Mutex<Vec<T>>>;

/// The upstream namespace and its servers; removed when dropped.
#[derive(Debug)]
pub struct Upstream {
    /// The namespace's name.
    pub ns: String,
    /// The host's end of its link.
    pub host_iface: String,
    /// Its address (where its servers listen).
    pub addr: Ipv4Addr,
    /// The host's address on the link.
    pub host_addr: Ipv4Addr,
    /// Datagrams the UDP sink got: source and payload.
    pub udp: Seen<(SocketAddr, Vec<u8>)>,
    /// First bytes of each connection to port 443.
    pub tls: Seen<Vec<u8>>,
    /// Names the DNS server was asked.
    pub asked: Seen<String>,
    /// Connections to the sink (port 5001): bytes read to EOF, and how long from accept.
    pub sunk: Seen<(u64, std::time::Duration)>,
    /// Connections to the source (port 5002, which sends [`SOURCE_BYTES`] and waits for the
    /// peer to close): how long from accept.
    pub sourced: Seen<std::time::Duration>,
}

/// What the source on port 5002 sends to each connection.
pub const SOURCE_BYTES: u64 = 32 << 20;

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Upstream {
    /// Makes the namespace and starts its servers.
    pub fn start() -> Self {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        // A /30 of 198.18.0.0/15 picked by pid and counter: test binaries running at once on
        // one host do not collide.
        let slot = (pid.wrapping_mul(64).wrapping_add(n)) % (1 << 15);
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + slot * 4;
        let host_addr = Ipv4Addr::from(base + 1);
        let addr = Ipv4Addr::from(base + 2);
        let ns = format!("covetest-{pid}-{n}");
        let host_iface = format!("tu{}", slot);
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &host_iface])
            .output();
        ip(&["netns", "add", &ns]);
        ip(&[
            "link",
            "add",
            &host_iface,
            "type",
            "veth",
            "peer",
            "name",
            "up0",
            "netns",
            &ns,
        ]);
        ip(&[
            "addr",
            "add",
            &format!("{host_addr}/30"),
            "dev",
            &host_iface,
        ]);
        ip(&["link", "set", &host_iface, "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/30"),
            "dev",
            "up0",
        ]);
        ip(&["-n", &ns, "link", "set", "up0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &host_addr.to_string(),
        ]);
        let udp = Arc::new(Mutex::new(Vec::new()));
        let tls = Arc::new(Mutex::new(Vec::new()));
        let asked = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let path = format!("/run/netns/{ns}");
        let sink = udp.clone();
        let (tls_seen, names) = (tls.clone(), asked.clone());
        let sunk = Arc::new(Mutex::new(Vec::new()));
        let sourced = Arc::new(Mutex::new(Vec::new()));
        let (sunk_w, sourced_w) = (sunk.clone(), sourced.clone());
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).expect("opening the upstream namespace");
            // This thread (and the server threads it starts) live in the upstream.
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("entering the upstream namespace");
            let http = TcpListener::bind(("0.0.0.0", 8080)).expect("upstream :8080");
            let http80 = TcpListener::bind(("0.0.0.0", 80)).expect("upstream :80");
            let rec443 = TcpListener::bind(("0.0.0.0", 443)).expect("upstream :443");
            let dns = UdpSocket::bind(("0.0.0.0", 53)).expect("upstream :53");
            let echo = TcpListener::bind(("0.0.0.0", 7)).expect("upstream :7");
            let sink_l = TcpListener::bind(("0.0.0.0", 5001)).expect("upstream :5001");
            let source_l = TcpListener::bind(("0.0.0.0", 5002)).expect("upstream :5002");
            let sock = UdpSocket::bind(("0.0.0.0", 9)).expect("upstream :9");
            tx.send(()).unwrap();
            std::thread::spawn(move || serve_http(http));
            std::thread::spawn(move || serve_http(http80));
            std::thread::spawn(move || record(rec443, tls_seen));
            std::thread::spawn(move || serve_dns(dns, addr, names));
            std::thread::spawn(move || serve_sink(sink_l, sunk_w));
            std::thread::spawn(move || serve_source(source_l, sourced_w));
            std::thread::spawn(move || serve_echo(echo));
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                sink.lock().unwrap().push((from, buf[..n].to_vec()));
            }
        });
        rx.recv().expect("upstream servers started");
        Self {
            ns,
            host_iface,
            addr,
            host_addr,
            udp,
            tls,
            asked,
            sunk,
            sourced,
        }
    }

    /// `ADDR/30`, for an allow list.
    pub fn cidr(&self) -> String {
        format!("{}/30", Ipv4Addr::from(u32::from(self.addr) & !3))
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_iface])
            .output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

fn serve_http(l: TcpListener) {
    for c in l.incoming().flatten() {
        std::thread::spawn(move || {
            let mut r = BufReader::new(&c);
            let mut line = String::new();
            let mut host = String::new();
            // The request's head, to its empty line.
            while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                if line == "\r\n" || line == "\n" {
                    break;
                }
                if let Some((k, v)) = line.split_once(':')
                    && k.eq_ignore_ascii_case("host")
                {
                    host = v.trim().to_string();
                }
                line.clear();
            }
            let body = format!("{HELLO} host={host}\n");
            let _ = (&c).write_all(
                format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        });
    }
}

fn serve_sink(l: TcpListener, seen: Seen<(u64, std::time::Duration)>) {
    for mut c in l.incoming().flatten() {
        let t = std::time::Instant::now();
        let n = std::io::copy(&mut c, &mut std::io::sink()).unwrap_or(0);
        seen.lock().unwrap().push((n, t.elapsed()));
    }
}

fn serve_source(l: TcpListener, seen: Seen<std::time::Duration>) {
    for mut c in l.incoming().flatten() {
        let t = std::time::Instant::now();
        let chunk = vec![0u8; 1 << 16];
        let mut left = SOURCE_BYTES;
        while left > 0 {
            let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
            if c.write_all(&chunk[..n]).is_err() {
                break;
            }
            left -= n as u64;
        }
        let _ = c.shutdown(std::net::Shutdown::Write);
        let _ = std::io::copy(&mut c, &mut std::io::sink());
        seen.lock().unwrap().push(t.elapsed());
    }
}

fn record(l: TcpListener, seen: Seen<Vec<u8>>) {
    for mut c in l.incoming().flatten() {
        let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(5)));
        let mut buf = vec![0u8; 4096];
        let n = c.read(&mut buf).unwrap_or(0);
        seen.lock().unwrap().push(buf[..n].to_vec());
    }
}

fn serve_dns(sock: UdpSocket, upstream: Ipv4Addr, asked: Seen<String>) {
    use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
    use hickory_proto::rr::{RData, Record, RecordType, rdata::A};
    let mut buf = [0u8; 2048];
    while let Ok((n, from)) = sock.recv_from(&mut buf) {
        let Ok(q) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let mut r = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
        r.queries = q.queries.clone();
        if let Some(question) = q.queries.first() {
            let name = question.name().to_ascii().trim_end_matches('.').to_string();
            asked.lock().unwrap().push(name.clone());
            let ip = if name == "rebind.test" {
                Some(Ipv4Addr::LOCALHOST)
            } else if name.ends_with(".test") {
                Some(upstream)
            } else {
                None
            };
            match ip {
                Some(ip) if question.query_type() == RecordType::A => {
                    r.answers.push(Record::from_rdata(
                        question.name().clone(),
                        60,
                        RData::A(A(ip)),
                    ));
                }
                Some(_) => {}
                None => r.metadata.response_code = ResponseCode::NXDomain,
            }
        }
        if let Ok(b) = r.to_vec() {
            let _ = sock.send_to(&b, from);
        }
    }
}

fn serve_echo(l: TcpListener) {
    for c in l.incoming().flatten() {
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut c = c;
            while let Ok(n) = c.read(&mut buf) {
                if n == 0 || c.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    }
}

/// `GET /` from `addr:port` over HTTP/1.0, from this process's namespace or, with `netns`, from
/// inside that one (a thread that enters it); the body, if the server answered.
pub fn http_get(netns: Option<&str>, addr: &str, port: u16) -> Option<String> {
    let netns = netns.map(str::to_string);
    let target = format!("{addr}:{port}");
    std::thread::spawn(move || {
        if let Some(ns) = netns {
            let f = std::fs::File::open(format!("/run/netns/{ns}")).ok()?;
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
        }
        let sa: SocketAddr = target.parse().ok()?;
        let mut c =
            std::net::TcpStream::connect_timeout(&sa, std::time::Duration::from_secs(5)).ok()?;
        c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .ok()?;
        c.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
        let mut out = String::new();
        c.read_to_string(&mut out).ok()?;
        out.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
    })
    .join()
    .ok()
    .flatten()
}

/// The sandbox's namespace, link and lease as the host lists them: what must all be gone once
/// the sandbox's VM is.
pub fn leftovers(id: &str) -> Vec<String> {
    let mut out = Vec::new();
    if ip_quiet(&["netns", "list"]).contains(&format!("cove-{id}")) {
        out.push(format!("namespace cove-{id}"));
    }
    if ip_quiet(&["link", "show"]).contains(&format!("cv{id}")) {
        out.push(format!("link cv{id}"));
    }
    for e in std::fs::read_dir("/run/cove/net")
        .into_iter()
        .flatten()
        .flatten()
    {
        if std::fs::read_to_string(e.path()).is_ok_and(|t| t.trim().ends_with(id)) {
            out.push(format!("lease {}", e.path().display()));
        }
    }
    out
}
