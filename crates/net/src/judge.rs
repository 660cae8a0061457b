//! The policy's verdict on an address, in user space: the same order the namespace's rules
//! apply to packets (walls, `allow`, `deny`, the operator's defaults), for the resolver (which
//! answers only addresses a guest may use) and the Host/SNI proxy (which dials only those).

use std::net::Ipv4Addr;

use cove_model::{Cidr, NetworkMode, NetworkPolicy};

/// The walls and the operator's defaults of a host.
#[derive(Debug, Clone)]
pub struct Judge {
    pub(crate) walls: Vec<Cidr>,
    pub(crate) default_deny: Vec<Cidr>,
}

impl Judge {
    /// Whether a guest under `policy` may reach `ip`. `named` says a domain rule of the policy
    /// allows the name it was resolved from: that lifts `deny` (the user named it), never the
    /// walls or the operator's defaults (a public name resolving to a private address is DNS
    /// rebinding, refused unless a CIDR rule allows the address itself).
    pub fn allows(&self, policy: &NetworkPolicy, ip: Ipv4Addr, named: bool) -> bool {
        if policy.mode == NetworkMode::None || self.walls.iter().any(|c| c.contains(ip)) {
            return false;
        }
        if NetworkPolicy::cidrs(&policy.allow).any(|c| c.contains(ip)) {
            return true;
        }
        if self.default_deny.iter().any(|c| c.contains(ip)) {
            return false;
        }
        named || !NetworkPolicy::cidrs(&policy.deny).any(|c| c.contains(ip))
    }

    /// Whether the resolver may ask upstream for a name no domain rule names: not when the
    /// policy's `deny` and the operator's defaults together cover every address (an
    /// allow-list), where the question itself could carry data out.
    pub fn may_ask(&self, policy: &NetworkPolicy) -> bool {
        policy.mode == NetworkMode::Egress
            && !covers_everything(
                NetworkPolicy::cidrs(&policy.deny).chain(self.default_deny.iter().copied()),
            )
    }
}

/// Whether the networks together cover all of IPv4.
fn covers_everything(cidrs: impl Iterator<Item = Cidr>) -> bool {
    let mut spans: Vec<(u64, u64)> = cidrs
        .map(|c| {
            let start = u64::from(u32::from(c.addr));
            (start, start + (1u64 << (32 - u32::from(c.prefix))))
        })
        .collect();
    spans.sort_unstable();
    let mut reached = 0u64;
    for (start, end) in spans {
        if start > reached {
            return false;
        }
        reached = reached.max(end);
    }
    reached >= 1 << 32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge() -> Judge {
        Judge {
            walls: ["127.0.0.0/8", "169.254.0.0/16"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect(),
            default_deny: ["10.0.0.0/8"].iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn walls_allow_deny_defaults_in_that_order() {
        let j = judge();
        let p = NetworkPolicy {
            allow: vec!["10.1.0.0/16".parse().unwrap(), "127.0.0.1".parse().unwrap()],
            deny: vec!["0.0.0.0/0".parse().unwrap()],
            ..Default::default()
        };
        assert!(!j.allows(&p, [127, 0, 0, 1].into(), true), "walls first");
        assert!(j.allows(&p, [10, 1, 2, 3].into(), false));
        assert!(
            !j.allows(&p, [10, 2, 0, 1].into(), true),
            "rebinding to private"
        );
        assert!(!j.allows(&p, [93, 184, 216, 34].into(), false));
        assert!(
            j.allows(&p, [93, 184, 216, 34].into(), true),
            "a named allow"
        );
        assert!(!j.may_ask(&p));
        let halves = NetworkPolicy {
            deny: vec!["0.0.0.0/1".parse().unwrap(), "128.0.0.0/1".parse().unwrap()],
            ..Default::default()
        };
        assert!(!j.may_ask(&halves), "a deny of everything in pieces");
        let open = NetworkPolicy::default();
        assert!(j.allows(&open, [93, 184, 216, 34].into(), false));
        assert!(j.may_ask(&open));
        assert!(!j.allows(&NetworkPolicy::none(), [93, 184, 216, 34].into(), true));
    }
}
