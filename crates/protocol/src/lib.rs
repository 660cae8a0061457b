//! The host↔agent protocol of Cove.
//!
//! One byte stream (a virtio-console port in the guest) carries many sessions at once: exec
//! streams, file transfers, health checks. [`frame`] cuts the stream into frames; [`message`]
//! defines the JSON messages of `Msg` frames. Bulk data is never JSON: it travels as raw bytes in
//! `Data` frames, paced by `Window` credit so one slow reader cannot stall the other sessions.
//!
//! The wire format is pinned by `schema.json`, which a test regenerates and compares.

pub mod control;
pub mod frame;
#[cfg(feature = "tokio")]
pub mod io;
pub mod message;
pub mod passwd;

pub use frame::{Decoder, Frame, FrameBody, FrameError, FrameKind, Stream};
pub use message::*;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 3;
/// Versions this build can speak, newest first.
pub const SUPPORTED_VERSIONS: &[u32] = &[PROTOCOL_VERSION];
/// Data bytes a sender may have in flight on one session before the receiver grants more.
pub const INITIAL_WINDOW: u32 = 1 << 20;

/// Picks the newest version both sides speak.
pub fn negotiate(offered: &[u32]) -> Option<u32> {
    SUPPORTED_VERSIONS
        .iter()
        .copied()
        .find(|v| offered.contains(v))
}

/// Encodes a message frame.
pub fn msg_frame<M: serde::Serialize>(session: u32, msg: &M) -> Frame {
    Frame {
        session,
        body: FrameBody::Msg(serde_json::to_vec(msg).expect("messages always serialize")),
    }
}

/// Decodes the JSON of a `Msg` frame.
pub fn decode_msg<M: serde::de::DeserializeOwned>(json: &[u8]) -> Result<M, serde_json::Error> {
    serde_json::from_slice(json)
}

/// The JSON schema of every message, as committed in `schema.json`.
pub fn schema_json() -> String {
    #[derive(schemars::JsonSchema)]
    #[allow(dead_code)]
    struct Protocol {
        version: u32,
        request: Request,
        reply: Reply,
    }
    let mut s =
        serde_json::to_string_pretty(&schemars::schema_for!(Protocol)).expect("schema serializes");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The golden schema: a wire change must be deliberate. Regenerate with
    /// `COVE_BLESS=1 cargo test -p cove-protocol golden` and bump `PROTOCOL_VERSION` when old
    /// peers would misread the new form.
    #[test]
    fn golden_schema() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema.json");
        let now = schema_json();
        if std::env::var_os("COVE_BLESS").is_some() {
            std::fs::write(path, &now).unwrap();
        }
        let golden = std::fs::read_to_string(path).expect("schema.json is committed");
        assert!(
            golden == now,
            "the protocol schema changed; review, bump PROTOCOL_VERSION if needed, and re-bless"
        );
        assert!(golden.contains("\"version\""));
    }

    #[test]
    fn messages_roundtrip_and_reject_unknown() {
        let req = Request::Exec(ExecRequest {
            argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
            env: vec![("A".into(), "b".into())],
            cwd: Some("/tmp".into()),
            user: Some("1000:1000".into()),
            tty: Some(TtySize { rows: 24, cols: 80 }),
            stdin: true,
            timeout_ms: Some(5000),
            tag: Some("t".into()),
            keep: true,
        });
        let f = msg_frame(3, &req);
        let FrameBody::Msg(json) = f.body else {
            panic!()
        };
        assert_eq!(decode_msg::<Request>(&json).unwrap(), req);
        assert!(decode_msg::<Request>(br#"{"type":"format_disk"}"#).is_err());
        // An exec without the newer fields is written as before (an older agent reads it).
        let plain = serde_json::to_string(&Request::Exec(ExecRequest::default())).unwrap();
        assert!(!plain.contains("keep") && !plain.contains("tag"), "{plain}");
        assert!(decode_msg::<Request>(br#"{"type":"stat","path":"/","evil":1}"#).is_err());
        assert!(decode_msg::<Reply>(b"\xff\xfe").is_err());
    }

    #[test]
    fn negotiation_picks_common_version() {
        assert_eq!(
            negotiate(&[PROTOCOL_VERSION + 5, PROTOCOL_VERSION]),
            Some(PROTOCOL_VERSION)
        );
        assert_eq!(negotiate(&[PROTOCOL_VERSION + 5]), None);
    }

    #[test]
    fn shell_codes() {
        let e = |code, signal| ExitStatus {
            code,
            signal,
            timed_out: false,
        };
        assert_eq!(e(Some(0), None).shell_code(), 0);
        assert_eq!(e(Some(1), None).shell_code(), 1);
        assert_eq!(e(None, Some(9)).shell_code(), 137);
        assert!(Reply::Exited(e(Some(0), None)).is_final());
        assert!(!Reply::Started { pid: 1 }.is_final());
    }
}
