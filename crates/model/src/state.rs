//! Sandbox states and the one table of allowed moves between them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ParseError;

/// Where a sandbox is in its life.
///
/// ```text
/// creating ─▶ running ⇄ paused
/// running|paused ─▶ hibernating ─▶ hibernated ─▶ resuming ─▶ running
/// any live state ─▶ stopped | failed;   stopped|failed|hibernated ─▶ (removed)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    /// Its cove-vm is starting the guest (a boot or a restore).
    Creating,
    /// The guest runs and its agent answers.
    Running,
    /// Its vCPUs are stopped; memory stays resident.
    Paused,
    /// Its whole state is being saved; its VM ends when that is done.
    Hibernating,
    /// Saved (memory, processes, disk); no VM runs. Costs only storage.
    Hibernated,
    /// A hibernation is being restored.
    Resuming,
    /// Its VM ended on request or when its time ran out; its files stay until it is removed.
    Stopped,
    /// It could not start, or its VM ended unexpectedly; the reason says why.
    Failed,
    /// Its VM runs but its agent stopped answering the host in time (a hostile or wedged
    /// guest); the reason names the call. It goes back to `running` when the agent answers
    /// again, and can be stopped, removed, or replaced by a sandbox restored from a snapshot.
    Unhealthy,
}

impl SandboxState {
    /// Every state, in the order above (for tests and metrics).
    pub const ALL: [SandboxState; 9] = [
        Self::Creating,
        Self::Running,
        Self::Paused,
        Self::Hibernating,
        Self::Hibernated,
        Self::Resuming,
        Self::Stopped,
        Self::Failed,
        Self::Unhealthy,
    ];

    /// The name on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Hibernating => "hibernating",
            Self::Hibernated => "hibernated",
            Self::Resuming => "resuming",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
            Self::Unhealthy => "unhealthy",
        }
    }

    /// A cove-vm process belongs to the sandbox in this state (it may have died since: the
    /// host reconciles).
    pub fn has_vm(self) -> bool {
        matches!(
            self,
            Self::Creating
                | Self::Running
                | Self::Paused
                | Self::Hibernating
                | Self::Resuming
                | Self::Unhealthy
        )
    }

    /// The guest's memory is live: it can be snapshotted, forked or hibernated.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Running | Self::Paused)
    }

    /// Its agent can be given sessions (exec, files): it runs, or it runs and its agent was
    /// slow to answer (which a session that gets through turns back into `running`).
    pub fn takes_sessions(self) -> bool {
        matches!(self, Self::Running | Self::Unhealthy)
    }

    /// Its VM has ended for good: nothing but removal is left.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Stopped | Self::Failed)
    }

    /// Whether a sandbox may move from `self` to `to`. Staying in the same state is not a
    /// move (a record update that changes only a reason or a pid) and is always allowed.
    ///
    /// This is the one table of the lifecycle: every state change of the host goes through
    /// [`SandboxState::check`].
    pub fn can_move_to(self, to: SandboxState) -> bool {
        use SandboxState::*;
        if self == to {
            return true;
        }
        match (self, to) {
            // A start ends running, or failed (the reason says why).
            (Creating, Running | Failed | Stopped) => true,
            (Running, Paused) | (Paused, Running) => true,
            // Its agent stopped answering in time, or answers again.
            (Running, Unhealthy) | (Unhealthy, Running) => true,
            (Running | Paused, Hibernating) => true,
            // A hibernation that failed leaves the sandbox as it was.
            (Hibernating, Hibernated | Running | Paused) => true,
            (Hibernated, Resuming) => true,
            // A resume that failed leaves the hibernation as it was.
            (Resuming, Running | Hibernated) => true,
            // The idle policy saves a running or paused sandbox by itself (cove-vm), and the
            // host notices afterwards, without a `hibernating` in between.
            (Running | Paused, Hibernated) => true,
            // Whatever has a VM can be stopped, or lose it.
            (from, Stopped | Failed) if from.has_vm() => true,
            _ => false,
        }
    }

    /// [`SandboxState::can_move_to`] as a result, for the host's operations.
    pub fn check(self, to: SandboxState) -> Result<(), TransitionError> {
        if self.can_move_to(to) {
            Ok(())
        } else {
            Err(TransitionError { from: self, to })
        }
    }
}

/// A move the lifecycle does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a sandbox cannot go from {from} to {to}")]
pub struct TransitionError {
    /// Where it is.
    pub from: SandboxState,
    /// Where it was asked to go.
    pub to: SandboxState,
}

impl fmt::Display for SandboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SandboxState {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| ParseError {
                what: "sandbox state",
                value: s.to_string(),
            })
    }
}

/// What an event records: the state a sandbox entered, or its removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventState {
    /// It entered this state.
    Entered(SandboxState),
    /// It was removed (its record and files are gone).
    Removed,
    /// Its network policy was replaced (the event's cause says the new one).
    Network,
}

impl EventState {
    /// The name on the wire and in the store: the state's, or `removed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Entered(s) => s.as_str(),
            Self::Removed => "removed",
            Self::Network => "network",
        }
    }
}

impl fmt::Display for EventState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventState {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "removed" => return Ok(Self::Removed),
            "network" => return Ok(Self::Network),
            _ => {}
        }
        s.parse().map(Self::Entered).map_err(|_| ParseError {
            what: "event state",
            value: s.to_string(),
        })
    }
}

impl Serialize for EventState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::SandboxState::*;
    use super::*;

    /// Every pair of states, against the lifecycle as the design states it. A new state or a
    /// new move must be added here on purpose.
    #[test]
    fn the_transition_table_over_every_pair() {
        let allowed: &[(SandboxState, &[SandboxState])] = &[
            (Creating, &[Creating, Running, Stopped, Failed]),
            (
                Running,
                &[
                    Running,
                    Paused,
                    Hibernating,
                    Hibernated,
                    Stopped,
                    Failed,
                    Unhealthy,
                ],
            ),
            (
                Paused,
                &[Paused, Running, Hibernating, Hibernated, Stopped, Failed],
            ),
            (
                Hibernating,
                &[Hibernating, Hibernated, Running, Paused, Stopped, Failed],
            ),
            (Hibernated, &[Hibernated, Resuming]),
            (Resuming, &[Resuming, Running, Hibernated, Stopped, Failed]),
            (Stopped, &[Stopped]),
            (Failed, &[Failed]),
            (Unhealthy, &[Unhealthy, Running, Stopped, Failed]),
        ];
        assert_eq!(allowed.len(), SandboxState::ALL.len());
        for (from, tos) in allowed {
            for to in SandboxState::ALL {
                let want = tos.contains(&to);
                assert_eq!(from.can_move_to(to), want, "{from} -> {to}");
                assert_eq!(from.check(to).is_ok(), want, "{from} -> {to}");
            }
        }
        // Nothing leaves the final states, and nothing goes back to creating.
        for s in SandboxState::ALL {
            assert_eq!(s.is_final(), s != Hibernated && !s.has_vm(), "{s}");
            if s != Creating {
                assert!(!s.can_move_to(Creating), "{s} -> creating");
            }
        }
        assert_eq!(
            Stopped.check(Running).unwrap_err().to_string(),
            "a sandbox cannot go from stopped to running"
        );
    }

    #[test]
    fn names_round_trip_on_the_wire() {
        for s in SandboxState::ALL {
            assert_eq!(s.as_str().parse::<SandboxState>().unwrap(), s);
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
            let e = EventState::Entered(s);
            assert_eq!(e.to_string().parse::<EventState>().unwrap(), e);
        }
        assert_eq!(
            "removed".parse::<EventState>().unwrap(),
            EventState::Removed
        );
        assert_eq!(
            serde_json::from_str::<EventState>("\"removed\"").unwrap(),
            EventState::Removed
        );
        assert!("Running".parse::<SandboxState>().is_err());
        assert!("removed".parse::<SandboxState>().is_err());
    }
}
