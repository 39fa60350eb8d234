//! Type 0 configuration header constants, the capability list walk, and BAR registers
//! (sizing by writing all ones, as guests and firmware do).

pub const VENDOR_ID: u16 = 0x00;
pub const COMMAND: u16 = 0x04;
pub const BAR0: u16 = 0x10;
pub const ROM_BAR: u16 = 0x30;
pub const CAP_PTR: u16 = 0x34;
pub const INTERRUPT_LINE: u16 = 0x3c;
pub const INTERRUPT_PIN: u16 = 0x3d;
pub const STATUS_CAP_LIST: u16 = 0x10;

pub const CMD_IO: u16 = 1 << 0;
pub const CMD_MEMORY: u16 = 1 << 1;
pub const CMD_BUS_MASTER: u16 = 1 << 2;
pub const CMD_INTX_DISABLE: u16 = 1 << 10;

pub const CAP_ID_MSI: u8 = 0x05;
pub const CAP_ID_MSIX: u8 = 0x11;

/// Size of the conventional config space the VMM shadows (extended space passes through).
pub const CONFIG_SIZE: usize = 256;

/// Walks the capability list of a config space image: (capability id, offset) in list
/// order. Stops at a pointer outside the header's capability area or after 48 entries (a
/// looping list on broken hardware).
pub fn capabilities(cfg: &[u8; CONFIG_SIZE]) -> Vec<(u8, u8)> {
    let status = u16::from_le_bytes([cfg[6], cfg[7]]);
    let mut caps = Vec::new();
    if status & STATUS_CAP_LIST == 0 {
        return caps;
    }
    let mut ptr = cfg[CAP_PTR as usize] & !3;
    while ptr >= 0x40 && caps.len() < 48 {
        let id = cfg[ptr as usize];
        caps.push((id, ptr));
        ptr = cfg[ptr as usize + 1] & !3;
    }
    caps
}

/// What a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// Not implemented by the device (reads as 0).
    Unused,
    Io,
    Mem32,
    /// A 64-bit memory BAR: this register holds the low dword, the next one the high dword.
    Mem64,
    /// The high dword of the previous 64-bit BAR.
    Mem64High,
}

/// One base address register as the guest sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    pub kind: BarKind,
    pub prefetchable: bool,
    /// A power of two (0 for unused BARs).
    pub size: u64,
    /// Guest-programmed base address (aligned to `size`).
    pub addr: u64,
}

impl Bar {
    pub const UNUSED: Bar = Bar {
        kind: BarKind::Unused,
        prefetchable: false,
        size: 0,
        addr: 0,
    };

    /// The BAR the device's own register value `raw` describes, `size` bytes long.
    pub fn from_raw(raw: u32, size: u64) -> Bar {
        if size == 0 {
            return Bar::UNUSED;
        }
        let size = size.next_power_of_two();
        let kind = if raw & 1 == 1 {
            BarKind::Io
        } else if (raw >> 1) & 3 == 2 {
            BarKind::Mem64
        } else {
            BarKind::Mem32
        };
        Bar {
            kind,
            prefetchable: kind != BarKind::Io && raw & 8 != 0,
            size,
            addr: 0,
        }
    }

    fn type_bits(&self) -> u32 {
        match self.kind {
            BarKind::Unused | BarKind::Mem64High => 0,
            BarKind::Io => 1,
            BarKind::Mem32 => u32::from(self.prefetchable) << 3,
            BarKind::Mem64 => 4 | (u32::from(self.prefetchable) << 3),
        }
    }

    /// The register value (low dword for a 64-bit BAR).
    pub fn read_low(&self) -> u32 {
        if self.kind == BarKind::Unused {
            return 0;
        }
        let flag_bits = if self.kind == BarKind::Io { 3 } else { 0xf };
        (self.addr as u32 & !flag_bits) | self.type_bits()
    }

    /// The high dword of a 64-bit BAR.
    pub fn read_high(&self) -> u32 {
        (self.addr >> 32) as u32
    }

    /// A guest write of the register (low dword): address bits below the size stay zero.
    pub fn write_low(&mut self, v: u32) {
        let mask = !(self.size.max(1) - 1);
        let low = u64::from(v) & mask & 0xffff_ffff;
        self.addr = match self.kind {
            BarKind::Unused | BarKind::Mem64High => return,
            BarKind::Mem64 => (self.addr & !0xffff_ffff) | low,
            BarKind::Mem32 | BarKind::Io => low,
        };
    }

    /// A guest write of the high dword of a 64-bit BAR.
    pub fn write_high(&mut self, v: u32) {
        let mask = !(self.size.max(1) - 1);
        self.addr = ((u64::from(v) << 32) & mask) | (self.addr & 0xffff_ffff);
    }

    /// The memory range the BAR decodes, unless it is unused, at 0, or over the
    /// 0xfec0_0000..4 GiB system area (where a BAR sits while the guest sizes it).
    pub fn mapped_range(&self) -> Option<(u64, u64)> {
        if !matches!(self.kind, BarKind::Mem32 | BarKind::Mem64) || self.addr == 0 {
            return None;
        }
        let end = self.addr.checked_add(self.size)?;
        let system = 0xfec0_0000..0x1_0000_0000u64;
        let overlaps = self.addr < system.end && end > system.start;
        (!overlaps).then_some((self.addr, self.size))
    }
}
