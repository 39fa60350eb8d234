//! iommufd back-end on the build machine (no /dev/iommu here): the uapi layouts and ioctl
//! numbers, cdev discovery from sysfs, the live-update blocker, the `vfio.iommufd` section,
//! and what opening it says on a kernel without iommufd.

use std::mem::{offset_of, size_of};

use super::iommufd::*;
use super::iommufd_set::{
    restart_blocker, IommufdFeatures, VfioIommufdDeviceRef, VfioIommufdState,
};
use super::set::DmaMappingState;

#[test]
fn uapi_structs_have_the_kernels_layout() {
    // include/uapi/linux/iommufd.h and vfio.h (Linux 7.3).
    assert_eq!(size_of::<IommuIoasAlloc>(), 12);
    assert_eq!(offset_of!(IommuIoasAlloc, out_ioas_id), 8);
    assert_eq!(size_of::<IommuIoasMap>(), 40);
    assert_eq!(offset_of!(IommuIoasMap, user_va), 16);
    assert_eq!(offset_of!(IommuIoasMap, length), 24);
    assert_eq!(offset_of!(IommuIoasMap, iova), 32);
    assert_eq!(size_of::<IommuIoasMapFile>(), 40);
    assert_eq!(offset_of!(IommuIoasMapFile, fd), 12);
    assert_eq!(offset_of!(IommuIoasMapFile, start), 16);
    assert_eq!(offset_of!(IommuIoasMapFile, length), 24);
    assert_eq!(offset_of!(IommuIoasMapFile, iova), 32);
    assert_eq!(size_of::<IommuIoasUnmap>(), 24);
    assert_eq!(offset_of!(IommuIoasUnmap, iova), 8);
    assert_eq!(size_of::<IommuIoasChangeProcess>(), 8);
    assert_eq!(size_of::<VfioDeviceBindIommufd>(), 24);
    assert_eq!(offset_of!(VfioDeviceBindIommufd, iommufd), 8);
    assert_eq!(offset_of!(VfioDeviceBindIommufd, out_devid), 12);
    assert_eq!(offset_of!(VfioDeviceBindIommufd, token_uuid_ptr), 16);
    assert_eq!(size_of::<VfioDeviceAttachIommufdPt>(), 16);
    assert_eq!(offset_of!(VfioDeviceAttachIommufdPt, pt_id), 8);
}

#[test]
fn ioctl_numbers_are_the_kernels() {
    // _IO(';', 0x80 + n) and _IO(';', 100 + n): no size or direction bits.
    assert_eq!(IOMMU_DESTROY, 0x3b80);
    assert_eq!(IOMMU_IOAS_ALLOC, 0x3b81);
    assert_eq!(IOMMU_IOAS_MAP, 0x3b85);
    assert_eq!(IOMMU_IOAS_UNMAP, 0x3b86);
    assert_eq!(IOMMU_IOAS_MAP_FILE, 0x3b8f);
    assert_eq!(IOMMU_IOAS_CHANGE_PROCESS, 0x3b92);
    assert_eq!(VFIO_DEVICE_BIND_IOMMUFD, 0x3b76);
    assert_eq!(VFIO_DEVICE_ATTACH_IOMMUFD_PT, 0x3b77);
    assert_eq!(
        IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE,
        7
    );
}

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("vmm-iommufd-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn the_cdev_is_found_through_sysfs_and_its_absence_is_explained() {
    let sys = tmpdir("sys");
    let dev = std::path::Path::new("/dev/vfio/devices");
    std::fs::create_dir_all(sys.join("0000:00:03.0/vfio-dev/vfio7")).unwrap();
    assert_eq!(
        cdev_in(&sys, dev, "0000:00:03.0").unwrap(),
        dev.join("vfio7")
    );
    // No vfio-dev directory: not bound to vfio-pci, or no CONFIG_VFIO_DEVICE_CDEV.
    std::fs::create_dir_all(sys.join("0000:00:04.0")).unwrap();
    let e = cdev_in(&sys, dev, "0000:00:04.0").unwrap_err();
    assert!(matches!(e, IommufdError::NoCdev { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with("0000:00:04.0 has no VFIO device cdev (")
            && e.to_string().contains("CONFIG_VFIO_DEVICE_CDEV"),
        "{e}"
    );
    // Two entries: ambiguous, refused rather than guessed.
    std::fs::create_dir_all(sys.join("0000:00:05.0/vfio-dev/vfio1")).unwrap();
    std::fs::create_dir_all(sys.join("0000:00:05.0/vfio-dev/vfio2")).unwrap();
    assert!(cdev_in(&sys, dev, "0000:00:05.0").is_err());
    let _ = std::fs::remove_dir_all(&sys);
}

#[test]
fn restart_is_blocked_naming_each_missing_ioctl() {
    let ids = vec!["edu0".to_string(), "nic0".to_string()];
    let both = IommufdFeatures {
        map_file: true,
        change_process: true,
    };
    assert_eq!(restart_blocker(&ids, both), None);
    let no_change = IommufdFeatures {
        map_file: true,
        change_process: false,
    };
    let b = restart_blocker(&ids, no_change).unwrap();
    assert!(
        b.starts_with(
            "VFIO device(s) edu0, nic0: this kernel's iommufd lacks IOMMU_IOAS_CHANGE_PROCESS ("
        ),
        "{b}"
    );
    let neither = IommufdFeatures {
        map_file: false,
        change_process: false,
    };
    let b = restart_blocker(&ids, neither).unwrap();
    assert!(
        b.contains("lacks IOMMU_IOAS_MAP_FILE and IOMMU_IOAS_CHANGE_PROCESS"),
        "{b}"
    );
    assert_eq!(
        restart_blocker(&[], neither),
        None,
        "no devices, nothing blocked"
    );
}

#[test]
fn unsupported_means_enotty_or_eopnotsupp_only() {
    let e = |errno| IommufdError::Ioctl {
        ioctl: "IOMMU_IOAS_MAP_FILE",
        what: "x".into(),
        source: std::io::Error::from_raw_os_error(errno),
    };
    assert!(e(libc::ENOTTY).is_unsupported());
    assert!(e(libc::EOPNOTSUPP).is_unsupported());
    assert!(!e(libc::EINVAL).is_unsupported());
    assert!(!e(libc::ENOMEM).is_unsupported());
}

#[test]
fn opening_iommufd_without_dev_iommu_says_what_the_kernel_lacks() {
    if std::path::Path::new("/dev/iommu").exists() {
        // A host with iommufd: opening must work (root) or fail for another reason.
        return assert!(!matches!(Iommufd::open(), Err(IommufdError::NoIommufd)));
    }
    let e = Iommufd::open()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.starts_with("/dev/iommu does not exist: this kernel has no iommufd (CONFIG_IOMMUFD)"),
        "{e}"
    );
}

#[test]
fn iommufd_section_round_trips_and_old_readers_refuse_it() {
    let state = VfioIommufdState {
        object: "iommufd0".into(),
        ioas: 2,
        devices: vec![VfioIommufdDeviceRef {
            id: "edu0".into(),
            host: "0000:00:03.0".into(),
            devid: 1,
            cdev: "/dev/vfio/devices/vfio0".into(),
        }],
        mappings: vec![DmaMappingState {
            iova: 0,
            size: 64 << 20,
            block: "ram-below-4g".into(),
            file_offset: 0,
            st_dev: 0x10,
            st_ino: 4242,
        }],
    };
    let mut w = cpr_format::ImageWriter::new(cpr_format::sample::header());
    w.add_section("0", &state).unwrap();
    let image = cpr_format::Image::from_bytes(&w.to_bytes().unwrap()).unwrap();
    assert_eq!(
        image.section::<VfioIommufdState>("0").unwrap().unwrap(),
        state
    );
    let schema = cpr_format::Schema::new().with::<VfioIommufdState>();
    assert!(image.check_compat(&schema).is_compatible());
    // A binary that knows only the type1 container must refuse the (required) section.
    let type1_only = cpr_format::Schema::new().with::<super::set::VfioContainerState>();
    assert!(!image.check_compat(&type1_only).is_compatible());
}
