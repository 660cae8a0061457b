//! The nftables rulesets: one table in each sandbox's namespace (its policy, the translation
//! between the guest's fixed address and the sandbox's own, and the anti-spoofing check), and
//! one table on the host (no sandbox reaches the host or another sandbox; sandboxes' traffic
//! leaves masqueraded). Each is applied as one transaction: a policy change replaces the whole
//! table atomically, never leaving a half-written one.
//!
//! A new namespace's table is written without the replacement's `delete table`: in the
//! kernel, any deletion in a transaction waits for RCU grace periods (about 9 ms on the
//! development machine, against about 1 ms for the additions), and a new namespace has no
//! table to delete. `bench/run netns` measures it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use cove_model::{Cidr, NetworkMode, NetworkPolicy};

use crate::{GUEST_ADDR, HOST_IFACE_PREFIX, NS_VETH, NetError, TAP};

/// The operator's default for destinations no `allow` or `deny` entry names: these ranges are
/// denied, every other address is allowed. Ships as every range that is not the public
/// internet: "this network", private, CGNAT, loopback, link-local (with the metadata address
/// 169.254.169.254), the IETF and documentation ranges, benchmarking, multicast and reserved.
pub const DEFAULT_DENY: [&str; 15] = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "255.255.255.255/32",
];

/// What no policy lifts, beside the host's own addresses and the sandboxes' pool: loopback,
/// link-local (the metadata address 169.254.169.254 among them), "this network", multicast
/// and reserved, and the clouds' metadata addresses outside link-local.
pub const WALLS: [&str; 7] = [
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
    // Metadata services outside link-local: Azure's WireServer, Alibaba Cloud's.
    "168.63.129.16/32",
    "100.100.100.200/32",
];

/// Where a sandbox's table goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Into a namespace just made, which has none yet.
    New,
    /// Over the table there is (a policy change).
    Replace,
}

/// Everything one sandbox's table is made from.
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    /// The sandbox's address on its link to the host (what its traffic leaves as).
    pub ns_addr: Ipv4Addr,
    /// The host's end of that link.
    pub host_addr: Ipv4Addr,
    /// Never reachable: the pool of sandbox links, the host's addresses, [`WALLS`].
    pub walls: &'a [Cidr],
    /// The operator's default deny list.
    pub default_deny: &'a [Cidr],
    /// The sandbox's policy.
    pub policy: &'a NetworkPolicy,
    /// Where its DNS (and, for domain rules, its HTTP and TLS) go on the host.
    pub services: Option<crate::Ports>,
    /// The namespace's own processes may send out (QEMU's user-mode network, for the
    /// benchmark's comparison only).
    pub user_mode: bool,
}

fn set(out: &mut String, name: &str, elements: &[Cidr]) {
    let _ = writeln!(
        out,
        "  set {name} {{ type ipv4_addr; flags interval; auto-merge;"
    );
    if !elements.is_empty() {
        let list: Vec<String> = elements.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "    elements = {{ {} }}", list.join(", "));
    }
    out.push_str("  }\n");
}

/// The sandbox namespace's table, as `nft -f` reads it: created (or replaced) in one
/// transaction.
pub fn sandbox_ruleset(p: &Plan<'_>, into: Table) -> String {
    let mut o = String::new();
    if into == Table::Replace {
        // Declaring the table first makes the delete valid when it does not exist yet.
        o.push_str("table inet cove {}\ndelete table inet cove\n");
    }
    o.push_str("table inet cove {\n");
    set(&mut o, "walls", p.walls);
    let allow: Vec<Cidr> = NetworkPolicy::cidrs(&p.policy.allow).collect();
    let deny: Vec<Cidr> = NetworkPolicy::cidrs(&p.policy.deny).collect();
    set(&mut o, "allow", &allow);
    set(&mut o, "deny", &deny);
    set(&mut o, "defaults", p.default_deny);
    let (guest, ns, host) = (GUEST_ADDR, p.ns_addr, p.host_addr);
    let gw = crate::GATEWAY_ADDR;
    // The guest's DNS goes to the host's resolver; with domain rules, so do its HTTP and TLS.
    // In `none`, nothing leaves: not even a question to the resolver.
    let mut redirect = String::new();
    let mut services = String::new();
    if let Some(s) = p.services.filter(|_| p.policy.mode == NetworkMode::Egress) {
        let _ = write!(
            redirect,
            "    iifname \"{TAP}\" ip daddr {gw} udp dport 53 dnat ip to {host}:{dns}
    iifname \"{TAP}\" ip daddr {gw} tcp dport 53 dnat ip to {host}:{dns}
",
            dns = s.dns
        );
        if p.policy.has_domains() {
            let _ = write!(
                redirect,
                "    iifname \"{TAP}\" tcp dport 80 dnat ip to {host}:{http}
    iifname \"{TAP}\" tcp dport 443 dnat ip to {host}:{tls}
",
                http = s.http,
                tls = s.tls
            );
        }
        let _ = writeln!(
            services,
            "    ip daddr {host} ct status dnat meta l4proto {{ tcp, udp }} th dport {{ {}, {}, {} }} accept",
            s.dns, s.http, s.tls
        );
    }
    let _ = write!(
        o,
        "  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept;
    iifname \"{NS_VETH}\" ip saddr {host} ip daddr {ns} dnat ip to {guest}
{redirect}  }}
  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;
    oifname \"{NS_VETH}\" ip saddr {guest} snat ip to {ns}
  }}
  chain forward {{ type filter hook forward priority filter; policy drop;
    iifname \"{TAP}\" ct direction reply ct status dnat accept
    iifname \"{TAP}\" jump egress
    iifname \"{NS_VETH}\" oifname \"{TAP}\" ct state established,related accept
    iifname \"{NS_VETH}\" oifname \"{TAP}\" ip saddr {host} ct status dnat accept
  }}
  chain input {{ type filter hook input priority filter; policy drop;
    iifname \"lo\" accept
    ct state established,related accept
    iifname \"{TAP}\" ip saddr {guest} reject with icmpx admin-prohibited
  }}
  chain output {{ type filter hook output priority filter; policy drop;
    oifname \"lo\" accept
    oifname \"{TAP}\" accept
    ct state established,related accept
{user_mode}  }}
  chain egress {{
    meta nfproto ipv6 drop
    ip saddr != {guest} drop
    oifname != \"{NS_VETH}\" drop
{limit}{none}{services}    ip daddr @walls reject with icmpx admin-prohibited
",
        limit = p.policy.egress_mbps.map_or(String::new(), limit_rule),
        // Nothing in the namespace itself (the jailed VMM) sends out, unless the benchmark's
        // user-mode network (QEMU's own sockets) is asked for.
        user_mode = if p.user_mode {
            format!("    oifname \"{NS_VETH}\" ip daddr != @walls accept\n")
        } else {
            String::new()
        },
        none = if p.policy.mode == NetworkMode::None {
            "    reject with icmpx admin-prohibited\n"
        } else {
            ""
        }
    );
    match p.policy.mode {
        NetworkMode::None => {}
        NetworkMode::Egress => o.push_str(
            "    ip daddr @allow accept
    ip daddr @deny reject with icmpx admin-prohibited
    ip daddr @defaults reject with icmpx admin-prohibited
    accept
",
        ),
    }
    o.push_str("  }\n}\n");
    o
}

/// The egress limit: what the guest sends beyond `mbps` is dropped, and TCP slows down to
/// it. nftables' byte limit is a token bucket holding one second of the rate, so a burst of up
/// to a second's worth passes at line speed after a quiet spell.
fn limit_rule(mbps: u32) -> String {
    let rate = u64::from(mbps) * 125_000;
    format!("    limit rate over {rate} bytes/second drop\n")
}

/// The host's table: nothing from a sandbox's link reaches the host unless it answers the
/// host's own connection or goes to the resolver and proxies' ports; nothing passes between two
/// sandboxes' links; an address of the pool arriving anywhere else is spoofed and dropped;
/// only root's processes (coved) open connections into a sandbox's link; sandbox traffic
/// leaving the host is masqueraded.
pub fn host_ruleset(pool: Cidr) -> String {
    let p = HOST_IFACE_PREFIX;
    let (lo, hi) = (
        crate::services::PORT_RANGE.start(),
        crate::services::PORT_RANGE.end(),
    );
    format!(
        "table inet cove {{}}
delete table inet cove
table inet cove {{
  chain input {{ type filter hook input priority filter - 5; policy accept;
    iifname != \"{p}*\" ip saddr {pool} drop
    iifname \"{p}*\" ct state established,related accept
    iifname \"{p}*\" meta l4proto {{ tcp, udp }} th dport {lo}-{hi} accept
    iifname \"{p}*\" drop
  }}
  chain output {{ type filter hook output priority filter - 5; policy accept;
    oifname \"{p}*\" ct state new meta skuid != 0 drop
  }}
  chain forward {{ type filter hook forward priority filter - 5; policy accept;
    iifname != \"{p}*\" ip saddr {pool} drop
    iifname \"{p}*\" oifname \"{p}*\" drop
    oifname \"{p}*\" ct state established,related accept
    oifname \"{p}*\" drop
  }}
  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;
    ip saddr {pool} oifname != \"{p}*\" masquerade
  }}
}}
"
    )
}

/// Applies `ruleset` (or only checks it) in the calling thread's network namespace, as one
/// transaction: in process through libnftables where it is installed, else with `nft -f -`
/// (the child is forked from this thread, so it shares the namespace the thread is in).
pub fn apply(ruleset: &str, check_only: bool) -> Result<(), NetError> {
    if let Some(done) = crate::libnft::run(ruleset, check_only) {
        return done.map_err(|detail| NetError::Tool {
            what: "nft refused the ruleset",
            detail,
        });
    }
    let mut cmd = Command::new(nft());
    if check_only {
        cmd.arg("--check");
    }
    let mut child = cmd
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetError::Tool {
            what: "starting nft (install Debian's nftables: guest/setup.sh does)",
            detail: e.to_string(),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(ruleset.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| NetError::Tool {
        what: "running nft",
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(NetError::Tool {
            what: "nft refused the ruleset",
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// The nft program: `COVE_NFT`, else the first of /usr/sbin and /sbin that has it.
fn nft() -> String {
    if let Ok(p) = std::env::var("COVE_NFT")
        && !p.is_empty()
    {
        return p;
    }
    ["/usr/sbin/nft", "/sbin/nft"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("nft")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(l: &[&str]) -> Vec<Cidr> {
        l.iter().map(|s| s.parse().unwrap()).collect()
    }

    /// The ruleset of `policy` for a sandbox of the default pool's first slot, under the
    /// shipped walls and defaults.
    fn ruleset(policy: &NetworkPolicy, services: bool) -> String {
        ruleset_into(policy, services, Table::Replace)
    }

    fn ruleset_into(policy: &NetworkPolicy, services: bool, into: Table) -> String {
        sandbox_ruleset(
            &Plan {
                ns_addr: [10, 201, 0, 2].into(),
                host_addr: [10, 201, 0, 1].into(),
                walls: &cidrs(&WALLS),
                default_deny: &cidrs(&DEFAULT_DENY),
                policy,
                services: services.then_some(crate::Ports {
                    dns: 47000,
                    http: 47001,
                    tls: 47002,
                }),
                user_mode: false,
            },
            into,
        )
    }

    #[test]
    fn a_policy_becomes_sets_checked_in_order() {
        let policy = NetworkPolicy {
            mode: NetworkMode::Egress,
            allow: vec!["10.9.0.0/16".parse().unwrap(), "pypi.org".parse().unwrap()],
            deny: vec!["0.0.0.0/0".parse().unwrap()],
            public_ports: false,
            egress_mbps: None,
        };
        let r = ruleset(&policy, true);
        assert!(r.contains("set allow { type ipv4_addr; flags interval; auto-merge;\n    elements = { 10.9.0.0/16 }"), "{r}");
        assert!(r.contains("elements = { 0.0.0.0/0 }"), "{r}");
        // Walls before allow, allow before deny, deny before the defaults.
        let at = |s: &str| r.find(s).unwrap_or_else(|| panic!("{s} missing:\n{r}"));
        assert!(at("ip daddr @walls") < at("ip daddr @allow accept"));
        assert!(at("ip daddr @allow accept") < at("ip daddr @deny"));
        assert!(at("ip daddr @deny") < at("ip daddr @defaults"));
        assert!(at("ip saddr != 169.254.127.2 drop") < at("ip daddr @allow accept"));
        let none = ruleset(&NetworkPolicy::none(), false);
        assert!(!none.contains("@allow accept"), "{none}");
        assert!(!r.contains("limit rate"), "{r}");
        // An egress limit comes before anything the guest's traffic could be accepted by.
        let limited = ruleset(
            &NetworkPolicy {
                egress_mbps: Some(8),
                ..policy
            },
            true,
        );
        let at = |s: &str| {
            limited
                .find(s)
                .unwrap_or_else(|| panic!("{s} missing:\n{limited}"))
        };
        assert!(
            at("limit rate over 1000000 bytes/second drop")
                < at("ip daddr 10.201.0.1 ct status dnat")
        );
        assert!(at("limit rate over") < at("ip daddr @allow accept"));
    }

    /// nft itself reads both rulesets (`--check`: nothing is applied).
    #[test]
    fn nft_accepts_the_rulesets() {
        let policy = NetworkPolicy {
            mode: NetworkMode::Egress,
            allow: vec![
                "10.9.0.0/16".parse().unwrap(),
                "10.9.1.0/24".parse().unwrap(),
            ],
            deny: vec![],
            public_ports: false,
            egress_mbps: Some(1),
        };
        apply(&ruleset(&policy, true), true).unwrap();
        let new = ruleset_into(&policy, false, Table::New);
        // A new namespace's table deletes nothing (a deletion waits for RCU grace periods);
        // apart from that, it is the replacement's table.
        assert!(!new.contains("delete"), "{new}");
        let replace = ruleset(&policy, false);
        assert!(replace.ends_with(&new), "{replace}\n---\n{new}");
        // Applied for real in a namespace of the test's own (this thread's, gone with it): the
        // host's namespace may hold the host's table of the same name.
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            apply(&new, false).unwrap();
            apply(&replace, false).unwrap();
        })
        .join()
        .unwrap();
        apply(&host_ruleset("10.201.0.0/16".parse().unwrap()), true).unwrap();
    }
}
