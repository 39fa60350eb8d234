//! The semantic diff: two images flattened into leaves, matched by section,
//! instance and field path (through the renames table), then compared.

use ciborium::Value;
use cpr_format::Hint;
use serde::Serialize;

use crate::cborjson;
use crate::flatten::Leaf;
use crate::glob;
use crate::ojson::Json;
use crate::renames::Renames;

/// One section of an image (or a pseudo-section: `header`, `machine`, `fds`), flattened.
#[derive(Debug, Clone)]
pub struct SectionDoc {
    pub name: String,
    /// Empty for pseudo-sections.
    pub instance: String,
    /// Section version (`None` for pseudo-sections).
    pub version: Option<u32>,
    pub leaves: Vec<Leaf>,
}

/// A whole image, flattened for comparison.
#[derive(Debug, Clone, Default)]
pub struct Doc {
    pub sections: Vec<SectionDoc>,
}

/// What to leave out of the comparison.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub timestamps: bool,
    pub tsc: bool,
    pub globs: Vec<String>,
}

impl Filters {
    /// Whether a whole section's change is ignored: a glob matches `section/instance`
    /// (or `section` for pseudo-sections without an instance).
    fn ignores_section(&self, section: &str, instance: &str) -> bool {
        let path = if instance.is_empty() {
            section.to_owned()
        } else {
            format!("{section}/{instance}")
        };
        self.globs.iter().any(|g| glob::matches(g, &path))
    }

    /// Whether the leaf at `path` (whose last component is `field`) is ignored.
    fn ignores(&self, path: &str, leaf_path: &str) -> bool {
        let last = last_component(leaf_path).to_ascii_lowercase();
        if self.timestamps
            && (path.starts_with("header/created")
                || last.contains("time")
                || last.contains("clock"))
        {
            return true;
        }
        if self.tsc && last.contains("tsc") {
            return true;
        }
        self.globs.iter().any(|g| glob::matches(g, path))
    }
}

/// The last name in a leaf path: `msrs[3].tsc_offset` -> `tsc_offset`, `lapic[2]` -> `lapic`.
fn last_component(path: &str) -> &str {
    let base = path.rsplit('.').next().unwrap_or(path);
    base.split('[').next().unwrap_or(base)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Changed,
    Added,
    Removed,
}

/// One differing field.
#[derive(Debug, Clone, Serialize)]
pub struct FieldChange {
    /// `section/instance/field` (`section/field` for header, machine, fds).
    pub path: String,
    pub section: String,
    pub instance: String,
    pub field: String,
    pub kind: ChangeKind,
    /// The value in A, formatted with its display hint (absent when added).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub a: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b: Option<String>,
    /// The values themselves, as `cpr-tool json` writes them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub a_value: Option<Json>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b_value: Option<Json>,
    /// The field's name in A when the renames table matched it to a new name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renamed_from: Option<String>,
    /// Type in A and B when it changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub type_change: Option<(String, String)>,
    /// For flags: which bits were set and cleared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A section present on one side only, or whose version changed.
#[derive(Debug, Clone, Serialize)]
pub struct SectionChange {
    pub section: String,
    pub instance: String,
    pub kind: ChangeKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_a: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_b: Option<u32>,
    /// The section's name in A when the renames table matched it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renamed_from: Option<String>,
}

/// A field matched across a rename from the renames table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RenameUsed {
    pub section: String,
    pub instance: String,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DiffResult {
    pub sections: Vec<SectionChange>,
    pub fields: Vec<FieldChange>,
    /// Fields matched through the renames table (whether or not their value changed).
    pub renamed: Vec<RenameUsed>,
    /// How many differing fields the filters left out.
    pub ignored: usize,
}

impl DiffResult {
    pub fn is_empty(&self) -> bool {
        self.sections.is_empty() && self.fields.is_empty()
    }
}

fn full_path(section: &str, instance: &str, field: &str) -> String {
    if instance.is_empty() {
        format!("{section}/{field}")
    } else {
        format!("{section}/{instance}/{field}")
    }
}

/// `path` with the renamed field prefix `from` replaced by `to`.
fn rename_path(path: &str, from: &str, to: &str) -> Option<String> {
    let rest = path.strip_prefix(from)?;
    if rest.is_empty() || rest.starts_with('.') || rest.starts_with('[') {
        Some(format!("{to}{rest}"))
    } else {
        None
    }
}

/// Each section of `doc` under the name to match it by: the newer name from the
/// renames table when `other` uses that name (and not the old one), with the old name.
fn section_keys<'a>(
    doc: &'a Doc,
    other: &Doc,
    renames: &Renames,
) -> Vec<(String, Option<String>, &'a SectionDoc)> {
    let has = |d: &Doc, name: &str, inst: &str| {
        d.sections
            .iter()
            .any(|s| s.name == name && s.instance == inst)
    };
    doc.sections
        .iter()
        .map(|s| match renames.section_new_name(&s.name) {
            Some(to) if !has(other, &s.name, &s.instance) && has(other, to, &s.instance) => {
                (to.to_owned(), Some(s.name.clone()), s)
            }
            _ => (s.name.clone(), None, s),
        })
        .collect()
}

/// Each leaf of `leaves` under the path to match it by (see [`section_keys`]).
fn leaf_keys<'a>(
    leaves: &'a [Leaf],
    other: &[Leaf],
    section: &str,
    renames: &Renames,
) -> Vec<(String, Option<String>, &'a Leaf)> {
    let other_has = |p: &str| other.iter().any(|l| l.path == p);
    leaves
        .iter()
        .map(|l| {
            for r in renames.fields_of(section) {
                if let Some(new) = rename_path(&l.path, &r.from, &r.to) {
                    if !other_has(&l.path) && other_has(&new) {
                        return (new, Some(r.from.clone()), l);
                    }
                }
            }
            (l.path.clone(), None, l)
        })
        .collect()
}

/// Compare two flattened images. Renames apply in both directions, so an older
/// image may be A or B.
pub fn diff(a: &Doc, b: &Doc, renames: &Renames, filters: &Filters) -> DiffResult {
    let mut out = DiffResult::default();
    let a_keys = section_keys(a, b, renames);
    let b_keys = section_keys(b, a, renames);
    for (name, a_from, sa) in &a_keys {
        let sb = b_keys
            .iter()
            .find(|(n, _, sb)| n == name && sb.instance == sa.instance);
        match sb {
            None => out.sections.push(SectionChange {
                section: sa.name.clone(),
                instance: sa.instance.clone(),
                kind: ChangeKind::Removed,
                version_a: sa.version,
                version_b: None,
                renamed_from: None,
            }),
            Some((_, b_from, sb)) => {
                let renamed_from = a_from.clone().or_else(|| b_from.clone());
                if sa.version != sb.version || renamed_from.is_some() {
                    out.sections.push(SectionChange {
                        section: name.clone(),
                        instance: sa.instance.clone(),
                        kind: ChangeKind::Changed,
                        version_a: sa.version,
                        version_b: sb.version,
                        renamed_from,
                    });
                }
                diff_section(sa, sb, name, renames, filters, &mut out);
            }
        }
    }
    for (name, _, sb) in &b_keys {
        if !a_keys
            .iter()
            .any(|(n, _, sa)| n == name && sa.instance == sb.instance)
        {
            out.sections.push(SectionChange {
                section: sb.name.clone(),
                instance: sb.instance.clone(),
                kind: ChangeKind::Added,
                version_a: None,
                version_b: sb.version,
                renamed_from: None,
            });
        }
    }
    let before = out.sections.len();
    out.sections
        .retain(|c| !filters.ignores_section(&c.section, &c.instance));
    out.ignored += before - out.sections.len();
    out
}

fn diff_section(
    sa: &SectionDoc,
    sb: &SectionDoc,
    name: &str,
    renames: &Renames,
    filters: &Filters,
    out: &mut DiffResult,
) {
    let a_leaves = leaf_keys(&sa.leaves, &sb.leaves, name, renames);
    let b_leaves = leaf_keys(&sb.leaves, &sa.leaves, name, renames);
    for (_, from, _) in a_leaves.iter().chain(&b_leaves) {
        let Some(from) = from else { continue };
        let Some(r) = renames.fields_of(name).find(|r| &r.from == from) else {
            continue;
        };
        let used = RenameUsed {
            section: name.to_owned(),
            instance: sa.instance.clone(),
            from: r.from.clone(),
            to: r.to.clone(),
        };
        if !out.renamed.contains(&used) {
            out.renamed.push(used);
        }
    }
    let mut push = |change: FieldChange| {
        if filters.ignores(&change.path, &change.field) {
            out.ignored += 1;
        } else {
            out.fields.push(change);
        }
    };
    for (path, a_from, la) in &a_leaves {
        let matched = b_leaves.iter().find(|(p, _, _)| p == path);
        let lb = matched.map(|(_, _, l)| *l);
        let renamed_from = a_from
            .clone()
            .or_else(|| matched.and_then(|(_, f, _)| f.clone()));
        let base = |kind, a: Option<String>, b: Option<String>| FieldChange {
            path: full_path(name, &sa.instance, path),
            section: name.to_owned(),
            instance: sa.instance.clone(),
            field: path.clone(),
            kind,
            a_value: a.as_ref().map(|_| cborjson::to_json(&la.value)),
            b_value: match (&b, lb) {
                (Some(_), Some(lb)) => Some(cborjson::to_json(&lb.value)),
                _ => None,
            },
            a,
            b,
            renamed_from: renamed_from.clone(),
            type_change: None,
            detail: None,
        };
        match lb {
            // An absent optional field and a field the other version lacks say the same.
            None if la.value == Value::Null => {}
            None => push(base(ChangeKind::Removed, Some(la.display.clone()), None)),
            Some(lb) => {
                let type_changed = la.ty != lb.ty && la.ty != "?" && lb.ty != "?";
                if la.value != lb.value {
                    let mut c = base(
                        ChangeKind::Changed,
                        Some(la.display.clone()),
                        Some(lb.display.clone()),
                    );
                    if type_changed {
                        c.type_change = Some((la.ty.clone(), lb.ty.clone()));
                    }
                    if lb.hint == Hint::Flags {
                        c.detail = flag_detail(&la.value, &lb.value);
                    }
                    push(c);
                } else if type_changed {
                    let mut c = base(
                        ChangeKind::Changed,
                        Some(la.display.clone()),
                        Some(lb.display.clone()),
                    );
                    c.type_change = Some((la.ty.clone(), lb.ty.clone()));
                    push(c);
                }
            }
        }
    }
    for (path, _, lb) in &b_leaves {
        if lb.value != Value::Null && !a_leaves.iter().any(|(p, _, _)| p == path) {
            push(FieldChange {
                path: full_path(name, &sb.instance, path),
                section: name.to_owned(),
                instance: sb.instance.clone(),
                field: path.clone(),
                kind: ChangeKind::Added,
                a: None,
                b: Some(lb.display.clone()),
                a_value: None,
                b_value: Some(cborjson::to_json(&lb.value)),
                renamed_from: None,
                type_change: None,
                detail: None,
            });
        }
    }
}

/// "set bit 9; cleared bits 0, 3" for two integers shown as flags.
fn flag_detail(a: &Value, b: &Value) -> Option<String> {
    let (Value::Integer(a), Value::Integer(b)) = (a, b) else {
        return None;
    };
    let (a, b) = (i128::from(*a) as u128, i128::from(*b) as u128);
    let bits = |m: u128| -> Vec<String> {
        (0..128)
            .filter(|i| m >> i & 1 == 1)
            .map(|i: u32| i.to_string())
            .collect()
    };
    let set = bits(b & !a);
    let cleared = bits(a & !b);
    let mut parts = Vec::new();
    if !set.is_empty() {
        parts.push(format!("set bit{} {}", plural(set.len()), set.join(", ")));
    }
    if !cleared.is_empty() {
        parts.push(format!(
            "cleared bit{} {}",
            plural(cleared.len()),
            cleared.join(", ")
        ));
    }
    Some(parts.join("; "))
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn leaf(path: &str, v: u64) -> Leaf {
        Leaf {
            path: path.into(),
            ty: "u64".into(),
            hint: Hint::Hex,
            display: format!("{v:#x}"),
            value: Value::Integer(v.into()),
        }
    }

    fn doc(section: &str, leaves: Vec<Leaf>) -> Doc {
        Doc {
            sections: vec![SectionDoc {
                name: section.into(),
                instance: "0".into(),
                version: Some(1),
                leaves,
            }],
        }
    }

    fn table() -> Renames {
        Renames::parse(
            "[[section]]\nfrom = 'uart'\nto = 'serial'\n\n\
             [[field]]\nsection = 'serial'\nfrom = 'regs.scratch'\nto = 'regs.scr'\n",
            Path::new("renames.toml"),
        )
        .unwrap()
    }

    #[test]
    fn section_and_nested_field_renames_match_in_both_directions() {
        let old = doc("uart", vec![leaf("regs.scratch", 1), leaf("lcr", 3)]);
        let new = doc("serial", vec![leaf("regs.scr", 2), leaf("lcr", 3)]);
        for (a, b) in [(&old, &new), (&new, &old)] {
            let r = diff(a, b, &table(), &Filters::default());
            assert_eq!(r.sections.len(), 1, "{:?}", r.sections);
            assert_eq!(r.sections[0].kind, ChangeKind::Changed);
            assert_eq!(r.sections[0].section, "serial");
            assert_eq!(r.sections[0].renamed_from.as_deref(), Some("uart"));
            assert_eq!(r.fields.len(), 1, "{:?}", r.fields);
            assert_eq!(r.fields[0].path, "serial/0/regs.scr");
            assert_eq!(r.fields[0].renamed_from.as_deref(), Some("regs.scratch"));
            assert_eq!(r.renamed.len(), 1);
        }
    }

    #[test]
    fn without_the_table_renames_are_removals_and_additions() {
        let old = doc("serial", vec![leaf("regs.scratch", 1)]);
        let new = doc("serial", vec![leaf("regs.scr", 1)]);
        let r = diff(&old, &new, &Renames::default(), &Filters::default());
        let kinds: Vec<_> = r
            .fields
            .iter()
            .map(|f| (f.kind, f.field.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                (ChangeKind::Removed, "regs.scratch"),
                (ChangeKind::Added, "regs.scr")
            ]
        );
    }

    #[test]
    fn a_name_still_in_use_is_not_renamed() {
        // B has both the old and the new name: they are different fields.
        let a = doc("serial", vec![leaf("regs.scratch", 1)]);
        let b = doc("serial", vec![leaf("regs.scratch", 1), leaf("regs.scr", 1)]);
        let r = diff(&a, &b, &table(), &Filters::default());
        assert_eq!(r.fields.len(), 1);
        assert_eq!(r.fields[0].kind, ChangeKind::Added);
        assert!(r.renamed.is_empty());
    }

    #[test]
    fn filters_count_what_they_hide() {
        let flags = |v: u64| Leaf {
            hint: Hint::Flags,
            ..leaf("efer", v)
        };
        let a = doc(
            "cpu.msrs",
            vec![leaf("tsc", 1), leaf("tsc_deadline", 1), flags(1)],
        );
        let b = doc(
            "cpu.msrs",
            vec![leaf("tsc", 2), leaf("tsc_deadline", 2), flags(2)],
        );
        let f = Filters {
            tsc: true,
            ..Filters::default()
        };
        let r = diff(&a, &b, &Renames::default(), &f);
        assert_eq!(r.ignored, 2);
        assert_eq!(r.fields.len(), 1);
        assert_eq!(r.fields[0].path, "cpu.msrs/0/efer");
        assert_eq!(
            r.fields[0].detail.as_deref(),
            Some("set bit 1; cleared bit 0")
        );
    }
}
