//! Lab test: VFIO through iommufd, and live update with it.
//!
//! `tests/lab/iommufd.sh` builds (first run only; cached in `<target>/lab/work/kernel`) a lab
//! kernel with iommufd from Debian's linux-source package (`tests/lab/build-kernel.sh`:
//! Debian's kernel packages have no iommufd), boots it under QEMU TCG with nested SVM, an
//! emulated Intel IOMMU, QEMU's edu and an e1000e bound to vfio-pci, and checks:
//! - the probe (`vmm/examples/iommufd_probe.rs`): both devices bind and attach through their
//!   cdevs, IOMMU_IOAS_MAP_FILE maps a memfd, IOMMU_IOAS_CHANGE_PROCESS works before and
//!   after an exec and the file mapping survives the exec;
//! - our vmm, unprivileged, with `-object iommufd` and both devices assigned through it to
//!   `fixtures/guests/vfio` (DMA both ways, MSI, MSI-X, INTx) under `-only-cpr-capable`; one
//!   cpr-exec fails on purpose (the guest carries on), then two restart-mode live updates in
//!   the middle of the DMA loop, after each of which the pinned guest RAM is charged to the
//!   new process image (VmPin) and every interrupt count still equals the iteration count;
//! - then cpr-transfer (transfer mode) of the same guest: successors that stop themselves
//!   and are killed at `hello` (before they took anything), `ready` (they had taken the
//!   pinned pages with IOMMU_IOAS_CHANGE_PROCESS) and `restored` (devices restored, guest
//!   paused): each time cpr-transfer reports the failure, the old process takes the pinned
//!   pages back and the guest goes on in it; then two chained transfers, after each of
//!   which the old vmm has exited, the pinned guest RAM is charged to the successor and
//!   the guest goes on DMAing with every interrupt accounted for.
//!
//! First run: ~170 MB download and ~10 min of kernel build on 2 cores (see
//! docs/VFIO.md). Needs what `tests/lab/REQUIREMENTS` lists; fails (never skips) without it.

use cpr_tests::lab::{lab_target, run_lab, static_vmm, static_vmm_example};

#[test]
fn devices_assigned_through_iommufd_keep_dmaing_across_live_updates() {
    let lab_target = lab_target();
    let vmm = static_vmm(&lab_target);
    let probe = static_vmm_example(&lab_target, "iommufd_probe");
    let probe = probe.to_string_lossy().into_owned();
    let stdout = run_lab(
        "iommufd.sh",
        &vmm,
        &lab_target.join("work"),
        &[
            ("IOMMUFD_PROBE", probe.as_str()),
            ("LAB_UPDATE", "2"),
            ("LAB_EXEC_FAIL", "1"),
            ("LAB_TRANSFER", "2"),
            ("LAB_TRANSFER_KILL", "hello ready restored"),
            ("VFIO_ITERS", "60"),
        ],
    );
    for want in [
        "lab: probe: IOMMU_IOAS_MAP_FILE accepted",
        "lab: probe: IOMMU_IOAS_CHANGE_PROCESS accepted after exec",
        "lab: iommufd probe passed",
        "map_file: true, change_process: true",
        "exec failure recovered",
        "live update 2 done",
        "after update 2 VmPin of the new process image: 65536 kB",
        // A successor stopped after taking the pinned pages holds them; killed, the old
        // process takes them back and keeps the guest.
        "lab: successor stopped at 'ready': VmPin of the old process 0 kB, of the successor 65536 kB",
        "successor killed at 'hello': cpr-transfer answered: Error",
        "successor killed at 'ready': cpr-transfer answered: Error",
        "successor killed at 'restored': cpr-transfer answered: Error",
        "after the successor killed at 'restored' VmPin of the old process: 65536 kB",
        "reclaimed by this process (IOMMU_IOAS_CHANGE_PROCESS)",
        "after the killed transfer the guest went on in the old process",
        "transfer 2 done at iteration",
        "after transfer 2 VmPin of the successor: 65536 kB",
        "after transfer 2 the guest reached iteration",
    ] {
        assert!(
            stdout.contains(want),
            "no '{want}' in the lab output:\n{stdout}"
        );
    }
    for line in stdout.lines().filter(|l| l.starts_with("lab: ")) {
        println!("{line}");
    }
}
