//! How fast a machine runs the kinds of work a live update's phases are made of: a system
//! call, plain integer code, a page fault, starting a thread, handing over to another
//! thread, creating a KVM VM and vCPU, and a vCPU ioctl. `lab-driver
//! --calibrate` runs it inside the lab and `lab-bench` on the host, so a lab figure can be
//! read against the build machine's (the lab's CPU is emulated).

use std::hint::black_box;
use std::sync::mpsc;
use std::time::Instant;

use serde_json::{json, Value};

const SYSCALLS: u32 = 50_000;
const LOOP: u64 = 5_000_000;
const SPAWNS: u32 = 100;
const HANDOFFS: u32 = 2_000;
const FAULT_BYTES: usize = 16 << 20;
const PAGE: usize = 4096;
const VCPU_IOCTLS: u32 = 2_000;

fn per(start: Instant, n: u64, unit_ns: f64) -> f64 {
    let v = start.elapsed().as_nanos() as f64 / n as f64 / unit_ns;
    (v * 1000.0).round() / 1000.0
}

/// `{"syscall-us", "integer-loop-ns", "page-fault-us", "thread-spawn-us", "thread-handoff-us",
/// "kvm-vm-vcpu-ms", "kvm-get-regs-us"}`: the mean cost of one getppid(2), one xorshift step,
/// the first write to a fresh 4 KiB page, one thread spawn + join, one hand-over between two
/// threads blocked on channels (half a round trip), opening /dev/kvm with one VM and one
/// vCPU (the process's first time, `kvm-vm-vcpu-first-ms`, and again), and one
/// KVM_GET_REGS. The KVM figures are null without /dev/kvm.
pub fn calibrate() -> Value {
    let t = Instant::now();
    for _ in 0..SYSCALLS {
        // SAFETY: getppid takes no arguments, touches no memory and cannot fail.
        black_box(unsafe { libc::getppid() });
    }
    let syscall_us = per(t, SYSCALLS.into(), 1e3);

    let t = Instant::now();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..LOOP {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x = black_box(x);
    }
    let loop_ns = per(t, LOOP, 1.0);

    let t = Instant::now();
    for _ in 0..SPAWNS {
        if std::thread::spawn(|| black_box(1)).join().is_err() {
            return json!({ "error": "a calibration thread panicked" });
        }
    }
    let spawn_us = per(t, SPAWNS.into(), 1e3);

    let t = Instant::now();
    let mut fresh = vec![0u8; FAULT_BYTES];
    for page in fresh.chunks_mut(PAGE) {
        page[0] = 1;
    }
    black_box(&fresh);
    let fault_us = per(t, (FAULT_BYTES / PAGE) as u64, 1e3);
    drop(fresh);

    let (to_peer, peer_rx) = mpsc::channel::<u32>();
    let (to_main, main_rx) = mpsc::channel::<u32>();
    let peer = std::thread::spawn(move || {
        while let Ok(v) = peer_rx.recv() {
            if to_main.send(v).is_err() {
                break;
            }
        }
    });
    let t = Instant::now();
    let mut ok = true;
    for i in 0..HANDOFFS {
        ok &= to_peer.send(i).is_ok() && main_rx.recv().is_ok();
    }
    let handoff_us = per(t, 2 * u64::from(HANDOFFS), 1e3);
    drop(to_peer);
    let _ = peer.join();
    // The first VM of a boot also pays one-time set-up (module code run for the first time,
    // caches filled); the second is what each live update pays.
    let first = kvm_costs();
    let (vm_ms, regs_us) =
        kvm_costs().map_or((Value::Null, Value::Null), |(a, b)| (json!(a), json!(b)));
    json!({
        "syscall-us": syscall_us,
        "integer-loop-ns": loop_ns,
        "page-fault-us": fault_us,
        "thread-spawn-us": spawn_us,
        "thread-handoff-us": if ok { json!(handoff_us) } else { Value::Null },
        "kvm-vm-vcpu-first-ms": first.map(|f| f.0),
        "kvm-vm-vcpu-ms": vm_ms,
        "kvm-get-regs-us": regs_us,
    })
}

/// (ms to open /dev/kvm and create a VM and a vCPU, µs per KVM_GET_REGS), or None when KVM
/// is not there.
fn kvm_costs() -> Option<(f64, f64)> {
    let t = Instant::now();
    let kvm = kvm_ioctls::Kvm::new().ok()?;
    let vm = kvm.create_vm().ok()?;
    let vcpu = vm.create_vcpu(0).ok()?;
    let vm_ms = per(t, 1, 1e6);
    let t = Instant::now();
    for _ in 0..VCPU_IOCTLS {
        black_box(vcpu.get_regs().ok()?);
    }
    Some((vm_ms, per(t, VCPU_IOCTLS.into(), 1e3)))
}

/// One line for people: `syscall 0.25 µs, integer loop 0.70 ns, ...`.
pub fn describe(c: &Value) -> String {
    let f = |k: &str| {
        c[k].as_f64()
            .map_or_else(|| "?".into(), |v| format!("{v:.2}"))
    };
    format!(
        "syscall {} µs, integer loop {} ns/step, page fault {} µs, thread start {} µs, \
         thread hand-off {} µs, KVM VM + vCPU {} ms (first {} ms), KVM_GET_REGS {} µs",
        f("syscall-us"),
        f("integer-loop-ns"),
        f("page-fault-us"),
        f("thread-spawn-us"),
        f("thread-handoff-us"),
        f("kvm-vm-vcpu-ms"),
        f("kvm-vm-vcpu-first-ms"),
        f("kvm-get-regs-us"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_figure_is_a_positive_number() {
        let c = calibrate();
        for k in [
            "syscall-us",
            "integer-loop-ns",
            "page-fault-us",
            "thread-spawn-us",
            "thread-handoff-us",
            // The build machines have /dev/kvm (FACTS.md).
            "kvm-vm-vcpu-ms",
            "kvm-get-regs-us",
        ] {
            assert!(c[k].as_f64().is_some_and(|v| v > 0.0), "{k} in {c}");
        }
        assert!(describe(&c).starts_with("syscall "));
    }
}
