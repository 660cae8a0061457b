//! Pause is a barrier: once `Vm::pause` returns no vCPU runs, so guest memory stands still.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cove_vmm::vcpu::VcpuState;
use cove_vmm::{EntryPoint, KernelConfig, Vm};
use vm_memory::{Bytes, GuestAddress};

use common::{guest, new_vm};

/// Where vCPU `i` keeps its counter.
fn counter_addr(i: u8) -> GuestAddress {
    GuestAddress(0x20_0000 + u64::from(i) * 0x1000)
}

fn counter(vm: &Vm, i: u8) -> u64 {
    vm.memory().load(counter_addr(i), Ordering::SeqCst).unwrap()
}

/// Waits until every counter has moved past `floor[i]`.
fn wait_all_above(vm: &Vm, floor: &[u64]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for (i, &f) in (0u8..).zip(floor) {
        while counter(vm, i) <= f {
            assert!(
                Instant::now() < deadline,
                "vCPU {i} counter stuck at {}",
                counter(vm, i)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn pause_resume(vcpus: u8) {
    let mut vm = new_vm(vcpus, 64 << 20);
    let info = vm
        .load_kernel(&KernelConfig {
            kernel: guest("counter"),
            initramfs: None,
            cmdline: String::new(),
        })
        .unwrap();
    // Every vCPU runs the loop from the start on its own counter (and its own stack).
    let entries: Vec<EntryPoint> = (0..vcpus)
        .map(|i| EntryPoint {
            rip: info.entry.rip,
            rsp: 0x8000 - u64::from(i) * 0x100,
            rsi: counter_addr(i).0,
        })
        .collect();
    vm.start_each_at(&entries).unwrap();
    assert!(vm.vcpu_states().iter().all(|s| *s == VcpuState::Running));
    wait_all_above(&vm, &vec![0; usize::from(vcpus)]);

    for _ in 0..3 {
        vm.pause().unwrap();
        assert!(vm.vcpu_states().iter().all(|s| *s == VcpuState::Paused));
        let first: Vec<u64> = (0..vcpus).map(|i| counter(&vm, i)).collect();
        std::thread::sleep(Duration::from_millis(100));
        let second: Vec<u64> = (0..vcpus).map(|i| counter(&vm, i)).collect();
        assert_eq!(first, second, "counters moved while paused");

        vm.resume().unwrap();
        wait_all_above(&vm, &second);
    }
    vm.stop().unwrap();
}

#[test]
fn pause_stops_and_resume_restarts_one_vcpu() {
    pause_resume(1);
}

#[test]
fn pause_stops_and_resume_restarts_two_vcpus() {
    pause_resume(2);
}

#[test]
fn the_dirty_log_shows_the_pages_the_guest_wrote_and_clears_when_read() {
    let mut vm = new_vm(1, 64 << 20);
    vm.set_dirty_log(true).unwrap();
    let info = vm
        .load_kernel(&KernelConfig {
            kernel: guest("counter"),
            initramfs: None,
            cmdline: String::new(),
        })
        .unwrap();
    vm.start_each_at(&[EntryPoint {
        rip: info.entry.rip,
        rsp: 0x8000,
        rsi: counter_addr(0).0,
    }])
    .unwrap();
    wait_all_above(&vm, &[0]);
    vm.pause().unwrap();
    let dirty: Vec<u64> = vm
        .dirty_pages()
        .unwrap()
        .iter()
        .flat_map(|r| r.pages().map(|p| p.0).collect::<Vec<_>>())
        .collect();
    assert!(dirty.contains(&counter_addr(0).0), "{dirty:x?}");
    assert!(
        !dirty.contains(&0x30_0000),
        "a page nobody wrote: {dirty:x?}"
    );
    // Read once, the log is clear until the guest writes again.
    assert!(
        vm.dirty_pages()
            .unwrap()
            .iter()
            .all(|r| r.pages().next().is_none())
    );
    vm.resume().unwrap();
    let now = counter(&vm, 0);
    wait_all_above(&vm, &[now]);
    vm.pause().unwrap();
    let again: Vec<u64> = vm
        .dirty_pages()
        .unwrap()
        .iter()
        .flat_map(|r| r.pages().map(|p| p.0).collect::<Vec<_>>())
        .collect();
    assert_eq!(again, [counter_addr(0).0], "only the counter's page");
    vm.stop().unwrap();
}
