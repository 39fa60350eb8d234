//! The machine's state as cpr-format sections, and back; the image header and the
//! "same machine?" check that cpr-load makes against the new command line.

use std::path::Path;

use cpr_format::{
    DeviceDesc, EncodedSection, FdEntry, Header, HostInfo, Image, ImageWriter, MachineDesc, Mode,
    Producer, RamBacking, Schema,
};

use crate::cli::{RamSpec, VmmConfig};
use crate::machine::devices::pm::PmState;
use crate::machine::devices::rtc::RtcState;
use crate::machine::devices::serial::SerialState;
use crate::machine::memory::{self, RamBlockDesc};
use crate::machine::vcpu_state::VcpuState;
use crate::machine::vm_state::{ClockState, IrqchipState, PitState};
use crate::machine::MachineState;

/// Instance name of single-instance sections.
const ONE: &str = "0";
/// The UART's device id (instance of its section).
const SERIAL_ID: &str = "serial0";

cpr_format::state! {
    /// One guest RAM block and where it sits in its backing fd.
    #[derive(Eq)]
    pub struct RamBlockState {
        pub name: String,
        #[hint(addr)] pub guest_addr: u64,
        #[hint(size)] pub size: u64,
        #[hint(hex)] pub file_offset: u64,
    }

    /// Machine-wide facts of the saved guest: whether it ran, and its RAM layout.
    #[section(name = "machine", version = 1, min_version = 1, required = true)]
    #[derive(Eq)]
    pub struct MachineRunState {
        /// The guest was running at cpr-save: cpr-load resumes it.
        pub running: bool,
        /// The guest was in S3: it stays suspended until system_wakeup.
        pub suspended: bool,
        pub ram: Vec<RamBlockState>,
    }
}

/// What this binary can read: the compatibility engine compares an image's schema with it.
pub fn reader_schema() -> Schema {
    Schema::new()
        .with::<MachineRunState>()
        .with::<VcpuState>()
        .with::<IrqchipState>()
        .with::<PitState>()
        .with::<ClockState>()
        .with::<SerialState>()
        .with::<PmState>()
        .with::<RtcState>()
        .with::<super::timing::Timestamps>()
        .with::<crate::vfio::set::VfioContainerState>()
        .with::<crate::vfio::iommufd_set::VfioIommufdState>()
        .with::<crate::vfio::VfioPciState>()
}

/// The VFIO part of an image: the container (or iommufd) and one `vfio.pci` section per
/// device.
pub type VfioSaved = (
    crate::vfio::VfioBackendState,
    Vec<(String, crate::vfio::VfioPciState)>,
);

/// Writes the VFIO sections: the back-end's and one `vfio.pci` per device.
pub fn add_vfio(w: &mut ImageWriter, (backend, devices): &VfioSaved) -> cpr_format::Result<()> {
    match backend {
        crate::vfio::VfioBackendState::Container(c) => w.add_section(ONE, c)?,
        crate::vfio::VfioBackendState::Iommufd(i) => w.add_section(ONE, i)?,
    };
    for (id, d) in devices {
        w.add_section(id, d)?;
    }
    Ok(())
}

/// The VFIO sections of an image, if it has assigned devices.
pub fn vfio_state(img: &Image) -> Result<Option<VfioSaved>, ImageError> {
    let p = img
        .path()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let read = |source: cpr_format::Error| ImageError::Read {
        path: p.clone(),
        source: Box::new(source),
    };
    use crate::vfio::VfioBackendState;
    let backend = match img
        .section::<crate::vfio::set::VfioContainerState>(ONE)
        .map_err(read)?
    {
        Some(c) => VfioBackendState::Container(c),
        None => match img
            .section::<crate::vfio::iommufd_set::VfioIommufdState>(ONE)
            .map_err(read)?
        {
            Some(i) => VfioBackendState::Iommufd(i),
            None => return Ok(None),
        },
    };
    let devices = img
        .sections_of::<crate::vfio::VfioPciState>()
        .map_err(read)?;
    Ok(Some((backend, devices)))
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot write the image {path}")]
    Write {
        path: String,
        #[source]
        source: Box<cpr_format::Error>,
    },
    #[error("cannot read the image {path}")]
    Read {
        path: String,
        #[source]
        source: Box<cpr_format::Error>,
    },
    #[error("the image {path} lacks section {section}")]
    Missing { path: String, section: String },
    #[error("the image {path} is incompatible with this vmm:\n{findings}")]
    Incompatible { path: String, findings: String },
    #[error("the image {path} was written in {mode} mode, not restart mode")]
    WrongMode { path: String, mode: Mode },
    #[error("the image {path} describes another machine than this command line:\n{lines}")]
    OtherMachine { path: String, lines: String },
}

fn uname_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn backing_of(spec: &RamSpec) -> RamBacking {
    match spec {
        RamSpec::Anonymous => RamBacking::Anonymous,
        RamSpec::Memfd { hugetlb: true, .. } => RamBacking::Hugetlb,
        RamSpec::Memfd { .. } => RamBacking::Memfd,
        RamSpec::File { path, .. } => RamBacking::File {
            path: path.display().to_string(),
        },
    }
}

/// The machine as the command line describes it: what the image header records, and what
/// cpr-load compares the image's header with.
pub fn machine_desc(config: &VmmConfig) -> MachineDesc {
    let page_size = match config.ram {
        RamSpec::Memfd { hugetlb: true, .. } => 2 << 20,
        _ => 4096,
    };
    let ram_blocks = memory::pc_layout(config.mem_size)
        .into_iter()
        .map(|(guest_addr, size)| cpr_format::RamBlockDesc {
            name: if guest_addr < memory::HIGH_RAM_START {
                "ram-below-4g".into()
            } else {
                "ram-above-4g".into()
            },
            guest_addr,
            size,
            backing: backing_of(&config.ram),
            page_size,
        })
        .collect();
    let mut devices = vec![
        DeviceDesc {
            id: SERIAL_ID.into(),
            kind: "uart-16550".into(),
        },
        DeviceDesc {
            id: "pm".into(),
            kind: "acpi-pm1a".into(),
        },
    ];
    devices.push(DeviceDesc {
        id: "debug-exit".into(),
        kind: "isa-debug-exit".into(),
    });
    // Assigned devices must match too: the new process adopts them by id.
    devices.extend(config.vfio.iter().map(|d| DeviceDesc {
        id: d.id.clone(),
        kind: match &d.iommufd {
            None => format!("vfio-pci,host={}", d.host),
            // The new process adopts an iommufd, not a container: it must be told so.
            Some(obj) => format!("vfio-pci,host={},iommufd={obj}", d.host),
        },
    }));
    MachineDesc {
        vcpus: u32::from(config.vcpus),
        ram_blocks,
        devices,
    }
}

/// The header of an image or hand-over written by this process.
pub fn header(config: &VmmConfig, mode: Mode) -> Header {
    let created_unix_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    Header {
        producer: Producer {
            name: "vmm".into(),
            version: crate::version::version(),
            build_id: crate::version::build_id().into(),
        },
        created_unix_ns,
        host: HostInfo {
            kernel_release: uname_release(),
            page_size: 4096,
        },
        mode,
        machine: machine_desc(config),
    }
}

/// RAM layout with file offsets (the fds themselves are in the manifest).
pub fn ram_state(descs: &[RamBlockDesc]) -> Vec<RamBlockState> {
    descs
        .iter()
        .map(|d| RamBlockState {
            name: if d.guest_addr < memory::HIGH_RAM_START {
                "ram-below-4g".into()
            } else {
                "ram-above-4g".into()
            },
            guest_addr: d.guest_addr,
            size: d.size,
            file_offset: d.file_offset,
        })
        .collect()
}

/// Writes the image of a stopped machine: header, one section per vCPU, irqchip, PIT,
/// clock, devices, the machine's run state and RAM layout, and the fd manifest. `vcpus`,
/// if given, are the vCPU sections already encoded (`VcpuEncoder`), one per vCPU in order.
pub fn write(
    path: &Path,
    header: Header,
    state: &MachineState,
    running: bool,
    manifest: &[FdEntry],
    vfio: Option<&VfioSaved>,
    vcpus: Option<Vec<EncodedSection>>,
) -> Result<(), ImageError> {
    let err = |source| ImageError::Write {
        path: path.display().to_string(),
        source: Box::new(source),
    };
    let w = build(header, state, running, manifest, vfio, vcpus).map_err(err)?;
    w.write_atomic(path).map_err(err)?;
    Ok(())
}

/// The image of a stopped machine as bytes (transfer mode sends it over the cpr channel;
/// the fds of `manifest` travel separately, with SCM_RIGHTS, in manifest order).
pub fn to_bytes(
    header: Header,
    state: &MachineState,
    running: bool,
    manifest: &[FdEntry],
    vfio: Option<&VfioSaved>,
) -> Result<Vec<u8>, cpr_format::Error> {
    build(header, state, running, manifest, vfio, None)?.to_bytes()
}

/// The image of [`write`], not yet written: reboot mode adds its RAM sections and regions.
pub fn writer(
    path: &Path,
    header: Header,
    state: &MachineState,
    running: bool,
    manifest: &[FdEntry],
    vfio: Option<&VfioSaved>,
) -> Result<ImageWriter, ImageError> {
    build(header, state, running, manifest, vfio, None).map_err(|source| ImageError::Write {
        path: path.display().to_string(),
        source: Box::new(source),
    })
}

fn build(
    header: Header,
    state: &MachineState,
    running: bool,
    manifest: &[FdEntry],
    vfio: Option<&VfioSaved>,
    vcpus: Option<Vec<EncodedSection>>,
) -> Result<ImageWriter, cpr_format::Error> {
    let mut w = ImageWriter::new(header);
    w.add_section(
        ONE,
        &MachineRunState {
            running,
            suspended: state.suspended,
            ram: ram_state(&state.ram),
        },
    )?;
    match vcpus.filter(|e| e.len() == state.vcpus.len()) {
        Some(encoded) => {
            for e in encoded {
                w.add_encoded(e)?;
            }
        }
        None => {
            for v in &state.vcpus {
                w.add_section(&v.index.to_string(), v)?;
            }
        }
    }
    w.add_section(ONE, &state.irqchip)?;
    w.add_section(ONE, &state.pit)?;
    w.add_section(ONE, &state.clock)?;
    w.add_section(SERIAL_ID, &state.serial)?;
    w.add_section(ONE, &state.pm)?;
    if let Some(rtc) = &state.rtc {
        w.add_section(ONE, rtc)?;
    }
    if let Some(vfio) = vfio {
        add_vfio(&mut w, vfio)?;
    }
    for e in manifest {
        w.add_fd(e.clone())?;
    }
    Ok(w)
}

/// Opens an image and checks it can be loaded here: signature, CRCs and versions (on
/// open), section compatibility with this binary, restart mode, and the same machine as
/// `config` describes (every difference on its own line).
pub fn open_checked(path: &Path, config: &VmmConfig) -> Result<Image, ImageError> {
    let p = path.display().to_string();
    let img = Image::open(path).map_err(|source| ImageError::Read {
        path: p.clone(),
        source: Box::new(source),
    })?;
    let report = img.check_compat(&reader_schema());
    if !report.is_compatible() {
        let findings = report
            .errors()
            .map(|f| f.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        return Err(ImageError::Incompatible { path: p, findings });
    }
    if img.header().mode != Mode::Restart {
        return Err(ImageError::WrongMode {
            path: p,
            mode: img.header().mode,
        });
    }
    let lines = machine_differences(&img.header().machine, &machine_desc(config));
    if !lines.is_empty() {
        return Err(ImageError::OtherMachine {
            path: p,
            lines: lines.join("\n"),
        });
    }
    Ok(img)
}

fn mib(n: u64) -> String {
    if n & ((1 << 20) - 1) == 0 {
        format!("{} MiB", n >> 20)
    } else {
        format!("{n} bytes")
    }
}

/// Every way the machine `saved` differs from `now`, one line each.
pub fn machine_differences(saved: &MachineDesc, now: &MachineDesc) -> Vec<String> {
    let mut out = Vec::new();
    if saved.vcpus != now.vcpus {
        out.push(format!(
            "vCPUs: image has {}, command line has {}",
            saved.vcpus, now.vcpus
        ));
    }
    let total = |d: &MachineDesc| d.ram_blocks.iter().map(|b| b.size).sum::<u64>();
    if total(saved) != total(now) {
        out.push(format!(
            "RAM size: image has {}, command line has {}",
            mib(total(saved)),
            mib(total(now))
        ));
    } else {
        for (a, b) in saved.ram_blocks.iter().zip(&now.ram_blocks) {
            if a.guest_addr != b.guest_addr || a.size != b.size {
                out.push(format!(
                    "RAM block {}: image has {} at {:#x}, command line has {} at {:#x}",
                    a.name,
                    mib(a.size),
                    a.guest_addr,
                    mib(b.size),
                    b.guest_addr
                ));
            }
        }
    }
    if let (Some(a), Some(b)) = (saved.ram_blocks.first(), now.ram_blocks.first()) {
        if a.backing != b.backing {
            out.push(format!(
                "RAM backing: image has {:?}, command line has {:?}",
                a.backing, b.backing
            ));
        }
    }
    for d in &saved.devices {
        match now.devices.iter().find(|n| n.id == d.id) {
            None => out.push(format!(
                "device {} ({}): in the image, not on the command line",
                d.id, d.kind
            )),
            Some(n) if n.kind != d.kind => out.push(format!(
                "device {}: image has {}, command line has {}",
                d.id, d.kind, n.kind
            )),
            Some(_) => {}
        }
    }
    for n in &now.devices {
        if !saved.devices.iter().any(|d| d.id == n.id) {
            out.push(format!(
                "device {} ({}): on the command line, not in the image",
                n.id, n.kind
            ));
        }
    }
    out
}

/// Rebuilds the machine state from a checked image; also says whether the guest ran.
pub fn machine_state(img: &Image) -> Result<(MachineState, bool), ImageError> {
    let p = img
        .path()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let read = |source| ImageError::Read {
        path: p.clone(),
        source: Box::new(source),
    };
    let missing = |s: &str| ImageError::Missing {
        path: p.clone(),
        section: s.to_string(),
    };
    let m: MachineRunState = img
        .section(ONE)
        .map_err(read)?
        .ok_or_else(|| missing("machine"))?;
    let mut vcpus: Vec<VcpuState> = img
        .sections_of::<VcpuState>()
        .map_err(read)?
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    vcpus.sort_by_key(|v| v.index);
    let state = MachineState {
        ram: m
            .ram
            .iter()
            .map(|b| RamBlockDesc {
                guest_addr: b.guest_addr,
                size: b.size,
                file_offset: b.file_offset,
            })
            .collect(),
        vcpus,
        irqchip: img
            .section(ONE)
            .map_err(read)?
            .ok_or_else(|| missing("kvm.irqchip"))?,
        pit: img
            .section(ONE)
            .map_err(read)?
            .ok_or_else(|| missing("kvm.pit"))?,
        clock: img
            .section(ONE)
            .map_err(read)?
            .ok_or_else(|| missing("kvm.clock"))?,
        serial: img
            .section(SERIAL_ID)
            .map_err(read)?
            .ok_or_else(|| missing("serial.uart8250"))?,
        pm: img
            .section(ONE)
            .map_err(read)?
            .ok_or_else(|| missing("pm"))?,
        // Optional: absent from images written before the RTC was saved.
        rtc: img.section(ONE).map_err(read)?,
        suspended: m.suspended,
    };
    Ok((state, m.running))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(mem: u64, vcpus: u8) -> VmmConfig {
        match crate::cli::parse_args(
            [
                "-m",
                &format!("{}M", mem >> 20),
                "-smp",
                &vcpus.to_string(),
                "-machine",
                "memfd-alloc=on",
                "-kernel",
                "/dev/null",
            ]
            .map(String::from),
        ) {
            Ok(crate::cli::Action::Run(c)) => *c,
            other => panic!("{other:?}"),
        }
    }

    /// The state of a real (KVM) machine, unbooted: enough for the image's sections.
    fn saved_state(c: &VmmConfig) -> MachineState {
        let (tx, _rx) = std::sync::mpsc::channel();
        let m = crate::machine::Machine::new_unbooted(
            &c.machine_config(),
            Box::new(std::io::sink()),
            tx,
        )
        .expect("a KVM machine (needs /dev/kvm)");
        m.save_state().expect("saving an unbooted machine")
    }

    fn through_bytes(c: &VmmConfig, state: &MachineState) -> MachineState {
        let bytes =
            to_bytes(header(c, Mode::Restart), state, true, &[], None).expect("image serialises");
        let img = Image::from_bytes(&bytes).expect("image parses");
        machine_state(&img).expect("image loads").0
    }

    #[test]
    fn rtc_section_round_trips_and_is_optional() {
        let c = config(16 << 20, 1);
        let mut state = saved_state(&c);
        let mut rtc = state.rtc.clone().expect("save includes the RTC");
        let mut cmos = rtc.cmos.to_vec();
        cmos[0x40] = 0xab;
        rtc.cmos = cpr_format::Bytes::from(cmos);
        state.rtc = Some(rtc);
        assert_eq!(through_bytes(&c, &state), state);

        // An image written before the RTC was saved has no such section: it still loads,
        // and the compatibility check does not refuse it.
        state.rtc = None;
        let bytes = to_bytes(header(&c, Mode::Restart), &state, true, &[], None).unwrap();
        let img = Image::from_bytes(&bytes).unwrap();
        assert!(img.schema().get("rtc.mc146818").is_none());
        assert!(cpr_format::compat::check(img.schema(), &reader_schema()).is_compatible());
        assert_eq!(machine_state(&img).unwrap().0, state);
    }

    /// The vCPU sections from `VcpuEncoder`'s helper make the same image as those the
    /// writer encodes itself; a count that does not match is not used.
    #[test]
    fn vcpu_sections_encoded_by_the_helper_make_the_same_image() {
        let c = config(16 << 20, 3);
        let state = saved_state(&c);
        // One header: it carries the time it was made.
        let h = header(&c, Mode::Restart);
        let image_with = |vcpus| {
            build(h.clone(), &state, true, &[], None, vcpus)
                .and_then(|w| w.to_bytes())
                .unwrap()
        };
        let mut encoder = super::super::vcpu_encoder::VcpuEncoder::start();
        for v in &state.vcpus {
            encoder.send(v);
        }
        let encoded = encoder.finish().expect("the helper encodes every vCPU");
        assert_eq!(encoded.len(), 3);
        assert_eq!(image_with(Some(encoded)), image_with(None));
        let mut short = super::super::vcpu_encoder::VcpuEncoder::start();
        short.send(&state.vcpus[0]);
        let one = short.finish().unwrap();
        assert_eq!(image_with(Some(one)), image_with(None));
    }

    #[test]
    fn differences_are_listed_one_per_line() {
        let a = machine_desc(&config(256 << 20, 1));
        assert!(machine_differences(&a, &a).is_empty());
        let b = machine_desc(&config(512 << 20, 2));
        let d = machine_differences(&a, &b);
        assert_eq!(
            d,
            vec![
                "vCPUs: image has 1, command line has 2".to_string(),
                "RAM size: image has 256 MiB, command line has 512 MiB".to_string(),
            ]
        );
    }
}
