//! virtio-blk through the MMIO transport, driven as a Linux guest would.
#![allow(clippy::cast_possible_truncation)] // test patterns truncate on purpose

use std::io::Write;
use std::sync::Arc;

use cove_virtio::block::*;
use cove_virtio::testing::*;
use cove_virtio::{Interrupt, MmioTransport};
use vm_memory::{Bytes, GuestAddress};

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const DISK_SECTORS: u64 = 2048; // 1 MiB

struct Disk {
    file: tempfile::NamedTempFile,
    mem: vm_memory::GuestMemoryMmap<()>,
    t: MmioTransport<Block>,
    q: GuestQueue,
    alloc: BufAlloc,
}

fn config(file: &tempfile::NamedTempFile, read_only: bool) -> BlockConfig {
    BlockConfig {
        path: file.path().to_path_buf(),
        read_only,
        serial: "cove-rootfs-0001".into(),
    }
}

fn disk(read_only: bool) -> Disk {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let pattern: Vec<u8> = (0..DISK_SECTORS * 512).map(|i| (i % 251) as u8).collect();
    file.write_all(&pattern).unwrap();
    let mem = guest_memory();
    let (mut t, _line) = transport(Block::new(config(&file, read_only)).unwrap(), &mem);
    let q = init(&mut t, &[256]).remove(0);
    Disk {
        file,
        mem,
        t,
        q,
        alloc: BufAlloc::default(),
    }
}

/// A request as Linux builds it: header, data buffers, status. Returns (status addr, data addrs).
fn submit(d: &mut Disk, typ: u32, sector: u64, data: &[(u32, bool)]) -> (u64, Vec<u64>) {
    let hdr = d.alloc.alloc(16);
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&typ.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    d.mem.write_slice(&h, GuestAddress(hdr)).unwrap();
    let mut bufs = vec![(hdr, 16, false)];
    let mut addrs = Vec::new();
    for &(len, w) in data {
        let a = d.alloc.alloc(u64::from(len));
        addrs.push(a);
        bufs.push((a, len, w));
    }
    let status = d.alloc.alloc(1);
    d.mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
    bufs.push((status, 1, true));
    d.q.add_chain(&d.mem, &bufs);
    (status, addrs)
}

fn run(d: &mut Disk) -> (u32, u32) {
    notify(&mut d.t, 0);
    d.q.pop_used(&d.mem).expect("request completed")
}

fn status(d: &Disk, addr: u64) -> u8 {
    d.mem.read_obj(GuestAddress(addr)).unwrap()
}

#[test]
fn blk_config_space_and_features() {
    let d = disk(true);
    let mut t = d.t;
    assert_eq!(read32(&mut t, 0x08), 2);
    write32(&mut t, 0x14, 0);
    let f = read32(&mut t, 0x10);
    assert_ne!(
        f & (1 << 5),
        0,
        "VIRTIO_BLK_F_RO offered for a read-only disk"
    );
    assert_ne!(f & (1 << 9), 0, "VIRTIO_BLK_F_FLUSH");
    let mut cap = [0u8; 8];
    cove_devices::BusDevice::read(&mut t, 0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), DISK_SECTORS);
    assert_eq!(read32(&mut t, 0x100 + 20), 512, "blk_size");
    assert_eq!(read32(&mut t, 0x100 + 12), SEG_MAX);
    assert_eq!(
        read32(&mut t, 0x100 + 0x80),
        0,
        "past the config space reads as zero"
    );
}

#[test]
fn blk_write_then_read_matches_checksum() {
    let mut d = disk(false);
    let data: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(7) ^ 0x5a) as u8)
        .collect();
    let want = crc32fast::hash(&data);
    // OUT: two data buffers of 4 KiB at sector 10.
    let (st, addrs) = submit(&mut d, T_OUT, 10, &[(4096, false), (4096, false)]);
    d.mem
        .write_slice(&data[..4096], GuestAddress(addrs[0]))
        .unwrap();
    d.mem
        .write_slice(&data[4096..], GuestAddress(addrs[1]))
        .unwrap();
    let (_, len) = run(&mut d);
    assert_eq!(status(&d, st), VIRTIO_BLK_S_OK);
    assert_eq!(len, 1, "only the status byte written");
    let on_disk = std::fs::read(d.file.path()).unwrap();
    assert_eq!(crc32fast::hash(&on_disk[10 * 512..10 * 512 + 8192]), want);
    // IN: read back through three buffers of different sizes.
    let (st, addrs) = submit(&mut d, T_IN, 10, &[(512, true), (4096, true), (3584, true)]);
    let (_, len) = run(&mut d);
    assert_eq!(status(&d, st), VIRTIO_BLK_S_OK);
    assert_eq!(len, 8192 + 1);
    let mut back = vec![0u8; 8192];
    d.mem
        .read_slice(&mut back[..512], GuestAddress(addrs[0]))
        .unwrap();
    d.mem
        .read_slice(&mut back[512..4608], GuestAddress(addrs[1]))
        .unwrap();
    d.mem
        .read_slice(&mut back[4608..], GuestAddress(addrs[2]))
        .unwrap();
    assert_eq!(crc32fast::hash(&back), want);
    assert_eq!(read32(&mut d.t, 0x60) & 1, 1, "used-ring interrupt");
}

#[test]
fn blk_read_only_refuses_writes() {
    let mut d = disk(true);
    let before = crc32fast::hash(&std::fs::read(d.file.path()).unwrap());
    let (st, addrs) = submit(&mut d, T_OUT, 0, &[(512, false)]);
    d.mem
        .write_slice(&[0xee; 512], GuestAddress(addrs[0]))
        .unwrap();
    run(&mut d);
    assert_eq!(status(&d, st), VIRTIO_BLK_S_IOERR);
    assert_eq!(
        crc32fast::hash(&std::fs::read(d.file.path()).unwrap()),
        before
    );
    // Reads still work.
    let (st, addrs) = submit(&mut d, T_IN, 1, &[(512, true)]);
    run(&mut d);
    assert_eq!(status(&d, st), VIRTIO_BLK_S_OK);
    let b: u8 = d.mem.read_obj(GuestAddress(addrs[0])).unwrap();
    assert_eq!(b, (512 % 251) as u8);
}

#[test]
fn blk_flush_succeeds() {
    let mut d = disk(false);
    let (st, _) = submit(&mut d, T_FLUSH, 0, &[]);
    assert_eq!(run(&mut d).1, 1);
    assert_eq!(status(&d, st), VIRTIO_BLK_S_OK);
}

#[test]
fn blk_get_id_returns_the_serial() {
    let mut d = disk(false);
    let (st, addrs) = submit(&mut d, T_GET_ID, 0, &[(20, true)]);
    assert_eq!(run(&mut d).1, 21);
    assert_eq!(status(&d, st), VIRTIO_BLK_S_OK);
    let mut id = [0xffu8; 20];
    d.mem.read_slice(&mut id, GuestAddress(addrs[0])).unwrap();
    assert_eq!(&id[..16], b"cove-rootfs-0001");
    assert_eq!(&id[16..], &[0, 0, 0, 0]);
}

#[test]
fn blk_out_of_range_and_overflowing_sectors_fail() {
    let mut d = disk(false);
    for sector in [DISK_SECTORS, DISK_SECTORS - 1, u64::MAX, u64::MAX / 512] {
        let (st, _) = submit(&mut d, T_IN, sector, &[(1024, true)]);
        run(&mut d);
        assert_eq!(status(&d, st), VIRTIO_BLK_S_IOERR, "sector {sector}");
    }
    // The last whole sector is fine.
    let (st, _) = submit(&mut d, T_IN, DISK_SECTORS - 1, &[(512, true)]);
    run(&mut d);
    assert_eq!(status(&d, st), VIRTIO_BLK_S_OK);
}

#[test]
fn blk_bad_directions_and_types_are_refused() {
    let mut d = disk(false);
    // IN whose data buffer is device-readable.
    let (st, _) = submit(&mut d, T_IN, 0, &[(512, false)]);
    run(&mut d);
    assert_eq!(status(&d, st), VIRTIO_BLK_S_IOERR);
    // OUT whose data buffer is device-writable.
    let (st, _) = submit(&mut d, T_OUT, 0, &[(512, true)]);
    run(&mut d);
    assert_eq!(status(&d, st), VIRTIO_BLK_S_IOERR);
    // Data not a multiple of 512.
    let (st, _) = submit(&mut d, T_IN, 0, &[(100, true)]);
    run(&mut d);
    assert_eq!(status(&d, st), VIRTIO_BLK_S_IOERR);
    // Unknown type.
    let (st, _) = submit(&mut d, 0x77, 0, &[]);
    run(&mut d);
    assert_eq!(status(&d, st), VIRTIO_BLK_S_UNSUPP);
    // Status descriptor read-only: nothing is written, the chain is still returned.
    let hdr = d.alloc.alloc(16);
    let st = d.alloc.alloc(1);
    d.mem.write_obj(0x55u8, GuestAddress(st)).unwrap();
    d.q.add_chain(&d.mem, &[(hdr, 16, false), (st, 1, false)]);
    assert_eq!(run(&mut d).1, 0);
    assert_eq!(status(&d, st), 0x55);
    // Header too short.
    let (st, _) = {
        let hdr = d.alloc.alloc(8);
        let st = d.alloc.alloc(1);
        d.q.add_chain(&d.mem, &[(hdr, 8, false), (st, 1, true)]);
        (st, ())
    };
    run(&mut d);
    assert_eq!(status(&d, st), VIRTIO_BLK_S_IOERR);
    // A request larger than the cap.
    let big = u32::try_from(MAX_REQUEST_DATA + 512).unwrap();
    let (st, _) = submit(&mut d, T_IN, 0, &[(big, true)]);
    run(&mut d);
    assert_ne!(status(&d, st), VIRTIO_BLK_S_OK);
}

#[test]
fn blk_save_restore_continues_mid_stream() {
    let mut d = disk(false);
    let (st, addrs) = submit(&mut d, T_OUT, 3, &[(512, false)]);
    d.mem
        .write_slice(&[0xab; 512], GuestAddress(addrs[0]))
        .unwrap();
    run(&mut d);
    assert_eq!(status(&d, st), VIRTIO_BLK_S_OK);
    // A request is queued but not yet notified when the snapshot is taken.
    let (st, addrs) = submit(&mut d, T_IN, 3, &[(512, true)]);
    let json = serde_json::to_string(&(d.t.device().save(), d.t.save())).unwrap();
    let (bs, ms): (BlockState, cove_virtio::persist::MmioState) =
        serde_json::from_str(&json).unwrap();
    let line = CountingLine::default();
    let irq = Arc::new(Interrupt::new(Box::new(line.clone())));
    let dev = Block::restore(config(&d.file, false), &bs, d.mem.clone(), irq.clone()).unwrap();
    d.t = MmioTransport::restore(dev, d.mem.clone(), irq, &ms).unwrap();
    assert_eq!(read32(&mut d.t, 0x70) & 4, 4, "still DRIVER_OK");
    let (_, len) = run(&mut d);
    assert_eq!(len, 513);
    assert_eq!(status(&d, st), VIRTIO_BLK_S_OK);
    let b: u8 = d.mem.read_obj(GuestAddress(addrs[0] + 511)).unwrap();
    assert_eq!(b, 0xab);
    assert_eq!(line.count(), 1);
    // A disk whose size changed is refused.
    d.file.as_file().set_len(4096).unwrap();
    let irq = Arc::new(Interrupt::new(Box::new(CountingLine::default())));
    assert!(Block::restore(config(&d.file, false), &bs, d.mem.clone(), irq).is_err());
}

const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;

/// A range of a discard or write-zeroes request: sector, sectors, flags.
type Range = (u64, u32, u32);

/// A discard or write-zeroes request of `ranges`.
fn submit_ranges(d: &mut Disk, typ: u32, ranges: &[Range]) -> u64 {
    let len = u32::try_from(ranges.len() * 16).unwrap();
    let (st, addrs) = submit(d, typ, 0, &[(len, false)]);
    for (i, &(sector, n, flags)) in ranges.iter().enumerate() {
        let mut r = [0u8; 16];
        r[0..8].copy_from_slice(&sector.to_le_bytes());
        r[8..12].copy_from_slice(&n.to_le_bytes());
        r[12..16].copy_from_slice(&flags.to_le_bytes());
        d.mem
            .write_slice(&r, GuestAddress(addrs[0] + i as u64 * 16))
            .unwrap();
    }
    st
}

fn allocated(d: &Disk) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(d.file.path()).unwrap().blocks() * 512
}

#[test]
fn blk_discard_gives_space_back_and_reads_zero() {
    let mut d = disk(false);
    write32(&mut d.t, 0x14, 0);
    let f = u64::from(read32(&mut d.t, 0x10));
    assert_ne!(f & (1 << 13), 0, "VIRTIO_BLK_F_DISCARD offered");
    assert_ne!(f & (1 << 14), 0, "VIRTIO_BLK_F_WRITE_ZEROES offered");
    // The configuration space's discard and write-zeroes fields (virtio 1.1, 5.2.4).
    let cfg = |t: &mut MmioTransport<Block>, at: u64| read32(t, 0x100 + at);
    assert_eq!(
        cfg(&mut d.t, 36),
        MAX_DISCARD_SECTORS,
        "max_discard_sectors"
    );
    assert_eq!(cfg(&mut d.t, 40), MAX_DISCARD_SEG, "max_discard_seg");
    assert_eq!(
        cfg(&mut d.t, 44),
        DISCARD_ALIGNMENT,
        "discard_sector_alignment"
    );
    assert_eq!(
        cfg(&mut d.t, 48),
        MAX_DISCARD_SECTORS,
        "max_write_zeroes_sectors"
    );
    assert_eq!(cfg(&mut d.t, 52), MAX_DISCARD_SEG, "max_write_zeroes_seg");
    assert_eq!(cfg(&mut d.t, 56) & 0xff, 1, "write_zeroes_may_unmap");
    d.file.as_file().sync_all().unwrap();
    let before = allocated(&d);
    assert!(before >= DISK_SECTORS * 512, "written whole: {before}");
    // Two ranges in one request: the first 256 KiB, and 256 KiB from 512 KiB.
    let st = submit_ranges(&mut d, T_DISCARD, &[(0, 512, 0), (1024, 512, 0)]);
    assert_eq!(run(&mut d).1, 1);
    assert_eq!(status(&d, st), VIRTIO_BLK_S_OK);
    let after = allocated(&d);
    assert!(before - after >= 512 * 1024, "{before} → {after}");
    let on_disk = std::fs::read(d.file.path()).unwrap();
    assert_eq!(on_disk.len() as u64, DISK_SECTORS * 512, "size kept");
    assert!(on_disk[..256 * 1024].iter().all(|&b| b == 0));
    assert!(on_disk[512 * 1024..768 * 1024].iter().all(|&b| b == 0));
    assert_eq!(
        on_disk[256 * 1024 + 1],
        ((256 * 1024 + 1) % 251) as u8,
        "between: kept"
    );
    // Write zeroes without UNMAP keeps the blocks allocated.
    d.file.as_file().sync_all().unwrap();
    let held = allocated(&d);
    let st = submit_ranges(&mut d, T_WRITE_ZEROES, &[(1800, 8, 0)]);
    run(&mut d);
    assert_eq!(status(&d, st), VIRTIO_BLK_S_OK);
    let on_disk = std::fs::read(d.file.path()).unwrap();
    assert!(on_disk[1800 * 512..1808 * 512].iter().all(|&b| b == 0));
    assert!(
        allocated(&d) >= held,
        "kept allocated: {held} → {}",
        allocated(&d)
    );
    // Write zeroes (unmap allowed) reads back zero through the device.
    let st = submit_ranges(&mut d, T_WRITE_ZEROES, &[(1600, 8, 1)]);
    run(&mut d);
    assert_eq!(status(&d, st), VIRTIO_BLK_S_OK);
    let (st, addrs) = submit(&mut d, T_IN, 1600, &[(4096, true)]);
    run(&mut d);
    assert_eq!(status(&d, st), VIRTIO_BLK_S_OK);
    let mut back = [0xffu8; 4096];
    d.mem.read_slice(&mut back, GuestAddress(addrs[0])).unwrap();
    assert!(back.iter().all(|&b| b == 0));
}

#[test]
fn blk_bad_discards_are_refused_and_change_nothing() {
    let mut d = disk(false);
    let before = crc32fast::hash(&std::fs::read(d.file.path()).unwrap());
    // Past the end, overflowing, unknown flags, an unmap flag on a discard, too long a
    // range, no range, a partial range, too many ranges, and a device-writable range list.
    let bad: [(&[Range], u8); 5] = [
        (&[(DISK_SECTORS - 1, 2, 0)], VIRTIO_BLK_S_IOERR),
        (&[(u64::MAX, 1, 0)], VIRTIO_BLK_S_IOERR),
        (&[(0, 8, 2)], VIRTIO_BLK_S_UNSUPP),
        (&[(0, 8, 1)], VIRTIO_BLK_S_UNSUPP),
        (&[(0, MAX_DISCARD_SECTORS + 1, 0)], VIRTIO_BLK_S_UNSUPP),
    ];
    // A good range before a bad one is not applied either.
    let bad = [
        (&[(0, 8, 0), (DISK_SECTORS, 8, 0)][..], VIRTIO_BLK_S_IOERR),
        (&[(0, 8, 0), (8, 8, 4)][..], VIRTIO_BLK_S_UNSUPP),
    ]
    .into_iter()
    .chain(bad);
    for (ranges, want) in bad {
        let st = submit_ranges(&mut d, T_DISCARD, ranges);
        run(&mut d);
        assert_eq!(status(&d, st), want, "{ranges:?}");
    }
    for len in [0u32, 8, 16 * (MAX_DISCARD_SEG + 1)] {
        let (st, _) = submit(&mut d, T_DISCARD, 0, &[(len, false)]);
        run(&mut d);
        assert_eq!(status(&d, st), VIRTIO_BLK_S_IOERR, "{len} bytes of ranges");
    }
    let (st, _) = submit(&mut d, T_DISCARD, 0, &[(16, true)]);
    run(&mut d);
    assert_eq!(status(&d, st), VIRTIO_BLK_S_IOERR);
    assert_eq!(
        crc32fast::hash(&std::fs::read(d.file.path()).unwrap()),
        before
    );
    // A read-only disk offers neither, and refuses both.
    let mut ro = disk(true);
    write32(&mut ro.t, 0x14, 0);
    assert_eq!(read32(&mut ro.t, 0x10) & (3 << 13), 0);
    let st = submit_ranges(&mut ro, T_WRITE_ZEROES, &[(0, 8, 0)]);
    run(&mut ro);
    assert_eq!(status(&ro, st), VIRTIO_BLK_S_IOERR);
}
