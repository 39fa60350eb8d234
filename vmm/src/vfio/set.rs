//! Every assigned device of a machine: one type1 container, its groups, the devices on the
//! PCI bus, and the DMA mappings of guest RAM (IOVA = guest physical address). The live-update
//! steps for VFIO live here, in order, save beside restore.

use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::device::{AdoptedIrqs, DeviceError, VfioPciDevice};
use super::ioctl::{group_of, Container, CprFeatures, Device, Group, OpenedDevice, VfioError};
use super::state::VfioPciState;
use crate::machine::memory::GuestRam;
use crate::pci::{lock, GsiRouter, PciBus, PciError, MMIO_WINDOW_START};

/// `-device vfio-pci,host=BDF[,id=ID]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VfioDeviceConfig {
    pub host: String,
    pub id: String,
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

/// An ENOMEM from `MAP_DMA(VADDR)`: the new owner's locked-memory limit is too small for
/// the pinned pages the kernel moves to it. Says so, with the limit; other errors pass.
fn memlock_hint(e: VfioError, size: u64) -> VfioSetError {
    if e.errno() != Some(libc::ENOMEM) {
        return e.into();
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit we own.
    let limit = if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } == 0 {
        if lim.rlim_cur == libc::RLIM_INFINITY {
            "unlimited".to_string()
        } else {
            format!("{} KiB", lim.rlim_cur / 1024)
        }
    } else {
        "an unknown amount".to_string()
    };
    VfioSetError::MemlockLimit {
        limit,
        mib: size >> 20,
        source: e,
    }
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

struct Mapping {
    iova: u64,
    size: u64,
    vaddr: u64,
    state: DmaMappingState,
}

pub struct VfioSet {
    container: Container,
    features: CprFeatures,
    groups: Vec<Group>,
    devices: Vec<(VfioDeviceConfig, u32, Arc<Mutex<VfioPciDevice>>)>,
    mappings: Vec<Mapping>,
    /// A live update invalidated this process's DMA host addresses (`release_dma`) and
    /// nothing gave them back yet: another process may own the mappings now.
    vaddr_released: bool,
    /// A live update detached the irqfds (`detach_irqfds`): interrupts latch.
    irqfds_held: bool,
}

/// The container side of assigned devices, adopted by a new process before the devices
/// (transfer mode: while the guest still runs in the old process): container and group
/// fds, and every DMA mapping moved to this process's addresses of the same pages.
pub struct AdoptedContainer {
    container: Container,
    features: CprFeatures,
    groups: Vec<Group>,
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
        state: &VfioContainerState,
        previews: &[(String, VfioPciState)],
        router: &Arc<GsiRouter>,
    ) -> Result<(), VfioSetError> {
        for (i, r) in state.devices.iter().enumerate() {
            let (Some(pos), Some((_, preview))) = (
                self.devices.iter().position(|(id, _)| *id == r.id),
                previews.iter().find(|(id, _)| *id == r.id),
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
            self.prepared.push((r.id.clone(), d));
        }
        Ok(())
    }
}

/// `VmLck` of /proc/self/status (pages the kernel accounts as locked to this process: VFIO
/// charges pinned DMA pages to the mapping's owner), for the trace.
pub fn locked_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmLck:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// For the trace: `VmLck` or "?".
pub fn vmlck() -> String {
    locked_kib().map_or("?".into(), |k| format!("{k} kB"))
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
fn ram_mappings(ram: &GuestRam) -> Result<Vec<Mapping>, VfioSetError> {
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
    /// Opens the container and every device's group, sets the IOMMU, probes the live-update
    /// features, maps all of guest RAM for DMA, then opens, resets and plugs each device.
    pub fn open(
        configs: &[VfioDeviceConfig],
        ram: &GuestRam,
        router: &Arc<GsiRouter>,
        bus: &PciBus,
    ) -> Result<VfioSet, VfioSetError> {
        let container = Container::open()?;
        let mut groups: Vec<Group> = Vec::new();
        let mut features = CprFeatures {
            update_vaddr: false,
            unmap_all: false,
        };
        let mut devs = Vec::new();
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
            devs.push((c.clone(), gid));
        }
        let mappings = ram_mappings(ram)?;
        for m in &mappings {
            container.map_dma(m.iova, m.size, m.vaddr)?;
        }
        let mut set = VfioSet {
            container,
            features,
            groups,
            devices: Vec::new(),
            mappings,
            vaddr_released: false,
            irqfds_held: false,
        };
        let mut mmio_next = MMIO_WINDOW_START;
        for (i, (c, gid)) in devs.into_iter().enumerate() {
            let group = set
                .groups
                .iter()
                .find(|g| g.id == gid)
                .ok_or(VfioError::NotViable { group: gid })?;
            let dev = group.device(&c.host)?;
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
            set.devices.push((c, gid, d));
        }
        Ok(set)
    }

    pub fn features(&self) -> CprFeatures {
        self.features
    }

    /// Why restart-mode live update cannot keep these devices, if it cannot.
    pub fn restart_blocker(&self) -> Option<String> {
        restart_blocker(&self.ids(), self.features)
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
    /// the eventfds, then invalidate the DMA mappings' host addresses. Device DMA into
    /// guest RAM keeps working (the pages stay pinned and mapped in the IOMMU).
    pub fn prepare_update(&mut self) -> Result<(), VfioSetError> {
        let t = std::time::Instant::now();
        self.detach_irqfds()?;
        let t_unmap = std::time::Instant::now();
        self.release_dma()?;
        trace(format_args!(
            "cpr-save: irqfds detached and DMA vaddr invalidated ({} mappings) in {:.3} ms (unmap {:.3} ms)",
            self.mappings.len(),
            ms(t),
            ms(t_unmap)
        ));
        Ok(())
    }

    /// Invalidates this process's host address of every DMA mapping (UNMAP_DMA with
    /// FLAG_VADDR), so that another process image or another process may give them its
    /// own. The IOMMU mappings and the pinned pages stay: device DMA goes on. Refused if the
    /// kernel invalidated less than all of guest RAM (kernels before 6.0 skip mappings
    /// another process made, silently).
    pub fn release_dma(&mut self) -> Result<(), VfioSetError> {
        self.vaddr_released = true;
        let total: u64 = self.mappings.iter().map(|m| m.size).sum();
        let done = if self.features.unmap_all {
            self.container.unmap_vaddr_all()?
        } else {
            for m in &self.mappings {
                self.container.unmap_vaddr(m.iova, m.size)?;
            }
            total
        };
        if done != total {
            return Err(VfioSetError::PartialRelease { done, total });
        }
        Ok(())
    }

    /// Gives every DMA mapping back this process's host address. If another process took
    /// them over meanwhile (a transfer-mode successor that then failed or died), its
    /// address is invalidated first (the kernel lets any holder of the container do that);
    /// mapping at our address makes this process the owner again (locked-page accounting
    /// included).
    pub fn reclaim_dma(&mut self) -> Result<(), VfioSetError> {
        for m in &self.mappings {
            match self.container.map_vaddr(m.iova, m.size, m.vaddr) {
                Ok(()) => {}
                // EINVAL: the mapping's address is valid, i.e. the successor's.
                Err(e) if e.errno() == Some(libc::EINVAL) => {
                    self.container.unmap_vaddr(m.iova, m.size)?;
                    self.container.map_vaddr(m.iova, m.size, m.vaddr)?;
                    trace(format_args!(
                        "IOVA {:#x}: taken back from the successor (its vaddr invalidated first)",
                        m.iova
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.vaddr_released = false;
        trace(format_args!(
            "DMA vaddr reclaimed by this process; VmLck {}",
            vmlck()
        ));
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
    /// reach `go`): give the mappings back their addresses in this process and re-attach
    /// the irqfds; latched interrupts get injected.
    pub fn cancel_update(&mut self) -> Result<(), VfioSetError> {
        let t = std::time::Instant::now();
        let was = (self.vaddr_released, self.irqfds_held);
        if self.vaddr_released {
            self.reclaim_dma()?;
        }
        if self.irqfds_held {
            self.attach_irqfds()?;
        }
        if was != (false, false) {
            trace(format_args!(
                "update abandoned: DMA vaddr restored and irqfds attached in {:.3} ms",
                ms(t)
            ));
        }
        Ok(())
    }

    /// The container section and one `vfio.pci` section per device (instance = id).
    pub fn save(&self) -> (VfioContainerState, Vec<(String, VfioPciState)>) {
        let t = std::time::Instant::now();
        let state = self.container_state();
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

    /// The container section alone: groups, devices, DMA mappings (a transfer sends it at
    /// hello, before the pause, so the successor can take the mappings over while the
    /// guest runs).
    pub fn container_state(&self) -> VfioContainerState {
        VfioContainerState {
            groups: self.groups.iter().map(|g| g.id).collect(),
            devices: self
                .devices
                .iter()
                .map(|(c, gid, _)| VfioDeviceRef {
                    id: c.id.clone(),
                    host: c.host.clone(),
                    group: *gid,
                })
                .collect(),
            mappings: self.mappings.iter().map(|m| m.state.clone()).collect(),
        }
    }

    /// Every fd the new process must inherit, named for the manifest: vfio-container,
    /// vfio-group-N, vfio-device-ID, vfio-irq-ID-msi0 / -msixN.
    pub fn fds(&self) -> Vec<(String, RawFd)> {
        let mut v = vec![("vfio-container".to_string(), self.container.fd())];
        for g in &self.groups {
            v.push((format!("vfio-group-{}", g.id), g.fd()));
        }
        for d in self.devices() {
            v.extend(lock(d).fds());
        }
        v
    }

    /// After exec: adopts the inherited fds (no reset, no SET_IRQS), checks each mapping's
    /// new address maps the same file pages, moves the mappings there (MAP_DMA FLAG_VADDR),
    /// then rebuilds each device in the new VM with its routes and irqfds.
    pub fn restore(
        state: &VfioContainerState,
        devices: &[(String, VfioPciState)],
        take_fd: &mut dyn FnMut(&str) -> Option<OwnedFd>,
        ram: &GuestRam,
        router: &Arc<GsiRouter>,
        bus: &PciBus,
    ) -> Result<VfioSet, VfioSetError> {
        let t = std::time::Instant::now();
        let adopted = Self::adopt_container(state, take_fd, ram)?;
        let set = Self::restore_devices(adopted, state, devices, take_fd, router, bus, false)?;
        trace(format_args!("cpr-load: VFIO restored in {:.3} ms", ms(t)));
        Ok(set)
    }

    /// The first half of [`VfioSet::restore`]: container and group fds, and every DMA
    /// mapping given this process's address of the same file pages (checked: dev, inode,
    /// offset, size). The mappings' host addresses must have been invalidated by their
    /// previous owner; mapping them here makes this process their owner (the kernel moves
    /// the locked-page accounting to it).
    pub fn adopt_container(
        state: &VfioContainerState,
        take_fd: &mut dyn FnMut(&str) -> Option<OwnedFd>,
        ram: &GuestRam,
    ) -> Result<AdoptedContainer, VfioSetError> {
        let mut take = |name: String| take_fd(&name).ok_or(VfioSetError::MissingFd { name });
        let container = Container::from_fd(take("vfio-container".into())?);
        let features = container.cpr_features()?;
        let groups = state
            .groups
            .iter()
            .map(|&id| Ok(Group::from_fd(id, take(format!("vfio-group-{id}"))?)))
            .collect::<Result<Vec<_>, VfioSetError>>()?;
        let now = ram_mappings(ram)?;
        let locked_before = vmlck();
        let mut mappings = Vec::new();
        for saved in &state.mappings {
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
            container
                .map_vaddr(g.iova, g.size, g.vaddr)
                .map_err(|e| memlock_hint(e, g.size))?;
            trace(format_args!(
                "IOVA {:#x} size {:#x} ({}) re-mapped at vaddr {:#x} by pid {}: same file pages checked",
                g.iova,
                g.size,
                g.state.block,
                g.vaddr,
                std::process::id()
            ));
            mappings.push(Mapping {
                iova: g.iova,
                size: g.size,
                vaddr: g.vaddr,
                state: g.state.clone(),
            });
        }
        trace(format_args!(
            "VmLck of pid {} before MAP_DMA(VADDR) {locked_before}, after {}",
            std::process::id(),
            vmlck()
        ));
        // The device fds and region tables do not depend on guest state either.
        let t = std::time::Instant::now();
        let devices = state
            .devices
            .iter()
            .map(|r| {
                let dev = Device::from_fd(&r.host, take(format!("vfio-device-{}", r.id))?)?;
                Ok((r.id.clone(), dev.open_regions()?))
            })
            .collect::<Result<Vec<_>, VfioSetError>>()?;
        trace(format_args!(
            "{} device fds and region tables read in {:.3} ms",
            devices.len(),
            ms(t)
        ));
        Ok(AdoptedContainer {
            container,
            features,
            groups,
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
        state: &VfioContainerState,
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
            container: adopted.container,
            features: adopted.features,
            groups: adopted.groups,
            devices: Vec::new(),
            mappings: adopted.mappings,
            vaddr_released: false,
            irqfds_held: hold_irqfds,
        };
        for (i, r) in state.devices.iter().enumerate() {
            let pci = devices
                .iter()
                .find(|(id, _)| *id == r.id)
                .map(|(_, s)| s)
                .ok_or_else(|| VfioSetError::MissingDevice { id: r.id.clone() })?;
            let t_dev = std::time::Instant::now();
            let efds =
                |kind: &str,
                 n: u32,
                 take: &mut dyn FnMut(String) -> Result<OwnedFd, VfioSetError>| {
                    (0..n)
                        .map(|v| {
                            let fd = take(format!("vfio-irq-{}-{kind}{v}", r.id))?;
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
            let mut d = match prepared.iter().position(|(id, _)| *id == r.id) {
                Some(p) => {
                    let mut d = prepared.swap_remove(p).1;
                    d.finish_restore(pci, irqs, hold_irqfds)?;
                    d
                }
                None => {
                    let p = opened
                        .iter()
                        .position(|(id, _)| *id == r.id)
                        .ok_or_else(|| VfioSetError::MissingFd {
                            name: format!("vfio-device-{}", r.id),
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
            d.set_id(&r.id);
            trace(format_args!(
                "{} ({}) adopted without reset in {:.3} ms; interrupts latched during the pause{}: [{}]",
                r.id,
                r.host,
                ms(t_dev),
                if hold_irqfds { ", delivered when the irqfds attach" } else { ", delivered now" },
                d.latched_at_restore().join(" ")
            ));
            let d = Arc::new(Mutex::new(d));
            bus.add(d.clone()).map_err(|source| VfioSetError::Bus {
                id: r.id.clone(),
                source,
            })?;
            set.devices.push((
                VfioDeviceConfig {
                    host: r.host.clone(),
                    id: r.id.clone(),
                },
                r.group,
                d,
            ));
        }
        Ok(set)
    }

    /// The raw container fd (tests and diagnostics).
    pub fn container_fd(&self) -> RawFd {
        self.container.fd()
    }
}
