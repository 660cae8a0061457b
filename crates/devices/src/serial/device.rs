//! The UART as a [`BusDevice`].

use std::io::Write;

use vm_superio::Serial;
use vm_superio::serial::NoEvents;

use super::SerialPersist;
use crate::bus::BusDevice;
use crate::trigger::EventFdTrigger;

/// Errors from the serial device.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// Queue input for the guest.
    #[error("queue serial input")]
    Enqueue(#[source] vm_superio::serial::Error<std::io::Error>),
    /// Rebuild it from a snapshot (more pending input than its FIFO holds).
    #[error("restore the serial port")]
    Restore(#[source] vm_superio::serial::Error<std::io::Error>),
}

/// Where the guest's serial output goes.
pub type SerialOut = Box<dyn Write + Send>;

/// A 16550 UART on the bus.
pub struct SerialDevice {
    uart: Serial<EventFdTrigger, NoEvents, SerialOut>,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice").finish_non_exhaustive()
    }
}

impl SerialDevice {
    /// A UART that raises `interrupt` and writes what the guest transmits to `out`.
    pub fn new(interrupt: EventFdTrigger, out: SerialOut) -> Self {
        Self {
            uart: Serial::new(interrupt, out),
        }
    }

    /// A UART continuing from a snapshot's `state`.
    pub fn restore(
        state: &SerialPersist,
        interrupt: EventFdTrigger,
        out: SerialOut,
    ) -> Result<Self, SerialError> {
        Ok(Self {
            uart: Serial::from_state(&state.into(), interrupt, NoEvents, out)
                .map_err(SerialError::Restore)?,
        })
    }

    /// Its state, for a snapshot.
    pub fn state(&self) -> SerialPersist {
        self.uart.state().into()
    }

    /// Queues bytes for the guest to read; returns how many fit in the receive FIFO.
    pub fn enqueue_input(&mut self, input: &[u8]) -> Result<usize, SerialError> {
        self.uart
            .enqueue_raw_bytes(input)
            .map_err(SerialError::Enqueue)
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // The UART's registers are one byte wide; wider accesses are not something a driver
        // does, so they read as all-ones (the bus pre-filled `data`).
        if let ([byte], Ok(offset)) = (data, u8::try_from(offset)) {
            *byte = self.uart.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let ([byte], Ok(offset)) = (data, u8::try_from(offset))
            && let Err(e) = self.uart.write(offset, *byte)
        {
            // The output sink failed (a closed pipe, a full disk): the guest cannot act on it,
            // so note it and carry on rather than stop the vCPU.
            tracing::warn!(error = %e, "serial output failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use vmm_sys_util::eventfd::EventFd;

    use super::*;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmitted_bytes_reach_the_writer() {
        let out = Shared::default();
        let irq = EventFdTrigger::new(EventFd::new(libc_nonblock()).unwrap());
        let mut dev = SerialDevice::new(irq, Box::new(out.clone()));
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        // A two-byte access is ignored, not misread as the data register.
        dev.write(0, b"xy");
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi\n");
    }

    #[test]
    fn input_is_readable_by_the_guest() {
        let irq = EventFdTrigger::new(EventFd::new(libc_nonblock()).unwrap());
        let mut dev = SerialDevice::new(irq, Box::new(std::io::sink()));
        assert_eq!(dev.enqueue_input(b"a").unwrap(), 1);
        let mut b = [0u8];
        dev.read(0, &mut b);
        assert_eq!(b, [b'a']);
    }

    fn libc_nonblock() -> i32 {
        vmm_sys_util::eventfd::EFD_NONBLOCK
    }
}
