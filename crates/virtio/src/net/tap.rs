//! The host side of virtio-net: a Linux tap interface, behind the small [`NetBackend`] trait so
//! that the device can be tested against an in-memory fake.
//!
//! The tap is opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`: every `read` returns one
//! Ethernet frame and every `write` takes one, each preceded by a virtio-net header of
//! [`VNET_HDR_LEN`] bytes (`TUNSETVNETHDRSZ`). The header is the virtio 1.x one, which always
//! carries `num_buffers` (12 bytes), so the device moves header and frame between the tap and
//! the guest without reshaping them. No offloads are enabled (`TUNSETOFFLOAD 0`), so the kernel
//! hands us only whole, checksummed, unsegmented frames.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::device::VNET_HDR_LEN;

/// The tun/tap clone device.
pub const TUN_PATH: &str = "/dev/net/tun";

/// `IFNAMSIZ`: interface names hold at most 15 bytes plus the terminating NUL.
const IFNAMSIZ: usize = 16;

/// A tap (Ethernet frames), no packet-information prefix, a virtio-net header on every packet.
// 0x0002 | 0x1000 | 0x4000 fits a c_short; the assertion proves it at compile time.
#[allow(clippy::cast_possible_truncation)]
const TAP_FLAGS: libc::c_short = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as _;
const _: () =
    assert!(TAP_FLAGS as libc::c_int == libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR);

/// `struct ifreq` as TUNSETIFF reads and writes it: the name, then `ifr_flags` at the start of
/// the 24-byte union.
#[repr(C)]
#[derive(Debug)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    _rest: [u8; 22],
}

const _: () = assert!(size_of::<IfReq>() == size_of::<libc::ifreq>());

/// What the device needs from the host end of the link: one packet per call, each a
/// [`VNET_HDR_LEN`]-byte virtio-net header followed by an Ethernet frame.
pub trait NetBackend: Send + std::fmt::Debug {
    /// Reads one packet into `buf`; `Err(WouldBlock)` when none waits. A packet longer than
    /// `buf` is truncated to it (tap semantics).
    fn read_packet(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Writes one packet whole; `Err(WouldBlock)` when the host cannot take it now.
    fn write_packet(&mut self, packet: &[u8]) -> io::Result<usize>;
}

/// Errors from opening a tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name is empty, too long, or holds a byte the kernel refuses.
    #[error("tap name {0:?} must be 1 to 15 bytes, without NUL, '/', ':' or whitespace")]
    InvalidName(String),
    /// `/dev/net/tun` could not be opened.
    #[error(
        "open {TUN_PATH} (is the tun module loaded, and does this process have CAP_NET_ADMIN?)"
    )]
    OpenTun(#[source] io::Error),
    /// TUNSETIFF failed: no permission, or an existing interface of that name is not a tap with
    /// the same flags (single queue, vnet header).
    #[error("create or attach tap {name}")]
    SetInterface {
        /// The interface.
        name: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// TUNSETVNETHDRSZ failed.
    #[error("set the virtio-net header size of tap {name}")]
    SetVnetHeaderSize {
        /// The interface.
        name: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// TUNSETOFFLOAD failed.
    #[error("turn off the offloads of tap {name}")]
    SetOffload {
        /// The interface.
        name: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// An open, non-blocking tap queue.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

/// Checks a name the way the kernel's `dev_valid_name` does, so the error says what is wrong.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == 0 || b == b'/' || b == b':' || b.is_ascii_whitespace())
}

impl Tap {
    /// Creates the tap `name`, or attaches to it if it exists (a persistent tap made with
    /// `ip tuntap add NAME mode tap vnet_hdr`). A tap this call creates is removed when the
    /// returned `Tap` is dropped.
    pub fn open(name: &str) -> Result<Self, TapError> {
        if !valid_name(name) {
            return Err(TapError::InvalidName(name.to_owned()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(TUN_PATH)
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            flags: TAP_FLAGS,
            _rest: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: `file` is an open tun fd; TUNSETIFF reads and writes a `struct ifreq`, and
        // `req` is one (same size, checked above) that lives across the call. The return value
        // is checked.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &raw mut req) } < 0 {
            return Err(TapError::SetInterface {
                name: name.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        let hdr_len = libc::c_int::try_from(VNET_HDR_LEN).unwrap_or(libc::c_int::MAX);
        // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer, which points to a live
        // local. The return value is checked.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &raw const hdr_len) } < 0 {
            return Err(TapError::SetVnetHeaderSize {
                name: name.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        // No offload flags: the kernel segments and checksums before handing us a frame.
        let offloads: libc::c_ulong = 0;
        // SAFETY: TUNSETOFFLOAD takes its flags by value and touches no memory of ours. The
        // return value is checked.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETOFFLOAD, offloads) } < 0 {
            return Err(TapError::SetOffload {
                name: name.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(Self {
            file,
            name: name.to_owned(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl NetBackend for Tap {
    fn read_packet(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }

    fn write_packet(&mut self, packet: &[u8]) -> io::Result<usize> {
        self.file.write(packet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_the_kernel_sees_them() {
        for bad in [
            "",
            "0123456789abcdef",
            "a/b",
            "a b",
            "a:0",
            ".",
            "..",
            "a\0b",
        ] {
            assert!(
                matches!(Tap::open(bad), Err(TapError::InvalidName(_))),
                "{bad:?}"
            );
        }
        assert!(valid_name("cvt123456789012"));
    }

    #[test]
    fn a_tap_is_created_with_a_vnet_header_and_removed_on_drop() {
        assert!(
            std::path::Path::new(TUN_PATH).exists(),
            "{TUN_PATH} is missing: load the tun module (modprobe tun) to run the net tests"
        );
        let name = format!("cvu{}", std::process::id());
        let tap = Tap::open(&name).unwrap_or_else(|e| panic!("open tap {name}: {e:?}"));
        assert_eq!(tap.name(), name);
        let mut sz: libc::c_int = 0;
        // SAFETY: TUNGETVNETHDRSZ writes one `int` to a live local; the result is checked.
        let rc = unsafe { libc::ioctl(tap.as_raw_fd(), libc::TUNGETVNETHDRSZ, &raw mut sz) };
        assert_eq!(rc, 0);
        assert_eq!(usize::try_from(sz).ok(), Some(VNET_HDR_LEN));
        // Nothing waits on a new tap: a non-blocking read says so.
        let mut t = tap;
        let mut buf = [0u8; 64];
        let e = t.read_packet(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        let sys = format!("/sys/class/net/{name}");
        assert!(std::path::Path::new(&sys).exists());
        drop(t);
        assert!(!std::path::Path::new(&sys).exists(), "closing removes it");
    }
}
