//! Encode and decode+verify timings of a typical image (4 vCPUs with full register state,
//! 12 devices, 20 fd manifest entries). Run with:
//!
//! ```text
//! cargo run --release -p cpr-format --example bench
//! ```
//!
//! Goal: under 100 µs each, under 64 KiB on disk. Measured on the 2-core build machine
//! (release, best of 5 x 2000, thread CPU time): encode 54 µs, open + verify 47 µs,
//! open + verify + typed decode of every section 72 µs; 39,113 bytes (38.2 KiB), of
//! which 6,528 are the embedded schema.

use std::time::{Duration, Instant};

use cpr_format::sample::{self, CpuExtState, DeviceState, RegsState, SregsState};
use cpr_format::Image;

/// CPU time of this thread: unlike wall time, it does not count the time other jobs
/// on the shared machine hold the CPU.
fn thread_cpu() -> Duration {
    let mut ts = nix::libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    let rc = unsafe { nix::libc::clock_gettime(nix::libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// (wall, cpu) per iteration: best of five runs of `iters` after a warm-up.
fn time<F: FnMut()>(iters: u32, mut f: F) -> (Duration, Duration) {
    for _ in 0..iters / 10 + 1 {
        f();
    }
    let runs: Vec<(Duration, Duration)> = (0..5)
        .map(|_| {
            let (t, c) = (Instant::now(), thread_cpu());
            for _ in 0..iters {
                f();
            }
            (t.elapsed() / iters, (thread_cpu() - c) / iters)
        })
        .collect();
    let wall = runs.iter().map(|r| r.0).min().unwrap_or_default();
    let cpu = runs.iter().map(|r| r.1).min().unwrap_or_default();
    (wall, cpu)
}

fn show(name: &str, (wall, cpu): (Duration, Duration)) {
    println!(
        "{name:<24} {:>7.1} µs wall, {:>7.1} µs CPU",
        wall.as_secs_f64() * 1e6,
        cpu.as_secs_f64() * 1e6
    );
}

fn main() -> Result<(), cpr_format::Error> {
    let iters = 2000;
    let bytes = sample::typical_writer()?.to_bytes()?;
    let img = Image::from_bytes(&bytes)?;
    let schema_len = {
        let mut v = Vec::new();
        ciborium::ser::into_writer(img.schema(), &mut v).map_err(|e| {
            cpr_format::Error::Encode {
                location: cpr_format::Location::Element("schema"),
                reason: e.to_string(),
            }
        })?;
        v.len()
    };

    // Encode: build the writer from state structs (as a VMM does at save) and encode.
    let states: Vec<_> = (0..4).map(sample::vcpu).collect();
    let devices: Vec<_> = (0..12).map(sample::device).collect();
    let fds: Vec<_> = (0..20).map(sample::fd).collect();
    let encode = time(iters, || {
        let mut w = cpr_format::ImageWriter::new(sample::header());
        for (i, (r, s, e)) in states.iter().enumerate() {
            let id = i.to_string();
            w.add_section(&id, r).unwrap();
            w.add_section(&id, s).unwrap();
            w.add_section(&id, e).unwrap();
        }
        for (i, d) in devices.iter().enumerate() {
            w.add_section(&format!("dev{i}"), d).unwrap();
        }
        for f in &fds {
            w.add_fd(f.clone()).unwrap();
        }
        std::hint::black_box(w.to_bytes().unwrap());
    });

    // Decode + verify: validate everything, then decode every section into its type.
    let decode = time(iters, || {
        let img = Image::from_bytes(&bytes).unwrap();
        for i in 0..4 {
            let id = i.to_string();
            std::hint::black_box(img.section::<RegsState>(&id).unwrap());
            std::hint::black_box(img.section::<SregsState>(&id).unwrap());
            std::hint::black_box(img.section::<CpuExtState>(&id).unwrap());
        }
        std::hint::black_box(img.sections_of::<DeviceState>().unwrap());
    });

    let verify_only = time(iters, || {
        std::hint::black_box(Image::from_bytes(&bytes).unwrap());
    });

    println!("typical image: 4 vCPUs (regs, sregs, xsave 4 KiB, lapic 1 KiB, 40 MSRs), 12 devices, 20 fds");
    println!(
        "size on disk:            {} bytes ({:.1} KiB), of which schema {} bytes",
        bytes.len(),
        bytes.len() as f64 / 1024.0,
        schema_len
    );
    show("encode:", encode);
    show("open + verify:", verify_only);
    show("open + verify + decode:", decode);
    Ok(())
}
