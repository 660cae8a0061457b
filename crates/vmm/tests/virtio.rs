//! Guest programs drive the virtio devices through the virtio-mmio transport as a Linux driver
//! does (feature negotiation, queue setup, DRIVER_OK), notify through the ioeventfd the I/O
//! thread serves, and report what they got.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};

use cove_virtio::block::BlockConfig;
use cove_vmm::virtio::DeviceSpec;
use cove_vmm::{KernelConfig, Vm, VmExit};

use common::{GUEST_TIMEOUT, Probe, guest, new_vm};

fn run(mut vm: Vm, program: &str) -> Vec<u64> {
    let probe = Probe::attach(&vm);
    vm.add_i8042().unwrap();
    let info = vm
        .load_kernel(&KernelConfig {
            kernel: guest(program),
            initramfs: None,
            cmdline: vm.virtio_cmdline(),
        })
        .unwrap();
    vm.start(info.entry).unwrap();
    assert_eq!(
        vm.wait_for_exit(GUEST_TIMEOUT).unwrap(),
        Some(VmExit::Reset),
        "{program} did not finish: it reported {:x?}",
        probe.values()
    );
    vm.stop().unwrap();
    probe.values()
}

#[test]
fn a_guest_draws_entropy_from_virtio_rng() {
    let mut vm = new_vm(1, 64 << 20);
    vm.add_virtio("rng", DeviceSpec::Rng).unwrap();
    assert_eq!(vm.virtio_cmdline(), "virtio_mmio.device=4K@0xd0000000:5");
    let v = run(vm, "virtio_rng");
    assert_eq!(
        v,
        [64, 1, 1],
        "used length, non-zero bytes, used-buffer interrupt"
    );
}

#[test]
fn a_guest_reads_writes_and_identifies_a_virtio_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk");
    let mut data = vec![0u8; 64 * 512];
    for (i, b) in data.iter_mut().enumerate() {
        *b = u8::try_from((i * 7 + i / 512) % 251).unwrap();
    }
    std::fs::write(&path, &data).unwrap();
    let mut vm = new_vm(1, 64 << 20);
    vm.add_virtio(
        "disk",
        DeviceSpec::Block(BlockConfig {
            path: path.clone(),
            read_only: false,
            serial: "cove-test-disk".into(),
        }),
    )
    .unwrap();
    let v = run(vm, "virtio_blk");
    let sector2 = &data[2 * 512..3 * 512];
    let sum = sector2
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .fold(0u64, u64::wrapping_add);
    let mut serial = [0u8; 8];
    serial.copy_from_slice(&b"cove-test-disk"[..8]);
    assert_eq!(
        v,
        [0, sum, 0, u64::from_le_bytes(serial), 0, 0],
        "read status and checksum, write status, serial, GET_ID status, discard status"
    );
    // The discard ran on the I/O thread, under its seccomp filter: sectors 8-15 read zero
    // and their block went back to the host's filesystem.
    let back = std::fs::read(&path).unwrap();
    assert!(back[8 * 512..16 * 512].iter().all(|&b| b == 0));
    assert_eq!(back[16 * 512..], data[16 * 512..], "the rest is as it was");
    {
        use std::os::unix::fs::MetadataExt as _;
        let blocks = std::fs::metadata(&path).unwrap().blocks();
        assert!(
            blocks * 512 < 64 * 512,
            "{blocks} blocks: the hole was punched"
        );
    }
    let mut f = std::fs::File::open(&path).unwrap();
    let mut sector3 = vec![0u8; 512];
    f.seek(SeekFrom::Start(3 * 512)).unwrap();
    f.read_exact(&mut sector3).unwrap();
    assert_eq!(sector3, sector2, "the guest's write reached the file");
}

#[test]
fn a_read_only_disk_refuses_the_guests_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&vec![0x5a; 16 * 512]).unwrap();
    drop(f);
    let mut vm = new_vm(1, 64 << 20);
    vm.add_virtio(
        "disk",
        DeviceSpec::Block(BlockConfig {
            path: path.clone(),
            read_only: true,
            serial: "ro".into(),
        }),
    )
    .unwrap();
    let v = run(vm, "virtio_blk");
    assert_eq!(v[0], 0, "reads work");
    assert_eq!(v[2], 1, "the write is refused with VIRTIO_BLK_S_IOERR");
    assert!(std::fs::read(&path).unwrap().iter().all(|&b| b == 0x5a));
}

#[test]
fn a_hostile_driver_gets_refusals_and_the_vmm_carries_on() {
    let mut vm = new_vm(1, 64 << 20);
    vm.add_virtio("rng", DeviceSpec::Rng).unwrap();
    let v = run(vm, "virtio_hostile");
    assert_eq!(
        v[0], 1,
        "the good request behind the bad ones was served: {v:x?}"
    );
    assert!((1..=4).contains(&v[1]), "used index {}", v[1]);
    assert_eq!(v[2], 0, "an offset the transport lacks reads zero");
    assert_eq!(v[3], 4, "the device id is still rng");
}

#[test]
fn a_guest_driver_opens_the_agent_port_and_echoes_what_the_host_sends() {
    use std::os::unix::net::{UnixListener, UnixStream};
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let mut vm = new_vm(1, 64 << 20);
    vm.add_virtio(
        "agent",
        DeviceSpec::Console(UnixListener::bind(&sock).unwrap()),
    )
    .unwrap();
    let probe = Probe::attach(&vm);
    let info = vm
        .load_kernel(&KernelConfig {
            kernel: guest("virtio_console"),
            initramfs: None,
            cmdline: vm.virtio_cmdline(),
        })
        .unwrap();
    // Connected, with the message waiting, before the guest runs (as cove-vm connects): the
    // guest's DRIVER_OK, handled on its vCPU thread, already finds the stream.
    let mut host = UnixStream::connect(&sock).unwrap();
    host.write_all(b"hello agent").unwrap();
    vm.start(info.entry).unwrap();
    host.set_read_timeout(Some(GUEST_TIMEOUT)).unwrap();
    let mut back = [0u8; 11];
    host.read_exact(&mut back).unwrap();
    assert_eq!(
        &back, b"HELLO AGENT",
        "the guest's echo, through its transmit queue"
    );
    let deadline = std::time::Instant::now() + GUEST_TIMEOUT;
    while probe.values().len() < 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let v = probe.values();
    assert_eq!(v[0], 1, "DEVICE_ADD after DEVICE_READY: {v:x?}");
    assert!(
        v[1] >= 3,
        "PORT_NAME and PORT_OPEN after PORT_READY: {v:x?}"
    );
    assert_eq!(
        &v[2..],
        [11, 1],
        "the message's length, one chain sent back"
    );
    vm.stop().unwrap();
}
