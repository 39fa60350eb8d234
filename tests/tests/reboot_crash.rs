//! A vmm killed (SIGKILL) at random points of a reboot-mode cpr-save, a hundred times: any
//! file at the image's path opens, verifies (every CRC, every RAM region) and is complete;
//! otherwise there is none (or the previous, complete image).

use std::io::Write;
use std::time::{Duration, Instant};

use cpr_format::Image;
use cpr_tests::{guest, start_with_hmp, Hmp, Scratch, Vmm};

/// Sections every reboot-mode image of a 1-vCPU machine holds.
const REQUIRED: &[(&str, &str)] = &[
    ("machine", "0"),
    ("cpu", "0"),
    ("kvm.irqchip", "0"),
    ("kvm.pit", "0"),
    ("kvm.clock", "0"),
    ("serial.uart8250", "serial0"),
    ("pm", "0"),
    ("reboot.ram", "0"),
];

/// Checks that the file at `path` is a complete image; panics with the reason if not.
fn assert_complete(path: &std::path::Path, round: usize) {
    let img = Image::open(path).unwrap_or_else(|e| {
        panic!("round {round}: a file is at the image path but does not open: {e}")
    });
    img.verify_regions()
        .unwrap_or_else(|e| panic!("round {round}: a RAM region does not verify: {e}"));
    for (name, instance) in REQUIRED {
        assert!(
            img.find(name, instance).is_some(),
            "round {round}: image lacks section {name}/{instance}"
        );
    }
    // Every run the RAM section lists is a region of the image.
    let ram = img
        .find("reboot.ram", "0")
        .and_then(|s| s.value().ok())
        .unwrap_or_else(|| panic!("round {round}: reboot.ram unreadable"));
    let text = format!("{ram:?}");
    let regions = img.regions().len();
    assert!(regions > 0, "round {round}: no RAM in the image");
    assert_eq!(
        text.matches("ram.ram-below-4g.").count(),
        regions,
        "round {round}: RAM section and region table disagree"
    );
}

/// xorshift64*: reproducible random delays from a printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A memcheck guest (64 MiB) with HMP on a socket; its serial output is not needed.
fn start(dir: &Scratch) -> (Vmm, Hmp) {
    let kernel = guest("memcheck");
    let (vmm, _serial, hmp) =
        start_with_hmp(dir, &["-kernel", &kernel, "-m", "64M", "-serial", "null"]);
    (vmm, hmp)
}

#[test]
fn killed_during_cpr_save_never_leaves_an_incomplete_image() {
    let dir = Scratch::new("rb-crash");
    let img = dir.path("vm.cpr");
    let cmd = format!("cpr-save {} reboot\n", img.display());

    // How long one save takes here: the kills land within twice that span.
    let (vmm, mut hmp) = start(&dir);
    let t = Instant::now();
    let reply = hmp.cmd(cmd.trim_end());
    let span = t.elapsed();
    assert!(reply.contains("RAM in image"), "{reply}");
    assert_complete(&img, 0);
    drop(vmm);

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    println!("seed {seed:#x}, one save takes {span:?}");
    let mut rng = Rng(seed);
    let (mut absent, mut complete) = (0, 0);
    for round in 1..=100 {
        // Every other round starts without an image: a kill must then leave none, not a
        // partial one.
        if round % 2 == 0 {
            let _ = std::fs::remove_file(&img);
        }
        let had_image = img.exists();
        let (mut vmm, mut hmp) = start(&dir);
        let delay = Duration::from_nanos(rng.next() % (span.as_nanos() as u64 * 2 + 1));
        hmp.0.write_all(cmd.as_bytes()).expect("send cpr-save");
        std::thread::sleep(delay);
        // Child::kill sends SIGKILL.
        vmm.child.kill().expect("SIGKILL the vmm");
        let _ = vmm.child.wait();
        drop(hmp);
        if img.exists() {
            assert_complete(&img, round);
            complete += 1;
        } else {
            assert!(!had_image, "round {round}: the previous image vanished");
            absent += 1;
        }
    }
    println!("after 100 kills: {complete} complete images, {absent} rounds left none");
    // The next save completes, and clears what the killed ones left behind.
    let (vmm, mut hmp) = start(&dir);
    let reply = hmp.cmd(cmd.trim_end());
    assert!(reply.contains("RAM in image"), "{reply}");
    assert_complete(&img, 101);
    drop(vmm);
    // No temporary file of a killed save is left.
    for e in std::fs::read_dir(&dir.0).expect("scratch dir").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            name == "vm.cpr" || name == "mon.sock",
            "unexpected file {name}"
        );
    }
}
