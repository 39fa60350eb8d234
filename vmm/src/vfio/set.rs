//! Every assigned device of a machine: its IOMMU back-end (one type1 container and its
//! groups, or one iommufd; see `iommufd_set`), the devices on the PCI bus, and the DMA
//! mappings of guest RAM (IOVA = guest physical address). The live-update steps for VFIO
//! live here, in order, save beside restore.

use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::device::{DeviceError, VfioPciDevice};
use super::ioctl::{group_of, Container, CprFeatures, Device, Group, VfioError};
use super::iommufd::IommufdError;
use super::iommufd_set::{IommufdBackend, VfioIommufdState};
use super::state::VfioPciState;
use crate::machine::memory::GuestRam;
use crate::pci::{lock, GsiRouter, PciBus, PciError, MMIO_WINDOW_START};

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

    /// An assigned device and its group.
    #[derive(Eq)]
    pub struct VfioDeviceRef {
        pub id: String,
        pub host: String,
        pub group: u32,
    }

    /// The container: groups, devices and DMA mappings (fds: vfio-container,
    /// vfio-group-N, vfio-device-ID in the manifest).
    #[section(name = "vfio.container", version = 1, min_version = 1, required = true)]
    #[derive(Eq)]
    pub struct VfioContainerState {
        pub groups: Vec<u32>,
        pub devices: Vec<VfioDeviceRef>,
        pub mappings: Vec<DmaMappingState>,
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
}

/// Restart mode moves the DMA mappings to the new process with VFIO_UPDATE_VADDR (and
/// invalidates them in one call with VFIO_UNMAP_ALL): without them it cannot keep devices.
pub fn restart_blocker(ids: &[String], features: CprFeatures) -> Option<String> {
    let missing: Vec<&str> = [
        (!features.update_vaddr).then_some("VFIO_UPDATE_VADDR"),
        (!features.unmap_all).then_some("VFIO_UNMAP_ALL"),
    ]
    .into_iter()
    .flatten()
    .collect();
    (!ids.is_empty() && !missing.is_empty()).then(|| {
        format!(
            "VFIO device(s) {}: the type1 container lacks {} (probed after VFIO_SET_IOMMU), \
             so its DMA mappings cannot move to a new process",
            ids.join(", "),
            missing.join(" and ")
        )
    })
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
    Type1 {
        container: Container,
        features: CprFeatures,
        groups: Vec<Group>,
    },
    Iommufd(IommufdBackend),
}

pub struct VfioSet {
    backend: Backend,
    /// Each device with its group (type1) or its device id in the iommufd.
    devices: Vec<(VfioDeviceConfig, u32, Arc<Mutex<VfioPciDevice>>)>,
    mappings: Vec<Mapping>,
    /// `prepare_update` ran and was not undone: host addresses invalid, irqfds detached.
    prepared: bool,
}

/// `VMM_VFIO_TRACE=1` prints the VFIO steps of a live update with their durations to stderr
/// (the lab test shows them next to the pause).
pub(crate) fn trace(what: std::fmt::Arguments<'_>) {
    if std::env::var_os("VMM_VFIO_TRACE").is_some_and(|v| v == "1") {
        eprintln!("vmm: vfio: {what}");
    }
}

pub(crate) fn ms(since: std::time::Instant) -> f64 {
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
            Self::open_type1(configs, &mappings)?
        };
        let mut set = VfioSet {
            backend,
            devices: Vec::new(),
            mappings,
            prepared: false,
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

    /// The type1 container with every device's group, RAM mapped by host address.
    #[allow(clippy::type_complexity)]
    fn open_type1(
        configs: &[VfioDeviceConfig],
        mappings: &[Mapping],
    ) -> Result<(Backend, Vec<(VfioDeviceConfig, u32, Device)>), VfioSetError> {
        let container = Container::open()?;
        let mut groups: Vec<Group> = Vec::new();
        let mut features = CprFeatures {
            update_vaddr: false,
            unmap_all: false,
        };
        let mut gids = Vec::new();
        for c in configs {
            let gid = group_of(&c.host)?;
            if !groups.iter().any(|g| g.id == gid) {
                let g = Group::open(gid)?;
                g.set_container(&container)?;
                if groups.is_empty() {
                    let before = container.cpr_features()?;
                    container.set_iommu()?;
                    // Only now does type1 answer these truthfully.
                    features = container.cpr_features()?;
                    trace(format_args!(
                        "container: before VFIO_SET_IOMMU {before:?}, after {features:?}"
                    ));
                }
                groups.push(g);
            }
            gids.push(gid);
        }
        for m in mappings {
            container.map_dma(m.iova, m.size, m.vaddr)?;
        }
        let mut devs = Vec::new();
        for (c, gid) in configs.iter().zip(gids) {
            let group = groups
                .iter()
                .find(|g| g.id == gid)
                .ok_or(VfioError::NotViable { group: gid })?;
            devs.push((c.clone(), gid, group.device(&c.host)?));
        }
        Ok((
            Backend::Type1 {
                container,
                features,
                groups,
            },
            devs,
        ))
    }

    /// The type1 container's live-update features (None with iommufd).
    pub fn features(&self) -> Option<CprFeatures> {
        match &self.backend {
            Backend::Type1 { features, .. } => Some(*features),
            Backend::Iommufd(_) => None,
        }
    }

    /// Whether the devices use iommufd (else the type1 container).
    pub fn is_iommufd(&self) -> bool {
        matches!(self.backend, Backend::Iommufd(_))
    }

    /// Why restart-mode live update cannot keep these devices, if it cannot.
    pub fn restart_blocker(&self) -> Option<String> {
        match &self.backend {
            Backend::Type1 { features, .. } => restart_blocker(&self.ids(), *features),
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
        self.prepared = true;
        for d in self.devices() {
            lock(d).detach_irqfds()?;
        }
        let t_unmap = std::time::Instant::now();
        match &self.backend {
            Backend::Type1 {
                container,
                features,
                ..
            } => {
                if features.unmap_all {
                    container.unmap_vaddr_all()?;
                } else {
                    for m in &self.mappings {
                        container.unmap_vaddr(m.iova, m.size)?;
                    }
                }
                trace(format_args!(
                    "cpr-save: irqfds detached and DMA vaddr invalidated ({} mappings) in {:.3} ms (unmap {:.3} ms)",
                    self.mappings.len(),
                    ms(t),
                    ms(t_unmap)
                ));
            }
            Backend::Iommufd(_) => trace(format_args!(
                "cpr-save: irqfds detached in {:.3} ms; {} iommufd file mappings stay as they are",
                ms(t),
                self.mappings.len()
            )),
        }
        Ok(())
    }

    /// The update failed before exec (or exec failed): give the mappings back their
    /// addresses in this process (type1) and re-attach the irqfds; latched interrupts get
    /// injected.
    pub fn cancel_update(&mut self) -> Result<(), VfioSetError> {
        if !self.prepared {
            return Ok(());
        }
        let t = std::time::Instant::now();
        self.prepared = false;
        if let Backend::Type1 { container, .. } = &self.backend {
            for m in &self.mappings {
                container.map_vaddr(m.iova, m.size, m.vaddr)?;
            }
        }
        for d in self.devices() {
            lock(d).attach_irqfds()?;
        }
        let what = match self.backend {
            Backend::Type1 { .. } => "DMA vaddr restored and irqfds attached",
            Backend::Iommufd(_) => "irqfds attached",
        };
        trace(format_args!("update abandoned: {what} in {:.3} ms", ms(t)));
        Ok(())
    }

    /// The back-end's section (`vfio.container` or `vfio.iommufd`) and one `vfio.pci`
    /// section per device (instance = id).
    pub fn save(&self) -> (VfioBackendState, Vec<(String, VfioPciState)>) {
        let mappings = self.mappings.iter().map(|m| m.state.clone()).collect();
        let state = match &self.backend {
            Backend::Type1 { groups, .. } => VfioBackendState::Container(VfioContainerState {
                groups: groups.iter().map(|g| g.id).collect(),
                devices: self
                    .devices
                    .iter()
                    .map(|(c, gid, _)| VfioDeviceRef {
                        id: c.id.clone(),
                        host: c.host.clone(),
                        group: *gid,
                    })
                    .collect(),
                mappings,
            }),
            Backend::Iommufd(b) => VfioBackendState::Iommufd(b.save(
                self.devices.iter().map(|(c, devid, _)| (c, *devid)),
                mappings,
            )),
        };
        let devices = self
            .devices
            .iter()
            .map(|(c, _, d)| (c.id.clone(), lock(d).save()))
            .collect();
        (state, devices)
    }

    /// Every fd the new process must inherit, named for the manifest: vfio-container and
    /// vfio-group-N (type1) or vfio-iommufd, then vfio-device-ID, vfio-irq-ID-msi0 / -msixN.
    pub fn fds(&self) -> Vec<(String, RawFd)> {
        let mut v = Vec::new();
        match &self.backend {
            Backend::Type1 {
                container, groups, ..
            } => {
                v.push(("vfio-container".to_string(), container.fd()));
                for g in groups {
                    v.push((format!("vfio-group-{}", g.id), g.fd()));
                }
            }
            Backend::Iommufd(b) => v.push((super::iommufd_set::IOMMUFD_FD.to_string(), b.fd())),
        }
        for d in self.devices() {
            v.extend(lock(d).fds());
        }
        v
    }

    /// After exec: adopts the inherited fds (no reset, no SET_IRQS). type1: checks each
    /// mapping's new address maps the same file pages and moves the mappings there
    /// (MAP_DMA FLAG_VADDR). iommufd: checks the same, and moves the pinned-page accounting
    /// to this process (IOMMU_IOAS_CHANGE_PROCESS). Then rebuilds each device in the new VM
    /// with its routes and irqfds.
    pub fn restore(
        state: &VfioBackendState,
        devices: &[(String, VfioPciState)],
        take_fd: &mut dyn FnMut(&str) -> Option<OwnedFd>,
        ram: &GuestRam,
        router: &Arc<GsiRouter>,
        bus: &PciBus,
    ) -> Result<VfioSet, VfioSetError> {
        let t = std::time::Instant::now();
        let mut take = |name: String| take_fd(&name).ok_or(VfioSetError::MissingFd { name });
        let now = ram_mappings(ram)?;
        let (saved_mappings, refs): (&[DmaMappingState], Vec<(String, String, u32)>) = match state {
            VfioBackendState::Container(s) => (
                &s.mappings,
                s.devices
                    .iter()
                    .map(|r| (r.id.clone(), r.host.clone(), r.group))
                    .collect(),
            ),
            VfioBackendState::Iommufd(s) => (
                &s.mappings,
                s.devices
                    .iter()
                    .map(|r| (r.id.clone(), r.host.clone(), r.devid))
                    .collect(),
            ),
        };
        let mut mappings = Vec::new();
        for saved in saved_mappings {
            mappings.push(same_pages(saved, &now)?);
        }
        let backend = match state {
            VfioBackendState::Container(s) => {
                let container = Container::from_fd(take("vfio-container".into())?);
                let features = container.cpr_features()?;
                let groups = s
                    .groups
                    .iter()
                    .map(|&id| Ok(Group::from_fd(id, take(format!("vfio-group-{id}"))?)))
                    .collect::<Result<Vec<_>, VfioSetError>>()?;
                for g in &mappings {
                    container.map_vaddr(g.iova, g.size, g.vaddr)?;
                    trace(format_args!(
                        "cpr-load: IOVA {:#x} size {:#x} ({}) re-mapped at vaddr {:#x}: same file pages checked",
                        g.iova, g.size, g.state.block, g.vaddr
                    ));
                }
                Backend::Type1 {
                    container,
                    features,
                    groups,
                }
            }
            VfioBackendState::Iommufd(s) => {
                Backend::Iommufd(IommufdBackend::restore(s, &mut take, &mappings)?)
            }
        };
        let mut set = VfioSet {
            backend,
            devices: Vec::new(),
            mappings,
            prepared: false,
        };
        for (i, (id, host, key)) in refs.into_iter().enumerate() {
            let pci = devices
                .iter()
                .find(|(d, _)| *d == id)
                .map(|(_, s)| s)
                .ok_or_else(|| VfioSetError::MissingDevice { id: id.clone() })?;
            let t_dev = std::time::Instant::now();
            let dev = Device::from_fd(&host, take(format!("vfio-device-{id}"))?)?;
            if let Backend::Iommufd(b) = &mut set.backend {
                b.add_to_kvm(router.vm(), &id, dev.fd())?;
            }
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
            let mut d = VfioPciDevice::restore(
                dev,
                pci,
                msi,
                msix,
                intx,
                router.clone(),
                BAR_SLOT_BASE + 8 * i as u32,
            )?;
            d.set_id(&id);
            trace(format_args!(
                "cpr-load: {} ({}) adopted without reset in {:.3} ms; interrupts latched during the pause, delivered now: [{}]",
                id,
                host,
                ms(t_dev),
                d.latched_at_restore().join(" ")
            ));
            let d = Arc::new(Mutex::new(d));
            bus.add(d.clone()).map_err(|source| VfioSetError::Bus {
                id: id.clone(),
                source,
            })?;
            let iommufd = match &set.backend {
                Backend::Iommufd(b) => Some(b.object.clone()),
                Backend::Type1 { .. } => None,
            };
            set.devices
                .push((VfioDeviceConfig { host, id, iommufd }, key, d));
        }
        trace(format_args!("cpr-load: VFIO restored in {:.3} ms", ms(t)));
        Ok(set)
    }

    /// The raw container fd, or the iommufd (tests and diagnostics).
    pub fn container_fd(&self) -> RawFd {
        match &self.backend {
            Backend::Type1 { container, .. } => container.fd(),
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

/// The back-end section of a saved set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VfioBackendState {
    Container(VfioContainerState),
    Iommufd(VfioIommufdState),
}
