//! An assigned PCI function on the guest's bus: the [`VfioPciModel`] wired to the real
//! device fd, KVM memslots for directly mapped BARs, and MSI / MSI-X vectors as eventfds
//! that VFIO signals and KVM injects (irqfd on an MSI route).
//!
//! Interrupt rule: a vector's irqfd is attached only while the guest has it unmasked and
//! the VMM is not in a live update. Otherwise the eventfd latches what the device raises;
//! attaching later makes KVM inject a latched interrupt once (KVM checks the eventfd at
//! KVM_IRQFD), which is how interrupts raised during the pause get delivered exactly once.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use kvm_bindings::kvm_userspace_memory_region;
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_RESET, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX,
    VFIO_REGION_INFO_FLAG_MMAP,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::ioctl::{Device, OpenedDevice, Region, VfioError};

mod cpr;
use super::model::{BarArea, DeviceConfig, VfioPciModel};
use crate::pci::config::{BarKind, CONFIG_SIZE};
use crate::pci::irq::{GsiRouter, IrqError};
use crate::pci::PciDevice;
pub use cpr::AdoptedIrqs;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("VFIO operation on {id} failed")]
    Vfio {
        id: String,
        #[source]
        source: VfioError,
    },
    #[error("interrupt routing for {id} failed")]
    Irq {
        id: String,
        #[source]
        source: IrqError,
    },
    #[error("cannot create an interrupt eventfd for {id}")]
    EventFd {
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} of the irqfd of {id} vector {vector} (GSI {gsi}) failed")]
    Irqfd {
        op: &'static str,
        id: String,
        vector: u16,
        gsi: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot mmap BAR {bar} of {id}")]
    Mmap {
        id: String,
        bar: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("KVM_SET_USER_MEMORY_REGION for BAR {bar} of {id} at {addr:#x} failed")]
    Memslot {
        id: String,
        bar: usize,
        addr: u64,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("restoring {id}: {what}")]
    Restore { id: String, what: String },
}

/// The config region of a device, as the model's [`DeviceConfig`].
struct PhysConfig<'a> {
    dev: &'a Device,
    region: &'a Region,
}

impl DeviceConfig for PhysConfig<'_> {
    fn read(&self, offset: u16, data: &mut [u8]) -> std::io::Result<()> {
        self.dev
            .read_at(self.region, u64::from(offset), data)
            .map_err(std::io::Error::other)
    }
    fn write(&self, offset: u16, data: &[u8]) -> std::io::Result<()> {
        self.dev
            .write_at(self.region, u64::from(offset), data)
            .map_err(std::io::Error::other)
    }
}

/// One MSI or MSI-X vector.
pub struct Vector {
    pub efd: EventFd,
    pub gsi: u32,
    attached: bool,
}

/// A BAR region mmapped from the device fd.
struct BarMap {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is plain device memory owned by this struct; nothing in it is tied
// to the thread that created it.
unsafe impl Send for BarMap {}

impl Drop for BarMap {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned; nothing uses them after drop.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

pub struct VfioPciDevice {
    pub id: String,
    pub dev: Device,
    config: Region,
    regions: [Region; 6],
    pub model: VfioPciModel,
    router: Arc<GsiRouter>,
    pub msi: Vec<Vector>,
    pub msix: Vec<Vector>,
    maps: [Option<BarMap>; 6],
    /// Guest address each directly mapped BAR's memslot is at now.
    slots: [Option<u64>; 6],
    slot_base: u32,
    /// During a live update irqfds stay detached whatever the guest programs.
    irqfds_held: bool,
    latched_at_restore: Vec<String>,
    /// GSIs routed from a transfer's preview state before the pause (`prepare_restore`).
    preview_gsis: Vec<u32>,
    /// IOAPIC pin (GSI) INTx is wired to, if the function has an interrupt pin.
    intx_gsi: Option<u32>,
    pub intx: Option<Intx>,
}

/// INTx wired to KVM: VFIO signals `trigger` and masks the line; KVM signals `resample`
/// when the guest EOIs the level interrupt, which makes VFIO unmask it.
pub struct Intx {
    pub trigger: EventFd,
    pub resample: EventFd,
    attached: bool,
}

impl VfioPciDevice {
    fn err(&self) -> impl Fn(VfioError) -> DeviceError + '_ {
        move |source| DeviceError::Vfio {
            id: self.id.clone(),
            source,
        }
    }

    fn build(
        id: &str,
        dev: Device,
        model: VfioPciModel,
        config: Region,
        regions: [Region; 6],
        router: Arc<GsiRouter>,
        slot_base: u32,
    ) -> Result<VfioPciDevice, DeviceError> {
        let mut d = VfioPciDevice {
            id: id.to_string(),
            dev,
            config,
            regions,
            model,
            router,
            msi: Vec::new(),
            msix: Vec::new(),
            maps: Default::default(),
            slots: [None; 6],
            slot_base,
            irqfds_held: false,
            latched_at_restore: Vec::new(),
            preview_gsis: Vec::new(),
            intx_gsi: None,
            intx: None,
        };
        for bar in 0..6 {
            let r = d.regions[bar];
            let direct = r.flags & VFIO_REGION_INFO_FLAG_MMAP != 0
                && r.size >= 4096
                && matches!(d.model.bars[bar].kind, BarKind::Mem32 | BarKind::Mem64)
                && !d.model.bar_has_msix(bar);
            if direct {
                // SAFETY: maps `r.size` bytes of the device fd at the region's offset; the
                // result is checked and owned by BarMap.
                let ptr = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        r.size as usize,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_SHARED,
                        d.dev.fd(),
                        r.offset as libc::off_t,
                    )
                };
                if ptr == libc::MAP_FAILED {
                    return Err(DeviceError::Mmap {
                        id: id.to_string(),
                        bar,
                        source: std::io::Error::last_os_error(),
                    });
                }
                d.maps[bar] = Some(BarMap {
                    ptr,
                    len: r.size as usize,
                });
            }
        }
        Ok(d)
    }

    /// Opens the function for a fresh start: resets it, reads its config space, and places
    /// its memory BARs from `*mmio_next` up (the VMM plays firmware). Memslots for the
    /// BARs appear when the guest enables memory decoding.
    pub fn new(
        id: &str,
        dev: Device,
        router: Arc<GsiRouter>,
        slot_base: u32,
        mmio_next: &mut u64,
        intx_gsi: u32,
    ) -> Result<VfioPciDevice, DeviceError> {
        let e = |source| DeviceError::Vfio {
            id: id.to_string(),
            source,
        };
        if dev.flags & VFIO_DEVICE_FLAGS_RESET != 0 {
            dev.reset().map_err(e)?;
        }
        let OpenedDevice {
            dev,
            config,
            bars: regions,
        } = dev.open_regions().map_err(e)?;
        let mut cfg = [0u8; CONFIG_SIZE];
        dev.read_at(&config, 0, &mut cfg).map_err(e)?;
        let sizes = regions.map(|r| r.size);
        let mut model = VfioPciModel::new(cfg, sizes);
        for bar in 0..6 {
            let b = model.bars[bar];
            if matches!(b.kind, BarKind::Mem32 | BarKind::Mem64) {
                let addr = mmio_next.next_multiple_of(b.size);
                model.assign_bar(bar, addr);
                *mmio_next = addr + b.size;
            }
        }
        let has_pin = model.interrupt_pin() != 0;
        if has_pin {
            // Firmware's job: tell the guest where INTx arrives.
            model.cfg[usize::from(crate::pci::config::INTERRUPT_LINE)] = intx_gsi as u8;
        }
        let mut d = Self::build(id, dev, model, config, regions, router, slot_base)?;
        if has_pin {
            d.intx_gsi = Some(intx_gsi);
            d.update_intx()?;
        }
        Ok(d)
    }

    fn new_efd(&self) -> Result<EventFd, DeviceError> {
        EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(|source| DeviceError::EventFd {
            id: self.id.clone(),
            source,
        })
    }

    /// Wires INTx while neither MSI nor MSI-X is enabled (VFIO refuses to switch between
    /// interrupt types without disabling the active one first), and unwires it otherwise.
    fn update_intx(&mut self) -> Result<(), DeviceError> {
        if self.intx_gsi.is_none() {
            return Ok(());
        }
        let want = !self.model.msi_enabled() && !self.model.msix_enabled();
        let index = vfio_bindings::bindings::vfio::VFIO_PCI_INTX_IRQ_INDEX;
        if want && self.intx.is_none() {
            let trigger = self.new_efd()?;
            let resample = self.new_efd()?;
            self.dev
                .set_irq_eventfds(index, 0, &[trigger.as_raw_fd()])
                .map_err(self.err())?;
            self.dev
                .set_intx_unmask_eventfd(resample.as_raw_fd())
                .map_err(self.err())?;
            self.intx = Some(Intx {
                trigger,
                resample,
                attached: false,
            });
        } else if !want && self.intx.is_some() {
            self.set_intx_attached(false)?;
            self.dev
                .set_irq_eventfds(index, 0, &[])
                .map_err(self.err())?;
            self.intx = None;
        }
        self.set_intx_attached(want && !self.irqfds_held)
    }

    fn set_intx_attached(&mut self, want: bool) -> Result<(), DeviceError> {
        let (Some(gsi), Some(x)) = (self.intx_gsi, self.intx.as_mut()) else {
            return Ok(());
        };
        if x.attached == want {
            return Ok(());
        }
        let vm = self.router.vm();
        let (op, r) = if want {
            (
                "KVM_IRQFD(resample)",
                vm.register_irqfd_with_resample(&x.trigger, &x.resample, gsi),
            )
        } else {
            ("KVM_IRQFD(deassign)", vm.unregister_irqfd(&x.trigger, gsi))
        };
        r.map_err(|source| DeviceError::Irqfd {
            op,
            id: self.id.clone(),
            vector: 0,
            gsi,
            source,
        })?;
        x.attached = want;
        Ok(())
    }

    pub fn set_id(&mut self, id: &str) {
        self.id = id.to_string();
    }

    fn phys(&self) -> PhysConfig<'_> {
        PhysConfig {
            dev: &self.dev,
            region: &self.config,
        }
    }

    /// Registers, moves or removes the memslots of directly mapped BARs to match what the
    /// guest programmed (memory decoding on, BAR at a usable address).
    fn update_bars(&mut self) -> Result<(), DeviceError> {
        for bar in 0..6 {
            let Some(map) = &self.maps[bar] else { continue };
            let want = if self.model.memory_enabled() {
                self.model.bars[bar].mapped_range().map(|(a, _)| a)
            } else {
                None
            };
            if want == self.slots[bar] {
                continue;
            }
            let slot = self.slot_base + bar as u32;
            let mut region = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: self.slots[bar].unwrap_or(0),
                memory_size: 0,
                userspace_addr: map.ptr as u64,
            };
            let vm = self.router.vm();
            let fail = |addr, source| DeviceError::Memslot {
                id: self.id.clone(),
                bar,
                addr,
                source,
            };
            if let Some(old) = self.slots[bar].take() {
                // SAFETY: size 0 deletes the slot; no memory is referenced.
                unsafe { vm.set_user_memory_region(region) }.map_err(|e| fail(old, e))?;
            }
            if let Some(addr) = want {
                region.guest_phys_addr = addr;
                region.memory_size = map.len as u64;
                // SAFETY: the region is our live mmap of the BAR, kept until this device
                // is dropped (which deletes no slot, but the VM goes with the machine).
                unsafe { vm.set_user_memory_region(region) }.map_err(|e| fail(addr, e))?;
                self.slots[bar] = Some(addr);
            }
        }
        Ok(())
    }

    /// Eventfds are close-on-exec like every fd: a live update clears the flag on exactly
    /// the fds it hands over.
    fn new_vectors(&self, n: u16) -> Result<Vec<Vector>, DeviceError> {
        (0..n)
            .map(|_| {
                let efd = EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(|source| {
                    DeviceError::EventFd {
                        id: self.id.clone(),
                        source,
                    }
                })?;
                let gsi = self.router.allocate().map_err(|source| DeviceError::Irq {
                    id: self.id.clone(),
                    source,
                })?;
                Ok(Vector {
                    efd,
                    gsi,
                    attached: false,
                })
            })
            .collect()
    }

    fn set_attached(&mut self, msix: bool, v: u16, want: bool) -> Result<(), DeviceError> {
        let vm = self.router.vm();
        let id = &self.id;
        let vec = if msix { &mut self.msix } else { &mut self.msi };
        let Some(x) = vec.get_mut(usize::from(v)) else {
            return Ok(());
        };
        if x.attached == want {
            return Ok(());
        }
        let (op, r) = if want {
            ("KVM_IRQFD", vm.register_irqfd(&x.efd, x.gsi))
        } else {
            ("KVM_IRQFD(deassign)", vm.unregister_irqfd(&x.efd, x.gsi))
        };
        r.map_err(|source| DeviceError::Irqfd {
            op,
            id: id.clone(),
            vector: v,
            gsi: x.gsi,
            source,
        })?;
        x.attached = want;
        Ok(())
    }

    fn route(&self, gsi: u32, msg: Option<crate::pci::MsiMessage>) -> Result<(), DeviceError> {
        self.router
            .set(gsi, msg)
            .map_err(|source| DeviceError::Irq {
                id: self.id.clone(),
                source,
            })
    }

    /// Brings VFIO's eventfds, KVM routes and irqfds in line with the guest's MSI / MSI-X
    /// programming.
    fn update_vectors(&mut self) -> Result<(), DeviceError> {
        if self.model.msi_enabled() || self.model.msix_enabled() {
            // INTx off before MSI / MSI-X on.
            self.update_intx()?;
        }
        // MSI
        if self.model.msi_enabled() && self.msi.is_empty() {
            self.msi = self.new_vectors(1)?;
            let fds: Vec<RawFd> = self.msi.iter().map(|v| v.efd.as_raw_fd()).collect();
            self.dev
                .set_irq_eventfds(VFIO_PCI_MSI_IRQ_INDEX, 0, &fds)
                .map_err(self.err())?;
        } else if !self.model.msi_enabled() && !self.msi.is_empty() {
            self.set_attached(false, 0, false)?;
            self.dev
                .set_irq_eventfds(VFIO_PCI_MSI_IRQ_INDEX, 0, &[])
                .map_err(self.err())?;
            for v in std::mem::take(&mut self.msi) {
                self.router.release(v.gsi);
            }
        }
        // MSI-X
        if self.model.msix_enabled() && self.msix.is_empty() {
            let n = self.model.msix.map_or(0, |c| c.vectors);
            self.msix = self.new_vectors(n)?;
            let fds: Vec<RawFd> = self.msix.iter().map(|v| v.efd.as_raw_fd()).collect();
            self.dev
                .set_irq_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, 0, &fds)
                .map_err(self.err())?;
        } else if !self.model.msix_enabled() && !self.msix.is_empty() {
            for v in 0..self.msix.len() as u16 {
                self.set_attached(true, v, false)?;
            }
            self.dev
                .set_irq_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, 0, &[])
                .map_err(self.err())?;
            for v in std::mem::take(&mut self.msix) {
                self.router.release(v.gsi);
            }
        }
        // Every route in one KVM_SET_GSI_ROUTING, then the irqfds (routes first: an irqfd
        // attached to a GSI without a route would inject nothing).
        let msix: Vec<u32> = self.msix.iter().map(|v| v.gsi).collect();
        let routes = msi_routes(&self.model, self.msi.first().map(|v| v.gsi), &msix);
        self.router
            .set_many(&routes)
            .map_err(|source| DeviceError::Irq {
                id: self.id.clone(),
                source,
            })?;
        if !self.msi.is_empty() {
            let want = self.model.msi_route().is_some() && !self.irqfds_held;
            self.set_attached(false, 0, want)?;
        }
        for v in 0..self.msix.len() as u16 {
            self.attach_msix_vector(v)?;
        }
        self.update_intx()
    }

    fn update_msix_vector(&mut self, v: u16) -> Result<(), DeviceError> {
        let Some(x) = self.msix.get(usize::from(v)) else {
            return Ok(());
        };
        let entry = self.model.msix_table.entries.get(usize::from(v)).copied();
        self.route(x.gsi, entry.map(|e| e.message()))?;
        self.attach_msix_vector(v)
    }

    fn attach_msix_vector(&mut self, v: u16) -> Result<(), DeviceError> {
        let want = self.model.msix_route(v).is_some() && !self.irqfds_held;
        self.set_attached(true, v, want)?;
        if want {
            // Attaching delivered whatever the eventfd latched.
            self.model.msix_table.set_pending(v, false);
        }
        Ok(())
    }

    /// Reads which masked vectors have an interrupt latched, for the PBA. The eventfd is
    /// read (non-blocking) and re-armed so the latch survives for the later unmask.
    fn refresh_pending(&mut self) {
        for (v, x) in self.msix.iter().enumerate() {
            if x.attached {
                continue;
            }
            if let Ok(n) = x.efd.read() {
                if n > 0 {
                    let _ = x.efd.write(1);
                    self.model.msix_table.set_pending(v as u16, true);
                }
            }
        }
    }

    fn report(&self, r: Result<(), DeviceError>) {
        if let Err(e) = r {
            // The guest has no way to receive an error from a config or MMIO write.
            eprintln!("vmm: {}", crate_error_chain(&e));
        }
    }
}

/// The KVM MSI routes of `model` for its MSI vector's GSI and its MSI-X vectors' GSIs, in
/// order (`None`: the route is cleared).
fn msi_routes(
    model: &VfioPciModel,
    msi: Option<u32>,
    msix: &[u32],
) -> Vec<(u32, Option<crate::pci::MsiMessage>)> {
    let mut routes = Vec::new();
    if let Some(gsi) = msi {
        routes.push((gsi, model.msi.map(|c| c.message(&model.cfg))));
    }
    for (i, &gsi) in msix.iter().enumerate() {
        let entry = model.msix_table.entries.get(i).copied();
        routes.push((gsi, entry.map(|e| e.message())));
    }
    routes
}

fn crate_error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

impl PciDevice for VfioPciDevice {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        self.model.config_read(&self.phys(), offset, data);
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        let phys = PhysConfig {
            dev: &self.dev,
            region: &self.config,
        };
        let effect = self.model.config_write(&phys, offset, data);
        if effect.bars {
            let r = self.update_bars();
            self.report(r);
        }
        if effect.msi || effect.msix {
            let r = self.update_vectors();
            self.report(r);
        }
    }

    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        let Some((bar, off)) = self.model.bar_at(addr) else {
            return false;
        };
        match self.model.area(bar, off) {
            BarArea::MsixTable(o) => self.model.msix_table.read(o, data),
            BarArea::MsixPba(o) => {
                self.refresh_pending();
                self.model.msix_table.read_pba(o, data)
            }
            BarArea::Device(o) => {
                if self.dev.read_at(&self.regions[bar], o, data).is_err() {
                    data.fill(0xff);
                }
            }
        }
        true
    }

    fn mmio_write(&mut self, addr: u64, data: &[u8]) -> bool {
        let Some((bar, off)) = self.model.bar_at(addr) else {
            return false;
        };
        match self.model.area(bar, off) {
            BarArea::MsixTable(o) => {
                for v in self.model.msix_table.write(o, data) {
                    let r = self.update_msix_vector(v);
                    self.report(r);
                }
            }
            BarArea::MsixPba(_) => {}
            BarArea::Device(o) => {
                let _ = self.dev.write_at(&self.regions[bar], o, data);
            }
        }
        true
    }
}
