//! Serde state shared by every device and by the transport.
//!
//! Each device's own `persist.rs` embeds a [`VirtioState`]; the transport saves a [`MmioState`].
//! Fields added later must carry `#[serde(default)]` so that older snapshots still load.

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};

use crate::device::ActivateError;

/// Errors from restoring virtio state.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// A saved queue does not make a valid queue (size, alignment).
    #[error("queue {index} in the snapshot is invalid")]
    Queue {
        /// Queue index.
        index: usize,
        /// Why `virtio-queue` refused it.
        #[source]
        source: virtio_queue::Error,
    },
    /// The snapshot has a different number of queues than the device.
    #[error("snapshot has {got} queues, the device has {expected}")]
    QueueCount {
        /// Queues of the device.
        expected: usize,
        /// Queues in the snapshot.
        got: usize,
    },
    /// A saved queue's maximum size differs from the device's.
    #[error("queue {index} has maximum size {got} in the snapshot, {expected} in the device")]
    QueueMaxSize {
        /// Queue index.
        index: usize,
        /// Size the device offers.
        expected: u16,
        /// Size in the snapshot.
        got: u16,
    },
    /// The snapshot's acked features are not a subset of what the device offers.
    #[error("snapshot acked features {acked:#x} not offered by the device ({offered:#x})")]
    Features {
        /// Acked in the snapshot.
        acked: u64,
        /// Offered by the device.
        offered: u64,
    },
    /// Re-activating the restored device failed.
    #[error("re-activate the restored device")]
    Activate(#[source] ActivateError),
    /// A device-specific field is out of range.
    #[error("invalid device state: {0}")]
    InvalidField(&'static str),
}

/// One queue's configuration and position.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueConfig {
    /// Largest size the device offers.
    pub max_size: u16,
    /// Size the driver chose.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available (driver) ring address.
    pub avail_ring: u64,
    /// Used (device) ring address.
    pub used_ring: u64,
    /// Next available-ring entry the device will read.
    pub next_avail: u16,
    /// Next used-ring entry the device will write.
    pub next_used: u16,
    /// VIRTIO_RING_F_EVENT_IDX negotiated (not offered yet; kept for the format).
    #[serde(default)]
    pub event_idx: bool,
}

impl From<&Queue> for QueueConfig {
    fn from(q: &Queue) -> Self {
        let s = q.state();
        Self {
            max_size: s.max_size,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx: s.event_idx_enabled,
        }
    }
}

impl QueueConfig {
    /// Rebuilds the queue; `virtio-queue` re-checks size and alignment.
    pub fn to_queue(&self, index: usize) -> Result<Queue, PersistError> {
        let state = QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        };
        Queue::try_from(state).map_err(|source| PersistError::Queue { index, source })
    }
}

/// Copies a queue (`Queue` is not `Clone`).
pub fn clone_queue(q: &Queue) -> Queue {
    // A queue's own state always converts back; fall back to a fresh queue of the same maximum
    // size if virtio-queue ever disagrees.
    Queue::try_from(q.state())
        .or_else(|_| Queue::new(q.max_size()))
        .unwrap_or_default()
}

/// Rebuilds a device's queues, checking them against its maximum sizes.
pub fn restore_queues(
    saved: &[QueueConfig],
    max_sizes: &[u16],
) -> Result<Vec<Queue>, PersistError> {
    if saved.len() != max_sizes.len() {
        return Err(PersistError::QueueCount {
            expected: max_sizes.len(),
            got: saved.len(),
        });
    }
    saved
        .iter()
        .zip(max_sizes)
        .enumerate()
        .map(|(index, (q, &max))| {
            if q.max_size != max {
                return Err(PersistError::QueueMaxSize {
                    index,
                    expected: max,
                    got: q.max_size,
                });
            }
            q.to_queue(index)
        })
        .collect()
}

/// The generic part of a device's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioState {
    /// Features the driver accepted.
    pub acked_features: u64,
    /// Whether the device was active (DRIVER_OK and activation succeeded).
    pub activated: bool,
    /// The live queues, when activated (empty otherwise).
    pub queues: Vec<QueueConfig>,
}

impl VirtioState {
    /// The state of a device that accepted `acked_features` and is `active` (or not).
    pub fn of(acked_features: u64, active: Option<&crate::device::ActiveQueues>) -> Self {
        Self {
            acked_features,
            activated: active.is_some(),
            queues: active
                .iter()
                .flat_map(|a| a.queues.iter().map(QueueConfig::from))
                .collect(),
        }
    }

    /// Checks the acked features against what the device offers.
    pub fn check_features(&self, offered: u64) -> Result<(), PersistError> {
        if self.acked_features & !offered != 0 {
            return Err(PersistError::Features {
                acked: self.acked_features,
                offered,
            });
        }
        Ok(())
    }
}

/// The transport's registers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioState {
    /// Status register.
    pub device_status: u32,
    /// DeviceFeaturesSel.
    pub device_features_select: u32,
    /// DriverFeaturesSel.
    pub driver_features_select: u32,
    /// What the driver wrote to DriverFeatures so far.
    pub driver_features: u64,
    /// QueueSel.
    pub queue_select: u32,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// The queue registers as the driver set them.
    pub queues: Vec<QueueConfig>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> Queue {
        let mut q = Queue::new(16).unwrap();
        q.set_size(8);
        q.set_desc_table_address(Some(0x1000), None);
        q.set_avail_ring_address(Some(0x2000), None);
        q.set_used_ring_address(Some(0x3000), None);
        q.set_next_avail(5);
        q.set_next_used(4);
        q.set_ready(true);
        q
    }

    #[test]
    fn queue_config_round_trips() {
        let q = queue();
        let saved = QueueConfig::from(&q);
        assert_eq!(saved.to_queue(0).unwrap(), q);
        assert_eq!(clone_queue(&q), q);
    }

    #[test]
    fn restore_refuses_mismatches() {
        let saved = vec![QueueConfig::from(&queue())];
        assert!(restore_queues(&saved, &[16]).is_ok());
        assert!(matches!(
            restore_queues(&saved, &[16, 16]),
            Err(PersistError::QueueCount { .. })
        ));
        assert!(matches!(
            restore_queues(&saved, &[32]),
            Err(PersistError::QueueMaxSize { .. })
        ));
        let mut bad = saved.clone();
        bad[0].size = 6;
        assert!(matches!(
            restore_queues(&bad, &[16]),
            Err(PersistError::Queue { .. })
        ));
        bad[0].size = 8;
        bad[0].desc_table = 0x1001;
        assert!(restore_queues(&bad, &[16]).is_err());
        let v = VirtioState {
            acked_features: 1 << 40,
            ..VirtioState::default()
        };
        assert!(v.check_features(1 << 32).is_err());
    }

    #[test]
    fn older_snapshots_without_optional_fields_load() {
        let json = r#"{"max_size":16,"size":8,"ready":true,"desc_table":4096,
            "avail_ring":8192,"used_ring":12288,"next_avail":5,"next_used":4}"#;
        let q: QueueConfig = serde_json::from_str(json).unwrap();
        assert!(!q.event_idx);
        assert_eq!(q.to_queue(0).unwrap(), queue());
    }
}
