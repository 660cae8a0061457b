//! Each sandbox's network, on the host (`docs/network.md` has the drawing).
//!
//! A sandbox with a network gets its own network namespace, `/run/netns/cove-ID`, holding:
//! - `tap0`, the engine's tap device, owned by the sandbox's jail user (so the jailed VMM can
//!   attach to it without any capability), with the gateway's fixed address and MAC;
//! - `veth0`, one end of a veth pair whose other end, `cvID`, sits on the host; the pair has a
//!   /30 of its own from the host's pool (`COVE_NET_POOL`, default `10.201.0.0/16`);
//! - one nftables table: the policy, the translation between the guest's address (the same in
//!   every sandbox: [`GUEST_ADDR`]) and the sandbox's own, and the anti-spoofing check.
//!
//! The host holds one table of its own (see [`rules::host_ruleset`]). Links and addresses are
//! made over netlink (`rtnetlink`), the rules by one nftables transaction per change.

mod judge;
mod lease;
mod libnft;
mod ns;
pub mod rules;
pub mod services;
mod tap;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use cove_model::{Cidr, NetworkPolicy};

pub use judge::Judge;
pub use lease::Lease;
pub use services::Ports;

/// The guest's address, the same in every sandbox (a snapshot, template or clone restores
/// without renumbering). Link-local: never a destination a policy could want.
pub const GUEST_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 127, 2);
/// The guest's gateway (the namespace's end of the tap), which is also its DNS server.
pub const GATEWAY_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 127, 1);
/// Prefix length of the guest's link.
pub const GUEST_PREFIX: u8 = 30;
/// The guest's MAC.
pub const GUEST_MAC: [u8; 6] = [0x02, 0xc0, 0x5e, 0x00, 0x00, 0x02];
/// The gateway's MAC, fixed: a restored guest's ARP cache stays valid.
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0xc0, 0x5e, 0x00, 0x00, 0x01];
/// The tap's name in every namespace.
pub const TAP: &str = "tap0";
/// The namespace's end of the veth pair.
pub const NS_VETH: &str = "veth0";
/// The host's end of each sandbox's veth pair is this and the sandbox id.
pub const HOST_IFACE_PREFIX: &str = "cv";
/// Where the namespaces are bound (where `ip netns` finds them).
pub const NETNS_DIR: &str = "/run/netns";
/// The default pool of the sandboxes' links.
pub const DEFAULT_POOL: &str = "10.201.0.0/16";

/// `aa:bb:…` of a MAC.
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Why a sandbox's network could not be made or changed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A system call or netlink request failed.
    #[error("network: {what}: {detail}")]
    Step {
        /// Which step.
        what: String,
        /// Why.
        detail: String,
    },
    /// A tool (nft) failed.
    #[error("network: {what}: {detail}")]
    Tool {
        /// What.
        what: &'static str,
        /// Its words.
        detail: String,
    },
    /// Every /30 of the pool is leased.
    #[error("network: the pool {0} has no free address left")]
    PoolExhausted(Cidr),
    /// Networks cannot be made here.
    #[error("network: unavailable on this host: {0}")]
    Unavailable(String),
}

pub(crate) fn step(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetError {
    let what = what.into();
    move |e| NetError::Step {
        what,
        detail: e.to_string(),
    }
}

/// What a sandbox's VM needs to use its network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// The namespace's path (`/run/netns/cove-ID`), entered by cove-vm before its engine runs.
    pub netns: PathBuf,
    /// The sandbox's address on its link (what its traffic leaves as).
    pub ns_addr: Ipv4Addr,
    /// The host's end of the link.
    pub host_addr: Ipv4Addr,
    /// The host's interface.
    pub host_iface: String,
}

/// This host's sandbox networks.
#[derive(Debug)]
pub struct Networks {
    pool: Cidr,
    default_deny: Vec<Cidr>,
    leases: lease::Leases,
    /// Why networks cannot be made here, if they cannot.
    off: Option<String>,
    host_ready: OnceLock<Result<(), String>>,
    /// The resolver and proxies this process serves, once started.
    services: std::sync::Mutex<Option<Ports>>,
    /// What they hold per sandbox.
    registry: std::sync::Arc<services::Registry>,
    /// The benchmark's switch: networks whose namespace may send out itself.
    user_mode: std::sync::atomic::AtomicBool,
    /// Per sandbox, held while its network is taken down: a teardown is several steps (the
    /// link, the namespace's name, the lease), and a create that starts meanwhile (a wake, just
    /// after another thread recorded the sandbox's VM gone) must not have its new namespace or
    /// lease removed by the end of the old teardown. A create's own first step is a teardown,
    /// so it waits for one under way.
    teardowns: std::sync::Mutex<std::collections::HashMap<String, Arc<std::sync::Mutex<()>>>>,
}

impl Networks {
    /// From the environment: `COVE_NET` (`on`, the default for root, or `off`), `COVE_NET_POOL`
    /// ([`DEFAULT_POOL`]), `COVE_NET_DEFAULT_DENY` (comma-separated networks; default
    /// [`rules::DEFAULT_DENY`]). `home` tags this home's leases (several homes may share a host).
    pub fn from_env(home: &Path) -> Self {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut off = match env("COVE_NET").as_deref() {
            Some("off") => Some("COVE_NET=off".to_string()),
            _ if !cove_model::is_root() => Some("the host does not run as root".to_string()),
            _ if !Path::new("/dev/net/tun").exists() => Some("/dev/net/tun is missing".into()),
            _ => None,
        };
        let pool = match env("COVE_NET_POOL").map(|p| p.parse::<Cidr>()) {
            Some(Ok(p)) if (8..=28).contains(&p.prefix) => p,
            Some(Ok(p)) => {
                off.get_or_insert(format!("COVE_NET_POOL {p}: a /8 to a /28"));
                p
            }
            Some(Err(e)) => {
                off.get_or_insert(format!("COVE_NET_POOL: {e}"));
                DEFAULT_POOL.parse().expect("valid")
            }
            None => DEFAULT_POOL.parse().expect("valid"),
        };
        let default_deny = match env("COVE_NET_DEFAULT_DENY") {
            // A list with a mistake makes no networks rather than weaker ones.
            Some(list) => list
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .filter_map(|s| match s.trim().parse::<Cidr>() {
                    Ok(c) => Some(c),
                    Err(e) => {
                        off.get_or_insert(format!("COVE_NET_DEFAULT_DENY: {e}"));
                        None
                    }
                })
                .collect(),
            None => rules::DEFAULT_DENY
                .iter()
                .map(|s| s.parse().expect("valid"))
                .collect(),
        };
        if let Some(why) = &off {
            tracing::info!("sandboxes get no network here: {why}");
        }
        Self {
            pool,
            default_deny,
            leases: lease::Leases::new(home, pool),
            off,
            host_ready: OnceLock::new(),
            services: std::sync::Mutex::new(None),
            registry: Default::default(),
            user_mode: Default::default(),
            teardowns: Default::default(),
        }
    }

    /// Lets the namespaces this process makes from now on send out themselves (QEMU's
    /// user-mode network): only for the `net` benchmark's comparison.
    pub fn set_user_mode(&self, on: bool) {
        self.user_mode
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    fn user_mode(&self) -> bool {
        self.user_mode.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The walls and defaults, to judge addresses by.
    pub fn judge(&self) -> Judge {
        Judge {
            walls: self.walls(),
            default_deny: self.default_deny.clone(),
        }
    }

    /// What the services hold per sandbox (pass it to [`services::start`]).
    pub fn registry(&self) -> std::sync::Arc<services::Registry> {
        self.registry.clone()
    }

    /// Sends the networks this process makes from now on to these services (their DNS, and
    /// their HTTP and TLS when a policy names domains).
    pub fn set_services(&self, ports: Ports) {
        *self.services.lock().expect("lock") = Some(ports);
    }

    /// The services this process serves the sandboxes, once started.
    pub fn services(&self) -> Option<Ports> {
        *self.services.lock().expect("lock")
    }

    /// The sandbox of this home whose link has address `ip` (its end, as its traffic leaves).
    pub fn sandbox_of(&self, ip: Ipv4Addr) -> Option<String> {
        self.leases.holder_of(ip)
    }

    /// Why networks cannot be made here, if they cannot.
    pub fn off(&self) -> Option<&str> {
        self.off.as_deref()
    }

    /// The pool the sandboxes' links are leased from.
    pub fn pool(&self) -> Cidr {
        self.pool
    }

    fn available(&self) -> Result<(), NetError> {
        if let Some(why) = &self.off {
            return Err(NetError::Unavailable(why.clone()));
        }
        let r = self
            .host_ready
            .get_or_init(|| ns::in_host(|| host_setup(self.pool)).map_err(|e| e.to_string()));
        r.clone().map_err(NetError::Unavailable)
    }

    /// Makes sandbox `id`'s namespace, tap (owned by `owner`, the jail's user and group, when
    /// jailed), link and rules. Anything left of an earlier one of the same sandbox is
    /// replaced.
    pub async fn create(
        &self,
        id: &str,
        owner: Option<(u32, u32)>,
        policy: &NetworkPolicy,
    ) -> Result<Attached, NetError> {
        self.available()?;
        check_id(id)?;
        // What is left of an earlier network of the same sandbox (a wake's, a crash's), or a
        // teardown of it under way (waited for): taking it down blocks (tens of ms), so only
        // when there is something.
        if self.leftovers(id) {
            self.destroy(id);
        }
        let lease = self.leases.acquire(id)?;
        let services = self.services();
        let ruleset = self.ruleset(&lease, policy, services, rules::Table::New);
        let id_owned = id.to_string();
        let made = ns::create(id, move |c, netns| {
            ns::configure(c, netns, &id_owned, &lease, owner)?;
            rules::apply(&ruleset, false)
        })
        .await;
        if let Err(e) = made {
            self.destroy(id);
            return Err(e);
        }
        self.record_services(id, services);
        Ok(Attached {
            netns: ns::path(id),
            ns_addr: lease.ns_addr(),
            host_addr: lease.host_addr(),
            host_iface: host_iface(id),
        })
    }

    /// Replaces sandbox `id`'s policy (one transaction in its namespace).
    pub async fn apply(&self, id: &str, policy: &NetworkPolicy) -> Result<(), NetError> {
        self.available()?;
        check_id(id)?;
        let lease = self
            .leases
            .find(id)
            .ok_or_else(|| NetError::Unavailable(format!("sandbox {id} has no network now")))?;
        let services = self.services();
        let ruleset = self.ruleset(&lease, policy, services, rules::Table::Replace);
        ns::in_netns(&ns::path(id), move || rules::apply(&ruleset, false)).await?;
        self.record_services(id, services);
        // What the proxies relay for it was judged under the old policy.
        self.registry.cut(lease.ns_addr());
        Ok(())
    }

    /// The table of the sandbox holding `lease` under `policy`, with this host's walls and
    /// defaults and `services`.
    fn ruleset(
        &self,
        lease: &Lease,
        policy: &NetworkPolicy,
        services: Option<Ports>,
        into: rules::Table,
    ) -> String {
        rules::sandbox_ruleset(
            &rules::Plan {
                ns_addr: lease.ns_addr(),
                host_addr: lease.host_addr(),
                walls: &self.walls(),
                default_deny: &self.default_deny,
                policy,
                services,
                user_mode: self.user_mode(),
            },
            into,
        )
    }

    fn services_file(id: &str) -> PathBuf {
        Path::new(lease::DIR).join(format!("svc-{id}"))
    }

    /// Remembers which services sandbox `id`'s rules point at.
    fn record_services(&self, id: &str, s: Option<Ports>) {
        let p = Self::services_file(id);
        match s {
            Some(s) => {
                let _ = std::fs::write(&p, format!("{} {} {}\n", s.dns, s.http, s.tls));
            }
            None => {
                let _ = std::fs::remove_file(&p);
            }
        }
    }

    /// Whether sandbox `id`'s rules point at no live services: none recorded, or another
    /// process's that ended (its lock of its ports is free). Another live coved's are left to
    /// it.
    pub fn orphaned_services(&self, id: &str) -> bool {
        let Some(mine) = self.services() else {
            return false;
        };
        let Ok(text) = std::fs::read_to_string(Self::services_file(id)) else {
            return true;
        };
        let Some(dns) = text
            .split_whitespace()
            .next()
            .and_then(|p| p.parse::<u16>().ok())
        else {
            return true;
        };
        if dns == mine.dns {
            return false;
        }
        let Ok(f) = std::fs::File::open(services::lock_path(dns)) else {
            return true;
        };
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok()
    }

    /// Sandbox `id`'s link, if it has one now.
    pub fn attached(&self, id: &str) -> Option<Attached> {
        let lease = self.leases.find(id)?;
        ns::path(id).exists().then(|| Attached {
            netns: ns::path(id),
            ns_addr: lease.ns_addr(),
            host_addr: lease.host_addr(),
            host_iface: host_iface(id),
        })
    }

    /// Removes everything of sandbox `id`'s network: the host's end of its link (which takes
    /// the other end), the namespace's name (the namespace and its tap go with the last
    /// process in it) and its lease. Harmless when there is nothing. Blocks while the kernel
    /// removes the link (tens of milliseconds: RCU grace periods; `bench/run netns`), so an
    /// async caller runs it as blocking work.
    pub fn destroy(&self, id: &str) {
        if check_id(id).is_err() || self.off.is_some() {
            return;
        }
        let lock = self
            .teardowns
            .lock()
            .expect("lock")
            .entry(id.to_string())
            .or_default()
            .clone();
        {
            let _held = lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            self.tear_down(id);
        }
        // Forgotten when no other teardown or create of it waits.
        let mut all = self.teardowns.lock().expect("lock");
        if Arc::strong_count(&lock) == 2 {
            all.remove(id);
        }
    }

    /// Whether sandbox `id` has a network, or what is left of one, or one being taken down.
    fn leftovers(&self, id: &str) -> bool {
        self.leases.find(id).is_some()
            || ns::path(id).exists()
            || self.teardowns.lock().expect("lock").contains_key(id)
    }

    fn tear_down(&self, id: &str) {
        let iface = host_iface(id);
        if let Err(e) = ns::in_host_blocking(move || ns::delete_link(&iface)) {
            tracing::warn!("sandbox {id}: removing its link: {e}");
        }
        ns::unbind(id);
        let _ = std::fs::remove_file(Self::services_file(id));
        if let Some(l) = self.leases.release(id) {
            self.registry.forget(l.ns_addr());
        }
    }

    /// Removes the networks of this home's sandboxes that `keep` does not name (gone, or
    /// without a VM). Returns how many.
    pub fn sweep(&self, keep: impl Fn(&str) -> bool) -> usize {
        let mut n = 0;
        for id in self.leases.ids() {
            // A network made in the last minute may be a wake's of another coved of this home,
            // whose record says `resuming` only once its VM is spawned.
            if !keep(&id) && !self.leases.recent(&id, std::time::Duration::from_secs(60)) {
                self.destroy(&id);
                n += 1;
            }
        }
        n
    }

    /// What a guest never reaches: [`rules::WALLS`], the pool of links, the host's own
    /// addresses.
    fn walls(&self) -> Vec<Cidr> {
        let mut w: Vec<Cidr> = rules::WALLS
            .iter()
            .map(|s| s.parse().expect("valid"))
            .collect();
        w.push(self.pool);
        w.extend(host_addresses());
        w
    }
}

fn check_id(id: &str) -> Result<(), NetError> {
    if id.is_empty() || id.len() > 13 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(NetError::Unavailable(format!(
            "{id:?} is not a sandbox id (at most 13 letters and digits)"
        )));
    }
    Ok(())
}

/// The host's end of sandbox `id`'s link.
pub fn host_iface(id: &str) -> String {
    format!("{HOST_IFACE_PREFIX}{id}")
}

/// The host's IPv4 addresses, as /32s.
fn host_addresses() -> Vec<Cidr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out: Vec<Cidr> = addrs
        .filter_map(|a| a.address)
        .filter_map(|a| a.as_sockaddr_in().map(|s| s.ip()))
        .map(|ip| Cidr::new(ip, 32))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The host's side, once per process: forwarding on, and the host's table.
fn host_setup(pool: Cidr) -> Result<(), NetError> {
    let fwd = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(fwd)
        .map(|v| v.trim() != "1")
        .unwrap_or(true)
    {
        std::fs::write(fwd, "1").map_err(step("turning on IPv4 forwarding"))?;
        tracing::info!("IPv4 forwarding turned on for sandbox networks");
    }
    rules::apply(&rules::host_ruleset(pool), false)
}

/// The namespaces of sandboxes that exist on this host now (any home), by id.
pub fn namespaces() -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("cove-"))
                .map(str::to_string)
        })
        .collect()
}
