//! Fault injection for the crash-consistency tests: `COVE_FAULT=NAME` makes the process kill
//! itself (SIGKILL, as an operator's `kill -9` or the OOM killer would) when it reaches the point
//! `NAME` of an operation. Unset, a point costs one load of a cached flag.

use std::sync::OnceLock;

/// The point this process dies at, if any.
fn armed() -> Option<&'static str> {
    static FAULT: OnceLock<Option<String>> = OnceLock::new();
    FAULT
        .get_or_init(|| std::env::var("COVE_FAULT").ok().filter(|s| !s.is_empty()))
        .as_deref()
}

/// Dies here when `COVE_FAULT` names this point.
pub(crate) fn point(name: &str) {
    if armed() == Some(name) {
        tracing::warn!("COVE_FAULT: killing this process at {name}");
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
        // SIGKILL is not delivered synchronously on every kernel path: never go on.
        loop {
            std::thread::park();
        }
    }
}
