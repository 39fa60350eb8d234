//! vCPU threads and the stop protocol.
//!
//! Each vCPU runs KVM_RUN in its own thread. To stop it, the machine sets `want = Pause` and
//! sends the thread [`kick_signal`] (SIGRTMIN + 0). The signal handler sets `immediate_exit`
//! in the thread's kvm_run page, so KVM_RUN returns EINTR whether the signal lands while
//! the guest runs, or just before the thread re-enters KVM_RUN (the race a flag check alone
//! would lose). A stopping thread then does one more KVM_RUN with immediate_exit = 1: KVM
//! completes a pending port or MMIO access (an IN's data reaches RAX) and returns at once,
//! so saved registers never sit in the middle of an instruction. Only then is the vCPU
//! reported stopped; while stopped the thread does not hold the vCPU mutex, so the machine
//! can read and write vCPU state.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::time::Duration;

use kvm_bindings::kvm_run;
use kvm_ioctls::VcpuExit;
use vmm_sys_util::signal::{register_signal_handler, unblock_signal, SIGRTMIN};

use super::devices::{lock, Devices, IoAction, PmRequest};
use super::vcpu::{OwnState, Vcpu};
use super::{MachineEvent, RunState};

/// The signal that kicks a vCPU thread out of KVM_RUN: SIGRTMIN + 0. The front end must not
/// use it for anything else.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

thread_local! {
    static KVM_RUN_PTR: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only touches a const-initialised thread-local and the vCPU's own kvm_run page:
    // async-signal-safe.
    KVM_RUN_PTR.with(|p| {
        let run = p.get();
        if !run.is_null() {
            // SAFETY: the pointer is this thread's kvm_run mapping, set while the thread owns
            // its vCPU and cleared before the thread drops it.
            unsafe { (*run).immediate_exit = 1 };
        }
    });
}

static INSTALL: Once = Once::new();

/// Installs the kick handler once per process.
pub fn install_kick_handler() -> Result<(), std::io::Error> {
    let mut result = Ok(());
    INSTALL.call_once(|| {
        result = register_signal_handler(kick_signal(), handle_kick)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()));
    });
    result
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    Run,
    Pause,
    Exit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Is {
    Starting,
    Stopped,
    Running,
    Exited,
}

pub struct Ctl {
    pub want: Want,
    pub is: Is,
    pthread: Option<libc::pthread_t>,
    pub tid: i32,
    /// When the thread last went Running (CLOCK_MONOTONIC ns, 0 = never): the end of a
    /// live update's pause is when a vCPU really runs, not when it was told to.
    pub ran_at: u64,
    /// When the thread last left KVM_RUN to stop (CLOCK_MONOTONIC ns, 0 = never): the
    /// start of a live update's pause is when the last vCPU stopped running guest code.
    pub stopped_at: u64,
    /// Asked for by a save: read [`OwnState`] (with these MSRs) as soon as the vCPU stops.
    save_own: Option<Arc<[u32]>>,
    /// What the thread read when it stopped, while `save_own` was set.
    own: Option<OwnState>,
}

/// Control block of one vCPU thread, shared by the machine and the thread.
pub struct VcpuCtl {
    pub index: u32,
    pub ctl: Mutex<Ctl>,
    pub cv: Condvar,
    /// Mirror of `want != Run`, read by the run loop without taking the lock.
    stop: AtomicBool,
}

impl VcpuCtl {
    pub fn new(index: u32) -> VcpuCtl {
        VcpuCtl {
            index,
            ctl: Mutex::new(Ctl {
                want: Want::Pause,
                is: Is::Starting,
                pthread: None,
                tid: 0,
                ran_at: 0,
                stopped_at: 0,
                save_own: None,
                own: None,
            }),
            cv: Condvar::new(),
            stop: AtomicBool::new(true),
        }
    }

    /// Sets what the thread should do and kicks it out of KVM_RUN if it must stop.
    pub fn request(&self, want: Want) {
        let mut c = lock(&self.ctl);
        c.want = want;
        self.stop.store(want != Want::Run, Ordering::SeqCst);
        self.kick_locked(&c);
        self.cv.notify_all();
    }

    fn kick_locked(&self, c: &Ctl) {
        if c.want != Want::Run && c.is == Is::Running {
            if let Some(t) = c.pthread {
                // SAFETY: the thread is alive: it is Running and marks itself Exited under
                // this lock before it ends. pthread_kill with a valid id has no other effect
                // than delivering the signal.
                unsafe { libc::pthread_kill(t, kick_signal()) };
            }
        }
    }

    /// Waits until the thread is stopped (or exited), re-kicking it now and then in case a
    /// signal went to a thread that was between exits. A thread still starting counts as
    /// stopped: it has not run its vCPU and will park, as `want` is not `Run`.
    pub fn wait_stopped(&self) {
        let mut c = lock(&self.ctl);
        while !matches!(c.is, Is::Stopped | Is::Exited | Is::Starting) {
            self.kick_locked(&c);
            c = self
                .cv
                .wait_timeout(c, Duration::from_millis(20))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Asks the thread to read its vCPU's [`OwnState`], with the MSRs of `msrs`, the next
    /// time it stops, or drops the request (`None`) and returns what it read.
    pub fn save_own_on_stop(&self, msrs: Option<Arc<[u32]>>) -> Option<OwnState> {
        let mut c = lock(&self.ctl);
        c.save_own = msrs;
        c.own.take()
    }

    pub fn state(&self) -> (Is, i32) {
        let c = lock(&self.ctl);
        (c.is, c.tid)
    }
}

/// Now on CLOCK_MONOTONIC in nanoseconds (system-wide: stamps of two processes, or of one
/// process across execve, subtract directly).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the struct we own; CLOCK_MONOTONIC
    // always exists on Linux, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// When the first of `ctls` went Running at or after `since` (ns), waiting up to `timeout`
/// for one to do so; `None` if none did (e.g. the machine stays suspended).
pub fn first_run_since(ctls: &[Arc<VcpuCtl>], since: u64, timeout: Duration) -> Option<u64> {
    let first = || {
        ctls.iter()
            .map(|v| lock(&v.ctl).ran_at)
            .filter(|t| *t >= since)
            .min()
    };
    let deadline = std::time::Instant::now() + timeout;
    let bsp = ctls.first()?;
    loop {
        if let Some(t) = first() {
            return Some(t);
        }
        let left = deadline.checked_duration_since(std::time::Instant::now())?;
        // Any vCPU may go first, but the boot vCPU's condvar is the one waited on: the
        // others' stamps are read again after each wake-up or slice.
        let c = lock(&bsp.ctl);
        if c.ran_at < since {
            let _ = bsp
                .cv
                .wait_timeout(c, left.min(Duration::from_millis(1)))
                .unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// What the vCPU threads share with the machine.
pub struct MachineShared {
    pub run_state: Mutex<RunState>,
    pub events: Mutex<std::sync::mpsc::Sender<MachineEvent>>,
    pub vcpus: Vec<Arc<VcpuCtl>>,
    pub devices: Arc<Devices>,
}

impl MachineShared {
    fn send(&self, event: MachineEvent) {
        // The front end may have gone away; the machine keeps its own state regardless.
        let _ = lock(&self.events).send(event);
    }

    /// A guest action stops every vCPU and moves the machine to `state`.
    fn guest_stop(&self, state: RunState, event: MachineEvent) {
        *lock(&self.run_state) = state;
        for v in &self.vcpus {
            v.request(Want::Pause);
        }
        self.send(event);
    }
}

/// A vCPU's kvm_run mapping, taken before its thread starts: the thread then need not lock
/// the vCPU to find it (a vCPU is often being restored on another thread as its thread
/// starts, and waiting for that lock cost a sleep and a wake-up each).
pub struct KvmRunPtr(*mut kvm_run);

// SAFETY: the pointer is only dereferenced by the one vCPU thread it is sent to (from its
// kick handler), which keeps the vCPU, and so the mapping, alive while it may be used.
unsafe impl Send for KvmRunPtr {}

impl KvmRunPtr {
    /// `v`'s kvm_run mapping (it lives as long as `v`).
    pub fn of(v: &mut Vcpu) -> KvmRunPtr {
        KvmRunPtr(v.fd.get_kvm_run())
    }
}

/// Body of a vCPU thread; `run_ptr` is `vcpu`'s own ([`KvmRunPtr::of`]).
pub fn run(
    vcpu: Arc<Mutex<Vcpu>>,
    run_ptr: KvmRunPtr,
    ctl: Arc<VcpuCtl>,
    shared: Arc<MachineShared>,
) {
    // The thread inherits its creator's signal mask; the kick must get through whatever the
    // front end blocked. Unblocking an unblocked signal cannot fail.
    let _ = unblock_signal(kick_signal());
    {
        KVM_RUN_PTR.with(|p| p.set(run_ptr.0));
        let mut c = lock(&ctl.ctl);
        // SAFETY: pthread_self has no preconditions.
        c.pthread = Some(unsafe { libc::pthread_self() });
        // SAFETY: gettid has no preconditions.
        c.tid = unsafe { libc::gettid() };
    }
    loop {
        {
            let mut c = lock(&ctl.ctl);
            loop {
                match c.want {
                    Want::Run => break,
                    Want::Exit => {
                        KVM_RUN_PTR.with(|p| p.set(std::ptr::null_mut()));
                        c.is = Is::Exited;
                        ctl.cv.notify_all();
                        return;
                    }
                    Want::Pause => {
                        if c.is != Is::Stopped {
                            c.is = Is::Stopped;
                            ctl.cv.notify_all();
                        }
                        c = ctl.cv.wait(c).unwrap_or_else(|e| e.into_inner());
                    }
                }
            }
            c.is = Is::Running;
        }
        let mut v = lock(&vcpu);
        // Tell a kvmclock guest it was stopped (KVM_KVMCLOCK_CTRL), so its soft-lockup
        // watchdog does not fire for the time it spent stopped; KVM refuses with EINVAL when
        // the guest has not enabled kvmclock (our test guests): nothing to do then. Each
        // vCPU does it for itself as it resumes: the machine doing it for all of them
        // before any runs kept that many ioctls inside a live update's pause.
        let _ = v.fd.kvmclock_ctrl();
        {
            let mut c = lock(&ctl.ctl);
            c.ran_at = monotonic_ns();
            ctl.cv.notify_all();
        }
        v.fd.set_kvm_immediate_exit(0);
        while !ctl.stop.load(Ordering::SeqCst) {
            if let Err(msg) = run_once(&mut v, &shared) {
                shared.guest_stop(
                    RunState::InternalError,
                    MachineEvent::InternalError(format!("vCPU {}: {msg}", v.index)),
                );
            }
        }
        // Complete any pending I/O before reporting stopped (see the module comment).
        v.fd.set_kvm_immediate_exit(1);
        let _ = v.fd.run();
        v.fd.set_kvm_immediate_exit(0);
        let save_own = {
            let mut c = lock(&ctl.ctl);
            c.stopped_at = monotonic_ns();
            c.save_own.clone()
        };
        // Read here, on this thread, while other vCPUs may still be stopping: this part
        // of the state is only changed by this vCPU (see `Vcpu::save_after`). A failed
        // read leaves the save to read everything itself.
        if let Some(msrs) = save_own {
            let own = v.save_own(&msrs).ok();
            let mut c = lock(&ctl.ctl);
            if c.save_own.is_some() {
                c.own = own;
            }
        }
    }
}

fn run_once(v: &mut Vcpu, shared: &MachineShared) -> Result<(), String> {
    match v.fd.run() {
        Ok(VcpuExit::IoOut(port, data)) => match shared.devices.pio_write(port, data) {
            Ok(IoAction::None) => {}
            Ok(IoAction::Pm(PmRequest::Suspend)) => {
                shared.guest_stop(RunState::Suspended, MachineEvent::GuestSuspend)
            }
            Ok(IoAction::Pm(PmRequest::PowerOff)) => {
                shared.guest_stop(RunState::Shutdown, MachineEvent::GuestShutdown)
            }
            Ok(IoAction::DebugExit(code)) => {
                shared.guest_stop(RunState::Shutdown, MachineEvent::DebugExit(code))
            }
            // A failing serial sink (closed chardev) must not stop the guest.
            Err(_) => {}
        },
        Ok(VcpuExit::IoIn(port, data)) => shared.devices.pio_read(port, data),
        Ok(VcpuExit::MmioRead(addr, data)) => shared.devices.mmio_read(addr, data),
        Ok(VcpuExit::MmioWrite(addr, data)) => shared.devices.mmio_write(addr, data),
        Ok(VcpuExit::Hlt) | Ok(VcpuExit::Intr) | Ok(VcpuExit::IrqWindowOpen) => {}
        Ok(VcpuExit::Shutdown) => return Err("triple fault (KVM_EXIT_SHUTDOWN)".into()),
        Ok(VcpuExit::InternalError) => {
            return Err("KVM_EXIT_INTERNAL_ERROR (instruction emulation failed)".into())
        }
        Ok(VcpuExit::FailEntry(reason, cpu)) => {
            return Err(format!(
                "KVM_EXIT_FAIL_ENTRY, hardware reason {reason:#x} on host CPU {cpu}"
            ))
        }
        Ok(other) => return Err(format!("unexpected exit {other:?}")),
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
            // Kicked: the loop condition decides whether to stop.
            v.fd.set_kvm_immediate_exit(0);
        }
        Err(e) => return Err(format!("KVM_RUN failed: {e}")),
    }
    Ok(())
}
