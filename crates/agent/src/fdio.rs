//! Async reads and writes on a raw character device or PTY master.
//!
//! tokio has no type for an arbitrary non-blocking fd (a virtio-console port, a PTY master), so
//! this wraps `AsyncFd` with plain `read(2)`/`write(2)`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A non-blocking fd registered with the runtime, shared by a reader and a writer half.
#[derive(Debug, Clone)]
pub struct FdIo {
    fd: Arc<AsyncFd<OwnedFd>>,
    /// Treat EIO on read as end of file (a PTY master whose slaves are all closed).
    eio_is_eof: bool,
}

impl FdIo {
    /// Makes `fd` non-blocking and registers it.
    pub fn new(fd: OwnedFd, eio_is_eof: bool) -> io::Result<Self> {
        let flags =
            nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL).map_err(io::Error::from)?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
        // SAFETY: `fd` is an OwnedFd moved into the AsyncFd: it stays open and the same file
        // description until the AsyncFd drops it.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(Self {
            fd: Arc::new(fd),
            eio_is_eof,
        })
    }

    /// The raw fd, for ioctls.
    pub fn raw(&self) -> i32 {
        self.fd.get_ref().as_raw_fd()
    }
}

impl AsyncRead for FdIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            // SAFETY: reads at most `unfilled.len()` bytes into the valid, initialised slice.
            let n = unsafe {
                libc::read(
                    guard.get_inner().as_raw_fd(),
                    unfilled.as_mut_ptr().cast(),
                    unfilled.len(),
                )
            };
            if n >= 0 {
                buf.advance(n.unsigned_abs());
                return Poll::Ready(Ok(()));
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => guard.clear_ready(),
                Some(libc::EINTR) => {}
                Some(libc::EIO) if self.eio_is_eof => return Poll::Ready(Ok(())),
                _ => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for FdIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            // SAFETY: writes at most `data.len()` bytes from the valid slice.
            let n = unsafe {
                libc::write(
                    guard.get_inner().as_raw_fd(),
                    data.as_ptr().cast(),
                    data.len(),
                )
            };
            if n >= 0 {
                return Poll::Ready(Ok(n.unsigned_abs()));
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => guard.clear_ready(),
                Some(libc::EINTR) => {}
                _ => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
