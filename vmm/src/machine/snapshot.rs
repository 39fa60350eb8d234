//! Machine state save and restore: the one place that owns the live-update sequence.
//!
//! Save (all vCPUs stopped, pending I/O completed by the stop protocol): every vCPU
//! (`Vcpu::save` order), then PIC master/slave and IOAPIC, PIT, kvmclock, then devices.
//! Restore into a NEW VM over RAM that already holds guest memory: create VM, TSS, memslots,
//! irqchip, PIT, vCPUs and their parked threads (`lifecycle::create_incoming`); each
//! vCPU's state (`Vcpu::restore`), there as each vCPU is created when the state is already
//! being decoded, else in `IncomingMachine::restore`; irqchip, PIT and clock after the
//! vCPUs (restoring the LAPICs can inject into the irqchip, which the saved state must
//! override); devices last, and the UART's irqfd only after the irqchip state is in place.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::devices::pm::PmState;
use super::devices::rtc::RtcState;
use super::devices::serial::SerialState;
use super::devices::{self, PmControl, SerialDevice};
use super::memory::{GuestRam, RamBlockDesc};
use super::vcpu::{FreshVcpu, OwnState};
use super::vcpu_state::VcpuState;
use super::vm_state::{ClockState, IrqchipState, PitState};
use super::{lifecycle, vm, Machine, MachineConfig, MachineError, MachineEvent, RunState};
use super::{SerialOutput, VcpuHandle};

/// Hands over the saved state once it is decoded, `None` if there is none
/// ([`Machine::prepare_incoming_early`]).
pub type EarlyState<'a> = dyn FnOnce() -> Option<Arc<MachineState>> + Send + 'a;

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
    /// `None` from an image written before the RTC was saved: restore keeps a fresh RTC.
    pub rtc: Option<RtcState>,
    /// The guest was in S3: the restored machine stays suspended until `wakeup`.
    pub suspended: bool,
}

impl Machine {
    /// Reads the whole machine state. Only while paused (or before start): every vCPU must
    /// be stopped at an exit.
    pub fn save_state(&self) -> Result<MachineState, MachineError> {
        self.save_state_from(Vec::new(), |_| {})
    }

    /// [`Machine::save_state`] right after [`Machine::pause_saving_own`], with what the
    /// vCPU threads read as they stopped (`own`, in vCPU order; a missing or `None` entry
    /// is read in full here). `each` sees every vCPU's state as soon as it is read.
    pub fn save_state_from(
        &self,
        own: Vec<Option<OwnState>>,
        mut each: impl FnMut(&VcpuState),
    ) -> Result<MachineState, MachineError> {
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
        // One thread: vCPUs that ran are slower to read from a second thread here (8 vCPUs:
        // 0.56 ms on one thread, 0.67 ms on two; KVM moves each vCPU's context between
        // CPUs), unlike the fresh vCPUs of a restore (see `fanout`).
        let mut own = own.into_iter();
        let vcpus = self
            .vcpus
            .iter()
            .map(|h: &VcpuHandle| {
                let v = devices::lock(&h.vcpu);
                let state = match own.next().flatten() {
                    Some(o) => v.save_after(o, &self.msr_list),
                    None => v.save(&self.msr_list),
                }?;
                each(&state);
                Ok::<_, MachineError>(state)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let irqchip = vm::get_irqchip(&self.vm)?;
        let pit = vm::get_pit(&self.vm)?;
        let clock = vm::get_clock(&self.vm)?;
        let serial = devices::lock(&self.shared.devices.serial).save();
        let pm = devices::lock(&self.shared.devices.pm).save();
        let rtc = devices::lock(&self.shared.devices.rtc).save();
        Ok(MachineState {
            ram: self.ram.descs(),
            vcpus,
            irqchip,
            pit,
            clock,
            serial,
            pm,
            rtc: Some(rtc),
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
    /// boot configuration (the saved state overwrites it all), and the vCPU threads,
    /// parked: starting threads is scheduler-bound on a busy host, so it is done before the
    /// guest pauses (transfer mode), not inside the pause. The devices are placeholders
    /// until `restore` puts the guest's in.
    pub fn prepare_incoming(
        config: &MachineConfig,
        ram: GuestRam,
    ) -> Result<IncomingMachine, MachineError> {
        Machine::prepare_incoming_early(config, ram, None)
    }

    /// [`Machine::prepare_incoming`], asking `early` for the saved state once the VM exists
    /// (restart mode decodes the image meanwhile): given one, the vCPUs get their state as
    /// they are created, and [`IncomingMachine::restore`] with that same state skips them.
    pub fn prepare_incoming_early(
        config: &MachineConfig,
        ram: GuestRam,
        early: Option<Box<EarlyState<'_>>>,
    ) -> Result<IncomingMachine, MachineError> {
        let (machine, incoming) = lifecycle::create_incoming(config, ram, early)?;
        Ok(IncomingMachine {
            machine,
            fresh: incoming.fresh.map(Box::new),
            early: incoming.early,
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
    /// Paused, with placeholder devices; never run.
    machine: Machine,
    /// What its still untouched vCPUs hold (`Vcpu::restore_fresh`); `None` once they are
    /// not untouched.
    fresh: Option<Box<FreshVcpu>>,
    /// The state the vCPUs already hold ([`Machine::prepare_incoming_early`]).
    early: Option<Arc<MachineState>>,
}

impl IncomingMachine {
    /// The RAM the VM was built over.
    pub fn ram(&self) -> &GuestRam {
        &self.machine.ram
    }

    /// The state of the parked, never-run VM (its vCPUs hold no guest state yet): for a
    /// rehearsal of the restore path before a live update's pause.
    pub fn save_state(&self) -> Result<MachineState, MachineError> {
        self.machine.save_state()
    }

    /// The VM's MSI routing (assigned devices prepared before their state arrives).
    pub fn gsi_router(&self) -> &std::sync::Arc<crate::pci::GsiRouter> {
        &self.machine.gsi_router
    }

    /// Checks that `state` fits this VM (RAM layout, vCPU count) without consuming it.
    pub fn check(&self, state: &MachineState) -> Result<(), MachineError> {
        check_layout(&self.machine.ram, state)?;
        check_vcpus(&self.machine.config, state)
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
        let mut m = self.machine;
        // The MSRs the state carries are the ones later saves read.
        m.msr_list = state
            .vcpus
            .first()
            .map(|v| v.msrs.iter().map(|m| m.index).collect())
            .unwrap_or_default();
        // The very state the vCPUs were given as they were created: nothing to do for them.
        let vcpus_hold_it = self
            .early
            .as_deref()
            .is_some_and(|early| std::ptr::eq(early, state));
        if !vcpus_hold_it {
            let pairs: Vec<_> = m.vcpus.iter().zip(&state.vcpus).collect();
            super::fanout::map(&pairs, |(h, s)| {
                let v = devices::lock(&h.vcpu);
                match &self.fresh {
                    Some(fresh) => v.restore_fresh(s, fresh),
                    None => v.restore(s),
                }
            })
            .into_iter()
            .collect::<Result<Vec<()>, _>>()?;
        }
        vm::set_irqchip(&m.vm, &state.irqchip)?;
        vm::set_pit(&m.vm, &state.pit)?;
        vm::set_clock(&m.vm, &state.clock)?;
        let (serial, serial_irq) = SerialDevice::restore(&state.serial, serial_out)?;
        // Registered after the irqchip state is final: an interrupt the UART raised while
        // being restored is already latched in the eventfd and KVM injects it now.
        m.vm.register_irqfd(&serial_irq, devices::serial::COM1_IRQ)
            .map_err(|source| MachineError::Irqfd {
                gsi: devices::serial::COM1_IRQ,
                source,
            })?;
        *devices::lock(&m.shared.devices.serial) = serial;
        *devices::lock(&m.shared.devices.pm) = PmControl::restore(&state.pm);
        if let Some(rtc) = &state.rtc {
            *devices::lock(&m.shared.devices.rtc) = devices::Rtc::restore(rtc);
        }
        *devices::lock(&m.shared.events) = events;
        m.serial_irq = serial_irq;
        m.paused_while_suspended = state.suspended;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    //! Need /dev/kvm (fail without it): the state comes from and goes into real VMs.
    use super::*;
    use crate::machine::RamBackendConfig;

    const RTC_INDEX: u16 = 0x70;
    const RTC_DATA: u16 = 0x71;

    fn config() -> MachineConfig {
        MachineConfig {
            name: Some("test-rtc".into()),
            mem_size: 16 << 20,
            vcpus: 1,
            kernel: std::path::PathBuf::new(),
            initrd: None,
            cmdline: None,
            ram: RamBackendConfig::Memfd { hugetlb: false },
        }
    }

    fn cmos_write(m: &Machine, index: u8, value: u8) {
        m.shared.devices.pio_write(RTC_INDEX, &[index]).unwrap();
        m.shared.devices.pio_write(RTC_DATA, &[value]).unwrap();
    }

    fn cmos_read(m: &Machine, index: u8) -> u8 {
        m.shared.devices.pio_write(RTC_INDEX, &[index]).unwrap();
        let mut b = [0];
        m.shared.devices.pio_read(RTC_DATA, &mut b);
        b[0]
    }

    /// A machine whose guest wrote CMOS RAM, saved and torn down as in a live update.
    fn saved_machine() -> (MachineState, GuestRam) {
        let (tx, _rx) = std::sync::mpsc::channel();
        let old = Machine::new_unbooted(&config(), Box::new(std::io::sink()), tx).unwrap();
        cmos_write(&old, 0x40, 0xab);
        cmos_write(&old, 0x7f, 0x5c);
        let state = old.save_state().unwrap();
        let fds = old.ram().share_fds().expect("memfd RAM has fds");
        drop(old);
        (state, GuestRam::from_fds(fds).unwrap())
    }

    fn restored(state: &MachineState, ram: GuestRam) -> Machine {
        let (tx, _rx) = std::sync::mpsc::channel();
        Machine::restore(&config(), ram, state, Box::new(std::io::sink()), tx).unwrap()
    }

    #[test]
    fn cmos_ram_survives_save_and_restore_into_a_new_vm() {
        let (state, ram) = saved_machine();
        let rtc = state.rtc.as_ref().expect("save includes the RTC");
        assert_eq!(rtc.cmos[0x40], 0xab);
        let new = restored(&state, ram);
        assert_eq!(cmos_read(&new, 0x40), 0xab);
        assert_eq!(cmos_read(&new, 0x7f), 0x5c);
    }

    #[test]
    fn state_without_the_rtc_restores_a_fresh_one() {
        let (mut state, ram) = saved_machine();
        state.rtc = None;
        let new = restored(&state, ram);
        assert_eq!(cmos_read(&new, 0x40), 0);
        assert_eq!(cmos_read(&new, 0x7f), 0);
    }

    /// vCPUs given a state as they are created keep it when the load brings that very
    /// state, and are restored in full when it brings another (a failed load, then a
    /// cpr-load of a different image).
    #[test]
    fn vcpus_restored_early_hold_the_state_the_load_brings() {
        for same in [true, false] {
            let (state, ram) = saved_machine();
            let early = Arc::new(state);
            let given = early.clone();
            let incoming = Machine::prepare_incoming_early(
                &config(),
                ram,
                Some(Box::new(move || Some(given))),
            )
            .unwrap();
            let mut other = (*early).clone();
            other.vcpus[0].regs.rax = 0x5eed_0f1a;
            let loaded = if same { early.clone() } else { Arc::new(other) };
            let (tx, _rx) = std::sync::mpsc::channel();
            let m = incoming
                .restore(&loaded, Box::new(std::io::sink()), tx)
                .unwrap();
            // Registers, not the whole state: the TSC has moved on since.
            let now = m.save_state().unwrap();
            assert_eq!(now.vcpus[0].regs, loaded.vcpus[0].regs, "same: {same}");
            assert_eq!(now.vcpus[0].sregs, loaded.vcpus[0].sregs, "same: {same}");
        }
    }
}
