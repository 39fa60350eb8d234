//! The command line, spelled as QEMU spells it, parsed into a serialisable [`VmmConfig`].
//!
//! The config is plain data on purpose: a live update must compare the new process's command
//! line with the old one (same machine?) and know which chardevs and monitors own fds.

mod opts;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::chardev::{ChardevBackendSpec, ChardevSpec};
use crate::machine::{MachineConfig, RamBackendConfig};
pub use opts::{parse_bool, parse_size, Opts};

/// Guest RAM as the command line described it (a serialisable mirror of [`RamBackendConfig`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RamSpec {
    Anonymous,
    Memfd { id: Option<String>, hugetlb: bool },
    File { id: String, path: PathBuf },
}

impl From<&RamSpec> for RamBackendConfig {
    fn from(spec: &RamSpec) -> Self {
        match spec {
            RamSpec::Anonymous => RamBackendConfig::Anonymous,
            RamSpec::Memfd { hugetlb, .. } => RamBackendConfig::Memfd { hugetlb: *hugetlb },
            RamSpec::File { path, .. } => RamBackendConfig::File { path: path.clone() },
        }
    }
}

/// Which protocol a monitor speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MonitorMode {
    Hmp,
    Qmp,
}

/// A monitor attached to a chardev.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorSpec {
    pub chardev: String,
    pub mode: MonitorMode,
}

/// Everything the command line describes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmConfig {
    pub name: Option<String>,
    pub mem_size: u64,
    pub vcpus: u8,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub append: Option<String>,
    pub ram: RamSpec,
    /// `-S`: stay in "prelaunch" until `cont`.
    pub start_paused: bool,
    /// `-only-cpr-capable`: stored; enforced by the live-update work.
    pub only_cpr_capable: bool,
    /// Chardevs in command-line order (explicit and implied by -serial/-monitor/-qmp).
    pub chardevs: Vec<ChardevSpec>,
    /// The chardev id the UART writes to, if any.
    pub serial: Option<String>,
    pub monitors: Vec<MonitorSpec>,
    /// `-device vfio-pci,host=BDF[,id=ID]` in command-line order.
    #[serde(default)]
    pub vfio: Vec<crate::vfio::VfioDeviceConfig>,
    /// `-incoming FILE`: load this reboot-mode image at start-up.
    pub incoming: Option<PathBuf>,
    /// With `-incoming FILE` and no machine options: the machine (RAM, vCPUs, kernel) comes
    /// from the image; the fields above hold placeholders until then.
    pub machine_from_image: bool,
    /// `-incoming cpr:unix:PATH`: wait on PATH for a cpr-transfer from the running vmm.
    #[serde(default)]
    pub incoming_transfer: Option<PathBuf>,
}

impl VmmConfig {
    /// What the machine needs, as the machine's contract spells it.
    pub fn machine_config(&self) -> MachineConfig {
        MachineConfig {
            name: self.name.clone(),
            mem_size: self.mem_size,
            vcpus: self.vcpus,
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            cmdline: self.append.clone(),
            ram: (&self.ram).into(),
        }
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Run(Box<VmmConfig>),
    Version,
    Help,
    /// `--dump-schema`: print the schema of every section this binary writes and reads.
    DumpSchema,
}

/// A command-line error: printed as one line `vmm: <message>`, exit status 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CliError(pub String);

const DEFAULT_MEM: u64 = 128 << 20;
const MAX_VCPUS: u64 = 255;

/// Options taking an argument, with QEMU's spelling (a leading `--` is accepted too).
const WITH_ARG: &[&str] = &[
    "m", "smp", "kernel", "initrd", "append", "name", "machine", "M", "object", "chardev",
    "serial", "monitor", "qmp", "accel", "display", "device", "incoming",
];

pub const HELP: &str = "\
usage: vmm [options]

Standard options:
-h or -help          display this help and exit
-version             display version information and exit
-dump-schema         print the schema of every saved section (JSON) and exit
-name NAME           set the name of the guest
-m [size=]MEGS[k|M|G] configure guest RAM (default 128M)
-smp [cpus=]N        set the number of vCPUs
-machine memfd-alloc=on|off,memory-backend=ID
                     back guest RAM with a memfd, or with the named -object
-object memory-backend-memfd,id=ID,size=SIZE,share=on[,hugetlb=on]
-object memory-backend-file,id=ID,size=SIZE,mem-path=PATH,share=on
-kernel FILE         guest kernel (test guest ELF or Linux bzImage)
-initrd FILE         initial ram disk
-append CMDLINE      kernel command line
-enable-kvm, -accel kvm, -nographic, -display none
                     accepted for habit: this VMM always uses KVM and has no display
-S                   do not start the guest (state 'prelaunch'; use 'cont')
-only-cpr-capable    allow only devices that survive a live update
-incoming FILE       load a reboot-mode image (cpr-save FILE reboot) at start-up; without
                     machine options (-m, -smp, -kernel, -object, ...) the image's are used.
                     In a command line given to cpr-exec: save the guest to FILE, exec,
                     and load FILE at once (a restart-mode update in one command)
-incoming cpr:unix:PATH
                     wait on PATH (created 0600) for a cpr-transfer from the running
                     vmm, then run its guest; QEMU's spelling
                     '{\"channel-type\":\"cpr\",\"addr\":{\"transport\":\"socket\",
                     \"type\":\"unix\",\"path\":PATH}}' is accepted too;
                     '-incoming defer' is ignored

Character devices:
-chardev stdio|null|pty,id=ID
-chardev file,id=ID,path=PATH
-chardev socket,id=ID,path=PATH[,server=on|off][,wait=on|off]
-chardev socket,id=ID,host=HOST,port=PORT[,server=on|off][,wait=on|off]
-serial chardev:ID|stdio|null|pty|none
-monitor chardev:ID|stdio|null|pty|none   human monitor (HMP)
-qmp unix:PATH,server=on,wait=off         QMP monitor

Devices:
-object iommufd,id=ID
                     an iommufd (/dev/iommu) for -device vfio-pci,iommufd=ID
-device vfio-pci,host=[DOMAIN:]BUS:DEV.FN[,id=ID][,iommufd=ID]
                     assign a host PCI function bound to vfio-pci (through the
                     type1 container, or through the named iommufd object)
";

struct MemObject {
    size: u64,
    spec: RamSpec,
}

fn err(s: impl Into<String>) -> CliError {
    CliError(s.into())
}

/// Parses the arguments after argv[0].
pub fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Action, CliError> {
    let mut b = Builder::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let Some(name) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            // QEMU treats a bare word as the disk image; we have no disks.
            return Err(err(format!(
                "{arg}: a bare argument is not supported (no disks)"
            )));
        };
        if name.is_empty() {
            return Err(err(format!("{arg}: invalid option")));
        }
        let value = if WITH_ARG.contains(&name) {
            match args.next() {
                Some(v) => Some(v),
                None => return Err(err(format!("-{name}: requires an argument"))),
            }
        } else {
            None
        };
        match (name, value) {
            ("h" | "help", _) => return Ok(Action::Help),
            ("version", _) => return Ok(Action::Version),
            ("dump-schema", _) => return Ok(Action::DumpSchema),
            ("S", _) => b.start_paused = true,
            ("only-cpr-capable", _) => b.only_cpr_capable = true,
            // Habits from QEMU that mean what this VMM always does: KVM, no display.
            ("enable-kvm", _) => {}
            ("nographic", _) => b.nographic = true,
            (opt, Some(v)) => b
                .option(opt, &v)
                .map_err(|e| err(format!("-{opt} {v}: {}", e.0)))?,
            (opt, None) => return Err(err(format!("-{opt}: invalid option"))),
        }
    }
    b.finish().map(|c| Action::Run(Box::new(c)))
}

#[derive(Default)]
struct Builder {
    name: Option<String>,
    mem_size: Option<u64>,
    vcpus: Option<u8>,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    append: Option<String>,
    memfd_alloc: bool,
    memory_backend: Option<String>,
    objects: BTreeMap<String, MemObject>,
    start_paused: bool,
    only_cpr_capable: bool,
    nographic: bool,
    chardevs: Vec<ChardevSpec>,
    serial: Option<Option<String>>,
    monitors: Vec<MonitorSpec>,
    vfio: Vec<crate::vfio::VfioDeviceConfig>,
    /// `-object iommufd` ids.
    iommufds: Vec<String>,
    incoming: Option<PathBuf>,
    /// Some option describing the machine was given (-incoming compares it with the image).
    machine_opts: bool,
    incoming_transfer: Option<PathBuf>,
}

/// A PCI address as sysfs spells it (`0000:00:03.0`), from `[DOMAIN:]BUS:DEV.FN`.
fn parse_bdf(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (domain, bus, devfn) = match parts.as_slice() {
        [b, df] => ("0000", *b, *df),
        [d, b, df] => (*d, *b, *df),
        _ => return None,
    };
    let (dev, func) = devfn.split_once('.')?;
    let hex = |t: &str, max: u32| {
        u32::from_str_radix(t, 16)
            .ok()
            .filter(|v| *v <= max && !t.is_empty())
    };
    Some(format!(
        "{:04x}:{:02x}:{:02x}.{:x}",
        hex(domain, 0xffff)?,
        hex(bus, 0xff)?,
        hex(dev, 0x1f)?,
        hex(func, 7)?
    ))
}

impl Builder {
    fn device(&mut self, v: &str) -> Result<(), CliError> {
        let o = Opts::parse(v, Some("driver"));
        let driver = o.implied.as_deref().or(o.get("driver")).unwrap_or("");
        if driver != "vfio-pci" {
            return Err(err(format!(
                "'{driver}' is not a valid device model name (only vfio-pci)"
            )));
        }
        if let Some(k) = o.unknown_key(&["driver", "host", "id", "iommufd"]) {
            return Err(err(format!("Invalid parameter '{k}'")));
        }
        let host = o
            .get("host")
            .ok_or_else(|| err("Parameter 'host' is missing"))?;
        let host = parse_bdf(host).ok_or_else(|| {
            err(format!(
                "Parameter 'host' expects a PCI address [DOMAIN:]BUS:DEV.FN, got '{host}'"
            ))
        })?;
        let id = o
            .get("id")
            .map(str::to_string)
            .unwrap_or_else(|| format!("vfio{}", self.vfio.len()));
        if self.vfio.iter().any(|d| d.id == id) {
            return Err(err(format!("Duplicate ID '{id}' for device")));
        }
        if self.vfio.iter().any(|d| d.host == host) {
            return Err(err(format!("host device {host} is already assigned")));
        }
        let iommufd = o.get("iommufd").map(str::to_string);
        self.vfio
            .push(crate::vfio::VfioDeviceConfig { host, id, iommufd });
        Ok(())
    }

    fn option(&mut self, opt: &str, v: &str) -> Result<(), CliError> {
        if matches!(
            opt,
            "m" | "smp" | "kernel" | "initrd" | "append" | "machine" | "M" | "object"
        ) {
            self.machine_opts = true;
        }
        match opt {
            // A cpr channel (transfer mode) or a reboot-mode image file.
            "incoming" if crate::cpr::transfer::is_channel(v) => {
                if let Some(p) = crate::cpr::transfer::parse_incoming(v).map_err(err)? {
                    if self.incoming_transfer.is_some() {
                        return Err(err("only one cpr channel may be given"));
                    }
                    self.incoming_transfer = Some(p);
                }
            }
            "incoming" => self.incoming = Some(PathBuf::from(v)),
            "m" => {
                let o = Opts::parse(v, Some("size"));
                if let Some(k) = o.unknown_key(&["size", "slots", "maxmem"]) {
                    return Err(err(format!("Invalid parameter '{k}'")));
                }
                let size = o.implied.as_deref().or(o.get("size")).unwrap_or("");
                let bytes = parse_size(size, 1 << 20)
                    .filter(|b| *b > 0)
                    .ok_or_else(|| {
                        err("Parameter 'size' expects a non-negative number below 2^64")
                    })?;
                self.mem_size = Some(bytes);
            }
            "smp" => {
                let o = Opts::parse(v, Some("cpus"));
                if let Some(k) = o.unknown_key(&["cpus", "maxcpus", "sockets", "cores", "threads"])
                {
                    return Err(err(format!("Invalid parameter '{k}'")));
                }
                let n = o.implied.as_deref().or(o.get("cpus")).unwrap_or("");
                let n: u64 = n
                    .parse()
                    .map_err(|_| err("Parameter 'cpus' expects a number"))?;
                if n == 0 || n > MAX_VCPUS {
                    return Err(err(format!(
                        "Invalid SMP CPUs {n}. The max CPUs supported by machine 'vmm' is {MAX_VCPUS}"
                    )));
                }
                self.vcpus = Some(n as u8);
            }
            "kernel" => self.kernel = Some(PathBuf::from(v)),
            "initrd" => self.initrd = Some(PathBuf::from(v)),
            "append" => self.append = Some(v.to_string()),
            "name" => {
                let o = Opts::parse(v, Some("guest"));
                if let Some(k) = o.unknown_key(&["guest", "process", "debug-threads"]) {
                    return Err(err(format!("Invalid parameter '{k}'")));
                }
                self.name = o
                    .implied
                    .clone()
                    .or_else(|| o.get("guest").map(str::to_string));
            }
            "machine" | "M" => self.machine(v)?,
            "accel" => {
                let o = Opts::parse(v, Some("accel"));
                let a = o.implied.as_deref().or(o.get("accel")).unwrap_or("");
                if a != "kvm" {
                    return Err(err(format!(
                        "accelerator '{a}' is not supported (kvm only)"
                    )));
                }
            }
            "display" => {
                if Opts::parse(v, Some("type")).implied.as_deref() != Some("none") {
                    return Err(err("only '-display none' is supported (no display)"));
                }
            }
            "object" => self.object(v)?,
            "chardev" => {
                let spec = ChardevSpec::parse(v).map_err(err)?;
                if self.chardevs.iter().any(|c| c.id == spec.id) {
                    return Err(err(format!(
                        "attempt to add duplicate property '{}'",
                        spec.id
                    )));
                }
                self.chardevs.push(spec);
            }
            "serial" => {
                let id = self.frontend_chardev(v, "serial")?;
                if self.serial.is_some() {
                    return Err(err("only one -serial is supported"));
                }
                self.serial = Some(id);
            }
            "monitor" => {
                if let Some(id) = self.frontend_chardev(v, "compat_monitor")? {
                    self.monitors.push(MonitorSpec {
                        chardev: id,
                        mode: MonitorMode::Hmp,
                    });
                }
            }
            "qmp" => {
                if let Some(id) = self.frontend_chardev(v, "compat_monitor")? {
                    self.monitors.push(MonitorSpec {
                        chardev: id,
                        mode: MonitorMode::Qmp,
                    });
                }
            }
            "device" => self.device(v)?,
            _ => return Err(err("invalid option")),
        }
        Ok(())
    }

    fn machine(&mut self, v: &str) -> Result<(), CliError> {
        let o = Opts::parse(v, Some("type"));
        if let Some(t) = o.implied.as_deref().or(o.get("type")) {
            if !matches!(t, "pc" | "q35" | "microvm" | "vmm") {
                return Err(err(format!("unsupported machine type '{t}'")));
            }
        }
        if let Some(k) = o.unknown_key(&["type", "memfd-alloc", "memory-backend", "accel"]) {
            return Err(err(format!("Invalid parameter '{k}'")));
        }
        if let Some(a) = o.get("accel") {
            if a != "kvm" {
                return Err(err(format!(
                    "accelerator '{a}' is not supported (kvm only)"
                )));
            }
        }
        if let Some(m) = o.get("memfd-alloc") {
            self.memfd_alloc = parse_bool("memfd-alloc", m).map_err(err)?;
        }
        if let Some(id) = o.get("memory-backend") {
            self.memory_backend = Some(id.to_string());
        }
        Ok(())
    }

    fn object(&mut self, v: &str) -> Result<(), CliError> {
        let o = Opts::parse(v, Some("qom-type"));
        let ty = o
            .implied
            .clone()
            .or_else(|| o.get("qom-type").map(str::to_string))
            .ok_or_else(|| err("Parameter 'qom-type' is missing"))?;
        let id = o
            .get("id")
            .ok_or_else(|| err("Parameter 'id' is missing"))?
            .to_string();
        if ty == "iommufd" {
            // QEMU's fd= (an iommufd opened by a management layer) is not supported.
            if let Some(k) = o.unknown_key(&["qom-type", "id"]) {
                return Err(err(format!("Property '{ty}.{k}' not found")));
            }
            if self.objects.contains_key(&id) || self.iommufds.contains(&id) {
                return Err(err(format!("attempt to add duplicate property '{id}'")));
            }
            self.iommufds.push(id);
            return Ok(());
        }
        let allowed: &[&str] = match ty.as_str() {
            "memory-backend-memfd" => &[
                "qom-type",
                "id",
                "size",
                "share",
                "hugetlb",
                "hugetlbsize",
                "seal",
            ],
            "memory-backend-file" => &["qom-type", "id", "size", "share", "mem-path"],
            _ => return Err(err(format!("invalid object type: {ty}"))),
        };
        if let Some(k) = o.unknown_key(allowed) {
            return Err(err(format!("Property '{ty}.{k}' not found")));
        }
        let size = o
            .get("size")
            .ok_or_else(|| err("can't create backend with size 0"))?;
        let size = parse_size(size, 1)
            .ok_or_else(|| err("Parameter 'size' expects a non-negative number below 2^64"))?;
        if size == 0 {
            return Err(err("can't create backend with size 0"));
        }
        // Private (share=off) backends cannot be preserved across a live update, and the
        // machine maps memfd/file RAM shared: refuse rather than silently change semantics.
        let share = parse_bool("share", o.get("share").unwrap_or("off")).map_err(err)?;
        if !share {
            return Err(err(format!(
                "{ty} '{id}': share=off is not supported, use share=on"
            )));
        }
        let spec = if ty == "memory-backend-memfd" {
            let hugetlb = parse_bool("hugetlb", o.get("hugetlb").unwrap_or("off")).map_err(err)?;
            RamSpec::Memfd {
                id: Some(id.clone()),
                hugetlb,
            }
        } else {
            let path = o
                .get("mem-path")
                .ok_or_else(|| err("Parameter 'mem-path' is missing"))?;
            RamSpec::File {
                id: id.clone(),
                path: PathBuf::from(path),
            }
        };
        if self.iommufds.contains(&id)
            || self
                .objects
                .insert(id.clone(), MemObject { size, spec })
                .is_some()
        {
            return Err(err(format!("attempt to add duplicate property '{id}'")));
        }
        Ok(())
    }

    /// Resolves the argument of -serial/-monitor/-qmp to a chardev id, creating the implied
    /// chardev for the shorthand spellings (`stdio`, `unix:PATH,server=on,wait=off`, ...).
    fn frontend_chardev(&mut self, v: &str, label: &str) -> Result<Option<String>, CliError> {
        // `mon:BACKEND`: the serial port and an HMP monitor share one chardev (QEMU's mux).
        let (v, mux) = match v.strip_prefix("mon:") {
            Some(rest) => (rest, true),
            None => (v, false),
        };
        if v == "none" {
            return Ok(None);
        }
        if let Some(id) = v.strip_prefix("chardev:") {
            return Ok(Some(id.to_string()));
        }
        let id = if label == "serial" {
            "serial0".to_string()
        } else {
            let n = self
                .chardevs
                .iter()
                .filter(|c| c.id.starts_with(label))
                .count();
            format!("{label}{n}")
        };
        let backend = ChardevSpec::parse_shorthand(v).map_err(err)?;
        self.chardevs.push(ChardevSpec {
            id: id.clone(),
            backend,
            mux,
        });
        if mux && label == "serial" {
            self.monitors.push(MonitorSpec {
                chardev: id.clone(),
                mode: MonitorMode::Hmp,
            });
        }
        Ok(Some(id))
    }

    fn finish(self) -> Result<VmmConfig, CliError> {
        // With -incoming, a missing -kernel is the image's (checked when it is read).
        let kernel = match (self.kernel, &self.incoming) {
            (Some(k), _) => {
                check_readable(&k, "kernel")?;
                k
            }
            (None, Some(_)) => PathBuf::new(),
            (None, None) => return Err(err("no kernel given: use -kernel FILE")),
        };
        if let Some(initrd) = &self.initrd {
            check_readable(initrd, "initrd")?;
        }
        let (ram, mem_size) = match &self.memory_backend {
            Some(id) => {
                let obj = self
                    .objects
                    .get(id)
                    .ok_or_else(|| err(format!("Memory backend '{id}' not found")))?;
                if self.mem_size.is_some_and(|m| m != obj.size) {
                    return Err(err(
                        "Machine memory size does not match the size of the memory backend",
                    ));
                }
                (obj.spec.clone(), obj.size)
            }
            None if self.memfd_alloc => (
                RamSpec::Memfd {
                    id: None,
                    hugetlb: false,
                },
                self.mem_size.unwrap_or(DEFAULT_MEM),
            ),
            None => (RamSpec::Anonymous, self.mem_size.unwrap_or(DEFAULT_MEM)),
        };
        let mut chardevs = self.chardevs;
        let mut serial = self.serial;
        let mut monitors = self.monitors;
        // With no -serial the UART talks on stdio, unless a monitor already owns stdio. With
        // -nographic the monitor shares it too, as in QEMU (Ctrl-A c switches).
        if serial.is_none() {
            let stdio_taken = chardevs
                .iter()
                .any(|c| matches!(c.backend, ChardevBackendSpec::Stdio));
            if !stdio_taken {
                let mux = self.nographic && monitors.is_empty();
                chardevs.push(ChardevSpec {
                    id: "serial0".into(),
                    backend: ChardevBackendSpec::Stdio,
                    mux,
                });
                serial = Some(Some("serial0".into()));
                if mux {
                    monitors.push(MonitorSpec {
                        chardev: "serial0".into(),
                        mode: MonitorMode::Hmp,
                    });
                }
            }
        }
        let serial = serial.flatten();
        check_iommufd_use(&self.vfio, &self.iommufds)?;
        // Each chardev has one user, except a mux=on one: the serial port plus one HMP monitor.
        for c in &chardevs {
            let serial_users = usize::from(serial.as_deref() == Some(c.id.as_str()));
            let hmp = monitors
                .iter()
                .filter(|m| m.chardev == c.id && m.mode == MonitorMode::Hmp)
                .count();
            let qmp = monitors
                .iter()
                .filter(|m| m.chardev == c.id && m.mode == MonitorMode::Qmp)
                .count();
            let users = serial_users + hmp + qmp;
            if users > 1 && !(c.mux && qmp == 0 && serial_users == 1 && hmp == 1) {
                return Err(err(format!("Device '{}' is in use", c.id)));
            }
        }
        let users = serial.iter().chain(monitors.iter().map(|m| &m.chardev));
        if let Some(id) = users
            .into_iter()
            .find(|id| !chardevs.iter().any(|c| &c.id == *id))
        {
            return Err(err(format!("chardev '{id}' not found")));
        }
        if chardevs
            .iter()
            .filter(|c| matches!(c.backend, ChardevBackendSpec::Stdio))
            .count()
            > 1
        {
            return Err(err("cannot use stdio by multiple character devices"));
        }
        Ok(VmmConfig {
            name: self.name,
            mem_size,
            vcpus: self.vcpus.unwrap_or(1),
            kernel,
            initrd: self.initrd,
            append: self.append,
            ram,
            start_paused: self.start_paused,
            only_cpr_capable: self.only_cpr_capable,
            chardevs,
            serial,
            monitors,
            vfio: self.vfio,
            machine_from_image: self.incoming.is_some() && !self.machine_opts,
            incoming_transfer: self.incoming_transfer,
            incoming: self.incoming,
        })
    }
}

/// Each `iommufd=` names an `-object iommufd`, and all assigned devices share one IOMMU
/// back-end: one iommufd, or the type1 container.
fn check_iommufd_use(
    vfio: &[crate::vfio::VfioDeviceConfig],
    iommufds: &[String],
) -> Result<(), CliError> {
    for d in vfio {
        if let Some(obj) = &d.iommufd {
            if !iommufds.contains(obj) {
                return Err(err(format!(
                    "Property 'vfio-pci.iommufd' can't find value '{obj}'"
                )));
            }
        }
    }
    if let (Some(a), Some(b)) = (
        vfio.first(),
        vfio.iter().find(|d| d.iommufd != vfio[0].iommufd),
    ) {
        let name = |d: &crate::vfio::VfioDeviceConfig| {
            d.iommufd
                .as_ref()
                .map_or("the type1 container".to_string(), |o| {
                    format!("iommufd '{o}'")
                })
        };
        return Err(err(format!(
            "vfio-pci devices '{}' ({}) and '{}' ({}) must use the same IOMMU back-end",
            a.id,
            name(a),
            b.id,
            name(b)
        )));
    }
    Ok(())
}

fn check_readable(path: &PathBuf, what: &str) -> Result<(), CliError> {
    match std::fs::File::open(path) {
        Ok(_) => Ok(()),
        Err(e) => {
            let e = std::io::Error::from_raw_os_error(e.raw_os_error().unwrap_or(libc::EIO));
            let msg = e.to_string();
            // io::Error adds " (os error N)"; QEMU prints strerror alone.
            let msg = msg.split(" (os error").next().unwrap_or(&msg);
            Err(err(format!(
                "could not load {what} '{}': {msg}",
                path.display()
            )))
        }
    }
}

#[cfg(test)]
mod tests;
