//! Sandboxes' networks (`cove_net`): which sandbox gets a network device, making its network
//! before its VM starts, replacing its policy while it runs, and removing it once its VM ends.
//!
//! A sandbox created with mode `none` has no network device at all; one created with `egress`
//! has one for its whole life (a snapshot's device set is part of the snapshot), and switching
//! it to `none` drops every packet instead. A restore gets the device its snapshot had.

use std::path::Path;

use cove_model::{NetworkMode, NetworkPolicy};
use cove_protocol::control::{NetConfig, VmConfig};

use crate::{Actor, Host, HostError, SandboxRecord};

/// Whether the snapshot in `dir` was taken with a network device.
pub(crate) fn snapshot_nic(dir: &Path) -> bool {
    std::fs::read(dir.join("manifest.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|m| m["nic"] == true)
}

/// Whether sandbox `rec`'s VM has (or, hibernated, had) a network device: what its `vm.json`
/// says.
pub(crate) fn has_nic(rec: &SandboxRecord) -> bool {
    std::fs::read(rec.layout().vm_config())
        .ok()
        .and_then(|b| serde_json::from_slice::<VmConfig>(&b).ok())
        .is_some_and(|c| c.net.is_some())
}

/// Checks a policy the host is asked to enforce.
fn check(p: &NetworkPolicy) -> Result<(), HostError> {
    p.validate().map_err(invalid)
}

fn invalid(value: String) -> HostError {
    HostError::InvalidSetting {
        what: "network",
        value,
        allowed: "mode none or egress, allow and deny lists of IPv4 networks and domain names"
            .into(),
    }
}

impl Host {
    /// The policy a new sandbox gets: the one asked for (checked), else `egress` under the
    /// operator's defaults where this host makes networks, else `none`. With `snapshot_nic`
    /// (a restore), the device its snapshot had decides: a snapshot without one cannot get
    /// `egress`. Both engines attach the guest's device to the same tap.
    pub(crate) fn network_for(
        &self,
        asked: Option<&NetworkPolicy>,
        snapshot_nic: Option<bool>,
    ) -> Result<NetworkPolicy, HostError> {
        let policy = match asked {
            Some(p) => {
                check(p)?;
                p.clone()
            }
            None if snapshot_nic == Some(false) || self.net.off().is_some() => {
                NetworkPolicy::none()
            }
            None => NetworkPolicy::default(),
        };
        if policy.mode == NetworkMode::Egress {
            if snapshot_nic == Some(false) {
                return Err(HostError::NetworkConflict(
                    "the snapshot was taken without a network device; restore it with network \
                     mode none"
                        .into(),
                ));
            }
            if let Some(why) = self.net.off() {
                return Err(cove_net::NetError::Unavailable(why.to_string()).into());
            }
        }
        Ok(policy)
    }

    /// Makes sandbox `cfg.id`'s network when its VM gets a device (`nic`), and points the VM
    /// at it. Runs after the jail is readied: the tap belongs to the jail's user.
    pub(crate) async fn attach_network(
        &self,
        cfg: &mut VmConfig,
        policy: &NetworkPolicy,
        nic: bool,
    ) -> Result<(), HostError> {
        cfg.net = None;
        if !nic {
            return Ok(());
        }
        let owner = cfg.jail.as_ref().map(|j| (j.uid, j.gid));
        let a = self.net.create(&cfg.id, owner, policy).await?;
        // A change recorded while the network was being made (it found none to apply to).
        if let Ok(Some(r)) = self.db.find(&cfg.id)
            && r.id == cfg.id
            && r.network != *policy
            && let Err(e) = self.net.apply(&cfg.id, &r.network).await
        {
            cove_state::blocking(|| self.net.destroy(&cfg.id));
            return Err(e.into());
        }
        cfg.net = Some(NetConfig {
            netns: a.netns.display().to_string(),
            tap: cove_net::TAP.into(),
            mac: cove_net::mac_text(cove_net::GUEST_MAC),
            address: format!("{}/{}", cove_net::GUEST_ADDR, cove_net::GUEST_PREFIX),
            gateway: cove_net::GATEWAY_ADDR.to_string(),
            user_mode: self
                .user_mode_net
                .load(std::sync::atomic::Ordering::Relaxed),
        });
        if let Some(j) = cfg.jail.as_mut() {
            j.devices.push("/dev/net/tun".into());
        }
        Ok(())
    }

    /// Replaces a sandbox's network policy. A sandbox whose VM runs gets it at once (one
    /// transaction of its rules); a hibernated or stopped one when its VM next starts.
    pub async fn set_network(
        &self,
        key: &str,
        policy: NetworkPolicy,
    ) -> Result<SandboxRecord, HostError> {
        check(&policy)?;
        let id = self.get(key)?.id;
        let _turn = self.turn(&id).await;
        let mut rec = self.get(&id)?;
        let _busy = self.busy(&rec.id);
        if policy.mode == NetworkMode::Egress && !has_nic(&rec) {
            return Err(HostError::NetworkConflict(format!(
                "sandbox {} was created without a network device (mode none); create a new \
                 one with network egress",
                rec.id
            )));
        }
        // Recorded first: the resolver and proxies judge each new request by the record, so
        // a guest reconnecting the moment its connections are cut meets the new policy.
        let old = rec.network.clone();
        self.db
            .set_network(&rec.id, &policy, &crate::record::current_actor())?;
        if rec.state.has_vm()
            && self.net.attached(&rec.id).is_some()
            && let Err(e) = self.net.apply(&rec.id, &policy).await
        {
            let _ = self.db.set_network(&rec.id, &old, &Actor::Reconcile);
            return Err(e.into());
        }
        rec.network = policy;
        Ok(rec)
    }

    /// What is left of sandbox `id` once its VM has ended: its jail's cgroup and RAM
    /// directory, its network.
    pub(crate) fn vm_ended(&self, id: &str) {
        self.jail.vm_ended(id);
        self.port_clients.lock().expect("lock").remove(id);
        cove_state::blocking(|| self.net.destroy(id));
    }

    /// Gives the sandboxes this host starts from now on QEMU's user-mode network instead of
    /// the tap (no policy holds for it): only for the `net` benchmark's comparison.
    pub fn set_user_mode_network(&self, on: bool) {
        self.user_mode_net
            .store(on, std::sync::atomic::Ordering::Relaxed);
        self.net.set_user_mode(on);
    }

    /// Why sandboxes get no network here (if they do not), the pool of their links, and the
    /// ports of the services this process serves them (once started).
    pub fn network_info(&self) -> (Option<String>, cove_model::Cidr, Option<cove_net::Ports>) {
        (
            self.net.off().map(str::to_string),
            self.net.pool(),
            self.net.services(),
        )
    }

    /// Whether this host makes networks (root, `/dev/net/tun`, not `COVE_NET=off`).
    pub fn networks_on(&self) -> bool {
        self.net.off().is_none()
    }

    /// What the resolver and proxies hold per sandbox.
    pub fn net_registry(&self) -> std::sync::Arc<cove_net::services::Registry> {
        self.net.registry()
    }

    /// The walls and operator defaults, for the resolver and proxies.
    pub fn net_judge(&self) -> cove_net::Judge {
        self.net.judge()
    }

    /// The policy of the sandbox whose link address is `ip` (how the resolver and proxies
    /// tell which sandbox asks).
    pub fn network_of_link(&self, ip: std::net::Ipv4Addr) -> Option<NetworkPolicy> {
        let id = self.net.sandbox_of(ip)?;
        let rec = self.db.find(&id).ok()??;
        (rec.id == id).then_some(rec.network)
    }

    /// Sends sandboxes' DNS (and, for domain rules, HTTP and TLS) to these services from now
    /// on: new networks, and the running ones of this home whose services are gone (their
    /// coved ended), whose rules are replaced.
    pub async fn use_net_services(&self, ports: cove_net::Ports) {
        self.net.set_services(ports);
        let Ok(all) = self.db.list() else {
            return;
        };
        for rec in all {
            if rec.state.has_vm()
                && self.net.attached(&rec.id).is_some()
                && self.net.orphaned_services(&rec.id)
                && let Err(e) = self.net.apply(&rec.id, &rec.network).await
            {
                tracing::warn!("sandbox {}: its network rules: {e}", rec.id);
            }
        }
    }

    /// The host's end of sandbox `id`'s link and the address its traffic leaves as, while it
    /// has a network.
    pub fn network_link(&self, id: &str) -> Option<cove_net::Attached> {
        self.net.attached(id)
    }
}
