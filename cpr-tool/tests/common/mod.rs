//! Driving the built `cpr-tool` binary from the sample images' directory, so every
//! path it prints is relative and snapshots hold no machine-specific text.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub const BIN: &str = env!("CARGO_BIN_EXE_cpr-tool");

/// The workspace's fixtures directory.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cpr-tool lives inside the workspace")
        .join("fixtures")
}

pub fn samples() -> PathBuf {
    fixtures().join("images/samples")
}

/// Every sample image, by file name, sorted.
pub fn sample_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(samples())
        .expect("fixtures/images/samples exists")
        .map(|e| {
            e.expect("readable directory")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".cpr"))
        .collect();
    names.sort();
    assert!(names.len() >= 4, "sample images missing: {names:?}");
    names
}

/// Every image under fixtures/images (samples and any others), absolute paths.
pub fn all_images() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("readable directory") {
            let p = e.expect("readable entry").path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "cpr") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&fixtures().join("images"), &mut out);
    out.sort();
    out
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Run the tool in the samples directory with a clean environment for its variables.
pub fn run(args: &[&str]) -> Run {
    run_in(&samples(), args)
}

pub fn run_in(dir: &Path, args: &[&str]) -> Run {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("CPR_TOOL_RENAMES")
        .env_remove("CPR_TOOL_SCHEMAS_DIR")
        .output()
        .expect("cpr-tool runs");
    Run {
        // A signal (a crash) has no exit code: report it as -1 so asserts fail.
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Assert the one-line error contract: exit 2, nothing on stdout, one line on stderr
/// starting with `cpr-tool: `, no panic.
pub fn assert_error(r: &Run, what: &str) {
    assert_eq!(r.code, 2, "{what}: exit code; stderr: {}", r.stderr);
    assert!(
        r.stdout.is_empty(),
        "{what}: stdout not empty: {}",
        r.stdout
    );
    assert!(
        r.stderr.starts_with("cpr-tool: ")
            && r.stderr.ends_with('\n')
            && r.stderr.lines().count() == 1,
        "{what}: stderr is not one line: {:?}",
        r.stderr
    );
    assert!(!r.stderr.contains("panicked"), "{what}: {}", r.stderr);
}

/// A scratch directory for one test, emptied first.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch directory");
    dir
}
