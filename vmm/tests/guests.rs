//! The committed test guests are exactly what their sources assemble to. Needs nasm
//! (`apt-get install nasm`); fails without it.

use std::path::PathBuf;
use std::process::Command;

const GUESTS: &[&str] = &[
    "counter",
    "ticker",
    "memcheck",
    "echo",
    "suspend",
    "exit",
    "vfio",
    "vfio-intx",
    "smpcount",
];

#[test]
fn guests_match_sources() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/guests");
    let out = std::env::temp_dir().join(format!("vmm-guests-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    for name in GUESTS {
        let built = out.join(name);
        let status = Command::new("nasm")
            .current_dir(&dir)
            .args(["-f", "bin", "-o"])
            .arg(&built)
            .arg(format!("{name}.asm"))
            .status()
            .unwrap_or_else(|e| panic!("cannot run nasm (apt-get install nasm): {e}"));
        assert!(status.success(), "nasm failed on {name}.asm");
        let committed = std::fs::read(dir.join(name)).unwrap();
        let fresh = std::fs::read(&built).unwrap();
        assert!(
            committed == fresh,
            "fixtures/guests/{name} differs from {name}.asm: run make in fixtures/guests"
        );
    }
    std::fs::remove_dir_all(&out).unwrap();
}
