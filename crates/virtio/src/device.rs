//! The contract between the MMIO transport and a virtio device, and the interrupt it raises.
//!
//! The transport owns the generic part of virtio (registers, feature negotiation, queue set-up);
//! a device owns what it does with its queues once the driver sets `DRIVER_OK`. At that moment
//! the transport hands the device the guest memory, the configured queues and the [`Interrupt`]
//! through [`VirtioDevice::activate`].

use std::fmt::Debug;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::GuestMemoryMmap;

/// InterruptStatus bit: the device used a buffer in at least one queue.
pub const INT_USED_RING: u32 = 1;
/// InterruptStatus bit: the device configuration changed.
pub const INT_CONFIG_CHANGE: u32 = 2;

/// The wire that tells the guest "look at InterruptStatus".
///
/// In the VMM this is an [`EventFd`] bound to the device's GSI with `KVM_IRQFD`; tests use a
/// counter.
pub trait IrqLine: Send + Sync + Debug {
    /// Raises the interrupt once.
    fn trigger(&self) -> io::Result<()>;
}

impl IrqLine for EventFd {
    fn trigger(&self) -> io::Result<()> {
        self.write(1)
    }
}

/// The interrupt of one virtio-mmio device: the InterruptStatus register and the line behind it.
///
/// Shared (`Arc`) by the transport, which reads and acknowledges the status on guest register
/// accesses, and by the device, which sets bits from whichever thread processes its queues.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    line: Box<dyn IrqLine>,
}

impl Interrupt {
    /// An interrupt that raises `line`.
    pub fn new(line: Box<dyn IrqLine>) -> Self {
        Self {
            status: AtomicU32::new(0),
            line,
        }
    }

    /// An interrupt on an irqfd (or any `EventFd` the VMM polls).
    pub fn from_eventfd(evt: EventFd) -> Self {
        Self::new(Box::new(evt))
    }

    /// Tells the guest that buffers were used.
    pub fn signal_used_queue(&self) {
        self.raise(INT_USED_RING);
    }

    /// Tells the guest that the configuration space changed.
    pub fn signal_config_change(&self) {
        self.raise(INT_CONFIG_CHANGE);
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.line.trigger() {
            // The guest still sees the bit on its next read; nothing else to do.
            tracing::warn!(error = %e, "virtio: failed to raise the interrupt line");
        }
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Sets the register outright (reset, restore). Only the two defined bits are kept.
    pub fn set_status(&self, value: u32) {
        self.status.store(
            value & (INT_USED_RING | INT_CONFIG_CHANGE),
            Ordering::SeqCst,
        );
    }
}

/// Errors from [`VirtioDevice::activate`].
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The transport passed a different number of queues than the device declares.
    #[error("expected {expected} queues, got {got}")]
    QueueCount {
        /// Queues the device declares.
        expected: usize,
        /// Queues passed.
        got: usize,
    },
    /// A queue marked ready has rings outside guest memory.
    #[error("queue {0} is ready but its rings are not valid")]
    InvalidQueue(usize),
    /// The device was activated twice without a reset.
    #[error("the device is already active")]
    AlreadyActive,
}

/// What a device gets on activation and keeps until reset.
#[derive(Debug)]
pub struct ActiveQueues {
    /// Guest memory, for the rings and the buffers.
    pub mem: GuestMemoryMmap,
    /// The queues, in the device's order.
    pub queues: Vec<Queue>,
    /// The device's interrupt.
    pub interrupt: Arc<Interrupt>,
}

impl ActiveQueues {
    /// Activates a device whose queues live in `slot`: refused if it is active already, else
    /// the arguments are checked as by [`ActiveQueues::new`].
    pub fn activate_once(
        slot: &mut Option<Self>,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
        expected: usize,
    ) -> Result<(), ActivateError> {
        if slot.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        *slot = Some(Self::new(mem, queues, interrupt, expected)?);
        Ok(())
    }

    /// Checks the activation arguments against the device's queue count and guest memory.
    pub fn new(
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
        expected: usize,
    ) -> Result<Self, ActivateError> {
        use virtio_queue::QueueT;
        if queues.len() != expected {
            return Err(ActivateError::QueueCount {
                expected,
                got: queues.len(),
            });
        }
        // A queue the driver left unready is allowed: popping from it yields nothing.
        if let Some(i) = queues.iter().position(|q| q.ready() && !q.is_valid(&mem)) {
            return Err(ActivateError::InvalidQueue(i));
        }
        Ok(Self {
            mem,
            queues,
            interrupt,
        })
    }
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send + Debug {
    /// The virtio device type (DeviceID register).
    fn device_type(&self) -> u32;

    /// The maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// The features the device offers (DeviceFeatures register, both halves).
    fn avail_features(&self) -> u64;

    /// The features the driver accepted (set once, at FEATURES_OK).
    fn acked_features(&self) -> u64;

    /// Records the features the driver accepted. The transport calls this only with a subset of
    /// [`Self::avail_features`].
    fn set_acked_features(&mut self, features: u64);

    /// Reads the device configuration space at `offset`; bytes past its end are left untouched.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the device configuration space; devices whose configuration is read-only log and
    /// ignore this.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Starts the device: from now on it processes its queues.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError>;

    /// Whether [`Self::activate`] succeeded and no reset happened since.
    fn is_activated(&self) -> bool;

    /// The driver notified queue `index` (QueueNotify or its ioeventfd).
    fn process_queue(&mut self, index: usize);

    /// Returns the device to its state before activation (Status = 0). Device-side resources
    /// that outlive a driver (the block file, the console's host stream) are kept.
    fn reset(&mut self);
}

/// Copies the part of `config` at `offset` into `data`, for [`VirtioDevice::read_config`].
///
/// An access that starts past the end, or overflows, leaves `data` untouched.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    let Some(src) = config.get(start..) else {
        return;
    };
    let n = src.len().min(data.len());
    data[..n].copy_from_slice(&src[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[derive(Debug, Default)]
    struct Count(AtomicUsize);
    impl IrqLine for Arc<Count> {
        fn trigger(&self) -> io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn interrupt_sets_and_acks_bits() {
        let count = Arc::new(Count::default());
        let irq = Interrupt::new(Box::new(count.clone()));
        irq.signal_used_queue();
        irq.signal_config_change();
        assert_eq!(irq.status(), INT_USED_RING | INT_CONFIG_CHANGE);
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        irq.ack(INT_USED_RING);
        assert_eq!(irq.status(), INT_CONFIG_CHANGE);
        irq.set_status(0xff);
        assert_eq!(irq.status(), INT_USED_RING | INT_CONFIG_CHANGE);
    }

    #[test]
    fn eventfd_interrupt_signals() {
        let evt = EventFd::new(libc_nonblock()).unwrap();
        let irq = Interrupt::from_eventfd(evt.try_clone().unwrap());
        irq.signal_used_queue();
        assert_eq!(evt.read().unwrap(), 1);
    }

    fn libc_nonblock() -> i32 {
        vmm_sys_util::eventfd::EFD_NONBLOCK
    }

    #[test]
    fn config_reads_are_bounded() {
        let cfg = [1u8, 2, 3, 4];
        let mut out = [0xffu8; 4];
        read_config_bytes(&cfg, 2, &mut out);
        assert_eq!(out, [3, 4, 0xff, 0xff]);
        let mut out = [0xffu8; 2];
        read_config_bytes(&cfg, u64::MAX, &mut out);
        assert_eq!(out, [0xff, 0xff]);
    }
}
