//! PCI: one bus (bus 0) reached through configuration mechanism #1 (ports 0xcf8 / 0xcfc),
//! a host bridge at 00:00.0, and devices that may trap MMIO (BARs not mapped into the guest
//! directly). Assigned devices (`crate::vfio`) implement [`PciDevice`].

pub mod config;
pub mod irq;
pub mod msi;

use std::sync::{Arc, Mutex};

pub use irq::GsiRouter;
pub use msi::MsiMessage;

/// CONFIG_ADDRESS (dword) and CONFIG_DATA (bytes 0xcfc..=0xcff).
pub const CONFIG_ADDRESS: u16 = 0xcf8;
pub const CONFIG_DATA: u16 = 0xcfc;

/// Guest-physical window where the VMM places BARs (below the IOAPIC at 0xfec0_0000).
pub const MMIO_WINDOW_START: u64 = 0xe000_0000;
pub const MMIO_WINDOW_END: u64 = 0xfe00_0000;

/// A function on bus 0. Accesses are at most 4 bytes and never cross a dword.
pub trait PciDevice: Send {
    fn config_read(&mut self, offset: u16, data: &mut [u8]);
    fn config_write(&mut self, offset: u16, data: &[u8]);
    /// A guest access to `addr` that no memslot backs: returns false if not ours.
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> bool;
    fn mmio_write(&mut self, addr: u64, data: &[u8]) -> bool;
}

/// The host bridge at 00:00.0: identification only (Intel Q35 DRAM controller IDs, as QEMU's
/// q35 shows them, so guests recognise a PCI host).
#[derive(Default)]
pub struct HostBridge;

impl HostBridge {
    fn reg(offset: u16) -> u32 {
        match offset & !3 {
            0x00 => 0x29c0_8086,
            0x08 => 0x0600_0000, // class: bridge, host
            0x0c => 0,           // header type 0, single function
            _ => 0,
        }
    }
}

impl PciDevice for HostBridge {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        let v = Self::reg(offset).to_le_bytes();
        let at = usize::from(offset & 3);
        for (i, b) in data.iter_mut().enumerate() {
            *b = v.get(at + i).copied().unwrap_or(0xff);
        }
    }
    fn config_write(&mut self, _offset: u16, _data: &[u8]) {}
    fn mmio_read(&mut self, _addr: u64, _data: &mut [u8]) -> bool {
        false
    }
    fn mmio_write(&mut self, _addr: u64, _data: &[u8]) -> bool {
        false
    }
}

pub type SharedDevice = Arc<Mutex<dyn PciDevice>>;

struct BusInner {
    /// Last value written to CONFIG_ADDRESS.
    address: u32,
    /// (device number, function 0) in slot order.
    slots: Vec<(u8, SharedDevice)>,
}

/// PCI bus 0 with its config-space ports. Shared by all vCPU threads.
pub struct PciBus {
    inner: Mutex<BusInner>,
}

#[derive(Debug, thiserror::Error)]
pub enum PciError {
    #[error("PCI bus 0 has no free device number (32 in use)")]
    BusFull,
}

impl Default for PciBus {
    fn default() -> Self {
        Self::new()
    }
}

impl PciBus {
    pub fn new() -> PciBus {
        let bridge: SharedDevice = Arc::new(Mutex::new(HostBridge));
        PciBus {
            inner: Mutex::new(BusInner {
                address: 0,
                slots: vec![(0, bridge)],
            }),
        }
    }

    /// Plugs `dev` into the next free device number and returns it.
    pub fn add(&self, dev: SharedDevice) -> Result<u8, PciError> {
        let mut b = lock(&self.inner);
        let slot = (1..32u8)
            .find(|n| b.slots.iter().all(|(s, _)| s != n))
            .ok_or(PciError::BusFull)?;
        b.slots.push((slot, dev));
        Ok(slot)
    }

    /// Whether `port` belongs to the config mechanism.
    pub fn owns_port(port: u16) -> bool {
        (CONFIG_ADDRESS..CONFIG_ADDRESS + 8).contains(&port)
    }

    /// The device and register a data-port access at `port` targets, if any.
    fn target(b: &BusInner, port: u16) -> Option<(SharedDevice, u16)> {
        let a = b.address;
        if a & 0x8000_0000 == 0 || (a >> 16) & 0xff != 0 || (a >> 8) & 7 != 0 {
            return None;
        }
        let slot = ((a >> 11) & 0x1f) as u8;
        let reg = (a & 0xfc) as u16 + (port - CONFIG_DATA);
        b.slots
            .iter()
            .find(|(s, _)| *s == slot)
            .map(|(_, d)| (d.clone(), reg))
    }

    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        let target = {
            let b = lock(&self.inner);
            if port == CONFIG_ADDRESS && data.len() == 4 {
                data.copy_from_slice(&b.address.to_le_bytes());
                return;
            }
            if port < CONFIG_DATA {
                data.fill(0xff);
                return;
            }
            Self::target(&b, port)
        };
        match target {
            Some((d, reg)) => lock(&d).config_read(reg, data),
            None => data.fill(0xff),
        }
    }

    pub fn pio_write(&self, port: u16, data: &[u8]) {
        let target = {
            let mut b = lock(&self.inner);
            if port == CONFIG_ADDRESS {
                // Only dword accesses hit CONFIG_ADDRESS (byte accesses to 0xcf8..0xcfb are
                // other chipset registers on a PC).
                if let Ok(v) = <[u8; 4]>::try_from(data) {
                    b.address = u32::from_le_bytes(v);
                }
                return;
            }
            if port < CONFIG_DATA {
                return;
            }
            Self::target(&b, port)
        };
        if let Some((d, reg)) = target {
            lock(&d).config_write(reg, data);
        }
    }

    /// Offers a trapped MMIO read to every device; returns false if none claimed it.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        let devs: Vec<SharedDevice> = lock(&self.inner)
            .slots
            .iter()
            .map(|(_, d)| d.clone())
            .collect();
        devs.iter().any(|d| lock(d).mmio_read(addr, data))
    }

    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        let devs: Vec<SharedDevice> = lock(&self.inner)
            .slots
            .iter()
            .map(|(_, d)| d.clone())
            .collect();
        devs.iter().any(|d| lock(d).mmio_write(addr, data))
    }
}

pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
