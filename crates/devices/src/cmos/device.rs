//! The CMOS clock as a [`BusDevice`].

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bus::BusDevice;

/// Register A: time base 32.768 kHz, 1024 Hz rate; bit 7 (update in progress) clear.
const REG_A: u8 = 0x26;
/// Register B: 24-hour mode, BCD (bit 2 clear), no interrupts.
const REG_B: u8 = 0x02;
/// Register D: valid RAM and time.
const REG_D: u8 = 0x80;

/// The RTC: an index register and the clock.
#[derive(Debug, Default)]
pub struct CmosDevice {
    index: u8,
    /// Seconds since the epoch to report instead of the host's clock (tests).
    fixed: Option<u64>,
}

impl CmosDevice {
    /// An RTC that reads the host's clock.
    pub fn new() -> Self {
        Self::default()
    }

    /// An RTC stopped at `secs` since the epoch (for tests).
    pub fn at(secs: u64) -> Self {
        Self {
            index: 0,
            fixed: Some(secs),
        }
    }

    fn now(&self) -> u64 {
        self.fixed.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        })
    }

    fn register(&self, index: u8) -> u8 {
        let t = self.now();
        let (secs, days) = (t % 86_400, t / 86_400);
        let (year, month, day) = civil_from_days(days);
        let bcd = |v: u64| {
            let v = u8::try_from(v % 100).unwrap_or(0);
            ((v / 10) << 4) | (v % 10)
        };
        match index {
            0x00 => bcd(secs % 60),
            0x02 => bcd(secs / 60 % 60),
            0x04 => bcd(secs / 3600),
            // Day of the week, 1 = Sunday (1970-01-01 was a Thursday).
            0x06 => bcd((days + 4) % 7 + 1),
            0x07 => bcd(day),
            0x08 => bcd(month),
            0x09 => bcd(year % 100),
            0x32 => bcd(year / 100),
            0x0a => REG_A,
            0x0b => REG_B,
            0x0c => 0,
            0x0d => REG_D,
            _ => 0,
        }
    }
}

/// (year, month, day) of the `days`-th day since 1970-01-01 (the proleptic Gregorian calendar;
/// Howard Hinnant's civil-from-days algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

impl BusDevice for CmosDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let ([byte], 1) = (data, offset) {
            *byte = self.register(self.index);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let ([byte], 0) = (data, offset) {
            // Bit 7 of the index port is the NMI mask, not part of the index.
            self.index = byte & 0x7f;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(dev: &mut CmosDevice, index: u8) -> u8 {
        dev.write(0, &[index]);
        let mut b = [0xff];
        dev.read(1, &mut b);
        b[0]
    }

    #[test]
    fn reads_the_time_in_bcd_and_never_an_update_in_progress() {
        // 2026-11-29 20:45:07 UTC, a Sunday.
        let mut dev = CmosDevice::at(1_795_985_107);
        assert_eq!(read(&mut dev, 0x0a) & 0x80, 0, "UIP clear");
        assert_eq!(read(&mut dev, 0x0b), REG_B);
        assert_eq!(
            read(&mut dev, 0x8d),
            REG_D,
            "the NMI-mask bit is not part of the index"
        );
        let got: Vec<u8> = [0x09, 0x08, 0x07, 0x04, 0x02, 0x00, 0x06, 0x32]
            .iter()
            .map(|&i| read(&mut dev, i))
            .collect();
        assert_eq!(got, [0x26, 0x11, 0x29, 0x20, 0x45, 0x07, 0x01, 0x20]);
    }

    #[test]
    fn the_calendar_is_right_across_leap_days_and_centuries() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
        assert_eq!(civil_from_days(47_540), (2100, 2, 28));
        assert_eq!(civil_from_days(47_541), (2100, 3, 1));
    }

    #[test]
    fn writes_change_nothing_but_the_index() {
        let mut dev = CmosDevice::at(0);
        dev.write(1, &[0x12]);
        assert_eq!(read(&mut dev, 0x00), 0);
        let mut wide = [0xffu8; 2];
        dev.read(1, &mut wide);
        assert_eq!(wide, [0xff, 0xff], "only byte accesses are answered");
    }
}
