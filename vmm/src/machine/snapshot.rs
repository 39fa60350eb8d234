//! Machine state save and restore: the one place that owns the live-update sequence.
//!
//! Save (all vCPUs stopped, pending I/O completed by the stop protocol): every vCPU
//! (`Vcpu::save` order), then PIC master/slave and IOAPIC, PIT, kvmclock, then devices.
//! Restore into a NEW VM over RAM that already holds guest memory: create VM, TSS, memslots,
//! irqchip, PIT, vCPUs (`lifecycle::create`); then each vCPU's state (`Vcpu::restore`);
//! irqchip, PIT and clock after the vCPUs (restoring the LAPICs can inject into the
//! irqchip, which the saved state must override); devices last, and the UART's irqfd only
//! after the irqchip state is in place (`lifecycle::finish`).

use serde::{Deserialize, Serialize};

use super::devices::pm::PmState;
use super::devices::serial::SerialState;
use super::devices::{self, PmControl, SerialDevice};
use super::memory::{GuestRam, RamBlockDesc};
use super::vcpu_state::VcpuState;
use super::vm_state::{ClockState, IrqchipState, PitState};
use super::{lifecycle, vm, Machine, MachineConfig, MachineError, MachineEvent, RunState};
use super::{SerialOutput, VcpuHandle};

/// Everything needed to rebuild a machine around RAM that already holds guest memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineState {
    /// RAM layout the state belongs to (the fds themselves travel separately).
    pub ram: Vec<RamBlockDesc>,
    pub vcpus: Vec<VcpuState>,
    pub irqchip: IrqchipState,
    pub pit: PitState,
    pub clock: ClockState,
    pub serial: SerialState,
    pub pm: PmState,
    /// The guest was in S3: the restored machine stays suspended until `wakeup`.
    pub suspended: bool,
}

impl Machine {
    /// Reads the whole machine state. Only while paused (or before start): every vCPU must
    /// be stopped at an exit.
    pub fn save_state(&self) -> Result<MachineState, MachineError> {
        let state = self.run_state();
        if !matches!(
            state,
            RunState::Paused | RunState::Prelaunch | RunState::Postmigrate
        ) || !self.all_stopped()
        {
            return Err(MachineError::BadRunState {
                op: "save_state",
                state,
            });
        }
        let vcpus = self
            .vcpus
            .iter()
            .map(|h: &VcpuHandle| devices::lock(&h.vcpu).save(&self.msr_list))
            .collect::<Result<Vec<_>, _>>()?;
        let irqchip = vm::get_irqchip(&self.vm)?;
        let pit = vm::get_pit(&self.vm)?;
        let clock = vm::get_clock(&self.vm)?;
        let serial = devices::lock(&self.shared.devices.serial).save();
        let pm = devices::lock(&self.shared.devices.pm).save();
        Ok(MachineState {
            ram: self.ram.descs(),
            vcpus,
            irqchip,
            pit,
            clock,
            serial,
            pm,
            suspended: self.paused_while_suspended,
        })
    }

    /// Builds a machine in a new KVM VM from `state`, over `ram` (e.g. `GuestRam::from_fds`
    /// of inherited memfds). The kernel is not loaded: RAM is the guest's. The machine comes
    /// back Paused; `resume` runs it (a suspended guest then returns to Suspended).
    pub fn restore(
        config: &MachineConfig,
        ram: GuestRam,
        state: &MachineState,
        serial_out: SerialOutput,
        events: std::sync::mpsc::Sender<MachineEvent>,
    ) -> Result<Machine, MachineError> {
        check_layout(&ram, state)?;
        check_vcpus(config, state)?;
        Machine::prepare_incoming(config, ram)?.restore(state, serial_out, events)
    }

    /// The first half of [`Machine::restore`], for a live update that builds the VM before
    /// its state arrives: a new KVM VM, TSS, memslots (RAM before the irqchip: a memslot
    /// added after KVM_CREATE_IRQCHIP costs milliseconds), irqchip, PIT and vCPUs, without
    /// boot configuration (the saved state overwrites it all).
    pub fn prepare_incoming(
        config: &MachineConfig,
        ram: GuestRam,
    ) -> Result<IncomingMachine, MachineError> {
        Ok(IncomingMachine {
            config: config.clone(),
            parts: lifecycle::create(config, ram, lifecycle::Prepare::Restore { msrs: &[] })?,
        })
    }
}

fn check_layout(ram: &GuestRam, state: &MachineState) -> Result<(), MachineError> {
    let given = ram.descs();
    let same_layout = given.len() == state.ram.len()
        && given
            .iter()
            .zip(&state.ram)
            .all(|(a, b)| a.guest_addr == b.guest_addr && a.size == b.size);
    if !same_layout {
        return Err(MachineError::RamLayoutMismatch {
            saved: state.ram.clone(),
            given,
        });
    }
    Ok(())
}

fn check_vcpus(config: &MachineConfig, state: &MachineState) -> Result<(), MachineError> {
    if state.vcpus.len() != usize::from(config.vcpus) {
        return Err(MachineError::VcpuCountMismatch {
            saved: state.vcpus.len(),
            configured: usize::from(config.vcpus),
        });
    }
    Ok(())
}

/// A VM created over RAM that holds a guest, waiting for the guest's state
/// ([`Machine::prepare_incoming`]).
pub struct IncomingMachine {
    config: MachineConfig,
    parts: lifecycle::Parts,
}

impl IncomingMachine {
    /// The RAM the VM was built over.
    pub fn ram(&self) -> &GuestRam {
        &self.parts.ram
    }

    /// Checks that `state` fits this VM (RAM layout, vCPU count) without consuming it.
    pub fn check(&self, state: &MachineState) -> Result<(), MachineError> {
        check_layout(&self.parts.ram, state)?;
        check_vcpus(&self.config, state)
    }

    /// The second half of [`Machine::restore`]: each vCPU's state; irqchip, PIT and clock
    /// after the vCPUs (restoring the LAPICs can inject into the irqchip, which the saved
    /// state must override); devices last. The machine comes back Paused.
    pub fn restore(
        self,
        state: &MachineState,
        serial_out: SerialOutput,
        events: std::sync::mpsc::Sender<MachineEvent>,
    ) -> Result<Machine, MachineError> {
        self.check(state)?;
        let IncomingMachine { config, mut parts } = self;
        // The MSRs the state carries are the ones later saves read.
        parts.msr_list = state
            .vcpus
            .first()
            .map(|v| v.msrs.iter().map(|m| m.index).collect())
            .unwrap_or_default();
        for (v, s) in parts.vcpus.iter().zip(&state.vcpus) {
            v.restore(s)?;
        }
        vm::set_irqchip(&parts.vm, &state.irqchip)?;
        vm::set_pit(&parts.vm, &state.pit)?;
        vm::set_clock(&parts.vm, &state.clock)?;
        let (serial, serial_irq) = SerialDevice::restore(&state.serial, serial_out)?;
        let pm = PmControl::restore(&state.pm);
        lifecycle::finish(
            &config,
            parts,
            serial,
            serial_irq,
            pm,
            events,
            RunState::Paused,
            state.suspended,
        )
    }
}
