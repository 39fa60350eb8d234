//! MC146818 CMOS real-time clock at ports 0x70 (index) and 0x71 (data), reading the host's
//! UTC time.
//!
//! Why it exists: with nothing at these ports every read returns 0xff, so the "update in
//! progress" bit looks stuck and Linux's rtc-cmos driver (built into distribution kernels)
//! polls it for a full second of port reads before giving up: 3 to 8 s of a Linux boot on
//! nested KVM. Here the clock is always readable, in BCD or binary and 12- or 24-hour form as
//! register B asks. Writes to the time registers are ignored (the clock follows the host);
//! no interrupts (IRQ 8) are raised: periodic, alarm and update interrupts stay off.

pub const RTC_INDEX_PORT: u16 = 0x70;
pub const RTC_DATA_PORT: u16 = 0x71;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
/// Century, where PC firmware keeps it (ACPI FADT's usual century index).
const REG_CENTURY: u8 = 0x32;
const CMOS_SIZE: usize = 128;

/// Register A: 32.768 kHz time base, 1024 Hz rate; UIP (bit 7) never set.
const REG_A_DEFAULT: u8 = 0x26;
/// Register B: 24-hour mode, BCD.
const REG_B_24H: u8 = 0x02;
const REG_B_BINARY: u8 = 0x04;
/// Register D: valid RAM and time (battery good).
const REG_D_VRT: u8 = 0x80;

/// A broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CivilTime {
    pub year: i64,
    pub month: u8,
    pub day: u8,
    /// 1 = Sunday, as the MC146818 counts.
    pub weekday: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl CivilTime {
    /// The UTC date and time `secs` seconds after 1970-01-01T00:00:00.
    pub fn from_unix(secs: i64) -> CivilTime {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        // Days since 0000-03-01 in the proleptic Gregorian calendar, counted in 400-year
        // eras of 146097 days, with years starting in March so leap days fall last.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = yoe + era * 400 + i64::from(month <= 2);
        CivilTime {
            year,
            month,
            day,
            // 1970-01-01 was a Thursday (5 when Sunday is 1).
            weekday: ((days + 4).rem_euclid(7) + 1) as u8,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
        }
    }

    fn now() -> CivilTime {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        CivilTime::from_unix(secs)
    }
}

cpr_format::state! {
    /// Saved RTC: the selected register, the guest-writable control registers and the CMOS
    /// RAM. The time itself is the host's and is not saved. Optional: images written before
    /// the RTC was saved lack it, and a guest restored from one gets a fresh RTC.
    #[section(name = "rtc.mc146818", version = 1, min_version = 1, required = false)]
    #[derive(Eq)]
    pub struct RtcState {
        #[hint(hex)] pub index: u8,
        #[hint(hex)] pub reg_a: u8,
        #[hint(hex)] pub reg_b: u8,
        /// All 128 bytes; the clock and control registers in it are not used.
        pub cmos: cpr_format::Bytes,
    }
}

#[derive(Debug)]
pub struct Rtc {
    index: u8,
    reg_a: u8,
    reg_b: u8,
    cmos: [u8; CMOS_SIZE],
}

impl Default for Rtc {
    fn default() -> Self {
        Rtc {
            index: 0,
            reg_a: REG_A_DEFAULT,
            reg_b: REG_B_24H,
            cmos: [0; CMOS_SIZE],
        }
    }
}

impl Rtc {
    pub fn offset(port: u16) -> Option<u8> {
        match port {
            RTC_INDEX_PORT => Some(0),
            RTC_DATA_PORT => Some(1),
            _ => None,
        }
    }

    pub fn read(&self, offset: u8) -> u8 {
        match offset {
            0 => self.index,
            _ => self.register(self.index, &CivilTime::now()),
        }
    }

    pub fn write(&mut self, offset: u8, value: u8) {
        match offset {
            // Bit 7 of the index port masks NMIs on a PC; it selects nothing here.
            0 => self.index = value & 0x7f,
            _ => match self.index {
                REG_A => self.reg_a = (value & 0x7f) | (self.reg_a & 0x80),
                REG_B => self.reg_b = value,
                REG_C | REG_D => {}
                REG_SECONDS | REG_MINUTES | REG_HOURS | REG_WEEKDAY | REG_DAY | REG_MONTH
                | REG_YEAR | REG_CENTURY => {}
                i => self.cmos[usize::from(i)] = value,
            },
        }
    }

    /// Register `index` at time `t`.
    fn register(&self, index: u8, t: &CivilTime) -> u8 {
        let enc = |v: u8| {
            if self.reg_b & REG_B_BINARY != 0 {
                v
            } else {
                ((v / 10) << 4) | (v % 10)
            }
        };
        match index {
            REG_SECONDS => enc(t.second),
            REG_MINUTES => enc(t.minute),
            REG_HOURS if self.reg_b & REG_B_24H != 0 => enc(t.hour),
            REG_HOURS => {
                // 12-hour mode: 12, 1..11, PM in bit 7.
                let h12 = match t.hour % 12 {
                    0 => 12,
                    h => h,
                };
                enc(h12) | if t.hour >= 12 { 0x80 } else { 0 }
            }
            REG_WEEKDAY => enc(t.weekday),
            REG_DAY => enc(t.day),
            REG_MONTH => enc(t.month),
            REG_YEAR => enc(t.year.rem_euclid(100) as u8),
            REG_CENTURY => enc(t.year.div_euclid(100).clamp(0, 99) as u8),
            REG_A => self.reg_a,
            REG_B => self.reg_b,
            REG_C => 0,
            REG_D => REG_D_VRT,
            i => self.cmos[usize::from(i & 0x7f)],
        }
    }

    pub fn save(&self) -> RtcState {
        RtcState {
            index: self.index,
            reg_a: self.reg_a,
            reg_b: self.reg_b,
            cmos: cpr_format::Bytes::from(self.cmos.to_vec()),
        }
    }

    /// Rebuilds the RTC from `state`; a CMOS image of the wrong size keeps what fits.
    pub fn restore(state: &RtcState) -> Rtc {
        let mut cmos = [0; CMOS_SIZE];
        let saved: &[u8] = &state.cmos;
        let n = saved.len().min(CMOS_SIZE);
        cmos[..n].copy_from_slice(&saved[..n]);
        Rtc {
            index: state.index & 0x7f,
            reg_a: state.reg_a & 0x7f,
            reg_b: state.reg_b,
            cmos,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_time_of_known_instants() {
        let epoch = CivilTime::from_unix(0);
        assert_eq!(
            (epoch.year, epoch.month, epoch.day, epoch.weekday),
            (1970, 1, 1, 5)
        );
        // 2000-02-29T23:59:59Z, a Tuesday, leap day of a 400-year leap year.
        let t = CivilTime::from_unix(951_868_799);
        assert_eq!(
            (t.year, t.month, t.day, t.weekday, t.hour, t.minute, t.second),
            (2000, 2, 29, 3, 23, 59, 59)
        );
        // 2026-11-27T07:20:00Z, a Friday.
        let t = CivilTime::from_unix(1_795_764_000);
        assert_eq!(
            (t.year, t.month, t.day, t.weekday, t.hour, t.minute),
            (2026, 11, 27, 6, 7, 20)
        );
    }

    fn read_reg(rtc: &mut Rtc, index: u8, t: &CivilTime) -> u8 {
        rtc.write(0, index);
        rtc.register(rtc.index, t)
    }

    #[test]
    fn clock_reads_in_bcd_and_binary_24h_and_12h() {
        let t = CivilTime::from_unix(951_868_799); // 2000-02-29 23:59:59
        let mut rtc = Rtc::default();
        assert_eq!(read_reg(&mut rtc, REG_SECONDS, &t), 0x59);
        assert_eq!(read_reg(&mut rtc, REG_HOURS, &t), 0x23);
        assert_eq!(read_reg(&mut rtc, REG_MONTH, &t), 0x02);
        assert_eq!(read_reg(&mut rtc, REG_YEAR, &t), 0x00);
        assert_eq!(read_reg(&mut rtc, REG_CENTURY, &t), 0x20);
        rtc.write(0, REG_B);
        rtc.write(1, REG_B_BINARY);
        assert_eq!(read_reg(&mut rtc, REG_SECONDS, &t), 59);
        assert_eq!(read_reg(&mut rtc, REG_HOURS, &t), 11 | 0x80, "11 PM");
        assert_eq!(read_reg(&mut rtc, REG_DAY, &t), 29);
    }

    #[test]
    fn status_registers_say_the_clock_works() {
        let mut rtc = Rtc::default();
        rtc.write(0, REG_A);
        assert_eq!(rtc.read(1) & 0x80, 0, "update never in progress");
        rtc.write(0, REG_D | 0x80); // NMI-disable bit set, as Linux's CMOS_READ may do
        assert_eq!(rtc.read(1), REG_D_VRT);
        assert_eq!(rtc.read(0), REG_D);
    }

    #[test]
    fn cmos_ram_keeps_writes_and_survives_save_restore() {
        let mut rtc = Rtc::default();
        rtc.write(0, 0x40);
        rtc.write(1, 0xab);
        rtc.write(0, REG_B);
        rtc.write(1, REG_B_24H | REG_B_BINARY);
        rtc.write(0, REG_SECONDS);
        rtc.write(1, 0x33); // time writes are ignored
        let mut back = Rtc::restore(&rtc.save());
        assert_eq!(back.index, REG_SECONDS);
        back.write(0, 0x40);
        assert_eq!(back.read(1), 0xab);
        back.write(0, REG_B);
        assert_eq!(back.read(1), REG_B_24H | REG_B_BINARY);
        assert_eq!(back.cmos[usize::from(REG_SECONDS)], 0);
    }
}
