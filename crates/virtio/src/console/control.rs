//! The multiport control protocol (virtio 1.x, 5.3.6.2): 8-byte messages on the control queues.
//!
//! The exchange for Cove's one port: the driver sends DEVICE_READY; the device answers
//! DEVICE_ADD for port 1; the driver sends PORT_READY(1); the device answers PORT_NAME(1,
//! "cove.agent") and PORT_OPEN(1, 1) (the host side is connected); the driver sends
//! PORT_OPEN(1, 1) when a guest process opens `/dev/vportNp1` and PORT_OPEN(1, 0) on close.

use super::device::{AGENT_PORT, AGENT_PORT_NAME, Console, HOST_CONTROL_CAP};
use crate::queue::{self, ParsedChain};

/// Driver → device: the driver is ready (value 1) or failed (0).
pub const VIRTIO_CONSOLE_DEVICE_READY: u16 = 0;
/// Device → driver: a port was added (id = port number).
pub const VIRTIO_CONSOLE_DEVICE_ADD: u16 = 1;
/// Device → driver: a port was removed.
pub const VIRTIO_CONSOLE_DEVICE_REMOVE: u16 = 2;
/// Driver → device: the port is set up (value 1) or failed (0).
pub const VIRTIO_CONSOLE_PORT_READY: u16 = 3;
/// Device → driver: the port is a console.
pub const VIRTIO_CONSOLE_CONSOLE_PORT: u16 = 4;
/// Device → driver: console size changed.
pub const VIRTIO_CONSOLE_RESIZE: u16 = 5;
/// Both ways: the sender's side of the port opened (value 1) or closed (0).
pub const VIRTIO_CONSOLE_PORT_OPEN: u16 = 6;
/// Device → driver: the port's name follows the header.
pub const VIRTIO_CONSOLE_PORT_NAME: u16 = 7;

/// Length of the control header (id: le32, event: le16, value: le16).
pub const CONTROL_HEADER_LEN: usize = 8;

/// A control message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlMessage {
    /// Port number.
    pub id: u32,
    /// Event (`VIRTIO_CONSOLE_*`).
    pub event: u16,
    /// Event argument.
    pub value: u16,
}

impl ControlMessage {
    /// Encodes the header followed by `extra` (a port name).
    pub fn encode(&self, extra: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(CONTROL_HEADER_LEN + extra.len());
        v.extend_from_slice(&self.id.to_le_bytes());
        v.extend_from_slice(&self.event.to_le_bytes());
        v.extend_from_slice(&self.value.to_le_bytes());
        v.extend_from_slice(extra);
        v
    }

    /// Decodes a header.
    pub fn decode(b: [u8; CONTROL_HEADER_LEN]) -> Self {
        let [i0, i1, i2, i3, e0, e1, v0, v1] = b;
        Self {
            id: u32::from_le_bytes([i0, i1, i2, i3]),
            event: u16::from_le_bytes([e0, e1]),
            value: u16::from_le_bytes([v0, v1]),
        }
    }
}

impl Console {
    /// Queues a message for the driver; it goes out when `c_ivq` has buffers.
    pub(super) fn send_control(&mut self, id: u32, event: u16, value: u16, extra: &[u8]) {
        if self.ctrl_out.len() >= HOST_CONTROL_CAP {
            // Only a driver that never gives c_ivq buffers gets here; it is stuck anyway.
            tracing::warn!(
                event,
                "virtio-console: control backlog full, message dropped"
            );
            return;
        }
        self.ctrl_out
            .push_back(ControlMessage { id, event, value }.encode(extra));
    }

    /// Handles every message the driver put on `c_ovq`.
    pub(super) fn process_control_tx(&mut self) {
        let Some(mut active) = self.active.take() else {
            return;
        };
        let mem = active.mem.clone();
        let mut used = false;
        while let Some(chain) = queue::pop(&mut active.queues[super::device::CTRL_TX], &mem) {
            let head = chain.head_index();
            match ParsedChain::parse(chain, 4096) {
                Ok(parsed) => {
                    let mut hdr = [0u8; CONTROL_HEADER_LEN];
                    match queue::read_segments(&mem, &parsed.readable, 0, &mut hdr) {
                        Ok(()) => self.handle_control(ControlMessage::decode(hdr)),
                        Err(e) => {
                            tracing::warn!(error = %e, "virtio-console: short control message")
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "virtio-console: bad control chain"),
            }
            used |= queue::add_used(&mut active.queues[super::device::CTRL_TX], &mem, head, 0);
        }
        if used {
            active.interrupt.signal_used_queue();
        }
        self.active = Some(active);
    }

    fn handle_control(&mut self, msg: ControlMessage) {
        tracing::debug!(?msg, "virtio-console: control message");
        match (msg.event, msg.id) {
            (VIRTIO_CONSOLE_DEVICE_READY, _) => {
                if msg.value == 0 {
                    tracing::warn!("virtio-console: the driver failed to initialise");
                    return;
                }
                self.device_ready = true;
                if !self.port_added {
                    self.port_added = true;
                    self.send_control(AGENT_PORT, VIRTIO_CONSOLE_DEVICE_ADD, 0, &[]);
                }
            }
            (VIRTIO_CONSOLE_PORT_READY, AGENT_PORT) => {
                if msg.value == 0 {
                    tracing::warn!("virtio-console: the driver failed to add the agent port");
                    return;
                }
                if !self.port_ready {
                    self.port_ready = true;
                    self.send_control(
                        AGENT_PORT,
                        VIRTIO_CONSOLE_PORT_NAME,
                        1,
                        AGENT_PORT_NAME.as_bytes(),
                    );
                    self.send_control(
                        AGENT_PORT,
                        VIRTIO_CONSOLE_PORT_OPEN,
                        u16::from(self.host_open),
                        &[],
                    );
                }
            }
            (VIRTIO_CONSOLE_PORT_OPEN, AGENT_PORT) => {
                self.guest_open = msg.value != 0;
            }
            _ => tracing::warn!(?msg, "virtio-console: unexpected control message ignored"),
        }
    }

    /// Moves queued control messages into the driver's `c_ivq` buffers.
    pub(super) fn flush_control(&mut self) {
        let Some(mut active) = self.active.take() else {
            return;
        };
        let mem = active.mem.clone();
        let q = &mut active.queues[super::device::CTRL_RX];
        let mut used = false;
        while let Some(msg) = self.ctrl_out.front() {
            let Some(chain) = queue::pop(q, &mem) else {
                break;
            };
            let head = chain.head_index();
            let len = match ParsedChain::parse(chain, u64::from(u32::MAX)) {
                Ok(p) if p.writable_len() >= msg.len() as u64 => {
                    match queue::write_segments(&mem, &p.writable, 0, msg) {
                        Ok(()) => {
                            let n = u32::try_from(msg.len()).unwrap_or(0);
                            self.ctrl_out.pop_front();
                            n
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "virtio-console: control buffer write");
                            0
                        }
                    }
                }
                Ok(_) => {
                    tracing::warn!("virtio-console: control buffer too small; message kept");
                    0
                }
                Err(e) => {
                    tracing::warn!(error = %e, "virtio-console: bad control rx chain");
                    0
                }
            };
            used |= queue::add_used(q, &mem, head, len);
        }
        if used {
            active.interrupt.signal_used_queue();
        }
        self.active = Some(active);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_encode_little_endian() {
        let m = ControlMessage {
            id: 1,
            event: VIRTIO_CONSOLE_PORT_NAME,
            value: 1,
        };
        let b = m.encode(b"cove.agent");
        assert_eq!(&b[..8], &[1, 0, 0, 0, 7, 0, 1, 0]);
        assert_eq!(&b[8..], b"cove.agent");
        let hdr: [u8; 8] = b[..8].try_into().unwrap();
        assert_eq!(ControlMessage::decode(hdr), m);
    }

    #[test]
    fn control_backlog_is_bounded() {
        let mut c = Console::new();
        for _ in 0..HOST_CONTROL_CAP + 10 {
            c.send_control(1, VIRTIO_CONSOLE_PORT_OPEN, 1, &[]);
        }
        assert_eq!(c.ctrl_out.len(), HOST_CONTROL_CAP);
    }
}
