//! Decoding of top-level elements and payloads into serde types, with typed errors.

use serde::de::DeserializeOwned;

use crate::cbor::{Cursor, ScanError};
use crate::error::{Error, Location, Result};
use crate::layout::Limits;

/// Scan one element in the strict profile, then decode it.
pub(crate) fn decode_elem<T: DeserializeOwned>(
    c: &mut Cursor<'_>,
    elem: &'static str,
    limits: &Limits,
) -> Result<T> {
    // The decoder enforces the strict profile, bounds and nesting itself: no pre-scan.
    let (v, end) = decode_at(
        c.buf,
        c.pos,
        c.base,
        Location::Element(elem),
        limits.max_depth,
        false,
    )?;
    c.pos = end;
    Ok(v)
}

/// Decode one whole item held in `bytes` (a section payload, which passed the strict
/// scan at open).
pub(crate) fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    location: Location,
    offset: u64,
) -> Result<T> {
    decode_at(bytes, 0, offset, location, u32::MAX, true).map(|(v, _)| v)
}

/// Decode the item at `bytes[start..]` (absolute offset of `bytes[0]`: `base`); return
/// it and where it ends. With `whole`, it must end at the end of `bytes`.
fn decode_at<T: DeserializeOwned>(
    bytes: &[u8],
    start: usize,
    base: u64,
    location: Location,
    max_depth: u32,
    whole: bool,
) -> Result<(T, usize)> {
    let max_depth = max_depth.min(DECODE_DEPTH);
    let mut de = crate::de::Deserializer::new(bytes, start, base, max_depth);
    // Fast path without path tracking (which doubles the cost); decode a second time
    // with tracking only to report an error.
    let first =
        T::deserialize(&mut de).and_then(|v| if whole { de.end().map(|()| v) } else { Ok(v) });
    if let Ok(v) = first {
        return Ok((v, de.c.pos));
    }
    let mut de = crate::de::Deserializer::new(bytes, start, base, max_depth);
    let mut track = serde_path_to_error::Track::new();
    let r = T::deserialize(serde_path_to_error::Deserializer::new(&mut de, &mut track));
    let e = match r.and_then(|v| if whole { de.end().map(|()| v) } else { Ok(v) }) {
        Ok(v) => return Ok((v, de.c.pos)),
        Err(e) => e,
    };
    let offset = e.offset.unwrap_or(de.last);
    if e.too_deep {
        return Err(Error::Limit {
            location,
            offset,
            what: "nesting depth",
            value: u64::from(max_depth) + 1,
            limit: u64::from(max_depth),
        });
    }
    Err(Error::Decode {
        location,
        offset,
        field: track.path().to_string(),
        reason: e.msg,
    })
}

/// Nesting bound of the decoder when no lower limit applies (stack safety).
const DECODE_DEPTH: u32 = crate::cbor::MAX_NESTING;

pub(crate) fn scan_err(e: ScanError, location: Location) -> Error {
    match e {
        ScanError::Truncated {
            offset,
            needed,
            available,
        } => Error::Truncated {
            what: location.to_string(),
            offset,
            needed,
            available,
        },
        ScanError::Malformed { offset, reason } => Error::Malformed {
            location,
            offset,
            reason,
        },
        ScanError::TooDeep { offset, limit } => Error::Limit {
            location,
            offset,
            what: "nesting depth",
            value: u64::from(limit) + 1,
            limit: u64::from(limit),
        },
    }
}
