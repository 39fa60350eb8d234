//! A serde deserializer for the strict CBOR profile, over a byte slice.
//!
//! It replaces ciborium's for decoding (about 4x faster here: no per-byte reader, keys
//! and strings are borrowed) and knows the byte offset of the item that failed. Input
//! has been through [`crate::cbor::Cursor::skip`] first, but nothing here relies on it
//! for safety: every read is bounds-checked and nesting is bounded.

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

use crate::cbor::{
    Cursor, ScanError, MAJOR_ARRAY, MAJOR_BYTES, MAJOR_MAP, MAJOR_NINT, MAJOR_SIMPLE, MAJOR_TEXT,
    MAJOR_UINT,
};

/// A decoding error: serde's message and the offset of the last item read.
#[derive(Debug)]
pub(crate) struct DeError {
    pub msg: String,
    pub offset: Option<u64>,
    /// The nesting bound was hit (reported as a limit, not a decoding error).
    pub too_deep: bool,
}

impl std::fmt::Display for DeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        DeError {
            msg: msg.to_string(),
            offset: None,
            too_deep: false,
        }
    }
}

impl DeError {
    fn at(msg: impl Into<String>, offset: u64) -> DeError {
        DeError {
            msg: msg.into(),
            offset: Some(offset),
            too_deep: false,
        }
    }
}

impl From<ScanError> for DeError {
    fn from(e: ScanError) -> DeError {
        match e {
            ScanError::Truncated { offset, .. } => DeError::at("truncated item", offset),
            ScanError::Malformed { offset, reason } => DeError::at(reason, offset),
            ScanError::TooDeep { offset, .. } => DeError {
                too_deep: true,
                ..DeError::at("nested too deeply", offset)
            },
        }
    }
}

pub(crate) struct Deserializer<'a> {
    pub c: Cursor<'a>,
    /// Offset of the last item head read: where an error most likely is.
    pub last: u64,
    /// Depth of the next item (top level: 1), as the scanner counts.
    depth: u32,
    max_depth: u32,
}

impl<'a> Deserializer<'a> {
    /// Decode from `bytes[start..]`; `base` is the absolute offset of `bytes[0]`.
    pub fn new(bytes: &'a [u8], start: usize, base: u64, max_depth: u32) -> Deserializer<'a> {
        let mut c = Cursor::new(bytes, base);
        c.pos = start;
        Deserializer {
            c,
            last: base + start as u64,
            depth: 1,
            max_depth,
        }
    }

    pub fn end(&self) -> Result<(), DeError> {
        if self.c.remaining() != 0 {
            return Err(DeError::at(
                "trailing bytes after the item",
                self.c.offset(),
            ));
        }
        Ok(())
    }

    fn peek(&self) -> Result<u8, DeError> {
        self.c
            .buf
            .get(self.c.pos)
            .copied()
            .ok_or_else(|| DeError::at("unexpected end of input", self.c.offset()))
    }

    fn head(&mut self) -> Result<crate::cbor::Head, DeError> {
        self.last = self.c.offset();
        Ok(self.c.head()?)
    }

    /// Children of a container are one level deeper; check the bound before reading
    /// them (the scanner's rule: an item deeper than the limit is an error).
    fn enter(&mut self, count: u64) -> Result<(), DeError> {
        self.depth += 1;
        if count > 0 && self.depth > self.max_depth {
            return Err(DeError {
                too_deep: true,
                ..DeError::at("nested too deeply", self.c.offset())
            });
        }
        Ok(())
    }
}

impl<'de, 'a: 'de> de::Deserializer<'de> for &mut Deserializer<'a> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let h = self.head()?;
        match h.major {
            MAJOR_UINT => v.visit_u64(h.arg),
            MAJOR_NINT => match i64::try_from(h.arg) {
                Ok(n) => v.visit_i64(-1 - n),
                Err(_) => v.visit_i128(-1 - i128::from(h.arg)),
            },
            MAJOR_BYTES => v.visit_borrowed_bytes(self.c.take(h.arg, "byte string")?),
            MAJOR_TEXT => {
                let at = self.c.pos;
                let b = self.c.take(h.arg, "text string")?;
                let s = std::str::from_utf8(b)
                    .map_err(|_| DeError::from(self.c.malformed(at, "text is not UTF-8")))?;
                v.visit_borrowed_str(s)
            }
            MAJOR_ARRAY => {
                self.enter(h.arg)?;
                let r = v.visit_seq(Seq {
                    de: self,
                    left: h.arg,
                });
                self.depth -= 1;
                r
            }
            MAJOR_MAP => {
                self.enter(h.arg)?;
                let r = v.visit_map(Map {
                    de: self,
                    left: h.arg,
                });
                self.depth -= 1;
                r
            }
            MAJOR_SIMPLE => match h.arg {
                20 => v.visit_bool(false),
                21 => v.visit_bool(true),
                22 => v.visit_unit(),
                _ => Err(DeError::at("unsupported simple value", self.last)),
            },
            _ => Err(DeError::at("tags are not allowed here", self.last)),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        if self.peek()? == 0xf6 {
            self.head()?;
            v.visit_none()
        } else {
            v.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let h = self.head()?;
        if (h.major, h.arg) != (MAJOR_SIMPLE, 22) {
            return Err(DeError::at("expected null", self.last));
        }
        v.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(v)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        let b = self.peek()?;
        match b >> 5 {
            // A unit variant is its name.
            MAJOR_TEXT => {
                let at = self.c.offset();
                let h = self.head()?;
                let s = std::str::from_utf8(self.c.take(h.arg, "variant")?)
                    .map_err(|_| DeError::at("variant name is not UTF-8", at))?;
                v.visit_enum(s.into_deserializer())
            }
            // Other variants are a map of one entry: name => content.
            MAJOR_MAP => {
                let h = self.head()?;
                if h.arg != 1 {
                    return Err(DeError::at(
                        "an enum variant must be a map of one entry",
                        self.last,
                    ));
                }
                self.enter(1)?;
                let r = v.visit_enum(Enum { de: self });
                self.depth -= 1;
                r
            }
            _ => Err(DeError::at(
                "expected an enum variant (text or map)",
                self.c.offset(),
            )),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.last = self.c.offset();
        self.c.skip(self.depth, self.max_depth)?;
        v.visit_unit()
    }

    fn is_human_readable(&self) -> bool {
        false
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf seq tuple tuple_struct map struct identifier
    }
}

struct Seq<'x, 'a> {
    de: &'x mut Deserializer<'a>,
    left: u64,
}

impl<'de, 'x, 'a: 'de> de::SeqAccess<'de> for Seq<'x, 'a> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        // Never more than the bytes left: a lying count cannot make callers reserve much.
        Some((self.left as usize).min(self.de.c.remaining()))
    }
}

struct Map<'x, 'a> {
    de: &'x mut Deserializer<'a>,
    left: u64,
}

impl<'de, 'x, 'a: 'de> de::MapAccess<'de> for Map<'x, 'a> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        // Map keys are text in the strict profile.
        if self.de.peek()? >> 5 != MAJOR_TEXT {
            return Err(DeError::at(
                "map key is not a text string",
                self.de.c.offset(),
            ));
        }
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, DeError> {
        seed.deserialize(&mut *self.de)
    }

    fn size_hint(&self) -> Option<usize> {
        Some((self.left as usize).min(self.de.c.remaining() / 2))
    }
}

struct Enum<'x, 'a> {
    de: &'x mut Deserializer<'a>,
}

impl<'de, 'x, 'a: 'de> de::EnumAccess<'de> for Enum<'x, 'a> {
    type Error = DeError;
    type Variant = Self;

    fn variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<(T::Value, Self), DeError> {
        let v = seed.deserialize(&mut *self.de)?;
        Ok((v, self))
    }
}

impl<'de, 'x, 'a: 'de> de::VariantAccess<'de> for Enum<'x, 'a> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        de::Deserialize::deserialize(&mut *self.de)
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        seed.deserialize(&mut *self.de)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_seq(&mut *self.de, v)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_map(&mut *self.de, v)
    }
}
