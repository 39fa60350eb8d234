//! `cpr-tool inspect`: what an image holds, as tables or JSON.

use cpr_format::{FdEntry, Image, RamBacking, Section};
use serde::Serialize;

use crate::cborjson;
use crate::cli::InspectArgs;
use crate::error::{Outcome, ToolError};
use crate::flatten::{hint_name, Leaf};
use crate::load;
use crate::output::{self, emit, hex_dump, rfc3339, table, Report};

#[derive(Serialize)]
struct Overview {
    file: String,
    format_version: String,
    file_len: u64,
    metadata_len: u64,
    header: HeaderView,
    machine: cpr_format::MachineDesc,
    /// Each device with the sections (instance = device id) and back-end fds
    /// (named `ID.something`) that belong to it.
    devices: Vec<DeviceRow>,
    sections: Vec<SectionRow>,
    fds: Vec<FdEntry>,
    regions: Vec<RegionRow>,
}

#[derive(Serialize)]
struct HeaderView {
    producer: cpr_format::Producer,
    created_unix_ns: u64,
    created: String,
    host: cpr_format::HostInfo,
    mode: cpr_format::Mode,
}

#[derive(Serialize)]
struct DeviceRow {
    id: String,
    kind: String,
    sections: Vec<String>,
    fds: Vec<String>,
}

#[derive(Serialize)]
struct SectionRow {
    name: String,
    instance: String,
    version: u32,
    min_version: u32,
    required: bool,
    offset: u64,
    size: u64,
    crc: String,
    crc_ok: bool,
}

#[derive(Serialize)]
struct RegionRow {
    name: String,
    offset: u64,
    length: u64,
    crc32: String,
    crc_ok: bool,
}

fn section_row(s: &Section) -> SectionRow {
    SectionRow {
        name: s.name.clone(),
        instance: s.instance.clone(),
        version: s.version,
        min_version: s.min_version,
        required: s.required,
        offset: s.offset,
        size: s.length,
        crc: format!("{:08x}", s.crc),
        // The reader refuses an image with any bad section CRC; recheck so the
        // column states a fact rather than an assumption.
        crc_ok: crc32fast::hash(s.payload_bytes()) == s.crc,
    }
}

pub fn backing_name(b: &RamBacking) -> String {
    match b {
        RamBacking::Anonymous => "anonymous".into(),
        RamBacking::Memfd => "memfd".into(),
        RamBacking::Hugetlb => "hugetlb".into(),
        RamBacking::File { path } => format!("file {path}"),
    }
}

pub fn fd_kind_name(k: &cpr_format::FdKind) -> String {
    match serde_json::to_value(k).unwrap_or_default() {
        serde_json::Value::String(s) => s,
        serde_json::Value::Object(m) => m
            .iter()
            .next()
            .map(|(k, v)| format!("{k} {}", v.as_str().unwrap_or("?")))
            .unwrap_or_default(),
        other => other.to_string(),
    }
}

fn overview(args: &InspectArgs, img: &Image) -> Overview {
    let h = img.header();
    Overview {
        file: super::shown(&args.image),
        format_version: img.format_version().to_string(),
        file_len: img.file_len(),
        metadata_len: img.metadata_len(),
        header: HeaderView {
            producer: h.producer.clone(),
            created_unix_ns: h.created_unix_ns,
            created: rfc3339(h.created_unix_ns),
            host: h.host.clone(),
            mode: h.mode,
        },
        machine: h.machine.clone(),
        devices: h
            .machine
            .devices
            .iter()
            .map(|d| DeviceRow {
                id: d.id.clone(),
                kind: d.kind.clone(),
                sections: img
                    .sections()
                    .iter()
                    .filter(|s| super::verify::is_device_section(s, &d.id))
                    .map(|s| s.name.clone())
                    .collect(),
                fds: img
                    .fd_manifest()
                    .iter()
                    .filter(|f| super::verify::fd_of_device(&f.name, &d.id))
                    .map(|f| f.name.clone())
                    .collect(),
            })
            .collect(),
        sections: img.sections().iter().map(section_row).collect(),
        fds: img.fd_manifest().to_vec(),
        // load::image verified every region digest.
        regions: img
            .regions()
            .iter()
            .map(|r| RegionRow {
                name: r.name.clone(),
                offset: r.offset,
                length: r.length,
                crc32: format!("{:08x}", r.crc32),
                crc_ok: true,
            })
            .collect(),
    }
}

impl Report for Overview {
    fn human(&self) -> String {
        let h = &self.header;
        let mut out = String::new();
        let t = output::kv_table(&[
            ("file", self.file.clone()),
            ("format", self.format_version.clone()),
            (
                "producer",
                format!(
                    "{} {} ({})",
                    h.producer.name, h.producer.version, h.producer.build_id
                ),
            ),
            ("mode", h.mode.to_string()),
            ("created", h.created.clone()),
            (
                "host",
                format!(
                    "kernel {}, page size {}",
                    h.host.kernel_release, h.host.page_size
                ),
            ),
            (
                "size",
                format!("{} bytes (metadata {})", self.file_len, self.metadata_len),
            ),
            ("vcpus", self.machine.vcpus.to_string()),
        ]);
        output::section(&mut out, "Image", &t);

        let mut t = table(&["name", "guest addr", "size", "backing", "page size"]);
        for b in &self.machine.ram_blocks {
            t.add_row(vec![
                b.name.clone(),
                format!("{:#018x}", b.guest_addr),
                output::size(b.size),
                backing_name(&b.backing),
                output::size(b.page_size),
            ]);
        }
        output::section(&mut out, "RAM blocks", &t);

        let mut t = table(&["id", "kind", "sections", "fds"]);
        for d in &self.devices {
            t.add_row(vec![
                d.id.clone(),
                d.kind.clone(),
                d.sections.join(", "),
                d.fds.join(", "),
            ]);
        }
        output::section(&mut out, "Devices", &t);

        let mut t = table(&[
            "name",
            "instance",
            "version",
            "min version",
            "required",
            "size",
            "crc",
        ]);
        for s in &self.sections {
            t.add_row(vec![
                s.name.clone(),
                s.instance.clone(),
                s.version.to_string(),
                s.min_version.to_string(),
                yes_no(s.required).into(),
                s.size.to_string(),
                format!("{} {}", s.crc, if s.crc_ok { "ok" } else { "BAD" }),
            ]);
        }
        output::section(&mut out, "Sections", &t);

        let mut t = table(&["name", "kind", "fd", "file type", "dev:ino", "size"]);
        for f in &self.fds {
            t.add_row(vec![
                f.name.clone(),
                fd_kind_name(&f.kind),
                f.fd.to_string(),
                file_type_name(&f.identity.file_type),
                format!("{}:{}", f.identity.dev, f.identity.ino),
                output::size(f.identity.size),
            ]);
        }
        output::section(&mut out, "Fd manifest", &t);

        if !self.regions.is_empty() {
            let mut t = table(&["name", "offset", "length", "crc32"]);
            for r in &self.regions {
                t.add_row(vec![
                    r.name.clone(),
                    format!("{:#x}", r.offset),
                    r.length.to_string(),
                    format!("{} {}", r.crc32, if r.crc_ok { "ok" } else { "BAD" }),
                ]);
            }
            output::section(&mut out, "Regions", &t);
        }
        out
    }
}

pub fn file_type_name(t: &cpr_format::FileType) -> String {
    match serde_json::to_value(t).unwrap_or_default() {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// `--section`: one section's fields.
#[derive(Serialize)]
struct Fields {
    file: String,
    sections: Vec<SectionFields>,
}

#[derive(Serialize)]
struct SectionFields {
    #[serde(flatten)]
    row: SectionRow,
    doc: String,
    fields: Vec<FieldRow>,
}

#[derive(Serialize)]
struct FieldRow {
    #[serde(flatten)]
    leaf: Leaf,
    value: crate::ojson::Json,
}

impl Report for Fields {
    fn human(&self) -> String {
        let mut out = String::new();
        for (i, s) in self.sections.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            let r = &s.row;
            let mut title = format!(
                "Section {}/{}: version {} (min {}), {}, {} bytes, crc {} {}",
                r.name,
                r.instance,
                r.version,
                r.min_version,
                if r.required { "required" } else { "optional" },
                r.size,
                r.crc,
                if r.crc_ok { "ok" } else { "BAD" }
            );
            if !s.doc.is_empty() {
                title.push_str(&format!("\n{}", s.doc));
            }
            let mut t = table(&["field", "type", "hint", "value"]);
            for f in &s.fields {
                t.add_row(vec![
                    f.leaf.path.clone(),
                    f.leaf.ty.clone(),
                    hint_name(&f.leaf.hint),
                    f.leaf.display.clone(),
                ]);
            }
            output::section(&mut out, &title, &t);
        }
        out
    }
}

/// `--raw`: a hex dump.
#[derive(Serialize)]
struct Raw {
    file: String,
    /// What was dumped: `metadata` or `section NAME/INSTANCE payload`.
    what: String,
    offset: u64,
    length: u64,
    hex: String,
    #[serde(skip)]
    bytes: Vec<u8>,
}

impl Report for Raw {
    fn human(&self) -> String {
        format!(
            "{} of {}: {} bytes at offset {:#x}\n{}",
            self.what,
            self.file,
            self.length,
            self.offset,
            hex_dump(&self.bytes, self.offset)
        )
    }
}

fn read_prefix(path: &std::path::Path, len: u64) -> Result<Vec<u8>, ToolError> {
    use std::io::Read;
    let read = |source| ToolError::Read {
        path: path.to_owned(),
        source,
    };
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .map_err(read)?
        .take(len)
        .read_to_end(&mut buf)
        .map_err(read)?;
    Ok(buf)
}

/// Sections selected by `NAME` or `NAME/INSTANCE`.
pub fn select<'a>(
    img: &'a Image,
    selector: &str,
    path: &std::path::Path,
) -> Result<Vec<&'a Section>, ToolError> {
    let (name, instance) = match selector.split_once('/') {
        Some((n, i)) if !n.is_empty() && !i.is_empty() && !i.contains('/') => (n, Some(i)),
        Some(_) => return Err(ToolError::BadSelector(selector.to_owned())),
        None if selector.is_empty() => return Err(ToolError::BadSelector(selector.to_owned())),
        None => (selector, None),
    };
    let found: Vec<&Section> = img
        .sections()
        .iter()
        .filter(|s| s.name == name && instance.is_none_or(|i| s.instance == i))
        .collect();
    if found.is_empty() {
        let available: Vec<String> = img
            .sections()
            .iter()
            .map(|s| format!("{}/{}", s.name, s.instance))
            .collect();
        return Err(ToolError::NoSuchSection {
            path: path.to_owned(),
            wanted: selector.to_owned(),
            available: available.join(", "),
        });
    }
    Ok(found)
}

pub fn run(args: &InspectArgs, json: bool) -> Result<Outcome, ToolError> {
    let img = load::image(&args.image)?;
    let file = super::shown(&args.image);
    let write = |e| ToolError::Stdout(e);
    match (&args.section, args.raw) {
        (None, false) => emit(&overview(args, &img), json).map_err(write)?,
        (None, true) => {
            // The metadata only: region data (guest RAM) can be gigabytes.
            let bytes = read_prefix(&args.image, img.metadata_len())?;
            let raw = Raw {
                file,
                what: "metadata".into(),
                offset: 0,
                length: bytes.len() as u64,
                hex: cborjson::hex_encode(&bytes),
                bytes,
            };
            emit(&raw, json).map_err(write)?;
        }
        (Some(sel), true) => {
            let sections = select(&img, sel, &args.image)?;
            let [s] = sections.as_slice() else {
                return Err(ToolError::Ambiguous {
                    selector: sel.clone(),
                    count: sections.len(),
                });
            };
            let bytes = s.payload_bytes().to_vec();
            let raw = Raw {
                file,
                what: format!("section {}/{} payload", s.name, s.instance),
                offset: s.offset,
                length: bytes.len() as u64,
                hex: cborjson::hex_encode(&bytes),
                bytes,
            };
            emit(&raw, json).map_err(write)?;
        }
        (Some(sel), false) => {
            let mut sections = Vec::new();
            for s in select(&img, sel, &args.image)? {
                let leaves = super::section_leaves(&args.image, &img, s)?;
                sections.push(SectionFields {
                    row: section_row(s),
                    doc: img
                        .schema()
                        .get(&s.name)
                        .map(|x| x.doc.clone())
                        .unwrap_or_default(),
                    fields: leaves
                        .into_iter()
                        .map(|leaf| FieldRow {
                            value: cborjson::to_json(&leaf.value),
                            leaf,
                        })
                        .collect(),
                });
            }
            emit(&Fields { file, sections }, json).map_err(write)?;
        }
    }
    Ok(Outcome::Fine)
}
