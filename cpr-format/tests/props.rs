//! Property tests: writer/reader round trips over generated images, and the reader
//! over arbitrary and mutated input (never panics).

use cpr_format::*;
use proptest::prelude::*;

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<u64>().prop_map(|v| Value::Integer(v.into())),
        (i64::MIN..0i64).prop_map(|v| Value::Integer(v.into())),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Bytes),
        ".{0,12}".prop_map(Value::Text),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec(("[a-z_]{1,8}", inner), 0..6).prop_map(map_of),
        ]
    })
}

fn payload() -> impl Strategy<Value = Value> {
    proptest::collection::vec(("[a-z_]{1,8}", value()), 0..6).prop_map(map_of)
}

/// A map from generated pairs, first occurrence of each key kept (maps with duplicate
/// keys are not valid CBOR; the writer refuses them).
fn map_of(kv: Vec<(String, Value)>) -> Value {
    let mut seen = std::collections::HashSet::new();
    Value::Map(
        kv.into_iter()
            .filter(|(k, _)| seen.insert(k.clone()))
            .map(|(k, v)| (Value::Text(k), v))
            .collect(),
    )
}

#[derive(Debug, Clone)]
struct Gen {
    header: Header,
    sections: Vec<(SectionInfo, Value)>,
    fds: Vec<FdEntry>,
    regions: Vec<(String, Vec<u8>)>,
}

fn header() -> impl Strategy<Value = Header> {
    (
        ".{0,10}",
        "[0-9]\\.[0-9]\\.[0-9]",
        any::<u64>(),
        1u32..64,
        0usize..3,
        prop_oneof![
            Just(Mode::Restart),
            Just(Mode::Reboot),
            Just(Mode::Transfer)
        ],
    )
        .prop_map(|(name, version, t, vcpus, nram, mode)| Header {
            producer: Producer {
                name,
                version,
                build_id: "b".into(),
            },
            created_unix_ns: t,
            host: HostInfo {
                kernel_release: "k".into(),
                page_size: 4096,
            },
            mode,
            machine: MachineDesc {
                vcpus,
                ram_blocks: (0..nram)
                    .map(|i| RamBlockDesc {
                        name: format!("r{i}"),
                        guest_addr: (i as u64) << 32,
                        size: 1 << 20,
                        backing: if i == 0 {
                            RamBacking::Memfd
                        } else {
                            RamBacking::File { path: "/x".into() }
                        },
                        page_size: 4096,
                    })
                    .collect(),
                devices: vec![DeviceDesc {
                    id: "d".into(),
                    kind: "k".into(),
                }],
            },
        })
}

fn image() -> impl Strategy<Value = Gen> {
    (
        header(),
        proptest::collection::vec((0u8..4, payload(), 1u32..5, any::<bool>()), 0..8),
        proptest::collection::vec((any::<i32>(), any::<u64>(), any::<u64>()), 0..5),
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..5000), 0..3),
    )
        .prop_map(|(header, secs, fds, regions)| {
            let sections = secs
                .into_iter()
                .enumerate()
                .map(|(i, (kind, p, version, required))| {
                    // Same name => same version and flag (one schema per name).
                    let _ = (version, required);
                    let info = SectionInfo {
                        name: format!("s{kind}"),
                        instance: i.to_string(),
                        version: u32::from(kind) + 1,
                        min_version: 1,
                        required: kind % 2 == 0,
                    };
                    (info, p)
                })
                .collect();
            let fds = fds
                .into_iter()
                .enumerate()
                .map(|(i, (fd, ino, size))| FdEntry {
                    name: format!("fd{i}"),
                    kind: FdKind::Other(format!("k{i}")),
                    fd,
                    identity: FdIdentity {
                        dev: 1,
                        ino,
                        file_type: FileType::Socket,
                        size,
                    },
                })
                .collect();
            let regions = regions
                .into_iter()
                .enumerate()
                .map(|(i, d)| (format!("r{i}"), d))
                .collect();
            Gen {
                header,
                sections,
                fds,
                regions,
            }
        })
}

fn schema_for(info: &SectionInfo) -> SectionSchema {
    SectionSchema {
        name: info.name.clone(),
        version: info.version,
        min_version: info.min_version,
        required: info.required,
        doc: String::new(),
        payload: StructSchema {
            name: "Any".into(),
            fields: vec![],
        },
    }
}

fn encode(g: &Gen) -> Vec<u8> {
    let mut w = ImageWriter::new(g.header.clone());
    for (info, p) in &g.sections {
        w.add_value_section(info.clone(), schema_for(info), p)
            .unwrap();
    }
    for f in &g.fds {
        w.add_fd(f.clone()).unwrap();
    }
    for (n, d) in &g.regions {
        w.add_region(n, d.clone()).unwrap();
    }
    w.to_bytes().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn generated_images_round_trip(g in image()) {
        let bytes = encode(&g);
        let img = Image::from_bytes(&bytes).unwrap();
        img.verify_regions().unwrap();
        prop_assert_eq!(img.header(), &g.header);
        prop_assert_eq!(img.sections().len(), g.sections.len());
        for ((info, p), s) in g.sections.iter().zip(img.sections()) {
            prop_assert_eq!(&s.info(), info);
            prop_assert_eq!(&s.value().unwrap(), p);
        }
        prop_assert_eq!(img.fd_manifest(), g.fds.as_slice());
        for (n, d) in &g.regions {
            prop_assert_eq!(&img.read_region(n).unwrap(), d);
            prop_assert_eq!(img.region(n).unwrap().offset % REGION_ALIGN, 0);
        }
        prop_assert_eq!(img.to_bytes().unwrap(), bytes.clone());
        // Encoding is deterministic.
        prop_assert_eq!(encode(&g), bytes);
    }

    #[test]
    fn mutated_images_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut b = sample::small_writer().unwrap().to_bytes().unwrap();
        for (i, v) in edits {
            let i = i.index(b.len());
            b[i] = v;
        }
        let _ = Image::from_bytes(&b).and_then(|i| i.verify_regions());
        let c = cut.index(b.len());
        let _ = Image::from_bytes(&b[..c]);
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Image::from_bytes(&b);
        // With a valid prefix, so the parser gets past the signature.
        let mut p = sample::small_writer().unwrap().to_bytes().unwrap()[..35].to_vec();
        p.extend_from_slice(&b);
        let _ = Image::from_bytes(&p);
        // With a valid prefix, length and CRC, so the element parsers see random input.
        p.extend_from_slice(&[0x1a, 0, 0, 0, 0]);
        let m = p.len();
        p[27..35].copy_from_slice(&(m as u64).to_be_bytes());
        let crc = crc32fast::hash(&p[..m - 5]);
        p[m - 4..].copy_from_slice(&crc.to_be_bytes());
        let _ = Image::from_bytes(&p);
    }

    #[test]
    fn mutated_metadata_with_fixed_crc_never_panics(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let img = sample::small_writer().unwrap().to_bytes().unwrap();
        let m = Image::from_bytes(&img).unwrap().metadata_len() as usize;
        let mut b = img[..m].to_vec();
        for (i, v) in edits {
            let i = 35 + i.index(m - 40);
            b[i] = v;
        }
        let crc = crc32fast::hash(&b[..m - 5]);
        b[m - 4..].copy_from_slice(&crc.to_be_bytes());
        b.extend_from_slice(&img[m..]);
        if let Ok(i) = Image::from_bytes(&b) {
            for s in i.sections() {
                let _ = s.value();
            }
            let _ = i.section::<sample::RegsState>("0");
        }
    }
}
