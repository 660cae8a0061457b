//! An in-memory [`NetBackend`] for tests (feature `test-utils`): packets injected by the test
//! are what the "tap" has to read; packets the device writes are recorded; writes can be made to
//! push back (`WouldBlock`) or fail.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::tap::NetBackend;

#[derive(Debug, Default)]
struct Link {
    to_device: VecDeque<Vec<u8>>,
    written: Vec<Vec<u8>>,
    write_error: Option<io::ErrorKind>,
    read_error: Option<io::ErrorKind>,
}

/// A tap stand-in. Clones share the same link, so a test keeps one handle and gives the device
/// another.
#[derive(Clone, Debug, Default)]
pub struct FakeBackend(Arc<Mutex<Link>>);

impl FakeBackend {
    /// An empty link that accepts every write.
    pub fn new() -> Self {
        Self::default()
    }

    fn link(&self) -> MutexGuard<'_, Link> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a packet (virtio-net header + frame) for the device to read.
    pub fn inject(&self, packet: Vec<u8>) {
        self.link().to_device.push_back(packet);
    }

    /// Packets queued for the device and not read yet.
    pub fn unread(&self) -> usize {
        self.link().to_device.len()
    }

    /// Takes the packets the device wrote so far.
    pub fn take_written(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.link().written)
    }

    /// Makes every write fail with `kind` (`WouldBlock`: the tap is full), or succeed again.
    pub fn set_write_error(&self, kind: Option<io::ErrorKind>) {
        self.link().write_error = kind;
    }

    /// Makes every read fail with `kind`, or work again.
    pub fn set_read_error(&self, kind: Option<io::ErrorKind>) {
        self.link().read_error = kind;
    }
}

impl NetBackend for FakeBackend {
    fn read_packet(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut link = self.link();
        if let Some(kind) = link.read_error {
            return Err(kind.into());
        }
        let Some(packet) = link.to_device.pop_front() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        // Tap semantics: a packet longer than the buffer is truncated.
        let n = packet.len().min(buf.len());
        buf[..n].copy_from_slice(&packet[..n]);
        Ok(n)
    }

    fn write_packet(&mut self, packet: &[u8]) -> io::Result<usize> {
        let mut link = self.link();
        if let Some(kind) = link.write_error {
            return Err(kind.into());
        }
        link.written.push(packet.to_vec());
        Ok(packet.len())
    }
}
