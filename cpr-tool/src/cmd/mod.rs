//! One module per command; each builds a report (Serialize + human text) and
//! returns the outcome that decides the exit status.

pub mod diff;
pub mod encode;
pub mod inspect;
pub mod schema;
pub mod verify;

use std::path::Path;

use cpr_format::{Image, Section, Value};

use crate::error::ToolError;
use crate::flatten::{self, Leaf};

/// A path as the user gave it, for reports (never made absolute).
pub fn shown(path: &Path) -> String {
    path.display().to_string()
}

/// The leaves of a section's payload, read through the image's own schema.
pub fn section_leaves(path: &Path, img: &Image, s: &Section) -> Result<Vec<Leaf>, ToolError> {
    let value = s.value().map_err(|e| ToolError::BadImage {
        path: path.to_owned(),
        source: Box::new(e),
    })?;
    Ok(match img.schema().get(&s.name) {
        Some(schema) => flatten::flatten(&value, &schema.payload),
        // The reader refuses images with a section lacking a schema; stay total anyway.
        None => {
            let mut out = Vec::new();
            flatten::flatten_untyped(&value, "", &mut out);
            out
        }
    })
}

/// A serialisable model value as an untyped CBOR value (for flattening).
pub fn to_value<T: serde::Serialize>(v: &T) -> Value {
    Value::serialized(v).unwrap_or(Value::Null)
}
