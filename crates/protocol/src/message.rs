//! The JSON messages carried by `Msg` frames.
//!
//! A session is opened by the host sending a [`Request`] on a session id it has not used on this
//! connection. It ends when the agent sends a reply for which [`Reply::is_final`] is true. Bulk
//! data (exec streams, file contents) travels in `Data` frames of the same session.
//!
//! Any change here changes `schema.json` (see the golden test): bump [`crate::PROTOCOL_VERSION`]
//! when an old peer could misread the new form.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A message from the host to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Session 0 only: the versions the host speaks, newest first.
    Hello {
        /// Protocol versions the host can speak.
        versions: Vec<u32>,
        /// Free text naming the host side, for the agent's log.
        client: String,
        /// The host's wall clock (nanoseconds since the epoch); the agent sets the guest clock
        /// from it, so a fresh boot or a restored snapshot never runs on a stale time.
        time_unix_ns: Option<u64>,
        /// Fresh random bytes (hex) the agent mixes into the guest's entropy pool: restored
        /// clones never share random state.
        #[serde(default)]
        entropy_hex: Option<String>,
        /// A new hostname (a fork: the clone takes its own name and a new machine-id).
        #[serde(default)]
        hostname: Option<String>,
    },
    /// Quiesces the connection before a snapshot: the agent answers `ok`, then sends nothing
    /// more until the next `hello` (after a restore) or `thaw` (the VM kept running), so the
    /// stream is cut at a frame boundary in both directions.
    Freeze,
    /// Ends a `freeze` on the same connection.
    Thaw,
    /// Agent version, uptime and boot timings.
    Health,
    /// Starts a process.
    Exec(ExecRequest),
    /// Sends a signal to the process group of this session's exec.
    Signal {
        /// Signal number.
        signal: i32,
    },
    /// Resizes this session's terminal.
    Resize(TtySize),
    /// Ends this session now: kills its process group or aborts its transfer.
    Cancel,
    /// Streams a file's content back as `Data` on stdout.
    ReadFile {
        /// Absolute path in the sandbox.
        path: String,
    },
    /// Replaces a file atomically with the `Data` the host sends on stdin until `Eof`.
    WriteFile {
        /// Absolute path in the sandbox.
        path: String,
        /// Permission bits; 0644 when absent.
        mode: Option<u32>,
        /// Creates missing parent directories.
        #[serde(default)]
        parents: bool,
        /// The file, and the directories `parents` creates, belong to this user (`name`,
        /// `uid` or `uid:gid`); else a replaced file keeps its owner and a new one takes its
        /// directory's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
    /// Metadata of a path (not following a final symlink).
    Stat {
        /// Absolute path in the sandbox.
        path: String,
    },
    /// Entries of a directory.
    List {
        /// Absolute path in the sandbox.
        path: String,
    },
    /// Creates a directory.
    Mkdir {
        /// Absolute path in the sandbox.
        path: String,
        /// Creates missing parents and accepts an existing directory (`mkdir -p`).
        #[serde(default)]
        parents: bool,
        /// Permission bits; 0755 when absent.
        mode: Option<u32>,
        /// The directories it creates belong to this user (`name`, `uid` or `uid:gid`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
    /// Removes a file, a symlink or a directory.
    Remove {
        /// Absolute path in the sandbox.
        path: String,
        /// Removes a directory with its content.
        #[serde(default)]
        recursive: bool,
    },
    /// Renames a path, replacing the target.
    Rename {
        /// Absolute path in the sandbox.
        from: String,
        /// Absolute path in the sandbox.
        to: String,
    },
    /// Every process in the guest (from `/proc`), the agent included.
    Processes,
    /// Sends a signal to one process of the guest (never the agent itself).
    Kill {
        /// Its pid.
        pid: u32,
        /// Signal number.
        signal: i32,
    },
    /// Flushes the filesystems and stops the guest.
    Shutdown,
    /// Follows a running process of the process table (see [`ExecRequest::keep`]) from now on:
    /// answered `Started`, then its output as an exec's, then `Exited`. `Data` and `Eof` on
    /// stdin go to its stdin, `Signal` and `Resize` to it; `Cancel` ends only this session.
    Attach {
        /// Which process.
        process: ProcessRef,
    },
    /// The processes started by `Exec` that still run, by pid.
    ProcessTable,
    /// Watches a directory (inotify): answered `watching`, then an `fs_event` per change until
    /// `Cancel`, or until the directory itself goes (its `remove` or `rename` event, then `ok`).
    Watch {
        /// Absolute path of a directory.
        path: String,
        /// Its subdirectories too, those made later included.
        #[serde(default)]
        recursive: bool,
    },
    /// Writes the `Data` the host sends on stdin, until `Eof`, to a running process's stdin
    /// (which stays open); answered `Done`.
    Input {
        /// Which process.
        process: ProcessRef,
    },
    /// Closes a running process's stdin.
    CloseInput {
        /// Which process.
        process: ProcessRef,
    },
    /// Sends a signal to a running process's process group.
    SignalProcess {
        /// Which process.
        process: ProcessRef,
        /// Signal number.
        signal: i32,
    },
    /// Resizes a running process's terminal.
    ResizeProcess {
        /// Which process.
        process: ProcessRef,
        /// The new size.
        size: TtySize,
    },
    /// Opens a TCP connection to `port` in the guest: its loopback first (servers bound to
    /// 127.0.0.1 or to every address), then its network address. Answered `Connected`; the
    /// session then carries the connection's bytes: host to guest as `Data` on stdin (`Eof`
    /// half-closes the connection), guest to host as `Data` on stdout (`Eof` when the guest's
    /// side closed), and ends with `Done` once both directions have closed, or at `Cancel`.
    Connect {
        /// The guest's TCP port.
        port: u16,
    },
}

/// A process of the process table: by pid, or by the tag its exec gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProcessRef {
    /// Its pid.
    Pid(u32),
    /// Its tag.
    Tag(String),
}

impl std::fmt::Display for ProcessRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pid(p) => write!(f, "pid {p}"),
            Self::Tag(t) => write!(f, "tag {t:?}"),
        }
    }
}

/// A running process of the process table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TableEntry {
    /// Pid (and process group).
    pub pid: u32,
    /// The exec's tag.
    pub tag: Option<String>,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// The exec's environment (the request's, not the defaults).
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: String,
    /// It runs on a terminal.
    pub tty: bool,
    /// Its stdin is open for `Input`.
    pub stdin: bool,
    /// It outlives the session that started it.
    pub keep: bool,
    /// When it started, milliseconds since the epoch (guest clock).
    pub started_unix_ms: u64,
}

/// A process of the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessInfo {
    /// Pid.
    pub pid: u32,
    /// Parent pid.
    pub ppid: u32,
    /// Real user id.
    pub uid: u32,
    /// State letter (`R` running, `S` sleeping, `Z` zombie, …).
    pub state: String,
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// CPU time used, milliseconds.
    pub cpu_ms: u64,
    /// Command line (the name in brackets for kernel threads).
    pub cmdline: Vec<String>,
}

/// How to start a process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// Program and arguments; the program is looked up in `PATH` when it has no slash.
    pub argv: Vec<String>,
    /// Environment, on top of a default `PATH`, `HOME`, `USER` and `TERM`.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory; the user's home (or `/`) when absent.
    pub cwd: Option<String>,
    /// `name`, `uid` or `uid:gid`; root when absent.
    pub user: Option<String>,
    /// Run on a new terminal of this size; stderr then goes to the terminal.
    pub tty: Option<TtySize>,
    /// Keep stdin open for `Data` on stdin; when false stdin is `/dev/null`.
    #[serde(default)]
    pub stdin: bool,
    /// Kill the process group after this many milliseconds.
    pub timeout_ms: Option<u64>,
    /// A name to find the process by (`ProcessRef::Tag`); unique among running processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The process outlives this session: a `Cancel` or a lost connection ends the session and
    /// leaves the process running, to be found again with `Attach`. Without it a `Cancel` kills
    /// the process group. Either way the process keeps its background children when it exits.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep: bool,
}

/// A terminal size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TtySize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// A message from the agent to the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    /// Answer to `Hello`: the version chosen.
    Hello {
        /// The protocol version both sides now speak.
        version: u32,
        /// Version of the agent binary.
        agent_version: String,
    },
    /// Answer to `Health`.
    Health(Health),
    /// The exec's process started.
    Started {
        /// Its pid in the guest.
        pid: u32,
    },
    /// The exec's process ended and its output streams are closed.
    Exited(ExitStatus),
    /// A `ReadFile` begins; the content follows as `Data` on stdout, then `Eof`, then `Done`.
    FileStart {
        /// Size at open time.
        size: u64,
        /// Permission bits.
        mode: u32,
    },
    /// A transfer finished.
    Done {
        /// Bytes transferred.
        bytes: u64,
    },
    /// Answer to `Stat`.
    Stat(FileStat),
    /// Answer to `Processes`.
    Processes {
        /// By pid.
        processes: Vec<ProcessInfo>,
    },
    /// Answer to `ProcessTable`.
    ProcessTable {
        /// By pid.
        processes: Vec<TableEntry>,
    },
    /// Answer to `List`.
    Entries {
        /// The directory's entries, sorted by name.
        entries: Vec<DirEntry>,
    },
    /// A `Connect`'s connection is open.
    Connected,
    /// A `Watch` is in place: changes follow as `fs_event`.
    Watching,
    /// A change under a watched directory.
    FsEvent(FsEvent),
    /// The request succeeded and has nothing to report.
    Ok,
    /// The request failed; the session is over.
    Error(AgentError),
}

impl Reply {
    /// True when this reply ends its session.
    pub fn is_final(&self) -> bool {
        !matches!(
            self,
            Self::Started { .. }
                | Self::FileStart { .. }
                | Self::Connected
                | Self::Watching
                | Self::FsEvent(_)
        )
    }
}

/// A change under a watched directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FsEvent {
    /// The path changed, relative to the watched directory (empty: the directory itself).
    pub name: String,
    /// What happened.
    pub kind: FsEventKind,
    /// It is a directory.
    #[serde(default)]
    pub dir: bool,
}

/// What happened to a watched path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FsEventKind {
    /// Made, or moved in.
    Create,
    /// Its content changed.
    Write,
    /// Removed.
    Remove,
    /// Moved away (or renamed; its new name arrives as a `create`).
    Rename,
    /// Its mode, owner or times changed.
    Chmod,
    /// The guest's kernel dropped events (its queue overflowed): look again.
    Overflow,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExitStatus {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal number, when a signal killed it.
    pub signal: Option<i32>,
    /// The exec's timeout killed it.
    #[serde(default)]
    pub timed_out: bool,
}

impl ExitStatus {
    /// The shell convention: the code, or 128 + the signal.
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 255,
        }
    }
}

/// Agent health and boot timings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Version of the agent binary.
    pub agent_version: String,
    /// Protocol version in use.
    pub protocol_version: u32,
    /// Guest uptime in milliseconds.
    pub uptime_ms: u64,
    /// Guest uptime when the kernel started the agent.
    pub kernel_boot_ms: u64,
    /// Milliseconds the agent spent mounting the root before it served.
    pub agent_setup_ms: u64,
}

/// What `Stat` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileStat {
    /// The path asked about.
    pub path: String,
    /// Its kind.
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits (with setuid, setgid, sticky).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Target, for a symlink.
    pub link_target: Option<String>,
    /// The owner's name, when `/etc/passwd` has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The group's name, when `/etc/group` has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// One entry of `List`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirEntry {
    /// File name (not a path).
    pub name: String,
    /// Its kind.
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    #[serde(default)]
    pub uid: u32,
    /// Group.
    #[serde(default)]
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    #[serde(default)]
    pub mtime: i64,
    /// Target, for a symlink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
    /// The owner's name, when `/etc/passwd` has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The group's name, when `/etc/group` has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// Kind of a filesystem object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Anything else (device, socket, fifo).
    Other,
}

/// A failed request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentError {
    /// Stable error code.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
    /// The path concerned, if any.
    pub path: Option<String>,
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.path {
            Some(p) => write!(f, "{p}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for AgentError {}

/// Stable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No such file, directory, user or program.
    NotFound,
    /// The guest refused access.
    PermissionDenied,
    /// The target exists.
    AlreadyExists,
    /// A directory was expected.
    NotADirectory,
    /// A file was expected.
    IsADirectory,
    /// A directory to remove is not empty.
    NotEmpty,
    /// The guest's disk is full.
    NoSpace,
    /// The request is malformed or names something invalid.
    InvalidRequest,
    /// The frame or message could not be decoded.
    Protocol,
    /// The session was cancelled.
    Cancelled,
    /// The guest failed for another reason.
    Internal,
    /// The program an exec names does not exist (the shell's 127).
    ProgramNotFound,
    /// The program an exec names exists but cannot be run: not executable, or not a format the
    /// guest runs (the shell's 126).
    ProgramNotRunnable,
    /// The guest is out of something the request needs: processes (a fork bomb's pid limit),
    /// memory, open files.
    Exhausted,
    /// Nothing in the guest listens on the port a `Connect` names.
    Refused,
}

impl ErrorCode {
    /// Maps an OS error number.
    pub fn from_errno(errno: i32) -> Self {
        // Linux x86_64 errno values; `protocol` depends on serde alone, so they are spelled out.
        match errno {
            2 => Self::NotFound,                   // ENOENT
            1 | 13 | 30 => Self::PermissionDenied, // EPERM, EACCES, EROFS
            17 => Self::AlreadyExists,             // EEXIST
            20 => Self::NotADirectory,             // ENOTDIR
            21 => Self::IsADirectory,              // EISDIR
            39 => Self::NotEmpty,                  // ENOTEMPTY
            28 | 122 => Self::NoSpace,             // ENOSPC, EDQUOT
            // EINVAL, ENAMETOOLONG, ELOOP, E2BIG (an exec's arguments and environment over the
            // guest kernel's limit)
            22 | 36 | 40 | 7 => Self::InvalidRequest,
            11 | 12 | 23 | 24 => Self::Exhausted, // EAGAIN, ENOMEM, ENFILE, EMFILE
            111 => Self::Refused,                 // ECONNREFUSED
            _ => Self::Internal,
        }
    }
}
