//! Reading payloads without their Rust types: check a value tree against a schema and
//! flatten it into described leaves (path, type, hint, value) to show or diff.

use crate::schema::{FieldType, Hint, StructSchema};
use crate::Value;

/// A payload value that does not match its schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Field {path}: {reason}")]
pub struct Mismatch {
    /// Path of the field (`cs.base`, `msrs[3].index`).
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

/// One scalar of a payload, with what the schema says about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Leaf {
    /// Path, e.g. `sregs.cs.base` or `msrs[3].data`.
    pub path: String,
    /// The leaf's type (never a list, array or struct; `Optional` only when absent).
    pub ty: FieldType,
    /// Display hint of the field.
    pub hint: Hint,
    /// The value; `None` when an optional field is absent or null.
    pub value: Option<Value>,
}

impl Leaf {
    /// The value formatted by its hint: `0x1f` for hex, flags and addresses, plain
    /// decimal otherwise, byte strings in hex, `-` when absent.
    pub fn display(&self) -> String {
        match &self.value {
            None => "-".into(),
            Some(v) => format_value(v, &self.hint),
        }
    }
}

/// Format one scalar by a hint.
pub fn format_value(v: &Value, hint: &Hint) -> String {
    match v {
        Value::Integer(i) => {
            let n = i128::from(*i);
            match hint {
                Hint::Hex | Hint::Flags | Hint::Addr if n >= 0 => format!("{n:#x}"),
                Hint::Unit(u) => format!("{n} {u}"),
                _ => n.to_string(),
            }
        }
        Value::Bytes(b) => {
            let mut s = String::with_capacity(b.len() * 2);
            for x in b {
                s.push_str(&format!("{x:02x}"));
            }
            s
        }
        Value::Text(t) => format!("{t:?}"),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
        other => format!("{other:?}"),
    }
}

/// Check that `value` (a payload) matches `schema`: every required field present, every
/// present field of the right type. Keys the schema does not know are allowed (a newer
/// writer's fields).
pub fn check(value: &Value, schema: &StructSchema) -> Result<(), Mismatch> {
    walk_struct(value, schema, "", &mut |_| {})
}

/// Flatten `value` into leaves in schema order (lists and arrays expanded with indices).
pub fn flatten(value: &Value, schema: &StructSchema) -> Result<Vec<Leaf>, Mismatch> {
    let mut out = Vec::new();
    walk_struct(value, schema, "", &mut |l| out.push(l))?;
    Ok(out)
}

/// A difference between two payloads of one schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Path of the leaf.
    pub path: String,
    /// Display hint.
    pub hint: Hint,
    /// Value in the first payload (`None`: absent).
    pub old: Option<Value>,
    /// Value in the second payload (`None`: absent).
    pub new: Option<Value>,
}

/// The leaves that differ between two payloads, each flattened with its own schema (so
/// two versions of a section can be compared field by field).
pub fn diff(
    a: &Value,
    a_schema: &StructSchema,
    b: &Value,
    b_schema: &StructSchema,
) -> Result<Vec<Change>, Mismatch> {
    let la = flatten(a, a_schema)?;
    let lb = flatten(b, b_schema)?;
    let mut out = Vec::new();
    let index: std::collections::HashMap<&str, &Leaf> =
        lb.iter().map(|l| (l.path.as_str(), l)).collect();
    for l in &la {
        match index.get(l.path.as_str()) {
            Some(r) if r.value == l.value => {}
            Some(r) => out.push(Change {
                path: l.path.clone(),
                hint: l.hint.clone(),
                old: l.value.clone(),
                new: r.value.clone(),
            }),
            None => out.push(Change {
                path: l.path.clone(),
                hint: l.hint.clone(),
                old: l.value.clone(),
                new: None,
            }),
        }
    }
    let left: std::collections::HashSet<&str> = la.iter().map(|l| l.path.as_str()).collect();
    for r in &lb {
        if !left.contains(r.path.as_str()) {
            out.push(Change {
                path: r.path.clone(),
                hint: r.hint.clone(),
                old: None,
                new: r.value.clone(),
            });
        }
    }
    Ok(out)
}

fn mismatch(path: &str, reason: impl Into<String>) -> Mismatch {
    Mismatch {
        path: if path.is_empty() {
            ".".into()
        } else {
            path.to_owned()
        },
        reason: reason.into(),
    }
}

fn walk_struct(
    value: &Value,
    schema: &StructSchema,
    prefix: &str,
    emit: &mut dyn FnMut(Leaf),
) -> Result<(), Mismatch> {
    let Value::Map(entries) = value else {
        return Err(mismatch(
            prefix,
            format!("expected a map for struct {}", schema.name),
        ));
    };
    // Index the keys once: a hostile payload may have far more keys than the schema.
    let mut index: std::collections::HashMap<&str, &Value> =
        std::collections::HashMap::with_capacity(entries.len());
    for (k, v) in entries {
        if let Some(k) = k.as_text() {
            index.entry(k).or_insert(v);
        }
    }
    for f in &schema.fields {
        let path = if prefix.is_empty() {
            f.name.clone()
        } else {
            format!("{prefix}.{}", f.name)
        };
        let v = index.get(f.name.as_str()).copied();
        match (v, &f.ty) {
            (None, FieldType::Optional(_)) => emit(Leaf {
                path,
                ty: f.ty.clone(),
                hint: f.hint.clone(),
                value: None,
            }),
            (None, _) => return Err(mismatch(&path, "required field is missing")),
            (Some(v), ty) => walk_value(v, ty, &f.hint, &path, emit)?,
        }
    }
    Ok(())
}

fn walk_value(
    v: &Value,
    ty: &FieldType,
    hint: &Hint,
    path: &str,
    emit: &mut dyn FnMut(Leaf),
) -> Result<(), Mismatch> {
    use FieldType as T;
    let leaf = |emit: &mut dyn FnMut(Leaf)| {
        emit(Leaf {
            path: path.to_owned(),
            ty: ty.clone(),
            hint: hint.clone(),
            value: Some(v.clone()),
        })
    };
    let int_in = |lo: i128, hi: i128| match v {
        Value::Integer(i) => {
            let n = i128::from(*i);
            if n < lo || n > hi {
                Err(mismatch(
                    path,
                    format!("{n} is out of range for {}", ty.display_name()),
                ))
            } else {
                Ok(())
            }
        }
        _ => Err(mismatch(path, format!("expected {}", ty.display_name()))),
    };
    match ty {
        T::Bool => match v {
            Value::Bool(_) => {
                leaf(emit);
                Ok(())
            }
            _ => Err(mismatch(path, "expected bool")),
        },
        T::U8 => int_in(0, u8::MAX.into()).map(|()| leaf(emit)),
        T::U16 => int_in(0, u16::MAX.into()).map(|()| leaf(emit)),
        T::U32 => int_in(0, u32::MAX.into()).map(|()| leaf(emit)),
        T::U64 => int_in(0, u64::MAX.into()).map(|()| leaf(emit)),
        T::I8 => int_in(i8::MIN.into(), i8::MAX.into()).map(|()| leaf(emit)),
        T::I16 => int_in(i16::MIN.into(), i16::MAX.into()).map(|()| leaf(emit)),
        T::I32 => int_in(i32::MIN.into(), i32::MAX.into()).map(|()| leaf(emit)),
        T::I64 => int_in(i64::MIN.into(), i64::MAX.into()).map(|()| leaf(emit)),
        T::Text => match v {
            Value::Text(_) => {
                leaf(emit);
                Ok(())
            }
            _ => Err(mismatch(path, "expected text")),
        },
        T::Bytes { len } => match v {
            Value::Bytes(b) if !matches!(len, Some(n) if b.len() as u64 != *n) => {
                leaf(emit);
                Ok(())
            }
            Value::Bytes(b) => Err(mismatch(
                path,
                format!("expected {} bytes, found {}", len.unwrap_or(0), b.len()),
            )),
            _ => Err(mismatch(path, "expected a byte string")),
        },
        T::Optional(inner) => match v {
            Value::Null => {
                emit(Leaf {
                    path: path.to_owned(),
                    ty: ty.clone(),
                    hint: hint.clone(),
                    value: None,
                });
                Ok(())
            }
            _ => walk_value(v, inner, hint, path, emit),
        },
        T::List(elem) | T::Array { elem, .. } => {
            let Value::Array(items) = v else {
                return Err(mismatch(path, format!("expected {}", ty.display_name())));
            };
            if let T::Array { len, .. } = ty {
                if items.len() as u64 != *len {
                    return Err(mismatch(
                        path,
                        format!("expected {len} items, found {}", items.len()),
                    ));
                }
            }
            for (i, item) in items.iter().enumerate() {
                walk_value(item, elem, hint, &format!("{path}[{i}]"), emit)?;
            }
            Ok(())
        }
        T::Struct(s) => walk_struct(v, s, path, emit),
    }
}
