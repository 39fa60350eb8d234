//! Lab test: a Linux guest survives a restart-mode live update of our vmm.
//!
//! `tests/lab/linux-boot.sh` with `LAB_UPDATE=1` boots the lab host (QEMU TCG, nested SVM, see
//! `lab_linux.rs`) whose init (`tests/lab/update-l1-init`) runs our static vmm with the Debian
//! kernel and busybox initramfs, memfd RAM (`-machine memfd-alloc=on`) and the serial console
//! and an HMP monitor sharing stdio. At the guest's shell prompt it reads the guest's uptime,
//! then does cpr-save (restart mode), cpr-exec of the same vmm with `-S` and cpr-load, and
//! types a command into the same shell: it must answer `alive-42`, from the same shell
//! process, with an uptime that went on. The pause (`info cpr`) is printed with --nocapture.
//!
//! Needs what `tests/lab/REQUIREMENTS` lists; fails (never skips) without it.
//! `LAB_VMM_BIN=/path/to/static/vmm` skips the static build.

use cpr_tests::lab::{lab_target, run_lab, static_vmm};

#[test]
fn linux_guest_survives_a_restart_live_update_in_the_lab() {
    let lab_target = lab_target();
    let vmm = static_vmm(&lab_target);
    let work = lab_target.join("work-update");
    // The kernel download is cached per work directory: share the other lab tests' copy.
    let dl = lab_target.join("work").join("dl");
    if dl.is_dir() && !work.join("dl").exists() {
        std::fs::create_dir_all(&work).expect("create the lab work directory");
        let _ = std::os::unix::fs::symlink(&dl, work.join("dl"));
    }
    // Its own work directory: the lab's logs and initramfs are not shared with lab_linux,
    // which may run at the same time.
    let stdout = run_lab("linux-boot.sh", &vmm, &work, &[("LAB_UPDATE", "1")]);
    // The lab's own lines (the console's escape codes may precede one on its line).
    for line in stdout
        .lines()
        .filter(|l| l.contains("lab: ") && !l.contains("lab: ---") || l.contains("load average"))
    {
        println!("{line}");
    }
    assert!(
        stdout.contains("lab: live update done: pause: "),
        "no pause reported by info cpr:\n{stdout}"
    );
    assert!(
        stdout.contains("lab: the L2 shell answered after the update: alive-42 "),
        "the L2 shell did not answer after the live update:\n{stdout}"
    );
    println!("RESULT: PASS");
}
