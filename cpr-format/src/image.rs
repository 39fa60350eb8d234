//! [`Image`]: reads and validates an image, gives typed and untyped access.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::cbor::Cursor;
use crate::compat::{self, CompatReport};
use crate::decode::{decode_elem, scan_err};
use crate::error::{Error, Location, Result};
use crate::layout::{self, align_up, Limits, RegionDesc, CRC_FIELD_LEN, PREFIX_LEN};
use crate::model::{FdEntry, FormatVersion, Header};
use crate::schema::{Schema, SectionState};
use crate::section::{read_sections, Section};

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
    /// Where the schema element lies in `meta`.
    schema_span: std::ops::Range<usize>,
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
        Image::from_file_named(file, path.to_path_buf(), limits)
    }

    /// Validate the image in an open file (for example a memfd received across a live
    /// update), with default limits. Region data is not read. Reads use positioned I/O:
    /// the file offset is not used or changed.
    pub fn from_file(file: File) -> Result<Image> {
        let name = PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&file)
        ));
        Image::from_file_named(file, name, &Limits::default())
    }

    fn from_file_named(file: File, path: PathBuf, limits: &Limits) -> Result<Image> {
        let file_len = file
            .metadata()
            .map_err(crate::writer::io_err("read", &path))?
            .len();
        let mut prefix = vec![0u8; (PREFIX_LEN as u64).min(file_len) as usize];
        file.read_exact_at(&mut prefix, 0)
            .map_err(crate::writer::io_err("read", &path))?;
        let (_, meta_len) = layout::check_prefix(&prefix)?;
        check_meta_len(meta_len, file_len, limits)?;
        let mut meta = vec![0u8; meta_len as usize];
        file.read_exact_at(&mut meta, 0)
            .map_err(crate::writer::io_err("read", &path))?;
        Image::parse(meta, file_len, Store::File { file, path }, limits, None)
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
        Image::parse(data[..m].to_vec(), data.len() as u64, store, limits, None)
    }

    /// [`Image::from_bytes`] for an image expected to embed the same schema as `like`: when
    /// its schema element is byte for byte `like`'s, `like`'s decoded schema is reused
    /// instead of decoding it again (the schema is often larger than the state it
    /// describes). Otherwise it is decoded as usual. Validation is the same either way: a
    /// CBOR item is self-delimiting, so equal bytes are the same element with the same end.
    pub fn from_bytes_like(data: &[u8], like: &Image) -> Result<Image> {
        let limits = Limits::default();
        let (_, meta_len) = layout::check_prefix(data)?;
        check_meta_len(meta_len, data.len() as u64, &limits)?;
        let m = meta_len as usize;
        let store = Store::Memory(data[m..].to_vec());
        Image::parse(
            data[..m].to_vec(),
            data.len() as u64,
            store,
            &limits,
            Some(like),
        )
    }

    /// The schema element's encoded bytes.
    pub fn schema_bytes(&self) -> &[u8] {
        &self.meta[self.schema_span.clone()]
    }

    fn parse(
        meta: Vec<u8>,
        file_len: u64,
        store: Store,
        limits: &Limits,
        like: Option<&Image>,
    ) -> Result<Image> {
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
        let schema_start = c.pos;
        let schema: Schema = match like.map(|l| (l, l.schema_bytes())) {
            Some((l, known))
                if meta
                    .get(c.pos..crc_at)
                    .is_some_and(|rest| rest.starts_with(known)) =>
            {
                c.pos += known.len();
                l.schema.clone()
            }
            _ => decode_elem(&mut c, "schema", limits)?,
        };
        let schema_span = schema_start..c.pos;
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
            schema_span,
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

    /// Like [`Image::section`], but a missing section is an [`Error::MissingSection`]:
    /// for state a restore cannot do without.
    pub fn required_section<T: SectionState>(&self, instance: &str) -> Result<T> {
        self.section(instance)?
            .ok_or_else(|| Error::MissingSection {
                name: T::NAME.to_owned(),
                instance: instance.to_owned(),
            })
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

    /// Check region `name` against its digest, reading it in 1 MiB pieces (memory use
    /// does not grow with the region).
    pub fn verify_region(&self, name: &str) -> Result<()> {
        let r = self
            .region(name)
            .ok_or_else(|| Error::NoSuchRegion(name.to_owned()))?;
        let mut h = crc32fast::Hasher::new();
        let mut done = 0u64;
        while done < r.length {
            let n = (r.length - done).min(1 << 20);
            let chunk = self.read_at(r.offset + done, n, Location::Region(r.name.clone()))?;
            h.update(&chunk);
            done += n;
        }
        let computed = h.finalize();
        if computed != r.crc32 {
            return Err(Error::RegionDigest {
                name: r.name.clone(),
                offset: r.offset,
                end: r.offset + r.length,
                stored: r.crc32,
                computed,
            });
        }
        Ok(())
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
            self.verify_region(&r.name)?;
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

    /// Like [`Image::check_compat`], but an image the reader cannot load is an
    /// [`Error::Incompatible`] listing the reasons. A VMM calls this with the schema of
    /// its state types before restoring anything.
    pub fn require_compatible(&self, reader: &Schema) -> Result<CompatReport> {
        let report = compat::check(&self.schema, reader);
        if !report.is_compatible() {
            return Err(Error::Incompatible {
                errors: report.errors().cloned().collect(),
            });
        }
        Ok(report)
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

fn inconsistent(location: Location, reason: String) -> Error {
    Error::Inconsistent { location, reason }
}
