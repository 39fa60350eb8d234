//! The monitors: HMP (text) and QMP (JSON), over chardevs.
//!
//! Both drive one [`Controller`], which owns the run-state transitions the front end may ask
//! for and queues the QMP events they cause. Commands live in one table per protocol
//! (`hmp::COMMANDS`, `qmp::COMMANDS`): a new command is one entry plus its handler.

pub mod hmp;
pub mod json;
pub mod mux;
pub mod qmp;

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::machine::{Machine, MachineError, MachineEvent, RunState};

/// The operations the monitors need from the machine. Implemented by [`Machine`]; a narrow
/// trait so the protocol code can be unit-tested without KVM.
pub trait VmControl {
    fn start(&mut self) -> Result<(), MachineError>;
    fn pause(&mut self) -> Result<(), MachineError>;
    fn resume(&mut self) -> Result<(), MachineError>;
    fn run_state(&self) -> RunState;
    fn reset(&mut self) -> Result<(), MachineError>;
    fn wakeup(&mut self) -> Result<(), MachineError>;
    fn describe_registers(&self, vcpu: usize) -> Result<String, MachineError>;
    fn describe_cpus(&self) -> Vec<String>;
    fn serial_input(&self, bytes: &[u8]) -> Result<(), MachineError>;
    /// CRC-32 of each guest RAM block: (name, size, crc) in memslot order.
    fn ram_digest(&self) -> Result<Vec<(String, u64, u32)>, MachineError>;
}

impl VmControl for Machine {
    fn start(&mut self) -> Result<(), MachineError> {
        Machine::start(self)
    }
    fn pause(&mut self) -> Result<(), MachineError> {
        Machine::pause(self)
    }
    fn resume(&mut self) -> Result<(), MachineError> {
        Machine::resume(self)
    }
    fn run_state(&self) -> RunState {
        Machine::run_state(self)
    }
    fn reset(&mut self) -> Result<(), MachineError> {
        Machine::reset(self)
    }
    fn wakeup(&mut self) -> Result<(), MachineError> {
        Machine::wakeup(self)
    }
    fn describe_registers(&self, vcpu: usize) -> Result<String, MachineError> {
        Machine::describe_registers(self, vcpu)
    }
    fn describe_cpus(&self) -> Vec<String> {
        Machine::describe_cpus(self)
    }
    fn serial_input(&self, bytes: &[u8]) -> Result<(), MachineError> {
        Machine::serial_input(self, bytes)
    }
    fn ram_digest(&self) -> Result<Vec<(String, u64, u32)>, MachineError> {
        Ok(digest_of(self.ram()))
    }
}

/// [`VmControl::ram_digest`] of some guest RAM.
pub fn digest_of(ram: &crate::machine::GuestRam) -> Vec<(String, u64, u32)> {
    ram.digest()
        .into_iter()
        .map(|(n, size, crc)| (n.to_string(), size, crc))
        .collect()
}

/// A live-update command that needs more than the machine: the event loop performs it
/// with the chardevs and monitor sessions at hand, then sends the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CprOp {
    Save { path: String, mode: String },
    Exec { argv: Vec<String> },
    Load { path: String },
}

/// How the reply to a deferred command is written.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyTo {
    /// HMP text, then a prompt.
    Hmp,
    /// A QMP return/error with the request's id; `hmp_text` for human-monitor-command,
    /// whose return value is the HMP output.
    Qmp { id: Option<Value>, hmp_text: bool },
}

/// A deferred command and how to answer it (set by the protocol that received it).
#[derive(Debug, Clone, PartialEq)]
pub struct Deferred {
    pub op: CprOp,
    pub reply: Option<ReplyTo>,
}

/// QEMU's QMP error classes (all of them, so later commands pick the one QEMU uses).
#[allow(dead_code)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    GenericError,
    CommandNotFound,
    DeviceNotActive,
    DeviceNotFound,
    KVMMissingCap,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::CommandNotFound => "CommandNotFound",
            ErrorClass::DeviceNotActive => "DeviceNotActive",
            ErrorClass::DeviceNotFound => "DeviceNotFound",
            ErrorClass::KVMMissingCap => "KVMMissingCap",
        }
    }
}

/// A command failure: QMP sends it as `{"error": ...}`, HMP prints `Error: desc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdError {
    pub class: ErrorClass,
    pub desc: String,
}

impl CmdError {
    pub fn generic(desc: impl Into<String>) -> CmdError {
        CmdError {
            class: ErrorClass::GenericError,
            desc: desc.into(),
        }
    }
}

impl From<MachineError> for CmdError {
    fn from(e: MachineError) -> CmdError {
        CmdError::generic(crate::error_chain(&e))
    }
}

/// A QMP event waiting to be sent to the QMP clients.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: &'static str,
    pub data: Option<Value>,
    pub seconds: u64,
    pub microseconds: u32,
}

impl Event {
    pub fn new(name: &'static str, data: Option<Value>) -> Event {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Event {
            name,
            data,
            seconds: now.as_secs(),
            microseconds: now.subsec_micros(),
        }
    }
}

/// QEMU's names for run states (query-status "status", `info status`).
pub fn run_state_name(s: RunState) -> &'static str {
    match s {
        RunState::Prelaunch => "prelaunch",
        RunState::Running => "running",
        RunState::Paused => "paused",
        RunState::Suspended => "suspended",
        RunState::Shutdown => "shutdown",
        RunState::Postmigrate => "postmigrate",
        RunState::InternalError => "internal-error",
    }
}

/// Why the process is exiting, and with which status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit(pub i32);

/// One chardev as `info chardev` / query-chardev show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChardevInfo {
    pub label: String,
    pub filename: String,
    pub frontend_open: bool,
}

/// Run-state control shared by every monitor; queues the events that changes emit.
pub struct Controller<V: VmControl> {
    pub vm: V,
    /// The chardevs as of the current command (refreshed by the event loop).
    pub chardevs: Vec<ChardevInfo>,
    events: Vec<Event>,
    exit: Option<Exit>,
    /// A live-update command waiting for the event loop (sessions stop reading meanwhile).
    pub deferred: Option<Deferred>,
    /// Live-update status for `info cpr` / query-cpr.
    pub cpr: crate::cpr::CprStatus,
}

impl<V: VmControl> Controller<V> {
    pub fn new(vm: V) -> Controller<V> {
        Controller {
            vm,
            chardevs: Vec::new(),
            events: Vec::new(),
            exit: None,
            deferred: None,
            cpr: crate::cpr::CprStatus::default(),
        }
    }

    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    pub fn exit(&self) -> Option<Exit> {
        self.exit
    }

    /// Queues a live-update command for the event loop.
    pub fn defer(&mut self, op: CprOp) {
        self.deferred = Some(Deferred { op, reply: None });
    }

    pub fn emit(&mut self, name: &'static str, data: Option<Value>) {
        self.events.push(Event::new(name, data));
    }

    /// `stop`: only a running (or suspended) guest changes state, as in QEMU.
    pub fn stop(&mut self) -> Result<(), CmdError> {
        if matches!(self.vm.run_state(), RunState::Running | RunState::Suspended) {
            self.vm.pause()?;
            self.emit("STOP", None);
        }
        Ok(())
    }

    /// `cont`: starts a prelaunch guest or resumes a paused one.
    pub fn cont(&mut self) -> Result<(), CmdError> {
        match self.vm.run_state() {
            RunState::InternalError | RunState::Shutdown => Err(CmdError::generic(
                "Resetting the Virtual Machine is required",
            )),
            RunState::Running | RunState::Suspended => Ok(()),
            RunState::Prelaunch => {
                self.vm.start()?;
                self.emit("RESUME", None);
                Ok(())
            }
            RunState::Paused | RunState::Postmigrate => {
                self.vm.resume()?;
                self.emit("RESUME", None);
                Ok(())
            }
        }
    }

    pub fn quit(&mut self) {
        self.emit(
            "SHUTDOWN",
            Some(json!({"guest": false, "reason": "host-qmp-quit"})),
        );
        self.exit = Some(Exit(0));
    }

    /// Ctrl-A x on a multiplexed console.
    pub fn quit_from_ui(&mut self) {
        self.emit(
            "SHUTDOWN",
            Some(json!({"guest": false, "reason": "host-ui"})),
        );
        self.exit = Some(Exit(0));
    }

    pub fn system_reset(&mut self) -> Result<(), CmdError> {
        self.vm.reset()?;
        self.emit(
            "RESET",
            Some(json!({"guest": false, "reason": "host-qmp-system-reset"})),
        );
        Ok(())
    }

    pub fn system_wakeup(&mut self) -> Result<(), CmdError> {
        if self.vm.run_state() != RunState::Suspended {
            return Err(CmdError::generic(
                "Unable to wake up: guest is not in suspended state",
            ));
        }
        self.vm.wakeup()?;
        self.emit("WAKEUP", None);
        Ok(())
    }

    /// SIGINT/SIGTERM/SIGHUP: QEMU's "terminating on signal" and a host-signal SHUTDOWN.
    pub fn on_signal(&mut self, signo: i32) {
        eprintln!("vmm: terminating on signal {signo}");
        self.emit(
            "SHUTDOWN",
            Some(json!({"guest": false, "reason": "host-signal"})),
        );
        self.exit = Some(Exit(0));
    }

    /// Turns a machine happening into events and, for some, the process exit status.
    pub fn on_machine_event(&mut self, ev: MachineEvent) {
        match ev {
            MachineEvent::GuestShutdown => {
                self.emit(
                    "SHUTDOWN",
                    Some(json!({"guest": true, "reason": "guest-shutdown"})),
                );
                self.exit = Some(Exit(0));
            }
            MachineEvent::GuestSuspend => self.emit("SUSPEND", None),
            MachineEvent::DebugExit(code) => self.exit = Some(Exit(i32::from(code))),
            MachineEvent::InternalError(msg) => {
                eprintln!("vmm: guest stopped: {msg}");
                self.emit("STOP", None);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
