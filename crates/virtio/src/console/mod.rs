//! virtio-console (device type 3) with VIRTIO_CONSOLE_F_MULTIPORT: one named port, `cove.agent`,
//! whose host side is a byte stream (a `UnixStream` the VMM hands in).
//!
//! Queue layout for two ports (virtio 1.x, 5.3.2): 0/1 port 0 rx/tx, 2/3 control rx/tx
//! (`c_ivq`/`c_ovq`), 4/5 port 1 rx/tx. Port 0 is never announced: no console lives there.

mod control;
mod device;
mod persist;
mod port;

pub use control::{
    CONTROL_HEADER_LEN, ControlMessage, VIRTIO_CONSOLE_CONSOLE_PORT, VIRTIO_CONSOLE_DEVICE_ADD,
    VIRTIO_CONSOLE_DEVICE_READY, VIRTIO_CONSOLE_DEVICE_REMOVE, VIRTIO_CONSOLE_PORT_NAME,
    VIRTIO_CONSOLE_PORT_OPEN, VIRTIO_CONSOLE_PORT_READY, VIRTIO_CONSOLE_RESIZE,
};
pub use device::{
    AGENT_PORT, AGENT_PORT_NAME, Console, HOST_INPUT_CAP, HOST_OUTPUT_CAP, QUEUE_SIZE,
    VIRTIO_CONSOLE_F_MULTIPORT,
};
pub use persist::ConsoleState;
pub use port::HostStatus;
