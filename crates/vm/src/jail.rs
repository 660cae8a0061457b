//! cove-vm's side of the jail: what the sandbox's config says the jail must show, and entering
//! it (`cove_jail::enter`) before anything else runs.

use cove_model::VmEngine;
use std::path::{Path, PathBuf};

use anyhow::Context;
use cove_jail::enter::{Bind, Entered};
use cove_model::SandboxDir;
use cove_protocol::control::VmConfig;

/// What the engine reads or writes, each at its host path: the sandbox's directory and RAM
/// directory (written), the kernel, initramfs, image disk and a snapshot restored from (read).
/// The engine's program and libraries come from the config's engine tree; nothing else of
/// the host is shown.
pub fn binds(cfg: &VmConfig, dir: &Path) -> Vec<Bind> {
    let mut out = vec![
        Bind {
            path: dir.to_path_buf(),
            writable: true,
        },
        Bind {
            path: PathBuf::from(&cfg.kernel),
            writable: false,
        },
        Bind {
            path: PathBuf::from(&cfg.initramfs),
            writable: false,
        },
    ];
    if cfg.engine == VmEngine::Qemu {
        out.push(Bind {
            path: SandboxDir::guest_ram_dir(&cfg.id),
            writable: true,
        });
    }
    for d in &cfg.disks {
        out.push(Bind {
            path: PathBuf::from(&d.path),
            writable: !d.read_only,
        });
    }
    if let Some(r) = &cfg.restore {
        out.push(Bind {
            path: PathBuf::from(r),
            writable: false,
        });
    }
    // What lies in the sandbox's directory is shown through it.
    out.retain(|b| b.path == dir || !b.path.starts_with(dir));
    out
}

/// Enters the jail `DIR/vm.json` asks for (none: stays as it is); returns this process's pid
/// on the host. Must run before any thread starts.
pub fn enter(dir: &Path, report_fd: Option<i32>) -> anyhow::Result<u32> {
    let cfg: VmConfig = serde_json::from_slice(
        &std::fs::read(dir.join("vm.json"))
            .with_context(|| format!("reading {}/vm.json", dir.display()))?,
    )
    .context("parsing vm.json")?;
    // SAFETY: the host passes this descriptor for this process alone; it is owned from here.
    let report = report_fd
        .filter(|fd| cove_jail::enter::fd_open(*fd))
        .map(|fd| unsafe { cove_jail::enter::take_fd(fd) });
    let netns = cfg.net.as_ref().map(|n| PathBuf::from(&n.netns));
    let Some(jail) = &cfg.jail else {
        if let Some(p) = &netns {
            cove_jail::enter::join_netns(p)?;
        }
        if cfg.engine == VmEngine::Qemu {
            std::fs::create_dir_all(SandboxDir::guest_ram_dir(&cfg.id))
                .context("making the guest RAM directory")?;
        }
        let me = std::process::id();
        if let Some(r) = report {
            let _ = nix::unistd::write(&r, &me.to_ne_bytes());
        }
        return Ok(me);
    };
    match cove_jail::enter::enter(jail, &binds(&cfg, dir), netns.as_deref(), report)? {
        Entered::Jailed { host_pid } => Ok(host_pid),
    }
}
