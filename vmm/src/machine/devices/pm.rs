//! ACPI-style PM1a control register at port 0x604 (the port QEMU's q35 uses), 16 bits wide.
//!
//! A write with SLP_EN (bit 13) set requests the sleep state in SLP_TYP (bits 10..12):
//! SLP_TYP 1 = S3 (suspend to RAM), SLP_TYP 0 = S5 (power off), following QEMU's encoding.
//! So `out 0x604, 0x2400` suspends and `out 0x604, 0x2000` powers off. Other SLP_TYP values
//! are ignored. Reads return the last value written with SLP_EN clear (it is write-only).

pub const PM1_CNT_PORT: u16 = 0x604;
pub const SLP_EN: u16 = 1 << 13;
pub const SLP_TYP_SHIFT: u16 = 10;
pub const SLP_TYP_S5: u16 = 0;
pub const SLP_TYP_S3: u16 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PmRequest {
    Suspend,
    PowerOff,
}

#[derive(Debug, Default)]
pub struct PmControl {
    pm1_cnt: u16,
}

cpr_format::state! {
    /// Saved PM1a control register.
    #[section(name = "pm", version = 1, min_version = 1, required = true)]
    #[derive(Copy, Default, Eq)]
    pub struct PmState {
        /// Last value written, SLP_EN clear.
        #[hint(hex)] pub pm1_cnt: u16,
    }
}

impl PmControl {
    pub fn offset(port: u16) -> Option<u8> {
        match port {
            PM1_CNT_PORT => Some(0),
            p if p == PM1_CNT_PORT + 1 => Some(1),
            _ => None,
        }
    }

    pub fn read(&self, offset: u8, data: &mut [u8]) {
        let bytes = self.pm1_cnt.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(offset as usize + i).copied().unwrap_or(0xff);
        }
    }

    /// Applies a write; returns the sleep request it makes, if any.
    pub fn write(&mut self, offset: u8, data: &[u8]) -> Option<PmRequest> {
        let mut bytes = self.pm1_cnt.to_le_bytes();
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = bytes.get_mut(offset as usize + i) {
                *slot = *b;
            }
        }
        let value = u16::from_le_bytes(bytes);
        self.pm1_cnt = value & !SLP_EN;
        if value & SLP_EN == 0 {
            return None;
        }
        match (value >> SLP_TYP_SHIFT) & 7 {
            SLP_TYP_S3 => Some(PmRequest::Suspend),
            SLP_TYP_S5 => Some(PmRequest::PowerOff),
            _ => None,
        }
    }

    pub fn save(&self) -> PmState {
        PmState {
            pm1_cnt: self.pm1_cnt,
        }
    }

    pub fn restore(state: &PmState) -> PmControl {
        PmControl {
            pm1_cnt: state.pm1_cnt & !SLP_EN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_sleep_requests() {
        let mut pm = PmControl::default();
        assert_eq!(
            pm.write(0, &0x2400u16.to_le_bytes()),
            Some(PmRequest::Suspend)
        );
        assert_eq!(
            pm.write(0, &0x2000u16.to_le_bytes()),
            Some(PmRequest::PowerOff)
        );
        assert_eq!(pm.write(0, &0x0400u16.to_le_bytes()), None);
        // High byte alone (SLP_EN | SLP_TYP 1), as a byte-wide driver would write it.
        assert_eq!(pm.write(1, &[0x24]), Some(PmRequest::Suspend));
        assert_eq!(pm.write(0, &0x3c00u16.to_le_bytes()), None);
    }

    #[test]
    fn state_round_trips() {
        let mut pm = PmControl::default();
        pm.write(0, &0x0400u16.to_le_bytes());
        let state = pm.save();
        let again = PmControl::restore(&state);
        let mut data = [0u8; 2];
        again.read(0, &mut data);
        assert_eq!(u16::from_le_bytes(data), 0x0400);
        assert_eq!(again.save(), state);
    }
}
