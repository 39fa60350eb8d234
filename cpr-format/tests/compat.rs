//! The compatibility engine, in both directions.

use cpr_format::compat::{check, check_both};
use cpr_format::*;

mod v1 {
    cpr_format::state! {
        /// Serial port.
        #[section(name = "serial", version = 1, min_version = 1, required = true)]
        pub struct Serial {
            pub ier: u8,
            pub lcr: u8,
            pub fifo: cpr_format::Bytes,
        }
        /// Old-only optional section.
        #[section(name = "legacy", version = 1, min_version = 1, required = false)]
        pub struct Legacy {
            pub x: u32,
        }
        /// PIT.
        #[section(name = "pit", version = 1, min_version = 1, required = true)]
        pub struct Pit {
            pub count: u32,
            pub mode: u8,
        }
    }
}

mod v2 {
    cpr_format::state! {
        /// A channel, nested.
        pub struct Channel {
            pub count: u32,
            pub mode: u8,
        }
        /// Serial port, with a field added in version 2 that version 1 can ignore.
        #[section(name = "serial", version = 2, min_version = 1, required = true)]
        pub struct Serial {
            pub ier: u8,
            pub lcr: u8,
            pub fifo: cpr_format::Bytes,
            #[since(2)] pub scr: Option<u8>,
        }
        /// PIT, restructured in an incompatible way.
        #[section(name = "pit", version = 2, min_version = 2, required = true)]
        pub struct Pit {
            pub count: u64,
            pub channels: Vec<Channel>,
        }
        /// New required section.
        #[section(name = "hpet", version = 1, min_version = 1, required = true)]
        pub struct Hpet {
            pub config: u64,
        }
    }
}

fn old() -> Schema {
    Schema::new()
        .with::<v1::Serial>()
        .with::<v1::Legacy>()
        .with::<v1::Pit>()
}

fn new() -> Schema {
    Schema::new()
        .with::<v2::Serial>()
        .with::<v2::Pit>()
        .with::<v2::Hpet>()
}

fn kinds(r: &CompatReport, section: &str) -> Vec<(Option<String>, Severity, FindingKind)> {
    r.findings
        .iter()
        .filter(|f| f.section == section)
        .map(|f| (f.field.clone(), f.severity, f.kind.clone()))
        .collect()
}

#[test]
fn identical_schemas_are_compatible_without_findings() {
    let r = check(&old(), &old());
    assert!(r.is_compatible());
    assert!(r.findings.is_empty(), "{:?}", r.findings);
}

#[test]
fn new_reads_old() {
    let (new_reads_old, _) = check_both(&old(), &new());
    assert!(!new_reads_old.is_compatible());
    // serial v1 read by v2: the new optional field is absent, fine.
    assert_eq!(
        kinds(&new_reads_old, "serial"),
        [(
            Some("scr".into()),
            Severity::Info,
            FindingKind::OptionalFieldMissing
        )]
    );
    // pit v1 is older than v2's min_version.
    assert_eq!(
        kinds(&new_reads_old, "pit"),
        [(
            None,
            Severity::Error,
            FindingKind::VersionTooOld {
                image: 1,
                reader_min: 2
            }
        )]
    );
    // The old image has an optional section the new reader does not know: skipped.
    assert_eq!(
        kinds(&new_reads_old, "legacy"),
        [(
            None,
            Severity::Info,
            FindingKind::UnknownSection { required: false }
        )]
    );
    // The new reader knows hpet, absent from the old image.
    assert_eq!(
        kinds(&new_reads_old, "hpet"),
        [(None, Severity::Warning, FindingKind::SectionAbsent)]
    );
    // Errors come first.
    assert_eq!(new_reads_old.findings[0].severity, Severity::Error);
}

#[test]
fn old_reads_new() {
    let (_, old_reads_new) = check_both(&old(), &new());
    assert!(!old_reads_new.is_compatible());
    assert_eq!(
        kinds(&old_reads_new, "serial"),
        [
            (
                None,
                Severity::Info,
                FindingKind::NewerCompatible {
                    image: 2,
                    reader: 1
                }
            ),
            (
                Some("scr".into()),
                Severity::Info,
                FindingKind::FieldIgnored
            ),
        ]
    );
    assert_eq!(
        kinds(&old_reads_new, "pit"),
        [(
            None,
            Severity::Error,
            FindingKind::VersionTooNew {
                image: 2,
                image_min: 2,
                reader: 1
            }
        )]
    );
    assert_eq!(
        kinds(&old_reads_new, "hpet"),
        [(
            None,
            Severity::Error,
            FindingKind::UnknownSection { required: true }
        )]
    );
    let text: Vec<String> = old_reads_new.errors().map(|f| f.to_string()).collect();
    assert!(
        text.contains(&"error: section hpet: required section unknown to the reader".to_string()),
        "{text:?}"
    );
}

#[test]
fn field_level_changes_are_found_recursively() {
    // Same section versions, different fields: what a careless change looks like.
    let mut image = Schema::new().with::<v2::Pit>();
    let mut reader = image.clone();
    let pit = &mut reader.sections[0];
    pit.payload.fields[0].ty = FieldType::U32; // count: u64 -> u32
    let FieldType::List(ch) = &mut pit.payload.fields[1].ty else {
        panic!()
    };
    let FieldType::Struct(ch) = ch.as_mut() else {
        panic!()
    };
    ch.fields.push(FieldSchema {
        name: "gate".into(),
        ty: FieldType::Bool,
        hint: Hint::None,
        since: 1,
        doc: String::new(),
    });
    let r = check(&image, &reader);
    assert_eq!(
        kinds(&r, "pit"),
        [
            (
                Some("channels[].gate".into()),
                Severity::Error,
                FindingKind::FieldMissing
            ),
            (
                Some("count".into()),
                Severity::Error,
                FindingKind::TypeChanged {
                    image: "u64".into(),
                    reader: "u32".into()
                }
            ),
        ]
    );
    // An always-present field may be read as optional, not the reverse.
    image.sections[0].payload.fields[0].ty = FieldType::Optional(Box::new(FieldType::U64));
    let mut reader = Schema::new().with::<v2::Pit>();
    assert!(!check(&image, &reader).is_compatible());
    reader.sections[0].payload.fields[0].ty = FieldType::Optional(Box::new(FieldType::U64));
    image.sections[0].payload.fields[0].ty = FieldType::U64;
    assert!(check(&image, &reader).is_compatible());
}

#[test]
fn an_image_checks_itself_against_a_reader_schema() {
    let mut w = ImageWriter::new(sample::header());
    w.add_section("0", &v2::Hpet { config: 1 }).unwrap();
    let img = Image::from_bytes(&w.to_bytes().unwrap()).unwrap();
    assert!(!img.check_compat(&old()).is_compatible());
    assert!(img.check_compat(&new()).is_compatible());
}

#[test]
fn schema_json_round_trips_for_fixtures() {
    let s = new();
    let json = serde_json::to_string_pretty(&s).unwrap();
    let back: Schema = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
    assert!(check(&back, &s).findings.is_empty());
}
