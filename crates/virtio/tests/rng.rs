//! virtio-rng through the MMIO transport, driven as a Linux guest would.

use cove_virtio::rng::{REQUEST_CAP, Rng};
use cove_virtio::testing::*;
use vm_memory::{Bytes, GuestAddress};

#[test]
fn rng_fills_writable_buffers_and_interrupts() {
    let mem = guest_memory();
    let (mut t, line) = transport(Rng::new(), &mem);
    assert_eq!(read32(&mut t, 0x000), 0x7472_6976);
    assert_eq!(read32(&mut t, 0x004), 2);
    assert_eq!(read32(&mut t, 0x008), 4);
    let mut qs = init(&mut t, &[256]);
    let mut alloc = BufAlloc::default();
    let a = alloc.alloc(64);
    let b = alloc.alloc(4096);
    let h1 = qs[0].add_chain(&mem, &[(a, 64, true)]);
    let h2 = qs[0].add_chain(&mem, &[(b, 4096, true)]);
    notify(&mut t, 0);
    assert_eq!(qs[0].pop_used(&mem), Some((u32::from(h1), 64)));
    assert_eq!(qs[0].pop_used(&mem), Some((u32::from(h2), 4096)));
    assert_eq!(qs[0].pop_used(&mem), None);
    assert_eq!(read32(&mut t, 0x60), 1, "used-ring interrupt bit");
    assert!(line.count() >= 1);
    write32(&mut t, 0x64, 1);
    assert_eq!(read32(&mut t, 0x60), 0, "acked");
    let mut buf = vec![0u8; 4096];
    mem.read_slice(&mut buf, GuestAddress(b)).unwrap();
    assert!(
        buf.iter().filter(|&&x| x == 0).count() < 200,
        "looks random"
    );
}

#[test]
fn rng_caps_one_request() {
    let mem = guest_memory();
    let (mut t, _line) = transport(Rng::new(), &mem);
    let mut qs = init(&mut t, &[256]);
    let big = 1 << 20;
    let a = BufAlloc::default().alloc(big);
    qs[0].add_chain(&mem, &[(a, u32::try_from(big).unwrap(), true)]);
    notify(&mut t, 0);
    let (_, len) = qs[0].pop_used(&mem).unwrap();
    assert_eq!(len as usize, REQUEST_CAP);
}

#[test]
fn rng_save_restore_continues() {
    let mem = guest_memory();
    let (mut t, _line) = transport(Rng::new(), &mem);
    let mut qs = init(&mut t, &[256]);
    let a = BufAlloc::default().alloc(32);
    qs[0].add_chain(&mem, &[(a, 32, true)]);
    notify(&mut t, 0);
    assert!(qs[0].pop_used(&mem).is_some());

    let dev_state = t.device().save();
    let mmio_state = t.save();
    let json = serde_json::to_string(&(dev_state, mmio_state)).unwrap();
    drop(t);
    let (dev_state, mmio_state): (cove_virtio::rng::RngState, cove_virtio::persist::MmioState) =
        serde_json::from_str(&json).unwrap();
    let line = CountingLine::default();
    let irq = std::sync::Arc::new(cove_virtio::Interrupt::new(Box::new(line.clone())));
    let dev = Rng::restore(&dev_state, mem.clone(), irq.clone()).unwrap();
    let mut t = cove_virtio::MmioTransport::restore(dev, mem.clone(), irq, &mmio_state).unwrap();
    qs[0].add_chain(&mem, &[(a, 16, true)]);
    notify(&mut t, 0);
    assert_eq!(qs[0].pop_used(&mem).map(|u| u.1), Some(16));
    assert_eq!(qs[0].used_idx(&mem), 2, "continued at next_used = 1");
    assert_eq!(line.count(), 1);
}

#[test]
fn transport_sits_on_the_mmio_bus() {
    use std::sync::{Arc, Mutex};
    let mem = guest_memory();
    let (t, _line) = transport(Rng::new(), &mem);
    let shared = Arc::new(Mutex::new(t));
    let bus = cove_devices::Bus::new();
    bus.insert(0xd000_0000, cove_virtio::mmio::MMIO_WINDOW, shared.clone())
        .unwrap();
    let mut magic = [0u8; 4];
    assert!(bus.read(0xd000_0000, &mut magic));
    assert_eq!(&magic, b"virt");
    assert!(bus.write(0xd000_0070, &1u32.to_le_bytes()));
    assert_eq!(shared.lock().unwrap().device_status(), 1);
}
