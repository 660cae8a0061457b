//! The network device: configuration, features, and the two queue loops.
//!
//! Every packet, both ways, is a [`VNET_HDR_LEN`]-byte virtio-net header followed by an Ethernet
//! frame: the layout of a guest buffer and of a tap `read`/`write` alike, so a packet is copied
//! once between guest memory and a scratch buffer and handed over in one system call.
//!
//! Backpressure, both ways, without dropping a frame the other side could still take:
//! - guest → host: a frame the tap refuses with `EAGAIN` stays in the device (at most one); while
//!   it waits no tx chain is taken, so the guest's ring fills and its driver stops the queue.
//! - host → guest: a frame read from the tap waits in the device (at most one) until the guest
//!   posts an rx buffer; while it waits the tap is not read, so the kernel queues (and, past the
//!   tap's `txqueuelen`, drops) what follows, as a real NIC does.
//!
//! A frame that cannot be delivered at all (the guest's rx buffer is too small, the tap fails
//! with a hard error, a malformed tx chain) is dropped and counted in [`NetCounters`].

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_MAC, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE,
};
use virtio_queue::Queue;

use super::tap::{NetBackend, Tap, TapError};
use crate::device::{ActivateError, ActiveQueues, Interrupt, VirtioDevice, read_config_bytes};
use crate::queue::{self, ParsedChain};
use crate::{GuestMemoryMmap, device_type, features};

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// The receive queue (host → guest).
pub const RX_QUEUE: usize = 0;
/// The transmit queue (guest → host).
pub const TX_QUEUE: usize = 1;
const NUM_QUEUES: usize = 2;

/// Length of the virtio-net header in front of every frame: `struct virtio_net_hdr_v1` (flags,
/// gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers). With VIRTIO_F_VERSION_1 a
/// driver uses this size whether or not mergeable rx buffers are negotiated; the tap is set to
/// the same size, so header and frame travel unchanged in layout.
pub const VNET_HDR_LEN: usize = 12;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS_OFFSET: usize = 10;
/// An Ethernet header: a frame shorter than this is not a frame.
pub const ETH_HDR_LEN: usize = 14;
/// Largest frame either way: a 64 KiB payload plus an Ethernet header. Without GSO a frame is at
/// most the MTU plus its link header; this cap only bounds what a hostile guest (or a tap with a
/// huge MTU) can make the device copy.
pub const MAX_FRAME_LEN: usize = 65_550;
/// Largest packet (header + frame): 65 562 bytes.
pub const MAX_PACKET_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;

/// How the VMM describes a network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The tap to create or attach to (at most 15 bytes).
    pub tap: String,
    /// The guest's MAC address (unicast; a locally administered one, `x2:..`, for a sandbox).
    pub mac: [u8; 6],
}

/// Errors from building or running a network device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The tap could not be opened.
    #[error("open the tap")]
    Tap(#[from] TapError),
    /// The MAC address is zero or multicast.
    #[error("MAC address {0:02x?} must be a non-zero unicast address")]
    InvalidMac([u8; 6]),
    /// Reading the tap failed with something other than "nothing to read" (the interface was
    /// deleted, say). The VMM should stop polling the tap.
    #[error("read from the tap")]
    ReadTap(#[source] io::Error),
}

/// Frame and byte counters, for metrics. Bytes count Ethernet frames, not virtio headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes delivered to the guest.
    pub rx_bytes: u64,
    /// Frames read from the tap but not delivered (rx buffer too small, malformed packet).
    pub rx_dropped: u64,
    /// Frames written to the tap.
    pub tx_frames: u64,
    /// Bytes written to the tap.
    pub tx_bytes: u64,
    /// Valid frames the tap refused with a hard error.
    pub tx_dropped: u64,
    /// Malformed tx chains (no room for header and Ethernet header, too long, device-writable
    /// buffers, or not a valid chain at all), returned unsent.
    pub tx_invalid: u64,
}

/// virtio-net over a [`NetBackend`] (a [`Tap`] in the VMM).
#[derive(Debug)]
pub struct Net<B: NetBackend = Tap> {
    pub(super) mac: [u8; 6],
    pub(super) backend: B,
    pub(super) acked_features: u64,
    pub(super) active: Option<ActiveQueues>,
    /// Host → guest scratch; `rx_buf[..rx_len]` is a frame waiting for an rx buffer.
    pub(super) rx_buf: Vec<u8>,
    pub(super) rx_len: usize,
    /// Guest → host scratch; `tx_buf[..tx_len]` is a frame the tap refused with `EAGAIN`.
    pub(super) tx_buf: Vec<u8>,
    pub(super) tx_len: usize,
    pub(super) counters: NetCounters,
}

/// Logs the 1st, 2nd, 4th, 8th... occurrence: a guest (or a broken tap) can cause a drop per
/// frame, and the log must not grow at line rate.
fn worth_logging(count: u64) -> bool {
    count.is_power_of_two()
}

impl Net<Tap> {
    /// Opens the tap named in `config` and builds the device.
    pub fn new(config: &NetConfig) -> Result<Self, NetError> {
        check_mac(config.mac)?;
        let tap = Tap::open(&config.tap)?;
        Self::with_backend(tap, config.mac)
    }

    /// The tap's descriptor, for the event loop to poll (see [`Net::wants_tap_input`] and
    /// [`Net::wants_tap_output`]).
    pub fn tap_fd(&self) -> RawFd {
        self.backend.as_raw_fd()
    }
}

fn check_mac(mac: [u8; 6]) -> Result<(), NetError> {
    if mac == [0; 6] || mac[0] & 1 != 0 {
        return Err(NetError::InvalidMac(mac));
    }
    Ok(())
}

/// Whether a write or read result says "try again later".
fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl<B: NetBackend> Net<B> {
    /// A device on `backend` with the guest MAC `mac`.
    pub fn with_backend(backend: B, mac: [u8; 6]) -> Result<Self, NetError> {
        check_mac(mac)?;
        Ok(Self {
            mac,
            backend,
            acked_features: 0,
            active: None,
            // One byte more than the largest packet, to tell a truncated read from a full one.
            rx_buf: vec![0; MAX_PACKET_LEN + 1],
            rx_len: 0,
            tx_buf: vec![0; MAX_PACKET_LEN],
            tx_len: 0,
            counters: NetCounters::default(),
        })
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The backend (the tap).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The counters since the device was built.
    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    /// Whether the event loop should poll the tap for input: the device is active and no frame
    /// is already waiting for an rx buffer.
    pub fn wants_tap_input(&self) -> bool {
        self.active.is_some() && self.rx_len == 0
    }

    /// Whether the event loop should poll the tap for output: a frame waits for the tap.
    pub fn wants_tap_output(&self) -> bool {
        self.tx_len != 0
    }

    /// Whether a frame read from the tap waits for an rx buffer.
    pub fn rx_pending(&self) -> bool {
        self.rx_len != 0
    }

    /// The tap is readable: moves frames into the guest's rx buffers until the tap is empty or
    /// the guest has no buffer left (then one frame waits in the device).
    pub fn process_tap_input(&mut self) -> Result<(), NetError> {
        self.pump_rx()
    }

    /// The tap is writable: sends the waiting frame, then the guest's tx chains.
    pub fn process_tap_output(&mut self) {
        self.pump_tx();
    }

    /// Reads one packet from the backend into `rx_buf`; `false` when none waits.
    fn read_packet(&mut self) -> io::Result<bool> {
        loop {
            let n = match self.backend.read_packet(&mut self.rx_buf) {
                Ok(n) => n,
                Err(e) if would_block(&e) => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            match check_rx_packet(&self.rx_buf[..n]) {
                Ok(()) => {
                    // Rewrite the header for a driver that negotiated no offloads: flags and
                    // GSO fields zero (the kernel checksummed the frame), one buffer.
                    self.rx_buf[..VNET_HDR_LEN].fill(0);
                    self.rx_buf[NUM_BUFFERS_OFFSET..VNET_HDR_LEN]
                        .copy_from_slice(&1u16.to_le_bytes());
                    self.rx_len = n;
                    return Ok(true);
                }
                Err(why) => {
                    self.counters.rx_dropped += 1;
                    if worth_logging(self.counters.rx_dropped) {
                        tracing::warn!(
                            why,
                            len = n,
                            dropped = self.counters.rx_dropped,
                            "virtio-net: frame from the tap dropped"
                        );
                    }
                }
            }
        }
    }

    /// Host → guest: delivers the waiting frame and reads more while the guest has buffers.
    pub(super) fn pump_rx(&mut self) -> Result<(), NetError> {
        let Some(active) = self.active.take() else {
            return Ok(());
        };
        let mem = active.mem.clone();
        let mut active = active;
        let mut used = false;
        let result = loop {
            if self.rx_len == 0 {
                match self.read_packet() {
                    Ok(true) => {}
                    Ok(false) => break Ok(()),
                    Err(e) => break Err(NetError::ReadTap(e)),
                }
            }
            let q = &mut active.queues[RX_QUEUE];
            let Some(chain) = queue::pop(q, &mem) else {
                // No buffer: the frame waits and the tap is left unread.
                break Ok(());
            };
            let head = chain.head_index();
            let len = self.fill_rx_chain(&mem, ParsedChain::parse(chain, u64::from(u32::MAX)));
            used |= queue::add_used(q, &mem, head, len);
        };
        if used {
            active.interrupt.signal_used_queue();
        }
        self.active = Some(active);
        result
    }

    /// Copies the waiting frame into one rx chain; returns the used length. A malformed chain is
    /// returned empty and the frame waits for the next; a chain too small for the frame drops it.
    fn fill_rx_chain(
        &mut self,
        mem: &GuestMemoryMmap,
        parsed: Result<ParsedChain, queue::ChainError>,
    ) -> u32 {
        let chain = match parsed {
            Ok(c) if c.readable.is_empty() => c,
            Ok(_) => {
                tracing::warn!("virtio-net: rx chain has device-readable buffers");
                return 0;
            }
            Err(e) => {
                tracing::warn!(error = %e, "virtio-net: bad rx chain");
                return 0;
            }
        };
        let packet = &self.rx_buf[..self.rx_len];
        // rx_len <= MAX_PACKET_LEN, far below u32::MAX.
        let len = u32::try_from(packet.len()).unwrap_or(u32::MAX);
        if chain.writable_len() < u64::from(len) {
            self.rx_len = 0;
            self.counters.rx_dropped += 1;
            if worth_logging(self.counters.rx_dropped) {
                tracing::warn!(
                    frame = len,
                    buffer = chain.writable_len(),
                    dropped = self.counters.rx_dropped,
                    "virtio-net: rx buffer too small, frame dropped"
                );
            }
            return 0;
        }
        if let Err(e) = queue::write_segments(mem, &chain.writable, 0, packet) {
            // Cannot happen after validation; the frame waits for the next chain.
            tracing::warn!(error = %e, "virtio-net: rx buffer write");
            return 0;
        }
        self.rx_len = 0;
        self.counters.rx_frames += 1;
        self.counters.rx_bytes += u64::from(len) - VNET_HDR_LEN as u64;
        len
    }

    /// Guest → host: sends the waiting frame, then takes tx chains until the ring is empty or
    /// the tap pushes back.
    pub(super) fn pump_tx(&mut self) {
        if self.tx_len != 0 && !self.send_tx() {
            return;
        }
        let Some(mut active) = self.active.take() else {
            return;
        };
        let mem = active.mem.clone();
        let mut used = false;
        while self.tx_len == 0 {
            let q = &mut active.queues[TX_QUEUE];
            let Some(chain) = queue::pop(q, &mem) else {
                break;
            };
            let head = chain.head_index();
            match self.load_tx_chain(&mem, ParsedChain::parse(chain, MAX_PACKET_LEN as u64)) {
                Ok(()) => {
                    self.send_tx();
                }
                Err(why) => {
                    self.counters.tx_invalid += 1;
                    if worth_logging(self.counters.tx_invalid) {
                        tracing::warn!(
                            why,
                            invalid = self.counters.tx_invalid,
                            "virtio-net: bad tx chain returned unsent"
                        );
                    }
                }
            }
            // The frame was copied out: the buffer goes back even if the frame still waits.
            used |= queue::add_used(q, &mem, head, 0);
        }
        if used {
            active.interrupt.signal_used_queue();
        }
        self.active = Some(active);
    }

    /// Validates one tx chain and copies its packet into `tx_buf[..tx_len]`.
    fn load_tx_chain(
        &mut self,
        mem: &GuestMemoryMmap,
        parsed: Result<ParsedChain, queue::ChainError>,
    ) -> Result<(), &'static str> {
        let chain = parsed.map_err(|e| match e {
            queue::ChainError::TooLong { .. } => "longer than the header and 65550-byte frame",
            _ => "malformed descriptor chain",
        })?;
        if !chain.writable.is_empty() {
            return Err("tx chain has device-writable buffers");
        }
        let len = usize::try_from(chain.readable_len()).map_err(|_| "too long")?;
        if len < VNET_HDR_LEN + ETH_HDR_LEN {
            return Err("shorter than the header and an Ethernet header");
        }
        // The parse cap keeps len <= MAX_PACKET_LEN == tx_buf.len().
        let buf = self.tx_buf.get_mut(..len).ok_or("too long")?;
        queue::read_segments(mem, &chain.readable, 0, buf).map_err(|_| "unreadable")?;
        // No offload was negotiated, so the only valid header is all zero (num_buffers is
        // unused on tx). Zeroing it keeps guest-chosen GSO and checksum requests away from the
        // host kernel.
        buf[..VNET_HDR_LEN].fill(0);
        self.tx_len = len;
        Ok(())
    }

    /// Writes `tx_buf[..tx_len]`; returns whether it is gone (sent or dropped), `false` when
    /// the tap pushed back and it still waits.
    fn send_tx(&mut self) -> bool {
        let packet = &self.tx_buf[..self.tx_len];
        let result = loop {
            match self.backend.write_packet(packet) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => break r,
            }
        };
        match result {
            Ok(n) if n == packet.len() => {
                self.counters.tx_frames += 1;
                self.counters.tx_bytes += (packet.len() - VNET_HDR_LEN) as u64;
            }
            Err(e) if would_block(&e) => return false,
            other => {
                self.counters.tx_dropped += 1;
                if worth_logging(self.counters.tx_dropped) {
                    let error = match other {
                        Ok(n) => format!("short write of {n} of {} bytes", packet.len()),
                        Err(e) => e.to_string(),
                    };
                    tracing::warn!(
                        %error,
                        dropped = self.counters.tx_dropped,
                        "virtio-net: the tap refused a frame, dropped"
                    );
                }
            }
        }
        self.tx_len = 0;
        true
    }
}

/// Why a packet read from the tap cannot go to a driver that negotiated no offloads.
fn check_rx_packet(packet: &[u8]) -> Result<(), &'static str> {
    if packet.len() > MAX_PACKET_LEN {
        return Err("longer than the largest frame (possibly truncated)");
    }
    if packet.len() < VNET_HDR_LEN + ETH_HDR_LEN {
        return Err("shorter than the header and an Ethernet header");
    }
    // With TUNSETOFFLOAD 0 the kernel segments and checksums first; a GSO or partial-checksum
    // packet would be a kernel surprise the guest could not handle.
    if u32::from(packet[1]) != VIRTIO_NET_HDR_GSO_NONE {
        return Err("GSO packet");
    }
    if u32::from(packet[0]) & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
        return Err("checksum not computed");
    }
    Ok(())
}

impl<B: NetBackend> VirtioDevice for Net<B> {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn avail_features(&self) -> u64 {
        (1 << features::VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_MAC)
    }

    fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_net_config: mac[6]; `status` and the rest are not offered.
        read_config_bytes(&self.mac, offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        tracing::warn!(offset, "virtio-net: configuration space is read-only");
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        ActiveQueues::activate_once(&mut self.active, mem, queues, interrupt, NUM_QUEUES)
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn process_queue(&mut self, index: usize) {
        if self.active.is_none() {
            return;
        }
        match index {
            RX_QUEUE => {
                if let Err(e) = self.pump_rx() {
                    tracing::warn!(error = %e, "virtio-net: rx");
                }
            }
            TX_QUEUE => self.pump_tx(),
            _ => tracing::warn!(index, "virtio-net: notify for an unknown queue"),
        }
    }

    fn reset(&mut self) {
        // The frames in flight belong to the link, not to the driver: a waiting tx frame still
        // goes to the tap, a waiting rx frame goes to the next driver's first buffer.
        self.active = None;
        self.acked_features = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MmioTransport;
    use crate::net::FakeBackend;
    use crate::testing::{BufAlloc, GuestQueue, guest_memory, init, notify, transport};
    use vm_memory::{Bytes, GuestAddress};

    const MAC: [u8; 6] = [0x02, 0xc0, 0x7e, 0, 0, 1];

    struct Guest {
        mem: GuestMemoryMmap,
        t: MmioTransport<Net<FakeBackend>>,
        link: FakeBackend,
        qs: Vec<GuestQueue>,
        alloc: BufAlloc,
    }

    impl Guest {
        fn new() -> Self {
            let mem = guest_memory();
            let link = FakeBackend::new();
            let dev = Net::with_backend(link.clone(), MAC).unwrap();
            let (mut t, _line) = transport(dev, &mem);
            let qs = init(&mut t, &[16, 16]);
            Self {
                mem,
                t,
                link,
                qs,
                alloc: BufAlloc::default(),
            }
        }

        fn send(&mut self, packet: &[u8]) {
            let a = self.alloc.alloc(packet.len() as u64);
            self.mem.write_slice(packet, GuestAddress(a)).unwrap();
            let len = u32::try_from(packet.len()).unwrap();
            self.qs[TX_QUEUE].add_chain(&self.mem, &[(a, len, false)]);
        }

        fn give_rx(&mut self, len: u32) -> u64 {
            let a = self.alloc.alloc(u64::from(len));
            self.qs[RX_QUEUE].add_chain(&self.mem, &[(a, len, true)]);
            a
        }

        fn dev(&mut self) -> &mut Net<FakeBackend> {
            self.t.device_mut()
        }
    }

    fn packet(hdr: [u8; VNET_HDR_LEN], fill: u8, frame_len: usize) -> Vec<u8> {
        let mut p = hdr.to_vec();
        p.extend(std::iter::repeat_n(fill, frame_len));
        p
    }

    #[test]
    fn tx_header_is_zeroed_before_the_tap() {
        let mut g = Guest::new();
        // NEEDS_CSUM and GSO_TCPV4 with offsets: not negotiated, must not reach the kernel.
        let hdr = [1, 1, 54, 0, 0xdc, 5, 34, 0, 16, 0, 1, 0];
        g.send(&packet(hdr, 0xab, 60));
        notify(&mut g.t, 1);
        let written = g.link.take_written();
        assert_eq!(written, vec![packet([0; VNET_HDR_LEN], 0xab, 60)]);
        assert_eq!(g.dev().counters().tx_frames, 1);
        assert_eq!(g.dev().counters().tx_bytes, 60);
    }

    #[test]
    fn tx_backpressure_keeps_one_frame_and_stops_taking_chains() {
        let mut g = Guest::new();
        g.link.set_write_error(Some(io::ErrorKind::WouldBlock));
        for i in 0..3 {
            g.send(&packet([0; VNET_HDR_LEN], i, 64));
        }
        notify(&mut g.t, 1);
        assert_eq!(
            g.qs[TX_QUEUE].used_idx(&g.mem),
            1,
            "one frame taken, two wait"
        );
        assert!(g.dev().wants_tap_output());
        // The tap is still full: nothing moves, nothing is dropped.
        g.dev().process_tap_output();
        notify(&mut g.t, 1);
        assert_eq!(g.qs[TX_QUEUE].used_idx(&g.mem), 1);
        assert!(g.link.take_written().is_empty());
        g.link.set_write_error(None);
        g.dev().process_tap_output();
        let written = g.link.take_written();
        let fills: Vec<u8> = written.iter().map(|p| p[VNET_HDR_LEN]).collect();
        assert_eq!(fills, [0, 1, 2], "in order");
        assert_eq!(g.qs[TX_QUEUE].used_idx(&g.mem), 3);
        assert!(!g.dev().wants_tap_output());
        let c = g.dev().counters();
        assert_eq!((c.tx_frames, c.tx_dropped, c.tx_invalid), (3, 0, 0));
    }

    #[test]
    fn tx_hard_error_drops_and_counts() {
        let mut g = Guest::new();
        g.link.set_write_error(Some(io::ErrorKind::InvalidInput));
        g.send(&packet([0; VNET_HDR_LEN], 1, 64));
        g.send(&packet([0; VNET_HDR_LEN], 2, 64));
        notify(&mut g.t, 1);
        assert_eq!(g.qs[TX_QUEUE].used_idx(&g.mem), 2, "the guest never stalls");
        assert!(!g.dev().wants_tap_output());
        assert_eq!(g.dev().counters().tx_dropped, 2);
        assert_eq!(g.dev().counters().tx_frames, 0);
    }

    #[test]
    fn rx_packets_a_plain_driver_cannot_take_are_dropped() {
        let mut g = Guest::new();
        let a = g.give_rx(2048);
        g.link
            .inject(packet([0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 1, 60)); // GSO
        g.link
            .inject(packet([1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 2, 60)); // NEEDS_CSUM
        g.link.inject(packet([0; VNET_HDR_LEN], 3, ETH_HDR_LEN - 1)); // runt
        g.link
            .inject(packet([0; VNET_HDR_LEN], 4, MAX_FRAME_LEN + 1)); // truncated
        // DATA_VALID and a stale num_buffers: delivered with a clean header.
        g.link
            .inject(packet([2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 9], 5, 60));
        g.dev().process_tap_input().unwrap();
        assert_eq!(g.dev().counters().rx_dropped, 4);
        assert_eq!(g.qs[RX_QUEUE].pop_used(&g.mem), Some((0, 72)));
        let mut got = vec![0u8; 72];
        g.mem.read_slice(&mut got, GuestAddress(a)).unwrap();
        assert_eq!(got, packet([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0], 5, 60));
        assert_eq!(g.dev().counters().rx_frames, 1);
        assert_eq!(g.dev().counters().rx_bytes, 60);
    }

    #[test]
    fn rx_read_errors_are_reported_to_the_event_loop() {
        let mut g = Guest::new();
        g.link.set_read_error(Some(io::ErrorKind::Other));
        assert!(matches!(
            g.dev().process_tap_input(),
            Err(NetError::ReadTap(_))
        ));
        // A transient failure does not stick: the next readiness works.
        g.link.set_read_error(None);
        g.link.inject(packet([0; VNET_HDR_LEN], 1, 60));
        g.dev().process_tap_input().unwrap();
        assert!(g.dev().rx_pending());
    }

    #[test]
    fn rx_frame_waits_without_buffers_and_the_tap_is_left_unread() {
        let mut g = Guest::new();
        g.link.inject(packet([0; VNET_HDR_LEN], 1, 60));
        g.link.inject(packet([0; VNET_HDR_LEN], 2, 60));
        g.dev().process_tap_input().unwrap();
        assert!(g.dev().rx_pending());
        assert!(!g.dev().wants_tap_input());
        assert_eq!(g.link.unread(), 1, "at most one frame is read ahead");
        g.give_rx(2048);
        g.give_rx(2048);
        notify(&mut g.t, 0);
        assert_eq!(g.qs[RX_QUEUE].used_idx(&g.mem), 2);
        assert_eq!(g.link.unread(), 0);
        assert!(g.dev().wants_tap_input());
    }

    #[test]
    fn macs_must_be_unicast_and_non_zero() {
        for bad in [[0u8; 6], [0x01, 0, 0x5e, 0, 0, 1], [0xff; 6]] {
            assert!(matches!(
                Net::with_backend(FakeBackend::new(), bad),
                Err(NetError::InvalidMac(_))
            ));
        }
    }

    #[test]
    fn drop_logging_is_rate_limited() {
        let logged: Vec<u64> = (1..=100).filter(|&n| worth_logging(n)).collect();
        assert_eq!(logged, [1, 2, 4, 8, 16, 32, 64]);
    }
}
