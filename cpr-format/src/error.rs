//! Typed errors. Every decoding error names where it happened: the byte offset in the
//! file and, where known, the section and field.

use std::path::PathBuf;

use crate::model::{FdIdentity, FormatVersion};

/// Where in an image something went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A top-level element of the container (`header`, `sections`, `fd_manifest`, ...).
    Element(&'static str),
    /// A section, by name and instance.
    Section {
        /// Section name.
        name: String,
        /// Instance id.
        instance: String,
    },
    /// A region, by name.
    Region(String),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Element(e) => write!(f, "{e}"),
            Location::Section { name, instance } => write!(f, "section {name}[{instance}]"),
            Location::Region(r) => write!(f, "region {r}"),
        }
    }
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation on an image file failed.
    #[error("Cannot {op} {path}")]
    Io {
        /// What was being done (`open`, `read`, `write`, `rename`, `sync directory of`).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// fstat on a descriptor failed.
    #[error("Cannot fstat fd {fd}")]
    Fstat {
        /// The descriptor.
        fd: i32,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The input does not start with the CBOR self-describe tag and the cpr signature.
    #[error("Not a cpr image: bad signature at byte {offset}{}", mangled_note(*.text_mode_mangled))]
    BadSignature {
        /// Offset of the first differing byte.
        offset: u64,
        /// The signature looks like it went through a text-mode transfer (CRLF/LF
        /// conversion or high-bit stripping).
        text_mode_mangled: bool,
    },
    /// The image was written by a newer, incompatible major version of the format.
    #[error(
        "Image format version {found} is not readable by this reader (format version {supported})"
    )]
    UnsupportedVersion {
        /// Version in the image.
        found: FormatVersion,
        /// Version of this reader.
        supported: FormatVersion,
    },
    /// The input ends before a structure that it declares.
    #[error(
        "Truncated image: {what} at byte {offset} needs {needed} bytes, {available} available"
    )]
    Truncated {
        /// What was being read.
        what: String,
        /// Byte offset.
        offset: u64,
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// A CBOR structure is not what the format requires.
    #[error("Malformed {location} at byte {offset}: {reason}")]
    Malformed {
        /// Where.
        location: Location,
        /// Byte offset.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A limit was exceeded (before anything was allocated for it).
    #[error("Limit exceeded in {location} at byte {offset}: {what} is {value}, limit {limit}")]
    Limit {
        /// Where.
        location: Location,
        /// Byte offset.
        offset: u64,
        /// Which limit.
        what: &'static str,
        /// The offending value.
        value: u64,
        /// The limit.
        limit: u64,
    },
    /// A CRC does not match.
    #[error("CRC mismatch in {location} (bytes {offset}..{end}): stored {stored:#010x}, computed {computed:#010x}")]
    Crc {
        /// What the CRC covers.
        location: Location,
        /// Start of the covered bytes.
        offset: u64,
        /// End of the covered bytes.
        end: u64,
        /// CRC stored in the image.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// The image's length is not the one its trailer records.
    #[error("Image length {actual} differs from the {recorded} bytes recorded in its trailer")]
    Length {
        /// Length recorded in the trailer.
        recorded: u64,
        /// Actual length.
        actual: u64,
    },
    /// A well-formed value does not decode into the expected type.
    #[error("Cannot decode {location} at byte {offset}, field {field}: {reason}")]
    Decode {
        /// Where.
        location: Location,
        /// Start of the encoded value.
        offset: u64,
        /// Path of the field (`.` when the whole value is at fault).
        field: String,
        /// What serde reported.
        reason: String,
    },
    /// The image is inconsistent (duplicates, missing schema, counts).
    #[error("Inconsistent image in {location}: {reason}")]
    Inconsistent {
        /// Where.
        location: Location,
        /// What is wrong.
        reason: String,
    },
    /// A section's version is not loadable by the reader's type.
    #[error("Section {name}[{instance}] version {image_version} (loadable from version {image_min_version}) cannot be read by reader version {reader_version} (reads from version {reader_min_version})")]
    SectionVersion {
        /// Section name.
        name: String,
        /// Instance.
        instance: String,
        /// Version in the image.
        image_version: u32,
        /// Minimum version to load it, from the image.
        image_min_version: u32,
        /// Version of the reader's type.
        reader_version: u32,
        /// Oldest version the reader's type loads.
        reader_min_version: u32,
    },
    /// A section the reader needs is not in the image.
    #[error("Image has no section {name}[{instance}]")]
    MissingSection {
        /// Section name.
        name: String,
        /// Instance.
        instance: String,
    },
    /// A region's bytes do not match its digest.
    #[error("Region {name} (bytes {offset}..{end}) does not match its digest: stored {stored:#010x}, computed {computed:#010x}")]
    RegionDigest {
        /// Region name.
        name: String,
        /// Start of its data.
        offset: u64,
        /// End of its data.
        end: u64,
        /// Digest in the image.
        stored: u32,
        /// Digest of the bytes.
        computed: u32,
    },
    /// No region of that name.
    #[error("No region named {0}")]
    NoSuchRegion(String),
    /// A value given to the writer cannot be encoded in the format.
    #[error("Cannot encode {location}: {reason}")]
    Encode {
        /// What was being encoded.
        location: Location,
        /// Why not.
        reason: String,
    },
    /// The reader cannot load the image (unknown required section, version too new or
    /// too old, required field missing, type changed).
    #[error("Image cannot be loaded: {}", join_findings(.errors))]
    Incompatible {
        /// The error findings of the compatibility check.
        errors: Vec<crate::compat::Finding>,
    },
    /// A received descriptor is not the one recorded.
    #[error("Descriptor {name} is not the recorded file: expected {expected:?}, got {actual:?}")]
    FdIdentityMismatch {
        /// Manifest entry name.
        name: String,
        /// Identity at save time.
        expected: FdIdentity,
        /// Identity of the received descriptor.
        actual: FdIdentity,
    },
}

fn join_findings(f: &[crate::compat::Finding]) -> String {
    f.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

fn mangled_note(m: bool) -> &'static str {
    if m {
        " (it looks mangled by a text-mode transfer)"
    } else {
        ""
    }
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
