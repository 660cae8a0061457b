//! A hostile driver: every device must refuse bad rings and registers (mark the request failed,
//! or ignore it, and log), never panic, and never touch memory outside the guest's regions.

use std::io::Write;

use cove_devices::BusDevice;
use cove_virtio::block::{Block, BlockConfig, VIRTIO_BLK_S_IOERR};
use cove_virtio::console::Console;
use cove_virtio::fuzzing::XorShift;
use cove_virtio::rng::Rng;
use cove_virtio::testing::*;
use cove_virtio::{GuestMemoryMmap, MmioTransport, VirtioDevice};
use vm_memory::{Bytes, GuestAddress};

const F_INDIRECT: u16 = 4;
/// Guest memory has a 1 MiB hole here.
const HOLE: u64 = 16 << 20;

fn holey_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), (16 << 20) as usize),
        (GuestAddress(HOLE + (1 << 20)), (15 << 20) as usize),
    ])
    .unwrap()
}

fn disk() -> (tempfile::NamedTempFile, Block) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&vec![0x11u8; 64 * 1024]).unwrap();
    let cfg = BlockConfig {
        path: f.path().to_path_buf(),
        read_only: false,
        serial: "hostile".into(),
    };
    let b = Block::new(cfg).unwrap();
    (f, b)
}

/// Canary bytes just inside guest memory next to the hole.
fn canary(mem: &GuestMemoryMmap) -> [u8; 16] {
    let mut c = [0u8; 16];
    mem.read_slice(&mut c, GuestAddress(HOLE - 16)).unwrap();
    c
}

#[test]
fn hostile_buffers_outside_memory_are_refused() {
    let mem = holey_memory();
    let (mut t, _) = transport(Rng::new(), &mem);
    let mut q = init(&mut t, &[16]).remove(0);
    mem.write_slice(&[0x77; 16], GuestAddress(HOLE - 16))
        .unwrap();
    // Across the hole, inside it, past the end of memory, and wrapping the address space.
    for (addr, len) in [
        (HOLE - 8, 64),
        (HOLE + 4096, 16),
        ((32 << 20) + (1 << 20) - 8, 64),
        (u64::MAX - 7, 64),
        (0x10_0000, u32::MAX),
    ] {
        q.add_chain(&mem, &[(addr, len, true)]);
        notify(&mut t, 0);
        assert_eq!(
            q.pop_used(&mem).map(|u| u.1),
            Some(0),
            "{addr:#x}+{len:#x} refused"
        );
    }
    assert_eq!(canary(&mem), [0x77; 16], "no byte written next to the hole");

    // The block device: a data buffer across the hole; the request is returned unexecuted.
    let (_f, blk) = disk();
    let (mut t, _) = transport(blk, &mem);
    let mut q = init(&mut t, &[16]).remove(0);
    let hdr = 0x10_0000;
    mem.write_slice(&[0u8; 16], GuestAddress(hdr)).unwrap();
    let st = 0x10_1000;
    mem.write_obj(0xeeu8, GuestAddress(st)).unwrap();
    q.add_chain(
        &mem,
        &[(hdr, 16, false), (HOLE - 256, 512, true), (st, 1, true)],
    );
    notify(&mut t, 0);
    assert_eq!(q.pop_used(&mem).map(|u| u.1), Some(0));
    assert_eq!(mem.read_obj::<u8>(GuestAddress(st)).unwrap(), 0xee);
    assert_eq!(canary(&mem), [0x77; 16]);
}

#[test]
fn hostile_descriptor_cycles_terminate() {
    let mem = guest_memory();
    // virtio-rng.
    let (mut t, _) = transport(Rng::new(), &mem);
    let mut q = init(&mut t, &[16]).remove(0);
    q.write_desc(&mem, 0, BUF_BASE, 8, F_NEXT | F_WRITE, 1);
    q.write_desc(&mem, 1, BUF_BASE, 8, F_NEXT | F_WRITE, 0);
    q.push_avail(&mem, 0);
    notify(&mut t, 0);
    assert_eq!(q.pop_used(&mem).map(|u| u.1), Some(0));
    // A self-loop on the block device.
    let (_f, blk) = disk();
    let (mut t, _) = transport(blk, &mem);
    let mut q = init(&mut t, &[16]).remove(0);
    q.write_desc(&mem, 3, BUF_BASE, 16, F_NEXT, 3);
    q.push_avail(&mem, 3);
    notify(&mut t, 0);
    assert_eq!(q.pop_used(&mem), Some((3, 0)));
    // A cycle through an indirect table on the console's tx queue.
    let (mut t, _) = transport(Console::new(), &mem);
    let mut qs = init(&mut t, &[16; 6]);
    let table = BUF_BASE + 0x1000;
    let raw = |next: u16| {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&BUF_BASE.to_le_bytes());
        d[8..12].copy_from_slice(&8u32.to_le_bytes());
        d[12..14].copy_from_slice(&F_NEXT.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        d
    };
    mem.write_slice(&raw(1), GuestAddress(table)).unwrap();
    mem.write_slice(&raw(0), GuestAddress(table + 16)).unwrap();
    qs[5].write_desc(&mem, 0, table, 32, F_INDIRECT, 0);
    qs[5].push_avail(&mem, 0);
    let (_host, dev_end) = std::os::unix::net::UnixStream::pair().unwrap();
    t.device_mut().attach(dev_end).unwrap();
    notify(&mut t, 5);
    assert_eq!(qs[5].pop_used(&mem), Some((0, 0)));
    assert_eq!(
        t.device().pending_to_host(),
        0,
        "nothing from a bad chain reaches the host"
    );
}

#[test]
fn hostile_huge_lengths_are_refused() {
    let mem = guest_memory();
    let (_f, blk) = disk();
    let (mut t, _) = transport(blk, &mem);
    let mut q = init(&mut t, &[16]).remove(0);
    let hdr = BUF_BASE;
    mem.write_slice(&[0u8; 16], GuestAddress(hdr)).unwrap();
    let st = BUF_BASE + 0x100;
    mem.write_obj(0xeeu8, GuestAddress(st)).unwrap();
    // 16 MiB of data: inside guest memory but over the request cap.
    q.add_chain(
        &mem,
        &[(hdr, 16, false), (0x20_0000, 16 << 20, true), (st, 1, true)],
    );
    notify(&mut t, 0);
    let used = q.pop_used(&mem).unwrap();
    assert_eq!(used.1, 0, "an over-long chain is refused whole");
    // Lengths that overflow u32 when summed.
    q.add_chain(
        &mem,
        &[
            (hdr, 16, false),
            (BUF_BASE, u32::MAX - 8, true),
            (st, 64, true),
        ],
    );
    notify(&mut t, 0);
    assert_eq!(q.pop_used(&mem).map(|u| u.1), Some(0));
    // A well-formed request still works afterwards.
    q.add_chain(
        &mem,
        &[
            (hdr, 16, false),
            (BUF_BASE + 0x1000, 512, true),
            (st, 1, true),
        ],
    );
    notify(&mut t, 0);
    assert_eq!(q.pop_used(&mem).map(|u| u.1), Some(513));
    assert_eq!(mem.read_obj::<u8>(GuestAddress(st)).unwrap(), 0);
    // An out-of-range sector with a huge (but capped) buffer gets IOERR.
    mem.write_slice(&(1u64 << 60).to_le_bytes(), GuestAddress(hdr + 8))
        .unwrap();
    q.add_chain(
        &mem,
        &[
            (hdr, 16, false),
            (BUF_BASE + 0x1000, 512, true),
            (st, 1, true),
        ],
    );
    notify(&mut t, 0);
    assert_eq!(q.pop_used(&mem).map(|u| u.1), Some(1));
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(st)).unwrap(),
        VIRTIO_BLK_S_IOERR
    );
}

#[test]
fn hostile_queue_setup_is_refused() {
    let mem = guest_memory();
    let (mut t, _) = transport(Rng::new(), &mem);
    assert!(negotiate(&mut t, |f| f));
    write32(&mut t, 0x30, 0);
    write32(&mut t, 0x38, 100); // not a power of two
    assert_eq!(read32(&mut t, 0x38), 256);
    let mut q = GuestQueue::new(0, 256);
    q.used = (32 << 20) - 16; // used ring past the end of memory
    setup_queue(&mut t, &q);
    assert_eq!(read32(&mut t, 0x44), 0, "queue not ready");
    driver_ok(&mut t);
    // The device runs with an unusable queue: notifications do nothing.
    q.add_chain(&mem, &[(BUF_BASE, 8, true)]);
    notify(&mut t, 0);
    assert!(t.device().is_activated());
}

#[test]
fn hostile_avail_ring_indices() {
    let mem = guest_memory();
    let (mut t, _) = transport(Rng::new(), &mem);
    let mut q = init(&mut t, &[16]).remove(0);
    // idx claims more entries than the ring holds: nothing is processed.
    q.set_avail_idx(&mem, 40);
    notify(&mut t, 0);
    assert_eq!(q.used_idx(&mem), 0);
    // A head index past the table: consumed, not executed.
    q.set_avail_idx(&mem, 0);
    q.push_avail(&mem, 999);
    notify(&mut t, 0);
    assert_eq!(q.used_idx(&mem), 0);
    // The device still serves a correct request afterwards.
    q.add_chain(&mem, &[(BUF_BASE, 8, true)]);
    notify(&mut t, 0);
    assert_eq!(q.used_idx(&mem), 1);
}

/// Random register writes of every size at every offset, interleaved with notifications.
fn storm<D: VirtioDevice>(t: &mut MmioTransport<D>, seed: u64) {
    let mut r = XorShift(seed);
    for _ in 0..20_000 {
        let off = r.next_u64() % 0x200;
        let len = [1usize, 2, 3, 4, 8][usize::try_from(r.next_u64() % 5).unwrap()];
        let val = r.bytes(len);
        if r.next_u64().is_multiple_of(2) {
            t.write(off, &val);
        } else {
            let mut buf = vec![0u8; len];
            t.read(off, &mut buf);
        }
        if r.next_u64().is_multiple_of(64) {
            notify(t, u32::try_from(r.next_u64() % 8).unwrap());
        }
    }
}

#[test]
fn hostile_register_storm_then_clean_reinit() {
    let mem = guest_memory();
    let (mut t, _) = transport(Rng::new(), &mem);
    init(&mut t, &[16]);
    storm(&mut t, 1);
    let mut q = init(&mut t, &[16]).remove(0);
    q.add_chain(&mem, &[(BUF_BASE, 8, true)]);
    notify(&mut t, 0);
    assert_eq!(
        q.pop_used(&mem).map(|u| u.1),
        Some(8),
        "works after a reset"
    );

    let (_f, blk) = disk();
    let (mut t, _) = transport(blk, &mem);
    init(&mut t, &[16]);
    storm(&mut t, 2);
    let (mut t, _) = transport(Console::new(), &mem);
    init(&mut t, &[16; 6]);
    storm(&mut t, 3);
}

#[test]
fn hostile_register_storm_on_net_then_clean_reinit() {
    use cove_virtio::net::{FakeBackend, Net, VNET_HDR_LEN};
    let mem = guest_memory();
    let link = FakeBackend::new();
    let mac = [0x02, 0, 0, 0, 0, 1];
    let (mut t, _) = transport(Net::with_backend(link.clone(), mac).unwrap(), &mem);
    init(&mut t, &[16, 16]);
    // Frames keep arriving from the host while the driver misbehaves.
    for _ in 0..4 {
        link.inject(vec![0u8; VNET_HDR_LEN + 60]);
    }
    storm(&mut t, 4);
    let _ = t.device_mut().process_tap_input();
    t.device_mut().process_tap_output();
    let mut qs = init(&mut t, &[16, 16]);
    let frame = [0x5au8; VNET_HDR_LEN + 60];
    mem.write_slice(&frame, GuestAddress(BUF_BASE)).unwrap();
    qs[1].add_chain(&mem, &[(BUF_BASE, 72, false)]);
    notify(&mut t, 1);
    assert_eq!(qs[1].pop_used(&mem), Some((0, 0)), "works after a reset");
    let written = link.take_written();
    assert_eq!(
        written.last().map(|p| &p[VNET_HDR_LEN..]),
        Some(&frame[VNET_HDR_LEN..])
    );
}
