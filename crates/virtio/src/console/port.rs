//! The host side of the agent port: a non-blocking `UnixStream` the VMM attaches.
//!
//! Bytes flow with backpressure both ways and are never dropped or reordered:
//! - host → guest: [`Console::process_host_input`] reads the stream while fewer than
//!   [`HOST_INPUT_CAP`] bytes wait, and delivers what waits into the guest's rx buffers once the
//!   guest has the port open. What does not fit stays queued (and the rest in the socket) until
//!   the guest adds buffers.
//! - guest → host: tx chains are taken while fewer than [`HOST_OUTPUT_CAP`] bytes wait for the
//!   stream; the rest stay in the guest's ring, so the guest blocks when the host stops reading.
//!
//! Event-loop contract: poll the stream for input while [`Console::wants_host_input`] and for
//! output while [`Console::wants_host_output`]; call the matching `process_host_*` method when it
//! is ready. Queue notifications (the device's ioeventfds) drive the guest side.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;

use super::control::VIRTIO_CONSOLE_PORT_OPEN;
use super::device::AGENT_PORT;
use super::device::{Console, HOST_INPUT_CAP, HOST_OUTPUT_CAP, MAX_TX_CHAIN, PORT1_RX, PORT1_TX};
use crate::queue::{self, ParsedChain};

/// State of the host stream after a `process_host_*` call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostStatus {
    /// The stream is attached and usable.
    Open,
    /// The host end hung up or failed; the stream was dropped (queued bytes are kept for the
    /// next [`Console::attach`]).
    Closed,
    /// No stream is attached.
    Detached,
}

impl Console {
    /// Attaches the host end of the agent port (made non-blocking) and moves whatever can move.
    pub fn attach(&mut self, stream: UnixStream) -> io::Result<()> {
        stream.set_nonblocking(true)?;
        self.stream = Some(stream);
        self.pump_to_host();
        self.pump_to_guest();
        Ok(())
    }

    /// Detaches the host stream. The guest keeps seeing the port as connected; its writes wait
    /// in the ring until a stream is attached again.
    pub fn detach(&mut self) -> Option<UnixStream> {
        self.stream.take()
    }

    /// Reports the host side as connected or not (PORT_OPEN to the driver). A guest reading a
    /// port whose host side is closed gets end-of-file, so Cove keeps it open by default.
    pub fn set_host_open(&mut self, open: bool) {
        if self.host_open == open {
            return;
        }
        self.host_open = open;
        if self.port_ready {
            self.send_control(AGENT_PORT, VIRTIO_CONSOLE_PORT_OPEN, u16::from(open), &[]);
            self.flush_control();
        }
    }

    /// The attached stream's descriptor, for the event loop to poll.
    pub fn stream_fd(&self) -> Option<std::os::fd::RawFd> {
        self.stream.as_ref().map(std::os::fd::AsRawFd::as_raw_fd)
    }

    /// Whether the event loop should poll the stream for input.
    pub fn wants_host_input(&self) -> bool {
        self.stream.is_some() && self.to_guest.len() < HOST_INPUT_CAP
    }

    /// Whether the event loop should poll the stream for output.
    pub fn wants_host_output(&self) -> bool {
        self.stream.is_some() && !self.to_host.is_empty()
    }

    /// Host → guest bytes queued in the device.
    pub fn pending_to_guest(&self) -> usize {
        self.to_guest.len()
    }

    /// Guest → host bytes queued in the device.
    pub fn pending_to_host(&self) -> usize {
        self.to_host.len()
    }

    /// The stream is readable: read what fits and deliver it.
    pub fn process_host_input(&mut self) -> HostStatus {
        self.pump_to_guest()
    }

    /// The stream is writable: write what waits and take more from the guest.
    pub fn process_host_output(&mut self) -> HostStatus {
        self.pump_to_host()
    }

    fn drop_stream(&mut self, why: &dyn std::fmt::Display) -> HostStatus {
        tracing::info!(%why, "virtio-console: host stream closed");
        self.stream = None;
        HostStatus::Closed
    }

    /// Reads the stream and fills the guest's buffers; reads first so that each buffer is filled
    /// as far as the stream allows, then again if delivering made room.
    pub(super) fn pump_to_guest(&mut self) -> HostStatus {
        let st = self.read_host();
        let before = self.to_guest.len();
        self.deliver_to_guest();
        if st == HostStatus::Open && self.to_guest.len() < before {
            let st = self.read_host();
            self.deliver_to_guest();
            return st;
        }
        st
    }

    /// Reads the stream while the input queue has room.
    pub(super) fn read_host(&mut self) -> HostStatus {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let Some(stream) = self.stream.as_mut() else {
                return HostStatus::Detached;
            };
            let room = HOST_INPUT_CAP.saturating_sub(self.to_guest.len());
            if room == 0 {
                return HostStatus::Open;
            }
            let want = room.min(buf.len());
            match stream.read(&mut buf[..want]) {
                Ok(0) => return self.drop_stream(&"end of file"),
                Ok(n) => self.to_guest.extend(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return HostStatus::Open,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.drop_stream(&e),
            }
        }
    }

    /// Fills the guest's rx buffers from the input queue (only while the guest has the port
    /// open: Linux discards data that arrives on a closed port).
    pub(super) fn deliver_to_guest(&mut self) {
        if !self.guest_open || self.to_guest.is_empty() {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = active.mem.clone();
        let q = &mut active.queues[PORT1_RX];
        let mut used = false;
        while !self.to_guest.is_empty() {
            let Some(chain) = queue::pop(q, &mem) else {
                break;
            };
            let head = chain.head_index();
            let len = match ParsedChain::parse(chain, u64::from(u32::MAX)) {
                Ok(p) => {
                    let n = usize::try_from(p.writable_len())
                        .unwrap_or(usize::MAX)
                        .min(self.to_guest.len());
                    let bytes = &self.to_guest.make_contiguous()[..n];
                    match queue::write_segments(&mem, &p.writable, 0, bytes) {
                        Ok(()) => {
                            self.to_guest.drain(..n);
                            // n <= writable_len, which fits in u32 (checked by the cap above).
                            u32::try_from(n).unwrap_or(0)
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "virtio-console: rx buffer write");
                            0
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "virtio-console: bad rx chain");
                    0
                }
            };
            used |= queue::add_used(q, &mem, head, len);
        }
        if used {
            active.interrupt.signal_used_queue();
        }
    }

    /// Writes queued guest bytes to the stream and takes more tx chains while it keeps up.
    pub(super) fn pump_to_host(&mut self) -> HostStatus {
        loop {
            let st = self.flush_to_host();
            if st != HostStatus::Open || !self.to_host.is_empty() {
                return st;
            }
            if !self.take_guest_tx() {
                return HostStatus::Open;
            }
        }
    }

    fn flush_to_host(&mut self) -> HostStatus {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                return HostStatus::Detached;
            };
            let (front, _) = self.to_host.as_slices();
            if front.is_empty() {
                return HostStatus::Open;
            }
            match stream.write(front) {
                Ok(0) => return self.drop_stream(&"write returned 0"),
                Ok(n) => {
                    self.to_host.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return HostStatus::Open,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.drop_stream(&e),
            }
        }
    }

    /// Moves tx chains into the output queue while it has room; returns whether any moved.
    fn take_guest_tx(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let mem = active.mem.clone();
        let q = &mut active.queues[PORT1_TX];
        let mut used = false;
        while self.to_host.len() < HOST_OUTPUT_CAP {
            let Some(chain) = queue::pop(q, &mem) else {
                break;
            };
            let head = chain.head_index();
            match ParsedChain::parse(chain, MAX_TX_CHAIN) {
                Ok(p) => {
                    let len = usize::try_from(p.readable_len()).unwrap_or(0);
                    let mut buf = vec![0u8; len];
                    match queue::read_segments(&mem, &p.readable, 0, &mut buf) {
                        Ok(()) => self.to_host.extend(buf),
                        Err(e) => tracing::warn!(error = %e, "virtio-console: tx read"),
                    }
                }
                Err(e) => tracing::warn!(error = %e, "virtio-console: bad tx chain dropped"),
            }
            used |= queue::add_used(q, &mem, head, 0);
        }
        if used {
            active.interrupt.signal_used_queue();
        }
        used
    }
}
