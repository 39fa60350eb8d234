//! The lab host (tests/lab/): a Linux booted under QEMU's emulator whose own KVM and VFIO are
//! real. The lab tests share how they get a static `vmm` for it and how they run a lab script.
//!
//! The vmm must be linked statically for the lab's initramfs: it is built with `+crt-static`
//! for x86_64-unknown-linux-gnu into `<target>/lab`, apart from the normal build so neither
//! thrashes the other. `LAB_VMM_BIN=/path/to/static/vmm` skips that build. A machine without
//! the lab's tools (tests/lab/REQUIREMENTS) fails the test with that message; it never skips.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::workspace_root;

/// `<target>/lab` for this test executable (`<target>/<profile>/deps/<test>-<hash>`).
pub fn lab_target() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors()
        .nth(3)
        .map(|t| t.join("lab"))
        .expect("test executable lives in <target>/<profile>/deps")
}

/// A statically linked release `vmm`, built fresh (a no-op when up to date).
pub fn static_vmm(lab_target: &Path) -> PathBuf {
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

/// A statically linked release build of the vmm crate's example `name` (lab probes), built
/// like [`static_vmm`].
pub fn static_vmm_example(lab_target: &Path, name: &str) -> PathBuf {
    let triple = "x86_64-unknown-linux-gnu";
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(workspace_root())
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "vmm",
            "--example",
            name,
        ])
        .args(["--target", triple, "--target-dir"])
        .arg(lab_target)
        .output()
        .expect("run cargo build for a static vmm example");
    assert!(
        out.status.success(),
        "static build of example {name} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = lab_target.join(triple).join("release/examples").join(name);
    assert!(bin.exists(), "{} missing after cargo build", bin.display());
    bin
}

/// Runs `tests/lab/SCRIPT VMM` with `LAB_WORK=work` and `env`; fails the test unless the lab
/// printed `RESULT: PASS`. Returns the lab's stdout for the test's own checks.
pub fn run_lab(script: &str, vmm: &Path, work: &Path, env: &[(&str, &str)]) -> String {
    let script = workspace_root().join("tests/lab").join(script);
    let out = Command::new(&script)
        .arg(vmm)
        .env("LAB_WORK", work)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(2) {
        panic!("the lab cannot run on this machine (see tests/lab/REQUIREMENTS):\n{stderr}");
    }
    assert!(
        out.status.success() && stdout.lines().any(|l| l == "RESULT: PASS"),
        "the lab did not pass (exit {:?}).\n--- lab output ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status.code()
    );
    stdout
}
