//! The new process's side of a restart-mode update: adopting what the old process handed
//! over at start-up ([`adopt`]) and loading the image into the waiting VM ([`load`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Arc;

use cpr_format::{FdIdentity, FdKind, Image, Mode};
use serde_json::{json, Value};

use super::timing::{self, now_ns, Timestamps};
use super::{fds, image, CprError, CprStatus, ExecState, Host, Phase, ONE};
use crate::chardev::{backend_name, Chardev, ChardevState};
use crate::cli::VmmConfig;
use crate::event_loop::{Frontend, Frontends};
use crate::machine::{
    EarlyState, GuestRam, IncomingMachine, Machine, MachineError, MachineState, RamBlockDesc,
    RamBlockFd, RunState,
};
use crate::monitor::hmp::HmpSessionState;
use crate::monitor::qmp::QmpSessionState;
use crate::monitor::{hmp, qmp, Controller, ReplyTo, VmControl};

/// A machine running (or paused) here, or one whose state is still to be loaded.
pub enum Vm {
    Active(Machine),
    Incoming(Incoming),
}

/// The new process before cpr-load: inherited RAM and a VM built over it.
pub struct Incoming {
    /// `None` only after a failed restore, until rebuilt.
    pub(super) machine: Option<IncomingMachine>,
    /// The inherited RAM fds: they outlive any VM built over them.
    ram_fds: Vec<RamBlockFd>,
    /// Inherited VFIO fds by manifest name, adopted at cpr-load (transfer: at the state).
    pub(super) vfio_fds: BTreeMap<String, OwnedFd>,
    /// Transfer mode: the container and DMA mappings, taken over before the pause.
    pub(super) vfio_adopted: Option<Box<crate::vfio::set::AdoptedContainer>>,
    stamps: Timestamps,
}

impl Incoming {
    fn ram_digest(&self) -> Result<Vec<(String, u64, u32)>, MachineError> {
        match &self.machine {
            Some(m) => Ok(crate::monitor::digest_of(m.ram())),
            None => Ok(crate::monitor::digest_of(&GuestRam::from_fds(
                self.ram_fds.iter().map(dup_block).collect(),
            )?)),
        }
    }
}

fn dup_block(b: &RamBlockFd) -> RamBlockFd {
    RamBlockFd {
        file: b.file.clone(),
        desc: b.desc,
    }
}

fn waiting(op: &'static str) -> MachineError {
    MachineError::BadRunState {
        op,
        state: RunState::Prelaunch,
    }
}

impl VmControl for Vm {
    fn start(&mut self) -> Result<(), MachineError> {
        match self {
            Vm::Active(m) => m.start(),
            Vm::Incoming(_) => Err(waiting("start before cpr-load")),
        }
    }
    fn pause(&mut self) -> Result<(), MachineError> {
        match self {
            Vm::Active(m) => m.pause(),
            Vm::Incoming(_) => Ok(()),
        }
    }
    fn resume(&mut self) -> Result<(), MachineError> {
        match self {
            Vm::Active(m) => m.resume(),
            Vm::Incoming(_) => Err(waiting("resume before cpr-load")),
        }
    }
    fn run_state(&self) -> RunState {
        match self {
            Vm::Active(m) => m.run_state(),
            Vm::Incoming(_) => RunState::Prelaunch,
        }
    }
    fn reset(&mut self) -> Result<(), MachineError> {
        match self {
            Vm::Active(m) => m.reset(),
            Vm::Incoming(_) => Err(waiting("reset before cpr-load")),
        }
    }
    fn wakeup(&mut self) -> Result<(), MachineError> {
        match self {
            Vm::Active(m) => m.wakeup(),
            Vm::Incoming(_) => Ok(()),
        }
    }
    fn describe_registers(&self, vcpu: usize) -> Result<String, MachineError> {
        match self {
            Vm::Active(m) => m.describe_registers(vcpu),
            Vm::Incoming(_) => Err(waiting("info registers before cpr-load")),
        }
    }
    fn describe_cpus(&self) -> Vec<String> {
        match self {
            Vm::Active(m) => m.describe_cpus(),
            Vm::Incoming(_) => Vec::new(),
        }
    }
    fn serial_input(&self, bytes: &[u8]) -> Result<(), MachineError> {
        match self {
            Vm::Active(m) => m.serial_input(bytes),
            // Not reached: the event loop leaves serial input in the chardev until load.
            Vm::Incoming(_) => Err(waiting("serial input before cpr-load")),
        }
    }
    fn ram_digest(&self) -> Result<Vec<(String, u64, u32)>, MachineError> {
        match self {
            Vm::Active(m) => Ok(crate::monitor::digest_of(m.ram())),
            Vm::Incoming(i) => i.ram_digest(),
        }
    }
}

impl Vm {
    /// Guest RAM, wherever the machine stands (`None` only if an incoming VM could not be
    /// rebuilt after a failed load).
    pub fn ram(&self) -> Option<&GuestRam> {
        match self {
            Vm::Active(m) => Some(m.ram()),
            Vm::Incoming(i) => i.machine.as_ref().map(|m| m.ram()),
        }
    }

    /// Whether serial input may be delivered now. Not between cpr-save and the end of
    /// cpr-load: bytes stay in the chardev's kernel buffer, which survives the exec, instead
    /// of landing in a UART whose state is already saved.
    pub fn accepts_serial_input(&self) -> bool {
        match self {
            Vm::Active(m) => m.run_state() != RunState::Postmigrate,
            Vm::Incoming(_) => false,
        }
    }
}

/// What the new process adopted from the old one.
pub struct Adopted {
    pub frontends: Frontends,
    pub vm: Vm,
    pub status: CprStatus,
    /// The monitor that issued cpr-exec and the reply it waits for.
    pub pending_reply: Option<(usize, ReplyTo)>,
}

/// Start-up after cpr-exec: adopt every fd the hand-over lists, build the VM over the
/// inherited RAM, rebuild chardevs and monitor sessions.
/// `pre`, the image being read for a load right after (`-incoming FILE`), lets the vCPUs
/// get their state as they are created.
pub fn adopt(
    config: &VmmConfig,
    bytes: &[u8],
    exec_ns: u64,
    pre: Option<&mut Preread>,
) -> Result<Adopted, CprError> {
    vmm::teardown::adopt_from_env();
    adopt_from(config, bytes, exec_ns, None, pre)
}

/// [`adopt`], with the fds either inherited at the manifest's numbers (`received` None) or
/// received over the cpr-transfer channel, keyed by the sender's numbers.
pub(super) fn adopt_from(
    config: &VmmConfig,
    bytes: &[u8],
    exec_ns: u64,
    received: Option<BTreeMap<RawFd, OwnedFd>>,
    pre: Option<&mut Preread>,
) -> Result<Adopted, CprError> {
    let img = Image::from_bytes(bytes).map_err(|e| CprError::Handover(Box::new(e)))?;
    // Received fds have new numbers: rewrite the manifest to them (-1 for one not sent,
    // which the identity check then refuses).
    let mut owned: BTreeMap<RawFd, OwnedFd> = BTreeMap::new();
    let manifest: Vec<cpr_format::FdEntry> = match received {
        None => img.fd_manifest().to_vec(),
        Some(map) => {
            let m = img
                .fd_manifest()
                .iter()
                .map(|e| cpr_format::FdEntry {
                    fd: map.get(&e.fd).map(|f| f.as_raw_fd()).unwrap_or(-1),
                    ..e.clone()
                })
                .collect();
            owned.extend(map.into_values().map(|f| (f.as_raw_fd(), f)));
            m
        }
    };
    let exec: ExecState = img
        .section(ONE)
        .map_err(|e| CprError::Handover(Box::new(e)))?
        .ok_or(CprError::HandoverMissing("section cpr.exec"))?;
    let mut stamps: Timestamps = img
        .section(ONE)
        .map_err(|e| CprError::Handover(Box::new(e)))?
        .unwrap_or_default();
    stamps.exec_called = exec_ns;
    stamps.new_main_entered = timing::main_entered();

    // Verify every inherited fd before trusting any, and own each number once.
    for e in &manifest {
        fds::verify_inherited(e)?;
        // SAFETY: the fd was inherited across exec for this purpose, its identity was just
        // checked, and nothing else in this process owns it (one owner per number).
        owned
            .entry(e.fd)
            .or_insert_with(|| unsafe { OwnedFd::from_raw_fd(e.fd) });
    }

    // RAM: each block's fd, shared when blocks share a file.
    let mut files: BTreeMap<RawFd, Arc<File>> = BTreeMap::new();
    let mut ram_fds = Vec::new();
    for b in &exec.ram {
        let e = manifest
            .iter()
            .find(|e| e.name == b.name && matches!(e.kind, FdKind::Memfd | FdKind::RamFile))
            .ok_or(CprError::HandoverMissing("a RAM block's fd"))?;
        let file = match files.get(&e.fd) {
            Some(f) => f.clone(),
            None => {
                let fd = owned
                    .remove(&e.fd)
                    .ok_or(CprError::HandoverMissing("a RAM block's fd"))?;
                let f = Arc::new(File::from(fd));
                files.insert(e.fd, f.clone());
                f
            }
        };
        ram_fds.push(RamBlockFd {
            file,
            desc: RamBlockDesc {
                guest_addr: b.guest_addr,
                size: b.size,
                file_offset: b.file_offset,
            },
        });
    }

    // Chardevs: same id and backend kind adopt their fds; others open afresh.
    let mut chardevs = Vec::new();
    for spec in &config.chardevs {
        let saved: Option<ChardevState> = img
            .section(&spec.id)
            .map_err(|e| CprError::Handover(Box::new(e)))?;
        let c = match saved {
            Some(s) if s.backend == backend_name(&spec.backend) => {
                let mut mine = Vec::new();
                for e in &manifest {
                    if let Some(role) = fds::chardev_role(e, &spec.id) {
                        if let Some(fd) = owned.remove(&e.fd) {
                            mine.push((role, fd));
                        }
                    }
                }
                let c = Chardev::from_inherited(spec, mine)?;
                // Output the old process had queued goes out before anything new.
                c.output().send(&s.pending_output.0);
                c
            }
            _ => Chardev::open(spec)?,
        };
        chardevs.push(c);
    }
    // VFIO: container, groups, devices and interrupt eventfds wait for cpr-load. They
    // must not be closed: closing the device fd would reset it and drop its DMA pins.
    let mut vfio_fds = BTreeMap::new();
    // (`manifest`: received fds are under their numbers in this process.)
    for e in &manifest {
        if e.name.starts_with("vfio-") {
            if let Some(fd) = owned.remove(&e.fd) {
                vfio_fds.insert(e.name.clone(), fd);
            }
        }
    }
    // Whatever the new command line has no use for is closed here.
    drop(owned);

    let mut frontends = Frontends::attach(config, chardevs);
    let mut pending_reply = None;
    for (i, (c, fe)) in frontends
        .chardevs
        .iter()
        .zip(frontends.frontends.iter_mut())
        .enumerate()
    {
        let id = &c.spec.id;
        match fe {
            Frontend::Qmp(s) => {
                if let Some(st) = img
                    .section::<QmpSessionState>(id)
                    .map_err(|e| CprError::Handover(Box::new(e)))?
                {
                    if c.is_connected() {
                        *s = qmp::Session::restore(&st);
                        frontends.adopted[i] = true;
                    }
                }
            }
            Frontend::Hmp(s) => {
                if let Some(st) = img
                    .section::<HmpSessionState>(id)
                    .map_err(|e| CprError::Handover(Box::new(e)))?
                {
                    if c.is_connected() {
                        *s = hmp::Session::restore(&st);
                        frontends.adopted[i] = true;
                    }
                }
            }
            // A mux (serial + HMP on one chardev, e.g. stdio) keeps its chardev; its HMP
            // session starts afresh.
            Frontend::Serial | Frontend::None | Frontend::Mux(_) => {}
        }
        if *id == exec.origin && frontends.adopted[i] {
            let id_value = exec
                .reply_id
                .as_deref()
                .and_then(|t| serde_json::from_str::<Value>(t).ok());
            let reply = match exec.reply.as_str() {
                "hmp" => ReplyTo::Hmp,
                other => ReplyTo::Qmp {
                    id: id_value,
                    hmp_text: other == "qmp-hmp",
                },
            };
            pending_reply = Some((i, reply));
        }
    }

    let ram = GuestRam::from_fds(ram_fds.iter().map(dup_block).collect()).map_err(CprError::Ram)?;
    let early = pre.map(|p| Box::new(move || p.machine_state()) as Box<EarlyState<'_>>);
    let machine = Machine::prepare_incoming_early(&config.machine_config(), ram, early)?;
    stamps.machine_ready = now_ns();
    let status = CprStatus {
        mode: Some(Mode::Restart),
        phase: Phase::Incoming,
        image: Some(exec.image.clone()),
        resume_after: exec.resume_after,
        stamps,
        last: None,
        last_error: None,
        ..CprStatus::default()
    };
    Ok(Adopted {
        frontends,
        vm: Vm::Incoming(Incoming {
            machine: Some(machine),
            ram_fds,
            vfio_fds,
            vfio_adopted: None,
            stamps,
        }),
        status,
        pending_reply,
    })
}

/// Checks that the image's RAM fds are the ones this process inherited.
fn check_ram_identity(
    img: &Image,
    ram_fds: &[RamBlockFd],
    names: &[String],
) -> Result<(), CprError> {
    for e in img.fd_manifest() {
        if !matches!(e.kind, FdKind::Memfd | FdKind::RamFile) {
            continue;
        }
        let i = names
            .iter()
            .position(|n| *n == e.name)
            .ok_or_else(|| CprError::RamMissing(e.name.clone()))?;
        let actual = FdIdentity::of_fd(ram_fds[i].file.as_ref()).map_err(|source| {
            CprError::RamIdentity {
                name: e.name.clone(),
                source: Box::new(source),
            }
        })?;
        e.identity
            .verify(&e.name, &actual, true)
            .map_err(|source| CprError::RamIdentity {
                name: e.name.clone(),
                source: Box::new(source),
            })?;
    }
    Ok(())
}

/// An image read, verified against the command line and decoded.
type Decoded = (Image, Arc<MachineState>, bool);

fn read_image(path: &Path, config: &VmmConfig) -> Result<Decoded, image::ImageError> {
    let img = image::open_checked(path, config)?;
    let (state, resume_after) = image::machine_state(&img)?;
    Ok((img, Arc::new(state), resume_after))
}

/// How long [`Preread`]'s reader is waited for by polling; it normally takes ~1 ms.
const PREREAD_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// A load at start-up (`-incoming FILE` after cpr-exec) reads and decodes the image on a
/// thread of its own while the main thread builds the VM: on the build machines that is
/// ~0.4 ms of the pause done in parallel instead of after.
pub struct Preread {
    reading: Option<std::thread::JoinHandle<Result<Decoded, image::ImageError>>>,
    /// `None` until read, and if the reading thread died (load then reads again).
    read: Option<Result<Decoded, image::ImageError>>,
}

impl Preread {
    /// Starts reading `path`; `None` if no thread could be started (load reads it then).
    pub fn start(path: &Path, config: &VmmConfig) -> Option<Preread> {
        let (path, config) = (path.to_path_buf(), config.clone());
        std::thread::Builder::new()
            .name("cpr-preread".into())
            .spawn(move || read_image(&path, &config))
            .ok()
            .map(|t| Preread {
                reading: Some(t),
                read: None,
            })
    }

    /// Waits for the reading thread: by polling (yielding) for up to `poll` before
    /// sleeping in join.
    fn wait(&mut self, poll: std::time::Duration) {
        if let Some(t) = self.reading.take() {
            let deadline = std::time::Instant::now() + poll;
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::yield_now();
            }
            self.read = t.join().ok();
        }
    }

    /// The machine state, once read; `None` if the image could not be read or decoded
    /// (the load reports why). Sleeps until then: the machine asks on a helper thread
    /// while its own thread builds the VM, usually on the CPU the reading thread needs
    /// (polling there slowed the read in traces at 8 vCPUs), and the helper has nothing
    /// to restore before the first vCPU exists.
    fn machine_state(&mut self) -> Option<Arc<MachineState>> {
        self.wait(std::time::Duration::ZERO);
        match &self.read {
            Some(Ok((_, state, _))) => Some(state.clone()),
            _ => None,
        }
    }

    /// The whole read; polls first: the load waits for nothing else, and a thread
    /// sleeping on the other CPU took ~0.1 ms to wake here.
    fn into_read(mut self) -> Option<Result<Decoded, image::ImageError>> {
        self.wait(PREREAD_POLL);
        self.read
    }
}

/// cpr-load: verify the image, restore into the waiting VM, resume if the guest ran (and
/// `stay_paused` is false: `-S -incoming FILE` loads and waits for `cont`). `pre` is the
/// same image, already being read.
pub fn load(
    f: &Frontends,
    ctl: &mut Controller<Vm>,
    host: &Host,
    path: &Path,
    stay_paused: bool,
    pre: Option<Preread>,
) -> Result<String, CprError> {
    let inc = match &mut ctl.vm {
        Vm::Incoming(i) => i,
        Vm::Active(_) => return Err(CprError::NotIncoming),
    };
    inc.stamps.load_started = now_ns();
    // A reading thread that died is no answer: read again here.
    let decoded = match pre.and_then(Preread::into_read) {
        Some(result) => result,
        None => read_image(path, &host.config),
    };
    let (img, state, resume_after) = decoded?;
    let names: Vec<String> =
        image::ram_state(&inc.ram_fds.iter().map(|b| b.desc).collect::<Vec<_>>())
            .into_iter()
            .map(|b| b.name)
            .collect();
    check_ram_identity(&img, &inc.ram_fds, &names)?;
    let resume_after = resume_after && !stay_paused;
    let prepared = match inc.machine.take() {
        Some(m) => m,
        None => Machine::prepare_incoming(
            &host.config.machine_config(),
            GuestRam::from_fds(inc.ram_fds.iter().map(dup_block).collect())
                .map_err(CprError::Ram)?,
        )?,
    };
    if let Err(e) = prepared.check(&state) {
        inc.machine = Some(prepared);
        return Err(e.into());
    }
    let serial: crate::machine::SerialOutput = Box::new(f.serial_output());
    let mut machine = match prepared.restore(&state, serial, host.machine_events.clone()) {
        Ok(m) => m,
        Err(e) => {
            // The half-restored VM is gone; RAM is intact in the fds. Build a fresh VM so
            // a corrected cpr-load finds one waiting.
            let rebuilt = GuestRam::from_fds(inc.ram_fds.iter().map(dup_block).collect())
                .map_err(CprError::Ram)
                .and_then(|ram| {
                    Ok(Machine::prepare_incoming(
                        &host.config.machine_config(),
                        ram,
                    )?)
                });
            inc.machine = rebuilt.ok();
            return Err(e.into());
        }
    };
    if let Some((container, devices)) = image::vfio_state(&img)? {
        let fds = &mut inc.vfio_fds;
        machine.restore_vfio(&container, &devices, &mut |name| fds.remove(name))?;
    }
    let mut t = inc.stamps;
    t.state_restored = now_ns();
    if resume_after {
        t.first_vcpu_running = timing::resume_stamped(&mut machine)?;
    }
    // After the pause: the previous image's address space and VM may go now.
    vmm::teardown::release();
    super::schema::warm_up();
    ctl.vm = Vm::Active(machine);
    ctl.cpr.phase = Phase::None;
    ctl.cpr.image = Some(path.display().to_string());
    ctl.cpr.last = Some(t);
    ctl.cpr.last_error = None;
    ctl.cpr.resume_after = false;
    ctl.emit(
        "CPR_LOAD",
        Some(json!({
            "mode": "restart",
            "filename": path.display().to_string(),
            "timing": t.to_json(),
        })),
    );
    if resume_after {
        ctl.emit("RESUME", None);
    }
    Ok(String::new())
}
