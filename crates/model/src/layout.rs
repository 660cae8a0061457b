//! Where a sandbox's files live: one directory, `HOME/sandboxes/ID/`, shared by the host (which
//! writes `vm.json` and reads the rest) and its cove-vm (which writes the rest).

use std::path::{Path, PathBuf};

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

    /// The identity of the guest it runs (kernel and initramfs).
    pub fn guest(&self) -> PathBuf {
        self.0.join("guest")
    }

    /// The file backing sandbox `id`'s guest RAM (qemu engine): in shared memory, not in the
    /// directory, so it never reaches the disk. cove-vm removes it when it ends; the host
    /// removes what a killed cove-vm left.
    pub fn guest_ram(id: &str) -> PathBuf {
        PathBuf::from(format!("/dev/shm/cove-{id}.mem"))
    }
}
