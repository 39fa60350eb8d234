//! What one vCPU costs a live update's pause, call by call: each KVM ioctl of `Vcpu::save`
//! and `Vcpu::restore` timed alone (median of many calls on a stopped vCPU), then the whole
//! save and restore, and the state's image encode and decode.
//!
//! Usage: cpr-vcpu-cost [--rounds N]
//! Run it with the pause benchmarks: on this project's hosts KVM is emulated and each vCPU
//! ioctl costs microseconds, which is what the per-vCPU cost of the pause is made of.

use std::time::Instant;

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::Kvm;
use vmm::machine::cpuid;
use vmm::machine::vcpu::Vcpu;
use vmm::machine::vm;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median µs of `rounds` calls of `f`.
fn time(rounds: usize, mut f: impl FnMut()) -> f64 {
    let mut v = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        f();
        v.push(t.elapsed().as_secs_f64() * 1e6);
    }
    median(v)
}

fn run(rounds: usize) -> Result<(), String> {
    let kvm = Kvm::new().map_err(|e| format!("open /dev/kvm: {e}"))?;
    let vmfd = vm::create_vm(&kvm, None).map_err(|e| format!("create VM: {e}"))?;
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| format!("KVM_GET_SUPPORTED_CPUID: {e}"))?;
    let index_list = kvm
        .get_msr_index_list()
        .map_err(|e| format!("KVM_GET_MSR_INDEX_LIST: {e}"))?
        .as_slice()
        .to_vec();
    let new_vcpu = |vm: &kvm_ioctls::VmFd, index: u32| -> Result<Vcpu, String> {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
        let v = Vcpu::new(index, fd, 0);
        v.set_cpuid(&cpuid::filter(&supported, index, 1))
            .map_err(|e| e.to_string())?;
        Ok(v)
    };
    let v = new_vcpu(&vmfd, 0)?;
    let (msrs, _) = v.readable_msrs(&index_list).map_err(|e| e.to_string())?;
    let state = v.save(&msrs).map_err(|e| e.to_string())?;
    let fd = &v.fd;
    let rows: Vec<(&str, f64)> = vec![
        (
            "KVM_GET_MP_STATE",
            time(rounds, || {
                let _ = fd.get_mp_state();
            }),
        ),
        (
            "KVM_GET_REGS",
            time(rounds, || {
                let _ = fd.get_regs();
            }),
        ),
        (
            "KVM_GET_SREGS",
            time(rounds, || {
                let _ = fd.get_sregs();
            }),
        ),
        (
            "KVM_GET_FPU",
            time(rounds, || {
                let _ = fd.get_fpu();
            }),
        ),
        (
            "KVM_GET_XSAVE",
            time(rounds, || {
                let _ = fd.get_xsave();
            }),
        ),
        (
            "KVM_GET_XCRS",
            time(rounds, || {
                let _ = fd.get_xcrs();
            }),
        ),
        (
            "KVM_GET_DEBUGREGS",
            time(rounds, || {
                let _ = fd.get_debug_regs();
            }),
        ),
        (
            "KVM_GET_LAPIC",
            time(rounds, || {
                let _ = fd.get_lapic();
            }),
        ),
        (
            "KVM_GET_CPUID2",
            time(rounds, || {
                let _ = fd.get_cpuid2(KVM_MAX_CPUID_ENTRIES);
            }),
        ),
        (
            "KVM_GET_TSC_KHZ",
            time(rounds, || {
                let _ = fd.get_tsc_khz();
            }),
        ),
        (
            "KVM_GET_VCPU_EVENTS",
            time(rounds, || {
                let _ = fd.get_vcpu_events();
            }),
        ),
        (
            "KVM_KVMCLOCK_CTRL",
            time(rounds, || {
                let _ = fd.kvmclock_ctrl();
            }),
        ),
    ];
    let regs = fd.get_regs().map_err(|e| e.to_string())?;
    let sregs = fd.get_sregs().map_err(|e| e.to_string())?;
    let fpu = fd.get_fpu().map_err(|e| e.to_string())?;
    let xsave = fd.get_xsave().map_err(|e| e.to_string())?;
    let xcrs = fd.get_xcrs().map_err(|e| e.to_string())?;
    let dregs = fd.get_debug_regs().map_err(|e| e.to_string())?;
    let lapic = fd.get_lapic().map_err(|e| e.to_string())?;
    let cpuid2 = fd
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| e.to_string())?;
    let events = fd.get_vcpu_events().map_err(|e| e.to_string())?;
    let mp = fd.get_mp_state().map_err(|e| e.to_string())?;
    let mut set_rows: Vec<(&str, f64)> = vec![
        (
            "KVM_SET_CPUID2",
            time(rounds, || {
                let _ = fd.set_cpuid2(&cpuid2);
            }),
        ),
        (
            "KVM_SET_MP_STATE",
            time(rounds, || {
                let _ = fd.set_mp_state(mp);
            }),
        ),
        (
            "KVM_SET_REGS",
            time(rounds, || {
                let _ = fd.set_regs(&regs);
            }),
        ),
        (
            "KVM_SET_SREGS",
            time(rounds, || {
                let _ = fd.set_sregs(&sregs);
            }),
        ),
        (
            "KVM_SET_FPU",
            time(rounds, || {
                let _ = fd.set_fpu(&fpu);
            }),
        ),
        (
            "KVM_SET_XSAVE",
            // SAFETY: a complete legacy kvm_xsave this vCPU produced.
            time(rounds, || {
                let _ = unsafe { fd.set_xsave(&xsave) };
            }),
        ),
        (
            "KVM_SET_XCRS",
            time(rounds, || {
                let _ = fd.set_xcrs(&xcrs);
            }),
        ),
        (
            "KVM_SET_DEBUGREGS",
            time(rounds, || {
                let _ = fd.set_debug_regs(&dregs);
            }),
        ),
        (
            "KVM_SET_LAPIC",
            time(rounds, || {
                let _ = fd.set_lapic(&lapic);
            }),
        ),
        (
            "KVM_SET_VCPU_EVENTS",
            time(rounds, || {
                let _ = fd.set_vcpu_events(&events);
            }),
        ),
    ];
    let msr_entries: Vec<kvm_bindings::kvm_msr_entry> = state.msrs.iter().map(Into::into).collect();
    let kvm_msrs = kvm_bindings::Msrs::from_entries(&msr_entries).map_err(|e| format!("{e:?}"))?;
    let mut get_msrs = kvm_msrs.clone();
    set_rows.push((
        "KVM_SET_MSRS",
        time(rounds, || {
            let _ = fd.set_msrs(&kvm_msrs);
        }),
    ));
    let get_msr_row = (
        "KVM_GET_MSRS",
        time(rounds, || {
            let _ = fd.get_msrs(&mut get_msrs);
        }),
    );
    println!(
        "one vCPU, {} MSRs, median of {rounds} calls each (µs):",
        msrs.len()
    );
    let mut sum_get = 0.0;
    for (n, t) in rows.iter().chain(std::iter::once(&get_msr_row)) {
        println!("  {n:<22} {t:8.1}");
        if *n != "KVM_KVMCLOCK_CTRL" {
            sum_get += t;
        }
    }
    let mut sum_set = 0.0;
    for (n, t) in &set_rows {
        println!("  {n:<22} {t:8.1}");
        sum_set += t;
    }
    println!("  sum of save ioctls     {sum_get:8.1}");
    println!("  sum of restore ioctls  {sum_set:8.1}");
    let save = time(rounds, || {
        let _ = v.save(&msrs);
    });
    println!("  Vcpu::save             {save:8.1}");
    let vm2 = vm::create_vm(&kvm, None).map_err(|e| format!("create VM: {e}"))?;
    let w = new_vcpu(&vm2, 0)?;
    let restore = time(rounds, || {
        let _ = w.restore(&state);
    });
    println!("  Vcpu::restore          {restore:8.1}");
    let spawn = time(rounds.min(200), || {
        drop(std::thread::spawn(|| {}).join());
    });
    println!("  thread spawn + join    {spawn:8.1}");
    // Eight vCPUs of one VM restored one after the other, then by two threads (this one and
    // a scoped helper) taking four each: do vCPUs of one VM restore side by side?
    let vm3 = vm::create_vm(&kvm, None).map_err(|e| format!("create VM: {e}"))?;
    let eight: Vec<Vcpu> = (0..8)
        .map(|i| new_vcpu(&vm3, i))
        .collect::<Result<_, _>>()?;
    let states: Vec<_> = eight
        .iter()
        .map(|v| {
            let mut s = state.clone();
            s.index = v.index;
            s
        })
        .collect();
    let serial = time(rounds.min(200), || {
        for (v, s) in eight.iter().zip(&states) {
            let _ = v.restore(s);
        }
    });
    let two = time(rounds.min(200), || {
        std::thread::scope(|sc| {
            sc.spawn(|| {
                for (v, s) in eight[4..].iter().zip(&states[4..]) {
                    let _ = v.restore(s);
                }
            });
            for (v, s) in eight[..4].iter().zip(&states[..4]) {
                let _ = v.restore(s);
            }
        })
    });
    println!("  8 x Vcpu::restore, 1 thread  {serial:8.1}");
    println!("  8 x Vcpu::restore, 2 threads {two:8.1}");
    // KVM_CREATE_VCPU (the new process creates every vCPU inside the pause).
    let mut per_vcpu = Vec::new();
    for _ in 0..rounds.min(50) {
        let vm = vm::create_vm(&kvm, None).map_err(|e| format!("create VM: {e}"))?;
        let t = Instant::now();
        for i in 0..8 {
            vm.create_vcpu(i)
                .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
        }
        per_vcpu.push(t.elapsed().as_secs_f64() * 1e6 / 8.0);
    }
    println!("  KVM_CREATE_VCPU (8 in a VM) {:8.1}", median(per_vcpu));
    // The state's share of writing and reading an image: one `cpu` section per vCPU.
    let image_of = |n: u32| -> Result<Vec<u8>, String> {
        let mut w = cpr_format::ImageWriter::new(cpr_format::sample::header());
        for i in 0..n {
            let mut s = state.clone();
            s.index = i;
            w.add_section(&i.to_string(), &s)
                .map_err(|e| e.to_string())?;
        }
        w.to_bytes().map_err(|e| e.to_string())
    };
    let (one, eight) = (image_of(1)?, image_of(8)?);
    let enc = |n| time(rounds.min(200), || drop(image_of(n)));
    // Checked once, so that the timed decodes below cannot fail silently.
    for b in [&one, &eight] {
        cpr_format::Image::from_bytes(b)
            .and_then(|img| img.sections_of::<vmm::machine::vcpu_state::VcpuState>())
            .map_err(|e| format!("decode the image just written: {e}"))?;
    }
    let dec = |b: &[u8]| {
        time(rounds.min(200), || {
            if let Ok(img) = cpr_format::Image::from_bytes(b) {
                drop(img.sections_of::<vmm::machine::vcpu_state::VcpuState>());
            }
        })
    };
    let (e1, e8, d1, d8) = (enc(1), enc(8), dec(&one), dec(&eight));
    println!(
        "  encode 1 / 8 cpu sections  {e1:8.1} {e8:8.1}  per vCPU {:6.1}",
        (e8 - e1) / 7.0
    );
    println!(
        "  decode 1 / 8 cpu sections  {d1:8.1} {d8:8.1}  per vCPU {:6.1}",
        (d8 - d1) / 7.0
    );
    Ok(())
}

fn main() {
    let mut rounds = 500;
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match argv.as_slice() {
        [] => {}
        [o, n] if o == "--rounds" => match n.parse() {
            Ok(n) if n > 0 => rounds = n,
            _ => {
                eprintln!("cpr-vcpu-cost: --rounds needs a positive number");
                std::process::exit(2);
            }
        },
        _ => {
            eprintln!("usage: cpr-vcpu-cost [--rounds N]");
            std::process::exit(2);
        }
    }
    if let Err(e) = run(rounds) {
        eprintln!("cpr-vcpu-cost: {e}");
        std::process::exit(1);
    }
}
