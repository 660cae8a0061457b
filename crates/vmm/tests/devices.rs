//! Legacy devices end to end: serial output reaches the host, the i8042 reset stops the VM
//! cleanly, unclaimed port and MMIO accesses are ignored, and a triple fault is reported.

mod common;

use cove_vmm::vcpu::{VcpuState, VcpuStop};
use cove_vmm::{KernelConfig, Vm, VmExit};

use common::{GUEST_TIMEOUT, Probe, SerialCapture, guest, new_vm};

fn load(vm: &mut Vm, name: &str) -> cove_vmm::BootInfo {
    vm.load_kernel(&KernelConfig {
        kernel: guest(name),
        initramfs: None,
        cmdline: String::new(),
    })
    .unwrap()
}

#[test]
fn serial_output_reaches_the_host_and_i8042_reset_exits() {
    let mut vm = new_vm(1, 64 << 20);
    let serial = SerialCapture::default();
    vm.add_serial(Box::new(serial.clone())).unwrap();
    vm.add_i8042().unwrap();
    let info = load(&mut vm, "hello");
    vm.start(info.entry).unwrap();
    assert_eq!(
        vm.wait_for_exit(GUEST_TIMEOUT).unwrap(),
        Some(VmExit::Reset)
    );
    assert_eq!(serial.text(), "Hello from a Cove guest\n");
    vm.stop().unwrap();
}

#[test]
fn unclaimed_pio_and_mmio_are_ignored_and_read_all_ones() {
    let mut vm = new_vm(1, 64 << 20);
    let probe = Probe::attach(&vm);
    vm.add_i8042().unwrap();
    let info = load(&mut vm, "unclaimed");
    vm.start(info.entry).unwrap();
    assert_eq!(
        vm.wait_for_exit(GUEST_TIMEOUT).unwrap(),
        Some(VmExit::Reset)
    );
    assert_eq!(
        probe.values(),
        vec![0xffff_ffff, 0xffff_ffff, 0xc0ffee],
        "port read, MMIO read, then the guest carried on"
    );
}

#[test]
fn triple_fault_stops_the_vcpu_with_shutdown() {
    let mut vm = new_vm(1, 64 << 20);
    let info = load(&mut vm, "triple_fault");
    vm.start(info.entry).unwrap();
    let exit = vm.wait_for_exit(GUEST_TIMEOUT).unwrap();
    assert_eq!(
        exit,
        Some(VmExit::Vcpu {
            vcpu: 0,
            reason: VcpuStop::Shutdown
        })
    );
    // The stopped vCPU still answers the pause barrier.
    vm.pause().unwrap();
    assert_eq!(vm.vcpu_states(), vec![VcpuState::Exited]);
}

#[test]
fn a_guest_reads_the_cmos_clock_without_waiting_for_an_update() {
    let mut vm = new_vm(1, 64 << 20);
    vm.add_cmos().unwrap();
    let probe = Probe::attach(&vm);
    vm.add_i8042().unwrap();
    let info = vm
        .load_kernel(&KernelConfig {
            kernel: guest("cmos"),
            initramfs: None,
            cmdline: String::new(),
        })
        .unwrap();
    vm.start(info.entry).unwrap();
    assert_eq!(
        vm.wait_for_exit(GUEST_TIMEOUT).unwrap(),
        Some(VmExit::Reset)
    );
    let v = probe.values();
    assert_eq!(v[0] & 0x80, 0, "update-in-progress clear: {v:x?}");
    let year = v[1];
    let now_year = 1970
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 31_556_952;
    let bcd = |y: u64| ((y % 100 / 10) << 4) | (y % 10);
    assert!(
        year == bcd(now_year) || year == bcd(now_year - 1) || year == bcd(now_year + 1),
        "the year in BCD: {year:#x}"
    );
    vm.stop().unwrap();
}
