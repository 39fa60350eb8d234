//! `cpr-tool verify`: integrity, internal consistency, and loadability by a target.

use std::collections::{HashMap, HashSet};

use cpr_format::{DeviceDesc, FdEntry, FdKind, Image, Mode, RamBacking, RamBlockDesc};
use serde::Serialize;

use crate::cli::VerifyArgs;
use crate::compat::{self, Bridged, Direction};
use crate::error::{Outcome, ToolError};
use crate::load;
use crate::output::{self, emit, table, Report};
use crate::renames::Renames;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Warning,
    Error,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub check: &'static str,
    pub status: Status,
    /// The problems joined with "; " (or what was checked, when ok).
    pub detail: String,
    /// Each problem found, one per entry.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

fn failed(check: &'static str, status: Status, problems: Vec<String>) -> Check {
    Check {
        check,
        status,
        detail: problems.join("; "),
        problems,
    }
}

fn ok(check: &'static str, detail: String) -> Check {
    Check {
        check,
        status: Status::Ok,
        detail,
        problems: Vec::new(),
    }
}

#[derive(Serialize)]
struct Target {
    /// The version asked for, or the schema file given.
    reader: String,
    #[serde(flatten)]
    direction: Direction,
    renamed: Vec<Bridged>,
}

#[derive(Serialize)]
struct VerifyReport {
    file: String,
    ok: bool,
    checks: Vec<Check>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<Target>,
}

fn status_word(s: Status) -> &'static str {
    match s {
        Status::Ok => "ok",
        Status::Warning => "warning",
        Status::Error => "FAILED",
    }
}

impl Report for VerifyReport {
    fn human(&self) -> String {
        let mut out = String::new();
        let mut t = table(&["check", "result", "detail"]);
        for c in &self.checks {
            // One problem per line: a long joined sentence is unreadable in a table.
            let detail = if c.problems.is_empty() {
                c.detail.clone()
            } else {
                c.problems.join("\n")
            };
            t.add_row(vec![
                c.check.to_owned(),
                status_word(c.status).to_owned(),
                detail,
            ]);
        }
        output::section(&mut out, &format!("Integrity of {}", self.file), &t);
        if let Some(target) = &self.target {
            out.push('\n');
            let t = target.direction.table(false);
            let title = format!(
                "Can {} load it? {}",
                target.reader,
                if target.direction.compatible {
                    "yes"
                } else {
                    "no"
                }
            );
            output::section(&mut out, &title, &t);
            for b in &target.renamed {
                out.push_str(&format!(
                    "  matched through the renames table: {}{} was {}\n",
                    b.section,
                    b.field
                        .as_ref()
                        .map(|f| format!(" field {f}"))
                        .unwrap_or_default(),
                    b.from
                ));
            }
        }
        out.push_str(if self.ok {
            "\nVerdict: ok\n"
        } else {
            "\nVerdict: FAILED\n"
        });
        out
    }
}

/// What `Image::open` and `verify_regions` already established, stated per check.
fn integrity(img: &Image) -> Vec<Check> {
    let n = img.sections().len();
    vec![
        ok(
            "signature",
            "cpr image signature and self-describe tag".into(),
        ),
        ok(
            "format version",
            format!("{} (readable)", img.format_version()),
        ),
        ok(
            "metadata crc",
            format!("{} bytes of metadata", img.metadata_len()),
        ),
        ok("section crcs", format!("{n} section{}", plural(n))),
        ok(
            "trailer",
            format!("{n} sections, file length {} bytes", img.file_len()),
        ),
        ok(
            "limits",
            "metadata, payload sizes and nesting within limits".into(),
        ),
        ok(
            "schema",
            format!(
                "{} section schema{} match their sections",
                img.schema().sections.len(),
                plural(img.schema().sections.len())
            ),
        ),
        ok(
            "regions",
            format!(
                "{} region{}, digests match, padding zero",
                img.regions().len(),
                plural(img.regions().len())
            ),
        ),
    ]
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Every payload against its embedded schema (opening does not decode payloads).
fn payload_check(img: &Image) -> Check {
    match img.verify_payloads() {
        Ok(()) => ok(
            "payloads",
            "every section payload matches its schema".into(),
        ),
        Err(e) => failed("payloads", Status::Error, vec![crate::error::one_line(&e)]),
    }
}

fn is_ram_fd(k: &FdKind) -> bool {
    matches!(k, FdKind::Memfd | FdKind::RamFile)
}

/// The vmm's section listing where reboot-mode RAM is kept (docs/FORMAT.md).
const REBOOT_RAM: &str = "reboot.ram";

/// The RAM block a region named `ram.BLOCK.OFFSET` (OFFSET in hex) or `ram.BLOCK` (the
/// whole block) belongs to, with the offset; block names may contain dots.
fn region_block<'a>(name: &str, blocks: &'a [RamBlockDesc]) -> Option<&'a RamBlockDesc> {
    region_place(name, blocks).map(|(b, _)| b)
}

fn region_place<'a>(
    name: &str,
    blocks: &'a [RamBlockDesc],
) -> Option<(&'a RamBlockDesc, Option<u64>)> {
    let rest = name.strip_prefix("ram.")?;
    if let Some(b) = blocks.iter().find(|b| b.name == rest) {
        return Some((b, None));
    }
    let (block, offset) = rest.rsplit_once('.')?;
    let offset = u64::from_str_radix(offset, 16).ok()?;
    blocks
        .iter()
        .find(|b| b.name == block)
        .map(|b| (b, Some(offset)))
}

/// Every `ram.` region belongs to a block and lies inside it; a whole-block region
/// (`ram.BLOCK`) holds exactly the block.
fn region_problems(img: &Image) -> Vec<String> {
    let blocks = &img.header().machine.ram_blocks;
    let mut problems = Vec::new();
    for r in img.regions().iter().filter(|r| r.name.starts_with("ram.")) {
        match region_place(&r.name, blocks) {
            None => problems.push(format!(
                "region {}: names no RAM block (ram.BLOCK or ram.BLOCK.OFFSET)",
                r.name
            )),
            Some((b, None)) if r.length != b.size => problems.push(format!(
                "{}: region {} holds {} bytes, the block is {}",
                b.name, r.name, r.length, b.size
            )),
            Some((b, Some(offset)))
                if offset.checked_add(r.length).is_none_or(|end| end > b.size) =>
            {
                problems.push(format!(
                    "{}: region {} ({} bytes at offset {offset:#x}) ends past the block's {} bytes",
                    b.name, r.name, r.length, b.size
                ))
            }
            Some(_) => {}
        }
    }
    problems
}

/// RAM blocks against the fd manifest and regions, by mode.
fn ram_check(img: &Image) -> Check {
    let h = img.header();
    let fds = img.fd_manifest();
    let mut problems = Vec::new();
    let mut used: HashSet<&str> = HashSet::new();
    problems.extend(region_problems(img));
    for b in &h.machine.ram_blocks {
        let region_name = format!("ram.{}", b.name);
        let region = img.region(&region_name);
        let needs_fd = match (&b.backing, h.mode) {
            // Only data in regions or a persistent file survives a host reboot. The vmm
            // writes no region for a block whose pages are all zero, and lists its runs in
            // its reboot.ram section, so a block without regions is fine when that is there.
            (RamBacking::File { .. }, Mode::Reboot) => false,
            (_, Mode::Reboot) => {
                let has_region = img
                    .regions()
                    .iter()
                    .any(|r| region_block(&r.name, &h.machine.ram_blocks) == Some(b));
                if !has_region && img.find(REBOOT_RAM, "0").is_none() {
                    problems.push(format!(
                        "{}: {} RAM does not survive a reboot and has no region \
                         {region_name}.OFFSET (nor a {REBOOT_RAM} section)",
                        b.name,
                        crate::cmd::inspect::backing_name(&b.backing)
                    ));
                }
                false
            }
            (RamBacking::Anonymous, _) => {
                if region.is_none() {
                    problems.push(format!(
                        "{}: anonymous RAM cannot be inherited and has no region {region_name}",
                        b.name
                    ));
                }
                false
            }
            // The vmm passes a RAM file's fd too (named after the block) but could reopen
            // the path; when listed, the file must be able to hold the block (several
            // blocks may share one file, at different offsets).
            (RamBacking::File { .. }, _) => {
                let named = fds
                    .iter()
                    .find(|f| is_ram_fd(&f.kind) && (f.name == region_name || f.name == b.name));
                if let Some(f) = named {
                    used.insert(f.name.as_str());
                    if f.identity.size < b.size {
                        problems.push(format!(
                            "{}: RAM file fd {} is {} bytes, smaller than the block's {}",
                            b.name, f.name, f.identity.size, b.size
                        ));
                    }
                }
                false
            }
            (RamBacking::Memfd | RamBacking::Hugetlb, _) => true,
        };
        if !needs_fd {
            continue;
        }
        // By name first (ram.NAME or NAME), else the one unused RAM fd of the block's size.
        let by_name = fds
            .iter()
            .find(|f| is_ram_fd(&f.kind) && (f.name == region_name || f.name == b.name));
        let by_size: Vec<_> = fds
            .iter()
            .filter(|f| {
                is_ram_fd(&f.kind) && f.identity.size == b.size && !used.contains(f.name.as_str())
            })
            .collect();
        let unused: Vec<_> = fds
            .iter()
            .filter(|f| is_ram_fd(&f.kind) && !used.contains(f.name.as_str()))
            .collect();
        // Failing name and size, the only RAM fd left is the block's (with a size
        // problem reported below) rather than "missing" plus "unmatched".
        let fd = by_name
            .or(if by_size.len() == 1 {
                Some(by_size[0])
            } else {
                None
            })
            .or(if unused.len() == 1 {
                Some(unused[0])
            } else {
                None
            });
        match fd {
            None => problems.push(format!("{}: no memfd in the fd manifest", b.name)),
            Some(f) => {
                used.insert(f.name.as_str());
                if f.identity.size != b.size {
                    problems.push(format!(
                        "{}: fd {} is {} bytes, the block is {}",
                        b.name, f.name, f.identity.size, b.size
                    ));
                }
            }
        }
    }
    for f in fds.iter().filter(|f| is_ram_fd(&f.kind)) {
        if !used.contains(f.name.as_str()) {
            problems.push(format!(
                "fd {} is guest RAM but matches no RAM block",
                f.name
            ));
        }
    }
    let n = h.machine.ram_blocks.len();
    match problems.is_empty() {
        true => ok(
            "ram blocks",
            format!("{n} block{} backed as the {} mode needs", plural(n), h.mode),
        ),
        false => failed("ram blocks", Status::Error, problems),
    }
}

/// The kind the vmm gives a `chardev.ID.ROLE` entry (docs/FORMAT.md, "Conventions used by
/// the vmm"), or None for a role it does not write.
fn chardev_role_kind(role: &str) -> Option<FdKind> {
    match role {
        "listener" => Some(FdKind::ListeningSocket),
        "client" => Some(FdKind::Socket),
        "pty-master" => Some(FdKind::Pty),
        "file" => Some(FdKind::Other("chardev-file".into())),
        _ => None,
    }
}

/// The problem with a non-RAM fd entry's name and kind, by the documented owners: a chardev
/// (`chardev.ID.ROLE`), the VFIO container, groups, devices and their interrupts (`vfio-`),
/// or a device of the machine (`ID` or `ID.anything`).
fn fd_owner_problem(f: &FdEntry, devices: &[DeviceDesc]) -> Option<String> {
    let is_device = |id: &str| devices.iter().any(|d| d.id == id);
    let expect = |kind: FdKind, what: &str| {
        (f.kind != kind).then(|| {
            format!(
                "{}: {what} but its kind is {}",
                f.name,
                crate::cmd::inspect::fd_kind_name(&f.kind)
            )
        })
    };
    if let Some(rest) = f.name.strip_prefix("chardev.") {
        let Some((id, role)) = rest.rsplit_once('.').filter(|(id, _)| !id.is_empty()) else {
            return Some(format!("{}: not chardev.ID.ROLE", f.name));
        };
        return match chardev_role_kind(role) {
            None => Some(format!("{}: chardev {id} has no fd role {role}", f.name)),
            Some(kind) => expect(kind, &format!("chardev {id}'s {role}")),
        };
    }
    if f.name == "vfio-container" {
        return expect(FdKind::VfioContainer, "the VFIO container");
    }
    if let Some(group) = f.name.strip_prefix("vfio-group-") {
        if group.parse::<u32>().is_err() {
            return Some(format!("{}: {group} is not an IOMMU group number", f.name));
        }
        return expect(FdKind::VfioGroup, "a VFIO group");
    }
    if let Some(id) = f.name.strip_prefix("vfio-device-") {
        if !is_device(id) {
            return Some(format!("{}: no device {id} is assigned", f.name));
        }
        return expect(FdKind::VfioDevice, &format!("device {id}"));
    }
    if let Some(rest) = f.name.strip_prefix("vfio-irq-") {
        let owner = devices.iter().any(|d| {
            rest.strip_prefix(d.id.as_str())
                .is_some_and(|s| s.starts_with('-'))
        });
        if !owner {
            return Some(format!(
                "{}: no assigned device owns this interrupt",
                f.name
            ));
        }
        return expect(FdKind::EventFd, "an interrupt eventfd");
    }
    let owner = f.name.split('.').next().unwrap_or(&f.name);
    (!is_device(owner)).then(|| {
        format!(
            "{}: no device {owner}, chardev or VFIO object owns this fd",
            f.name
        )
    })
}

/// Descriptor numbers, and each fd's owner by its name (docs/FORMAT.md conventions).
fn fd_check(img: &Image) -> Check {
    let h = img.header();
    let fds = img.fd_manifest();
    let mut problems = Vec::new();
    if h.mode == Mode::Reboot && !fds.is_empty() {
        problems.push(format!(
            "{} descriptor{} listed, but none survives a host reboot",
            fds.len(),
            plural(fds.len())
        ));
    }
    let mut numbers: HashMap<i32, &str> = HashMap::new();
    for f in fds {
        if f.fd < 0 {
            problems.push(format!("{}: negative fd {}", f.name, f.fd));
        } else if let Some(other) = numbers.insert(f.fd, &f.name) {
            problems.push(format!("{} and {} share fd {}", other, f.name, f.fd));
        }
        // RAM fds are matched to blocks by ram_check.
        if !is_ram_fd(&f.kind) {
            problems.extend(fd_owner_problem(f, &h.machine.devices));
        }
    }
    if problems.is_empty() {
        ok(
            "fd manifest",
            format!(
                "{} descriptor{}, numbers unique, each with a known owner",
                fds.len(),
                plural(fds.len())
            ),
        )
    } else {
        failed("fd manifest", Status::Error, problems)
    }
}

/// Whether section `s` holds device `id`'s state (docs/FORMAT.md): its instance is the id,
/// or, for a device with one instance, it is named after the device (instance "0", `pm`).
pub fn is_device_section(s: &cpr_format::Section, id: &str) -> bool {
    s.instance == id || (s.name == id && s.instance == "0")
}

/// Whether the fd entry `name` belongs to device `id` (docs/FORMAT.md): `ID`, `ID.anything`,
/// or an assigned device's `vfio-device-ID` / `vfio-irq-ID-...`.
pub fn fd_of_device(name: &str, id: &str) -> bool {
    name.split('.').next() == Some(id)
        || name.strip_prefix("vfio-device-") == Some(id)
        || name
            .strip_prefix("vfio-irq-")
            .and_then(|r| r.strip_prefix(id))
            .is_some_and(|r| r.starts_with('-'))
}

/// Device kinds that have no state to save (docs/FORMAT.md): the debug-exit port only
/// ends the VMM when written.
const STATELESS_KINDS: &[&str] = &["isa-debug-exit"];

/// vCPU sections against the vCPU count, devices against device sections.
fn machine_check(img: &Image) -> Vec<Check> {
    let h = img.header();
    let vcpus = h.machine.vcpus;
    let mut errors = Vec::new();
    let mut cpu_sections: HashMap<&str, HashSet<u32>> = HashMap::new();
    // The vmm writes one `cpu` section per vCPU; other writers split it (`cpu.regs`, ...).
    let per_vcpu = |n: &str| n == "cpu" || n.starts_with("cpu.");
    for s in img.sections().iter().filter(|s| per_vcpu(&s.name)) {
        match s.instance.parse::<u32>() {
            Ok(i) if i < vcpus => {
                cpu_sections.entry(&s.name).or_default().insert(i);
            }
            _ => errors.push(format!(
                "{}/{}: instance is not a vCPU index below {vcpus}",
                s.name, s.instance
            )),
        }
    }
    let mut names: Vec<_> = cpu_sections.into_iter().collect();
    names.sort_by(|a, b| a.0.cmp(b.0));
    let mut warnings = Vec::new();
    for (name, seen) in names {
        let missing: Vec<String> = (0..vcpus)
            .filter(|i| !seen.contains(i))
            .map(|i| i.to_string())
            .collect();
        if !missing.is_empty() {
            errors.push(format!(
                "{name}: no instance for vCPU {}",
                missing.join(", ")
            ));
        }
    }
    let mut ids = HashSet::new();
    for d in &h.machine.devices {
        if !ids.insert(d.id.as_str()) {
            errors.push(format!("device id {} is used twice", d.id));
        }
        let saved = img.sections().iter().any(|s| is_device_section(s, &d.id));
        if !saved && !STATELESS_KINDS.contains(&d.kind.as_str()) {
            warnings.push(format!(
                "device {} has no section: its state is not saved",
                d.id
            ));
        }
    }
    let mut out = vec![if errors.is_empty() {
        ok(
            "vcpus",
            format!(
                "{vcpus} vCPU{}, every cpu.* section has one instance each",
                plural(vcpus as usize)
            ),
        )
    } else {
        failed("vcpus", Status::Error, errors)
    }];
    out.push(if warnings.is_empty() {
        ok(
            "devices",
            format!(
                "{} device{}, each with saved state",
                h.machine.devices.len(),
                plural(h.machine.devices.len())
            ),
        )
    } else {
        failed("devices", Status::Warning, warnings)
    });
    out
}

pub fn run(args: &VerifyArgs, json: bool) -> Result<Outcome, ToolError> {
    let img = load::image(&args.image)?;
    let mut checks = integrity(&img);
    checks.push(payload_check(&img));
    checks.push(ram_check(&img));
    checks.push(fd_check(&img));
    checks.extend(machine_check(&img));

    let reader = match (&args.target, &args.schema) {
        (Some(v), _) => {
            let dir = load::schemas_dir(args.schemas.schemas_dir.as_deref())?;
            let (s, _) = load::schema_version(v, &dir)?;
            Some((format!("VMM {v}"), s))
        }
        (None, Some(p)) => {
            let (schema, source) = load::schema_in_file(p)?;
            let name = match source {
                load::SchemaSource::Image(i) => format!("the writer of {i}"),
                _ => format!("the reader of {}", p.display()),
            };
            Some((name, schema))
        }
        (None, None) => None,
    };
    let target = match reader {
        None => None,
        Some((name, schema)) => {
            let renames = Renames::locate(args.renames.as_deref())?;
            let (report, renamed) = compat::check(img.schema(), &schema, &renames);
            Some(Target {
                direction: Direction::new(
                    format!("{name} loads {}", super::shown(&args.image)),
                    report,
                ),
                reader: name,
                renamed,
            })
        }
    };
    let ok = checks.iter().all(|c| c.status != Status::Error)
        && target.as_ref().is_none_or(|t| t.direction.compatible);
    let report = VerifyReport {
        file: super::shown(&args.image),
        ok,
        checks,
        target,
    };
    emit(&report, json).map_err(ToolError::Stdout)?;
    Ok(Outcome::from_ok(ok))
}
