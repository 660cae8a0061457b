//! The I/O thread: serves the virtio devices' queue notifications (KVM signals their
//! ioeventfds; no vCPU exit) and the console's host stream, so disk, socket and entropy work
//! never runs on a vCPU thread.
//!
//! It is paused with the vCPUs: [`IoThread::pause`] returns once no event is being handled and
//! none will be until [`IoThread::resume`], so guest memory and device state hold still for a
//! snapshot. Events that arrive meanwhile wait in the kernel (epoll is level-triggered).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use cove_virtio::MmioTransport;
use cove_virtio::net::Net;

use crate::virtio::{Slot, Transport};

const STOP: u64 = u64::MAX;
const LISTEN: u64 = u64::MAX - 1;
const STREAM: u64 = u64::MAX - 2;
/// Taps: `TAP_BASE + slot`.
const TAP_BASE: u64 = 1 << 40;

/// Why the I/O thread could not start.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// epoll or an event fd.
    #[error("{0}")]
    Setup(&'static str, #[source] std::io::Error),
    /// Its seccomp filter.
    #[error("seccomp filter of the I/O thread")]
    Seccomp(#[source] crate::seccomp::SeccompError),
    /// The thread did not start.
    #[error("the I/O thread did not start")]
    Gone,
}

#[derive(Debug, Default)]
struct Gate {
    paused: Mutex<bool>,
    resumed: Condvar,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, bool> {
        self.paused.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The running I/O thread.
#[derive(Debug)]
pub struct IoThread {
    stop: EventFd,
    gate: Arc<Gate>,
    thread: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl IoThread {
    /// Starts serving `slots`. With `kick`, every queue is processed once first (after a
    /// restore, a notification the old process had not served would otherwise be lost).
    pub fn spawn(
        slots: Vec<Slot>,
        kick: bool,
        filter: Option<Arc<seccompiler::BpfProgram>>,
    ) -> Result<Self, IoError> {
        let stop = EventFd::new(EFD_NONBLOCK).map_err(|e| IoError::Setup("event fd", e))?;
        let epoll = Epoll::new().map_err(|e| IoError::Setup("epoll", e))?;
        let add = |fd: RawFd, token: u64| {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(|e| IoError::Setup("epoll_ctl", e))
        };
        add(stop.as_raw_fd(), STOP)?;
        for (s, slot) in slots.iter().enumerate() {
            slot.with_queue_events(|evts| {
                for (q, evt) in evts.iter().enumerate() {
                    add(evt.as_raw_fd(), (s as u64) << 16 | q as u64)?;
                }
                Ok::<(), IoError>(())
            })?;
            if let Transport::Console(_, listener) = &slot.transport {
                listener
                    .set_nonblocking(true)
                    .map_err(|e| IoError::Setup("listener", e))?;
                add(listener.as_raw_fd(), LISTEN)?;
            }
        }
        let gate = Arc::new(Gate::default());
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let thread_gate = gate.clone();
        let thread = std::thread::Builder::new()
            .name("vmm-io".into())
            .spawn(move || {
                let filtered = filter.as_deref().map_or(Ok(()), crate::seccomp::apply);
                let ok = filtered.is_ok();
                let _ = ready_tx.send(filtered);
                if ok {
                    if kick {
                        slots.iter().for_each(Slot::kick_all);
                    }
                    serve(&epoll, &slots, &thread_gate);
                }
            })
            .map_err(|e| IoError::Setup("spawn the I/O thread", e))?;
        match ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(IoError::Seccomp(e)),
            Err(_) => return Err(IoError::Gone),
        }
        Ok(Self {
            stop,
            gate,
            thread: Some(thread),
        })
    }

    /// Returns once no device event is being handled and none will be until [`Self::resume`].
    pub fn pause(&self) {
        // The thread holds the gate while it handles events: taking it waits for them.
        *self.gate.lock() = true;
    }

    /// Lets the thread handle events again.
    pub fn resume(&self) {
        *self.gate.lock() = false;
        self.gate.resumed.notify_all();
    }

    /// Ends the thread and waits for it.
    pub fn stop(&mut self) {
        let _ = self.stop.write(1);
        self.resume();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The console's stream: which fd is registered, with which interest.
#[derive(Default)]
struct Stream {
    fd: Option<RawFd>,
    events: u32,
}

/// A tap's registration: whether it is in the epoll set, with which interest.
#[derive(Default)]
struct Interest {
    added: bool,
    events: u32,
}

/// Polls a tap for input while the device can take a frame and for output while it holds one.
fn update_tap(epoll: &Epoll, i: &mut Interest, slot: usize, t: &MmioTransport<Net>) {
    let dev = t.device();
    let mut want = 0;
    if dev.wants_tap_input() {
        want |= EventSet::IN.bits();
    }
    if dev.wants_tap_output() {
        want |= EventSet::OUT.bits();
    }
    if i.added && want == i.events {
        return;
    }
    let op = if i.added {
        ControlOperation::Modify
    } else {
        ControlOperation::Add
    };
    let token = TAP_BASE + slot as u64;
    let set = EventSet::from_bits_truncate(want);
    match epoll.ctl(op, dev.tap_fd(), EpollEvent::new(set, token)) {
        Ok(()) => {
            i.added = true;
            i.events = want;
        }
        Err(e) => tracing::warn!(error = %e, "virtio-net: cannot poll the tap"),
    }
}

fn serve(epoll: &Epoll, slots: &[Slot], gate: &Gate) {
    let console = slots.iter().find_map(|s| match &s.transport {
        Transport::Console(t, l) => Some((t.clone(), l.clone())),
        _ => None,
    });
    let mut stream = Stream::default();
    let nets: Vec<(usize, Arc<Mutex<MmioTransport<Net>>>)> = slots
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match &s.transport {
            Transport::Net(t) => Some((i, t.clone())),
            _ => None,
        })
        .collect();
    let mut taps: Vec<Interest> = nets.iter().map(|_| Interest::default()).collect();
    let mut events = vec![EpollEvent::default(); 32];
    loop {
        if let Some((t, _)) = &console {
            update_stream(epoll, &mut stream, &lock(t));
        }
        for ((slot, t), interest) in nets.iter().zip(&mut taps) {
            update_tap(epoll, interest, *slot, &lock(t));
        }
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(error = %e, "I/O thread: epoll_wait failed; devices stop");
                return;
            }
        };
        let mut paused = gate.lock();
        while *paused {
            paused = gate
                .resumed
                .wait(paused)
                .unwrap_or_else(PoisonError::into_inner);
        }
        for ev in &events[..n] {
            match ev.data() {
                STOP => return,
                LISTEN => {
                    if let Some((t, l)) = &console {
                        accept(&mut lock(t), l);
                        // A new stream may reuse the old one's number: register it afresh.
                        stream = Stream::default();
                    }
                }
                STREAM => {
                    if let Some((t, _)) = &console {
                        let mut t = lock(t);
                        let set = ev.event_set();
                        if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
                            t.device_mut().process_host_input();
                        }
                        if set.contains(EventSet::OUT) {
                            t.device_mut().process_host_output();
                        }
                    }
                }
                token if (TAP_BASE..STREAM - 1).contains(&token) => {
                    let slot = usize::try_from(token - TAP_BASE).unwrap_or(usize::MAX);
                    if let Some((_, t)) = nets.iter().find(|(s, _)| *s == slot) {
                        let mut t = lock(t);
                        let set = ev.event_set();
                        if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR)
                            && let Err(e) = t.device_mut().process_tap_input()
                        {
                            tracing::warn!(error = %e, "virtio-net: the tap failed");
                        }
                        if set.contains(EventSet::OUT) {
                            t.device_mut().process_tap_output();
                        }
                    }
                }
                token => {
                    let slot = usize::try_from(token >> 16).unwrap_or(usize::MAX);
                    let queue = usize::try_from(token & 0xffff).unwrap_or(usize::MAX);
                    if let Some(s) = slots.get(slot) {
                        s.handle_queue_event(queue);
                    }
                }
            }
        }
        drop(paused);
    }
}

/// A new connection to the agent port replaces the old one (cove-vm reconnects after a
/// restart; the guest never notices).
fn accept(
    t: &mut cove_virtio::MmioTransport<cove_virtio::console::Console>,
    l: &std::os::unix::net::UnixListener,
) {
    loop {
        match l.accept() {
            Ok((s, _)) => {
                if let Err(e) = t.device_mut().attach(s) {
                    tracing::warn!(error = %e, "agent port: attaching a connection failed");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => {
                tracing::warn!(error = %e, "agent port: accept failed");
                return;
            }
        }
    }
}

fn update_stream(
    epoll: &Epoll,
    stream: &mut Stream,
    t: &cove_virtio::MmioTransport<cove_virtio::console::Console>,
) {
    let dev = t.device();
    let fd = dev.stream_fd();
    let mut want = 0;
    if dev.wants_host_input() {
        want |= EventSet::IN.bits();
    }
    if dev.wants_host_output() {
        want |= EventSet::OUT.bits();
    }
    if stream.fd != fd {
        if let Some(old) = stream.fd {
            // Gone already if the stream was closed (closing removes it from epoll).
            let _ = epoll.ctl(ControlOperation::Delete, old, EpollEvent::default());
        }
        stream.fd = fd;
        stream.events = 0;
        if let Some(new) = fd {
            let set = EventSet::from_bits_truncate(want);
            if let Err(e) = epoll.ctl(ControlOperation::Add, new, EpollEvent::new(set, STREAM)) {
                tracing::warn!(error = %e, "agent port: cannot poll the connection");
            }
            stream.events = want;
        }
        return;
    }
    if let Some(fd) = fd
        && want != stream.events
    {
        let set = EventSet::from_bits_truncate(want);
        if let Err(e) = epoll.ctl(ControlOperation::Modify, fd, EpollEvent::new(set, STREAM)) {
            tracing::warn!(error = %e, "agent port: cannot poll the connection");
        }
        stream.events = want;
    }
}
