//! Sandbox networking (issue #15) with real guests: egress under a policy enforced on the
//! host, the walls no policy lifts, the network across the lifecycle, and clean-up.
//!
//! Traffic goes only to the test's own "upstream" namespace (`cove_tests::net`), to listeners
//! of this process on the host, and into the sandboxes' namespaces. Each check that something
//! is unreachable has a control beside it that reaches the same server another way, so a
//! server that is simply down cannot pass a test.

use std::net::TcpListener;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cove_tests::net::{HELLO, Upstream, http_get, ip, leftovers};
use cove_tests::{Coved, Sandbox, alive, cove_out, home, ok, text, wait_until};

const WAIT: Duration = Duration::from_secs(60);

/// Whether the guest gets the upstream's page from `addr:port`.
fn fetches(sb: &Sandbox, addr: &str, port: u16) -> bool {
    let cmd = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {addr} {port}");
    text(&sb.exec(&[], &["sh", "-c", &cmd], b"")).contains(HELLO)
}

/// Whether a guest of the python image gets the upstream's page from `addr:port`.
fn fetches_py(sb: &Sandbox, addr: &str, port: u16) -> bool {
    let script = format!(
        "import socket\n\
         c = socket.create_connection(('{addr}', {port}), timeout=5)\n\
         c.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n\
         print(c.recv(1000).decode())\n"
    );
    text(&sb.exec(&[], &["python3", "-c", &script], b"")).contains(HELLO)
}

/// Whether a TCP connection from the guest to `addr:port` opens.
fn connects(sb: &Sandbox, addr: &str, port: u16) -> bool {
    sb.exec(&[], &["nc", "-w", "3", addr, &port.to_string()], b"")
        .status
        .success()
}

/// The sandbox's address on its link to the host, from the administrator's view.
fn link_addr(sb: &Sandbox) -> String {
    sb.inspect()["host"]["net"]["sandbox_addr"]
        .as_str()
        .unwrap_or_else(|| panic!("no link in {}", sb.inspect()))
        .to_string()
}

fn host_link_addr(sb: &Sandbox) -> String {
    sb.inspect()["host"]["net"]["host_addr"]
        .as_str()
        .expect("host_addr")
        .to_string()
}

/// A listener of this process on every host address, counting connections.
fn host_listener() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind(("0.0.0.0", 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    let n = Arc::new(AtomicUsize::new(0));
    let seen = n.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            seen.fetch_add(1, Ordering::SeqCst);
            drop(c);
        }
    });
    (port, n)
}

#[test]
fn egress_follows_the_policy_and_its_changes_while_running() {
    let _ = home();
    let up = Upstream::start();
    let sb = Sandbox::create("busybox", &[]);
    // The host says what its networks are: the pool, and where its coved serves them.
    let info: serde_json::Value =
        serde_json::from_str(&ok(&cove_out(&["info", "--json"]))).unwrap();
    let net = &info["host"]["network"];
    assert_eq!(net["pool"], cove_net::DEFAULT_POOL, "{info}");
    assert!(net["off"].is_null(), "{info}");
    let ports = net["services"]
        .as_array()
        .expect("the resolver's and proxies' ports");
    assert!(
        ports
            .iter()
            .all(|p| (47000..=47999).contains(&p.as_u64().unwrap_or(0))),
        "{info}"
    );
    let addrs = ok(&sb.exec(&[], &["ip", "-4", "addr", "show", "eth0"], b""));
    assert!(addrs.contains("169.254.127.2/30"), "{addrs}");
    assert_eq!(
        ok(&sb.exec(&[], &["cat", "/etc/resolv.conf"], b""))
            .lines()
            .last(),
        Some("nameserver 169.254.127.1")
    );
    // The operator's defaults deny the benchmarking range the upstream lives in.
    assert!(!fetches(&sb, &up.addr.to_string(), 8080));
    let shown = ok(&cove_out(&["network", &sb.id, "--allow", &up.cidr()]));
    assert_eq!(shown, format!("mode egress\nallow {}\n", up.cidr()));
    assert!(fetches(&sb, &up.addr.to_string(), 8080));
    // A deny of the address itself (the new policy replaces the old one whole).
    ok(&cove_out(&[
        "network",
        &sb.id,
        "--deny",
        &format!("{}/32", up.addr),
    ]));
    assert!(!fetches(&sb, &up.addr.to_string(), 8080));
    // Allow wins over deny.
    ok(&cove_out(&[
        "network",
        &sb.id,
        "--deny",
        "0.0.0.0/0",
        "--allow",
        &up.addr.to_string(),
    ]));
    assert!(fetches(&sb, &up.addr.to_string(), 8080));
    // `none` on a running sandbox: its device stays, nothing passes.
    ok(&cove_out(&["network", &sb.id, "--network", "none"]));
    assert!(!fetches(&sb, &up.addr.to_string(), 8080));
    let sandbox: serde_json::Value =
        serde_json::from_slice(&ok(&cove_out(&["inspect", &sb.id])).into_bytes()).unwrap();
    assert_eq!(sandbox["network"]["mode"], "none");
    ok(&cove_out(&["network", &sb.id, "--allow", &up.cidr()]));
    assert!(fetches(&sb, &up.addr.to_string(), 8080));
    // Each change is an event naming the new policy and who made it.
    let events = ok(&cove_out(&["events", "--sandbox", &sb.id, "--json"]));
    let changes: Vec<serde_json::Value> = events
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["state"] == "network")
        .collect();
    assert_eq!(changes.len(), 5, "{events}");
    assert_eq!(changes[4]["actor"], "local");
    assert_eq!(changes[4]["cause"], format!("egress; allow {}", up.cidr()));
    // Bad policies are refused whole, and the one in force stays.
    for bad in [
        vec!["--allow", "10.0.0.1/8"],
        vec!["--allow", "2001:db8::/32"],
        vec!["--network", "none", "--allow", "1.2.3.4"],
        vec!["--allow", "bad..name"],
    ] {
        let mut args = vec!["network", sb.id.as_str()];
        args.extend(bad.iter().copied());
        let o = cove_out(&args);
        assert!(!o.status.success(), "{bad:?} was accepted");
    }
    assert!(fetches(&sb, &up.addr.to_string(), 8080));
}

/// The sandbox's namespace's table, as nft lists it.
fn ruleset(sb: &Sandbox) -> String {
    let o = Command::new("ip")
        .args(["netns", "exec", &format!("cove-{}", sb.id)])
        .args(["nft", "list", "table", "inet", "cove"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn an_egress_limit_holds_what_the_guest_sends_to_it() {
    let _ = home();
    let up = Upstream::start();
    let sb = Sandbox::create("busybox", &["--allow", &up.cidr(), "--egress-mbps", "2"]);
    assert_eq!(sb.inspect()["network"]["egress_mbps"], 2);
    assert!(ruleset(&sb).contains("limit rate over 250000 bytes/second drop"));
    // 1 MiB at 2 Mbit/s (250 kB/s), less the bucket's one second's worth, cannot take less
    // than 3.19 s at the upstream's end, however fast the machine (a busy one only takes
    // longer; unlimited, it takes a fraction of a second).
    let before = up.sunk.lock().unwrap().len();
    let sent = format!(
        "dd if=/dev/zero bs=65536 count=16 2>/dev/null | nc {} 5001",
        up.addr
    );
    ok(&sb.exec(&[], &["sh", "-c", &sent], b""));
    assert!(wait_until(WAIT, || up.sunk.lock().unwrap().len() > before));
    let (bytes, took) = up.sunk.lock().unwrap()[before];
    assert_eq!(bytes, 1 << 20, "everything arrives, only later");
    assert!(
        took >= Duration::from_millis(((1 << 20) - 250_000) * 1000 / 250_000),
        "1 MiB passed a 2 Mbit/s limit in {took:?}"
    );
    // The limit is part of the policy: a change's event names it, a new policy without it
    // lifts it, and it needs a network to hold.
    ok(&cove_out(&[
        "network",
        &sb.id,
        "--allow",
        &up.cidr(),
        "--egress-mbps",
        "40",
    ]));
    let events = ok(&cove_out(&["events", "--sandbox", &sb.id, "--json"]));
    assert!(events.contains("egress 40 Mbit/s"), "{events}");
    assert!(ruleset(&sb).contains("limit rate over 5000000 bytes/second"));
    ok(&cove_out(&["network", &sb.id, "--allow", &up.cidr()]));
    assert!(!ruleset(&sb).contains("limit rate"), "{}", ruleset(&sb));
    assert!(fetches(&sb, &up.addr.to_string(), 8080));
    for bad in [
        vec!["--egress-mbps", "0"],
        vec!["--egress-mbps", "100001"],
        vec!["--network", "none", "--egress-mbps", "5"],
    ] {
        let mut args = vec!["network", sb.id.as_str()];
        args.extend(bad.iter().copied());
        let o = cove_out(&args);
        assert!(!o.status.success(), "{bad:?} was accepted");
    }
    assert!(!ruleset(&sb).contains("limit rate"));
}

#[test]
fn a_sandbox_created_without_a_network_has_no_device() {
    let _ = home();
    let sb = Sandbox::create("busybox", &["--network", "none"]);
    // No device-backed interface (the kernel's own loopback and tunnel templates have none).
    let devices = ok(&sb.exec(
        &[],
        &[
            "sh",
            "-c",
            "ls -d /sys/class/net/*/device 2>/dev/null; true",
        ],
        b"",
    ));
    assert_eq!(
        devices.trim(),
        "",
        "network devices in a sandbox without a network"
    );
    let egress = Sandbox::create("busybox", &[]);
    let devices = ok(&egress.exec(
        &[],
        &[
            "sh",
            "-c",
            "ls -d /sys/class/net/*/device 2>/dev/null; true",
        ],
        b"",
    ));
    assert_eq!(devices.trim(), "/sys/class/net/eth0/device", "control");
    let o = cove_out(&["network", &sb.id, "--allow", "198.18.0.0/15"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("without a network device"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(leftovers(&sb.id).is_empty(), "{:?}", leftovers(&sb.id));
    // Templates are kept per device set: one without a network device beside one with (a
    // shape no other test uses: their creates never meet these templates).
    let none_tpl = ok(&cove_out(&[
        "template",
        "create",
        "busybox",
        "--memory",
        "240",
        "--network",
        "none",
    ]))
    .trim()
    .to_string();
    let egress_tpl = ok(&cove_out(&[
        "template", "create", "busybox", "--memory", "240",
    ]))
    .trim()
    .to_string();
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&cove_out(&["snapshot", "ls", "--json"]))).unwrap();
    let templates = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["template"] == true && s["image"] == "busybox" && s["memory_mib"] == 240)
        .count();
    assert_eq!(templates, 2, "{listed}");
    let restored = Sandbox {
        id: ok(&cove_out(&[
            "create",
            "--image",
            "busybox",
            "--memory",
            "240",
            "--network",
            "none",
        ]))
        .trim()
        .to_string(),
    };
    // Restored from the template without a device (not booted, not the other template).
    let vm: serde_json::Value = serde_json::from_slice(
        &std::fs::read(home().join("sandboxes").join(&restored.id).join("vm.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(vm["clone_of"], none_tpl.as_str(), "{vm}");
    drop(restored);
    for t in [&none_tpl, &egress_tpl] {
        let _ = cove_out(&["snapshot", "rm", t]);
    }
}

/// Sandbox traffic to 169.254.169.254 and to 198.51.100.77 (the control: the same route to an
/// address no wall covers) is routed to the upstream (a policy route for the pool only: the
/// host's own traffic to those addresses is untouched), which answers at both; the route is
/// removed when dropped.
struct Metadata<'a> {
    up: &'a Upstream,
}

impl<'a> Metadata<'a> {
    fn route(up: &'a Upstream) -> Self {
        for addr in ["169.254.169.254", "198.51.100.77"] {
            ip(&[
                "-n",
                &up.ns,
                "addr",
                "add",
                &format!("{addr}/32"),
                "dev",
                "lo",
            ]);
            while Command::new("ip")
                .args(["rule", "del", "to", &format!("{addr}/32"), "lookup", "4242"])
                .output()
                .is_ok_and(|o| o.status.success())
            {}
            ip(&[
                "rule",
                "add",
                "from",
                cove_net::DEFAULT_POOL,
                "to",
                &format!("{addr}/32"),
                "lookup",
                "4242",
            ]);
            ip(&[
                "route",
                "replace",
                &format!("{addr}/32"),
                "via",
                &up.addr.to_string(),
                "dev",
                &up.host_iface,
                "table",
                "4242",
            ]);
        }
        Self { up }
    }
}

impl Drop for Metadata<'_> {
    fn drop(&mut self) {
        for addr in ["169.254.169.254", "198.51.100.77"] {
            let _ = Command::new("ip")
                .args(["rule", "del", "to", &format!("{addr}/32"), "lookup", "4242"])
                .output();
        }
        let _ = Command::new("ip")
            .args(["route", "flush", "table", "4242"])
            .output();
        let _ = &self.up;
    }
}

#[test]
fn the_guest_reaches_neither_the_host_nor_another_sandbox_nor_the_metadata_address() {
    let _ = home();
    let up = Upstream::start();
    let (port, seen) = host_listener();
    let a = Sandbox::create("busybox", &["--allow", &up.cidr()]);
    // Every wall named in an allow list: no policy lifts them.
    let b = Sandbox::create(
        "busybox",
        &[
            "--allow",
            &up.cidr(),
            "--allow",
            cove_net::DEFAULT_POOL,
            "--allow",
            &format!("{}/32", up.host_addr),
            "--allow",
            "169.254.169.254",
            "--allow",
            "198.51.100.77",
        ],
    );
    ok(&a.exec(
        &[],
        &[
            "sh",
            "-c",
            "mkdir -p /www && echo from-a > /www/index.html && httpd -p 8000 -h /www",
        ],
        b"",
    ));
    let a_link = link_addr(&a);
    // Controls: the host reaches A's server through A's link, and its own listener on the
    // upstream's link address; B reaches the upstream.
    assert!(wait_until(WAIT, || {
        http_get(None, &a_link, 8000).is_some_and(|b| b.contains("from-a"))
    }));
    std::net::TcpStream::connect((up.host_addr, port)).expect("host control");
    assert!(fetches(&b, &up.addr.to_string(), 8080));
    let before = seen.load(Ordering::SeqCst);
    // The host's addresses: its end of B's link, its end of the upstream's, loopback.
    assert!(!connects(&b, &host_link_addr(&b), port));
    assert!(!connects(&b, &up.host_addr.to_string(), port));
    assert_eq!(
        seen.load(Ordering::SeqCst),
        before,
        "a guest reached the host"
    );
    // Another sandbox.
    assert!(!connects(&b, &a_link, 8000));
    // The metadata address, routed to a server that answers there; the control is the same
    // route to an address without a wall.
    let _md = Metadata::route(&up);
    assert!(
        fetches(&b, "198.51.100.77", 8080),
        "control: the routed address"
    );
    assert!(!fetches(&b, "169.254.169.254", 8080));
    // Nor does anything in the sandbox's namespace itself (an escaped VMM lives there).
    let ns = format!("cove-{}", b.id);
    assert_eq!(http_get(Some(&ns), "169.254.169.254", 8080), None);
    assert_eq!(http_get(Some(&ns), "198.51.100.77", 8080), None);
    assert_eq!(http_get(Some(&ns), &up.addr.to_string(), 8080), None);
}

const SPOOF: &str = "import socket, struct
def csum(b):
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff)
    s += s >> 16
    return ~s & 0xffff
def send(src, payload):
    udp = struct.pack('!HHHH', 40000, 9, 8 + len(payload), 0) + payload
    ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton('UPSTREAM'))
    ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.sendto(ip + udp, ('UPSTREAM', 0))
send('10.99.0.1', b'spoofed')
send('169.254.127.3', b'spoofed')
send('169.254.127.2', b'honest')
";

#[test]
fn spoofed_sources_are_dropped() {
    let _ = home();
    let up = Upstream::start();
    let sb = Sandbox::create("python", &["--allow", &up.cidr()]);
    // Root in the guest writes whole IP packets: one from an address that is not the
    // guest's, one from its own (the control).
    let script = SPOOF.replace("UPSTREAM", &up.addr.to_string());
    ok(&sb.exec(&["-i"], &["python3", "-c", &script], b""));
    assert!(wait_until(WAIT, || up
        .udp
        .lock()
        .unwrap()
        .iter()
        .any(|(_, p)| p == b"honest")));
    let got = up.udp.lock().unwrap().clone();
    assert!(
        got.iter().all(|(_, p)| p != b"spoofed"),
        "a spoofed datagram passed: {got:?}"
    );
}

/// A Python client in the guest holding one TCP connection to the upstream's echo server
/// across a pause: it sends a line, waits for /tmp/go, sends another.
const KEEP: &str = "import os, socket, sys, time
c = socket.create_connection((sys.argv[1], 7), timeout=60)
c.sendall(b'one\\n'); print(c.recv(100).decode().strip(), flush=True)
while not os.path.exists('/tmp/go'):
    time.sleep(0.05)
c.sendall(b'two\\n'); print(c.recv(100).decode().strip(), flush=True)
";

#[test]
fn the_network_works_after_pause_wake_restore_and_in_each_clone() {
    let _ = home();
    let up = Upstream::start();
    let a = up.addr.to_string();
    let sb = Sandbox::create("python", &["--allow", &up.cidr()]);
    ok(&sb.exec(
        &["-i"],
        &["sh", "-c", "cat > /tmp/keep.py"],
        KEEP.as_bytes(),
    ));
    ok(&sb.exec(
        &[],
        &[
            "sh",
            "-c",
            &format!("python3 /tmp/keep.py {a} > /tmp/out 2>&1 &"),
        ],
        b"",
    ));
    let out = |s: &Sandbox| text(&s.exec(&[], &["cat", "/tmp/out"], b""));
    assert!(
        wait_until(WAIT, || out(&sb).contains("one")),
        "{}",
        out(&sb)
    );
    // An open connection survives a pause.
    ok(&cove_out(&["pause", &sb.id]));
    ok(&cove_out(&["resume", &sb.id]));
    ok(&sb.exec(&[], &["touch", "/tmp/go"], b""));
    assert!(
        wait_until(WAIT, || out(&sb).contains("two")),
        "{}",
        out(&sb)
    );
    // Hibernated: the network goes with the VM, and comes back with it.
    ok(&cove_out(&["hibernate", &sb.id]));
    assert!(leftovers(&sb.id).is_empty(), "{:?}", leftovers(&sb.id));
    ok(&cove_out(&["resume", &sb.id]));
    assert!(fetches_py(&sb, &a, 8080));
    // A restore of its snapshot.
    let snap = ok(&cove_out(&["snapshot", &sb.id])).trim().to_string();
    let restored = Sandbox {
        id: ok(&cove_out(&["create", "--from-snapshot", &snap]))
            .trim()
            .to_string(),
    };
    let _ = cove_out(&["snapshot", "rm", &snap]);
    // The policy is the default's in a restore (the snapshot holds no policy): allow again.
    ok(&cove_out(&["network", &restored.id, "--allow", &up.cidr()]));
    assert!(fetches_py(&restored, &a, 8080));
    // Clones: the same guest address, distinct links, each online with the source's policy.
    let clones: Vec<Sandbox> = ok(&cove_out(&["fork", &sb.id, "--count", "2"]))
        .lines()
        .map(|l| Sandbox { id: l.to_string() })
        .collect();
    let mut links = Vec::new();
    for c in &clones {
        let addr = "import fcntl, socket, struct\n\
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                    a = fcntl.ioctl(s.fileno(), 0x8915, struct.pack('256s', b'eth0'))  # SIOCGIFADDR\n\
                    print(socket.inet_ntoa(a[20:24]))\n";
        assert_eq!(
            ok(&c.exec(&[], &["python3", "-c", addr], b"")).trim(),
            "169.254.127.2"
        );
        assert!(fetches_py(c, &a, 8080), "clone {} is offline", c.id);
        links.push(link_addr(c));
    }
    links.push(link_addr(&sb));
    links.sort();
    links.dedup();
    assert_eq!(links.len(), 3, "links shared: {links:?}");
}

#[test]
fn nothing_is_left_behind() {
    let home = home();
    // Removed.
    let sb = Sandbox::create("busybox", &[]);
    let id = sb.id.clone();
    assert!(!leftovers(&id).is_empty(), "the sandbox has no network");
    drop(sb);
    assert_eq!(leftovers(&id), Vec::<String>::new());
    // Its cove-vm killed outright: the host records it failed and takes its network.
    let sb = Sandbox::create("busybox", &[]);
    let pid = sb.inspect()["host"]["pid"].as_u64().expect("pid");
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(wait_until(WAIT, || !alive(pid)));
    assert!(
        wait_until(WAIT, || {
            let _ = cove_out(&["inspect", &sb.id]);
            leftovers(&sb.id).is_empty()
        }),
        "{:?}",
        leftovers(&sb.id)
    );
    // coved killed outright: its sandbox keeps running online; removed later, nothing stays.
    let up = Upstream::start();
    let coved = Coved::start(&[]);
    let key = cove_tests::operator_key();
    let o = cove_tests::cove_with_key(
        &coved.url,
        &key,
        &["create", "--memory", "256", "--allow", &up.cidr()],
    );
    let sb = Sandbox {
        id: ok(&o).trim().to_string(),
    };
    Command::new("kill")
        .args(["-9", &coved.child.id().to_string()])
        .status()
        .unwrap();
    assert!(fetches(&sb, &up.addr.to_string(), 8080));
    let id = sb.id.clone();
    drop(sb);
    assert_eq!(leftovers(&id), Vec::<String>::new());
    drop(coved);
    // A network whose sandbox is gone (a create interrupted between the two) is swept when
    // coved starts.
    let nets = cove_net::Networks::from_env(&home);
    let ghost = "0badc0ffee00";
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(nets.create(ghost, None, &Default::default()))
        .expect("a network for no sandbox");
    assert!(!leftovers(ghost).is_empty());
    // Older than a wake in progress could be (a fresh one may be another coved's).
    for l in leftovers(ghost) {
        if let Some(path) = l.strip_prefix("lease ") {
            ok(&Command::new("touch")
                .args(["-d", "5 minutes ago", path])
                .output()
                .unwrap());
        }
    }
    let _coved = Coved::start(&[]);
    assert_eq!(leftovers(ghost), Vec::<String>::new());
}

/// Runs `script` with python in the guest; its stdout.
fn py(sb: &Sandbox, script: &str) -> String {
    text(&sb.exec(&[], &["python3", "-c", script], b""))
}

/// The guest's own lookup of `name` (its resolver is the host's): the address, or `nx`.
fn lookup(sb: &Sandbox, name: &str) -> String {
    py(
        sb,
        &format!(
            "import socket\n\
             try:\n    print(socket.gethostbyname('{name}'))\n\
             except OSError:\n    print('nx')\n"
        ),
    )
    .trim()
    .to_string()
}

/// An HTTP/1.1 request to `addr:80` naming `host`, from the guest: the first line answered, or
/// `closed`.
fn http_as(sb: &Sandbox, addr: &str, host: &str) -> String {
    py(
        sb,
        &format!(
            "import socket\n\
             c = socket.create_connection(('{addr}', 80), timeout=10)\n\
             c.sendall(b'GET / HTTP/1.1\\r\\nHost: {host}\\r\\nConnection: close\\r\\n\\r\\n')\n\
             d = b''\n\
             while True:\n    b = c.recv(4096)\n    if not b: break\n    d += b\n\
             print(d.decode(errors='replace') or 'closed')\n"
        ),
    )
}

/// A TLS handshake from the guest to `addr:443` naming `sni` (the upstream only records it).
fn tls_hello(sb: &Sandbox, addr: &str, sni: &str) {
    let _ = py(
        sb,
        &format!(
            "import socket, ssl\n\
             ctx = ssl.create_default_context()\n\
             ctx.check_hostname = False\n\
             ctx.verify_mode = ssl.CERT_NONE\n\
             try:\n    s = ctx.wrap_socket(socket.create_connection(('{addr}', 443), timeout=10), server_hostname='{sni}')\n\
             except Exception as e:\n    print(e)\n"
        ),
    );
}

#[test]
fn domain_rules_hold_for_dns_http_and_tls() {
    let _ = home();
    // The local coved first: a coved that starts later takes over only sandboxes whose
    // resolver is gone, never this test's.
    ok(&cove_out(&["ls"]));
    let up = Upstream::start();
    let coved = Coved::start_with(
        "127.0.0.1:0",
        &[],
        &[("COVE_DNS_UPSTREAM", &format!("{}:53", up.addr))],
    );
    let key = cove_tests::operator_key();
    let with_key = |args: &[&str]| ok(&cove_tests::cove_with_key(&coved.url, &key, args));
    let a = up.addr.to_string();
    let sb = Sandbox {
        id: with_key(&[
            "create",
            "--image",
            "python",
            "--memory",
            "256",
            "--allow",
            &up.cidr(),
            "--allow",
            "allowed.test",
            "--allow",
            "rebind.test",
            "--deny",
            "denied.test",
        ])
        .trim()
        .to_string(),
    };
    // DNS: allowed names resolve; a denied name is never asked upstream; a name resolving to
    // loopback is not answered (rebinding).
    assert_eq!(lookup(&sb, "allowed.test"), a);
    assert_eq!(lookup(&sb, "denied.test"), "nx");
    assert!(!up.asked.lock().unwrap().iter().any(|n| n == "denied.test"));
    assert_eq!(lookup(&sb, "rebind.test"), "nx");
    assert!(up.asked.lock().unwrap().iter().any(|n| n == "rebind.test"));
    // HTTP by name, through the proxy; a denied Host to the same (allowed) address is refused,
    // and so is a name that resolves to loopback.
    let r = http_as(&sb, &a, "allowed.test");
    assert!(r.contains("host=allowed.test"), "{r}");
    let r = http_as(&sb, &a, "denied.test");
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    let r = http_as(&sb, &a, "rebind.test");
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    // TLS by SNI: the allowed name reaches the upstream, the denied one never does.
    tls_hello(&sb, &a, "allowed.test");
    tls_hello(&sb, &a, "denied.test");
    assert!(wait_until(WAIT, || up
        .tls
        .lock()
        .unwrap()
        .iter()
        .any(|h| h.windows(12).any(|w| w == b"allowed.test"))));
    assert!(
        !up.tls
            .lock()
            .unwrap()
            .iter()
            .any(|h| h.windows(11).any(|w| w == b"denied.test")),
        "a denied SNI reached the upstream"
    );
    // Changed while it runs: the name is denied at once.
    with_key(&[
        "network",
        &sb.id,
        "--allow",
        &up.cidr(),
        "--deny",
        "allowed.test",
    ]);
    assert_eq!(lookup(&sb, "allowed.test"), "nx");
    let r = http_as(&sb, &a, "allowed.test");
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    // Without domain rules, HTTP goes straight to the address (no proxy in the way).
    with_key(&["network", &sb.id, "--allow", &up.cidr()]);
    let r = http_as(&sb, &a, "anything.example");
    assert!(r.contains("host=anything.example"), "{r}");
    // In `none`, not even a question reaches the resolver: a DNS query to the gateway is
    // refused (an ICMP error), not answered.
    with_key(&["network", &sb.id, "--network", "none"]);
    let asked = up.asked.lock().unwrap().len();
    let raw = py(
        &sb,
        "import socket\n\
         q = bytes.fromhex('123401000001000000000000056f74686572047465737400000100 01'.replace(' ', ''))\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.settimeout(5)\n\
         s.connect(('169.254.127.1', 53))\n\
         s.send(q)\n\
         try:\n    print('answered', len(s.recv(512)))\n\
         except socket.timeout:\n    print('timeout')\n\
         except OSError as e:\n    print('refused', e)\n",
    );
    assert!(raw.starts_with("refused"), "{raw}");
    assert_eq!(up.asked.lock().unwrap().len(), asked);
}
