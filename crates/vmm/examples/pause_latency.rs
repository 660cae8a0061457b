//! Runs the `counter` test guest on N vCPUs and prints one JSON line with the time each
//! `Vm::pause` and `Vm::resume` took (microseconds), over 20 rounds.
//!
//! `cargo run --release --example pause_latency -- path/to/counter.elf 2`

use std::error::Error;
use std::time::{Duration, Instant};

use cove_vmm::{EntryPoint, KernelConfig, Vm, VmConfig};

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let kernel = args
        .next()
        .ok_or("usage: pause_latency COUNTER_ELF [VCPUS]")?;
    let vcpus: u8 = args.next().map_or(Ok(1), |s| s.parse())?;
    let mut vm = Vm::new(VmConfig {
        vcpu_count: vcpus,
        mem_size: 64 << 20,
    })?;
    let info = vm.load_kernel(&KernelConfig {
        kernel: kernel.into(),
        initramfs: None,
        cmdline: String::new(),
    })?;
    let entries: Vec<EntryPoint> = (0..vcpus)
        .map(|i| EntryPoint {
            rip: info.entry.rip,
            rsp: 0x8000 - u64::from(i) * 0x100,
            rsi: 0x20_0000 + u64::from(i) * 0x1000,
        })
        .collect();
    vm.start_each_at(&entries)?;
    let (mut pause, mut resume) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(10));
        let t = Instant::now();
        vm.pause()?;
        pause.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        vm.resume()?;
        resume.push(t.elapsed().as_secs_f64() * 1e6);
    }
    vm.stop()?;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "{{\"vcpus\":{vcpus},\"pause_median_us\":{:.0},\"pause_max_us\":{:.0},\"resume_median_us\":{:.0}}}",
        median(&mut pause),
        pause.last().copied().unwrap_or(0.0),
        median(&mut resume)
    );
    Ok(())
}
