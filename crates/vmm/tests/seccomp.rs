//! The vCPU threads' seccomp filter: a syscall outside the list, made while handling a guest
//! exit, kills the VMM process; the same VM without the filter runs to its end.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use cove_vmm::{KernelConfig, VmExit};

use common::{guest, new_vm};

/// Serial output that makes a syscall no vCPU thread needs (`getppid`) for every write.
struct Nosy;

impl std::io::Write for Nosy {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // SAFETY: getppid has no arguments and cannot fail.
        let _ = unsafe { libc::getppid() };
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn child(seccomp: bool) -> std::process::ExitStatus {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "seccomp_child", "--ignored", "--test-threads=1"])
        .env("COVE_TEST_SECCOMP", if seccomp { "on" } else { "off" })
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
}

#[test]
fn a_forbidden_syscall_on_a_vcpu_thread_kills_the_vmm() {
    let off = child(false);
    assert!(
        off.success(),
        "without the filter the guest runs to its reset: {off:?}"
    );
    let on = child(true);
    assert_eq!(on.signal(), Some(libc::SIGSYS), "{on:?}");
}

/// The VMM half, run in its own process by the test above.
#[test]
#[ignore = "run in a child process by a_forbidden_syscall_on_a_vcpu_thread_kills_the_vmm"]
fn seccomp_child() {
    let on = std::env::var("COVE_TEST_SECCOMP").expect("run by its parent test") == "on";
    let mut vm = new_vm(1, 64 << 20);
    vm.set_seccomp(on);
    vm.add_serial(Box::new(Nosy)).unwrap();
    vm.add_i8042().unwrap();
    let info = vm
        .load_kernel(&KernelConfig {
            kernel: guest("hello"),
            initramfs: None,
            cmdline: String::new(),
        })
        .unwrap();
    vm.start(info.entry).unwrap();
    assert_eq!(
        vm.wait_for_exit(Duration::from_secs(30)).unwrap(),
        Some(VmExit::Reset)
    );
}
