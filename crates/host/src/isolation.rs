//! What this host offers to isolate a sandbox's supervisor and VMM beyond the VM itself
//! (`cove info`): cgroups (v1, v2, or both), the namespaces the kernel has, user namespaces,
//! and seccomp with its actions. The jail (namespaces, cgroups, seccomp around each cove-vm) is
//! built on what this finds.

use std::path::Path;

pub use cove_model::{CgroupMode, Isolation};

/// Probes this host (once per process: it does not change while coved runs).
pub fn probe() -> Isolation {
    static PROBED: std::sync::OnceLock<Isolation> = std::sync::OnceLock::new();
    PROBED
        .get_or_init(|| probe_at(Path::new("/sys/fs/cgroup"), Path::new("/proc")))
        .clone()
}

fn words(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// [`probe`] with the roots given (tests point it at a made-up tree).
fn probe_at(cgroup: &Path, proc: &Path) -> Isolation {
    let (cgroups, mut controllers) = if cgroup.join("cgroup.controllers").is_file() {
        (CgroupMode::V2, words(&cgroup.join("cgroup.controllers")))
    } else {
        // v1: a hierarchy per controller listed enabled, and attached (hierarchy id > 0), in
        // `/proc/cgroups`.
        let v1: Vec<String> = std::fs::read_to_string(proc.join("cgroups"))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 4 && f[1] != "0" && f[3] == "1").then(|| f[0].to_string())
            })
            .collect();
        let mode = match (
            v1.is_empty(),
            cgroup.join("unified/cgroup.controllers").is_file(),
        ) {
            (false, true) => CgroupMode::Hybrid,
            (false, false) => CgroupMode::V1,
            (true, _) => CgroupMode::None,
        };
        (mode, v1)
    };
    controllers.sort();
    let mut namespaces: Vec<String> = std::fs::read_dir(proc.join("self/ns"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with("_for_children"))
        .collect();
    namespaces.sort();
    let user_namespaces = std::fs::read_to_string(proc.join("sys/user/max_user_namespaces"))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .is_some_and(|n| n > 0);
    let seccomp_actions = words(&proc.join("sys/kernel/seccomp/actions_avail"));
    let seccomp = !seccomp_actions.is_empty()
        || std::fs::read_to_string(proc.join("self/status"))
            .is_ok_and(|s| s.lines().any(|l| l.starts_with("Seccomp:")));
    Isolation {
        cgroups,
        controllers,
        namespaces,
        user_namespaces,
        seccomp,
        seccomp_actions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (p, content) in files {
            let p = d.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        d
    }

    const V1_CGROUPS: &str = "#subsys_name\thierarchy\tnum_cgroups\tenabled\n\
        cpu\t1\t1\t1\nmemory\t4\t17\t1\nnet_cls\t0\t1\t1\npids\t8\t1\t1\nhugetlb\t9\t1\t0\n";

    #[test]
    fn each_cgroup_layout_is_told_apart() {
        let proc = tree(&[("cgroups", V1_CGROUPS)]);
        let v2 = tree(&[("cgroup.controllers", "cpuset cpu io memory pids\n")]);
        let i = probe_at(v2.path(), proc.path());
        assert_eq!(i.cgroups, CgroupMode::V2);
        assert_eq!(i.controllers, ["cpu", "cpuset", "io", "memory", "pids"]);
        // v1 controllers: attached (hierarchy > 0) and enabled only.
        let hybrid = tree(&[("unified/cgroup.controllers", "")]);
        let i = probe_at(hybrid.path(), proc.path());
        assert_eq!(i.cgroups, CgroupMode::Hybrid);
        assert_eq!(i.controllers, ["cpu", "memory", "pids"]);
        let v1 = tree(&[("cpu/tasks", "")]);
        assert_eq!(probe_at(v1.path(), proc.path()).cgroups, CgroupMode::V1);
        let none = tree(&[]);
        let i = probe_at(none.path(), none.path());
        assert_eq!(i.cgroups, CgroupMode::None);
        assert!(i.controllers.is_empty() && !i.seccomp && !i.user_namespaces);
    }

    #[test]
    fn namespaces_user_namespaces_and_seccomp() {
        let proc = tree(&[
            ("self/ns/pid", ""),
            ("self/ns/pid_for_children", ""),
            ("self/ns/net", ""),
            ("sys/user/max_user_namespaces", "0\n"),
            (
                "sys/kernel/seccomp/actions_avail",
                "kill_process errno allow\n",
            ),
        ]);
        let i = probe_at(Path::new("/nonexistent"), proc.path());
        assert_eq!(i.namespaces, ["net", "pid"]);
        assert!(!i.user_namespaces, "max_user_namespaces 0 forbids them");
        assert!(i.seccomp);
        assert_eq!(i.seccomp_actions, ["kill_process", "errno", "allow"]);
    }
}
