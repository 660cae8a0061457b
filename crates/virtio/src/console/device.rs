//! The console device: configuration, features, queue dispatch.

use std::collections::VecDeque;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use virtio_queue::Queue;

use crate::device::{ActivateError, ActiveQueues, Interrupt, VirtioDevice, read_config_bytes};
use crate::queue::{self, ParsedChain};
use crate::{GuestMemoryMmap, device_type, features};

/// Feature bit: the device has several ports and a control queue pair.
pub const VIRTIO_CONSOLE_F_MULTIPORT: u32 = 1;
/// Size of every queue.
pub const QUEUE_SIZE: u16 = 256;
/// The port Cove's agent talks on.
pub const AGENT_PORT: u32 = 1;
/// Its name, as the guest reads it from `/sys/class/virtio-ports/vportNp1/name`.
pub const AGENT_PORT_NAME: &str = "cove.agent";
/// Host bytes read but not yet delivered to the guest, at most. Past this the stream is left
/// unread, so the host's writes block: backpressure instead of loss.
pub const HOST_INPUT_CAP: usize = 64 * 1024;
/// Guest bytes taken from the tx queue but not yet written to the host, at most (plus one
/// chain). Past this the tx queue is left alone, so the guest's writes block.
pub const HOST_OUTPUT_CAP: usize = 64 * 1024;
/// Control messages waiting for `c_ivq` buffers, at most.
pub(super) const HOST_CONTROL_CAP: usize = 64;
/// Largest guest tx chain accepted (Linux writes at most 32 KiB at a time).
pub(super) const MAX_TX_CHAIN: u64 = 1 << 20;

const PORT0_RX: usize = 0;
const PORT0_TX: usize = 1;
pub(super) const CTRL_RX: usize = 2;
pub(super) const CTRL_TX: usize = 3;
pub(super) const PORT1_RX: usize = 4;
pub(super) const PORT1_TX: usize = 5;
const NUM_QUEUES: usize = 6;
/// max_nr_ports in the configuration space.
const MAX_NR_PORTS: u32 = 2;

/// virtio-console with one named port.
#[derive(Debug)]
pub struct Console {
    pub(super) acked_features: u64,
    pub(super) active: Option<ActiveQueues>,
    /// Control messages waiting for `c_ivq` buffers.
    pub(super) ctrl_out: VecDeque<Vec<u8>>,
    /// The driver sent DEVICE_READY.
    pub(super) device_ready: bool,
    /// We sent DEVICE_ADD for the agent port.
    pub(super) port_added: bool,
    /// The driver sent PORT_READY for the agent port.
    pub(super) port_ready: bool,
    /// A guest process has the port open.
    pub(super) guest_open: bool,
    /// What we report as the host side's state (PORT_OPEN to the driver).
    pub(super) host_open: bool,
    /// The host end of the agent port, when attached.
    pub(super) stream: Option<UnixStream>,
    /// Host → guest bytes waiting for rx buffers.
    pub(super) to_guest: VecDeque<u8>,
    /// Guest → host bytes waiting for the stream to take them.
    pub(super) to_host: VecDeque<u8>,
}

impl Default for Console {
    fn default() -> Self {
        Self::new()
    }
}

impl Console {
    /// A new device with no host stream attached.
    pub fn new() -> Self {
        Self {
            acked_features: 0,
            active: None,
            ctrl_out: VecDeque::new(),
            device_ready: false,
            port_added: false,
            port_ready: false,
            guest_open: false,
            host_open: true,
            stream: None,
            to_guest: VecDeque::new(),
            to_host: VecDeque::new(),
        }
    }

    /// Whether the driver negotiated multiport (the agent port exists only then).
    pub fn multiport(&self) -> bool {
        self.acked_features & (1 << VIRTIO_CONSOLE_F_MULTIPORT) != 0
    }

    /// Whether a guest process has the agent port open.
    pub fn guest_open(&self) -> bool {
        self.guest_open
    }

    /// Whether the guest named and set up the agent port.
    pub fn port_ready(&self) -> bool {
        self.port_ready
    }

    /// Port 0 carries nothing: drop what the guest writes there so it never stalls.
    fn discard_port0_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = active.mem.clone();
        let q = &mut active.queues[PORT0_TX];
        let mut used = false;
        while let Some(chain) = queue::pop(q, &mem) {
            let head = chain.head_index();
            if let Err(e) = ParsedChain::parse(chain, MAX_TX_CHAIN) {
                tracing::warn!(error = %e, "virtio-console: bad port 0 chain");
            }
            tracing::debug!("virtio-console: port 0 output discarded");
            used |= queue::add_used(q, &mem, head, 0);
        }
        if used {
            active.interrupt.signal_used_queue();
        }
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        device_type::CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn avail_features(&self) -> u64 {
        (1 << features::VIRTIO_F_VERSION_1) | (1 << VIRTIO_CONSOLE_F_MULTIPORT)
    }

    fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // cols, rows (unused without VIRTIO_CONSOLE_F_SIZE), max_nr_ports, emerg_wr.
        let mut c = [0u8; 12];
        c[4..8].copy_from_slice(&MAX_NR_PORTS.to_le_bytes());
        read_config_bytes(&c, offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        tracing::warn!(
            offset,
            "virtio-console: configuration write ignored (no EMERG_WRITE)"
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        ActiveQueues::activate_once(&mut self.active, mem, queues, interrupt, NUM_QUEUES)
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn process_queue(&mut self, index: usize) {
        if self.active.is_none() {
            return;
        }
        match index {
            PORT0_RX => {}
            PORT0_TX => self.discard_port0_tx(),
            CTRL_RX => self.flush_control(),
            CTRL_TX => {
                self.process_control_tx();
                self.flush_control();
                // PORT_OPEN from the guest may unblock pending host bytes.
                self.pump_to_guest();
            }
            PORT1_RX => {
                self.pump_to_guest();
            }
            PORT1_TX => {
                self.pump_to_host();
            }
            _ => tracing::warn!(index, "virtio-console: notify for an unknown queue"),
        }
    }

    fn reset(&mut self) {
        // The host stream and the bytes in flight belong to the host side and survive a driver
        // reset; the guest-side handshake starts over.
        self.active = None;
        self.acked_features = 0;
        self.ctrl_out.clear();
        self.device_ready = false;
        self.port_added = false;
        self.port_ready = false;
        self.guest_open = false;
    }
}
