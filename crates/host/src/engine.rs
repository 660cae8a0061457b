//! Which engine runs a sandbox on this host, and why.
//!
//! `auto` picks the `kvm` engine (Cove's own VMM) only where `/dev/kvm` is backed by hardware
//! virtualisation (the CPU flags show `vmx` or `svm`). A nested, software-emulated KVM (such as
//! `kvm_pvm`) is not: an unmodified Linux guest crawls through its instruction emulator and
//! dies on instructions it lacks. There the `qemu` engine runs the guest under TCG. Either can
//! be forced (`COVE_ENGINE=kvm|qemu`); forcing `kvm` on an emulated KVM is allowed (the reason
//! says what to expect), for purpose-built guests.

use std::path::Path;

use cove_model::{Accel, Engine, VmEngine};

/// Why no engine can run.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The requested engine does not exist in this build.
    #[error("engine {0:?} is not available in this build; use `auto`, `kvm` or `qemu`")]
    Unavailable(String),
    /// The kvm engine needs /dev/kvm.
    #[error("the kvm engine needs /dev/kvm, which this host lacks; use `auto` or `qemu`")]
    NoKvm,
    /// QEMU is missing.
    #[error("qemu-system-x86_64 not found; run `make setup` (Debian package qemu-system-x86)")]
    NoQemu,
}

/// The engine chosen for new sandboxes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EngineChoice {
    /// `kvm` or `qemu`.
    pub engine: VmEngine,
    /// `tcg` or `kvm`.
    pub accel: Accel,
    /// Why.
    pub reason: String,
    /// QEMU binary (empty for the kvm engine when QEMU is not installed).
    pub qemu: String,
}

/// What this host offers for virtualisation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HostVirt {
    /// `/dev/kvm` exists.
    pub dev_kvm: bool,
    /// The CPU flags show vmx or svm.
    pub hw_virt: bool,
    /// The nested paravirtual KVM module is loaded.
    pub kvm_pvm: bool,
}

/// What this host offers, read once per process: every create asks (for the engine and for
/// the template that fits it), and the CPU flags of a large host are a long read.
pub fn probe() -> HostVirt {
    static PROBED: std::sync::OnceLock<HostVirt> = std::sync::OnceLock::new();
    PROBED.get_or_init(probe_now).clone()
}

fn probe_now() -> HostVirt {
    let flags = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .unwrap_or_default();
    HostVirt {
        dev_kvm: Path::new("/dev/kvm").exists(),
        hw_virt: flags.iter().any(|f| f == "vmx" || f == "svm"),
        kvm_pvm: Path::new("/sys/module/kvm_pvm").exists(),
    }
}

/// Decides from what the host offers and what was asked (`COVE_ENGINE` when `requested` is None;
/// a `COVE_ENGINE` that names no engine is refused, not taken for `auto`).
pub fn choose(requested: Option<Engine>) -> Result<EngineChoice, EngineError> {
    let requested = match requested {
        Some(e) => e,
        None => match std::env::var("COVE_ENGINE") {
            Ok(v) if !v.is_empty() => v
                .parse()
                .map_err(|_| EngineError::Unavailable(format!("COVE_ENGINE={v}")))?,
            _ => Engine::Auto,
        },
    };
    decide(requested, &probe(), find_qemu())
}

fn decide(
    requested: Engine,
    v: &HostVirt,
    qemu: Option<String>,
) -> Result<EngineChoice, EngineError> {
    let hw = v.dev_kvm && v.hw_virt;
    let why_accel = if hw {
        "/dev/kvm is backed by hardware virtualisation (vmx/svm)".to_string()
    } else if v.dev_kvm {
        let nested = if v.kvm_pvm {
            " (kvm_pvm: nested, software-emulated)"
        } else {
            ""
        };
        format!(
            "/dev/kvm exists{nested} but the CPU shows no vmx/svm, so KVM would emulate every guest instruction"
        )
    } else {
        "no /dev/kvm".to_string()
    };
    let kvm = |reason: String| EngineChoice {
        engine: VmEngine::Kvm,
        accel: Accel::Kvm,
        reason,
        qemu: qemu.clone().unwrap_or_default(),
    };
    let qemu_engine = |reason: String| -> Result<EngineChoice, EngineError> {
        Ok(EngineChoice {
            engine: VmEngine::Qemu,
            accel: if hw { Accel::Kvm } else { Accel::Tcg },
            reason,
            qemu: qemu.clone().ok_or(EngineError::NoQemu)?,
        })
    };
    match requested {
        Engine::Auto if hw => Ok(kvm(format!("auto chose kvm (Cove's own VMM): {why_accel}"))),
        Engine::Auto => qemu_engine(format!("auto chose qemu with TCG: {why_accel}")),
        Engine::Qemu => qemu_engine(format!("qemu requested: {why_accel}")),
        Engine::Kvm if !v.dev_kvm => Err(EngineError::NoKvm),
        Engine::Kvm if hw => Ok(kvm(format!("kvm requested: {why_accel}"))),
        Engine::Kvm => Ok(kvm(format!(
            "kvm requested: {why_accel}: only purpose-built guests run here; Linux will not boot"
        ))),
    }
}

fn find_qemu() -> Option<String> {
    if let Ok(p) = std::env::var("COVE_QEMU") {
        return Some(p);
    }
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("qemu-system-x86_64"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .chain([Path::new("/usr/bin/qemu-system-x86_64").to_path_buf()])
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

/// The host TSC frequency in kHz, which a TCG guest needs on its command line. Measured once per
/// host boot (rdtsc against CLOCK_MONOTONIC_RAW over 100 ms) and cached in the Cove home.
pub fn tsc_khz(home: &Path) -> Option<u64> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let cache = home.join("tsc_khz");
    if let Ok(s) = std::fs::read_to_string(&cache)
        && let Some((id, khz)) = s.trim().split_once(' ')
        && id == boot_id.trim()
        && let Ok(khz) = khz.parse()
    {
        return Some(khz);
    }
    let khz = measure_tsc_khz()?;
    let tmp = cache.with_extension("tmp");
    if std::fs::write(&tmp, format!("{} {khz}\n", boot_id.trim())).is_ok() {
        let _ = std::fs::rename(&tmp, &cache);
    }
    Some(khz)
}

#[cfg(target_arch = "x86_64")]
fn measure_tsc_khz() -> Option<u64> {
    if let Ok(s) = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/tsc_freq_khz")
        && let Ok(k) = s.trim().parse()
    {
        return Some(k);
    }
    let clock = || nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_RAW).ok();
    let ns = |t: nix::sys::time::TimeSpec| {
        i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec())
    };
    // SAFETY: rdtsc has no preconditions on x86_64.
    let c0 = unsafe { core::arch::x86_64::_rdtsc() };
    let t0 = clock()?;
    std::thread::sleep(std::time::Duration::from_millis(100));
    // SAFETY: as above.
    let c1 = unsafe { core::arch::x86_64::_rdtsc() };
    let t1 = clock()?;
    let dt = ns(t1) - ns(t0);
    if dt <= 0 {
        return None;
    }
    let khz = i128::from(c1.wrapping_sub(c0)) * 1_000_000 / dt;
    u64::try_from(khz).ok().filter(|k| *k > 0)
}

#[cfg(not(target_arch = "x86_64"))]
fn measure_tsc_khz() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(dev_kvm: bool, hw_virt: bool, kvm_pvm: bool) -> HostVirt {
        HostVirt {
            dev_kvm,
            hw_virt,
            kvm_pvm,
        }
    }

    #[test]
    fn auto_never_uses_an_emulated_kvm() {
        let q = || Some("q".to_string());
        let c = decide(Engine::Auto, &v(true, false, true), q()).unwrap();
        assert_eq!((c.engine, c.accel), (VmEngine::Qemu, Accel::Tcg));
        assert!(c.reason.contains("kvm_pvm"), "{}", c.reason);
        let c = decide(Engine::Auto, &v(true, true, false), q()).unwrap();
        assert_eq!((c.engine, c.accel), (VmEngine::Kvm, Accel::Kvm));
        let c = decide(Engine::Auto, &v(true, true, false), None).unwrap();
        assert_eq!(c.engine, VmEngine::Kvm, "the kvm engine needs no QEMU");
        let c = decide(Engine::Qemu, &v(true, true, false), q()).unwrap();
        assert_eq!((c.engine, c.accel), (VmEngine::Qemu, Accel::Kvm));
        let c = decide(Engine::Qemu, &v(false, false, false), q()).unwrap();
        assert_eq!(c.accel, Accel::Tcg);
        assert!(matches!(
            decide(Engine::Qemu, &v(false, false, false), None),
            Err(EngineError::NoQemu)
        ));
        let c = decide(Engine::Kvm, &v(true, false, true), q()).unwrap();
        assert_eq!(c.engine, VmEngine::Kvm);
        assert!(c.reason.contains("Linux will not boot"), "{}", c.reason);
        assert!(matches!(
            decide(Engine::Kvm, &v(false, false, false), q()),
            Err(EngineError::NoKvm)
        ));
        assert!("xen".parse::<Engine>().is_err());
    }

    #[test]
    fn this_host_is_probed_consistently() {
        // On the project's machines /dev/kvm is nested and emulated: auto must pick TCG there.
        let p = probe();
        let c = decide(Engine::Auto, &p, Some("q".into())).unwrap();
        assert_eq!(c.engine == VmEngine::Kvm, p.dev_kvm && p.hw_virt);
        if !p.hw_virt {
            assert_eq!((c.engine, c.accel), (VmEngine::Qemu, Accel::Tcg));
        }
    }

    #[test]
    fn tsc_is_measured_and_cached() {
        let d = tempfile::tempdir().unwrap();
        let a = tsc_khz(d.path()).expect("a TSC on x86_64");
        assert!(a > 100_000, "{a} kHz");
        assert!(d.path().join("tsc_khz").is_file());
        assert_eq!(tsc_khz(d.path()), Some(a));
    }
}
