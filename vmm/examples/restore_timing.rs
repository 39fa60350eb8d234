//! Times the machine half of a live update in one process: pause, save_state, map the same
//! memfds again, Machine::restore into a new KVM VM, resume.
//!
//! `cargo run --release -p vmm --example restore_timing -- [MEM_MIB] [VCPUS]`
//! Uses fixtures/guests/counter; prints each phase's duration.

use std::path::PathBuf;
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use vmm::machine::{GuestRam, Machine, MachineConfig, RamBackendConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mem_mib: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(256);
    let vcpus: u8 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1);
    let config = MachineConfig {
        name: None,
        mem_size: mem_mib << 20,
        vcpus,
        kernel: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/guests/counter"),
        initrd: None,
        cmdline: None,
        ram: RamBackendConfig::Memfd { hugetlb: false },
    };
    let (tx, _rx) = channel();
    let t = Instant::now();
    let mut old = Machine::new(&config, Box::new(std::io::sink()), tx)?;
    let build = t.elapsed();
    old.start()?;
    std::thread::sleep(Duration::from_millis(500));

    let t = Instant::now();
    old.pause()?;
    let pause = t.elapsed();
    let t = Instant::now();
    let state = old.save_state()?;
    let save = t.elapsed();
    let fds = old.ram().share_fds().ok_or("memfd RAM has fds")?;
    drop(old);

    let t = Instant::now();
    let ram = GuestRam::from_fds(fds)?;
    let map = t.elapsed();
    let (tx, _rx) = channel();
    let t = Instant::now();
    let mut new = Machine::restore(&config, ram, &state, Box::new(std::io::sink()), tx)?;
    let restore = t.elapsed();
    let t = Instant::now();
    new.resume()?;
    let resume = t.elapsed();
    println!(
        "mem {mem_mib} MiB, {vcpus} vCPU(s): new {build:?}, pause {pause:?}, save_state {save:?}, \
         map fds {map:?}, restore {restore:?}, resume {resume:?}"
    );
    Ok(())
}
