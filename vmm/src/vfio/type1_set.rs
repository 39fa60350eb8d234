//! The type1 back-end of a [`super::VfioSet`] (`-device vfio-pci,host=BDF` without
//! `iommufd=`): one container, every device's group in it, guest RAM mapped by host address
//! (VFIO_IOMMU_MAP_DMA, IOVA = guest physical address).
//!
//! Live update (restart and transfer mode): the old owner invalidates its host addresses
//! (UNMAP_DMA FLAG_VADDR) and the new one maps its own address of the same pages (MAP_DMA
//! FLAG_VADDR), which also moves the locked-page accounting to it; device DMA never stops.

use std::os::fd::{OwnedFd, RawFd};

use super::ioctl::{group_of, Container, CprFeatures, Device, Group, VfioError};
use super::set::{trace, DmaMappingState, Mapping, VfioDeviceConfig, VfioSetError};

cpr_format::state! {
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

/// The fd manifest name of the container.
pub const CONTAINER_FD: &str = "vfio-container";

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

/// For the trace: `VmLck` of /proc/self/status (pages the kernel accounts as locked to this
/// process: type1 charges pinned DMA pages to the mapping's owner), or "?".
pub fn vmlck() -> String {
    status_kb("VmLck:")
}

/// For the trace: `VmPin` (pages pinned and charged to this process: iommufd's accounting)
/// or "?".
pub fn vmpin() -> String {
    status_kb("VmPin:")
}

fn status_kb(key: &str) -> String {
    let kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with(key))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        });
    kib.map_or("?".into(), |k| format!("{k} kB"))
}

pub(super) struct Type1Backend {
    container: Container,
    pub(super) features: CprFeatures,
    groups: Vec<Group>,
}

impl Type1Backend {
    /// The container with every device's group, RAM mapped by host address. Returns the
    /// devices' fds with their group ids.
    #[allow(clippy::type_complexity)]
    pub(super) fn open(
        configs: &[VfioDeviceConfig],
        mappings: &[Mapping],
    ) -> Result<(Type1Backend, Vec<(VfioDeviceConfig, u32, Device)>), VfioSetError> {
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
            Type1Backend {
                container,
                features,
                groups,
            },
            devs,
        ))
    }

    pub(super) fn fd(&self) -> RawFd {
        self.container.fd()
    }

    /// Invalidates this process's host address of every DMA mapping (UNMAP_DMA with
    /// FLAG_VADDR). Refused if the kernel invalidated less than all of guest RAM (kernels
    /// before 6.0 skip mappings another process made, silently).
    pub(super) fn release(&self, mappings: &[Mapping]) -> Result<(), VfioSetError> {
        let total: u64 = mappings.iter().map(|m| m.size).sum();
        let done = if self.features.unmap_all {
            self.container.unmap_vaddr_all()?
        } else {
            for m in mappings {
                self.container.unmap_vaddr(m.iova, m.size)?;
            }
            total
        };
        if done != total {
            return Err(VfioSetError::PartialRelease { done, total });
        }
        Ok(())
    }

    /// Gives every DMA mapping back this process's host address, invalidating a
    /// successor's address first where it has one (the kernel lets any holder of the
    /// container do that).
    pub(super) fn reclaim(&self, mappings: &[Mapping]) -> Result<(), VfioSetError> {
        for m in mappings {
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
        Ok(())
    }

    /// Adopts the inherited container and group fds and maps every mapping (already
    /// checked to be the same file pages) at this process's address, which makes this
    /// process their owner. The previous owner must have invalidated its addresses.
    pub(super) fn adopt(
        state: &VfioContainerState,
        take: &mut dyn FnMut(String) -> Result<OwnedFd, VfioSetError>,
        mappings: &[Mapping],
    ) -> Result<Type1Backend, VfioSetError> {
        let container = Container::from_fd(take(CONTAINER_FD.into())?);
        let features = container.cpr_features()?;
        let groups = state
            .groups
            .iter()
            .map(|&id| Ok(Group::from_fd(id, take(format!("vfio-group-{id}"))?)))
            .collect::<Result<Vec<_>, VfioSetError>>()?;
        let locked_before = vmlck();
        for g in mappings {
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
        }
        trace(format_args!(
            "VmLck of pid {} before MAP_DMA(VADDR) {locked_before}, after {}",
            std::process::id(),
            vmlck()
        ));
        Ok(Type1Backend {
            container,
            features,
            groups,
        })
    }

    /// The section, given the devices (with their group ids) and the mappings.
    pub(super) fn save<'a>(
        &self,
        devices: impl Iterator<Item = (&'a VfioDeviceConfig, u32)>,
        mappings: Vec<DmaMappingState>,
    ) -> VfioContainerState {
        VfioContainerState {
            groups: self.groups.iter().map(|g| g.id).collect(),
            devices: devices
                .map(|(c, gid)| VfioDeviceRef {
                    id: c.id.clone(),
                    host: c.host.clone(),
                    group: gid,
                })
                .collect(),
            mappings,
        }
    }

    /// vfio-container and vfio-group-N.
    pub(super) fn fds(&self) -> Vec<(String, RawFd)> {
        let mut v = vec![(CONTAINER_FD.to_string(), self.container.fd())];
        for g in &self.groups {
            v.push((format!("vfio-group-{}", g.id), g.fd()));
        }
        v
    }
}
