//! Tests that run the test guests in real KVM VMs. They need /dev/kvm and fail without it.
//! Waits are bounded only to turn a hung guest into a failure with its output attached;
//! nothing here asserts on speed.

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use vmm::machine::*;

const GIVE_UP: Duration = Duration::from_secs(120);

#[derive(Clone, Default)]
struct Capture(Arc<(Mutex<Vec<u8>>, Condvar)>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let (m, cv) = &*self.0;
        m.lock().unwrap().extend_from_slice(b);
        cv.notify_all();
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0 .0.lock().unwrap()).into_owned()
    }

    /// Waits until the output satisfies `done`; returns the output.
    fn wait_until(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let (m, cv) = &*self.0;
        let start = Instant::now();
        let mut buf = m.lock().unwrap();
        loop {
            let text = String::from_utf8_lossy(&buf).into_owned();
            if done(&text) {
                return text;
            }
            let left = GIVE_UP
                .checked_sub(start.elapsed())
                .unwrap_or_else(|| panic!("guest never printed {what}; output:\n{text}"));
            buf = cv.wait_timeout(buf, left).unwrap().0;
        }
    }

    fn wait_for(&self, needle: &str) -> String {
        self.wait_until(&format!("{needle:?}"), |t| t.contains(needle))
    }
}

fn guest(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/guests")
        .join(name)
}

fn config(name: &str, ram: RamBackendConfig) -> MachineConfig {
    MachineConfig {
        name: Some(format!("test-{name}")),
        mem_size: 64 << 20,
        vcpus: 1,
        kernel: guest(name),
        initrd: None,
        cmdline: None,
        ram,
    }
}

fn boot(name: &str, ram: RamBackendConfig) -> (Machine, Capture, Receiver<MachineEvent>) {
    boot_smp(name, ram, 1)
}

fn boot_smp(
    name: &str,
    ram: RamBackendConfig,
    vcpus: u8,
) -> (Machine, Capture, Receiver<MachineEvent>) {
    let out = Capture::default();
    let (tx, rx) = channel();
    let mut cfg = config(name, ram);
    cfg.vcpus = vcpus;
    let mut m = Machine::new(&cfg, Box::new(out.clone()), tx).unwrap();
    assert_eq!(m.run_state(), RunState::Prelaunch);
    m.start().unwrap();
    (m, out, rx)
}

fn next_event(rx: &Receiver<MachineEvent>, out: &Capture) -> MachineEvent {
    rx.recv_timeout(GIVE_UP)
        .unwrap_or_else(|_| panic!("no machine event; output:\n{}", out.text()))
}

/// Numbers of the complete `count N` lines in `text`.
fn counts(text: &str) -> Vec<u64> {
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(|l| {
            l.trim_end()
                .strip_prefix("count ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected line {l:?} in:\n{text}"))
        })
        .collect()
}

#[test]
fn counter_counts() {
    let (_m, out, _rx) = boot("counter", RamBackendConfig::Anonymous);
    let text = out.wait_for("count 5\n");
    assert_eq!(&counts(&text)[..5], &[1, 2, 3, 4, 5]);
}

#[test]
fn ticker_ticks_from_pit_interrupts() {
    let (_m, out, _rx) = boot("ticker", RamBackendConfig::Anonymous);
    let text = out.wait_for("tick 5\n");
    assert!(text.starts_with("ticker start\n"), "{text}");
    assert!(!text.contains("unexpected"), "{text}");
}

#[test]
fn memcheck_passes() {
    let (_m, out, _rx) = boot("memcheck", RamBackendConfig::Memfd { hugetlb: false });
    let text = out.wait_for("memcheck ok pass 2\n");
    assert!(text.starts_with("memcheck filled\n"), "{text}");
    assert!(
        !text.contains("mismatch") && !text.contains("FAILED"),
        "{text}"
    );
}

#[test]
fn echo_echoes_serial_input() {
    let (m, out, _rx) = boot("echo", RamBackendConfig::Anonymous);
    out.wait_for("echo ready\n");
    m.serial_input(b"hello\n").unwrap();
    out.wait_for("echo: hello\n");
    // More than the UART's 64-byte FIFO in one go: the rest waits and still arrives.
    let long: String = (0..100)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    m.serial_input(format!("{long}\r").as_bytes()).unwrap();
    out.wait_for(&format!("echo: {long}\n"));
}

#[test]
fn suspend_then_wakeup_resumes_the_guest() {
    let (mut m, out, rx) = boot("suspend", RamBackendConfig::Anonymous);
    assert_eq!(next_event(&rx, &out), MachineEvent::GuestSuspend);
    assert_eq!(m.run_state(), RunState::Suspended);
    assert_eq!(out.text(), "suspending\n");
    m.wakeup().unwrap();
    assert_eq!(next_event(&rx, &out), MachineEvent::GuestShutdown);
    assert_eq!(out.text(), "suspending\nresumed\n");
    assert_eq!(m.run_state(), RunState::Shutdown);
}

#[test]
fn debug_exit_reports_the_code() {
    let (m, out, rx) = boot("exit", RamBackendConfig::Anonymous);
    assert_eq!(next_event(&rx, &out), MachineEvent::DebugExit(42));
    assert_eq!(out.text(), "exiting 42\n");
    assert_eq!(m.run_state(), RunState::Shutdown);
}

#[test]
fn pause_resume_reset_and_register_dump() {
    let (mut m, out, _rx) = boot("counter", RamBackendConfig::Anonymous);
    out.wait_for("count 3\n");
    m.pause().unwrap();
    assert_eq!(m.run_state(), RunState::Paused);
    assert!(
        m.describe_cpus()[0].contains("(stopped)"),
        "{:?}",
        m.describe_cpus()
    );
    let regs = m.describe_registers(0).unwrap();
    assert!(
        regs.contains("CS =0008 0000000000000000 ffffffff"),
        "{regs}"
    );
    assert!(regs.contains("EFER=0000000000000500"), "{regs}");
    assert!(m.describe_registers(1).is_err());
    // Every MSR KVM lists is either saved or reported as unreadable, and a save covers
    // exactly the saved ones.
    eprintln!(
        "MSRs saved {:x?} unsaved {:x?}",
        m.saved_msrs(),
        m.unsaved_msrs()
    );
    let state = m.save_state().unwrap();
    let saved: Vec<u32> = state.vcpus[0].msrs.iter().map(|e| e.index).collect();
    assert_eq!(saved, m.saved_msrs());
    assert!(saved.contains(&0x10), "IA32_TSC is saved");
    let frozen = out.text();
    m.resume().unwrap();
    let last = *counts(&frozen).last().unwrap();
    out.wait_for(&format!("count {}\n", last + 2));

    m.reset().unwrap();
    assert_eq!(m.run_state(), RunState::Running);
    // After reset the guest boots again: its count restarts at 1.
    let text = out.wait_until("count 1 twice", |t| t.matches("count 1\n").count() >= 2);
    assert!(text.contains("\ncount 1\n"), "{text}");
}

#[test]
fn high_ram_block_above_4g() {
    let mut cfg = config("memcheck", RamBackendConfig::Memfd { hugetlb: false });
    cfg.mem_size = (3 << 30) + (16 << 20);
    let out = Capture::default();
    let (tx, _rx) = channel();
    let mut m = Machine::new(&cfg, Box::new(out.clone()), tx).unwrap();
    let descs = m.ram().descs();
    assert_eq!(descs.len(), 2);
    assert_eq!(descs[1].guest_addr, 4 << 30);
    assert_eq!(descs[1].size, 16 << 20);
    let desc = m.describe();
    assert_eq!(desc.vcpus, 1);
    let names: Vec<&str> = desc.ram_blocks.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["ram-below-4g", "ram-above-4g"]);
    assert!(desc
        .ram_blocks
        .iter()
        .all(|b| b.backing == cpr_format::RamBacking::Memfd && b.page_size == 4096));
    m.start().unwrap();
    out.wait_for("memcheck ok pass 1\n");
}

/// Pause a running guest, save its state, build a NEW machine (new KVM VM) from that state
/// over the same memfd RAM, resume: the guest continues exactly where it stopped.
fn save_restore_continues(name: &str, ram: RamBackendConfig, vcpus: u8) -> (String, String) {
    let (mut old, out1, _rx1) = boot_smp(name, ram, vcpus);
    out1.wait_for(if name == "counter" {
        "count 3\n"
    } else {
        "tick 3\n"
    });
    old.pause().unwrap();
    let state = old.save_state().unwrap();
    let saved_at = Instant::now();
    assert!(old.save_state().is_ok(), "saving twice is fine");
    // Every part goes through a cpr-format image as its own section and comes back equal.
    let state = through_image(&state);
    let before = out1.text();

    old.mark_postmigrate().unwrap();
    assert_eq!(old.run_state(), RunState::Postmigrate);
    let fds = old.ram().share_fds().expect("memfd RAM has fds");
    let cfg = old.config().clone();
    drop(old);
    let ram = GuestRam::from_fds(fds).unwrap();
    let out2 = Capture::default();
    let (tx, _rx2) = channel();
    let mut new = Machine::restore(&cfg, ram, &state, Box::new(out2.clone()), tx).unwrap();
    assert_eq!(new.run_state(), RunState::Paused);
    // kvmclock resumes from the saved value: the guest does not see the time the machine
    // spent saved (it advances at most by the real time since the save, not by wall time
    // since the VM was created).
    let clock = new.vm_fd().get_clock().unwrap().clock;
    let since_save = saved_at.elapsed().as_nanos() as u64;
    assert!(
        clock >= state.clock.clock && clock - state.clock.clock <= since_save,
        "clock {clock} saved {} elapsed {since_save}",
        state.clock.clock
    );
    assert_eq!(new.describe_cpus().len(), usize::from(vcpus));
    let again = new.save_state().unwrap();
    assert_eq!(again.vcpus[0].regs, state.vcpus[0].regs);
    assert_eq!(again.vcpus[0].sregs, state.vcpus[0].sregs);
    assert_eq!(again.irqchip.pic_master, state.irqchip.pic_master);
    new.resume().unwrap();
    let after = out2.wait_until("4 lines", |t| t.matches('\n').count() >= 4);
    (before, after)
}

/// Writes each section of `state` into a cpr-format image, reads it back, reassembles.
fn through_image(state: &MachineState) -> MachineState {
    use vmm::machine::devices::pm::PmState;
    use vmm::machine::devices::rtc::RtcState;
    use vmm::machine::devices::serial::SerialState;
    use vmm::machine::vcpu_state::VcpuState;
    use vmm::machine::vm_state::{ClockState, IrqchipState, PitState};

    let mut w = cpr_format::ImageWriter::new(cpr_format::sample::header());
    for v in &state.vcpus {
        w.add_section(&v.index.to_string(), v).unwrap();
    }
    w.add_section("0", &state.irqchip).unwrap();
    w.add_section("0", &state.pit).unwrap();
    w.add_section("0", &state.clock).unwrap();
    w.add_section("serial0", &state.serial).unwrap();
    w.add_section("0", &state.pm).unwrap();
    if let Some(rtc) = &state.rtc {
        w.add_section("0", rtc).unwrap();
    }
    let bytes = w.to_bytes().unwrap();
    let image = cpr_format::Image::from_bytes(&bytes).unwrap();
    let back = MachineState {
        ram: state.ram.clone(),
        vcpus: image
            .sections_of::<VcpuState>()
            .unwrap()
            .into_iter()
            .map(|(_, v)| v)
            .collect(),
        irqchip: image.section::<IrqchipState>("0").unwrap().unwrap(),
        pit: image.section::<PitState>("0").unwrap().unwrap(),
        clock: image.section::<ClockState>("0").unwrap().unwrap(),
        serial: image.section::<SerialState>("serial0").unwrap().unwrap(),
        pm: image.section::<PmState>("0").unwrap().unwrap(),
        rtc: image.section::<RtcState>("0").unwrap(),
        suspended: state.suspended,
    };
    assert_eq!(&back, state);
    back
}

#[test]
fn counter_continues_in_a_new_vm_after_save_restore() {
    let (before, after) =
        save_restore_continues("counter", RamBackendConfig::Memfd { hugetlb: false }, 1);
    // The old process stopped mid-line or between lines; together the outputs are one
    // unbroken sequence 1, 2, 3, ... with nothing repeated or lost.
    let joined = format!("{before}{after}");
    let n = counts(&joined);
    assert!(n.len() >= 6, "{joined}");
    let expected: Vec<u64> = (1..=n.len() as u64).collect();
    assert_eq!(n, expected, "before:\n{before}\nafter:\n{after}");
    assert!(
        !after.starts_with("count 1\n"),
        "restarted from zero:\n{after}"
    );
}

fn assert_counts_continue(before: &str, after: &str) {
    // The old machine stopped mid-line or between lines; together the outputs are one
    // unbroken sequence 1, 2, 3, ... with nothing repeated or lost.
    let joined = format!("{before}{after}");
    let n = counts(&joined);
    assert!(n.len() >= 6, "{joined}");
    let expected: Vec<u64> = (1..=n.len() as u64).collect();
    assert_eq!(n, expected, "before:\n{before}\nafter:\n{after}");
    assert!(
        !after.starts_with("count 1\n"),
        "restarted from zero:\n{after}"
    );
}

#[test]
fn two_vcpu_counter_continues_in_a_new_vm_after_save_restore() {
    // vCPU 1 sits in wait-for-SIPI inside KVM_RUN: pause must kick it out too, and its
    // state must round-trip as well.
    let (before, after) =
        save_restore_continues("counter", RamBackendConfig::Memfd { hugetlb: false }, 2);
    assert_counts_continue(&before, &after);
}

#[test]
fn file_backed_counter_continues_in_a_new_vm_after_save_restore() {
    let path = std::env::temp_dir().join(format!("vmm-test-ram-{}", std::process::id()));
    let (before, after) =
        save_restore_continues("counter", RamBackendConfig::File { path: path.clone() }, 1);
    std::fs::remove_file(&path).unwrap();
    assert_counts_continue(&before, &after);
}

#[test]
fn ticker_keeps_ticking_in_a_new_vm_after_save_restore() {
    let (before, after) =
        save_restore_continues("ticker", RamBackendConfig::Memfd { hugetlb: false }, 1);
    let joined = format!("{before}{after}");
    assert!(!joined.contains("unexpected"), "{joined}");
    let ticks: Vec<u64> = joined
        .lines()
        .filter_map(|l| l.strip_prefix("tick ").and_then(|n| n.parse().ok()))
        .collect();
    let last_before = before
        .lines()
        .filter_map(|l| l.strip_prefix("tick ").and_then(|n| n.parse::<u64>().ok()))
        .next_back()
        .unwrap();
    assert!(*ticks.last().unwrap() > last_before + 2, "{joined}");
    assert!(ticks.windows(2).all(|w| w[1] > w[0]), "{joined}");
}

#[test]
fn save_state_requires_pause() {
    let (m, out, _rx) = boot("counter", RamBackendConfig::Anonymous);
    out.wait_for("count 1\n");
    assert!(matches!(
        m.save_state(),
        Err(MachineError::BadRunState {
            op: "save_state",
            ..
        })
    ));
}

/// Makes sure `pages` 2 MiB huge pages are free, reserving more as root if needed, and
/// gives the extra back on drop.
struct HugePages {
    added: u64,
}

impl HugePages {
    const NR: &'static str = "/proc/sys/vm/nr_hugepages";

    fn reserve(pages: u64) -> HugePages {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let free: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("HugePages_Free:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("HugePages_Free in /proc/meminfo");
        let added = pages.saturating_sub(free);
        if added > 0 {
            let nr: u64 = std::fs::read_to_string(Self::NR)
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            std::fs::write(Self::NR, (nr + added).to_string())
                .expect("reserving huge pages needs root");
        }
        HugePages { added }
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        if self.added > 0 {
            if let Some(nr) = std::fs::read_to_string(Self::NR)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
            {
                let _ = std::fs::write(Self::NR, nr.saturating_sub(self.added).to_string());
            }
        }
    }
}

#[test]
fn hugetlb_memfd_counter_continues_in_a_new_vm_after_save_restore() {
    let _pages = HugePages::reserve(32); // 64 MiB of guest RAM
    let ram = GuestRam::new(&RamBackendConfig::Memfd { hugetlb: true }, 2 << 20).unwrap();
    assert_eq!(ram.blocks()[0].page_size, 2 << 20);
    drop(ram);
    let (before, after) =
        save_restore_continues("counter", RamBackendConfig::Memfd { hugetlb: true }, 1);
    assert_counts_continue(&before, &after);
}

/// Saves a paused machine and builds a new one from the state over the same RAM fds.
fn move_to_new_vm(old: Machine) -> (Machine, Capture, Receiver<MachineEvent>) {
    let state = through_image(&old.save_state().unwrap());
    let fds = old.ram().share_fds().expect("memfd RAM has fds");
    let cfg = old.config().clone();
    drop(old);
    let out = Capture::default();
    let (tx, rx) = channel();
    let m = Machine::restore(
        &cfg,
        GuestRam::from_fds(fds).unwrap(),
        &state,
        Box::new(out.clone()),
        tx,
    )
    .unwrap();
    (m, out, rx)
}

#[test]
fn suspended_guest_stays_suspended_in_a_new_vm_and_wakes_there() {
    let (mut old, out1, rx1) = boot("suspend", RamBackendConfig::Memfd { hugetlb: false });
    assert_eq!(next_event(&rx1, &out1), MachineEvent::GuestSuspend);
    old.pause().unwrap();
    assert_eq!(old.run_state(), RunState::Paused);
    let (mut new, out2, rx2) = move_to_new_vm(old);
    assert!(new.save_state().unwrap().suspended);
    new.resume().unwrap();
    assert_eq!(new.run_state(), RunState::Suspended);
    assert_eq!(
        out2.text(),
        "",
        "a suspended guest does not run before wakeup"
    );
    new.wakeup().unwrap();
    assert_eq!(next_event(&rx2, &out2), MachineEvent::GuestShutdown);
    assert_eq!(out2.text(), "resumed\n");
}

#[test]
fn serial_input_typed_while_paused_reaches_the_guest_in_a_new_vm() {
    let (mut old, out1, _rx1) = boot("echo", RamBackendConfig::Memfd { hugetlb: false });
    out1.wait_for("echo ready\n");
    old.pause().unwrap();
    // Lands in the old UART's FIFO and raises its interrupt while no vCPU runs: both the
    // FIFO and the pending interrupt must move to the new VM.
    old.serial_input(b"moved\n").unwrap();
    let (mut new, out2, _rx2) = move_to_new_vm(old);
    new.resume().unwrap();
    // The guest sleeps in HLT until a UART interrupt: only the restored one can wake it.
    out2.wait_for("echo: moved\n");
    new.serial_input(b"after\n").unwrap();
    let text = out2.wait_for("echo: after\n");
    assert_eq!(text, "echo: moved\necho: after\n");
}

#[test]
fn unreadable_msrs_are_dropped_from_the_save_list() {
    use vmm::machine::vcpu::Vcpu;
    let kvm = kvm_ioctls::Kvm::new().unwrap();
    let vm = kvm.create_vm().unwrap();
    vm.create_irq_chip().unwrap();
    let v = Vcpu::new(0, vm.create_vcpu(0).unwrap(), 0);
    // 0x4b564dff is in KVM's paravirtual MSR range but not an MSR KVM implements.
    let (ok, dropped) = v.readable_msrs(&[0x10, 0x4b56_4dff, 0x174]).unwrap();
    assert_eq!(ok, [0x10, 0x174]);
    assert_eq!(dropped, [0x4b56_4dff]);
}

#[test]
fn xsave2_path_round_trips_the_xsave_area() {
    use vmm::machine::vcpu::Vcpu;
    let kvm = kvm_ioctls::Kvm::new().unwrap();
    let vm = kvm.create_vm().unwrap();
    vm.create_irq_chip().unwrap();
    let size = vm.check_extension_int(kvm_ioctls::Cap::Xsave2);
    assert!(size >= 4096, "KVM_CAP_XSAVE2 reports {size}");
    // Force the KVM_GET/SET_XSAVE2 path (taken on AMX hosts) with a larger buffer than
    // this host needs: KVM fills and reads only its own size.
    let big = Vcpu::new(0, vm.create_vcpu(0).unwrap(), 8192);
    let legacy = Vcpu::new(1, vm.create_vcpu(1).unwrap(), 0);
    let msrs: Vec<u32> = Vec::new();
    let mut state = big.save(&msrs).unwrap();
    assert_eq!(state.xsave.region.len(), 8192);
    let legacy_state = legacy.save(&msrs).unwrap();
    assert_eq!(legacy_state.xsave.region.len(), 4096);
    assert_eq!(state.xsave.region[..4096], legacy_state.xsave.region[..]);
    // MXCSR lives at byte 24 of the legacy area: change it and write it back through XSAVE2.
    // XSTATE_BV (byte 512) must mark the SSE component present for MXCSR to be loaded.
    state.xsave.region[24..28].copy_from_slice(&0x1f00u32.to_le_bytes());
    state.xsave.region[512] |= 0x3;
    state.fpu.mxcsr = 0x1f00;
    big.restore(&state).unwrap();
    let again = big.save(&msrs).unwrap();
    assert_eq!(again.xsave.region[24..28], 0x1f00u32.to_le_bytes());
}

#[test]
fn restored_machine_resets_to_boot_state() {
    let (mut old, out1, _rx1) = boot("counter", RamBackendConfig::Memfd { hugetlb: false });
    out1.wait_for("count 3\n");
    old.pause().unwrap();
    let (mut new, out2, _rx2) = move_to_new_vm(old);
    new.resume().unwrap();
    out2.wait_until("a line", |t| t.contains('\n'));
    // The restored VM never held boot state: reset builds it in a scratch VM.
    new.reset().unwrap();
    assert_eq!(new.run_state(), RunState::Running);
    out2.wait_for("\ncount 1\ncount 2\n");
}
