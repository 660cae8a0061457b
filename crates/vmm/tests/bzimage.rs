//! bzImage boot: a synthetic bzImage (a minimal setup header, then a protected-mode "kernel"
//! whose 64-bit entry at +0x200 is the `hello` guest) is loaded at `code32_start` and entered
//! at its 64-bit entry point, and its setup header reaches the zero page.

mod common;

use cove_vmm::boot::KernelFormat;
use cove_vmm::layout::ZERO_PAGE_START;
use cove_vmm::{KernelConfig, VmExit};
use vm_memory::{Bytes, GuestAddress};

use common::{GUEST_TIMEOUT, SerialCapture, guest_flat, new_vm};

const SETUP_SECTS: u8 = 1;
const BOOT_PROTOCOL_VERSION: u16 = 0x020f;

/// Builds a bzImage whose protected-mode part is `payload` preceded by 0x200 bytes of `hlt`
/// (the 32-bit entry, never used here).
fn synthetic_bzimage(payload: &[u8]) -> Vec<u8> {
    let setup_len = (usize::from(SETUP_SECTS) + 1) * 512;
    let mut image = vec![0u8; setup_len];
    image[0x1f1] = SETUP_SECTS;
    image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&BOOT_PROTOCOL_VERSION.to_le_bytes());
    image[0x211] = 0x01; // loadflags: LOADED_HIGH
    image[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    image[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes()); // kernel_alignment
    image[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // xloadflags: XLF_KERNEL_64
    image.extend(std::iter::repeat_n(0xf4u8, 0x200));
    image.extend_from_slice(payload);
    image
}

#[test]
fn bzimage_is_entered_at_its_64bit_entry_with_its_setup_header() {
    let image = synthetic_bzimage(&guest_flat("hello"));
    let path = std::env::temp_dir().join(format!("cove-bzimage-{}", std::process::id()));
    std::fs::write(&path, image).unwrap();

    let mut vm = new_vm(1, 64 << 20);
    let serial = SerialCapture::default();
    vm.add_serial(Box::new(serial.clone())).unwrap();
    vm.add_i8042().unwrap();
    let info = vm
        .load_kernel(&KernelConfig {
            kernel: path.clone(),
            initramfs: None,
            cmdline: "console=ttyS0".into(),
        })
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(info.format, KernelFormat::BzImage);
    assert_eq!(info.entry.rip, 0x10_0200);

    let version: u16 = vm
        .memory()
        .read_obj(GuestAddress(ZERO_PAGE_START + 0x206))
        .unwrap();
    assert_eq!(version, BOOT_PROTOCOL_VERSION, "setup header copied");

    vm.start(info.entry).unwrap();
    assert_eq!(
        vm.wait_for_exit(GUEST_TIMEOUT).unwrap(),
        Some(VmExit::Reset)
    );
    assert_eq!(serial.text(), "Hello from a Cove guest\n");
}

#[test]
fn garbage_kernel_is_refused_with_an_error() {
    let path = std::env::temp_dir().join(format!("cove-garbage-{}", std::process::id()));
    std::fs::write(&path, vec![0x5au8; 4096]).unwrap();
    let mut vm = new_vm(1, 64 << 20);
    let err = vm
        .load_kernel(&KernelConfig {
            kernel: path.clone(),
            initramfs: None,
            cmdline: String::new(),
        })
        .unwrap_err();
    std::fs::remove_file(&path).unwrap();
    assert!(err.to_string().contains("boot"), "{err}");
}
