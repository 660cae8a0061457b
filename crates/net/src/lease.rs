//! Leases of the pool's /30s: one file per leased slot, `/run/cove/net/SLOT`, made with
//! `O_EXCL` (two processes never take one slot), holding `HOME-TAG ID`. `/run` is a tmpfs:
//! after a reboot no lease, namespace or link is left, and none is claimed.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use cove_model::Cidr;
use sha2::Digest;

use crate::NetError;

/// Where leases are kept.
pub(crate) const DIR: &str = "/run/cove/net";

/// One sandbox's /30: its slot in the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    base: Ipv4Addr,
    slot: u32,
}

impl Lease {
    fn first(&self) -> u32 {
        u32::from(self.base) + self.slot * 4
    }

    /// The host's end of the link.
    pub fn host_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.first() + 1)
    }

    /// The namespace's end.
    pub fn ns_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.first() + 2)
    }
}

#[derive(Debug)]
pub(crate) struct Leases {
    dir: PathBuf,
    tag: String,
    pool: Cidr,
}

impl Leases {
    pub(crate) fn new(home: &Path, pool: Cidr) -> Self {
        let d = sha2::Sha256::digest(home.as_os_str().as_encoded_bytes());
        let tag = d.iter().take(6).map(|b| format!("{b:02x}")).collect();
        Self {
            dir: PathBuf::from(DIR),
            tag,
            pool,
        }
    }

    fn slots(&self) -> u32 {
        // The pool's first and last /30 are left out (its network and broadcast addresses).
        (1u32 << (32 - u32::from(self.pool.prefix))) / 4 - 2
    }

    fn lease(&self, slot: u32) -> Lease {
        Lease {
            base: self.pool.addr,
            slot: slot + 1,
        }
    }

    /// Takes a free slot for `id`: its hash picks where to start looking. The lease is written
    /// whole under a temporary name and linked into place (a link fails on a taken slot): no
    /// lease is ever seen empty.
    pub(crate) fn acquire(&self, id: &str) -> Result<Lease, NetError> {
        std::fs::create_dir_all(&self.dir).map_err(crate::step("making /run/cove/net"))?;
        let tmp = self.dir.join(format!(".lease-{}-{id}", std::process::id()));
        {
            let mut f =
                std::fs::File::create(&tmp).map_err(crate::step("writing a network lease"))?;
            f.write_all(format!("{} {id}\n", self.tag).as_bytes())
                .map_err(crate::step("writing a network lease"))?;
        }
        let slots = self.slots();
        let h = sha2::Sha256::digest(id.as_bytes());
        let start = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) % slots;
        let mut out = Err(NetError::PoolExhausted(self.pool));
        for i in 0..slots {
            let slot = (start + i) % slots;
            match std::fs::hard_link(&tmp, self.dir.join(slot.to_string())) {
                Ok(()) => {
                    out = Ok(self.lease(slot));
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    out = Err(crate::step("taking a network lease")(e));
                    break;
                }
            }
        }
        let _ = std::fs::remove_file(&tmp);
        out
    }

    /// This home's leases: slot and sandbox.
    fn mine(&self) -> Vec<(u32, String)> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let Some(slot) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            if let Some((tag, id)) = text.trim().split_once(' ')
                && tag == self.tag
            {
                out.push((slot, id.to_string()));
            }
        }
        out
    }

    pub(crate) fn find(&self, id: &str) -> Option<Lease> {
        self.mine()
            .into_iter()
            .find(|(_, i)| i == id)
            .filter(|(slot, _)| *slot < self.slots())
            .map(|(slot, _)| self.lease(slot))
    }

    /// The sandbox of this home whose end of its link has address `ip` (what its traffic
    /// leaves the namespace as).
    pub(crate) fn holder_of(&self, ip: Ipv4Addr) -> Option<String> {
        let off = u32::from(ip).checked_sub(u32::from(self.pool.addr))?;
        if off % 4 != 2 {
            return None;
        }
        let slot = (off / 4).checked_sub(1)?;
        if slot >= self.slots() {
            return None;
        }
        let text = std::fs::read_to_string(self.dir.join(slot.to_string())).ok()?;
        let (tag, id) = text.trim().split_once(' ')?;
        (tag == self.tag).then(|| id.to_string())
    }

    /// Whether `id`'s lease was taken less than `age` ago.
    pub(crate) fn recent(&self, id: &str, age: std::time::Duration) -> bool {
        self.mine()
            .into_iter()
            .filter(|(_, i)| i == id)
            .filter_map(|(slot, _)| std::fs::metadata(self.dir.join(slot.to_string())).ok())
            .filter_map(|m| m.modified().ok())
            .any(|t| t.elapsed().is_ok_and(|e| e < age))
    }

    pub(crate) fn ids(&self) -> Vec<String> {
        self.mine().into_iter().map(|(_, id)| id).collect()
    }

    /// Gives back `id`'s lease; the lease it held, if any.
    pub(crate) fn release(&self, id: &str) -> Option<Lease> {
        let mut held = None;
        for (slot, i) in self.mine() {
            if i == id {
                let _ = std::fs::remove_file(self.dir.join(slot.to_string()));
                held = (slot < self.slots()).then(|| self.lease(slot));
            }
        }
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_disjoint_30s_inside_the_pool() {
        let l = Leases::new(Path::new("/x"), "10.201.0.0/16".parse().unwrap());
        assert_eq!(l.slots(), 16382);
        let a = l.lease(0);
        assert_eq!(a.host_addr(), Ipv4Addr::new(10, 201, 0, 5));
        assert_eq!(a.ns_addr(), Ipv4Addr::new(10, 201, 0, 6));
        let last = l.lease(l.slots() - 1);
        assert_eq!(last.ns_addr(), Ipv4Addr::new(10, 201, 255, 250));
    }
}
