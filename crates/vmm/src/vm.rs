//! The VM: KVM objects, guest memory, buses and devices, and the vCPU threads.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cove_devices::i8042::{I8042_BASE, I8042_LEN, I8042Device};
use cove_devices::serial::{COM1_BASE, COM1_IRQ, COM1_LEN, SerialDevice, SerialOut, SerialPersist};
use cove_devices::{BusError, EventFdTrigger};
use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY, kvm_pit_config};
use kvm_ioctls::{Kvm, VmFd};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::boot::{self, BootError, BootInfo, EntryPoint, KernelConfig};
use crate::cpu_template::VcpuIdentity;
use crate::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS, LayoutError, MemoryLayout};
use crate::memory::{self, GuestMemoryMmap, MemoryError};
use crate::persist::{self, SavedConfig, VmSnapshot};
use crate::vcpu::{
    Buses, SetupError, VcpuError, VcpuHandle, VcpuReport, VcpuState, VcpuStop, kick, setup,
};

/// The most vCPUs a Cove VM has (APIC ids are 8 bits in CPUID leaf 1).
pub const MAX_VCPUS: u8 = 254;

/// What the VM is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmConfig {
    /// Number of vCPUs, 1..=[`MAX_VCPUS`].
    pub vcpu_count: u8,
    /// Guest RAM in bytes (a multiple of 4 KiB).
    pub mem_size: u64,
}

/// Why the VM stopped running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest asked for a reset (i8042 command 0xFE: Linux `reboot` with `reboot=k`).
    Reset,
    /// The guest stopped a vCPU.
    Vcpu {
        /// Which vCPU.
        vcpu: u8,
        /// Why.
        reason: VcpuStop,
    },
}

/// Errors from building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Open /dev/kvm.
    #[error("open /dev/kvm (is KVM available and are you in the kvm group?)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// A KVM ioctl on the VM failed.
    #[error("{0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// The vCPU count is out of range.
    #[error("{0} vCPUs requested; Cove supports 1 to {MAX_VCPUS}")]
    VcpuCount(u8),
    /// The memory size is not usable.
    #[error("guest memory layout")]
    Layout(#[from] LayoutError),
    /// Guest memory.
    #[error("guest memory")]
    Memory(#[from] MemoryError),
    /// Create an event fd.
    #[error("create an event fd")]
    EventFd(#[source] std::io::Error),
    /// Put a device on a bus.
    #[error("attach a device")]
    Bus(#[from] BusError),
    /// Load the kernel.
    #[error("boot")]
    Boot(#[from] BootError),
    /// Install the vCPU kick signal handler.
    #[error("install the vCPU kick signal handler")]
    KickHandler(#[source] vmm_sys_util::errno::Error),
    /// Configure a vCPU.
    #[error("configure vCPU {0}")]
    VcpuSetup(u8, #[source] SetupError),
    /// Drive a vCPU thread.
    #[error("vCPU")]
    Vcpu(#[from] VcpuError),
    /// The vCPUs were already started.
    #[error("the vCPUs are already started")]
    AlreadyStarted,
    /// One entry point per vCPU is needed.
    #[error("{given} entry points for {vcpus} vCPUs")]
    EntryCount {
        /// Entry points given.
        given: usize,
        /// vCPUs in the VM.
        vcpus: u8,
    },
    /// Wait for the VM's events.
    #[error("wait for VM events")]
    Wait(#[source] std::io::Error),
    /// Map or save guest memory for a snapshot.
    #[error("snapshot memory")]
    MemoryFile(#[from] persist::memory::MemoryFileError),
    /// Restore a vCPU's state, or list the MSRs to save.
    #[error("vCPU {0} state")]
    VcpuState(u8, #[source] persist::vcpu::VcpuStateError),
    /// A device's state in the snapshot does not fit it.
    #[error("the {0} state in the snapshot: {1}")]
    DeviceState(&'static str, String),
    /// The exit events were taken by [`Vm::take_exit_watch`].
    #[error("the VM's exit events were handed to another waiter")]
    ExitWatchTaken,
    /// A virtio device.
    #[error("virtio")]
    Virtio(#[from] crate::virtio::VirtioError),
    /// The I/O thread.
    #[error("I/O thread")]
    Io(#[from] crate::io::IoError),
    /// Write the MP table.
    #[error("MP table")]
    MpTable(#[from] boot::mptable::MpTableError),
    /// Build the vCPU threads' seccomp filter.
    #[error("seccomp")]
    Seccomp(#[source] crate::seccomp::SeccompError),
    /// Save or restore the in-kernel devices.
    #[error("in-kernel device state")]
    VmState(#[from] persist::vm::VmStateError),
}

/// A KVM virtual machine and everything it owns.
///
/// Field order is drop order: vCPU threads stop first, then the VM fd closes, and only then is
/// guest memory unmapped.
#[derive(Debug)]
pub struct Vm {
    vcpus: Vec<VcpuHandle>,
    buses: Buses,
    exits: Option<ExitWatch>,
    report_tx: Sender<VcpuReport>,
    report_evt: EventFd,
    reset_evt: EventFd,
    fd: VmFd,
    supported_cpuid: CpuId,
    /// The MSRs a snapshot saves (KVM's list for this host).
    msrs: Arc<[u32]>,
    /// Whether vCPU threads run under their seccomp filter.
    seccomp: bool,
    /// COM1, once attached (its state goes into snapshots).
    serial: Option<Arc<Mutex<SerialDevice>>>,
    /// virtio devices, in slot order.
    virtio: Vec<crate::virtio::Slot>,
    /// Serves the virtio devices once the VM first runs.
    io: Option<crate::io::IoThread>,
    /// Restored from a snapshot: the devices' queues are processed once when the I/O starts.
    restored: bool,
    /// Device state from the snapshot this VM was restored from, taken by each device as it is
    /// attached.
    restored_devices: std::collections::BTreeMap<String, serde_json::Value>,
    memory: GuestMemoryMmap,
    layout: MemoryLayout,
    config: VmConfig,
}

impl Vm {
    /// Creates the VM: in-kernel irqchip and PIT, guest memory registered with KVM, empty
    /// buses. No vCPUs yet (see [`Vm::start`]).
    pub fn new(config: VmConfig) -> Result<Self, VmError> {
        if config.vcpu_count == 0 || config.vcpu_count > MAX_VCPUS {
            return Err(VmError::VcpuCount(config.vcpu_count));
        }
        let layout = MemoryLayout::new(config.mem_size)?;
        let memory = memory::create(&layout)?;
        Self::build(config, layout, memory)
    }

    /// Restores a VM from a snapshot: its memory a private mapping of `memory_file` (pages load
    /// on first touch, and clones of one snapshot share what none of them wrote), the in-kernel
    /// devices and every vCPU as they were. The vCPUs stay paused: attach the devices (and
    /// restore their state from `snap.devices`), then [`Vm::resume`].
    pub fn restore(snap: &VmSnapshot, memory_file: &std::fs::File) -> Result<Self, VmError> {
        let config = VmConfig {
            vcpu_count: snap.config.vcpu_count,
            mem_size: snap.config.mem_size,
        };
        if config.vcpu_count == 0 || config.vcpu_count > MAX_VCPUS {
            return Err(VmError::VcpuCount(config.vcpu_count));
        }
        if snap.vcpus.len() != usize::from(config.vcpu_count) {
            return Err(VmError::EntryCount {
                given: snap.vcpus.len(),
                vcpus: config.vcpu_count,
            });
        }
        let layout = MemoryLayout::new(config.mem_size)?;
        let memory = persist::memory::map_private(memory_file, &layout.ram_ranges())?;
        let mut vm = Self::build(config, layout, memory)?;
        vm.restored_devices = snap.devices.clone();
        vm.restored = true;
        persist::vm::restore(&vm.fd, &snap.vm)?;
        kick::install_handler().map_err(VmError::KickHandler)?;
        for (id, state) in (0u8..).zip(&snap.vcpus) {
            let vcpu = vm
                .fd
                .create_vcpu(u64::from(id))
                .map_err(|e| VmError::Kvm("create a vCPU", e))?;
            persist::vcpu::restore(&vcpu, state).map_err(|e| VmError::VcpuState(id, e))?;
            let report_evt = vm.report_evt.try_clone().map_err(VmError::EventFd)?;
            let filter = vm.vcpu_filter()?;
            let handle = VcpuHandle::spawn(
                id,
                vcpu,
                vm.buses.clone(),
                vm.report_tx.clone(),
                report_evt,
                filter,
            )?;
            vm.vcpus.push(handle);
        }
        Ok(vm)
    }

    /// Reads the state of the paused VM (every vCPU and the in-kernel devices). Memory is
    /// saved apart ([`persist::memory::save`] of [`Vm::memory`]); device state is the caller's
    /// to add to `devices`.
    pub fn snapshot(&mut self) -> Result<VmSnapshot, VmError> {
        let mut vcpus = Vec::with_capacity(self.vcpus.len());
        for v in &mut self.vcpus {
            vcpus.push(v.save(self.msrs.clone())?);
        }
        Ok(VmSnapshot {
            config: SavedConfig {
                vcpu_count: self.config.vcpu_count,
                mem_size: self.config.mem_size,
            },
            vm: persist::vm::save(&self.fd)?,
            vcpus,
            devices: self
                .serial
                .iter()
                .map(|s| {
                    let state = s.lock().unwrap_or_else(|e| e.into_inner()).state();
                    (
                        "serial".to_string(),
                        serde_json::to_value(state).expect("serializes"),
                    )
                })
                .chain(
                    self.virtio
                        .iter()
                        .map(|v| (format!("virtio:{}", v.name), v.save())),
                )
                .collect(),
        })
    }

    fn build(
        config: VmConfig,
        layout: MemoryLayout,
        memory: GuestMemoryMmap,
    ) -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let fd = kvm
            .create_vm()
            .map_err(|e| VmError::Kvm("create the VM", e))?;
        // Both regions lie in the MMIO gap, where there is no RAM; KVM wants them before the
        // first vCPU exists.
        fd.set_tss_address(usize::try_from(KVM_TSS_ADDRESS).unwrap_or(usize::MAX))
            .map_err(|e| VmError::Kvm("set the TSS address", e))?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(|e| VmError::Kvm("set the identity map address", e))?;
        fd.create_irq_chip()
            .map_err(|e| VmError::Kvm("create the in-kernel irqchip", e))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit)
            .map_err(|e| VmError::Kvm("create the in-kernel PIT", e))?;

        memory::register(&fd, &memory)?;

        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| VmError::Kvm("get the supported CPUID", e))?;

        let msrs = persist::vcpu::msr_index_list(&kvm)
            .map_err(|e| VmError::VcpuState(0, e))?
            .into();
        let (report_tx, reports) = mpsc::channel();
        let report_evt = EventFd::new(EFD_NONBLOCK).map_err(VmError::EventFd)?;
        let reset_evt = EventFd::new(EFD_NONBLOCK).map_err(VmError::EventFd)?;
        let exits = ExitWatch {
            reports,
            reset_evt: reset_evt.try_clone().map_err(VmError::EventFd)?,
            report_evt: report_evt.try_clone().map_err(VmError::EventFd)?,
            wake: EventFd::new(EFD_NONBLOCK).map_err(VmError::EventFd)?,
        };
        Ok(Self {
            msrs,
            seccomp: true,
            serial: None,
            virtio: Vec::new(),
            io: None,
            restored: false,
            restored_devices: std::collections::BTreeMap::new(),
            vcpus: Vec::new(),
            buses: Buses::default(),
            exits: Some(exits),
            report_tx,
            report_evt,
            reset_evt,
            fd,
            supported_cpuid,
            memory,
            layout,
            config,
        })
    }

    /// Whether vCPU threads install their seccomp filter ([`crate::seccomp`]) before running
    /// the guest: on unless turned off before the vCPUs start (for debugging a VMM under
    /// strace or gdb).
    pub fn set_seccomp(&mut self, on: bool) {
        self.seccomp = on;
    }

    fn vcpu_filter(&self) -> Result<Option<Arc<seccompiler::BpfProgram>>, VmError> {
        if !self.seccomp {
            return Ok(None);
        }
        Ok(Some(Arc::new(
            crate::seccomp::vcpu_filter().map_err(VmError::Seccomp)?,
        )))
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// The memory layout.
    pub fn layout(&self) -> &MemoryLayout {
        &self.layout
    }

    /// The port and MMIO buses, to attach devices.
    pub fn buses(&self) -> &Buses {
        &self.buses
    }

    /// The KVM VM (irqfds, ioeventfds).
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Attaches COM1, writing guest output to `out`; its interrupt is IRQ 4 through an irqfd.
    pub fn add_serial(&mut self, out: SerialOut) -> Result<Arc<Mutex<SerialDevice>>, VmError> {
        let irq = EventFd::new(EFD_NONBLOCK).map_err(VmError::EventFd)?;
        self.fd
            .register_irqfd(&irq, COM1_IRQ)
            .map_err(|e| VmError::Kvm("register the serial irqfd", e))?;
        let trigger = EventFdTrigger::new(irq);
        let dev = match self.restored_devices.remove("serial") {
            Some(v) => {
                let state: SerialPersist = serde_json::from_value(v)
                    .map_err(|e| VmError::DeviceState("serial", e.to_string()))?;
                SerialDevice::restore(&state, trigger, out)
                    .map_err(|e| VmError::DeviceState("serial", e.to_string()))?
            }
            None => SerialDevice::new(trigger, out),
        };
        let serial = Arc::new(Mutex::new(dev));
        self.buses.pio.insert(COM1_BASE, COM1_LEN, serial.clone())?;
        self.serial = Some(serial.clone());
        Ok(serial)
    }

    /// Attaches a virtio device named `name` in the next slot (restored from the snapshot's
    /// state of that name on a restored VM). Add them in the same order on a restore.
    pub fn add_virtio(
        &mut self,
        name: &str,
        spec: crate::virtio::DeviceSpec,
    ) -> Result<(), VmError> {
        if self.virtio.iter().any(|v| v.name == name) {
            return Err(crate::virtio::VirtioError::DuplicateName(name.into()).into());
        }
        let saved = self.restored_devices.remove(&format!("virtio:{name}"));
        if self.restored && saved.is_none() {
            return Err(VmError::DeviceState(
                "virtio",
                format!("{name} is not in the snapshot"),
            ));
        }
        let slot =
            crate::virtio::build(&self.fd, &self.memory, self.virtio.len(), name, spec, saved)?;
        let dev: Arc<Mutex<dyn cove_devices::BusDevice>> = match &slot.transport {
            crate::virtio::Transport::Block(t) => t.clone(),
            crate::virtio::Transport::Rng(t) => t.clone(),
            crate::virtio::Transport::Net(t) => t.clone(),
            crate::virtio::Transport::Console(t, _) => t.clone(),
        };
        self.buses
            .mmio
            .insert(slot.base, crate::virtio::VIRTIO_MMIO_SIZE, dev)
            .map_err(|e| crate::virtio::VirtioError::Bus(name.into(), e))?;
        self.virtio.push(slot);
        Ok(())
    }

    /// Turns KVM's log of the pages the guest writes on or off (off at first). Writes the VMM
    /// itself makes (device emulation, the kernel load) are not in KVM's log.
    pub fn set_dirty_log(&mut self, on: bool) -> Result<(), VmError> {
        Ok(memory::register_with(&self.fd, &self.memory, on)?)
    }

    /// The pages the guest wrote since the log was turned on or last read (reading clears it).
    pub fn dirty_pages(&self) -> Result<Vec<memory::DirtyRegion>, VmError> {
        Ok(memory::dirty_log(&self.fd, &self.memory)?)
    }

    /// The kernel command-line entries that describe the virtio devices.
    pub fn virtio_cmdline(&self) -> String {
        self.virtio
            .iter()
            .map(crate::virtio::Slot::cmdline)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Attaches the CMOS real-time clock (the wall clock Linux reads at boot).
    pub fn add_cmos(&mut self) -> Result<(), VmError> {
        let dev = Arc::new(Mutex::new(cove_devices::cmos::CmosDevice::new()));
        self.buses.pio.insert(
            cove_devices::cmos::CMOS_BASE,
            cove_devices::cmos::CMOS_LEN,
            dev,
        )?;
        Ok(())
    }

    /// Attaches the i8042, whose reset command ends the VM with [`VmExit::Reset`].
    pub fn add_i8042(&mut self) -> Result<(), VmError> {
        let reset = self.reset_evt.try_clone().map_err(VmError::EventFd)?;
        let dev = Arc::new(Mutex::new(I8042Device::new(EventFdTrigger::new(reset))));
        self.buses.pio.insert(I8042_BASE, I8042_LEN, dev)?;
        Ok(())
    }

    /// Loads a kernel (and initramfs, command line) for the boot vCPU.
    /// The MP table that tells the kernel about the vCPUs and the IOAPIC goes with it.
    pub fn load_kernel(&mut self, cfg: &KernelConfig) -> Result<BootInfo, VmError> {
        let info = boot::load(&self.memory, &self.layout, cfg)?;
        boot::mptable::write(&self.memory, self.config.vcpu_count)?;
        Ok(info)
    }

    /// Creates the vCPUs and starts them: vCPU 0 at `boot`, the others waiting for the boot
    /// vCPU's INIT/SIPI, as on a PC.
    pub fn start(&mut self, boot: EntryPoint) -> Result<(), VmError> {
        let mut entries = vec![None; usize::from(self.config.vcpu_count)];
        entries[0] = Some(boot);
        self.start_vcpus(&entries)
    }

    /// Creates the vCPUs and starts every one at its own entry point, in long mode (for test
    /// programs that do not bring up application processors themselves).
    pub fn start_each_at(&mut self, entries: &[EntryPoint]) -> Result<(), VmError> {
        if entries.len() != usize::from(self.config.vcpu_count) {
            return Err(VmError::EntryCount {
                given: entries.len(),
                vcpus: self.config.vcpu_count,
            });
        }
        let entries: Vec<_> = entries.iter().copied().map(Some).collect();
        self.start_vcpus(&entries)
    }

    fn start_vcpus(&mut self, entries: &[Option<EntryPoint>]) -> Result<(), VmError> {
        if !self.vcpus.is_empty() {
            return Err(VmError::AlreadyStarted);
        }
        kick::install_handler().map_err(VmError::KickHandler)?;
        for (id, entry) in (0u8..).zip(entries) {
            let vcpu = self
                .fd
                .create_vcpu(u64::from(id))
                .map_err(|e| VmError::Kvm("create a vCPU", e))?;
            let identity = VcpuIdentity {
                apic_id: id,
                vcpu_count: self.config.vcpu_count,
            };
            setup::configure(&vcpu, &self.supported_cpuid, identity, *entry)
                .map_err(|e| VmError::VcpuSetup(id, e))?;
            let report_evt = self.report_evt.try_clone().map_err(VmError::EventFd)?;
            let handle = VcpuHandle::spawn(
                id,
                vcpu,
                self.buses.clone(),
                self.report_tx.clone(),
                report_evt,
                self.vcpu_filter()?,
            )?;
            self.vcpus.push(handle);
        }
        self.resume()
    }

    /// Stops every vCPU and waits until all are out of `KVM_RUN`: after this returns, guest
    /// memory and vCPU state do not change until [`Vm::resume`].
    pub fn pause(&mut self) -> Result<(), VmError> {
        // Ask all first, then wait: the vCPUs stop in parallel.
        for vcpu in &self.vcpus {
            vcpu.request_pause()?;
        }
        for vcpu in &mut self.vcpus {
            vcpu.wait_paused()?;
        }
        if let Some(io) = &self.io {
            io.pause();
        }
        Ok(())
    }

    /// Lets every vCPU run again.
    pub fn resume(&mut self) -> Result<(), VmError> {
        match &self.io {
            Some(io) => io.resume(),
            None if !self.virtio.is_empty() => {
                let filter = if self.seccomp {
                    Some(Arc::new(
                        crate::seccomp::io_filter().map_err(VmError::Seccomp)?,
                    ))
                } else {
                    None
                };
                self.io = Some(crate::io::IoThread::spawn(
                    self.virtio.clone(),
                    self.restored,
                    filter,
                )?);
            }
            None => {}
        }
        for vcpu in &self.vcpus {
            vcpu.request_resume()?;
        }
        for vcpu in &mut self.vcpus {
            vcpu.wait_resumed()?;
        }
        Ok(())
    }

    /// The state each vCPU last acknowledged.
    pub fn vcpu_states(&self) -> Vec<VcpuState> {
        self.vcpus.iter().map(VcpuHandle::state).collect()
    }

    /// Waits up to `timeout` for the guest to stop the VM; `None` if it is still running.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Result<Option<VmExit>, VmError> {
        self.exits
            .as_mut()
            .ok_or(VmError::ExitWatchTaken)?
            .wait(timeout)
    }

    /// Takes the VM's exit events, for a thread of the caller's that waits on them while the
    /// VM is driven from elsewhere ([`Vm::wait_for_exit`] fails afterwards).
    pub fn take_exit_watch(&mut self) -> Option<ExitWatch> {
        self.exits.take()
    }

    /// Ends every vCPU thread. The VM cannot run again afterwards.
    pub fn stop(&mut self) -> Result<(), VmError> {
        let mut first_error = None;
        for vcpu in &mut self.vcpus {
            if let Err(e) = vcpu.exit() {
                first_error.get_or_insert(e);
            }
        }
        self.vcpus.clear();
        if let Some(mut io) = self.io.take() {
            io.stop();
        }
        first_error.map_or(Ok(()), |e| Err(e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Both are refused before /dev/kvm is opened, so these run anywhere.
    #[test]
    fn rejects_bad_vcpu_counts() {
        for vcpu_count in [0, MAX_VCPUS + 1] {
            let config = VmConfig {
                vcpu_count,
                mem_size: 64 << 20,
            };
            assert!(matches!(Vm::new(config), Err(VmError::VcpuCount(n)) if n == vcpu_count));
        }
    }

    #[test]
    fn rejects_bad_memory_sizes() {
        let config = VmConfig {
            vcpu_count: 1,
            mem_size: 1 << 20,
        };
        assert!(matches!(
            Vm::new(config),
            Err(VmError::Layout(LayoutError::TooSmall { .. }))
        ));
    }
}

/// The events that end a VM: the guest's reset request and vCPUs the guest stopped.
#[derive(Debug)]
pub struct ExitWatch {
    reports: Receiver<VcpuReport>,
    reset_evt: EventFd,
    report_evt: EventFd,
    wake: EventFd,
}

impl ExitWatch {
    /// An event that makes a [`ExitWatch::wait`] in progress return `None` (write 1 to it).
    pub fn waker(&self) -> Result<EventFd, VmError> {
        self.wake.try_clone().map_err(VmError::EventFd)
    }

    /// Waits up to `timeout` for the guest to stop the VM; `None` if it is still running (or
    /// the waker fired).
    pub fn wait(&mut self, timeout: Duration) -> Result<Option<VmExit>, VmError> {
        let deadline = Instant::now() + timeout;
        let epoll = Epoll::new().map_err(VmError::Wait)?;
        for (fd, token) in [
            (&self.reset_evt, 0u64),
            (&self.report_evt, 1u64),
            (&self.wake, 2u64),
        ] {
            epoll
                .ctl(
                    ControlOperation::Add,
                    std::os::fd::AsRawFd::as_raw_fd(fd),
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(VmError::Wait)?;
        }
        loop {
            if self.reset_evt.read().is_ok() {
                return Ok(Some(VmExit::Reset));
            }
            if let Ok(report) = self.reports.try_recv() {
                return Ok(Some(VmExit::Vcpu {
                    vcpu: report.vcpu,
                    reason: report.reason,
                }));
            }
            if self.wake.read().is_ok() {
                return Ok(None);
            }
            // Drain the counter; the report (if any) is read on the next pass.
            let _ = self.report_evt.read();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
            let mut events = [EpollEvent::default(); 3];
            match epoll.wait(ms, &mut events) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(VmError::Wait(e)),
            }
        }
    }
}
