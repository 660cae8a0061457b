//! Boots a kernel (for example the `hello` test guest) and prints one JSON line of timings:
//! VM creation, kernel load, vCPU start, and the wall-clock time of the guest's first serial
//! byte (nanoseconds since the epoch, to compare with a timestamp taken before this process
//! was started).
//!
//! `cargo run --release --example boot_time -- path/to/hello.elf [MEM_MIB]`

use std::error::Error;
use std::io::Write;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cove_vmm::{KernelConfig, Vm, VmConfig};

#[derive(Clone, Default)]
struct FirstByte(Arc<OnceLock<(Instant, SystemTime)>>);

impl Write for FirstByte {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.get_or_init(|| (Instant::now(), SystemTime::now()));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let kernel = args.next().ok_or("usage: boot_time KERNEL [MEM_MIB]")?;
    let mem_mib: u64 = args.next().map_or(Ok(128), |s| s.parse())?;
    let t0 = Instant::now();
    let mut vm = Vm::new(VmConfig {
        vcpu_count: 1,
        mem_size: mem_mib << 20,
    })?;
    let t1 = Instant::now();
    let first = FirstByte::default();
    vm.add_serial(Box::new(first.clone()))?;
    vm.add_i8042()?;
    let info = vm.load_kernel(&KernelConfig {
        kernel: kernel.into(),
        initramfs: None,
        cmdline: "console=ttyS0".into(),
    })?;
    let t2 = Instant::now();
    vm.start(info.entry)?;
    let t3 = Instant::now();
    let exit = vm.wait_for_exit(Duration::from_secs(30))?;
    let (first_at, first_wall) = *first.0.get().ok_or("no serial output")?;
    vm.stop()?;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{{\"vm_create_us\":{:.0},\"load_us\":{:.0},\"start_us\":{:.0},\
         \"start_to_first_serial_us\":{:.0},\"first_serial_epoch_ns\":{},\"exit\":\"{:?}\"}}",
        us(t1 - t0),
        us(t2 - t1),
        us(t3 - t2),
        us(first_at - t2),
        first_wall.duration_since(UNIX_EPOCH)?.as_nanos(),
        exit
    );
    Ok(())
}
