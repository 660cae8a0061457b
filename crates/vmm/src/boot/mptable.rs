//! The Intel MultiProcessor table (MP spec 1.4): how a guest booted without ACPI (Cove's
//! kernels run with `acpi=off`) learns its vCPUs, its IOAPIC and how the ISA interrupts reach it.
//!
//! Written at [`MPTABLE_START`], the first KiB of the EBDA, one of the places Linux scans for
//! the floating pointer; everything from there to 1 MiB is reserved in the e820 map. Layout:
//! ```text
//! floating pointer (16 B)  "_MP_", -> config table, length 1, revision 4, checksum
//! config table header (44 B) "PCMP", length, revision 4, checksum, OEM ids, entry count, LAPIC
//! processor entries (20 B each)  one per vCPU, APIC id = index, vCPU 0 the BSP
//! bus entry (8 B)           bus 0, ISA
//! IOAPIC entry (8 B)        id = vCPU count, at IOAPIC_ADDR
//! I/O interrupt entries     IRQ n -> IOAPIC pin n, for n in 0..24
//! local interrupt entries   ExtINT -> LINT0, NMI -> LINT1, on every LAPIC
//! ```

use vm_memory::{Bytes, GuestAddress};

use crate::layout::EBDA_START;
use crate::memory::GuestMemoryMmap;

/// Where the table goes.
pub const MPTABLE_START: u64 = EBDA_START;
/// The local APICs' MMIO base.
pub const APIC_ADDR: u32 = 0xfee0_0000;
/// The IOAPIC's MMIO base.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// The IOAPIC's input pins (KVM's has 24): 0–15 the ISA lines, the rest for virtio-mmio
/// devices, each line routed to the pin of its number.
const IOAPIC_PINS: u8 = 24;
/// The space the table may use: it starts in the EBDA's first KiB (where Linux looks for the
/// floating pointer) and may run on into the rest of the range below 1 MiB, which the e820 map
/// also reserves (254 vCPUs take about 5 KiB).
const MAX_SIZE: usize = 0x1_0000;

/// Why the table could not be written.
#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    /// More vCPUs than fit in the space reserved for the table.
    #[error("an MP table for {0} vCPUs does not fit in the {MAX_SIZE} bytes reserved for it")]
    TooManyVcpus(u8),
    /// Writing guest memory.
    #[error("write the MP table")]
    Write(#[source] vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, &b| a.wrapping_add(b))
        .wrapping_neg()
}

/// The table's bytes for `vcpus` vCPUs, to be placed at [`MPTABLE_START`].
pub fn build(vcpus: u8) -> Result<Vec<u8>, MpTableError> {
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for id in 0..vcpus {
        let mut e = [0u8; 20];
        e[0] = 0; // processor
        e[1] = id; // local APIC id
        e[2] = 0x14; // local APIC version
        e[3] = 0x01 | if id == 0 { 0x02 } else { 0 }; // enabled, BSP
        e[4..8].copy_from_slice(&0x0006_0f00u32.to_le_bytes()); // family 6 signature
        e[8..12].copy_from_slice(&0x0000_0201u32.to_le_bytes()); // FPU, APIC
        entries.extend_from_slice(&e);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0, b'I', b'S', b'A', b' ', b' ', b' ']); // bus 0: ISA
    count += 1;
    let ioapic_id = vcpus;
    let mut io = [2u8, ioapic_id, 0x11, 0x01, 0, 0, 0, 0];
    io[4..8].copy_from_slice(&IOAPIC_ADDR.to_le_bytes());
    entries.extend_from_slice(&io);
    count += 1;
    for irq in 0..IOAPIC_PINS {
        // INT, conforming polarity and trigger, from bus 0 line irq to IOAPIC pin irq.
        entries.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // ExtINT on LINT0 and NMI on LINT1 of every local APIC (0xff).
    entries.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_len = 44 + entries.len();
    if 16 + table_len > MAX_SIZE {
        return Err(MpTableError::TooManyVcpus(vcpus));
    }
    let table_addr = u32::try_from(MPTABLE_START + 16).expect("the EBDA is below 4 GiB");
    let mut header = [0u8; 44];
    header[0..4].copy_from_slice(b"PCMP");
    header[4..6].copy_from_slice(
        &u16::try_from(table_len)
            .expect("checked above")
            .to_le_bytes(),
    );
    header[6] = 4; // MP spec 1.4
    header[8..16].copy_from_slice(b"COVE    ");
    header[16..28].copy_from_slice(b"MICROVM     ");
    header[34..36].copy_from_slice(&count.to_le_bytes());
    header[36..40].copy_from_slice(&APIC_ADDR.to_le_bytes());
    let mut table = header.to_vec();
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = [0u8; 16];
    fp[0..4].copy_from_slice(b"_MP_");
    fp[4..8].copy_from_slice(&table_addr.to_le_bytes());
    fp[8] = 1; // length in 16-byte units
    fp[9] = 4; // MP spec 1.4
    fp[10] = checksum(&fp);

    let mut out = fp.to_vec();
    out.extend_from_slice(&table);
    Ok(out)
}

/// Writes the table for `vcpus` vCPUs into guest memory.
pub fn write(mem: &GuestMemoryMmap, vcpus: u8) -> Result<(), MpTableError> {
    mem.write_slice(&build(vcpus)?, GuestAddress(MPTABLE_START))
        .map_err(MpTableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, &x| a.wrapping_add(x))
    }

    #[test]
    fn checksums_counts_and_processors_are_what_linux_checks() {
        for vcpus in [1u8, 2, 8, 64] {
            let t = build(vcpus).unwrap();
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0, "floating pointer checksum");
            let ptr = u64::from(u32::from_le_bytes(t[4..8].try_into().unwrap()));
            let table = &t[usize::try_from(ptr - MPTABLE_START).unwrap()..];
            assert_eq!(&table[0..4], b"PCMP");
            let len = usize::from(u16::from_le_bytes([table[4], table[5]]));
            assert_eq!(len, table.len());
            assert_eq!(sum(&table[..len]), 0, "config table checksum");
            let count = u16::from_le_bytes([table[34], table[35]]);
            // Walk the entries by type, as a parser would.
            let (mut at, mut seen, mut cpus, mut bsp) = (44, 0, 0, 0);
            while at < len {
                let size = if table[at] == 0 { 20 } else { 8 };
                if table[at] == 0 {
                    assert_eq!(table[at + 1], cpus, "APIC ids in order");
                    cpus += 1;
                    bsp += usize::from(table[at + 3] & 2 != 0);
                }
                at += size;
                seen += 1;
            }
            assert_eq!(at, len);
            assert_eq!(seen, count);
            assert_eq!((cpus, bsp), (vcpus, 1));
        }
    }

    #[test]
    fn the_most_vcpus_fit_below_1_mib() {
        let t = build(crate::MAX_VCPUS).unwrap();
        assert!(MPTABLE_START + t.len() as u64 <= crate::layout::HIMEM_START);
    }
}
