//! What a sandbox's time to live does when it runs out.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ParseError;

/// What the end of a sandbox's time to live does. Wire form: `"stop"`, `"hibernate"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OnExpire {
    /// Its VM ends; its files stay until it is removed.
    #[default]
    Stop,
    /// Its whole state is saved and its VM ends; a resume brings it back, with no time to
    /// live left.
    Hibernate,
}

impl OnExpire {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Hibernate => "hibernate",
        }
    }
}

impl fmt::Display for OnExpire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OnExpire {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stop" => Ok(Self::Stop),
            "hibernate" => Ok(Self::Hibernate),
            _ => Err(ParseError {
                what: "on-expire policy (stop, hibernate)",
                value: s.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip() {
        for p in [OnExpire::Stop, OnExpire::Hibernate] {
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{p}\""));
            assert_eq!(serde_json::from_str::<OnExpire>(&json).unwrap(), p);
            assert_eq!(p.as_str().parse::<OnExpire>().unwrap(), p);
        }
        assert!("pause".parse::<OnExpire>().is_err());
        assert!(serde_json::from_str::<OnExpire>("\"Stop\"").is_err());
    }
}
