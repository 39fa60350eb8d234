//! The compatibility engine: can a reader with one schema load an image with another?
//!
//! `check(image, reader)` answers "new reads old" when `image` is the old schema and
//! `reader` the new one, and "old reads new" the other way round; [`check_both`] does
//! both. The rules (docs/FORMAT.md, "Compatibility rules"):
//!
//! - A section in the image that the reader does not know: refused if required, skipped
//!   if optional.
//! - Image section version `v`, its `min_version` `m`, reader version `r`, reader
//!   `min_version` `rm`: loadable iff `v >= rm` and (`v <= r` or `m <= r`).
//! - Fields, recursively through nested structs, lists, arrays and options: a field the
//!   reader requires (not optional) that the image lacks is refused; a field whose type
//!   differs is refused (an image `T` read as `Optional(T)` is fine, the reverse is not);
//!   an image field the reader does not know is ignored (reported as info).
//! - A reader section absent from the image is reported as a warning.

use serde::{Deserialize, Serialize};

use crate::schema::{FieldSchema, FieldType, Schema, SectionSchema};

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Nothing lost.
    Info,
    /// Loadable, but something the reader knows is absent.
    Warning,
    /// The reader cannot load the image.
    Error,
}

/// What was found.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// The image has a section the reader does not know.
    UnknownSection {
        /// The section's required flag.
        required: bool,
    },
    /// The reader knows a section the image lacks.
    SectionAbsent,
    /// The image's section is newer than the reader and not loadable by it.
    VersionTooNew {
        /// Image section version.
        image: u32,
        /// Image section min_version.
        image_min: u32,
        /// Reader version.
        reader: u32,
    },
    /// The image's section is older than the reader accepts.
    VersionTooOld {
        /// Image section version.
        image: u32,
        /// Reader min_version.
        reader_min: u32,
    },
    /// The image section is newer but declares itself loadable by the reader.
    NewerCompatible {
        /// Image section version.
        image: u32,
        /// Reader version.
        reader: u32,
    },
    /// A field the reader requires is not in the image.
    FieldMissing,
    /// An optional reader field is not in the image (read as absent).
    OptionalFieldMissing,
    /// The image has a field the reader does not know (ignored).
    FieldIgnored,
    /// The field's type differs.
    TypeChanged {
        /// Type in the image.
        image: String,
        /// Type in the reader.
        reader: String,
    },
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Finding {
    /// Section name.
    pub section: String,
    /// Field path (`regs.cs.base`, `msrs[]`), if the finding is about a field.
    pub field: Option<String>,
    /// Severity.
    pub severity: Severity,
    /// What.
    pub kind: FindingKind,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(f, "{sev}: section {}", self.section)?;
        if let Some(p) = &self.field {
            write!(f, " field {p}")?;
        }
        match &self.kind {
            FindingKind::UnknownSection { required: true } => {
                write!(f, ": required section unknown to the reader")
            }
            FindingKind::UnknownSection { required: false } => {
                write!(f, ": optional section unknown to the reader, skipped")
            }
            FindingKind::SectionAbsent => {
                write!(f, ": known to the reader but absent from the image")
            }
            FindingKind::VersionTooNew {
                image,
                image_min,
                reader,
            } => {
                write!(f, ": image version {image} needs a reader of version {image_min} or later, reader is version {reader}")
            }
            FindingKind::VersionTooOld { image, reader_min } => {
                write!(f, ": image version {image} is older than the oldest the reader loads ({reader_min})")
            }
            FindingKind::NewerCompatible { image, reader } => {
                write!(f, ": image version {image} is newer than the reader's {reader} but declared loadable by it")
            }
            FindingKind::FieldMissing => {
                write!(f, ": required by the reader, absent from the image")
            }
            FindingKind::OptionalFieldMissing => write!(f, ": optional, absent from the image"),
            FindingKind::FieldIgnored => write!(f, ": unknown to the reader, ignored"),
            FindingKind::TypeChanged { image, reader } => {
                write!(f, ": type {image} in the image, {reader} in the reader")
            }
        }
    }
}

/// The result of a check.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompatReport {
    /// All findings, errors first then by section and field.
    pub findings: Vec<Finding>,
}

impl CompatReport {
    /// Whether the reader can load the image (no error finding).
    pub fn is_compatible(&self) -> bool {
        !self.findings.iter().any(|f| f.severity == Severity::Error)
    }

    /// The error findings.
    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
    }
}

/// Can a reader with schema `reader` load an image with schema `image`?
pub fn check(image: &Schema, reader: &Schema) -> CompatReport {
    let mut out = Vec::new();
    for is in &image.sections {
        match reader.get(&is.name) {
            None => out.push(finding(
                &is.name,
                None,
                if is.required {
                    Severity::Error
                } else {
                    Severity::Info
                },
                FindingKind::UnknownSection {
                    required: is.required,
                },
            )),
            Some(rs) => check_section(is, rs, &mut out),
        }
    }
    for rs in &reader.sections {
        if image.get(&rs.name).is_none() {
            out.push(finding(
                &rs.name,
                None,
                Severity::Warning,
                FindingKind::SectionAbsent,
            ));
        }
    }
    out.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| a.section.cmp(&b.section))
            .then_with(|| a.field.cmp(&b.field))
    });
    CompatReport { findings: out }
}

/// Both directions: (`b` reads `a`, `a` reads `b`). With `a` old and `b` new: (new reads
/// old, old reads new).
pub fn check_both(a: &Schema, b: &Schema) -> (CompatReport, CompatReport) {
    (check(a, b), check(b, a))
}

fn finding(section: &str, field: Option<String>, severity: Severity, kind: FindingKind) -> Finding {
    Finding {
        section: section.to_owned(),
        field,
        severity,
        kind,
    }
}

fn check_section(is: &SectionSchema, rs: &SectionSchema, out: &mut Vec<Finding>) {
    let name = &is.name;
    if is.version < rs.min_version {
        out.push(finding(
            name,
            None,
            Severity::Error,
            FindingKind::VersionTooOld {
                image: is.version,
                reader_min: rs.min_version,
            },
        ));
        return;
    }
    if is.version > rs.version {
        if is.min_version > rs.version {
            out.push(finding(
                name,
                None,
                Severity::Error,
                FindingKind::VersionTooNew {
                    image: is.version,
                    image_min: is.min_version,
                    reader: rs.version,
                },
            ));
            return;
        }
        out.push(finding(
            name,
            None,
            Severity::Info,
            FindingKind::NewerCompatible {
                image: is.version,
                reader: rs.version,
            },
        ));
    }
    check_fields(name, "", &is.payload.fields, &rs.payload.fields, out);
}

fn check_fields(
    section: &str,
    prefix: &str,
    image: &[FieldSchema],
    reader: &[FieldSchema],
    out: &mut Vec<Finding>,
) {
    for rf in reader {
        let path = format!("{prefix}{}", rf.name);
        match image.iter().find(|f| f.name == rf.name) {
            None if rf.is_required() => out.push(finding(
                section,
                Some(path),
                Severity::Error,
                FindingKind::FieldMissing,
            )),
            None => out.push(finding(
                section,
                Some(path),
                Severity::Info,
                FindingKind::OptionalFieldMissing,
            )),
            Some(imf) => check_type(section, &path, &imf.ty, &rf.ty, out),
        }
    }
    for imf in image {
        if !reader.iter().any(|f| f.name == imf.name) {
            out.push(finding(
                section,
                Some(format!("{prefix}{}", imf.name)),
                Severity::Info,
                FindingKind::FieldIgnored,
            ));
        }
    }
}

fn check_type(
    section: &str,
    path: &str,
    image: &FieldType,
    reader: &FieldType,
    out: &mut Vec<Finding>,
) {
    use FieldType as T;
    match (image, reader) {
        (T::Optional(i), T::Optional(r)) => check_type(section, path, i, r, out),
        // A value that is always present can be read as optional.
        (i, T::Optional(r)) => check_type(section, path, i, r, out),
        (T::List(i), T::List(r)) => check_type(section, &format!("{path}[]"), i, r, out),
        (T::Array { elem: i, len: il }, T::Array { elem: r, len: rl }) if il == rl => {
            check_type(section, &format!("{path}[]"), i, r, out)
        }
        (T::Struct(i), T::Struct(r)) => {
            check_fields(section, &format!("{path}."), &i.fields, &r.fields, out)
        }
        (T::Bytes { len: il }, T::Bytes { len: rl }) if rl.is_none() || il == rl => {}
        (i, r) if i == r => {}
        (i, r) => out.push(finding(
            section,
            Some(path.to_owned()),
            Severity::Error,
            FindingKind::TypeChanged {
                image: i.display_name(),
                reader: r.display_name(),
            },
        )),
    }
}
