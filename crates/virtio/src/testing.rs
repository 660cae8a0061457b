//! A guest driver for tests: builds rings in guest memory and drives the MMIO registers the way
//! Linux's virtio-mmio and virtio-ring drivers do. Built only for tests and the fuzz target
//! (feature `test-utils`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cove_devices::BusDevice;
use vm_memory::{Bytes, GuestAddress};

use crate::device::{Interrupt, IrqLine, VirtioDevice};
use crate::mmio::MmioTransport;
use crate::{GuestMemoryMmap, status};

/// Descriptor flag: the chain continues at `next`.
pub const F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable.
pub const F_WRITE: u16 = 2;

/// Size of the guest memory the helpers build.
pub const MEM_SIZE: u64 = 32 << 20;
/// Where [`BufAlloc`] starts handing out buffers.
pub const BUF_BASE: u64 = 0x10_0000;

/// A single-region guest memory of [`MEM_SIZE`] bytes at address 0.
pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), usize::try_from(MEM_SIZE).unwrap_or(0))])
        .unwrap_or_default()
}

/// An interrupt line that counts how often it was raised.
#[derive(Debug, Default, Clone)]
pub struct CountingLine(pub Arc<AtomicUsize>);

impl CountingLine {
    /// Times raised so far.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl IrqLine for CountingLine {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A transport over `dev` with a counting interrupt line.
pub fn transport<D: VirtioDevice>(
    dev: D,
    mem: &GuestMemoryMmap,
) -> (MmioTransport<D>, CountingLine) {
    let line = CountingLine::default();
    let irq = Arc::new(Interrupt::new(Box::new(line.clone())));
    match MmioTransport::new(dev, mem.clone(), irq) {
        Ok(t) => (t, line),
        Err(e) => panic!("transport: {e}"),
    }
}

/// Bump allocator for guest buffers.
#[derive(Debug)]
pub struct BufAlloc(pub u64);

impl Default for BufAlloc {
    fn default() -> Self {
        Self(BUF_BASE)
    }
}

impl BufAlloc {
    /// `len` bytes, 16-byte aligned.
    pub fn alloc(&mut self, len: u64) -> u64 {
        let addr = self.0;
        self.0 = (self.0 + len + 15) & !15;
        addr
    }
}

/// A split virtqueue as the guest driver sees it.
#[derive(Debug, Clone)]
pub struct GuestQueue {
    /// Queue index.
    pub index: u32,
    /// Queue size.
    pub size: u16,
    /// Descriptor table address.
    pub desc: u64,
    /// Available ring address.
    pub avail: u64,
    /// Used ring address.
    pub used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl GuestQueue {
    /// Queue `index` of `size` entries, its rings in the 64 KiB after `0x1_0000 * (index + 1)`.
    pub fn new(index: u32, size: u16) -> Self {
        let base = 0x1_0000 * (u64::from(index) + 1);
        Self {
            index,
            size,
            desc: base,
            avail: base + 0x8000,
            used: base + 0xa000,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// Writes descriptor `i` raw.
    pub fn write_desc(
        &self,
        mem: &GuestMemoryMmap,
        i: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let at = self.desc + 16 * u64::from(i);
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&raw, GuestAddress(at)).ok();
    }

    /// Offers head `head` in the available ring and bumps `idx`.
    pub fn push_avail(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(slot)).ok();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .ok();
    }

    /// Sets the available ring's `idx` outright (hostile tests).
    pub fn set_avail_idx(&mut self, mem: &GuestMemoryMmap, idx: u16) {
        self.avail_idx = idx;
        mem.write_obj(idx, GuestAddress(self.avail + 2)).ok();
    }

    /// Adds a chain of `(addr, len, device_writable)` buffers and offers it; returns its head.
    pub fn add_chain(&mut self, mem: &GuestMemoryMmap, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        let n = bufs.len();
        for (k, &(addr, len, write)) in bufs.iter().enumerate() {
            let i = self.next_desc;
            let next = (i + 1) % self.size;
            let mut flags = if write { F_WRITE } else { 0 };
            if k + 1 < n {
                flags |= F_NEXT;
            }
            self.write_desc(mem, i, addr, len, flags, next);
            self.next_desc = next;
        }
        self.push_avail(mem, head);
        head
    }

    /// The used ring's `idx`.
    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2)).unwrap_or(0)
    }

    /// The next used element not seen yet: `(head, len)`.
    pub fn pop_used(&mut self, mem: &GuestMemoryMmap) -> Option<(u32, u32)> {
        if self.used_seen == self.used_idx(mem) {
            return None;
        }
        let at = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
        let id: u32 = mem.read_obj(GuestAddress(at)).ok()?;
        let len: u32 = mem.read_obj(GuestAddress(at + 4)).ok()?;
        self.used_seen = self.used_seen.wrapping_add(1);
        Some((id, len))
    }
}

/// Reads a 32-bit register.
pub fn read32<B: BusDevice>(t: &mut B, offset: u64) -> u32 {
    let mut b = [0xffu8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

/// Writes a 32-bit register.
pub fn write32<B: BusDevice>(t: &mut B, offset: u64, v: u32) {
    t.write(offset, &v.to_le_bytes());
}

/// Resets, acknowledges and negotiates `accept(offered)`; returns whether FEATURES_OK stuck.
pub fn negotiate<B: BusDevice>(t: &mut B, accept: impl Fn(u64) -> u64) -> bool {
    write32(t, 0x70, 0);
    write32(t, 0x70, status::ACKNOWLEDGE);
    write32(t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
    write32(t, 0x14, 0);
    let low = read32(t, 0x10);
    write32(t, 0x14, 1);
    let high = read32(t, 0x10);
    let wanted = accept(u64::from(low) | (u64::from(high) << 32));
    write32(t, 0x24, 0);
    write32(t, 0x20, (wanted & 0xffff_ffff) as u32);
    write32(t, 0x24, 1);
    write32(t, 0x20, (wanted >> 32) as u32);
    let st = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    write32(t, 0x70, st);
    read32(t, 0x70) & status::FEATURES_OK != 0
}

/// Programs a queue's size and rings and sets it ready.
pub fn setup_queue<B: BusDevice>(t: &mut B, q: &GuestQueue) {
    write32(t, 0x30, q.index);
    write32(t, 0x38, u32::from(q.size));
    for (off, addr) in [(0x80, q.desc), (0x90, q.avail), (0xa0, q.used)] {
        write32(t, off, (addr & 0xffff_ffff) as u32);
        write32(t, off + 4, (addr >> 32) as u32);
    }
    write32(t, 0x44, 1);
}

/// Sets DRIVER_OK.
pub fn driver_ok<B: BusDevice>(t: &mut B) {
    let st = read32(t, 0x70);
    write32(t, 0x70, st | status::DRIVER_OK);
}

/// The whole Linux init sequence, accepting every offered feature; returns the guest queues.
pub fn init<B: BusDevice>(t: &mut B, sizes: &[u16]) -> Vec<GuestQueue> {
    assert!(negotiate(t, |f| f), "FEATURES_OK refused");
    let queues: Vec<GuestQueue> = sizes
        .iter()
        .enumerate()
        .map(|(i, &s)| GuestQueue::new(u32::try_from(i).unwrap_or(0), s))
        .collect();
    for q in &queues {
        setup_queue(t, q);
    }
    driver_ok(t);
    assert_ne!(read32(t, 0x70) & status::DRIVER_OK, 0, "DRIVER_OK refused");
    queues
}

/// Notifies queue `index` through QueueNotify.
pub fn notify<B: BusDevice>(t: &mut B, index: u32) {
    write32(t, 0x50, index);
}
