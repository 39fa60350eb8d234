//! Every assigned device of a machine: its IOMMU back-end (one type1 container and its
//! groups, see `type1_set`; or one iommufd, see `iommufd_set`), the devices on the PCI
//! bus, and the DMA mappings of guest RAM (IOVA = guest physical address). The live-update
//! steps for VFIO live here, in order, save beside restore; restart and transfer mode share
//! them (a restore is [`VfioSet::adopt`] then [`VfioSet::restore_devices`]).

use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use super::device::{AdoptedIrqs, DeviceError, VfioPciDevice};
use super::ioctl::{CprFeatures, Device, OpenedDevice, VfioError};
use super::iommufd::IommufdError;
use super::iommufd_set::{IommufdBackend, VfioIommufdState};
use super::state::VfioPciState;
use super::type1_set::Type1Backend;
use crate::machine::memory::GuestRam;
use crate::pci::{lock, GsiRouter, PciBus, PciError, MMIO_WINDOW_START};

pub use super::type1_set::{restart_blocker, vmlck, vmpin, VfioContainerState, VfioDeviceRef};

/// `-device vfio-pci,host=BDF[,id=ID][,iommufd=OBJ]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VfioDeviceConfig {
    pub host: String,
    pub id: String,
    /// The `-object iommufd` the device uses; none: the type1 container.
    #[serde(default)]
    pub iommufd: Option<String>,
}

/// First KVM memslot used for BARs (RAM uses the slots below); 8 per device.
const BAR_SLOT_BASE: u32 = 16;

cpr_format::state! {
    /// One DMA mapping of a guest RAM block, and the file pages behind it: after exec the
    /// new address must map the very same pages, which the kernel does not check.
    #[derive(Eq)]
    pub struct DmaMappingState {
        #[hint(addr)] pub iova: u64,
        #[hint(hex)] pub size: u64,
        /// The RAM block (cpr-format RAM block name).
        pub block: String,
        #[hint(hex)] pub file_offset: u64,
        pub st_dev: u64,
        pub st_ino: u64,
    }
}

/// The back-end section of a saved set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VfioBackendState {
    Container(VfioContainerState),
    Iommufd(VfioIommufdState),
}

impl VfioBackendState {
    pub fn mappings(&self) -> &[DmaMappingState] {
        match self {
            VfioBackendState::Container(s) => &s.mappings,
            VfioBackendState::Iommufd(s) => &s.mappings,
        }
    }

    /// Each device as (id, host, group or iommufd device id), in device order.
    fn device_refs(&self) -> Vec<(String, String, u32)> {
        match self {
            VfioBackendState::Container(s) => s
                .devices
                .iter()
                .map(|r| (r.id.clone(), r.host.clone(), r.group))
                .collect(),
            VfioBackendState::Iommufd(s) => s
                .devices
                .iter()
                .map(|r| (r.id.clone(), r.host.clone(), r.devid))
                .collect(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VfioSetError {
    #[error(transparent)]
    Vfio(#[from] VfioError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Iommufd(#[from] IommufdError),
    #[error("cannot create the KVM VFIO device or add {what} to it")]
    KvmVfio {
        what: String,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot plug {id} into the PCI bus")]
    Bus {
        id: String,
        #[source]
        source: PciError,
    },
    #[error(
        "guest RAM block {block} has no fd, so it cannot be mapped for DMA across a live update"
    )]
    AnonymousRam { block: String },
    #[error("cannot stat the fd of RAM block {block}")]
    Stat {
        block: String,
        #[source]
        source: std::io::Error,
    },
    #[error("DMA mapping at IOVA {iova:#x} was of {saved}, the new process maps {given}: not the same pages")]
    NotSamePages {
        iova: u64,
        saved: String,
        given: String,
    },
    #[error("the fd manifest has no {name}")]
    MissingFd { name: String },
    #[error("saved VFIO state has no vfio.pci section for device {id}")]
    MissingDevice { id: String },
    #[error(
        "VFIO_IOMMU_UNMAP_DMA(VADDR) invalidated {done:#x} of the {total:#x} bytes of DMA \
         mappings (this kernel lets only their owner do it), so they cannot move to another \
         process"
    )]
    PartialRelease { done: u64, total: u64 },
    #[error(
        "the kernel charges the {mib} MiB of pinned guest RAM of a DMA mapping to the \
         process that maps it, and this one may lock {limit} (RLIMIT_MEMLOCK) unless it has \
         CAP_IPC_LOCK"
    )]
    MemlockLimit {
        limit: String,
        mib: u64,
        #[source]
        source: VfioError,
    },
}

/// Reboot mode does not keep the device running across the update: only a guest in S3
/// (which re-initialises its devices on wake-up) may use it.
pub fn reboot_blocker(ids: &[String], guest_suspended: bool) -> Option<String> {
    (!ids.is_empty() && !guest_suspended).then(|| {
        format!(
            "VFIO device(s) {}: reboot mode needs the guest suspended (S3) first; \
             use restart mode, or suspend the guest",
            ids.join(", ")
        )
    })
}

pub(super) struct Mapping {
    pub(super) iova: u64,
    pub(super) size: u64,
    pub(super) vaddr: u64,
    /// The RAM block's fd (iommufd maps the file, not the address).
    pub(super) fd: RawFd,
    pub(super) state: DmaMappingState,
}

/// How the devices get their IOMMU.
enum Backend {
    Type1(Type1Backend),
    Iommufd(IommufdBackend),
}

pub struct VfioSet {
    backend: Backend,
    /// Each device with its group (type1) or its device id in the iommufd.
    devices: Vec<(VfioDeviceConfig, u32, Arc<Mutex<VfioPciDevice>>)>,
    mappings: Vec<Mapping>,
    /// A live update gave the DMA mappings away (`release_dma`: type1 host addresses
    /// invalidated; iommufd: a successor may take the accounting) and nothing took them
    /// back yet: another process may own the mappings now.
    dma_released: bool,
    /// A live update detached the irqfds (`detach_irqfds`): interrupts latch.
    irqfds_held: bool,
}

/// The IOMMU side of assigned devices, adopted by a new process before the devices
/// (transfer mode: while the guest still runs in the old process): the container and
/// group fds or the iommufd, every DMA mapping checked to be this process's same pages and
/// made this process's, and the device fds with their region tables.
pub struct AdoptedContainer {
    backend: Backend,
    mappings: Vec<Mapping>,
    /// Device fds with their region tables read, by device id.
    devices: Vec<(String, OpenedDevice)>,
    /// Devices whose BARs are already mapped in this VM ([`AdoptedContainer::prepare_devices`]).
    prepared: Vec<(String, VfioPciDevice)>,
}

impl AdoptedContainer {
    /// Transfer mode, before the pause: each device's model, BAR mmaps and memslots in this
    /// VM from `previews` (its `vfio.pci` state as the running guest has it now). Nothing is
    /// written to the device and no interrupt is touched; the final state at the pause
    /// moves a BAR the guest moved meanwhile.
    pub fn prepare_devices(
        &mut self,
        state: &VfioBackendState,
        previews: &[(String, VfioPciState)],
        router: &Arc<GsiRouter>,
    ) -> Result<(), VfioSetError> {
        for (i, (id, _, _)) in state.device_refs().into_iter().enumerate() {
            let (Some(pos), Some((_, preview))) = (
                self.devices.iter().position(|(d, _)| *d == id),
                previews.iter().find(|(d, _)| *d == id),
            ) else {
                continue;
            };
            let opened = self.devices.swap_remove(pos).1;
            let d = VfioPciDevice::prepare_restore(
                opened,
                preview,
                router.clone(),
                BAR_SLOT_BASE + 8 * i as u32,
            )?;
            self.prepared.push((id, d));
        }
        Ok(())
    }
}

/// `VMM_VFIO_TRACE=1` prints the VFIO steps of a live update with their durations to stderr
/// (the lab test shows them next to the pause).
pub fn trace(what: std::fmt::Arguments<'_>) {
    if std::env::var_os("VMM_VFIO_TRACE").is_some_and(|v| v == "1") {
        eprintln!("vmm: vfio: {what}");
    }
}

/// Milliseconds since `since`, for the trace.
pub fn ms(since: std::time::Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// The DMA mappings guest RAM needs, with the identity of the pages behind each.
pub(super) fn ram_mappings(ram: &GuestRam) -> Result<Vec<Mapping>, VfioSetError> {
    ram.blocks()
        .iter()
        .map(|b| {
            let block = b.name().to_string();
            let file = b.file.as_ref().ok_or_else(|| VfioSetError::AnonymousRam {
                block: block.clone(),
            })?;
            let md = file.metadata().map_err(|source| VfioSetError::Stat {
                block: block.clone(),
                source,
            })?;
            Ok(Mapping {
                iova: b.desc.guest_addr,
                size: b.desc.size,
                vaddr: b.host_addr(),
                fd: std::os::fd::AsRawFd::as_raw_fd(file),
                state: DmaMappingState {
                    iova: b.desc.guest_addr,
                    size: b.desc.size,
                    block,
                    file_offset: b.desc.file_offset,
                    st_dev: md.dev(),
                    st_ino: md.ino(),
                },
            })
        })
        .collect()
}

impl VfioSet {
    /// Assigns the devices: through the type1 container, or through the iommufd they name
    /// (all devices use the same; the command line checks it). The IOMMU first, then all
    /// of guest RAM mapped for DMA, then each device opened, reset and plugged.
    pub fn open(
        configs: &[VfioDeviceConfig],
        ram: &GuestRam,
        router: &Arc<GsiRouter>,
        bus: &PciBus,
    ) -> Result<VfioSet, VfioSetError> {
        let mappings = ram_mappings(ram)?;
        let (backend, devs) = if let Some(obj) = configs.iter().find_map(|c| c.iommufd.clone()) {
            let (b, devs) = IommufdBackend::open(&obj, configs, &mappings, router.vm())?;
            (Backend::Iommufd(b), devs)
        } else {
            let (b, devs) = Type1Backend::open(configs, &mappings)?;
            (Backend::Type1(b), devs)
        };
        let mut set = VfioSet {
            backend,
            devices: Vec::new(),
            mappings,
            dma_released: false,
            irqfds_held: false,
        };
        let mut mmio_next = MMIO_WINDOW_START;
        for (i, (c, key, dev)) in devs.into_iter().enumerate() {
            let mut d = VfioPciDevice::new(
                &c.host,
                dev,
                router.clone(),
                BAR_SLOT_BASE + 8 * i as u32,
                &mut mmio_next,
                // PCI interrupts use IOAPIC pins 16..23 (GSIs 0..15 are ISA's).
                16 + (i % 8) as u32,
            )?;
            d.set_id(&c.id);
            let d = Arc::new(Mutex::new(d));
            bus.add(d.clone()).map_err(|source| VfioSetError::Bus {
                id: c.id.clone(),
                source,
            })?;
            set.devices.push((c, key, d));
        }
        Ok(set)
    }

    /// The type1 container's live-update features (None with iommufd).
    pub fn features(&self) -> Option<CprFeatures> {
        match &self.backend {
            Backend::Type1(b) => Some(b.features),
            Backend::Iommufd(_) => None,
        }
    }

    /// Whether the devices use iommufd (else the type1 container).
    pub fn is_iommufd(&self) -> bool {
        matches!(self.backend, Backend::Iommufd(_))
    }

    /// Why a live update that keeps the devices running (restart or transfer mode) cannot
    /// move their DMA mappings to the new process, if it cannot.
    pub fn restart_blocker(&self) -> Option<String> {
        match &self.backend {
            Backend::Type1(b) => restart_blocker(&self.ids(), b.features),
            Backend::Iommufd(b) => super::iommufd_set::restart_blocker(&self.ids(), b.features),
        }
    }

    /// Why reboot mode cannot be used, if it cannot.
    pub fn reboot_blocker(&self, guest_suspended: bool) -> Option<String> {
        reboot_blocker(&self.ids(), guest_suspended)
    }

    pub fn ids(&self) -> Vec<String> {
        self.devices.iter().map(|(c, _, _)| c.id.clone()).collect()
    }

    pub fn devices(&self) -> impl Iterator<Item = &Arc<Mutex<VfioPciDevice>>> {
        self.devices.iter().map(|(_, _, d)| d)
    }

    /// cpr-save, VFIO part (vCPUs already stopped): detach irqfds so interrupts latch in
    /// the eventfds, then (type1) invalidate the DMA mappings' host addresses. Device DMA
    /// into guest RAM keeps working (the pages stay pinned and mapped in the IOMMU).
    /// iommufd's file mappings have no host address: nothing to invalidate.
    pub fn prepare_update(&mut self) -> Result<(), VfioSetError> {
        let t = std::time::Instant::now();
        self.detach_irqfds()?;
        let t_unmap = std::time::Instant::now();
        self.release_dma()?;
        match self.backend {
            Backend::Type1(_) => trace(format_args!(
                "cpr-save: irqfds detached and DMA vaddr invalidated ({} mappings) in {:.3} ms (unmap {:.3} ms)",
                self.mappings.len(),
                ms(t),
                ms(t_unmap)
            )),
            Backend::Iommufd(_) => trace(format_args!(
                "cpr-save: irqfds detached in {:.3} ms; {} iommufd file mappings stay as they are",
                ms(t),
                self.mappings.len()
            )),
        }
        Ok(())
    }

    /// Lets another process image or another process take the DMA mappings over. type1:
    /// invalidates this process's host address of every mapping (UNMAP_DMA with
    /// FLAG_VADDR); iommufd: nothing to do (file mappings; the new owner takes the
    /// accounting with IOMMU_IOAS_CHANGE_PROCESS). The IOMMU mappings and the pinned pages
    /// stay: device DMA goes on.
    pub fn release_dma(&mut self) -> Result<(), VfioSetError> {
        self.dma_released = true;
        match &self.backend {
            Backend::Type1(b) => b.release(&self.mappings),
            Backend::Iommufd(_) => Ok(()),
        }
    }

    /// Makes this process the owner of the DMA mappings again, taking them from a
    /// transfer-mode successor that took them and then failed or died. type1: every
    /// mapping gets back this process's host address (a successor's invalidated first);
    /// iommufd: IOMMU_IOAS_CHANGE_PROCESS from here (nothing moves if no one took them).
    /// The locked-page accounting comes back with them.
    pub fn reclaim_dma(&mut self) -> Result<(), VfioSetError> {
        match &self.backend {
            Backend::Type1(b) => {
                b.reclaim(&self.mappings)?;
                trace(format_args!(
                    "DMA vaddr reclaimed by this process; VmLck {}",
                    vmlck()
                ));
            }
            Backend::Iommufd(b) => {
                b.reclaim()?;
                trace(format_args!(
                    "DMA mappings reclaimed by this process (IOMMU_IOAS_CHANGE_PROCESS); VmPin {}",
                    vmpin()
                ));
            }
        }
        self.dma_released = false;
        Ok(())
    }

    /// Stops KVM injection for every device: interrupts latch in the eventfds.
    pub fn detach_irqfds(&mut self) -> Result<(), VfioSetError> {
        self.irqfds_held = true;
        for d in self.devices() {
            lock(d).detach_irqfds()?;
        }
        Ok(())
    }

    /// Attaches every device's irqfds (KVM injects what the eventfds latched, once).
    pub fn attach_irqfds(&mut self) -> Result<(), VfioSetError> {
        for d in self.devices() {
            lock(d).attach_irqfds()?;
        }
        self.irqfds_held = false;
        Ok(())
    }

    /// The update was abandoned (before exec, a failed exec, or a transfer that did not
    /// reach `go`): give the mappings back to this process and re-attach the irqfds;
    /// latched interrupts get injected.
    pub fn cancel_update(&mut self) -> Result<(), VfioSetError> {
        let t = std::time::Instant::now();
        let was = (self.dma_released, self.irqfds_held);
        if self.dma_released {
            self.reclaim_dma()?;
        }
        if self.irqfds_held {
            self.attach_irqfds()?;
        }
        if was != (false, false) {
            let what = match self.backend {
                Backend::Type1(_) => "DMA vaddr restored and irqfds attached",
                Backend::Iommufd(_) => "DMA mappings reclaimed and irqfds attached",
            };
            trace(format_args!("update abandoned: {what} in {:.3} ms", ms(t)));
        }
        Ok(())
    }

    /// The back-end's section (`vfio.container` or `vfio.iommufd`) and one `vfio.pci`
    /// section per device (instance = id).
    pub fn save(&self) -> (VfioBackendState, Vec<(String, VfioPciState)>) {
        let t = std::time::Instant::now();
        let state = self.backend_state();
        let devices: Vec<_> = self
            .devices
            .iter()
            .map(|(c, _, d)| (c.id.clone(), lock(d).save()))
            .collect();
        trace(format_args!(
            "vfio.pci state of {} devices read in {:.3} ms",
            devices.len(),
            ms(t)
        ));
        (state, devices)
    }

    /// The back-end section alone: devices and DMA mappings (a transfer sends it at hello,
    /// before the pause, so the successor can take the mappings over while the guest runs).
    pub fn backend_state(&self) -> VfioBackendState {
        let mappings = self.mappings.iter().map(|m| m.state.clone()).collect();
        let devices = self.devices.iter().map(|(c, key, _)| (c, *key));
        match &self.backend {
            Backend::Type1(b) => VfioBackendState::Container(b.save(devices, mappings)),
            Backend::Iommufd(b) => VfioBackendState::Iommufd(b.save(devices, mappings)),
        }
    }

    /// Every fd the new process must inherit, named for the manifest: vfio-container and
    /// vfio-group-N (type1) or vfio-iommufd, then vfio-device-ID, vfio-irq-ID-msi0 / -msixN.
    pub fn fds(&self) -> Vec<(String, RawFd)> {
        let mut v = match &self.backend {
            Backend::Type1(b) => b.fds(),
            Backend::Iommufd(b) => vec![(super::iommufd_set::IOMMUFD_FD.to_string(), b.fd())],
        };
        for d in self.devices() {
            v.extend(lock(d).fds());
        }
        v
    }

    /// After exec: adopts the inherited fds (no reset, no SET_IRQS), takes the DMA
    /// mappings over ([`VfioSet::adopt`]), then rebuilds each device in the new VM with its
    /// routes and irqfds ([`VfioSet::restore_devices`]).
    pub fn restore(
        state: &VfioBackendState,
        devices: &[(String, VfioPciState)],
        take_fd: &mut dyn FnMut(&str) -> Option<OwnedFd>,
        ram: &GuestRam,
        router: &Arc<GsiRouter>,
        bus: &PciBus,
    ) -> Result<VfioSet, VfioSetError> {
        let t = std::time::Instant::now();
        let adopted = Self::adopt(state, take_fd, ram, router.vm())?;
        let set = Self::restore_devices(adopted, state, devices, take_fd, router, bus, false)?;
        trace(format_args!("cpr-load: VFIO restored in {:.3} ms", ms(t)));
        Ok(set)
    }

    /// The first half of [`VfioSet::restore`]: checks each saved mapping is backed by the
    /// same file pages here (dev, inode, offset, size), then adopts the back-end and makes
    /// this process the mappings' owner (the kernel moves the locked-page accounting to
    /// it). type1: container and group fds, every mapping given this process's address
    /// (MAP_DMA FLAG_VADDR; its previous owner must have invalidated its own). iommufd: the
    /// iommufd, whose IOAS still maps guest RAM by file, and IOMMU_IOAS_CHANGE_PROCESS.
    /// Then the device fds and region tables (iommufd: each also added to the KVM VFIO
    /// device of `vm`). Nothing here depends on guest state.
    pub fn adopt(
        state: &VfioBackendState,
        take_fd: &mut dyn FnMut(&str) -> Option<OwnedFd>,
        ram: &GuestRam,
        vm: &VmFd,
    ) -> Result<AdoptedContainer, VfioSetError> {
        let mut take = |name: String| take_fd(&name).ok_or(VfioSetError::MissingFd { name });
        let now = ram_mappings(ram)?;
        let mappings = state
            .mappings()
            .iter()
            .map(|saved| same_pages(saved, &now))
            .collect::<Result<Vec<_>, _>>()?;
        let mut backend = match state {
            VfioBackendState::Container(s) => {
                Backend::Type1(Type1Backend::adopt(s, &mut take, &mappings)?)
            }
            VfioBackendState::Iommufd(s) => {
                Backend::Iommufd(IommufdBackend::adopt(s, &mut take, &mappings)?)
            }
        };
        let t = std::time::Instant::now();
        let devices = state
            .device_refs()
            .into_iter()
            .map(|(id, host, _)| {
                let dev = Device::from_fd(&host, take(format!("vfio-device-{id}"))?)?;
                if let Backend::Iommufd(b) = &mut backend {
                    b.add_to_kvm(vm, &id, dev.fd())?;
                }
                Ok((id, dev.open_regions()?))
            })
            .collect::<Result<Vec<_>, VfioSetError>>()?;
        trace(format_args!(
            "{} device fds and region tables read in {:.3} ms",
            devices.len(),
            ms(t)
        ));
        Ok(AdoptedContainer {
            backend,
            mappings,
            devices,
            prepared: Vec::new(),
        })
    }

    /// The second half of [`VfioSet::restore`]: each device adopted from its fd (no reset,
    /// no SET_IRQS) with its interrupt eventfds, BAR memslots and MSI routes in this VM.
    /// `hold_irqfds`: leave the irqfds detached (interrupts keep latching) until
    /// [`VfioSet::attach_irqfds`]: a transfer-mode successor attaches them only once the
    /// guest is its own, so an interrupt is never consumed by a VM that may not run.
    pub fn restore_devices(
        mut adopted: AdoptedContainer,
        state: &VfioBackendState,
        devices: &[(String, VfioPciState)],
        take_fd: &mut dyn FnMut(&str) -> Option<OwnedFd>,
        router: &Arc<GsiRouter>,
        bus: &PciBus,
        hold_irqfds: bool,
    ) -> Result<VfioSet, VfioSetError> {
        let mut take = |name: String| take_fd(&name).ok_or(VfioSetError::MissingFd { name });
        let mut opened = std::mem::take(&mut adopted.devices);
        let mut prepared = std::mem::take(&mut adopted.prepared);
        let mut set = VfioSet {
            backend: adopted.backend,
            devices: Vec::new(),
            mappings: adopted.mappings,
            dma_released: false,
            irqfds_held: hold_irqfds,
        };
        let iommufd = match &set.backend {
            Backend::Iommufd(b) => Some(b.object.clone()),
            Backend::Type1(_) => None,
        };
        for (i, (id, host, key)) in state.device_refs().into_iter().enumerate() {
            let pci = devices
                .iter()
                .find(|(d, _)| *d == id)
                .map(|(_, s)| s)
                .ok_or_else(|| VfioSetError::MissingDevice { id: id.clone() })?;
            let t_dev = std::time::Instant::now();
            let efds =
                |kind: &str,
                 n: u32,
                 take: &mut dyn FnMut(String) -> Result<OwnedFd, VfioSetError>| {
                    (0..n)
                        .map(|v| {
                            let fd = take(format!("vfio-irq-{id}-{kind}{v}"))?;
                            // SAFETY: the fd is an eventfd the old process created (the
                            // manifest names it so) and we own it now.
                            Ok(unsafe {
                                <EventFd as std::os::fd::FromRawFd>::from_raw_fd(
                                    std::os::fd::IntoRawFd::into_raw_fd(fd),
                                )
                            })
                        })
                        .collect::<Result<Vec<_>, VfioSetError>>()
                };
            let msi = efds("msi", pci.msi_vectors, &mut take)?;
            let msix = efds("msix", pci.msix_vectors, &mut take)?;
            let intx = if pci.intx.enabled {
                let mut two = efds("intx", 1, &mut |n| take(n.replace("intx0", "intx")))?;
                let mut resample = efds("intx", 1, &mut |n| {
                    take(n.replace("intx0", "intx-resample"))
                })?;
                match (two.pop(), resample.pop()) {
                    (Some(t), Some(r)) => Some((t, r)),
                    _ => None,
                }
            } else {
                None
            };
            let irqs = AdoptedIrqs { msi, msix, intx };
            let mut d = match prepared.iter().position(|(d, _)| *d == id) {
                Some(p) => {
                    let mut d = prepared.swap_remove(p).1;
                    d.finish_restore(pci, irqs, hold_irqfds)?;
                    d
                }
                None => {
                    let p = opened.iter().position(|(d, _)| *d == id).ok_or_else(|| {
                        VfioSetError::MissingFd {
                            name: format!("vfio-device-{id}"),
                        }
                    })?;
                    VfioPciDevice::restore(
                        opened.swap_remove(p).1,
                        pci,
                        irqs,
                        router.clone(),
                        BAR_SLOT_BASE + 8 * i as u32,
                        hold_irqfds,
                    )?
                }
            };
            d.set_id(&id);
            trace(format_args!(
                "{} ({}) adopted without reset in {:.3} ms; interrupts latched during the pause{}: [{}]",
                id,
                host,
                ms(t_dev),
                if hold_irqfds { ", delivered when the irqfds attach" } else { ", delivered now" },
                d.latched_at_restore().join(" ")
            ));
            let d = Arc::new(Mutex::new(d));
            bus.add(d.clone()).map_err(|source| VfioSetError::Bus {
                id: id.clone(),
                source,
            })?;
            let iommufd = iommufd.clone();
            set.devices
                .push((VfioDeviceConfig { host, id, iommufd }, key, d));
        }
        Ok(set)
    }

    /// The raw container fd, or the iommufd (tests and diagnostics).
    pub fn container_fd(&self) -> RawFd {
        match &self.backend {
            Backend::Type1(b) => b.fd(),
            Backend::Iommufd(b) => b.fd(),
        }
    }
}

/// The saved mapping at its IOVA must be backed by the same file pages in this process (the
/// kernel does not check it for type1; for iommufd it catches a new process whose RAM is not
/// the memfd the device DMAs into).
fn same_pages(saved: &DmaMappingState, now: &[Mapping]) -> Result<Mapping, VfioSetError> {
    let given = now.iter().find(|m| m.iova == saved.iova);
    let same = given.is_some_and(|g| {
        g.state.size == saved.size
            && g.state.st_dev == saved.st_dev
            && g.state.st_ino == saved.st_ino
            && g.state.file_offset == saved.file_offset
    });
    let Some(g) = given.filter(|_| same) else {
        let describe = |s: &DmaMappingState| {
            format!(
                "{} (dev {:#x} inode {} offset {:#x} size {:#x})",
                s.block, s.st_dev, s.st_ino, s.file_offset, s.size
            )
        };
        return Err(VfioSetError::NotSamePages {
            iova: saved.iova,
            saved: describe(saved),
            given: given.map_or("nothing".into(), |g| describe(&g.state)),
        });
    };
    Ok(Mapping {
        iova: g.iova,
        size: g.size,
        vaddr: g.vaddr,
        fd: g.fd,
        state: g.state.clone(),
    })
}
