//! coved: Cove's HTTP API over this host's sandboxes.
//!
//! ```text
//! coved [--listen ADDR] [--database URL] [--metrics-listen ADDR] [--tls-cert PEM --tls-key PEM]
//!                                                   serve (ADDR: host:port or unix:/path)
//! coved keys create --tenant NAME [--scope S] [--e2b] prints a new key on stdout
//! coved keys ls | coved keys revoke ID
//! coved quota set TENANT --sandboxes N --vcpus N --memory-mib N
//! ```

mod app;
mod auth;
mod conn;
mod e2b;
mod error;
#[cfg(test)]
mod fake_agent;
mod keys;
mod metrics;
mod routes;
mod traffic;
mod usage;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "coved", version, about = "Cove's HTTP API")]
struct Cli {
    /// Cove home (state, images, sandboxes).
    #[arg(long, env = "COVE_HOME", global = true)]
    home: Option<PathBuf>,
    /// Where to listen: `HOST:PORT` or `unix:/path` (default: unix:$COVE_HOME/coved.sock).
    /// The first line on stdout says where it listens (with port 0, which port it got).
    #[arg(long)]
    listen: Option<String>,
    /// The state store: `postgres://USER@HOST:PORT/DB` for a PostgreSQL database, or
    /// a SQLite file (default: `$COVE_HOME/state.db`).
    #[arg(long, env = "COVE_DATABASE")]
    database: Option<String>,
    /// Serve `/metrics` here instead of on the API listener.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Serve HTTPS with this certificate chain (PEM; with --tls-key; TCP listeners only).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The domain under which `PORT-ID.DOMAIN` reaches a sandbox's port (point a wildcard
    /// DNS name at coved; `*.localhost` resolves to loopback by itself).
    #[arg(long, env = "COVE_DOMAIN", default_value = "cove.localhost")]
    domain: String,
    /// Requests per second per key (and as many in a burst).
    #[arg(long, default_value_t = 100.0)]
    rate_limit: f64,
    /// Keep the event log this many hours (pruned every ten minutes).
    #[arg(long, default_value_t = 168, value_parser = clap::value_parser!(u64).range(1..))]
    event_retention_hours: u64,
    /// Scrub (hash again in full) every snapshot, template and hibernation kept here this
    /// often, in hours; 0: never (`POST /v1/scrub` still runs one).
    #[arg(long, env = "COVE_SCRUB_HOURS", default_value_t = 24)]
    scrub_hours: u64,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Tenant quotas.
    Quota {
        #[command(subcommand)]
        command: QuotaCommand,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key; prints it (once) on stdout.
    Create {
        /// The tenant it belongs to (none for `operator`).
        #[arg(long)]
        tenant: Option<String>,
        /// `read`, `exec` (read, and changing sandboxes), `admin` (everything of the tenant's)
        /// or `operator` (no tenant: every tenant's, and images, templates, the scrub).
        #[arg(long, default_value = "exec")]
        scope: String,
        /// In the form the E2B SDKs check (`e2b_` + hex); it works on `/v1` as well.
        #[arg(long)]
        e2b: bool,
    },
    /// List keys (never their secrets).
    Ls {
        /// JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key.
    Revoke {
        /// Key id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum QuotaCommand {
    /// Set a tenant's quota.
    Set {
        /// Tenant.
        tenant: String,
        /// Sandboxes (not stopped or failed).
        #[arg(long)]
        sandboxes: u32,
        /// vCPUs.
        #[arg(long)]
        vcpus: u32,
        /// Memory in MiB.
        #[arg(long)]
        memory_mib: u32,
        /// Snapshots (each a copy of a guest's memory and disk); unchanged when left out.
        #[arg(long)]
        snapshots: Option<u32>,
    },
    /// Show a tenant's quota.
    Show {
        /// Tenant.
        tenant: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let home = cli.home.clone().unwrap_or_else(cove_host::default_home);
    std::fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
    let keys = keys::Keys::open(&home.join("coved.db"))?;
    match cli.command {
        Some(Command::Keys { command }) => keys_command(&keys, command),
        Some(Command::Quota { command }) => match command {
            QuotaCommand::Set {
                tenant,
                sandboxes,
                vcpus,
                memory_mib,
                snapshots,
            } => {
                let snapshots = match snapshots {
                    Some(n) => n,
                    None => keys.quota(&tenant)?.snapshots,
                };
                keys.set_quota(
                    &tenant,
                    keys::Quota {
                        sandboxes,
                        vcpus,
                        memory_mib,
                        snapshots,
                    },
                )
            }
            QuotaCommand::Show { tenant } => {
                println!("{}", serde_json::to_string(&keys.quota(&tenant)?)?);
                Ok(())
            }
        },
        None => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_env("COVE_LOG")
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(serve(cli, home, keys))
        }
    }
}

fn keys_command(keys: &keys::Keys, c: KeysCommand) -> anyhow::Result<()> {
    match c {
        KeysCommand::Create { tenant, scope, e2b } => {
            let scope = keys::Scope::parse(&scope).with_context(|| {
                format!("unknown scope {scope:?}: read, exec, admin or operator")
            })?;
            let prefix = if e2b { "e2b_" } else { "cove_" };
            let (info, secret) = keys.create_as(tenant.as_deref(), scope, prefix)?;
            match &info.tenant {
                Some(t) => eprintln!("key {} for tenant {t} ({:?})", info.id, info.scope),
                None => eprintln!("key {} of the host's operator", info.id),
            }
            println!("{secret}");
        }
        KeysCommand::Ls { json } => {
            let all = keys.list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                println!("{:<12}  {:<20}  {:<6}  REVOKED", "ID", "TENANT", "SCOPE");
                for k in all {
                    println!(
                        "{:<12}  {:<20}  {:<6}  {}",
                        k.id,
                        k.tenant.as_deref().unwrap_or("(operator)"),
                        format!("{:?}", k.scope).to_lowercase(),
                        if k.revoked_at.is_some() { "yes" } else { "-" }
                    );
                }
            }
        }
        KeysCommand::Revoke { id } => {
            anyhow::ensure!(keys.revoke(&id)?, "no such key (or already revoked): {id}");
        }
    }
    Ok(())
}

/// Takes `SOCKET.lock` (exclusively, for as long as the file stays open) and writes into it who
/// holds it: this process's pid and executable, which `cove daemon` reads to stop it, and the
/// CLI to tell whether the coved serving a home is the build it would start.
fn lock_socket(socket: &std::path::Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    use std::io::Write as _;
    let path = lock_path(socket);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut lock = match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((_, e)) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            anyhow::bail!(
                "another coved is serving {} ({e}): {}",
                socket.display(),
                holder.trim()
            );
        }
    };
    let exe = std::env::current_exe().unwrap_or_default();
    let holder = cove_api::DaemonInfo {
        pid: std::process::id(),
        exe: exe.display().to_string(),
        build: cove_api::DaemonInfo::build_of(&exe),
    };
    lock.set_len(0)?;
    lock.write_all(serde_json::to_string(&holder)?.as_bytes())?;
    lock.sync_all()?;
    Ok(lock)
}

/// The lock file beside a socket.
fn lock_path(socket: &std::path::Path) -> PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// A TLS configuration (rustls).
struct Tls(axum_server::tls_rustls::RustlsConfig);

/// A bound listener of either kind.
enum Listener {
    Tcp(tokio::net::TcpListener),
    /// The listener, its path, and the lock held on `PATH.lock` while it serves.
    Unix(
        tokio::net::UnixListener,
        PathBuf,
        nix::fcntl::Flock<std::fs::File>,
    ),
}

async fn bind(addr: &str) -> anyhow::Result<Listener> {
    match addr.strip_prefix("unix:") {
        Some(path) => {
            let path = PathBuf::from(path);
            // One coved per socket: the lock decides between two starting at once (a socket
            // left by a coved that died is then replaced).
            let lock = lock_socket(&path)?;
            let _ = std::fs::remove_file(&path);
            let l = tokio::net::UnixListener::bind(&path)
                .with_context(|| format!("listening on {}", path.display()))?;
            // Connecting needs write permission on the socket: its owner only. Callers without
            // a key are also checked by their peer credentials (auth.rs).
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("restricting {}", path.display()))?;
            Ok(Listener::Unix(l, path, lock))
        }
        None => Ok(Listener::Tcp(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))?,
        )),
    }
}

impl Listener {
    fn describe(&self) -> String {
        match self {
            Self::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into()),
            Self::Unix(_, p, _) => format!("unix:{}", p.display()),
        }
    }

    async fn serve(self, router: axum::Router, tls: Option<Tls>) -> std::io::Result<()> {
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            // Requests in flight get a moment to finish; streams that never end (a followed
            // event log, an interactive exec) do not hold the shutdown longer. Operations
            // (create, hibernate, …) cut here are recovered by the next coved.
            tokio::spawn(async {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                std::process::exit(0);
            });
        };
        if let Some(tls) = tls {
            let Self::Tcp(l) = self else {
                return Err(std::io::Error::other(
                    "TLS needs a TCP listener (HOST:PORT)",
                ));
            };
            let handle = axum_server::Handle::new();
            let h = handle.clone();
            tokio::spawn(async move {
                shutdown.await;
                h.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
            });
            let l = l.into_std()?;
            let mut server = axum_server::tls_rustls::from_tcp_rustls(l, tls.0)?.handle(handle);
            let b = server.http_builder();
            b.http1().header_read_timeout(Some(conn::header_timeout()));
            b.http2()
                .keep_alive_interval(Some(conn::header_timeout()))
                .keep_alive_timeout(std::time::Duration::from_secs(20));
            return server.serve(router.into_make_service()).await;
        }
        // Each connection's peer (its uid on a Unix socket) reaches the auth extractor.
        match self {
            Self::Tcp(l) => conn::serve(l, router, shutdown).await,
            Self::Unix(l, path, _lock) => {
                let r = conn::serve(l, router, shutdown).await;
                let _ = std::fs::remove_file(path);
                r
            }
        }
    }
}

async fn serve(cli: Cli, home: PathBuf, keys: keys::Keys) -> anyhow::Result<()> {
    anyhow::ensure!(
        cli.rate_limit.is_finite() && cli.rate_limit >= 1.0,
        "--rate-limit: at least 1 request a second"
    );
    let host = cove_host::Host::open_with(&home, cli.database.as_deref())?;
    error::set_host_roots(&std::path::absolute(&home).unwrap_or_else(|_| home.clone()));
    let listen = cli
        .listen
        .clone()
        .unwrap_or_else(|| format!("unix:{}", home.join("coved.sock").display()));
    // Bound (and its lock held) first: a second coved of this socket stops here, and requests
    // wait in the backlog while this one recovers.
    let api = bind(&listen).await?;
    // Re-attach: every recorded sandbox gets its true state before the first request, and what
    // an interrupted operation left behind is removed or finished.
    let recovered = host.recover().await?;
    let metrics = match &cli.metrics_listen {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let tls = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => Some(Tls(axum_server::tls_rustls::RustlsConfig::from_pem_file(
            cert, key,
        )
        .await
        .with_context(|| format!("loading {} and {}", cert.display(), key.display()))?)),
        _ => None,
    };
    let traffic = traffic::Traffic::open(&home, cli.domain.clone())
        .with_context(|| format!("the traffic key in {}", home.display()))?;
    let public = match &api {
        Listener::Tcp(l) => l.local_addr().ok().map(|a| {
            let scheme = if tls.is_some() { "https" } else { "http" };
            (scheme.to_string(), a.port())
        }),
        Listener::Unix(..) => None,
    };
    let app = app::state(
        host,
        keys,
        cli.rate_limit,
        metrics.is_none(),
        traffic,
        public,
    );
    if app.host.networks_on() {
        // The sandboxes' resolver and Host/SNI proxies, answering under each one's policy.
        let a = app.clone();
        let lookup: cove_net::services::Lookup =
            std::sync::Arc::new(move |ip| a.host.network_of_link(ip));
        match cove_net::services::start(
            lookup,
            app.host.net_judge(),
            cove_net::services::upstream_from_env(),
            app.host.net_registry(),
        )
        .await
        {
            Ok(ports) => app.host.use_net_services(ports).await,
            Err(e) => tracing::warn!("sandboxes get no DNS and no domain rules: {e}"),
        }
    }
    println!("coved: listening on {}", api.describe());
    if let Some(m) = &metrics {
        println!("coved: metrics on {}", m.describe());
    }
    tracing::info!(
        sandboxes = recovered.sandboxes,
        orphan_dirs = ?recovered.orphan_dirs,
        orphan_snapshots = ?recovered.orphan_snapshots,
        stored = ?recovered.stored,
        jail_cgroups = recovered.jail_cgroups,
        jail_users = recovered.jail_users,
        networks = recovered.networks,
        home = %home.display(),
        "coved started"
    );
    let router = routes::router(app.clone()).layer(
        tower_http::timeout::RequestBodyTimeoutLayer::new(conn::body_timeout()),
    );
    let api_task = tokio::spawn(api.serve(router, tls));
    tokio::spawn(app::watch_sandboxes(app.clone()));
    tokio::spawn(usage::History::run(app.clone()));
    if cli.scrub_hours > 0 {
        tokio::spawn(app::scrub_every(
            app.clone(),
            std::time::Duration::from_secs(cli.scrub_hours.saturating_mul(3600)),
        ));
    }
    tokio::spawn(app::maintain(
        app.clone(),
        std::time::Duration::from_secs(cli.event_retention_hours.saturating_mul(3600)),
    ));
    if let Some(m) = metrics {
        let app = app.clone();
        let r = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let app = app.clone();
                async move { routes::meta::render_metrics(&app) }
            }),
        );
        tokio::spawn(m.serve(r, None));
    }
    api_task.await??;
    Ok(())
}
