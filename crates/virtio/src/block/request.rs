//! Parsing and executing one virtio-blk request (virtio 1.x, 5.2.6).
//!
//! A request is a 16-byte header (type, reserved, sector) in device-readable memory, then data
//! (device-readable for OUT, device-writable for IN and GET_ID), then one device-writable status
//! byte at the very end. The framing across descriptors is free, as the spec requires: this
//! module works on the byte streams of [`ParsedChain`], not on descriptor boundaries.

use std::os::unix::fs::FileExt;

use std::os::fd::AsRawFd;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};

use super::device::{
    Block, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, MAX_REQUEST_DATA, SECTOR_SIZE, SERIAL_LEN,
};
use crate::GuestMemoryMmap;
use crate::queue::{self, ParsedChain};

/// Status: success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Status: the request failed.
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Status: the request type is not supported.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Length of the request header.
const HEADER_LEN: u64 = 16;
/// Length of one range of a discard or write-zeroes request (`struct
/// virtio_blk_discard_write_zeroes`: le64 sector, le32 num_sectors, le32 flags).
const RANGE_LEN: u64 = 16;
/// A write-zeroes range's flag: the device may unmap (deallocate) what it zeroes.
const FLAG_UNMAP: u32 = 1;
/// Bytes copied per step between the file and guest memory.
const CHUNK: usize = 64 * 1024;

/// Why a request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No device-writable byte for the status.
    #[error("no device-writable status byte")]
    NoStatus,
    /// Fewer than 16 device-readable bytes.
    #[error("request header is not readable")]
    Header(#[source] Option<queue::ChainError>),
    /// Buffers in the wrong direction for the request type.
    #[error("data buffers in the wrong direction for request type {0}")]
    Direction(u32),
    /// Data length not a multiple of 512.
    #[error("data length {0} is not a multiple of 512")]
    Unaligned(u64),
    /// Data longer than the device accepts.
    #[error("data length {0} exceeds the per-request cap")]
    TooLong(u64),
    /// The sector range runs past the disk (or overflows).
    #[error("sectors {sector}+{count} outside the disk of {capacity} sectors")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Sectors.
        count: u64,
        /// Disk size.
        capacity: u64,
    },
    /// A write to a read-only disk.
    #[error("write to a read-only disk")]
    ReadOnly,
    /// A discard or write-zeroes request whose ranges are not whole 16-byte entries, none, or
    /// more than the device takes.
    #[error("{0} bytes of ranges: 1 to MAX_DISCARD_SEG ranges of 16 bytes")]
    Ranges(u64),
    /// A range longer than the device takes, or with flags it does not know.
    #[error("range of {sectors} sectors with flags {flags:#x} refused")]
    Range {
        /// Its sectors.
        sectors: u32,
        /// Its flags.
        flags: u32,
    },
    /// Unknown request type.
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    /// The host file failed.
    #[error("disk I/O")]
    Io(#[source] std::io::Error),
    /// Guest memory failed (should not happen after validation).
    #[error("guest buffers")]
    Guest(#[source] queue::ChainError),
}

impl RequestError {
    /// The status byte this error reports to the guest.
    pub fn status(&self) -> u8 {
        match self {
            Self::Unsupported(_) | Self::Range { .. } => VIRTIO_BLK_S_UNSUPP,
            _ => VIRTIO_BLK_S_IOERR,
        }
    }
}

/// A validated request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Request {
    /// Read `len` bytes at byte offset `pos` into the writable data.
    In { pos: u64, len: u64 },
    /// Write `len` bytes of readable data at byte offset `pos`.
    Out { pos: u64, len: u64 },
    /// Flush the file to stable storage.
    Flush,
    /// Write the serial into up to `len` bytes.
    GetId { len: u64 },
    /// Deallocate (`zeroes`: zero) each of `ranges` ranges that follow the header.
    Ranges { ranges: u64, zeroes: bool },
}

impl Request {
    /// Reads and validates the header and the buffer layout against a disk of `capacity`
    /// sectors.
    pub(super) fn parse(
        mem: &GuestMemoryMmap,
        chain: &ParsedChain,
        capacity: u64,
    ) -> Result<Self, RequestError> {
        let wlen = chain.writable_len();
        if wlen == 0 {
            return Err(RequestError::NoStatus);
        }
        let rlen = chain.readable_len();
        if rlen < HEADER_LEN {
            return Err(RequestError::Header(None));
        }
        let mut hdr = [0u8; 16];
        queue::read_segments(mem, &chain.readable, 0, &mut hdr)
            .map_err(|e| RequestError::Header(Some(e)))?;
        let [t0, t1, t2, t3, _, _, _, _, s @ ..] = hdr;
        let typ = u32::from_le_bytes([t0, t1, t2, t3]);
        let sector = u64::from_le_bytes(s);
        // Data bytes on each side, excluding header and status.
        let out_data = rlen - HEADER_LEN;
        let in_data = wlen - 1;
        match typ {
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
                let (len, wrong_side) = if typ == VIRTIO_BLK_T_IN {
                    (in_data, out_data)
                } else {
                    (out_data, in_data)
                };
                if wrong_side != 0 {
                    return Err(RequestError::Direction(typ));
                }
                if len % SECTOR_SIZE != 0 {
                    return Err(RequestError::Unaligned(len));
                }
                if len > MAX_REQUEST_DATA {
                    return Err(RequestError::TooLong(len));
                }
                let pos = byte_offset(sector, len / SECTOR_SIZE, capacity)?;
                Ok(if typ == VIRTIO_BLK_T_IN {
                    Self::In { pos, len }
                } else {
                    Self::Out { pos, len }
                })
            }
            VIRTIO_BLK_T_FLUSH => {
                if out_data != 0 || in_data != 0 {
                    return Err(RequestError::Direction(typ));
                }
                Ok(Self::Flush)
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                if in_data != 0 {
                    return Err(RequestError::Direction(typ));
                }
                let ranges = out_data / RANGE_LEN;
                if !out_data.is_multiple_of(RANGE_LEN)
                    || !(1..=u64::from(MAX_DISCARD_SEG)).contains(&ranges)
                {
                    return Err(RequestError::Ranges(out_data));
                }
                Ok(Self::Ranges {
                    ranges,
                    zeroes: typ == VIRTIO_BLK_T_WRITE_ZEROES,
                })
            }
            VIRTIO_BLK_T_GET_ID => {
                if out_data != 0 {
                    return Err(RequestError::Direction(typ));
                }
                Ok(Self::GetId { len: in_data })
            }
            other => Err(RequestError::Unsupported(other)),
        }
    }

    /// Runs the request; returns the data bytes written to the guest (status excluded).
    pub(super) fn execute(
        self,
        dev: &mut Block,
        mem: &GuestMemoryMmap,
        chain: &ParsedChain,
    ) -> Result<u32, RequestError> {
        match self {
            Self::In { pos, len } => {
                let mut done = 0u64;
                dev.bounce.resize(CHUNK, 0);
                while done < len {
                    let n = chunk_len(len - done);
                    let buf = &mut dev.bounce[..n];
                    dev.file
                        .read_exact_at(buf, pos + done)
                        .map_err(RequestError::Io)?;
                    queue::write_segments(mem, &chain.writable, done, buf)
                        .map_err(RequestError::Guest)?;
                    done += n as u64;
                }
                // len <= MAX_REQUEST_DATA, far below u32::MAX.
                u32::try_from(len).map_err(|_| RequestError::TooLong(len))
            }
            Self::Out { pos, len } => {
                if dev.config.read_only {
                    return Err(RequestError::ReadOnly);
                }
                let mut done = 0u64;
                dev.bounce.resize(CHUNK, 0);
                while done < len {
                    let n = chunk_len(len - done);
                    let buf = &mut dev.bounce[..n];
                    queue::read_segments(mem, &chain.readable, HEADER_LEN + done, buf)
                        .map_err(RequestError::Guest)?;
                    dev.file
                        .write_all_at(buf, pos + done)
                        .map_err(RequestError::Io)?;
                    done += n as u64;
                }
                Ok(0)
            }
            Self::Flush => {
                if !dev.config.read_only {
                    dev.file.sync_data().map_err(RequestError::Io)?;
                }
                Ok(0)
            }
            Self::Ranges { ranges, zeroes } => {
                if dev.config.read_only {
                    return Err(RequestError::ReadOnly);
                }
                // Every range is checked before any is applied: a bad one changes nothing.
                let mut todo = Vec::new();
                for i in 0..ranges {
                    let mut r = [0u8; 16];
                    queue::read_segments(mem, &chain.readable, HEADER_LEN + i * RANGE_LEN, &mut r)
                        .map_err(RequestError::Guest)?;
                    let [s @ .., n0, n1, n2, n3, f0, f1, f2, f3] = r;
                    let sector = u64::from_le_bytes(s);
                    let sectors = u32::from_le_bytes([n0, n1, n2, n3]);
                    let flags = u32::from_le_bytes([f0, f1, f2, f3]);
                    // A discard has no flags; a write-zeroes may only allow unmapping.
                    let known = if zeroes { FLAG_UNMAP } else { 0 };
                    if sectors > MAX_DISCARD_SECTORS || flags & !known != 0 {
                        return Err(RequestError::Range { sectors, flags });
                    }
                    let count = u64::from(sectors);
                    let pos = byte_offset(sector, count, dev.capacity)?;
                    // A write-zeroes without UNMAP keeps the blocks (the driver wants them
                    // allocated: a preallocation, say).
                    let keep = zeroes && flags & FLAG_UNMAP == 0;
                    todo.push((pos, count * SECTOR_SIZE, keep));
                }
                for (pos, len, keep) in todo {
                    let done = if keep {
                        zero_range(&dev.file, pos, len)
                    } else {
                        punch(&dev.file, pos, len)
                    };
                    done.map_err(RequestError::Io)?;
                }
                Ok(0)
            }
            Self::GetId { len } => {
                let id = dev.serial_bytes();
                let n = usize::try_from(len).unwrap_or(usize::MAX).min(SERIAL_LEN);
                queue::write_segments(mem, &chain.writable, 0, &id[..n])
                    .map_err(RequestError::Guest)?;
                // n <= 20.
                Ok(u32::try_from(n).unwrap_or(0))
            }
        }
    }
}

/// Where `count` sectors from `sector` start in the file, when they lie inside a disk of
/// `capacity` sectors (checked: a sector number near `u64::MAX` is refused, not wrapped).
fn byte_offset(sector: u64, count: u64, capacity: u64) -> Result<u64, RequestError> {
    let out_of_range = RequestError::OutOfRange {
        sector,
        count,
        capacity,
    };
    match sector.checked_add(count) {
        Some(end) if end <= capacity => {}
        _ => return Err(out_of_range),
    }
    // sector < capacity <= u64::MAX / 512 (a file size), so this cannot overflow.
    sector.checked_mul(SECTOR_SIZE).ok_or(out_of_range)
}

/// `fallocate(mode | KEEP_SIZE)` over `len` bytes at `pos`.
fn fallocate(file: &std::fs::File, mode: libc::c_int, pos: u64, len: u64) -> std::io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let (Ok(off), Ok(n)) = (libc::off_t::try_from(pos), libc::off_t::try_from(len)) else {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY: fallocate on an fd this device owns; no memory is passed.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode | libc::FALLOC_FL_KEEP_SIZE, off, n) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Gives `len` bytes at `pos` back to the host's filesystem: they read as zeroes after.
fn punch(file: &std::fs::File, pos: u64, len: u64) -> std::io::Result<()> {
    fallocate(file, libc::FALLOC_FL_PUNCH_HOLE, pos, len)
}

/// Zeroes `len` bytes at `pos`, keeping them allocated: `ZERO_RANGE`, or (a filesystem
/// without it) zeroes written.
fn zero_range(file: &std::fs::File, pos: u64, len: u64) -> std::io::Result<()> {
    match fallocate(file, libc::FALLOC_FL_ZERO_RANGE, pos, len) {
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            let zeroes = vec![0u8; CHUNK];
            let mut done = 0;
            while done < len {
                let n = chunk_len(len - done);
                file.write_all_at(&zeroes[..n], pos + done)?;
                done += n as u64;
            }
            Ok(())
        }
        r => r,
    }
}

/// min(rest, CHUNK) as usize.
fn chunk_len(rest: u64) -> usize {
    usize::try_from(rest).map_or(CHUNK, |r| r.min(CHUNK))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Segment;
    use crate::testing::guest_memory;
    use vm_memory::{Bytes, GuestAddress};

    fn chain(mem: &GuestMemoryMmap, typ: u32, sector: u64, out: u32, inn: u32) -> ParsedChain {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&typ.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(0x1000)).unwrap();
        let mut readable = vec![Segment {
            addr: GuestAddress(0x1000),
            len: 16,
        }];
        if out > 0 {
            readable.push(Segment {
                addr: GuestAddress(0x10_0000),
                len: out,
            });
        }
        ParsedChain {
            head: 0,
            readable,
            writable: vec![Segment {
                addr: GuestAddress(0x20_0000),
                len: inn + 1,
            }],
        }
    }

    #[test]
    fn parses_and_validates_headers() {
        let mem = guest_memory();
        let p =
            |typ, sector, out, inn| Request::parse(&mem, &chain(&mem, typ, sector, out, inn), 100);
        assert_eq!(
            p(VIRTIO_BLK_T_IN, 2, 0, 1024).unwrap(),
            Request::In {
                pos: 1024,
                len: 1024
            }
        );
        assert_eq!(
            p(VIRTIO_BLK_T_OUT, 99, 512, 0).unwrap(),
            Request::Out {
                pos: 99 * 512,
                len: 512
            }
        );
        assert_eq!(p(VIRTIO_BLK_T_FLUSH, 0, 0, 0).unwrap(), Request::Flush);
        assert_eq!(
            p(VIRTIO_BLK_T_GET_ID, 0, 0, 20).unwrap(),
            Request::GetId { len: 20 }
        );
        assert!(matches!(
            p(VIRTIO_BLK_T_IN, 99, 0, 1024),
            Err(RequestError::OutOfRange { .. })
        ));
        assert!(matches!(
            p(VIRTIO_BLK_T_IN, u64::MAX, 0, 512),
            Err(RequestError::OutOfRange { .. })
        ));
        assert!(matches!(
            p(VIRTIO_BLK_T_IN, 0, 512, 512),
            Err(RequestError::Direction(_))
        ));
        assert!(matches!(
            p(VIRTIO_BLK_T_OUT, 0, 512, 512),
            Err(RequestError::Direction(_))
        ));
        assert!(matches!(
            p(VIRTIO_BLK_T_FLUSH, 0, 512, 0),
            Err(RequestError::Direction(_))
        ));
        assert!(matches!(
            p(VIRTIO_BLK_T_IN, 0, 0, 100),
            Err(RequestError::Unaligned(100))
        ));
        let unsupp = p(0x77, 0, 0, 0).unwrap_err();
        assert_eq!(unsupp.status(), VIRTIO_BLK_S_UNSUPP);
        assert_eq!(RequestError::ReadOnly.status(), VIRTIO_BLK_S_IOERR);
    }
}
