//! The iommufd back-end of a [`super::VfioSet`] (`-object iommufd,id=OBJ` and
//! `-device vfio-pci,host=BDF,iommufd=OBJ`): one /dev/iommu, one IOAS holding guest RAM at
//! IOVA = guest physical address, each device's cdev bound to it and attached, and a KVM
//! VFIO device that knows every device fd.
//!
//! Live update (restart and transfer mode): RAM is mapped with IOMMU_IOAS_MAP_FILE, so the
//! mappings do not depend on the old process's address space and nothing is unmapped or
//! re-mapped; the new process (image) adopts the iommufd and device fds and calls
//! IOMMU_IOAS_CHANGE_PROCESS to take over the pinned-page accounting (a transfer-mode
//! successor before the pause; a failed transfer gives it back the same way). A kernel
//! without either ioctl still assigns devices (RAM mapped by address with IOMMU_IOAS_MAP)
//! but blocks both modes, naming what it lacks.

use std::os::fd::{OwnedFd, RawFd};

use kvm_bindings::{kvm_create_device, kvm_device_attr, KVM_DEV_VFIO_FILE};
use kvm_ioctls::{DeviceFd, VmFd};

use super::ioctl::Device;
use super::iommufd::{attach, bind, open_cdev, Iommufd};
use super::set::{trace, DmaMappingState, Mapping, VfioDeviceConfig, VfioSetError};

/// The fd manifest name of the iommufd.
pub const IOMMUFD_FD: &str = "vfio-iommufd";
/// `KVM_DEV_VFIO_FILE_ADD` (kvm-bindings has the group but not this attribute).
const KVM_DEV_VFIO_FILE_ADD: u64 = 1;

cpr_format::state! {
    /// A device bound to the iommufd.
    #[derive(Eq)]
    pub struct VfioIommufdDeviceRef {
        pub id: String,
        pub host: String,
        /// Its id in the iommufd (VFIO_DEVICE_BIND_IOMMUFD).
        pub devid: u32,
        /// The cdev it was opened from (/dev/vfio/devices/vfioN), for diagnostics.
        pub cdev: String,
    }

    /// The iommufd back-end: the object, the IOAS, devices and RAM file mappings (fds:
    /// vfio-iommufd, vfio-device-ID in the manifest).
    #[section(name = "vfio.iommufd", version = 1, min_version = 1, required = true)]
    #[derive(Eq)]
    pub struct VfioIommufdState {
        /// The `-object iommufd` id.
        pub object: String,
        pub ioas: u32,
        pub devices: Vec<VfioIommufdDeviceRef>,
        pub mappings: Vec<DmaMappingState>,
    }
}

/// What the kernel's iommufd offers for live update: both are probed at start-up (MAP_FILE
/// by mapping RAM with it, CHANGE_PROCESS by calling it in the mapping process, where it
/// changes nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IommufdFeatures {
    pub map_file: bool,
    pub change_process: bool,
}

/// Restart mode needs RAM mapped by file (the mappings then survive exec) and
/// IOMMU_IOAS_CHANGE_PROCESS (so the new process owns the pinned pages).
pub fn restart_blocker(ids: &[String], f: IommufdFeatures) -> Option<String> {
    let missing: Vec<&str> = [
        (!f.map_file).then_some("IOMMU_IOAS_MAP_FILE"),
        (!f.change_process).then_some("IOMMU_IOAS_CHANGE_PROCESS"),
    ]
    .into_iter()
    .flatten()
    .collect();
    (!ids.is_empty() && !missing.is_empty()).then(|| {
        format!(
            "VFIO device(s) {}: this kernel's iommufd lacks {} (Linux 6.14 has both), so the \
             DMA mappings of guest RAM cannot move to a new process; use a newer kernel or \
             the type1 container (drop iommufd=)",
            ids.join(", "),
            missing.join(" and ")
        )
    })
}

pub(super) struct IommufdBackend {
    /// The `-object iommufd` id.
    pub(super) object: String,
    iommufd: Iommufd,
    ioas: u32,
    pub(super) features: IommufdFeatures,
    /// Each device's cdev path, in device order.
    cdevs: Vec<String>,
    /// The KVM VFIO device (KVM_DEV_TYPE_VFIO), created with the first device.
    kvm_vfio: Option<DeviceFd>,
}

impl IommufdBackend {
    /// Opens /dev/iommu and an IOAS; opens each device's cdev, tells KVM about it, binds
    /// and attaches it; maps guest RAM (by file where the kernel can); probes
    /// CHANGE_PROCESS. Returns the devices' fds (bound, so usable) with their iommufd ids.
    #[allow(clippy::type_complexity)]
    pub(super) fn open(
        object: &str,
        configs: &[VfioDeviceConfig],
        mappings: &[Mapping],
        vm: &VmFd,
    ) -> Result<(IommufdBackend, Vec<(VfioDeviceConfig, u32, Device)>), VfioSetError> {
        let iommufd = Iommufd::open()?;
        let ioas = iommufd.ioas_alloc()?;
        let mut b = IommufdBackend {
            object: object.to_string(),
            iommufd,
            ioas,
            features: IommufdFeatures {
                map_file: true,
                change_process: true,
            },
            cdevs: Vec::new(),
            kvm_vfio: None,
        };
        let mut devs = Vec::new();
        for c in configs {
            let (path, fd) = open_cdev(&c.host)?;
            // KVM first: the device takes its KVM reference when it is bound.
            b.add_to_kvm(vm, &c.id, std::os::fd::AsRawFd::as_raw_fd(&fd))?;
            let devid = bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &b.iommufd, &c.host)?;
            attach(std::os::fd::AsRawFd::as_raw_fd(&fd), ioas, &c.host)?;
            trace(format_args!(
                "iommufd: {} ({}) bound as device {devid}, attached to IOAS {ioas}",
                c.id,
                path.display()
            ));
            b.cdevs.push(path.display().to_string());
            devs.push((c.clone(), devid, Device::from_fd(&c.host, fd)?));
        }
        for m in mappings {
            let by_file = if b.features.map_file {
                match b
                    .iommufd
                    .map_file(ioas, m.fd, m.state.file_offset, m.size, m.iova)
                {
                    Ok(()) => true,
                    Err(e) if e.is_unsupported() => {
                        b.features.map_file = false;
                        false
                    }
                    Err(e) => return Err(e.into()),
                }
            } else {
                false
            };
            if !by_file {
                b.iommufd.map_user(ioas, m.vaddr, m.size, m.iova)?;
            }
        }
        match b.iommufd.change_process() {
            Ok(()) => {}
            // Without file mappings CHANGE_PROCESS refuses (EINVAL), which says nothing
            // about whether the kernel has it; it is moot then anyway (map_file blocks).
            Err(_) if !b.features.map_file => b.features.change_process = false,
            Err(e) if e.is_unsupported() => b.features.change_process = false,
            Err(e) => return Err(e.into()),
        }
        trace(format_args!("iommufd: IOAS {ioas}, {:?}", b.features));
        Ok((b, devs))
    }

    pub(super) fn fd(&self) -> RawFd {
        self.iommufd.fd()
    }

    /// KVM_DEV_VFIO_FILE_ADD of a device fd (creating the KVM VFIO device the first time):
    /// KVM then knows DMA may be non-coherent and hands the device to its driver.
    pub(super) fn add_to_kvm(
        &mut self,
        vm: &VmFd,
        id: &str,
        fd: RawFd,
    ) -> Result<(), VfioSetError> {
        let err = |what: String| move |source| VfioSetError::KvmVfio { what, source };
        let kvm_vfio = match &mut self.kvm_vfio {
            Some(d) => d,
            None => {
                let mut d = kvm_create_device {
                    type_: kvm_bindings::kvm_device_type_KVM_DEV_TYPE_VFIO,
                    ..Default::default()
                };
                let dev = vm
                    .create_device(&mut d)
                    .map_err(err("the KVM VFIO device itself".into()))?;
                self.kvm_vfio.insert(dev)
            }
        };
        let fd: i32 = fd;
        let attr = kvm_device_attr {
            group: KVM_DEV_VFIO_FILE,
            attr: KVM_DEV_VFIO_FILE_ADD,
            addr: &fd as *const i32 as u64,
            flags: 0,
        };
        kvm_vfio
            .set_device_attr(&attr)
            .map_err(err(format!("device {id}")))
    }

    pub(super) fn save<'a>(
        &self,
        devices: impl Iterator<Item = (&'a VfioDeviceConfig, u32)>,
        mappings: Vec<DmaMappingState>,
    ) -> VfioIommufdState {
        VfioIommufdState {
            object: self.object.clone(),
            ioas: self.ioas,
            devices: devices
                .zip(&self.cdevs)
                .map(|((c, devid), cdev)| VfioIommufdDeviceRef {
                    id: c.id.clone(),
                    host: c.host.clone(),
                    devid,
                    cdev: cdev.clone(),
                })
                .collect(),
            mappings,
        }
    }

    /// After exec, or in a transfer-mode successor before the pause: adopts the inherited
    /// iommufd (its IOAS still maps guest RAM by file, and the devices are still bound and
    /// attached) and moves the pinned-page accounting to this process. The caller has
    /// checked the mappings are this process's RAM.
    pub(super) fn adopt(
        s: &VfioIommufdState,
        take: &mut dyn FnMut(String) -> Result<OwnedFd, VfioSetError>,
        mappings: &[Mapping],
    ) -> Result<IommufdBackend, VfioSetError> {
        let iommufd = Iommufd::from_fd(take(IOMMUFD_FD.into())?);
        let t = std::time::Instant::now();
        iommufd.change_process()?;
        trace(format_args!(
            "IOMMU_IOAS_CHANGE_PROCESS moved the pinned pages of {} file mappings (same file pages checked) to pid {} in {:.3} ms",
            mappings.len(),
            std::process::id(),
            super::set::ms(t)
        ));
        Ok(IommufdBackend {
            object: s.object.clone(),
            iommufd,
            ioas: s.ioas,
            features: IommufdFeatures {
                map_file: true,
                change_process: true,
            },
            cdevs: s.devices.iter().map(|d| d.cdev.clone()).collect(),
            kvm_vfio: None,
        })
    }

    /// A transfer that did not reach `go`: the pinned-page accounting back to this
    /// process (a successor may have taken it; if none did, nothing moves).
    pub(super) fn reclaim(&self) -> Result<(), VfioSetError> {
        self.iommufd.change_process()?;
        Ok(())
    }
}
