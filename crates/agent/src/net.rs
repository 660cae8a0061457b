//! The guest's network device, configured from the kernel command line the host wrote
//! (`cove.net=ADDRESS/PREFIX,GATEWAY`): the address, the default route through the gateway,
//! and `/etc/resolv.conf` naming the gateway (Cove's resolver). ioctls rather than netlink:
//! four calls at boot do not need a netlink stack in PID 1.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The device the guest's only NIC gets.
const IFACE: &[u8] = b"eth0\0";

/// Parses `ADDRESS/PREFIX,GATEWAY`.
pub fn parse(spec: &str) -> Option<(Ipv4Addr, u8, Ipv4Addr)> {
    let (cidr, gw) = spec.split_once(',')?;
    let (addr, prefix) = cidr.split_once('/')?;
    let prefix: u8 = prefix.parse().ok().filter(|p| (1..=32).contains(p))?;
    Some((addr.parse().ok()?, prefix, gw.parse().ok()?))
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or(2),
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; every bit pattern is valid.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ifreq() -> libc::ifreq {
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, b) in req.ifr_name.iter_mut().zip(IFACE) {
        *d = libc::c_char::from_ne_bytes([*b]);
    }
    req
}

/// `struct rtentry` (x86_64), which the libc crate has for musl but not for glibc.
#[repr(C)]
struct RtEntry {
    pad1: libc::c_ulong,
    dst: libc::sockaddr,
    gateway: libc::sockaddr,
    genmask: libc::sockaddr,
    flags: libc::c_ushort,
    pad2: libc::c_short,
    pad3: libc::c_ulong,
    pad4: *mut libc::c_void,
    metric: libc::c_short,
    dev: *mut libc::c_char,
    mtu: libc::c_ulong,
    window: libc::c_ulong,
    irtt: libc::c_ushort,
}

fn ioctl<T>(fd: &OwnedFd, req: libc::c_ulong, arg: &mut T) -> io::Result<()> {
    // SAFETY: the request's argument is the valid, live struct `arg` points to.
    if unsafe { libc::ioctl(fd.as_raw_fd(), req, std::ptr::from_mut(arg)) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Configures eth0 if the guest has it and the host said how.
pub fn configure(spec: &str) -> io::Result<()> {
    if !std::path::Path::new("/sys/class/net/eth0").exists() {
        return Ok(());
    }
    let (addr, prefix, gateway) = parse(spec)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("cove.net={spec}")))?;
    // SAFETY: plain socket(2); the fd is owned right away.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `s` is a fresh fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(s) };
    let mut req = ifreq();
    req.ifr_ifru.ifru_addr = sockaddr(addr);
    ioctl(&sock, libc::SIOCSIFADDR, &mut req)?;
    let mask = Ipv4Addr::from(u32::MAX << (32 - u32::from(prefix)));
    let mut req = ifreq();
    req.ifr_ifru.ifru_netmask = sockaddr(mask);
    ioctl(&sock, libc::SIOCSIFNETMASK, &mut req)?;
    let mut req = ifreq();
    ioctl(&sock, libc::SIOCGIFFLAGS, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member.
    unsafe {
        req.ifr_ifru.ifru_flags |= libc::c_short::try_from(libc::IFF_UP).unwrap_or(1);
    }
    ioctl(&sock, libc::SIOCSIFFLAGS, &mut req)?;
    let mut dev = IFACE.to_vec();
    let mut route = RtEntry {
        pad1: 0,
        dst: sockaddr(Ipv4Addr::UNSPECIFIED),
        gateway: sockaddr(gateway),
        genmask: sockaddr(Ipv4Addr::UNSPECIFIED),
        flags: (libc::RTF_UP | libc::RTF_GATEWAY),
        pad2: 0,
        pad3: 0,
        pad4: std::ptr::null_mut(),
        metric: 0,
        dev: dev.as_mut_ptr().cast(),
        mtu: 0,
        window: 0,
        irtt: 0,
    };
    match ioctl(&sock, libc::SIOCADDRT, &mut route) {
        Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(e),
        _ => {}
    }
    write_resolv_conf(gateway)
}

/// Names the gateway as the resolver, replacing whatever the image had (a file or a link),
/// atomically.
fn write_resolv_conf(gateway: Ipv4Addr) -> io::Result<()> {
    if !std::path::Path::new("/etc").is_dir() {
        return Ok(());
    }
    let tmp = "/etc/.resolv.conf.cove";
    std::fs::write(
        tmp,
        format!("# Written by Cove: the sandbox's resolver.\nnameserver {gateway}\n"),
    )?;
    std::fs::rename(tmp, "/etc/resolv.conf")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_spec_parses() {
        assert_eq!(
            super::parse("169.254.127.2/30,169.254.127.1"),
            Some(([169, 254, 127, 2].into(), 30, [169, 254, 127, 1].into()))
        );
        assert_eq!(super::parse("169.254.127.2/33,1.1.1.1"), None);
        assert_eq!(super::parse("x"), None);
    }

    #[test]
    fn rtentry_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<super::RtEntry>(), 120);
    }
}
