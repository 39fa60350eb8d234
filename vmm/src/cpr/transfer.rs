//! Live update, transfer mode: the guest moves to a separately started vmm over a UNIX
//! socket, and the old process stays able to take it back until the very last message.
//!
//! The new process is started with `-incoming cpr:unix:PATH`: it listens on PATH (mode
//! 0600), accepts one connection and checks the peer runs as its own uid (SO_PEERCRED). The
//! old process, on `cpr-transfer unix:PATH` (or `cpr-save unix:PATH transfer`), connects:
//!
//! 1. **hello** (old → new, guest running): protocol version, the hand-over image (front-end
//!    state, RAM layout, fd manifest, as in restart mode) and every manifest descriptor with
//!    SCM_RIGHTS. The new process checks the machine matches its command line and every
//!    descriptor's identity, maps the RAM at its own addresses, creates its KVM VM with
//!    memslots (RAM first, then irqchip and PIT) and vCPUs. It does not touch the chardevs.
//!    Assigned devices (`transfer_vfio.rs`): the old process has released the DMA
//!    mappings' host addresses; the new one maps them at its own and maps the BARs.
//! 2. **ready** (new → old). Only now does the old process pause the vCPUs.
//! 3. **state** (old → new): the old process's stamps and the vCPU/device state image, with
//!    the assigned devices' interrupt eventfds (their irqfds detached: interrupts latch).
//! 4. **restored** (new → old): the state is set in the new VM, whose vCPUs do not run.
//! 5. **go** (old → new): ownership passes. From the moment `go` is written the old process
//!    never resumes the guest (state postmigrate); before it, the new process never runs it.
//! 6. **running** (new → old, with the new stamps): the new process attached the devices'
//!    irqfds (latched interrupts are injected once) and resumed the guest, and
//!    answers the monitor command that started the transfer. The old process prints the
//!    breakdown and exits: its mappings are torn down after the guest runs again.
//!
//! Any error, refusal, closed socket or timeout before `go` makes the old process resume the
//! guest and report why, and the new process exit with status 1. A new process that dies
//! after reading `go` takes the guest with it (there is no copy of vCPU state to fall back
//! to that is newer than what the new process may already have run).

use std::collections::BTreeMap;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cpr_format::{Image, Mode, Schema};
use serde_json::json;

use super::boost::Boost;
use super::channel::{Channel, ChannelError, Kind};
use super::incoming::{adopt_from, Adopted};
use super::timing::now_ns;
use super::transfer_timing::TransferTiming;
use super::{
    blockers, fds, handover, image, reply_fields, transfer_vfio, CprError, ExecState, Host, Phase,
    Vm,
};
use crate::cli::VmmConfig;
use crate::event_loop::Frontends;
use crate::machine::RunState;
use crate::monitor::{Controller, ReplyTo};

/// Version of the message sequence above; both sides must speak the same.
pub const PROTOCOL: u32 = 2;
/// Environment variable overriding the per-step timeout, in milliseconds.
pub const TIMEOUT_ENV: &str = "VMM_CPR_TRANSFER_TIMEOUT_MS";
/// Test hook: the new process stops itself (SIGSTOP) at the named step (`accepted`,
/// `hello`, `ready`, `state`, `restored`: each just before it answers), so a test can kill or
/// stall it exactly there.
pub const FAILPOINT_ENV: &str = "VMM_CPR_TRANSFER_FAILPOINT";
const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a side spins for the peer's next message inside the pause before it blocks
/// (`Channel::recv_spinning`): longer than the peer's work there (~0.5 ms), short enough
/// that a stalled peer costs one core little.
const PAUSE_SPIN: Duration = Duration::from_millis(2);
/// Building the VM over a large RAM may take longer than one step.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("the cpr channel address {0:?} is not unix:PATH")]
    BadUri(String),
    #[error("cannot connect to the new vmm at {path}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen for the previous vmm at {path}")]
    Listen {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error("the previous vmm speaks cpr-transfer protocol {0}, this one {PROTOCOL}")]
    Protocol(u32),
    #[error("the hello message is malformed: {0}")]
    BadHello(&'static str),
    #[error("the state message is malformed: {0}")]
    BadState(&'static str),
    #[error("the running vmm has another machine than this command line:\n{0}")]
    OtherMachine(String),
    #[error("the state image is unreadable")]
    StateImage(#[source] cpr_format::Error),
    #[error("the state image is incompatible with this vmm:\n{0}")]
    Incompatible(String),
    #[error("the state image was written in {0} mode, not transfer mode")]
    WrongMode(Mode),
    #[error("cannot encode the state image")]
    Encode(#[source] cpr_format::Error),
    #[error("the guest was handed to the new vmm, which did not confirm it runs")]
    Unconfirmed(#[source] ChannelError),
}

fn step_timeout() -> Duration {
    std::env::var(TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_STEP_TIMEOUT)
}

fn failpoint(step: &str) {
    if std::env::var(FAILPOINT_ENV).is_ok_and(|v| v == step) {
        // SAFETY: raise only sends a signal to this process; SIGSTOP cannot be caught.
        unsafe { libc::raise(libc::SIGSTOP) };
    }
}

/// `unix:PATH` → PATH.
pub fn parse_uri(uri: &str) -> Result<PathBuf, TransferError> {
    match uri.strip_prefix("unix:") {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => Err(TransferError::BadUri(uri.to_string())),
    }
}

/// Whether an `-incoming` value is a channel ([`parse_incoming`]'s business) rather than
/// an image file.
pub fn is_channel(v: &str) -> bool {
    v == "defer" || v.starts_with("cpr:") || v.trim_start().starts_with('{')
}

/// An `-incoming` value: `cpr:unix:PATH`, QEMU's JSON cpr channel, or `defer` (QEMU's main
/// channel, which this vmm does not need: `None`).
pub fn parse_incoming(v: &str) -> Result<Option<PathBuf>, String> {
    if v == "defer" {
        return Ok(None);
    }
    if let Some(rest) = v.strip_prefix("cpr:") {
        return parse_uri(rest).map(Some).map_err(|e| e.to_string());
    }
    if v.trim_start().starts_with('{') {
        let j: serde_json::Value =
            serde_json::from_str(v).map_err(|e| format!("not a JSON channel: {e}"))?;
        if j["channel-type"] != "cpr" {
            return Err("only a channel-type 'cpr' channel is supported".into());
        }
        let addr = &j["addr"];
        let transport_ok = addr["transport"].is_null() || addr["transport"] == "socket";
        return match (transport_ok, addr["type"].as_str(), addr["path"].as_str()) {
            (true, Some("unix"), Some(p)) if !p.is_empty() => Ok(Some(PathBuf::from(p))),
            _ => Err("the cpr channel's addr must be a unix socket with a path".into()),
        };
    }
    Err("only cpr:unix:PATH (or a QEMU cpr channel in JSON, or defer) is supported".into())
}

/// cpr-transfer in the old process. Returns only if the guest stays here (an error saying
/// why); on success the process exits once the new one runs the guest.
pub fn transfer(
    f: &Frontends,
    ctl: &mut Controller<Vm>,
    host: &Host,
    origin: usize,
    reply: &ReplyTo,
    uri: &str,
) -> Result<String, CprError> {
    let path = parse_uri(uri)?;
    let m = match &mut ctl.vm {
        Vm::Active(m) => m,
        Vm::Incoming(_) => return Err(CprError::Incoming),
    };
    let mut found = blockers::blockers(Mode::Transfer, m.ram());
    // Assigned devices move with the guest when the container can move its DMA mappings
    // to another process (VFIO_UPDATE_VADDR), as in restart mode.
    found.extend(blockers::vfio(Mode::Transfer, m.vfio(), false));
    if !found.is_empty() {
        let list = found.iter().map(|b| b.to_string()).collect::<Vec<_>>();
        return Err(CprError::Blocked {
            mode: Mode::Transfer,
            list: list.join("\n"),
        });
    }
    let resume_after = match m.run_state() {
        RunState::Running | RunState::Suspended => true,
        RunState::Paused | RunState::Prelaunch => false,
        RunState::Postmigrate => return Err(CprError::BadState("postmigrate")),
        RunState::Shutdown => return Err(CprError::BadState("shutdown")),
        RunState::InternalError => return Err(CprError::BadState("internal-error")),
    };
    let p = path.display().to_string();
    let connect = |source| TransferError::Connect {
        path: p.clone(),
        source,
    };
    let stream = UnixStream::connect(&path).map_err(connect)?;
    let mut ch = Channel::new(stream, step_timeout()).map_err(connect)?;
    ch.check_peer_uid().map_err(TransferError::from)?;
    let mut t = TransferTiming::default();

    // 1. hello: the hand-over and every manifest fd, while the guest runs. VFIO container,
    // groups and devices go now; interrupt eventfds go with the state (the guest may
    // reprogram its vectors until it pauses).
    let mut manifest = fds::manifest(m.ram(), &f.chardevs)?;
    manifest.extend(transfer_vfio::hello_fds(m)?);
    let (reply_kind, reply_id) = reply_fields(reply);
    let exec_state = ExecState {
        image: uri.to_string(),
        resume_after,
        ram: image::ram_state(&m.ram().descs()),
        origin: f
            .chardevs
            .get(origin)
            .map(|c| c.spec.id.clone())
            .unwrap_or_default(),
        reply: reply_kind,
        reply_id,
    };
    let mut numbers: Vec<RawFd> = Vec::new();
    for e in &manifest {
        if !numbers.contains(&e.fd) {
            numbers.push(e.fd);
        }
    }
    let preview = m.vfio().map(|v| v.save());
    let bytes = handover(f, host, &ctl.cpr, exec_state, manifest, preview.as_ref())?;
    // The schema of the state this binary writes: the new process checks compatibility now,
    // while the guest runs, instead of inside the pause.
    let schema = serde_json::to_vec(&image::reader_schema()).unwrap_or_default();
    let mut payload = Vec::with_capacity(12 + 4 * numbers.len() + schema.len() + bytes.len());
    payload.extend_from_slice(&PROTOCOL.to_le_bytes());
    payload.extend_from_slice(&(numbers.len() as u32).to_le_bytes());
    for n in &numbers {
        payload.extend_from_slice(&n.to_le_bytes());
    }
    payload.extend_from_slice(&(schema.len() as u32).to_le_bytes());
    payload.extend_from_slice(&schema);
    payload.extend_from_slice(&bytes);

    let mut boost = None;
    let mut peer_version = String::new();
    let outcome = (|| -> Result<(), CprError> {
        // The successor maps the DMA mappings at its own addresses while building its VM:
        // this process lets go of them first (device DMA goes on into the pinned pages).
        // From here any failure gives them back (`cancel_update` below).
        transfer_vfio::release(m)?;
        t.hello_sent = now_ns();
        ch.send(Kind::Hello, &payload, &numbers)
            .map_err(TransferError::from)?;

        // 2. ready: the new VM is built. Until here the guest never stopped.
        ch.set_timeout(PREPARE_TIMEOUT).map_err(|e| {
            TransferError::Channel(ChannelError::Recv {
                what: "ready",
                source: e,
            })
        })?;
        let ready = ch.recv(Kind::Ready).map_err(TransferError::from)?;
        t.ready_received = now_ns();
        let _ = ch.set_timeout(step_timeout());
        peer_version = String::from_utf8_lossy(&ready.payload).into_owned();
        transfer_vfio::trace_locked(m, "successor ready with the DMA mappings");

        // 3. state, 4. restored: the pause starts.
        boost = Some(Boost::realtime());
        t.stop_requested = now_ns();
        // As in cpr-save: each vCPU's thread reads what only its vCPU changes as it stops,
        // and the pause starts when the last one stopped running guest code.
        let own = m.pause_saving_own()?;
        t.vcpus_stopped = m.stopped_since(t.stop_requested).unwrap_or_else(now_ns);
        // Interrupts latch in the eventfds from here; the successor attaches them at `go`.
        transfer_vfio::detach(m)?;
        let state = m.save_state_from(own, |_| {})?;
        let vfio = m.vfio().map(|v| v.save());
        let irqs = transfer_vfio::state_fds(m)?;
        let img = image::to_bytes(
            image::header(&host.config, Mode::Transfer),
            &state,
            resume_after,
            &irqs,
            vfio.as_ref(),
        )
        .map_err(TransferError::Encode)?;
        t.state_saved = now_ns();
        let mut msg = t.to_bytes();
        msg.extend_from_slice(&img);
        let irq_fds: Vec<RawFd> = irqs.iter().map(|e| e.fd).collect();
        ch.send(Kind::State, &msg, &irq_fds)
            .map_err(TransferError::from)?;
        ch.recv_spinning(Kind::Restored, PAUSE_SPIN)
            .map_err(TransferError::from)?;
        // 5. go: past this write the guest belongs to the new process.
        t.go_sent = now_ns();
        ch.send(Kind::Go, &[], &[]).map_err(TransferError::from)?;
        Ok(())
    })();
    drop(boost);
    if let Err(e) = outcome {
        ch.refuse(&crate::error_chain(&e));
        drop(ch);
        // DMA mappings back at this process's addresses, irqfds attached (latched
        // interrupts injected), then the vCPUs. If that fails the guest stays paused and
        // the answer names the failure; why the transfer stopped goes to stderr.
        if let Err(undo) = transfer_vfio::cancel(m) {
            eprintln!("vmm: cpr-transfer stopped: {}", crate::error_chain(&e));
            return Err(undo);
        }
        if resume_after {
            m.resume()?;
        }
        return Err(e);
    }
    // The guest is the new process's now: never resume it here.
    let _ = m.mark_postmigrate();
    ctl.cpr.mode = Some(Mode::Transfer);
    ctl.cpr.phase = Phase::None;
    match ch.recv(Kind::Running) {
        Ok(msg) => {
            let theirs = TransferTiming::from_bytes(&msg.payload).unwrap_or(t);
            transfer_vfio::trace_locked(m, "done, this process exits");
            eprintln!(
                "vmm: cpr-transfer to {uri} done (new vmm version {peer_version}); exiting\n{}",
                theirs.describe()
            );
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!(
                "vmm: {}",
                crate::error_chain(&TransferError::Unconfirmed(e))
            );
            std::process::exit(1);
        }
    }
}

/// Creates the listening socket, accessible to this uid only.
fn listen(path: &Path) -> Result<UnixListener, TransferError> {
    let err = |source| TransferError::Listen {
        path: path.display().to_string(),
        source,
    };
    if std::fs::symlink_metadata(path)
        .map(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        .unwrap_or(false)
    {
        let _ = std::fs::remove_file(path);
    }
    // Bound under a temporary name and renamed into place once listening: bind creates the
    // file before listen, and a peer (or a script waiting for the file) that connects in
    // between is refused (ECONNREFUSED, seen from cpr-transfer-bench).
    let tmp = path
        .file_name()
        .map(|n| {
            let mut t = std::ffi::OsString::from(".");
            t.push(n);
            t.push(format!(".{}.tmp", std::process::id()));
            path.with_file_name(t)
        })
        .unwrap_or_else(|| path.to_path_buf());
    // SAFETY: umask only swaps the process's file-creation mask; the socket is bound with
    // 0600 from the start (no window where others could connect), then the mask returns.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(&tmp);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(err)?;
    if tmp != path {
        if let Err(e) = std::fs::rename(&tmp, path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(e));
        }
    }
    Ok(listener)
}

/// What hello carries besides the descriptors.
struct Hello<'a> {
    fds: BTreeMap<RawFd, OwnedFd>,
    /// The schema of the state image the sender will write.
    schema: Schema,
    handover: &'a [u8],
}

/// Parses hello's payload: protocol, the sender's fd numbers, its state schema (JSON), the
/// hand-over bytes.
fn parse_hello(payload: &[u8], fds: Vec<OwnedFd>) -> Result<Hello<'_>, TransferError> {
    let word = |i: usize| -> Result<u32, TransferError> {
        let b = payload
            .get(i * 4..i * 4 + 4)
            .ok_or(TransferError::BadHello("too short"))?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let proto = word(0)?;
    if proto != PROTOCOL {
        return Err(TransferError::Protocol(proto));
    }
    let n = word(1)? as usize;
    if n != fds.len() {
        return Err(TransferError::BadHello(
            "the descriptor count differs from the descriptors received",
        ));
    }
    let mut map = BTreeMap::new();
    for (i, fd) in fds.into_iter().enumerate() {
        map.insert(word(2 + i)? as RawFd, fd);
    }
    let len = word(2 + n)? as usize;
    let at = (3 + n) * 4;
    let text = payload
        .get(at..at + len)
        .ok_or(TransferError::BadHello("the state schema is cut short"))?;
    let schema = serde_json::from_slice(text)
        .map_err(|_| TransferError::BadHello("the state schema is not valid"))?;
    Ok(Hello {
        fds: map,
        schema,
        handover: &payload[at + len..],
    })
}

/// A binary whose state this one cannot read is refused at hello, before the guest pauses.
fn check_announced(announced: &Schema) -> Result<(), TransferError> {
    match incompatible(&cpr_format::compat::check(
        announced,
        &image::reader_schema(),
    )) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn incompatible(report: &cpr_format::CompatReport) -> Option<TransferError> {
    (!report.is_compatible()).then(|| {
        let findings = report.errors().map(|f| f.to_string()).collect::<Vec<_>>();
        TransferError::Incompatible(findings.join("\n"))
    })
}

/// Checks the state image: compatible with this binary (already known when its schema is
/// the one announced in hello, or `schema_checked`), transfer mode, and the machine of this
/// command line.
fn check_state(
    img: &Image,
    announced: &Schema,
    config: &VmmConfig,
    schema_checked: bool,
) -> Result<(), TransferError> {
    let as_announced = schema_checked
        || img
            .schema()
            .sections
            .iter()
            .all(|s| announced.get(&s.name) == Some(s));
    if !as_announced {
        if let Some(e) = incompatible(&img.check_compat(&image::reader_schema())) {
            return Err(e);
        }
    }
    if img.header().mode != Mode::Transfer {
        return Err(TransferError::WrongMode(img.header().mode));
    }
    let lines = image::machine_differences(&img.header().machine, &image::machine_desc(config));
    if !lines.is_empty() {
        return Err(TransferError::OtherMachine(lines.join("\n")));
    }
    Ok(())
}

/// Steps 1 to 4 in the new process: the adopted front end and the restored (paused)
/// machine, and whether the guest ran.
fn receive(
    ch: &mut Channel,
    config: &VmmConfig,
    host: &Host,
    t: &mut TransferTiming,
) -> Result<(Adopted, bool, Boost), CprError> {
    let hello = ch.recv(Kind::Hello).map_err(TransferError::from)?;
    failpoint("hello");
    let Hello {
        fds: map,
        schema: announced,
        handover: bytes,
    } = parse_hello(&hello.payload, hello.fds)?;
    check_announced(&announced)?;
    let handed = Image::from_bytes(bytes).map_err(|e| CprError::Handover(Box::new(e)))?;
    let lines = image::machine_differences(&handed.header().machine, &image::machine_desc(config));
    if !lines.is_empty() {
        return Err(TransferError::OtherMachine(lines.join("\n")).into());
    }
    let mut adopted = adopt_from(config, bytes, 0, Some(map), None)?;
    // Assigned devices: the DMA mappings move to this process now, while the guest runs.
    transfer_vfio::take_over(&handed, &mut adopted.vm)?;
    let rehearsed = match &adopted.vm {
        Vm::Incoming(inc) => inc.machine.as_ref().and_then(|m| {
            super::rehearse::rehearse(m, host, |img| {
                check_state(img, &announced, config, false).is_ok()
            })
        }),
        Vm::Active(_) => None,
    };
    t.machine_ready = now_ns();
    failpoint("ready");
    ch.send(Kind::Ready, crate::version::version().as_bytes(), &[])
        .map_err(TransferError::from)?;
    // The old process pauses the guest now: from here to the resume, wake-ups count.
    let boost = Boost::realtime();

    let state = ch
        .recv_spinning(Kind::State, PAUSE_SPIN)
        .map_err(TransferError::from)?;
    let received = now_ns();
    failpoint("state");
    let theirs = TransferTiming::from_bytes(&state.payload)
        .ok_or(TransferError::BadHello("state without stamps"))?;
    *t = TransferTiming {
        machine_ready: t.machine_ready,
        state_received: received,
        ..theirs
    };
    let bytes = &state.payload[super::transfer_timing::WORDS * 8..];
    let img = match &rehearsed {
        Some(r) => Image::from_bytes_like(bytes, r),
        None => Image::from_bytes(bytes),
    }
    .map_err(TransferError::StateImage)?;
    // The rehearsed image's schema passed this check before the pause.
    let schema_checked = rehearsed
        .as_ref()
        .is_some_and(|r| r.schema_bytes() == img.schema_bytes());
    check_state(&img, &announced, config, schema_checked)?;
    let (machine_state, resume_after) = image::machine_state(&img)?;
    let (prepared, vfio_fds, vfio_adopted) = match &mut adopted.vm {
        Vm::Incoming(inc) => (
            inc.machine.take(),
            std::mem::take(&mut inc.vfio_fds),
            inc.vfio_adopted.take(),
        ),
        Vm::Active(_) => (None, BTreeMap::new(), None),
    };
    let prepared = prepared.ok_or(CprError::NotIncoming)?;
    let serial: crate::machine::SerialOutput = Box::new(adopted.frontends.serial_output());
    let mut machine = prepared.restore(&machine_state, serial, host.machine_events.clone())?;
    transfer_vfio::restore(&img, state.fds, vfio_fds, vfio_adopted, &mut machine)?;
    adopted.vm = Vm::Active(machine);
    t.state_restored = now_ns();
    failpoint("restored");
    ch.send(Kind::Restored, &[], &[])
        .map_err(TransferError::from)?;
    Ok((adopted, resume_after, boost))
}

/// `-incoming cpr:unix:PATH`: waits for the running vmm, takes its guest over, and returns
/// the front end and the running machine. An error before `go` means the guest stays in
/// the old process (which was told why); the caller exits.
pub fn incoming(config: &VmmConfig, host: &Host, path: &Path) -> Result<Adopted, CprError> {
    let listener = listen(path)?;
    // The event loop reads SIGINT/SIGTERM/SIGHUP from a signalfd and has blocked them; it
    // does not run while this process waits for its predecessor, which may be never. Let
    // them end the process meanwhile (no vCPU thread exists yet to inherit the mask).
    let mut term = nix::sys::signal::SigSet::empty();
    for sig in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGHUP,
    ] {
        term.add(sig);
    }
    let _ = term.thread_unblock();
    let accepted = listener.accept();
    let _ = term.thread_block();
    drop(listener);
    let _ = std::fs::remove_file(path);
    let (stream, _) = accepted.map_err(|source| TransferError::Listen {
        path: path.display().to_string(),
        source,
    })?;
    let mut ch = Channel::new(stream, step_timeout()).map_err(|source| TransferError::Listen {
        path: path.display().to_string(),
        source,
    })?;
    if let Err(e) = ch.check_peer_uid() {
        ch.refuse(&e.to_string());
        return Err(TransferError::from(e).into());
    }
    failpoint("accepted");
    let mut t = TransferTiming::default();
    let (mut adopted, resume_after, boost) = match receive(&mut ch, config, host, &mut t) {
        Ok(r) => r,
        Err(e) => {
            ch.refuse(&crate::error_chain(&e));
            return Err(e);
        }
    };
    // 5. go: without it this process never runs the guest.
    ch.recv_spinning(Kind::Go, PAUSE_SPIN)
        .map_err(TransferError::from)?;
    t.go_received = now_ns();
    t.first_vcpu_running = match &mut adopted.vm {
        Vm::Active(m) => {
            // Irqfds only after go: attaching injects what the eventfds latched.
            transfer_vfio::attach_after_go(m);
            if resume_after {
                super::timing::resume_stamped(m)?
            } else {
                now_ns()
            }
        }
        Vm::Incoming(_) => now_ns(),
    };
    // 6. running: best effort, the guest is ours whatever the old process does now.
    let _ = ch.send(Kind::Running, &t.to_bytes(), &[]);
    drop(boost);
    adopted.status.mode = Some(Mode::Transfer);
    adopted.status.phase = Phase::None;
    adopted.status.image = Some(format!("unix:{}", path.display()));
    adopted.status.resume_after = false;
    adopted.status.transfer = Some(t);
    Ok(adopted)
}

/// The CPR_LOAD event the new process emits once it runs the guest.
pub fn loaded_event(t: &TransferTiming, uri: &str) -> serde_json::Value {
    json!({"mode": "transfer", "filename": uri, "timing": t.to_json()})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incoming_spellings() {
        assert_eq!(
            parse_incoming("cpr:unix:/tmp/a.sock").unwrap(),
            Some(PathBuf::from("/tmp/a.sock"))
        );
        assert_eq!(parse_incoming("defer").unwrap(), None);
        let q =
            r#"{"channel-type":"cpr","addr":{"transport":"socket","type":"unix","path":"/tmp/b"}}"#;
        assert_eq!(parse_incoming(q).unwrap(), Some(PathBuf::from("/tmp/b")));
        let main =
            r#"{"channel-type":"main","addr":{"transport":"socket","type":"unix","path":"/x"}}"#;
        assert!(parse_incoming(main)
            .unwrap_err()
            .contains("channel-type 'cpr'"));
        assert!(parse_incoming("tcp:0:4444").is_err());
        assert!(parse_incoming("cpr:unix:").is_err());
    }

    #[test]
    fn a_descriptor_other_than_the_one_sent_is_refused() {
        use crate::machine::{GuestRam, RamBackendConfig};
        let config = match crate::cli::parse_args(
            [
                "-m",
                "64M",
                "-machine",
                "memfd-alloc=on",
                "-kernel",
                "/dev/null",
            ]
            .map(String::from),
        ) {
            Ok(crate::cli::Action::Run(c)) => *c,
            other => panic!("{other:?}"),
        };
        let memfd = RamBackendConfig::Memfd { hugetlb: false };
        let ram = GuestRam::new(&memfd, config.mem_size).unwrap();
        let f = Frontends::attach(&config, Vec::new());
        let (tx, _rx) = std::sync::mpsc::channel();
        let host = Host {
            config: config.clone(),
            machine_events: tx,
        };
        let manifest = fds::manifest(&ram, &[]).unwrap();
        let exec = ExecState {
            image: "unix:/nowhere".into(),
            resume_after: true,
            ram: image::ram_state(&ram.descs()),
            origin: String::new(),
            reply: "hmp".into(),
            reply_id: None,
        };
        let status = super::super::CprStatus::default();
        let bytes = handover(&f, &host, &status, exec, manifest.clone(), None).unwrap();
        // Another memfd of the same size under the sender's number.
        let other = GuestRam::new(&memfd, config.mem_size).unwrap();
        let file = other.blocks()[0]
            .file
            .as_ref()
            .unwrap()
            .try_clone()
            .unwrap();
        let map = BTreeMap::from([(manifest[0].fd, OwnedFd::from(file))]);
        match adopt_from(&config, &bytes, 0, Some(map), None) {
            Err(CprError::Fd(fds::FdError::Mismatch { name, .. })) => {
                assert_eq!(name, "ram-below-4g")
            }
            Err(e) => panic!("{}", crate::error_chain(&e)),
            Ok(_) => panic!("a foreign memfd was adopted"),
        }
        // A descriptor that was not sent at all.
        match adopt_from(&config, &bytes, 0, Some(BTreeMap::new()), None) {
            Err(CprError::Fd(_)) => {}
            Err(e) => panic!("{}", crate::error_chain(&e)),
            Ok(_) => panic!("a missing memfd was adopted"),
        }
        // The right one is adopted.
        let file = ram.blocks()[0].file.as_ref().unwrap().try_clone().unwrap();
        let map = BTreeMap::from([(manifest[0].fd, OwnedFd::from(file))]);
        if let Err(e) = adopt_from(&config, &bytes, 0, Some(map), None) {
            panic!("{}", crate::error_chain(&e));
        }
    }

    #[test]
    fn a_state_schema_this_binary_cannot_read_is_refused_at_hello() {
        let mine = image::reader_schema();
        assert!(check_announced(&mine).is_ok());
        let mut newer = mine.clone();
        let cpu = newer
            .sections
            .iter_mut()
            .find(|s| s.name == "cpu")
            .expect("a cpu section schema");
        cpu.version += 1;
        cpu.min_version = cpu.version;
        match check_announced(&newer) {
            Err(TransferError::Incompatible(findings)) => {
                assert!(findings.contains("cpu"), "{findings}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hello_payload_checks_protocol_and_fd_count() {
        let mut p = Vec::new();
        p.extend_from_slice(&(PROTOCOL + 1).to_le_bytes());
        p.extend_from_slice(&0u32.to_le_bytes());
        assert!(matches!(
            parse_hello(&p, Vec::new()),
            Err(TransferError::Protocol(3))
        ));
        let schema = serde_json::to_vec(&image::reader_schema()).unwrap();
        let mut p = Vec::new();
        p.extend_from_slice(&PROTOCOL.to_le_bytes());
        p.extend_from_slice(&1u32.to_le_bytes());
        p.extend_from_slice(&7i32.to_le_bytes());
        p.extend_from_slice(&(schema.len() as u32).to_le_bytes());
        p.extend_from_slice(&schema);
        p.extend_from_slice(b"img");
        assert!(matches!(
            parse_hello(&p, Vec::new()),
            Err(TransferError::BadHello(_))
        ));
        let f = fds::handover_memfd(b"x").unwrap();
        let h = parse_hello(&p, vec![OwnedFd::from(f)]).unwrap();
        assert!(h.fds.contains_key(&7));
        assert_eq!(h.schema, image::reader_schema());
        assert_eq!(h.handover, b"img");
    }
}
