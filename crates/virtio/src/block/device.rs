//! The block device: configuration, features, and the queue loop. Request parsing and execution
//! live in `request.rs`.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_ID_BYTES,
};
use virtio_queue::Queue;

use super::request::Request;
use crate::device::{ActivateError, ActiveQueues, Interrupt, VirtioDevice, read_config_bytes};
use crate::queue::{self, ParsedChain};
use crate::{GuestMemoryMmap, device_type, features};

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Bytes per sector (the unit of `capacity` and of request offsets).
pub const SECTOR_SIZE: u64 = 512;
/// SEG_MAX: most data buffers per request (queue size minus header and status).
pub const SEG_MAX: u32 = 126;
/// SIZE_MAX: largest data buffer.
pub const SIZE_MAX: u32 = 64 * 1024;
/// Most data bytes in one request; a driver that honours SEG_MAX and SIZE_MAX stays within it.
pub const MAX_REQUEST_DATA: u64 = SEG_MAX as u64 * SIZE_MAX as u64;
/// Most sectors of one discard or write-zeroes range (2 GiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// Most ranges of one discard or write-zeroes request.
pub const MAX_DISCARD_SEG: u32 = 32;
/// The alignment a guest should give discards, sectors (the host's 4 KiB blocks: a smaller
/// hole only zeroes).
pub const DISCARD_ALIGNMENT: u32 = 8;
/// Length of the configuration space, through the write-zeroes fields (virtio 1.1, 5.2.4).
const CONFIG_LEN: usize = 60;
/// Length of the serial that GET_ID returns (VIRTIO_BLK_ID_BYTES).
pub const SERIAL_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;

/// How the VMM describes a disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockConfig {
    /// Backing file (a raw image).
    pub path: PathBuf,
    /// Refuse writes and offer VIRTIO_BLK_F_RO.
    pub read_only: bool,
    /// Serial the guest reads from `/sys/block/vdX/serial` (printable ASCII, at most 20 bytes).
    pub serial: String,
}

/// Errors from building a block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The backing file could not be opened.
    #[error("open disk image {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The backing file's size could not be read.
    #[error("read the size of disk image {path}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The serial is longer than 20 bytes or not printable ASCII.
    #[error("disk serial {0:?} must be printable ASCII of at most 20 bytes")]
    Serial(String),
}

/// virtio-blk on a file.
#[derive(Debug)]
pub struct Block {
    pub(super) config: BlockConfig,
    pub(super) file: File,
    pub(super) capacity: u64,
    pub(super) acked_features: u64,
    pub(super) active: Option<ActiveQueues>,
    pub(super) bounce: Vec<u8>,
}

impl Block {
    /// Opens the disk. Its capacity is the file size in whole sectors (a partial last sector is
    /// not visible to the guest).
    pub fn new(config: BlockConfig) -> Result<Self, BlockError> {
        if config.serial.len() > SERIAL_LEN
            || !config
                .serial
                .bytes()
                .all(|b| b.is_ascii_graphic() || b == b' ')
        {
            return Err(BlockError::Serial(config.serial));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!config.read_only)
            .open(&config.path)
            .map_err(|source| BlockError::Open {
                path: config.path.clone(),
                source,
            })?;
        let len = file
            .metadata()
            .map_err(|source| BlockError::Metadata {
                path: config.path.clone(),
                source,
            })?
            .len();
        Ok(Self {
            config,
            file,
            capacity: len / SECTOR_SIZE,
            acked_features: 0,
            active: None,
            bounce: Vec::new(),
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The configuration the device was built from.
    pub fn config(&self) -> &BlockConfig {
        &self.config
    }

    /// The 20 bytes GET_ID returns: the serial, NUL-padded.
    pub(super) fn serial_bytes(&self) -> [u8; SERIAL_LEN] {
        let mut id = [0u8; SERIAL_LEN];
        let s = self.config.serial.as_bytes();
        let n = s.len().min(SERIAL_LEN);
        id[..n].copy_from_slice(&s[..n]);
        id
    }

    /// The configuration space: capacity, size_max, seg_max, geometry (0), blk_size,
    /// topology and writeback (0), then the discard and write-zeroes limits.
    fn config_space(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[0..8].copy_from_slice(&self.capacity.to_le_bytes());
        c[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        // 16..20: geometry, not offered.
        // SECTOR_SIZE is 512.
        c[20..24].copy_from_slice(&512u32.to_le_bytes());
        // 24..36: topology, writeback, num_queues: not offered.
        c[36..40].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        c[40..44].copy_from_slice(&MAX_DISCARD_SEG.to_le_bytes());
        c[44..48].copy_from_slice(&DISCARD_ALIGNMENT.to_le_bytes());
        c[48..52].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        c[52..56].copy_from_slice(&MAX_DISCARD_SEG.to_le_bytes());
        // write_zeroes_may_unmap: a write-zeroes with UNMAP is punched out of the file.
        c[56] = 1;
        c
    }

    fn process_requests(&mut self, active: &mut ActiveQueues) {
        let mem = active.mem.clone();
        let mut used = false;
        while let Some(chain) = queue::pop(&mut active.queues[0], &mem) {
            let head = chain.head_index();
            // Header, data, status, and room for a driver that splits them oddly.
            let cap = MAX_REQUEST_DATA + 4096;
            let len = match ParsedChain::parse(chain, cap) {
                Ok(parsed) => self.execute(&mem, &parsed),
                Err(e) => {
                    tracing::warn!(error = %e, "virtio-blk: bad descriptor chain");
                    0
                }
            };
            used |= queue::add_used(&mut active.queues[0], &mem, head, len);
        }
        if used {
            active.interrupt.signal_used_queue();
        }
    }

    /// Runs one request and writes its status; returns the bytes written to the guest.
    fn execute(&mut self, mem: &GuestMemoryMmap, chain: &ParsedChain) -> u32 {
        let req = match Request::parse(mem, chain, self.capacity) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "virtio-blk: invalid request");
                return self.finish(mem, chain, e.status(), 0);
            }
        };
        match req.execute(self, mem, chain) {
            Ok(written) => self.finish(mem, chain, super::VIRTIO_BLK_S_OK, written),
            Err(e) => {
                tracing::warn!(error = %e, "virtio-blk: request failed");
                self.finish(mem, chain, e.status(), 0)
            }
        }
    }

    /// Writes the status byte (the last writable byte); returns the used length.
    fn finish(&self, mem: &GuestMemoryMmap, chain: &ParsedChain, status: u8, data: u32) -> u32 {
        let wlen = chain.writable_len();
        if wlen == 0 {
            // Nowhere to put a status: the request is returned with nothing written.
            return 0;
        }
        if let Err(e) = queue::write_segments(mem, &chain.writable, wlen - 1, &[status]) {
            tracing::warn!(error = %e, "virtio-blk: cannot write the status byte");
            return 0;
        }
        data.saturating_add(1)
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        let mut f = (1 << features::VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_BLK_F_SIZE_MAX)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE)
            | (1 << VIRTIO_BLK_F_FLUSH);
        if self.config.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        } else {
            // What the guest frees (fstrim, a `discard` mount) goes back to the host's file.
            f |= (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES);
        }
        f
    }

    fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space(), offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        tracing::warn!(offset, "virtio-blk: configuration space is read-only");
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        ActiveQueues::activate_once(&mut self.active, mem, queues, interrupt, 1)
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn process_queue(&mut self, index: usize) {
        if index != 0 {
            tracing::warn!(index, "virtio-blk: notify for an unknown queue");
            return;
        }
        if let Some(mut active) = self.active.take() {
            self.process_requests(&mut active);
            self.active = Some(active);
        }
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
    }
}
