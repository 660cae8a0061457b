//! cove: run code in microVM sandboxes.
//!
//! Every command is a request to a coved's `/v1` API: the local one over its Unix socket
//! (`COVE_HOME/coved.sock`, started on demand, see `daemon`), or a remote one with `COVE_HOST`
//! and `COVE_API_KEY`. The two differ only in who the caller is (the host's administrator, or
//! a tenant's key); refusals, exit codes and `--json` shapes are the API's in both.
//!
//! Exit codes: a command run in a sandbox passes its own exit code through (128 + N when signal
//! N killed it); 125 means cove itself failed (bad arguments, no such sandbox, a VM that would
//! not start); 126 the program could not be run; 127 the program was not found.

mod args;
mod commands;
mod copy;
mod daemon;
mod image;
mod term;

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};

/// cove failed before or around the user's command.
pub(crate) const EXIT_COVE: u8 = 125;
/// The program exists but could not be started.
const EXIT_CANNOT_RUN: u8 = 126;
/// The program was not found.
const EXIT_NOT_FOUND: u8 = 127;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_COVE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(run(cli));
    // Don't wait for a blocked stdin reader: the command is over.
    rt.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            term::restore();
            let mut msg = format!("cove: {e}");
            for cause in e.chain().skip(1) {
                msg.push_str(&format!(": {cause}"));
            }
            eprintln!("{msg}");
            ExitCode::from(exit_code_for(&e))
        }
    }
}

/// The exit code of a failed command: the shell's for a program that is missing or cannot
/// run (the API's error codes say which), 125 for everything else.
pub(crate) fn exit_code_for(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<cove_sdk::Error>() {
        Some(cove_sdk::Error::Api { error, .. }) if error.code == cove_api::PROGRAM_NOT_FOUND => {
            EXIT_NOT_FOUND
        }
        Some(cove_sdk::Error::Api { error, .. })
            if error.code == cove_api::PROGRAM_NOT_RUNNABLE =>
        {
            EXIT_CANNOT_RUN
        }
        _ => EXIT_COVE,
    }
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    let home = cli.home.clone().unwrap_or_else(cove_model::default_home);
    // Absolute: coved records every path it is given, and runs elsewhere.
    let home = std::path::absolute(&home).unwrap_or(home);
    let local = daemon::Local::new(home);
    if let Command::Daemon { command } = cli.command {
        return tokio::task::spawn_blocking(move || local.run(command)).await?;
    }
    let client = match cli.host.as_deref().filter(|h| !h.is_empty()) {
        Some(host) => {
            let key = cli
                .api_key
                .clone()
                .ok_or_else(|| anyhow::anyhow!("--host needs an API key: set COVE_API_KEY"))?;
            let ca = match std::env::var_os("COVE_CA_CERT") {
                Some(p) => Some(std::fs::read(&p).map_err(|e| {
                    anyhow::anyhow!("reading COVE_CA_CERT {}: {e}", Path::new(&p).display())
                })?),
                None => None,
            };
            cove_sdk::Client::with_ca(host, &key, ca.as_deref())?
        }
        None => tokio::task::spawn_blocking(move || local.client()).await??,
    };
    commands::run(client, cli.command).await
}

/// One line of `cove snapshot ls`.
pub(crate) struct SnapshotRow<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub sandbox: Option<&'a str>,
    pub image: &'a str,
    pub memory_mib: u32,
    pub created_at: i64,
}

/// The `cove snapshot ls` table (local and remote alike).
pub(crate) fn print_snapshots<'a>(rows: impl Iterator<Item = SnapshotRow<'a>>) {
    println!(
        "{:<12}  {:<16}  {:<12}  {:<10}  {:>7}  CREATED",
        "ID", "NAME", "SANDBOX", "IMAGE", "MEMORY"
    );
    for s in rows {
        println!(
            "{:<12}  {:<16}  {:<12}  {:<10}  {:>6}M  {}",
            s.id,
            s.name,
            s.sandbox.unwrap_or("-"),
            s.image,
            s.memory_mib,
            ago(s.created_at)
        );
    }
}

/// One line of `cove ls`.
pub(crate) struct SandboxRow<'a> {
    pub id: &'a str,
    pub name: Option<&'a str>,
    pub image: &'a str,
    pub state: cove_api::SandboxState,
    pub cpus: u32,
    pub memory_mib: u32,
    pub created_at: i64,
}

/// The `cove ls` table (local and remote alike).
pub(crate) fn print_sandboxes<'a>(rows: impl Iterator<Item = SandboxRow<'a>>) {
    println!(
        "{:<12}  {:<16}  {:<10}  {:<10}  {:>4}  {:>7}  CREATED",
        "ID", "NAME", "IMAGE", "STATE", "CPUS", "MEMORY"
    );
    for r in rows {
        println!(
            "{:<12}  {:<16}  {:<10}  {:<10}  {:>4}  {:>6}M  {}",
            r.id,
            r.name.unwrap_or("-"),
            r.image,
            r.state,
            r.cpus,
            r.memory_mib,
            ago(r.created_at)
        );
    }
}

pub(crate) fn ago(ms: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(0))
        .unwrap_or(0);
    let s = (now - ms).max(0) / 1000;
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}
