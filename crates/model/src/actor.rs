//! Who moved a sandbox: recorded with every event.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ParseError;

/// Who caused a change. Users act through an API key or as the host's administrator; the
/// background actors (time to live, idle policy, reconcile) call the same host operations and
/// are recorded as themselves.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Actor {
    /// The host's administrator: the CLI on the host, or the library called directly.
    #[default]
    Local,
    /// A caller with this API key (its id, never the secret).
    Key(String),
    /// The sandbox's time to live ran out.
    Ttl,
    /// The sandbox's idle policy paused or hibernated it.
    IdlePolicy,
    /// The host found a sandbox's VM gone (killed, crashed, the host rebooted) or an operation
    /// left half done, and recorded how it ended.
    Reconcile,
    /// A request to one of the sandbox's ports that carried its traffic token or a signed URL
    /// (or needed neither: public ports) woke it.
    Traffic,
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local => f.write_str("local"),
            Self::Key(id) => write!(f, "key:{id}"),
            Self::Ttl => f.write_str("ttl"),
            Self::IdlePolicy => f.write_str("idle-policy"),
            Self::Reconcile => f.write_str("reconcile"),
            Self::Traffic => f.write_str("traffic"),
        }
    }
}

impl FromStr for Actor {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "local" => Self::Local,
            "ttl" => Self::Ttl,
            "idle-policy" => Self::IdlePolicy,
            "reconcile" => Self::Reconcile,
            "traffic" => Self::Traffic,
            _ => match s.strip_prefix("key:") {
                Some(id) if !id.is_empty() => Self::Key(id.to_string()),
                _ => {
                    return Err(ParseError {
                        what: "actor",
                        value: s.to_string(),
                    });
                }
            },
        })
    }
}

impl Serialize for Actor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Actor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actors_round_trip() {
        for a in [
            Actor::Local,
            Actor::Key("k1a2".into()),
            Actor::Ttl,
            Actor::IdlePolicy,
            Actor::Reconcile,
        ] {
            assert_eq!(a.to_string().parse::<Actor>().unwrap(), a);
            let json = serde_json::to_string(&a).unwrap();
            assert_eq!(serde_json::from_str::<Actor>(&json).unwrap(), a);
        }
        assert_eq!(Actor::Key("abc".into()).to_string(), "key:abc");
        for bad in ["key:", "cove-vm", "", "Local"] {
            assert!(bad.parse::<Actor>().is_err(), "{bad}");
        }
    }
}
