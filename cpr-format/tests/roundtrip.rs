//! Round trips of every public type and of whole images.

use cpr_format::sample::{self, CpuExtState, DeviceState, RegsState, SregsState};
use cpr_format::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn cbor_round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(v: &T) {
    let mut bytes = Vec::new();
    ciborium::ser::into_writer(v, &mut bytes).unwrap();
    let back: T = ciborium::de::from_reader(bytes.as_slice()).unwrap();
    assert_eq!(&back, v);
    let json = serde_json::to_string(v).unwrap();
    let back: T = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, v, "JSON: {json}");
}

#[test]
fn model_types_round_trip_through_cbor_and_json() {
    cbor_round_trip(&sample::header());
    for m in [Mode::Restart, Mode::Reboot, Mode::Transfer] {
        cbor_round_trip(&m);
    }
    for b in [
        RamBacking::Anonymous,
        RamBacking::Memfd,
        RamBacking::Hugetlb,
        RamBacking::File {
            path: "/dev/shm/x".into(),
        },
    ] {
        cbor_round_trip(&b);
    }
    for k in [
        FdKind::Memfd,
        FdKind::RamFile,
        FdKind::VfioContainer,
        FdKind::VfioGroup,
        FdKind::VfioDevice,
        FdKind::EventFd,
        FdKind::Pty,
        FdKind::Socket,
        FdKind::ListeningSocket,
        FdKind::Tap,
        FdKind::Other("iommufd".into()),
    ] {
        cbor_round_trip(&k);
    }
    for t in [
        FileType::Regular,
        FileType::Directory,
        FileType::CharDevice,
        FileType::BlockDevice,
        FileType::Fifo,
        FileType::Socket,
        FileType::Symlink,
        FileType::Unknown,
    ] {
        cbor_round_trip(&t);
    }
    cbor_round_trip(&sample::fd(3));
    cbor_round_trip(&FormatVersion::CURRENT);
}

#[test]
fn schema_types_round_trip_through_cbor_and_json() {
    let schema = Schema::new()
        .with::<RegsState>()
        .with::<SregsState>()
        .with::<CpuExtState>()
        .with::<DeviceState>();
    cbor_round_trip(&schema);
    for h in [
        Hint::None,
        Hint::Hex,
        Hint::Flags,
        Hint::Addr,
        Hint::Size,
        Hint::Unit("ns".into()),
    ] {
        cbor_round_trip(&h);
    }
    let report = compat::check(&schema, &Schema::new().with::<RegsState>());
    cbor_round_trip(&report);
}

#[test]
fn state_types_round_trip_through_cbor() {
    let (r, s, e) = sample::vcpu(2);
    cbor_round_trip(&r);
    cbor_round_trip(&s);
    cbor_round_trip(&e);
    cbor_round_trip(&sample::device(3));
    cbor_round_trip(&sample::device(4));
}

#[test]
fn bytes_fields_are_cbor_byte_strings_not_arrays() {
    let mut out = Vec::new();
    ciborium::ser::into_writer(&Bytes(vec![1, 2, 3]), &mut out).unwrap();
    assert_eq!(out, [0x43, 1, 2, 3]);
}

#[test]
fn typical_image_round_trips_with_typed_and_untyped_access() {
    let bytes = sample::typical_writer().unwrap().to_bytes().unwrap();
    let img = Image::from_bytes(&bytes).unwrap();
    assert_eq!(img.header(), &sample::header());
    assert_eq!(img.format_version(), FormatVersion::CURRENT);
    assert_eq!(img.sections().len(), 4 * 3 + 12);
    for i in 0..4u64 {
        let (r, s, e) = sample::vcpu(i);
        assert_eq!(img.section::<RegsState>(&i.to_string()).unwrap(), Some(r));
        assert_eq!(img.section::<SregsState>(&i.to_string()).unwrap(), Some(s));
        assert_eq!(img.section::<CpuExtState>(&i.to_string()).unwrap(), Some(e));
    }
    let devs = img.sections_of::<DeviceState>().unwrap();
    assert_eq!(devs.len(), 12);
    assert_eq!(devs[5], ("dev5".to_string(), sample::device(5)));
    assert_eq!(img.section::<RegsState>("9").unwrap(), None);
    assert_eq!(
        img.fd_manifest(),
        (0..20).map(sample::fd).collect::<Vec<_>>().as_slice()
    );

    // Untyped: the value tree has the schema's field names in order.
    let s = img.find("cpu.regs", "1").unwrap();
    let Value::Map(entries) = s.value().unwrap() else {
        panic!("payload is not a map")
    };
    let schema = img.schema().get("cpu.regs").unwrap();
    let names: Vec<_> = entries
        .iter()
        .map(|(k, _)| k.as_text().unwrap().to_owned())
        .collect();
    let schema_names: Vec<_> = schema
        .payload
        .fields
        .iter()
        .map(|f| f.name.clone())
        .collect();
    assert_eq!(names, schema_names);
    assert_eq!(s.crc, crc32fast::hash(s.payload_bytes()));
    assert_eq!(
        &bytes[s.offset as usize..(s.offset + s.length) as usize],
        s.payload_bytes()
    );

    // Re-encoding gives the same bytes.
    assert_eq!(img.to_bytes().unwrap(), bytes);
}

#[test]
fn rebuilding_an_image_from_its_parts_gives_identical_bytes() {
    let bytes = sample::small_writer().unwrap().to_bytes().unwrap();
    let img = Image::from_bytes(&bytes).unwrap();
    let mut w = ImageWriter::new(img.header().clone());
    for s in img.sections() {
        let schema = img.schema().get(&s.name).unwrap().clone();
        w.add_raw_section(s.info(), schema, s.payload_bytes().to_vec())
            .unwrap();
    }
    for f in img.fd_manifest() {
        w.add_fd(f.clone()).unwrap();
    }
    for r in img.regions() {
        w.add_region(&r.name, img.read_region(&r.name).unwrap())
            .unwrap();
    }
    assert_eq!(w.to_bytes().unwrap(), bytes);

    // Through the untyped value tree too.
    let mut w = ImageWriter::new(img.header().clone());
    for s in img.sections() {
        let schema = img.schema().get(&s.name).unwrap().clone();
        w.add_value_section(s.info(), schema, &s.value().unwrap())
            .unwrap();
    }
    for f in img.fd_manifest() {
        w.add_fd(f.clone()).unwrap();
    }
    for r in img.regions() {
        w.add_region(&r.name, img.read_region(&r.name).unwrap())
            .unwrap();
    }
    assert_eq!(w.to_bytes().unwrap(), bytes);
}

#[test]
fn regions_are_page_aligned_and_checked() {
    let mut w = ImageWriter::new(sample::header());
    w.add_section("0", &sample::vcpu(0).0).unwrap();
    w.add_region("a", vec![0xaa; 5000]).unwrap();
    w.add_region_reader("b", 3, std::io::Cursor::new(vec![1u8, 2, 3]))
        .unwrap();
    w.add_region("empty", vec![]).unwrap();
    let bytes = w.to_bytes().unwrap();
    let img = Image::from_bytes(&bytes).unwrap();
    let offs: Vec<_> = img
        .regions()
        .iter()
        .map(|r| (r.name.as_str(), r.offset, r.length))
        .collect();
    assert_eq!(
        offs,
        [("a", 4096, 5000), ("b", 12288, 3), ("empty", 16384, 0)]
    );
    assert_eq!(img.read_region("b").unwrap(), [1, 2, 3]);
    assert_eq!(img.read_region("a").unwrap(), vec![0xaa; 5000]);
    img.verify_regions().unwrap();
    assert!(matches!(img.read_region("zz"), Err(Error::NoSuchRegion(_))));
    assert_eq!(bytes.len(), 16384);
}

#[test]
fn region_reader_that_ends_early_is_an_error() {
    let mut w = ImageWriter::new(sample::header());
    w.add_region_reader("b", 10, std::io::Cursor::new(vec![1u8, 2, 3]))
        .unwrap();
    assert!(
        matches!(w.to_bytes(), Err(Error::Encode { location: Location::Region(n), .. }) if n == "b")
    );
}

#[test]
fn writer_refuses_duplicates_and_non_strict_values() {
    let mut w = ImageWriter::new(sample::header());
    w.add_section("0", &sample::vcpu(0).0).unwrap();
    assert!(matches!(
        w.add_section("0", &sample::vcpu(1).0),
        Err(Error::Encode { .. })
    ));
    w.add_fd(sample::fd(1)).unwrap();
    assert!(matches!(w.add_fd(sample::fd(1)), Err(Error::Encode { .. })));
    let info = SectionInfo {
        name: "x".into(),
        instance: "0".into(),
        version: 1,
        min_version: 1,
        required: false,
    };
    let schema = SectionSchema {
        name: "x".into(),
        version: 1,
        min_version: 1,
        required: false,
        doc: String::new(),
        payload: StructSchema {
            name: "X".into(),
            fields: vec![],
        },
    };
    let float = Value::Map(vec![(Value::Text("f".into()), Value::Float(1.5))]);
    assert!(matches!(
        w.add_value_section(info.clone(), schema.clone(), &float),
        Err(Error::Encode { .. })
    ));
    assert!(matches!(
        w.add_value_section(info.clone(), schema.clone(), &Value::Integer(3.into())),
        Err(Error::Encode { .. })
    ));
    let mut wrong = schema.clone();
    wrong.version = 2;
    let ok = Value::Map(vec![]);
    assert!(matches!(
        w.add_value_section(info.clone(), wrong, &ok),
        Err(Error::Encode { .. })
    ));
    w.add_value_section(info, schema, &ok).unwrap();
}

/// Sections encoded apart (`EncodedSection`, e.g. on another thread) give the same image,
/// byte for byte, as the same sections added with `add_section`.
#[test]
fn sections_encoded_apart_give_the_same_image() {
    let direct = {
        let mut w = ImageWriter::new(sample::header());
        for i in 0..3u64 {
            let (regs, sregs, ext) = sample::vcpu(i);
            w.add_section(&i.to_string(), &regs).unwrap();
            w.add_section(&i.to_string(), &sregs).unwrap();
            w.add_section(&i.to_string(), &ext).unwrap();
        }
        w.to_bytes().unwrap()
    };
    let apart = {
        let encoded: Vec<EncodedSection> = std::thread::spawn(|| {
            (0..3u64)
                .flat_map(|i| {
                    let (regs, sregs, ext) = sample::vcpu(i);
                    let id = i.to_string();
                    [
                        EncodedSection::new(&id, &regs).unwrap(),
                        EncodedSection::new(&id, &sregs).unwrap(),
                        EncodedSection::new(&id, &ext).unwrap(),
                    ]
                })
                .collect()
        })
        .join()
        .unwrap();
        let mut w = ImageWriter::new(sample::header());
        for e in encoded {
            w.add_encoded(e).unwrap();
        }
        w.to_bytes().unwrap()
    };
    assert_eq!(apart, direct);
    let img = Image::from_bytes(&apart).unwrap();
    assert_eq!(img.sections_of::<RegsState>().unwrap().len(), 3);
}

#[test]
fn an_encoded_section_added_twice_is_refused() {
    let (regs, _, _) = sample::vcpu(0);
    let mut w = ImageWriter::new(sample::header());
    w.add_encoded(EncodedSection::new("0", &regs).unwrap())
        .unwrap();
    let err = match w.add_encoded(EncodedSection::new("0", &regs).unwrap()) {
        Ok(_) => panic!("the second instance 0 was accepted"),
        Err(e) => e,
    };
    assert!(
        err.to_string().contains("duplicate section instance"),
        "{err}"
    );
}
