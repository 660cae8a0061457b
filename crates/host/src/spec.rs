//! What a create asks for, and the checks on it.

use std::collections::BTreeMap;

use cove_model::OnExpire;
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
    /// What the end of `ttl_secs` does (none: stop).
    pub on_expire: Option<OnExpire>,
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
    /// Its network; none: the host's default (`egress` under the operator's defaults where
    /// the host makes networks, else `none`).
    pub network: Option<cove_model::NetworkPolicy>,
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
            on_expire: None,
            engine: None,
            limits: None,
            owner: None,
            labels: BTreeMap::new(),
            env: BTreeMap::new(),
            network: None,
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
    // Bounded by the host too: more vCPUs than it has CPUs, or more memory than it has, only
    // makes a guest that crawls or a host that swaps.
    let host_cpus = u32::try_from(cove_jail::cgroup::online_cpus()).unwrap_or(u32::MAX);
    if !(1..=MAX_CPUS.min(host_cpus)).contains(&spec.cpus) {
        return Err(bad(
            "cpus",
            spec.cpus.to_string(),
            "1 to 32, and at most the host's CPUs",
        ));
    }
    let host_mib = u32::try_from(cove_jail::cgroup::total_memory() >> 20).unwrap_or(u32::MAX);
    if !(128..=MAX_MEMORY_MIB.min(host_mib)).contains(&spec.memory_mib) {
        return Err(bad(
            "memory",
            format!("{} MiB", spec.memory_mib),
            "128 MiB to 256 GiB, and at most the host's memory",
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
    if spec.on_expire.is_some() && spec.ttl_secs.is_none() {
        return Err(bad("on-expire", "without --ttl".into(), "with --ttl SECS"));
    }
    if spec.on_idle.is_some() && spec.idle_timeout_secs.is_none() {
        return Err(bad(
            "on-idle",
            "without --idle-timeout".into(),
            "with --idle-timeout SECS",
        ));
    }
    for t in [spec.ttl_secs, spec.idle_timeout_secs]
        .into_iter()
        .flatten()
    {
        validate_timeout(t)?;
    }
    for (k, v) in &spec.labels {
        validate_label(k, v)?;
    }
    if spec.labels.len() > 64 {
        return Err(bad(
            "labels",
            format!("{} of them", spec.labels.len()),
            "at most 64",
        ));
    }
    if let Some(n) = &spec.name {
        validate_name(n)?;
    }
    Ok(())
}

/// Most vCPUs a sandbox may have.
pub const MAX_CPUS: u32 = 32;
/// Most memory a sandbox may have, MiB (256 GiB).
pub const MAX_MEMORY_MIB: u32 = 262_144;
/// Longest time to live or idle timeout: ten years (and no overflow adding it to a clock).
pub const MAX_TIMEOUT_SECS: u64 = 315_360_000;

/// A time to live or idle timeout: 1 second to [`MAX_TIMEOUT_SECS`].
pub fn validate_timeout(secs: u64) -> Result<(), HostError> {
    if (1..=MAX_TIMEOUT_SECS).contains(&secs) {
        Ok(())
    } else {
        Err(HostError::InvalidSetting {
            what: "timeout",
            value: format!("{secs} s"),
            allowed: "1 second to 10 years (315360000 s)",
        })
    }
}

/// A label: a key of 1 to 63 of `[A-Za-z0-9._/-]` (so `k=v,k2=v2` filters can name it), a
/// value of at most 256 bytes with no control character and no `,`.
pub fn validate_label(k: &str, v: &str) -> Result<(), HostError> {
    let key_ok = (1..=63).contains(&k.len())
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b));
    let value_ok = v.len() <= 256 && !v.chars().any(|c| c.is_control() || c == ',');
    if key_ok && value_ok {
        Ok(())
    } else {
        Err(HostError::InvalidSetting {
            what: "label",
            value: format!("{k:?}={v:?}"),
            allowed: "keys 1 to 63 of [A-Za-z0-9._/-]; values up to 256 bytes, no control characters or commas",
        })
    }
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
