//! Snapshots of a VM: the state file (every vCPU, the in-kernel devices, the emulated devices)
//! and the memory file, restored in a fresh process.
//!
//! State file layout (little endian):
//! ```text
//! magic    8 bytes  "COVEVMST"
//! version  u32      STATE_VERSION: a reader refuses any other
//! length   u64      payload bytes (at most STATE_LIMIT)
//! sha256   32 bytes of the payload
//! payload  JSON of VmSnapshot
//! ```
//! JSON keeps the format tolerant of added optional fields (`#[serde(default)]`) while the
//! version number marks any change a reader could misread. Snapshots live long (templates,
//! hibernated sandboxes), so a reader checks everything before a VM is built from them.

pub mod memory;
pub mod vcpu;
pub mod vm;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The state file's magic number.
pub const STATE_MAGIC: [u8; 8] = *b"COVEVMST";
/// The state file version this build writes and reads.
pub const STATE_VERSION: u32 = 1;
/// The largest payload a reader accepts (254 vCPUs of state fit in a fraction of it).
pub const STATE_LIMIT: u64 = 64 << 20;

const HEADER: usize = 8 + 4 + 8 + 32;

/// Why a state file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// Reading or writing the file.
    #[error("{0} {1}")]
    Io(&'static str, String, #[source] std::io::Error),
    /// Not a Cove VM state file.
    #[error("{0} is not a Cove VM state file")]
    Magic(String),
    /// Written by another version.
    #[error("{path} has state version {found}; this build reads version {STATE_VERSION}")]
    Version {
        /// The file.
        path: String,
        /// Its version.
        found: u32,
    },
    /// The payload is larger than any real VM's state.
    #[error("{path} claims {len} bytes of state (at most {STATE_LIMIT} are read)")]
    TooLarge {
        /// The file.
        path: String,
        /// What its header says.
        len: u64,
    },
    /// Truncated or altered.
    #[error("{0} is corrupted (checksum mismatch or truncated)")]
    Corrupted(String),
    /// The payload does not parse.
    #[error("{0} does not parse")]
    Parse(String, #[source] serde_json::Error),
}

/// The VM as the snapshot describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedConfig {
    /// vCPUs.
    pub vcpu_count: u8,
    /// Guest RAM in bytes.
    pub mem_size: u64,
}

/// Everything but memory.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmSnapshot {
    /// The VM's shape.
    pub config: SavedConfig,
    /// In-kernel devices and the clock.
    pub vm: vm::VmState,
    /// Every vCPU, in order.
    pub vcpus: Vec<vcpu::VcpuState>,
    /// Emulated devices' state, by device name (each device owns its format).
    #[serde(default)]
    pub devices: BTreeMap<String, serde_json::Value>,
}

/// Writes `snap` to `path` and syncs it.
pub fn write_state(path: &Path, snap: &VmSnapshot) -> Result<(), StateFileError> {
    let shown = path.display().to_string();
    let payload = serde_json::to_vec(snap).expect("VM state serializes");
    let mut f = std::fs::File::create(path)
        .map_err(|e| StateFileError::Io("creating", shown.clone(), e))?;
    let mut head = Vec::with_capacity(HEADER);
    head.extend_from_slice(&STATE_MAGIC);
    head.extend_from_slice(&STATE_VERSION.to_le_bytes());
    head.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    head.extend_from_slice(&Sha256::digest(&payload));
    f.write_all(&head)
        .and_then(|()| f.write_all(&payload))
        .and_then(|()| f.sync_all())
        .map_err(|e| StateFileError::Io("writing", shown, e))
}

/// Reads and checks a state file written by [`write_state`].
pub fn read_state(path: &Path) -> Result<VmSnapshot, StateFileError> {
    let shown = path.display().to_string();
    let mut f =
        std::fs::File::open(path).map_err(|e| StateFileError::Io("opening", shown.clone(), e))?;
    let mut head = [0u8; HEADER];
    f.read_exact(&mut head).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => StateFileError::Magic(shown.clone()),
        _ => StateFileError::Io("reading", shown.clone(), e),
    })?;
    if head[..8] != STATE_MAGIC {
        return Err(StateFileError::Magic(shown));
    }
    let word = |r: std::ops::Range<usize>| {
        head[r]
            .iter()
            .rev()
            .fold(0u64, |a, &b| a << 8 | u64::from(b))
    };
    let found = u32::try_from(word(8..12)).unwrap_or(u32::MAX);
    if found != STATE_VERSION {
        return Err(StateFileError::Version { path: shown, found });
    }
    let len = word(12..20);
    if len > STATE_LIMIT {
        return Err(StateFileError::TooLarge { path: shown, len });
    }
    let mut payload = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    f.take(len + 1)
        .read_to_end(&mut payload)
        .map_err(|e| StateFileError::Io("reading", shown.clone(), e))?;
    if payload.len() as u64 != len || Sha256::digest(&payload)[..] != head[20..52] {
        return Err(StateFileError::Corrupted(shown));
    }
    serde_json::from_slice(&payload).map_err(|e| StateFileError::Parse(shown, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VmSnapshot {
        VmSnapshot {
            config: SavedConfig {
                vcpu_count: 1,
                mem_size: 64 << 20,
            },
            vm: serde_json::from_value(serde_json::json!({
                "pic_master": kvm_bindings::kvm_irqchip::default(),
                "pic_slave": kvm_bindings::kvm_irqchip::default(),
                "ioapic": kvm_bindings::kvm_irqchip::default(),
                "pit": kvm_bindings::kvm_pit_state2::default(),
                "clock": kvm_bindings::kvm_clock_data { clock: 42, ..Default::default() },
            }))
            .unwrap(),
            vcpus: vec![],
            devices: BTreeMap::new(),
        }
    }

    #[test]
    fn state_files_round_trip_and_refuse_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state");
        write_state(&p, &sample()).unwrap();
        let back = read_state(&p).unwrap();
        assert_eq!(back.config, sample().config);
        assert_eq!(back.vm.clock.clock, 42);
        let good = std::fs::read(&p).unwrap();

        let mut bad = good.clone();
        let last = bad.len() - 2;
        bad[last] ^= 1;
        std::fs::write(&p, &bad).unwrap();
        assert!(matches!(read_state(&p), Err(StateFileError::Corrupted(_))));

        std::fs::write(&p, &good[..good.len() - 1]).unwrap();
        assert!(matches!(read_state(&p), Err(StateFileError::Corrupted(_))));

        let mut bad = good.clone();
        bad[8] = 9;
        std::fs::write(&p, &bad).unwrap();
        let e = read_state(&p).unwrap_err();
        assert!(matches!(e, StateFileError::Version { found: 9, .. }), "{e}");

        let mut bad = good.clone();
        bad[12..20].copy_from_slice(&(STATE_LIMIT + 1).to_le_bytes());
        std::fs::write(&p, &bad).unwrap();
        assert!(matches!(
            read_state(&p),
            Err(StateFileError::TooLarge { .. })
        ));

        std::fs::write(&p, b"QFI\xfb not ours").unwrap();
        assert!(matches!(read_state(&p), Err(StateFileError::Magic(_))));
    }
}
