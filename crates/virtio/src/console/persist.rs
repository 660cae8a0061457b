//! Snapshot state of the console: the handshake flags and every byte in flight.
//!
//! The host stream is not saved: after a restore the VMM attaches a new one with
//! [`Console::attach`], and the bytes queued at save time flow first.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Console;
use crate::GuestMemoryMmap;
use crate::device::{Interrupt, VirtioDevice};
use crate::persist::{PersistError, VirtioState, restore_queues};

/// Saved state of a [`Console`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleState {
    /// Features, activation, queues.
    pub virtio: VirtioState,
    /// The driver sent DEVICE_READY.
    pub device_ready: bool,
    /// DEVICE_ADD was queued for the agent port.
    pub port_added: bool,
    /// The driver sent PORT_READY for the agent port.
    pub port_ready: bool,
    /// The guest has the agent port open.
    pub guest_open: bool,
    /// The host side as reported to the guest.
    pub host_open: bool,
    /// Control messages not yet delivered.
    pub control_pending: Vec<Vec<u8>>,
    /// Host → guest bytes not yet delivered.
    pub to_guest: Vec<u8>,
    /// Guest → host bytes not yet written.
    pub to_host: Vec<u8>,
}

impl Console {
    /// The device's state.
    pub fn save(&self) -> ConsoleState {
        ConsoleState {
            virtio: VirtioState::of(self.acked_features, self.active.as_ref()),
            device_ready: self.device_ready,
            port_added: self.port_added,
            port_ready: self.port_ready,
            guest_open: self.guest_open,
            host_open: self.host_open,
            control_pending: self.ctrl_out.iter().cloned().collect(),
            to_guest: self.to_guest.iter().copied().collect(),
            to_host: self.to_host.iter().copied().collect(),
        }
    }

    /// A device that continues from `state` over `mem`, with no stream attached yet.
    pub fn restore(
        state: &ConsoleState,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
    ) -> Result<Self, PersistError> {
        let mut dev = Console::new();
        state.virtio.check_features(dev.avail_features())?;
        if state.control_pending.len() > super::device::HOST_CONTROL_CAP {
            return Err(PersistError::InvalidField("control_pending"));
        }
        dev.acked_features = state.virtio.acked_features;
        dev.device_ready = state.device_ready;
        dev.port_added = state.port_added;
        dev.port_ready = state.port_ready;
        dev.guest_open = state.guest_open;
        dev.host_open = state.host_open;
        dev.ctrl_out = state.control_pending.iter().cloned().collect();
        dev.to_guest = state.to_guest.iter().copied().collect();
        dev.to_host = state.to_host.iter().copied().collect();
        if state.virtio.activated {
            let queues = restore_queues(&state.virtio.queues, dev.queue_max_sizes())?;
            dev.activate(mem, queues, interrupt)
                .map_err(PersistError::Activate)?;
        }
        Ok(dev)
    }
}
