//! The live-update (CPR) image format: a versioned, self-describing CBOR container.
//!
//! An image holds a [`Header`] (producer, host, [`Mode`], [`MachineDesc`]), named and
//! versioned sections of device and vCPU state (CBOR maps with named fields, each with a
//! CRC), the schema of those sections, an fd manifest ([`FdEntry`]) and optional raw
//! page-aligned regions. The byte layout is specified in `docs/FORMAT.md`.
//!
//! # Declaring state
//!
//! State structs are declared once with [`state!`], which derives serde, the schema
//! ([`Describe`]) and, for sections, [`SectionState`] (name, version, min_version,
//! required flag):
//!
//! ```
//! cpr_format::state! {
//!     /// Registers of one vCPU.
//!     #[section(name = "cpu.regs", version = 1, min_version = 1, required = true)]
//!     pub struct RegsState {
//!         #[hint(hex)] pub rax: u64,
//!         #[hint(addr)] pub rip: u64,
//!         #[hint(flags)] pub rflags: u64,
//!     }
//! }
//! # use cpr_format::*;
//! # fn header() -> Header {
//! #     Header {
//! #         producer: Producer { name: "vmm".into(), version: "0.1.0".into(), build_id: "dev".into() },
//! #         created_unix_ns: 0,
//! #         host: HostInfo { kernel_release: "6.1.0".into(), page_size: 4096 },
//! #         mode: Mode::Restart,
//! #         machine: MachineDesc { vcpus: 1, ram_blocks: vec![], devices: vec![] },
//! #     }
//! # }
//! let mut w = ImageWriter::new(header());
//! w.add_section("0", &RegsState { rax: 1, rip: 0x1000, rflags: 2 })?;
//! let bytes = w.to_bytes()?;
//!
//! let img = Image::from_bytes(&bytes)?;
//! let regs: RegsState = img.section("0")?.expect("written above");
//! assert_eq!(regs.rip, 0x1000);
//! assert!(img.check_compat(&Schema::new().with::<RegsState>()).is_compatible());
//! assert_eq!(img.to_bytes()?, bytes);
//! # Ok::<(), cpr_format::Error>(())
//! ```
//!
//! # Writing
//!
//! [`ImageWriter::new`], then [`ImageWriter::add_section`] (typed),
//! [`ImageWriter::add_value_section`] / [`ImageWriter::add_raw_section`] (untyped, for
//! tools), [`ImageWriter::add_fd`], [`ImageWriter::add_region`] /
//! [`ImageWriter::add_region_reader`]; finish with [`ImageWriter::write_atomic`] (temp
//! file, fsync, rename, fsync of the directory), [`ImageWriter::write_to_file`] (an open
//! file such as a memfd) or [`ImageWriter::to_bytes`].
//!
//! # Reading
//!
//! [`Image::open`] / [`Image::from_file`] (an open file such as a memfd) /
//! [`Image::from_bytes`] validate everything but region data, which is checked when read ([`Image::read_region`], [`Image::verify_regions`]). Then
//! [`Image::header`], [`Image::sections`] (untyped: [`Section::value`] with
//! [`Image::schema`]), [`Image::section`] / [`Image::sections_of`] (typed),
//! [`Image::fd_manifest`], [`Image::regions`]. [`Image::to_bytes`] gives back the exact
//! bytes. No input makes the reader panic, loop without bound or allocate more than the
//! input's size (see [`Limits`]).
//!
//! # Without the Rust types
//!
//! [`describe::check`] validates a payload value tree against its schema,
//! [`describe::flatten`] turns it into leaves (path, type, hint, value) for display, and
//! [`describe::diff`] compares two payloads field by field, even of different versions.
//! [`Image::verify_payloads`] checks every section against the embedded schema.
//!
//! # Compatibility
//!
//! [`compat::check`] compares an image's [`Schema`] with a reader's and lists findings
//! (section unknown, version too new or too old, required field missing, type changed);
//! [`compat::check_both`] answers both directions. A [`Schema`] serialises to JSON.
//! [`Image::require_compatible`] turns a failed check into [`Error::Incompatible`]; a VMM
//! calls it with `Schema::new().with::<A>().with::<B>()...` (its state types) before
//! restoring anything. [`Image::section`] also refuses a section version its type cannot
//! load ([`Error::SectionVersion`]).
//!
//! # Errors
//!
//! One [`Error`] type; every decoding error carries the byte offset and, where it
//! applies, the [`Location`] (element, section name and instance, region) and the field
//! path. Payload values are [`Value`] (ciborium's value tree).
//!
//! # Sample data
//!
//! [`sample`] builds a typical image (4 vCPUs, 12 devices, 20 fds) and a small one, used
//! by the tests, the benchmark (`cargo run --release -p cpr-format --example bench`) and
//! the fuzz corpus; tools may use them for fixtures.

#![deny(missing_docs)]

extern crate self as cpr_format;

mod cbor;
pub mod compat;
mod de;
mod decode;
pub mod describe;
mod error;
mod image;
mod layout;
mod macros;
mod model;
pub mod sample;
mod schema;
mod section;
mod writer;

pub use ciborium::Value;
pub use compat::{CompatReport, Finding, FindingKind, Severity};
pub use error::{Error, Location, Result};
pub use image::Image;
pub use layout::{Limits, RegionDesc, PREFIX_LEN, REGION_ALIGN, SIGNATURE};
pub use model::{
    DeviceDesc, FdEntry, FdIdentity, FdKind, FileType, FormatVersion, Header, HostInfo,
    MachineDesc, Mode, Producer, RamBacking, RamBlockDesc,
};
pub use schema::{
    Bytes, Describe, FieldSchema, FieldType, Hint, OptionalField, Schema, SectionSchema,
    SectionState, StructSchema,
};
pub use section::Section;
pub use writer::{EncodedSection, ImageWriter, SectionInfo, WriteStats};

#[doc(hidden)]
pub mod __private {
    pub use serde;

    /// The struct schema of a type declared with `state!`.
    pub trait DescribeStruct {
        /// Name and fields.
        fn struct_schema() -> crate::StructSchema;
    }

    /// The fuzz target's body (shared by `fuzz/` and the corpus test): read `data` as
    /// an image, and as image metadata with a valid prefix and CRC (so that random input
    /// reaches the element parsers), exercising every accessor of what opens.
    pub fn fuzz_reader(data: &[u8]) {
        if let Ok(img) = crate::Image::from_bytes(data) {
            exercise(&img);
        }
        let mut meta = crate::layout::prefix(0).to_vec();
        meta.extend_from_slice(data);
        meta.extend_from_slice(&[0x1a, 0, 0, 0, 0]);
        let m = meta.len();
        meta[27..35].copy_from_slice(&(m as u64).to_be_bytes());
        let crc = crc32fast::hash(&meta[..m - 5]);
        meta[m - 4..].copy_from_slice(&crc.to_be_bytes());
        if let Ok(img) = crate::Image::from_bytes(&meta) {
            exercise(&img);
        }
    }

    fn exercise(img: &crate::Image) {
        for s in img.sections() {
            let _ = s.value();
        }
        let _ = img.section::<crate::sample::RegsState>("0");
        let _ = img.sections_of::<crate::sample::CpuExtState>();
        let _ = img.sections_of::<crate::sample::DeviceState>();
        let _ = img.verify_regions();
        let _ = img.verify_payloads();
        for s in img.sections() {
            if let (Ok(v), Some(schema)) = (s.value(), img.schema().get(&s.name)) {
                let _ = crate::describe::flatten(&v, &schema.payload);
                let _ = crate::describe::diff(&v, &schema.payload, &v, &schema.payload);
            }
        }
        let _ = img.to_bytes();
        let _ = crate::compat::check(img.schema(), img.schema());
        let _ = crate::compat::check(img.schema(), &crate::Schema::new());
    }

    /// Decode one strict-profile CBOR item with the crate's decoder (benchmarks).
    pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> crate::Result<T> {
        crate::decode::decode(bytes, crate::Location::Element("bench"), 0)
    }

    /// The first non-empty doc-comment line, trimmed.
    pub fn first_doc_line(lines: &[&str]) -> String {
        lines
            .iter()
            .map(|l| l.trim())
            .find(|l| !l.is_empty())
            .unwrap_or("")
            .to_owned()
    }
}
