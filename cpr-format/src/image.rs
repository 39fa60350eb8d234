//! [`Image`]: reads and validates an image, gives typed and untyped access.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::cbor::{Cursor, ScanError, MAJOR_ARRAY, MAJOR_BYTES, MAJOR_MAP, MAJOR_TAG};
use crate::compat::{self, CompatReport};
use crate::error::{Error, Location, Result};
use crate::layout::{self, align_up, Limits, RegionDesc, CRC_FIELD_LEN, PREFIX_LEN};
use crate::model::{FdEntry, FormatVersion, Header};
use crate::schema::{Schema, SectionState};
use crate::Value;

/// One section as stored in an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Section name.
    pub name: String,
    /// Instance id.
    pub instance: String,
    /// Payload version.
    pub version: u32,
    /// Oldest reader version that can load it.
    pub min_version: u32,
    /// Whether a reader that does not know it must refuse the image.
    pub required: bool,
    /// CRC32 of the payload bytes (verified).
    pub crc: u32,
    /// Byte offset of the payload's first byte in the file.
    pub offset: u64,
    /// Length of the payload in bytes.
    pub length: u64,
    payload: Vec<u8>,
}

impl Section {
    /// The encoded payload (a CBOR map), exactly as stored.
    pub fn payload_bytes(&self) -> &[u8] {
        &self.payload
    }

    /// The payload as an untyped value tree, to be read with the image's schema.
    pub fn value(&self) -> Result<Value> {
        decode::<Value>(&self.payload, self.location(), self.offset)
    }

    /// Decode the payload into `T` without version checks (see [`Image::section`]).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        decode::<T>(&self.payload, self.location(), self.offset)
    }

    /// Where this section is, for error messages.
    pub fn location(&self) -> Location {
        Location::Section {
            name: self.name.clone(),
            instance: self.instance.clone(),
        }
    }

    /// Name, instance, versions and flag, as the writer takes them.
    pub fn info(&self) -> crate::SectionInfo {
        crate::SectionInfo {
            name: self.name.clone(),
            instance: self.instance.clone(),
            version: self.version,
            min_version: self.min_version,
            required: self.required,
        }
    }
}

enum Store {
    /// Bytes after the metadata (region area), for images read from memory.
    Memory(Vec<u8>),
    /// The open file, for images read from a path.
    File { file: File, path: PathBuf },
}

/// A validated image.
///
/// Opening checks the signature, format version, limits, the metadata CRC, every section
/// CRC, the consistency of sections with the embedded schema, the trailer, the file
/// length and the region table. Region data is checked against its digest when read
/// ([`Image::read_region`], [`Image::verify_regions`]).
pub struct Image {
    version: FormatVersion,
    header: Header,
    sections: Vec<Section>,
    fds: Vec<FdEntry>,
    schema: Schema,
    regions: Vec<RegionDesc>,
    meta: Vec<u8>,
    file_len: u64,
    store: Store,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("version", &self.version)
            .field("header", &self.header)
            .field("sections", &self.sections.len())
            .field("fds", &self.fds.len())
            .field("regions", &self.regions)
            .field("file_len", &self.file_len)
            .finish()
    }
}

impl Image {
    /// Open and validate the image at `path` with default limits. Region data is not
    /// read.
    pub fn open(path: impl AsRef<Path>) -> Result<Image> {
        Image::open_with(path, &Limits::default())
    }

    /// Open and validate with explicit limits.
    pub fn open_with(path: impl AsRef<Path>, limits: &Limits) -> Result<Image> {
        let path = path.as_ref();
        let file = File::open(path).map_err(crate::writer::io_err("open", path))?;
        let file_len = file
            .metadata()
            .map_err(crate::writer::io_err("read", path))?
            .len();
        let mut prefix = vec![0u8; (PREFIX_LEN as u64).min(file_len) as usize];
        file.read_exact_at(&mut prefix, 0)
            .map_err(crate::writer::io_err("read", path))?;
        let (_, meta_len) = layout::check_prefix(&prefix)?;
        check_meta_len(meta_len, file_len, limits)?;
        let mut meta = vec![0u8; meta_len as usize];
        file.read_exact_at(&mut meta, 0)
            .map_err(crate::writer::io_err("read", path))?;
        let store = Store::File {
            file,
            path: path.to_path_buf(),
        };
        Image::parse(meta, file_len, store, limits)
    }

    /// Validate an image held in memory, with default limits.
    pub fn from_bytes(data: &[u8]) -> Result<Image> {
        Image::from_bytes_with(data, &Limits::default())
    }

    /// Validate an image held in memory, with explicit limits.
    pub fn from_bytes_with(data: &[u8], limits: &Limits) -> Result<Image> {
        let (_, meta_len) = layout::check_prefix(data)?;
        check_meta_len(meta_len, data.len() as u64, limits)?;
        let m = meta_len as usize;
        let store = Store::Memory(data[m..].to_vec());
        Image::parse(data[..m].to_vec(), data.len() as u64, store, limits)
    }

    fn parse(meta: Vec<u8>, file_len: u64, store: Store, limits: &Limits) -> Result<Image> {
        let m = meta.len();
        // The CRC covers every metadata byte before its own value: check it first, so a
        // damaged image is reported as such rather than as whatever the damage looks like.
        let crc_at = m - CRC_FIELD_LEN;
        let stored = u32::from_be_bytes([meta[m - 4], meta[m - 3], meta[m - 2], meta[m - 1]]);
        let computed = crc32fast::hash(&meta[..crc_at]);
        if stored != computed {
            return Err(Error::Crc {
                location: Location::Element("image"),
                offset: 0,
                end: crc_at as u64,
                stored,
                computed,
            });
        }
        let (version, _) = layout::check_prefix(&meta)?;
        let mut c = Cursor::new(&meta[..m], 0);
        c.pos = PREFIX_LEN;

        let header: Header = decode_elem(&mut c, "header", limits)?;
        let sections = read_sections(&mut c, limits)?;
        let fds: Vec<FdEntry> = decode_elem(&mut c, "fd_manifest", limits)?;
        let schema: Schema = decode_elem(&mut c, "schema", limits)?;
        let regions: Vec<RegionDesc> = decode_elem(&mut c, "regions", limits)?;
        let (count, recorded_len) =
            layout::read_trailer(&mut c).map_err(|e| scan_err(e, Location::Element("trailer")))?;
        if c.remaining() != 0 {
            return Err(Error::Malformed {
                location: Location::Element("trailer"),
                offset: c.offset(),
                reason: "metadata continues after the trailer".into(),
            });
        }
        if recorded_len != file_len {
            return Err(Error::Length {
                recorded: recorded_len,
                actual: file_len,
            });
        }
        if count != sections.len() as u64 {
            return Err(inconsistent(
                Location::Element("trailer"),
                format!(
                    "trailer counts {count} sections, the image has {}",
                    sections.len()
                ),
            ));
        }
        let img = Image {
            version,
            header,
            sections,
            fds,
            schema,
            regions,
            meta,
            file_len,
            store,
        };
        img.check_consistency()?;
        img.check_regions()?;
        Ok(img)
    }

    fn check_consistency(&self) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for s in &self.sections {
            if !seen.insert((s.name.as_str(), s.instance.as_str())) {
                return Err(inconsistent(
                    s.location(),
                    "duplicate section instance".into(),
                ));
            }
            match self.schema.get(&s.name) {
                None => {
                    return Err(inconsistent(
                        s.location(),
                        "no schema for this section".into(),
                    ))
                }
                Some(sc) => {
                    if sc.version != s.version
                        || sc.min_version != s.min_version
                        || sc.required != s.required
                    {
                        return Err(inconsistent(
                            s.location(),
                            format!(
                                "section is version {} (min {}, required {}) but its schema says version {} (min {}, required {})",
                                s.version, s.min_version, s.required, sc.version, sc.min_version, sc.required
                            ),
                        ));
                    }
                }
            }
        }
        if self
            .schema
            .sections
            .windows(2)
            .any(|w| w[0].name >= w[1].name)
        {
            return Err(inconsistent(
                Location::Element("schema"),
                "section schemas are not sorted by unique name".into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for f in &self.fds {
            if !names.insert(f.name.as_str()) {
                return Err(inconsistent(
                    Location::Element("fd_manifest"),
                    format!("duplicate fd name {}", f.name),
                ));
            }
        }
        Ok(())
    }

    /// Region table: aligned, in order, inside the file, gaps zero, ending at the end.
    fn check_regions(&self) -> Result<()> {
        let meta_len = self.meta.len() as u64;
        let mut next = align_up(meta_len).unwrap_or(u64::MAX);
        let mut names = std::collections::HashSet::new();
        let mut prev_end = meta_len;
        for r in &self.regions {
            let loc = Location::Region(r.name.clone());
            if !names.insert(r.name.as_str()) {
                return Err(inconsistent(loc, "duplicate region name".into()));
            }
            let end = r.offset.checked_add(r.length);
            if r.offset != next || !matches!(end, Some(e) if e <= self.file_len) {
                return Err(inconsistent(
                    loc,
                    format!("region at {} length {} is not at the next aligned offset {next} inside the {}-byte file", r.offset, r.length, self.file_len),
                ));
            }
            self.check_zero(prev_end, r.offset)?;
            let end = r.offset + r.length;
            prev_end = end;
            next = align_up(end).unwrap_or(u64::MAX);
        }
        if prev_end != self.file_len {
            return Err(Error::Length {
                recorded: prev_end,
                actual: self.file_len,
            });
        }
        Ok(())
    }

    /// Padding between metadata and regions must be zero, so every byte is covered.
    fn check_zero(&self, from: u64, to: u64) -> Result<()> {
        if to <= from {
            return Ok(());
        }
        let bytes = self.read_at(from, to - from, Location::Element("padding"))?;
        if let Some(i) = bytes.iter().position(|&b| b != 0) {
            return Err(Error::Malformed {
                location: Location::Element("padding"),
                offset: from + i as u64,
                reason: "padding byte is not zero".into(),
            });
        }
        Ok(())
    }

    fn read_at(&self, offset: u64, len: u64, loc: Location) -> Result<Vec<u8>> {
        let meta_len = self.meta.len() as u64;
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.file_len && offset >= meta_len);
        let Some(_) = end else {
            return Err(inconsistent(
                loc,
                format!("bytes {offset}+{len} are outside the region area"),
            ));
        };
        match &self.store {
            Store::Memory(v) => {
                let s = (offset - meta_len) as usize;
                Ok(v[s..s + len as usize].to_vec())
            }
            Store::File { file, path } => {
                let n = usize::try_from(len)
                    .map_err(|_| inconsistent(loc, "region larger than memory".into()))?;
                let mut buf = vec![0u8; n];
                file.read_exact_at(&mut buf, offset)
                    .map_err(crate::writer::io_err("read", path))?;
                Ok(buf)
            }
        }
    }

    /// Format version of the image.
    pub fn format_version(&self) -> FormatVersion {
        self.version
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// All sections, in file order.
    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    /// The section `name` / `instance`, if present.
    pub fn find(&self, name: &str, instance: &str) -> Option<&Section> {
        self.sections
            .iter()
            .find(|s| s.name == name && s.instance == instance)
    }

    /// Decode section `T::NAME` / `instance` into `T`, or `None` if absent. Fails if the
    /// stored version is not loadable by `T` (newer than `T::VERSION` with a
    /// `min_version` above it, or older than `T::MIN_VERSION`), or if a field does not
    /// decode (the error names the field).
    pub fn section<T: SectionState>(&self, instance: &str) -> Result<Option<T>> {
        match self.find(T::NAME, instance) {
            None => Ok(None),
            Some(s) => decode_typed(s).map(Some),
        }
    }

    /// Decode every instance of `T::NAME`, in file order, with their instance ids.
    pub fn sections_of<T: SectionState>(&self) -> Result<Vec<(String, T)>> {
        self.sections
            .iter()
            .filter(|s| s.name == T::NAME)
            .map(|s| decode_typed(s).map(|v| (s.instance.clone(), v)))
            .collect()
    }

    /// The fd manifest.
    pub fn fd_manifest(&self) -> &[FdEntry] {
        &self.fds
    }

    /// The embedded schema (one entry per section name present).
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The region table.
    pub fn regions(&self) -> &[RegionDesc] {
        &self.regions
    }

    /// The descriptor of region `name`.
    pub fn region(&self, name: &str) -> Option<&RegionDesc> {
        self.regions.iter().find(|r| r.name == name)
    }

    /// Read region `name` and check its digest. For large regions, map the file at
    /// [`RegionDesc::offset`] instead (it is page aligned).
    pub fn read_region(&self, name: &str) -> Result<Vec<u8>> {
        let r = self
            .region(name)
            .ok_or_else(|| Error::NoSuchRegion(name.to_owned()))?;
        let data = self.read_at(r.offset, r.length, Location::Region(r.name.clone()))?;
        let computed = crc32fast::hash(&data);
        if computed != r.crc32 {
            return Err(Error::RegionDigest {
                name: r.name.clone(),
                offset: r.offset,
                end: r.offset + r.length,
                stored: r.crc32,
                computed,
            });
        }
        Ok(data)
    }

    /// Check every section payload against the embedded schema (types, required fields,
    /// ranges), as a tool's "verify" does; opening does not decode payloads.
    pub fn verify_payloads(&self) -> Result<()> {
        for s in &self.sections {
            let schema = self
                .schema
                .get(&s.name)
                .ok_or_else(|| inconsistent(s.location(), "no schema for this section".into()))?;
            let v = s.value()?;
            crate::describe::check(&v, &schema.payload).map_err(|m| Error::Decode {
                location: s.location(),
                offset: s.offset,
                field: m.path,
                reason: m.reason,
            })?;
        }
        Ok(())
    }

    /// Check every region against its digest.
    pub fn verify_regions(&self) -> Result<()> {
        for r in &self.regions {
            self.read_region(&r.name)?;
        }
        Ok(())
    }

    /// Length of the metadata item (everything before the region area).
    pub fn metadata_len(&self) -> u64 {
        self.meta.len() as u64
    }

    /// Total length of the image.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// The path the image was opened from, if any.
    pub fn path(&self) -> Option<&Path> {
        match &self.store {
            Store::File { path, .. } => Some(path),
            Store::Memory(_) => None,
        }
    }

    /// Whether a program reading `reader` can load this image (see [`compat::check`]).
    pub fn check_compat(&self, reader: &Schema) -> CompatReport {
        compat::check(&self.schema, reader)
    }

    /// The image's bytes, identical to what was read (region data included and checked).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = self.meta.clone();
        out.resize(self.file_len as usize, 0);
        for r in &self.regions {
            let d = self.read_region(&r.name)?;
            out[r.offset as usize..(r.offset + r.length) as usize].copy_from_slice(&d);
        }
        Ok(out)
    }
}

fn check_meta_len(meta_len: u64, available: u64, limits: &Limits) -> Result<()> {
    if meta_len > limits.max_metadata_len {
        return Err(Error::Limit {
            location: Location::Element("prefix"),
            offset: 27,
            what: "metadata length",
            value: meta_len,
            limit: limits.max_metadata_len,
        });
    }
    if meta_len > available {
        return Err(Error::Truncated {
            what: "metadata".into(),
            offset: 0,
            needed: meta_len,
            available,
        });
    }
    if meta_len < (PREFIX_LEN + CRC_FIELD_LEN) as u64 {
        return Err(Error::Malformed {
            location: Location::Element("prefix"),
            offset: 27,
            reason: format!("metadata length {meta_len} is shorter than the fixed parts"),
        });
    }
    Ok(())
}

fn decode_typed<T: SectionState>(s: &Section) -> Result<T> {
    let loadable =
        s.version >= T::MIN_VERSION && (s.version <= T::VERSION || s.min_version <= T::VERSION);
    if !loadable {
        return Err(Error::SectionVersion {
            name: s.name.clone(),
            instance: s.instance.clone(),
            image_version: s.version,
            image_min_version: s.min_version,
            reader_version: T::VERSION,
            reader_min_version: T::MIN_VERSION,
        });
    }
    s.decode()
}

/// Read the section array.
fn read_sections(c: &mut Cursor<'_>, limits: &Limits) -> Result<Vec<Section>> {
    let loc = || Location::Element("sections");
    let at = c.pos;
    let n = c
        .expect(MAJOR_ARRAY, "the section array")
        .map_err(|e| scan_err(e, loc()))?;
    // A section record takes well over 8 bytes: reject absurd counts before reserving.
    if n > c.remaining() as u64 / 8 {
        return Err(Error::Truncated {
            what: "section array".into(),
            offset: c.base + at as u64,
            needed: n.saturating_mul(8),
            available: c.remaining() as u64,
        });
    }
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n {
        out.push(read_section(c, i, limits)?);
    }
    Ok(out)
}

fn read_section(c: &mut Cursor<'_>, index: u64, limits: &Limits) -> Result<Section> {
    let rec_loc = || Location::Element("sections");
    let at = c.pos;
    let pairs = c
        .expect(MAJOR_MAP, "a section record map")
        .map_err(|e| scan_err(e, rec_loc()))?;
    let (mut name, mut instance, mut version, mut min_version, mut required, mut crc, mut payload) =
        (None, None, None, None, None, None, None);
    for _ in 0..pairs {
        let kat = c.pos;
        let key = c.text("record key").map_err(|e| scan_err(e, rec_loc()))?;
        let kat_abs = c.base + kat as u64;
        let dup = || Error::Malformed {
            location: rec_loc(),
            offset: kat_abs,
            reason: format!("duplicate key {key}"),
        };
        let s = |e: ScanError| scan_err(e, rec_loc());
        match key {
            "name" => {
                set_once(&mut name, c.text("name").map_err(s)?.to_owned()).map_err(|_| dup())?
            }
            "instance" => set_once(&mut instance, c.text("instance").map_err(s)?.to_owned())
                .map_err(|_| dup())?,
            "version" => {
                set_once(&mut version, c.uint("version").map_err(s)?).map_err(|_| dup())?
            }
            "min_version" => {
                set_once(&mut min_version, c.uint("min_version").map_err(s)?).map_err(|_| dup())?
            }
            "required" => {
                set_once(&mut required, c.boolean("required").map_err(s)?).map_err(|_| dup())?
            }
            "crc" => set_once(&mut crc, c.uint("crc").map_err(s)?).map_err(|_| dup())?,
            "payload" => {
                let tat = c.pos;
                let tag = c.head().map_err(s)?;
                if tag.major != MAJOR_TAG || tag.arg != 24 {
                    return Err(s(c.malformed(tat, "payload must be tag 24 (encoded CBOR)")));
                }
                let bat = c.pos;
                let h = c.head().map_err(s)?;
                if h.major != MAJOR_BYTES {
                    return Err(s(c.malformed(bat, "payload must be a byte string")));
                }
                if h.arg > limits.max_section_len {
                    return Err(Error::Limit {
                        location: rec_loc(),
                        offset: c.base + bat as u64,
                        what: "section payload length",
                        value: h.arg,
                        limit: limits.max_section_len,
                    });
                }
                let off = c.offset();
                let bytes = c.take(h.arg, "payload").map_err(s)?;
                set_once(&mut payload, (off, bytes)).map_err(|_| dup())?;
            }
            _ => c.skip(2, limits.max_depth).map_err(s)?,
        }
    }
    let at_abs = c.base + at as u64;
    let missing = |k: &str| Error::Malformed {
        location: rec_loc(),
        offset: at_abs,
        reason: format!("section record {index} has no {k}"),
    };
    let name = name.ok_or_else(|| missing("name"))?;
    let instance = instance.ok_or_else(|| missing("instance"))?;
    let loc = Location::Section {
        name: name.clone(),
        instance: instance.clone(),
    };
    let small = |v: u64, what: &str| {
        u32::try_from(v).map_err(|_| Error::Malformed {
            location: loc.clone(),
            offset: at_abs,
            reason: format!("{what} {v} does not fit in 32 bits"),
        })
    };
    let version = small(version.ok_or_else(|| missing("version"))?, "version")?;
    let min_version = small(
        min_version.ok_or_else(|| missing("min_version"))?,
        "min_version",
    )?;
    let crc = small(crc.ok_or_else(|| missing("crc"))?, "crc")?;
    let required = required.ok_or_else(|| missing("required"))?;
    let (poff, pbytes) = payload.ok_or_else(|| missing("payload"))?;
    let computed = crc32fast::hash(pbytes);
    if computed != crc {
        return Err(Error::Crc {
            location: loc,
            offset: poff,
            end: poff + pbytes.len() as u64,
            stored: crc,
            computed,
        });
    }
    if pbytes.first().map(|b| b >> 5) != Some(MAJOR_MAP) {
        return Err(Error::Malformed {
            location: loc,
            offset: poff,
            reason: "payload is not a CBOR map".into(),
        });
    }
    crate::cbor::check_item(pbytes, poff, limits.max_depth)
        .map_err(|e| scan_err(e, loc.clone()))?;
    Ok(Section {
        name,
        instance,
        version,
        min_version,
        required,
        crc,
        offset: poff,
        length: pbytes.len() as u64,
        payload: pbytes.to_vec(),
    })
}

fn set_once<T>(slot: &mut Option<T>, v: T) -> std::result::Result<(), ()> {
    if slot.is_some() {
        return Err(());
    }
    *slot = Some(v);
    Ok(())
}

/// Scan one element in the strict profile, then decode it.
fn decode_elem<T: DeserializeOwned>(
    c: &mut Cursor<'_>,
    elem: &'static str,
    limits: &Limits,
) -> Result<T> {
    // The decoder enforces the strict profile, bounds and nesting itself: no pre-scan.
    let (v, end) = decode_at(
        c.buf,
        c.pos,
        c.base,
        Location::Element(elem),
        limits.max_depth,
        false,
    )?;
    c.pos = end;
    Ok(v)
}

/// Decode one whole item held in `bytes` (a section payload, which passed the strict
/// scan at open).
pub(crate) fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    location: Location,
    offset: u64,
) -> Result<T> {
    decode_at(bytes, 0, offset, location, u32::MAX, true).map(|(v, _)| v)
}

/// Decode the item at `bytes[start..]` (absolute offset of `bytes[0]`: `base`); return
/// it and where it ends. With `whole`, it must end at the end of `bytes`.
fn decode_at<T: DeserializeOwned>(
    bytes: &[u8],
    start: usize,
    base: u64,
    location: Location,
    max_depth: u32,
    whole: bool,
) -> Result<(T, usize)> {
    let max_depth = max_depth.min(DECODE_DEPTH);
    let mut de = crate::de::Deserializer::new(bytes, start, base, max_depth);
    // Fast path without path tracking (which doubles the cost); decode a second time
    // with tracking only to report an error.
    let first =
        T::deserialize(&mut de).and_then(|v| if whole { de.end().map(|()| v) } else { Ok(v) });
    if let Ok(v) = first {
        return Ok((v, de.c.pos));
    }
    let mut de = crate::de::Deserializer::new(bytes, start, base, max_depth);
    let mut track = serde_path_to_error::Track::new();
    let r = T::deserialize(serde_path_to_error::Deserializer::new(&mut de, &mut track));
    let e = match r.and_then(|v| if whole { de.end().map(|()| v) } else { Ok(v) }) {
        Ok(v) => return Ok((v, de.c.pos)),
        Err(e) => e,
    };
    let offset = e.offset.unwrap_or(de.last);
    if e.too_deep {
        return Err(Error::Limit {
            location,
            offset,
            what: "nesting depth",
            value: u64::from(max_depth) + 1,
            limit: u64::from(max_depth),
        });
    }
    Err(Error::Decode {
        location,
        offset,
        field: track.path().to_string(),
        reason: e.msg,
    })
}

/// Nesting bound of the decoder when no lower limit applies (stack safety).
const DECODE_DEPTH: u32 = 128;

pub(crate) fn scan_err(e: ScanError, location: Location) -> Error {
    match e {
        ScanError::Truncated {
            offset,
            needed,
            available,
        } => Error::Truncated {
            what: location.to_string(),
            offset,
            needed,
            available,
        },
        ScanError::Malformed { offset, reason } => Error::Malformed {
            location,
            offset,
            reason,
        },
        ScanError::TooDeep { offset, limit } => Error::Limit {
            location,
            offset,
            what: "nesting depth",
            value: u64::from(limit) + 1,
            limit: u64::from(limit),
        },
    }
}

fn inconsistent(location: Location, reason: String) -> Error {
    Error::Inconsistent { location, reason }
}
