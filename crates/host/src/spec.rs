//! What a create asks for, and the checks on it.

use std::collections::BTreeMap;

use cove_model::{Engine, OnExpire, OnIdle, limits};
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
    /// What idling for `idle_timeout_secs` does (none: pause); the next request resumes it.
    pub on_idle: Option<OnIdle>,
    /// What the end of `ttl_secs` does (none: stop).
    pub on_expire: Option<OnExpire>,
    /// The engine (`auto`, `kvm`, `qemu`); none: the host's default (`COVE_ENGINE`, else
    /// `auto`).
    pub engine: Option<Engine>,
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

/// Checks a create's settings (resources and policies) without creating anything, against
/// [`cove_model::limits`] (which the OpenAPI document publishes).
pub fn validate(spec: &CreateSpec) -> Result<(), HostError> {
    let bad = |what, value: String, allowed: String| HostError::InvalidSetting {
        what,
        value,
        allowed,
    };
    // Bounded by the host too: more vCPUs than it has CPUs, or more memory than it has, only
    // makes a guest that crawls or a host that swaps.
    let host_cpus = u64::try_from(cove_jail::cgroup::online_cpus()).unwrap_or(u64::MAX);
    if !limits::CPUS.contains(spec.cpus) || u64::from(spec.cpus) > host_cpus {
        return Err(bad(
            "cpus",
            spec.cpus.to_string(),
            format!(
                "{}, and at most the host's {host_cpus} CPUs",
                limits::CPUS.describe()
            ),
        ));
    }
    let host_mib = cove_jail::cgroup::total_memory() >> 20;
    if !limits::MEMORY_MIB.contains(spec.memory_mib) || u64::from(spec.memory_mib) > host_mib {
        return Err(bad(
            "memory",
            format!("{} MiB", spec.memory_mib),
            format!(
                "{} MiB, and at most the host's {host_mib} MiB",
                limits::MEMORY_MIB.describe()
            ),
        ));
    }
    if !limits::DISK_MIB.contains(spec.disk_mib) {
        return Err(bad(
            "disk",
            format!("{} MiB", spec.disk_mib),
            format!("{} MiB", limits::DISK_MIB.describe()),
        ));
    }
    if spec.on_expire.is_some() && spec.ttl_secs.is_none() {
        return Err(bad(
            "on-expire",
            "without --ttl".into(),
            "with --ttl SECS".into(),
        ));
    }
    if spec.on_idle.is_some() && spec.idle_timeout_secs.is_none() {
        return Err(bad(
            "on-idle",
            "without --idle-timeout".into(),
            "with --idle-timeout SECS".into(),
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
    if spec.labels.len() > limits::MAX_LABELS {
        return Err(bad(
            "labels",
            format!("{} of them", spec.labels.len()),
            format!("at most {}", limits::MAX_LABELS),
        ));
    }
    if let Some(n) = &spec.name {
        validate_name(n)?;
    }
    Ok(())
}

/// Longest time to live or idle timeout: ten years (and no overflow adding it to a clock).
pub const MAX_TIMEOUT_SECS: u64 = limits::TIMEOUT_SECS.max;

/// A time to live or idle timeout ([`limits::TIMEOUT_SECS`]).
pub fn validate_timeout(secs: u64) -> Result<(), HostError> {
    if limits::TIMEOUT_SECS.contains(secs) {
        Ok(())
    } else {
        Err(HostError::InvalidSetting {
            what: "timeout",
            value: format!("{secs} s"),
            allowed: format!("{} seconds (10 years)", limits::TIMEOUT_SECS.describe()),
        })
    }
}

/// A label: a key of [`limits::LABEL_KEY`] (so `k=v,k2=v2` filters can name it), a value of
/// [`limits::LABEL_VALUE`].
pub fn validate_label(k: &str, v: &str) -> Result<(), HostError> {
    if limits::LABEL_KEY.is_match(k) && limits::LABEL_VALUE.is_match(v) {
        Ok(())
    } else {
        Err(HostError::InvalidSetting {
            what: "label",
            value: format!("{k:?}={v:?}"),
            allowed: format!(
                "keys {}; values {}",
                limits::LABEL_KEY.allowed,
                limits::LABEL_VALUE.allowed
            ),
        })
    }
}

/// A sandbox or snapshot name ([`limits::name_ok`]).
pub fn validate_name(n: &str) -> Result<(), HostError> {
    if limits::name_ok(n) {
        Ok(())
    } else {
        Err(HostError::InvalidSetting {
            what: "name",
            value: format!("{n:?}"),
            allowed: limits::NAME.allowed.into(),
        })
    }
}

/// A fork's clone count ([`limits::FORK_COUNT`]) and their time to live.
pub fn validate_fork(count: u32, ttl_secs: Option<u64>) -> Result<(), HostError> {
    if !limits::FORK_COUNT.contains(count) {
        return Err(HostError::InvalidSetting {
            what: "count",
            value: count.to_string(),
            allowed: limits::FORK_COUNT.describe(),
        });
    }
    ttl_secs.map_or(Ok(()), validate_timeout)
}
