//! What a scrub (a full re-hash of every snapshot, template and hibernation kept on a host)
//! found.

use serde::{Deserialize, Serialize};

/// What holds a snapshot the scrub checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Held {
    /// A named or unnamed snapshot of a sandbox.
    Snapshot,
    /// An image's template.
    Template,
    /// A hibernated sandbox's saved state.
    Hibernation,
}

/// What was done about a corrupted copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ScrubAction {
    /// The host's copy was a cache of the blob store's: it is gone, and the next restore
    /// fetches the stored copy (and checks it).
    Refetch,
    /// It exists only here: kept, and every restore of it is refused as corrupted.
    Refused,
}

/// One corrupted copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct ScrubFinding {
    /// What holds it.
    pub held: Held,
    /// The snapshot's id, or the hibernated sandbox's.
    pub id: String,
    /// Which file did not match its manifest.
    pub error: String,
    /// What was done.
    pub action: ScrubAction,
}

/// A scrub's outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Scrubbed {
    /// Copies hashed.
    pub checked: u32,
    /// Those that did not match.
    pub corrupted: Vec<ScrubFinding>,
}
