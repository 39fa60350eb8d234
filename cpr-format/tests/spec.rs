//! An encoder written from docs/FORMAT.md alone (no library writer code), checked against
//! the library: same bytes for the same content, and the reader accepts what the spec
//! allows (unknown keys from a newer minor version).

use cpr_format::sample::{self, RegsState};
use cpr_format::*;

fn cbor<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(v, &mut out).unwrap();
    out
}

/// Shortest-form head (FORMAT.md 2.1).
fn head(major: u8, arg: u64) -> Vec<u8> {
    let m = major << 5;
    match arg {
        0..=23 => vec![m | arg as u8],
        24..=0xff => vec![m | 24, arg as u8],
        0x100..=0xffff => [vec![m | 25], (arg as u16).to_be_bytes().to_vec()].concat(),
        0x1_0000..=0xffff_ffff => [vec![m | 26], (arg as u32).to_be_bytes().to_vec()].concat(),
        _ => [vec![m | 27], arg.to_be_bytes().to_vec()].concat(),
    }
}

fn text(s: &str) -> Vec<u8> {
    [head(3, s.len() as u64), s.as_bytes().to_vec()].concat()
}

/// Section record (FORMAT.md 5), keys in the specified order.
fn record(
    name: &str,
    instance: &str,
    version: u64,
    min: u64,
    required: bool,
    payload: &[u8],
) -> Vec<u8> {
    let mut r = head(5, 7);
    r.extend(text("name"));
    r.extend(text(name));
    r.extend(text("instance"));
    r.extend(text(instance));
    r.extend(text("version"));
    r.extend(head(0, version));
    r.extend(text("min_version"));
    r.extend(head(0, min));
    r.extend(text("required"));
    r.push(if required { 0xf5 } else { 0xf4 });
    r.extend(text("crc"));
    r.extend(head(0, u64::from(crc32fast::hash(payload))));
    r.extend(text("payload"));
    r.extend([0xd8, 0x18]);
    r.extend(head(2, payload.len() as u64));
    r.extend_from_slice(payload);
    r
}

/// A whole image without regions (FORMAT.md 2, 9), from its encoded header.
fn image(header: &[u8], records: &[Vec<u8>], fds: &[FdEntry], schema: &Schema) -> Vec<u8> {
    let mut body = header.to_vec();
    body.extend(head(4, records.len() as u64));
    for r in records {
        body.extend_from_slice(r);
    }
    body.extend(cbor(&fds));
    body.extend(cbor(schema));
    body.push(0x80); // no regions
                     // The trailer holds the file length, which is the metadata length here: find the
                     // fixed point.
    let mut m = 35 + body.len() + 1 + 1 + 1 + 5;
    loop {
        let trailer_len = 1 + head(0, records.len() as u64).len() + head(0, m as u64).len() + 5;
        let total = 35 + body.len() + trailer_len;
        if total == m {
            break;
        }
        m = total;
    }
    let mut out = vec![0xd9, 0xd9, 0xf7, 0x89, 0x4e];
    out.extend_from_slice(b"\x89CPR-IMAGE\r\n\x1a\n");
    out.extend([0x82, 0x19, 0x00, 0x01, 0x19, 0x00, 0x00, 0x1b]);
    out.extend((m as u64).to_be_bytes());
    out.extend(body);
    out.push(0x83);
    out.extend(head(0, records.len() as u64));
    out.extend(head(0, m as u64));
    // The CRC covers everything before its 5-byte field (FORMAT.md 2.2).
    let crc = crc32fast::hash(&out);
    out.push(0x1a);
    out.extend(crc.to_be_bytes());
    assert_eq!(out.len(), m);
    out
}

#[test]
fn an_encoder_written_from_the_spec_produces_the_library_bytes() {
    let regs = sample::vcpu(1).0;
    let dev = sample::device(2);
    let fds = vec![sample::fd(0), sample::fd(1)];
    let records = vec![
        record("cpu.regs", "1", 1, 1, true, &cbor(&regs)),
        record("dev.generic", "dev2", 1, 1, false, &cbor(&dev)),
    ];
    let schema = Schema::new()
        .with::<RegsState>()
        .with::<sample::DeviceState>();
    let spec = image(&cbor(&sample::header()), &records, &fds, &schema);

    let mut w = ImageWriter::new(sample::header());
    w.add_section("1", &regs).unwrap();
    w.add_section("dev2", &dev).unwrap();
    for f in fds {
        w.add_fd(f).unwrap();
    }
    let lib = w.to_bytes().unwrap();
    let first_diff = lib.iter().zip(&spec).position(|(a, b)| a != b);
    assert_eq!((first_diff, lib.len()), (None, spec.len()));
}

#[test]
fn unknown_header_keys_from_a_newer_minor_are_ignored() {
    let mut header: Value = ciborium::de::from_reader(cbor(&sample::header()).as_slice()).unwrap();
    let Value::Map(entries) = &mut header else {
        panic!()
    };
    entries.push((
        Value::Text("numa_nodes".into()),
        Value::Array(vec![Value::Integer(0.into())]),
    ));
    let Value::Map(machine) = &mut entries
        .iter_mut()
        .find(|(k, _)| k.as_text() == Some("machine"))
        .unwrap()
        .1
    else {
        panic!()
    };
    machine.push((Value::Text("iommu".into()), Value::Bool(true)));
    let regs = sample::vcpu(0).0;
    let bytes = image(
        &cbor(&header),
        &[record("cpu.regs", "0", 1, 1, true, &cbor(&regs))],
        &[],
        &Schema::new().with::<RegsState>(),
    );
    let img = Image::from_bytes(&bytes).unwrap();
    assert_eq!(img.header(), &sample::header());
    assert_eq!(img.required_section::<RegsState>("0").unwrap(), regs);
    assert_eq!(img.to_bytes().unwrap(), bytes);
}

#[test]
fn a_record_whose_schema_disagrees_is_refused() {
    let regs = sample::vcpu(0).0;
    // Version 2 in the record, version 1 in the schema.
    let bytes = image(
        &cbor(&sample::header()),
        &[record("cpu.regs", "0", 2, 1, true, &cbor(&regs))],
        &[],
        &Schema::new().with::<RegsState>(),
    );
    let e = Image::from_bytes(&bytes).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Inconsistent {
                location: Location::Section { .. },
                ..
            }
        ),
        "{e:?}"
    );
    // A section without any schema.
    let bytes = image(
        &cbor(&sample::header()),
        &[record("cpu.regs", "0", 1, 1, true, &cbor(&regs))],
        &[],
        &Schema::new(),
    );
    assert!(matches!(
        Image::from_bytes(&bytes),
        Err(Error::Inconsistent { .. })
    ));
    // Two instances with the same id.
    let r = record("cpu.regs", "0", 1, 1, true, &cbor(&regs));
    let bytes = image(
        &cbor(&sample::header()),
        &[r.clone(), r],
        &[],
        &Schema::new().with::<RegsState>(),
    );
    assert!(matches!(
        Image::from_bytes(&bytes),
        Err(Error::Inconsistent { .. })
    ));
}
