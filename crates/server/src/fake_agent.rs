//! A guest agent for unit tests: a client whose agent answers each request with the frames a
//! test gives, over an in-memory stream.

use cove_host::AgentClient;
use cove_protocol::io::FrameReader;
use cove_protocol::{Frame, FrameBody, Reply, Request, frame};
use tokio::io::AsyncWriteExt as _;

/// A client whose agent answers every request (not `cancel`) with `answer(request)`.
pub(crate) fn client(
    mut answer: impl FnMut(Request) -> Vec<FrameBody> + Send + 'static,
) -> AgentClient {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let (r, w) = tokio::io::split(ours);
    let (agent_r, mut agent_w) = tokio::io::split(theirs);
    tokio::spawn(async move {
        let mut frames = FrameReader::new(agent_r);
        while let Ok(Some(f)) = frames.next().await {
            let FrameBody::Msg(json) = &f.body else {
                continue;
            };
            let req = match cove_protocol::decode_msg::<Request>(json) {
                Ok(Request::Cancel) | Err(_) => continue,
                Ok(req) => req,
            };
            let mut buf = Vec::new();
            for body in answer(req) {
                frame::encode(
                    &Frame {
                        session: f.session,
                        body,
                    },
                    &mut buf,
                );
            }
            if agent_w.write_all(&buf).await.is_err() {
                return;
            }
        }
    });
    AgentClient::over(r, w)
}

/// A reply as a frame's body.
pub(crate) fn msg(r: &Reply) -> FrameBody {
    FrameBody::Msg(serde_json::to_vec(r).expect("serializes"))
}
