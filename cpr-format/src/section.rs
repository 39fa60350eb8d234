//! Section records: the [`Section`] type and the parser of the section array.

use crate::cbor::{Cursor, ScanError, MAJOR_ARRAY, MAJOR_BYTES, MAJOR_MAP, MAJOR_TAG};
use crate::decode::{decode, scan_err};
use crate::error::{Error, Location, Result};
use crate::layout::Limits;
use crate::Value;
use serde::de::DeserializeOwned;

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

    /// Decode the payload into `T` without version checks (see [`crate::Image::section`]).
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

/// Read the section array.
pub(crate) fn read_sections(c: &mut Cursor<'_>, limits: &Limits) -> Result<Vec<Section>> {
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
