//! Descriptor-chain parsing shared by the devices.
//!
//! `virtio-queue` walks a chain for us (following `NEXT` and indirect tables, stopping after
//! "queue size" hops so a cycle cannot spin forever) but it ends a bad chain silently. This
//! module turns a chain into a [`ParsedChain`]: the device-readable segments followed by the
//! device-writable ones, each checked to lie inside guest memory, with the total length capped.
//! A chain cut short (a cycle, an index past the table, an unreadable descriptor, a length
//! overflow) is an error rather than a shorter request.

use std::ops::Deref;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

use crate::GuestMemoryMmap;

/// Most descriptors a chain may hold (the largest queue Cove offers is 256; an indirect table
/// may be longer, but no device here needs more).
pub const MAX_CHAIN_DESCRIPTORS: usize = 1024;

/// Errors from parsing or accessing a descriptor chain.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The head descriptor could not be read (bad index, bad indirect table).
    #[error("descriptor chain is empty or its head is unreadable")]
    Empty,
    /// The walk stopped while the last descriptor still pointed to a next one.
    #[error("descriptor chain is cut short (cycle, index out of range, or unreadable descriptor)")]
    Truncated,
    /// A descriptor's buffer is not entirely inside guest memory.
    #[error("descriptor buffer {addr:#x}+{len:#x} lies outside guest memory")]
    OutsideMemory {
        /// Buffer address.
        addr: u64,
        /// Buffer length.
        len: u32,
    },
    /// The spec puts every device-readable buffer before the device-writable ones.
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    /// The chain's buffers add up to more than the device accepts.
    #[error("descriptor chain holds more than {max} bytes")]
    TooLong {
        /// The cap.
        max: u64,
    },
    /// The chain has more descriptors than [`MAX_CHAIN_DESCRIPTORS`].
    #[error("descriptor chain has more than {MAX_CHAIN_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
    /// A copy ran past the end of the chain's buffers.
    #[error("access of {len} bytes at offset {offset} runs past the chain's buffers")]
    OutOfRange {
        /// Offset into the segments.
        offset: u64,
        /// Bytes asked for.
        len: usize,
    },
    /// Guest memory refused an access (should not happen after validation).
    #[error("guest memory access")]
    Memory(#[source] GuestMemoryError),
}

/// One guest buffer of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes (never 0: empty descriptors are dropped).
    pub len: u32,
}

/// A validated descriptor chain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedChain {
    /// Index of the head descriptor, to return in the used ring.
    pub head: u16,
    /// Device-readable buffers, in order.
    pub readable: Vec<Segment>,
    /// Device-writable buffers, in order.
    pub writable: Vec<Segment>,
}

impl ParsedChain {
    /// Walks and validates `chain`; `max_bytes` caps the sum of all buffer lengths.
    pub fn parse<M>(chain: DescriptorChain<M>, max_bytes: u64) -> Result<Self, ChainError>
    where
        M: Deref<Target = GuestMemoryMmap>,
    {
        let head = chain.head_index();
        let mem: &GuestMemoryMmap = chain.memory();
        // Clone the memory handle out of the chain: the iterator consumes `chain`.
        let mem = mem.clone();
        let mut parsed = Self {
            head,
            ..Self::default()
        };
        let mut total: u64 = 0;
        let mut count = 0usize;
        let mut last: Option<Descriptor> = None;
        for desc in chain {
            count += 1;
            if count > MAX_CHAIN_DESCRIPTORS {
                return Err(ChainError::TooManyDescriptors);
            }
            total += u64::from(desc.len());
            if total > max_bytes {
                return Err(ChainError::TooLong { max: max_bytes });
            }
            last = Some(desc);
            if desc.len() == 0 {
                continue;
            }
            let len =
                usize::try_from(desc.len()).map_err(|_| ChainError::TooLong { max: max_bytes })?;
            if !GuestMemoryBackend::check_range(&mem, desc.addr(), len) {
                return Err(ChainError::OutsideMemory {
                    addr: desc.addr().0,
                    len: desc.len(),
                });
            }
            let seg = Segment {
                addr: desc.addr(),
                len: desc.len(),
            };
            if desc.is_write_only() {
                parsed.writable.push(seg);
            } else if parsed.writable.is_empty() {
                parsed.readable.push(seg);
            } else {
                return Err(ChainError::ReadableAfterWritable);
            }
        }
        match last {
            None => Err(ChainError::Empty),
            Some(d) if d.has_next() => Err(ChainError::Truncated),
            Some(_) => Ok(parsed),
        }
    }

    /// Total length of the device-readable buffers.
    pub fn readable_len(&self) -> u64 {
        total_len(&self.readable)
    }

    /// Total length of the device-writable buffers.
    pub fn writable_len(&self) -> u64 {
        total_len(&self.writable)
    }
}

/// Sum of the segments' lengths.
pub fn total_len(segs: &[Segment]) -> u64 {
    segs.iter().map(|s| u64::from(s.len)).sum()
}

/// Calls `f(guest_address, range_in_buf)` for each piece of `[offset, offset + len)` of `segs`.
fn for_each_piece(
    segs: &[Segment],
    offset: u64,
    len: usize,
    mut f: impl FnMut(GuestAddress, std::ops::Range<usize>) -> Result<(), ChainError>,
) -> Result<(), ChainError> {
    let out_of_range = || ChainError::OutOfRange { offset, len };
    let end = offset
        .checked_add(u64::try_from(len).map_err(|_| out_of_range())?)
        .ok_or_else(out_of_range)?;
    if end > total_len(segs) {
        return Err(out_of_range());
    }
    let mut skip = offset;
    let mut done = 0usize;
    for seg in segs {
        if done == len {
            break;
        }
        let seg_len = u64::from(seg.len);
        if skip >= seg_len {
            skip -= seg_len;
            continue;
        }
        // Both fit in usize: seg_len is a u32 and the rest is bounded by `len`.
        let avail = usize::try_from(seg_len - skip).map_err(|_| out_of_range())?;
        let n = avail.min(len - done);
        let addr = seg.addr.0.checked_add(skip).ok_or_else(out_of_range)?;
        f(GuestAddress(addr), done..done + n)?;
        done += n;
        skip = 0;
    }
    Ok(())
}

/// Reads `buf.len()` bytes starting `offset` bytes into `segs`.
pub fn read_segments(
    mem: &GuestMemoryMmap,
    segs: &[Segment],
    offset: u64,
    buf: &mut [u8],
) -> Result<(), ChainError> {
    let len = buf.len();
    for_each_piece(segs, offset, len, |addr, r| {
        mem.read_slice(&mut buf[r], addr)
            .map_err(ChainError::Memory)
    })
}

/// Writes `data` starting `offset` bytes into `segs`.
pub fn write_segments(
    mem: &GuestMemoryMmap,
    segs: &[Segment],
    offset: u64,
    data: &[u8],
) -> Result<(), ChainError> {
    for_each_piece(segs, offset, data.len(), |addr, r| {
        mem.write_slice(&data[r], addr).map_err(ChainError::Memory)
    })
}

/// Puts `head` in the used ring with `len` bytes written; logs a failure (a broken ring leaves
/// the guest's request pending, which only hurts the guest).
pub fn add_used(queue: &mut Queue, mem: &GuestMemoryMmap, head: u16, len: u32) -> bool {
    match queue.add_used(mem, head, len) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, head, "virtio: cannot add to the used ring");
            false
        }
    }
}

/// Pops the next available chain of `queue`, if any.
pub fn pop<'a>(
    queue: &mut Queue,
    mem: &'a GuestMemoryMmap,
) -> Option<DescriptorChain<&'a GuestMemoryMmap>> {
    queue.pop_descriptor_chain(mem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{F_NEXT, F_WRITE, GuestQueue, MEM_SIZE, guest_memory};

    /// A ready queue of 16 over `mem` with the guest's view `gq`.
    fn queue(mem: &GuestMemoryMmap) -> (Queue, GuestQueue) {
        let gq = GuestQueue::new(0, 16);
        let mut q = Queue::new(16).unwrap();
        q.try_set_desc_table_address(GuestAddress(gq.desc)).unwrap();
        q.try_set_avail_ring_address(GuestAddress(gq.avail))
            .unwrap();
        q.try_set_used_ring_address(GuestAddress(gq.used)).unwrap();
        q.set_ready(true);
        assert!(q.is_valid(mem));
        (q, gq)
    }

    fn parse_head(mem: &GuestMemoryMmap, q: &mut Queue) -> Result<ParsedChain, ChainError> {
        let chain = pop(q, mem).expect("a chain is available");
        ParsedChain::parse(chain, 1 << 20)
    }

    #[test]
    fn splits_readable_and_writable() {
        let mem = guest_memory();
        let (mut q, mut gq) = queue(&mem);
        gq.add_chain(
            &mem,
            &[
                (0x10_0000, 16, false),
                (0x10_1000, 0, true),
                (0x10_2000, 8, true),
            ],
        );
        let p = parse_head(&mem, &mut q).unwrap();
        assert_eq!(p.readable.len(), 1);
        assert_eq!(p.writable.len(), 1, "empty descriptors are dropped");
        assert_eq!((p.readable_len(), p.writable_len()), (16, 8));
    }

    #[test]
    fn refuses_bad_chains() {
        let mem = guest_memory();
        let (mut q, mut gq) = queue(&mem);
        // A cycle: 0 -> 1 -> 0.
        gq.write_desc(&mem, 0, 0x10_0000, 8, F_NEXT, 1);
        gq.write_desc(&mem, 1, 0x10_0000, 8, F_NEXT, 0);
        gq.push_avail(&mem, 0);
        assert!(matches!(
            parse_head(&mem, &mut q),
            Err(ChainError::Truncated)
        ));
        // Next index past the table.
        gq.write_desc(&mem, 2, 0x10_0000, 8, F_NEXT, 99);
        gq.push_avail(&mem, 2);
        assert!(matches!(
            parse_head(&mem, &mut q),
            Err(ChainError::Truncated)
        ));
        // Buffer crossing the end of memory, and one whose end overflows.
        gq.write_desc(&mem, 3, MEM_SIZE - 4, 8, 0, 0);
        gq.push_avail(&mem, 3);
        assert!(matches!(
            parse_head(&mem, &mut q),
            Err(ChainError::OutsideMemory { .. })
        ));
        gq.write_desc(&mem, 4, u64::MAX - 2, 8, F_WRITE, 0);
        gq.push_avail(&mem, 4);
        assert!(matches!(
            parse_head(&mem, &mut q),
            Err(ChainError::OutsideMemory { .. })
        ));
        // Readable after writable.
        gq.write_desc(&mem, 5, 0x10_0000, 8, F_WRITE | F_NEXT, 6);
        gq.write_desc(&mem, 6, 0x10_0000, 8, 0, 0);
        gq.push_avail(&mem, 5);
        assert!(matches!(
            parse_head(&mem, &mut q),
            Err(ChainError::ReadableAfterWritable)
        ));
        // Longer than the cap.
        gq.write_desc(&mem, 7, 0x10_0000, 2 << 20, 0, 0);
        gq.push_avail(&mem, 7);
        assert!(matches!(
            parse_head(&mem, &mut q),
            Err(ChainError::TooLong { .. })
        ));
        // Head index past the table.
        gq.push_avail(&mem, 200);
        assert!(matches!(parse_head(&mem, &mut q), Err(ChainError::Empty)));
    }

    #[test]
    fn copies_across_segments() {
        let mem = guest_memory();
        let segs = [
            Segment {
                addr: GuestAddress(0x10_0000),
                len: 3,
            },
            Segment {
                addr: GuestAddress(0x20_0000),
                len: 5,
            },
        ];
        write_segments(&mem, &segs, 1, &[1, 2, 3, 4, 5, 6, 7]).unwrap();
        let mut out = [0u8; 8];
        read_segments(&mem, &segs, 0, &mut out).unwrap();
        assert_eq!(out, [0, 1, 2, 3, 4, 5, 6, 7]);
        let mut tail = [0u8; 2];
        read_segments(&mem, &segs, 6, &mut tail).unwrap();
        assert_eq!(tail, [6, 7]);
        assert!(read_segments(&mem, &segs, 7, &mut tail).is_err());
        assert!(write_segments(&mem, &segs, u64::MAX, &[1]).is_err());
    }
}
