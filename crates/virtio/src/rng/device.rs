//! The entropy device: one queue of device-writable buffers, filled from `getrandom`.

use std::sync::Arc;

use virtio_queue::Queue;

use crate::device::{ActivateError, ActiveQueues, Interrupt, VirtioDevice};
use crate::queue::{self, ParsedChain};
use crate::{GuestMemoryMmap, device_type, features};

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most bytes given per request, so that one guest buffer cannot make the VMM generate
/// gigabytes of randomness; the guest just asks again.
pub const REQUEST_CAP: usize = 64 * 1024;

/// Errors from the entropy device.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    /// The OS RNG failed.
    #[error("read the OS random number generator: {0}")]
    Getrandom(getrandom::Error),
    /// The guest's buffers could not be written.
    #[error("write entropy to the guest")]
    Chain(#[source] queue::ChainError),
}

/// virtio-rng.
#[derive(Debug)]
pub struct Rng {
    pub(super) acked_features: u64,
    pub(super) active: Option<ActiveQueues>,
    buf: Vec<u8>,
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

impl Rng {
    /// A new, inactive device.
    pub fn new() -> Self {
        Self {
            acked_features: 0,
            active: None,
            buf: Vec::new(),
        }
    }

    /// Fills one request; returns the bytes written.
    fn fill(&mut self, mem: &GuestMemoryMmap, chain: &ParsedChain) -> Result<u32, RngError> {
        let want = usize::try_from(chain.writable_len())
            .unwrap_or(usize::MAX)
            .min(REQUEST_CAP);
        self.buf.resize(want, 0);
        getrandom::fill(&mut self.buf).map_err(RngError::Getrandom)?;
        queue::write_segments(mem, &chain.writable, 0, &self.buf).map_err(RngError::Chain)?;
        // `want` <= REQUEST_CAP, which fits in u32.
        Ok(u32::try_from(want).unwrap_or(0))
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        1 << features::VIRTIO_F_VERSION_1
    }

    fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, _offset: u64, _data: &mut [u8]) {}

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        tracing::warn!(offset, "virtio-rng: has no configuration space");
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
        let Some(mut active) = self.active.take() else {
            return;
        };
        if index == 0 {
            let mem = active.mem.clone();
            let mut used = false;
            let q = &mut active.queues[0];
            while let Some(chain) = queue::pop(q, &mem) {
                let head = chain.head_index();
                let len = match ParsedChain::parse(chain, u64::from(u32::MAX)) {
                    Ok(parsed) => self.fill(&mem, &parsed).unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "virtio-rng: request failed");
                        0
                    }),
                    Err(e) => {
                        tracing::warn!(error = %e, "virtio-rng: bad descriptor chain");
                        0
                    }
                };
                used |= queue::add_used(q, &mem, head, len);
            }
            if used {
                active.interrupt.signal_used_queue();
            }
        } else {
            tracing::warn!(index, "virtio-rng: notify for an unknown queue");
        }
        self.active = Some(active);
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
    }
}
