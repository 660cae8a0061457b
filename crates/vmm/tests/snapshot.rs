//! Snapshot and restore: a paused guest's vCPUs, in-kernel devices and memory are saved, and a
//! new process restores them and the guest continues exactly where it was.

mod common;

use std::fs::File;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cove_vmm::persist::{self, memory::PAGE};
use cove_vmm::{EntryPoint, KernelConfig, Vm};
use vm_memory::{Bytes, GuestAddress};

use common::{guest, new_vm};

const COUNTER: GuestAddress = GuestAddress(0x20_0000);
const MEM: u64 = 128 << 20;

fn counter(vm: &Vm) -> u64 {
    vm.memory().load(COUNTER, Ordering::SeqCst).unwrap()
}

fn wait_above(vm: &Vm, floor: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = counter(vm);
        if c > floor {
            return c;
        }
        assert!(Instant::now() < deadline, "counter stuck at {c}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_snapshot_restores_in_a_new_process_and_the_guest_keeps_counting() {
    let dir = tempfile::tempdir().unwrap();
    let mut vm = new_vm(1, MEM);
    vm.add_serial(Box::new(std::io::sink())).unwrap();
    let info = vm
        .load_kernel(&KernelConfig {
            kernel: guest("counter_reg"),
            initramfs: None,
            cmdline: String::new(),
        })
        .unwrap();
    vm.start_each_at(&[EntryPoint {
        rip: info.entry.rip,
        rsp: 0x8000,
        rsi: COUNTER.0,
    }])
    .unwrap();
    wait_above(&vm, 1000);
    vm.pause().unwrap();
    let at = counter(&vm);
    let snap = vm.snapshot().unwrap();
    assert!(
        snap.devices.contains_key("serial"),
        "{:?}",
        snap.devices.keys()
    );
    let rax = snap.vcpus[0].regs.rax;
    assert!(rax == at || rax == at + 1, "rax {rax}, memory {at}");
    persist::write_state(&dir.path().join("state"), &snap).unwrap();
    let saved = persist::memory::save(
        vm.memory(),
        &File::create(dir.path().join("memory")).unwrap(),
    )
    .unwrap();
    // Only what the guest and the boot path touched: the program, the counter, the boot
    // structures (zero page, GDT, page tables) — a handful of pages of 128 MiB.
    assert_eq!(saved.size, MEM);
    assert!(
        saved.written <= 16 * PAGE,
        "{} bytes written for a guest that touched a few pages",
        saved.written
    );
    // The source goes on running; the snapshot does not depend on it.
    vm.resume().unwrap();
    wait_above(&vm, at + 1);
    vm.stop().unwrap();
    drop(vm);

    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "restore_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("COVE_TEST_SNAPSHOT", dir.path())
        .env("COVE_TEST_COUNTER", at.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("restored: counter"),
        "the restore process failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The restoring half, run in its own process by the test above.
#[test]
#[ignore = "run in a child process by a_snapshot_restores_in_a_new_process_and_the_guest_keeps_counting"]
fn restore_child() {
    let dir =
        std::env::var_os("COVE_TEST_SNAPSHOT").expect("COVE_TEST_SNAPSHOT: run by its parent test");
    let dir = Path::new(&dir);
    let at: u64 = std::env::var("COVE_TEST_COUNTER").unwrap().parse().unwrap();
    let snap = persist::read_state(&dir.join("state")).unwrap();
    let memory = File::open(dir.join("memory")).unwrap();
    let mut vm = Vm::restore(&snap, &memory).unwrap();
    vm.add_serial(Box::new(std::io::sink())).unwrap();
    let mut scratch = [0u8];
    assert!(vm.buses().pio.read(0x3ff, &mut scratch));
    assert_eq!(scratch[0], 0x5a, "the UART comes back with its registers");
    assert_eq!(counter(&vm), at, "memory comes back as it was saved");
    vm.resume().unwrap();
    let next = wait_above(&vm, at);
    vm.pause().unwrap();
    let later = counter(&vm);
    // Counting on from `at`, not from zero: the registers came back with the memory.
    assert!(later > at && later >= next, "{at} then {later}");
    // Writes after the restore stay in this process: the memory file is mapped private.
    let mut on_disk = [0u8; 8];
    std::os::unix::fs::FileExt::read_exact_at(&memory, &mut on_disk, COUNTER.0).unwrap();
    assert_eq!(u64::from_le_bytes(on_disk), at);
    let again = vm.snapshot().unwrap();
    assert_eq!(again.vcpus.len(), 1);
    vm.stop().unwrap();
    println!("restored: counter {at} -> {later}");
}

fn disk_spec(path: &Path) -> cove_vmm::virtio::DeviceSpec {
    cove_vmm::virtio::DeviceSpec::Block(cove_virtio::block::BlockConfig {
        path: path.to_path_buf(),
        read_only: false,
        serial: "resume".into(),
    })
}

const FLAG: GuestAddress = GuestAddress(0x58000);

#[test]
fn a_restored_guest_goes_on_using_its_virtio_disk_without_setting_it_up_again() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    let mut data = vec![0u8; 8 * 512];
    data[..8].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
    std::fs::write(&disk, &data).unwrap();
    let mut vm = new_vm(1, MEM);
    let probe = common::Probe::attach(&vm);
    vm.add_virtio("disk", disk_spec(&disk)).unwrap();
    let info = vm
        .load_kernel(&KernelConfig {
            kernel: guest("virtio_blk_resume"),
            initramfs: None,
            cmdline: vm.virtio_cmdline(),
        })
        .unwrap();
    vm.start(info.entry).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while probe.values().len() < 2 {
        assert!(Instant::now() < deadline, "the first read never finished");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(probe.values(), [0, 0x1122_3344_5566_7788]);
    vm.pause().unwrap();
    let snap = vm.snapshot().unwrap();
    assert!(snap.devices.contains_key("virtio:disk"));
    persist::write_state(&dir.path().join("state"), &snap).unwrap();
    persist::memory::save(
        vm.memory(),
        &File::create(dir.path().join("memory")).unwrap(),
    )
    .unwrap();
    vm.stop().unwrap();
    drop(vm);

    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "virtio_restore_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("COVE_TEST_SNAPSHOT", dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the restore process failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let back = std::fs::read(&disk).unwrap();
    assert_eq!(
        &back[512..1024],
        &data[..512],
        "the restored guest's write reached the disk"
    );
}

/// The restoring half of the virtio test, run in its own process.
#[test]
#[ignore = "run in a child process by a_restored_guest_goes_on_using_its_virtio_disk_without_setting_it_up_again"]
fn virtio_restore_child() {
    let dir =
        std::env::var_os("COVE_TEST_SNAPSHOT").expect("COVE_TEST_SNAPSHOT: run by its parent test");
    let dir = Path::new(&dir);
    let snap = persist::read_state(&dir.join("state")).unwrap();
    let mut vm = Vm::restore(&snap, &File::open(dir.join("memory")).unwrap()).unwrap();
    let probe = common::Probe::attach(&vm);
    vm.add_i8042().unwrap();
    vm.add_virtio("disk", disk_spec(&dir.join("disk"))).unwrap();
    vm.memory().write_obj(1u64, FLAG).unwrap();
    vm.resume().unwrap();
    assert_eq!(
        vm.wait_for_exit(Duration::from_secs(30)).unwrap(),
        Some(cove_vmm::VmExit::Reset),
        "reported {:?}",
        probe.values()
    );
    assert_eq!(probe.values(), [0], "the write after the restore succeeded");
    vm.stop().unwrap();
}
