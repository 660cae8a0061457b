//! Why a sandbox is in the state it is in.

use std::fmt;

use crate::ParseError;

/// Why a sandbox is where it is: recorded with its state (`kind` and `detail` in the store),
/// shown to users as one sentence ([`fmt::Display`]), and read by the host as a type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Stopped on request.
    Stopped,
    /// Its time to live ran out.
    Expired,
    /// Its time to live ran out and it was hibernated (`on_expire` hibernate).
    ExpiredHibernated,
    /// The idle policy paused or hibernated it; the next request brings it back.
    Idle,
    /// Its cove-vm ended without a record of why (killed, or the host rebooted).
    Vanished,
    /// It never ran: the boot or restore failed.
    StartFailed(String),
    /// Its VM ended unexpectedly while it ran.
    Crashed(String),
    /// A resume of its hibernation failed; the hibernation is intact and can be tried again.
    ResumeFailed(String),
    /// Hibernated, but the copy to the blob store failed: only this host can resume it.
    NotStored(String),
    /// The host was interrupted in the middle of an operation on it (coved or the CLI killed),
    /// and reconciled what it found.
    Interrupted(String),
    /// Its agent did not answer a call of the host's within the call's deadline.
    Unresponsive(String),
    /// Running, but booted: the image's template that would have been restored could not be
    /// (it failed its check, would not restore, or holds another guest); says which and why,
    /// from the create until the sandbox's next move.
    TemplateSkipped(String),
}

impl Reason {
    /// The stable code of the kind, as stored.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Stopped => "stopped",
            Self::Expired => "expired",
            Self::ExpiredHibernated => "expired_hibernated",
            Self::Idle => "idle",
            Self::Vanished => "vanished",
            Self::StartFailed(_) => "start_failed",
            Self::Crashed(_) => "crashed",
            Self::ResumeFailed(_) => "resume_failed",
            Self::NotStored(_) => "not_stored",
            Self::Interrupted(_) => "interrupted",
            Self::Unresponsive(_) => "unresponsive",
            Self::TemplateSkipped(_) => "template_skipped",
        }
    }

    /// What the kind carries (an error's text), if anything.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Self::Stopped
            | Self::Expired
            | Self::ExpiredHibernated
            | Self::Idle
            | Self::Vanished => None,
            Self::StartFailed(d)
            | Self::Crashed(d)
            | Self::ResumeFailed(d)
            | Self::NotStored(d)
            | Self::Interrupted(d)
            | Self::Unresponsive(d)
            | Self::TemplateSkipped(d) => Some(d),
        }
    }

    /// Rebuilds a reason from its stored kind and detail.
    pub fn from_parts(kind: &str, detail: Option<String>) -> Result<Self, ParseError> {
        let d = || detail.clone().unwrap_or_default();
        Ok(match kind {
            "stopped" => Self::Stopped,
            "expired" => Self::Expired,
            "expired_hibernated" => Self::ExpiredHibernated,
            "idle" => Self::Idle,
            "vanished" => Self::Vanished,
            "start_failed" => Self::StartFailed(d()),
            "crashed" => Self::Crashed(d()),
            "resume_failed" => Self::ResumeFailed(d()),
            "not_stored" => Self::NotStored(d()),
            "interrupted" => Self::Interrupted(d()),
            "unresponsive" => Self::Unresponsive(d()),
            "template_skipped" => Self::TemplateSkipped(d()),
            _ => {
                return Err(ParseError {
                    what: "reason",
                    value: kind.to_string(),
                });
            }
        })
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stopped => f.write_str("stopped"),
            Self::Expired => f.write_str("stopped: its time to live ran out"),
            Self::ExpiredHibernated => {
                f.write_str("hibernated: its time to live ran out (a resume brings it back)")
            }
            Self::Idle => f.write_str("idle"),
            Self::Vanished => {
                f.write_str("its cove-vm process vanished (killed, or the host rebooted)")
            }
            Self::StartFailed(d) => write!(f, "failed to start: {d}"),
            Self::Crashed(d) => f.write_str(d),
            Self::ResumeFailed(d) => write!(f, "resume failed: {d}"),
            Self::NotStored(d) => write!(f, "not in the blob store: {d}"),
            Self::Interrupted(d) => write!(f, "interrupted: {d}"),
            Self::Unresponsive(d) => write!(f, "its agent stopped answering: {d}"),
            Self::TemplateSkipped(d) => write!(f, "booted instead of restoring a template: {d}"),
        }
    }
}

/// On the wire a reason is its sentence (what users read); the store keeps kind and detail.
impl serde::Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_through_their_parts() {
        for r in [
            Reason::Stopped,
            Reason::Expired,
            Reason::ExpiredHibernated,
            Reason::Idle,
            Reason::Vanished,
            Reason::StartFailed("no kernel".into()),
            Reason::Crashed("the VM stopped unexpectedly: signal 9".into()),
            Reason::ResumeFailed("bad manifest".into()),
            Reason::NotStored("disk full".into()),
            Reason::TemplateSkipped("template 0123456789ab: its memory file changed".into()),
            Reason::Interrupted("coved was killed while creating it".into()),
            Reason::Unresponsive("exec: no answer within 10s".into()),
        ] {
            let back = Reason::from_parts(r.kind(), r.detail().map(str::to_string)).unwrap();
            assert_eq!(back, r);
        }
        assert!(Reason::from_parts("idle (old)", None).is_err());
        assert_eq!(Reason::Idle.to_string(), "idle");
        assert!(Reason::Expired.to_string().contains("time to live"));
    }
}
