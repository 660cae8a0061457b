//! Framing: many sessions multiplexed over one byte stream.
//!
//! Wire layout of one frame (all integers little-endian):
//!
//! ```text
//! len: u32 | session: u32 | kind: u8 | payload: len - 5 bytes
//! ```
//!
//! `len` counts everything after itself. Payloads by kind:
//! - `Msg`: one JSON message (`Request` host→agent, `Reply` agent→host);
//! - `Data`: `stream: u8` then raw bytes (never base64);
//! - `Eof`: `stream: u8`;
//! - `Window`: `bytes: u32`, credit granted back to the sender of `Data`.
//!
//! The decoder never trusts `len`: a frame over [`MAX_FRAME_LEN`] or under the header size is
//! reported and its bytes are skipped, so the stream stays in step and other sessions keep being
//! served.

use std::fmt;

/// Bytes counted by `len` before the payload: session (4) and kind (1).
pub const HEADER_AFTER_LEN: usize = 5;
/// Bytes of the whole header, `len` included.
pub const HEADER_LEN: usize = 4 + HEADER_AFTER_LEN;
/// Largest payload of a frame.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Largest value of `len` accepted.
pub const MAX_FRAME_LEN: usize = HEADER_AFTER_LEN + MAX_PAYLOAD;
/// Largest data chunk a sender puts in one `Data` frame.
pub const MAX_DATA_CHUNK: usize = 64 * 1024;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// A JSON message.
    Msg = 1,
    /// Raw bytes of one stream.
    Data = 2,
    /// End of one stream.
    Eof = 3,
    /// Flow-control credit.
    Window = 4,
}

impl FrameKind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Msg),
            2 => Some(Self::Data),
            3 => Some(Self::Eof),
            4 => Some(Self::Window),
            _ => None,
        }
    }
}

/// One stream of a session's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Stream {
    /// Standard input of an exec, or the content of a file being written.
    Stdin = 0,
    /// Standard output of an exec (the PTY in terminal mode), or a file being read.
    Stdout = 1,
    /// Standard error of an exec.
    Stderr = 2,
}

impl Stream {
    /// Decodes a stream number.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Stdin),
            1 => Some(Self::Stdout),
            2 => Some(Self::Stderr),
            _ => None,
        }
    }
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Session the frame belongs to; 0 is the connection itself (hello).
    pub session: u32,
    /// Its content.
    pub body: FrameBody,
}

/// Content of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameBody {
    /// Raw JSON of a message; decode with [`crate::decode_msg`].
    Msg(Vec<u8>),
    /// Bytes of one stream.
    Data(Stream, Vec<u8>),
    /// End of one stream.
    Eof(Stream),
    /// Credit of `n` more data bytes the receiver of this frame may send on the session.
    Window(u32),
}

/// A frame that could not be decoded. The decoder has skipped it; the stream is still usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The declared length is over the cap.
    Oversized {
        /// Session named in the header, if it could be read.
        session: Option<u32>,
        /// Declared length.
        len: u64,
    },
    /// The declared length is shorter than the header.
    Short {
        /// Declared length.
        len: u32,
    },
    /// The kind byte is not one of [`FrameKind`].
    UnknownKind {
        /// Session named in the header.
        session: u32,
        /// The unknown kind.
        kind: u8,
    },
    /// The payload does not fit its kind.
    BadPayload {
        /// Session named in the header.
        session: u32,
        /// What is wrong.
        what: &'static str,
    },
}

impl FrameError {
    /// The session the bad frame named, when it is known.
    pub fn session(&self) -> Option<u32> {
        match self {
            Self::Oversized { session, .. } => *session,
            Self::Short { .. } => None,
            Self::UnknownKind { session, .. } | Self::BadPayload { session, .. } => Some(*session),
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Oversized { len, .. } => {
                write!(
                    f,
                    "frame of {len} bytes is over the {MAX_FRAME_LEN}-byte cap"
                )
            }
            Self::Short { len } => write!(f, "frame length {len} is shorter than its header"),
            Self::UnknownKind { kind, .. } => write!(f, "unknown frame kind {kind}"),
            Self::BadPayload { what, .. } => write!(f, "malformed frame payload: {what}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Appends the encoding of a frame to `out`.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    let (kind, head, payload): (FrameKind, Option<u8>, &[u8]) = match &frame.body {
        FrameBody::Msg(json) => (FrameKind::Msg, None, json),
        FrameBody::Data(s, bytes) => (FrameKind::Data, Some(*s as u8), bytes),
        FrameBody::Eof(s) => (FrameKind::Eof, Some(*s as u8), &[]),
        FrameBody::Window(n) => {
            encode_raw(
                frame.session,
                FrameKind::Window as u8,
                &n.to_le_bytes(),
                out,
            );
            return;
        }
    };
    let extra = usize::from(head.is_some());
    let len = u32::try_from(HEADER_AFTER_LEN + extra + payload.len()).expect("frame over 4 GiB");
    out.reserve(4 + len as usize);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&frame.session.to_le_bytes());
    out.push(kind as u8);
    if let Some(h) = head {
        out.push(h);
    }
    out.extend_from_slice(payload);
}

/// Bytes before the payload of a `Data` frame: the header and the stream number.
pub const DATA_PREFIX_LEN: usize = HEADER_LEN + 1;

/// Writes the header of a `Data` frame carrying `len` bytes into `out[..DATA_PREFIX_LEN]`, so a
/// sender can read its payload straight into the frame's buffer (no copy).
pub fn put_data_prefix(out: &mut [u8], session: u32, stream: Stream, len: usize) {
    let total = u32::try_from(HEADER_AFTER_LEN + 1 + len).expect("chunk under 4 GiB");
    out[..4].copy_from_slice(&total.to_le_bytes());
    out[4..8].copy_from_slice(&session.to_le_bytes());
    out[8] = FrameKind::Data as u8;
    out[9] = stream as u8;
}

/// Appends a frame with an arbitrary kind byte and payload (used by tests of hostile input).
pub fn encode_raw(session: u32, kind: u8, payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(HEADER_AFTER_LEN + payload.len()).expect("frame over 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&session.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
}

/// Incremental decoder: feed bytes with [`Decoder::extend`], take frames with [`Decoder::next`].
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
    /// Bytes of an oversized frame still to be thrown away.
    skip: u64,
}

impl Decoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        let mut bytes = bytes;
        if self.skip > 0 {
            let n = usize::try_from(self.skip)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            self.skip -= n as u64;
            bytes = &bytes[n..];
        }
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet decoded.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Decodes the next complete frame, if one is buffered.
    pub fn decode_next(&mut self) -> Option<Result<Frame, FrameError>> {
        if self.skip > 0 {
            return None;
        }
        let avail = &self.buf[self.start..];
        if avail.len() < 4 {
            self.compact();
            return None;
        }
        let len = u32::from_le_bytes(avail[..4].try_into().expect("4 bytes"));
        let len_usize = len as usize;
        if len_usize < HEADER_AFTER_LEN {
            self.consume_or_skip(4 + len_usize);
            return Some(Err(FrameError::Short { len }));
        }
        if avail.len() < HEADER_LEN {
            // Wait for the whole header, so even a rejected frame names its session.
            self.compact();
            return None;
        }
        if len_usize > MAX_FRAME_LEN {
            let session = Some(u32::from_le_bytes(avail[4..8].try_into().expect("4 bytes")));
            self.consume_or_skip(4 + len_usize);
            return Some(Err(FrameError::Oversized {
                session,
                len: u64::from(len),
            }));
        }
        if avail.len() < 4 + len_usize {
            self.compact();
            return None;
        }
        let session = u32::from_le_bytes(avail[4..8].try_into().expect("4 bytes"));
        let kind = avail[8];
        let payload = &avail[HEADER_LEN..4 + len_usize];
        let result = decode_body(session, kind, payload);
        self.start += 4 + len_usize;
        Some(result.map(|body| Frame { session, body }))
    }

    /// Drops `n` bytes from the front: those buffered now, and the rest as they arrive.
    fn consume_or_skip(&mut self, n: usize) {
        let avail = self.buf.len() - self.start;
        if n <= avail {
            self.start += n;
        } else {
            self.skip = (n - avail) as u64;
            self.buf.clear();
            self.start = 0;
        }
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

fn decode_body(session: u32, kind: u8, payload: &[u8]) -> Result<FrameBody, FrameError> {
    let kind = FrameKind::from_u8(kind).ok_or(FrameError::UnknownKind { session, kind })?;
    let bad = |what| FrameError::BadPayload { session, what };
    let stream = |p: &[u8]| {
        p.first()
            .and_then(|s| Stream::from_u8(*s))
            .ok_or(bad("missing or unknown stream number"))
    };
    Ok(match kind {
        FrameKind::Msg => FrameBody::Msg(payload.to_vec()),
        FrameKind::Data => FrameBody::Data(stream(payload)?, payload[1..].to_vec()),
        FrameKind::Eof => {
            if payload.len() != 1 {
                return Err(bad("eof payload is not one byte"));
            }
            FrameBody::Eof(stream(payload)?)
        }
        FrameKind::Window => {
            let n: [u8; 4] = payload
                .try_into()
                .map_err(|_| bad("window payload is not four bytes"))?;
            FrameBody::Window(u32::from_le_bytes(n))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(frame: Frame) {
        let mut out = Vec::new();
        encode(&frame, &mut out);
        let mut d = Decoder::new();
        // Byte by byte: the decoder must cope with any split.
        for b in &out {
            assert!(d.decode_next().is_none());
            d.extend(std::slice::from_ref(b));
        }
        assert_eq!(d.decode_next(), Some(Ok(frame)));
        assert_eq!(d.decode_next(), None);
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn data_prefix_matches_encode() {
        let mut a = Vec::new();
        encode(
            &Frame {
                session: 9,
                body: FrameBody::Data(Stream::Stderr, b"abc".to_vec()),
            },
            &mut a,
        );
        let mut b = vec![0u8; DATA_PREFIX_LEN];
        put_data_prefix(&mut b, 9, Stream::Stderr, 3);
        b.extend_from_slice(b"abc");
        assert_eq!(a, b);
    }

    #[test]
    fn frames_roundtrip() {
        roundtrip(Frame {
            session: 7,
            body: FrameBody::Msg(br#"{"type":"health"}"#.to_vec()),
        });
        roundtrip(Frame {
            session: u32::MAX,
            body: FrameBody::Data(Stream::Stderr, (0..=255).collect()),
        });
        roundtrip(Frame {
            session: 1,
            body: FrameBody::Data(Stream::Stdout, vec![]),
        });
        roundtrip(Frame {
            session: 3,
            body: FrameBody::Eof(Stream::Stdin),
        });
        roundtrip(Frame {
            session: 3,
            body: FrameBody::Window(123_456),
        });
    }

    fn good(session: u32) -> Vec<u8> {
        let mut out = Vec::new();
        encode(
            &Frame {
                session,
                body: FrameBody::Eof(Stream::Stdout),
            },
            &mut out,
        );
        out
    }

    #[test]
    fn oversized_frame_is_skipped_and_stream_stays_in_step() {
        let mut bytes = Vec::new();
        let len = u32::try_from(MAX_FRAME_LEN + 10).unwrap();
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&9u32.to_le_bytes());
        bytes.push(2);
        bytes.resize(4 + len as usize, 0xAB);
        bytes.extend(good(5));
        let mut d = Decoder::new();
        let mut results = Vec::new();
        for chunk in bytes.chunks(4096) {
            d.extend(chunk);
            while let Some(r) = d.decode_next() {
                results.push(r);
            }
        }
        assert_eq!(results.len(), 2);
        assert!(matches!(
            results[0],
            Err(FrameError::Oversized {
                session: Some(9),
                ..
            })
        ));
        assert_eq!(results[1].as_ref().unwrap().session, 5);
    }

    #[test]
    fn short_unknown_and_bad_frames_are_reported_then_skipped() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&2u32.to_le_bytes());
        bytes.extend_from_slice(&[1, 2]);
        encode_raw(4, 99, b"junk", &mut bytes);
        encode_raw(6, FrameKind::Data as u8, &[], &mut bytes);
        encode_raw(8, FrameKind::Data as u8, &[7, 1, 2], &mut bytes);
        encode_raw(10, FrameKind::Window as u8, &[1, 2], &mut bytes);
        encode_raw(12, FrameKind::Eof as u8, &[1, 1], &mut bytes);
        bytes.extend(good(11));
        let mut d = Decoder::new();
        d.extend(&bytes);
        assert_eq!(d.decode_next(), Some(Err(FrameError::Short { len: 2 })));
        assert_eq!(
            d.decode_next(),
            Some(Err(FrameError::UnknownKind {
                session: 4,
                kind: 99
            }))
        );
        for session in [6, 8, 10, 12] {
            let err = d.decode_next().unwrap().unwrap_err();
            assert_eq!(err.session(), Some(session), "{err}");
        }
        assert_eq!(d.decode_next().unwrap().unwrap().session, 11);
        assert!(d.decode_next().is_none());
    }
}
