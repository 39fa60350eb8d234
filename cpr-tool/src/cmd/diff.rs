//! `cpr-tool diff A B`: field-level semantic differences between two images.

use std::path::Path;

use cpr_format::{Hint, Image, Value};
use serde::Serialize;

use crate::cli::DiffArgs;
use crate::diff::{diff, ChangeKind, DiffResult, Doc, Filters, SectionDoc};
use crate::error::{Outcome, ToolError};
use crate::flatten::{self, display_value, Leaf};
use crate::load;
use crate::output::{self, emit, rfc3339, table, Report};
use crate::renames::Renames;

/// A pseudo-section of leaves built from a model value (header, RAM blocks, fds...).
fn pseudo(name: &str, instance: &str, v: &Value) -> SectionDoc {
    let mut leaves = Vec::new();
    flatten::flatten_untyped(v, "", &mut leaves);
    for l in &mut leaves {
        // The model has no schema: give its well-known fields their hints.
        let last = l.path.rsplit('.').next().unwrap_or(&l.path);
        l.hint = match last {
            "guest_addr" => Hint::Addr,
            "size" | "page_size" | "length" => Hint::Size,
            _ => Hint::None,
        };
        l.display = match (last, &l.value) {
            ("created_unix_ns", Value::Integer(i)) => match u64::try_from(*i) {
                Ok(ns) => rfc3339(ns),
                Err(_) => display_value(&l.value, &l.hint),
            },
            _ => display_value(&l.value, &l.hint),
        };
    }
    SectionDoc {
        name: name.to_owned(),
        instance: instance.to_owned(),
        version: None,
        leaves,
    }
}

/// Drop one key from a map value.
fn without(v: Value, key: &str) -> Value {
    match v {
        Value::Map(entries) => Value::Map(
            entries
                .into_iter()
                .filter(|(k, _)| !matches!(k, Value::Text(t) if t == key))
                .collect(),
        ),
        other => other,
    }
}

/// An image flattened for comparison: `header`, `machine`, `ram/NAME`, `device/ID`,
/// `fd/NAME`, `region/NAME`, then every section as `NAME/INSTANCE`.
pub fn document(path: &Path, img: &Image) -> Result<Doc, ToolError> {
    use super::to_value;
    let h = img.header();
    let mut sections = Vec::new();
    let mut head = pseudo("header", "", &without(to_value(h), "machine"));
    head.leaves.insert(
        0,
        Leaf {
            path: "format_version".into(),
            ty: "?".into(),
            hint: Hint::None,
            display: img.format_version().to_string(),
            value: Value::Text(img.format_version().to_string()),
        },
    );
    sections.push(head);
    let machine = without(without(to_value(&h.machine), "ram_blocks"), "devices");
    sections.push(pseudo("machine", "", &machine));
    for b in &h.machine.ram_blocks {
        sections.push(pseudo("ram", &b.name, &without(to_value(b), "name")));
    }
    for d in &h.machine.devices {
        sections.push(pseudo("device", &d.id, &without(to_value(d), "id")));
    }
    for f in img.fd_manifest() {
        sections.push(pseudo("fd", &f.name, &without(to_value(f), "name")));
    }
    for r in img.regions() {
        // Offsets move with the metadata length; the digest says whether data changed.
        let v = without(without(to_value(r), "name"), "offset");
        sections.push(pseudo("region", &r.name, &v));
    }
    for s in img.sections() {
        sections.push(SectionDoc {
            name: s.name.clone(),
            instance: s.instance.clone(),
            version: Some(s.version),
            leaves: super::section_leaves(path, img, s)?,
        });
    }
    Ok(Doc { sections })
}

#[derive(Serialize)]
struct Side {
    file: String,
    producer: String,
    format_version: String,
}

#[derive(Serialize)]
struct DiffReport {
    a: Side,
    b: Side,
    /// No differences left after the filters.
    equal: bool,
    #[serde(flatten)]
    result: DiffResult,
}

fn side(path: &Path, img: &Image) -> Side {
    let p = &img.header().producer;
    Side {
        file: super::shown(path),
        producer: format!("{} {}", p.name, p.version),
        format_version: img.format_version().to_string(),
    }
}

fn kind_word(k: ChangeKind) -> &'static str {
    match k {
        ChangeKind::Changed => "changed",
        ChangeKind::Added => "added",
        ChangeKind::Removed => "removed",
    }
}

impl Report for DiffReport {
    fn human(&self) -> String {
        let mut out = format!(
            "A: {} ({}, format {})\nB: {} ({}, format {})\n\n",
            self.a.file,
            self.a.producer,
            self.a.format_version,
            self.b.file,
            self.b.producer,
            self.b.format_version
        );
        let r = &self.result;
        if !r.sections.is_empty() {
            let mut t = table(&[
                "section",
                "instance",
                "change",
                "version A",
                "version B",
                "note",
            ]);
            for s in &r.sections {
                let v = |x: Option<u32>| x.map_or("-".to_owned(), |v| v.to_string());
                t.add_row(vec![
                    s.section.clone(),
                    s.instance.clone(),
                    kind_word(s.kind).to_owned(),
                    v(s.version_a),
                    v(s.version_b),
                    s.renamed_from
                        .as_ref()
                        .map(|f| format!("renamed from {f}"))
                        .unwrap_or_default(),
                ]);
            }
            output::section(&mut out, "Sections", &t);
        }
        if !r.fields.is_empty() {
            let mut t = table(&["field", "change", "A", "B", "note"]);
            for f in &r.fields {
                let mut notes = Vec::new();
                if let Some(from) = &f.renamed_from {
                    notes.push(format!("renamed from {from}"));
                }
                if let Some((a, b)) = &f.type_change {
                    notes.push(format!("type {a} -> {b}"));
                }
                if let Some(d) = &f.detail {
                    notes.push(d.clone());
                }
                t.add_row(vec![
                    f.path.clone(),
                    kind_word(f.kind).to_owned(),
                    f.a.clone().unwrap_or_else(|| "-".into()),
                    f.b.clone().unwrap_or_else(|| "-".into()),
                    notes.join("; "),
                ]);
            }
            output::section(&mut out, "Fields", &t);
        }
        if !r.renamed.is_empty() {
            let mut t = table(&["section", "instance", "from", "to"]);
            for x in &r.renamed {
                t.add_row(vec![
                    x.section.clone(),
                    x.instance.clone(),
                    x.from.clone(),
                    x.to.clone(),
                ]);
            }
            output::section(&mut out, "Matched through the renames table", &t);
        }
        let total = r.sections.len() + r.fields.len();
        if total == 0 {
            out.push_str("No differences");
        } else {
            out.push_str(&format!(
                "{} difference{} ({} section, {} field)",
                total,
                if total == 1 { "" } else { "s" },
                r.sections.len(),
                r.fields.len()
            ));
        }
        if r.ignored > 0 {
            out.push_str(&format!("; {} ignored by filters", r.ignored));
        }
        out.push('\n');
        out
    }
}

pub fn run(args: &DiffArgs, json: bool) -> Result<Outcome, ToolError> {
    let renames = Renames::locate(args.renames.as_deref())?;
    let a = load::image(&args.a)?;
    let b = load::image(&args.b)?;
    let filters = Filters {
        timestamps: args.ignore_timestamps,
        tsc: args.ignore_tsc,
        globs: args.ignore.clone(),
    };
    let result = diff(
        &document(&args.a, &a)?,
        &document(&args.b, &b)?,
        &renames,
        &filters,
    );
    let report = DiffReport {
        a: side(&args.a, &a),
        b: side(&args.b, &b),
        equal: result.is_empty(),
        result,
    };
    emit(&report, json).map_err(ToolError::Stdout)?;
    Ok(Outcome::from_ok(report.equal))
}
