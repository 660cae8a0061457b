//! Async frame reading and writing over tokio streams.

use crate::frame::{self, Decoder, Frame, FrameError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why reading a frame failed.
#[derive(Debug)]
pub enum ReadError {
    /// The stream failed.
    Io(std::io::Error),
    /// One frame was malformed; it was skipped and the stream can still be read.
    Frame(FrameError),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "reading frames: {e}"),
            Self::Frame(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ReadError {}

/// Reads frames from a byte stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    decoder: Decoder,
    buf: Box<[u8]>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a stream.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            decoder: Decoder::new(),
            buf: vec![0; 256 * 1024].into_boxed_slice(),
        }
    }

    /// The next frame; `Ok(None)` at a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            if let Some(r) = self.decoder.decode_next() {
                return r.map(Some).map_err(ReadError::Frame);
            }
            let n = self
                .inner
                .read(&mut self.buf)
                .await
                .map_err(ReadError::Io)?;
            if n == 0 {
                if self.decoder.pending() > 0 {
                    return Err(ReadError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "stream ended inside a frame",
                    )));
                }
                return Ok(None);
            }
            self.decoder.extend(&self.buf[..n]);
        }
    }

    /// Gives the stream back.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Writes one frame and flushes.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> std::io::Result<()> {
    let mut out = Vec::new();
    frame::encode(frame, &mut out);
    w.write_all(&out).await?;
    w.flush().await
}
