//! Cove's public HTTP API (`/v1`): the request and response bodies, shared by coved, the SDK
//! and the CLI, each described for the OpenAPI document coved serves at `/v1/openapi.json`.
//!
//! Requests reject unknown fields (a misspelt option is an error, not a silent default). Times
//! are milliseconds since the Unix epoch.

use std::collections::BTreeMap;

pub use cove_model::{
    Accel, Actor, CgroupMode, CgroupReport, Destination, Engine, EventState, Held, Isolation,
    JailProcess, JailReport, NetworkMode, NetworkPolicy, OnExpire, OnIdle, SandboxState,
    ScrubAction, ScrubFinding, Scrubbed, VmEngine,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub mod rules;

/// The limits on what a request may ask for ([`rules`] says which field each bounds).
pub use cove_model::limits;

/// Who serves a coved Unix socket: written by coved into `SOCKET.lock`, which it holds locked
/// while it serves; the CLI reads it to stop that coved (`cove daemon stop`) and to restart a
/// coved of another build than its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonInfo {
    /// coved's pid.
    pub pid: u32,
    /// Its executable.
    pub exe: String,
    /// Its build: [`DaemonInfo::build_of`] its executable when it started.
    pub build: String,
}

impl DaemonInfo {
    /// What tells two builds of an executable apart: its size and modification time (empty
    /// when it cannot be read).
    pub fn build_of(exe: &std::path::Path) -> String {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(exe)
            .map(|m| format!("{}:{}.{}", m.size(), m.mtime(), m.mtime_nsec()))
            .unwrap_or_default()
    }
}

/// The error code of an exec whose program does not exist (the CLI exits 127, as a shell does).
pub const PROGRAM_NOT_FOUND: &str = "program_not_found";
/// The error code of an exec whose program exists but cannot be run (the CLI exits 126).
pub const PROGRAM_NOT_RUNNABLE: &str = "program_not_runnable";

/// Every error: a stable machine-readable code and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Error {
    /// Stable code: `bad_request`, `unauthorized`, `forbidden`, `not_found`, `conflict`,
    /// `payload_too_large`, `unprocessable`, `quota_exceeded`, `rate_limited`, `unavailable`,
    /// `internal`.
    pub code: String,
    /// What went wrong and, where it helps, what to do.
    pub message: String,
    /// The request's id (also in the `x-request-id` header and coved's log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `POST /v1/sandboxes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    /// A name, unique among the tenant's sandboxes, usable wherever the id is (the pattern,
    /// and not 12 hex digits, which read as an id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Image name, reference or digest (default `busybox`). Ignored with `snapshot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Restore this snapshot (one of the tenant's) instead of booting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// vCPUs (in range and at most the host's CPUs; default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// Memory in MiB (in range and at most the host's memory; default 512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    /// Writable disk in MiB (sparse: costs what is written; default 2048).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mib: Option<u32>,
    /// Environment for every command run in the sandbox (over the image's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Stop the sandbox this many seconds after creation (up to ten years).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    /// Apply `on_idle` after this many seconds without activity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
    /// What idling for `idle_timeout_secs` does: `pause` (the default) or `hibernate`; the
    /// next request resumes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_idle: Option<OnIdle>,
    /// What the end of `ttl_secs` does: `stop` (the default) or `hibernate` (a resume brings
    /// it back, with no time to live left).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_expire: Option<OnExpire>,
    /// The engine: `auto` (the default: `kvm` where /dev/kvm is hardware-backed, else `qemu`),
    /// `kvm` or `qemu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<Engine>,
    /// Labels, for filtering lists (`k=v,k2=v2`): keys and values as their patterns say, no
    /// commas or control characters in values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Its network: `{"mode": "none"}` for no network device; `{"mode": "egress", "allow":
    /// […], "deny": […]}` for outbound connections under a policy. Default: `egress` under
    /// the operator's defaults (public addresses allowed, private ranges denied). A restore
    /// from a snapshot taken without a network device needs `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkPolicy>,
}

/// A sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Sandbox {
    /// 12 hex digits.
    pub id: String,
    /// Its name, when it was given one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Where it is in its life.
    pub state: SandboxState,
    /// The image as asked for.
    pub image: String,
    /// The image's manifest digest (what the sandbox runs on).
    pub image_digest: String,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Writable disk in MiB.
    pub disk_mib: u32,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// Milliseconds from start to the agent answering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_ms: Option<i64>,
    /// Why it failed or stopped, is unhealthy, or (running) was booted instead of restored
    /// from its image's template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Environment of every command run in it.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Its network policy.
    #[serde(default)]
    pub network: NetworkPolicy,
    /// Where and how it runs on this host: shown to the host's administrator only (coved's
    /// Unix socket), never to a tenant's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<SandboxHost>,
}

/// A sandbox as its host runs it (the host's administrator's view).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SandboxHost {
    /// Its tenant; none for the administrator's own sandboxes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The engine running it.
    pub engine: VmEngine,
    /// How the engine runs the guest.
    pub accel: Accel,
    /// Its directory (disk, sockets, logs).
    pub dir: String,
    /// Its cove-vm's control socket.
    pub socket: String,
    /// Its cove-vm's pid, while it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// When its state last changed, milliseconds since the epoch.
    pub updated_at: i64,
    /// Its cove-vm's own report (one sandbox's view only, while it runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmReport>,
    /// Its jail: user, cgroup and limits, processes with their seccomp and capability state
    /// (one sandbox's view only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jail: Option<JailReport>,
    /// Its network on the host, while it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<SandboxLink>,
}

/// A sandbox's traffic token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TrafficToken {
    /// Send it as `X-Cove-Traffic-Token` with requests to the sandbox's ports.
    pub token: String,
}

/// Asks for a signed URL to one of a sandbox's ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignUrl {
    /// The guest's TCP port.
    pub port: u16,
    /// Valid for this many seconds (up to 30 days; default 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_secs: Option<u64>,
}

/// A signed URL to a sandbox's port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PortUrl {
    /// `http(s)://PORT-ID.DOMAIN:LISTEN/?cove_expires=…&cove_signature=…`.
    pub url: String,
    /// When it stops working, milliseconds since the epoch.
    pub expires_at: i64,
}

/// A sandbox's link to the host (the administrator's view).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SandboxLink {
    /// Its network namespace (`ip netns` lists it).
    pub netns: String,
    /// The host's end of its link.
    pub host_iface: String,
    /// The host's address on the link.
    pub host_addr: String,
    /// The sandbox's address on the link: what its traffic leaves the namespace as.
    pub sandbox_addr: String,
}

/// What a running sandbox's cove-vm reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmReport {
    /// cove-vm's pid.
    pub pid: u32,
    /// The engine's own process (QEMU), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm_pid: Option<u32>,
    /// The guest agent's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// Milliseconds from cove-vm's start to the agent's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_ms: Option<u64>,
}

/// A page of sandboxes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SandboxList {
    /// Oldest first.
    pub items: Vec<Sandbox>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `POST /v1/sandboxes/{id}/exec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Exec {
    /// Program and arguments (empty: the image's entrypoint and command).
    #[serde(default)]
    pub cmd: Vec<String>,
    /// Environment over the sandbox's and the image's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory (default: the image's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// User: name, uid or uid:gid (default: the image's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Standard input (UTF-8 text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Kill the command after this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<f64>,
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExecResult {
    /// Exit code; 128 + N when signal N ended it.
    pub exit_code: i32,
    /// Standard output (UTF-8, invalid bytes replaced), at most `limit` bytes.
    pub stdout: String,
    /// Standard error, likewise.
    pub stderr: String,
    /// Output beyond the limit was dropped.
    pub stdout_truncated: bool,
    /// Likewise for standard error.
    pub stderr_truncated: bool,
    /// The command was killed by its timeout.
    pub timed_out: bool,
}

/// The first message (text, JSON) on `GET /v1/sandboxes/{id}/exec/ws`.
///
/// After it, the client sends stdin as binary messages and [`ExecControl`] as text; the server
/// sends output as binary messages whose first byte is the stream (1 stdout, 2 stderr) and
/// [`ExecEvent`] as text, ending with `exit` (or `error`) and a close.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecStart {
    /// Program and arguments (empty: the image's entrypoint and command).
    #[serde(default)]
    pub cmd: Vec<String>,
    /// Environment over the sandbox's and the image's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// User.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Run on a terminal of this size (stderr then goes to the terminal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<TtySize>,
    /// Keep stdin open for the client's binary messages (else it is empty).
    #[serde(default)]
    pub stdin: bool,
    /// Kill the command after this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<f64>,
    /// A name to find the command by while it runs (`/commands/{tag}`); unique among the
    /// sandbox's running commands; not all digits (that is a pid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The command outlives this socket: closing it detaches, and the command is found again
    /// with `GET /v1/sandboxes/{id}/commands/{pid or tag}/ws`. Without it, closing the socket
    /// kills the command. (`POST /v1/sandboxes/{id}/commands` always keeps.)
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep: bool,
}

/// A running command of a sandbox's process table (started by an exec, `cove exec --detach` or
/// `POST /v1/sandboxes/{id}/commands`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Command {
    /// Pid in the guest (and process group).
    pub pid: u32,
    /// Its tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Program and arguments.
    pub cmd: Vec<String>,
    /// The environment it was given (over the guest's defaults).
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub cwd: String,
    /// It runs on a terminal.
    pub tty: bool,
    /// Its stdin is open (`POST …/stdin` writes to it).
    pub stdin: bool,
    /// It outlives the stream that started it.
    pub keep: bool,
    /// Milliseconds since the epoch (the guest's clock).
    pub started_at: i64,
}

/// A terminal size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TtySize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// Client → server control messages of a streaming exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ExecControl {
    /// No more stdin.
    Eof,
    /// The terminal changed size.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Send a signal to the command's process group.
    Signal {
        /// Signal number.
        signal: i32,
    },
}

/// Server → client events of a streaming exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecEvent {
    /// The command runs.
    Started {
        /// Its pid in the guest.
        pid: u32,
    },
    /// It ended.
    Exit {
        /// Exit code; 128 + N for signal N.
        exit_code: i32,
        /// Its timeout killed it.
        timed_out: bool,
    },
    /// It could not start, or the sandbox went away.
    Error(Error),
}

/// A file's metadata (`GET /v1/sandboxes/{id}/files/stat`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileStat {
    /// The path asked about.
    pub path: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
    /// The owner's name, when the guest's `/etc/passwd` has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The group's name, when the guest's `/etc/group` has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// One entry of a directory (`GET /v1/sandboxes/{id}/files/list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DirEntry {
    /// File name.
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
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
    /// The owner's name, when the guest's `/etc/passwd` has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The group's name, when the guest's `/etc/group` has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// A change under a watched directory (`GET /v1/sandboxes/{id}/files/watch`, one JSON object
/// a line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FsEventKind {
    /// Made, or moved in.
    Create,
    /// Its content changed.
    Write,
    /// Removed.
    Remove,
    /// Moved away (its new name arrives as a `create`).
    Rename,
    /// Its mode, owner or times changed.
    Chmod,
    /// Events were lost (the guest's queue overflowed): look again.
    Overflow,
}

/// `POST /v1/sandboxes/{id}/files/mkdir`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Mkdir {
    /// Absolute path.
    pub path: String,
    /// Create missing parents (and accept an existing directory).
    #[serde(default)]
    pub parents: bool,
}

/// `POST /v1/sandboxes/{id}/files/rename`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rename {
    /// Absolute path.
    pub from: String,
    /// Absolute path.
    pub to: String,
}

/// An upload's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Written {
    /// Bytes written.
    pub bytes: u64,
}

/// One lifecycle transition (`GET /v1/events`, one JSON object per line, or SSE).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Increasing sequence number: pass the last one seen as `after` to resume.
    pub seq: i64,
    /// Milliseconds since the epoch.
    pub at: i64,
    /// The sandbox.
    pub sandbox: String,
    /// The state it entered (a sandbox state), `removed`, or `network` (its network policy
    /// was replaced; `cause` says the new one).
    #[schema(value_type = String)]
    pub state: EventState,
    /// Who: `key:ID` (an API key), `local` (the host's administrator), `ttl` (its time to
    /// live ran out), `idle-policy` (its idle policy), `traffic` (a request to one of its
    /// ports woke it), `reconcile` (the host found its VM ended: crashed, killed, or an
    /// operation interrupted).
    #[schema(value_type = String)]
    pub actor: Actor,
    /// Why, when there is a reason (`idle`, an expired time to live, an error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

/// What a sandbox uses (`GET /v1/sandboxes/{id}/metrics`), measured on the host.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SandboxMetrics {
    /// CPU time of its VM so far, seconds.
    pub cpu_seconds: f64,
    /// Resident memory of its VM (guest memory touched, plus the VMM's own).
    pub memory_bytes: u64,
    /// Its memory size.
    pub memory_limit_bytes: u64,
    /// What its writable disk holds.
    pub disk_bytes: u64,
    /// Its writable disk's size.
    pub disk_limit_bytes: u64,
}

/// `POST /v1/images/pull`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Pull {
    /// Image reference (`name[:tag]`, `host:port/path:tag`, `…@sha256:…`).
    pub reference: String,
    /// Plain HTTP (registries on loopback).
    #[serde(default)]
    pub insecure: bool,
    /// Registry user name (with `password`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Registry password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// A pull that started (`202`): follow it at `/v1/images/pulls/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PullStarted {
    /// The pull's id.
    pub id: String,
}

/// A process of a sandbox (`GET /v1/sandboxes/{id}/processes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Process {
    /// Pid in the guest.
    pub pid: u32,
    /// Parent pid.
    pub ppid: u32,
    /// User id.
    pub uid: u32,
    /// State letter (`R`, `S`, `Z`, …).
    pub state: String,
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// CPU time, milliseconds.
    pub cpu_ms: u64,
    /// Command line.
    pub cmdline: Vec<String>,
}

/// `POST /v1/sandboxes/{id}/processes/{pid}/kill`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Kill {
    /// Signal number (default 15, SIGTERM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
}

/// `POST /v1/templates`: boot an image once and keep its snapshot, which creates of that image
/// and shape then restore instead of booting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTemplate {
    /// Image.
    pub image: String,
    /// vCPUs (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// Memory in MiB (default 512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    /// Writable disk in MiB (default 2048).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mib: Option<u32>,
    /// `egress` (the default where the host makes networks): the template has a network
    /// device, and restores for sandboxes that get one; `none`: it has none, for sandboxes
    /// created with network `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkMode>,
}

/// `GET /v1/info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Info {
    /// coved's version.
    pub version: String,
    /// The host↔agent protocol version.
    pub protocol_version: u32,
    /// The engine new sandboxes get, and how (`qemu` / `tcg`, …), or why none can run.
    pub engine: String,
    /// Image names installed.
    pub images: Vec<String>,
    /// The host itself: shown to its administrator only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostInfo>,
}

/// What the host's administrator sees of the host (`cove info`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostInfo {
    /// The Cove home (absolute).
    pub home: String,
    /// The engine new sandboxes get, and why; none when no engine can run here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineInfo>,
    /// Why no engine can run, when none can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_error: Option<String>,
    /// What the host offers for virtualisation.
    pub virtualisation: Virtualisation,
    /// QEMU's own version line, when it is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu: Option<String>,
    /// The guest kernel.
    pub kernel: Asset,
    /// The initramfs (the guest agent).
    pub initramfs: Asset,
    /// The guest's identity (sha256 prefixes of kernel and initramfs): templates of another
    /// guest are not restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<String>,
    /// The host's TSC frequency handed to guests, kHz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tsc_khz: Option<u64>,
    /// What the host offers to isolate each sandbox's supervisor beyond the VM.
    pub isolation: Isolation,
    /// Why sandboxes run without a jail here (not root, `COVE_JAIL=off`, no cgroups); absent
    /// when every sandbox is jailed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jail_off: Option<String>,
    /// Sandboxes' networks here.
    #[serde(default)]
    pub network: NetworkInfo,
}

/// Sandboxes' networks on a host (`docs/network.md`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NetworkInfo {
    /// Why sandboxes get no network device here (not root, `COVE_NET=off`, …): every sandbox
    /// is `none`. Absent when they get one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub off: Option<String>,
    /// The pool the sandboxes' links are leased from.
    pub pool: String,
    /// The ports this coved serves the sandboxes' resolver, HTTP proxy and TLS proxy on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<[u16; 3]>,
}

/// The engine chosen, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EngineInfo {
    /// The engine.
    pub engine: VmEngine,
    /// How it runs guests.
    pub accel: Accel,
    /// Why this one.
    pub reason: String,
}

/// What the host offers for virtualisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Virtualisation {
    /// `/dev/kvm` exists.
    pub dev_kvm: bool,
    /// The CPU flags show vmx or svm.
    pub hw_virt: bool,
    /// `/dev/kvm` is a nested, emulated KVM (`kvm_pvm`).
    pub kvm_pvm: bool,
}

/// A file the host needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Asset {
    /// Where it is expected.
    pub path: String,
    /// Whether it is there.
    pub present: bool,
}

/// `POST /v1/sandboxes/{id}/fork`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Fork {
    /// How many clones (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
}

/// `POST /v1/sandboxes/{id}/snapshot`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TakeSnapshot {
    /// A name, unique among the tenant's snapshots, usable wherever the id is (same rules as
    /// a sandbox's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Snapshot {
    /// 12 hex digits.
    pub id: String,
    /// Its name, when it was given one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The sandbox it was taken from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// Its image.
    pub image: String,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Writable disk in MiB.
    pub disk_mib: u32,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// Its image's template (creates of that image and shape restore it instead of booting);
    /// templates belong to the host, listed to its administrator only.
    #[serde(default)]
    pub template: bool,
    /// Where it is kept on this host: shown to the host's administrator only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<SnapshotHost>,
}

/// A snapshot as its host keeps it (the host's administrator's view).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotHost {
    /// Its tenant; none for the administrator's own snapshots and templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// This host's copy (the blob store holds the original).
    pub dir: String,
}

/// What `DELETE /v1/images/{image}` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageRemoved {
    /// The digest of the image removed; absent when only the name went (other names still
    /// point at the image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<String>,
}

/// What `POST /v1/images/prune` removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Pruned {
    /// Digests of the images removed.
    pub removed: Vec<String>,
    /// Bytes freed (image disks and cached layers).
    pub freed_bytes: u64,
}

/// An installed image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Image {
    /// Manifest digest.
    pub digest: String,
    /// Names pointing at it.
    pub names: Vec<String>,
    /// Bytes of file content.
    pub content_bytes: u64,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// What needs it (`sandbox ID`, `snapshot ID`): for an admin key everything on the host,
    /// for others only the tenant's own.
    #[serde(default)]
    pub used_by: Vec<String>,
}

/// One image in full (`GET /v1/images/{image}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageDetail {
    /// What a listing shows.
    #[serde(flatten)]
    pub image: Image,
    /// The config blob's digest.
    pub config_digest: String,
    /// Where it came from (a reference, an archive, a directory).
    pub source: String,
    /// Layers, bottom first.
    pub layers: Vec<ImageLayer>,
    /// Entries in the root filesystem.
    pub entries: u64,
    /// Device nodes left out of the root filesystem.
    pub devices_skipped: u64,
    /// Size of its disk file.
    pub disk_bytes: u64,
    /// How its processes run by default.
    pub config: ImageConfig,
    /// Its disk file on this host: shown to the host's administrator only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
}

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageLayer {
    /// Digest of the blob as stored (compressed).
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// Blob size in bytes.
    pub size: u64,
    /// Digest of the uncompressed tar.
    pub diff_id: String,
}

/// How an image's processes run by default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageConfig {
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// User (`name`, `uid`, `uid:gid`, `name:group`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Prepended to the command.
    pub entrypoint: Vec<String>,
    /// The command.
    pub cmd: Vec<String>,
}

/// A list of items.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct List<T> {
    /// The items.
    pub items: Vec<T>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_refuse_unknown_fields_and_wrong_types() {
        let ok: CreateSandbox = serde_json::from_str(r#"{"image":"python","cpus":2}"#).unwrap();
        assert_eq!(ok.cpus, Some(2));
        let e = serde_json::from_str::<CreateSandbox>(r#"{"imgae":"python"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `imgae`"), "{e}");
        assert!(serde_json::from_str::<CreateSandbox>(r#"{"cpus":-1}"#).is_err());
        assert!(serde_json::from_str::<Exec>(r#"{"cmd":"ls"}"#).is_err());
    }
}
