//! Fixed parts of the container layout, limits and region descriptors (see docs/FORMAT.md).

use serde::{Deserialize, Serialize};

use crate::cbor::{put_head, Cursor, ScanError, MAJOR_ARRAY, MAJOR_UINT};
use crate::error::{Error, Location};
use crate::model::FormatVersion;

/// The signature that follows the self-describe tag: a non-ASCII first byte, the format
/// name, then CR LF, SUB and LF so that text-mode transfers and truncated-to-7-bit copies
/// are detected (the PNG trick).
pub const SIGNATURE: [u8; 14] = *b"\x89CPR-IMAGE\r\n\x1a\n";

/// CBOR tag 55799 ("self-described CBOR").
pub const SELF_DESCRIBE_TAG: [u8; 3] = [0xd9, 0xd9, 0xf7];

/// Number of top-level items in format major 1.
pub const TOP_LEVEL_ITEMS: u8 = 9;

/// Length of the fixed prefix: tag, array head, signature, version, metadata length.
pub const PREFIX_LEN: usize = 35;

/// Alignment of region data in the file.
pub const REGION_ALIGN: u64 = 4096;

/// Size of the trailer CRC field (`0x1a` + 4 bytes): the last bytes of the metadata.
pub const CRC_FIELD_LEN: usize = 5;

/// Bounds applied by the reader before allocating or looping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest metadata item (everything but region data), bytes.
    pub max_metadata_len: u64,
    /// Largest section payload, bytes.
    pub max_section_len: u64,
    /// Deepest CBOR nesting in any element or payload.
    pub max_depth: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_metadata_len: 256 << 20,
            max_section_len: 64 << 20,
            max_depth: 32,
        }
    }
}

/// A raw data region stored after the metadata, page aligned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionDesc {
    /// Unique name, e.g. `ram.pc.ram`.
    pub name: String,
    /// Byte offset of its first byte in the file (a multiple of [`REGION_ALIGN`]).
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// CRC32 (IEEE, as crc32fast) of its bytes; encoded as a 4-byte big-endian byte
    /// string so that the metadata length does not depend on its value.
    #[serde(with = "crc_be")]
    pub crc32: u32,
}

mod crc_be {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&v.to_be_bytes())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let b = crate::schema::Bytes::deserialize(d)?;
        let a: [u8; 4] =
            b.0.as_slice()
                .try_into()
                .map_err(|_| serde::de::Error::invalid_length(b.0.len(), &"4 bytes"))?;
        Ok(u32::from_be_bytes(a))
    }
}

pub(crate) fn align_up(v: u64) -> Option<u64> {
    v.checked_add(REGION_ALIGN - 1)
        .map(|x| x & !(REGION_ALIGN - 1))
}

/// The fixed prefix for a metadata item of `meta_len` bytes.
pub(crate) fn prefix(meta_len: u64) -> [u8; PREFIX_LEN] {
    let mut p = [0u8; PREFIX_LEN];
    p[0..3].copy_from_slice(&SELF_DESCRIBE_TAG);
    p[3] = 0x80 | TOP_LEVEL_ITEMS;
    p[4] = 0x40 | SIGNATURE.len() as u8;
    p[5..19].copy_from_slice(&SIGNATURE);
    // Version: array(2) of two uint16 with fixed-width heads, so it sits at a fixed place.
    p[19] = 0x82;
    p[20] = 0x19;
    p[21..23].copy_from_slice(&FormatVersion::CURRENT.major.to_be_bytes());
    p[23] = 0x19;
    p[24..26].copy_from_slice(&FormatVersion::CURRENT.minor.to_be_bytes());
    p[26] = 0x1b;
    p[27..35].copy_from_slice(&meta_len.to_be_bytes());
    p
}

/// Validate the fixed prefix of `data` (which may be shorter than the prefix if the
/// input is). Returns the format version and the metadata length.
pub(crate) fn check_prefix(data: &[u8]) -> Result<(FormatVersion, u64), Error> {
    let expect = prefix(0);
    // Tag, array head, signature: compare what is there, byte by byte.
    let sig_end = 19;
    for i in 0..sig_end.min(data.len()) {
        if i == 3 {
            continue; // the item count is checked after the version
        }
        if data[i] != expect[i] {
            return Err(Error::BadSignature {
                offset: i as u64,
                text_mode_mangled: looks_mangled(data),
            });
        }
    }
    if data.len() < PREFIX_LEN {
        return Err(Error::Truncated {
            what: "fixed prefix".into(),
            offset: 0,
            needed: PREFIX_LEN as u64,
            available: data.len() as u64,
        });
    }
    if data[19] != 0x82 || data[20] != 0x19 || data[23] != 0x19 {
        return Err(malformed_prefix(
            19,
            "format version must be array(2) of fixed-width uint16",
        ));
    }
    let found = FormatVersion {
        major: u16::from_be_bytes([data[21], data[22]]),
        minor: u16::from_be_bytes([data[24], data[25]]),
    };
    if found.major != FormatVersion::CURRENT.major {
        return Err(Error::UnsupportedVersion {
            found,
            supported: FormatVersion::CURRENT,
        });
    }
    if data[3] != expect[3] {
        return Err(malformed_prefix(3, "top-level array must have 9 items"));
    }
    if data[26] != 0x1b {
        return Err(malformed_prefix(
            26,
            "metadata length must be a fixed-width uint64",
        ));
    }
    let mut l = [0u8; 8];
    l.copy_from_slice(&data[27..35]);
    Ok((found, u64::from_be_bytes(l)))
}

fn malformed_prefix(offset: u64, reason: &str) -> Error {
    Error::Malformed {
        location: Location::Element("prefix"),
        offset,
        reason: reason.into(),
    }
}

/// Whether the start of `data` looks like our signature after a text-mode transfer:
/// CR LF turned into LF, LF into CR LF, or the high bit stripped.
fn looks_mangled(data: &[u8]) -> bool {
    let sig = &SIGNATURE;
    let mut lf_only = Vec::new();
    let mut crlf = Vec::new();
    for (i, &b) in sig.iter().enumerate() {
        if !(b == b'\r' && sig.get(i + 1) == Some(&b'\n')) {
            lf_only.push(b);
        }
        if b == b'\n' && (i == 0 || sig[i - 1] != b'\r') {
            crlf.push(b'\r');
        }
        crlf.push(b);
    }
    let stripped: Vec<u8> = sig.iter().map(|b| b & 0x7f).collect();
    let body = data.get(5..).unwrap_or(&[]);
    [lf_only, crlf, stripped]
        .iter()
        .any(|v| body.len() >= v.len() && body.starts_with(v))
}

/// Encode the trailer: array(3) [section count, file length, crc32 as 0x1a + 4 bytes].
/// The CRC bytes are left zero; the caller fills them.
pub(crate) fn put_trailer(out: &mut Vec<u8>, sections: u64, file_len: u64) {
    put_head(out, MAJOR_ARRAY, 3);
    put_head(out, MAJOR_UINT, sections);
    put_head(out, MAJOR_UINT, file_len);
    out.extend_from_slice(&[0x1a, 0, 0, 0, 0]);
}

/// Parse the trailer at the cursor: returns (section count, file length).
pub(crate) fn read_trailer(c: &mut Cursor<'_>) -> Result<(u64, u64), ScanError> {
    let at = c.pos;
    if c.expect(MAJOR_ARRAY, "the trailer array")? != 3 {
        return Err(c.malformed(at, "trailer must be an array of 3 items"));
    }
    let count = c.uint("section count")?;
    let len = c.uint("file length")?;
    let crc_at = c.pos;
    let b = c.take(CRC_FIELD_LEN as u64, "trailer CRC")?;
    if b[0] != 0x1a {
        return Err(c.malformed(crc_at, "trailer CRC must be a fixed-width uint32"));
    }
    Ok((count, len))
}
