//! Building a machine (fresh or for restore), booting it, resetting it, and register dumps.

use std::sync::{Arc, Mutex};

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Kvm, VmFd};
use vmm_sys_util::eventfd::EventFd;

use super::devices::{self, DebugExit, Devices, PmControl, SerialDevice};
use super::memory::GuestRam;
use super::os_thread::OsThread;
use super::snapshot::{EarlyState, MachineState};
use super::vcpu::{FreshVcpu, Vcpu};
use super::vcpu_state::VcpuState;
use super::vcpu_thread::{self, MachineShared, VcpuCtl};
use super::vm_state::{IrqchipState, PitState};
use super::{
    boot, cpuid, vm, Machine, MachineConfig, MachineError, MachineEvent, RunState, VcpuHandle,
};

/// State of the vCPUs, irqchip and PIT as created, before any guest code ran.
pub(super) struct BootSnapshot {
    vcpus: Vec<VcpuState>,
    irqchip: IrqchipState,
    pit: PitState,
}

/// A VM with configured vCPUs, not yet running threads.
pub(super) struct Parts {
    /// Kept so /dev/kvm stays open while the VM is being built.
    pub _kvm: Kvm,
    pub vm: VmFd,
    pub ram: GuestRam,
    pub vcpus: Vec<Vcpu>,
    pub boot: BootConfig,
}

/// What a booted machine knows of its vCPUs' boot configuration; empty for a machine built
/// for a restore (the restore sets `msr_list` from the state; a first reset makes the
/// snapshot).
#[derive(Default)]
pub(super) struct BootConfig {
    /// The MSRs a save reads.
    pub msr_list: Vec<u32>,
    /// MSRs KVM lists but cannot read for this guest's CPUID (not saved).
    pub unsaved_msrs: Vec<u32>,
    pub boot_state: Option<BootSnapshot>,
}

fn kvm_io(ioctl: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> MachineError {
    move |source| MachineError::Vm(vm::VmError::Ioctl { ioctl, source })
}

/// Creates a VM's vCPUs one by one, each told the VM's default TSC rate (every fresh vCPU
/// of a VM has it: asked once, of the first).
#[derive(Default)]
struct VcpuMaker {
    xsave2_size: Option<usize>,
    tsc_khz: u32,
}

impl VcpuMaker {
    fn make(&mut self, vm: &VmFd, index: u32) -> Result<Vcpu, MachineError> {
        let xsave2_size = *self.xsave2_size.get_or_insert_with(|| {
            usize::try_from(vm.check_extension_int(kvm_ioctls::Cap::Xsave2)).unwrap_or(0)
        });
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(kvm_io("KVM_CREATE_VCPU"))?;
        let v = Vcpu::new(index, fd, xsave2_size);
        match self.tsc_khz {
            0 => self.tsc_khz = v.tsc_khz()?,
            known => v.assume_fresh_tsc_khz(known),
        }
        Ok(v)
    }
}

fn create_vcpus(vm: &VmFd, count: u32) -> Result<Vec<Vcpu>, MachineError> {
    let mut maker = VcpuMaker::default();
    (0..count).map(|i| maker.make(vm, i)).collect()
}

fn open_kvm() -> Result<Kvm, MachineError> {
    Kvm::new().map_err(|e| MachineError::Vm(vm::VmError::OpenKvm(e)))
}

/// /dev/kvm for a machine of `config`'s vCPU count (refused if KVM cannot have it), with
/// the vCPU threads' kick handler installed.
fn open_kvm_for(config: &MachineConfig) -> Result<Kvm, MachineError> {
    if config.vcpus == 0 || config.vcpus == u8::MAX {
        return Err(MachineError::VcpuCount { got: config.vcpus });
    }
    vcpu_thread::install_kick_handler().map_err(MachineError::Signal)?;
    open_kvm()
}

/// What a machine built for restore holds besides itself ([`create_incoming`]).
pub(super) struct Incoming {
    /// What every untouched vCPU of this VM holds (read before any was set), while they
    /// all still are untouched.
    pub fresh: Option<FreshVcpu>,
    /// The state every vCPU was given as it was created, if all of it went in.
    pub early: Option<Arc<MachineState>>,
}

/// A paused machine over `ram` waiting for a restore's state: new VM, placeholder devices
/// (the UART's irqfd is not registered: the restore registers the guest's), and each vCPU
/// with its (parked) thread started as soon as the vCPU is created. With `early`, each
/// vCPU also gets its saved state, once the image is decoded, on a helper thread while
/// this one creates and starts the next (KVM_CREATE_VCPU is serialised by KVM, a vCPU's
/// own ioctls are not; see `fanout::pipeline`). If a state write fails, the vCPUs are left
/// for the load to restore in full, which reports the error.
pub(super) fn create_incoming(
    config: &MachineConfig,
    ram: GuestRam,
    early: Option<Box<EarlyState<'_>>>,
) -> Result<(Machine, Incoming), MachineError> {
    let kvm = open_kvm_for(config)?;
    let count = u32::from(config.vcpus);
    let (serial, serial_irq) = SerialDevice::new(Box::new(std::io::sink()))?;
    // Nobody listens to a parked machine; `restore` installs the front end's sender.
    let (events, _) = std::sync::mpsc::channel();
    let shared = wire(
        count,
        serial,
        PmControl::default(),
        events,
        RunState::Paused,
    );
    // Read from vCPU 0 before any vCPU is set; restore_fresh needs it.
    let fresh = std::sync::OnceLock::new();
    let mut maker = VcpuMaker::default();
    // Started threads, to be told to exit if building the machine fails half-way.
    let started: Mutex<Vec<Arc<VcpuCtl>>> = Mutex::new(Vec::new());
    let mut start_vcpu = |vm: &VmFd, index: u32| -> Result<VcpuHandle, MachineError> {
        let v = maker.make(vm, index)?;
        if index == 0 {
            let _ = fresh.set(v.fresh_state()?);
        }
        let ctl = shared.vcpus[index as usize].clone();
        let handle = spawn_vcpu(v, ctl.clone(), &shared)?;
        devices::lock(&started).push(ctl);
        Ok(handle)
    };
    let built = match early {
        None => vm::create_vm(&kvm, Some(&ram))
            .map_err(MachineError::from)
            .and_then(|vm| {
                let handles = (0..count)
                    .map(|i| start_vcpu(&vm, i))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((Arc::new(vm), handles, None))
            }),
        Some(early) => restore_as_created(&kvm, &ram, count, early, &fresh, start_vcpu),
    };
    let (vm, handles, early) = match built {
        Ok(b) => b,
        Err(e) => {
            for ctl in devices::lock(&started).iter() {
                ctl.request(vcpu_thread::Want::Exit);
            }
            return Err(e);
        }
    };
    let incoming = Incoming {
        // Untouched vCPUs only: with a state, some or all of it went in.
        fresh: fresh.into_inner().filter(|_| early.is_none()),
        early: early.and_then(|e| e),
    };
    let machine = assemble(
        config,
        vm,
        ram,
        shared,
        handles,
        serial_irq,
        BootConfig::default(),
    );
    Ok((machine, incoming))
}

/// The VM and its started vCPUs, each given its saved state from `early` as soon as it
/// exists and the state is decoded, on the pipeline's helper while this thread creates
/// and starts the next. The last value: `None` if there was no state for these vCPUs
/// (they are untouched), `Some(None)` if a write failed, `Some(Some(state))` if all of
/// it went in.
#[allow(clippy::type_complexity)]
fn restore_as_created(
    kvm: &Kvm,
    ram: &GuestRam,
    count: u32,
    early: Box<EarlyState<'_>>,
    fresh: &std::sync::OnceLock<FreshVcpu>,
    mut start_vcpu: impl FnMut(&VmFd, u32) -> Result<VcpuHandle, MachineError>,
) -> Result<
    (
        Arc<VmFd>,
        Vec<VcpuHandle>,
        Option<Option<Arc<MachineState>>>,
    ),
    MachineError,
> {
    // Asked by the helper as it starts (the image is being decoded meanwhile), or by this
    // thread if there is no helper.
    let early = Mutex::new(Some(early));
    let state = std::sync::OnceLock::new();
    let state_of = || {
        state
            .get_or_init(|| {
                let ask = devices::lock(&early).take();
                ask.and_then(|f| f())
                    .filter(|s| s.vcpus.len() == count as usize)
            })
            .as_ref()
    };
    let (vm, made) = super::fanout::pipeline(
        count as usize,
        || Ok(Arc::new(vm::create_vm(kvm, Some(ram))?)),
        || {
            let _ = state_of();
        },
        |vm: &Arc<VmFd>, i| start_vcpu(vm, i as u32),
        // `None`: no state to restore; `Some(false)`: the write failed.
        |h: &VcpuHandle| {
            let s = state_of()?;
            let v = devices::lock(&h.vcpu);
            Some(
                v.restore_fresh(&s.vcpus[v.index as usize], fresh.get()?)
                    .is_ok(),
            )
        },
        |index| MachineError::VcpuLost {
            index: index as u32,
        },
    )?;
    let all_in = made.iter().all(|(_, w)| *w == Some(true));
    let handles = made.into_iter().map(|(h, _)| h).collect();
    let outcome = state_of().map(|s| all_in.then(|| s.clone()));
    Ok((vm, handles, outcome))
}

/// Creates the VM over `ram` and its vCPUs with their boot configuration. Writes nothing
/// into guest RAM.
pub(super) fn create(config: &MachineConfig, ram: GuestRam) -> Result<Parts, MachineError> {
    let kvm = open_kvm_for(config)?;
    let vm = vm::create_vm(&kvm, Some(&ram))?;
    let vcpus = create_vcpus(&vm, u32::from(config.vcpus))?;
    let (msr_list, unsaved_msrs, snapshot) = configure_boot(&kvm, &vm, &vcpus)?;
    Ok(Parts {
        _kvm: kvm,
        vm,
        ram,
        vcpus,
        boot: BootConfig {
            msr_list,
            unsaved_msrs,
            boot_state: Some(snapshot),
        },
    })
}

/// Gives fresh vCPUs their firmware-like boot configuration (CPUID, MSRs, LAPIC LINT pins,
/// FPU) and snapshots it with the irqchip and PIT. Returns the saveable MSRs, the
/// unreadable ones, and the snapshot.
fn configure_boot(
    kvm: &Kvm,
    vm: &VmFd,
    vcpus: &[Vcpu],
) -> Result<(Vec<u32>, Vec<u32>, BootSnapshot), MachineError> {
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_io("KVM_GET_SUPPORTED_CPUID"))?;
    let index_list = kvm
        .get_msr_index_list()
        .map_err(kvm_io("KVM_GET_MSR_INDEX_LIST"))?
        .as_slice()
        .to_vec();
    let count = vcpus.len() as u32;
    for v in vcpus {
        v.set_cpuid(&cpuid::filter(&supported, v.index, count))?;
        v.setup_boot_msrs()?;
        v.setup_lint()?;
        v.set_fpu(&boot::boot_fpu())?;
    }
    let (msr_list, unsaved) = match vcpus.first() {
        Some(v) => v.readable_msrs(&index_list)?,
        None => (index_list, Vec::new()),
    };
    let snapshot = BootSnapshot {
        vcpus: vcpus
            .iter()
            .map(|v| v.save(&msr_list))
            .collect::<Result<_, _>>()?,
        irqchip: vm::get_irqchip(vm)?,
        pit: vm::get_pit(vm)?,
    };
    Ok((msr_list, unsaved, snapshot))
}

/// The boot snapshot of a machine like `config`, taken in a scratch VM without RAM (for
/// the first reset of a restored machine, whose own VM never held boot state).
fn scratch_boot_snapshot(config: &MachineConfig) -> Result<BootSnapshot, MachineError> {
    let kvm = open_kvm()?;
    let vm = vm::create_vm(&kvm, None)?;
    let vcpus = create_vcpus(&vm, u32::from(config.vcpus))?;
    Ok(configure_boot(&kvm, &vm, &vcpus)?.2)
}

/// Loads the kernel and points the boot vCPU at it in long mode. Other vCPUs stay in
/// wait-for-SIPI, as after a real reset.
pub(super) fn boot(config: &MachineConfig, ram: &GuestRam, bsp: &Vcpu) -> Result<(), MachineError> {
    let info = boot::load_kernel(
        ram,
        &config.kernel,
        config.initrd.as_deref(),
        config.cmdline.as_deref(),
    )?;
    super::mptable::write(ram.memory(), config.vcpus)?;
    super::acpi::write(ram.memory(), config.vcpus)?;
    let sregs = boot::setup_long_mode(ram.memory(), &bsp.get_sregs()?)?;
    bsp.set_sregs(&sregs)?;
    bsp.set_regs(&boot::boot_regs(info.entry))?;
    bsp.set_runnable()?;
    Ok(())
}

/// Wires the devices, starts the (stopped) vCPU threads and returns the machine, in
/// Prelaunch.
pub(super) fn finish(
    config: &MachineConfig,
    parts: Parts,
    serial: SerialDevice,
    serial_irq: EventFd,
    pm: PmControl,
    events: std::sync::mpsc::Sender<MachineEvent>,
) -> Result<Machine, MachineError> {
    parts
        .vm
        .register_irqfd(&serial_irq, devices::serial::COM1_IRQ)
        .map_err(|source| MachineError::Irqfd {
            gsi: devices::serial::COM1_IRQ,
            source,
        })?;
    let shared = wire(
        parts.vcpus.len() as u32,
        serial,
        pm,
        events,
        RunState::Prelaunch,
    );
    let handles = parts
        .vcpus
        .into_iter()
        .zip(shared.vcpus.clone())
        .map(|(v, ctl)| spawn_vcpu(v, ctl, &shared))
        .collect::<Result<Vec<_>, _>>()?;
    // The threads start parked (`want` is Pause) and are not waited for: starting eight of
    // them took 2-5 ms on a busy 2-core host, which a live update would pay inside its
    // pause. A thread still starting counts as stopped (it never ran its vCPU), and restore
    // takes the same vCPU mutex the thread takes while it starts.
    Ok(assemble(
        config,
        Arc::new(parts.vm),
        parts.ram,
        shared,
        handles,
        serial_irq,
        parts.boot,
    ))
}

/// The devices and what the vCPU threads share with the machine, for `count` vCPUs.
fn wire(
    count: u32,
    serial: SerialDevice,
    pm: PmControl,
    events: std::sync::mpsc::Sender<MachineEvent>,
    run_state: RunState,
) -> Arc<MachineShared> {
    let devices = Arc::new(Devices {
        serial: Mutex::new(serial),
        pm: Mutex::new(pm),
        debug_exit: DebugExit,
        // A restore puts the saved CMOS RAM in (`IncomingMachine::restore`); the time is
        // the host's either way.
        rtc: Mutex::new(devices::Rtc::default()),
        pci: Arc::new(crate::pci::PciBus::new()),
    });
    Arc::new(MachineShared {
        run_state: Mutex::new(run_state),
        events: Mutex::new(events),
        vcpus: (0..count).map(|i| Arc::new(VcpuCtl::new(i))).collect(),
        devices,
    })
}

/// Starts vCPU `v`'s thread, parked.
fn spawn_vcpu(
    mut v: Vcpu,
    ctl: Arc<VcpuCtl>,
    shared: &Arc<MachineShared>,
) -> Result<VcpuHandle, MachineError> {
    let index = v.index;
    let run_ptr = vcpu_thread::KvmRunPtr::of(&mut v);
    let vcpu = Arc::new(Mutex::new(v));
    let (tv, tc, ts) = (vcpu.clone(), ctl.clone(), shared.clone());
    let thread = OsThread::spawn(&format!("vcpu{index}"), move || {
        vcpu_thread::run(tv, run_ptr, tc, ts)
    })
    .map_err(|source| MachineError::SpawnThread { index, source })?;
    Ok(VcpuHandle {
        vcpu,
        ctl,
        thread: Some(thread),
    })
}

/// The machine from its parts.
fn assemble(
    config: &MachineConfig,
    vm: Arc<VmFd>,
    ram: GuestRam,
    shared: Arc<MachineShared>,
    handles: Vec<VcpuHandle>,
    serial_irq: EventFd,
    boot: BootConfig,
) -> Machine {
    let BootConfig {
        msr_list,
        unsaved_msrs,
        boot_state,
    } = boot;
    Machine {
        config: config.clone(),
        vcpus: handles,
        shared,
        gsi_router: Arc::new(crate::pci::GsiRouter::new(vm.clone())),
        vm,
        ram,
        vfio: None,
        serial_irq,
        msr_list,
        unsaved_msrs,
        boot_state,
        paused_while_suspended: false,
        boot_pending: false,
    }
}

/// Returns vCPUs, irqchip, PIT and devices to boot state and reloads the kernel. The caller
/// has stopped the vCPUs.
pub(super) fn reset(m: &mut Machine) -> Result<(), MachineError> {
    if m.boot_state.is_none() {
        m.boot_state = Some(scratch_boot_snapshot(&m.config)?);
    }
    let m: &Machine = m;
    if let Some(boot_state) = &m.boot_state {
        for (h, state) in m.vcpus.iter().zip(&boot_state.vcpus) {
            devices::lock(&h.vcpu).restore(state)?;
        }
        vm::set_irqchip(&m.vm, &boot_state.irqchip)?;
        vm::set_pit(&m.vm, &boot_state.pit)?;
    }
    if let Some(h) = m.vcpus.first() {
        boot(&m.config, &m.ram, &devices::lock(&h.vcpu))?;
    }
    devices::lock(&m.shared.devices.serial).reset()?;
    *devices::lock(&m.shared.devices.pm) = PmControl::default();
    Ok(())
}

fn seg_line(name: &str, s: &super::vcpu_state::Segment) -> String {
    let flags = (u32::from(s.seg_type) << 8)
        | (u32::from(s.s) << 12)
        | (u32::from(s.dpl) << 13)
        | (u32::from(s.present) << 15)
        | (u32::from(s.avl) << 20)
        | (u32::from(s.l) << 21)
        | (u32::from(s.db) << 22)
        | (u32::from(s.g) << 23);
    format!(
        "{name:<3}={:04x} {:016x} {:08x} {:08x} DPL={}\n",
        s.selector, s.base, s.limit, flags, s.dpl
    )
}

/// QEMU `info registers`-like text.
pub(super) fn describe_registers(v: &Vcpu) -> Result<String, MachineError> {
    let r = v.get_regs()?;
    let s = v.get_sregs()?;
    let d = super::vcpu_state::DebugRegs::from(&v.fd.get_debug_regs().map_err(|source| {
        super::vcpu::VcpuError::Ioctl {
            index: v.index,
            ioctl: "KVM_GET_DEBUGREGS",
            source,
        }
    })?);
    let mp = v.fd.get_mp_state().map(|m| m.mp_state).unwrap_or(u32::MAX);
    let mut out = format!("CPU#{}\n", v.index);
    out += &format!(
        "RAX={:016x} RBX={:016x} RCX={:016x} RDX={:016x}\n",
        r.rax, r.rbx, r.rcx, r.rdx
    );
    out += &format!(
        "RSI={:016x} RDI={:016x} RBP={:016x} RSP={:016x}\n",
        r.rsi, r.rdi, r.rbp, r.rsp
    );
    out += &format!(
        "R8 ={:016x} R9 ={:016x} R10={:016x} R11={:016x}\n",
        r.r8, r.r9, r.r10, r.r11
    );
    out += &format!(
        "R12={:016x} R13={:016x} R14={:016x} R15={:016x}\n",
        r.r12, r.r13, r.r14, r.r15
    );
    out += &format!(
        "RIP={:016x} RFL={:08x} CPL={} HLT={}\n",
        r.rip,
        r.rflags,
        s.cs.dpl,
        u8::from(mp == kvm_bindings::KVM_MP_STATE_HALTED)
    );
    for (name, seg) in [
        ("ES", &s.es),
        ("CS", &s.cs),
        ("SS", &s.ss),
        ("DS", &s.ds),
        ("FS", &s.fs),
        ("GS", &s.gs),
        ("LDT", &s.ldt),
        ("TR", &s.tr),
    ] {
        out += &seg_line(name, seg);
    }
    out += &format!("GDT=     {:016x} {:08x}\n", s.gdt.base, s.gdt.limit);
    out += &format!("IDT=     {:016x} {:08x}\n", s.idt.base, s.idt.limit);
    out += &format!(
        "CR0={:08x} CR2={:016x} CR3={:016x} CR4={:08x}\n",
        s.cr0, s.cr2, s.cr3, s.cr4
    );
    out += &format!(
        "DR0={:016x} DR1={:016x} DR2={:016x} DR3={:016x}\n",
        d.db[0], d.db[1], d.db[2], d.db[3]
    );
    out += &format!("DR6={:016x} DR7={:016x}\n", d.dr6, d.dr7);
    out += &format!("EFER={:016x} APIC_BASE={:016x}\n", s.efer, s.apic_base);
    Ok(out)
}
