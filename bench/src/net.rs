//! `net`: what sandbox networking costs and gives, in one run.
//!
//! - TCP throughput guest → upstream and back (32 MiB each way; the upstream is a namespace of
//!   the bench's own, `cove_tests::net::Upstream`), over the sandbox's tap and, in the same run,
//!   over QEMU's user-mode network (slirp) in the same namespace, in python sandboxes of one and
//!   two vCPUs: the ratio is what the tap design buys. The guest sends with `sendfile` and
//!   receives into one large buffer, so its own copying (emulated under TCG) weighs as little
//!   as it can: busybox's `dd | nc` measured the emulated user space, about 5 MiB/s either way.
//! - HTTP through the port proxy (`PORT-ID.DOMAIN` on coved, relayed by the guest's agent)
//!   against a direct connection from the host's namespace to the sandbox's link (NAT to the
//!   guest), interleaved: p50/p99 and requests per second.
//! - First byte of a request that resumes a sandbox its idle policy paused or hibernated.
//! - What the network adds to a create from a template: `egress` against `none`, interleaved.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cove_host::{CreateSpec, Host};
use cove_model::{NetworkPolicy, OnIdle, SandboxState};
use cove_tests::net::{SOURCE_BYTES, Upstream};
use serde_json::json;

use crate::{key_for, ms, start_coved, summary};

/// Runs `sh -c cmd` in the sandbox to its end; its stdout.
async fn sh(host: &Host, id: &str, cmd: &str) -> anyhow::Result<String> {
    let c = host.connect(id).await?;
    let out = c
        .output(
            cove_protocol::ExecRequest {
                argv: vec!["sh".into(), "-c".into(), cmd.into()],
                ..Default::default()
            },
            None,
        )
        .await?;
    if out.status.code != Some(0) {
        bail!("{cmd}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    let v = bytes as f64 / (1 << 20) as f64 / d.as_secs_f64();
    (v * 10.0).round() / 10.0
}

/// The guest's side of a transfer with the least guest work per byte (as `iperf3 -Z` does): a
/// file in the page cache sent with `sendfile`, and received into one large buffer.
const SEND: &str = "import os, socket, sys
s = socket.create_connection((sys.argv[1], 5001))
f = open('/tmp/blob', 'rb')
s.sendfile(f)
s.close()";
const RECV: &str = "import socket, sys
s = socket.create_connection((sys.argv[1], 5002))
b = bytearray(1 << 20)
n = 0
while True:
    k = s.recv_into(b)
    if not k:
        break
    n += k
print(n)";

/// MiB/s each way between python sandbox `id` and the upstream with [`SEND`] and [`RECV`],
/// `runs` times: (up, down) medians.
async fn throughput(
    host: &Host,
    id: &str,
    up: &Upstream,
    runs: usize,
) -> anyhow::Result<(f64, f64)> {
    sh(
        host,
        id,
        &format!(
            "head -c {SOURCE_BYTES} /dev/zero > /tmp/blob && cat > /tmp/send.py <<'EOF'\n{SEND}\nEOF\ncat > /tmp/recv.py <<'EOF'\n{RECV}\nEOF"
        ),
    )
    .await?;
    let (mut ups, mut downs) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let before = up.sunk.lock().expect("lock").len();
        sh(host, id, &format!("python3 /tmp/send.py {}", up.addr)).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let (n, d) = loop {
            if let Some(s) = up.sunk.lock().expect("lock").get(before) {
                break *s;
            }
            if Instant::now() > deadline {
                bail!("the sink saw no connection");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        if n != SOURCE_BYTES {
            bail!("the sink got {n} bytes of {SOURCE_BYTES}");
        }
        ups.push(mib_per_s(n, d));
        let before = up.sourced.lock().expect("lock").len();
        let got = sh(host, id, &format!("python3 /tmp/recv.py {}", up.addr)).await?;
        if got.trim() != SOURCE_BYTES.to_string() {
            bail!("the guest got {} bytes of {SOURCE_BYTES}", got.trim());
        }
        let d = loop {
            if let Some(d) = up.sourced.lock().expect("lock").get(before) {
                break *d;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        downs.push(mib_per_s(SOURCE_BYTES, d));
    }
    ups.sort_by(f64::total_cmp);
    downs.sort_by(f64::total_cmp);
    Ok((ups[ups.len() / 2], downs[downs.len() / 2]))
}

/// Throughput over the tap and, in the same run, over QEMU's user-mode network, in python
/// sandboxes of `cpus` vCPUs: the figures and their ratios.
async fn compare(host: &Host, up: &Upstream, cpus: u32) -> anyhow::Result<serde_json::Value> {
    let spec = CreateSpec {
        cpus,
        memory_mib: 512,
        image: "python".into(),
        use_template: false,
        network: Some(allow_upstream(up)),
        ..Default::default()
    };
    let tap = host.create(&spec).await?;
    let tap_tp = throughput(host, &tap.id, up, 3).await;
    let _ = host.remove(&tap.id, true).await;
    host.set_user_mode_network(true);
    let user = host.create(&spec).await;
    host.set_user_mode_network(false);
    let user = user?;
    let user_tp = throughput(host, &user.id, up, 3).await;
    let _ = host.remove(&user.id, true).await;
    let (tap_up, tap_down) = tap_tp?;
    let (user_up, user_down) = user_tp?;
    Ok(json!({
        "cpus": cpus,
        "tap": {"guest_to_upstream": tap_up, "upstream_to_guest": tap_down},
        "qemu_user_mode": {"guest_to_upstream": user_up, "upstream_to_guest": user_down},
        "ratio_tap_to_user_mode": {
            "guest_to_upstream": (tap_up / user_up * 100.0).round() / 100.0,
            "upstream_to_guest": (tap_down / user_down * 100.0).round() / 100.0,
        },
    }))
}

fn allow_upstream(up: &Upstream) -> NetworkPolicy {
    NetworkPolicy {
        allow: vec![up.cidr().parse().expect("a network")],
        ..Default::default()
    }
}

async fn state(host: &Host, id: &str) -> SandboxState {
    host.get(id)
        .map(|r| r.state)
        .unwrap_or(SandboxState::Failed)
}

pub async fn run(host: &Host, home: &Path) -> anyhow::Result<serde_json::Value> {
    if !host.networks_on() {
        bail!("this host makes no sandbox networks (root, /dev/net/tun, COVE_NET)");
    }
    let up = Upstream::start();
    let base = CreateSpec {
        memory_mib: 256,
        network: Some(allow_upstream(&up)),
        ..Default::default()
    };
    // Throughput: the tap, then QEMU's user-mode network, in sandboxes of one and two vCPUs.
    let mut throughput = Vec::new();
    for cpus in [1, 2] {
        throughput.push(compare(host, &up, cpus).await?);
    }

    // The port proxy against a direct connection.
    let key = key_for(home, None, "operator")?;
    let coved = start_coved(home, &[])?;
    let http = reqwest::Client::new();
    let sb = host.create(&base).await?;
    let link = host
        .network_link(&sb.id)
        .context("the sandbox has no link")?
        .ns_addr;
    sh(
        host,
        &sb.id,
        "mkdir -p /www && echo bench > /www/index.html && httpd -p 8000 -h /www",
    )
    .await?;
    let token: serde_json::Value = http
        .get(format!("{}/v1/sandboxes/{}/traffic-token", coved.1, sb.id))
        .bearer_auth(&key)
        .send()
        .await?
        .json()
        .await?;
    let token = token["token"].as_str().context("a token")?.to_string();
    let proxied = format!("{}/", coved.1);
    let host_header = format!("8000-{}.cove.localhost", sb.id);
    let direct = format!("http://{link}:8000/");
    let (mut p_ms, mut d_ms) = (Vec::new(), Vec::new());
    let (mut p_total, mut d_total) = (Duration::ZERO, Duration::ZERO);
    let n = 100;
    for i in 0..n + 5 {
        let t = Instant::now();
        let r = http
            .get(&proxied)
            .header("host", &host_header)
            .header("x-cove-traffic-token", &token)
            .send()
            .await?;
        let ok = r.status().is_success() && r.text().await? == "bench\n";
        let took = t.elapsed();
        if !ok {
            bail!("the proxy did not answer the guest's page");
        }
        let t = Instant::now();
        let r = http.get(&direct).send().await?;
        let ok = r.status().is_success() && r.text().await? == "bench\n";
        let took_direct = t.elapsed();
        if !ok {
            bail!("the direct connection did not answer the guest's page");
        }
        // The first few warm both paths up.
        if i >= 5 {
            p_ms.push(took.as_secs_f64() * 1000.0);
            d_ms.push(took_direct.as_secs_f64() * 1000.0);
            p_total += took;
            d_total += took_direct;
        }
    }
    let _ = host.remove(&sb.id, true).await;

    // First byte after resume on traffic.
    let mut resume = serde_json::Map::new();
    for (on_idle, want) in [
        (OnIdle::Pause, SandboxState::Paused),
        (OnIdle::Hibernate, SandboxState::Hibernated),
    ] {
        let sb = host
            .create(&CreateSpec {
                idle_timeout_secs: Some(1),
                on_idle: Some(on_idle),
                network: Some(NetworkPolicy {
                    public_ports: true,
                    ..allow_upstream(&up)
                }),
                ..base.clone()
            })
            .await?;
        sh(
            host,
            &sb.id,
            "mkdir -p /www && echo bench > /www/index.html && httpd -p 8000 -h /www",
        )
        .await?;
        let host_header = format!("8000-{}.cove.localhost", sb.id);
        let mut v = Vec::new();
        for _ in 0..5 {
            let deadline = Instant::now() + Duration::from_secs(120);
            while state(host, &sb.id).await != want {
                if Instant::now() > deadline {
                    bail!("the sandbox was never {on_idle}d");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let t = Instant::now();
            let r = http
                .get(&proxied)
                .header("host", &host_header)
                .send()
                .await?;
            let first = ms(t);
            if !r.status().is_success() {
                bail!("a request that resumes got {}", r.status());
            }
            let _ = r.text().await;
            v.push(first);
        }
        let _ = host.remove(&sb.id, true).await;
        resume.insert(on_idle.to_string(), summary(v));
    }
    drop(coved);

    // What the network adds to a create from a template.
    let none = CreateSpec {
        network: Some(NetworkPolicy::none()),
        ..base.clone()
    };
    let egress = CreateSpec {
        network: Some(NetworkPolicy::default()),
        ..base.clone()
    };
    host.template_create(&none).await?;
    host.template_create(&egress).await?;
    let (mut c_none, mut c_egress) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        for (spec, into) in [(&none, &mut c_none), (&egress, &mut c_egress)] {
            let t = Instant::now();
            let r = host.create(spec).await?;
            into.push(ms(t));
            let _ = host.remove(&r.id, true).await;
        }
    }
    let med = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    };
    let rps = |total: Duration| (n as f64 / total.as_secs_f64() * 10.0).round() / 10.0;
    Ok(json!({
        "bench": "net",
        "throughput_mib_s": {"bytes_each_way": SOURCE_BYTES, "by_cpus": throughput},
        "http_ms": {
            "port_proxy": summary(p_ms.clone()),
            "direct": summary(d_ms.clone()),
            "proxy_adds_p50_ms": ((med(&p_ms) - med(&d_ms)) * 10.0).round() / 10.0,
            "requests_per_s": {"port_proxy": rps(p_total), "direct": rps(d_total)},
        },
        "first_byte_after_resume_ms": resume,
        "create_from_template_ms": {
            "none": summary(c_none.clone()),
            "egress": summary(c_egress.clone()),
            "network_adds_ms": ((med(&c_egress) - med(&c_none)) * 10.0).round() / 10.0,
        },
    }))
}
