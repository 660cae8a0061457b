//! x86_64 direct kernel boot: load the kernel (ELF `vmlinux` or bzImage) and the initramfs,
//! write the command line, the zero page, the GDT and the page tables, and say where the boot
//! vCPU starts.
//!
//! Both formats are entered through the Linux 64-bit boot protocol: long mode, paging on with
//! the first 1 GiB identity mapped, `rsi` = zero page. An ELF kernel starts at its ELF entry
//! (`startup_64`), a bzImage at its 64-bit entry, 0x200 past the protected-mode code.
//! When the ELF carries a PVH note, [`BootInfo::pvh_entry`] records it; PVH boot itself
//! (32-bit entry with an `hvm_start_info`) is not implemented yet.

mod long_mode;
pub mod mptable;
pub mod zero_page;

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::{
    self, KernelLoader, KernelLoaderResult, bzimage::BzImage, elf::Elf, elf::PvhBootCapability,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

pub use long_mode::{
    EFER_LMA, EFER_LME, EntryPoint, LongModeError, X86_CR0_PE, X86_CR0_PG, X86_CR4_PAE,
    configure_sregs, entry_fpu, entry_regs, write_boot_structures,
};
pub use zero_page::{ZeroPageConfig, ZeroPageError};

use crate::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, MemoryLayout, ZERO_PAGE_START};
use crate::memory::GuestMemoryMmap;

/// Offset of the 64-bit entry point in a loaded bzImage protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// Errors from loading a kernel.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Open the kernel image.
    #[error("open kernel {}", .0.display())]
    OpenKernel(PathBuf, #[source] std::io::Error),
    /// The image is neither an ELF nor a bzImage Cove can load.
    #[error("load kernel {}", .0.display())]
    LoadKernel(PathBuf, #[source] loader::Error),
    /// The kernel's entry point is outside guest RAM.
    #[error("kernel entry {0:#x} is outside guest memory")]
    EntryOutsideMemory(u64),
    /// The command line is not valid (too long, or contains bad characters).
    #[error("kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// Write the command line.
    #[error("write the kernel command line")]
    WriteCmdline(#[source] loader::Error),
    /// Open the initramfs.
    #[error("open initramfs {}", .0.display())]
    OpenInitramfs(PathBuf, #[source] std::io::Error),
    /// The initramfs does not fit between the kernel and the top of low RAM.
    #[error(
        "initramfs of {size} bytes does not fit between the kernel (end {kernel_end:#x}) and \
         the top of low memory ({low_end:#x}); give the guest more memory"
    )]
    InitramfsTooLarge {
        /// Initramfs size.
        size: u64,
        /// End of the kernel.
        kernel_end: u64,
        /// End of low RAM.
        low_end: u64,
    },
    /// Read the initramfs into guest memory.
    #[error("read initramfs into guest memory")]
    ReadInitramfs(#[source] GuestMemoryError),
    /// Build or write the zero page.
    #[error("zero page")]
    ZeroPage(#[from] ZeroPageError),
    /// Write the GDT and page tables.
    #[error("boot structures")]
    LongMode(#[from] LongModeError),
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct KernelConfig {
    /// ELF `vmlinux` or bzImage.
    pub kernel: PathBuf,
    /// Optional initramfs (cpio, possibly compressed: the kernel unpacks it).
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
}

/// The kernel image formats Cove loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An uncompressed ELF `vmlinux`.
    Elf,
    /// A bzImage.
    BzImage,
}

/// Where everything went; the boot vCPU starts at `entry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootInfo {
    /// How the kernel was recognised.
    pub format: KernelFormat,
    /// Where the boot vCPU starts, with `rsi` = zero page.
    pub entry: EntryPoint,
    /// End (exclusive) of the loaded kernel.
    pub kernel_end: u64,
    /// Address of the command line.
    pub cmdline_addr: u64,
    /// Command line length, without the NUL.
    pub cmdline_len: usize,
    /// Address and size of the initramfs.
    pub initramfs: Option<(u64, u64)>,
    /// The PVH 32-bit entry point, when the ELF has one (not used yet).
    pub pvh_entry: Option<u64>,
}

/// Loads `cfg` into `mem` and writes every boot structure the 64-bit entry needs.
pub fn load(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    cfg: &KernelConfig,
) -> Result<BootInfo, BootError> {
    let kernel = &cfg.kernel;
    let mut file = File::open(kernel).map_err(|e| BootError::OpenKernel(kernel.clone(), e))?;
    let (format, result) =
        load_kernel_image(mem, &mut file).map_err(|e| BootError::LoadKernel(kernel.clone(), e))?;
    let entry = match format {
        KernelFormat::Elf => result.kernel_load.0,
        KernelFormat::BzImage => result.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
    };
    if !mem.address_in_range(GuestAddress(entry)) {
        return Err(BootError::EntryOutsideMemory(entry));
    }

    let cmdline = Cmdline::try_from(&cfg.cmdline, CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
    loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &cmdline)
        .map_err(BootError::WriteCmdline)?;

    let initramfs = match &cfg.initramfs {
        Some(path) => Some(load_initramfs(mem, layout, path, result.kernel_end)?),
        None => None,
    };

    zero_page::write(
        mem,
        &ZeroPageConfig {
            setup_header: result.setup_header,
            cmdline_addr: CMDLINE_START,
            cmdline_len: cfg.cmdline.len(),
            initramfs,
            e820: layout.e820(),
        },
    )?;
    write_boot_structures(mem)?;

    let pvh_entry = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => Some(addr.0),
        _ => None,
    };
    Ok(BootInfo {
        format,
        entry: EntryPoint::linux(entry, ZERO_PAGE_START),
        kernel_end: result.kernel_end,
        cmdline_addr: CMDLINE_START,
        cmdline_len: cfg.cmdline.len(),
        initramfs,
        pvh_entry,
    })
}

/// Tries ELF first, then bzImage. Kernels must load at or above 1 MiB.
fn load_kernel_image(
    mem: &GuestMemoryMmap,
    file: &mut File,
) -> Result<(KernelFormat, KernelLoaderResult), loader::Error> {
    let himem = Some(GuestAddress(HIMEM_START));
    match Elf::load(mem, None, file, himem) {
        Ok(r) => Ok((KernelFormat::Elf, r)),
        Err(loader::Error::Elf(loader::elf::Error::InvalidElfMagicNumber)) => {
            BzImage::load(mem, None, file, himem).map(|r| (KernelFormat::BzImage, r))
        }
        Err(e) => Err(e),
    }
}

/// Reads the initramfs to the highest aligned address that fits; returns (address, size).
fn load_initramfs(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    path: &Path,
    kernel_end: u64,
) -> Result<(u64, u64), BootError> {
    let open_err = |e| BootError::OpenInitramfs(path.to_path_buf(), e);
    let mut file = File::open(path).map_err(open_err)?;
    let size = file.seek(SeekFrom::End(0)).map_err(open_err)?;
    file.rewind().map_err(open_err)?;
    let too_large = BootError::InitramfsTooLarge {
        size,
        kernel_end,
        low_end: layout.low_ram_end(),
    };
    let addr = layout
        .initramfs_address(size, kernel_end)
        .ok_or(too_large)?;
    let len = usize::try_from(size).map_err(|_| BootError::InitramfsTooLarge {
        size,
        kernel_end,
        low_end: layout.low_ram_end(),
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(BootError::ReadInitramfs)?;
    Ok((addr, size))
}
