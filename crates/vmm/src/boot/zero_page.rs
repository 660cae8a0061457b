//! The Linux zero page (`struct boot_params`): how the VMM tells a 64-bit kernel where its
//! command line, initramfs and RAM are.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError};

use crate::layout::{E820Entry, ZERO_PAGE_START};
use crate::memory::GuestMemoryMmap;

/// `boot_flag` magic.
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `header` magic, "HdrS".
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader`: "undefined" boot loader.
const KERNEL_LOADER_OTHER: u8 = 0xff;
/// Default `kernel_alignment` when the image does not give one (16 MiB).
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;

/// Errors from building the zero page.
#[derive(Debug, thiserror::Error)]
pub enum ZeroPageError {
    /// The zero page has a fixed number of e820 slots.
    #[error("{0} e820 entries do not fit in the zero page")]
    TooManyE820Entries(usize),
    /// A boot value does not fit its 32-bit field.
    #[error("{what} {value:#x} does not fit the zero page's 32-bit field")]
    FieldOverflow {
        /// The field.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// Write the zero page into guest memory.
    #[error("write the zero page")]
    Write(#[source] GuestMemoryError),
}

/// What goes into the zero page.
#[derive(Debug, Clone)]
pub struct ZeroPageConfig {
    /// The bzImage's setup header, when booting one (copied in as the kernel expects).
    pub setup_header: Option<setup_header>,
    /// Address of the NUL-terminated command line.
    pub cmdline_addr: u64,
    /// Length of the command line without its NUL.
    pub cmdline_len: usize,
    /// Address and length of the initramfs, if any.
    pub initramfs: Option<(u64, u64)>,
    /// The memory map.
    pub e820: Vec<E820Entry>,
}

fn field32(what: &'static str, value: u64) -> Result<u32, ZeroPageError> {
    u32::try_from(value).map_err(|_| ZeroPageError::FieldOverflow { what, value })
}

/// Builds the zero page.
pub fn build(cfg: &ZeroPageConfig) -> Result<boot_params, ZeroPageError> {
    let mut params = boot_params::default();
    if let Some(hdr) = cfg.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    params.hdr.cmd_line_ptr = field32("command line address", cfg.cmdline_addr)?;
    params.hdr.cmdline_size = field32(
        "command line length",
        u64::try_from(cfg.cmdline_len).unwrap_or(u64::MAX),
    )?;
    if let Some((addr, len)) = cfg.initramfs {
        params.hdr.ramdisk_image = field32("initramfs address", addr)?;
        params.hdr.ramdisk_size = field32("initramfs size", len)?;
    }

    if cfg.e820.len() > params.e820_table.len() {
        return Err(ZeroPageError::TooManyE820Entries(cfg.e820.len()));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(&cfg.e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind as u32,
        };
    }
    params.e820_entries = u8::try_from(cfg.e820.len())
        .map_err(|_| ZeroPageError::TooManyE820Entries(cfg.e820.len()))?;
    Ok(params)
}

/// Builds the zero page and writes it at [`ZERO_PAGE_START`].
pub fn write(mem: &GuestMemoryMmap, cfg: &ZeroPageConfig) -> Result<(), ZeroPageError> {
    let params = build(cfg)?;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(ZeroPageError::Write)
}

/// Offsets into the zero page that the test guests read; checked against linux-loader's struct
/// layout below, so the guest programs and the VMM cannot drift apart.
pub mod offsets {
    /// `e820_entries` (u8).
    pub const E820_ENTRIES: usize = 0x1e8;
    /// `hdr.ramdisk_image` (u32).
    pub const RAMDISK_IMAGE: usize = 0x218;
    /// `hdr.ramdisk_size` (u32).
    pub const RAMDISK_SIZE: usize = 0x21c;
    /// `hdr.cmd_line_ptr` (u32).
    pub const CMD_LINE_PTR: usize = 0x228;
    /// `hdr.cmdline_size` (u32).
    pub const CMDLINE_SIZE: usize = 0x238;
    /// `e820_table`: entries of 20 bytes (u64 addr, u64 size, u32 type).
    pub const E820_TABLE: usize = 0x2d0;
}

#[cfg(test)]
mod tests {
    use std::mem::offset_of;

    use super::*;
    use crate::layout::{E820Type, MemoryLayout};

    #[test]
    fn offsets_match_the_struct() {
        let hdr = offset_of!(boot_params, hdr);
        assert_eq!(offset_of!(boot_params, e820_entries), offsets::E820_ENTRIES);
        assert_eq!(offset_of!(boot_params, e820_table), offsets::E820_TABLE);
        assert_eq!(
            hdr + offset_of!(setup_header, ramdisk_image),
            offsets::RAMDISK_IMAGE
        );
        assert_eq!(
            hdr + offset_of!(setup_header, ramdisk_size),
            offsets::RAMDISK_SIZE
        );
        assert_eq!(
            hdr + offset_of!(setup_header, cmd_line_ptr),
            offsets::CMD_LINE_PTR
        );
        assert_eq!(
            hdr + offset_of!(setup_header, cmdline_size),
            offsets::CMDLINE_SIZE
        );
        assert_eq!(size_of::<boot_e820_entry>(), 20);
    }

    #[test]
    fn fills_the_boot_protocol_fields() {
        let layout = MemoryLayout::new(64 << 20).unwrap();
        let p = build(&ZeroPageConfig {
            setup_header: None,
            cmdline_addr: 0x20000,
            cmdline_len: 12,
            initramfs: Some((0x3e0_0000, 0x1234)),
            e820: layout.e820(),
        })
        .unwrap();
        let hdr = p.hdr;
        assert_eq!({ hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ hdr.cmdline_size }, 12);
        assert_eq!({ hdr.ramdisk_image }, 0x3e0_0000);
        assert_eq!({ hdr.ramdisk_size }, 0x1234);
        assert_eq!({ hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!(p.e820_entries, 2);
        let second = p.e820_table[1];
        assert_eq!({ second.r#type }, E820Type::Ram as u32);
    }

    #[test]
    fn rejects_values_that_do_not_fit() {
        let cfg = ZeroPageConfig {
            setup_header: None,
            cmdline_addr: 1 << 32,
            cmdline_len: 0,
            initramfs: None,
            e820: vec![],
        };
        assert!(matches!(
            build(&cfg),
            Err(ZeroPageError::FieldOverflow { .. })
        ));
        let e = E820Entry {
            addr: 0,
            size: 1,
            kind: E820Type::Ram,
        };
        let cfg = ZeroPageConfig {
            cmdline_addr: 0,
            e820: vec![e; 200],
            ..cfg
        };
        assert!(matches!(
            build(&cfg),
            Err(ZeroPageError::TooManyE820Entries(200))
        ));
    }
}
