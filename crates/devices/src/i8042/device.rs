//! The i8042 as a [`BusDevice`], built on `vm-superio`'s reset-only controller.

use crate::bus::BusDevice;
use crate::trigger::EventFdTrigger;

/// A PS/2 controller that only knows how to reset the machine.
#[derive(Debug)]
pub struct I8042Device {
    inner: vm_superio::I8042Device<EventFdTrigger>,
}

impl I8042Device {
    /// A controller that signals `reset` when the guest pulses the reset line.
    pub fn new(reset: EventFdTrigger) -> Self {
        Self {
            inner: vm_superio::I8042Device::new(reset),
        }
    }
}

impl BusDevice for I8042Device {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let ([byte], Ok(offset)) = (data, u8::try_from(offset)) {
            *byte = self.inner.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let ([byte], Ok(offset)) = (data, u8::try_from(offset))
            && let Err(e) = self.inner.write(offset, *byte)
        {
            tracing::error!(error = %e, "i8042: cannot signal the reset event");
        }
    }
}

#[cfg(test)]
mod tests {
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

    use super::*;

    #[test]
    fn command_fe_signals_reset() {
        let evt = EventFdTrigger::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let mut dev = I8042Device::new(evt.try_clone().unwrap());
        // Data port writes and other commands do nothing.
        dev.write(0, &[0xfe]);
        dev.write(4, &[0xaa]);
        assert!(evt.read().is_err(), "no reset yet");
        dev.write(4, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
        let mut b = [0xffu8];
        dev.read(4, &mut b);
        assert_eq!(b, [0]);
    }
}
