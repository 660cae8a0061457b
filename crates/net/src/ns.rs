//! Namespaces and links. A network namespace belongs to a thread, not to a process: every step
//! that works inside a sandbox's namespace runs on a thread of its own that enters it (or
//! makes it) and ends afterwards, so no thread of the caller's runtime ever changes namespace.
//! Netlink sockets answer for the namespace they were opened in: the host's is opened before
//! the thread leaves the host's namespace.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use nix::sched::CloneFlags;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::lease::Lease;
use crate::{GATEWAY_ADDR, GATEWAY_MAC, GUEST_PREFIX, NETNS_DIR, NS_VETH, NetError, TAP, step};

/// Sandbox `id`'s namespace.
pub(crate) fn path(id: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(format!("cove-{id}"))
}

fn nl_err(what: &str) -> impl FnOnce(rtnetlink::Error) -> NetError + '_ {
    move |e| NetError::Step {
        what: what.to_string(),
        detail: e.to_string(),
    }
}

fn nix_err(what: &str) -> impl FnOnce(nix::Error) -> NetError + '_ {
    move |e| step(what)(std::io::Error::from_raw_os_error(e as i32))
}

/// A runtime for one thread's netlink requests, with a connection opened in the namespace the
/// thread is in now.
struct Netlink {
    rt: tokio::runtime::Runtime,
}

impl Netlink {
    fn new() -> Result<Self, NetError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(step("starting a netlink runtime"))?;
        Ok(Self { rt })
    }

    /// A connection in the calling thread's namespace now.
    fn connect(&self) -> Result<Handle, NetError> {
        let _guard = self.rt.enter();
        let (conn, handle, _) = rtnetlink::new_connection().map_err(step("opening netlink"))?;
        self.rt.spawn(conn);
        Ok(handle)
    }
}

async fn index(h: &Handle, name: &str) -> Result<Option<u32>, NetError> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(Some(l.header.index)),
        Ok(None) => Ok(None),
        // No such device.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(nl_err("looking up a link")(e)),
    }
}

async fn need_index(h: &Handle, name: &str) -> Result<u32, NetError> {
    index(h, name).await?.ok_or_else(|| NetError::Step {
        what: format!("finding link {name}"),
        detail: "it is not there".into(),
    })
}

/// Runs `f` on a new thread, in a new network namespace bound at `path(id)`; `f` gets a
/// netlink connection of the host's namespace and one of the new namespace.
pub(crate) async fn create<F>(id: &str, f: F) -> Result<(), NetError>
where
    F: FnOnce(&Netlink2, &Path) -> Result<(), NetError> + Send + 'static,
{
    let target = path(id);
    run_thread(move || {
        let nl = Netlink::new()?;
        let host = nl.connect()?;
        shared_netns_dir()?;
        nix::sched::unshare(CloneFlags::CLONE_NEWNET)
            .map_err(nix_err("making the network namespace"))?;
        std::fs::File::create(&target).map_err(step("making the namespace's name"))?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(nix_err("binding the namespace"))?;
        let inside = nl.connect()?;
        f(
            &Netlink2 {
                nl: &nl,
                host,
                inside,
            },
            &target,
        )
    })
    .await
}

/// Makes `/run/netns` a shared mount of its own, as `ip netns` does: a namespace bound there
/// then shows in every mount namespace, and a later `ip netns add` does not mount a new
/// `/run/netns` over the names already bound (which would hide them from their removal).
fn shared_netns_dir() -> Result<(), NetError> {
    use nix::mount::{MsFlags, mount};
    std::fs::create_dir_all(NETNS_DIR).map_err(step("making /run/netns"))?;
    let share = || {
        mount(
            None::<&str>,
            NETNS_DIR,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match share() {
        Ok(()) => Ok(()),
        // Not a mount point yet.
        Err(nix::Error::EINVAL) => {
            mount(
                Some(NETNS_DIR),
                NETNS_DIR,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(nix_err("binding /run/netns on itself"))?;
            share().map_err(nix_err("sharing /run/netns"))
        }
        Err(e) => Err(nix_err("sharing /run/netns")(e)),
    }
}

/// The two connections of a namespace being made.
pub(crate) struct Netlink2<'a> {
    nl: &'a Netlink,
    host: Handle,
    inside: Handle,
}

/// Sets up a new namespace (the calling thread is in it): its tap, its end of the link, the
/// host's end, addresses and the default route.
pub(crate) fn configure(
    c: &Netlink2<'_>,
    netns: &Path,
    id: &str,
    lease: &Lease,
    owner: Option<(u32, u32)>,
) -> Result<(), NetError> {
    // The namespace forwards between its tap and its link, and speaks no IPv6.
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(step("turning on forwarding in the namespace"))?;
    let _ = std::fs::write("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1");
    crate::tap::create(TAP, owner)?;
    let host_iface = crate::host_iface(id);
    let ns_file = std::fs::File::open(netns).map_err(step("opening the namespace"))?;
    let (host, inside) = (&c.host, &c.inside);
    c.nl.rt.block_on(async {
        // The namespace's end is made in the namespace, with its final name: moving a link
        // between namespaces waits for the kernel's RCU grace periods (~40 ms here).
        let peer_msg = LinkUnspec::new_with_name(NS_VETH)
            .setns_by_fd(ns_file.as_raw_fd())
            .build();
        let veth = rtnetlink::LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host_iface.clone())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        host.link()
            .add(veth)
            .execute()
            .await
            .map_err(nl_err("making the veth pair"))?;
        // Each end and the tap: addressed, then raised (the tap with the gateway's fixed MAC).
        let h = need_index(host, &host_iface).await?;
        address(host, h, lease.host_addr(), 30, "the host's end").await?;
        raise(host, LinkUnspec::new_with_index(h), "the host's end").await?;
        let lo = need_index(inside, "lo").await?;
        raise(inside, LinkUnspec::new_with_index(lo), "lo").await?;
        let v = need_index(inside, NS_VETH).await?;
        address(inside, v, lease.ns_addr(), 30, "the namespace's end").await?;
        raise(inside, LinkUnspec::new_with_index(v), "the namespace's end").await?;
        let t = need_index(inside, TAP).await?;
        address(inside, t, GATEWAY_ADDR, GUEST_PREFIX, "the tap").await?;
        raise(
            inside,
            LinkUnspec::new_with_index(t).address(GATEWAY_MAC.to_vec()),
            "the tap",
        )
        .await?;
        inside
            .route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(lease.host_addr())
                    .build(),
            )
            .execute()
            .await
            .map_err(nl_err("routing the namespace"))?;
        Ok(())
    })
}

async fn address(
    h: &Handle,
    index: u32,
    ip: Ipv4Addr,
    prefix: u8,
    what: &str,
) -> Result<(), NetError> {
    h.address()
        .add(index, ip.into(), prefix)
        .execute()
        .await
        .map_err(nl_err(&format!("addressing {what}")))
}

/// Sets what `link` says of a link, and sets it up.
async fn raise(
    h: &Handle,
    link: rtnetlink::LinkMessageBuilder<LinkUnspec>,
    what: &str,
) -> Result<(), NetError> {
    h.link()
        .set(link.up().build())
        .execute()
        .await
        .map_err(nl_err(&format!("raising {what}")))
}

/// Deletes link `name` of the host (with its peer), if it is there.
pub(crate) fn delete_link(name: &str) -> Result<(), NetError> {
    let nl = Netlink::new()?;
    let h = nl.connect()?;
    nl.rt.block_on(async {
        if let Some(i) = index(&h, name).await? {
            match h.link().del(i).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {}
                Err(e) => return Err(nl_err("deleting a link")(e)),
            }
        }
        Ok(())
    })
}

/// Unbinds and removes sandbox `id`'s namespace name.
pub(crate) fn unbind(id: &str) {
    let p = path(id);
    let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_file(&p);
}

/// Runs `f` on a thread of its own in namespace `netns`.
pub(crate) async fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> Result<T, NetError> + Send + 'static,
) -> Result<T, NetError> {
    let netns = netns.to_path_buf();
    run_thread(move || {
        let fd = std::fs::File::open(&netns).map_err(step("opening the namespace"))?;
        nix::sched::setns(&fd, CloneFlags::CLONE_NEWNET)
            .map_err(nix_err("entering the namespace"))?;
        f()
    })
    .await
}

/// Runs `f` here (every thread of the caller is in the host's namespace).
pub(crate) fn in_host<T>(f: impl FnOnce() -> Result<T, NetError>) -> Result<T, NetError> {
    f()
}

/// Runs `f` of the host's namespace on a thread of its own (its netlink runtime must not
/// nest in the caller's), and waits for it.
pub(crate) fn in_host_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NetError> + Send + 'static,
) -> Result<T, NetError> {
    std::thread::Builder::new()
        .name("cove-net".into())
        .spawn(f)
        .map_err(step("starting a network thread"))?
        .join()
        .map_err(|_| NetError::Step {
            what: "a network thread".into(),
            detail: "it panicked".into(),
        })?
}

async fn run_thread<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NetError> + Send + 'static,
) -> Result<T, NetError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("cove-net".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(step("starting a network thread"))?;
    rx.await.map_err(|_| NetError::Step {
        what: "a network thread".into(),
        detail: "it ended without an answer".into(),
    })?
}
