//! The VMM's side of the virtio devices: where each sits (an MMIO window in the 32-bit gap and
//! an IOAPIC pin), how its interrupts reach the guest (an irqfd) and how the guest's queue
//! notifications reach it (ioeventfds served by the I/O thread, see [`crate::io`]), what the
//! kernel command line says about it, and its state in snapshots.
//!
//! ```text
//! slot n: MMIO 0xd000_0000 + n * 0x1000 (4 KiB), IRQ 5 + n     n < 19 (pins 5..23)
//! kernel: virtio_mmio.device=4K@0xd0000000:5 …                 (acpi=off guests)
//! ```

use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};

use cove_virtio::block::{Block, BlockConfig, BlockState};
use cove_virtio::console::{Console, ConsoleState};
use cove_virtio::net::{Net, NetConfig, NetState};
use cove_virtio::persist::MmioState;
use cove_virtio::rng::{Rng, RngState};
use cove_virtio::{Interrupt, MmioTransport};
use kvm_ioctls::{IoEventAddress, VmFd};
use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::layout::MMIO_GAP_START;
use crate::memory::GuestMemoryMmap;

/// First virtio-mmio window.
pub const VIRTIO_MMIO_BASE: u64 = MMIO_GAP_START;
/// Size of each window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// IRQ of the first device; the next ones follow (4 is COM1's).
pub const VIRTIO_FIRST_IRQ: u32 = 5;
/// The IOAPIC's last pin is 23.
pub const MAX_VIRTIO_DEVICES: usize = 19;
/// Offset of QueueNotify in a window.
const QUEUE_NOTIFY: u64 = 0x50;

/// Why a virtio device could not be added or restored.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// All IOAPIC pins are taken.
    #[error("no room for another virtio device (at most {MAX_VIRTIO_DEVICES})")]
    NoSlot,
    /// Two devices with one name (names key their snapshot state).
    #[error("a virtio device named {0} exists already")]
    DuplicateName(String),
    /// An event fd.
    #[error("create an event fd")]
    EventFd(#[source] std::io::Error),
    /// KVM_IRQFD / KVM_IOEVENTFD.
    #[error("{0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// The transport.
    #[error("virtio-mmio transport of {0}")]
    Transport(String, #[source] cove_virtio::mmio::MmioError),
    /// The block device.
    #[error("virtio-blk {0}")]
    Block(String, #[source] cove_virtio::block::BlockError),
    /// The network device.
    #[error("virtio-net {0}")]
    Net(String, #[source] cove_virtio::net::NetError),
    /// Restoring the network device.
    #[error("virtio-net {0} from the snapshot")]
    NetState(String, #[source] cove_virtio::net::NetPersistError),
    /// Restoring the block device.
    #[error("virtio-blk {0} from the snapshot")]
    BlockState(String, #[source] cove_virtio::block::BlockPersistError),
    /// Restoring a device.
    #[error("virtio device {0} from the snapshot")]
    State(String, #[source] cove_virtio::persist::PersistError),
    /// The snapshot's state does not parse as this device's.
    #[error("virtio device {0} in the snapshot: {1}")]
    Parse(String, String),
    /// Put on the bus.
    #[error("attach virtio device {0}")]
    Bus(String, #[source] cove_devices::BusError),
}

/// One device and its transport, shared by the MMIO bus (vCPU threads) and the I/O thread.
#[derive(Debug, Clone)]
pub enum Transport {
    /// virtio-blk.
    Block(Arc<Mutex<MmioTransport<Block>>>),
    /// virtio-rng.
    Rng(Arc<Mutex<MmioTransport<Rng>>>),
    /// virtio-net over a tap.
    Net(Arc<Mutex<MmioTransport<Net>>>),
    /// virtio-console, with the listener its host side is accepted on.
    Console(Arc<Mutex<MmioTransport<Console>>>, Arc<UnixListener>),
}

/// A device in its slot.
#[derive(Debug, Clone)]
pub struct Slot {
    /// Its name (the key of its state in snapshots).
    pub name: String,
    /// MMIO base.
    pub base: u64,
    /// Its IRQ (IOAPIC pin).
    pub irq: u32,
    /// The device.
    pub transport: Transport,
}

/// A device's state in a snapshot.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum SavedDevice {
    Block {
        mmio: MmioState,
        device: BlockState,
    },
    Rng {
        mmio: MmioState,
        device: RngState,
    },
    Net {
        mmio: MmioState,
        device: NetState,
    },
    Console {
        mmio: MmioState,
        device: ConsoleState,
    },
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while a device was locked leaves state that is still memory-safe to use; the
    // VMM carries on rather than poisoning every later access.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Slot {
    /// The kernel command-line entry that describes it.
    pub fn cmdline(&self) -> String {
        format!("virtio_mmio.device=4K@{:#x}:{}", self.base, self.irq)
    }

    /// Its queue events (to register as ioeventfds and poll).
    pub fn with_queue_events<R>(&self, f: impl FnOnce(&[EventFd]) -> R) -> R {
        match &self.transport {
            Transport::Block(t) => f(lock(t).queue_events()),
            Transport::Rng(t) => f(lock(t).queue_events()),
            Transport::Net(t) => f(lock(t).queue_events()),
            Transport::Console(t, _) => f(lock(t).queue_events()),
        }
    }

    /// A queue event fired.
    pub fn handle_queue_event(&self, index: usize) {
        match &self.transport {
            Transport::Block(t) => lock(t).handle_queue_event(index),
            Transport::Rng(t) => lock(t).handle_queue_event(index),
            Transport::Net(t) => lock(t).handle_queue_event(index),
            Transport::Console(t, _) => lock(t).handle_queue_event(index),
        }
    }

    /// Processes every queue (after a restore).
    pub fn kick_all(&self) {
        match &self.transport {
            Transport::Block(t) => lock(t).kick_all(),
            Transport::Rng(t) => lock(t).kick_all(),
            Transport::Net(t) => lock(t).kick_all(),
            Transport::Console(t, _) => lock(t).kick_all(),
        }
    }

    /// Its state, for a snapshot.
    pub fn save(&self) -> serde_json::Value {
        let saved = match &self.transport {
            Transport::Block(t) => {
                let t = lock(t);
                SavedDevice::Block {
                    mmio: t.save(),
                    device: t.device().save(),
                }
            }
            Transport::Rng(t) => {
                let t = lock(t);
                SavedDevice::Rng {
                    mmio: t.save(),
                    device: t.device().save(),
                }
            }
            Transport::Net(t) => {
                let t = lock(t);
                SavedDevice::Net {
                    mmio: t.save(),
                    device: t.device().save(),
                }
            }
            Transport::Console(t, _) => {
                let t = lock(t);
                SavedDevice::Console {
                    mmio: t.save(),
                    device: t.device().save(),
                }
            }
        };
        serde_json::to_value(saved).expect("device state serializes")
    }
}

/// What to add.
#[derive(Debug)]
pub enum DeviceSpec {
    /// A disk.
    Block(BlockConfig),
    /// An entropy source.
    Rng,
    /// A network interface over a tap (created, or attached if it exists).
    Net(NetConfig),
    /// The agent's console port; its host side is accepted on `listener`.
    Console(UnixListener),
}

/// Builds the device `spec` named `name` in slot `index`, restored from `saved` when given,
/// and wires its irqfd and ioeventfds into `vm`.
pub fn build(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    index: usize,
    name: &str,
    spec: DeviceSpec,
    saved: Option<serde_json::Value>,
) -> Result<Slot, VirtioError> {
    if index >= MAX_VIRTIO_DEVICES {
        return Err(VirtioError::NoSlot);
    }
    let base = VIRTIO_MMIO_BASE + index as u64 * VIRTIO_MMIO_SIZE;
    let irq = VIRTIO_FIRST_IRQ + u32::try_from(index).map_err(|_| VirtioError::NoSlot)?;
    let irqfd = EventFd::new(EFD_NONBLOCK).map_err(VirtioError::EventFd)?;
    vm.register_irqfd(&irqfd, irq)
        .map_err(|e| VirtioError::Kvm("KVM_IRQFD", e))?;
    let interrupt = Arc::new(Interrupt::from_eventfd(irqfd));
    let saved: Option<SavedDevice> = saved
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| VirtioError::Parse(name.to_string(), e.to_string()))?;
    let named = |e| VirtioError::Transport(name.to_string(), e);
    let mem = mem.clone();
    let wrong = || VirtioError::Parse(name.to_string(), "a different kind of device".into());
    let transport = match (spec, saved) {
        (DeviceSpec::Block(cfg), None) => {
            let dev = Block::new(cfg).map_err(|e| VirtioError::Block(name.to_string(), e))?;
            Transport::Block(Arc::new(Mutex::new(
                MmioTransport::new(dev, mem, interrupt).map_err(named)?,
            )))
        }
        (DeviceSpec::Block(cfg), Some(SavedDevice::Block { mmio, device })) => {
            let dev = Block::restore(cfg, &device, mem.clone(), interrupt.clone())
                .map_err(|e| VirtioError::BlockState(name.to_string(), e))?;
            Transport::Block(Arc::new(Mutex::new(
                MmioTransport::restore(dev, mem, interrupt, &mmio).map_err(named)?,
            )))
        }
        (DeviceSpec::Rng, None) => Transport::Rng(Arc::new(Mutex::new(
            MmioTransport::new(Rng::new(), mem, interrupt).map_err(named)?,
        ))),
        (DeviceSpec::Rng, Some(SavedDevice::Rng { mmio, device })) => {
            let dev = Rng::restore(&device, mem.clone(), interrupt.clone())
                .map_err(|e| VirtioError::State(name.to_string(), e))?;
            Transport::Rng(Arc::new(Mutex::new(
                MmioTransport::restore(dev, mem, interrupt, &mmio).map_err(named)?,
            )))
        }
        (DeviceSpec::Net(cfg), None) => {
            let dev = Net::new(&cfg).map_err(|e| VirtioError::Net(name.to_string(), e))?;
            Transport::Net(Arc::new(Mutex::new(
                MmioTransport::new(dev, mem, interrupt).map_err(named)?,
            )))
        }
        (DeviceSpec::Net(cfg), Some(SavedDevice::Net { mmio, device })) => {
            let dev = Net::restore(&cfg, &device, mem.clone(), interrupt.clone())
                .map_err(|e| VirtioError::NetState(name.to_string(), e))?;
            Transport::Net(Arc::new(Mutex::new(
                MmioTransport::restore(dev, mem, interrupt, &mmio).map_err(named)?,
            )))
        }
        (DeviceSpec::Console(l), None) => Transport::Console(
            Arc::new(Mutex::new(
                MmioTransport::new(Console::new(), mem, interrupt).map_err(named)?,
            )),
            Arc::new(l),
        ),
        (DeviceSpec::Console(l), Some(SavedDevice::Console { mmio, device })) => {
            let dev = Console::restore(&device, mem.clone(), interrupt.clone())
                .map_err(|e| VirtioError::State(name.to_string(), e))?;
            Transport::Console(
                Arc::new(Mutex::new(
                    MmioTransport::restore(dev, mem, interrupt, &mmio).map_err(named)?,
                )),
                Arc::new(l),
            )
        }
        _ => return Err(wrong()),
    };
    let slot = Slot {
        name: name.to_string(),
        base,
        irq,
        transport,
    };
    slot.with_queue_events(|evts| {
        for (i, evt) in evts.iter().enumerate() {
            vm.register_ioevent(
                evt,
                &IoEventAddress::Mmio(base + QUEUE_NOTIFY),
                u32::try_from(i).unwrap_or(u32::MAX),
            )
            .map_err(|e| VirtioError::Kvm("KVM_IOEVENTFD", e))?;
        }
        Ok::<(), VirtioError>(())
    })?;
    Ok(slot)
}
