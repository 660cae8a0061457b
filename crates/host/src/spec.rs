//! What a create asks for, and the checks on it.

use std::collections::BTreeMap;

use cove_state::Limits;

use crate::HostError;

/// What to create.
#[derive(Debug, Clone)]
pub struct CreateSpec {
    /// Image name.
    pub image: String,
    /// Optional unique name.
    pub name: Option<String>,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Writable disk in MiB.
    pub disk_mib: u32,
    /// Restore this snapshot (id or name) instead of booting.
    pub from_snapshot: Option<String>,
    /// Restore the image's template when one fits.
    pub use_template: bool,
    /// Stop the sandbox this many seconds after it was created.
    pub ttl_secs: Option<u64>,
    /// Apply `on_idle` after this many seconds without activity.
    pub idle_timeout_secs: Option<u64>,
    /// `pause` or `hibernate` (default `pause`); the next request resumes it.
    pub on_idle: Option<String>,
    /// The engine (`auto`, `kvm`, `qemu`); none: the host's default (`COVE_ENGINE`, else
    /// `auto`).
    pub engine: Option<String>,
    /// What the owner may hold at most (coved's quota of the tenant), checked when the
    /// sandbox is recorded; none: no limit.
    pub limits: Option<Limits>,
    /// Owner recorded on the sandbox.
    pub owner: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Environment for every exec.
    pub env: BTreeMap<String, String>,
}

impl Default for CreateSpec {
    fn default() -> Self {
        Self {
            image: "busybox".into(),
            name: None,
            cpus: 1,
            memory_mib: 512,
            disk_mib: 2048,
            from_snapshot: None,
            use_template: true,
            ttl_secs: None,
            idle_timeout_secs: None,
            on_idle: None,
            engine: None,
            limits: None,
            owner: None,
            labels: BTreeMap::new(),
            env: BTreeMap::new(),
        }
    }
}

/// Checks a create's settings (resources and policies) without creating anything.
pub fn validate(spec: &CreateSpec) -> Result<(), HostError> {
    let bad = |what, value: String, allowed| HostError::InvalidSetting {
        what,
        value,
        allowed,
    };
    if !(1..=64).contains(&spec.cpus) {
        return Err(bad("cpus", spec.cpus.to_string(), "1 to 64"));
    }
    if !(128..=262_144).contains(&spec.memory_mib) {
        return Err(bad(
            "memory",
            format!("{} MiB", spec.memory_mib),
            "128 to 262144 MiB",
        ));
    }
    if !(64..=1_048_576).contains(&spec.disk_mib) {
        return Err(bad(
            "disk",
            format!("{} MiB", spec.disk_mib),
            "64 to 1048576 MiB",
        ));
    }
    if let Some(p) = &spec.on_idle
        && !matches!(p.as_str(), "pause" | "hibernate")
    {
        return Err(bad("on-idle", p.clone(), "pause or hibernate"));
    }
    if spec.on_idle.is_some() && spec.idle_timeout_secs.is_none() {
        return Err(bad(
            "on-idle",
            "without --idle-timeout".into(),
            "with --idle-timeout SECS",
        ));
    }
    if spec.ttl_secs == Some(0) || spec.idle_timeout_secs == Some(0) {
        return Err(bad("timeout", "0".into(), "at least 1 second"));
    }
    if let Some(n) = &spec.name {
        validate_name(n)?;
    }
    Ok(())
}

/// A sandbox or snapshot name: 1 to 63 of `[A-Za-z0-9_.-]`, not starting with `-` or `.`, and
/// not 12 hex digits (which reads as an id).
pub fn validate_name(n: &str) -> Result<(), HostError> {
    let ok = !n.is_empty()
        && n.len() <= 63
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !n.starts_with(['-', '.'])
        && !(n.len() == 12 && n.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(HostError::InvalidSetting {
            what: "name",
            value: format!("{n:?}"),
            allowed: "1 to 63 of [A-Za-z0-9_.-], not starting with - or ., not 12 hex digits",
        })
    }
}
