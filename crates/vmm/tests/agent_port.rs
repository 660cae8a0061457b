//! The agent's port as the kvm engine wires it: the virtio-console on the VM's MMIO bus, its
//! host side a Unix socket whose connections the VMM's I/O thread accepts and pumps. The test
//! plays the guest's driver through the VM's bus (no guest program: Linux's multiport handshake
//! in assembly would only restate `crates/virtio`'s tests) and the host through the socket.

#![allow(clippy::cast_possible_truncation)] // test patterns truncate on purpose

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use cove_devices::{Bus, BusDevice};
use cove_virtio::console::{
    ControlMessage, VIRTIO_CONSOLE_DEVICE_ADD, VIRTIO_CONSOLE_DEVICE_READY,
    VIRTIO_CONSOLE_PORT_OPEN, VIRTIO_CONSOLE_PORT_READY,
};
use cove_virtio::testing::{BufAlloc, GuestQueue, init, notify};
use cove_vmm::memory::GuestMemoryMmap;
use cove_vmm::virtio::{DeviceSpec, VIRTIO_MMIO_BASE};
use cove_vmm::{Vm, VmConfig};
use vm_memory::{Bytes, GuestAddress};

const CTRL_RX: usize = 2;
const CTRL_TX: usize = 3;
const RX: usize = 4;
const TX: usize = 5;

/// The device's window on the VM's MMIO bus, as the driver sees it.
struct Window<'a>(&'a Bus);

impl BusDevice for Window<'_> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.0.read(VIRTIO_MMIO_BASE + offset, data);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.0.write(VIRTIO_MMIO_BASE + offset, data);
    }
}

struct Driver<'a> {
    win: Window<'a>,
    mem: GuestMemoryMmap,
    qs: Vec<GuestQueue>,
    alloc: BufAlloc,
    bufs: HashMap<(usize, u16), u64>,
}

impl Driver<'_> {
    fn give(&mut self, q: usize, len: u32) {
        let a = self.alloc.alloc(u64::from(len));
        let head = self.qs[q].add_chain(&self.mem, &[(a, len, true)]);
        self.bufs.insert((q, head), a);
    }

    fn send(&mut self, q: usize, data: &[u8]) {
        let a = self.alloc.alloc(data.len() as u64);
        self.mem.write_slice(data, GuestAddress(a)).unwrap();
        self.qs[q].add_chain(&self.mem, &[(a, data.len() as u32, false)]);
        notify(&mut self.win, q as u32);
    }

    fn take(&mut self, q: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some((head, len)) = self.qs[q].pop_used(&self.mem) {
            let a = self.bufs[&(q, head as u16)];
            let mut b = vec![0u8; len as usize];
            self.mem.read_slice(&mut b, GuestAddress(a)).unwrap();
            out.extend_from_slice(&b);
        }
        out
    }

    fn ctrl(&mut self, id: u32, event: u16, value: u16) {
        self.send(CTRL_TX, &ControlMessage { id, event, value }.encode(&[]));
    }

    /// Receives `n` bytes on the agent port, giving the device buffers as it uses them.
    fn receive(&mut self, n: usize) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got = Vec::new();
        while got.len() < n {
            assert!(
                Instant::now() < deadline,
                "received {} of {n} bytes",
                got.len()
            );
            let before = got.len();
            got.extend(self.take(RX));
            let used = (got.len() - before).div_ceil(4096);
            for _ in 0..used {
                self.give(RX, 4096);
            }
            if used > 0 {
                notify(&mut self.win, RX as u32);
            } else {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        got
    }
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

#[test]
fn the_agent_port_carries_bytes_both_ways_through_the_io_thread_and_survives_a_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let mut vm = Vm::new(VmConfig {
        vcpu_count: 1,
        mem_size: 64 << 20,
    })
    .expect("create the VM (needs /dev/kvm)");
    vm.add_virtio(
        "agent",
        DeviceSpec::Console(UnixListener::bind(&sock).unwrap()),
    )
    .unwrap();
    // No vCPU runs a guest here; resuming starts the I/O thread.
    vm.resume().unwrap();
    let mem = vm.memory().clone();
    let mut win = Window(&vm.buses().mmio);
    let qs = init(&mut win, &[64; 6]);
    let mut d = Driver {
        win,
        mem,
        qs,
        alloc: BufAlloc::default(),
        bufs: HashMap::new(),
    };
    // Linux's multiport handshake.
    for _ in 0..8 {
        d.give(CTRL_RX, 4096);
    }
    notify(&mut d.win, CTRL_RX as u32);
    for _ in 0..4 {
        d.give(RX, 4096);
    }
    d.ctrl(u32::MAX, VIRTIO_CONSOLE_DEVICE_READY, 1);
    let add = d.take(CTRL_RX);
    assert_eq!(
        ControlMessage::decode(add[..8].try_into().unwrap()).event,
        VIRTIO_CONSOLE_DEVICE_ADD
    );
    d.ctrl(1, VIRTIO_CONSOLE_PORT_READY, 1);
    d.ctrl(1, VIRTIO_CONSOLE_PORT_OPEN, 1);

    // Host → guest: more than the guest has buffers for, through the I/O thread.
    let mut host = UnixStream::connect(&sock).unwrap();
    let down = pattern(100 << 10, 7);
    let writer = {
        let mut h = host.try_clone().unwrap();
        let down = down.clone();
        std::thread::spawn(move || h.write_all(&down).unwrap())
    };
    assert!(d.receive(down.len()) == down, "host → guest bytes intact");
    writer.join().unwrap();

    // Guest → host.
    let up = pattern(50 << 10, 3);
    for chunk in up.chunks(8192) {
        d.send(TX, chunk);
    }
    let mut back = vec![0u8; up.len()];
    host.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    host.read_exact(&mut back).unwrap();
    assert!(back == up, "guest → host bytes intact");

    // cove-vm reconnects (a restart): the new connection takes over, both ways.
    drop(host);
    let mut host = UnixStream::connect(&sock).unwrap();
    host.write_all(b"after the reconnect").unwrap();
    assert_eq!(d.receive(19), b"after the reconnect");
    d.send(TX, b"and back");
    let mut b = [0u8; 8];
    host.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"and back");

    // A paused VM's port state goes into its snapshot.
    vm.pause().unwrap();
    let snap = vm.snapshot().unwrap();
    assert!(snap.devices.contains_key("virtio:agent"));
    vm.stop().unwrap();
}
