//! Emulated devices on the port I/O bus. The PIC, IOAPIC, LAPIC and PIT are KVM's in-kernel
//! models (see `vm_state`); everything here runs in the VMM.
//!
//! | ports         | device                          |
//! |---------------|---------------------------------|
//! | 0x3f8..=0x3ff | 8250 UART (COM1), IRQ 4         |
//! | 0x70..=0x71   | MC146818 CMOS RTC (host time)   |
//! | 0x604..=0x605 | PM1a control (S3 / power-off)   |
//! | 0x501         | debug exit                      |
//! | 0xcf8..=0xcff | PCI config mechanism #1 (`crate::pci`) |
//!
//! Reads of other ports return all ones and writes are ignored, as on an ISA bus.

pub mod debug_exit;
pub mod pm;
pub mod rtc;
pub mod serial;

use std::sync::Mutex;

pub use debug_exit::DebugExit;
pub use pm::{PmControl, PmRequest};
pub use rtc::Rtc;
pub use serial::SerialDevice;

/// What a port write asks the machine to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoAction {
    None,
    Pm(PmRequest),
    DebugExit(u8),
}

/// The port I/O devices, shared by all vCPU threads.
pub struct Devices {
    pub serial: Mutex<SerialDevice>,
    pub pm: Mutex<PmControl>,
    pub debug_exit: DebugExit,
    pub rtc: Mutex<Rtc>,
    /// PCI bus 0: config ports 0xcf8..=0xcff and trapped BAR MMIO.
    pub pci: std::sync::Arc<crate::pci::PciBus>,
}

impl Devices {
    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        if crate::pci::PciBus::owns_port(port) {
            self.pci.pio_read(port, data);
        } else if let Some(offset) = SerialDevice::offset(port) {
            let mut serial = lock(&self.serial);
            for b in data.iter_mut() {
                *b = serial.read(offset);
            }
        } else if let Some(offset) = PmControl::offset(port) {
            lock(&self.pm).read(offset, data);
        } else if let Some(offset) = Rtc::offset(port) {
            let rtc = lock(&self.rtc);
            data.fill(rtc.read(offset));
        } else {
            data.fill(0xff);
        }
    }

    pub fn pio_write(&self, port: u16, data: &[u8]) -> Result<IoAction, serial::SerialError> {
        if crate::pci::PciBus::owns_port(port) {
            self.pci.pio_write(port, data);
            Ok(IoAction::None)
        } else if let Some(offset) = SerialDevice::offset(port) {
            let mut serial = lock(&self.serial);
            for b in data {
                serial.write(offset, *b)?;
            }
            Ok(IoAction::None)
        } else if let Some(offset) = PmControl::offset(port) {
            Ok(lock(&self.pm)
                .write(offset, data)
                .map_or(IoAction::None, IoAction::Pm))
        } else if let Some(offset) = Rtc::offset(port) {
            let mut rtc = lock(&self.rtc);
            for b in data {
                rtc.write(offset, *b);
            }
            Ok(IoAction::None)
        } else if port == debug_exit::DEBUG_EXIT_PORT {
            Ok(self
                .debug_exit
                .write(data)
                .map_or(IoAction::None, IoAction::DebugExit))
        } else {
            Ok(IoAction::None)
        }
    }
}

impl Devices {
    /// MMIO no memslot backs: trapped BARs of PCI devices; elsewhere reads all ones.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        if !self.pci.mmio_read(addr, data) {
            data.fill(0xff);
        }
    }

    pub fn mmio_write(&self, addr: u64, data: &[u8]) {
        self.pci.mmio_write(addr, data);
    }
}

/// Locks a device mutex. A vCPU thread that panicked while holding it leaves the device in
/// whatever state it was; the guest sees that state rather than the VMM dying too.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
