//! The front end's single thread: one poll() over the chardevs (listening sockets, clients,
//! stdin, pty masters) and an eventfd that wakes it for machine events.

use std::sync::mpsc::{channel, Receiver};

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use vmm_sys_util::eventfd::{EventFd, EFD_CLOEXEC, EFD_NONBLOCK};

use crate::chardev::{Chardev, ChardevError, ChardevEvent, ChardevOutput};
use crate::cli::{MonitorMode, VmmConfig};
use crate::cpr::{self, Host, Vm};
use crate::machine::{Machine, MachineError, MachineEvent};
use crate::monitor::{hmp, mux, qmp, CmdError, Controller, ReplyTo, VmControl};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Chardev(#[from] ChardevError),
    #[error("could not create the machine")]
    Machine(#[source] MachineError),
    #[error("could not start the guest")]
    Start(#[source] MachineError),
    #[error("could not create the event loop's eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("poll() failed")]
    Poll(#[source] std::io::Error),
    #[error("could not set up termination signal handling")]
    Signals(#[source] nix::Error),
    #[error("could not take over from the previous vmm (cpr-exec)")]
    Cpr(#[from] cpr::CprError),
    #[error("{0}")]
    NotCpr(String),
    #[error("could not take the guest over from the running vmm (cpr-transfer); it stays there")]
    Transfer(#[source] cpr::CprError),
    #[error("could not read the hand-over from the previous vmm (cpr-exec)")]
    Handover(#[source] cpr::fds::FdError),
}

/// Signals that end the VMM the way QEMU ends on them (SHUTDOWN event, exit 0).
fn termination_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGHUP);
    set
}

/// What is attached to a chardev.
pub(crate) enum Frontend {
    None,
    Serial,
    Hmp(hmp::Session),
    Qmp(qmp::Session),
    /// The serial port and an HMP monitor on one chardev.
    Mux(mux::Mux),
}

/// The chardevs with their front ends.
pub struct Frontends {
    pub(crate) chardevs: Vec<Chardev>,
    pub(crate) frontends: Vec<Frontend>,
    /// The session continues one handed over by a live update: no greeting.
    pub(crate) adopted: Vec<bool>,
}

impl Frontends {
    /// Opens every chardev of `config` and attaches the serial port and monitors.
    pub fn open(config: &VmmConfig) -> Result<Frontends, ChardevError> {
        let chardevs = config
            .chardevs
            .iter()
            .map(Chardev::open)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Frontends::attach(config, chardevs))
    }

    /// Attaches the serial port and monitors to chardevs (opened, or adopted after exec).
    pub fn attach(config: &VmmConfig, chardevs: Vec<Chardev>) -> Frontends {
        let frontends: Vec<Frontend> = chardevs
            .iter()
            .map(|c| {
                let serial = config.serial.as_deref() == Some(c.spec.id.as_str());
                let monitor = config
                    .monitors
                    .iter()
                    .find(|m| m.chardev == c.spec.id)
                    .map(|m| m.mode);
                match (serial, monitor) {
                    (true, Some(MonitorMode::Hmp)) => Frontend::Mux(mux::Mux::new(c.is_raw_tty())),
                    (true, _) => Frontend::Serial,
                    (false, Some(MonitorMode::Hmp)) if c.is_raw_tty() => {
                        Frontend::Hmp(hmp::Session::with_echo())
                    }
                    (false, Some(MonitorMode::Hmp)) => Frontend::Hmp(hmp::Session::default()),
                    (false, Some(MonitorMode::Qmp)) => Frontend::Qmp(qmp::Session::default()),
                    (false, None) => Frontend::None,
                }
            })
            .collect();
        Frontends {
            adopted: vec![false; chardevs.len()],
            chardevs,
            frontends,
        }
    }

    /// What `info chardev` / query-chardev show.
    fn info(&self) -> Vec<crate::monitor::ChardevInfo> {
        self.chardevs
            .iter()
            .zip(&self.frontends)
            .map(|(c, fe)| crate::monitor::ChardevInfo {
                label: c.spec.id.clone(),
                filename: c.filename(),
                frontend_open: !matches!(fe, Frontend::None),
            })
            .collect()
    }

    /// The writer the UART's output goes to.
    pub fn serial_output(&self) -> ChardevOutput {
        self.chardevs
            .iter()
            .zip(&self.frontends)
            .find(|(_, f)| matches!(f, Frontend::Serial | Frontend::Mux(_)))
            .map(|(c, _)| c.output())
            .unwrap_or_else(ChardevOutput::discard)
    }

    /// Every fd the chardevs own, by chardev id and role: what a live update must keep open
    /// across exec and hand to [`Chardev::from_inherited`] in the new process.
    #[allow(dead_code)] // used by the live-update step; tested below
    pub fn fd_manifest(&self) -> Vec<(String, crate::chardev::FdRole, std::os::fd::RawFd)> {
        self.chardevs
            .iter()
            .flat_map(|c| {
                c.fds()
                    .into_iter()
                    .map(|(role, fd)| (c.spec.id.clone(), role, fd))
            })
            .collect()
    }
}

fn send(c: &Chardev, text: &str) {
    if !text.is_empty() {
        c.output().send(text.as_bytes());
    }
}

fn serial_input<V: VmControl>(ctl: &mut Controller<V>, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    if let Err(e) = ctl.vm.serial_input(bytes) {
        eprintln!("vmm: serial input dropped: {}", crate::error_chain(&e));
    }
}

/// Handles one chardev happening for its front end.
fn service<V: VmControl>(chardev: &mut Chardev, frontend: &mut Frontend, ctl: &mut Controller<V>) {
    let ev = chardev.on_readable();
    match (frontend, ev) {
        (_, ChardevEvent::Nothing) => {}
        (Frontend::Hmp(s), ChardevEvent::Connected) => {
            s.reset();
            send(chardev, &hmp::banner());
        }
        (Frontend::Hmp(s), ChardevEvent::Data(d)) => {
            let out = s.on_input(ctl, &d);
            send(chardev, &out);
        }
        (Frontend::Hmp(s), ChardevEvent::Disconnected) => s.reset(),
        (Frontend::Qmp(s), ChardevEvent::Connected) => {
            let g = s.greeting();
            send(chardev, &g);
        }
        (Frontend::Qmp(s), ChardevEvent::Data(d)) => {
            let out = s.on_input(ctl, &d);
            send(chardev, &out);
        }
        (Frontend::Qmp(s), ChardevEvent::Disconnected) => *s = qmp::Session::default(),
        (Frontend::Serial, ChardevEvent::Data(d)) => serial_input(ctl, &d),
        (Frontend::Mux(m), ChardevEvent::Data(d)) => {
            let routed = m.on_input(ctl, &d);
            send(chardev, &routed.echo);
            serial_input(ctl, &routed.serial);
        }
        (Frontend::Mux(_), ChardevEvent::Connected | ChardevEvent::Disconnected) => {}
        (
            Frontend::Serial | Frontend::None,
            ChardevEvent::Connected | ChardevEvent::Disconnected,
        ) => {}
        (Frontend::None, ChardevEvent::Data(_)) => {}
    }
}

/// Sends queued events to every negotiated QMP client.
pub(crate) fn broadcast<V: VmControl>(f: &Frontends, ctl: &mut Controller<V>) {
    let events = ctl.take_events();
    if events.is_empty() {
        return;
    }
    for (c, fe) in f.chardevs.iter().zip(&f.frontends) {
        if let Frontend::Qmp(s) = fe {
            if s.is_negotiated() && c.is_connected() {
                for ev in &events {
                    send(c, &qmp::event_line(ev));
                }
            }
        }
    }
}

/// The text that answers a deferred command on its monitor.
fn deferred_reply(reply: &ReplyTo, result: &Result<String, CmdError>) -> String {
    match reply {
        ReplyTo::Hmp => hmp::deferred_reply(result),
        ReplyTo::Qmp { id, hmp_text } => {
            let line = match (result, hmp_text) {
                (Ok(text), true) => qmp::return_reply(&serde_json::json!(text), id.as_ref()),
                (Err(e), true) => qmp::return_reply(
                    &serde_json::json!(format!("Error: {}\n", e.desc)),
                    id.as_ref(),
                ),
                (Ok(_), false) => qmp::return_reply(&serde_json::json!({}), id.as_ref()),
                (Err(e), false) => qmp::error_reply(e, id.as_ref()),
            };
            format!("{line}\r\n")
        }
    }
}

/// Runs the live-update command a monitor deferred, answers it, and lets that monitor read
/// on (it may have more commands queued behind it).
fn run_deferred(f: &mut Frontends, ctl: &mut Controller<Vm>, host: &Host, i: usize) {
    while let Some(d) = ctl.deferred.take() {
        let reply = d.reply.unwrap_or(ReplyTo::Hmp);
        let result = cpr::perform(d.op, &reply, f, ctl, host, i);
        send(&f.chardevs[i], &deferred_reply(&reply, &result));
        continue_session(f, ctl, i);
    }
}

/// Lets a monitor session execute input it holds (queued behind a deferred command, or
/// handed over by a live update).
fn continue_session(f: &mut Frontends, ctl: &mut Controller<Vm>, i: usize) {
    let out = match &mut f.frontends[i] {
        Frontend::Qmp(s) => s.process(ctl),
        Frontend::Hmp(s) => s.process(ctl),
        Frontend::Serial | Frontend::None | Frontend::Mux(_) => String::new(),
    };
    send(&f.chardevs[i], &out);
}

const WAKE: usize = 0;
const SIGNALS: usize = 1;
const FIXED_SLOTS: usize = 2;

/// Runs until quit, guest shutdown or debug exit; returns the process exit status.
pub fn run_loop(
    f: &mut Frontends,
    ctl: &mut Controller<Vm>,
    host: &Host,
    wake: &EventFd,
    signals: &SignalFd,
    events: &Receiver<MachineEvent>,
) -> Result<i32, StartError> {
    use std::os::fd::AsRawFd;
    // Greet peers that are there from the start (stdio, pty, a socket that waited), except
    // sessions continued across a live update.
    for ((c, fe), adopted) in f
        .chardevs
        .iter_mut()
        .zip(f.frontends.iter_mut())
        .zip(&f.adopted)
    {
        if c.is_connected() && !adopted {
            match fe {
                Frontend::Hmp(_) => send(c, &hmp::banner()),
                Frontend::Qmp(s) => {
                    let g = s.greeting();
                    send(c, &g);
                }
                _ => {}
            }
        }
    }
    for i in 0..f.chardevs.len() {
        if f.adopted[i] {
            continue_session(f, ctl, i);
            run_deferred(f, ctl, host, i);
        }
    }
    // Events of the start-up (a load at once after cpr-exec, a transfer) go out now, not
    // after whatever wakes the loop first.
    broadcast(f, ctl);
    loop {
        if let Some(exit) = ctl.exit() {
            broadcast(f, ctl);
            return Ok(exit.0);
        }
        // Fixed slots first (WAKE, SIGNALS), then one per chardev with an fd to watch.
        let mut fds = vec![
            libc::pollfd {
                fd: wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: signals.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let serial_open = ctl.vm.accepts_serial_input();
        let mut owners = Vec::new();
        for (i, c) in f.chardevs.iter().enumerate() {
            if matches!(f.frontends[i], Frontend::Serial) && !serial_open {
                continue;
            }
            if let Some(fd) = c.poll_fd() {
                // Queued monitor output goes to the client fd, which poll_fd() is whenever
                // anything can be queued (a connected socket). Past the high-water mark the
                // client's input waits until it reads; a hang-up is reported regardless.
                let pending = c.output().pending_len();
                let mut events = 0;
                if pending > 0 {
                    events |= libc::POLLOUT;
                }
                if pending < crate::chardev::HIGH_WATER {
                    events |= libc::POLLIN;
                }
                fds.push(libc::pollfd {
                    fd,
                    events,
                    revents: 0,
                });
                owners.push(i);
            }
        }
        // SAFETY: fds is a valid array of fds.len() pollfd structs for the call's duration.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(StartError::Poll(e));
        }
        if fds[WAKE].revents != 0 {
            let _ = wake.read();
            while let Ok(ev) = events.try_recv() {
                ctl.on_machine_event(ev);
            }
        }
        if fds[SIGNALS].revents != 0 {
            if let Ok(Some(info)) = signals.read_signal() {
                ctl.on_signal(info.ssi_signo as i32);
            }
        }
        for (pfd, &i) in fds[FIXED_SLOTS..].iter().zip(&owners) {
            if pfd.revents == 0 || ctl.exit().is_some() {
                continue;
            }
            if pfd.revents & libc::POLLNVAL != 0 {
                // Never poll a closed fd again in a tight loop.
                return Err(StartError::Poll(std::io::Error::from_raw_os_error(
                    libc::EBADF,
                )));
            }
            if pfd.revents & libc::POLLOUT != 0 {
                f.chardevs[i].output().flush_pending();
            }
            if pfd.revents & !libc::POLLOUT != 0 {
                ctl.chardevs = f.info();
                service(&mut f.chardevs[i], &mut f.frontends[i], ctl);
                run_deferred(f, ctl, host, i);
                // A deferred command may change what is polled (cpr-save stops serial input).
                if !ctl.vm.accepts_serial_input() {
                    break;
                }
            }
        }
        broadcast(f, ctl);
    }
}

/// Builds everything from the config (or adopts it from the previous vmm after cpr-exec)
/// and runs the VM until it ends.
pub fn run(config: &VmmConfig) -> Result<i32, StartError> {
    // First, before anything opens a descriptor: the hand-over of a cpr-exec, if any.
    let handover = cpr::fds::take_handover().map_err(StartError::Handover)?;
    // -incoming FILE: the machine may come from a reboot-mode image. After a cpr-exec,
    // FILE is the restart image: the command line describes the machine.
    let incoming_config = match (&config.incoming, &handover) {
        (Some(image), None) => Some(cpr::incoming_image::effective_config(config, image)?),
        _ => None,
    };
    let config = incoming_config.as_ref().unwrap_or(config);
    if config.only_cpr_capable {
        cpr::capable::check_only_cpr_capable(config).map_err(StartError::NotCpr)?;
    }
    // A client closing its socket must not kill the VMM when we write to it.
    // SAFETY: setting SIGPIPE to SIG_IGN installs no handler code; it is process-wide by intent.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    // Termination signals are read from a signalfd by the loop; block them first, before any
    // thread exists, so every thread (vCPUs included) inherits the mask.
    let sigs = termination_signals();
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&sigs), None)
        .map_err(StartError::Signals)?;
    let signals = SignalFd::with_flags(&sigs, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(StartError::Signals)?;
    let wake = EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC).map_err(StartError::EventFd)?;
    let forward_wake = wake.try_clone().map_err(StartError::EventFd)?;
    let (machine_tx, machine_rx) = channel::<MachineEvent>();
    let (loop_tx, loop_rx) = channel::<MachineEvent>();
    // The machine reports on an mpsc channel; this thread turns each report into an eventfd
    // wakeup so the poll() loop needs no timeout.
    std::thread::Builder::new()
        .name("machine-events".into())
        .spawn(move || {
            for ev in machine_rx {
                if loop_tx.send(ev).is_err() {
                    break;
                }
                let _ = forward_wake.write(1);
            }
        })
        .map_err(StartError::EventFd)?;
    let host = Host {
        config: config.clone(),
        machine_events: machine_tx.clone(),
    };
    let (mut frontends, mut ctl) = match handover {
        Some((bytes, exec_ns)) => {
            // -incoming FILE: the image is read while the VM is built.
            let mut pre = config
                .incoming
                .as_deref()
                .and_then(|p| cpr::Preread::start(p, config));
            let a = cpr::adopt(config, &bytes, exec_ns, pre.as_mut())?;
            let mut ctl = Controller::new(a.vm);
            ctl.cpr = a.status;
            let f = a.frontends;
            // With -incoming FILE the whole update was this one cpr-exec: load now and
            // answer it with the outcome. A failed load leaves the guest paused here with
            // its RAM: cpr-load, or a cpr-exec with a corrected command line, follows.
            // Without -incoming, answer now; cpr-load comes next.
            let outcome = match &config.incoming {
                Some(image) => cpr::load(&f, &mut ctl, &host, image, config.start_paused, pre)
                    .map_err(|e| cpr::failed(&mut ctl, e)),
                None => Ok(String::new()),
            };
            match (a.pending_reply, &outcome) {
                (Some((i, reply)), _) => send(&f.chardevs[i], &deferred_reply(&reply, &outcome)),
                (None, Err(e)) => eprintln!(
                    "vmm: cannot load {}: {}; the guest waits, paused, for cpr-load",
                    config
                        .incoming
                        .as_deref()
                        .unwrap_or(std::path::Path::new(""))
                        .display(),
                    e.desc
                ),
                (None, Ok(_)) => {}
            }
            (f, ctl)
        }
        None if config.incoming_transfer.is_some() => {
            let path = config.incoming_transfer.clone().unwrap_or_default();
            let a = cpr::transfer::incoming(config, &host, &path).map_err(StartError::Transfer)?;
            let mut ctl = Controller::new(a.vm);
            ctl.cpr = a.status;
            if let Some(t) = ctl.cpr.transfer {
                let uri = ctl.cpr.image.clone().unwrap_or_default();
                ctl.emit("CPR_LOAD", Some(cpr::transfer::loaded_event(&t, &uri)));
                ctl.emit("RESUME", None);
            }
            if let Some((i, reply)) = a.pending_reply {
                send(
                    &a.frontends.chardevs[i],
                    &deferred_reply(&reply, &Ok(String::new())),
                );
            }
            (a.frontends, ctl)
        }
        None => {
            let frontends = Frontends::open(config)?;
            let serial: crate::machine::SerialOutput = Box::new(frontends.serial_output());
            // The RAM file's length before the machine sizes it: a reboot-mode cpr-load
            // compares it with the image's record.
            let ram_file_len = match &config.ram {
                crate::cli::RamSpec::File { path, .. } => {
                    std::fs::metadata(path).ok().map(|m| m.len())
                }
                _ => None,
            };
            // With -S the kernel is loaded at `cont`: until then guest RAM is untouched,
            // so a reboot-mode cpr-load can take over a RAM file as it is.
            let mut machine = if config.start_paused || config.incoming.is_some() {
                Machine::new_unbooted(&config.machine_config(), serial, machine_tx)
            } else {
                Machine::new(&config.machine_config(), serial, machine_tx)
            }
            .map_err(StartError::Machine)?;
            machine
                .assign_vfio(&config.vfio)
                .map_err(StartError::Machine)?;
            // What the kernel offers for keeping devices across exec is only known once
            // they are assigned (the command line alone cannot tell).
            if let Some(b) = machine.vfio().and_then(|v| v.restart_blocker()) {
                if config.only_cpr_capable {
                    return Err(StartError::NotCpr(format!(
                        "-only-cpr-capable: this configuration cannot be live-updated:\n  \
                         restart mode: {b}"
                    )));
                }
                // iommufd: the kernel's missing ioctls are worth saying at once (type1's
                // blocker has always waited for cpr-save).
                if machine.vfio().is_some_and(|v| v.is_iommufd()) {
                    eprintln!("vmm: warning: restart-mode live update is blocked: {b}");
                }
            }
            let mut ctl = Controller::new(Vm::Active(machine));
            ctl.cpr.ram_file_len = ram_file_len;
            if let Some(image) = &config.incoming {
                cpr::reboot::load_with(&frontends, &mut ctl, &host, image, config.start_paused)?;
            } else if !config.start_paused {
                ctl.vm.start().map_err(StartError::Start)?;
            }
            (frontends, ctl)
        }
    };
    ctl.cpr.blockers = Some((
        cpr::capable::describe(config),
        cpr::capable::to_json(config),
    ));
    // Not while a guest waits for cpr-load: cpr::load warms up after it resumes the guest.
    if matches!(ctl.vm, Vm::Active(_)) {
        cpr::schema::warm_up();
    }
    let code = run_loop(&mut frontends, &mut ctl, &host, &wake, &signals, &loop_rx);
    if let Vm::Active(m) = &mut ctl.vm {
        m.shutdown();
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chardev::FdRole;
    use crate::cli::{parse_args, Action};

    #[test]
    fn fd_manifest_lists_each_chardevs_fds() {
        let dir = std::env::temp_dir().join(format!("vmm-fd-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("q.sock");
        let args = [
            "-kernel".to_string(),
            env!("CARGO_MANIFEST_PATH").to_string(),
            "-serial".into(),
            "null".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", sock.display()),
        ];
        let Ok(Action::Run(config)) = parse_args(args) else {
            panic!("config")
        };
        let f = Frontends::open(&config).unwrap();
        let m = f.fd_manifest();
        assert_eq!(m.len(), 1, "{m:?}");
        assert_eq!(
            (m[0].0.as_str(), m[0].1),
            ("compat_monitor0", FdRole::Listener)
        );
        assert!(m[0].2 > 2);
        drop(f);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
