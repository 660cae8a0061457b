//! What a sandbox does when its time runs out or it sits idle, and which engine runs it: small
//! choices a request names by their wire names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ParseError;

/// `as_str`, `Display` and `FromStr` of an enum whose wire names are its serde names.
macro_rules! wire_names {
    ($ty:ident, $what:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value, in the order the docs list them.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The wire name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name),+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($name => Ok(Self::$variant),)+
                    _ => Err(ParseError { what: $what, value: s.to_string() }),
                }
            }
        }
    };
}

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

wire_names!(OnExpire, "on-expire policy (stop, hibernate)", {
    Stop => "stop",
    Hibernate => "hibernate",
});

/// What a sandbox idle for its idle timeout does; the next request (or traffic to one of its
/// ports) resumes it. Wire form: `"pause"`, `"hibernate"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OnIdle {
    /// Its VM stops running and keeps its memory: resumes in milliseconds.
    #[default]
    Pause,
    /// Its whole state is saved to the blob store and its VM ends: costs nothing while
    /// idle, resumes (on any host sharing the store) in a fraction of a second.
    Hibernate,
}

wire_names!(OnIdle, "on-idle policy (pause, hibernate)", {
    Pause => "pause",
    Hibernate => "hibernate",
});

/// The engine a create asks for. Wire form: `"auto"`, `"kvm"`, `"qemu"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// `kvm` where /dev/kvm is backed by hardware virtualisation, else `qemu`.
    #[default]
    Auto,
    /// Cove's own VMM on KVM.
    Kvm,
    /// QEMU (with KVM where the hardware has it, else its instruction emulator, TCG).
    Qemu,
}

wire_names!(Engine, "engine (auto, kvm, qemu)", {
    Auto => "auto",
    Kvm => "kvm",
    Qemu => "qemu",
});

/// The engine a sandbox runs on: what a create's [`Engine`] became on its host. Wire form:
/// `"qemu"`, `"kvm"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum VmEngine {
    /// QEMU.
    Qemu,
    /// Cove's own VMM on KVM.
    Kvm,
}

wire_names!(VmEngine, "engine (qemu, kvm)", {
    Qemu => "qemu",
    Kvm => "kvm",
});

impl From<VmEngine> for Engine {
    /// Asking for the engine a sandbox runs on (a clone restores on its source's).
    fn from(e: VmEngine) -> Self {
        match e {
            VmEngine::Qemu => Engine::Qemu,
            VmEngine::Kvm => Engine::Kvm,
        }
    }
}

/// How the engine runs the guest. Wire form: `"tcg"`, `"kvm"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Accel {
    /// QEMU's instruction emulator (no hardware virtualisation).
    Tcg,
    /// Hardware virtualisation through /dev/kvm.
    Kvm,
}

wire_names!(Accel, "acceleration (tcg, kvm)", {
    Tcg => "tcg",
    Kvm => "kvm",
});

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trips<T>(all: &[T])
    where
        T: Copy + PartialEq + fmt::Debug + fmt::Display + FromStr + Serialize,
        T: for<'a> Deserialize<'a>,
        <T as FromStr>::Err: fmt::Debug,
    {
        for &p in all {
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{p}\""));
            assert_eq!(serde_json::from_str::<T>(&json).unwrap(), p);
            assert_eq!(p.to_string().parse::<T>().unwrap(), p);
        }
    }

    #[test]
    fn wire_names_round_trip() {
        round_trips(OnExpire::ALL);
        round_trips(OnIdle::ALL);
        round_trips(Engine::ALL);
        round_trips(VmEngine::ALL);
        round_trips(Accel::ALL);
        assert!("auto".parse::<VmEngine>().is_err());
        assert!("pause".parse::<OnExpire>().is_err());
        assert!("stop".parse::<OnIdle>().is_err());
        assert!("firecracker".parse::<Engine>().is_err());
        assert!(serde_json::from_str::<OnExpire>("\"Stop\"").is_err());
        assert!(serde_json::from_str::<OnIdle>("\"sleep\"").is_err());
    }
}
