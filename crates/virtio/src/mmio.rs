//! The virtio-mmio transport, register layout version 2 (virtio 1.x, section 4.2).
//!
//! [`MmioTransport`] sits on the VMM's MMIO bus as a [`BusDevice`]. It answers the generic
//! registers, negotiates features, collects the queue configuration, and on `DRIVER_OK` hands the
//! queues to the device. Every value the guest writes is validated; anything malformed is logged
//! with `tracing` and ignored.
//!
//! Undefined offsets, the legacy (version 1) registers, and accesses of the wrong size read as
//! zero and ignore writes. Registers take 4-byte aligned accesses; the configuration space at
//! 0x100 takes accesses of 1, 2, 4 or 8 bytes.
//!
//! Notifications: a QueueNotify write processes the queue at once. The VMM may instead register
//! [`MmioTransport::queue_events`] as ioeventfds on the QueueNotify address (with the queue index
//! as datamatch) and call [`MmioTransport::handle_queue_event`] when one fires.

use std::sync::Arc;

use cove_devices::BusDevice;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::device::{Interrupt, VirtioDevice};
use crate::persist::{MmioState, PersistError, QueueConfig, clone_queue};
use crate::{GuestMemoryMmap, features, status};

/// "virt" in little endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// The register layout this transport implements.
pub const MMIO_VERSION: u32 = 2;
/// VendorID: "COVE" in little endian.
pub const VENDOR_ID: u32 = 0x4556_4f43;
/// Size of the MMIO window a transport needs on the bus.
pub const MMIO_WINDOW: u64 = 0x1000;
/// Where the device configuration space starts.
pub const CONFIG_OFFSET: u64 = 0x100;

/// Register offsets (virtio 1.x, 4.2.2).
mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_AVAIL_LOW: u64 = 0x090;
    pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
    pub const QUEUE_USED_LOW: u64 = 0x0a0;
    pub const QUEUE_USED_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
}

/// Errors from building a transport.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// A queue event file descriptor could not be created.
    #[error("create a queue eventfd")]
    CreateQueueEvent(#[source] std::io::Error),
    /// The device declares a queue size `virtio-queue` refuses (0, > 32768, not a power of 2).
    #[error("device queue {index} has invalid maximum size {size}")]
    QueueMaxSize {
        /// Queue index.
        index: usize,
        /// The size.
        size: u16,
    },
    /// Restoring the saved registers failed.
    #[error("restore transport state")]
    Restore(#[source] PersistError),
    /// The saved Status says DRIVER_OK but the restored device is not active (or the reverse).
    #[error("snapshot status {status:#x} does not match the device (active: {active})")]
    RestoreMismatch {
        /// Saved Status register.
        status: u32,
        /// Whether the restored device is active.
        active: bool,
    },
}

/// A virtio device behind the virtio-mmio register interface.
#[derive(Debug)]
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    device_status: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    queue_select: u32,
    config_generation: u32,
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// Wraps `device`. `interrupt` is the device's line (an irqfd in the VMM), shared with the
    /// device once it is activated.
    pub fn new(
        device: D,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
    ) -> Result<Self, MmioError> {
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for (index, &size) in device.queue_max_sizes().iter().enumerate() {
            queues.push(Queue::new(size).map_err(|_| MmioError::QueueMaxSize { index, size })?);
            queue_evts.push(EventFd::new(EFD_NONBLOCK).map_err(MmioError::CreateQueueEvent)?);
        }
        Ok(Self {
            device,
            mem,
            interrupt,
            queues,
            queue_evts,
            device_status: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            queue_select: 0,
            config_generation: 0,
        })
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, for the VMM's event loop (host-side input, say).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The device's interrupt.
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    /// The Status register.
    pub fn device_status(&self) -> u32 {
        self.device_status
    }

    /// One event per queue, for the VMM to register as ioeventfds on QueueNotify
    /// (`MMIO base + 0x50`, datamatch = queue index).
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// A queue's ioeventfd fired: clears it and lets the device process the queue.
    pub fn handle_queue_event(&mut self, index: usize) {
        if let Some(evt) = self.queue_evts.get(index) {
            // EAGAIN only means it was already drained; the queue is processed either way.
            let _ = evt.read();
        }
        self.notify(index);
    }

    /// Processes every queue as if notified. Call once after a restore: a notification the guest
    /// made just before the snapshot (an ioeventfd not yet read) is otherwise lost, and the
    /// devices' queued output (console control messages, host bytes) waits for buffers the guest
    /// already gave.
    pub fn kick_all(&mut self) {
        for index in 0..self.queues.len() {
            self.notify(index);
        }
    }

    /// Processes queue `index` if the device is running.
    fn notify(&mut self, index: usize) {
        if index >= self.queues.len() {
            tracing::warn!(index, "virtio-mmio: notify for a queue that does not exist");
            return;
        }
        if self.device_status & status::DRIVER_OK == 0 || !self.device.is_activated() {
            tracing::debug!(index, "virtio-mmio: notify before DRIVER_OK ignored");
            return;
        }
        self.device.process_queue(index);
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(usize::try_from(self.queue_select).ok()?)
    }

    /// The selected queue, if the driver may still change it (not ready, no DRIVER_OK).
    fn selected_queue_for_setup(&mut self) -> Option<&mut Queue> {
        if self.device_status & status::DRIVER_OK != 0 {
            tracing::warn!("virtio-mmio: queue set-up after DRIVER_OK ignored");
            return None;
        }
        let sel = self.queue_select;
        let q = usize::try_from(sel)
            .ok()
            .and_then(|i| self.queues.get_mut(i));
        match q {
            None => {
                tracing::warn!(sel, "virtio-mmio: set-up of a queue that does not exist");
                None
            }
            Some(q) if q.ready() => {
                tracing::warn!(sel, "virtio-mmio: set-up of a ready queue ignored");
                None
            }
            Some(q) => Some(q),
        }
    }

    fn read_register(&self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC => MMIO_MAGIC,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => {
                let f = self.device.avail_features();
                match self.device_features_select {
                    0 => low32(f),
                    1 => high32(f),
                    _ => 0,
                }
            }
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_NUM => self.selected_queue().map_or(0, |q| u32::from(q.size())),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.device_status,
            reg::QUEUE_DESC_LOW => self.selected_queue().map_or(0, |q| low32(q.desc_table())),
            reg::QUEUE_DESC_HIGH => self.selected_queue().map_or(0, |q| high32(q.desc_table())),
            reg::QUEUE_AVAIL_LOW => self.selected_queue().map_or(0, |q| low32(q.avail_ring())),
            reg::QUEUE_AVAIL_HIGH => self.selected_queue().map_or(0, |q| high32(q.avail_ring())),
            reg::QUEUE_USED_LOW => self.selected_queue().map_or(0, |q| low32(q.used_ring())),
            reg::QUEUE_USED_HIGH => self.selected_queue().map_or(0, |q| high32(q.used_ring())),
            reg::CONFIG_GENERATION => self.config_generation,
            _ => {
                tracing::warn!(offset, "virtio-mmio: read of an unknown register");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, v: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_select = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_select = v,
            reg::DRIVER_FEATURES => self.write_driver_features(v),
            reg::QUEUE_SEL => self.queue_select = v,
            reg::QUEUE_NUM => {
                if let Some(q) = self.selected_queue_for_setup()
                    && let Ok(size) = u16::try_from(v).map_err(|_| ())
                    && q.try_set_size(size).is_ok()
                {
                    return;
                }
                tracing::warn!(v, "virtio-mmio: invalid QueueNum ignored");
            }
            reg::QUEUE_READY => self.write_queue_ready(v),
            reg::QUEUE_NOTIFY => self.notify(usize::try_from(v).unwrap_or(usize::MAX)),
            reg::INTERRUPT_ACK => self.interrupt.ack(v),
            reg::STATUS => self.write_status(v),
            reg::QUEUE_DESC_LOW => self.set_ring_addr(Ring::Desc, Some(v), None),
            reg::QUEUE_DESC_HIGH => self.set_ring_addr(Ring::Desc, None, Some(v)),
            reg::QUEUE_AVAIL_LOW => self.set_ring_addr(Ring::Avail, Some(v), None),
            reg::QUEUE_AVAIL_HIGH => self.set_ring_addr(Ring::Avail, None, Some(v)),
            reg::QUEUE_USED_LOW => self.set_ring_addr(Ring::Used, Some(v), None),
            reg::QUEUE_USED_HIGH => self.set_ring_addr(Ring::Used, None, Some(v)),
            _ => tracing::warn!(
                offset,
                v,
                "virtio-mmio: write to an unknown or read-only register"
            ),
        }
    }

    fn write_driver_features(&mut self, v: u32) {
        let st = self.device_status;
        if st & status::DRIVER == 0 || st & status::FEATURES_OK != 0 {
            tracing::warn!(
                st,
                "virtio-mmio: DriverFeatures written outside negotiation"
            );
            return;
        }
        match self.driver_features_select {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
            1 => {
                self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32);
            }
            sel => tracing::warn!(sel, v, "virtio-mmio: DriverFeatures for an unknown page"),
        }
    }

    fn write_queue_ready(&mut self, v: u32) {
        let mem = self.mem.clone();
        let Some(q) = self.selected_queue_for_setup() else {
            if v == 0 {
                // Clearing ready on a ready queue is how a driver would retire it; without
                // VIRTIO_F_RING_RESET we only accept that through a device reset.
                tracing::warn!("virtio-mmio: QueueReady=0 ignored (reset the device instead)");
            }
            return;
        };
        match v {
            0 => q.set_ready(false),
            1 => {
                q.set_ready(true);
                if !q.is_valid(&mem) {
                    tracing::warn!("virtio-mmio: queue rings outside guest memory; not ready");
                    q.set_ready(false);
                }
            }
            _ => tracing::warn!(v, "virtio-mmio: invalid QueueReady value"),
        }
    }

    fn set_ring_addr(&mut self, ring: Ring, low: Option<u32>, high: Option<u32>) {
        let Some(q) = self.selected_queue_for_setup() else {
            return;
        };
        let old = match ring {
            Ring::Desc => q.desc_table(),
            Ring::Avail => q.avail_ring(),
            Ring::Used => q.used_ring(),
        };
        let low = low.map_or(old & 0xffff_ffff, u64::from);
        let high = high.map_or(old >> 32, u64::from);
        let addr = GuestAddress((high << 32) | low);
        // virtio-queue checks the alignment (16, 2, 4 bytes); the range inside guest memory is
        // checked when the driver sets QueueReady.
        let res = match ring {
            Ring::Desc => q.try_set_desc_table_address(addr),
            Ring::Avail => q.try_set_avail_ring_address(addr),
            Ring::Used => q.try_set_used_ring_address(addr),
        };
        if let Err(e) = res {
            tracing::warn!(error = %e, addr = addr.0, "virtio-mmio: ring address refused");
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let old = self.device_status;
        if v & old != old {
            tracing::warn!(
                old,
                v,
                "virtio-mmio: Status may only clear bits through a reset"
            );
            return;
        }
        if v & status::FAILED != 0 {
            tracing::warn!("virtio-mmio: the driver marked the device FAILED");
        }
        let steps = v & !(status::FAILED | status::DEVICE_NEEDS_RESET);
        const ORDER: [u32; 4] = [
            0,
            status::ACKNOWLEDGE,
            status::ACKNOWLEDGE | status::DRIVER,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        ];
        let full = ORDER[3] | status::DRIVER_OK;
        if !ORDER.contains(&steps) && steps != full {
            tracing::warn!(v, "virtio-mmio: Status out of the init sequence ignored");
            return;
        }
        let added = v & !old;
        let mut new = v;
        if added & status::FEATURES_OK != 0 && !self.accept_features() {
            new &= !status::FEATURES_OK;
        }
        if added & status::DRIVER_OK != 0 {
            let queues = self.queues.iter().map(clone_queue).collect();
            if let Err(e) =
                self.device
                    .activate(self.mem.clone(), queues, Arc::clone(&self.interrupt))
            {
                tracing::warn!(error = %e, "virtio-mmio: device activation failed");
                new = (new & !status::DRIVER_OK) | status::DEVICE_NEEDS_RESET;
                self.device_status = new;
                self.interrupt.signal_config_change();
                return;
            }
        }
        self.device_status = new;
    }

    /// FEATURES_OK: the driver's features must be offered and include VIRTIO_F_VERSION_1.
    fn accept_features(&mut self) -> bool {
        let offered = self.device.avail_features();
        let wanted = self.driver_features;
        if wanted & !offered != 0 {
            tracing::warn!(
                wanted,
                offered,
                "virtio-mmio: driver wants features not offered"
            );
            return false;
        }
        if wanted & (1 << features::VIRTIO_F_VERSION_1) == 0 {
            tracing::warn!(
                wanted,
                "virtio-mmio: legacy driver (no VIRTIO_F_VERSION_1) refused"
            );
            return false;
        }
        self.device.set_acked_features(wanted);
        true
    }

    /// Status = 0: back to the state at power-on, device included.
    fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.interrupt.set_status(0);
        self.device_status = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.queue_select = 0;
    }

    /// The registers, for a snapshot (the device saves its own state).
    pub fn save(&self) -> MmioState {
        MmioState {
            device_status: self.device_status,
            device_features_select: self.device_features_select,
            driver_features_select: self.driver_features_select,
            driver_features: self.driver_features,
            queue_select: self.queue_select,
            interrupt_status: self.interrupt.status(),
            config_generation: self.config_generation,
            queues: self.queues.iter().map(QueueConfig::from).collect(),
        }
    }

    /// Rebuilds a transport around an already restored `device`.
    pub fn restore(
        device: D,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        state: &MmioState,
    ) -> Result<Self, MmioError> {
        let running = state.device_status & status::DRIVER_OK != 0;
        if running != device.is_activated() {
            return Err(MmioError::RestoreMismatch {
                status: state.device_status,
                active: device.is_activated(),
            });
        }
        let mut t = Self::new(device, mem, interrupt)?;
        t.queues = crate::persist::restore_queues(&state.queues, t.device.queue_max_sizes())
            .map_err(MmioError::Restore)?;
        t.device_status = state.device_status;
        t.device_features_select = state.device_features_select;
        t.driver_features_select = state.driver_features_select;
        t.driver_features = state.driver_features;
        t.queue_select = state.queue_select;
        t.config_generation = state.config_generation;
        t.interrupt.set_status(state.interrupt_status);
        Ok(t)
    }
}

#[derive(Clone, Copy, Debug)]
enum Ring {
    Desc,
    Avail,
    Used,
}

fn low32(v: u64) -> u32 {
    // Truncation is the point.
    #[allow(clippy::cast_possible_truncation)]
    let low = v as u32;
    low
}

fn high32(v: u64) -> u32 {
    low32(v >> 32)
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= CONFIG_OFFSET {
            if matches!(data.len(), 1 | 2 | 4 | 8) {
                self.device.read_config(offset - CONFIG_OFFSET, data);
            } else {
                tracing::warn!(
                    offset,
                    len = data.len(),
                    "virtio-mmio: bad config read size"
                );
            }
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            tracing::warn!(
                offset,
                len = data.len(),
                "virtio-mmio: bad register read size"
            );
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            if matches!(data.len(), 1 | 2 | 4 | 8) {
                self.device.write_config(offset - CONFIG_OFFSET, data);
            } else {
                tracing::warn!(
                    offset,
                    len = data.len(),
                    "virtio-mmio: bad config write size"
                );
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            tracing::warn!(
                offset,
                len = data.len(),
                "virtio-mmio: bad register write size"
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            tracing::warn!(offset, "virtio-mmio: unaligned register write");
            return;
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::testing::{self, GuestQueue, MEM_SIZE, read32, write32};

    fn rng() -> MmioTransport<Rng> {
        testing::transport(Rng::new(), &testing::guest_memory()).0
    }

    #[test]
    fn identity_registers() {
        let mut t = rng();
        assert_eq!(read32(&mut t, reg::MAGIC), MMIO_MAGIC);
        assert_eq!(read32(&mut t, reg::VERSION), 2);
        assert_eq!(read32(&mut t, reg::DEVICE_ID), 4);
        assert_eq!(read32(&mut t, reg::VENDOR_ID), VENDOR_ID);
        write32(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(
            read32(&mut t, reg::DEVICE_FEATURES),
            1,
            "VERSION_1 is bit 32"
        );
        write32(&mut t, reg::DEVICE_FEATURES_SEL, 7);
        assert_eq!(read32(&mut t, reg::DEVICE_FEATURES), 0);
        write32(&mut t, reg::QUEUE_SEL, 0);
        assert_eq!(read32(&mut t, reg::QUEUE_NUM_MAX), 256);
        write32(&mut t, reg::QUEUE_SEL, 1);
        assert_eq!(read32(&mut t, reg::QUEUE_NUM_MAX), 0, "no queue 1");
    }

    #[test]
    fn status_follows_the_init_sequence() {
        let mut t = rng();
        write32(&mut t, reg::STATUS, status::DRIVER);
        assert_eq!(t.device_status(), 0, "DRIVER before ACKNOWLEDGE");
        write32(&mut t, reg::STATUS, status::ACKNOWLEDGE);
        write32(
            &mut t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::FEATURES_OK,
        );
        assert_eq!(
            t.device_status(),
            status::ACKNOWLEDGE,
            "FEATURES_OK before DRIVER"
        );
        write32(
            &mut t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
        );
        assert_eq!(
            t.device_status(),
            status::ACKNOWLEDGE,
            "DRIVER_OK before FEATURES_OK"
        );
        write32(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        write32(&mut t, reg::STATUS, status::ACKNOWLEDGE);
        assert_eq!(
            t.device_status(),
            status::ACKNOWLEDGE | status::DRIVER,
            "no clearing"
        );
        assert!(!t.device().is_activated());
    }

    #[test]
    fn features_must_be_offered_and_modern() {
        let mut t = rng();
        assert!(
            !testing::negotiate(&mut t, |f| f | 1 << 40),
            "unoffered bit"
        );
        assert!(!testing::negotiate(&mut t, |_| 0), "no VIRTIO_F_VERSION_1");
        assert!(testing::negotiate(&mut t, |f| f));
        assert_eq!(t.device().acked_features(), 1 << 32);
        // DriverFeatures after FEATURES_OK does not change anything.
        write32(&mut t, reg::DRIVER_FEATURES_SEL, 0);
        write32(&mut t, reg::DRIVER_FEATURES, 0xffff_ffff);
        assert_eq!(t.save().driver_features, 1 << 32);
    }

    #[test]
    fn queue_values_are_validated() {
        let mut t = rng();
        assert!(testing::negotiate(&mut t, |f| f));
        write32(&mut t, reg::QUEUE_SEL, 0);
        for bad in [0, 3, 100, 512, 0x1_0000] {
            write32(&mut t, reg::QUEUE_NUM, bad);
            assert_eq!(read32(&mut t, reg::QUEUE_NUM), 256, "size {bad} refused");
        }
        write32(&mut t, reg::QUEUE_NUM, 16);
        assert_eq!(read32(&mut t, reg::QUEUE_NUM), 16);
        // Misaligned rings are refused at once.
        write32(&mut t, reg::QUEUE_DESC_LOW, 0x1008);
        assert_ne!(read32(&mut t, reg::QUEUE_DESC_LOW), 0x1008);
        write32(&mut t, reg::QUEUE_USED_LOW, 0x2002);
        assert_ne!(read32(&mut t, reg::QUEUE_USED_LOW), 0x2002);
        // Rings outside guest memory keep the queue from becoming ready.
        let q = GuestQueue::new(0, 16);
        testing::setup_queue(&mut t, &q);
        assert_eq!(read32(&mut t, reg::QUEUE_READY), 1);
        write32(&mut t, reg::STATUS, 0);
        assert!(testing::negotiate(&mut t, |f| f));
        let mut far = GuestQueue::new(0, 16);
        far.used = MEM_SIZE - 8;
        testing::setup_queue(&mut t, &far);
        assert_eq!(
            read32(&mut t, reg::QUEUE_READY),
            0,
            "used ring crosses the end"
        );
        far.used = 0x1_0000_0000_0000;
        far.desc = u64::MAX - 15;
        testing::setup_queue(&mut t, &far);
        assert_eq!(read32(&mut t, reg::QUEUE_READY), 0, "rings far away");
    }

    #[test]
    fn queue_setup_is_frozen_after_driver_ok() {
        let mut t = rng();
        let qs = testing::init(&mut t, &[16]);
        write32(&mut t, reg::QUEUE_NUM, 8);
        write32(&mut t, reg::QUEUE_DESC_LOW, 0x4000);
        write32(&mut t, reg::QUEUE_READY, 0);
        assert_eq!(read32(&mut t, reg::QUEUE_NUM), 16);
        assert_eq!(u64::from(read32(&mut t, reg::QUEUE_DESC_LOW)), qs[0].desc);
        assert_eq!(read32(&mut t, reg::QUEUE_READY), 1);
    }

    #[test]
    fn odd_accesses_read_zero_and_are_ignored() {
        let mut t = rng();
        let before = t.save();
        for off in [0x028, 0x03c, 0x040, 0x0b0, 0x0c8, 0x0f8, 0x001, 0x072] {
            assert_eq!(read32(&mut t, off), 0, "offset {off:#x}");
            write32(&mut t, off, 0xdead_beef);
        }
        let mut two = [0xffu8; 2];
        t.read(reg::MAGIC, &mut two);
        assert_eq!(two, [0, 0], "a 2-byte register read reads zero");
        t.write(reg::STATUS, &[1, 0]);
        t.write(reg::STATUS, &[1, 0, 0, 0, 0, 0, 0, 0]);
        let mut three = [0xffu8; 3];
        t.read(CONFIG_OFFSET, &mut three);
        assert_eq!(three, [0, 0, 0]);
        t.write(CONFIG_OFFSET + 0x10, &[1, 2, 3]);
        assert_eq!(t.save(), before, "nothing changed");
    }

    #[test]
    fn status_zero_resets_everything() {
        let mut t = rng();
        testing::init(&mut t, &[16]);
        t.interrupt().signal_used_queue();
        write32(&mut t, reg::QUEUE_SEL, 0);
        write32(&mut t, reg::STATUS, 0);
        assert_eq!(t.device_status(), 0);
        assert!(!t.device().is_activated());
        assert_eq!(t.device().acked_features(), 0);
        assert_eq!(read32(&mut t, reg::QUEUE_READY), 0);
        assert_eq!(read32(&mut t, reg::QUEUE_NUM), 256);
        assert_eq!(read32(&mut t, reg::INTERRUPT_STATUS), 0);
        testing::init(&mut t, &[16]);
        assert!(t.device().is_activated(), "re-initialises after reset");
    }

    #[test]
    fn ioeventfd_path_processes_the_queue() {
        let mem = testing::guest_memory();
        let (mut t, line) = testing::transport(Rng::new(), &mem);
        let mut qs = testing::init(&mut t, &[16]);
        qs[0].add_chain(&mem, &[(testing::BUF_BASE, 8, true)]);
        t.queue_events()[0].write(1).unwrap();
        t.handle_queue_event(0);
        assert_eq!(qs[0].pop_used(&mem), Some((0, 8)));
        assert_eq!(line.count(), 1);
        // Unknown queue indices are ignored.
        t.handle_queue_event(9);
        testing::notify(&mut t, u32::MAX);
    }

    #[test]
    fn restore_refuses_a_status_the_device_does_not_match() {
        let mem = testing::guest_memory();
        let mut t = rng();
        testing::init(&mut t, &[16]);
        let saved = t.save();
        let irq = Arc::clone(t.interrupt());
        let inactive = Rng::new();
        assert!(matches!(
            MmioTransport::restore(inactive, mem, irq, &saved),
            Err(MmioError::RestoreMismatch { .. })
        ));
    }

    #[test]
    fn notify_before_driver_ok_is_ignored() {
        let mem = testing::guest_memory();
        let (mut t, _) = testing::transport(Rng::new(), &mem);
        assert!(testing::negotiate(&mut t, |f| f));
        let mut q = GuestQueue::new(0, 16);
        testing::setup_queue(&mut t, &q);
        q.add_chain(&mem, &[(testing::BUF_BASE, 8, true)]);
        testing::notify(&mut t, 0);
        assert_eq!(q.used_idx(&mem), 0);
    }
}
