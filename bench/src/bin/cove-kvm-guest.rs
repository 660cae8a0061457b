//! Runs a purpose-built guest program on Cove's own VMM, for `bench/run kvm` (which times this
//! process from outside): `boot ELF MEM_MIB` runs it until it resets; `snapshot ELF MEM_MIB DIR`
//! runs it until its first output, pauses and snapshots it into DIR and prints what that took
//! as JSON; `restore DIR` restores DIR and lets it run until killed. Guest output goes to
//! stdout unbuffered, so the harness sees the first byte the moment the guest writes it.

use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cove_vmm::persist;
use cove_vmm::{KernelConfig, Vm, VmConfig, VmExit};

/// Guest output: to stdout, unbuffered, and noticed (first byte) by [`Seen`].
struct Out {
    stdout: File,
    seen: Seen,
}

#[derive(Clone, Default)]
struct Seen(Arc<(Mutex<bool>, Condvar)>);

impl Seen {
    fn wait(&self, timeout: Duration) -> bool {
        let (m, c) = &*self.0;
        let g = m.lock().unwrap();
        let (g, _) = c.wait_timeout_while(g, timeout, |s| !*s).unwrap();
        *g
    }
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.stdout.write(buf)?;
        let (m, c) = &*self.seen.0;
        *m.lock().unwrap() = true;
        c.notify_all();
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn out() -> (Box<dyn Write + Send>, Seen) {
    // SAFETY: fd 1 is this process's stdout, open for its whole life; the `File` takes a dup of
    // it so std's own handle is untouched.
    let stdout = unsafe { File::from_raw_fd(libc::dup(1)) };
    let seen = Seen::default();
    (
        Box::new(Out {
            stdout,
            seen: seen.clone(),
        }),
        seen,
    )
}

fn boot(elf: &Path, mem_mib: u64) -> anyhow::Result<(Vm, Seen)> {
    let mut vm = Vm::new(VmConfig {
        vcpu_count: 1,
        mem_size: mem_mib << 20,
    })?;
    let (w, seen) = out();
    vm.add_serial(w)?;
    vm.add_i8042()?;
    let info = vm.load_kernel(&KernelConfig {
        kernel: elf.to_path_buf(),
        initramfs: None,
        cmdline: String::new(),
    })?;
    vm.start(info.entry)?;
    Ok((vm, seen))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| {
        args.get(i)
            .context("usage: boot ELF MEM_MIB | snapshot ELF MEM_MIB DIR | restore DIR")
    };
    match arg(0)?.as_str() {
        "boot" => {
            let (mut vm, _) = boot(Path::new(arg(1)?), arg(2)?.parse()?)?;
            match vm.wait_for_exit(Duration::from_secs(30))? {
                Some(VmExit::Reset) => Ok(()),
                other => bail!("the guest ended with {other:?}"),
            }
        }
        "snapshot" => {
            let dir = PathBuf::from(arg(3)?);
            let (mut vm, seen) = boot(Path::new(arg(1)?), arg(2)?.parse()?)?;
            anyhow::ensure!(seen.wait(Duration::from_secs(30)), "the guest said nothing");
            let t = Instant::now();
            vm.pause()?;
            let snap = vm.snapshot()?;
            persist::write_state(&dir.join("state"), &snap)?;
            let f = File::create(dir.join("memory"))?;
            let saved = persist::memory::save(vm.memory(), &f)?;
            f.sync_all()?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            vm.stop()?;
            eprintln!(
                "{}",
                serde_json::json!({"snapshot_ms": ms, "bytes": saved.written, "size": saved.size})
            );
            Ok(())
        }
        "restore" => {
            let dir = PathBuf::from(arg(1)?);
            let snap = persist::read_state(&dir.join("state"))?;
            let mut vm = Vm::restore(&snap, &File::open(dir.join("memory"))?)?;
            let (w, _) = out();
            vm.add_serial(w)?;
            vm.add_i8042()?;
            vm.resume()?;
            let _ = vm.wait_for_exit(Duration::from_secs(60))?;
            Ok(())
        }
        other => bail!("unknown mode {other}"),
    }
}
