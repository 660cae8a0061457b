//! Snapshot state of the network device: features, queues, and the frames in flight.
//!
//! The tap is not part of the state: a non-persistent tap disappears with the process that
//! opened it, so the VMM reopens (recreates) it by name from a [`NetConfig`]. Counters start
//! again from zero in the restored process.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::device::{ETH_HDR_LEN, MAX_PACKET_LEN, VNET_HDR_LEN};
use super::tap::NetBackend;
use super::{Net, NetConfig, NetError, Tap};
use crate::GuestMemoryMmap;
use crate::device::{Interrupt, VirtioDevice};
use crate::persist::{PersistError, VirtioState, restore_queues};

/// Saved state of a [`Net`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    /// Features, activation, queues.
    pub virtio: VirtioState,
    /// The MAC the guest saw.
    pub mac: [u8; 6],
    /// A frame (header + frame) read from the tap, waiting for an rx buffer; empty if none.
    pub rx_pending: Vec<u8>,
    /// A frame (header + frame) taken from the guest, waiting for the tap; empty if none.
    pub tx_pending: Vec<u8>,
}

/// Errors from restoring a network device.
#[derive(Debug, thiserror::Error)]
pub enum NetPersistError {
    /// Reopening the tap (or checking the configuration) failed.
    #[error("reopen the network device")]
    Open(#[from] NetError),
    /// The configuration does not match what the guest saw.
    #[error("network configuration changed since the snapshot: {0}")]
    Mismatch(&'static str),
    /// The generic virtio state, or a pending frame, is invalid.
    #[error("virtio state")]
    Virtio(#[from] PersistError),
}

/// A saved pending frame must be empty or a plausible packet.
fn check_pending(packet: &[u8], what: &'static str) -> Result<(), PersistError> {
    if !packet.is_empty() && !(VNET_HDR_LEN + ETH_HDR_LEN..=MAX_PACKET_LEN).contains(&packet.len())
    {
        return Err(PersistError::InvalidField(what));
    }
    Ok(())
}

impl<B: NetBackend> Net<B> {
    /// The device's state.
    pub fn save(&self) -> NetState {
        NetState {
            virtio: VirtioState::of(self.acked_features, self.active.as_ref()),
            mac: self.mac,
            rx_pending: self.rx_buf[..self.rx_len].to_vec(),
            tx_pending: self.tx_buf[..self.tx_len].to_vec(),
        }
    }

    /// Continues from `state` over `mem` on `backend`; `mac` must be the saved one.
    pub fn restore_with_backend(
        backend: B,
        mac: [u8; 6],
        state: &NetState,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
    ) -> Result<Self, NetPersistError> {
        if mac != state.mac {
            return Err(NetPersistError::Mismatch("mac"));
        }
        let mut dev = Self::with_backend(backend, mac)?;
        state.virtio.check_features(dev.avail_features())?;
        check_pending(&state.rx_pending, "rx_pending")?;
        check_pending(&state.tx_pending, "tx_pending")?;
        dev.acked_features = state.virtio.acked_features;
        dev.rx_len = state.rx_pending.len();
        dev.rx_buf[..dev.rx_len].copy_from_slice(&state.rx_pending);
        dev.tx_len = state.tx_pending.len();
        dev.tx_buf[..dev.tx_len].copy_from_slice(&state.tx_pending);
        if state.virtio.activated {
            let queues = restore_queues(&state.virtio.queues, dev.queue_max_sizes())?;
            dev.activate(mem, queues, interrupt)
                .map_err(PersistError::Activate)?;
        }
        Ok(dev)
    }
}

impl Net<Tap> {
    /// Reopens the tap named in `config` and continues from `state` over `mem`.
    pub fn restore(
        config: &NetConfig,
        state: &NetState,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
    ) -> Result<Self, NetPersistError> {
        if config.mac != state.mac {
            return Err(NetPersistError::Mismatch("mac"));
        }
        let tap = Tap::open(&config.tap).map_err(NetError::from)?;
        Self::restore_with_backend(tap, config.mac, state, mem, interrupt)
    }
}
