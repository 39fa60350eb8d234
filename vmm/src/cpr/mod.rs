//! Live update, restart mode: the whole sequence, told in order.
//!
//! **cpr-save** ([`save`]): refuse early if anything blocks the mode (the guest keeps
//! running); stop the vCPUs; read every vCPU, irqchip, PIT, clock and device state; write the
//! image (cpr-format: header with the machine description, sections, fd manifest); leave
//! the machine in "postmigrate".
//!
//! **cpr-exec** ([`exec`]): collect the fd manifest again (a monitor or serial client may
//! have come or gone since cpr-save) and the front end's state (chardevs, monitor sessions,
//! the pending cpr-exec reply) into a hand-over, itself a small cpr-format image, in a
//! memfd; clear FD_CLOEXEC on exactly those fds; execve the new binary in place (same PID).
//! If execve returns, set FD_CLOEXEC again, resume the guest and report why. The reply to
//! cpr-exec comes from the new process once it is ready, so a failed execve is reported on
//! the very request, and a client's next command (cpr-load) finds the new process waiting.
//!
//! **start-up of the new process** ([`adopt`]): read the hand-over, check each inherited
//! fd's identity, map the RAM memfds at new addresses, build a new KVM VM with memslots,
//! irqchip, PIT and vCPUs (KVM fds do not survive exec), rebuild chardevs around their fds
//! and monitor sessions from their state, answer cpr-exec, and wait in "prelaunch".
//!
//! **cpr-load** ([`load`]): verify the image (signature, CRCs, versions through the
//! compatibility engine, same machine as the new command line, its RAM fds are the ones
//! inherited), restore the state into the waiting VM, resume the guest if it ran at
//! cpr-save. A failed load leaves the guest paused with RAM intact; a corrected cpr-load
//! can follow, or a cpr-exec with a corrected command line (the waiting process hands over
//! again).
//!
//! Guest RAM is never copied. Pause = last vCPU stopped .. first vCPU running
//! ([`timing`]).

pub mod blockers;
pub mod boost;
pub mod capable;
pub mod channel;
pub mod fds;
pub mod image;
mod incoming;
pub mod incoming_image;
pub mod ram_image;
pub mod reboot;
mod rehearse;
pub mod schema;
pub mod timing;
pub mod transfer;
pub mod transfer_timing;
mod transfer_vfio;
mod vcpu_encoder;

pub use incoming::{adopt, load, Preread, Vm};

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::mpsc::Sender;

use cpr_format::{ImageWriter, Mode};
use serde_json::{json, Value};

use crate::cli::VmmConfig;
use crate::event_loop::{Frontend, Frontends};
use crate::machine::{MachineError, MachineEvent, RunState};
use crate::monitor::{CmdError, Controller, CprOp, ReplyTo};
use image::RamBlockState;
use timing::{now_ns, Timestamps};

/// Instance name of the hand-over's single-instance sections.
const ONE: &str = "0";

#[derive(Debug, thiserror::Error)]
pub enum CprError {
    #[error("mode '{0}' is not one of restart, reboot, transfer")]
    UnknownMode(String),
    #[error("mode '{0}' is not implemented by this vmm yet (restart is)")]
    ModeNotImplemented(Mode),
    #[error("cannot live-update in {mode} mode:\n{list}")]
    Blocked { mode: Mode, list: String },
    #[error("the guest is in state {0}: nothing to save")]
    BadState(&'static str),
    #[error(
        "no live update is incoming: this vmm was not started by cpr-exec, or has loaded already"
    )]
    NotIncoming,
    #[error("the guest's state is being loaded: cpr-load first")]
    Incoming,
    #[error("cpr-exec needs a cpr-save in restart mode first")]
    NotSaved,
    #[error(
        "the new command line must include -S (the new vmm waits for cpr-load) or \
         -incoming FILE (it loads FILE at once)"
    )]
    NoDashS,
    #[error(
        "the new command line loads {given} (-incoming) but cpr-save wrote {saved}: the guest \
         continues in this process"
    )]
    IncomingMismatch { given: String, saved: String },
    #[error("cpr-exec needs the new command line")]
    NoArgv,
    #[error("an argument of the new command line contains a NUL byte")]
    NulInArgv,
    #[error("cannot execute {argv0}; the guest continues in this process")]
    Exec {
        argv0: String,
        #[source]
        source: nix::Error,
    },
    #[error(transparent)]
    Fd(#[from] fds::FdError),
    #[error(transparent)]
    Image(#[from] image::ImageError),
    #[error("the hand-over from the previous vmm is unreadable")]
    Handover(#[source] Box<cpr_format::Error>),
    #[error("the hand-over from the previous vmm lacks {0}")]
    HandoverMissing(&'static str),
    #[error("the image's fd {name} is not the RAM this process inherited")]
    RamIdentity {
        name: String,
        #[source]
        source: Box<cpr_format::Error>,
    },
    #[error("the image's RAM block {0} is not among the RAM this process inherited")]
    RamMissing(String),
    #[error("cannot map the inherited guest RAM")]
    Ram(#[source] crate::machine::memory::MemoryError),
    #[error("machine")]
    Machine(#[from] MachineError),
    #[error("chardev")]
    Chardev(#[from] crate::chardev::ChardevError),
    #[error(transparent)]
    Reboot(Box<reboot::RebootError>),
    #[error(transparent)]
    IncomingImage(Box<incoming_image::IncomingError>),
    #[error(transparent)]
    Transfer(#[from] transfer::TransferError),
}

impl From<CprError> for CmdError {
    fn from(e: CprError) -> CmdError {
        CmdError::generic(crate::error_chain(&e))
    }
}

/// Where the live update stands, for `info cpr` and query-cpr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    /// Nothing in progress.
    #[default]
    None,
    /// cpr-save done; cpr-exec (or cont, which abandons the update) next.
    Saved,
    /// This process was started by cpr-exec and waits for cpr-load.
    Incoming,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::None => "none",
            Phase::Saved => "saved",
            Phase::Incoming => "incoming",
        }
    }
}

/// Live-update status kept by the monitor's controller.
#[derive(Debug, Clone, Default)]
pub struct CprStatus {
    pub mode: Option<Mode>,
    pub phase: Phase,
    pub image: Option<String>,
    /// The guest ran at cpr-save (cpr-load resumes it; a failed cpr-exec resumes it).
    pub resume_after: bool,
    /// Stamps of the update in progress.
    pub stamps: Timestamps,
    /// Stamps of the last completed update.
    pub last: Option<Timestamps>,
    /// Why the last update step failed.
    pub last_error: Option<String>,
    /// Reboot mode: what the last cpr-save / cpr-load did with RAM (bytes, time, GB/s).
    pub reboot: Option<String>,
    /// What blocks each mode for this command line (text, JSON), set at start-up
    /// (`capable`): info cpr-blockers / query-cpr-blockers.
    pub blockers: Option<(String, Value)>,
    /// Length of the RAM file when this VMM started, before it sized the file (None: no
    /// RAM file, or it did not exist): reboot mode's in-place cpr-load checks it.
    pub ram_file_len: Option<u64>,
    /// Stamps of the transfer this process took the guest from (transfer mode).
    pub transfer: Option<transfer_timing::TransferTiming>,
}

impl CprStatus {
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "mode": self.mode.map(|m| m.to_string()).unwrap_or_else(|| "none".into()),
            "state": self.phase.name(),
        });
        if let Some(i) = &self.image {
            v["filename"] = json!(i);
        }
        if let Some(t) = &self.last {
            v["last"] = t.to_json();
        }
        if let Some(e) = &self.last_error {
            v["last-error"] = json!(e);
        }
        if let Some(r) = &self.reboot {
            v["reboot"] = json!(r.trim_end());
        }
        if let Some(t) = &self.transfer {
            v["last"] = t.to_json();
        }
        v
    }

    pub fn describe(&self) -> String {
        let mut s = format!(
            "mode: {}\nstate: {}\n",
            self.mode
                .map(|m| m.to_string())
                .unwrap_or_else(|| "none".into()),
            self.phase.name()
        );
        if let Some(i) = &self.image {
            s.push_str(&format!("image: {i}\n"));
        }
        match &self.last {
            Some(t) => {
                s.push_str("last live update:\n");
                s.push_str(&t.describe());
            }
            None => s.push_str("last live update: none\n"),
        }
        if let Some(e) = &self.last_error {
            s.push_str(&format!("last error: {e}\n"));
        }
        if let Some(r) = &self.reboot {
            s.push_str(&format!("reboot mode, {r}"));
        }
        if let Some(t) = &self.transfer {
            s.push_str("last transfer (into this process):\n");
            s.push_str(&t.describe());
        }
        s
    }
}
/// What the live-update steps need from the event loop besides monitors and chardevs.
pub struct Host {
    pub config: VmmConfig,
    /// Where a machine built by cpr-load reports guest happenings.
    pub machine_events: Sender<MachineEvent>,
}

cpr_format::state! {
    /// The hand-over's account of the cpr-exec: which image, whether to resume, the RAM
    /// layout, and who waits for the cpr-exec reply.
    #[section(name = "cpr.exec", version = 1, min_version = 1, required = true)]
    #[derive(Eq)]
    pub struct ExecState {
        pub image: String,
        pub resume_after: bool,
        pub ram: Vec<RamBlockState>,
        /// Chardev id of the monitor that issued cpr-exec ("" if none).
        pub origin: String,
        /// `hmp`, `qmp` or `qmp-hmp` (human-monitor-command).
        pub reply: String,
        /// The QMP request's id, as JSON text.
        pub reply_id: Option<String>,
    }
}

/// Runs a deferred live-update command. For cpr-exec this returns only on failure.
pub fn perform(
    op: CprOp,
    reply: &ReplyTo,
    f: &mut Frontends,
    ctl: &mut Controller<Vm>,
    host: &Host,
    origin: usize,
) -> Result<String, CmdError> {
    let result = match op {
        CprOp::Save { path, mode } if mode == "transfer" => {
            transfer::transfer(f, ctl, host, origin, reply, &path)
        }
        CprOp::Transfer { uri } => transfer::transfer(f, ctl, host, origin, reply, &uri),
        CprOp::Save { path, mode } => save(f, ctl, host, Path::new(&path), &mode),
        CprOp::Exec { argv } => exec(f, ctl, host, origin, reply, &argv),
        // Restart mode loads only into the VM cpr-exec prepared (Incoming); a VMM that
        // started on its own (-S) can only take a reboot-mode image.
        CprOp::Load { path }
            if matches!(ctl.vm, Vm::Active(_)) || reboot::is_reboot_image(Path::new(&path)) =>
        {
            reboot::load(f, ctl, host, Path::new(&path))
        }
        CprOp::Load { path } => load(f, ctl, host, Path::new(&path), false, None),
    };
    result.map_err(|e| failed(ctl, e))
}

/// A live-update step failed: remembered for `info cpr`, reported to the monitor.
pub fn failed(ctl: &mut Controller<Vm>, e: CprError) -> CmdError {
    let e = CmdError::from(e);
    ctl.cpr.last_error = Some(e.desc.clone());
    e
}

/// cpr-save: stop, save, write the image, stay in postmigrate.
pub fn save(
    f: &Frontends,
    ctl: &mut Controller<Vm>,
    host: &Host,
    path: &Path,
    mode: &str,
) -> Result<String, CprError> {
    let mode = match mode {
        "restart" => Mode::Restart,
        m if m == "reboot" || m.starts_with("reboot,") => return reboot::save(ctl, host, path, m),
        "transfer" => return Err(CprError::ModeNotImplemented(Mode::Transfer)),
        other => return Err(CprError::UnknownMode(other.to_string())),
    };
    let m = match &mut ctl.vm {
        Vm::Active(m) => m,
        Vm::Incoming(_) => return Err(CprError::Incoming),
    };
    let mut found = blockers::blockers(mode, m.ram());
    found.extend(blockers::vfio(
        mode,
        m.vfio(),
        m.run_state() == RunState::Suspended,
    ));
    if !found.is_empty() {
        let list = found.iter().map(|b| b.to_string()).collect::<Vec<_>>();
        return Err(CprError::Blocked {
            mode,
            list: list.join("\n"),
        });
    }
    let before = m.run_state();
    let resume_after = match before {
        RunState::Running | RunState::Suspended => true,
        RunState::Postmigrate => ctl.cpr.resume_after,
        RunState::Paused | RunState::Prelaunch => false,
        RunState::Shutdown => return Err(CprError::BadState("shutdown")),
        RunState::InternalError => return Err(CprError::BadState("internal-error")),
    };
    // With more than one vCPU, each one's section is encoded on a helper while the next
    // vCPU is read (started now, before the guest stops).
    let mut encoder = (m.config().vcpus > 1).then(vcpu_encoder::VcpuEncoder::start);
    let mut t = Timestamps {
        stop_requested: now_ns(),
        ..Timestamps::default()
    };
    // Each vCPU thread reads the state only its vCPU changes as it stops; the pause starts
    // when the last one stopped running guest code.
    let own = m.pause_saving_own()?;
    t.vcpus_stopped = m.stopped_since(t.stop_requested).unwrap_or_else(now_ns);
    // VFIO: irqfds off (interrupts latch in the eventfds) and DMA host addresses invalid
    // before the state is read; the device keeps DMAing into the pinned pages meanwhile.
    // Any failure below resumes the machine, which undoes this (Machine::resume).
    let prepared = match m.vfio_mut() {
        Some(v) => v
            .prepare_update()
            .map_err(|e| CprError::Machine(MachineError::Vfio(e))),
        None => Ok(()),
    };
    let written = prepared
        .and_then(|()| {
            m.save_state_from(own, |v| {
                if let Some(e) = &mut encoder {
                    e.send(v)
                }
            })
            .map_err(CprError::from)
        })
        .and_then(|state| {
            let mut manifest = fds::manifest(m.ram(), &f.chardevs)?;
            manifest.extend(fds::vfio_manifest(m.vfio())?);
            let vfio = m.vfio().map(|v| v.save());
            image::write(
                path,
                image::header(&host.config, mode),
                &state,
                resume_after,
                &manifest,
                vfio.as_ref(),
                encoder.and_then(vcpu_encoder::VcpuEncoder::finish),
            )?;
            Ok(())
        });
    if let Err(e) = written {
        if resume_after {
            m.resume()?;
        } else if let Some(v) = m.vfio_mut() {
            v.cancel_update()
                .map_err(|e| CprError::Machine(MachineError::Vfio(e)))?;
        }
        return Err(e);
    }
    t.image_written = now_ns();
    m.mark_postmigrate()?;
    if matches!(before, RunState::Running | RunState::Suspended) {
        ctl.emit("STOP", None);
    }
    ctl.cpr.mode = Some(mode);
    ctl.cpr.phase = Phase::Saved;
    ctl.cpr.image = Some(path.display().to_string());
    ctl.cpr.resume_after = resume_after;
    ctl.cpr.stamps = t;
    ctl.cpr.last_error = None;
    ctl.emit(
        "CPR_SAVE",
        Some(json!({
            "mode": mode.to_string(),
            "filename": path.display().to_string(),
            "timing": t.to_json(),
        })),
    );
    Ok(String::new())
}

fn reply_fields(reply: &ReplyTo) -> (String, Option<String>) {
    match reply {
        ReplyTo::Hmp => ("hmp".into(), None),
        ReplyTo::Qmp { id, hmp_text } => (
            if *hmp_text { "qmp-hmp" } else { "qmp" }.into(),
            id.as_ref().map(|v| v.to_string()),
        ),
    }
}

/// The hand-over: what the new process needs besides the image (cpr-format, in a memfd).
fn handover(
    f: &Frontends,
    host: &Host,
    status: &CprStatus,
    exec: ExecState,
    manifest: Vec<cpr_format::FdEntry>,
    vfio: Option<&image::VfioSaved>,
) -> Result<Vec<u8>, CprError> {
    let err = |e| CprError::Handover(Box::new(e));
    let mut w = ImageWriter::new(image::header(&host.config, Mode::Restart));
    w.add_section(ONE, &exec).map_err(err)?;
    // Transfer mode: the successor takes the DMA mappings over and maps the BARs before
    // the pause (the device sections are a preview: the state at the pause decides).
    if let Some(vfio) = vfio {
        image::add_vfio(&mut w, vfio).map_err(err)?;
    }
    w.add_section(ONE, &status.stamps).map_err(err)?;
    for (c, fe) in f.chardevs.iter().zip(&f.frontends) {
        w.add_section(&c.spec.id, &c.save()).map_err(err)?;
        match fe {
            Frontend::Qmp(s) => {
                w.add_section(&c.spec.id, &s.save()).map_err(err)?;
            }
            Frontend::Hmp(s) => {
                w.add_section(&c.spec.id, &s.save()).map_err(err)?;
            }
            // A mux (serial + HMP on one chardev, e.g. stdio) keeps its chardev; its HMP
            // session starts afresh.
            Frontend::Serial | Frontend::None | Frontend::Mux(_) => {}
        }
    }
    for e in manifest {
        w.add_fd(e).map_err(err)?;
    }
    w.to_bytes().map_err(err)
}

/// The image a new command line loads at start-up (`-incoming FILE`), if any: a cpr
/// channel or `defer` is not a file.
pub fn incoming_image(argv: &[String]) -> Option<&str> {
    argv.windows(2)
        .rev()
        .find(|w| w[0] == "-incoming" || w[0] == "--incoming")
        .map(|w| w[1].as_str())
        .filter(|v| !transfer::is_channel(v))
}

/// Whether two image paths name the same file (as given when either cannot be resolved).
fn same_image(a: &str, b: &str) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// cpr-exec: hand over and execve; on return (failure) undo and resume.
///
/// One command does the whole update when the new command line has `-incoming FILE` and
/// nothing is saved yet: the state is saved to FILE first (as `cpr-save FILE restart`),
/// and the new process loads it at start-up. That saves the guest two client round trips
/// of pause.
pub fn exec(
    f: &Frontends,
    ctl: &mut Controller<Vm>,
    host: &Host,
    origin: usize,
    reply: &ReplyTo,
    argv: &[String],
) -> Result<String, CprError> {
    let mut helper = None;
    let attempt = match incoming_image(argv) {
        Some(file) if ctl.cpr.phase == Phase::None => {
            // Cloned while the guest still runs: the clone need not be part of the pause.
            helper = teardown_helper();
            // A failed save has resumed the guest already.
            save(f, ctl, host, Path::new(file), "restart").and_then(|_| {
                // STOP and CPR_SAVE reach QMP clients through the hand-over's queued output.
                crate::event_loop::broadcast(f, ctl);
                exec_attempt(f, ctl, host, origin, reply, argv, &mut helper)
            })
        }
        Some(given) if ctl.cpr.mode == Some(Mode::Restart) => {
            let saved = ctl.cpr.image.clone().unwrap_or_default();
            if same_image(given, &saved) {
                exec_attempt(f, ctl, host, origin, reply, argv, &mut helper)
            } else {
                Err(CprError::IncomingMismatch {
                    given: given.to_string(),
                    saved,
                })
            }
        }
        _ => exec_attempt(f, ctl, host, origin, reply, argv, &mut helper),
    };
    // Only failures return here: the guest continues in this process.
    let err = match attempt {
        Ok(never) => match never {},
        Err(e) => e,
    };
    if let Some(h) = helper {
        h.abandon();
    }
    if let Vm::Active(m) = &mut ctl.vm {
        if ctl.cpr.resume_after && m.run_state() == RunState::Postmigrate {
            m.resume()?;
            ctl.emit("RESUME", None);
        }
        ctl.cpr.phase = Phase::None;
    }
    Err(err)
}

enum Never {}

fn exec_attempt(
    f: &Frontends,
    ctl: &mut Controller<Vm>,
    host: &Host,
    origin: usize,
    reply: &ReplyTo,
    argv: &[String],
    early_helper: &mut Option<vmm::teardown::Helper>,
) -> Result<Never, CprError> {
    // From Incoming too: a new process whose command line describes another machine
    // (cpr-load says how) execs again with a corrected one, RAM and connections intact.
    if !matches!(ctl.cpr.phase, Phase::Saved | Phase::Incoming)
        || ctl.cpr.mode != Some(Mode::Restart)
    {
        return Err(CprError::NotSaved);
    }
    let Some(argv0) = argv.first() else {
        return Err(CprError::NoArgv);
    };
    if incoming_image(argv).is_none() && !argv.iter().any(|a| a == "-S") {
        return Err(CprError::NoDashS);
    }
    let cargs = argv
        .iter()
        .map(|a| std::ffi::CString::new(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| CprError::NulInArgv)?;
    // A guest resumed (cont) after cpr-save has moved on from its image.
    if let Vm::Active(m) = &ctl.vm {
        if m.run_state() != RunState::Postmigrate {
            return Err(CprError::NotSaved);
        }
    }
    let ram = ctl.vm.ram().ok_or(CprError::Incoming)?;
    ctl.cpr.stamps.exec_requested = now_ns();
    let mut manifest = fds::manifest(ram, &f.chardevs)?;
    if let Vm::Active(m) = &ctl.vm {
        manifest.extend(fds::vfio_manifest(m.vfio())?);
    }
    let (reply_kind, reply_id) = reply_fields(reply);
    let exec_state = ExecState {
        image: ctl.cpr.image.clone().unwrap_or_default(),
        resume_after: ctl.cpr.resume_after,
        ram: image::ram_state(&ram.descs()),
        origin: f
            .chardevs
            .get(origin)
            .map(|c| c.spec.id.clone())
            .unwrap_or_default(),
        reply: reply_kind,
        reply_id,
    };
    let mut keep: Vec<(String, RawFd)> = manifest.iter().map(|e| (e.name.clone(), e.fd)).collect();
    let bytes = handover(f, host, &ctl.cpr, exec_state, manifest, None)?;
    let hfile = fds::handover_memfd(&bytes)?;
    keep.push(("handover".into(), hfile.as_raw_fd()));
    let mut env: Vec<std::ffi::CString> = std::env::vars_os()
        .filter(|(k, _)| {
            k != fds::HANDOVER_ENV && k != fds::EXEC_TIME_ENV && k != vmm::teardown::TEARDOWN_ENV
        })
        .filter_map(|(k, v)| {
            let mut s = k.into_encoded_bytes();
            s.push(b'=');
            s.extend_from_slice(&v.into_encoded_bytes());
            std::ffi::CString::new(s).ok()
        })
        .collect();
    let env_item = |k: &str, v: String| std::ffi::CString::new(format!("{k}={v}")).ok();
    env.extend(env_item(fds::HANDOVER_ENV, hfile.as_raw_fd().to_string()));
    fds::clear_cloexec_all(&keep)?;
    let helper = early_helper.take().or_else(teardown_helper);
    if let Some(h) = &helper {
        env.extend(env_item(vmm::teardown::TEARDOWN_ENV, h.env_value()));
    }
    // Written last so it is as close to execve as it can be.
    env.extend(env_item(fds::EXEC_TIME_ENV, now_ns().to_string()));
    let program = resolve_program(argv0);
    let e = match nix::unistd::execve(&program, &cargs, &env) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    fds::restore_cloexec_all(&keep);
    if let Some(h) = helper {
        h.abandon();
    }
    drop(hfile);
    Err(CprError::Exec {
        argv0: argv0.clone(),
        source: e,
    })
}

/// The old mm and VM are freed by this helper after the guest runs again, instead of by
/// execve inside the pause (see `vmm::teardown`). Its pipe's write end is inherited across
/// execve. Best effort: without it, exec frees them.
fn teardown_helper() -> Option<vmm::teardown::Helper> {
    vmm::teardown::Helper::spawn().ok().and_then(|h| {
        let fd = h.write_fd();
        match fds::clear_cloexec_all(&[("teardown".into(), fd)]) {
            Ok(()) => Some(h),
            Err(_) => {
                h.abandon();
                None
            }
        }
    })
}

/// The file to execute for `argv0`: as given when it names a path, else the first
/// executable match in $PATH. execve, not execvp: on ENOEXEC execvp would run the file with
/// /bin/sh, replacing the VMM with a shell instead of reporting "wrong format".
fn resolve_program(argv0: &str) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    let fallback = || std::ffi::CString::new(argv0).unwrap_or_default();
    if argv0.contains('/') {
        return fallback();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(argv0))
        .find(|p| {
            nix::unistd::access(p.as_path(), nix::unistd::AccessFlags::X_OK).is_ok() && p.is_file()
        })
        .and_then(|p| std::ffi::CString::new(p.as_os_str().as_bytes()).ok())
        .unwrap_or_else(fallback)
}
