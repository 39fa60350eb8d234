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

use std::path::{Path, PathBuf};
use std::process::Command;

use cpr_tests::workspace_root;

/// `<target>` of this test executable (`<target>/<profile>/deps/<test>-<hash>`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .expect("test executable lives in <target>/<profile>/deps")
}

/// A statically linked release `vmm`, built fresh (a no-op when up to date).
fn static_vmm(lab_target: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("LAB_VMM_BIN") {
        return PathBuf::from(p);
    }
    let triple = "x86_64-unknown-linux-gnu";
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // With --target, RUSTFLAGS reach only the target crates, not build scripts or proc macros
    // (which cannot be linked statically against glibc).
    let out = Command::new(cargo)
        .current_dir(workspace_root())
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .args(["build", "--quiet", "--release", "-p", "vmm", "--bin", "vmm"])
        .args(["--target", triple, "--target-dir"])
        .arg(lab_target)
        .output()
        .expect("run cargo build for the static vmm");
    assert!(
        out.status.success(),
        "static build of vmm failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = lab_target.join(triple).join("release").join("vmm");
    assert!(bin.exists(), "{} missing after cargo build", bin.display());
    bin
}

#[test]
fn vmm_boots_linux_to_a_shell_prompt_in_the_lab() {
    let lab_target = target_dir().join("lab");
    let vmm = static_vmm(&lab_target);
    let script = workspace_root().join("tests/lab/linux-boot.sh");
    let out = Command::new(&script)
        .arg(&vmm)
        // The downloaded kernel is cached here; `cargo clean` removes it.
        .env("LAB_WORK", lab_target.join("work"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(2) {
        panic!("the lab cannot run on this machine (see tests/lab/REQUIREMENTS):\n{stderr}");
    }
    assert!(
        out.status.success() && stdout.lines().any(|l| l == "RESULT: PASS"),
        "the lab did not pass (exit {:?}).\n--- lab output ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status.code()
    );
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
