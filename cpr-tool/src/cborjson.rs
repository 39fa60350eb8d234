//! A lossless mapping between CBOR values and JSON, for `cpr-tool json` and
//! `cpr-tool encode`.
//!
//! Integers, text, booleans, null, arrays and text-keyed maps map to their JSON
//! twins. What JSON lacks is written as a one-key object whose key starts with `$`:
//! `{"$bytes": "hex"}`, `{"$float": 1.5}` (also `"nan"`, `"inf"`, `"-inf"`),
//! `{"$tag": [N, value]}`, and `{"$map": [[key, value], ...]}` for maps with
//! non-text keys or keys starting with `$`. Integers beyond 64 bits are written as
//! `{"$int": "decimal"}`.

use crate::ojson::Json;
use ciborium::Value;

/// JSON for a CBOR value.
pub fn to_json(v: &Value) -> Json {
    match v {
        Value::Integer(i) => {
            let n = i128::from(*i);
            if let Ok(u) = u64::try_from(n) {
                Json::from(u)
            } else if let Ok(s) = i64::try_from(n) {
                Json::from(s)
            } else {
                one("$int", Json::String(n.to_string()))
            }
        }
        Value::Bytes(b) => one("$bytes", Json::String(hex_encode(b))),
        Value::Float(f) => {
            let j = if f.is_nan() {
                Json::String("nan".into())
            } else if f.is_infinite() {
                Json::String(if *f > 0.0 { "inf" } else { "-inf" }.into())
            } else {
                serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number)
            };
            one("$float", j)
        }
        Value::Text(t) => Json::String(t.clone()),
        Value::Bool(b) => Json::Bool(*b),
        Value::Null => Json::Null,
        Value::Tag(t, inner) => one("$tag", Json::Array(vec![Json::from(*t), to_json(inner)])),
        Value::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => {
            let plain = entries
                .iter()
                .all(|(k, _)| matches!(k, Value::Text(t) if !t.starts_with('$')));
            let mut seen = std::collections::HashSet::new();
            let unique = entries.iter().all(|(k, _)| seen.insert(format!("{k:?}")));
            if plain && unique {
                let m = entries
                    .iter()
                    .filter_map(|(k, v)| match k {
                        Value::Text(t) => Some((t.clone(), to_json(v))),
                        _ => None,
                    })
                    .collect();
                Json::Object(m)
            } else {
                let pairs = entries
                    .iter()
                    .map(|(k, v)| Json::Array(vec![to_json(k), to_json(v)]))
                    .collect();
                one("$map", Json::Array(pairs))
            }
        }
        // ciborium's Value is non_exhaustive; nothing else exists in 0.2.
        _ => Json::Null,
    }
}

fn one(key: &str, v: Json) -> Json {
    Json::Object(vec![(key.to_owned(), v)])
}

/// Why a JSON value cannot be turned back into CBOR, with its JSON pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FromJsonError {
    pub pointer: String,
    pub reason: String,
}

/// The CBOR value for JSON written by [`to_json`]. `pointer` is where `j` sits
/// in the document, for error messages.
pub fn from_json(j: &Json, pointer: &str) -> Result<Value, FromJsonError> {
    let err = |reason: &str| FromJsonError {
        pointer: if pointer.is_empty() {
            "/".into()
        } else {
            pointer.to_owned()
        },
        reason: reason.to_owned(),
    };
    Ok(match j {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => {
            if let Some(u) = n.as_u64() {
                Value::Integer(u.into())
            } else if let Some(i) = n.as_i64() {
                Value::Integer(i.into())
            } else {
                return Err(err(
                    "non-integer number (floats are written as {\"$float\": x})",
                ));
            }
        }
        Json::String(s) => Value::Text(s.clone()),
        Json::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, x)| from_json(x, &format!("{pointer}/{i}")))
                .collect::<Result<_, _>>()?,
        ),
        Json::Object(m) => {
            if m.len() == 1 {
                if let Some((k, v)) = m.iter().next() {
                    if k.starts_with('$') {
                        return special(k, v, &format!("{pointer}/{}", escape(k)));
                    }
                }
            }
            let mut entries = Vec::with_capacity(m.len());
            for (k, v) in m {
                if k.starts_with('$') {
                    return Err(err(&format!("unexpected key {k:?} in a map")));
                }
                entries.push((
                    Value::Text(k.clone()),
                    from_json(v, &format!("{pointer}/{}", escape(k)))?,
                ));
            }
            Value::Map(entries)
        }
    })
}

fn special(key: &str, v: &Json, pointer: &str) -> Result<Value, FromJsonError> {
    let err = |reason: String| FromJsonError {
        pointer: pointer.to_owned(),
        reason,
    };
    match (key, v) {
        ("$bytes", Json::String(s)) => hex_decode(s).map(Value::Bytes).map_err(err),
        ("$int", Json::String(s)) => {
            let n: i128 = s.parse().map_err(|_| err(format!("bad integer {s:?}")))?;
            ciborium::value::Integer::try_from(n)
                .map(Value::Integer)
                .map_err(|_| err(format!("integer {n} out of CBOR range")))
        }
        ("$float", Json::Number(n)) => n
            .as_f64()
            .map(Value::Float)
            .ok_or_else(|| err("bad float".into())),
        ("$float", Json::String(s)) => match s.as_str() {
            "nan" => Ok(Value::Float(f64::NAN)),
            "inf" => Ok(Value::Float(f64::INFINITY)),
            "-inf" => Ok(Value::Float(f64::NEG_INFINITY)),
            _ => Err(err(format!("bad float {s:?}"))),
        },
        ("$tag", Json::Array(a)) if a.len() == 2 => {
            let tag = a[0]
                .as_u64()
                .ok_or_else(|| err("tag number must be a u64".into()))?;
            Ok(Value::Tag(
                tag,
                Box::new(from_json(&a[1], &format!("{pointer}/1"))?),
            ))
        }
        ("$map", Json::Array(pairs)) => {
            let mut entries = Vec::with_capacity(pairs.len());
            for (i, p) in pairs.iter().enumerate() {
                let Json::Array(kv) = p else {
                    return Err(err(format!("entry {i} is not a [key, value] pair")));
                };
                let [k, v] = kv.as_slice() else {
                    return Err(err(format!("entry {i} is not a [key, value] pair")));
                };
                entries.push((
                    from_json(k, &format!("{pointer}/{i}/0"))?,
                    from_json(v, &format!("{pointer}/{i}/1"))?,
                ));
            }
            Ok(Value::Map(entries))
        }
        _ => Err(err(format!("bad {key} value"))),
    }
}

fn escape(k: &str) -> String {
    k.replace('~', "~0").replace('/', "~1")
}

pub fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn hex_decode(s: &str) -> Result<Vec<u8>, String> {
    if s.len() & 1 != 0 {
        return Err(format!("odd number of hex digits ({})", s.len()));
    }
    s.as_bytes()
        .chunks(2)
        .enumerate()
        .map(|(i, pair)| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| format!("bad hex digit at position {}", i * 2))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(v: Value) {
        let j = to_json(&v);
        let text = serde_json::to_string(&j).unwrap();
        let back = from_json(&serde_json::from_str(&text).unwrap(), "").unwrap();
        // NaN != NaN: compare encodings instead.
        let (mut a, mut b) = (Vec::new(), Vec::new());
        ciborium::ser::into_writer(&v, &mut a).unwrap();
        ciborium::ser::into_writer(&back, &mut b).unwrap();
        assert_eq!(a, b, "{text}");
    }

    #[test]
    fn every_kind_round_trips() {
        round_trip(Value::Integer(u64::MAX.into()));
        round_trip(Value::Integer(i64::MIN.into()));
        round_trip(Value::Integer(
            ciborium::value::Integer::try_from(-(1i128 << 64)).unwrap(),
        ));
        round_trip(Value::Bytes(vec![0, 1, 0xfe, 0xff]));
        round_trip(Value::Float(1.5));
        round_trip(Value::Float(f64::NAN));
        round_trip(Value::Float(f64::NEG_INFINITY));
        round_trip(Value::Tag(24, Box::new(Value::Bytes(vec![1]))));
        round_trip(Value::Map(vec![
            (
                Value::Text("a".into()),
                Value::Array(vec![Value::Null, Value::Bool(true)]),
            ),
            (Value::Text("$x".into()), Value::Text("y".into())),
        ]));
        round_trip(Value::Map(vec![(
            Value::Integer(1.into()),
            Value::Text("one".into()),
        )]));
        round_trip(Value::Map(vec![
            (Value::Text("z".into()), Value::Null),
            (Value::Text("a".into()), Value::Null),
        ]));
    }

    #[test]
    fn map_key_order_survives() {
        let v = Value::Map(vec![
            (Value::Text("z".into()), Value::Null),
            (Value::Text("a".into()), Value::Null),
        ]);
        let j = to_json(&v);
        assert_eq!(serde_json::to_string(&j).unwrap(), r#"{"z":null,"a":null}"#);
    }

    #[test]
    fn errors_point_at_the_value() {
        let j: Json = serde_json::from_str(r#"{"a": [1, {"$bytes": "abc"}]}"#).unwrap();
        let e = from_json(&j, "").unwrap_err();
        assert_eq!(e.pointer, "/a/1/$bytes");
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                any::<u64>().prop_map(|n| Value::Integer(n.into())),
                any::<i64>().prop_map(|n| Value::Integer(n.into())),
                (any::<u64>()).prop_map(|n| {
                    Value::Integer(
                        ciborium::value::Integer::try_from(-1 - i128::from(n))
                            .unwrap_or_else(|_| 0.into()),
                    )
                }),
                proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Bytes),
                any::<f64>().prop_map(Value::Float),
                ".{0,12}".prop_map(Value::Text),
                any::<bool>().prop_map(Value::Bool),
                Just(Value::Null),
            ];
            leaf.prop_recursive(4, 64, 8, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                    proptest::collection::vec(
                        ("[a-z$]{0,6}".prop_map(Value::Text), inner.clone()),
                        0..6
                    )
                    .prop_map(Value::Map),
                    proptest::collection::vec((inner.clone(), inner.clone()), 0..4)
                        .prop_map(Value::Map),
                    (0u64..100_000, inner).prop_map(|(t, v)| Value::Tag(t, Box::new(v))),
                ]
            })
        }

        proptest! {
            /// Any CBOR value survives JSON text and back with the same encoding,
            /// including duplicate and non-text map keys, NaN and tags.
            #[test]
            fn json_is_lossless(v in value()) {
                let text = serde_json::to_string(&to_json(&v)).unwrap();
                let back = from_json(&serde_json::from_str(&text).unwrap(), "").unwrap();
                let (mut a, mut b) = (Vec::new(), Vec::new());
                ciborium::ser::into_writer(&v, &mut a).unwrap();
                ciborium::ser::into_writer(&back, &mut b).unwrap();
                prop_assert_eq!(a, b, "{}", text);
            }
        }
    }
}
