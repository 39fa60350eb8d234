//! Lab test: VFIO device assignment and live update with VFIO.
//!
//! `tests/lab/vfio.sh` boots the lab host (QEMU TCG, nested SVM, emulated Intel IOMMU, QEMU's
//! edu and an e1000e bound to vfio-pci) and runs our static vmm in it with both devices
//! assigned to `fixtures/guests/vfio`. The guest DMAs both ways through guest RAM and takes
//! an MSI per DMA plus two e1000e MSI-X vectors per iteration, checking the bytes and that
//! every interrupt count equals the iteration count. One cpr-exec fails on purpose (the guest
//! must carry on), then cpr-save / cpr-exec / cpr-load run three times in the middle of the
//! loop; last, the same update of a guest without devices gives the pause without VFIO.
//!
//! Needs what `tests/lab/REQUIREMENTS` lists; fails (never skips) without it.
//! `LAB_VMM_BIN=/path/to/static/vmm` skips the static build.

use cpr_tests::lab::{lab_target, run_lab, static_vmm};

#[test]
fn assigned_edu_and_e1000e_keep_dmaing_and_interrupting_across_a_live_update() {
    let lab_target = lab_target();
    let vmm = static_vmm(&lab_target);
    let stdout = run_lab(
        "vfio.sh",
        &vmm,
        &lab_target.join("work"),
        &[
            ("LAB_UPDATE", "3"),
            ("LAB_BASELINE", "1"),
            ("LAB_EXEC_FAIL", "1"),
            ("VFIO_ITERS", "40"),
        ],
    );
    assert!(
        stdout.contains("exec failure recovered"),
        "no failed cpr-exec was tried:\n{stdout}"
    );
    assert!(
        stdout.contains("live update 3 done"),
        "no live update happened:\n{stdout}"
    );
    // Pause and its phases, shown with --nocapture.
    for line in stdout.lines().filter(|l| l.starts_with("lab: ")) {
        println!("{line}");
    }
}
