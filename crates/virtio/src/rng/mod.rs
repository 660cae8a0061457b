//! virtio-rng (device type 4): entropy from the host's OS RNG.

mod device;
mod persist;

pub use device::{QUEUE_SIZE, REQUEST_CAP, Rng, RngError};
pub use persist::RngState;
