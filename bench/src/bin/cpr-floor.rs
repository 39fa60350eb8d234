//! The floor of a restart-mode live update on this machine: the least work any VMM must do
//! between stopping a guest and running it again in a new process image.
//!
//! The parent maps a pre-touched memfd of the requested size (split into the same RAM blocks
//! the VMM uses: below the 32-bit PCI hole and above 4 GiB), notes the time, clears
//! FD_CLOEXEC on the memfd and execs itself. The child maps the memfd, creates a KVM VM,
//! registers the memslots (before the irqchip, see FACTS.md), creates the irqchip, PIT and
//! the vCPUs, sets their registers and runs vCPU 0 until its first exit. The elapsed time
//! from before execve to that exit is the floor the VMM's pause is compared against.
//!
//! `--thp` asks for shmem transparent huge pages on the mapping (MADV_HUGEPAGE; needs
//! /sys/kernel/mm/transparent_hugepage/shmem_enabled = advise, which the caller sets).
//!
//! `--defer-teardown` keeps the old mm alive in a helper across execve, as the vmm does
//! (vmm/src/teardown.rs), so the old mappings are freed after the measured interval.
//!
//! Usage: cpr-floor [--mem-mib N] [--vcpus N] [--runs N] [--hugetlb | --thp] [--defer-teardown]
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuExit};

const LOW_RAM_LIMIT: u64 = 3 << 30;
const HIGH_RAM_START: u64 = 4 << 30;
/// Guest code at 0x1000 (real mode): `out 0x80, al; hlt`.
const GUEST_CODE: [u8; 3] = [0xe6, 0x80, 0xf4];
const GUEST_CODE_ADDR: u64 = 0x1000;

struct Args {
    mem_mib: u64,
    vcpus: u8,
    runs: u32,
    hugetlb: bool,
    thp: bool,
    defer: bool,
}

fn parse_args(argv: &[String]) -> Result<Args, String> {
    let mut args = Args {
        mem_mib: 256,
        vcpus: 1,
        runs: 10,
        hugetlb: false,
        thp: false,
        defer: false,
    };
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            it.next()
                .ok_or_else(|| format!("{name} needs a value"))?
                .parse::<u64>()
                .map_err(|e| format!("{name}: {e}"))
        };
        match a.as_str() {
            "--mem-mib" => args.mem_mib = value("--mem-mib")?,
            "--vcpus" => args.vcpus = u8::try_from(value("--vcpus")?).map_err(|e| e.to_string())?,
            "--runs" => args.runs = u32::try_from(value("--runs")?).map_err(|e| e.to_string())?,
            "--hugetlb" => args.hugetlb = true,
            "--thp" => args.thp = true,
            "--defer-teardown" => args.defer = true,
            "-h" | "--help" => {
                return Err(
                    "usage: cpr-floor [--mem-mib N] [--vcpus N] [--runs N] [--hugetlb | --thp] \
                     [--defer-teardown]"
                        .into(),
                )
            }
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    if args.mem_mib == 0 || args.vcpus == 0 || args.runs == 0 {
        return Err("--mem-mib, --vcpus and --runs must be positive".into());
    }
    Ok(args)
}

fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// (guest address, size, offset in the memfd) of each RAM block, as the VMM lays them out.
fn ram_blocks(size: u64) -> Vec<(u64, u64, u64)> {
    if size <= LOW_RAM_LIMIT {
        vec![(0, size, 0)]
    } else {
        vec![
            (0, LOW_RAM_LIMIT, 0),
            (HIGH_RAM_START, size - LOW_RAM_LIMIT, LOW_RAM_LIMIT),
        ]
    }
}

fn map_shared(fd: RawFd, size: u64, thp: bool) -> Result<*mut u8, String> {
    // SAFETY: a fresh shared mapping of a file we own; the kernel picks the address, so no
    // existing mapping is affected, and the result is checked for MAP_FAILED.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(format!(
            "mmap of {size} bytes: {}",
            std::io::Error::last_os_error()
        ));
    }
    if thp {
        // SAFETY: advice on the mapping just created, of exactly its length.
        let r = unsafe { libc::madvise(addr, size as usize, libc::MADV_HUGEPAGE) };
        if r != 0 {
            return Err(format!(
                "MADV_HUGEPAGE: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(addr.cast())
}

/// Creates the guest RAM memfd, maps it and writes the guest code.
fn new_ram(args: &Args) -> Result<(OwnedFd, *mut u8), String> {
    let size = args.mem_mib << 20;
    let mut flags = nix::sys::memfd::MFdFlags::empty();
    if args.hugetlb {
        flags |= nix::sys::memfd::MFdFlags::MFD_HUGETLB;
    }
    let fd: OwnedFd = nix::sys::memfd::memfd_create(c"cpr-floor-ram", flags)
        .map_err(|e| format!("memfd_create: {e}"))?;
    nix::unistd::ftruncate(&fd, size as i64).map_err(|e| format!("ftruncate: {e}"))?;
    let ram = map_shared(fd.as_raw_fd(), size, args.thp)?;
    // SAFETY: the guest code fits in the mapping (size >= 1 MiB).
    unsafe {
        std::ptr::copy_nonoverlapping(
            GUEST_CODE.as_ptr(),
            ram.add(GUEST_CODE_ADDR as usize),
            GUEST_CODE.len(),
        )
    };
    Ok((fd, ram))
}

/// Pre-exec side: touch every page of this image's RAM mapping, as a running guest would
/// have (exec must tear those page tables down: that cost belongs to the floor), then exec
/// the child with the memfd inherited.
fn parent(args: &Args, run: u32, fd: OwnedFd, ram: *mut u8) -> Result<(), String> {
    let size = args.mem_mib << 20;
    let page = 4096usize;
    for off in (0..size as usize).step_by(page) {
        // SAFETY: `off` is inside the mapping of `size` bytes; guest code lives at 0x1000 only,
        // and reading a byte back leaves it intact.
        unsafe { ram.add(off).write_volatile(ram.add(off).read_volatile()) };
    }
    let raw = fd.as_raw_fd();
    nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .map_err(|e| format!("clear FD_CLOEXEC: {e}"))?;
    std::mem::forget(fd); // stays open across execve on purpose
    let t0 = monotonic_ns();
    let (helper_pid, helper_fd) = if args.defer {
        vmm::teardown::Helper::spawn()
            .and_then(|h| h.into_inherited())
            .map_err(|e| format!("teardown helper: {e}"))?
    } else {
        (0, -1)
    };
    let exe = CString::new("/proc/self/exe").map_err(|e| e.to_string())?;
    let argv: Vec<CString> = [
        "cpr-floor".to_string(),
        "--child".into(),
        raw.to_string(),
        size.to_string(),
        args.vcpus.to_string(),
        t0.to_string(),
        run.to_string(),
        args.runs.to_string(),
        (args.hugetlb as u8 | (args.thp as u8) << 1 | (args.defer as u8) << 2).to_string(),
        helper_pid.to_string(),
        helper_fd.to_string(),
    ]
    .into_iter()
    .map(|s| CString::new(s).map_err(|e| e.to_string()))
    .collect::<Result<_, _>>()?;
    let err = nix::unistd::execv(&exe, &argv).err();
    Err(format!("execv: {err:?}"))
}

/// Child side: everything a new VMM image must do before the guest runs again.
fn child(
    raw_fd: RawFd,
    size: u64,
    vcpus: u8,
    t0: u64,
    thp: bool,
) -> Result<(u64, OwnedFd, *mut u8), String> {
    // SAFETY: the parent passed this fd number on purpose; nothing else in this process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw_fd) };
    let ram = map_shared(fd.as_raw_fd(), size, thp)?;
    let kvm = Kvm::new().map_err(|e| format!("open /dev/kvm: {e}"))?;
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    vm.set_tss_address(0xfffb_d000)
        .map_err(|e| format!("KVM_SET_TSS_ADDR: {e}"))?;
    for (slot, (guest, len, off)) in ram_blocks(size).into_iter().enumerate() {
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: guest,
            memory_size: len,
            userspace_addr: ram as u64 + off,
        };
        // SAFETY: the region lies inside the live shared mapping `ram`, which outlives the VM.
        unsafe { vm.set_user_memory_region(region) }.map_err(|e| format!("memslot {slot}: {e}"))?;
    }
    vm.create_irq_chip()
        .map_err(|e| format!("KVM_CREATE_IRQCHIP: {e}"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(|e| format!("KVM_CREATE_PIT2: {e}"))?;
    let mut first = None;
    for id in 0..vcpus {
        let vcpu = vm
            .create_vcpu(id as u64)
            .map_err(|e| format!("KVM_CREATE_VCPU {id}: {e}"))?;
        let mut sregs = vcpu
            .get_sregs()
            .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        vcpu.set_sregs(&sregs)
            .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
        let mut regs = vcpu.get_regs().map_err(|e| format!("KVM_GET_REGS: {e}"))?;
        regs.rip = GUEST_CODE_ADDR;
        regs.rflags = 2;
        vcpu.set_regs(&regs)
            .map_err(|e| format!("KVM_SET_REGS: {e}"))?;
        if first.is_none() {
            first = Some(vcpu);
        }
    }
    let mut vcpu = first.ok_or("no vCPU")?;
    match vcpu.run().map_err(|e| format!("KVM_RUN: {e}"))? {
        VcpuExit::IoOut(0x80, _) => {}
        other => return Err(format!("unexpected first exit: {other:?}")),
    }
    let elapsed = monotonic_ns() - t0;
    // The old VMM still holds its VM at exec: keep ours alive too, so the next run's exec
    // pays for its teardown as the VMM's does.
    std::mem::forget(vcpu);
    std::mem::forget(vm);
    Ok((elapsed, fd, ram))
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("--child") {
        let n = |i: usize| argv.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        let (fd, size, vcpus, t0, run, runs, huge) = (n(1), n(2), n(3), n(4), n(5), n(6), n(7));
        match child(fd as RawFd, size, vcpus as u8, t0, huge & 2 != 0) {
            Ok((ns, fd, ram)) => {
                println!("run {run}: floor {:.3} ms", ns as f64 / 1e6);
                if huge & 4 != 0 {
                    let m = |i: usize| argv.get(i).and_then(|s| s.parse::<i32>().ok());
                    vmm::teardown::adopt(m(8).unwrap_or(0), m(9).unwrap_or(-1));
                    vmm::teardown::release();
                }
                if run + 1 < runs {
                    let args = Args {
                        mem_mib: size >> 20,
                        vcpus: vcpus as u8,
                        runs: runs as u32,
                        hugetlb: huge & 1 != 0,
                        thp: huge & 2 != 0,
                        defer: huge & 4 != 0,
                    };
                    if let Err(e) = parent(&args, run as u32 + 1, fd, ram) {
                        eprintln!("cpr-floor: {e}");
                        std::process::exit(1);
                    }
                }
            }
            Err(e) => {
                eprintln!("cpr-floor: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cpr-floor: {e}");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    if let Err(e) = new_ram(&args).and_then(|(fd, ram)| parent(&args, 0, fd, ram)) {
        eprintln!("cpr-floor: {e} (after {:?})", started.elapsed());
        std::process::exit(1);
    }
}
