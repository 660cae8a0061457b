//! Where a sandbox's files live: one directory, `HOME/sandboxes/ID/`, shared by the host (which
//! writes `vm.json` and reads the rest) and its cove-vm (which writes the rest).

use std::path::{Path, PathBuf};

/// The default Cove home for this user: `COVE_HOME`, else `/var/lib/cove` for root, else
/// `$XDG_DATA_HOME/cove` or `~/.local/share/cove`.
pub fn default_home() -> PathBuf {
    if let Some(h) = std::env::var_os("COVE_HOME") {
        return PathBuf::from(h);
    }
    if is_root() {
        return PathBuf::from("/var/lib/cove");
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("cove")
}

/// Whether this process runs as root (its effective uid, from `/proc/self/status`: this crate
/// stays free of system-call crates).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// One sandbox's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxDir(PathBuf);

impl SandboxDir {
    /// The directory of sandbox `id` under the Cove home.
    pub fn new(home: &Path, id: &str) -> Self {
        Self(home.join("sandboxes").join(id))
    }

    /// A directory already known (from a record, or cove-vm's `--dir`).
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self(dir.into())
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// How to start its VM (written by the host).
    pub fn vm_config(&self) -> PathBuf {
        self.0.join("vm.json")
    }

    /// Its writable disk (sparse ext4: the overlay's upper layer).
    pub fn disk(&self) -> PathBuf {
        self.0.join("disk.ext4")
    }

    /// cove-vm's control socket.
    pub fn control_socket(&self) -> PathBuf {
        self.0.join("control.sock")
    }

    /// The socket the guest console is relayed on.
    pub fn console_socket(&self) -> PathBuf {
        self.0.join("console.sock")
    }

    /// The guest console's log (rotated to `console.log.1`).
    pub fn console_log(&self) -> PathBuf {
        self.0.join("console.log")
    }

    /// cove-vm's own log.
    pub fn vm_log(&self) -> PathBuf {
        self.0.join("vm.log")
    }

    /// What cove-vm last reported (written atomically).
    pub fn status(&self) -> PathBuf {
        self.0.join("status.json")
    }

    /// How cove-vm ended (written atomically when it does).
    pub fn exit(&self) -> PathBuf {
        self.0.join("exit.json")
    }

    /// The hibernation snapshot, while it is hibernated.
    pub fn hibernation(&self) -> PathBuf {
        self.0.join("hibernation")
    }

    /// Where cove-vm writes snapshot `id` before the host seals it and moves it into the
    /// snapshot store.
    pub fn snapshot_out(&self, id: &str) -> PathBuf {
        self.0.join(format!("snapshot-{id}"))
    }

    /// Which state store records it (its `id`): the start-up sweep removes a directory without
    /// a record only when it is its own store's.
    pub fn store(&self) -> PathBuf {
        self.0.join("store")
    }

    /// The identity of the guest it runs (kernel and initramfs).
    pub fn guest(&self) -> PathBuf {
        self.0.join("guest")
    }

    /// The directory holding sandbox `id`'s guest RAM (qemu engine): in shared memory, not in
    /// the sandbox's directory, so it never reaches the disk; a directory of its own so a jail
    /// is shown this one and no other sandbox's. The host removes it once the VM has ended.
    pub fn guest_ram_dir(id: &str) -> PathBuf {
        PathBuf::from(format!("/dev/shm/cove-{id}"))
    }

    /// The file backing sandbox `id`'s guest RAM, in [`SandboxDir::guest_ram_dir`]. cove-vm
    /// removes it when it ends.
    pub fn guest_ram(id: &str) -> PathBuf {
        Self::guest_ram_dir(id).join("memory")
    }
}
