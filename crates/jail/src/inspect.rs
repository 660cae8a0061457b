//! A jailed process as the host sees it, from `/proc`: what `cove inspect` shows and what the
//! tests check (user, `no_new_privs`, seccomp mode, capabilities, namespaces, root).

use std::os::unix::fs::MetadataExt;

/// One process of a sandbox's jail.
pub type ProcessJail = cove_model::JailProcess;

/// The namespace kinds a jail has its own of.
pub const NAMESPACES: [&str; 6] = ["mnt", "pid", "net", "ipc", "uts", "cgroup"];

/// Reads process `pid`; none when it is gone.
pub fn process(pid: u32) -> Option<ProcessJail> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(str::trim)
            .unwrap_or("")
    };
    let host = |ns: &str| std::fs::read_link(format!("/proc/self/ns/{ns}")).ok();
    let own_namespaces = NAMESPACES
        .iter()
        .filter(|ns| {
            let mine = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).ok();
            mine.is_some() && mine != host(ns)
        })
        .map(|s| s.to_string())
        .collect();
    let root_id = |p: &str| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    Some(ProcessJail {
        pid,
        name: field("Name:").to_string(),
        uids: field("Uid:")
            .split_whitespace()
            .filter_map(|u| u.parse().ok())
            .collect(),
        no_new_privs: field("NoNewPrivs:") == "1",
        seccomp: field("Seccomp:").parse().unwrap_or(0),
        cap_eff: u64::from_str_radix(field("CapEff:"), 16).unwrap_or(u64::MAX),
        own_namespaces,
        own_root: root_id(&format!("/proc/{pid}/root/")) != root_id("/proc/self/root/"),
    })
}

/// The children of `pid` (the engine under cove-vm), found by their parent pid.
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // The parent pid is the second field after the parenthesised name.
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 2..].split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_found_and_read_as_it_is() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(children(std::process::id()).contains(&pid));
        let p = process(pid).unwrap();
        // SAFETY: getuid has no preconditions.
        let uid = unsafe { libc::getuid() };
        assert_eq!(p.name, "sleep");
        assert_eq!(p.uids, vec![uid; 4]);
        assert_eq!((p.seccomp, p.no_new_privs), (0, false));
        // Not jailed: it shares coved's (here the test's) namespaces and root.
        assert!(p.own_namespaces.is_empty() && !p.own_root, "{p:?}");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(process(pid).is_none(), "a reaped process is gone");
    }
}
