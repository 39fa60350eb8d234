//! Self-description: the schema of section payloads, the [`Describe`] and
//! [`SectionState`] traits, and the [`Bytes`] field type.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Type of a payload field.
///
/// Encodings: integers are CBOR major 0/1, `Bool` is a simple value, `Text` a text
/// string, `Bytes` a byte string, `List` and `Array` CBOR arrays, `Struct` a CBOR map
/// with text keys in field order, `Optional` the inner type or `null` (or the key is
/// absent when the field is newer than the writer).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// `bool`.
    Bool,
    /// `u8`.
    U8,
    /// `u16`.
    U16,
    /// `u32`.
    U32,
    /// `u64`.
    U64,
    /// `i8`.
    I8,
    /// `i16`.
    I16,
    /// `i32`.
    I32,
    /// `i64`.
    I64,
    /// UTF-8 text.
    Text,
    /// A byte string, of fixed length when `len` is set.
    Bytes {
        /// Fixed length, if any.
        len: Option<u64>,
    },
    /// A variable-length list.
    List(Box<FieldType>),
    /// A fixed-length array.
    Array {
        /// Element type.
        elem: Box<FieldType>,
        /// Number of elements.
        len: u64,
    },
    /// The inner type or null/absent.
    Optional(Box<FieldType>),
    /// A nested described struct.
    Struct(StructSchema),
}

impl FieldType {
    /// Short human-readable name, e.g. `list<u64>`, `struct Segment`.
    pub fn display_name(&self) -> String {
        match self {
            FieldType::Bool => "bool".into(),
            FieldType::U8 => "u8".into(),
            FieldType::U16 => "u16".into(),
            FieldType::U32 => "u32".into(),
            FieldType::U64 => "u64".into(),
            FieldType::I8 => "i8".into(),
            FieldType::I16 => "i16".into(),
            FieldType::I32 => "i32".into(),
            FieldType::I64 => "i64".into(),
            FieldType::Text => "text".into(),
            FieldType::Bytes { len: None } => "bytes".into(),
            FieldType::Bytes { len: Some(n) } => format!("bytes[{n}]"),
            FieldType::List(t) => format!("list<{}>", t.display_name()),
            FieldType::Array { elem, len } => format!("[{}; {len}]", elem.display_name()),
            FieldType::Optional(t) => format!("option<{}>", t.display_name()),
            FieldType::Struct(s) => format!("struct {}", s.name),
        }
    }
}

/// How a tool should display a value (never changes the encoding).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hint {
    /// Plain decimal.
    None,
    /// Hexadecimal number.
    Hex,
    /// A bit mask: hexadecimal, diffed bit by bit.
    Flags,
    /// A guest or host address.
    Addr,
    /// A size in bytes.
    Size,
    /// A quantity in the named unit (`ns`, `Hz`, `kHz`).
    Unit(String),
}

/// One field of a described struct.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FieldSchema {
    /// Field name: the CBOR map key.
    pub name: String,
    /// Type.
    #[serde(rename = "type")]
    pub ty: FieldType,
    /// Display hint.
    pub hint: Hint,
    /// Section version in which the field appeared (1 for the first).
    pub since: u32,
    /// Documentation (first doc-comment line of the field), may be empty.
    pub doc: String,
}

impl FieldSchema {
    /// Whether a reader needs the field to be present (not an `Optional`).
    pub fn is_required(&self) -> bool {
        !matches!(self.ty, FieldType::Optional(_))
    }
}

/// A described struct: name and ordered fields.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StructSchema {
    /// Rust type name (informational).
    pub name: String,
    /// Fields, in encoding order.
    pub fields: Vec<FieldSchema>,
}

/// Schema of one section kind (all its instances share it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SectionSchema {
    /// Section name, e.g. `cpu.regs`.
    pub name: String,
    /// Version this schema describes (QEMU `version_id`).
    pub version: u32,
    /// Oldest version of the reader that can load this section (QEMU `minimum_version_id`).
    pub min_version: u32,
    /// Whether a reader that does not know the section must refuse the image.
    pub required: bool,
    /// Documentation of the section, may be empty.
    pub doc: String,
    /// Payload struct.
    pub payload: StructSchema,
}

/// A set of section schemas: what an image contains, or what a program reads and writes.
///
/// Serialisable to JSON (store one per release in `fixtures/schemas/VERSION.json`) and
/// compared with [`crate::compat::check`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Schema {
    /// Section schemas, sorted by name, one per name.
    pub sections: Vec<SectionSchema>,
}

impl Schema {
    /// An empty schema.
    pub fn new() -> Schema {
        Schema::default()
    }

    /// Add (or replace) the schema of section type `T`.
    pub fn with<T: SectionState>(mut self) -> Schema {
        self.insert(T::schema());
        self
    }

    /// Add or replace a section schema, keeping the list sorted by name.
    pub fn insert(&mut self, s: SectionSchema) {
        match self
            .sections
            .binary_search_by(|x| x.name.as_str().cmp(&s.name))
        {
            Ok(i) => self.sections[i] = s,
            Err(i) => self.sections.insert(i, s),
        }
    }

    /// The schema of section `name`.
    pub fn get(&self, name: &str) -> Option<&SectionSchema> {
        self.sections
            .binary_search_by(|x| x.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.sections[i])
    }
}

/// A type that can describe its own encoding as a [`FieldType`].
///
/// Implemented for the primitive types, `String`, [`Bytes`], `Vec<T>`, `Option<T>`,
/// `[T; N]`, and every struct declared with [`crate::state!`]. Implement it by hand for
/// a type whose serde encoding matches a [`FieldType`].
pub trait Describe {
    /// The field type.
    fn field_type() -> FieldType;
}

macro_rules! describe_prim {
    ($($t:ty => $v:ident),* $(,)?) => {
        $(impl Describe for $t {
            fn field_type() -> FieldType {
                FieldType::$v
            }
        })*
    };
}

describe_prim!(bool => Bool, u8 => U8, u16 => U16, u32 => U32, u64 => U64,
    i8 => I8, i16 => I16, i32 => I32, i64 => I64, String => Text);

impl<T: Describe> Describe for Vec<T> {
    fn field_type() -> FieldType {
        FieldType::List(Box::new(T::field_type()))
    }
}

impl<T: Describe> Describe for Option<T> {
    fn field_type() -> FieldType {
        FieldType::Optional(Box::new(T::field_type()))
    }
}

impl<T: Describe, const N: usize> Describe for [T; N] {
    fn field_type() -> FieldType {
        FieldType::Array {
            elem: Box::new(T::field_type()),
            len: N as u64,
        }
    }
}

/// Marker for field types allowed on fields added after version 1 (`#[since(N)]`):
/// only `Option<T>`, so a newer reader can load an older image that lacks the field.
pub trait OptionalField {}
impl<T> OptionalField for Option<T> {}

/// A section payload type with its name, versions and schema.
///
/// Normally implemented by [`crate::state!`]; `schema()` must describe exactly what
/// serde writes.
pub trait SectionState: Serialize + DeserializeOwned {
    /// Section name, e.g. `cpu.regs`.
    const NAME: &'static str;
    /// Current version of the section.
    const VERSION: u32;
    /// Oldest version a reader must have to load what this version writes.
    const MIN_VERSION: u32;
    /// Whether a reader that does not know the section must refuse the image.
    const REQUIRED: bool;
    /// The schema.
    fn schema() -> SectionSchema;
}

/// A byte string field (CBOR major type 2, not an array of integers).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bytes(pub Vec<u8>);

impl Describe for Bytes {
    fn field_type() -> FieldType {
        FieldType::Bytes { len: None }
    }
}

impl std::ops::Deref for Bytes {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl std::ops::DerefMut for Bytes {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Bytes {
        Bytes(v)
    }
}

impl From<&[u8]> for Bytes {
    fn from(v: &[u8]) -> Bytes {
        Bytes(v.to_vec())
    }
}

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
            // JSON and other formats without byte strings write a sequence of integers.
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Bytes, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = a.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(Bytes(out))
            }
        }
        d.deserialize_byte_buf(V)
    }
}
