//! VFIO on the build machines, which have no VFIO: what can be checked here without a device.

use cpr_tests::{guest, run_vmm};

fn vfio_guest() -> String {
    guest("vfio")
}

#[test]
fn guest_scans_pci_bus_zero_and_reports_the_missing_device() {
    // The guest walks all 32 slots through 0xcf8/0xcfc (host bridge at 0, nothing else) and
    // stops with exit code 1 when no edu answers.
    let out = run_vmm(&["-machine", "memfd-alloc=on", "-kernel", &vfio_guest()]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "vfio FAIL no edu device on bus 0 at iter 0\n"
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn assigning_a_device_without_vfio_fails_at_start_and_names_the_device() {
    let out = run_vmm(&[
        "-machine",
        "memfd-alloc=on",
        "-kernel",
        &vfio_guest(),
        "-device",
        "vfio-pci,host=00:1f.7,id=nic0",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot assign the VFIO devices")
            && (stderr.contains("/dev/vfio/vfio") || stderr.contains("0000:00:1f.7")),
        "stderr: {stderr}"
    );
}

#[test]
fn assigning_through_iommufd_on_a_kernel_without_it_says_what_is_missing() {
    // The build machines' kernels have no iommufd: start-up must fail, naming the missing
    // /dev/iommu and the kernel option, not a bare ENOENT.
    assert!(
        !std::path::Path::new("/dev/iommu").exists(),
        "this test expects a host without iommufd (/dev/iommu exists here)"
    );
    let out = run_vmm(&[
        "-machine",
        "memfd-alloc=on",
        "-kernel",
        &vfio_guest(),
        "-object",
        "iommufd,id=iommufd0",
        "-device",
        "vfio-pci,host=00:1f.7,id=nic0,iommufd=iommufd0",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot assign the VFIO devices")
            && stderr
                .contains("/dev/iommu does not exist: this kernel has no iommufd (CONFIG_IOMMUFD)"),
        "stderr: {stderr}"
    );
}
