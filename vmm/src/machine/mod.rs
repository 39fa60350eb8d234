//! The virtual machine: guest RAM, KVM VM and vCPUs, in-kernel irqchip and PIT, and the
//! emulated devices (UART, PM port, debug-exit port).
//!
//! CONTRACT between the machine (this module) and the front end (CLI, chardevs, monitor).
//! The signatures below are the agreed interface. The front end must only use what is
//! declared here.
//!
//! Live update (the machine half):
//! ```text
//! old process:  m.pause()?; let state = m.save_state()?;       // MachineState: serde,
//!               m.mark_postmigrate()?;                          // sections via state!
//!               for b in m.ram().blocks() { b.name(), b.desc, b.file (memfd) -> fd manifest }
//! new process:  let ram = GuestRam::from_fds(vec![RamBlockFd { file, desc }, ...])?;
//!               let mut m = Machine::restore(&config, ram, &state, serial_out, events)?;
//!               m.resume()?;                                    // Running (or Suspended)
//! ```
//! vCPU threads are kicked out of KVM_RUN with SIGRTMIN + 0 (`vcpu_thread::kick_signal`);
//! the front end must leave that signal alone.

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod devices;
mod fanout;
mod lifecycle;
pub mod memory;
pub mod mptable;
mod os_thread;
pub mod snapshot;
pub mod vcpu;
pub mod vcpu_state;
pub mod vcpu_thread;
pub mod vm;
pub mod vm_state;

use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

pub use memory::{GuestRam, RamBlockDesc, RamBlockFd};
pub use snapshot::{EarlyState, IncomingMachine, MachineState};

/// How guest RAM is backed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RamBackendConfig {
    /// Private anonymous memory: volatile, cannot survive a live update.
    Anonymous,
    /// memfd_create (`-machine memfd-alloc=on` or `-object memory-backend-memfd,share=on`).
    Memfd { hugetlb: bool },
    /// A shared file (`-object memory-backend-file,mem-path=PATH,share=on`), e.g. /dev/shm/NAME.
    File { path: PathBuf },
}

/// Everything the machine needs to be built; produced by the CLI parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineConfig {
    pub name: Option<String>,
    /// Guest RAM size in bytes.
    pub mem_size: u64,
    pub vcpus: u8,
    /// Test guest (ELF64) or Linux bzImage / vmlinux.
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub ram: RamBackendConfig,
}

/// QEMU's run states (as `info status` / query-status name them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Prelaunch,
    Running,
    Paused,
    Suspended,
    Shutdown,
    Postmigrate,
    InternalError,
}

/// Asynchronous happenings the front end turns into QMP events / process exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MachineEvent {
    /// Guest requested power-off through the PM port.
    GuestShutdown,
    /// Guest requested S3 through the PM port (run state is now Suspended).
    GuestSuspend,
    /// Guest wrote the debug-exit port: the process should exit with this code.
    DebugExit(u8),
    /// A vCPU stopped with an error (run state is now InternalError).
    InternalError(String),
}

/// Sink for bytes the guest writes to the UART (the serial chardev).
pub type SerialOutput = Box<dyn std::io::Write + Send>;

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("cannot set up guest RAM")]
    Memory(#[from] memory::MemoryError),
    #[error("KVM VM setup failed")]
    Vm(#[from] vm::VmError),
    #[error("vCPU setup or state access failed")]
    Vcpu(#[from] vcpu::VcpuError),
    #[error("cannot load the kernel")]
    Boot(#[from] boot::BootError),
    #[error("UART failed")]
    Serial(#[from] devices::serial::SerialError),
    #[error("cannot install the vCPU kick signal handler")]
    Signal(#[source] std::io::Error),
    #[error("cannot register the UART interrupt as irqfd for GSI {gsi}")]
    Irqfd {
        gsi: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot start the thread of vCPU {index}")]
    SpawnThread {
        index: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot assign the VFIO devices")]
    Vfio(#[source] crate::vfio::VfioSetError),
    #[error("the thread restoring vCPU {index} ended before finishing")]
    VcpuLost { index: u32 },
    #[error("machine has {got} vCPUs configured, at least 1 and at most 255 are supported")]
    VcpuCount { got: u8 },
    #[error("no vCPU {index} (the machine has {count})")]
    NoSuchVcpu { index: usize, count: usize },
    #[error("{op} is not possible in run state {state:?}")]
    BadRunState { op: &'static str, state: RunState },
    #[error("saved state has {saved} vCPUs, the machine is configured for {configured}")]
    VcpuCountMismatch { saved: usize, configured: usize },
    #[error("saved state's RAM layout {saved:?} differs from the RAM given {given:?}")]
    RamLayoutMismatch {
        saved: Vec<RamBlockDesc>,
        given: Vec<RamBlockDesc>,
    },
}

/// Per-vCPU handles kept by the machine.
struct VcpuHandle {
    vcpu: Arc<Mutex<vcpu::Vcpu>>,
    ctl: Arc<vcpu_thread::VcpuCtl>,
    thread: Option<os_thread::OsThread>,
}

pub struct Machine {
    config: MachineConfig,
    // Field order is drop order: vCPU threads are joined in `Drop` before anything else.
    vcpus: Vec<VcpuHandle>,
    shared: Arc<vcpu_thread::MachineShared>,
    /// Assigned devices; dropped before the VM and RAM they map.
    vfio: Option<crate::vfio::VfioSet>,
    vm: Arc<VmFd>,
    /// MSI routes of the VM (KVM_SET_GSI_ROUTING), shared by PCI devices.
    gsi_router: Arc<crate::pci::GsiRouter>,
    ram: GuestRam,
    serial_irq: EventFd,
    msr_list: Vec<u32>,
    unsaved_msrs: Vec<u32>,
    /// vCPU, irqchip and PIT state right after creation: `reset` returns to it.
    boot_state: Option<lifecycle::BootSnapshot>,
    /// The guest was in S3 when paused: `resume` returns it to Suspended, not Running.
    paused_while_suspended: bool,
    /// The kernel is not loaded yet (`new_unbooted`): `start` loads it. Until then guest
    /// RAM is exactly what its backing held, so a reboot-mode cpr-load can still use it.
    boot_pending: bool,
}

impl Machine {
    /// Builds RAM, the KVM VM, irqchip, PIT, vCPUs and devices, loads the kernel.
    /// vCPUs do not run until `start`.
    pub fn new(
        config: &MachineConfig,
        serial_out: SerialOutput,
        events: Sender<MachineEvent>,
    ) -> Result<Machine, MachineError> {
        let ram = GuestRam::new(&config.ram, config.mem_size)?;
        Self::new_with_ram(config, ram, serial_out, events)
    }

    /// Like `new`, over RAM the caller built (e.g. from fds it holds); the kernel is loaded
    /// into it.
    pub fn new_with_ram(
        config: &MachineConfig,
        ram: GuestRam,
        serial_out: SerialOutput,
        events: Sender<MachineEvent>,
    ) -> Result<Machine, MachineError> {
        let parts = lifecycle::create(config, ram)?;
        if let Some(bsp) = parts.vcpus.first() {
            lifecycle::boot(config, &parts.ram, bsp)?;
        }
        let (serial, serial_irq) = devices::SerialDevice::new(serial_out)?;
        lifecycle::finish(
            config,
            parts,
            serial,
            serial_irq,
            devices::PmControl::default(),
            events,
        )
    }

    /// Like `new`, but the kernel is loaded by `start`, not now: a VMM started with -S
    /// must not write into guest RAM that a reboot-mode cpr-load may still need (a RAM file
    /// that kept the guest's memory across the VMM's restart).
    pub fn new_unbooted(
        config: &MachineConfig,
        serial_out: SerialOutput,
        events: Sender<MachineEvent>,
    ) -> Result<Machine, MachineError> {
        let ram = GuestRam::new(&config.ram, config.mem_size)?;
        let parts = lifecycle::create(config, ram)?;
        let (serial, serial_irq) = devices::SerialDevice::new(serial_out)?;
        let mut m = lifecycle::finish(
            config,
            parts,
            serial,
            serial_irq,
            devices::PmControl::default(),
            events,
        )?;
        m.boot_pending = true;
        Ok(m)
    }

    /// Whether guest RAM is still untouched by this process (no kernel loaded, never ran).
    pub fn boot_pending(&self) -> bool {
        self.boot_pending
    }

    /// Starts the vCPU threads; the guest runs (state Running).
    pub fn start(&mut self) -> Result<(), MachineError> {
        match self.run_state() {
            RunState::Prelaunch => {
                if self.boot_pending {
                    if let Some(h) = self.vcpus.first() {
                        lifecycle::boot(&self.config, &self.ram, &devices::lock(&h.vcpu))?;
                    }
                    self.boot_pending = false;
                }
                self.set_running();
                Ok(())
            }
            state => Err(MachineError::BadRunState { op: "start", state }),
        }
    }

    /// Stops every vCPU at an exit and returns once all are stopped (state Paused).
    pub fn pause(&mut self) -> Result<(), MachineError> {
        let state = self.run_state();
        match state {
            RunState::Running | RunState::Suspended | RunState::Prelaunch => {}
            RunState::Paused => return Ok(()),
            state => return Err(MachineError::BadRunState { op: "pause", state }),
        }
        self.stop_vcpus();
        let mut rs = devices::lock(&self.shared.run_state);
        match *rs {
            // A guest S3 request may have raced with us: remember it for `resume`.
            RunState::Suspended => {
                self.paused_while_suspended = true;
                *rs = RunState::Paused;
            }
            RunState::Shutdown | RunState::InternalError => {}
            _ => *rs = RunState::Paused,
        }
        Ok(())
    }

    /// Resumes every vCPU (state Running).
    pub fn resume(&mut self) -> Result<(), MachineError> {
        match self.run_state() {
            RunState::Paused | RunState::Postmigrate => {
                // A live update abandoned after cpr-save (cont, or a failed exec): DMA
                // mappings get their addresses back and irqfds reattach before vCPUs run.
                if let Some(v) = &mut self.vfio {
                    v.cancel_update().map_err(MachineError::Vfio)?;
                }
                if self.paused_while_suspended {
                    self.paused_while_suspended = false;
                    *devices::lock(&self.shared.run_state) = RunState::Suspended;
                } else {
                    self.set_running();
                }
                Ok(())
            }
            RunState::Running => Ok(()),
            // `cont` before the first start starts the machine, as in QEMU.
            RunState::Prelaunch => self.start(),
            state => Err(MachineError::BadRunState {
                op: "resume",
                state,
            }),
        }
    }

    pub fn run_state(&self) -> RunState {
        *devices::lock(&self.shared.run_state)
    }

    /// Bytes typed into the serial chardev, delivered to the guest UART.
    pub fn serial_input(&self, bytes: &[u8]) -> Result<(), MachineError> {
        devices::lock(&self.shared.devices.serial).input(bytes)?;
        Ok(())
    }

    /// `info registers` text for one vCPU (QEMU-like layout).
    pub fn describe_registers(&self, vcpu: usize) -> Result<String, MachineError> {
        let handle = self.vcpus.get(vcpu).ok_or(MachineError::NoSuchVcpu {
            index: vcpu,
            count: self.vcpus.len(),
        })?;
        // A running vCPU holds its mutex inside KVM_RUN: stop it briefly, as QEMU does with
        // run_on_cpu to synchronise state.
        let was = handle.ctl.state().0;
        let running = was == vcpu_thread::Is::Running;
        if running {
            handle.ctl.request(vcpu_thread::Want::Pause);
            handle.ctl.wait_stopped();
        }
        let text = {
            let v = devices::lock(&handle.vcpu);
            lifecycle::describe_registers(&v)
        };
        if running && self.run_state() == RunState::Running {
            handle.ctl.request(vcpu_thread::Want::Run);
        }
        text
    }

    /// `info cpus` lines: index, thread id, state.
    pub fn describe_cpus(&self) -> Vec<String> {
        self.vcpus
            .iter()
            .map(|h| {
                let (is, tid) = h.ctl.state();
                let state = match is {
                    vcpu_thread::Is::Running => "running",
                    vcpu_thread::Is::Stopped | vcpu_thread::Is::Starting => "stopped",
                    vcpu_thread::Is::Exited => "exited",
                };
                let star = if h.ctl.index == 0 { "*" } else { " " };
                format!("{star} CPU #{}: thread_id={tid} ({state})", h.ctl.index)
            })
            .collect()
    }

    /// Resets the machine to its boot state (system_reset).
    pub fn reset(&mut self) -> Result<(), MachineError> {
        let state = self.run_state();
        self.stop_vcpus();
        lifecycle::reset(self)?;
        self.paused_while_suspended = false;
        self.boot_pending = false;
        match state {
            RunState::Running
            | RunState::Suspended
            | RunState::Shutdown
            | RunState::InternalError => self.set_running(),
            _ => {}
        }
        Ok(())
    }

    /// Wakes a suspended guest (system_wakeup): it continues after its S3 request.
    pub fn wakeup(&mut self) -> Result<(), MachineError> {
        if self.run_state() == RunState::Suspended {
            self.set_running();
        } else if self.run_state() == RunState::Paused && self.paused_while_suspended {
            // Woken while paused: it will run at `resume`.
            self.paused_while_suspended = false;
        }
        Ok(())
    }

    /// Stops vCPU threads and releases KVM resources.
    pub fn shutdown(&mut self) {
        for h in &self.vcpus {
            h.ctl.request(vcpu_thread::Want::Exit);
        }
        for h in &mut self.vcpus {
            if let Some(t) = h.thread.take() {
                // A vCPU thread that panicked has nothing left to clean up.
                let _ = t.join();
            }
        }
    }

    /// After a successful save for live update (cpr-save), the old machine stays stopped in
    /// state Postmigrate, as QEMU's does; `resume` still runs it (a failed update falls back).
    pub fn mark_postmigrate(&mut self) -> Result<(), MachineError> {
        let mut rs = devices::lock(&self.shared.run_state);
        match *rs {
            RunState::Paused | RunState::Postmigrate => {
                *rs = RunState::Postmigrate;
                Ok(())
            }
            state => Err(MachineError::BadRunState {
                op: "mark_postmigrate",
                state,
            }),
        }
    }

    /// The machine as a cpr-format image header describes it (vCPUs, RAM blocks, devices).
    pub fn describe(&self) -> cpr_format::MachineDesc {
        let device = |id: &str, kind: &str| cpr_format::DeviceDesc {
            id: id.to_string(),
            kind: kind.to_string(),
        };
        cpr_format::MachineDesc {
            vcpus: u32::from(self.config.vcpus),
            ram_blocks: self.ram.blocks().iter().map(|b| b.format_desc()).collect(),
            devices: vec![
                device("serial0", "uart-8250"),
                device("pm0", "pm1a-cnt"),
                device("debug-exit0", "debug-exit"),
            ],
        }
    }

    /// MSRs that state save covers (from KVM_GET_MSR_INDEX_LIST, minus `unsaved_msrs`).
    pub fn saved_msrs(&self) -> &[u32] {
        &self.msr_list
    }

    /// MSRs KVM lists but refuses to read for this guest's CPUID; they are not saved.
    pub fn unsaved_msrs(&self) -> &[u32] {
        &self.unsaved_msrs
    }

    pub fn config(&self) -> &MachineConfig {
        &self.config
    }

    /// Guest RAM: blocks, fds and mappings (the live-update fd manifest is built from it).
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// The UART's interrupt eventfd (registered as irqfd for GSI 4). A live update detaches
    /// it from the old VM so an interrupt raised meanwhile stays latched in the eventfd.
    pub fn serial_irq(&self) -> &EventFd {
        &self.serial_irq
    }

    /// The KVM VM fd (for irqfd / ioeventfd wiring by later devices).
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm
    }

    /// Assigns `devices` (`-device vfio-pci`): container, groups, DMA map of all RAM, reset,
    /// and the functions on PCI bus 0. Before `start`.
    pub fn assign_vfio(
        &mut self,
        devices: &[crate::vfio::VfioDeviceConfig],
    ) -> Result<(), MachineError> {
        if devices.is_empty() {
            return Ok(());
        }
        let set = crate::vfio::VfioSet::open(
            devices,
            &self.ram,
            &self.gsi_router,
            &self.shared.devices.pci,
        )
        .map_err(MachineError::Vfio)?;
        self.vfio = Some(set);
        Ok(())
    }

    /// After exec: re-adopts the assigned devices from saved state and inherited fds.
    pub fn restore_vfio(
        &mut self,
        state: &crate::vfio::VfioBackendState,
        devices: &[(String, crate::vfio::VfioPciState)],
        take_fd: &mut dyn FnMut(&str) -> Option<std::os::fd::OwnedFd>,
    ) -> Result<(), MachineError> {
        let set = crate::vfio::VfioSet::restore(
            state,
            devices,
            take_fd,
            &self.ram,
            &self.gsi_router,
            &self.shared.devices.pci,
        )
        .map_err(MachineError::Vfio)?;
        self.vfio = Some(set);
        Ok(())
    }

    /// Transfer mode, in the successor: the assigned devices over a container adopted
    /// before the pause ([`crate::vfio::set::VfioSet::adopt`]), irqfds held until
    /// the guest is ours (`vfio_mut().attach_irqfds()`).
    pub fn restore_vfio_adopted(
        &mut self,
        adopted: crate::vfio::set::AdoptedContainer,
        state: &crate::vfio::VfioBackendState,
        devices: &[(String, crate::vfio::VfioPciState)],
        take_fd: &mut dyn FnMut(&str) -> Option<std::os::fd::OwnedFd>,
    ) -> Result<(), MachineError> {
        let set = crate::vfio::VfioSet::restore_devices(
            adopted,
            state,
            devices,
            take_fd,
            &self.gsi_router,
            &self.shared.devices.pci,
            true,
        )
        .map_err(MachineError::Vfio)?;
        self.vfio = Some(set);
        Ok(())
    }

    /// The assigned devices, if any (live update: blockers, save, fds).
    pub fn vfio(&self) -> Option<&crate::vfio::VfioSet> {
        self.vfio.as_ref()
    }

    pub fn vfio_mut(&mut self) -> Option<&mut crate::vfio::VfioSet> {
        self.vfio.as_mut()
    }

    /// PCI bus 0.
    pub fn pci_bus(&self) -> &crate::pci::PciBus {
        &self.shared.devices.pci
    }

    /// [`Machine::pause`] for a save: each vCPU's thread reads the state only that vCPU
    /// changes as soon as it stops, while the others are still stopping, and the save
    /// (`save_state_from`) reads only the rest. Returns what the threads read, in vCPU
    /// order (`None` where a vCPU was not running or its read failed).
    pub fn pause_saving_own(&mut self) -> Result<Vec<Option<vcpu::OwnState>>, MachineError> {
        let msrs: Arc<[u32]> = self.msr_list.as_slice().into();
        for h in &self.vcpus {
            h.ctl.save_own_on_stop(Some(msrs.clone()));
        }
        let paused = self.pause();
        let own = self
            .vcpus
            .iter()
            .map(|h| h.ctl.save_own_on_stop(None))
            .collect();
        paused.map(|()| own)
    }

    /// When the last vCPU that was running at `since` (CLOCK_MONOTONIC ns) stopped running
    /// guest code; `None` if none was.
    pub fn stopped_since(&self, since: u64) -> Option<u64> {
        self.vcpus
            .iter()
            .map(|h| devices::lock(&h.ctl.ctl).stopped_at)
            .filter(|t| *t >= since)
            .max()
    }

    fn stop_vcpus(&self) {
        for h in &self.vcpus {
            h.ctl.request(vcpu_thread::Want::Pause);
        }
        for h in &self.vcpus {
            h.ctl.wait_stopped();
        }
    }

    fn set_running(&self) {
        // Each vCPU thread tells a kvmclock guest it was stopped as it resumes
        // (`vcpu_thread::run`).
        *devices::lock(&self.shared.run_state) = RunState::Running;
        for h in &self.vcpus {
            h.ctl.request(vcpu_thread::Want::Run);
        }
    }

    fn all_stopped(&self) -> bool {
        self.vcpus.iter().all(|h| {
            matches!(
                h.ctl.state().0,
                vcpu_thread::Is::Stopped | vcpu_thread::Is::Starting
            )
        })
    }

    /// When the first vCPU really entered its run loop at or after `since` (CLOCK_MONOTONIC
    /// ns), waiting up to `timeout` for one to do so: the end of a live update's pause.
    /// `None` if none ran (the guest stays paused or suspended).
    pub fn first_run_since(&self, since: u64, timeout: std::time::Duration) -> Option<u64> {
        let ctls: Vec<_> = self.vcpus.iter().map(|h| h.ctl.clone()).collect();
        vcpu_thread::first_run_since(&ctls, since, timeout)
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.shutdown();
    }
}
