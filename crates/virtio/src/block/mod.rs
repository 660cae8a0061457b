//! virtio-blk (device type 2) on a host file.

mod device;
mod persist;
mod request;

pub use device::{
    Block, BlockConfig, BlockError, DISCARD_ALIGNMENT, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG,
    MAX_REQUEST_DATA, QUEUE_SIZE, SECTOR_SIZE, SEG_MAX, SIZE_MAX,
};
pub use persist::{BlockPersistError, BlockState};
pub use request::{RequestError, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};
