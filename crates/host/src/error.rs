//! The host's one error type.

use std::path::Path;

use cove_model::{Reason, SandboxState, TransitionError};
use cove_state::StateError;

use crate::{ClientError, engine, store};

/// Errors of host operations. Each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// No sandbox has that id, prefix or name.
    #[error("no such sandbox: {0}")]
    NoSuchSandbox(String),
    /// No snapshot has that id, prefix or name.
    #[error("no such snapshot: {0}")]
    NoSuchSnapshot(String),
    /// The image is not installed.
    #[error(
        "no such image: {name} (installed: {installed}); `cove image pull` or `cove image import` it"
    )]
    NoSuchImage {
        /// The name asked for.
        name: String,
        /// What is there.
        installed: String,
    },
    /// The name is in use.
    #[error("the name {0:?} is already in use")]
    NameTaken(String),
    /// A resource setting is out of range.
    #[error("invalid {what}: {value} (allowed: {allowed})")]
    InvalidSetting {
        /// Which setting.
        what: &'static str,
        /// The value given.
        value: String,
        /// The allowed range.
        allowed: String,
    },
    /// The sandbox is not in a state the operation works on.
    #[error("sandbox {id} is {state}{}", reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    NotRunning {
        /// The sandbox.
        id: String,
        /// Its state.
        state: SandboxState,
        /// Why it is there, if known.
        reason: Option<Reason>,
    },
    /// The lifecycle does not allow the move (another operation changed the sandbox first).
    #[error("sandbox {id}: {err}")]
    Transition {
        /// The sandbox.
        id: String,
        /// The move refused.
        err: TransitionError,
    },
    /// The sandbox is running and removal was not forced.
    #[error("sandbox {0} is running; stop it first or use `cove rm -f`")]
    StillRunning(String),
    /// A guest asset is missing.
    #[error("{what} not found at {path}; run `make setup` to build it")]
    MissingAsset {
        /// Which asset.
        what: &'static str,
        /// Where it was expected.
        path: String,
    },
    /// A path is too long for a Unix socket.
    #[error(
        "the Cove home is too deep for Unix sockets ({path} is over 100 bytes); set COVE_HOME to a shorter path"
    )]
    SocketPathTooLong {
        /// The socket path.
        path: String,
    },
    /// The VM failed to start.
    #[error("sandbox {id} failed to start: {reason}")]
    StartFailed {
        /// The sandbox.
        id: String,
        /// Why.
        reason: String,
    },
    /// The sandbox's jail could not be readied (its user, cgroup or files).
    #[error("sandbox {id}: its jail could not be set up: {reason}")]
    Jail {
        /// The sandbox.
        id: String,
        /// Why.
        reason: String,
    },
    /// A lifecycle operation failed; the sandbox keeps its previous state.
    #[error("sandbox {id}: {reason}")]
    Operation {
        /// The sandbox.
        id: String,
        /// Why.
        reason: String,
    },
    /// A snapshot's file does not match its manifest (the host's check of a fetched snapshot,
    /// or the scrub's).
    #[error("{0}")]
    SnapshotCorrupted(String),
    /// An operation that needs the guest's agent (a snapshot freezes it) failed, and the agent
    /// does not answer a probe either: the guest is at fault, the sandbox is now `unhealthy`.
    #[error("sandbox {id} is {state} but its agent does not answer: {reason}")]
    GuestUnresponsive {
        /// The sandbox.
        id: String,
        /// The state of its VM when the agent was probed.
        state: cove_model::SandboxState,
        /// What failed.
        reason: String,
    },
    /// A sandbox's network could not be made or changed.
    #[error(transparent)]
    Network(#[from] cove_net::NetError),
    /// A network setting that the sandbox's device set does not allow (`egress` for a sandbox
    /// created without a network device).
    #[error("{0}")]
    NetworkConflict(String),
    /// The image is needed by sandboxes or snapshots.
    #[error("image {image} is in use by {users}; remove them first")]
    ImageInUse {
        /// The image asked for.
        image: String,
        /// What uses it.
        users: String,
    },
    /// The image pipeline failed.
    #[error(transparent)]
    Image(#[from] cove_image::ImageError),
    /// The blob store failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The engine cannot run here.
    #[error("{0}")]
    Engine(#[from] engine::EngineError),
    /// The state store failed, refused an owner past its limits
    /// ([`StateError::OverQuota`]), or holds what this build cannot read.
    #[error(transparent)]
    State(StateError),
    /// A file operation failed.
    #[error("{what}: {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Talking to the sandbox failed.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// The store's refusals are the host's own (a name in use, a sandbox gone, a move the
/// lifecycle does not allow); anything else is the store's failure.
impl From<StateError> for HostError {
    fn from(e: StateError) -> Self {
        match e {
            StateError::NameTaken(n) => Self::NameTaken(n),
            StateError::NoSuchSandbox(id) => Self::NoSuchSandbox(id),
            StateError::Transition { id, err } => Self::Transition { id, err },
            e => Self::State(e),
        }
    }
}

pub(crate) fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> HostError {
    let path = path.display().to_string();
    move |source| HostError::Io { what, path, source }
}
