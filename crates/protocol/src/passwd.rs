//! A guest's `/etc/passwd`, read the same way by the agent (whom a process runs as) and by the
//! host (where a user's relative paths start, for the E2B surface): one parser for both.

/// One user of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: String,
}

/// The well-formed lines of `text` (seven fields, numeric ids); the others are skipped.
pub fn parse(text: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(Entry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

/// The user `user` names: by name first, else by a numeric uid.
pub fn find<'a>(entries: &'a [Entry], user: &str) -> Option<&'a Entry> {
    entries.iter().find(|e| e.name == user).or_else(|| {
        let uid: u32 = user.parse().ok()?;
        entries.iter().find(|e| e.uid == uid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_found_by_name_then_uid_and_bad_lines_skipped() {
        let e = parse(
            "root:x:0:0:root:/root:/bin/sh\nbad line\nsvc:x:999:998::/srv/svc:/bin/false\n\
             1000:x:1001:1001::/home/numeric:/bin/sh\nnoid:x:abc:1::/x:/bin/sh\n",
        );
        assert_eq!(e.len(), 3);
        assert_eq!(find(&e, "svc").map(|e| e.home.as_str()), Some("/srv/svc"));
        assert_eq!(find(&e, "0").map(|e| e.name.as_str()), Some("root"));
        // A name that looks like a number is a name first.
        assert_eq!(find(&e, "1000").map(|e| e.uid), Some(1001));
        assert_eq!(find(&e, "998"), None);
        assert_eq!(find(&e, "mallory"), None);
    }
}
