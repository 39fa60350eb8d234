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

use std::path::{Path, PathBuf};
use std::process::Command;

use cpr_tests::workspace_root;

fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .expect("test executable lives in <target>/<profile>/deps")
}

fn static_vmm(lab_target: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("LAB_VMM_BIN") {
        return PathBuf::from(p);
    }
    let triple = "x86_64-unknown-linux-gnu";
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
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
    lab_target.join(triple).join("release").join("vmm")
}

#[test]
fn assigned_edu_and_e1000e_keep_dmaing_and_interrupting_across_a_live_update() {
    let lab_target = target_dir().join("lab");
    let vmm = static_vmm(&lab_target);
    let script = workspace_root().join("tests/lab/vfio.sh");
    let out = Command::new(&script)
        .arg(&vmm)
        .env("LAB_WORK", lab_target.join("work"))
        .env("LAB_UPDATE", "3")
        .env("LAB_BASELINE", "1")
        .env("LAB_EXEC_FAIL", "1")
        .env("VFIO_ITERS", "40")
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
