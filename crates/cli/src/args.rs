//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Run code in microVM sandboxes.
#[derive(Debug, Parser)]
#[command(name = "cove", version, about, long_about = None)]
pub struct Cli {
    /// Cove home (state, images, sandboxes); default /var/lib/cove for root, else ~/.local/share/cove.
    #[arg(long, env = "COVE_HOME", global = true)]
    pub home: Option<PathBuf>,
    /// A remote coved to drive (`http://host:port`) with COVE_API_KEY, instead of this
    /// machine's (reached over COVE_HOME/coved.sock, started when needed).
    #[arg(long, env = "COVE_HOST", global = true)]
    pub host: Option<String>,
    /// API key for --host.
    #[arg(long, env = "COVE_API_KEY", global = true, hide_env_values = true)]
    pub api_key: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

/// Resources of a new sandbox.
#[derive(Debug, Args)]
pub struct Resources {
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// Memory in MiB.
    #[arg(long, default_value_t = 512)]
    pub memory: u32,
    /// Writable disk in MiB (sparse: costs only what is written).
    #[arg(long, default_value_t = 2048)]
    pub disk: u32,
    /// Engine: auto (kvm where /dev/kvm is hardware-backed, else qemu), kvm or qemu.
    #[arg(long, value_name = "auto|kvm|qemu")]
    pub engine: Option<cove_api::Engine>,
    #[command(flatten)]
    pub net: NetArgs,
}

/// A network policy, as flags.
#[derive(Debug, Args, Default)]
pub struct NetArgs {
    /// Network: egress (outbound connections under --allow, --deny and the operator's
    /// defaults) or none (no network device). Default: egress where the host makes networks.
    #[arg(long, value_name = "egress|none")]
    pub network: Option<cove_api::NetworkMode>,
    /// Let the sandbox reach this over --deny and the defaults: an IPv4 network (10.0.0.0/8,
    /// or an address) or a domain name (and its subdomains); repeatable.
    #[arg(long, value_name = "CIDR|DOMAIN")]
    pub allow: Vec<cove_api::Destination>,
    /// Keep the sandbox from reaching this (forms as --allow); repeatable.
    #[arg(long, value_name = "CIDR|DOMAIN")]
    pub deny: Vec<cove_api::Destination>,
    /// Serve the sandbox's ports through coved to anyone (no traffic token or signed URL).
    #[arg(long)]
    pub public_ports: bool,
    /// Most bandwidth the sandbox sends out with, megabits per second.
    #[arg(long, value_name = "MBPS")]
    pub egress_mbps: Option<u32>,
}

impl NetArgs {
    /// The policy the flags give, if they give one.
    pub fn policy(&self) -> Option<cove_api::NetworkPolicy> {
        if self.network.is_none()
            && self.allow.is_empty()
            && self.deny.is_empty()
            && !self.public_ports
            && self.egress_mbps.is_none()
        {
            return None;
        }
        Some(cove_api::NetworkPolicy {
            mode: self.network.unwrap_or_default(),
            allow: self.allow.clone(),
            deny: self.deny.clone(),
            public_ports: self.public_ports,
            egress_mbps: self.egress_mbps,
        })
    }
}

/// Lifetime policies of a new sandbox.
#[derive(Debug, Args)]
pub struct Policy {
    /// Stop the sandbox this many seconds after it was created.
    #[arg(long, value_name = "SECS")]
    pub ttl: Option<u64>,
    /// After this many seconds without activity, apply --on-idle.
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<u64>,
    /// What idleness does: pause or hibernate (the next request resumes it).
    #[arg(long, value_name = "pause|hibernate", requires = "idle_timeout")]
    pub on_idle: Option<cove_api::OnIdle>,
    /// What the end of --ttl does: stop (the default) or hibernate (resume brings it back).
    #[arg(long, value_name = "stop|hibernate", requires = "ttl")]
    pub on_expire: Option<cove_api::OnExpire>,
}

/// How to run a command.
#[derive(Debug, Args)]
pub struct ExecOpts {
    /// Stream this terminal's stdin to the command.
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the command a terminal (raw mode, resizes follow this one).
    #[arg(short, long)]
    pub tty: bool,
    /// Environment variable KEY=VALUE (KEY alone takes this shell's value); repeatable.
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory in the sandbox.
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// User: name, uid or uid:gid.
    #[arg(short, long)]
    pub user: Option<String>,
    /// Kill the command after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
}

/// Running a command in the background.
#[derive(Debug, Args)]
pub struct Background {
    /// Start the command and print its pid; it runs on (see `cove attach`, `cove commands`).
    #[arg(short, long, conflicts_with = "interactive")]
    pub detach: bool,
    /// A name to find the command by while it runs (unique in the sandbox).
    #[arg(long)]
    pub tag: Option<String>,
}

/// A signal number from a number or a name (`TERM`, `SIGTERM`, `15`).
fn parse_signal(s: &str) -> Result<i32, String> {
    if let Ok(n) = s.parse::<i32>() {
        let range = cove_api::limits::SIGNAL;
        return if range.contains(n) {
            Ok(n)
        } else {
            Err(format!("signal {n}: {}", range.describe()))
        };
    }
    let name = s.trim_start_matches("SIG").to_ascii_uppercase();
    let n = match name.as_str() {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "KILL" => 9,
        "USR1" => 10,
        "USR2" => 12,
        "TERM" => 15,
        "CONT" => 18,
        "STOP" => 19,
        _ => {
            return Err(format!(
                "unknown signal {s:?}: give a number or HUP, INT, QUIT, KILL, USR1, USR2, TERM, CONT, STOP"
            ));
        }
    };
    Ok(n)
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a sandbox, run one command in it, remove it. Exits with the command's code.
    Run {
        #[command(flatten)]
        res: Resources,
        /// Name for the sandbox while it runs.
        #[arg(long)]
        name: Option<String>,
        /// Image.
        #[arg(long, default_value = "busybox")]
        image: String,
        #[command(flatten)]
        exec: ExecOpts,
        /// Command and arguments (default: the image's command).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Create a sandbox and print its id (restored from the image's template when one fits).
    Create {
        #[command(flatten)]
        res: Resources,
        /// Unique name.
        #[arg(long)]
        name: Option<String>,
        /// Image.
        #[arg(long, default_value = "busybox")]
        image: String,
        /// Restore this snapshot (id or name) instead of booting.
        #[arg(long, value_name = "SNAPSHOT", conflicts_with = "image")]
        from_snapshot: Option<String>,
        #[command(flatten)]
        policy: Policy,
    },
    /// Show a sandbox's network policy, or replace it (the flags give the whole new policy;
    /// a running sandbox gets it at once).
    Network {
        /// Sandbox id, id prefix or name.
        id: String,
        #[command(flatten)]
        net: NetArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Forward a local TCP port to a port of a sandbox (over coved's API: works for any
    /// sandbox, with or without a network); runs until interrupted.
    PortForward {
        /// Sandbox id, id prefix or name.
        id: String,
        /// `LOCAL:REMOTE`, or `PORT` for the same number both sides; LOCAL 0 picks a free one.
        ports: String,
        /// The local address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        address: String,
    },
    /// Print a signed URL to a port of a sandbox (opens in a browser; no token needed).
    Url {
        /// Sandbox id, id prefix or name.
        id: String,
        /// The guest's TCP port.
        port: u16,
        /// How long it works: seconds, or with a unit (90s, 10m, 2h, 7d; at most 30d).
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        expires: u64,
    },
    /// Clone a running sandbox into new ones; prints one id per line.
    Fork {
        /// Sandbox id, id prefix or name.
        id: String,
        /// How many clones.
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// Snapshot a sandbox (it keeps running), or manage snapshots.
    #[command(args_conflicts_with_subcommands = true)]
    Snapshot {
        #[command(subcommand)]
        command: Option<SnapshotCommand>,
        /// Sandbox id, id prefix or name.
        id: Option<String>,
        /// Name for the snapshot.
        #[arg(long)]
        name: Option<String>,
    },
    /// Images: pull from registries, import archives and directories, list, remove.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Templates: a snapshot taken right after boot, restored by `create` instead of a boot.
    Template {
        #[command(subcommand)]
        command: TemplateCommand,
    },
    /// Run a command in a sandbox.
    Exec {
        #[command(flatten)]
        exec: ExecOpts,
        #[command(flatten)]
        background: Background,
        /// Sandbox id, id prefix or name.
        id: String,
        /// Command and arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// The commands running in a sandbox (those its execs started), with their pids and tags.
    Commands {
        /// Sandbox id, id prefix or name.
        id: String,
        /// JSON.
        #[arg(long)]
        json: bool,
    },
    /// Follow a running command's output (and with -i feed its stdin) until it exits;
    /// interrupting leaves it running.
    Attach {
        /// Sandbox id, id prefix or name.
        id: String,
        /// The command's pid or tag.
        command: String,
        /// Stream this terminal's stdin to the command.
        #[arg(short, long)]
        interactive: bool,
        /// The command has a terminal (raw mode, resizes follow this one).
        #[arg(short, long)]
        tty: bool,
    },
    /// Send a signal to a running command's process group.
    Kill {
        /// Sandbox id, id prefix or name.
        id: String,
        /// The command's pid or tag.
        command: String,
        /// Signal: a number or a name (TERM, KILL, INT, HUP, …).
        #[arg(short, long, default_value = "TERM", value_parser = parse_signal)]
        signal: i32,
    },
    /// List sandboxes.
    Ls {
        /// Ids only.
        #[arg(short, long)]
        quiet: bool,
        /// JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a sandbox as JSON.
    Inspect {
        /// Sandbox id, id prefix or name.
        id: String,
    },
    /// Print a sandbox's console log.
    Logs {
        /// Sandbox id, id prefix or name.
        id: String,
    },
    /// Copy a file: `cove cp ./f ID:/path` or `cove cp ID:/path ./f` (`-` is stdin/stdout).
    Cp {
        /// Source.
        src: String,
        /// Destination.
        dst: String,
    },
    /// Remove sandboxes (`-f` for running ones).
    Rm {
        /// Stop running sandboxes first.
        #[arg(short, long)]
        force: bool,
        /// Sandbox ids, id prefixes or names.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Stop sandboxes, keeping their files.
    Stop {
        /// Sandbox ids, id prefixes or names.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Stop a sandbox's vCPUs; its memory stays resident.
    Pause {
        /// Sandbox id, id prefix or name.
        id: String,
    },
    /// Run a paused sandbox again, or bring a hibernated one back (same files, same processes).
    Resume {
        /// Sandbox id, id prefix or name.
        id: String,
    },
    /// Save a sandbox's whole state (memory, processes, disk) and stop its VM.
    Hibernate {
        /// Sandbox id, id prefix or name.
        id: String,
    },
    /// Files in a sandbox.
    Fs {
        #[command(subcommand)]
        command: FsCommand,
    },
    /// Hash every snapshot, template and hibernation on the host again; report what is
    /// corrupted (the host's administrator).
    Scrub {
        /// Only this snapshot or hibernated sandbox (its id).
        #[arg(long)]
        only: Option<String>,
        /// JSON.
        #[arg(long)]
        json: bool,
    },
    /// Engine chosen and why, kernel, images, versions.
    Info {
        /// JSON.
        #[arg(long)]
        json: bool,
    },
    /// The event log: every state sandboxes entered (and their removals), who caused it, why.
    Events {
        /// Only this sandbox's (a whole id; names go with their sandbox).
        #[arg(long)]
        sandbox: Option<String>,
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// Keep printing new events as they happen.
        #[arg(short, long)]
        follow: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// The local coved (started by any command when none runs): status, start, stop.
    Daemon {
        #[command(subcommand)]
        command: DaemonCommand,
    },
}

/// The local coved.
#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Whether a coved serves this Cove home, and which.
    Status {
        /// JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start it now (any other command does when needed).
    Start,
    /// Stop it; sandboxes keep running, and the next command starts a coved that re-attaches.
    Stop,
}

/// Snapshot management.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// List snapshots.
    Ls {
        /// JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete snapshots.
    Rm {
        /// Snapshot ids, id prefixes or names.
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// Image management.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Pull an image from an OCI registry (`name[:tag]`, `host:port/path:tag`, `name@sha256:…`).
    /// Credentials: --username with --password-stdin, else ~/.docker/config.json, else none.
    Pull {
        /// Image reference.
        reference: String,
        /// Plain HTTP instead of HTTPS (registries on loopback).
        #[arg(long)]
        insecure: bool,
        /// Registry user name.
        #[arg(long, requires = "password_stdin")]
        username: Option<String>,
        /// Read the registry password from standard input.
        #[arg(long, requires = "username")]
        password_stdin: bool,
        /// No progress output.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Import a `docker save` archive or an OCI layout (a directory or a tar of one).
    Import {
        /// Archive or layout.
        path: std::path::PathBuf,
        /// Name for the image (default: the names the archive gives).
        #[arg(long)]
        name: Option<String>,
        /// Which image of an archive holding several (a tag or ref name).
        #[arg(long = "ref", value_name = "REF")]
        pick: Option<String>,
        /// No progress output.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Import a plain directory as a one-layer image.
    ImportRootfs {
        /// The root directory.
        dir: std::path::PathBuf,
        /// Name for the image.
        #[arg(long)]
        name: String,
        /// Default environment, KEY=VALUE (repeatable).
        #[arg(short, long, value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Default working directory.
        #[arg(short, long)]
        workdir: Option<String>,
        /// Default user.
        #[arg(short, long)]
        user: Option<String>,
        /// No progress output.
        #[arg(short, long)]
        quiet: bool,
        /// Default command.
        #[arg(last = true)]
        cmd: Vec<String>,
    },
    /// List images.
    Ls {
        /// JSON.
        #[arg(long)]
        json: bool,
        /// Digests only.
        #[arg(short, long)]
        quiet: bool,
    },
    /// An image's details, as JSON.
    Inspect {
        /// Name, reference or digest (prefix).
        image: String,
    },
    /// Remove image names, and images no name points at (refused while in use).
    Rm {
        /// Names, references or digests.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove images without names that nothing uses, and unused cached layers.
    Prune,
}

/// Template management.
#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Boot IMAGE once and keep a snapshot of it for `create` to restore (one per image, shape
    /// and device set: `--network none` makes the one sandboxes without a network restore).
    Create {
        /// Image.
        image: String,
        #[command(flatten)]
        res: Resources,
    },
}

/// File operations.
#[derive(Debug, Subcommand)]
pub enum FsCommand {
    /// Metadata of a path, as JSON.
    Stat {
        /// Sandbox.
        id: String,
        /// Absolute path.
        path: String,
    },
    /// Entries of a directory.
    Ls {
        /// Sandbox.
        id: String,
        /// Absolute path.
        path: String,
        /// JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create a directory.
    Mkdir {
        /// Sandbox.
        id: String,
        /// Absolute path.
        path: String,
        /// Create parents; accept an existing directory.
        #[arg(short, long)]
        parents: bool,
    },
    /// Remove a path.
    Rm {
        /// Sandbox.
        id: String,
        /// Absolute path.
        path: String,
        /// Remove a directory and its content.
        #[arg(short, long)]
        recursive: bool,
    },
    /// Print changes under a directory as they happen (one JSON object a line with --json)
    /// until interrupted or the directory goes.
    Watch {
        /// Sandbox.
        id: String,
        /// Absolute path of a directory.
        path: String,
        /// Its subdirectories too.
        #[arg(short, long)]
        recursive: bool,
        /// JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Rename a path.
    Mv {
        /// Sandbox.
        id: String,
        /// Absolute path.
        from: String,
        /// Absolute path.
        to: String,
    },
}

impl FsCommand {
    /// The sandbox it acts on.
    pub fn sandbox(&self) -> &str {
        match self {
            Self::Stat { id, .. }
            | Self::Ls { id, .. }
            | Self::Mkdir { id, .. }
            | Self::Rm { id, .. }
            | Self::Mv { id, .. }
            | Self::Watch { id, .. } => id,
        }
    }
}

/// `90`, `90s`, `10m`, `2h`, `7d` → seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (n, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: a number and a unit (s, m, h, d)"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: the unit is s, m, h or d")),
    };
    n.checked_mul(mult)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("{s:?}: out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_takes_resources_env_and_a_command() {
        let c = Cli::try_parse_from([
            "cove", "run", "--image", "python", "--cpus", "2", "--memory", "256", "-e", "A=1",
            "-e", "B=2", "-w", "/tmp", "-i", "--", "python3", "-c", "print(1)",
        ])
        .unwrap();
        let Command::Run {
            res,
            image,
            exec,
            command,
            ..
        } = c.command
        else {
            panic!()
        };
        assert_eq!((res.cpus, res.memory, res.disk), (2, 256, 2048));
        assert_eq!(image, "python");
        assert_eq!(exec.env, vec!["A=1", "B=2"]);
        assert!(exec.interactive && !exec.tty);
        assert_eq!(command, vec!["python3", "-c", "print(1)"]);
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(Cli::try_parse_from(["cove", "run", "--cpus", "many"]).is_err());
        assert!(
            Cli::try_parse_from(["cove", "exec", "abc"]).is_err(),
            "exec needs a command"
        );
        assert!(Cli::try_parse_from(["cove", "rm"]).is_err());
        let c = Cli::try_parse_from(["cove", "exec", "-it", "abc", "--", "sh"]).unwrap();
        let Command::Exec { exec, id, .. } = c.command else {
            panic!()
        };
        assert!(exec.interactive && exec.tty);
        assert_eq!(id, "abc");
    }

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(super::parse_duration("90"), Ok(90));
        assert_eq!(super::parse_duration("10m"), Ok(600));
        assert_eq!(super::parse_duration("2h"), Ok(7200));
        assert_eq!(super::parse_duration("7d"), Ok(604_800));
        assert!(super::parse_duration("0s").is_err());
        assert!(super::parse_duration("5w").is_err());
        assert!(super::parse_duration("m").is_err());
    }
}
