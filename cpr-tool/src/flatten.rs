//! Turning a section payload (an untyped CBOR value) into rows of leaf fields,
//! guided by the image's embedded schema: paths, types, display hints.

use ciborium::Value;
use cpr_format::{FieldType, Hint, StructSchema};
use serde::Serialize;

/// One leaf of a payload: a scalar, a byte string, or an absent optional.
#[derive(Debug, Clone, Serialize)]
pub struct Leaf {
    /// Dotted path inside the payload, with `[i]` for list and array elements,
    /// e.g. `segments.cs.base`, `msrs[3].value`.
    pub path: String,
    /// Type as the schema names it (`u64`, `bytes[512]`, `?` when the schema lacks the key).
    #[serde(rename = "type")]
    pub ty: String,
    /// Display hint from the schema.
    #[serde(serialize_with = "ser_hint")]
    pub hint: Hint,
    /// The value formatted for people, following the hint.
    pub display: String,
    /// The value itself.
    #[serde(skip)]
    pub value: Value,
}

fn ser_hint<S: serde::Serializer>(h: &Hint, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hint_name(h))
}

/// A hint as a short word for tables and JSON: `hex`, `flags`, `unit:ns`.
pub fn hint_name(h: &Hint) -> String {
    match h {
        Hint::None => "".into(),
        Hint::Hex => "hex".into(),
        Hint::Flags => "flags".into(),
        Hint::Addr => "addr".into(),
        Hint::Size => "size".into(),
        Hint::Unit(u) => format!("unit:{u}"),
    }
}

/// The leaves of `payload` described by `schema`, in schema order; keys the
/// schema does not know (written by a newer minor version) come last with type `?`.
pub fn flatten(payload: &Value, schema: &StructSchema) -> Vec<Leaf> {
    let mut out = Vec::new();
    flatten_struct(payload, schema, "", &mut out);
    out
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

fn flatten_struct(v: &Value, schema: &StructSchema, prefix: &str, out: &mut Vec<Leaf>) {
    let Value::Map(entries) = v else {
        flatten_untyped(v, prefix, out);
        return;
    };
    let lookup = |name: &str| {
        entries
            .iter()
            .find(|(k, _)| matches!(k, Value::Text(t) if t == name))
            .map(|(_, v)| v)
    };
    for f in &schema.fields {
        let path = join(prefix, &f.name);
        match lookup(&f.name) {
            Some(v) => flatten_field(v, &f.ty, &f.hint, &path, out),
            None => out.push(Leaf {
                path,
                ty: f.ty.display_name(),
                hint: f.hint.clone(),
                display: "(absent)".into(),
                value: Value::Null,
            }),
        }
    }
    for (k, v) in entries {
        let known = matches!(k, Value::Text(t) if schema.fields.iter().any(|f| &f.name == t));
        if !known {
            let name = match k {
                Value::Text(t) => t.clone(),
                other => format!("{{{}}}", display_untyped(other)),
            };
            flatten_untyped(v, &join(prefix, &name), out);
        }
    }
}

fn flatten_field(v: &Value, ty: &FieldType, hint: &Hint, path: &str, out: &mut Vec<Leaf>) {
    match (ty, v) {
        (FieldType::Struct(s), _) => flatten_struct(v, s, path, out),
        (FieldType::Optional(_), Value::Null) => out.push(Leaf {
            path: path.to_owned(),
            ty: ty.display_name(),
            hint: hint.clone(),
            display: "none".into(),
            value: Value::Null,
        }),
        (FieldType::Optional(inner), _) => flatten_field(v, inner, hint, path, out),
        (FieldType::List(_) | FieldType::Array { .. }, Value::Array(items))
            if items.len() > MAX_EXPANDED =>
        {
            out.push(Leaf {
                path: path.to_owned(),
                ty: ty.display_name(),
                hint: hint.clone(),
                display: summary(items),
                value: v.clone(),
            })
        }
        (FieldType::List(elem), Value::Array(items))
        | (FieldType::Array { elem, .. }, Value::Array(items)) => {
            if items.is_empty() {
                out.push(Leaf {
                    path: path.to_owned(),
                    ty: ty.display_name(),
                    hint: hint.clone(),
                    display: "[]".into(),
                    value: v.clone(),
                });
            }
            for (i, item) in items.iter().enumerate() {
                flatten_field(item, elem, hint, &format!("{path}[{i}]"), out);
            }
        }
        _ => out.push(Leaf {
            path: path.to_owned(),
            ty: ty.display_name(),
            hint: hint.clone(),
            display: display_value(v, hint),
            value: v.clone(),
        }),
    }
}

/// Leaves of a value without a schema (header, fd manifest, unknown keys).
/// Lists of maps that carry a text `name` or `id` are keyed by it
/// (`ram_blocks[pc.ram].size`), so reordering is not reported as a change.
pub fn flatten_untyped(v: &Value, prefix: &str, out: &mut Vec<Leaf>) {
    match v {
        Value::Map(entries) if !entries.is_empty() => {
            for (k, x) in entries {
                let name = match k {
                    Value::Text(t) => t.clone(),
                    other => format!("{{{}}}", display_untyped(other)),
                };
                flatten_untyped(x, &join(prefix, &name), out);
            }
        }
        Value::Array(items) if items.len() > MAX_EXPANDED => out.push(Leaf {
            path: prefix.to_owned(),
            ty: "?".into(),
            hint: Hint::None,
            display: summary(items),
            value: v.clone(),
        }),
        Value::Array(items) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                let key = item_key(item).unwrap_or_else(|| i.to_string());
                flatten_untyped(item, &format!("{prefix}[{key}]"), out);
            }
        }
        _ => push_untyped(prefix, v, out),
    }
}

fn item_key(item: &Value) -> Option<String> {
    let Value::Map(entries) = item else {
        return None;
    };
    ["name", "id"].iter().find_map(|want| {
        entries.iter().find_map(|(k, v)| match (k, v) {
            (Value::Text(k), Value::Text(v)) if k == want => Some(v.clone()),
            _ => None,
        })
    })
}

fn push_untyped(path: &str, v: &Value, out: &mut Vec<Leaf>) {
    out.push(Leaf {
        path: path.to_owned(),
        ty: "?".into(),
        hint: Hint::None,
        display: display_untyped(v),
        value: v.clone(),
    });
}

/// Lists longer than this are one leaf (shown as a summary, compared whole), so a
/// hostile or huge payload cannot turn into millions of rows.
pub const MAX_EXPANDED: usize = 4096;

fn summary(items: &[Value]) -> String {
    let mut enc = Vec::new();
    let crc = match ciborium::ser::into_writer(&Value::Array(items.to_vec()), &mut enc) {
        Ok(()) => format!(", crc32 {:08x}", crc32fast::hash(&enc)),
        Err(_) => String::new(),
    };
    format!("[{} items{crc}]", items.len())
}

/// Byte strings longer than this are shown abbreviated.
const BYTES_SHOWN: usize = 16;

/// A value formatted following its display hint.
pub fn display_value(v: &Value, hint: &Hint) -> String {
    match v {
        Value::Integer(i) => {
            let n = i128::from(*i);
            match hint {
                Hint::None => n.to_string(),
                Hint::Hex | Hint::Flags => hex(n),
                Hint::Addr => {
                    if n >= 0 {
                        format!("{n:#018x}")
                    } else {
                        n.to_string()
                    }
                }
                Hint::Size => format!("{n} ({})", human_size(n)),
                Hint::Unit(u) => format!("{n} {u}"),
            }
        }
        Value::Bytes(b) => display_bytes(b),
        _ => display_untyped(v),
    }
}

fn hex(n: i128) -> String {
    if n >= 0 {
        format!("{n:#x}")
    } else {
        format!("-{:#x}", n.unsigned_abs())
    }
}

fn human_size(n: i128) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    let mut v = n;
    while unit + 1 < UNITS.len() && v != 0 && v % 1024 == 0 {
        v /= 1024;
        unit += 1;
    }
    format!("{v} {}", UNITS[unit])
}

/// Short byte strings in full hex; long ones as length, head and CRC so two
/// differing blobs are told apart without flooding the table.
pub fn display_bytes(b: &[u8]) -> String {
    let head: String = b
        .iter()
        .take(BYTES_SHOWN)
        .map(|x| format!("{x:02x}"))
        .collect();
    if b.len() <= BYTES_SHOWN {
        if b.is_empty() {
            "(0 bytes)".into()
        } else {
            head
        }
    } else {
        format!(
            "{head}… ({} bytes, crc32 {:08x})",
            b.len(),
            crc32fast::hash(b)
        )
    }
}

/// A value without a schema: CBOR diagnostic-like notation.
pub fn display_untyped(v: &Value) -> String {
    match v {
        Value::Integer(i) => i128::from(*i).to_string(),
        Value::Bytes(b) => display_bytes(b),
        Value::Float(f) => format!("{f:?}"),
        Value::Text(t) => format!("{t:?}"),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
        Value::Tag(t, inner) => format!("{t}({})", display_untyped(inner)),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(display_untyped).collect();
            format!("[{}]", parts.join(", "))
        }
        Value::Map(entries) => {
            let parts: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{}: {}", display_untyped(k), display_untyped(v)))
                .collect();
            format!("{{{}}}", parts.join(", "))
        }
        _ => "?".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lists_are_one_leaf() {
        let schema = StructSchema {
            name: "S".into(),
            fields: vec![cpr_format::FieldSchema {
                name: "table".into(),
                ty: FieldType::List(Box::new(FieldType::U32)),
                hint: Hint::Hex,
                since: 1,
                doc: String::new(),
            }],
        };
        let payload = |n: usize| {
            Value::Map(vec![(
                Value::Text("table".into()),
                Value::Array((0..n).map(|i| Value::Integer((i as u64).into())).collect()),
            )])
        };
        assert_eq!(flatten(&payload(3), &schema).len(), 3);
        let leaves = flatten(&payload(MAX_EXPANDED + 1), &schema);
        assert_eq!(leaves.len(), 1);
        assert!(
            leaves[0].display.starts_with("[4097 items, crc32 "),
            "{}",
            leaves[0].display
        );
        let mut untyped = Vec::new();
        flatten_untyped(&payload(MAX_EXPANDED + 1), "", &mut untyped);
        assert_eq!(untyped.len(), 1);
    }
}
