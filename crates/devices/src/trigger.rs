//! An [`EventFd`] that devices signal: an interrupt line (bound to a KVM irqfd by the VMM) or a
//! machine event such as "the guest asked for a reset".

use std::io;
use std::ops::Deref;

use vmm_sys_util::eventfd::EventFd;

/// An [`EventFd`] usable as a `vm-superio` trigger.
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps `evt`.
    pub fn new(evt: EventFd) -> Self {
        Self(evt)
    }

    /// A second handle on the same event (the VMM keeps one to poll or to bind to an irqfd).
    pub fn try_clone(&self) -> io::Result<Self> {
        self.0.try_clone().map(Self)
    }
}

impl Deref for EventFdTrigger {
    type Target = EventFd;

    fn deref(&self) -> &EventFd {
        &self.0
    }
}

impl vm_superio::Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}
