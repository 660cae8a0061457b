//! The engine's tap device, made persistent and owned by the jail's user, so the jailed VMM
//! attaches to it (`TUNSETIFF` on a tap it owns) without `CAP_NET_ADMIN`. Written here: the
//! four ioctls are all there is to it, and no maintained crate makes a persistent, owned tap.

use std::os::fd::AsRawFd;

use crate::{NetError, step};

// _IOW('T', n, int)
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNSETOWNER: libc::c_ulong = 0x4004_54cc;
const TUNSETGROUP: libc::c_ulong = 0x4004_54ce;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn ioctl(
    fd: &std::fs::File,
    req: libc::c_ulong,
    arg: libc::c_ulong,
    what: &str,
) -> Result<(), NetError> {
    // SAFETY: a tun ioctl on an open /dev/net/tun descriptor; `arg` is a value (or, for
    // TUNSETIFF, a pointer to an IfReq that outlives the call).
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) };
    if r < 0 {
        return Err(step(what)(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Makes tap `name` in the calling thread's namespace, persistent, owned by `owner`.
pub(crate) fn create(name: &str, owner: Option<(u32, u32)>) -> Result<(), NetError> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(step("opening /dev/net/tun"))?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    ioctl(
        &f,
        TUNSETIFF,
        &raw mut req as libc::c_ulong,
        "making the tap",
    )?;
    if let Some((uid, gid)) = owner {
        ioctl(
            &f,
            TUNSETOWNER,
            libc::c_ulong::from(uid),
            "giving the tap to the jail's user",
        )?;
        ioctl(
            &f,
            TUNSETGROUP,
            libc::c_ulong::from(gid),
            "giving the tap to the jail's group",
        )?;
    }
    ioctl(&f, TUNSETPERSIST, 1, "making the tap persistent")
}
