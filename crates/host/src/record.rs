//! What the host keeps of a sandbox while it starts, and who acts: the records themselves are
//! the state store's (`cove-state`).

use cove_model::Actor;
use cove_state::SandboxRecord;

tokio::task_local! {
    /// Who is acting, for the event log: coved sets the caller (an API key, or the host's
    /// administrator) around each request; unset is the host's administrator
    /// ([`Actor::Local`]). Background actors (reconcile) pass their own explicitly.
    pub static ACTOR: Actor;
}

/// The actor of the task running now.
pub(crate) fn current_actor() -> Actor {
    ACTOR.try_with(Clone::clone).unwrap_or_default()
}

/// A sandbox being started.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) rec: SandboxRecord,
    pub(crate) pid: u32,
}
