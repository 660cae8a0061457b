//! The local coved: `cove` without `COVE_HOST` talks to the coved serving this machine's Cove
//! home over its Unix socket (`HOME/coved.sock`), and starts one when none answers. That coved
//! outlives the command (it owns the sandboxes; `cove daemon stop` ends it — the sandboxes
//! keep running and the next coved re-attaches to them). A coved of another build than the
//! `coved` beside this `cove` is replaced, so an upgrade takes effect at the next command.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cove_api::DaemonInfo;

use crate::args::DaemonCommand;

/// How long a starting coved may take to answer: it binds its socket before it recovers the
/// home, so this only covers opening the home and the store.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a coved may take to end on SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// The local coved of one Cove home.
#[derive(Debug)]
pub struct Local {
    home: PathBuf,
}

impl Local {
    /// The coved of `home` (nothing is started yet).
    pub fn new(home: PathBuf) -> Self {
        Self { home }
    }

    /// Its socket.
    pub fn socket(&self) -> PathBuf {
        self.home.join("coved.sock")
    }

    fn lock_file(&self) -> PathBuf {
        self.home.join("coved.sock.lock")
    }

    /// Who serves the socket, as it wrote in the lock file (none when no coved holds it).
    fn holder(&self) -> Option<DaemonInfo> {
        let f = std::fs::File::open(self.lock_file()).ok()?;
        // A lock we can take is held by nobody: what the file says is stale. (The file is read
        // through the same descriptor: opened once per command.)
        let f = match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockSharedNonblock) {
            Ok(_) => return None,
            Err((f, _)) => f,
        };
        serde_json::from_reader(std::io::BufReader::new(f)).ok()
    }

    fn answers(&self) -> bool {
        std::os::unix::net::UnixStream::connect(self.socket()).is_ok()
    }

    /// A client of the local coved, started (or replaced by this build's) when needed.
    pub fn client(&self) -> anyhow::Result<cove_sdk::Client> {
        let bin = coved_binary();
        let build = DaemonInfo::build_of(&bin);
        let current = |h: &DaemonInfo| build.is_empty() || h.build == build;
        if self.answers() && self.holder().as_ref().is_none_or(current) {
            return self.connect();
        }
        std::fs::create_dir_all(&self.home)
            .with_context(|| format!("creating the Cove home {}", self.home.display()))?;
        // One starter at a time: the others wait here and then find it answering.
        let guard = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.home.join("coved.start.lock"))
            .context("opening coved.start.lock")?;
        let _guard = nix::fcntl::Flock::lock(guard, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| anyhow::anyhow!("locking coved.start.lock: {e}"))?;
        if let Some(h) = self.holder() {
            if current(&h) && self.answers() {
                return self.connect();
            }
            // Another build (an upgrade), or a coved that stopped answering.
            self.stop_holder(&h)?;
        }
        self.start(&bin)?;
        self.connect()
    }

    fn connect(&self) -> anyhow::Result<cove_sdk::Client> {
        // No key: coved lets the host's administrator in by the socket's peer credentials.
        Ok(cove_sdk::Client::new(
            &format!("unix:{}", self.socket().display()),
            "",
        )?)
    }

    /// Starts coved detached (its own session, output to `HOME/coved.log`) and waits until it
    /// answers, or says why it did not.
    fn start(&self, bin: &Path) -> anyhow::Result<()> {
        let log_path = self.home.join("coved.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let start_of_log = log.metadata().map(|m| m.len()).unwrap_or(0);
        let mut cmd = std::process::Command::new(bin);
        cmd.arg("--home")
            .arg(&self.home)
            .arg("--listen")
            .arg(format!("unix:{}", self.socket().display()))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: setsid is async-signal-safe and touches nothing of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().with_context(|| {
            format!(
                "starting {} (build it with `cargo build`, or set COVED_BIN)",
                bin.display()
            )
        })?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.answers() {
                // Reaped by nobody: it lives on after this command (init adopts it).
                std::mem::forget(child);
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                let tail = std::fs::read(&log_path)
                    .ok()
                    .map(|b| {
                        let from = usize::try_from(start_of_log).unwrap_or(0).min(b.len());
                        String::from_utf8_lossy(&b[from..]).trim().to_string()
                    })
                    .unwrap_or_default();
                anyhow::bail!(
                    "coved exited ({status}) before it answered on {}: {tail}",
                    self.socket().display()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                anyhow::bail!(
                    "coved did not answer on {} within {} s; see {}",
                    self.socket().display(),
                    START_TIMEOUT.as_secs(),
                    log_path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Ends the coved that holds the socket: SIGTERM, then SIGKILL if it lingers. The
    /// sandboxes keep running.
    fn stop_holder(&self, h: &DaemonInfo) -> anyhow::Result<()> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(h.pid).context("coved's pid")?);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while self.holder().is_some() {
            if Instant::now() > deadline {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                let killed = Instant::now() + Duration::from_secs(5);
                while self.holder().is_some() {
                    anyhow::ensure!(
                        Instant::now() < killed,
                        "coved (pid {}) does not end",
                        h.pid
                    );
                    std::thread::sleep(Duration::from_millis(5));
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// `cove daemon …`.
    pub fn run(&self, command: DaemonCommand) -> anyhow::Result<u8> {
        match command {
            DaemonCommand::Status { json } => {
                let h = self.holder();
                if json {
                    let v = serde_json::json!({
                        "running": h.is_some(),
                        "socket": self.socket(),
                        "log": self.home.join("coved.log"),
                        "coved": h,
                    });
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    match h {
                        Some(h) => println!(
                            "coved {} (pid {}) serves {}",
                            h.exe,
                            h.pid,
                            self.socket().display()
                        ),
                        None => println!(
                            "no coved serves {} (the next cove command starts one)",
                            self.socket().display()
                        ),
                    }
                }
                Ok(0)
            }
            DaemonCommand::Start => {
                self.client()?;
                Ok(0)
            }
            DaemonCommand::Stop => {
                if let Some(h) = self.holder() {
                    self.stop_holder(&h)?;
                    println!("stopped coved (pid {})", h.pid);
                }
                Ok(0)
            }
        }
    }
}

/// The coved binary: `COVED_BIN`, or beside this `cove`, or on the PATH.
fn coved_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("COVED_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    if let Some(p) = exe.parent().map(|d| d.join("coved"))
        && p.is_file()
    {
        return p;
    }
    PathBuf::from("coved")
}
