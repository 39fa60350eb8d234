//! A minimal CBOR scanner and head encoder.
//!
//! The scanner checks that an item is well formed and in the strict profile of the
//! format (definite lengths, shortest heads, text map keys, no tags, no floats) and that
//! every declared length fits in the input, with bounded nesting, before ciborium
//! allocates anything for it. It also refuses duplicate map keys. Its cost is linear in
//! the input (n log n for the keys of maps over 16 entries), and it allocates only the
//! key list of the map it is in, which is bounded by the input.

/// Why an item was rejected, with the absolute byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanError {
    /// A declared length runs past the end of the input.
    Truncated {
        offset: u64,
        needed: u64,
        available: u64,
    },
    /// Not in the strict profile, or not well formed.
    Malformed { offset: u64, reason: String },
    /// Nested deeper than the limit.
    TooDeep { offset: u64, limit: u32 },
}

pub(crate) const MAJOR_UINT: u8 = 0;
pub(crate) const MAJOR_NINT: u8 = 1;
pub(crate) const MAJOR_BYTES: u8 = 2;
pub(crate) const MAJOR_TEXT: u8 = 3;
pub(crate) const MAJOR_ARRAY: u8 = 4;
pub(crate) const MAJOR_MAP: u8 = 5;
pub(crate) const MAJOR_TAG: u8 = 6;
pub(crate) const MAJOR_SIMPLE: u8 = 7;

/// Maps up to this many entries check key uniqueness pairwise, without allocating.
const SMALL_MAP: usize = 16;

/// Hard bound on nesting, above any configured limit: the scanner recurses.
pub(crate) const MAX_NESTING: u32 = 128;

/// A decoded item head.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Head {
    pub major: u8,
    pub arg: u64,
}

/// A cursor over a byte slice whose first byte is at absolute offset `base`.
pub(crate) struct Cursor<'a> {
    pub buf: &'a [u8],
    pub pos: usize,
    pub base: u64,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8], base: u64) -> Cursor<'a> {
        Cursor { buf, pos: 0, base }
    }

    /// Absolute offset of the next byte.
    pub fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn malformed(&self, at: usize, reason: impl Into<String>) -> ScanError {
        ScanError::Malformed {
            offset: self.base + at as u64,
            reason: reason.into(),
        }
    }

    /// Take `n` bytes.
    pub fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], ScanError> {
        let _ = what;
        if n > self.remaining() as u64 {
            return Err(ScanError::Truncated {
                offset: self.offset(),
                needed: n,
                available: self.remaining() as u64,
            });
        }
        let n = n as usize;
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Read one head in the strict profile (shortest argument, definite length).
    pub fn head(&mut self) -> Result<Head, ScanError> {
        let start = self.pos;
        let ib = self.take(1, "head")?[0];
        let major = ib >> 5;
        let info = ib & 0x1f;
        let arg = match info {
            0..=23 => u64::from(info),
            24 => {
                let v = u64::from(self.take(1, "head")?[0]);
                if v < 24 {
                    return Err(self.malformed(start, "non-shortest integer or length"));
                }
                v
            }
            25 => {
                let b = self.take(2, "head")?;
                let v = u64::from(u16::from_be_bytes([b[0], b[1]]));
                if v <= 0xff {
                    return Err(self.malformed(start, "non-shortest integer or length"));
                }
                v
            }
            26 => {
                let b = self.take(4, "head")?;
                let v = u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                if v <= 0xffff {
                    return Err(self.malformed(start, "non-shortest integer or length"));
                }
                v
            }
            27 => {
                let b = self.take(8, "head")?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                let v = u64::from_be_bytes(a);
                if v <= 0xffff_ffff {
                    return Err(self.malformed(start, "non-shortest integer or length"));
                }
                v
            }
            31 => return Err(self.malformed(start, "indefinite length is not allowed")),
            _ => return Err(self.malformed(start, "reserved additional information")),
        };
        Ok(Head { major, arg })
    }

    /// Skip the next item if it is an unsigned integer in shortest form or a short ASCII
    /// text string (under 24 bytes): the bulk of state payloads (register bytes, field
    /// values, map keys). Exactly what `skip` accepts for such an item, minus the depth
    /// check the caller does; returns false, without moving, for anything else (which
    /// `skip` then scans or rejects with its error).
    #[inline]
    fn skip_scalar(&mut self) -> bool {
        let rest = &self.buf[self.pos..];
        let Some(&ib) = rest.first() else {
            return false;
        };
        let len = match ib {
            0x00..=0x17 => 1,
            0x18 if rest.len() >= 2 && rest[1] >= 24 => 2,
            0x19 if rest.len() >= 3 && rest[1] != 0 => 3,
            0x1a if rest.len() >= 5 && (rest[1] | rest[2]) != 0 => 5,
            0x1b if rest.len() >= 9 && (rest[1] | rest[2] | rest[3] | rest[4]) != 0 => 9,
            0x60..=0x77 => {
                let n = 1 + usize::from(ib - 0x60);
                match rest.get(1..n) {
                    Some(text) if text.is_ascii() => n,
                    _ => return false,
                }
            }
            _ => return false,
        };
        self.pos += len;
        true
    }

    /// Skip one complete item in the strict profile, checking all declared lengths and
    /// the nesting bound. `depth` is the depth of this item (top level: 1).
    pub fn skip(&mut self, depth: u32, max_depth: u32) -> Result<(), ScanError> {
        // Whatever limit the caller asks for, recursion stays within the stack.
        let max_depth = max_depth.min(MAX_NESTING);
        if depth > max_depth {
            return Err(ScanError::TooDeep {
                offset: self.offset(),
                limit: max_depth,
            });
        }
        let start = self.pos;
        let h = self.head()?;
        match h.major {
            MAJOR_UINT | MAJOR_NINT => Ok(()),
            MAJOR_BYTES => self.take(h.arg, "byte string").map(|_| ()),
            MAJOR_TEXT => {
                let s = self.take(h.arg, "text string")?;
                if !s.is_ascii() && std::str::from_utf8(s).is_err() {
                    return Err(self.malformed(start, "text string is not UTF-8"));
                }
                Ok(())
            }
            MAJOR_ARRAY => {
                // Every item takes at least one byte: a count larger than what is left
                // is an error before we loop over it.
                if h.arg > self.remaining() as u64 {
                    return Err(ScanError::Truncated {
                        offset: self.offset(),
                        needed: h.arg,
                        available: self.remaining() as u64,
                    });
                }
                let scalars = depth < max_depth;
                for _ in 0..h.arg {
                    if !(scalars && self.skip_scalar()) {
                        self.skip(depth + 1, max_depth)?;
                    }
                }
                Ok(())
            }
            MAJOR_MAP => {
                if h.arg.saturating_mul(2) > self.remaining() as u64 {
                    return Err(ScanError::Truncated {
                        offset: self.offset(),
                        needed: h.arg.saturating_mul(2),
                        available: self.remaining() as u64,
                    });
                }
                // Encoded keys, to refuse duplicates (a map with duplicate keys is not
                // valid CBOR). Bounded by the input: every key takes at least one byte.
                let mut small = [(0usize, 0usize); SMALL_MAP];
                let mut keys = Vec::new();
                let n = h.arg as usize; // at most the input length, checked above
                let mut filled = 0;
                let scalars = depth < max_depth;
                for _ in 0..n {
                    let key_at = self.pos;
                    let Some(&b) = self.buf.get(key_at) else {
                        return Err(ScanError::Truncated {
                            offset: self.offset(),
                            needed: 1,
                            available: 0,
                        });
                    };
                    if b >> 5 != MAJOR_TEXT {
                        return Err(self.malformed(key_at, "map key is not a text string"));
                    }
                    if !(scalars && self.skip_scalar()) {
                        self.skip(depth + 1, max_depth)?;
                    }
                    if n <= SMALL_MAP {
                        small[filled] = (key_at, self.pos);
                        filled += 1;
                    } else {
                        keys.push((key_at, self.pos));
                    }
                    if !(scalars && self.skip_scalar()) {
                        self.skip(depth + 1, max_depth)?;
                    }
                }
                if n <= SMALL_MAP {
                    self.check_unique_keys(&mut small[..filled])
                } else {
                    self.check_unique_keys(&mut keys)
                }
            }
            MAJOR_TAG => Err(self.malformed(start, "tags are not allowed here")),
            _ => {
                match h.arg {
                    20..=22 => Ok(()),
                    _ => Err(self
                        .malformed(start, "only false, true and null simple values are allowed")),
                }
            }
        }
    }

    /// Fail if two of the encoded keys (start, end in `buf`) are equal. In the strict profile
    /// equal keys have equal encodings, so comparing bytes is enough.
    fn check_unique_keys(&self, keys: &mut [(usize, usize)]) -> Result<(), ScanError> {
        let key = |k: &(usize, usize)| &self.buf[k.0..k.1];
        if keys.len() <= SMALL_MAP {
            for i in 0..keys.len() {
                for j in i + 1..keys.len() {
                    if key(&keys[i]) == key(&keys[j]) {
                        return Err(self.malformed(keys[j].0, "duplicate map key"));
                    }
                }
            }
            return Ok(());
        }
        keys.sort_unstable_by(|a, b| key(a).cmp(key(b)).then(a.0.cmp(&b.0)));
        for w in keys.windows(2) {
            if key(&w[0]) == key(&w[1]) {
                return Err(self.malformed(w[1].0, "duplicate map key"));
            }
        }
        Ok(())
    }

    /// Read an unsigned integer item.
    pub fn uint(&mut self, what: &str) -> Result<u64, ScanError> {
        let at = self.pos;
        let h = self.head()?;
        if h.major != MAJOR_UINT {
            return Err(self.malformed(at, format!("{what}: expected an unsigned integer")));
        }
        Ok(h.arg)
    }

    /// Read a text string item.
    pub fn text(&mut self, what: &str) -> Result<&'a str, ScanError> {
        let at = self.pos;
        let h = self.head()?;
        if h.major != MAJOR_TEXT {
            return Err(self.malformed(at, format!("{what}: expected a text string")));
        }
        let s = self.take(h.arg, what)?;
        std::str::from_utf8(s).map_err(|_| self.malformed(at, format!("{what}: not UTF-8")))
    }

    /// Read a bool item.
    pub fn boolean(&mut self, what: &str) -> Result<bool, ScanError> {
        let at = self.pos;
        let h = self.head()?;
        match (h.major, h.arg) {
            (MAJOR_SIMPLE, 20) => Ok(false),
            (MAJOR_SIMPLE, 21) => Ok(true),
            _ => Err(self.malformed(at, format!("{what}: expected a bool"))),
        }
    }

    /// Read a head that must be of `major`; return its argument.
    pub fn expect(&mut self, major: u8, what: &str) -> Result<u64, ScanError> {
        let at = self.pos;
        let h = self.head()?;
        if h.major != major {
            return Err(self.malformed(at, format!("expected {what}")));
        }
        Ok(h.arg)
    }
}

/// Append a head with the shortest argument encoding.
pub(crate) fn put_head(out: &mut Vec<u8>, major: u8, arg: u64) {
    let m = major << 5;
    if arg < 24 {
        out.push(m | arg as u8);
    } else if arg <= 0xff {
        out.push(m | 24);
        out.push(arg as u8);
    } else if arg <= 0xffff {
        out.push(m | 25);
        out.extend_from_slice(&(arg as u16).to_be_bytes());
    } else if arg <= 0xffff_ffff {
        out.push(m | 26);
        out.extend_from_slice(&(arg as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&arg.to_be_bytes());
    }
}

pub(crate) fn put_text(out: &mut Vec<u8>, s: &str) {
    put_head(out, MAJOR_TEXT, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

pub(crate) fn put_uint(out: &mut Vec<u8>, v: u64) {
    put_head(out, MAJOR_UINT, v);
}

pub(crate) fn put_bool(out: &mut Vec<u8>, v: bool) {
    out.push(if v { 0xf5 } else { 0xf4 });
}

/// Check that `bytes` is exactly one strict item.
pub(crate) fn check_item(bytes: &[u8], base: u64, max_depth: u32) -> Result<(), ScanError> {
    let mut c = Cursor::new(bytes, base);
    c.skip(1, max_depth)?;
    if c.remaining() != 0 {
        return Err(c.malformed(c.pos, "trailing bytes after the item"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_round_trip_at_every_width_boundary() {
        for v in [
            0u64,
            23,
            24,
            255,
            256,
            65535,
            65536,
            u32::MAX as u64,
            u32::MAX as u64 + 1,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_uint(&mut out, v);
            let mut c = Cursor::new(&out, 0);
            assert_eq!(c.uint("v").unwrap(), v);
            assert_eq!(c.remaining(), 0);
        }
    }

    #[test]
    fn non_shortest_heads_are_rejected() {
        for bad in [
            &[0x18u8, 0x05][..],
            &[0x19, 0x00, 0x10],
            &[0x1a, 0, 0, 0, 1],
            &[0x1b, 0, 0, 0, 0, 0, 0, 0, 1],
        ] {
            assert!(
                matches!(check_item(bad, 0, 8), Err(ScanError::Malformed { .. })),
                "{bad:02x?}"
            );
        }
    }

    #[test]
    fn declared_lengths_beyond_input_fail_before_allocation() {
        // A byte string declaring 2^64-1 bytes, an array of 2^32 items, a map of 2^63 pairs.
        let cases: [&[u8]; 3] = [
            &[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            &[0x9b, 0, 0, 0, 1, 0, 0, 0, 0],
            &[0xbb, 0x80, 0, 0, 0, 0, 0, 0, 0],
        ];
        for b in cases {
            assert!(
                matches!(check_item(b, 0, 8), Err(ScanError::Truncated { .. })),
                "{b:02x?}"
            );
        }
    }

    #[test]
    fn duplicate_keys_are_refused_in_small_and_large_maps() {
        let mut big = vec![0xb8, 40];
        for i in 0..40u8 {
            big.extend_from_slice(&[0x62, b'k', b'a' + (i % 26), 0x18, 24 + i]);
        }
        // Keys ka..kz then ka..kn again: "ka" repeats.
        assert!(
            matches!(check_item(&big, 0, 8), Err(ScanError::Malformed { ref reason, .. }) if reason == "duplicate map key")
        );
        let mut unique = vec![0xb8, 40];
        for i in 0..40u8 {
            unique.extend_from_slice(&[0x63, b'k', b'a' + i / 26, b'a' + i % 26, 0x00]);
        }
        check_item(&unique, 0, 8).unwrap();
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = vec![0x81u8; 100];
        let mut d = deep.clone();
        d.push(0);
        assert_eq!(
            check_item(&d, 0, 16),
            Err(ScanError::TooDeep {
                offset: 16,
                limit: 16
            })
        );
    }

    #[test]
    fn tags_floats_indefinite_and_non_text_keys_are_rejected() {
        for bad in [
            &[0xc0u8, 0x00][..],
            &[0xf9, 0, 0],
            &[0x9f, 0xff],
            &[0xa1, 0x01, 0x02],
            &[0xf7],
        ] {
            assert!(
                matches!(check_item(bad, 0, 8), Err(ScanError::Malformed { .. })),
                "{bad:02x?}"
            );
        }
    }

    /// Scalars inside arrays and maps take a fast path: it must accept and refuse exactly
    /// what a scalar at the top level gets.
    #[test]
    fn scalars_in_arrays_and_maps_get_the_same_verdict_as_alone() {
        let scalars: &[&[u8]] = &[
            &[0x00],
            &[0x17],
            &[0x18, 0x17],
            &[0x18, 0x18],
            &[0x19, 0x00, 0xff],
            &[0x19, 0x01, 0x00],
            &[0x1a, 0x00, 0x00, 0xff, 0xff],
            &[0x1a, 0x00, 0x01, 0x00, 0x00],
            &[0x1b, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
            &[0x1b, 0, 0, 0, 1, 0, 0, 0, 0],
            &[0x60],
            &[0x63, b'e', b'a', b'x'],
            &[0x62, 0xc3, 0xa9],
            &[0x62, 0xff, 0xfe],
            &[0x19, 0x01],
            &[0x63, b'a'],
        ];
        for s in scalars {
            let alone = check_item(s, 0, 8).is_ok();
            let mut array = vec![0x82, 0x00];
            array.extend_from_slice(s);
            assert_eq!(
                check_item(&array, 0, 8).is_ok(),
                alone,
                "array {array:02x?}"
            );
            let mut value = vec![0xa1, 0x61, b'k'];
            value.extend_from_slice(s);
            assert_eq!(
                check_item(&value, 0, 8).is_ok(),
                alone,
                "value {value:02x?}"
            );
            if s.first().is_some_and(|b| b >> 5 == MAJOR_TEXT) {
                let mut key = vec![0xa1];
                key.extend_from_slice(s);
                key.push(0x00);
                assert_eq!(check_item(&key, 0, 8).is_ok(), alone, "key {key:02x?}");
            }
        }
        // A scalar one level past the nesting bound is still too deep.
        assert!(matches!(
            check_item(&[0x81, 0x81, 0x00], 0, 2),
            Err(ScanError::TooDeep { limit: 2, .. })
        ));
        check_item(&[0x81, 0x81, 0x00], 0, 3).unwrap();
    }
}
