//! Guest memory in a snapshot: one file holding the RAM regions back to back in guest-address
//! order, written sparse — only pages that hold data take space — and mapped `MAP_PRIVATE` on
//! restore, so pages load lazily from the page cache and clones share what none of them wrote.
//!
//! Which pages hold data: a page the guest never touched is not resident in the anonymous
//! mapping (`mincore`), so it is not even read. A restored guest's memory is a private mapping
//! of an earlier memory file: its pages may hold data without being resident, so the earlier
//! file's data ranges (`SEEK_DATA`/`SEEK_HOLE`) are read too. Pages that read as zeros are
//! left as holes either way.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use vm_memory::mmap::{MmapRegionBuilder, MmapRegionError};

use crate::memory::GuestMemoryMmap;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap,
    MemoryRegionAddress,
};

/// The page size this format works in.
pub const PAGE: u64 = 4096;

/// Pages written in one `pwrite` at most.
const BATCH_PAGES: usize = 256;

/// Why memory could not be saved or mapped.
#[derive(Debug, thiserror::Error)]
pub enum MemoryFileError {
    /// Reading the guest's memory (cannot happen for the guest's own regions).
    #[error("reading guest memory at {0:#x}")]
    Read(u64, #[source] vm_memory::GuestMemoryError),
    /// A system call on the memory file or the mapping failed.
    #[error("{0}")]
    Io(&'static str, #[source] std::io::Error),
    /// The memory file is not the size the layout needs.
    #[error("the memory file holds {found} bytes; the guest's layout needs {want}")]
    Size {
        /// Its size.
        found: u64,
        /// The layout's.
        want: u64,
    },
    /// Mapping a region of the file.
    #[error("mapping guest memory at {0:#x}")]
    Map(u64, #[source] MmapRegionError),
    /// The regions do not form a valid guest memory.
    #[error("guest memory layout")]
    Layout(#[source] vm_memory::GuestRegionCollectionError),
    /// A region is larger than this host can map.
    #[error("guest region at {0:#x} is too large for this host")]
    TooLarge(u64),
}

/// What [`save`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedMemory {
    /// The file's apparent size: all of guest RAM.
    pub size: u64,
    /// Bytes of data written (pages that hold data).
    pub written: u64,
}

/// Which pages of `len` bytes at `addr` (page-aligned) are resident.
fn resident(addr: *mut u8, len: usize) -> Result<Vec<bool>, MemoryFileError> {
    let pages = len.div_ceil(4096);
    let mut vec = vec![0u8; pages];
    // SAFETY: `addr..addr+len` is one live mapping (a guest region, page-aligned as mmap
    // returns it), and `vec` has one byte per page of it, as mincore writes.
    let r = unsafe { libc::mincore(addr.cast(), len, vec.as_mut_ptr()) };
    if r != 0 {
        return Err(MemoryFileError::Io(
            "mincore on guest memory",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(vec.into_iter().map(|b| b & 1 == 1).collect())
}

/// The data ranges of `file` within `[start, start + len)`, relative to `start`.
fn data_ranges(file: &File, start: u64, len: u64) -> Result<Vec<(u64, u64)>, MemoryFileError> {
    let fd = file.as_raw_fd();
    let end = start + len;
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        let off = |v: u64| libc::off_t::try_from(v).unwrap_or(libc::off_t::MAX);
        // SAFETY: lseek on a file descriptor we own; no memory is passed.
        let data = unsafe { libc::lseek(fd, off(at), libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // no data after `at`
            }
            return Err(MemoryFileError::Io("SEEK_DATA on the memory file", e));
        }
        let data = u64::try_from(data).unwrap_or(u64::MAX);
        if data >= end {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, off(data), libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(MemoryFileError::Io(
                "SEEK_HOLE on the memory file",
                std::io::Error::last_os_error(),
            ));
        }
        let hole = u64::try_from(hole).unwrap_or(u64::MAX).min(end);
        out.push((data - start, hole - start));
        at = hole;
    }
    Ok(out)
}

/// Writes all of `mem` into `out` (empty), sparse; the vCPUs must be stopped.
pub fn save(mem: &GuestMemoryMmap, out: &File) -> Result<SavedMemory, MemoryFileError> {
    let mut file_off = 0u64;
    let mut written = 0u64;
    let mut buf = vec![0u8; BATCH_PAGES * 4096];
    for region in mem.iter() {
        let len = region.len();
        let ulen =
            usize::try_from(len).map_err(|_| MemoryFileError::TooLarge(region.start_addr().0))?;
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|e| MemoryFileError::Read(region.start_addr().0, e))?;
        let mut wanted = resident(host, ulen)?;
        if let Some(fo) = region.file_offset() {
            for (a, b) in data_ranges(fo.file(), fo.start(), len)? {
                for p in (a / PAGE)..b.div_ceil(PAGE) {
                    if let Some(w) = usize::try_from(p).ok().and_then(|p| wanted.get_mut(p)) {
                        *w = true;
                    }
                }
            }
        }
        // Runs of wanted pages, read and written in batches; zero pages stay holes.
        let mut page = 0usize;
        while page < wanted.len() {
            if !wanted[page] {
                page += 1;
                continue;
            }
            let mut end = page;
            while end < wanted.len() && wanted[end] && end - page < BATCH_PAGES {
                end += 1;
            }
            let bytes = (end - page) * 4096;
            let gpa = region.start_addr().0 + page as u64 * PAGE;
            mem.read_slice(&mut buf[..bytes], GuestAddress(gpa))
                .map_err(|e| MemoryFileError::Read(gpa, e))?;
            for (i, chunk) in buf[..bytes].chunks(4096).enumerate() {
                if chunk.iter().any(|&b| b != 0) {
                    let at = file_off + (page + i) as u64 * PAGE;
                    out.write_all_at(chunk, at)
                        .map_err(|e| MemoryFileError::Io("writing the memory file", e))?;
                    written += PAGE;
                }
            }
            page = end;
        }
        file_off += len;
    }
    out.set_len(file_off)
        .map_err(|e| MemoryFileError::Io("sizing the memory file", e))?;
    Ok(SavedMemory {
        size: file_off,
        written,
    })
}

/// Maps `file` (written by [`save`]) as guest memory with `ranges` (start, length), each range
/// a private copy-on-write view of its part of the file.
pub fn map_private(
    file: &File,
    ranges: &[(GuestAddress, u64)],
) -> Result<GuestMemoryMmap, MemoryFileError> {
    let want: u64 = ranges.iter().map(|r| r.1).sum();
    let found = file
        .metadata()
        .map_err(|e| MemoryFileError::Io("reading the memory file's size", e))?
        .len();
    if found != want {
        return Err(MemoryFileError::Size { found, want });
    }
    let mut regions = Vec::with_capacity(ranges.len());
    let mut off = 0u64;
    for &(start, len) in ranges {
        let size = usize::try_from(len).map_err(|_| MemoryFileError::TooLarge(start.0))?;
        let f = file
            .try_clone()
            .map_err(|e| MemoryFileError::Io("duplicating the memory file", e))?;
        let mapping = MmapRegionBuilder::new(size)
            .with_file_offset(FileOffset::new(f, off))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| MemoryFileError::Map(start.0, e))?;
        regions
            .push(GuestRegionMmap::new(mapping, start).ok_or(MemoryFileError::TooLarge(start.0))?);
        off += len;
    }
    GuestMemoryMmap::from_regions(regions).map_err(MemoryFileError::Layout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn only_pages_with_data_take_space_and_map_back_privately() {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 8 << 20),
            (GuestAddress(1 << 32), 4 << 20),
        ])
        .unwrap();
        // 16 pages of data, one page touched but written zeros, the rest untouched.
        for i in 0..16u64 {
            mem.write_obj(0xc0ffee00_u64 + i, GuestAddress(0x10_0000 + i * 3 * PAGE))
                .unwrap();
        }
        mem.write_slice(&[0u8; 4096], GuestAddress(0x20_0000))
            .unwrap();
        mem.write_obj(7u64, GuestAddress((1 << 32) + 5 * PAGE))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory");
        let f = File::create(&path).unwrap();
        let saved = save(&mem, &f).unwrap();
        assert_eq!(saved.size, 12 << 20);
        assert_eq!(saved.written, 17 * PAGE);
        let md = std::fs::metadata(&path).unwrap();
        assert_eq!(md.len(), 12 << 20);
        assert!(
            md.blocks() * 512 <= 17 * PAGE + 64 * 1024,
            "{} blocks",
            md.blocks()
        );

        let f = File::options().read(true).write(true).open(&path).unwrap();
        let ranges = [(GuestAddress(0), 8 << 20), (GuestAddress(1 << 32), 4 << 20)];
        let back = map_private(&f, &ranges).unwrap();
        for i in 0..16u64 {
            let v: u64 = back
                .read_obj(GuestAddress(0x10_0000 + i * 3 * PAGE))
                .unwrap();
            assert_eq!(v, 0xc0ffee00 + i);
        }
        let v: u64 = back.read_obj(GuestAddress((1 << 32) + 5 * PAGE)).unwrap();
        assert_eq!(v, 7);
        // Writes stay private to the mapping.
        back.write_obj(1u64, GuestAddress(0x10_0000)).unwrap();
        let mut on_disk = [0u8; 8];
        f.read_exact_at(&mut on_disk, 0x10_0000).unwrap();
        assert_eq!(u64::from_ne_bytes(on_disk), 0xc0ffee00);

        // A snapshot of the restored guest keeps the pages it never touched (they are not
        // resident, but the earlier file holds them) and what it wrote since.
        let path2 = dir.path().join("memory2");
        let f2 = File::create(&path2).unwrap();
        let saved2 = save(&back, &f2).unwrap();
        assert_eq!(saved2.written, 17 * PAGE);
        let again = map_private(&File::open(&path2).unwrap(), &ranges).unwrap();
        let v: u64 = again.read_obj(GuestAddress(0x10_0000)).unwrap();
        assert_eq!(v, 1);
        let v: u64 = again
            .read_obj(GuestAddress(0x10_0000 + 15 * 3 * PAGE))
            .unwrap();
        assert_eq!(v, 0xc0ffee00 + 15);
    }

    #[test]
    fn a_file_of_the_wrong_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory");
        let f = File::create(&path).unwrap();
        f.set_len(4 << 20).unwrap();
        let e = map_private(&f, &[(GuestAddress(0), 8 << 20)]).unwrap_err();
        assert!(matches!(e, MemoryFileError::Size { .. }), "{e}");
    }
}
