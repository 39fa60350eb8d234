//! Live update of an assigned function: save, the fds to hand over, and adoption in the new
//! process (restart: after exec; transfer: BARs before the pause, state and interrupts in it).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::{DeviceError, Intx, Vector, VfioPciDevice};
use crate::pci::config::CONFIG_SIZE;
use crate::pci::irq::GsiRouter;
use crate::vfio::ioctl::OpenedDevice;
use crate::vfio::model::{DeviceConfig, VfioPciModel};
use crate::vfio::set::{ms, trace};
use crate::vfio::state::VfioPciState;

/// The interrupt eventfds a live update hands over with a device: MSI and MSI-X vectors in
/// order, and INTx's trigger and resample eventfds if INTx was wired.
pub struct AdoptedIrqs {
    pub msi: Vec<EventFd>,
    pub msix: Vec<EventFd>,
    pub intx: Option<(EventFd, EventFd)>,
}

/// The device's config space as read at one moment (saving reads only).
struct ConfigSnapshot([u8; CONFIG_SIZE]);

impl DeviceConfig for ConfigSnapshot {
    fn read(&self, offset: u16, data: &mut [u8]) -> std::io::Result<()> {
        let at = usize::from(offset);
        let src = self
            .0
            .get(at..at + data.len())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        data.copy_from_slice(src);
        Ok(())
    }
    fn write(&self, _offset: u16, _data: &[u8]) -> std::io::Result<()> {
        Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
    }
}

impl VfioPciDevice {
    /// Adopts an inherited device and its eventfds after a live update: no reset, no
    /// SET_IRQS (the device still signals these eventfds); routes, memslots and irqfds are
    /// rebuilt in the new VM, irqfds last so latched interrupts are injected once
    /// (`hold_irqfds`: not yet, at `attach_irqfds`).
    pub fn restore(
        opened: OpenedDevice,
        state: &VfioPciState,
        irqs: AdoptedIrqs,
        router: Arc<GsiRouter>,
        slot_base: u32,
        hold_irqfds: bool,
    ) -> Result<VfioPciDevice, DeviceError> {
        let mut d = Self::prepare_restore(opened, state, router, slot_base)?;
        d.finish_restore(state, irqs, hold_irqfds)?;
        Ok(d)
    }

    /// The first half of [`VfioPciDevice::restore`]: the model, the BAR mmaps and their
    /// memslots as `state` has them, and nothing else. Nothing is written to the device and
    /// no interrupt is touched, so a transfer-mode successor does this before the pause
    /// from a preview of the state (a memslot added after the irqchip costs milliseconds).
    pub fn prepare_restore(
        opened: OpenedDevice,
        state: &VfioPciState,
        router: Arc<GsiRouter>,
        slot_base: u32,
    ) -> Result<VfioPciDevice, DeviceError> {
        let t = std::time::Instant::now();
        let OpenedDevice {
            dev,
            config,
            bars: regions,
        } = opened;
        let id = dev.bdf.clone();
        let model = VfioPciModel::restore(state).map_err(|e| DeviceError::Restore {
            id: id.clone(),
            what: e.to_string(),
        })?;
        let mut d = Self::build(&id, dev, model, config, regions, router, slot_base)?;
        let t_slots = std::time::Instant::now();
        d.update_bars()?;
        // The routes too (one KVM_SET_GSI_ROUTING, which waits for an SRCU grace period):
        // finishing with the same state then leaves the table alone.
        let t_routes = std::time::Instant::now();
        let routes = super::msi_routes(&d.model, state.msi_gsis.first().copied(), &state.msix_gsis);
        d.router
            .set_many(&routes)
            .map_err(|source| DeviceError::Irq {
                id: d.id.clone(),
                source,
            })?;
        d.preview_gsis = routes.iter().map(|(gsi, _)| *gsi).collect();
        trace(format_args!(
            "{}: model and BAR mmaps {:.3} ms, BAR memslots {:.3} ms, {} routes {:.3} ms",
            d.dev.bdf,
            (t_slots - t).as_secs_f64() * 1e3,
            (t_routes - t_slots).as_secs_f64() * 1e3,
            routes.len(),
            ms(t_routes)
        ));
        Ok(d)
    }

    /// The second half: the final `state` (BAR memslots moved if the guest moved a BAR
    /// since the preview), the handed-over eventfds, MSI / MSI-X routes and INTx wiring, and
    /// the irqfds unless `hold_irqfds`.
    pub fn finish_restore(
        &mut self,
        state: &VfioPciState,
        irqs: AdoptedIrqs,
        hold_irqfds: bool,
    ) -> Result<(), DeviceError> {
        let t = std::time::Instant::now();
        let AdoptedIrqs { msi, msix, intx } = irqs;
        let restore_err = |what: String| DeviceError::Restore {
            id: self.dev.bdf.clone(),
            what,
        };
        if msi.len() != state.msi_gsis.len() || msix.len() != state.msix_gsis.len() {
            return Err(restore_err(format!(
                "{} MSI and {} MSI-X eventfds given, state routes {} and {}",
                msi.len(),
                msix.len(),
                state.msi_gsis.len(),
                state.msix_gsis.len()
            )));
        }
        self.model = VfioPciModel::restore(state).map_err(|e| restore_err(e.to_string()))?;
        self.irqfds_held = hold_irqfds;
        let vectors = |fds: Vec<EventFd>, gsis: &[u32], router: &GsiRouter| {
            fds.into_iter()
                .zip(gsis)
                .map(|(efd, &gsi)| {
                    router.claim(gsi);
                    Vector {
                        efd,
                        gsi,
                        attached: false,
                    }
                })
                .collect::<Vec<_>>()
        };
        self.msi = vectors(msi, &state.msi_gsis, &self.router);
        self.msix = vectors(msix, &state.msix_gsis, &self.router);
        if state.intx.pin != 0 && state.intx.gsi != 0 {
            self.intx_gsi = Some(state.intx.gsi);
        }
        self.intx = intx.map(|(trigger, resample)| Intx {
            trigger,
            resample,
            attached: false,
        });
        // A vector the preview routed and the final state no longer has (unless another
        // device's final state took its GSI).
        let stale: Vec<_> = std::mem::take(&mut self.preview_gsis)
            .into_iter()
            .filter(|&g| !self.router.claimed(g))
            .map(|g| (g, None))
            .collect();
        self.router
            .set_many(&stale)
            .map_err(|source| DeviceError::Irq {
                id: self.id.clone(),
                source,
            })?;
        self.update_bars()?;
        let t_vec = std::time::Instant::now();
        self.latched_at_restore = self.latched();
        self.update_vectors()?;
        trace(format_args!(
            "{}: state {:.3} ms, {} MSI + {} MSI-X routes{} {:.3} ms",
            self.dev.bdf,
            (t_vec - t).as_secs_f64() * 1e3,
            self.msi.len(),
            self.msix.len(),
            if hold_irqfds { "" } else { " and irqfds" },
            ms(t_vec)
        ));
        Ok(())
    }

    /// Vectors (and INTx) whose eventfd holds an interrupt not yet injected (read and
    /// re-armed).
    fn latched(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (kind, vecs) in [("msi", &self.msi), ("msix", &self.msix)] {
            for (i, x) in vecs.iter().enumerate() {
                if let Ok(n) = x.efd.read() {
                    if n > 0 {
                        let _ = x.efd.write(1);
                        out.push(format!("{kind}{i}"));
                    }
                }
            }
        }
        // VFIO masks INTx when it signals, so nothing is added between read and re-arm.
        if let Some(x) = &self.intx {
            if let Ok(n) = x.trigger.read() {
                if n > 0 {
                    let _ = x.trigger.write(1);
                    out.push("intx".into());
                }
            }
        }
        out
    }

    /// Vectors that had an interrupt latched when the device was adopted after exec:
    /// raised during the pause, delivered once when their irqfd attached.
    pub fn latched_at_restore(&self) -> &[String] {
        &self.latched_at_restore
    }

    /// Live update: stop KVM injection; interrupts latch in the eventfds from now on.
    pub fn detach_irqfds(&mut self) -> Result<(), DeviceError> {
        self.irqfds_held = true;
        for v in 0..self.msi.len() as u16 {
            self.set_attached(false, v, false)?;
        }
        for v in 0..self.msix.len() as u16 {
            self.set_attached(true, v, false)?;
        }
        self.set_intx_attached(false)
    }

    /// Undoes `detach_irqfds` (a failed update resumes in this process).
    pub fn attach_irqfds(&mut self) -> Result<(), DeviceError> {
        self.irqfds_held = false;
        self.update_vectors()
    }

    /// The device's live-update state: the guest's full config view, BARs, MSI-X table and
    /// PBA, the GSIs and eventfd counts.
    pub fn save(&mut self) -> VfioPciState {
        self.refresh_pending();
        let mut view = [0u8; CONFIG_SIZE];
        // One read of the device's config space instead of one per dword (it is in the
        // pause); per dword if that fails, as a guest would see it.
        let mut raw = [0u8; CONFIG_SIZE];
        let whole = self.dev.read_at(&self.config, 0, &mut raw).is_ok();
        let snapshot = ConfigSnapshot(raw);
        let phys = self.phys();
        let source: &dyn DeviceConfig = if whole { &snapshot } else { &phys };
        for off in (0..CONFIG_SIZE).step_by(4) {
            self.model
                .config_read(source, off as u16, &mut view[off..off + 4]);
        }
        let mut s = self.model.save(&self.dev.bdf, view);
        s.msi_gsis = self.msi.iter().map(|v| v.gsi).collect();
        s.msix_gsis = self.msix.iter().map(|v| v.gsi).collect();
        s.msi_vectors = self.msi.len() as u32;
        s.msix_vectors = self.msix.len() as u32;
        s.intx.enabled = self.intx.is_some();
        s.intx.gsi = self.intx_gsi.unwrap_or(0);
        s
    }

    /// (name, fd) of the device fd and every interrupt eventfd, for the fd manifest.
    pub fn fds(&self) -> Vec<(String, RawFd)> {
        let mut v = vec![(format!("vfio-device-{}", self.id), self.dev.fd())];
        for (i, x) in self.msi.iter().enumerate() {
            v.push((format!("vfio-irq-{}-msi{i}", self.id), x.efd.as_raw_fd()));
        }
        for (i, x) in self.msix.iter().enumerate() {
            v.push((format!("vfio-irq-{}-msix{i}", self.id), x.efd.as_raw_fd()));
        }
        if let Some(x) = &self.intx {
            v.push((format!("vfio-irq-{}-intx", self.id), x.trigger.as_raw_fd()));
            v.push((
                format!("vfio-irq-{}-intx-resample", self.id),
                x.resample.as_raw_fd(),
            ));
        }
        v
    }
}
