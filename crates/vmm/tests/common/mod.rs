//! Test fixture: assembles the guest programs in `tests/guests`, builds VMs on /dev/kvm, and
//! collects what guests report through a probe port and the serial line.

#![allow(dead_code)] // Each test binary uses a different part of the fixture.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use cove_devices::BusDevice;
use cove_vmm::{Vm, VmConfig};

/// Port of the probe device (`PROBE_PORT` in `guests/probe.inc`).
pub const PROBE_PORT: u64 = 0x510;

/// How long a guest may take: the emulated KVM here is thousands of times slower than native.
pub const GUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Assembles and links `tests/guests/<name>.S` into an ELF64 at 1 MiB; returns its path.
pub fn guest(name: &str) -> PathBuf {
    let src_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests");
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guests");
    std::fs::create_dir_all(&out_dir).expect("create the guest output folder");
    let source = src_dir.join(format!("{name}.S"));
    // Unique scratch names: test binaries, and tests within one, build guests in parallel.
    let tag = unique_tag();
    let object = out_dir.join(format!("{name}.{tag}.o"));
    let elf = out_dir.join(format!("{name}.{tag}.elf"));
    // No C preprocessor is assumed: `#include "file"` lines are expanded here, so only
    // binutils are needed.
    let text = std::fs::read_to_string(&source).expect("read guest source");
    let text = text
        .lines()
        .map(|line| {
            match line
                .strip_prefix("#include \"")
                .and_then(|l| l.strip_suffix('"'))
            {
                Some(file) => std::fs::read_to_string(src_dir.join(file))
                    .unwrap_or_else(|e| panic!("include {file} in {name}.S: {e}")),
                None => format!("{line}\n"),
            }
        })
        .collect::<String>();
    let expanded = out_dir.join(format!("{name}.{tag}.s"));
    std::fs::write(&expanded, text).expect("write expanded guest source");
    run(Command::new("as")
        .args(["--64", "-o"])
        .arg(&object)
        .arg(&expanded));
    run(Command::new("ld")
        .args([
            "-m",
            "elf_x86_64",
            "-nostdlib",
            "-static",
            "--build-id=none",
        ])
        .args(["-z", "max-page-size=0x1000", "-T"])
        .arg(src_dir.join("link.ld"))
        .arg("-o")
        .arg(&elf)
        .arg(&object));
    // Publish under a stable name; rename is atomic and every process builds the same bytes.
    let published = out_dir.join(format!("{name}.elf"));
    std::fs::rename(&elf, &published).expect("publish the guest ELF");
    let _ = std::fs::remove_file(&object);
    let _ = std::fs::remove_file(&expanded);
    published
}

/// The guest `name` as a flat binary (its loadable bytes from 1 MiB on).
pub fn guest_flat(name: &str) -> Vec<u8> {
    let elf = guest(name);
    let bin = elf.with_extension(format!("{}.bin", unique_tag()));
    run(Command::new("objcopy")
        .args(["-O", "binary"])
        .arg(&elf)
        .arg(&bin));
    let flat = std::fs::read(&bin).expect("read the flat guest");
    let _ = std::fs::remove_file(&bin);
    flat
}

/// A name part no other guest build, in this process or another, is using.
fn unique_tag() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, AtomicOrdering::Relaxed)
    )
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e} (GNU binutils `as` and `ld` are needed)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A VM on /dev/kvm. Panics (never skips) when KVM is missing: these tests exist to run guests.
pub fn new_vm(vcpu_count: u8, mem_size: u64) -> Vm {
    assert!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: the cove-vmm integration tests run real guests on KVM and \
         cannot be skipped; run them on a host with KVM"
    );
    Vm::new(VmConfig {
        vcpu_count,
        mem_size,
    })
    .expect("create the VM")
}

/// Collects 32-bit records written to the probe port.
#[derive(Debug, Default, Clone)]
pub struct Probe(Arc<Mutex<Vec<u32>>>);

impl Probe {
    /// Puts a probe on `vm`'s port bus.
    pub fn attach(vm: &Vm) -> Self {
        let probe = Self::default();
        vm.buses()
            .pio
            .insert(PROBE_PORT, 4, Arc::new(Mutex::new(probe.clone())))
            .expect("attach the probe");
        probe
    }

    /// The records as 64-bit values (each sent as low, high).
    pub fn values(&self) -> Vec<u64> {
        let records = self.0.lock().unwrap();
        records
            .chunks(2)
            .map(|c| u64::from(c[0]) | (u64::from(*c.get(1).unwrap_or(&0)) << 32))
            .collect()
    }
}

impl BusDevice for Probe {
    fn read(&mut self, _offset: u64, _data: &mut [u8]) {}

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (0, Ok(bytes)) = (offset, <[u8; 4]>::try_from(data)) {
            self.0.lock().unwrap().push(u32::from_le_bytes(bytes));
        }
    }
}

/// A serial sink the test can read and wait on.
#[derive(Debug, Default, Clone)]
pub struct SerialCapture(Arc<(Mutex<Vec<u8>>, Condvar)>);

impl SerialCapture {
    /// Everything received so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.0.lock().unwrap()).into_owned()
    }

    /// Waits until at least one byte arrived; returns when, or `None` on timeout.
    pub fn wait_first_byte(&self, timeout: Duration) -> Option<Instant> {
        let (lock, cvar) = &*self.0;
        let guard = lock.lock().unwrap();
        let (guard, _) = cvar
            .wait_timeout_while(guard, timeout, |b| b.is_empty())
            .unwrap();
        (!guard.is_empty()).then(Instant::now)
    }
}

impl Write for SerialCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (lock, cvar) = &*self.0;
        lock.lock().unwrap().extend_from_slice(buf);
        cvar.notify_all();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
