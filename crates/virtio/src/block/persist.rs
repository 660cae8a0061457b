//! Snapshot state of the block device.
//!
//! The backing file is not part of the state: the snapshot manifest names it and the VMM copies
//! (reflinks) it beside the memory. Restore reopens it through a [`BlockConfig`] and refuses a
//! file whose size no longer matches.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Block, BlockConfig, BlockError};
use crate::GuestMemoryMmap;
use crate::device::{Interrupt, VirtioDevice};
use crate::persist::{PersistError, VirtioState, restore_queues};

/// Saved state of a [`Block`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    /// Features, activation, queues.
    pub virtio: VirtioState,
    /// Capacity in sectors when saved.
    pub capacity: u64,
    /// Whether the disk was read-only.
    pub read_only: bool,
    /// The serial the guest saw.
    pub serial: String,
}

/// Errors from restoring a block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockPersistError {
    /// Reopening the disk failed.
    #[error("reopen the disk")]
    Open(#[from] BlockError),
    /// The disk is not the one that was saved.
    #[error("disk changed since the snapshot: {0}")]
    Mismatch(&'static str),
    /// The generic virtio state is invalid.
    #[error("virtio state")]
    Virtio(#[from] PersistError),
}

impl Block {
    /// The device's state.
    pub fn save(&self) -> BlockState {
        BlockState {
            virtio: VirtioState::of(self.acked_features, self.active.as_ref()),
            capacity: self.capacity,
            read_only: self.config.read_only,
            serial: self.config.serial.clone(),
        }
    }

    /// Reopens `config` and continues from `state` over `mem`.
    pub fn restore(
        config: BlockConfig,
        state: &BlockState,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
    ) -> Result<Self, BlockPersistError> {
        let mut dev = Block::new(config)?;
        if dev.capacity != state.capacity {
            return Err(BlockPersistError::Mismatch("capacity"));
        }
        if dev.config.read_only != state.read_only {
            return Err(BlockPersistError::Mismatch("read-only flag"));
        }
        if dev.config.serial != state.serial {
            return Err(BlockPersistError::Mismatch("serial"));
        }
        state.virtio.check_features(dev.avail_features())?;
        dev.acked_features = state.virtio.acked_features;
        if state.virtio.activated {
            let queues = restore_queues(&state.virtio.queues, dev.queue_max_sizes())?;
            dev.activate(mem, queues, interrupt)
                .map_err(PersistError::Activate)?;
        }
        Ok(dev)
    }
}
