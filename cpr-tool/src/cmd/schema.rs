//! `cpr-tool schema dump` and `cpr-tool schema check`.

use cpr_format::{FieldSchema, FieldType, Schema};
use serde::Serialize;

use crate::cli::{SchemaCheckArgs, SchemaDumpArgs};
use crate::compat::{self, Bridged, Direction};
use crate::error::{Outcome, ToolError};
use crate::flatten::hint_name;
use crate::load::{self, SchemaSource};
use crate::output::{self, emit, table, Report};
use crate::renames::Renames;

/// `schema dump`: the schema itself is the JSON shape, so `--json` output is a
/// valid schema file for `--schema` and `schema check`.
struct Dump(Schema);

impl Serialize for Dump {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

fn field_rows(fields: &[FieldSchema], prefix: &str, out: &mut Vec<[String; 5]>) {
    for f in fields {
        let path = format!("{prefix}{}", f.name);
        out.push([
            path.clone(),
            f.ty.display_name(),
            hint_name(&f.hint),
            f.since.to_string(),
            f.doc.clone(),
        ]);
        // Show the fields of nested structs under the parent's path.
        let mut ty = &f.ty;
        let mut p = path;
        loop {
            match ty {
                FieldType::Struct(s) => {
                    field_rows(&s.fields, &format!("{p}."), out);
                    break;
                }
                FieldType::Optional(inner) => ty = inner,
                FieldType::List(inner) | FieldType::Array { elem: inner, .. } => {
                    p.push_str("[]");
                    ty = inner;
                }
                _ => break,
            }
        }
    }
}

impl Report for Dump {
    fn human(&self) -> String {
        let mut out = String::new();
        for (i, s) in self.0.sections.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            let mut title = format!(
                "Section {}: version {} (loadable from {}), {}",
                s.name,
                s.version,
                s.min_version,
                if s.required { "required" } else { "optional" }
            );
            if !s.doc.is_empty() {
                title.push_str(&format!(" - {}", s.doc));
            }
            let mut t = table(&["field", "type", "hint", "since", "doc"]);
            let mut rows = Vec::new();
            field_rows(&s.payload.fields, "", &mut rows);
            for r in rows {
                t.add_row(r.to_vec());
            }
            output::section(&mut out, &title, &t);
        }
        if self.0.sections.is_empty() {
            out.push_str("(no sections)\n");
        }
        out
    }
}

pub fn dump(args: &SchemaDumpArgs, json: bool) -> Result<Outcome, ToolError> {
    let schema = match (&args.version, &args.image) {
        (_, Some(img)) => load::image(img)?.schema().clone(),
        (Some(v), None) => {
            let dir = load::schemas_dir(args.schemas.schemas_dir.as_deref())?;
            load::schema_version(v, &dir)?.0
        }
        // clap requires one of them.
        (None, None) => {
            let dir = load::schemas_dir(args.schemas.schemas_dir.as_deref())?;
            let newest = load::newest_version(&dir).ok_or(ToolError::NotFound {
                what: "a stored schema",
                flag: "--version, --image or --schemas-dir",
            })?;
            load::schema_version(&newest, &dir)?.0
        }
    };
    emit(&Dump(schema), json).map_err(ToolError::Stdout)?;
    Ok(Outcome::Fine)
}

#[derive(Serialize)]
struct CheckReport {
    old: SchemaSource,
    new: SchemaSource,
    compatible: bool,
    new_loads_old: Direction,
    old_loads_new: Direction,
    renamed: Vec<Bridged>,
}

fn source_name(s: &SchemaSource) -> String {
    match s {
        SchemaSource::File(f) => format!("schema {f}"),
        SchemaSource::Version(v) => format!("VMM {v}"),
        SchemaSource::Image(i) => format!("the writer of {i}"),
    }
}

impl Report for CheckReport {
    fn human(&self) -> String {
        let mut out = String::new();
        for d in [&self.new_loads_old, &self.old_loads_new] {
            let title = format!(
                "{}? {}",
                d.question,
                if d.compatible { "yes" } else { "no" }
            );
            output::section(&mut out, &title, &d.table(true));
            if let Some(sections) = d.only_unknown_sections() {
                out.push_str(&format!(
                    "Only images that hold {} are refused; `cpr-tool verify IMAGE --target VERSION` checks one image.\n",
                    sections.join(", ")
                ));
            }
            out.push('\n');
        }
        for b in &self.renamed {
            out.push_str(&format!(
                "Matched through the renames table: {}{} was {}\n",
                b.section,
                b.field
                    .as_ref()
                    .map(|f| format!(" field {f}"))
                    .unwrap_or_default(),
                b.from
            ));
        }
        if let (true, false, Some(sections)) = (
            self.new_loads_old.compatible,
            self.old_loads_new.compatible,
            self.old_loads_new.only_unknown_sections(),
        ) {
            out.push_str(&format!(
                "Verdict: upgrade; the old version loads only new images without {}\n",
                sections.join(", ")
            ));
            return out;
        }
        out.push_str(
            match (self.new_loads_old.compatible, self.old_loads_new.compatible) {
                (true, true) => "Verdict: compatible both ways\n",
                (true, false) => "Verdict: upgrade only (the old version cannot load new images)\n",
                (false, true) => {
                    "Verdict: INCOMPATIBLE upgrade (the new version cannot load old images)\n"
                }
                (false, false) => "Verdict: INCOMPATIBLE both ways\n",
            },
        );
        out
    }
}

pub fn check(args: &SchemaCheckArgs, json: bool) -> Result<Outcome, ToolError> {
    let dir = args.schemas.schemas_dir.as_deref();
    let (old, old_src) = load::schema_any(&args.old, dir)?;
    let (new, new_src) = load::schema_any(&args.new, dir)?;
    let renames = Renames::locate(args.renames.as_deref())?;
    let (fwd, mut renamed) = compat::check(&old, &new, &renames);
    let (back, renamed_back) = compat::check(&new, &old, &renames);
    for b in renamed_back {
        if !renamed.contains(&b) {
            renamed.push(b);
        }
    }
    let (on, nn) = (source_name(&old_src), source_name(&new_src));
    let new_loads_old = Direction::new(format!("Can {nn} load images of {on}"), fwd);
    let old_loads_new = Direction::new(format!("Can {on} load images of {nn}"), back);
    let report = CheckReport {
        compatible: new_loads_old.compatible && old_loads_new.compatible,
        old: old_src,
        new: new_src,
        new_loads_old,
        old_loads_new,
        renamed,
    };
    emit(&report, json).map_err(ToolError::Stdout)?;
    Ok(Outcome::from_ok(report.compatible))
}
