//! Live update, reboot mode: the state goes to a file, the VMM ends, the host may be
//! updated (up to a reboot), and a new VMM started the same way loads the file.
//!
//! **cpr-save FILE reboot[,ram=in-place|in-image]** ([`save`]): refuse early if the chosen
//! RAM placement is impossible (the guest keeps running); stop the vCPUs; read the machine
//! state; write the image atomically (temp file, fsync, rename: a crash leaves the previous
//! image or none). RAM goes either nowhere (in-place: a `memory-backend-file,share=on` on
//! /dev/shm or a DAX device keeps it; the image records each block's CRC-32) or into the
//! image as raw regions of its non-zero pages (in-image, [`ram_image`]). Default: in-place
//! when RAM is in a file, in-image otherwise (a memfd or anonymous RAM dies with the
//! process, so in-place is impossible for them). The machine stays in "postmigrate";
//! `quit` ends the process.
//!
//! **cpr-load FILE** ([`load`]) in a new VMM started with the same options plus -S (or with
//! `-incoming FILE`, [`super::incoming`]): check the image (CRCs, versions, reboot mode, the
//! same machine as this command line: every mismatch is listed and nothing changes), check
//! or rebuild RAM (in-place: the file's length and content digest; in-image: each region
//! into fresh RAM), build a new VM over it, restore the state, and resume the guest if it
//! ran. A guest saved in S3 comes back suspended and runs on `system_wakeup`.

use std::path::Path;
use std::time::Instant;

use cpr_format::{Image, Mode};
use serde_json::json;

use super::image::{self, ImageError};
use super::ram_image::{self, Placement, RamImageError, RebootRamState};
use super::{CprError, Host, Phase, Vm};
use crate::cli::{RamSpec, VmmConfig};
use crate::event_loop::Frontends;
use crate::machine::{GuestRam, Machine, RunState};
use crate::monitor::Controller;

cpr_format::state! {
    /// The command line's machine options, so `vmm -incoming FILE` can rebuild the machine
    /// without them.
    #[section(name = "reboot.config", version = 1, min_version = 1, required = false)]
    #[derive(Eq)]
    pub struct RebootConfigState {
        pub name: Option<String>,
        #[hint(size)] pub mem_size: u64,
        pub vcpus: u32,
        pub kernel: String,
        pub initrd: Option<String>,
        pub append: Option<String>,
        /// `anonymous`, `memfd`, `memfd-hugetlb` or `file`.
        pub ram: String,
        /// The memory backend object's id, if the RAM came from -object.
        pub ram_id: Option<String>,
        pub ram_path: Option<String>,
    }
}

impl RebootConfigState {
    pub fn of(c: &VmmConfig) -> RebootConfigState {
        let (ram, ram_id, ram_path) = match &c.ram {
            RamSpec::Anonymous => ("anonymous", None, None),
            RamSpec::Memfd { id, hugetlb } => (
                if *hugetlb { "memfd-hugetlb" } else { "memfd" },
                id.clone(),
                None,
            ),
            RamSpec::File { id, path } => {
                ("file", Some(id.clone()), Some(path.display().to_string()))
            }
        };
        RebootConfigState {
            name: c.name.clone(),
            mem_size: c.mem_size,
            vcpus: u32::from(c.vcpus),
            kernel: c.kernel.display().to_string(),
            initrd: c.initrd.as_ref().map(|p| p.display().to_string()),
            append: c.append.clone(),
            ram: ram.to_string(),
            ram_id,
            ram_path,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RebootError {
    #[error(
        "unknown cpr-save option '{0}' (reboot mode takes ram=in-place|in-image, digest=on|off)"
    )]
    BadOption(String),
    #[error(
        "ram=in-place needs guest RAM in a persistent shared file (memory-backend-file, \
         share=on, on /dev/shm or a DAX device); this guest's RAM is {0}, which ends with the \
         process: use ram=in-image"
    )]
    NotPersistent(&'static str),
    #[error(
        "cpr-load of a reboot-mode image needs a vmm that has not started its guest: start \
         it with the same options plus -S (or with -incoming FILE)"
    )]
    NotFresh,
    #[error("the image {path} was written in {mode} mode, not reboot mode")]
    WrongMode { path: String, mode: Mode },
    #[error("the image {0} lacks its reboot.ram section")]
    NoRamSection(String),
    #[error("the image keeps RAM in place in {0}, but this command line's RAM is not that file")]
    NotTheFile(String),
    #[error("the RAM file {path} is {actual} bytes long; the image recorded {expected}")]
    FileSize {
        path: String,
        actual: u64,
        expected: u64,
    },
    #[error("the RAM file {0} did not exist when this vmm started: the guest's memory is gone")]
    FileMissing(String),
    #[error("cannot read the RAM file {path}")]
    FileStat {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the RAM file {path} to storage")]
    FileSync {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the image records an unknown RAM placement '{0}'")]
    BadPlacement(String),
    #[error(transparent)]
    Ram(#[from] RamImageError),
}

impl From<RebootError> for CprError {
    fn from(e: RebootError) -> CprError {
        CprError::Reboot(Box::new(e))
    }
}

/// cpr-save's reboot-mode options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SaveOptions {
    /// `ram=`: None lets [`placement_for`] choose.
    placement: Option<Placement>,
    /// `digest=on|off`: record each RAM block's CRC-32 (default on).
    digest: bool,
}

/// Splits `reboot,ram=in-image,digest=off` into its options.
fn parse_mode(mode: &str) -> Result<SaveOptions, RebootError> {
    let mut o = SaveOptions {
        placement: None,
        digest: true,
    };
    for opt in mode.split(',').skip(1).filter(|o| !o.is_empty()) {
        let bad = || RebootError::BadOption(opt.to_string());
        match opt.split_once('=') {
            Some(("ram", v)) => o.placement = Some(Placement::parse(v).ok_or_else(bad)?),
            Some(("digest", "on")) => o.digest = true,
            Some(("digest", "off")) => o.digest = false,
            _ => return Err(bad()),
        }
    }
    Ok(o)
}

fn ram_kind(spec: &RamSpec) -> &'static str {
    match spec {
        RamSpec::Anonymous => "anonymous memory",
        RamSpec::Memfd { .. } => "a memfd",
        RamSpec::File { .. } => "a file",
    }
}

/// Where RAM goes for this save: the user's choice if possible, else in-place for a RAM file
/// and in-image otherwise.
pub fn placement_for(
    config: &VmmConfig,
    asked: Option<Placement>,
) -> Result<Placement, RebootError> {
    let persistent = matches!(config.ram, RamSpec::File { .. });
    match (asked, persistent) {
        (Some(Placement::InPlace), false) => Err(RebootError::NotPersistent(ram_kind(&config.ram))),
        (Some(p), _) => Ok(p),
        (None, true) => Ok(Placement::InPlace),
        (None, false) => Ok(Placement::InImage),
    }
}

/// cpr-save in reboot mode: stop, save, write the image (with RAM if in-image), stay in
/// postmigrate.
pub fn save(
    ctl: &mut Controller<Vm>,
    host: &Host,
    path: &Path,
    mode: &str,
) -> Result<String, CprError> {
    let opts = parse_mode(mode)?;
    let placement = placement_for(&host.config, opts.placement)?;
    let m = match &mut ctl.vm {
        Vm::Active(m) => m,
        Vm::Incoming(_) => return Err(CprError::Incoming),
    };
    let found = super::capable::blockers(&host.config, Mode::Reboot);
    if !found.is_empty() {
        return Err(CprError::Blocked {
            mode: Mode::Reboot,
            list: found.join("\n"),
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
    remove_stale_temporaries(path);
    let t0 = Instant::now();
    // Saved again after a cpr-save: already stopped (postmigrate), nothing to pause.
    if before != RunState::Postmigrate {
        m.pause()?;
    }
    let written = write_image(m, &host.config, path, placement, resume_after, opts.digest);
    let stats = match written {
        Ok(s) => s,
        Err(e) => {
            if resume_after && before != RunState::Postmigrate {
                m.resume()?;
            }
            return Err(e);
        }
    };
    let pause_ms = t0.elapsed().as_secs_f64() * 1e3;
    m.mark_postmigrate()?;
    if matches!(before, RunState::Running | RunState::Suspended) {
        ctl.emit("STOP", None);
    }
    let text = stats.describe(placement);
    ctl.cpr.mode = Some(Mode::Reboot);
    ctl.cpr.phase = Phase::Saved;
    ctl.cpr.image = Some(path.display().to_string());
    ctl.cpr.resume_after = resume_after;
    ctl.cpr.last_error = None;
    ctl.cpr.reboot = Some(format!("cpr-save: {text}"));
    ctl.emit(
        "CPR_SAVE",
        Some(json!({
            "mode": "reboot",
            "filename": path.display().to_string(),
            "ram": {
                "placement": placement.name(),
                "ram-bytes": stats.ram_bytes,
                "bytes-written": stats.bytes_written,
                "regions": stats.regions,
                "zero-pages-skipped": stats.zero_pages_skipped,
                "scan-ns": stats.scan_ns,
                "write-ns": stats.write_ns,
                "gb-per-s": stats.gb_per_s(),
            },
            "stopped-ms": pause_ms,
        })),
    );
    Ok(text)
}

/// Removes temporary files that saves killed before their rename left next to `path`
/// (`.NAME.tmp.PID`, cpr-format's atomic writer), when process PID is gone. They never have
/// the image's name, but an in-image one can be as large as guest RAM.
fn remove_stale_temporaries(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!(".{}.tmp.", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let n = e.file_name();
        let Some(pid) = n.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        let alive = pid
            .parse::<u32>()
            .map(|p| Path::new(&format!("/proc/{p}")).exists())
            .unwrap_or(true);
        if !alive {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn write_image(
    m: &Machine,
    config: &VmmConfig,
    path: &Path,
    placement: Placement,
    running: bool,
    digest: bool,
) -> Result<ram_image::RamStats, CprError> {
    let state = m.save_state()?;
    let werr = |source| ImageError::Write {
        path: path.display().to_string(),
        source: Box::new(source),
    };
    let mut w = image::writer(
        path,
        image::header(config, Mode::Reboot),
        &state,
        running,
        &[],
    )?;
    w.add_section("0", &RebootConfigState::of(config))
        .map_err(werr)?;
    let file = match &config.ram {
        RamSpec::File { path: p, .. } => {
            let len = std::fs::metadata(p)
                .map_err(|source| RebootError::FileStat {
                    path: p.display().to_string(),
                    source,
                })?
                .len();
            Some((p.display().to_string(), len))
        }
        _ => None,
    };
    if placement == Placement::InPlace {
        // The file must hold the guest's memory on storage before the image says it does
        // (a no-op on tmpfs; on a DAX device or disk it matters across a host reboot).
        if let Some(f) = m.ram().blocks().first().and_then(|b| b.file.as_ref()) {
            f.sync_all().map_err(|source| RebootError::FileSync {
                path: file.as_ref().map(|f| f.0.clone()).unwrap_or_default(),
                source,
            })?;
        }
    }
    let mut stats =
        ram_image::add_ram(&mut w, m.ram(), placement, file, digest).map_err(RebootError::from)?;
    let t = Instant::now();
    w.write_atomic(path).map_err(werr)?;
    stats.write_ns = t.elapsed().as_nanos() as u64;
    Ok(stats)
}

/// Whether the image at `path` was written in reboot mode (cpr-load dispatches on it).
pub fn is_reboot_image(path: &Path) -> bool {
    Image::open(path).is_ok_and(|i| i.header().mode == Mode::Reboot)
}

/// Opens a reboot-mode image and checks it against this binary and command line.
pub fn open_checked(path: &Path, config: &VmmConfig) -> Result<(Image, RebootRamState), CprError> {
    let p = path.display().to_string();
    let img = Image::open(path).map_err(|source| ImageError::Read {
        path: p.clone(),
        source: Box::new(source),
    })?;
    let reader = image::reader_schema()
        .with::<RebootRamState>()
        .with::<RebootConfigState>();
    let report = img.check_compat(&reader);
    if !report.is_compatible() {
        let findings = report
            .errors()
            .map(|f| f.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        return Err(ImageError::Incompatible { path: p, findings }.into());
    }
    if img.header().mode != Mode::Reboot {
        return Err(RebootError::WrongMode {
            path: p,
            mode: img.header().mode,
        }
        .into());
    }
    let ram: RebootRamState = img
        .section("0")
        .map_err(|source| ImageError::Read {
            path: p.clone(),
            source: Box::new(source),
        })?
        .ok_or_else(|| RebootError::NoRamSection(p.clone()))?;
    let mut lines = image::machine_differences(&img.header().machine, &image::machine_desc(config));
    // RAM in the image goes into whatever RAM the new command line has: a reboot-mode
    // update may change the backing (e.g. anonymous to memfd, to allow restart mode).
    if Placement::parse(&ram.placement) == Some(Placement::InImage) {
        lines.retain(|l| !l.starts_with("RAM backing:"));
    }
    if !lines.is_empty() {
        return Err(ImageError::OtherMachine {
            path: p,
            lines: lines.join("\n"),
        }
        .into());
    }
    Ok((img, ram))
}

/// Guest RAM for the incoming guest: the RAM file as it is (in-place, checked) or fresh RAM
/// filled from the image (in-image).
fn incoming_ram(
    start_len: Option<u64>,
    old: &Machine,
    config: &VmmConfig,
    img: &Image,
    path: &Path,
    saved: &RebootRamState,
) -> Result<(GuestRam, u64), CprError> {
    match Placement::parse(&saved.placement) {
        Some(Placement::InPlace) => {
            let file = saved.file.clone().unwrap_or_default();
            let RamSpec::File { path: p, .. } = &config.ram else {
                return Err(RebootError::NotTheFile(file).into());
            };
            // As found at start-up, before the machine sized the file.
            let Some(actual) = start_len else {
                return Err(RebootError::FileMissing(p.display().to_string()).into());
            };
            if actual != saved.file_len {
                return Err(RebootError::FileSize {
                    path: p.display().to_string(),
                    actual,
                    expected: saved.file_len,
                }
                .into());
            }
            // The waiting machine mapped the file and never wrote it (-S defers the kernel).
            let fds = old
                .ram()
                .share_fds()
                .ok_or_else(|| RebootError::NotTheFile(file.clone()))?;
            let ram = GuestRam::from_fds(fds).map_err(CprError::Ram)?;
            ram_image::verify(&ram, saved).map_err(RebootError::from)?;
            Ok((ram, 0))
        }
        Some(Placement::InImage) => {
            if let RamSpec::File { path: p, .. } = &config.ram {
                // In-image RAM goes into zeroed RAM: empty the file (the image has it all).
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(p)
                    .and_then(|f| f.set_len(0).map(|_| f))
                    .map_err(|source| RebootError::FileStat {
                        path: p.display().to_string(),
                        source,
                    })?;
                drop(f);
            }
            let mc = config.machine_config();
            let ram = GuestRam::new(&mc.ram, mc.mem_size).map_err(CprError::Ram)?;
            let read = ram_image::restore(&ram, img, path, saved).map_err(RebootError::from)?;
            Ok((ram, read))
        }
        None => Err(RebootError::BadPlacement(saved.placement.clone()).into()),
    }
}

/// cpr-load of a reboot-mode image into a VMM that waits (-S, never started).
pub fn load(
    f: &Frontends,
    ctl: &mut Controller<Vm>,
    host: &Host,
    path: &Path,
) -> Result<String, CprError> {
    load_with(f, ctl, host, path, false)
}

/// [`load`]; `keep_paused` (`-incoming FILE -S`): leave the guest paused even if it ran at
/// cpr-save, for `cont` to resume.
pub fn load_with(
    f: &Frontends,
    ctl: &mut Controller<Vm>,
    host: &Host,
    path: &Path,
    keep_paused: bool,
) -> Result<String, CprError> {
    let t0 = Instant::now();
    let old = match &ctl.vm {
        Vm::Active(m) if m.run_state() == RunState::Prelaunch && m.boot_pending() => m,
        _ => return Err(RebootError::NotFresh.into()),
    };
    let (img, saved) = open_checked(path, &host.config)?;
    let (state, ran) = image::machine_state(&img)?;
    let resume_after = ran && !keep_paused;
    let (ram, read) = incoming_ram(ctl.cpr.ram_file_len, old, &host.config, &img, path, &saved)?;
    let prepared = Machine::prepare_incoming(&host.config.machine_config(), ram)?;
    prepared.check(&state)?;
    let serial: crate::machine::SerialOutput = Box::new(f.serial_output());
    let mut machine = prepared.restore(&state, serial, host.machine_events.clone())?;
    if let Vm::Active(old) = &mut ctl.vm {
        old.shutdown();
    }
    if resume_after {
        machine.resume()?;
    }
    let suspended = machine.run_state() == RunState::Suspended;
    ctl.vm = Vm::Active(machine);
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let text = format!(
        "reboot mode: loaded {} ({}, {} bytes of RAM read) in {ms:.3} ms{}\n",
        path.display(),
        saved.placement,
        read,
        if suspended {
            "; the guest is suspended: system_wakeup resumes it"
        } else {
            ""
        }
    );
    ctl.cpr.mode = Some(Mode::Reboot);
    ctl.cpr.phase = Phase::None;
    ctl.cpr.image = Some(path.display().to_string());
    ctl.cpr.last_error = None;
    ctl.cpr.resume_after = false;
    ctl.cpr.reboot = Some(format!("cpr-load: {text}"));
    ctl.emit(
        "CPR_LOAD",
        Some(json!({
            "mode": "reboot",
            "filename": path.display().to_string(),
            "ram": { "placement": saved.placement, "bytes-read": read },
            "load-ms": ms,
        })),
    );
    if resume_after {
        ctl.emit("RESUME", None);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> VmmConfig {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        v.extend(["-kernel".to_string(), "/dev/null".to_string()]);
        match crate::cli::parse_args(v) {
            Ok(crate::cli::Action::Run(c)) => *c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ram_placement_defaults_to_in_place_only_for_a_ram_file() {
        let anon = config(&["-m", "64M"]);
        assert_eq!(placement_for(&anon, None).unwrap(), Placement::InImage);
        let e = placement_for(&anon, Some(Placement::InPlace)).unwrap_err();
        assert!(
            e.to_string()
                .contains("this guest's RAM is anonymous memory"),
            "{e}"
        );
        let memfd = config(&["-machine", "memfd-alloc=on"]);
        let e = placement_for(&memfd, Some(Placement::InPlace)).unwrap_err();
        assert!(
            e.to_string()
                .contains("a memfd, which ends with the process"),
            "{e}"
        );
        let file = config(&[
            "-object",
            "memory-backend-file,id=r,size=4M,mem-path=/dev/shm/x,share=on",
            "-machine",
            "memory-backend=r",
        ]);
        assert_eq!(placement_for(&file, None).unwrap(), Placement::InPlace);
        assert_eq!(
            placement_for(&file, Some(Placement::InImage)).unwrap(),
            Placement::InImage
        );
    }

    #[test]
    fn mode_options_are_parsed_and_unknown_ones_refused() {
        let o = parse_mode("reboot").unwrap();
        assert_eq!((o.placement, o.digest), (None, true));
        let o = parse_mode("reboot,ram=in-image,digest=off").unwrap();
        assert_eq!((o.placement, o.digest), (Some(Placement::InImage), false));
        assert_eq!(
            parse_mode("reboot,ram=sideways").unwrap_err().to_string(),
            "unknown cpr-save option 'ram=sideways' (reboot mode takes ram=in-place|in-image, \
             digest=on|off)"
        );
        assert!(parse_mode("reboot,fast").is_err());
    }

    #[test]
    fn the_machine_options_round_trip_through_the_image_section() {
        let c = config(&["-m", "96M", "-smp", "2", "-append", "console=ttyS0"]);
        let s = RebootConfigState::of(&c);
        let mut w = cpr_format::ImageWriter::new(image::header(&c, Mode::Reboot));
        w.add_section("0", &s).unwrap();
        let img = Image::from_bytes(&w.to_bytes().unwrap()).unwrap();
        let back: RebootConfigState = img.section("0").unwrap().unwrap();
        assert_eq!(back, s);
        assert_eq!(back.mem_size, 96 << 20);
        assert_eq!(back.ram, "anonymous");
    }
}
