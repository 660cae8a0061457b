//! virtio-net (device type 1) over a Linux tap: one rx/tx queue pair, a MAC address, no offloads.
//!
//! Queue layout (virtio 1.x, 5.1.2): 0 receiveq (host → guest), 1 transmitq (guest → host). No
//! control queue, no multiqueue, no mergeable rx buffers: a frame goes into one rx chain.
//!
//! Event-loop contract (like the console's host stream): poll [`Net::tap_fd`] for input while
//! [`Net::wants_tap_input`] and call [`Net::process_tap_input`] when it is readable; poll it for
//! output while [`Net::wants_tap_output`] and call [`Net::process_tap_output`] when it is
//! writable. Queue notifications (the device's ioeventfds) drive the guest side.

mod device;
#[cfg(any(test, feature = "test-utils"))]
mod fake;
mod persist;
mod tap;

pub use device::{
    ETH_HDR_LEN, MAX_FRAME_LEN, MAX_PACKET_LEN, Net, NetConfig, NetCounters, NetError, QUEUE_SIZE,
    RX_QUEUE, TX_QUEUE, VNET_HDR_LEN,
};
#[cfg(any(test, feature = "test-utils"))]
pub use fake::FakeBackend;
pub use persist::{NetPersistError, NetState};
pub use tap::{NetBackend, TUN_PATH, Tap, TapError};
