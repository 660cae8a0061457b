//! Which field of which request each limit of [`cove_model::limits`] bounds. coved writes
//! these into the OpenAPI document it serves (`minimum`, `maximum`, `pattern`, …), and the
//! checks that refuse a request call the same limits, so what the document says is what is
//! enforced. A test in coved fails when a number in a request has no bounds here.

use cove_model::limits::{self, Pattern, Range};

/// What a field may hold.
#[derive(Debug, Clone, Copy)]
pub enum Rule {
    /// A whole number in range.
    Int(Range),
    /// Seconds as a number: more than 0, at most this.
    Seconds(f64),
    /// A text matching the pattern.
    Text(&'static Pattern),
    /// A map: at most `max` entries (none: no limit), keys matching `keys`, values `values`.
    Map {
        /// Most entries.
        max: Option<usize>,
        /// Its keys.
        keys: &'static Pattern,
        /// Its values.
        values: &'static Pattern,
    },
    /// A list of at most this many items.
    Items(usize),
}

/// One field of a request schema (by its name in the document) and its rule.
pub type FieldRule = (&'static str, &'static str, Rule);

/// Every bounded field of every request body.
pub static FIELDS: &[FieldRule] = &[
    ("CreateSandbox", "name", Rule::Text(&limits::NAME)),
    ("CreateSandbox", "cpus", Rule::Int(limits::CPUS)),
    ("CreateSandbox", "memory_mib", Rule::Int(limits::MEMORY_MIB)),
    ("CreateSandbox", "disk_mib", Rule::Int(limits::DISK_MIB)),
    ("CreateSandbox", "ttl_secs", Rule::Int(limits::TIMEOUT_SECS)),
    (
        "CreateSandbox",
        "idle_timeout_secs",
        Rule::Int(limits::TIMEOUT_SECS),
    ),
    (
        "CreateSandbox",
        "labels",
        Rule::Map {
            max: Some(limits::MAX_LABELS),
            keys: &limits::LABEL_KEY,
            values: &limits::LABEL_VALUE,
        },
    ),
    ("CreateSandbox", "env", ENV),
    ("Exec", "env", ENV),
    (
        "Exec",
        "timeout_secs",
        Rule::Seconds(limits::EXEC_TIMEOUT_SECS_MAX),
    ),
    ("ExecStart", "env", ENV),
    (
        "ExecStart",
        "timeout_secs",
        Rule::Seconds(limits::EXEC_TIMEOUT_SECS_MAX),
    ),
    ("CreateTemplate", "cpus", Rule::Int(limits::CPUS)),
    (
        "CreateTemplate",
        "memory_mib",
        Rule::Int(limits::MEMORY_MIB),
    ),
    ("CreateTemplate", "disk_mib", Rule::Int(limits::DISK_MIB)),
    ("Fork", "count", Rule::Int(limits::FORK_COUNT)),
    ("TakeSnapshot", "name", Rule::Text(&limits::NAME)),
    ("Kill", "signal", Rule::Int(limits::SIGNAL)),
    ("SignUrl", "port", Rule::Int(limits::PORT)),
    (
        "SignUrl",
        "expires_secs",
        Rule::Int(limits::URL_EXPIRES_SECS),
    ),
    ("TtySize", "rows", Rule::Int(limits::TTY_SIDE)),
    ("TtySize", "cols", Rule::Int(limits::TTY_SIDE)),
    ("NetworkPolicy", "allow", Rule::Items(cove_model::MAX_RULES)),
    ("NetworkPolicy", "deny", Rule::Items(cove_model::MAX_RULES)),
    (
        "NetworkPolicy",
        "egress_mbps",
        Rule::Int(limits::EGRESS_MBPS),
    ),
];

/// Every bounded query parameter, by name, wherever it appears.
pub static PARAMS: &[(&str, Rule)] = &[
    ("limit", Rule::Int(limits::PAGE_LIMIT)),
    ("after", Rule::Int(limits::SEQ)),
];

const ENV: Rule = Rule::Map {
    max: None,
    keys: &limits::ENV_NAME,
    values: &limits::ENV_VALUE,
};
