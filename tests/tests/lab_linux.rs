//! Lab test: our vmm boots a Linux guest with 2 vCPUs to an interactive shell on its serial
//! console; the shell answers a typed command and the guest runs both CPUs.
//!
//! The build machines' /dev/kvm is far too slow for Linux, so `tests/lab/linux-boot.sh` boots a
//! lab host under QEMU's software emulator whose own KVM (nested SVM) runs at full speed, and
//! runs our vmm inside it (see the script). The vmm must be linked statically for the lab's
//! initramfs: this test builds it with `+crt-static` for x86_64-unknown-linux-gnu into
//! `<target>/lab`, apart from the normal build so neither thrashes the other.
//! `LAB_VMM_BIN=/path/to/static/vmm` skips that build.
//!
//! Needs the Debian packages listed in `tests/lab/REQUIREMENTS` and apt's package lists (for
//! the kernel). If they are missing the test fails and says so; it never skips.

use cpr_tests::lab::{lab_target, run_lab, static_vmm};

#[test]
fn vmm_boots_linux_to_a_shell_prompt_in_the_lab() {
    let lab_target = lab_target();
    let vmm = static_vmm(&lab_target);
    // The downloaded kernel is cached in the work directory; `cargo clean` removes it.
    let stdout = run_lab("linux-boot.sh", &vmm, &lab_target.join("work"), &[]);
    // The L1 init measured it, on a wall clock that stretches with the host's load: both are
    // shown with --nocapture.
    for line in stdout
        .lines()
        .filter(|l| l.contains("boot time") || l.contains("load average"))
    {
        println!("{line}");
    }
    assert!(
        stdout.contains("lab-answer 42 cpus=2"),
        "the L2 shell did not answer the typed command with 2 CPUs online:\n{stdout}"
    );
}
