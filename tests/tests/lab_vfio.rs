//! Lab test: VFIO device assignment and live update with VFIO, restart and transfer mode.
//!
//! `tests/lab/vfio.sh` boots the lab host (QEMU TCG, nested SVM, emulated Intel IOMMU, QEMU's
//! edu and an e1000e bound to vfio-pci) and runs our static vmm in it with both devices
//! assigned to `fixtures/guests/vfio`. The guest DMAs both ways through guest RAM and takes
//! an MSI per DMA plus two e1000e MSI-X vectors per iteration, checking the bytes and that
//! every interrupt count equals the iteration count. In one boot: one cpr-exec fails on
//! purpose (the guest must carry on), cpr-save / cpr-exec / cpr-load run three times in the
//! middle of the loop; then cpr-transfer to a successor that stops itself and is killed
//! (SIGKILL) at `hello` (before it touched the DMA mappings), at `ready` (it already took
//! them over) and at `restored` (devices restored, guest paused), each time the guest must
//! carry on in the old process; then two
//! chained cpr-transfers to successor processes, after which the old process has exited and
//! the guest DMAs and interrupts in the new one. Then `fixtures/guests/vfio-intx`, whose edu
//! DMA completions arrive on INTx (level-triggered IOAPIC pin, resample irqfd), goes through
//! a restart-mode update and a transfer. Then unprivileged vmms (user `lab`, no
//! capabilities): a successor whose RLIMIT_MEMLOCK (16 MiB) is below guest RAM is refused by
//! the kernel when it maps the DMA mappings, before the pause, and the guest goes on in the
//! old process; a successor with room (128 MiB) takes it. Last, the same restart update and
//! transfer of a guest without devices give the pauses without VFIO.
//!
//! Needs what `tests/lab/REQUIREMENTS` lists; fails (never skips) without it.
//! `LAB_VMM_BIN=/path/to/static/vmm` skips the static build.

use cpr_tests::lab::{lab_target, run_lab, static_vmm};

#[test]
fn assigned_edu_and_e1000e_keep_dmaing_and_interrupting_across_live_updates() {
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
            ("LAB_TRANSFER", "2"),
            ("LAB_TRANSFER_KILL", "hello ready restored"),
            ("LAB_INTX", "1"),
            ("LAB_MEMLOCK", "1"),
            ("VFIO_ITERS", "50"),
        ],
    );
    let has = |s: &str| stdout.lines().any(|l| l.contains(s));
    assert!(
        has("exec failure recovered"),
        "no failed cpr-exec was tried:\n{stdout}"
    );
    assert!(
        has("live update 3 done"),
        "no live update happened:\n{stdout}"
    );
    assert!(
        has("live update 2 done (one command)")
            && has("after update 2 the guest reached iteration"),
        "no one-command live update with the devices assigned:\n{stdout}"
    );
    for step in ["hello", "ready", "restored"] {
        assert!(
            has(&format!(
                "successor killed at '{step}': cpr-transfer answered: Error"
            )),
            "no successor killed at '{step}' was reported:\n{stdout}"
        );
    }
    assert!(
        has("went on in the old process"),
        "the guest did not go on after a killed successor:\n{stdout}"
    );
    // The old process took the mappings back from a successor that had mapped them.
    assert!(
        has("taken back from the successor"),
        "no DMA mapping was reclaimed from a killed successor:\n{stdout}"
    );
    assert!(
        has("transfer 2 done") && has("after transfer 2 the guest reached iteration"),
        "the chained transfers did not complete:\n{stdout}"
    );
    // Locked-page accounting moved to the successor when it mapped the same pages.
    assert!(
        stdout.lines().any(|l| l.contains("successor ready with the DMA mappings")
            && l.ends_with("now 0 kB")),
        "the old process kept its locked pages after the successor's MAP_DMA(VADDR):\n{stdout}"
    );
    // edu on INTx (level, resample) through a restart-mode update and a transfer; the
    // guest checks one INTx per DMA completion, and check_counts the totals.
    assert!(
        has("INTx active: after the live update the guest reached iteration")
            && has("INTx active: after the transfer the guest reached iteration"),
        "no live update with INTx active:\n{stdout}"
    );
    // Unprivileged vmms: the kernel refuses a successor whose RLIMIT_MEMLOCK is below
    // guest RAM at MAP_DMA(VADDR), before the pause; the guest goes on in the old process.
    assert!(
        has("unprivileged successor, RLIMIT_MEMLOCK 16 MiB: cpr-transfer answered: Error")
            && has("(RLIMIT_MEMLOCK) unless it has CAP_IPC_LOCK")
            && has("after the refused transfer the guest went on in the old process"),
        "a successor over its locked-memory limit was not refused with the reason:\n{stdout}"
    );
    assert!(
        has("after the unprivileged transfer the guest reached iteration"),
        "no unprivileged transfer:\n{stdout}"
    );
    assert!(
        has("baseline transfer without VFIO"),
        "no baseline transfer:\n{stdout}"
    );
    // Pauses and phases, shown with --nocapture.
    for line in stdout.lines().filter(|l| l.starts_with("lab: ")) {
        println!("{line}");
    }
}
