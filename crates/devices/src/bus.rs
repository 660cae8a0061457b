//! The bus that routes guest port (PIO) and MMIO accesses to devices.
//!
//! A [`Bus`] maps disjoint address ranges to [`BusDevice`] trait objects. The VMM keeps one bus
//! for the x86 I/O port space and one for MMIO; a vCPU thread that takes a port or MMIO exit asks
//! the bus, and an access that no device claims is reported back (`false`) for the caller to log
//! and ignore.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// A device that answers guest reads and writes on a bus.
///
/// `offset` is relative to the base the device was inserted at; `data` is at most 8 bytes (the
/// size of the guest access) and is guaranteed by the bus to lie inside the device's range.
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset`. Fill `data`; it starts as all-ones.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus and whoever else needs it (persist, the VMM's control code).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors from [`Bus::insert`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// A device range must be at least one byte long.
    #[error("bus range at {base:#x} has zero length")]
    ZeroLength {
        /// Base of the rejected range.
        base: u64,
    },
    /// The range would run past the end of the address space.
    #[error("bus range {base:#x}+{len:#x} overflows the address space")]
    Overflow {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// The range overlaps a device already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps the device at {other:#x}")]
    Overlap {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
        /// Base of the device already there.
        other: u64,
    },
}

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedDevice,
}

/// A set of disjoint address ranges, each served by one device.
#[derive(Default)]
pub struct Bus {
    // Keyed by base address; ranges never overlap (checked on insert), so the entry with the
    // greatest base <= addr is the only candidate for addr.
    ranges: RwLock<BTreeMap<u64, Entry>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        f.debug_list()
            .entries(ranges.iter().map(|(base, e)| (*base, e.len)))
            .finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` on the bus at `base..base + len`.
    pub fn insert(&self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength { base });
        }
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overflow { base, len })?;
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        // The nearest range below must end at or before `base`; the nearest above must start at
        // or after `end`.
        if let Some((&other, e)) = ranges.range(..=base).next_back()
            && other + e.len > base
        {
            return Err(BusError::Overlap { base, len, other });
        }
        if let Some((&other, _)) = ranges.range(base..).next()
            && other < end
        {
            return Err(BusError::Overlap { base, len, other });
        }
        ranges.insert(base, Entry { len, device });
        Ok(())
    }

    /// The device whose range holds all of `addr..addr + size`, and the offset of `addr` in it.
    fn resolve(&self, addr: u64, size: usize) -> Option<(SharedDevice, u64)> {
        let ranges = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        let (&base, entry) = ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        let end = offset.checked_add(u64::try_from(size).ok()?)?;
        (end <= entry.len).then(|| (entry.device.clone(), offset))
    }

    /// Reads from the device at `addr`; `data` is set to all-ones first, which is also what the
    /// guest sees where no device answers. Returns whether a device claimed the access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        data.fill(0xff);
        match self.resolve(addr, data.len()) {
            Some((device, offset)) => {
                lock(&device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Writes to the device at `addr`. Returns whether a device claimed the access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((device, offset)) => {
                lock(&device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, carrying on if a previous holder panicked: device state is plain data and a
/// panicking vCPU thread already reports its own failure.
fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(u8::try_from(offset).unwrap_or(0));
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_and_offset() {
        let bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(0x3f8, 8, dev.clone()).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b, [2]);
        assert!(bus.write(0x3ff, &[7]));
        assert_eq!(dev.lock().unwrap().writes, vec![(7, vec![7])]);
    }

    #[test]
    fn unclaimed_access_reads_all_ones() {
        let bus = Bus::new();
        bus.insert(0x10, 4, Arc::new(Mutex::new(Recorder::default())))
            .unwrap();
        let mut b = [0u8; 4];
        assert!(!bus.read(0x20, &mut b));
        assert_eq!(b, [0xff; 4]);
        // An access that starts inside the device but runs past its end is not the device's.
        assert!(!bus.read(0x12, &mut b));
        assert!(!bus.write(0x13, &[1, 2]));
        assert!(!bus.write(0xf, &[1]));
    }

    #[test]
    fn rejects_overlaps_and_bad_ranges() {
        let bus = Bus::new();
        let dev = || Arc::new(Mutex::new(Recorder::default()));
        bus.insert(0x100, 0x10, dev()).unwrap();
        assert!(matches!(
            bus.insert(0x10f, 1, dev()),
            Err(BusError::Overlap { other: 0x100, .. })
        ));
        assert!(matches!(
            bus.insert(0xf0, 0x11, dev()),
            Err(BusError::Overlap { other: 0x100, .. })
        ));
        assert_eq!(
            bus.insert(0x50, 0, dev()),
            Err(BusError::ZeroLength { base: 0x50 })
        );
        assert!(matches!(
            bus.insert(u64::MAX, 2, dev()),
            Err(BusError::Overflow { .. })
        ));
        // Adjacent ranges are fine.
        bus.insert(0xf0, 0x10, dev()).unwrap();
        bus.insert(0x110, 0x10, dev()).unwrap();
    }
}
