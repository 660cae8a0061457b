//! A sandbox's network: whether it has one, and where its guest may connect.
//!
//! The policy is the user's; the host enforces it outside the guest (`cove-net`), on top of
//! walls no policy lifts (the host itself, other sandboxes, link-local and loopback addresses).
//! Wire form:
//! `{"mode": "egress", "allow": ["203.0.113.0/24", "example.com"], "deny": ["0.0.0.0/0"]}`.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Whether a sandbox has a network at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// No traffic in or out. Created so: the guest has no network device at all. Switched to
    /// on a running sandbox: its device stays, and every packet is dropped.
    None,
    /// Outbound connections under the policy's `allow` and `deny` lists.
    #[default]
    Egress,
}

impl NetworkMode {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Egress => "egress",
        }
    }
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NetworkMode {
    type Err = crate::ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "egress" => Ok(Self::Egress),
            _ => Err(crate::ParseError {
                what: "network mode (none, egress)",
                value: s.to_string(),
            }),
        }
    }
}

/// An IPv4 network: an address and a prefix length, host bits zero (`10.0.0.0/8`; a plain
/// address is a `/32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    /// The network's first address.
    pub addr: Ipv4Addr,
    /// 0 to 32.
    pub prefix: u8,
}

impl Cidr {
    /// `addr/prefix`, the host bits cleared.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Self {
        let prefix = prefix.min(32);
        Self {
            addr: Ipv4Addr::from(u32::from(addr) & Self::mask(prefix)),
            prefix,
        }
    }

    fn mask(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        }
    }

    /// Whether `ip` lies in it.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.prefix) == u32::from(self.addr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s.split_once('/').unwrap_or((s, "32"));
        let addr: Ipv4Addr = a.parse().map_err(|_| {
            if a.contains(':') {
                format!("{s}: IPv6 is not routed to sandboxes (their network is IPv4 only)")
            } else {
                format!("{s}: not an IPv4 address")
            }
        })?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{s}: the prefix length is 0 to 32"))?;
        let c = Self::new(addr, prefix);
        if c.addr != addr {
            return Err(format!("{s}: host bits are set (the network is {c})"));
        }
        Ok(c)
    }
}

/// One entry of an `allow` or `deny` list: a network, or a domain name (which also covers its
/// subdomains; `*.example.com` covers the subdomains only).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    /// Addresses.
    Cidr(Cidr),
    /// A name, lower case, without a trailing dot; `*.` first for subdomains only.
    Domain(String),
}

impl Destination {
    /// Whether host name `name` (any case, a trailing dot allowed) falls under this domain rule.
    pub fn matches_name(&self, name: &str) -> bool {
        let Self::Domain(d) = self else {
            return false;
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match d.strip_prefix("*.") {
            Some(parent) => name.ends_with(&format!(".{parent}")),
            None => name == *d || name.ends_with(&format!(".{d}")),
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cidr(c) => c.fmt(f),
            Self::Domain(d) => f.write_str(d),
        }
    }
}

impl FromStr for Destination {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("an empty destination".into());
        }
        if s.contains('/') || s.contains(':') || s.parse::<Ipv4Addr>().is_ok() {
            return s.parse().map(Self::Cidr);
        }
        let lower = s.trim_end_matches('.').to_ascii_lowercase();
        let body = lower.strip_prefix("*.").unwrap_or(&lower);
        let labels_ok = !body.is_empty()
            && body.len() <= 253
            && body.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        // A dotted run of digits that did not parse as an address is a typo, not a name.
        if !labels_ok
            || body
                .split('.')
                .all(|l| l.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(format!(
                "{s}: neither an IPv4 network (a.b.c.d/n) nor a domain name"
            ));
        }
        Ok(Self::Domain(lower))
    }
}

impl Serialize for Destination {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Destination {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Most entries of `allow` and `deny` together.
pub const MAX_RULES: usize = 256;

/// Where a sandbox's guest may connect. Order of decision for a new connection: the host's
/// walls (never lifted), then `allow` (a match is let through), then `deny` (a match is
/// dropped), then the operator's defaults (public addresses allowed; private, loopback,
/// link-local, CGNAT and multicast ranges denied).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NetworkPolicy {
    /// `egress` (the default) or `none`.
    #[serde(default)]
    pub mode: NetworkMode,
    /// Let through, over `deny` and the operator's defaults: IPv4 networks (`203.0.113.0/24`,
    /// or an address) and domain names (`example.com` and its subdomains; `*.example.com`: its
    /// subdomains only). `allow` and `deny` hold at most 256 entries together.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "utoipa", schema(value_type = Vec<String>))]
    pub allow: Vec<Destination>,
    /// Dropped, over the operator's defaults (same forms as `allow`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "utoipa", schema(value_type = Vec<String>))]
    pub deny: Vec<Destination>,
    /// Its ports are served through coved to anyone, without the traffic token or a signed
    /// URL.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public_ports: bool,
    /// Most bandwidth the guest sends out with, megabits per second (none: no limit). Held on
    /// the host: what goes over it is dropped, so TCP slows to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_mbps: Option<u32>,
}

impl NetworkPolicy {
    /// No network.
    pub fn none() -> Self {
        Self {
            mode: NetworkMode::None,
            ..Self::default()
        }
    }

    /// Checks its size and that `none` carries no lists.
    pub fn validate(&self) -> Result<(), String> {
        if self.allow.len() + self.deny.len() > MAX_RULES {
            return Err(format!(
                "at most {MAX_RULES} allow and deny entries together"
            ));
        }
        if self.mode == NetworkMode::None
            && !(self.allow.is_empty() && self.deny.is_empty() && self.egress_mbps.is_none())
        {
            return Err("mode none takes no allow or deny entries and no egress_mbps".into());
        }
        if let Some(m) = self.egress_mbps
            && !crate::limits::EGRESS_MBPS.contains(m)
        {
            return Err(format!(
                "egress_mbps {m}: {}",
                crate::limits::EGRESS_MBPS.describe()
            ));
        }
        Ok(())
    }

    /// The CIDR entries of a list.
    pub fn cidrs(list: &[Destination]) -> impl Iterator<Item = Cidr> + '_ {
        list.iter().filter_map(|d| match d {
            Destination::Cidr(c) => Some(*c),
            Destination::Domain(_) => None,
        })
    }

    /// Whether any entry is a domain name.
    pub fn has_domains(&self) -> bool {
        self.allow
            .iter()
            .chain(&self.deny)
            .any(|d| matches!(d, Destination::Domain(_)))
    }

    /// What the policy says of host name `name` by its domain rules: `Some(true)` allowed by
    /// one, `Some(false)` denied by one, `None` when no domain rule names it.
    pub fn name_verdict(&self, name: &str) -> Option<bool> {
        if self.allow.iter().any(|d| d.matches_name(name)) {
            Some(true)
        } else if self.deny.iter().any(|d| d.matches_name(name)) {
            Some(false)
        } else {
            None
        }
    }
}

/// One line: `egress; allow 10.0.0.0/8, pypi.org; deny 0.0.0.0/0; public ports` (the cause of a
/// `network` event).
impl fmt::Display for NetworkPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.mode.as_str())?;
        let list = |l: &[Destination]| {
            l.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !self.allow.is_empty() {
            write!(f, "; allow {}", list(&self.allow))?;
        }
        if !self.deny.is_empty() {
            write!(f, "; deny {}", list(&self.deny))?;
        }
        if self.public_ports {
            f.write_str("; public ports")?;
        }
        if let Some(m) = self.egress_mbps {
            write!(f, "; egress {m} Mbit/s")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse_as_networks_or_names() {
        let d: Destination = "10.1.0.0/16".parse().unwrap();
        assert_eq!(d, Destination::Cidr(Cidr::new([10, 1, 0, 0].into(), 16)));
        assert_eq!(
            "198.51.100.7".parse::<Destination>().unwrap().to_string(),
            "198.51.100.7/32"
        );
        assert_eq!(
            "Example.COM.".parse::<Destination>().unwrap(),
            Destination::Domain("example.com".into())
        );
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "1.2.3",
            "::1/128",
            "exa mple.com",
            "-a.com",
            "",
            "*.",
        ] {
            assert!(bad.parse::<Destination>().is_err(), "{bad} parsed");
        }
        let v6 = "2001:db8::/32".parse::<Destination>().unwrap_err();
        assert!(v6.contains("IPv6"), "{v6}");
    }

    #[test]
    fn domain_rules_cover_subdomains_and_wildcards_only_those() {
        let d: Destination = "example.com".parse().unwrap();
        assert!(d.matches_name("example.com"));
        assert!(d.matches_name("API.example.com."));
        assert!(!d.matches_name("badexample.com"));
        let w: Destination = "*.example.com".parse().unwrap();
        assert!(!w.matches_name("example.com"));
        assert!(w.matches_name("a.b.example.com"));
    }

    #[test]
    fn cidrs_contain_their_addresses() {
        let c: Cidr = "169.254.0.0/16".parse().unwrap();
        assert!(c.contains([169, 254, 169, 254].into()));
        assert!(!c.contains([169, 253, 0, 1].into()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains([8, 8, 8, 8].into()));
    }

    #[test]
    fn allow_wins_over_deny_and_none_takes_no_lists() {
        let p = NetworkPolicy {
            mode: NetworkMode::Egress,
            allow: vec!["pypi.org".parse().unwrap()],
            deny: vec!["org".parse().unwrap()],
            public_ports: false,
            egress_mbps: None,
        };
        assert_eq!(p.name_verdict("pypi.org"), Some(true));
        assert_eq!(p.name_verdict("files.pypi.org"), Some(true));
        assert_eq!(p.name_verdict("evil.org"), Some(false));
        assert_eq!(p.name_verdict("example.com"), None);
        let mut none = NetworkPolicy::none();
        assert!(none.validate().is_ok());
        none.deny.push("10.0.0.0/8".parse().unwrap());
        assert!(none.validate().is_err());
        let limited = |m| NetworkPolicy {
            egress_mbps: Some(m),
            ..NetworkPolicy::default()
        };
        assert!(limited(1).validate().is_ok() && limited(100_000).validate().is_ok());
        assert!(limited(0).validate().is_err() && limited(100_001).validate().is_err());
        let mut none = NetworkPolicy::none();
        none.egress_mbps = Some(5);
        assert!(none.validate().is_err());
        let wire: NetworkPolicy = serde_json::from_str(r#"{"allow":["1.2.3.4","a.io"]}"#).unwrap();
        assert_eq!(wire.mode, NetworkMode::Egress);
        assert_eq!(
            serde_json::to_string(&wire).unwrap(),
            r#"{"mode":"egress","allow":["1.2.3.4/32","a.io"]}"#
        );
    }
}
