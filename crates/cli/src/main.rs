//! cove: run code in microVM sandboxes.
//!
//! Exit codes: a command run in a sandbox passes its own exit code through (128 + N when signal
//! N killed it); 125 means cove itself failed (bad arguments, no such sandbox, a VM that would
//! not start); 126 the program could not be run; 127 the program was not found.

mod args;
mod copy;
mod image;
mod remote;
mod term;

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use cove_host::agent::Event;
use cove_host::{AgentClient, ClientError, CreateSpec, Host, HostError};
use cove_protocol::{ErrorCode, ExecRequest, Reply, Request, Stream, TtySize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use args::{
    Cli, Command, ExecOpts, FsCommand, Policy, Resources, SnapshotCommand, TemplateCommand,
};

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

pub(crate) fn exit_code_for(e: &anyhow::Error) -> u8 {
    let agent = e
        .downcast_ref::<ClientError>()
        .or_else(|| match e.downcast_ref::<HostError>() {
            Some(HostError::Client(c)) => Some(c),
            _ => None,
        });
    match agent {
        Some(ClientError::Agent(a)) if a.message.starts_with("executable not found") => {
            EXIT_NOT_FOUND
        }
        Some(ClientError::Agent(a))
            if a.code == ErrorCode::PermissionDenied && a.message.starts_with("starting") =>
        {
            EXIT_CANNOT_RUN
        }
        _ => EXIT_COVE,
    }
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    if let Some(host) = cli.host.as_deref().filter(|h| !h.is_empty()) {
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
        let client = cove_sdk::Client::with_ca(host, &key, ca.as_deref())?;
        return remote::run(client, cli.command).await;
    }
    let home = cli.home.clone().unwrap_or_else(cove_host::default_home);
    let host = || Host::open(&home);
    match cli.command {
        Command::Run {
            res,
            name,
            image,
            exec,
            command,
        } => {
            let host = host()?;
            let spec = spec(&res, name, image, None, None);
            let rec = match host.create(&spec).await {
                Ok(r) => r,
                Err(e) => {
                    // `run` leaves nothing behind, not even a failed sandbox.
                    if let HostError::StartFailed { id, .. } = &e {
                        let _ = host.remove(id, true).await;
                    }
                    return Err(e.into());
                }
            };
            let result = async {
                let client = host.connect(&rec.id).await?;
                let img = host.image_of(&rec)?;
                exec_command(&client, &img.config, &rec.env, &exec, command).await
            }
            .await;
            // `run` is create, exec, remove: the sandbox goes whatever happened.
            let removed = host.remove(&rec.id, true).await;
            let code = result?;
            removed?;
            Ok(code)
        }
        Command::Create {
            res,
            name,
            image,
            from_snapshot,
            policy,
        } => {
            let host = host()?;
            let rec = host
                .create(&spec(&res, name, image, from_snapshot, Some(&policy)))
                .await?;
            println!("{}", rec.id);
            Ok(0)
        }
        Command::Fork { id, count } => {
            for r in host()?.fork(&id, count).await? {
                println!("{}", r.id);
            }
            Ok(0)
        }
        Command::Image { command } => image::run(host()?, command).await,
        Command::Snapshot { command, id, name } => {
            let host = host()?;
            match (command, id) {
                (Some(SnapshotCommand::Ls { json }), _) => {
                    let all = host.snapshots()?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&all)?);
                    } else {
                        print_snapshots(all.iter().map(|s| SnapshotRow {
                            id: &s.id,
                            name: match (&s.name, s.template) {
                                (Some(n), _) => n,
                                (None, true) => "(template)",
                                (None, false) => "-",
                            },
                            sandbox: s.sandbox.as_deref(),
                            image: &s.image,
                            memory_mib: s.memory_mib,
                            created_at: s.created_at,
                        }));
                    }
                }
                (Some(SnapshotCommand::Rm { ids }), _) => {
                    for id in ids {
                        println!("{}", host.remove_snapshot(&id).await?.id);
                    }
                }
                (None, Some(id)) => println!("{}", host.snapshot(&id, name, false).await?.id),
                (None, None) => anyhow::bail!("give a sandbox to snapshot, or `ls` / `rm`"),
            }
            Ok(0)
        }
        Command::Template {
            command: TemplateCommand::Create { image, res },
        } => {
            let snap = host()?
                .template_create(&spec(&res, None, image, None, None))
                .await?;
            println!("{}", snap.id);
            Ok(0)
        }
        Command::Exec { exec, id, command } => {
            let host = host()?;
            let rec = host.get(&id)?;
            let client = host.connect(&rec.id).await?;
            // An image removed under a sandbox (it cannot be, but a home may be tampered
            // with) costs only its defaults.
            let config = host.image_of(&rec).map(|i| i.config).unwrap_or_default();
            exec_command(&client, &config, &rec.env, &exec, command).await
        }
        Command::Ls { quiet, json } => {
            let all = host()?.list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else if quiet {
                for r in all {
                    println!("{}", r.id);
                }
            } else {
                // A tenant's names are its own: the operator sees them as `tenant/name`, which
                // is also how they address them here.
                let names: Vec<Option<String>> = all
                    .iter()
                    .map(|r| match (&r.owner, &r.name) {
                        (Some(o), Some(n)) => Some(format!("{o}/{n}")),
                        (None, n) => n.clone(),
                        (Some(_), None) => None,
                    })
                    .collect();
                print_sandboxes(all.iter().zip(&names).map(|(r, name)| SandboxRow {
                    id: &r.id,
                    name: name.as_deref(),
                    image: &r.image,
                    state: r.state,
                    cpus: r.cpus,
                    memory_mib: r.memory_mib,
                    created_at: r.created_at,
                }));
            }
            Ok(0)
        }
        Command::Inspect { id } => {
            let host = host()?;
            let rec = host.get(&id)?;
            let vm = if rec.state == cove_api::SandboxState::Running {
                cove_host::vm_status(&rec).await.ok()
            } else {
                None
            };
            let mut v = serde_json::to_value(&rec)?;
            v["vm"] = serde_json::to_value(vm)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(0)
        }
        Command::Logs { id } => {
            let log = host()?.logs(&id)?;
            std::io::stdout().write_all(&log)?;
            Ok(0)
        }
        Command::Cp { src, dst } => {
            copy::run(&host()?, &src, &dst).await?;
            Ok(0)
        }
        Command::Rm { force, ids } => {
            let host = host()?;
            let mut failed = false;
            for id in ids {
                match host.remove(&id, force).await {
                    Ok(r) => println!("{}", r.id),
                    Err(e) => {
                        eprintln!("cove: {e}");
                        failed = true;
                    }
                }
            }
            Ok(if failed { EXIT_COVE } else { 0 })
        }
        Command::Stop { ids } => {
            let host = host()?;
            for id in ids {
                let r = host.stop(&id).await?;
                println!("{}", r.id);
            }
            Ok(0)
        }
        Command::Pause { id } => {
            println!("{}", host()?.pause(&id).await?.id);
            Ok(0)
        }
        Command::Resume { id } => {
            println!("{}", host()?.resume(&id).await?.id);
            Ok(0)
        }
        Command::Hibernate { id } => {
            println!("{}", host()?.hibernate(&id).await?.id);
            Ok(0)
        }
        Command::Fs { command } => fs(&host()?, command).await,
        Command::Info { json } => info(&home, json).await,
    }
}

fn spec(
    res: &Resources,
    name: Option<String>,
    image: String,
    from_snapshot: Option<String>,
    policy: Option<&Policy>,
) -> CreateSpec {
    CreateSpec {
        image,
        name,
        cpus: res.cpus,
        memory_mib: res.memory,
        disk_mib: res.disk,
        from_snapshot,
        use_template: true,
        ttl_secs: policy.and_then(|p| p.ttl),
        idle_timeout_secs: policy.and_then(|p| p.idle_timeout),
        on_idle: policy.and_then(|p| p.on_idle.clone()),
        ..CreateSpec::default()
    }
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

/// Runs one command in a sandbox, streaming its I/O; returns its shell exit code.
async fn exec_command(
    client: &AgentClient,
    image: &cove_host::ImageConfig,
    sandbox_env: &std::collections::BTreeMap<String, String>,
    opts: &ExecOpts,
    command: Vec<String>,
) -> anyhow::Result<u8> {
    let argv = if command.is_empty() {
        image.default_argv()
    } else {
        command
    };
    if argv.is_empty() {
        anyhow::bail!("no command given and the image has no default command");
    }
    let mut env = image.env_pairs();
    // The sandbox's own environment over the image's, then the command's over both.
    for (k, v) in sandbox_env {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    for kv in &opts.env {
        let (k, v) = kv
            .split_once('=')
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .unwrap_or_else(|| (kv.clone(), std::env::var(kv).unwrap_or_default()));
        env.retain(|(ek, _)| *ek != k);
        env.push((k, v));
    }
    let tty = if opts.tty {
        Some(term::size().unwrap_or(TtySize { rows: 24, cols: 80 }))
    } else {
        None
    };
    let timeout_ms = match opts.timeout {
        None => None,
        Some(s) => {
            let d = std::time::Duration::try_from_secs_f64(s)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    anyhow::anyhow!("invalid --timeout {s}: give a positive number of seconds")
                })?;
            Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1))
        }
    };
    let req = ExecRequest {
        argv,
        env,
        cwd: opts.workdir.clone().or_else(|| image.workdir.clone()),
        user: opts.user.clone().or_else(|| image.user.clone()),
        tty,
        stdin: opts.interactive,
        timeout_ms,
    };
    let mut ex = client.exec(req).await?;
    let sender = ex.session.sender();
    let _raw = if opts.tty && opts.interactive {
        term::RawMode::enter()
    } else {
        None
    };
    if opts.interactive {
        let s = sender.clone();
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.data(Stream::Stdin, buf[..n].to_vec()).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = s.eof(Stream::Stdin).await;
        });
    }
    if opts.tty {
        let s = sender.clone();
        tokio::spawn(async move {
            let Ok(mut winch) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while winch.recv().await.is_some() {
                if let Some(size) = term::size()
                    && s.request(&Request::Resize(size)).await.is_err()
                {
                    return;
                }
            }
        });
    }
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    loop {
        match ex.session.next().await {
            Some(Event::Data(Stream::Stderr, b)) => {
                stderr.write_all(&b).await?;
                stderr.flush().await?;
            }
            Some(Event::Data(_, b)) => {
                // A closed stdout (`| head`) is not the sandbox's failure: keep draining.
                if stdout.write_all(&b).await.is_ok() {
                    let _ = stdout.flush().await;
                }
            }
            Some(Event::Eof(_)) => {}
            Some(Event::Reply(Reply::Exited(st))) => {
                drop(_raw);
                if st.timed_out {
                    eprintln!("cove: the command timed out and was killed");
                }
                return Ok(u8::try_from(st.shell_code().clamp(0, 255)).unwrap_or(255));
            }
            Some(Event::Reply(Reply::Error(e))) => return Err(ClientError::Agent(e).into()),
            Some(Event::Reply(r)) => anyhow::bail!("unexpected answer from the agent: {r:?}"),
            None => return Err(ClientError::Closed.into()),
        }
    }
}

async fn fs(host: &Host, command: FsCommand) -> anyhow::Result<u8> {
    let client = host.connect(command.sandbox()).await?;
    match command {
        FsCommand::Stat { path, .. } => {
            println!(
                "{}",
                serde_json::to_string_pretty(&client.stat(&path).await?)?
            );
        }
        FsCommand::Ls { path, json, .. } => {
            let entries = client.list(&path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                for e in entries {
                    let kind = match e.kind {
                        cove_protocol::FileKind::Dir => "d",
                        cove_protocol::FileKind::Symlink => "l",
                        cove_protocol::FileKind::File => "-",
                        cove_protocol::FileKind::Other => "?",
                    };
                    println!("{kind}{:04o} {:>12} {}", e.mode, e.size, e.name);
                }
            }
        }
        FsCommand::Mkdir { path, parents, .. } => client.mkdir(&path, parents).await?,
        FsCommand::Rm {
            path, recursive, ..
        } => client.remove(&path, recursive).await?,
        FsCommand::Mv { from, to, .. } => client.rename(&from, &to).await?,
    }
    Ok(0)
}

async fn info(home: &Path, json: bool) -> anyhow::Result<u8> {
    let host = Host::open(home)?;
    let home = host.home();
    let choice = cove_host::engine::choose(None);
    let qemu_version = match &choice {
        Ok(c) => std::process::Command::new(&c.qemu)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.lines().next().map(str::to_string)),
        Err(_) => None,
    };
    let kernel = host.kernel();
    let initramfs = host.initramfs();
    // What templates are matched on (see `Host::guest_identity`).
    let guest = host.guest_identity().ok();
    let imgs: Vec<String> = host
        .image_list()?
        .into_iter()
        .flat_map(|i| i.names)
        .collect();
    let v = serde_json::json!({
        "cove_version": env!("CARGO_PKG_VERSION"),
        "protocol_version": cove_protocol::PROTOCOL_VERSION,
        "home": home,
        "engine": choice.as_ref().ok(),
        "engine_error": choice.as_ref().err().map(ToString::to_string),
        "virtualisation": cove_host::engine::probe(),
        "qemu": qemu_version,
        "kernel": { "path": kernel, "present": kernel.is_file() },
        "initramfs": { "path": initramfs, "present": initramfs.is_file() },
        "images": imgs,
        "guest": guest,
        "tsc_khz": cove_host::engine::tsc_khz(home),
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!(
        "cove {} (protocol {})",
        env!("CARGO_PKG_VERSION"),
        cove_protocol::PROTOCOL_VERSION
    );
    println!("home:      {}", home.display());
    match &choice {
        Ok(c) => {
            println!("engine:    {} ({})", c.engine, c.accel);
            println!("why:       {}", c.reason);
        }
        Err(e) => println!("engine:    none: {e}"),
    }
    println!(
        "qemu:      {}",
        qemu_version.as_deref().unwrap_or("not found")
    );
    let present = |p: &Path| {
        if p.is_file() {
            ""
        } else {
            " (missing: run `make setup`)"
        }
    };
    println!("kernel:    {}{}", kernel.display(), present(&kernel));
    println!("initramfs: {}{}", initramfs.display(), present(&initramfs));
    if let Some(g) = &guest {
        println!("guest:     {g}");
    }
    println!(
        "images:    {}",
        if imgs.is_empty() {
            "none".to_string()
        } else {
            imgs.join(", ")
        }
    );
    Ok(0)
}
