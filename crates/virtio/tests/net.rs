//! virtio-net through the MMIO transport, driven as Linux's virtio_net driver would, against a
//! real tap (frames observed and injected with an AF_PACKET socket on the tap interface) and,
//! where the host side must misbehave on demand, against the in-memory `FakeBackend`.
//!
//! The real-tap tests need root (CAP_NET_ADMIN) and `/dev/net/tun`; without them they fail with
//! a message that says so rather than skip. Each test makes its own tap, named
//! `cvt<pid><n>`, which disappears when the device (its only fd) is dropped.

#![allow(clippy::cast_possible_truncation)] // test patterns truncate on purpose

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use cove_virtio::net::*;
use cove_virtio::testing::*;
use cove_virtio::{Interrupt, MmioTransport, VirtioDevice};
use vm_memory::{Bytes, GuestAddress};

/// Locally administered unicast addresses for the guest and for the host side of the link.
const GUEST_MAC: [u8; 6] = [0x02, 0xc0, 0x7e, 0x00, 0x00, 0x01];
const HOST_MAC: [u8; 6] = [0x02, 0xc0, 0x7e, 0x00, 0x00, 0xfe];
/// IEEE 802 local experimental EtherType: nothing else on a fresh interface uses it.
const ETHERTYPE: u16 = 0x88b5;
const RX: usize = RX_QUEUE;
const TX: usize = TX_QUEUE;

// ---------------------------------------------------------------------------------------------
// The guest side.

struct Guest<B: NetBackend> {
    mem: vm_memory::GuestMemoryMmap<()>,
    t: MmioTransport<Net<B>>,
    qs: Vec<GuestQueue>,
    alloc: BufAlloc,
    rx_bufs: HashMap<u16, u64>,
    line: CountingLine,
}

impl<B: NetBackend> Guest<B> {
    fn new(dev: Net<B>) -> Self {
        let mem = guest_memory();
        let (t, line) = transport(dev, &mem);
        Self::with(mem, t, line)
    }

    fn with(
        mem: vm_memory::GuestMemoryMmap<()>,
        mut t: MmioTransport<Net<B>>,
        line: CountingLine,
    ) -> Self {
        let qs = init(&mut t, &[64, 64]);
        Self {
            mem,
            t,
            qs,
            alloc: BufAlloc::default(),
            rx_bufs: HashMap::new(),
            line,
        }
    }

    fn dev(&mut self) -> &mut Net<B> {
        self.t.device_mut()
    }

    /// Posts a device-writable rx buffer of `len` bytes, as `add_recvbuf_small` does.
    fn give_rx(&mut self, len: u32) {
        let a = self.alloc.alloc(u64::from(len));
        let head = self.qs[RX].add_chain(&self.mem, &[(a, len, true)]);
        self.rx_bufs.insert(head, a);
    }

    /// Queues `packet` on the tx queue, split into buffers of the given sizes (the last takes
    /// the rest), without notifying.
    fn queue_tx(&mut self, packet: &[u8], split: &[usize]) {
        let mut bufs = Vec::new();
        let mut rest = packet;
        for &n in split.iter().chain(std::iter::once(&usize::MAX)) {
            let n = n.min(rest.len());
            let a = self.alloc.alloc(n as u64);
            self.mem.write_slice(&rest[..n], GuestAddress(a)).unwrap();
            bufs.push((a, n as u32, false));
            rest = &rest[n..];
            if rest.is_empty() {
                break;
            }
        }
        self.qs[TX].add_chain(&self.mem, &bufs);
    }

    /// Sends `packet` as Linux does with VERSION_1: header and frame in separate buffers.
    fn send(&mut self, packet: &[u8]) {
        self.queue_tx(packet, &[VNET_HDR_LEN]);
        notify(&mut self.t, TX as u32);
    }

    /// The rx buffers the device returned since the last call, cut to their used length.
    fn take_rx(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some((head, len)) = self.qs[RX].pop_used(&self.mem) {
            let a = self.rx_bufs[&(head as u16)];
            let mut b = vec![0u8; len as usize];
            self.mem.read_slice(&mut b, GuestAddress(a)).unwrap();
            out.push(b);
        }
        out
    }
}

/// An Ethernet frame of our EtherType carrying `payload`.
fn frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend(src);
    f.extend(ETHERTYPE.to_be_bytes());
    f.extend(payload);
    f
}

/// A packet as the guest sends it: a zero header (no offloads), then the frame.
fn packet(frame: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; VNET_HDR_LEN];
    p.extend(frame);
    p
}

/// The header a driver without offloads expects on every rx packet: zeros, num_buffers = 1.
fn rx_header() -> [u8; VNET_HDR_LEN] {
    let mut h = [0u8; VNET_HDR_LEN];
    h[10] = 1;
    h
}

fn is_ours(frame: &[u8]) -> bool {
    frame.len() >= ETH_HDR_LEN && frame[12..14] == ETHERTYPE.to_be_bytes()
}

// ---------------------------------------------------------------------------------------------
// The host side of a real tap.

static TAPS: AtomicU32 = AtomicU32::new(0);

fn tap_name() -> String {
    format!(
        "cvt{}{}",
        std::process::id() % 1_000_000,
        TAPS.fetch_add(1, Ordering::SeqCst)
    )
}

/// A device on a fresh tap named `name`, brought up (IPv6 off, so the kernel stays quiet).
fn net_on_tap(name: &str) -> Net<Tap> {
    assert!(
        std::path::Path::new(TUN_PATH).exists(),
        "{TUN_PATH} is missing: the net tests need the tun module (modprobe tun) and root"
    );
    let config = NetConfig {
        tap: name.to_owned(),
        mac: GUEST_MAC,
    };
    let dev = Net::new(&config)
        .unwrap_or_else(|e| panic!("create tap {name} (the net tests need root): {e:?}"));
    link_up(name);
    dev
}

fn link_up(name: &str) {
    // Best effort: without IPv6 the kernel sends no router solicitations or MLD reports on the
    // new link. The tests filter on their EtherType anyway.
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    let st = std::process::Command::new("ip")
        .args(["link", "set", name, "up"])
        .status()
        .expect("run `ip link set up` (iproute2 is needed by the net tests)");
    assert!(st.success(), "ip link set {name} up: {st}");
}

fn eth_p_all() -> u16 {
    (libc::ETH_P_ALL as u16).to_be()
}

/// An AF_PACKET socket bound to interface `name`: sees every frame on it, and sends frames out
/// of it (which the tap fd then reads).
struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    fn open(name: &str) -> Self {
        let cname = std::ffi::CString::new(name).unwrap();
        // SAFETY: `cname` is a valid NUL-terminated string for the duration of the call.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        assert_ne!(ifindex, 0, "no interface {name}");
        let ifindex = i32::try_from(ifindex).unwrap();
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                i32::from(eth_p_all()),
            )
        };
        assert!(raw >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
        // SAFETY: `raw` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let addr = sockaddr_ll(ifindex);
        // SAFETY: `addr` is a valid sockaddr_ll and the length passed is its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "bind to {name}: {}", io::Error::last_os_error());
        Self { fd, ifindex }
    }

    /// Sends `frame` out of the interface: the tap fd reads it.
    fn send(&self, frame: &[u8]) {
        let addr = sockaddr_ll(self.ifindex);
        // SAFETY: `frame` and `addr` are valid for the lengths passed.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(
            usize::try_from(n).ok(),
            Some(frame.len()),
            "send on the packet socket: {}",
            io::Error::last_os_error()
        );
    }

    /// The next frame of our EtherType that arrived on the interface (not one we sent).
    fn recv_ours(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 70_000];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !wait_readable(self.fd.as_raw_fd(), left) {
                return None;
            }
            // SAFETY: an all-zero sockaddr_ll is valid; recvfrom fills it.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: `buf`, `from` and `len` are valid for writes of the sizes passed.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&raw mut from).cast(),
                    &raw mut len,
                )
            };
            let Ok(n) = usize::try_from(n) else {
                continue; // EAGAIN after a spurious wakeup
            };
            if from.sll_pkttype != libc::PACKET_OUTGOING && is_ours(&buf[..n]) {
                return Some(buf[..n].to_vec());
            }
        }
    }
}

fn sockaddr_ll(ifindex: i32) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut a: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    a.sll_family = libc::AF_PACKET as u16;
    a.sll_protocol = eth_p_all();
    a.sll_ifindex = ifindex;
    a.sll_halen = 6;
    a
}

/// Waits until `fd` is readable, at most `timeout`.
fn wait_readable(fd: RawFd, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd, count 1.
    unsafe { libc::poll(&raw mut p, 1, ms) > 0 }
}

/// Feeds the device from the tap until the guest received a frame of ours; returns it.
fn receive_ours(g: &mut Guest<Tap>, sock_frame: &[u8]) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            Instant::now() < deadline,
            "the frame never reached the guest"
        );
        let fd = g.dev().tap_fd();
        if g.dev().wants_tap_input() && wait_readable(fd, Duration::from_millis(100)) {
            g.dev().process_tap_input().unwrap();
        }
        for p in g.take_rx() {
            g.give_rx(2048);
            if is_ours(&p[VNET_HDR_LEN..]) {
                assert_eq!(&p[VNET_HDR_LEN..], sock_frame);
                return p;
            }
        }
        notify(&mut g.t, RX as u32);
    }
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn net_features_and_mac_in_config() {
    let mut g = Guest::new(net_on_tap(&tap_name()));
    assert_eq!(read32(&mut g.t, 0x08), 1, "device type net");
    for q in 0..2 {
        write32(&mut g.t, 0x30, q);
        assert_eq!(read32(&mut g.t, 0x34), u32::from(QUEUE_SIZE));
    }
    write32(&mut g.t, 0x30, 2);
    assert_eq!(read32(&mut g.t, 0x34), 0, "no control queue");
    // VERSION_1 (32) and MAC (5), nothing else.
    assert_eq!(
        g.t.device().avail_features(),
        (1 << 32) | (1 << 5),
        "no offloads, no mergeable buffers, no status, no control queue"
    );
    assert_eq!(g.t.device().acked_features(), (1 << 32) | (1 << 5));
    let mut mac = [0u8; 6];
    for (i, b) in mac.iter_mut().enumerate() {
        let mut x = [0u8; 1];
        cove_devices::BusDevice::read(&mut g.t, 0x100 + i as u64, &mut x);
        *b = x[0];
    }
    assert_eq!(mac, GUEST_MAC);
    assert_eq!(read32(&mut g.t, 0x100 + 6) & 0xffff, 0, "no status field");
    // The MAC is read-only.
    write32(&mut g.t, 0x100, 0xffff_ffff);
    assert_eq!(
        read32(&mut g.t, 0x100),
        u32::from_le_bytes([2, 0xc0, 0x7e, 0])
    );
    // A driver without VERSION_1 is refused by the transport.
    assert!(!negotiate(&mut g.t, |f| f & !(1 << 32)));
    // Bad configurations are refused up front.
    let bad = NetConfig {
        tap: "cvt/bad".into(),
        mac: GUEST_MAC,
    };
    assert!(matches!(
        Net::new(&bad),
        Err(NetError::Tap(TapError::InvalidName(_)))
    ));
    let multicast = NetConfig {
        tap: tap_name(),
        mac: [0x03, 0, 0, 0, 0, 1],
    };
    assert!(matches!(Net::new(&multicast), Err(NetError::InvalidMac(_))));
}

#[test]
fn net_tx_frame_appears_on_the_tap() {
    let name = tap_name();
    let mut g = Guest::new(net_on_tap(&name));
    let sock = PacketSocket::open(&name);
    let f = frame(
        HOST_MAC,
        GUEST_MAC,
        b"hello from the guest, padded to 60 bytes...",
    );
    let irqs = g.line.count();
    g.send(&packet(&f));
    assert_eq!(
        g.qs[TX].pop_used(&g.mem),
        Some((0, 0)),
        "returned, nothing written"
    );
    assert!(g.line.count() > irqs, "used-ring interrupt");
    let got = sock
        .recv_ours(Duration::from_secs(5))
        .expect("the frame came out of the tap");
    assert_eq!(got, f);
    // A bigger frame in one buffer (header pushed in front, as with `can_push`), then another
    // split oddly across three buffers.
    let big = frame(HOST_MAC, GUEST_MAC, &[0x5a; 1400]);
    g.queue_tx(&packet(&big), &[]);
    let odd = frame(HOST_MAC, GUEST_MAC, &[0xa5; 300]);
    g.queue_tx(&packet(&odd), &[5, 20]);
    notify(&mut g.t, TX as u32);
    assert_eq!(sock.recv_ours(Duration::from_secs(5)).unwrap(), big);
    assert_eq!(sock.recv_ours(Duration::from_secs(5)).unwrap(), odd);
    let c = g.dev().counters();
    assert_eq!((c.tx_frames, c.tx_dropped, c.tx_invalid), (3, 0, 0));
    assert_eq!(c.tx_bytes, (f.len() + big.len() + odd.len()) as u64);
    assert!(!g.dev().wants_tap_output());
}

#[test]
fn net_rx_frame_from_the_tap_lands_in_the_guest_buffer() {
    let name = tap_name();
    let mut g = Guest::new(net_on_tap(&name));
    let sock = PacketSocket::open(&name);
    for _ in 0..8 {
        g.give_rx(1530); // hdr_len + GOOD_PACKET_LEN, as Linux posts without mergeable buffers
    }
    notify(&mut g.t, RX as u32);
    assert!(g.dev().wants_tap_input());
    let f = frame(GUEST_MAC, HOST_MAC, &[0x42; 1500]);
    let irqs = g.line.count();
    sock.send(&f);
    let p = receive_ours(&mut g, &f);
    assert_eq!(
        p.len(),
        VNET_HDR_LEN + f.len(),
        "used length is header + frame"
    );
    assert_eq!(p[..VNET_HDR_LEN], rx_header());
    assert!(g.line.count() > irqs, "used-ring interrupt");
    let c = g.dev().counters();
    assert!(c.rx_frames >= 1 && c.rx_bytes >= f.len() as u64);
    assert_eq!(c.rx_dropped, 0);
}

#[test]
fn net_rx_frame_waits_for_buffers_then_is_delivered() {
    let name = tap_name();
    let mut g = Guest::new(net_on_tap(&name));
    let sock = PacketSocket::open(&name);
    // The guest has posted no buffer yet.
    let f = frame(
        GUEST_MAC,
        HOST_MAC,
        b"early frame, before any rx buffer....................",
    );
    sock.send(&f);
    let fd = g.dev().tap_fd();
    assert!(
        wait_readable(fd, Duration::from_secs(5)),
        "the tap has the frame"
    );
    g.dev().process_tap_input().unwrap();
    assert!(g.dev().rx_pending(), "one frame waits in the device");
    assert!(
        !g.dev().wants_tap_input(),
        "and the tap is not polled meanwhile"
    );
    assert!(g.take_rx().is_empty());
    // Buffers come: the waiting frame goes first, on the guest's notification alone.
    g.give_rx(1530);
    notify(&mut g.t, RX as u32);
    let p = receive_ours(&mut g, &f);
    assert_eq!(p[..VNET_HDR_LEN], rx_header());
    assert!(!g.dev().rx_pending());
}

#[test]
fn net_rx_buffer_too_small_drops_the_frame_and_counts_it() {
    let link = FakeBackend::new();
    let mut g = Guest::new(Net::with_backend(link.clone(), GUEST_MAC).unwrap());
    g.give_rx(64);
    link.inject(packet(&frame(GUEST_MAC, HOST_MAC, &[1; 100])));
    g.dev().process_tap_input().unwrap();
    assert_eq!(g.take_rx(), vec![Vec::<u8>::new()], "buffer returned empty");
    assert_eq!(g.dev().counters().rx_dropped, 1);
    assert!(!g.dev().rx_pending(), "the frame is gone, not stuck");
    // A chain with a device-readable buffer, or one outside memory, is returned empty and the
    // frame waits for a proper buffer.
    let f = frame(GUEST_MAC, HOST_MAC, &[2; 100]);
    link.inject(packet(&f));
    let a = g.alloc.alloc(2048);
    let head = g.qs[RX].add_chain(&g.mem, &[(a, 16, false), (a + 16, 2000, true)]);
    g.rx_bufs.insert(head, a);
    let head = g.qs[RX].add_chain(&g.mem, &[(MEM_SIZE - 8, 2048, true)]);
    g.rx_bufs.insert(head, 0);
    g.give_rx(2048);
    notify(&mut g.t, RX as u32);
    let got = g.take_rx();
    assert_eq!(got.len(), 3);
    assert!(got[0].is_empty() && got[1].is_empty());
    assert_eq!(got[2], [rx_header().as_slice(), &f].concat());
    assert_eq!(g.dev().counters().rx_dropped, 1);
    assert_eq!(g.dev().counters().rx_frames, 1);
}

#[test]
fn net_hostile_tx_chains_are_returned_unsent() {
    let link = FakeBackend::new();
    let mut g = Guest::new(Net::with_backend(link.clone(), GUEST_MAC).unwrap());
    let good = packet(&frame(HOST_MAC, GUEST_MAC, &[7; 50]));
    // Header only; header and a 13-byte runt; one byte over the cap; a writable buffer.
    g.queue_tx(&[0u8; VNET_HDR_LEN], &[]);
    g.queue_tx(&[0u8; VNET_HDR_LEN + ETH_HDR_LEN - 1], &[]);
    let a = g.alloc.alloc(MAX_PACKET_LEN as u64 + 1);
    g.qs[TX].add_chain(&g.mem, &[(a, MAX_PACKET_LEN as u32 + 1, false)]);
    let a = g.alloc.alloc(good.len() as u64 + 64);
    g.mem.write_slice(&good, GuestAddress(a)).unwrap();
    g.qs[TX].add_chain(
        &g.mem,
        &[
            (a, good.len() as u32, false),
            (a + good.len() as u64, 64, true),
        ],
    );
    // A buffer past the end of memory, and a descriptor cycle.
    g.qs[TX].add_chain(&g.mem, &[(MEM_SIZE - 4, 100, false)]);
    g.qs[TX].write_desc(&g.mem, 40, a, 8, F_NEXT, 41);
    g.qs[TX].write_desc(&g.mem, 41, a, 8, F_NEXT, 40);
    g.qs[TX].push_avail(&g.mem, 40);
    // The largest valid packet still goes, and so does a normal one after it all.
    let max = packet(&frame(
        HOST_MAC,
        GUEST_MAC,
        &vec![9; MAX_FRAME_LEN - ETH_HDR_LEN],
    ));
    assert_eq!(max.len(), MAX_PACKET_LEN);
    g.queue_tx(&max, &[]);
    g.queue_tx(&good, &[VNET_HDR_LEN]);
    notify(&mut g.t, TX as u32);
    let mut used = Vec::new();
    while let Some((_, len)) = g.qs[TX].pop_used(&g.mem) {
        used.push(len);
    }
    assert_eq!(
        used, [0; 8],
        "every chain returned, nothing written to the guest"
    );
    assert_eq!(link.take_written(), vec![max, good]);
    let c = g.dev().counters();
    assert_eq!((c.tx_invalid, c.tx_frames, c.tx_dropped), (6, 2, 0));
}

#[test]
fn net_tx_backpressure_through_the_transport() {
    let link = FakeBackend::new();
    let mut g = Guest::new(Net::with_backend(link.clone(), GUEST_MAC).unwrap());
    link.set_write_error(Some(io::ErrorKind::WouldBlock));
    let frames: Vec<Vec<u8>> = (0..20u8)
        .map(|i| packet(&frame(HOST_MAC, GUEST_MAC, &[i; 60])))
        .collect();
    for p in &frames {
        g.send(p);
    }
    assert_eq!(g.qs[TX].used_idx(&g.mem), 1, "the guest's ring stays full");
    assert!(g.dev().wants_tap_output());
    link.set_write_error(None);
    g.dev().process_tap_output();
    assert_eq!(link.take_written(), frames, "all of them, in order");
    assert_eq!(g.qs[TX].used_idx(&g.mem), 20);
    assert!(!g.dev().wants_tap_output());
}

#[test]
fn net_reset_keeps_the_link_and_the_driver_starts_over() {
    let name = tap_name();
    let mut g = Guest::new(net_on_tap(&name));
    let sock = PacketSocket::open(&name);
    g.send(&packet(&frame(HOST_MAC, GUEST_MAC, &[1; 60])));
    assert!(sock.recv_ours(Duration::from_secs(5)).is_some());
    write32(&mut g.t, 0x70, 0);
    assert_eq!(read32(&mut g.t, 0x70), 0);
    assert!(!g.t.device().is_activated());
    assert!(!g.t.device().wants_tap_input(), "no driver, no reading");
    for q in 0..2 {
        write32(&mut g.t, 0x30, q);
        assert_eq!(read32(&mut g.t, 0x44), 0, "queue {q} not ready after reset");
    }
    // Linux probes again; traffic flows both ways on the same tap.
    let (mem, line) = (g.mem.clone(), g.line.clone());
    let mut g = Guest::with(mem, g.t, line);
    let f = frame(HOST_MAC, GUEST_MAC, &[2; 60]);
    g.send(&packet(&f));
    assert_eq!(sock.recv_ours(Duration::from_secs(5)).unwrap(), f);
    g.give_rx(1530);
    notify(&mut g.t, RX as u32);
    let f = frame(GUEST_MAC, HOST_MAC, &[3; 60]);
    sock.send(&f);
    receive_ours(&mut g, &f);
}

#[test]
fn net_save_restore_with_frames_in_flight() {
    let link = FakeBackend::new();
    let mut g = Guest::new(Net::with_backend(link.clone(), GUEST_MAC).unwrap());
    // Host → guest: a frame waits for a buffer. Guest → host: one frame waits for the tap and
    // another chain waits in the ring; a third was queued but not notified.
    let to_guest = packet(&frame(GUEST_MAC, HOST_MAC, &[1; 80]));
    link.inject(to_guest.clone());
    g.dev().process_tap_input().unwrap();
    assert!(g.dev().rx_pending());
    link.set_write_error(Some(io::ErrorKind::WouldBlock));
    let out: Vec<Vec<u8>> = (0..3u8)
        .map(|i| packet(&frame(HOST_MAC, GUEST_MAC, &[i; 70])))
        .collect();
    g.send(&out[0]);
    g.send(&out[1]);
    g.queue_tx(&out[2], &[VNET_HDR_LEN]);
    g.give_rx(1530); // posted, not notified

    let json = serde_json::to_string(&(g.t.device().save(), g.t.save())).unwrap();
    let (ns, ms): (NetState, cove_virtio::persist::MmioState) =
        serde_json::from_str(&json).unwrap();
    // Saved as it will be delivered: the header already rewritten for the driver.
    let delivered = [rx_header().as_slice(), &to_guest[VNET_HDR_LEN..]].concat();
    assert_eq!(ns.rx_pending, delivered);
    assert_eq!(ns.tx_pending, out[0]);
    assert_eq!(ns.mac, GUEST_MAC);
    drop(g.t);

    // The new process: a new link, the same MAC.
    let link = FakeBackend::new();
    let line = CountingLine::default();
    let irq = Arc::new(Interrupt::new(Box::new(line.clone())));
    let dev = Net::restore_with_backend(link.clone(), GUEST_MAC, &ns, g.mem.clone(), irq.clone())
        .unwrap();
    assert!(dev.wants_tap_output() && dev.rx_pending());
    g.t = MmioTransport::restore(dev, g.mem.clone(), irq, &ms).unwrap();
    g.t.kick_all();
    assert_eq!(
        link.take_written(),
        out,
        "tx continues in order, nothing lost"
    );
    let got = g.take_rx();
    assert_eq!(got, vec![delivered]);
    assert_eq!(g.qs[TX].used_idx(&g.mem), 3);
    assert!(line.count() >= 1);
    // And the link keeps working both ways.
    let more = packet(&frame(GUEST_MAC, HOST_MAC, &[5; 64]));
    link.inject(more.clone());
    g.give_rx(1530);
    notify(&mut g.t, RX as u32);
    assert_eq!(g.take_rx().len(), 1);
}

#[test]
fn net_restore_reopens_the_tap_by_name() {
    let name = tap_name();
    let mut g = Guest::new(net_on_tap(&name));
    g.give_rx(1530);
    notify(&mut g.t, RX as u32);
    let (ns, ms) = (g.t.device().save(), g.t.save());
    // The old process goes away, and its tap with it.
    drop(g.t);
    assert!(!std::path::Path::new(&format!("/sys/class/net/{name}")).exists());
    let config = NetConfig {
        tap: name.clone(),
        mac: GUEST_MAC,
    };
    let line = CountingLine::default();
    let irq = Arc::new(Interrupt::new(Box::new(line.clone())));
    let dev = Net::restore(&config, &ns, g.mem.clone(), irq.clone()).unwrap();
    link_up(&name);
    g.t = MmioTransport::restore(dev, g.mem.clone(), irq, &ms).unwrap();
    g.t.kick_all();
    let sock = PacketSocket::open(&name);
    let f = frame(GUEST_MAC, HOST_MAC, &[6; 60]);
    sock.send(&f);
    // The buffer posted before the snapshot receives it.
    receive_ours(&mut g, &f);
    let f = frame(HOST_MAC, GUEST_MAC, &[7; 60]);
    g.send(&packet(&f));
    assert_eq!(sock.recv_ours(Duration::from_secs(5)).unwrap(), f);
}

#[test]
fn net_restore_refuses_mismatches() {
    let mem = guest_memory();
    let irq = || Arc::new(Interrupt::new(Box::new(CountingLine::default())));
    let mut g = Guest::new(Net::with_backend(FakeBackend::new(), GUEST_MAC).unwrap());
    let good = g.dev().save();
    let restore = |s: &NetState, mac| {
        Net::restore_with_backend(FakeBackend::new(), mac, s, mem.clone(), irq())
    };
    assert!(restore(&good, GUEST_MAC).is_ok());
    assert!(matches!(
        restore(&good, HOST_MAC),
        Err(NetPersistError::Mismatch("mac"))
    ));
    let config = NetConfig {
        tap: tap_name(),
        mac: HOST_MAC,
    };
    assert!(matches!(
        Net::restore(&config, &good, mem.clone(), irq()),
        Err(NetPersistError::Mismatch("mac"))
    ));
    let mut bad = good.clone();
    bad.virtio.acked_features |= 1 << 15; // MRG_RXBUF: never offered
    assert!(matches!(
        restore(&bad, GUEST_MAC),
        Err(NetPersistError::Virtio(_))
    ));
    for pending in [vec![0u8; 3], vec![0u8; MAX_PACKET_LEN + 1]] {
        let mut bad = good.clone();
        bad.rx_pending = pending.clone();
        assert!(restore(&bad, GUEST_MAC).is_err());
        let mut bad = good.clone();
        bad.tx_pending = pending;
        assert!(restore(&bad, GUEST_MAC).is_err());
    }
    let mut bad = good.clone();
    bad.virtio.queues.pop();
    assert!(restore(&bad, GUEST_MAC).is_err());
}
