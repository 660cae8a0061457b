//! Fuzz bodies, shared by the cargo-fuzz target in `fuzz/` and a stable `#[test]` that runs
//! them over pseudo-random inputs from a fixed seed.
//!
//! [`fuzz_virtqueue`] decodes its input structurally (so that random bytes make plausible,
//! hostile rings: cycles, buffers across a memory hole or past the end, indirect tables, avail
//! indices far ahead) and then walks the queue both through [`ParsedChain`] and through a live
//! virtio-rng device. A panic, or a broken invariant, is a finding.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::GuestMemoryMmap;
use crate::device::{Interrupt, VirtioDevice};
use crate::queue::{self, ParsedChain};
use crate::rng::Rng;
use crate::testing::CountingLine;

/// Guest memory of the fuzz body: two regions with a hole between them.
const REGIONS: [(u64, usize); 2] = [(0, 0x4_0000), (0x5_0000, 0x3_0000)];
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x3000;
const USED: u64 = 0x4000;
const INDIRECT: u64 = 0x2_0000;
const CAP: u64 = 1 << 20;

/// Reads an input as a stream of little-endian integers, zero once exhausted.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    fn addr(&mut self) -> u64 {
        let off = u64::from(self.u16());
        match self.u8() % 8 {
            0 => 0x1_0000 + off,
            1 => 0x4_0000 - (off % 64), // runs into the hole
            2 => 0x4_8000 + off,        // inside the hole
            3 => 0x8_0000 - (off % 64), // runs past the end
            4 => DESC + (off % 0x1000), // aliases the descriptor table
            5 => u64::MAX - (off % 64), // overflows
            6 => INDIRECT,
            _ => self.u64(),
        }
    }

    fn len(&mut self) -> u32 {
        match self.u8() % 6 {
            0 => 0,
            1 => u32::from(self.u8()),
            2 => u32::from(self.u16()),
            3 => u32::MAX,
            4 => 16 * u32::from(self.u8() % 8), // indirect table sizes
            _ => self.u32(),
        }
    }

    /// Writes one raw descriptor at `at`.
    fn descriptor(&mut self, mem: &GuestMemoryMmap, at: u64, table_len: u16) {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&self.addr().to_le_bytes());
        raw[8..12].copy_from_slice(&self.len().to_le_bytes());
        raw[12..14].copy_from_slice(&u16::from(self.u8() & 7).to_le_bytes());
        let next = self.u16() % table_len.saturating_add(2);
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        // The table lies inside memory; a failure would only mean a shorter test.
        let _ = mem.write_slice(&raw, GuestAddress(at));
    }
}

fn memory() -> Option<GuestMemoryMmap> {
    let ranges: Vec<_> = REGIONS.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
    GuestMemoryMmap::from_ranges(&ranges).ok()
}

fn make_queue(mem: &GuestMemoryMmap, size: u16) -> Option<Queue> {
    let mut q = Queue::new(256).ok()?;
    q.try_set_size(size).ok()?;
    q.try_set_desc_table_address(GuestAddress(DESC)).ok()?;
    q.try_set_avail_ring_address(GuestAddress(AVAIL)).ok()?;
    q.try_set_used_ring_address(GuestAddress(USED)).ok()?;
    q.set_ready(true);
    q.is_valid(mem).then_some(q)
}

/// What one fuzz case reached, so the stable test can check that inputs are not all rejected
/// at the door.
#[derive(Clone, Copy, Debug, Default)]
pub struct FuzzStats {
    /// Chains popped.
    pub chains: u32,
    /// Chains that parsed.
    pub parsed: u32,
}

/// One fuzz case: builds a hostile queue from `data` and consumes it.
pub fn fuzz_virtqueue(data: &[u8]) -> FuzzStats {
    let mut stats = FuzzStats::default();
    let mut input = Input(data);
    let Some(mem) = memory() else {
        return stats;
    };
    let size: u16 = 1 << (input.u8() % 9);
    for i in 0..u64::from(input.u8()).min(u64::from(size)) {
        input.descriptor(&mem, DESC + 16 * i, size);
    }
    for i in 0..u64::from(input.u8() % 8) {
        input.descriptor(&mem, INDIRECT + 16 * i, 8);
    }
    let entries = u16::from(input.u8()) % (size + 1);
    for i in 0..entries {
        let head = input.u16() % (size + 2);
        let _ = mem.write_obj(head, GuestAddress(AVAIL + 4 + 2 * u64::from(i)));
    }
    let idx = if input.u8() % 4 == 0 {
        input.u16()
    } else {
        entries
    };
    let _ = mem.write_obj(idx, GuestAddress(AVAIL + 2));

    // 1. The parser and the copy helpers, on their own.
    if let Some(mut q) = make_queue(&mem, size) {
        let mut popped = 0u32;
        while let Some(chain) = queue::pop(&mut q, &mem) {
            popped += 1;
            assert!(
                popped <= u32::from(size),
                "popped more chains than the ring holds"
            );
            let head = chain.head_index();
            stats.chains += 1;
            let len = match ParsedChain::parse(chain, CAP) {
                Ok(p) => {
                    stats.parsed += 1;
                    check_chain(&mem, &p)
                }
                Err(_) => 0,
            };
            let _ = q.add_used(&mem, head, len);
        }
    }

    // 2. A live device on the same rings (as mutated by step 1).
    let _ = mem.write_obj(0u16, GuestAddress(USED + 2));
    if let Some(q) = make_queue(&mem, size) {
        let irq = Arc::new(Interrupt::new(Box::new(CountingLine::default())));
        let mut rng = Rng::new();
        if rng.activate(mem.clone(), vec![q], irq).is_ok() {
            rng.process_queue(0);
            rng.process_queue(1);
        }
    }
    stats
}

/// Checks a parsed chain's invariants and exercises the copies; returns the bytes "written".
fn check_chain(mem: &GuestMemoryMmap, p: &ParsedChain) -> u32 {
    let total = p.readable_len() + p.writable_len();
    assert!(total <= CAP, "cap enforced");
    for s in p.readable.iter().chain(&p.writable) {
        assert!(s.len > 0);
        assert!(GuestMemoryBackend::check_range(mem, s.addr, s.len as usize));
    }
    let mut buf = vec![0u8; usize::try_from(p.readable_len()).unwrap_or(0)];
    assert!(queue::read_segments(mem, &p.readable, 0, &mut buf).is_ok());
    let out = vec![0xa5u8; usize::try_from(p.writable_len()).unwrap_or(0)];
    assert!(queue::write_segments(mem, &p.writable, 0, &out).is_ok());
    u32::try_from(out.len()).unwrap_or(0)
}

/// A small deterministic generator (xorshift64*) for the stable fuzz test.
#[derive(Debug)]
pub struct XorShift(pub u64);

impl XorShift {
    /// Next pseudo-random value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// `len` pseudo-random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64().to_le_bytes()[0]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzz_body_survives_pseudo_random_inputs() {
        let mut rng = XorShift(SEED);
        let mut total = FuzzStats::default();
        for _ in 0..3000 {
            let len = usize::try_from(rng.next_u64() % 1024).unwrap_or(0);
            let input = rng.bytes(len);
            let s = fuzz_virtqueue(&input);
            total.chains += s.chains;
            total.parsed += s.parsed;
        }
        assert!(
            total.parsed > 100,
            "inputs reach the parser's success path: {total:?}"
        );
        assert!(
            total.chains > total.parsed * 2,
            "and its error paths: {total:?}"
        );
    }

    #[test]
    fn fuzz_body_handles_edge_inputs() {
        fuzz_virtqueue(&[]);
        fuzz_virtqueue(&[0xff; 4096]);
        fuzz_virtqueue(&[8, 255, 7, 255]);
    }

    /// The fixed seed: a failure reproduces exactly.
    const SEED: u64 = 0x5eed_0000_c0fe_0001;
}
