//! Cove's domain, in one place: what state a sandbox is in and which moves between states are
//! allowed ([`SandboxState`]), why it is there ([`Reason`]), who moved it ([`Actor`]), and where
//! its files live ([`SandboxDir`]).
//!
//! Every layer (the host library, coved, the CLI, the SDKs) uses these types; none compares a
//! state, a reason or an actor as a string. The wire and database forms are the names these
//! types print (`running`, `key:ID`, …), parsed back with [`std::str::FromStr`].

mod actor;
mod isolation;
mod layout;
pub mod limits;
mod network;
mod policy;
mod reason;
mod scrub;
mod state;

pub use actor::Actor;
pub use isolation::{CgroupMode, CgroupReport, Isolation, JailProcess, JailReport};
pub use layout::{SandboxDir, default_home, is_root};
pub use network::{Cidr, Destination, MAX_RULES, NetworkMode, NetworkPolicy};
pub use policy::{Accel, Engine, OnExpire, OnIdle, VmEngine};
pub use reason::Reason;
pub use scrub::{Held, ScrubAction, ScrubFinding, Scrubbed};
pub use state::{EventState, SandboxState, TransitionError};

/// A name that does not parse as the type asked for (a corrupt row, a bad query parameter).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what}: {value:?}")]
pub struct ParseError {
    /// What was being parsed.
    pub what: &'static str,
    /// The text that did not parse.
    pub value: String,
}
