//! Users and groups from the image's `/etc/passwd` and `/etc/group`.
//!
//! The agent is a static binary without NSS, so it reads the files itself.

use std::path::Path;

/// Who a process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Name, when the user is in /etc/passwd.
    pub name: Option<String>,
    /// Home directory.
    pub home: String,
}

impl Identity {
    /// Root.
    pub fn root() -> Self {
        Self {
            uid: 0,
            gid: 0,
            groups: vec![],
            name: Some("root".into()),
            home: "/root".into(),
        }
    }
}

use cove_protocol::passwd::{self, Entry as PasswdEntry};

fn passwd(root: &Path) -> Vec<PasswdEntry> {
    passwd::parse(&std::fs::read_to_string(root.join("etc/passwd")).unwrap_or_default())
}

fn supplementary_groups(root: &Path, name: &str, primary: u32) -> Vec<u32> {
    let text = std::fs::read_to_string(root.join("etc/group")).unwrap_or_default();
    let mut out = vec![primary];
    for l in text.lines() {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 {
            continue;
        }
        if f[3].split(',').any(|m| m == name)
            && let Ok(gid) = f[2].parse()
            && !out.contains(&gid)
        {
            out.push(gid);
        }
    }
    out
}

/// Resolves `name`, `uid` or `uid:gid` against the files under `root`.
/// Returns `None` when a name is unknown.
pub fn resolve(root: &Path, spec: &str) -> Option<Identity> {
    let entries = passwd(root);
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entry = passwd::find(&entries, user);
    let uid = match entry {
        Some(e) => e.uid,
        None => user.parse().ok()?,
    };
    let gid = match group {
        Some(g) => g.parse().ok().or_else(|| group_gid(root, g))?,
        None => entry.map_or(uid, |e| e.gid),
    };
    let groups = match (entry, group) {
        (Some(e), None) => supplementary_groups(root, &e.name, gid),
        _ => vec![gid],
    };
    Some(Identity {
        uid,
        gid,
        groups,
        name: entry.map(|e| e.name.clone()),
        home: entry.map_or_else(|| "/".to_string(), |e| e.home.clone()),
    })
}

/// User and group names by id, from `/etc/passwd` and `/etc/group` under `root`.
#[derive(Debug, Default)]
pub struct Names {
    users: std::collections::HashMap<u32, String>,
    groups: std::collections::HashMap<u32, String>,
}

impl Names {
    /// Reads both files (missing ones name nobody).
    pub fn load(root: &Path) -> Self {
        let mut n = Self::default();
        for e in passwd(root) {
            n.users.entry(e.uid).or_insert(e.name);
        }
        let text = std::fs::read_to_string(root.join("etc/group")).unwrap_or_default();
        for l in text.lines() {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() >= 3
                && let Ok(gid) = f[2].parse()
            {
                n.groups.entry(gid).or_insert_with(|| f[0].to_string());
            }
        }
        n
    }

    /// The name of user `uid`.
    pub fn user(&self, uid: u32) -> Option<String> {
        self.users.get(&uid).cloned()
    }

    /// The name of group `gid`.
    pub fn group(&self, gid: u32) -> Option<String> {
        self.groups.get(&gid).cloned()
    }
}

fn group_gid(root: &Path, name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(root.join("etc/group")).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[0] == name).then(|| f[2].parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_names_ids_and_groups() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\nbad line\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nalice:x:1000:\nwheel:x:10:alice,bob\nstaff:x:50:\n",
        )
        .unwrap();
        let a = resolve(dir.path(), "alice").unwrap();
        assert_eq!((a.uid, a.gid, a.home.as_str()), (1000, 1000, "/home/alice"));
        assert_eq!(a.groups, vec![1000, 10]);
        assert_eq!(
            resolve(dir.path(), "1000").unwrap().name.as_deref(),
            Some("alice")
        );
        let n = resolve(dir.path(), "4242:77").unwrap();
        assert_eq!((n.uid, n.gid, n.name), (4242, 77, None));
        assert_eq!(resolve(dir.path(), "alice:staff").unwrap().gid, 50);
        assert!(resolve(dir.path(), "mallory").is_none());
        assert!(resolve(dir.path(), "alice:nogroup").is_none());
    }
}
