//! Runs a kernel or test guest with the machine alone (no front end), serial on stdout.
//!
//! `cargo run -p vmm --example run_guest -- fixtures/guests/counter [SECONDS] [MEM_MIB]`
//! Prints machine events to stderr; after SECONDS (default 3) pauses, prints the register
//! dump of vCPU 0 and exits. Exits with the guest's code on a debug exit.

use std::path::PathBuf;
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use vmm::machine::{Machine, MachineConfig, MachineEvent, RamBackendConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let kernel = PathBuf::from(
        args.next()
            .ok_or("usage: run_guest KERNEL [SECONDS] [MEM_MIB]")?,
    );
    let secs: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(3);
    let mem_mib: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(64);
    let config = MachineConfig {
        name: None,
        mem_size: mem_mib << 20,
        vcpus: 1,
        kernel,
        initrd: None,
        cmdline: None,
        ram: RamBackendConfig::Memfd { hugetlb: false },
    };
    let (tx, rx) = channel();
    let t0 = Instant::now();
    let mut m = Machine::new(&config, Box::new(std::io::stdout()), tx)?;
    eprintln!("[built in {:?}]", t0.elapsed());
    m.start()?;
    let deadline = Instant::now() + Duration::from_secs(secs);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(MachineEvent::DebugExit(code)) => {
                eprintln!("[debug exit {code}]");
                std::process::exit(i32::from(code));
            }
            Ok(ev) => eprintln!("[event {ev:?}]"),
            Err(_) => break,
        }
    }
    m.pause()?;
    eprintln!("{}", m.describe_registers(0)?);
    for line in m.describe_cpus() {
        eprintln!("{line}");
    }
    Ok(())
}
