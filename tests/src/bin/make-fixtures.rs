//! `make-fixtures --vmm BIN OUT_DIR`: runs every test guest under the given `vmm`, saves it
//! with cpr-save in restart and reboot modes, and writes the images, the guest's serial
//! output up to the save, and `fixtures.json` (what each image is and how it was made) into
//! OUT_DIR. scripts/release.sh runs it for `fixtures/images/VERSION/`; see
//! docs/RELEASING.md.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use cpr_tests::release::{guest_args, ready_marker, Fixture, FixtureSet, GuestRun, GuestState};
use cpr_tests::Scratch;

/// RAM of every fixture guest: small, so reboot-mode images (RAM inside) stay small.
const MEM: &str = "32M";

/// (guest, vCPUs) of every fixture, in both modes. The `exit` guest is left out: it ends the
/// VMM within a few instructions, so there is no running guest to save.
const GUESTS: &[(&str, u32)] = &[
    ("counter", 1),
    ("counter", 4),
    ("ticker", 1),
    ("memcheck", 1),
    ("echo", 1),
    ("suspend", 1),
];

fn spec(mode: &str, guest: &str, vcpus: u32) -> Fixture {
    let mut machine: Vec<String> = vec!["-m".into(), MEM.into(), "-smp".into(), vcpus.to_string()];
    let save = match mode {
        // Restart mode needs RAM in a memfd (it is handed to the new process, not saved).
        "restart" => {
            machine.extend(["-machine".into(), "memfd-alloc=on".into()]);
            "restart".to_string()
        }
        // Anonymous RAM goes into the image: the fixture is self-contained.
        _ => "reboot ram=in-image".to_string(),
    };
    Fixture {
        name: format!("{mode}-{guest}-{vcpus}cpu"),
        mode: mode.into(),
        guest: guest.into(),
        vcpus,
        machine,
        save,
        state: if guest == "suspend" {
            GuestState::Suspended
        } else {
            GuestState::Running
        },
        self_contained: mode == "reboot",
    }
}

fn make(vmm: &PathBuf, out: &std::path::Path, f: &Fixture) -> Result<(), String> {
    let dir = Scratch::new(&format!("fixture-{}", f.name));
    let img = dir.path("vm.cpr");
    let mut g = GuestRun::start(vmm, &dir, guest_args(&dir, &f.guest, &f.machine), false);
    if f.guest == "echo" {
        g.out.wait_for("echo ready\n");
        g.stdin
            .write_all(b"before save\r")
            .map_err(|e| format!("type into the echo guest: {e}"))?;
    }
    g.out.wait_for(ready_marker(&f.guest));
    if f.state == GuestState::Suspended {
        g.wait_status("VM status: paused (suspended)\n");
    }
    let reply = g.hmp.cmd(&format!("cpr-save {} {}", img.display(), f.save));
    let ok = match f.mode.as_str() {
        "restart" => reply.is_empty(),
        _ => reply.contains("RAM in image"),
    };
    if !ok {
        return Err(format!("{}: cpr-save answered {reply:?}", f.name));
    }
    let serial = g.quit();
    std::fs::copy(&img, out.join(f.image_file()))
        .map_err(|e| format!("copy {}: {e}", img.display()))?;
    std::fs::write(out.join(f.serial_file()), serial)
        .map_err(|e| format!("write {}: {e}", f.serial_file()))?;
    Ok(())
}

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
    for mode in ["restart", "reboot"] {
        for (guest, vcpus) in GUESTS {
            let f = spec(mode, guest, *vcpus);
            eprintln!("make-fixtures: {}", f.name);
            make(&vmm, &out, &f)?;
            fixtures.push(f);
        }
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
