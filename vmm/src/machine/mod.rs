//! The virtual machine: guest RAM, KVM VM and vCPUs, in-kernel irqchip and PIT, and the
//! emulated devices (UART, PM port, debug-exit port).
//!
//! CONTRACT between the machine (this module) and the front end (CLI, chardevs, monitor).
//! The signatures below are the agreed interface; the bodies are placeholders to be replaced
//! by the real implementation. The front end must only use what is declared here.

use std::path::PathBuf;
use std::sync::mpsc::Sender;

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
    #[error("machine is not implemented yet")]
    NotImplemented,
}

pub struct Machine {
    _private: (),
}

impl Machine {
    /// Builds RAM, the KVM VM, irqchip, PIT, vCPUs and devices, loads the kernel.
    /// vCPUs do not run until `start`.
    pub fn new(
        _config: &MachineConfig,
        _serial_out: SerialOutput,
        _events: Sender<MachineEvent>,
    ) -> Result<Machine, MachineError> {
        Err(MachineError::NotImplemented)
    }
    /// Starts the vCPU threads; the guest runs (state Running).
    pub fn start(&mut self) -> Result<(), MachineError> {
        Err(MachineError::NotImplemented)
    }
    /// Stops every vCPU at an exit and returns once all are stopped (state Paused).
    pub fn pause(&mut self) -> Result<(), MachineError> {
        Err(MachineError::NotImplemented)
    }
    /// Resumes every vCPU (state Running).
    pub fn resume(&mut self) -> Result<(), MachineError> {
        Err(MachineError::NotImplemented)
    }
    pub fn run_state(&self) -> RunState {
        RunState::Prelaunch
    }
    /// Bytes typed into the serial chardev, delivered to the guest UART.
    pub fn serial_input(&self, _bytes: &[u8]) -> Result<(), MachineError> {
        Err(MachineError::NotImplemented)
    }
    /// `info registers` text for one vCPU (QEMU-like layout).
    pub fn describe_registers(&self, _vcpu: usize) -> Result<String, MachineError> {
        Err(MachineError::NotImplemented)
    }
    /// `info cpus` lines: index, thread id, state.
    pub fn describe_cpus(&self) -> Vec<String> {
        Vec::new()
    }
    /// Resets the machine to its boot state (system_reset).
    pub fn reset(&mut self) -> Result<(), MachineError> {
        Err(MachineError::NotImplemented)
    }
    /// Wakes a suspended guest (system_wakeup).
    pub fn wakeup(&mut self) -> Result<(), MachineError> {
        Err(MachineError::NotImplemented)
    }
    /// Stops vCPU threads and releases KVM resources.
    pub fn shutdown(&mut self) {}
}
