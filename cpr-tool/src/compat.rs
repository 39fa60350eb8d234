//! Presenting cpr-format's compatibility engine: schemas are first brought to the
//! newest names through the renames table, so a renamed field is not reported as
//! "missing" on one side and "unknown" on the other.

use comfy_table::Table;
use cpr_format::compat::{self, CompatReport, Finding, Severity};
use cpr_format::{FieldSchema, FieldType, Schema};
use serde::Serialize;

use crate::output::table;
use crate::renames::Renames;

/// A rename from the table that matched a name on one side to a name on the other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bridged {
    pub section: String,
    /// Field path, or `None` for a section rename.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub from: String,
    pub to: String,
}

/// A finding with its sentence, for JSON consumers that want both.
#[derive(Debug, Clone, Serialize)]
pub struct FindingView {
    #[serde(flatten)]
    pub finding: Finding,
    pub message: String,
}

/// One direction of a compatibility check.
#[derive(Debug, Clone, Serialize)]
pub struct Direction {
    /// Who reads whose images, in words: "0.2.0 loads images of 0.1.0".
    pub question: String,
    pub compatible: bool,
    pub findings: Vec<FindingView>,
}

impl Direction {
    pub fn new(question: String, report: CompatReport) -> Direction {
        Direction {
            question,
            compatible: report.is_compatible(),
            findings: report
                .findings
                .into_iter()
                .map(|f| FindingView {
                    message: f.to_string(),
                    finding: f,
                })
                .collect(),
        }
    }

    /// When every error is a required section the reader does not know, those sections:
    /// the refusal then concerns only the images that hold one of them.
    pub fn only_unknown_sections(&self) -> Option<Vec<&str>> {
        let mut names = Vec::new();
        for f in self
            .findings
            .iter()
            .filter(|f| f.finding.severity == Severity::Error)
        {
            match f.finding.kind {
                compat::FindingKind::UnknownSection { required: true } => {
                    names.push(f.finding.section.as_str())
                }
                _ => return None,
            }
        }
        (!names.is_empty()).then_some(names)
    }

    /// The findings as a table; info findings only when `verbose`.
    pub fn table(&self, verbose: bool) -> Table {
        let mut t = table(&["severity", "section", "field", "reason"]);
        for f in &self.findings {
            if f.finding.severity == Severity::Info && !verbose {
                continue;
            }
            // The message repeats severity, section and field; show its reason part.
            let reason = f
                .message
                .split_once(": ")
                .and_then(|(_, rest)| rest.split_once(": "))
                .map_or(f.message.as_str(), |(_, r)| r);
            t.add_row(vec![
                severity_word(f.finding.severity).to_owned(),
                f.finding.section.clone(),
                f.finding.field.clone().unwrap_or_default(),
                reason.to_owned(),
            ]);
        }
        t
    }
}

pub fn severity_word(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Error => "error",
    }
}

/// Can `reader` load images with schema `image`, renames applied?
pub fn check(image: &Schema, reader: &Schema, renames: &Renames) -> (CompatReport, Vec<Bridged>) {
    let (img, bridged) = normalize_pair(image, reader, renames);
    (compat::check(&img.0, &img.1), bridged)
}

/// Both schemas under the newest names, and the renames that linked them.
fn normalize_pair(a: &Schema, b: &Schema, renames: &Renames) -> ((Schema, Schema), Vec<Bridged>) {
    let mut a = a.clone();
    let mut b = b.clone();
    let mut bridged = Vec::new();
    for r in &renames.sections {
        let ra = rename_section(&mut a, &r.from, &r.to);
        let rb = rename_section(&mut b, &r.from, &r.to);
        if ra != rb {
            bridged.push(Bridged {
                section: r.to.clone(),
                field: None,
                from: r.from.clone(),
                to: r.to.clone(),
            });
        }
    }
    for r in &renames.fields {
        let ra = rename_field(&mut a, &r.section, &r.from, &r.to);
        let rb = rename_field(&mut b, &r.section, &r.from, &r.to);
        if ra != rb {
            bridged.push(Bridged {
                section: r.section.clone(),
                field: Some(r.to.clone()),
                from: r.from.clone(),
                to: r.to.clone(),
            });
        }
    }
    ((a, b), bridged)
}

/// Rename section `from` to `to` unless `to` already exists; whether it did.
fn rename_section(s: &mut Schema, from: &str, to: &str) -> bool {
    if s.get(to).is_some() {
        return false;
    }
    let Some(mut sec) = s.get(from).cloned() else {
        return false;
    };
    s.sections.retain(|x| x.name != from);
    sec.name = to.to_owned();
    s.insert(sec);
    true
}

/// Rename field `from` (a dotted path) to `to` in `section`; whether it did.
fn rename_field(s: &mut Schema, section: &str, from: &str, to: &str) -> bool {
    let Some(mut sec) = s.get(section).cloned() else {
        return false;
    };
    let from_parts: Vec<&str> = from.split('.').collect();
    let to_parts: Vec<&str> = to.split('.').collect();
    // Only the last name changes; a move between structs is not a rename.
    let (Some((from_last, from_dir)), Some((to_last, to_dir))) =
        (from_parts.split_last(), to_parts.split_last())
    else {
        return false;
    };
    if from_dir != to_dir {
        return false;
    }
    let Some(fields) = fields_at(&mut sec.payload.fields, from_dir) else {
        return false;
    };
    if fields.iter().any(|f| f.name == *to_last) {
        return false;
    }
    let Some(f) = fields.iter_mut().find(|f| f.name == *from_last) else {
        return false;
    };
    f.name = (*to_last).to_owned();
    s.insert(sec);
    true
}

/// The field list of the nested struct at `dir` (through options, lists and arrays).
fn fields_at<'a>(
    fields: &'a mut Vec<FieldSchema>,
    dir: &[&str],
) -> Option<&'a mut Vec<FieldSchema>> {
    let Some((first, rest)) = dir.split_first() else {
        return Some(fields);
    };
    let f = fields.iter_mut().find(|f| f.name == *first)?;
    let mut ty = &mut f.ty;
    loop {
        match ty {
            FieldType::Struct(s) => return fields_at(&mut s.fields, rest),
            FieldType::Optional(inner) | FieldType::List(inner) => ty = inner,
            FieldType::Array { elem, .. } => ty = elem,
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cpr_format::{Hint, SectionSchema, StructSchema};

    fn schema(field: &str) -> Schema {
        let mut s = Schema::new();
        s.insert(SectionSchema {
            name: "serial".into(),
            version: 1,
            min_version: 1,
            required: true,
            doc: String::new(),
            payload: StructSchema {
                name: "Serial".into(),
                fields: vec![FieldSchema {
                    name: field.into(),
                    ty: FieldType::U8,
                    hint: Hint::Hex,
                    since: 1,
                    doc: String::new(),
                }],
            },
        });
        s
    }

    #[test]
    fn renamed_field_is_not_missing() {
        let renames = Renames::parse(
            "[[field]]\nsection = 'serial'\nfrom = 'scratch'\nto = 'scr'\n",
            std::path::Path::new("r.toml"),
        )
        .unwrap();
        let old = schema("scratch");
        let new = schema("scr");
        // Without the table, the engine sees a missing required field.
        assert!(!compat::check(&old, &new).is_compatible());
        let (report, bridged) = check(&old, &new, &renames);
        assert!(report.is_compatible(), "{report:?}");
        assert_eq!(bridged.len(), 1);
        assert_eq!(bridged[0].from, "scratch");
    }

    #[test]
    fn renamed_section_is_not_unknown() {
        let renames = Renames::parse(
            "[[section]]\nfrom = 'uart'\nto = 'serial'\n",
            std::path::Path::new("r.toml"),
        )
        .unwrap();
        let mut old = schema("scr");
        let mut sec = old.get("serial").cloned().unwrap();
        old.sections.clear();
        sec.name = "uart".into();
        old.insert(sec);
        let new = schema("scr");
        assert!(!compat::check(&old, &new).is_compatible());
        let (report, bridged) = check(&old, &new, &renames);
        assert!(report.findings.is_empty(), "{report:?}");
        assert_eq!(bridged[0].field, None);
        // The other direction (old reader, new image) is bridged too.
        let (report, _) = check(&new, &old, &renames);
        assert!(report.findings.is_empty(), "{report:?}");
    }
}
