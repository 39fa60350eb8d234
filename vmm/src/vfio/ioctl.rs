//! Raw VFIO ioctls on the type1 container, groups and devices. Raw because the new process
//! image of a live update must adopt inherited fds (vfio-ioctls' legacy container cannot)
//! and needs the VADDR flags.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::Path;

use vfio_bindings::bindings::vfio::{
    vfio_device_info, vfio_group_status, vfio_iommu_type1_dma_map, vfio_iommu_type1_dma_unmap,
    vfio_irq_info, vfio_irq_set, vfio_region_info, VFIO_TYPE1v2_IOMMU, VFIO_API_VERSION,
    VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_VADDR, VFIO_DMA_MAP_FLAG_WRITE,
    VFIO_DMA_UNMAP_FLAG_ALL, VFIO_DMA_UNMAP_FLAG_VADDR, VFIO_GROUP_FLAGS_VIABLE,
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_UNMAP_ALL, VFIO_UPDATE_VADDR,
};

/// `_IO(VFIO_TYPE, VFIO_BASE + n)`: VFIO ioctls carry no size or direction bits.
const fn vfio_io(n: u32) -> libc::c_ulong {
    ((59 << 8) | (100 + n)) as libc::c_ulong
}
const GET_API_VERSION: libc::c_ulong = vfio_io(0);
const CHECK_EXTENSION: libc::c_ulong = vfio_io(1);
const SET_IOMMU: libc::c_ulong = vfio_io(2);
const GROUP_GET_STATUS: libc::c_ulong = vfio_io(3);
const GROUP_SET_CONTAINER: libc::c_ulong = vfio_io(4);
const GROUP_GET_DEVICE_FD: libc::c_ulong = vfio_io(6);
const DEVICE_GET_INFO: libc::c_ulong = vfio_io(7);
const DEVICE_GET_REGION_INFO: libc::c_ulong = vfio_io(8);
const DEVICE_GET_IRQ_INFO: libc::c_ulong = vfio_io(9);
const DEVICE_SET_IRQS: libc::c_ulong = vfio_io(10);
const DEVICE_RESET: libc::c_ulong = vfio_io(11);
const IOMMU_MAP_DMA: libc::c_ulong = vfio_io(13);
const IOMMU_UNMAP_DMA: libc::c_ulong = vfio_io(14);

#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    #[error("cannot open {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot find the IOMMU group of {bdf} (/sys/bus/pci/devices/{bdf}/iommu_group)")]
    NoGroup {
        bdf: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "this host has iommufd (/dev/iommu) but no legacy VFIO container (/dev/vfio/vfio): \
         assign the device through iommufd (-object iommufd,id=iommufd0 and \
         iommufd=iommufd0 on -device vfio-pci), or load vfio_iommu_type1"
    )]
    IommufdOnly,
    #[error("VFIO API version {got} is not the supported {VFIO_API_VERSION}")]
    ApiVersion { got: i32 },
    #[error("the VFIO container does not support the type1v2 IOMMU")]
    NoType1v2,
    #[error("IOMMU group {group} is not viable (some device in it is not bound to vfio-pci)")]
    NotViable { group: u32 },
    #[error("{ioctl} on {what} failed")]
    Ioctl {
        ioctl: &'static str,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} of {what} region at offset {offset:#x} failed")]
    RegionIo {
        op: &'static str,
        what: String,
        offset: u64,
        #[source]
        source: std::io::Error,
    },
}

impl VfioError {
    /// The errno of a failed ioctl (None for other errors).
    pub fn errno(&self) -> Option<i32> {
        match self {
            VfioError::Ioctl { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

fn ioctl_err(
    ioctl: &'static str,
    what: impl Into<String>,
) -> impl FnOnce(std::io::Error) -> VfioError {
    let what = what.into();
    move |source| VfioError::Ioctl {
        ioctl,
        what,
        source,
    }
}

/// Checks an ioctl's return value: negative means errno. (Shared with the iommufd backend.)
pub(crate) fn check(r: libc::c_int) -> Result<libc::c_int, std::io::Error> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn open_rw(path: &str) -> Result<File, VfioError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path) // std opens with O_CLOEXEC
        .map_err(|source| VfioError::Open {
            path: path.to_string(),
            source,
        })
}

/// The type1 container (/dev/vfio/vfio).
pub struct Container {
    file: File,
}

/// What the container supports for live update, probed after VFIO_SET_IOMMU (before it
/// the kernel answers 0 for both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CprFeatures {
    pub update_vaddr: bool,
    pub unmap_all: bool,
}

impl Container {
    pub fn open() -> Result<Container, VfioError> {
        let file = match open_rw("/dev/vfio/vfio") {
            Err(VfioError::Open { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound
                    && Path::new("/dev/iommu").exists() =>
            {
                return Err(VfioError::IommufdOnly)
            }
            other => other?,
        };
        let c = Container { file };
        // SAFETY: VFIO_GET_API_VERSION takes no argument; the fd is a VFIO container.
        let v = check(unsafe { libc::ioctl(c.fd(), GET_API_VERSION) })
            .map_err(ioctl_err("VFIO_GET_API_VERSION", "the container"))?;
        if v != VFIO_API_VERSION as i32 {
            return Err(VfioError::ApiVersion { got: v });
        }
        if !c.check_extension(VFIO_TYPE1v2_IOMMU)? {
            return Err(VfioError::NoType1v2);
        }
        Ok(c)
    }

    /// Adopts an inherited container fd (live update): it already has its groups and IOMMU.
    pub fn from_fd(fd: OwnedFd) -> Container {
        Container {
            file: File::from(fd),
        }
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub fn check_extension(&self, ext: u32) -> Result<bool, VfioError> {
        // SAFETY: VFIO_CHECK_EXTENSION takes the extension number by value.
        let r = check(unsafe { libc::ioctl(self.fd(), CHECK_EXTENSION, ext as libc::c_ulong) })
            .map_err(ioctl_err(
                "VFIO_CHECK_EXTENSION",
                format!("extension {ext}"),
            ))?;
        Ok(r > 0)
    }

    pub fn set_iommu(&self) -> Result<(), VfioError> {
        // SAFETY: VFIO_SET_IOMMU takes the IOMMU type by value.
        check(unsafe { libc::ioctl(self.fd(), SET_IOMMU, VFIO_TYPE1v2_IOMMU as libc::c_ulong) })
            .map_err(ioctl_err("VFIO_SET_IOMMU", "type1v2"))?;
        Ok(())
    }

    pub fn cpr_features(&self) -> Result<CprFeatures, VfioError> {
        Ok(CprFeatures {
            update_vaddr: self.check_extension(VFIO_UPDATE_VADDR)?,
            unmap_all: self.check_extension(VFIO_UNMAP_ALL)?,
        })
    }

    fn map(
        &self,
        iova: u64,
        size: u64,
        vaddr: u64,
        flags: u32,
        what: &'static str,
    ) -> Result<(), VfioError> {
        let map = vfio_iommu_type1_dma_map {
            argsz: std::mem::size_of::<vfio_iommu_type1_dma_map>() as u32,
            flags,
            vaddr,
            iova,
            size,
        };
        // SAFETY: the kernel reads one vfio_iommu_type1_dma_map we own; the caller keeps
        // the memory at `vaddr` mapped for as long as the DMA mapping exists.
        check(unsafe { libc::ioctl(self.fd(), IOMMU_MAP_DMA, &map) }).map_err(ioctl_err(
            what,
            format!("IOVA {iova:#x} size {size:#x} vaddr {vaddr:#x}"),
        ))?;
        Ok(())
    }

    /// Maps `size` bytes at host `vaddr` for device DMA at `iova`, read and write.
    pub fn map_dma(&self, iova: u64, size: u64, vaddr: u64) -> Result<(), VfioError> {
        self.map(
            iova,
            size,
            vaddr,
            VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
            "VFIO_IOMMU_MAP_DMA",
        )
    }

    /// Gives an invalidated mapping its new host address (VFIO_DMA_MAP_FLAG_VADDR; no
    /// READ/WRITE flags or the kernel answers EINVAL). The kernel does not check that the
    /// new address maps the same pages: the caller must.
    pub fn map_vaddr(&self, iova: u64, size: u64, vaddr: u64) -> Result<(), VfioError> {
        self.map(
            iova,
            size,
            vaddr,
            VFIO_DMA_MAP_FLAG_VADDR,
            "VFIO_IOMMU_MAP_DMA(VADDR)",
        )
    }

    fn unmap(
        &self,
        iova: u64,
        size: u64,
        flags: u32,
        what: &'static str,
    ) -> Result<u64, VfioError> {
        let mut un = vfio_iommu_type1_dma_unmap {
            argsz: std::mem::size_of::<vfio_iommu_type1_dma_unmap>() as u32,
            flags,
            iova,
            size,
            ..Default::default()
        };
        // SAFETY: the kernel reads and updates (size) one vfio_iommu_type1_dma_unmap we own.
        check(unsafe { libc::ioctl(self.fd(), IOMMU_UNMAP_DMA, &mut un) })
            .map_err(ioctl_err(what, format!("IOVA {iova:#x} size {size:#x}")))?;
        Ok(un.size)
    }

    pub fn unmap_dma(&self, iova: u64, size: u64) -> Result<u64, VfioError> {
        self.unmap(iova, size, 0, "VFIO_IOMMU_UNMAP_DMA")
    }

    /// Invalidates the host address of a mapping; the IOMMU mapping and pinned pages stay,
    /// so device DMA continues (VFIO_DMA_UNMAP_FLAG_VADDR).
    pub fn unmap_vaddr(&self, iova: u64, size: u64) -> Result<(), VfioError> {
        self.unmap(
            iova,
            size,
            VFIO_DMA_UNMAP_FLAG_VADDR,
            "VFIO_IOMMU_UNMAP_DMA(VADDR)",
        )?;
        Ok(())
    }

    /// Invalidates the host address of every mapping in one call (needs VFIO_UNMAP_ALL);
    /// returns the bytes the kernel invalidated.
    pub fn unmap_vaddr_all(&self) -> Result<u64, VfioError> {
        self.unmap(
            0,
            0,
            VFIO_DMA_UNMAP_FLAG_VADDR | VFIO_DMA_UNMAP_FLAG_ALL,
            "VFIO_IOMMU_UNMAP_DMA(VADDR|ALL)",
        )
    }
}

/// The IOMMU group number of PCI device `bdf`, from sysfs.
pub fn group_of(bdf: &str) -> Result<u32, VfioError> {
    let link = Path::new("/sys/bus/pci/devices")
        .join(bdf)
        .join("iommu_group");
    let target = std::fs::read_link(&link).map_err(|source| VfioError::NoGroup {
        bdf: bdf.to_string(),
        source,
    })?;
    target
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| VfioError::NoGroup {
            bdf: bdf.to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("link target {target:?}"),
            ),
        })
}

/// An IOMMU group (/dev/vfio/N).
pub struct Group {
    pub id: u32,
    file: File,
}

impl Group {
    pub fn open(id: u32) -> Result<Group, VfioError> {
        let g = Group {
            id,
            file: open_rw(&format!("/dev/vfio/{id}"))?,
        };
        let mut status = vfio_group_status {
            argsz: std::mem::size_of::<vfio_group_status>() as u32,
            flags: 0,
        };
        // SAFETY: the kernel writes one vfio_group_status we own.
        check(unsafe { libc::ioctl(g.fd(), GROUP_GET_STATUS, &mut status) })
            .map_err(ioctl_err("VFIO_GROUP_GET_STATUS", format!("group {id}")))?;
        if status.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(VfioError::NotViable { group: id });
        }
        Ok(g)
    }

    pub fn from_fd(id: u32, fd: OwnedFd) -> Group {
        Group {
            id,
            file: File::from(fd),
        }
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub fn set_container(&self, c: &Container) -> Result<(), VfioError> {
        let fd: libc::c_int = c.fd();
        // SAFETY: the kernel reads one int (the container fd) we own.
        check(unsafe { libc::ioctl(self.fd(), GROUP_SET_CONTAINER, &fd) }).map_err(ioctl_err(
            "VFIO_GROUP_SET_CONTAINER",
            format!("group {}", self.id),
        ))?;
        Ok(())
    }

    pub fn device(&self, bdf: &str) -> Result<Device, VfioError> {
        let name = CString::new(bdf).map_err(|e| VfioError::Ioctl {
            ioctl: "VFIO_GROUP_GET_DEVICE_FD",
            what: bdf.to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        })?;
        // SAFETY: the kernel reads the NUL-terminated name; the result is a new fd or -1.
        let fd = check(unsafe { libc::ioctl(self.fd(), GROUP_GET_DEVICE_FD, name.as_ptr()) })
            .map_err(ioctl_err("VFIO_GROUP_GET_DEVICE_FD", bdf))?;
        // SAFETY: `fd` is a fresh fd nothing else owns. The kernel sets O_CLOEXEC on it.
        Device::from_fd(bdf, unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// A region of a device (BAR, config space) as VFIO_DEVICE_GET_REGION_INFO describes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Region {
    pub flags: u32,
    pub size: u64,
    pub offset: u64,
}

/// A VFIO device fd.
pub struct Device {
    pub bdf: String,
    file: File,
    pub flags: u32,
    pub num_regions: u32,
    pub num_irqs: u32,
}

/// A device with its region table read.
pub struct OpenedDevice {
    pub dev: Device,
    pub config: Region,
    pub bars: [Region; 6],
}

impl Device {
    /// Wraps a device fd (fresh or inherited) and reads its info.
    pub fn from_fd(bdf: &str, fd: OwnedFd) -> Result<Device, VfioError> {
        let mut info = vfio_device_info {
            argsz: std::mem::size_of::<vfio_device_info>() as u32,
            ..Default::default()
        };
        let file = File::from(fd);
        // SAFETY: the kernel writes one vfio_device_info we own.
        check(unsafe { libc::ioctl(file.as_raw_fd(), DEVICE_GET_INFO, &mut info) })
            .map_err(ioctl_err("VFIO_DEVICE_GET_INFO", bdf))?;
        Ok(Device {
            bdf: bdf.to_string(),
            file,
            flags: info.flags,
            num_regions: info.num_regions,
            num_irqs: info.num_irqs,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Reads the config region's and BARs 0-5's info (a live update does this before the
    /// pause in transfer mode: none of it depends on guest state).
    pub fn open_regions(self) -> Result<OpenedDevice, VfioError> {
        let config = self.region(VFIO_PCI_CONFIG_REGION_INDEX)?;
        let mut bars = [Region::default(); 6];
        for (i, r) in bars.iter_mut().enumerate() {
            *r = self.region(i as u32)?;
        }
        Ok(OpenedDevice {
            dev: self,
            config,
            bars,
        })
    }

    pub fn region(&self, index: u32) -> Result<Region, VfioError> {
        let mut info = vfio_region_info {
            argsz: std::mem::size_of::<vfio_region_info>() as u32,
            index,
            ..Default::default()
        };
        // SAFETY: the kernel writes one vfio_region_info (argsz bytes) we own.
        check(unsafe { libc::ioctl(self.fd(), DEVICE_GET_REGION_INFO, &mut info) }).map_err(
            ioctl_err(
                "VFIO_DEVICE_GET_REGION_INFO",
                format!("{} region {index}", self.bdf),
            ),
        )?;
        Ok(Region {
            flags: info.flags,
            size: info.size,
            offset: info.offset,
        })
    }

    /// Number of interrupts of kind `index` (INTx, MSI, MSI-X).
    pub fn irq_count(&self, index: u32) -> Result<u32, VfioError> {
        let mut info = vfio_irq_info {
            argsz: std::mem::size_of::<vfio_irq_info>() as u32,
            index,
            ..Default::default()
        };
        // SAFETY: the kernel writes one vfio_irq_info we own.
        check(unsafe { libc::ioctl(self.fd(), DEVICE_GET_IRQ_INFO, &mut info) }).map_err(
            ioctl_err(
                "VFIO_DEVICE_GET_IRQ_INFO",
                format!("{} irq index {index}", self.bdf),
            ),
        )?;
        Ok(info.count)
    }

    /// Connects interrupts `start..start + fds.len()` of kind `index` to eventfds; an
    /// empty `fds` disables the kind.
    pub fn set_irq_eventfds(&self, index: u32, start: u32, fds: &[RawFd]) -> Result<(), VfioError> {
        self.set_irqs(VFIO_IRQ_SET_ACTION_TRIGGER, index, start, fds)
    }

    /// INTx: `fd` is signalled by KVM when the guest EOIs the level interrupt, and makes
    /// VFIO unmask the line (VFIO masks INTx each time it fires).
    pub fn set_intx_unmask_eventfd(&self, fd: RawFd) -> Result<(), VfioError> {
        self.set_irqs(
            VFIO_IRQ_SET_ACTION_UNMASK,
            vfio_bindings::bindings::vfio::VFIO_PCI_INTX_IRQ_INDEX,
            0,
            &[fd],
        )
    }

    fn set_irqs(
        &self,
        action: u32,
        index: u32,
        start: u32,
        fds: &[RawFd],
    ) -> Result<(), VfioError> {
        let head = std::mem::size_of::<vfio_irq_set>();
        let mut buf = vec![0u32; (head + 4 * fds.len()).div_ceil(4)];
        let set = vfio_irq_set {
            argsz: (head + 4 * fds.len()) as u32,
            flags: action
                | if fds.is_empty() {
                    VFIO_IRQ_SET_DATA_NONE
                } else {
                    VFIO_IRQ_SET_DATA_EVENTFD
                },
            index,
            start,
            count: fds.len() as u32,
            ..Default::default()
        };
        // SAFETY: `buf` holds at least `head + 4 * fds.len()` bytes, u32-aligned like
        // vfio_irq_set; we write the header and then the fds right after it.
        unsafe {
            std::ptr::write_unaligned(buf.as_mut_ptr() as *mut vfio_irq_set, set);
            let data = (buf.as_mut_ptr() as *mut u8).add(head) as *mut i32;
            for (i, fd) in fds.iter().enumerate() {
                std::ptr::write_unaligned(data.add(i), *fd);
            }
        }
        // SAFETY: the kernel reads argsz bytes from `buf`, which holds that many.
        check(unsafe { libc::ioctl(self.fd(), DEVICE_SET_IRQS, buf.as_ptr()) }).map_err(
            ioctl_err(
                "VFIO_DEVICE_SET_IRQS",
                format!(
                    "{} irq index {index} vectors {start}+{}",
                    self.bdf,
                    fds.len()
                ),
            ),
        )?;
        Ok(())
    }

    pub fn reset(&self) -> Result<(), VfioError> {
        // SAFETY: VFIO_DEVICE_RESET takes no argument.
        check(unsafe { libc::ioctl(self.fd(), DEVICE_RESET) })
            .map_err(ioctl_err("VFIO_DEVICE_RESET", self.bdf.clone()))?;
        Ok(())
    }

    pub fn read_at(&self, region: &Region, offset: u64, data: &mut [u8]) -> Result<(), VfioError> {
        self.file
            .read_exact_at(data, region.offset + offset)
            .map_err(|source| VfioError::RegionIo {
                op: "read",
                what: self.bdf.clone(),
                offset,
                source,
            })
    }

    pub fn write_at(&self, region: &Region, offset: u64, data: &[u8]) -> Result<(), VfioError> {
        self.file
            .write_all_at(data, region.offset + offset)
            .map_err(|source| VfioError::RegionIo {
                op: "write",
                what: self.bdf.clone(),
                offset,
                source,
            })
    }
}
