//! MSI and MSI-X as the guest programs them: the MSI capability's fields, the MSI-X table
//! (16 bytes per vector) and pending-bit array. Pure data: the VFIO device turns the result
//! into KVM MSI routes and irqfds.

/// An MSI write: what the device writes where, which KVM turns into an interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

/// Where the MSI capability's fields sit, from its message control register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiCap {
    /// Config-space offset of the capability header.
    pub offset: u8,
    pub is_64: bool,
    pub per_vector_mask: bool,
}

pub const MSI_CTRL_ENABLE: u16 = 1;
pub const MSIX_CTRL_ENABLE: u16 = 1 << 15;
pub const MSIX_CTRL_FUNCTION_MASK: u16 = 1 << 14;
pub const MSIX_ENTRY_SIZE: u64 = 16;
pub const MSIX_VECTOR_MASKED: u32 = 1;

impl MsiCap {
    pub fn new(offset: u8, control: u16) -> MsiCap {
        MsiCap {
            offset,
            is_64: control & (1 << 7) != 0,
            per_vector_mask: control & (1 << 8) != 0,
        }
    }

    /// Length of the capability in bytes.
    pub fn size(&self) -> u8 {
        match (self.is_64, self.per_vector_mask) {
            (false, false) => 0x0a,
            (true, false) => 0x0e,
            (false, true) => 0x14,
            (true, true) => 0x18,
        }
    }

    fn data_offset(&self) -> u8 {
        if self.is_64 {
            0x0c
        } else {
            0x08
        }
    }

    /// Which bits of the byte at `rel` (offset within the capability) the guest may write.
    pub fn write_mask(&self, rel: u8) -> u8 {
        let data = self.data_offset();
        let mask_reg = data + 4;
        match rel {
            // Enable and Multiple Message Enable; the rest of control is read-only.
            2 => 0x71,
            4 => 0xfc,
            5..=7 => 0xff,
            8..=0x0b if self.is_64 => 0xff,
            r if r == data || r == data + 1 => 0xff,
            r if self.per_vector_mask && (mask_reg..mask_reg + 4).contains(&r) => 0xff,
            _ => 0,
        }
    }

    pub fn control(&self, cfg: &[u8]) -> u16 {
        let o = usize::from(self.offset);
        u16::from_le_bytes([cfg[o + 2], cfg[o + 3]])
    }

    pub fn enabled(&self, cfg: &[u8]) -> bool {
        self.control(cfg) & MSI_CTRL_ENABLE != 0
    }

    /// The message of vector 0 (the VMM grants one vector: Multiple Message Capable is
    /// reported as 1).
    pub fn message(&self, cfg: &[u8]) -> MsiMessage {
        let o = usize::from(self.offset);
        let dw = |at: usize| u32::from_le_bytes([cfg[at], cfg[at + 1], cfg[at + 2], cfg[at + 3]]);
        let lo = u64::from(dw(o + 4));
        let hi = if self.is_64 { u64::from(dw(o + 8)) } else { 0 };
        let d = o + usize::from(self.data_offset());
        MsiMessage {
            address: (hi << 32) | lo,
            data: u32::from(u16::from_le_bytes([cfg[d], cfg[d + 1]])),
        }
    }

    /// Whether vector 0 is masked (per-vector masking only).
    pub fn vector0_masked(&self, cfg: &[u8]) -> bool {
        self.per_vector_mask && cfg[usize::from(self.offset + self.data_offset() + 4)] & 1 != 0
    }
}

/// One MSI-X table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixEntry {
    pub addr_lo: u32,
    pub addr_hi: u32,
    pub data: u32,
    pub control: u32,
}

impl Default for MsixEntry {
    /// Entries come out of reset masked (PCI spec).
    fn default() -> Self {
        MsixEntry {
            addr_lo: 0,
            addr_hi: 0,
            data: 0,
            control: MSIX_VECTOR_MASKED,
        }
    }
}

impl MsixEntry {
    pub fn masked(&self) -> bool {
        self.control & MSIX_VECTOR_MASKED != 0
    }
    pub fn message(&self) -> MsiMessage {
        MsiMessage {
            address: (u64::from(self.addr_hi) << 32) | u64::from(self.addr_lo),
            data: self.data,
        }
    }
}

/// The emulated MSI-X table and PBA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsixTable {
    pub entries: Vec<MsixEntry>,
    /// Pending bits, 64 vectors per word.
    pub pba: Vec<u64>,
}

impl MsixTable {
    pub fn new(vectors: u16) -> MsixTable {
        MsixTable {
            entries: vec![MsixEntry::default(); usize::from(vectors)],
            pba: vec![0; usize::from(vectors).div_ceil(64)],
        }
    }

    fn dword(&self, off: u64) -> u32 {
        let Some(e) = self.entries.get((off / MSIX_ENTRY_SIZE) as usize) else {
            return 0;
        };
        match (off % MSIX_ENTRY_SIZE) / 4 {
            0 => e.addr_lo,
            1 => e.addr_hi,
            2 => e.data,
            _ => e.control,
        }
    }

    /// A guest read of the table at byte offset `off` (1, 2, 4 or 8 bytes).
    pub fn read(&self, off: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let at = off + i as u64;
            *b = self.dword(at & !3).to_le_bytes()[(at & 3) as usize];
        }
    }

    /// A guest write of the table; returns the vectors whose entry changed.
    pub fn write(&mut self, off: u64, data: &[u8]) -> Vec<u16> {
        let mut changed = Vec::new();
        for (i, b) in data.iter().enumerate() {
            let at = off + i as u64;
            let index = (at / MSIX_ENTRY_SIZE) as usize;
            let Some(e) = self.entries.get_mut(index) else {
                continue;
            };
            let field = match (at % MSIX_ENTRY_SIZE) / 4 {
                0 => &mut e.addr_lo,
                1 => &mut e.addr_hi,
                2 => &mut e.data,
                _ => &mut e.control,
            };
            let shift = (at & 3) * 8;
            let mut v = (*field & !(0xff << shift)) | (u32::from(*b) << shift);
            if (at % MSIX_ENTRY_SIZE) / 4 == 3 {
                // Only the mask bit of vector control is writable.
                v &= MSIX_VECTOR_MASKED;
            }
            if (at % MSIX_ENTRY_SIZE) / 4 == 0 {
                v &= !3;
            }
            if *field != v {
                *field = v;
                let vector = index as u16;
                if !changed.contains(&vector) {
                    changed.push(vector);
                }
            }
        }
        changed
    }

    pub fn read_pba(&self, off: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let at = off + i as u64;
            let word = self.pba.get((at / 8) as usize).copied().unwrap_or(0);
            *b = word.to_le_bytes()[(at % 8) as usize];
        }
    }

    pub fn set_pending(&mut self, vector: u16, pending: bool) {
        if let Some(w) = self.pba.get_mut(usize::from(vector) / 64) {
            let bit = 1u64 << (vector % 64);
            if pending {
                *w |= bit;
            } else {
                *w &= !bit;
            }
        }
    }

    pub fn pending(&self, vector: u16) -> bool {
        self.pba
            .get(usize::from(vector) / 64)
            .is_some_and(|w| w & (1 << (vector % 64)) != 0)
    }
}
