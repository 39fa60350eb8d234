//! Raw iommufd ioctls (/dev/iommu) and the VFIO device cdev (/dev/vfio/devices/vfioN): the
//! second way to give a device an IOMMU, beside the type1 container. Raw for the same reason
//! as the container: a new process image adopts the inherited fds.
//!
//! For live update, guest RAM is mapped with `IOMMU_IOAS_MAP_FILE` (memfd + offset, no host
//! address), so the mappings survive exec untouched; the new process only moves the
//! pinned-page accounting to its own mm with `IOMMU_IOAS_CHANGE_PROCESS`. Both are newer
//! than iommufd itself: where they are missing the kernel answers ENOTTY (unknown ioctl
//! number), which makes a live-update blocker, not a start-up failure.
//!
//! Struct layouts are the kernel's uapi (include/uapi/linux/iommufd.h, vfio.h).

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use super::ioctl::check;

/// `_IO(IOMMUFD_TYPE, nr)`: like VFIO, iommufd ioctls carry no size or direction bits (the
/// structs start with their own size).
const fn iommufd_io(nr: u32) -> libc::c_ulong {
    ((b';' as u32) << 8 | nr) as libc::c_ulong
}
pub const IOMMU_DESTROY: libc::c_ulong = iommufd_io(0x80);
pub const IOMMU_IOAS_ALLOC: libc::c_ulong = iommufd_io(0x81);
pub const IOMMU_IOAS_MAP: libc::c_ulong = iommufd_io(0x85);
pub const IOMMU_IOAS_UNMAP: libc::c_ulong = iommufd_io(0x86);
pub const IOMMU_IOAS_MAP_FILE: libc::c_ulong = iommufd_io(0x8f);
pub const IOMMU_IOAS_CHANGE_PROCESS: libc::c_ulong = iommufd_io(0x92);
/// `_IO(VFIO_TYPE, VFIO_BASE + 18 / 19)`.
pub const VFIO_DEVICE_BIND_IOMMUFD: libc::c_ulong = (59 << 8) | (100 + 18);
pub const VFIO_DEVICE_ATTACH_IOMMUFD_PT: libc::c_ulong = (59 << 8) | (100 + 19);

pub const IOMMU_IOAS_MAP_FIXED_IOVA: u32 = 1 << 0;
pub const IOMMU_IOAS_MAP_WRITEABLE: u32 = 1 << 1;
pub const IOMMU_IOAS_MAP_READABLE: u32 = 1 << 2;

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct IommuIoasAlloc {
    pub size: u32,
    pub flags: u32,
    pub out_ioas_id: u32,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct IommuIoasMap {
    pub size: u32,
    pub flags: u32,
    pub ioas_id: u32,
    pub reserved: u32,
    pub user_va: u64,
    pub length: u64,
    pub iova: u64,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct IommuIoasMapFile {
    pub size: u32,
    pub flags: u32,
    pub ioas_id: u32,
    pub fd: i32,
    pub start: u64,
    pub length: u64,
    pub iova: u64,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct IommuIoasUnmap {
    pub size: u32,
    pub ioas_id: u32,
    pub iova: u64,
    pub length: u64,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct IommuIoasChangeProcess {
    pub size: u32,
    pub reserved: u32,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct VfioDeviceBindIommufd {
    pub argsz: u32,
    pub flags: u32,
    pub iommufd: i32,
    pub out_devid: u32,
    /// Only read with VFIO_DEVICE_BIND_FLAG_TOKEN (never set here).
    pub token_uuid_ptr: u64,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct VfioDeviceAttachIommufdPt {
    pub argsz: u32,
    pub flags: u32,
    pub pt_id: u32,
    pub pasid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum IommufdError {
    #[error(
        "/dev/iommu does not exist: this kernel has no iommufd (CONFIG_IOMMUFD); use the type1 \
         container (drop iommufd= from -device vfio-pci)"
    )]
    NoIommufd,
    #[error("cannot open {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{bdf} has no VFIO device cdev ({dir}): the device is not bound to vfio-pci, or the \
         kernel lacks CONFIG_VFIO_DEVICE_CDEV"
    )]
    NoCdev {
        bdf: String,
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{ioctl} on {what} failed")]
    Ioctl {
        ioctl: &'static str,
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl IommufdError {
    /// The kernel does not know this ioctl (ENOTTY) or this use of it (EOPNOTSUPP).
    pub fn is_unsupported(&self) -> bool {
        matches!(self, IommufdError::Ioctl { source, .. }
            if matches!(source.raw_os_error(), Some(libc::ENOTTY) | Some(libc::EOPNOTSUPP)))
    }
}

fn ioctl_err(
    ioctl: &'static str,
    what: impl Into<String>,
) -> impl FnOnce(std::io::Error) -> IommufdError {
    let what = what.into();
    move |source| IommufdError::Ioctl {
        ioctl,
        what,
        source,
    }
}

fn open_rw(path: &Path) -> Result<File, std::io::Error> {
    // std opens with O_CLOEXEC: a live update clears it on the fds it hands over.
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
}

/// An iommufd context (/dev/iommu).
pub struct Iommufd {
    file: File,
}

impl Iommufd {
    pub fn open() -> Result<Iommufd, IommufdError> {
        let path = Path::new("/dev/iommu");
        match open_rw(path) {
            Ok(file) => Ok(Iommufd { file }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(IommufdError::NoIommufd),
            Err(source) => Err(IommufdError::Open {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Adopts an inherited iommufd (live update): its IOAS, mappings and bound devices
    /// are still there.
    pub fn from_fd(fd: OwnedFd) -> Iommufd {
        Iommufd {
            file: File::from(fd),
        }
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// A new, empty I/O address space.
    pub fn ioas_alloc(&self) -> Result<u32, IommufdError> {
        let mut a = IommuIoasAlloc {
            size: std::mem::size_of::<IommuIoasAlloc>() as u32,
            ..Default::default()
        };
        // SAFETY: the kernel reads and writes one IommuIoasAlloc we own (size says how big).
        check(unsafe { libc::ioctl(self.fd(), IOMMU_IOAS_ALLOC, &mut a) })
            .map_err(ioctl_err("IOMMU_IOAS_ALLOC", "/dev/iommu"))?;
        Ok(a.out_ioas_id)
    }

    /// Maps `length` bytes of `fd` from `start` for DMA at `iova`, read and write. The
    /// mapping holds the file pages, not a host address: it survives exec.
    pub fn map_file(
        &self,
        ioas: u32,
        fd: RawFd,
        start: u64,
        length: u64,
        iova: u64,
    ) -> Result<(), IommufdError> {
        let m = IommuIoasMapFile {
            size: std::mem::size_of::<IommuIoasMapFile>() as u32,
            flags: IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE,
            ioas_id: ioas,
            fd,
            start,
            length,
            iova,
        };
        // SAFETY: the kernel reads (and writes back iova of) one IommuIoasMapFile we own;
        // it takes its own reference on the file.
        check(unsafe { libc::ioctl(self.fd(), IOMMU_IOAS_MAP_FILE, &m) }).map_err(ioctl_err(
            "IOMMU_IOAS_MAP_FILE",
            format!("IOAS {ioas} IOVA {iova:#x} length {length:#x} fd {fd} offset {start:#x}"),
        ))?;
        Ok(())
    }

    /// Maps `length` bytes at host address `user_va` for DMA at `iova` (kernels without
    /// IOMMU_IOAS_MAP_FILE: such a mapping is tied to this process's address space).
    pub fn map_user(
        &self,
        ioas: u32,
        user_va: u64,
        length: u64,
        iova: u64,
    ) -> Result<(), IommufdError> {
        let m = IommuIoasMap {
            size: std::mem::size_of::<IommuIoasMap>() as u32,
            flags: IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE,
            ioas_id: ioas,
            user_va,
            length,
            iova,
            ..Default::default()
        };
        // SAFETY: the kernel reads one IommuIoasMap we own; the caller keeps `user_va`
        // mapped as long as the DMA mapping exists.
        check(unsafe { libc::ioctl(self.fd(), IOMMU_IOAS_MAP, &m) }).map_err(ioctl_err(
            "IOMMU_IOAS_MAP",
            format!("IOAS {ioas} IOVA {iova:#x} length {length:#x} vaddr {user_va:#x}"),
        ))?;
        Ok(())
    }

    /// Unmaps `[iova, iova + length)`; returns the bytes unmapped.
    pub fn unmap(&self, ioas: u32, iova: u64, length: u64) -> Result<u64, IommufdError> {
        let mut u = IommuIoasUnmap {
            size: std::mem::size_of::<IommuIoasUnmap>() as u32,
            ioas_id: ioas,
            iova,
            length,
        };
        // SAFETY: the kernel reads and updates (length) one IommuIoasUnmap we own.
        check(unsafe { libc::ioctl(self.fd(), IOMMU_IOAS_UNMAP, &mut u) }).map_err(ioctl_err(
            "IOMMU_IOAS_UNMAP",
            format!("IOAS {ioas} IOVA {iova:#x} length {length:#x}"),
        ))?;
        Ok(u.length)
    }

    /// Charges the pinned pages of every mapping to the calling process (after exec: the
    /// new mm). Only file mappings can move (EINVAL otherwise). In the process that made
    /// the mappings it changes nothing, which makes it a harmless probe.
    pub fn change_process(&self) -> Result<(), IommufdError> {
        let c = IommuIoasChangeProcess {
            size: std::mem::size_of::<IommuIoasChangeProcess>() as u32,
            reserved: 0,
        };
        // SAFETY: the kernel reads one IommuIoasChangeProcess we own.
        check(unsafe { libc::ioctl(self.fd(), IOMMU_IOAS_CHANGE_PROCESS, &c) })
            .map_err(ioctl_err("IOMMU_IOAS_CHANGE_PROCESS", "/dev/iommu"))?;
        Ok(())
    }
}

/// The device cdev of PCI function `bdf` (bound to vfio-pci), from
/// /sys/bus/pci/devices/BDF/vfio-dev/vfioN.
pub fn cdev_of(bdf: &str) -> Result<PathBuf, IommufdError> {
    cdev_in(
        Path::new("/sys/bus/pci/devices"),
        Path::new("/dev/vfio/devices"),
        bdf,
    )
}

/// [`cdev_of`] with the sysfs and /dev roots given (tests).
pub fn cdev_in(sys_pci: &Path, dev_dir: &Path, bdf: &str) -> Result<PathBuf, IommufdError> {
    let dir = sys_pci.join(bdf).join("vfio-dev");
    let no_cdev = |source| IommufdError::NoCdev {
        bdf: bdf.to_string(),
        dir: dir.display().to_string(),
        source,
    };
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map_err(no_cdev)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| {
            n.strip_prefix("vfio")
                .is_some_and(|k| k.parse::<u32>().is_ok())
        })
        .collect();
    names.sort();
    match names.as_slice() {
        [one] => Ok(dev_dir.join(one)),
        _ => Err(no_cdev(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("expected one vfioN entry, found {names:?}"),
        ))),
    }
}

/// Opens the device cdev of `bdf` (the device fd itself; it is usable once bound to an
/// iommufd).
pub fn open_cdev(bdf: &str) -> Result<(PathBuf, OwnedFd), IommufdError> {
    let path = cdev_of(bdf)?;
    let file = open_rw(&path).map_err(|source| IommufdError::Open {
        path: path.display().to_string(),
        source,
    })?;
    Ok((path, OwnedFd::from(file)))
}

/// VFIO_DEVICE_BIND_IOMMUFD: ties the device fd to `iommufd`; returns the device's id in
/// that iommufd. DMA is blocked until it is attached to an IOAS.
pub fn bind(device: RawFd, iommufd: &Iommufd, bdf: &str) -> Result<u32, IommufdError> {
    let mut b = VfioDeviceBindIommufd {
        argsz: std::mem::size_of::<VfioDeviceBindIommufd>() as u32,
        iommufd: iommufd.fd(),
        ..Default::default()
    };
    // SAFETY: the kernel reads and writes (out_devid) one VfioDeviceBindIommufd we own.
    check(unsafe { libc::ioctl(device, VFIO_DEVICE_BIND_IOMMUFD, &mut b) })
        .map_err(ioctl_err("VFIO_DEVICE_BIND_IOMMUFD", bdf))?;
    Ok(b.out_devid)
}

/// VFIO_DEVICE_ATTACH_IOMMUFD_PT: the device DMAs through IOAS (or HWPT) `pt_id`.
pub fn attach(device: RawFd, pt_id: u32, bdf: &str) -> Result<(), IommufdError> {
    let mut a = VfioDeviceAttachIommufdPt {
        argsz: std::mem::size_of::<VfioDeviceAttachIommufdPt>() as u32,
        pt_id,
        ..Default::default()
    };
    // SAFETY: the kernel reads and writes (pt_id) one VfioDeviceAttachIommufdPt we own.
    check(unsafe { libc::ioctl(device, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &mut a) }).map_err(
        ioctl_err(
            "VFIO_DEVICE_ATTACH_IOMMUFD_PT",
            format!("{bdf} to IOAS {pt_id}"),
        ),
    )?;
    Ok(())
}
