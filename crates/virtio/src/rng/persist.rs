//! Snapshot state of the entropy device: nothing beyond the generic virtio state.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Rng;
use crate::GuestMemoryMmap;
use crate::device::{Interrupt, VirtioDevice};
use crate::persist::{PersistError, VirtioState, restore_queues};

/// Saved state of a [`Rng`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// Features, activation, queues.
    pub virtio: VirtioState,
}

impl Rng {
    /// The device's state.
    pub fn save(&self) -> RngState {
        RngState {
            virtio: VirtioState::of(self.acked_features, self.active.as_ref()),
        }
    }

    /// A device that continues from `state` over `mem`.
    pub fn restore(
        state: &RngState,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
    ) -> Result<Self, PersistError> {
        let mut rng = Rng::new();
        state.virtio.check_features(rng.avail_features())?;
        rng.acked_features = state.virtio.acked_features;
        if state.virtio.activated {
            let queues = restore_queues(&state.virtio.queues, rng.queue_max_sizes())?;
            rng.activate(mem, queues, interrupt)
                .map_err(PersistError::Activate)?;
        }
        Ok(rng)
    }
}
