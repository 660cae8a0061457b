//! virtio-console multiport through the MMIO transport: the Linux driver's control handshake,
//! and the agent port's bytes in both directions with backpressure.

#![allow(clippy::cast_possible_truncation)] // test patterns truncate on purpose

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use cove_virtio::console::*;
use cove_virtio::testing::*;
use cove_virtio::{Interrupt, MmioTransport};
use vm_memory::{Bytes, GuestAddress};

const CTRL_RX: usize = 2;
const CTRL_TX: usize = 3;
const RX: usize = 4;
const TX: usize = 5;

struct Guest {
    mem: vm_memory::GuestMemoryMmap<()>,
    t: MmioTransport<Console>,
    qs: Vec<GuestQueue>,
    alloc: BufAlloc,
    bufs: HashMap<(usize, u16), u64>,
}

impl Guest {
    fn new() -> Self {
        let mem = guest_memory();
        let (t, _line) = transport(Console::new(), &mem);
        Self::with(mem, t)
    }

    fn with(mem: vm_memory::GuestMemoryMmap<()>, mut t: MmioTransport<Console>) -> Self {
        // Linux picks the size; use less than the maximum the device offers.
        let qs = init(&mut t, &[64; 6]);
        Self {
            mem,
            t,
            qs,
            alloc: BufAlloc::default(),
            bufs: HashMap::new(),
        }
    }

    /// Offers a device-writable buffer on queue `q`.
    fn give(&mut self, q: usize, len: u32) {
        let a = self.alloc.alloc(u64::from(len));
        let head = self.qs[q].add_chain(&self.mem, &[(a, len, true)]);
        self.bufs.insert((q, head), a);
    }

    /// Puts `data` on queue `q` as one device-readable buffer.
    fn send(&mut self, q: usize, data: &[u8]) {
        let a = self.alloc.alloc(data.len() as u64);
        self.mem.write_slice(data, GuestAddress(a)).unwrap();
        self.qs[q].add_chain(&self.mem, &[(a, data.len() as u32, false)]);
    }

    fn notify(&mut self, q: usize) {
        notify(&mut self.t, q as u32);
    }

    /// Everything the device returned on writable queue `q` since the last call.
    fn take(&mut self, q: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some((head, len)) = self.qs[q].pop_used(&self.mem) {
            let a = self.bufs[&(q, head as u16)];
            let mut b = vec![0u8; len as usize];
            self.mem.read_slice(&mut b, GuestAddress(a)).unwrap();
            out.push(b);
        }
        out
    }

    fn ctrl(&mut self, id: u32, event: u16, value: u16) {
        self.send(CTRL_TX, &ControlMessage { id, event, value }.encode(&[]));
        self.notify(CTRL_TX);
    }

    /// The Linux driver's multiport handshake; returns the control messages it saw.
    fn handshake(&mut self) -> Vec<(ControlMessage, Vec<u8>)> {
        for _ in 0..8 {
            self.give(CTRL_RX, 4096);
        }
        self.notify(CTRL_RX);
        for _ in 0..4 {
            self.give(RX, 4096);
        }
        // Linux sends DEVICE_READY with id VIRTIO_CONSOLE_BAD_ID (~0).
        self.ctrl(u32::MAX, VIRTIO_CONSOLE_DEVICE_READY, 1);
        let mut seen = decode(self.take(CTRL_RX));
        assert_eq!(
            seen[0].0,
            msg(1, VIRTIO_CONSOLE_DEVICE_ADD, 0),
            "port 1 added"
        );
        self.ctrl(1, VIRTIO_CONSOLE_PORT_READY, 1);
        seen.extend(decode(self.take(CTRL_RX)));
        seen
    }
}

fn msg(id: u32, event: u16, value: u16) -> ControlMessage {
    ControlMessage { id, event, value }
}

fn decode(bufs: Vec<Vec<u8>>) -> Vec<(ControlMessage, Vec<u8>)> {
    bufs.into_iter()
        .map(|b| {
            let hdr: [u8; 8] = b[..8].try_into().unwrap();
            (ControlMessage::decode(hdr), b[8..].to_vec())
        })
        .collect()
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

#[test]
fn console_multiport_handshake_names_the_agent_port() {
    let mut g = Guest::new();
    assert_eq!(read32(&mut g.t, 0x08), 3);
    assert_eq!(read32(&mut g.t, 0x100 + 4), 2, "max_nr_ports");
    assert!(g.t.device().multiport());
    let seen = g.handshake();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[1].0, msg(1, VIRTIO_CONSOLE_PORT_NAME, 1));
    assert_eq!(seen[1].1, b"cove.agent");
    assert_eq!(seen[2].0, msg(1, VIRTIO_CONSOLE_PORT_OPEN, 1));
    assert!(!g.t.device().guest_open());
    g.ctrl(1, VIRTIO_CONSOLE_PORT_OPEN, 1);
    assert!(g.t.device().guest_open());
    g.ctrl(1, VIRTIO_CONSOLE_PORT_OPEN, 0);
    assert!(!g.t.device().guest_open());
    // A repeated PORT_READY does not rename the port twice; junk events are ignored.
    g.ctrl(1, VIRTIO_CONSOLE_PORT_READY, 1);
    g.ctrl(7, 99, 1);
    assert!(g.take(CTRL_RX).is_empty());
    assert_eq!(
        g.qs[CTRL_TX].used_idx(&g.mem),
        6,
        "every control buffer returned"
    );
}

#[test]
fn console_host_to_guest_with_backpressure() {
    let mut g = Guest::new();
    g.handshake();
    let (host, dev_end) = UnixStream::pair().unwrap();
    g.t.device_mut().attach(dev_end).unwrap();
    let total = 300 * 1024; // far more than the guest's 16 KiB of buffers
    let data = pattern(total, 7);
    let writer = {
        let data = data.clone();
        let mut host = host.try_clone().unwrap();
        std::thread::spawn(move || host.write_all(&data).unwrap())
    };
    // Nothing reaches the guest before it opens the port; the device reads up to its cap and
    // then leaves the rest in the socket (the writer blocks).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while g.t.device().wants_host_input() {
        assert!(
            std::time::Instant::now() < deadline,
            "the device never filled up"
        );
        g.t.device_mut().process_host_input();
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(g.t.device().pending_to_guest(), HOST_INPUT_CAP);
    assert!(g.take(RX).is_empty());
    g.ctrl(1, VIRTIO_CONSOLE_PORT_OPEN, 1);

    let mut got = Vec::new();
    while got.len() < total {
        g.t.device_mut().process_host_input();
        assert!(g.t.device().pending_to_guest() <= HOST_INPUT_CAP);
        for b in g.take(RX) {
            assert!(b.len() <= 4096);
            got.extend(b);
            g.give(RX, 4096);
        }
        g.notify(RX);
    }
    writer.join().unwrap();
    assert_eq!(got.len(), total);
    assert!(got == data, "bytes arrive whole and in order");
    assert_eq!(g.t.device().pending_to_guest(), 0);
}

#[test]
fn console_guest_to_host_with_backpressure() {
    let mut g = Guest::new();
    g.handshake();
    g.ctrl(1, VIRTIO_CONSOLE_PORT_OPEN, 1);
    // Writes before a host stream is attached stay in the ring.
    let first = pattern(1000, 1);
    g.send(TX, &first);
    g.notify(TX);
    assert_eq!(g.qs[TX].used_idx(&g.mem), 0, "no host: the chain waits");

    let (mut host, dev_end) = UnixStream::pair().unwrap();
    g.t.device_mut().attach(dev_end).unwrap();
    assert_eq!(g.qs[TX].used_idx(&g.mem), 1, "attach drains it");
    // 60 chains of 32 KiB while the host does not read: the socket fills and the device stops
    // taking chains.
    let mut all = first.clone();
    for i in 0..60u8 {
        let chunk = pattern(32 * 1024, i);
        g.send(TX, &chunk);
        all.extend(chunk);
    }
    g.notify(TX);
    let used = g.qs[TX].used_idx(&g.mem);
    assert!(used < 61, "the guest is backpressured (used {used})");
    assert!(g.t.device().wants_host_output());
    assert!(g.t.device().pending_to_host() <= HOST_OUTPUT_CAP + 32 * 1024);

    host.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while got.len() < all.len() {
        match host.read(&mut buf) {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert_eq!(g.t.device_mut().process_host_output(), HostStatus::Open);
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(got == all, "bytes arrive whole and in order");
    assert_eq!(g.qs[TX].used_idx(&g.mem), 61);
    assert!(!g.t.device().wants_host_output());
}

#[test]
fn console_host_hangup_keeps_bytes_for_the_next_stream() {
    let mut g = Guest::new();
    g.handshake();
    let (host, dev_end) = UnixStream::pair().unwrap();
    g.t.device_mut().attach(dev_end).unwrap();
    (&host).write_all(b"hello ").unwrap();
    drop(host);
    // The guest has not opened the port: the bytes wait; the hang-up drops the stream.
    assert_eq!(g.t.device_mut().process_host_input(), HostStatus::Closed);
    assert_eq!(g.t.device().pending_to_guest(), 6);
    let (host, dev_end) = UnixStream::pair().unwrap();
    g.t.device_mut().attach(dev_end).unwrap();
    (&host).write_all(b"world").unwrap();
    g.ctrl(1, VIRTIO_CONSOLE_PORT_OPEN, 1);
    g.t.device_mut().process_host_input();
    assert_eq!(g.take(RX).concat(), b"hello world");
}

#[test]
fn console_save_restore_mid_stream() {
    let mut g = Guest::new();
    g.handshake();
    g.ctrl(1, VIRTIO_CONSOLE_PORT_OPEN, 1);
    let (host, dev_end) = UnixStream::pair().unwrap();
    g.t.device_mut().attach(dev_end).unwrap();
    // 20 KiB from the host, only 16 KiB of guest buffers: 4 KiB stay in the device.
    let data = pattern(20 * 1024, 3);
    (&host).write_all(&data).unwrap();
    g.t.device_mut().process_host_input();
    let mut got = g.take(RX).concat();
    assert_eq!(got.len(), 16 * 1024);
    assert_eq!(g.t.device().pending_to_guest(), 4 * 1024);

    let json = serde_json::to_string(&(g.t.device().save(), g.t.save())).unwrap();
    let (cs, ms): (ConsoleState, cove_virtio::persist::MmioState) =
        serde_json::from_str(&json).unwrap();
    assert_eq!(cs.to_guest.len(), 4 * 1024);
    assert!(cs.guest_open && cs.port_ready);
    drop(g.t);
    let line = CountingLine::default();
    let irq = Arc::new(Interrupt::new(Box::new(line.clone())));
    let dev = Console::restore(&cs, g.mem.clone(), irq.clone()).unwrap();
    g.t = MmioTransport::restore(dev, g.mem.clone(), irq, &ms).unwrap();
    let (host, dev_end) = UnixStream::pair().unwrap();
    g.t.device_mut().attach(dev_end).unwrap();
    let more = pattern(1024, 9);
    (&host).write_all(&more).unwrap();
    // The guest added a buffer but its notification was lost with the old process.
    g.give(RX, 8192);
    g.t.kick_all();
    got.extend(g.take(RX).concat());
    let mut want = data.clone();
    want.extend(&more);
    assert!(
        got == want,
        "the restored device continues the stream in order"
    );
    assert!(line.count() >= 1);
    // Guest → host continues too.
    g.send(TX, b"after restore");
    g.notify(TX);
    let mut buf = [0u8; 13];
    (&host).read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"after restore");
}

#[test]
fn console_reset_restarts_the_handshake() {
    let mut g = Guest::new();
    g.handshake();
    g.ctrl(1, VIRTIO_CONSOLE_PORT_OPEN, 1);
    write32(&mut g.t, 0x70, 0);
    assert_eq!(read32(&mut g.t, 0x70), 0);
    assert!(!g.t.device().port_ready());
    assert!(!g.t.device().guest_open());
    for q in 0..6 {
        write32(&mut g.t, 0x30, q);
        assert_eq!(read32(&mut g.t, 0x44), 0, "queue {q} not ready after reset");
    }
    assert_eq!(read32(&mut g.t, 0x60), 0, "interrupt status cleared");
    // The driver probes again from scratch.
    let mem = g.mem.clone();
    let mut g = Guest::with(mem, g.t);
    let seen = g.handshake();
    assert_eq!(seen[1].1, b"cove.agent");
}
