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
    // With --target, RUSTFLAGS reach only the target crates, not build scripts or proc macros.
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
fn linux_guest_survives_a_restart_live_update_in_the_lab() {
    let lab_target = target_dir().join("lab");
    let vmm = static_vmm(&lab_target);
    let script = workspace_root().join("tests/lab/linux-boot.sh");
    let work = lab_target.join("work-update");
    // The kernel download is cached per work directory: share the other lab tests' copy.
    let dl = lab_target.join("work").join("dl");
    if dl.is_dir() && !work.join("dl").exists() {
        std::fs::create_dir_all(&work).expect("create the lab work directory");
        let _ = std::os::unix::fs::symlink(&dl, work.join("dl"));
    }
    let out = Command::new(&script)
        .arg(&vmm)
        .env("LAB_UPDATE", "1")
        // Its own work directory: the lab's logs and initramfs are not shared with lab_linux,
        // which may run at the same time.
        .env("LAB_WORK", &work)
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
