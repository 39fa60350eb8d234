//! [`ImageWriter`]: builds an image and writes it atomically.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cbor::{
    self, put_bool, put_head, put_text, put_uint, MAJOR_ARRAY, MAJOR_BYTES, MAJOR_MAP,
};
use crate::error::{Error, Location, Result};
use crate::layout::{self, align_up, Limits, RegionDesc, CRC_FIELD_LEN, PREFIX_LEN};
use crate::model::{FdEntry, Header};
use crate::schema::{Schema, SectionSchema, SectionState};
use crate::Value;

/// Identification of a section, without its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionInfo {
    /// Section name (the schema's name).
    pub name: String,
    /// Instance id, e.g. the vCPU index or device id; unique per name.
    pub instance: String,
    /// Version of the payload.
    pub version: u32,
    /// Oldest reader version that can load it.
    pub min_version: u32,
    /// Whether a reader that does not know the section must refuse the image.
    pub required: bool,
}

/// A typed section encoded and checked apart from any writer: on another thread, say,
/// while the next state is being read. [`ImageWriter::add_encoded`] adds it as
/// [`ImageWriter::add_section`] would have.
#[derive(Debug)]
pub struct EncodedSection {
    info: SectionInfo,
    payload: Vec<u8>,
    name: &'static str,
    type_name: &'static str,
    schema: fn() -> SectionSchema,
    /// What the payload was checked against.
    limits: Limits,
}

impl EncodedSection {
    /// Encodes `state` as section instance `instance` and checks it against the default
    /// limits and the strict profile.
    pub fn new<T: SectionState>(instance: &str, state: &T) -> Result<EncodedSection> {
        let info = section_info::<T>(instance);
        let payload = encode(state, &section_loc(&info))?;
        let limits = Limits::default();
        check_payload(&limits, &info, &payload)?;
        Ok(EncodedSection {
            info,
            payload,
            name: T::NAME,
            type_name: std::any::type_name::<T>(),
            schema: T::schema,
            limits,
        })
    }
}

fn section_info<T: SectionState>(instance: &str) -> SectionInfo {
    SectionInfo {
        name: T::NAME.to_owned(),
        instance: instance.to_owned(),
        version: T::VERSION,
        min_version: T::MIN_VERSION,
        required: T::REQUIRED,
    }
}

/// What [`ImageWriter::write_atomic`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteStats {
    /// Total file length in bytes.
    pub file_len: u64,
    /// Length of the metadata item (everything but region data).
    pub metadata_len: u64,
    /// Number of sections.
    pub sections: usize,
    /// Number of fd manifest entries.
    pub fds: usize,
    /// Number of regions.
    pub regions: usize,
}

enum RegionSource {
    Bytes(Vec<u8>),
    Reader(Box<dyn Read + Send>),
}

struct PendingRegion {
    name: String,
    len: u64,
    source: RegionSource,
}

/// Builds an image: header, sections, fd manifest, regions; the schema of every section
/// is embedded automatically.
///
/// Section payloads are encoded as they are added (so encoding errors surface at the
/// call that caused them); regions given as readers are streamed when the image is
/// written.
pub struct ImageWriter {
    header: Header,
    /// Encoded section records, in order.
    sections: Vec<u8>,
    section_count: u64,
    names: std::collections::HashSet<(String, String)>,
    fds: Vec<FdEntry>,
    schema: Schema,
    regions: Vec<PendingRegion>,
    limits: Limits,
    /// Section name -> Rust type whose schema is in `schema` for it.
    typed: std::collections::HashMap<&'static str, &'static str>,
}

impl ImageWriter {
    /// A new image with this header.
    pub fn new(header: Header) -> ImageWriter {
        ImageWriter {
            header,
            sections: Vec::new(),
            section_count: 0,
            names: Default::default(),
            fds: Vec::new(),
            schema: Schema::default(),
            regions: Vec::new(),
            limits: Limits::default(),
            typed: Default::default(),
        }
    }

    /// Add a typed section; its schema is embedded.
    pub fn add_section<T: SectionState>(&mut self, instance: &str, state: &T) -> Result<&mut Self> {
        let info = section_info::<T>(instance);
        let payload = encode(state, &section_loc(&info))?;
        check_payload(&self.limits, &info, &payload)?;
        self.push_typed(
            info,
            payload,
            T::NAME,
            std::any::type_name::<T>(),
            T::schema,
        )
    }

    /// Add a section encoded by [`EncodedSection::new`], as `add_section` would.
    pub fn add_encoded(&mut self, s: EncodedSection) -> Result<&mut Self> {
        if s.limits != self.limits {
            check_payload(&self.limits, &s.info, &s.payload)?;
        }
        self.push_typed(s.info, s.payload, s.name, s.type_name, s.schema)
    }

    /// A checked typed payload, with its type's schema unless the table has it.
    fn push_typed(
        &mut self,
        info: SectionInfo,
        payload: Vec<u8>,
        name: &'static str,
        type_name: &'static str,
        schema: fn() -> SectionSchema,
    ) -> Result<&mut Self> {
        // Building a schema costs more than encoding a payload: once per type is enough.
        if self.typed.get(name) == Some(&type_name) {
            return self.push_checked(info, payload, None);
        }
        self.push_schema(info, schema(), payload)?;
        self.typed.insert(name, type_name);
        Ok(self)
    }

    /// Add an untyped section: a value tree (a CBOR map) with its schema. For tools that
    /// rewrite images without the program's types.
    pub fn add_value_section(
        &mut self,
        info: SectionInfo,
        schema: SectionSchema,
        payload: &Value,
    ) -> Result<&mut Self> {
        let bytes = encode(payload, &section_loc(&info))?;
        self.push_section(info, schema, bytes)
    }

    /// Add a section from its encoded payload bytes (as [`crate::Section::payload_bytes`]
    /// returns them), for lossless copies.
    pub fn add_raw_section(
        &mut self,
        info: SectionInfo,
        schema: SectionSchema,
        payload: Vec<u8>,
    ) -> Result<&mut Self> {
        self.push_section(info, schema, payload)
    }

    fn push_section(
        &mut self,
        info: SectionInfo,
        schema: SectionSchema,
        payload: Vec<u8>,
    ) -> Result<&mut Self> {
        check_payload(&self.limits, &info, &payload)?;
        self.push_schema(info, schema, payload)
    }

    /// A checked payload with its schema.
    fn push_schema(
        &mut self,
        info: SectionInfo,
        schema: SectionSchema,
        payload: Vec<u8>,
    ) -> Result<&mut Self> {
        let loc = section_loc(&info);
        if schema.name != info.name
            || schema.version != info.version
            || schema.min_version != info.min_version
            || schema.required != info.required
        {
            return Err(Error::Encode {
                location: loc,
                reason: "schema name, version, min_version or required differ from the section's"
                    .into(),
            });
        }
        if let Some(existing) = self.schema.get(&info.name) {
            if *existing != schema {
                return Err(Error::Encode {
                    location: loc,
                    reason: "another instance of this section was added with a different schema"
                        .into(),
                });
            }
        }
        // Untyped sections may replace what a typed one provided: forget the type.
        self.typed.remove(info.name.as_str());
        self.push_checked(info, payload, Some(schema))
    }

    /// Record a checked section; `schema` is `None` when the table already has it.
    fn push_checked(
        &mut self,
        info: SectionInfo,
        payload: Vec<u8>,
        schema: Option<SectionSchema>,
    ) -> Result<&mut Self> {
        if !self
            .names
            .insert((info.name.clone(), info.instance.clone()))
        {
            return Err(Error::Encode {
                location: section_loc(&info),
                reason: "duplicate section instance".into(),
            });
        }
        if let Some(schema) = schema {
            self.schema.insert(schema);
        }
        put_section_record(&mut self.sections, &info, &payload);
        self.section_count += 1;
        Ok(self)
    }

    /// Add a descriptor to the fd manifest; names must be unique.
    pub fn add_fd(&mut self, fd: FdEntry) -> Result<&mut Self> {
        if self.fds.iter().any(|f| f.name == fd.name) {
            return Err(Error::Encode {
                location: Location::Element("fd_manifest"),
                reason: format!("duplicate fd name {}", fd.name),
            });
        }
        self.fds.push(fd);
        Ok(self)
    }

    /// Add a raw data region from memory.
    pub fn add_region(&mut self, name: &str, data: Vec<u8>) -> Result<&mut Self> {
        let len = data.len() as u64;
        self.push_region(name, len, RegionSource::Bytes(data))
    }

    /// Add a raw data region streamed from `reader`, which must yield exactly `len` bytes
    /// when the image is written.
    pub fn add_region_reader(
        &mut self,
        name: &str,
        len: u64,
        reader: impl Read + Send + 'static,
    ) -> Result<&mut Self> {
        self.push_region(name, len, RegionSource::Reader(Box::new(reader)))
    }

    fn push_region(&mut self, name: &str, len: u64, source: RegionSource) -> Result<&mut Self> {
        if self.regions.iter().any(|r| r.name == name) {
            return Err(Error::Encode {
                location: Location::Region(name.to_owned()),
                reason: "duplicate region name".into(),
            });
        }
        self.regions.push(PendingRegion {
            name: name.to_owned(),
            len,
            source,
        });
        Ok(self)
    }

    /// The schema embedded so far.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Encode the whole image in memory (regions from readers are read).
    pub fn to_bytes(mut self) -> Result<Vec<u8>> {
        let plan = self.plan()?;
        let mut descs = plan.regions.clone();
        let mut data = Vec::with_capacity(descs.len());
        for (r, d) in std::mem::take(&mut self.regions)
            .into_iter()
            .zip(descs.iter_mut())
        {
            let bytes = match r.source {
                RegionSource::Bytes(b) => b,
                RegionSource::Reader(mut rd) => {
                    let n = usize::try_from(r.len).map_err(|_| too_big())?;
                    let mut b = vec![0u8; n];
                    read_exactly(&mut rd, &mut b, &r.name)?;
                    b
                }
            };
            d.crc32 = crc32fast::hash(&bytes);
            data.push(bytes);
        }
        let file_len = usize::try_from(plan.file_len).map_err(|_| too_big())?;
        let mut out = Vec::with_capacity(file_len);
        plan.finish(&self.sections, &descs, &mut out)?;
        out.resize(file_len, 0);
        for (d, bytes) in descs.iter().zip(data) {
            out[d.offset as usize..(d.offset + d.length) as usize].copy_from_slice(&bytes);
        }
        Ok(out)
    }

    /// Write the image to `path` atomically: a temporary file in the same directory is
    /// written, synced and renamed over `path`, then the directory is synced, so a crash
    /// leaves either the old file or the complete new one.
    pub fn write_atomic(self, path: impl AsRef<Path>) -> Result<WriteStats> {
        let path = path.as_ref();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file_name = path.file_name().ok_or_else(|| Error::Io {
            op: "write",
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no file name"),
        })?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(file_name);
        tmp_name.push(format!(".tmp.{}", std::process::id()));
        let tmp = dir.join(tmp_name);
        let result = self.write_tmp(&tmp).and_then(|stats| {
            std::fs::rename(&tmp, path).map_err(io_err("rename", path))?;
            let d = File::open(&dir).map_err(io_err("open", &dir))?;
            d.sync_all().map_err(io_err("sync directory of", path))?;
            Ok(stats)
        });
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    fn write_tmp(self, tmp: &Path) -> Result<WriteStats> {
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(tmp)
            .map_err(io_err("create", tmp))?;
        let stats = self.write_file(&f, tmp)?;
        f.sync_all().map_err(io_err("sync", tmp))?;
        Ok(stats)
    }

    /// Write the image into an open file from offset 0 and set its length (for example
    /// a memfd handed to the new process); the file offset is not used. Not atomic and
    /// not synced: for a path, use [`ImageWriter::write_atomic`].
    pub fn write_to_file(self, file: &File) -> Result<WriteStats> {
        let name = PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(file)
        ));
        // Old contents past the new metadata would otherwise show through the padding.
        file.set_len(0).map_err(io_err("truncate", &name))?;
        self.write_file(file, &name)
    }

    /// Regions first (their digests go in the metadata), then the metadata at 0.
    fn write_file(self, f: &File, name: &Path) -> Result<WriteStats> {
        let plan = self.plan()?;
        let stats = WriteStats {
            file_len: plan.file_len,
            metadata_len: plan.meta_len,
            sections: self.section_count as usize,
            fds: self.fds.len(),
            regions: self.regions.len(),
        };
        let mut descs = plan.regions.clone();
        let mut buf = Vec::new();
        for (r, d) in self.regions.into_iter().zip(descs.iter_mut()) {
            let mut h = crc32fast::Hasher::new();
            match r.source {
                RegionSource::Bytes(b) => {
                    h.update(&b);
                    f.write_all_at(&b, d.offset)
                        .map_err(io_err("write", name))?;
                }
                RegionSource::Reader(mut rd) => {
                    buf.resize(1 << 20, 0);
                    let mut done = 0u64;
                    while done < r.len {
                        let n = (r.len - done).min(buf.len() as u64) as usize;
                        read_exactly(&mut rd, &mut buf[..n], &r.name)?;
                        h.update(&buf[..n]);
                        f.write_all_at(&buf[..n], d.offset + done)
                            .map_err(io_err("write", name))?;
                        done += n as u64;
                    }
                }
            }
            d.crc32 = h.finalize();
        }
        let mut meta = Vec::with_capacity(plan.meta_len as usize);
        plan.finish(&self.sections, &descs, &mut meta)?;
        f.write_all_at(&meta, 0).map_err(io_err("write", name))?;
        // Gaps between the metadata and regions are holes, which read as zeros.
        f.set_len(plan.file_len).map_err(io_err("write", name))?;
        Ok(stats)
    }

    /// Lay the image out: everything but region CRCs is fixed here.
    fn plan(&self) -> Result<Plan> {
        // Sections stay where they are; the small elements around them are encoded here.
        let mut head = Vec::with_capacity(1024);
        append_encoded(&mut head, &self.header, "header")?;
        put_head(&mut head, MAJOR_ARRAY, self.section_count);
        let mut mid = Vec::with_capacity(8192);
        append_encoded(&mut mid, &self.fds, "fd_manifest")?;
        append_encoded(&mut mid, &self.schema, "schema")?;
        let body_len = head.len() + self.sections.len() + mid.len();
        // The metadata length depends on the region offsets and the file length, which
        // depend on the metadata length: iterate to the fixed point (lengths only grow,
        // so this ends after a few rounds).
        let mut meta_len = (PREFIX_LEN + body_len) as u64;
        for _ in 0..16 {
            let mut next = align_up(meta_len).ok_or_else(too_big)?;
            let mut regions = Vec::with_capacity(self.regions.len());
            for r in &self.regions {
                regions.push(RegionDesc {
                    name: r.name.clone(),
                    offset: next,
                    length: r.len,
                    crc32: 0,
                });
                next = next
                    .checked_add(r.len)
                    .and_then(align_up)
                    .ok_or_else(too_big)?;
            }
            let mut tail = Vec::new();
            append_encoded(&mut tail, &regions, "regions")?;
            let file_len = match regions.last() {
                Some(r) => r.offset + r.length,
                None => meta_len,
            };
            layout::put_trailer(&mut tail, self.section_count, file_len);
            let total = (PREFIX_LEN + body_len + tail.len()) as u64;
            if total == meta_len {
                return Ok(Plan {
                    head,
                    mid,
                    meta_len,
                    file_len,
                    regions,
                    section_count: self.section_count,
                });
            }
            meta_len = total;
        }
        Err(too_big())
    }
}

struct Plan {
    /// Header and the section array head.
    head: Vec<u8>,
    /// fd manifest and schema.
    mid: Vec<u8>,
    meta_len: u64,
    file_len: u64,
    regions: Vec<RegionDesc>,
    section_count: u64,
}

impl Plan {
    /// Append the complete metadata item to `out` (empty), with the region CRCs now
    /// known.
    fn finish(&self, sections: &[u8], regions: &[RegionDesc], out: &mut Vec<u8>) -> Result<()> {
        out.extend_from_slice(&layout::prefix(self.meta_len));
        out.extend_from_slice(&self.head);
        out.extend_from_slice(sections);
        out.extend_from_slice(&self.mid);
        append_encoded(out, &regions, "regions")?;
        layout::put_trailer(out, self.section_count, self.file_len);
        if out.len() as u64 != self.meta_len {
            return Err(Error::Encode {
                location: Location::Element("regions"),
                reason: "region table changed length after layout".into(),
            });
        }
        let crc_at = out.len() - CRC_FIELD_LEN + 1;
        let crc = crc32fast::hash(&out[..crc_at - 1]);
        out[crc_at..].copy_from_slice(&crc.to_be_bytes());
        Ok(())
    }
}

/// Encode a section record: map of name, instance, version, min_version, required, crc
/// and payload (tag 24 around a byte string holding the encoded payload map).
pub(crate) fn put_section_record(out: &mut Vec<u8>, info: &SectionInfo, payload: &[u8]) {
    put_head(out, MAJOR_MAP, 7);
    put_text(out, "name");
    put_text(out, &info.name);
    put_text(out, "instance");
    put_text(out, &info.instance);
    put_text(out, "version");
    put_uint(out, u64::from(info.version));
    put_text(out, "min_version");
    put_uint(out, u64::from(info.min_version));
    put_text(out, "required");
    put_bool(out, info.required);
    put_text(out, "crc");
    put_uint(out, u64::from(crc32fast::hash(payload)));
    put_text(out, "payload");
    out.extend_from_slice(&[0xd8, 0x18]);
    put_head(out, MAJOR_BYTES, payload.len() as u64);
    out.extend_from_slice(payload);
}

fn encode<T: Serialize + ?Sized>(v: &T, loc: &Location) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(v, &mut out).map_err(|e| Error::Encode {
        location: loc.clone(),
        reason: e.to_string(),
    })?;
    Ok(out)
}

fn append_encoded<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    v: &T,
    elem: &'static str,
) -> Result<()> {
    ciborium::ser::into_writer(v, &mut *out).map_err(|e| Error::Encode {
        location: Location::Element(elem),
        reason: e.to_string(),
    })
}

/// Size bound, a map at the top, strict profile: what the reader will demand.
fn check_payload(limits: &Limits, info: &SectionInfo, payload: &[u8]) -> Result<()> {
    let loc = || section_loc(info);
    if payload.len() as u64 > limits.max_section_len {
        return Err(Error::Encode {
            location: loc(),
            reason: format!(
                "payload is {} bytes, limit {}",
                payload.len(),
                limits.max_section_len
            ),
        });
    }
    if payload.first().map(|b| b >> 5) != Some(MAJOR_MAP) {
        return Err(Error::Encode {
            location: loc(),
            reason: "payload must be a CBOR map".into(),
        });
    }
    cbor::check_item(payload, 0, limits.max_depth).map_err(|e| Error::Encode {
        location: loc(),
        reason: format!("payload is outside the strict CBOR profile: {e:?}"),
    })
}

fn section_loc(info: &SectionInfo) -> Location {
    Location::Section {
        name: info.name.clone(),
        instance: info.instance.clone(),
    }
}

fn too_big() -> Error {
    Error::Encode {
        location: Location::Element("regions"),
        reason: "image larger than 2^64 bytes".into(),
    }
}

fn read_exactly(r: &mut dyn Read, dst: &mut [u8], name: &str) -> Result<()> {
    r.read_exact(dst).map_err(|e| Error::Encode {
        location: Location::Region(name.to_owned()),
        reason: format!("region reader failed or ended early: {e}"),
    })
}

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}
