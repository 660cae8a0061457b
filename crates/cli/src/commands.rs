//! Every `cove` command, as requests to a coved's API through `cove-sdk`: the local coved
//! (the caller is the host's administrator) or a remote one (a tenant's key).

use cove_api as api;
use cove_image::Progress as _;
use cove_sdk::{Client, ExecOutput};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::args::{
    Background, Command, ExecOpts, FsCommand, ImageCommand, Resources, SnapshotCommand,
};
use crate::{EXIT_COVE, SandboxRow, print_sandboxes, term};

fn create_req(res: &Resources, image: String, name: Option<String>) -> api::CreateSandbox {
    api::CreateSandbox {
        name,
        image: Some(image),
        cpus: Some(res.cpus),
        memory_mib: Some(res.memory),
        disk_mib: Some(res.disk),
        engine: res.engine,
        network: res.net.policy(),
        ..Default::default()
    }
}

fn print_network(p: &api::NetworkPolicy, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(p)?);
        return Ok(());
    }
    println!("mode {}", p.mode);
    for d in &p.allow {
        println!("allow {d}");
    }
    for d in &p.deny {
        println!("deny {d}");
    }
    Ok(())
}

/// Runs one command against the coved.
pub async fn run(c: Client, command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Run {
            res,
            name,
            image,
            exec,
            command,
        } => {
            let sb = c.create(&create_req(&res, image, name)).await?;
            let fg = Background {
                detach: false,
                tag: None,
            };
            let code = exec_stream(&c, &sb.id, &exec, &fg, command).await;
            // `run` is create, exec, remove: the sandbox goes whatever happened.
            let removed = c.delete(&sb.id).await;
            let code = code?;
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
            let req = api::CreateSandbox {
                snapshot: from_snapshot,
                ttl_secs: policy.ttl,
                idle_timeout_secs: policy.idle_timeout,
                on_idle: policy.on_idle,
                on_expire: policy.on_expire,
                ..create_req(&res, image, name)
            };
            println!("{}", c.create(&req).await?.id);
            Ok(0)
        }
        Command::Exec {
            exec,
            background,
            id,
            command,
        } => exec_stream(&c, &id, &exec, &background, command).await,
        Command::Commands { id, json } => {
            let all = c.commands(&id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                print_commands(&all);
            }
            Ok(0)
        }
        Command::Attach {
            id,
            command,
            interactive,
            tty,
        } => follow(c.attach(&id, &command).await?, interactive, tty).await,
        Command::Kill {
            id,
            command,
            signal,
        } => {
            c.signal_command(&id, &command, signal).await?;
            Ok(0)
        }
        Command::Ls { quiet, json } => {
            let all = c.list().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else if quiet {
                for s in all {
                    println!("{}", s.id);
                }
            } else {
                // A tenant's names are its own: the host's administrator sees them as
                // `tenant/name`, which is also how it addresses them.
                let names: Vec<Option<String>> = all
                    .iter()
                    .map(
                        |s| match (s.host.as_ref().and_then(|h| h.owner.as_ref()), &s.name) {
                            (Some(o), Some(n)) => Some(format!("{o}/{n}")),
                            (None, n) => n.clone(),
                            (Some(_), None) => None,
                        },
                    )
                    .collect();
                print_sandboxes(all.iter().zip(&names).map(|(s, name)| SandboxRow {
                    id: &s.id,
                    name: name.as_deref(),
                    image: &s.image,
                    state: s.state,
                    cpus: s.cpus,
                    memory_mib: s.memory_mib,
                    created_at: s.created_at,
                }));
            }
            Ok(0)
        }
        Command::Inspect { id } => {
            println!("{}", serde_json::to_string_pretty(&c.get(&id).await?)?);
            Ok(0)
        }
        Command::Logs { id } => {
            tokio::io::stdout().write_all(&c.logs(&id).await?).await?;
            Ok(0)
        }
        Command::Rm { ids, force } => {
            let mut failed = false;
            for id in ids {
                match c.remove(&id, force).await {
                    Ok(()) => println!("{id}"),
                    Err(e) => {
                        eprintln!("cove: {e}");
                        failed = true;
                    }
                }
            }
            Ok(if failed { EXIT_COVE } else { 0 })
        }
        Command::Stop { ids } => {
            for id in ids {
                lifecycle(&c, &id, "stop").await?;
            }
            Ok(0)
        }
        Command::Fs { command } => fs(&c, command).await,
        Command::Image {
            command:
                ImageCommand::Pull {
                    reference,
                    insecure,
                    username,
                    password_stdin,
                    quiet,
                },
        } => {
            let password = if password_stdin {
                let mut p = String::new();
                tokio::io::stdin().read_to_string(&mut p).await?;
                Some(p.trim_end_matches(['\r', '\n']).to_string())
            } else {
                None
            };
            // Without flags, the caller's own docker login for that registry (coved runs as
            // someone else) — sent only to the local coved or over TLS, never in clear text.
            let private = c.base().starts_with("unix:") || c.base().starts_with("https://");
            let (username, password) = match (username, password) {
                (Some(u), p) => (Some(u), p),
                (None, _) if !private => (None, None),
                (None, _) => match cove_image::parse_reference(&reference) {
                    Ok(r) => cove_image::docker_credentials(r.resolve_registry(), None)
                        .map_or((None, None), |(u, p)| (Some(u), Some(p))),
                    Err(_) => (None, None),
                },
            };
            let started = c
                .pull(&api::Pull {
                    reference,
                    insecure,
                    username,
                    password,
                })
                .await?;
            // The server's progress events, shown as a local pull's.
            let display = crate::image::Display::new(quiet);
            let last = c
                .pull_progress(&started.id, |ev| {
                    if let Ok(e) = serde_json::from_value::<cove_image::Event>(ev.clone()) {
                        display.event(&e);
                    }
                })
                .await?;
            drop(display);
            match last["type"].as_str() {
                Some("complete") => {
                    let names: Vec<&str> = last["names"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|n| n.as_str()).collect())
                        .unwrap_or_default();
                    let digest = last["digest"].as_str().unwrap_or_default();
                    if names.is_empty() {
                        println!("{digest}");
                    } else {
                        println!("{digest} {}", names.join(" "));
                    }
                    Ok(0)
                }
                _ => anyhow::bail!(
                    "{}",
                    last["error"]["message"]
                        .as_str()
                        .unwrap_or("the pull failed")
                ),
            }
        }
        Command::Image {
            command: ImageCommand::Rm { images },
        } => {
            let all = c.images().await?;
            let mut failed = false;
            for key in images {
                // Digest prefixes resolve here; names and references go as they are, so the
                // coved removes just the name when others point at the image.
                let target = match find_image(&all, &key) {
                    Some(i) if !i.names.contains(&key) => i.digest.clone(),
                    _ => key.clone(),
                };
                match c.delete_image(&target).await {
                    Ok(Some(d)) => println!("removed {d}"),
                    Ok(None) => println!("untagged {key}"),
                    Err(e) => {
                        eprintln!("cove: {e}");
                        failed = true;
                    }
                }
            }
            Ok(if failed { EXIT_COVE } else { 0 })
        }
        Command::Image {
            command: ImageCommand::Inspect { image },
        } => {
            println!("{}", serde_json::to_string_pretty(&c.image(&image).await?)?);
            Ok(0)
        }
        Command::Template {
            command: crate::args::TemplateCommand::Create { image, res },
        } => {
            anyhow::ensure!(
                res.net.allow.is_empty()
                    && res.net.deny.is_empty()
                    && !res.net.public_ports
                    && res.net.egress_mbps.is_none(),
                "a template takes --network (with a device or without), not a policy: each \
                 sandbox restored from it gets its own"
            );
            let t = c
                .create_template(&api::CreateTemplate {
                    image,
                    cpus: Some(res.cpus),
                    memory_mib: Some(res.memory),
                    disk_mib: Some(res.disk),
                    network: res.net.network,
                })
                .await?;
            println!("{}", t.id);
            Ok(0)
        }
        Command::Image {
            command: ImageCommand::Import {
                path, name, pick, ..
            },
        } => {
            // A layout directory travels as a tar of it, packed here.
            let packed = if path.is_dir() {
                let dir = path.clone();
                Some(
                    pack(move |out| {
                        let mut b = tar::Builder::new(out);
                        b.follow_symlinks(false);
                        b.append_dir_all(".", &dir)?;
                        b.finish()?;
                        Ok(())
                    })
                    .await?,
                )
            } else {
                None
            };
            let file = packed.as_ref().map_or(path.as_path(), |t| t.path());
            let mut f = tokio::fs::File::open(file)
                .await
                .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
            let i = c
                .import_image(&mut f, name.as_deref(), pick.as_deref())
                .await?;
            print_imported(&i);
            Ok(0)
        }
        Command::Image {
            command:
                ImageCommand::ImportRootfs {
                    dir,
                    name,
                    env,
                    workdir,
                    user,
                    cmd,
                    ..
                },
        } => {
            // The directory is on this machine: it is packed here as a one-layer OCI layout
            // (the digest a local import of the same tree gives) and imported by the coved.
            let config = cove_image::ImageConfig {
                env,
                workdir,
                user,
                entrypoint: vec![],
                cmd,
            };
            let layout = pack(move |out| {
                cove_image::write_rootfs_layout(&dir, &config, out)?;
                Ok(())
            })
            .await?;
            let mut f = tokio::fs::File::open(layout.path()).await?;
            let i = c.import_image(&mut f, Some(&name), None).await?;
            print_imported(&i);
            Ok(0)
        }
        Command::Image {
            command: ImageCommand::Prune,
        } => {
            let p = c.prune_images().await?;
            for d in &p.removed {
                println!("removed {d}");
            }
            println!("freed {:.1} MB", p.freed_bytes as f64 / 1e6);
            Ok(0)
        }
        Command::Scrub { only, json } => {
            let s = c.scrub(only.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("checked {}, corrupted {}", s.checked, s.corrupted.len());
                for f in &s.corrupted {
                    let what = match f.action {
                        api::ScrubAction::Refetch => {
                            "removed here; the next restore fetches the stored copy"
                        }
                        api::ScrubAction::Refused => "kept; every restore of it is refused",
                    };
                    println!("{:?} {}: {} ({what})", f.held, f.id, f.error);
                }
            }
            Ok(if s.corrupted.is_empty() { 0 } else { 1 })
        }
        Command::Info { json } => {
            let i = c.info().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&i)?);
            } else {
                println!(
                    "coved {} (protocol {}) at {}",
                    i.version,
                    i.protocol_version,
                    c.base()
                );
                match &i.host {
                    Some(h) => print_host(h),
                    None => println!("engine:    {}", i.engine),
                }
                println!(
                    "images:    {}",
                    if i.images.is_empty() {
                        "none".to_string()
                    } else {
                        i.images.join(", ")
                    }
                );
            }
            Ok(0)
        }
        Command::Pause { id } => lifecycle(&c, &id, "pause").await,
        Command::Resume { id } => lifecycle(&c, &id, "resume").await,
        Command::Hibernate { id } => lifecycle(&c, &id, "hibernate").await,
        Command::Network { id, net, json } => {
            let sb = match net.policy() {
                Some(p) => c.set_network(&id, &p).await?,
                None => c.get(&id).await?,
            };
            print_network(&sb.network, json)?;
            Ok(0)
        }
        Command::PortForward { id, ports, address } => {
            let (local, remote) = match ports.split_once(':') {
                Some((l, r)) => (l.parse::<u16>(), r.parse::<u16>()),
                None => (ports.parse::<u16>(), ports.parse::<u16>()),
            };
            let (Ok(local), Ok(remote)) = (local, remote) else {
                anyhow::bail!("{ports:?}: LOCAL:REMOTE or PORT, numbers up to 65535");
            };
            anyhow::ensure!(remote > 0, "the sandbox's port is 1 to 65535");
            // The sandbox must exist before anything listens.
            let sb = c.get(&id).await?;
            let l = tokio::net::TcpListener::bind((address.as_str(), local)).await?;
            eprintln!(
                "forwarding {} -> sandbox {}:{remote} (Ctrl-C stops)",
                l.local_addr()?,
                sb.id
            );
            loop {
                let (conn, _) = tokio::select! {
                    a = l.accept() => a?,
                    _ = tokio::signal::ctrl_c() => return Ok(0),
                };
                let _ = conn.set_nodelay(true);
                let c = c.clone();
                let id = sb.id.clone();
                tokio::spawn(async move {
                    if let Err(e) = c.relay_port(&id, remote, conn).await {
                        eprintln!("cove: port {remote}: {e}");
                    }
                });
            }
        }
        Command::Url { id, port, expires } => {
            let u = c
                .sign_url(
                    &id,
                    &api::SignUrl {
                        port,
                        expires_secs: Some(expires),
                    },
                )
                .await?;
            println!("{}", u.url);
            Ok(0)
        }
        Command::Fork { id, count } => {
            for s in c.fork(&id, count).await? {
                println!("{}", s.id);
            }
            Ok(0)
        }
        Command::Snapshot { command, id, name } => {
            match (command, id) {
                (Some(SnapshotCommand::Ls { json }), _) => {
                    let all = c.snapshots().await?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&all)?);
                    } else {
                        crate::print_snapshots(all.iter().map(|s| crate::SnapshotRow {
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
                        c.delete_snapshot(&id).await?;
                        println!("{id}");
                    }
                }
                (None, Some(id)) => {
                    println!("{}", c.snapshot(&id, name.as_deref()).await?.id);
                }
                (None, None) => anyhow::bail!("give a sandbox to snapshot, or `ls` / `rm`"),
            }
            Ok(0)
        }
        Command::Cp { src, dst } => {
            crate::copy::run(&c, &src, &dst).await?;
            Ok(0)
        }
        Command::Daemon { .. } => unreachable!("daemon commands never reach a coved"),
        Command::Events {
            sandbox,
            after,
            follow,
            json,
        } => {
            if !json {
                println!(
                    "{:>6}  {:<19}  {:<12}  {:<11}  {:<16}  CAUSE",
                    "SEQ", "TIME", "SANDBOX", "STATE", "ACTOR"
                );
            }
            c.events(after, sandbox.as_deref(), follow, |e| {
                if json {
                    println!("{}", serde_json::to_string(&e).unwrap_or_default());
                } else {
                    println!(
                        "{:>6}  {:<19}  {:<12}  {:<11}  {:<16}  {}",
                        e.seq,
                        crate::ago(e.at),
                        e.sandbox,
                        e.state,
                        e.actor,
                        e.cause.as_deref().unwrap_or("-")
                    );
                }
            })
            .await?;
            Ok(0)
        }
        Command::Image {
            command: ImageCommand::Ls { json, quiet },
        } => {
            let all = c.images().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else if quiet {
                for i in all {
                    println!("{}", i.digest);
                }
            } else {
                crate::image::print_images(all.iter().map(|i| crate::image::ImageRow {
                    names: &i.names,
                    digest: &i.digest,
                    bytes: i.content_bytes,
                    users: i.used_by.len(),
                    created_at: i.created_at,
                }));
            }
            Ok(0)
        }
    }
}

/// The host's part of `cove info` (the administrator's view).
fn print_host(h: &api::HostInfo) {
    println!("home:      {}", h.home);
    match (&h.engine, &h.engine_error) {
        (Some(e), _) => {
            println!("engine:    {} ({})", e.engine, e.accel);
            println!("why:       {}", e.reason);
        }
        (None, e) => println!("engine:    none: {}", e.as_deref().unwrap_or("unknown")),
    }
    println!("qemu:      {}", h.qemu.as_deref().unwrap_or("not found"));
    let present = |a: &api::Asset| {
        if a.present {
            ""
        } else {
            " (missing: run `make setup`)"
        }
    };
    println!("kernel:    {}{}", h.kernel.path, present(&h.kernel));
    println!("initramfs: {}{}", h.initramfs.path, present(&h.initramfs));
    if let Some(g) = &h.guest {
        println!("guest:     {g}");
    }
    let i = &h.isolation;
    println!(
        "isolation: cgroups {} ({}), namespaces {}, user namespaces {}, seccomp {}",
        i.cgroups,
        if i.controllers.is_empty() {
            "no controllers".to_string()
        } else {
            i.controllers.join(" ")
        },
        i.namespaces.join(" "),
        if i.user_namespaces { "yes" } else { "no" },
        if i.seccomp { "yes" } else { "no" }
    );
    match &h.jail_off {
        None => {
            println!("jail: every sandbox (namespaces, pivoted root, own user, cgroups, seccomp)")
        }
        Some(why) => println!("jail: off ({why}): sandboxes run as root in the host's namespaces"),
    }
    let n = &h.network;
    match (&n.off, n.services) {
        (Some(why), _) => println!("network:   off ({why}): every sandbox is `none`"),
        (None, Some([dns, http, tls])) => println!(
            "network:   links from {}; resolver on port {dns}, HTTP and TLS proxies on {http}, {tls}",
            n.pool
        ),
        (None, None) => println!(
            "network:   links from {}; no resolver or proxies (sandboxes get no DNS)",
            n.pool
        ),
    }
}

fn print_imported(i: &api::Image) {
    if i.names.is_empty() {
        println!("{}", i.digest);
    } else {
        println!("{} {}", i.digest, i.names.join(" "));
    }
}

/// Writes a tar with `write` into a temporary file (off the async threads) for an upload.
async fn pack(
    write: impl FnOnce(&mut std::fs::File) -> anyhow::Result<()> + Send + 'static,
) -> anyhow::Result<tempfile::NamedTempFile> {
    tokio::task::spawn_blocking(move || {
        let mut t = tempfile::Builder::new()
            .prefix("cove-upload-")
            .suffix(".tar")
            .tempfile()?;
        write(t.as_file_mut())?;
        Ok(t)
    })
    .await?
}

/// An image by name, digest or digest prefix (of at least 4 hex digits).
fn find_image<'a>(all: &'a [api::Image], key: &str) -> Option<&'a api::Image> {
    let hex = key.strip_prefix("sha256:").unwrap_or(key);
    all.iter()
        .find(|i| i.names.iter().any(|n| n == key))
        .or_else(|| {
            let by_digest: Vec<&api::Image> = all
                .iter()
                .filter(|i| hex.len() >= 4 && i.digest[7.min(i.digest.len())..].starts_with(hex))
                .collect();
            (by_digest.len() == 1).then(|| by_digest[0])
        })
}

/// `cove fs …` through the API, with the local output.
async fn fs(c: &Client, command: FsCommand) -> anyhow::Result<u8> {
    let id = command.sandbox().to_string();
    match command {
        FsCommand::Stat { path, .. } => {
            println!(
                "{}",
                serde_json::to_string_pretty(&c.stat(&id, &path).await?)?
            );
        }
        FsCommand::Ls { path, json, .. } => {
            let entries = c.list_dir(&id, &path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                for e in entries {
                    let kind = match e.kind.as_str() {
                        "dir" => "d",
                        "symlink" => "l",
                        "file" => "-",
                        _ => "?",
                    };
                    println!("{kind}{:04o} {:>12} {}", e.mode, e.size, e.name);
                }
            }
        }
        FsCommand::Mkdir { path, parents, .. } => c.mkdir(&id, &path, parents).await?,
        FsCommand::Rm {
            path, recursive, ..
        } => c.remove_path(&id, &path, recursive).await?,
        FsCommand::Mv { from, to, .. } => c.rename(&id, &from, &to).await?,
        FsCommand::Watch {
            path,
            recursive,
            json,
            ..
        } => {
            use std::io::Write as _;
            c.watch(&id, &path, recursive, |ev| {
                let line = if json {
                    serde_json::to_string(&ev).expect("serializes")
                } else {
                    let kind = serde_json::to_value(ev.kind).expect("serializes");
                    let slash = if ev.dir { "/" } else { "" };
                    format!("{:<8} {}{slash}", kind.as_str().unwrap_or("?"), ev.name)
                };
                let mut out = std::io::stdout().lock();
                // A closed stdout (`| head`) ends the watch.
                writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
            })
            .await?;
        }
    }
    Ok(0)
}

async fn lifecycle(c: &Client, id: &str, op: &str) -> anyhow::Result<u8> {
    println!("{}", c.lifecycle(id, op).await?.id);
    Ok(0)
}

/// Runs a command over the WebSocket exec, streaming its I/O; returns its shell exit code.
async fn exec_stream(
    c: &Client,
    id: &str,
    opts: &ExecOpts,
    background: &Background,
    command: Vec<String>,
) -> anyhow::Result<u8> {
    let mut env = std::collections::BTreeMap::new();
    for kv in &opts.env {
        let (k, v) = kv
            .split_once('=')
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .unwrap_or_else(|| (kv.clone(), std::env::var(kv).unwrap_or_default()));
        env.insert(k, v);
    }
    let tty = opts.tty.then(|| {
        let s = term::size().unwrap_or(cove_protocol::TtySize { rows: 24, cols: 80 });
        api::TtySize {
            rows: s.rows,
            cols: s.cols,
        }
    });
    let start = api::ExecStart {
        cmd: command,
        env,
        cwd: opts.workdir.clone(),
        user: opts.user.clone(),
        tty,
        stdin: opts.interactive,
        timeout_secs: opts.timeout,
        tag: background.tag.clone(),
        keep: false,
    };
    if background.detach {
        let cmd = c.start_command(id, &start).await?;
        println!("{}", cmd.pid);
        return Ok(0);
    }
    let stream = c.exec_stream(id, &start).await?;
    follow(stream, opts.interactive, opts.tty).await
}

/// Relays a command's stream and this terminal until the command exits.
async fn follow(stream: cove_sdk::ExecStream, interactive: bool, tty: bool) -> anyhow::Result<u8> {
    let (mut input, mut output) = (stream.input, stream.output);
    let _raw = if tty && interactive {
        term::RawMode::enter()
    } else {
        None
    };
    // Stdin and resizes go through one task that owns the sending half.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Outgoing>(16);
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let r = match m {
                Outgoing::Stdin(b) => input.stdin(&b).await,
                Outgoing::Control(c) => input.control(&c).await,
            };
            if r.is_err() {
                return;
            }
        }
    });
    if interactive {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(Outgoing::Stdin(buf[..n].to_vec())).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = tx.send(Outgoing::Control(api::ExecControl::Eof)).await;
        });
    }
    if tty {
        let tx = tx.clone();
        tokio::spawn(async move {
            let Ok(mut winch) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while winch.recv().await.is_some() {
                if let Some(s) = term::size() {
                    let c = api::ExecControl::Resize {
                        rows: s.rows,
                        cols: s.cols,
                    };
                    if tx.send(Outgoing::Control(c)).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    drop(tx);
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    while let Some(ev) = output.next().await {
        match ev? {
            ExecOutput::Started(_) => {}
            ExecOutput::Stdout(b) => {
                // A closed stdout (`| head`) is not the sandbox's failure: keep draining.
                if stdout.write_all(&b).await.is_ok() {
                    let _ = stdout.flush().await;
                }
            }
            ExecOutput::Stderr(b) => {
                stderr.write_all(&b).await?;
                stderr.flush().await?;
            }
            ExecOutput::Exit(code, timed_out) => {
                drop(_raw);
                if timed_out {
                    eprintln!("cove: the command timed out and was killed");
                }
                return Ok(u8::try_from(code.clamp(0, 255)).unwrap_or(255));
            }
        }
    }
    anyhow::bail!("the exec stream ended without the command's exit")
}

enum Outgoing {
    Stdin(Vec<u8>),
    Control(api::ExecControl),
}

fn print_commands(all: &[api::Command]) {
    println!(
        "{:<8} {:<16} {:<4} {:<5} COMMAND",
        "PID", "TAG", "TTY", "STDIN"
    );
    for c in all {
        println!(
            "{:<8} {:<16} {:<4} {:<5} {}",
            c.pid,
            c.tag.as_deref().unwrap_or("-"),
            if c.tty { "yes" } else { "no" },
            if c.stdin { "open" } else { "-" },
            shell_words(&c.cmd)
        );
    }
}

/// A command line as a shell would read it back (words with spaces or quotes quoted).
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
