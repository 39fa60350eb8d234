//! The guest's view of an assigned PCI function: config space read through to the device
//! except the parts the VMM must own (BARs, expansion ROM, interrupt line, the MSI and MSI-X
//! capabilities), and the MSI-X table and PBA, which the guest reaches through a trapped BAR.
//! No fds here: the physical config region comes in as [`DeviceConfig`], and interrupt
//! routing is read back as messages, so all of it runs in unit tests.

use crate::pci::config::{
    capabilities, Bar, BarKind, BAR0, CAP_ID_MSI, CAP_ID_MSIX, CMD_MEMORY, COMMAND, CONFIG_SIZE,
    INTERRUPT_LINE, INTERRUPT_PIN, ROM_BAR,
};
use crate::pci::msi::{MsiCap, MsiMessage, MsixTable, MSIX_CTRL_ENABLE, MSIX_CTRL_FUNCTION_MASK};

/// The physical function's config space (the VFIO config region).
pub trait DeviceConfig {
    fn read(&self, offset: u16, data: &mut [u8]) -> std::io::Result<()>;
    fn write(&self, offset: u16, data: &[u8]) -> std::io::Result<()>;
}

/// Where the MSI-X capability puts the table and PBA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixCap {
    pub offset: u8,
    pub vectors: u16,
    pub table_bar: u8,
    pub table_offset: u64,
    pub pba_bar: u8,
    pub pba_offset: u64,
}

impl MsixCap {
    fn parse(cfg: &[u8; CONFIG_SIZE], offset: u8) -> MsixCap {
        let o = usize::from(offset);
        let dw = |at: usize| u32::from_le_bytes([cfg[at], cfg[at + 1], cfg[at + 2], cfg[at + 3]]);
        let control = u16::from_le_bytes([cfg[o + 2], cfg[o + 3]]);
        let table = dw(o + 4);
        let pba = dw(o + 8);
        MsixCap {
            offset,
            vectors: (control & 0x7ff) + 1,
            table_bar: (table & 7) as u8,
            table_offset: u64::from(table & !7),
            pba_bar: (pba & 7) as u8,
            pba_offset: u64::from(pba & !7),
        }
    }

    pub fn table_len(&self) -> u64 {
        u64::from(self.vectors) * 16
    }

    pub fn pba_len(&self) -> u64 {
        u64::from(self.vectors).div_ceil(64) * 8
    }
}

/// What part of a trapped BAR an access hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarArea {
    MsixTable(u64),
    MsixPba(u64),
    /// Anything else: forwarded to the device region at this offset.
    Device(u64),
}

/// Which interrupt the guest enabled (at most one at a time, as in PCI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqMode {
    Intx,
    Msi,
    Msix,
}

/// What a config write changed, for the device to act on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConfigEffect {
    pub bars: bool,
    pub msi: bool,
    pub msix: bool,
}

pub struct VfioPciModel {
    /// Emulated bytes are authoritative here; the rest is the device's value as last read.
    pub cfg: [u8; CONFIG_SIZE],
    emulated: [bool; CONFIG_SIZE],
    wmask: [u8; CONFIG_SIZE],
    pub bars: [Bar; 6],
    pub msi: Option<MsiCap>,
    pub msix: Option<MsixCap>,
    pub msix_table: MsixTable,
    /// The command register as the guest last wrote it.
    pub command: u16,
}

impl VfioPciModel {
    /// The model of a device whose config space reads `cfg` and whose BAR regions have
    /// `bar_sizes` (VFIO region sizes). BARs start unassigned (address 0), MSI and MSI-X
    /// disabled with every MSI-X vector masked, as after reset.
    pub fn new(cfg: [u8; CONFIG_SIZE], bar_sizes: [u64; 6]) -> VfioPciModel {
        let mut bars = [Bar::UNUSED; 6];
        let mut i = 0;
        while i < 6 {
            let at = usize::from(BAR0) + 4 * i;
            let raw = u32::from_le_bytes([cfg[at], cfg[at + 1], cfg[at + 2], cfg[at + 3]]);
            bars[i] = Bar::from_raw(raw, bar_sizes[i]);
            if bars[i].kind == BarKind::Mem64 && i < 5 {
                bars[i + 1] = Bar {
                    kind: BarKind::Mem64High,
                    ..Bar::UNUSED
                };
                i += 1;
            }
            i += 1;
        }
        let mut m = VfioPciModel {
            cfg,
            emulated: [false; CONFIG_SIZE],
            wmask: [0; CONFIG_SIZE],
            bars,
            msi: None,
            msix: None,
            msix_table: MsixTable::new(0),
            command: u16::from_le_bytes([cfg[4], cfg[5]]),
        };
        m.layout();
        // Reset values of what the VMM emulates.
        m.cfg[usize::from(INTERRUPT_LINE)] = 0;
        m.cfg[usize::from(ROM_BAR)..usize::from(ROM_BAR) + 4].fill(0);
        if let Some(msi) = m.msi {
            let c = usize::from(msi.offset) + 2;
            // One vector (Multiple Message Capable = 0), disabled.
            m.cfg[c] &= !0x7f;
            if msi.per_vector_mask {
                let mask = usize::from(msi.offset) + if msi.is_64 { 0x10 } else { 0x0c };
                m.cfg[mask..mask + 8].fill(0);
            }
        }
        if let Some(x) = m.msix {
            m.cfg[usize::from(x.offset) + 3] &= !0xc0;
            m.msix_table = MsixTable::new(x.vectors);
        }
        m.sync_bar_bytes();
        m
    }

    /// Marks emulated bytes and their writable bits, from the capability list in `cfg`.
    fn layout(&mut self) {
        let emulate = |m: &mut Self, at: usize, len: usize, wmask: u8| {
            for b in at..(at + len).min(CONFIG_SIZE) {
                m.emulated[b] = true;
                m.wmask[b] = wmask;
            }
        };
        emulate(self, usize::from(BAR0), 24, 0);
        emulate(self, usize::from(ROM_BAR), 4, 0);
        emulate(self, usize::from(INTERRUPT_LINE), 1, 0xff);
        for (id, off) in capabilities(&self.cfg) {
            match id {
                CAP_ID_MSI if self.msi.is_none() => {
                    let o = usize::from(off);
                    let cap =
                        MsiCap::new(off, u16::from_le_bytes([self.cfg[o + 2], self.cfg[o + 3]]));
                    for rel in 2..cap.size() {
                        emulate(self, o + usize::from(rel), 1, cap.write_mask(rel));
                    }
                    self.msi = Some(cap);
                }
                CAP_ID_MSIX if self.msix.is_none() => {
                    let o = usize::from(off);
                    emulate(self, o + 2, 10, 0);
                    self.wmask[o + 3] = 0xc0;
                    self.msix = Some(MsixCap::parse(&self.cfg, off));
                }
                _ => {}
            }
        }
    }

    fn sync_bar_bytes(&mut self) {
        for (i, bar) in self.bars.iter().enumerate() {
            let v = match bar.kind {
                BarKind::Mem64High => self.bars[i - 1].read_high(),
                _ => bar.read_low(),
            };
            let at = usize::from(BAR0) + 4 * i;
            self.cfg[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
    }

    /// Places BAR `index` at `addr` (the VMM's firmware role before the guest runs).
    pub fn assign_bar(&mut self, index: usize, addr: u64) {
        if let Some(bar) = self.bars.get_mut(index) {
            if matches!(bar.kind, BarKind::Mem32 | BarKind::Mem64 | BarKind::Io) {
                bar.addr = addr & !(bar.size.max(1) - 1);
            }
        }
        self.sync_bar_bytes();
    }

    pub fn is_emulated(&self, offset: usize) -> bool {
        self.emulated.get(offset).copied().unwrap_or(false)
    }

    /// A guest config read of `data.len()` bytes at `offset`.
    pub fn config_read(&self, dev: &dyn DeviceConfig, offset: u16, data: &mut [u8]) {
        let start = usize::from(offset);
        let all_emulated = (start..start + data.len()).all(|b| self.is_emulated(b));
        if !all_emulated && dev.read(offset, data).is_err() {
            data.fill(0xff);
            return;
        }
        for (i, b) in data.iter_mut().enumerate() {
            if self.is_emulated(start + i) {
                *b = self.cfg[start + i];
            }
        }
    }

    /// A guest config write. Bytes the VMM owns are merged under their write masks; the
    /// rest goes to the device (in runs, so a 16-bit register is written as 16 bits).
    pub fn config_write(
        &mut self,
        dev: &dyn DeviceConfig,
        offset: u16,
        data: &[u8],
    ) -> ConfigEffect {
        let start = usize::from(offset);
        let mut effect = ConfigEffect::default();
        let bar_area = usize::from(BAR0)..usize::from(BAR0) + 24;
        let mut run: Option<(usize, Vec<u8>)> = None;
        let flush = |run: &mut Option<(usize, Vec<u8>)>| {
            if let Some((at, bytes)) = run.take() {
                // A failed write is what a device that does not decode it would do.
                let _ = dev.write(at as u16, &bytes);
            }
        };
        for (i, &b) in data.iter().enumerate() {
            let at = start + i;
            if at >= CONFIG_SIZE || !self.is_emulated(at) {
                match &mut run {
                    Some((_, bytes)) => bytes.push(b),
                    None => run = Some((at, vec![b])),
                }
                continue;
            }
            flush(&mut run);
            if bar_area.contains(&at) {
                self.cfg[at] = b;
                effect.bars = true;
            } else {
                let m = self.wmask[at];
                self.cfg[at] = (self.cfg[at] & !m) | (b & m);
                if self.msi.is_some_and(|c| {
                    (usize::from(c.offset)..usize::from(c.offset) + 0x18).contains(&at)
                }) {
                    effect.msi = true;
                }
                if self.msix.is_some_and(|c| {
                    (usize::from(c.offset)..usize::from(c.offset) + 12).contains(&at)
                }) {
                    effect.msix = true;
                }
            }
        }
        flush(&mut run);
        let cmd = usize::from(COMMAND);
        if start <= cmd + 1 && start + data.len() > cmd {
            let mut bytes = self.command.to_le_bytes();
            for (i, &b) in data.iter().enumerate() {
                if let Some(slot) = (start + i).checked_sub(cmd).and_then(|k| bytes.get_mut(k)) {
                    *slot = b;
                }
            }
            let new = u16::from_le_bytes(bytes);
            effect.bars |= (new ^ self.command) & CMD_MEMORY != 0;
            self.command = new;
        }
        if effect.bars {
            self.apply_bar_writes(start, data.len());
        }
        effect
    }

    /// Turns the raw bytes just written into BAR registers into addresses (size-aligned).
    fn apply_bar_writes(&mut self, start: usize, len: usize) {
        for i in 0..6 {
            let at = usize::from(BAR0) + 4 * i;
            if start >= at + 4 || start + len <= at {
                continue;
            }
            let v = u32::from_le_bytes([
                self.cfg[at],
                self.cfg[at + 1],
                self.cfg[at + 2],
                self.cfg[at + 3],
            ]);
            match self.bars[i].kind {
                BarKind::Mem64High => self.bars[i - 1].write_high(v),
                _ => self.bars[i].write_low(v),
            }
        }
        self.sync_bar_bytes();
    }

    pub fn memory_enabled(&self) -> bool {
        self.command & CMD_MEMORY != 0
    }

    pub fn interrupt_pin(&self) -> u8 {
        self.cfg[usize::from(INTERRUPT_PIN)]
    }

    pub fn interrupt_line(&self) -> u8 {
        self.cfg[usize::from(INTERRUPT_LINE)]
    }

    pub fn msi_enabled(&self) -> bool {
        self.msi.is_some_and(|c| c.enabled(&self.cfg))
    }

    /// The message MSI vector 0 should raise now: `None` if MSI is off or the vector masked.
    pub fn msi_route(&self) -> Option<MsiMessage> {
        let c = self.msi?;
        (c.enabled(&self.cfg) && !c.vector0_masked(&self.cfg)).then(|| c.message(&self.cfg))
    }

    fn msix_control(&self) -> u16 {
        self.msix.map_or(0, |c| {
            let o = usize::from(c.offset);
            u16::from_le_bytes([self.cfg[o + 2], self.cfg[o + 3]])
        })
    }

    pub fn msix_enabled(&self) -> bool {
        self.msix_control() & MSIX_CTRL_ENABLE != 0
    }

    pub fn msix_function_masked(&self) -> bool {
        self.msix_control() & MSIX_CTRL_FUNCTION_MASK != 0
    }

    /// The message MSI-X `vector` should raise now: `None` if MSI-X is off, the function
    /// or the vector is masked.
    pub fn msix_route(&self, vector: u16) -> Option<MsiMessage> {
        let e = self.msix_table.entries.get(usize::from(vector))?;
        (self.msix_enabled() && !self.msix_function_masked() && !e.masked()).then(|| e.message())
    }

    /// The interrupt mode the guest selected: MSI-X over MSI over INTx, as the PCI spec
    /// lets only one be active.
    pub fn irq_mode(&self) -> Option<IrqMode> {
        if self.msix_enabled() {
            Some(IrqMode::Msix)
        } else if self.msi_enabled() {
            Some(IrqMode::Msi)
        } else if self.interrupt_pin() != 0 {
            Some(IrqMode::Intx)
        } else {
            None
        }
    }

    /// The BAR (index, offset) that a guest-physical address falls in, if decoded.
    pub fn bar_at(&self, addr: u64) -> Option<(usize, u64)> {
        if !self.memory_enabled() {
            return None;
        }
        self.bars.iter().enumerate().find_map(|(i, b)| {
            let (base, size) = b.mapped_range()?;
            (addr >= base && addr < base + size).then(|| (i, addr - base))
        })
    }

    /// Which part of BAR `bar` offset `off` is: MSI-X table, PBA or plain device register.
    pub fn area(&self, bar: usize, off: u64) -> BarArea {
        if let Some(c) = self.msix {
            if usize::from(c.table_bar) == bar
                && off >= c.table_offset
                && off < c.table_offset + c.table_len()
            {
                return BarArea::MsixTable(off - c.table_offset);
            }
            if usize::from(c.pba_bar) == bar
                && off >= c.pba_offset
                && off < c.pba_offset + c.pba_len()
            {
                return BarArea::MsixPba(off - c.pba_offset);
            }
        }
        BarArea::Device(off)
    }

    /// Whether BAR `bar` holds the MSI-X table or PBA (so it must be trapped, not mapped).
    pub fn bar_has_msix(&self, bar: usize) -> bool {
        self.msix
            .is_some_and(|c| usize::from(c.table_bar) == bar || usize::from(c.pba_bar) == bar)
    }
}
