//! `make-fixtures --vmm BIN OUT_DIR`: runs every test guest under the given `vmm`, saves it
//! with cpr-save in restart and reboot modes, and writes the images, the guest's serial
//! output up to the save, and `fixtures.json` (what each image is and how it was made) into
//! OUT_DIR. scripts/release.sh runs it for `fixtures/images/VERSION/`; see
//! docs/RELEASING.md.

use std::path::PathBuf;
use std::process::ExitCode;

use cpr_tests::release::{all_fixture_specs, make_fixture, FixtureSet};

fn version_of(vmm: &PathBuf) -> Result<String, String> {
    let out = std::process::Command::new(vmm)
        .arg("-version")
        .output()
        .map_err(|e| format!("run {} -version: {e}", vmm.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix("vmm version "))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| format!("{} -version printed {text:?}", vmm.display()))
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (vmm, out) = match args.as_slice() {
        [flag, vmm, out] if flag == "--vmm" => (PathBuf::from(vmm), PathBuf::from(out)),
        _ => return Err("usage: make-fixtures --vmm BIN OUT_DIR".into()),
    };
    let vmm = std::fs::canonicalize(&vmm).map_err(|e| format!("{}: {e}", vmm.display()))?;
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let version = version_of(&vmm)?;
    let mut fixtures = Vec::new();
    for f in all_fixture_specs() {
        eprintln!("make-fixtures: {}", f.name);
        make_fixture(&vmm, &out, &f)?;
        fixtures.push(f);
    }
    let set = FixtureSet { version, fixtures };
    let json = serde_json::to_string_pretty(&set).map_err(|e| e.to_string())? + "\n";
    std::fs::write(out.join("fixtures.json"), json).map_err(|e| e.to_string())?;
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("make-fixtures: {e}");
            ExitCode::from(1)
        }
    }
}
