//! virtio-net over a real tap: a guest program's frame comes out of the tap, and a frame sent
//! into the tap reaches the guest (through the I/O thread). Needs root and /dev/net/tun; fails
//! loudly without them.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use cove_virtio::net::NetConfig;
use cove_vmm::virtio::DeviceSpec;
use cove_vmm::{KernelConfig, VmExit};

use common::{GUEST_TIMEOUT, Probe, guest, new_vm};

const ETHERTYPE: u16 = 0x88b5;
const MAC: [u8; 6] = [0x02, 0xc0, 0x7e, 0, 0, 1];

/// An AF_PACKET socket on the interface `name`: what the kernel sees of the tap.
fn packet_socket(name: &str) -> OwnedFd {
    let proto = u16::try_from(libc::ETH_P_ALL).unwrap().to_be();
    // SAFETY: plain socket(2); the result is checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    assert!(
        fd >= 0,
        "AF_PACKET socket (root needed): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` is a new descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let cname = std::ffi::CString::new(name).unwrap();
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    assert!(index > 0, "no interface {name}");
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = u16::try_from(libc::AF_PACKET).unwrap();
    addr.sll_protocol = proto;
    addr.sll_ifindex = i32::try_from(index).unwrap();
    // SAFETY: `addr` is a valid sockaddr_ll of the size given.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::from_ref(&addr).cast(),
            u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap(),
        )
    };
    assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
    let tv = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: a timeval of the size given.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::from_ref(&tv).cast(),
            u32::try_from(std::mem::size_of::<libc::timeval>()).unwrap(),
        );
    }
    fd
}

fn recv(fd: &OwnedFd) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 2048];
    // SAFETY: `buf` is writable for its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    let n = usize::try_from(n).ok()?;
    buf.truncate(n);
    Some(buf)
}

fn send(fd: &OwnedFd, frame: &[u8]) {
    // SAFETY: `frame` is readable for its length.
    let n = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    assert_eq!(
        usize::try_from(n).ok(),
        Some(frame.len()),
        "send: {}",
        std::io::Error::last_os_error()
    );
}

#[test]
fn a_guest_sends_and_receives_ethernet_frames_through_a_tap() {
    assert!(
        std::path::Path::new("/dev/net/tun").exists(),
        "/dev/net/tun is missing: the virtio-net tests need it (and root)"
    );
    let tap = format!("cvk{}", std::process::id() % 100_000);
    let mut vm = new_vm(1, 64 << 20);
    vm.add_virtio(
        "net",
        DeviceSpec::Net(NetConfig {
            tap: tap.clone(),
            mac: MAC,
        }),
    )
    .unwrap();
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{tap}/disable_ipv6"), "1");
    let up = std::process::Command::new("ip")
        .args(["link", "set", &tap, "up"])
        .status()
        .unwrap();
    assert!(up.success(), "ip link set {tap} up");
    let sock = packet_socket(&tap);
    let probe = Probe::attach(&vm);
    vm.add_i8042().unwrap();
    let info = vm
        .load_kernel(&KernelConfig {
            kernel: guest("virtio_net"),
            initramfs: None,
            cmdline: vm.virtio_cmdline(),
        })
        .unwrap();
    vm.start(info.entry).unwrap();

    // The guest's frame, as the host kernel receives it from the tap.
    let deadline = Instant::now() + Duration::from_secs(20);
    let sent = loop {
        assert!(
            Instant::now() < deadline,
            "the guest's frame never came out of the tap"
        );
        if let Some(f) = recv(&sock)
            && f.len() >= 14
            && f[12..14] == ETHERTYPE.to_be_bytes()
        {
            break f;
        }
    };
    assert_eq!(&sent[0..6], &[0xff; 6]);
    assert_eq!(&sent[6..12], &MAC, "from the MAC the device gave the guest");
    assert_eq!(&sent[14..25], b"cove-net-tx");

    // A frame into the tap, for the guest.
    let mut frame = Vec::new();
    frame.extend_from_slice(&MAC);
    frame.extend_from_slice(&[0x02, 0xc0, 0x7e, 0, 0, 2]);
    frame.extend_from_slice(&ETHERTYPE.to_be_bytes());
    frame.extend_from_slice(b"cove-rx!");
    frame.resize(60, 0);
    send(&sock, &frame);
    assert_eq!(
        vm.wait_for_exit(GUEST_TIMEOUT).unwrap(),
        Some(VmExit::Reset),
        "reported {:x?}",
        probe.values()
    );
    let v = probe.values();
    let mac = {
        let mut b = [0u8; 8];
        b[..6].copy_from_slice(&MAC);
        u64::from_le_bytes(b)
    };
    assert_eq!(
        v,
        [mac, 1, 12 + 60, u64::from_le_bytes(*b"cove-rx!")],
        "MAC, sent, received length (header + frame), payload"
    );
    vm.stop().unwrap();
}
