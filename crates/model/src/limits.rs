//! The limits on what a request may ask for, in one place: the checks (cove-host, coved) call
//! these, and coved writes the same values into its OpenAPI document (`cove_api::rules` says
//! which field each applies to), so the documented and the enforced limits cannot drift.

use std::sync::OnceLock;

/// An inclusive range of whole numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Smallest allowed.
    pub min: u64,
    /// Largest allowed.
    pub max: u64,
}

impl Range {
    /// `min..=max`.
    pub const fn new(min: u64, max: u64) -> Self {
        Self { min, max }
    }

    /// Whether `v` is in range (a negative or oversized `v` is not).
    pub fn contains<T: TryInto<u64>>(self, v: T) -> bool {
        v.try_into()
            .is_ok_and(|v: u64| (self.min..=self.max).contains(&v))
    }

    /// `"1 to 32"`.
    pub fn describe(self) -> String {
        format!("{} to {}", self.min, self.max)
    }
}

/// A sandbox's vCPUs (and at most the host's CPUs).
pub const CPUS: Range = Range::new(1, 32);
/// A sandbox's memory, MiB (and at most the host's memory).
pub const MEMORY_MIB: Range = Range::new(128, 262_144);
/// A sandbox's writable disk, MiB.
pub const DISK_MIB: Range = Range::new(64, 1_048_576);
/// A time to live, idle timeout or expiry: one second to ten years (and no overflow adding it
/// to a clock).
pub const TIMEOUT_SECS: Range = Range::new(1, 315_360_000);
/// Longest `timeout_secs` of a command, seconds (more than 0, fractions allowed).
pub const EXEC_TIMEOUT_SECS_MAX: f64 = 86_400.0;
/// Clones of one fork.
pub const FORK_COUNT: Range = Range::new(1, 64);
/// Items of one page of a list.
pub const PAGE_LIMIT: Range = Range::new(1, 1000);
/// A signal sent to a command or process.
pub const SIGNAL: Range = Range::new(1, 64);
/// A TCP port of a guest.
pub const PORT: Range = Range::new(1, 65_535);
/// How long a signed port URL works, seconds (up to 30 days).
pub const URL_EXPIRES_SECS: Range = Range::new(1, 2_592_000);
/// A terminal's rows or columns (0: unknown, as the kernel takes it).
pub const TTY_SIDE: Range = Range::new(0, 65_535);
/// An event's sequence number.
pub const SEQ: Range = Range::new(0, 9_223_372_036_854_775_807);
/// A sandbox's egress bandwidth, megabits per second.
pub const EGRESS_MBPS: Range = Range::new(1, 100_000);
/// Labels on one sandbox.
pub const MAX_LABELS: usize = 64;

/// A regular expression a text must match whole, in the common subset of Rust's `regex` and
/// ECMA-262 (what OpenAPI's `pattern` means).
pub struct Pattern {
    /// The expression, anchored.
    pub regex: &'static str,
    /// What it allows, for people.
    pub allowed: &'static str,
    compiled: OnceLock<regex::Regex>,
}

impl Pattern {
    const fn new(regex: &'static str, allowed: &'static str) -> Self {
        Self {
            regex,
            allowed,
            compiled: OnceLock::new(),
        }
    }

    /// Whether `s` matches.
    pub fn is_match(&self, s: &str) -> bool {
        self.compiled
            .get_or_init(|| regex::Regex::new(self.regex).expect("the limits' patterns compile"))
            .is_match(s)
    }
}

impl std::fmt::Debug for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.regex)
    }
}

/// A sandbox's or snapshot's name (also: not 12 hex digits, which reads as an id).
pub static NAME: Pattern = Pattern::new(
    r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$",
    "1 to 63 of [A-Za-z0-9_.-], not starting with - or ., not 12 hex digits",
);
/// A label's key: `k=v,k2=v2` filters can name it.
pub static LABEL_KEY: Pattern =
    Pattern::new(r"^[A-Za-z0-9._/-]{1,63}$", "1 to 63 of [A-Za-z0-9._/-]");
/// A label's value.
pub static LABEL_VALUE: Pattern = Pattern::new(
    r"^[^,\x00-\x1F\x7F-\x9F]{0,256}$",
    "up to 256 characters, no control characters or commas",
);
/// An environment variable's name: what a shell can export.
pub static ENV_NAME: Pattern = Pattern::new(
    r"^[A-Za-z_][A-Za-z0-9_]*$",
    "letters, digits and _, not starting with a digit",
);
/// An environment variable's value.
pub static ENV_VALUE: Pattern = Pattern::new(r"^[^\x00]*$", "no NUL");

/// Whether `n` is a valid name ([`NAME`], and not an id's 12 hex digits).
pub fn name_ok(n: &str) -> bool {
    NAME.is_match(n) && !(n.len() == 12 && n.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_say_what_the_rules_said() {
        for ok in [
            "a",
            "web-1",
            "_x",
            "A.b_c",
            &"n".repeat(63),
            "0123456789abc",
        ] {
            assert!(name_ok(ok), "{ok:?}");
        }
        for bad in [
            "",
            "-a",
            ".a",
            "a b",
            "a/b",
            &"n".repeat(64),
            "0123456789ab",
            "é",
        ] {
            assert!(!name_ok(bad), "{bad:?}");
        }
        for ok in ["app", "team/app", "a.b-c_d", &"k".repeat(63)] {
            assert!(LABEL_KEY.is_match(ok), "{ok:?}");
        }
        for bad in ["", "a=b", "a,b", "a b", "a\nb", &"k".repeat(64)] {
            assert!(!LABEL_KEY.is_match(bad), "{bad:?}");
        }
        for ok in ["", "v 1", "ü=ß", &"v".repeat(256)] {
            assert!(LABEL_VALUE.is_match(ok), "{ok:?}");
        }
        for bad in ["a,b", "a\nb", "a\u{7f}", "a\u{85}", &"v".repeat(257)] {
            assert!(!LABEL_VALUE.is_match(bad), "{bad:?}");
        }
        assert!(
            ENV_NAME.is_match("_PATH2") && !ENV_NAME.is_match("2X") && !ENV_NAME.is_match("A-B")
        );
        assert!(ENV_VALUE.is_match("a=b c") && !ENV_VALUE.is_match("a\0"));
    }

    #[test]
    fn ranges_refuse_what_does_not_fit() {
        assert!(CPUS.contains(1u32) && CPUS.contains(32u32) && !CPUS.contains(33u32));
        assert!(!CPUS.contains(0u32) && !SIGNAL.contains(-9i32) && SIGNAL.contains(9i32));
        assert!(!TIMEOUT_SECS.contains(u64::MAX));
        assert_eq!(CPUS.describe(), "1 to 32");
    }
}
