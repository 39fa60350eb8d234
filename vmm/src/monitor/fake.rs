//! A stand-in machine for protocol unit tests: tracks the run state the real one would.

use super::VmControl;
use crate::machine::{MachineError, RunState};

pub struct FakeVm {
    pub state: RunState,
    pub resets: u32,
}

impl FakeVm {
    pub fn new(state: RunState) -> FakeVm {
        FakeVm { state, resets: 0 }
    }
}

impl VmControl for FakeVm {
    fn start(&mut self) -> Result<(), MachineError> {
        self.state = RunState::Running;
        Ok(())
    }
    fn pause(&mut self) -> Result<(), MachineError> {
        self.state = RunState::Paused;
        Ok(())
    }
    fn resume(&mut self) -> Result<(), MachineError> {
        self.state = RunState::Running;
        Ok(())
    }
    fn run_state(&self) -> RunState {
        self.state
    }
    fn reset(&mut self) -> Result<(), MachineError> {
        self.resets += 1;
        Ok(())
    }
    fn wakeup(&mut self) -> Result<(), MachineError> {
        self.state = RunState::Running;
        Ok(())
    }
    fn describe_registers(&self, vcpu: usize) -> Result<String, MachineError> {
        Ok(format!("RAX=0000000000000000 (cpu {vcpu})"))
    }
    fn describe_cpus(&self) -> Vec<String> {
        vec!["* CPU #0: thread_id=1".into()]
    }
    fn serial_input(&self, _bytes: &[u8]) -> Result<(), MachineError> {
        Ok(())
    }
    fn ram_digest(&self) -> Result<Vec<(String, u64, u32)>, MachineError> {
        Ok(vec![("ram-below-4g".into(), 4096, 0x1234_abcd)])
    }
}
