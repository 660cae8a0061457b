//! The Linux 64-bit boot protocol as a kernel sees it: a guest entered like a kernel reads the
//! zero page and its own CPU state and reports them; the test compares them with what the VMM
//! says it configured.

mod common;

use std::io::Write;

use cove_vmm::boot::{EFER_LMA, EFER_LME, KernelFormat, X86_CR0_PE, X86_CR0_PG, X86_CR4_PAE};
use cove_vmm::layout::{PML4_START, ZERO_PAGE_START};
use cove_vmm::{KernelConfig, VmExit};

use common::{GUEST_TIMEOUT, Probe, SerialCapture, guest, new_vm};

const INITRAMFS: &[u8] = b"070701cove-test-initramfs";

/// Boots `boot_report` in a guest of `mem_size` bytes; returns the probe values, the serial
/// text, and what the VMM configured.
fn boot_report(
    mem_size: u64,
    initramfs: bool,
    vcpus: u8,
) -> (Vec<u64>, String, cove_vmm::BootInfo, Vec<u64>) {
    let mut vm = new_vm(vcpus, mem_size);
    let probe = Probe::attach(&vm);
    let serial = SerialCapture::default();
    vm.add_serial(Box::new(serial.clone())).unwrap();
    vm.add_i8042().unwrap();

    let initramfs_path = initramfs.then(|| {
        let path = std::env::temp_dir().join(format!("cove-initramfs-{}", std::process::id()));
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(INITRAMFS))
            .unwrap();
        path
    });
    let cmdline = "console=ttyS0 reboot=k panic=1 cove.test=boot_protocol";
    let info = vm
        .load_kernel(&KernelConfig {
            kernel: guest("boot_report"),
            initramfs: initramfs_path.clone(),
            cmdline: cmdline.to_string(),
        })
        .unwrap();
    if let Some(p) = initramfs_path {
        std::fs::remove_file(p).unwrap();
    }
    assert_eq!(info.format, KernelFormat::Elf);
    assert_eq!(info.entry.rip, 0x10_0000);

    vm.start(info.entry).unwrap();
    let exit = vm.wait_for_exit(GUEST_TIMEOUT).unwrap();
    assert_eq!(
        exit,
        Some(VmExit::Reset),
        "guest should end with an i8042 reset"
    );
    vm.stop().unwrap();

    let e820: Vec<u64> = vm
        .layout()
        .e820()
        .iter()
        .flat_map(|e| [e.addr, e.size, e.kind as u64])
        .collect();
    (probe.values(), serial.text(), info, e820)
}

/// Splits the report into its fields and checks each against the VMM's configuration.
fn check_report(values: &[u64], serial: &str, info: &cove_vmm::BootInfo, e820: &[u64], vcpus: u8) {
    let mut v = values.iter().copied();
    let mut next = |what: &str| {
        v.next()
            .unwrap_or_else(|| panic!("guest did not report {what}"))
    };

    assert_eq!(next("rsi"), ZERO_PAGE_START, "rsi = zero page");
    let cr0 = next("cr0");
    assert_eq!(
        cr0 & (X86_CR0_PE | X86_CR0_PG),
        X86_CR0_PE | X86_CR0_PG,
        "cr0 {cr0:#x}"
    );
    assert_eq!(next("cr3") & !0xfff, PML4_START, "cr3");
    let cr4 = next("cr4");
    assert_ne!(cr4 & X86_CR4_PAE, 0, "cr4 {cr4:#x}");
    let efer = next("efer");
    assert_eq!(
        efer & (EFER_LME | EFER_LMA),
        EFER_LME | EFER_LMA,
        "efer {efer:#x}"
    );

    let count = next("e820 count");
    assert_eq!(count, (e820.len() / 3) as u64, "e820 entry count");
    let seen: Vec<u64> = (0..e820.len()).map(|_| next("e820 entry")).collect();
    assert_eq!(seen, e820, "e820 entries (addr, size, type)");

    assert_eq!(next("cmd_line_ptr"), info.cmdline_addr);
    assert_eq!(next("cmdline_size"), info.cmdline_len as u64);
    let (ramdisk_image, ramdisk_size) = info.initramfs.unwrap_or((0, 0));
    assert_eq!(next("ramdisk_image"), ramdisk_image);
    assert_eq!(next("ramdisk_size"), ramdisk_size);
    let head = next("initramfs head");
    if info.initramfs.is_some() {
        assert_eq!(head.to_le_bytes(), INITRAMFS[..8]);
    } else {
        assert_eq!(head, 0);
    }
    assert_eq!(
        next("MP signature"),
        u64::from(u32::from_le_bytes(*b"_MP_"))
    );
    let table = cove_vmm::boot::mptable::build(vcpus).unwrap();
    let ptr = u64::from(u32::from_le_bytes(table[4..8].try_into().unwrap()));
    assert_eq!(next("MP config table"), ptr);
    let at = usize::try_from(ptr - cove_vmm::boot::mptable::MPTABLE_START).unwrap();
    assert_eq!(
        next("MP entry count"),
        u64::from(u16::from_le_bytes([table[at + 34], table[at + 35]]))
    );
    assert_eq!(next("MP processors"), u64::from(vcpus));
    assert_eq!(v.next(), None, "nothing else reported");

    assert_eq!(
        serial,
        "console=ttyS0 reboot=k panic=1 cove.test=boot_protocol\n"
    );
}

#[test]
fn guest_sees_zero_page_and_long_mode_as_configured() {
    let (values, serial, info, e820) = boot_report(128 << 20, true, 1);
    let (addr, size) = info.initramfs.expect("initramfs loaded");
    assert_eq!(size, INITRAMFS.len() as u64);
    assert_eq!(addr % 0x20_0000, 0, "initramfs aligned");
    assert!(addr + size <= 128 << 20 && addr >= info.kernel_end);
    check_report(&values, &serial, &info, &e820, 1);
}

#[test]
fn guest_above_4gib_sees_the_split_e820_map() {
    // Low RAM stops at the MMIO gap; the rest starts at 4 GiB. No initramfs: it would sit near
    // 3.25 GiB, outside the 1 GiB the boot page tables map, where the guest could not read it.
    let mem = (4 << 30) + (512 << 20);
    let (values, serial, info, e820) = boot_report(mem, false, 1);
    assert_eq!(e820.len() / 3, 3);
    assert_eq!(e820[6], 1 << 32);
    check_report(&values, &serial, &info, &e820, 1);
}

#[test]
fn a_four_vcpu_guest_finds_them_in_the_mp_table() {
    // vCPU 0 boots; the others wait for INIT/SIPI as on a PC (the report comes from vCPU 0).
    let (values, serial, info, e820) = boot_report(128 << 20, true, 4);
    check_report(&values, &serial, &info, &e820, 4);
}

#[test]
fn the_boot_vcpu_starts_another_with_init_and_startup_ipis() {
    // As a PC: vCPU 1 waits for INIT/SIPI from vCPU 0's local APIC, then runs real-mode code
    // at the STARTUP vector (how Linux brings up its application processors).
    let mut vm = new_vm(2, 64 << 20);
    let probe = Probe::attach(&vm);
    vm.add_i8042().unwrap();
    let info = vm
        .load_kernel(&cove_vmm::KernelConfig {
            kernel: guest("ap_start"),
            initramfs: None,
            cmdline: String::new(),
        })
        .unwrap();
    vm.start(info.entry).unwrap();
    let exit = vm.wait_for_exit(GUEST_TIMEOUT).unwrap();
    assert_eq!(
        exit,
        Some(cove_vmm::VmExit::Reset),
        "reported {:x?}",
        probe.values()
    );
    assert_eq!(
        probe.values(),
        [0x42],
        "the application processor ran its trampoline"
    );
    vm.pause().unwrap();
    let s = vm.snapshot().unwrap();
    assert_eq!(
        (s.vcpus[1].sregs.cs.selector, s.vcpus[1].mp_state.mp_state),
        (0x1000, kvm_bindings::KVM_MP_STATE_HALTED),
        "vCPU 1 started at the STARTUP vector and halted there"
    );
    vm.stop().unwrap();
}
