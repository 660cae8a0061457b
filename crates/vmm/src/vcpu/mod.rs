//! vCPUs: one thread each, driven by the owning [`crate::Vm`] through an explicit state machine.
//!
//! ```text
//!            Resume                 guest stops the vCPU
//!   Paused ─────────▶ Running ─────────────────────────▶ Exited
//!     ▲                  │        (shutdown, failed entry,       │
//!     └──── Pause ───────┘         KVM_RUN error)                │ Exit command
//!   (every state: Exit command ends the thread)                  ▼ thread ends
//! ```
//!
//! A vCPU starts `Paused`. The owner sends [`VcpuHandle`] commands over a channel and then
//! kicks the thread (see [`kick`]) so that a vCPU inside `KVM_RUN` returns to read it. Every
//! `Pause`/`Resume` is acknowledged with the state the vCPU is now in, so "pause" means "this
//! thread is out of `KVM_RUN` and will not re-enter it": once all vCPUs have acknowledged,
//! guest memory and vCPU state are quiescent (the barrier snapshots need).
//!
//! When the guest itself stops a vCPU (triple fault, an unrecoverable exit), the thread reports
//! a [`VcpuStop`] to the VM, moves to `Exited`, and keeps answering commands until told to exit.

pub mod kick;
mod run;
pub mod setup;

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use kvm_ioctls::VcpuFd;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use crate::persist;

pub use run::{Buses, VcpuStop};
pub use setup::SetupError;

/// Where a vCPU thread is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuState {
    /// Out of `KVM_RUN`, waiting for a command.
    Paused,
    /// Running guest code (or about to).
    Running,
    /// The guest stopped this vCPU; it only waits to be told to exit.
    Exited,
}

/// Commands from the VM to a vCPU thread.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    Pause,
    Resume,
    Exit,
    /// Read the vCPU's state (only while it is out of `KVM_RUN`), saving these MSRs.
    Save(Arc<[u32]>),
}

/// A saved vCPU state, or why it could not be read.
type SaveReply = Result<persist::vcpu::VcpuState, persist::vcpu::VcpuStateError>;

/// A vCPU stopped by the guest, as reported to the VM.
#[derive(Debug)]
pub struct VcpuReport {
    /// Which vCPU.
    pub vcpu: u8,
    /// Why it stopped.
    pub reason: VcpuStop,
}

/// Errors from driving vCPU threads.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// Spawn the thread.
    #[error("spawn the thread of vCPU {0}")]
    Spawn(u8, #[source] std::io::Error),
    /// The thread is gone (it panicked, or already exited).
    #[error("vCPU {0} thread is gone")]
    ThreadGone(u8),
    /// The thread did not acknowledge a command in time.
    #[error("vCPU {vcpu} did not acknowledge {command} within {timeout:?}")]
    NoAck {
        /// Which vCPU.
        vcpu: u8,
        /// The command.
        command: &'static str,
        /// How long we waited.
        timeout: Duration,
    },
    /// Signal the thread.
    #[error("kick vCPU {0}")]
    Kick(u8, #[source] vmm_sys_util::errno::Error),
    /// Its state can only be read while it is paused.
    #[error("vCPU {0} is running; pause the VM before saving it")]
    NotPaused(u8),
    /// Its seccomp filter could not be installed.
    #[error("seccomp filter of vCPU {0}")]
    Seccomp(u8, #[source] crate::seccomp::SeccompError),
    /// Reading its state failed.
    #[error("save vCPU {0}")]
    Save(u8, #[source] persist::vcpu::VcpuStateError),
}

/// How long a vCPU has to acknowledge a command. Generous: on an emulated KVM under load an
/// exit can take milliseconds.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// The VM's side of one vCPU thread.
#[derive(Debug)]
pub struct VcpuHandle {
    id: u8,
    commands: Sender<Command>,
    acks: Receiver<VcpuState>,
    saves: Receiver<SaveReply>,
    thread: Option<JoinHandle<()>>,
    state: VcpuState,
}

impl VcpuHandle {
    /// Starts the thread of `vcpu` (configured already) in the `Paused` state.
    pub fn spawn(
        id: u8,
        vcpu: VcpuFd,
        buses: Buses,
        reports: Sender<VcpuReport>,
        report_evt: EventFd,
        filter: Option<Arc<seccompiler::BpfProgram>>,
    ) -> Result<Self, VcpuError> {
        let (commands, command_rx) = mpsc::channel();
        let (ack_tx, acks) = mpsc::channel();
        let (save_tx, saves) = mpsc::channel();
        let (ready_tx, ready) = mpsc::channel();
        let thread = thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                // The filter goes on before this thread ever enters the guest.
                let filtered = filter.as_deref().map_or(Ok(()), crate::seccomp::apply);
                let failed = filtered.is_err();
                let _ = ready_tx.send(filtered);
                if failed {
                    return;
                }
                let mut runner = run::Runner {
                    id,
                    vcpu,
                    buses,
                    reports,
                    report_evt,
                };
                runner_loop(&mut runner, &command_rx, &ack_tx, &save_tx);
            })
            .map_err(|e| VcpuError::Spawn(id, e))?;
        match ready.recv_timeout(ACK_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(VcpuError::Seccomp(id, e)),
            Err(_) => return Err(VcpuError::ThreadGone(id)),
        }
        Ok(Self {
            id,
            commands,
            acks,
            saves,
            thread: Some(thread),
            state: VcpuState::Paused,
        })
    }

    /// The vCPU's index.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// The last state the thread acknowledged.
    pub fn state(&self) -> VcpuState {
        self.state
    }

    /// Sends `command` and kicks the thread out of `KVM_RUN`; does not wait.
    fn send(&self, command: Command) -> Result<(), VcpuError> {
        self.commands
            .send(command)
            .map_err(|_| VcpuError::ThreadGone(self.id))?;
        if let Some(thread) = &self.thread {
            thread
                .kill(kick::kick_signal())
                .map_err(|e| VcpuError::Kick(self.id, e))?;
        }
        Ok(())
    }

    /// Waits for the acknowledgement of a command sent with `send`.
    fn wait_ack(&mut self, command: &'static str) -> Result<VcpuState, VcpuError> {
        match self.acks.recv_timeout(ACK_TIMEOUT) {
            Ok(state) => {
                self.state = state;
                Ok(state)
            }
            Err(RecvTimeoutError::Timeout) => Err(VcpuError::NoAck {
                vcpu: self.id,
                command,
                timeout: ACK_TIMEOUT,
            }),
            Err(RecvTimeoutError::Disconnected) => Err(VcpuError::ThreadGone(self.id)),
        }
    }

    /// Asks the thread to pause (send only; see [`VcpuHandle::wait_paused`]).
    pub fn request_pause(&self) -> Result<(), VcpuError> {
        self.send(Command::Pause)
    }

    /// Waits until the thread is out of `KVM_RUN` (`Paused`, or `Exited` if the guest had
    /// stopped it).
    pub fn wait_paused(&mut self) -> Result<VcpuState, VcpuError> {
        self.wait_ack("pause")
    }

    /// Asks the thread to run the guest (send only).
    pub fn request_resume(&self) -> Result<(), VcpuError> {
        self.send(Command::Resume)
    }

    /// Waits until the thread has taken the resume.
    pub fn wait_resumed(&mut self) -> Result<VcpuState, VcpuError> {
        self.wait_ack("resume")
    }

    /// Reads the state of the paused vCPU, with the MSRs in `msrs` that it has.
    pub fn save(&mut self, msrs: Arc<[u32]>) -> Result<persist::vcpu::VcpuState, VcpuError> {
        if self.state == VcpuState::Running {
            return Err(VcpuError::NotPaused(self.id));
        }
        self.send(Command::Save(msrs))?;
        match self.saves.recv_timeout(ACK_TIMEOUT) {
            Ok(r) => r.map_err(|e| VcpuError::Save(self.id, e)),
            Err(RecvTimeoutError::Timeout) => Err(VcpuError::NoAck {
                vcpu: self.id,
                command: "save",
                timeout: ACK_TIMEOUT,
            }),
            Err(RecvTimeoutError::Disconnected) => Err(VcpuError::ThreadGone(self.id)),
        }
    }

    /// Ends the thread and waits for it.
    pub fn exit(&mut self) -> Result<(), VcpuError> {
        let sent = self.send(Command::Exit);
        if let Some(thread) = self.thread.take() {
            thread.join().map_err(|_| VcpuError::ThreadGone(self.id))?;
        }
        sent
    }
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        if self.thread.is_some()
            && let Err(e) = self.exit()
        {
            tracing::warn!(vcpu = self.id, error = %e, "vCPU thread did not exit cleanly");
        }
    }
}

/// The thread's state machine.
fn runner_loop(
    runner: &mut run::Runner,
    commands: &Receiver<Command>,
    acks: &Sender<VcpuState>,
    saves: &Sender<SaveReply>,
) {
    let _registration = kick::ThreadRegistration::new(&mut runner.vcpu);
    let mut state = VcpuState::Paused;
    loop {
        let command = if state == VcpuState::Running {
            match commands.try_recv() {
                Ok(c) => Some(c),
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => Some(Command::Exit),
            }
        } else {
            // The VM dropping its handle counts as "exit".
            Some(commands.recv().unwrap_or(Command::Exit))
        };

        if let Some(Command::Save(msrs)) = &command {
            // Only asked of a paused vCPU (the handle checks); a vCPU that was running when
            // the command raced in is out of KVM_RUN now, which is all reading needs, and the
            // loop goes back to running it.
            let r = persist::vcpu::save(&runner.vcpu, u32::from(runner.id), msrs);
            if saves.send(r).is_err() {
                return;
            }
            continue;
        }
        if let Some(command) = command {
            state = match (command, state) {
                (Command::Exit, _) => return,
                (_, VcpuState::Exited) => VcpuState::Exited,
                (Command::Pause, was) => {
                    if was == VcpuState::Running {
                        // Tell a Linux guest's kvmclock the vCPU was stopped on purpose, so the
                        // time it spends paused is not taken for a soft lockup. A guest that
                        // has not set kvmclock up answers EINVAL: nothing to tell.
                        let _ = runner.vcpu.kvmclock_ctrl();
                    }
                    VcpuState::Paused
                }
                (Command::Resume, _) => VcpuState::Running,
                (Command::Save(_), s) => s,
            };
            if acks.send(state).is_err() {
                return;
            }
            continue;
        }

        if let Some(stop) = runner.run_once() {
            tracing::info!(vcpu = runner.id, reason = ?stop, "vCPU stopped by the guest");
            runner.report(stop);
            state = VcpuState::Exited;
        }
    }
}
