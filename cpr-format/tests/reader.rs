//! Reader behaviour: versions, typed errors, limits, files, descriptors.

use cpr_format::sample::{self, RegsState};
use cpr_format::*;

/// Recompute the metadata CRC after a deliberate edit.
fn fix_crc(b: &mut [u8]) {
    let m = u64::from_be_bytes(b[27..35].try_into().unwrap()) as usize;
    let crc = crc32fast::hash(&b[..m - 5]);
    b[m - 4..m].copy_from_slice(&crc.to_be_bytes());
}

fn small() -> Vec<u8> {
    sample::small_writer().unwrap().to_bytes().unwrap()
}

#[test]
fn newer_major_is_refused_naming_both_versions() {
    let mut b = small();
    b[21..23].copy_from_slice(&2u16.to_be_bytes());
    fix_crc(&mut b);
    let e = Image::from_bytes(&b).unwrap_err();
    assert!(
        matches!(
            e,
            Error::UnsupportedVersion {
                found: FormatVersion { major: 2, minor: 0 },
                supported: FormatVersion { major: 1, minor: 0 }
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "Image format version 2.0 is not readable by this reader (format version 1.0)"
    );
}

#[test]
fn newer_minor_is_read_and_unknown_keys_are_ignored() {
    let mut b = small();
    b[24..26].copy_from_slice(&7u16.to_be_bytes());
    fix_crc(&mut b);
    let img = Image::from_bytes(&b).unwrap();
    assert_eq!(img.format_version(), FormatVersion { major: 1, minor: 7 });
    assert_eq!(img.to_bytes().unwrap(), b);
}

#[test]
fn section_record_with_an_extra_key_from_a_newer_minor_is_read() {
    // Build an image by hand whose only section record has an extra "zz" key.
    let mut w = ImageWriter::new(sample::header());
    w.add_section("0", &sample::vcpu(0).0).unwrap();
    let b = w.to_bytes().unwrap();
    // The record map head 0xa7 (7 pairs) is the first 0xa7 after the header; find the
    // record by its first key.
    let pos = b.windows(6).position(|w| w == b"\xa7\x64name").unwrap();
    let mut e = b[..pos].to_vec();
    e.push(0xa8);
    e.extend_from_slice(&b[pos + 1..]);
    // Append `"zz": [1, 2]` after the payload: the payload is the last thing in the
    // record, which ends where the fd manifest (an empty array, 0x80) begins.
    let img = Image::from_bytes(&b).unwrap();
    let s = &img.sections()[0];
    let rec_end = (s.offset + s.length) as usize; // replacing 0xa7 by 0xa8 shifted nothing
    let mut f = e[..rec_end].to_vec();
    f.extend_from_slice(&[0x62, b'z', b'z', 0x82, 1, 2]);
    f.extend_from_slice(&e[rec_end..]);
    // Fix the metadata length (+6) and the trailer's file length (one more byte in its
    // encoding does not happen here: the length stays below 2^16).
    let m = u64::from_be_bytes(f[27..35].try_into().unwrap()) + 6;
    f[27..35].copy_from_slice(&m.to_be_bytes());
    let m = m as usize;
    // Trailer: 83, count, file length (uint16 head 19 xx xx), 1a crc.
    assert_eq!(f[m - 8], 0x19);
    f[m - 7..m - 5].copy_from_slice(&(m as u16).to_be_bytes());
    fix_crc(&mut f);
    let img2 = Image::from_bytes(&f).unwrap();
    assert_eq!(
        img2.section::<RegsState>("0").unwrap(),
        Some(sample::vcpu(0).0)
    );
}

#[test]
fn typed_decode_errors_name_section_and_field() {
    cpr_format::state! {
        /// Same name as RegsState, but `rip` is text.
        #[section(name = "cpu.regs", version = 1, min_version = 1, required = true)]
        pub struct WrongRegs {
            pub rip: String,
        }
    }
    let img = Image::from_bytes(&small()).unwrap();
    let e = img.section::<WrongRegs>("0").unwrap_err();
    match &e {
        Error::Decode {
            location: Location::Section { name, instance },
            field,
            offset,
            ..
        } => {
            assert_eq!(
                (name.as_str(), instance.as_str(), field.as_str()),
                ("cpu.regs", "0", "rip")
            );
            let s = img.find("cpu.regs", "0").unwrap();
            assert!(
                *offset >= s.offset && *offset < s.offset + s.length,
                "{offset} not in {}+{}",
                s.offset,
                s.length
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("field rip"), "{e}");

    cpr_format::state! {
        /// Same name, with a field the image lacks.
        #[section(name = "cpu.regs", version = 1, min_version = 1, required = true)]
        pub struct MoreRegs {
            pub rip: u64,
            pub r99: u64,
        }
    }
    let e = img.section::<MoreRegs>("0").unwrap_err();
    assert!(e.to_string().contains("r99"), "{e}");
}

#[test]
fn section_versions_are_checked_against_the_reader_type() {
    cpr_format::state! {
        /// Version 3 that old version-1 readers cannot load.
        #[section(name = "cpu.regs", version = 3, min_version = 3, required = true)]
        pub struct RegsV3 {
            pub rip: u64,
        }
        /// Version 3 that version-1 readers can load.
        #[section(name = "cpu.regs", version = 3, min_version = 1, required = true)]
        pub struct RegsV3Compat {
            pub rip: u64,
            pub rax: u64,
            pub rbx: u64,
            pub rcx: u64,
            pub rdx: u64,
            pub rsi: u64,
            pub rdi: u64,
            pub rsp: u64,
            pub rbp: u64,
            pub r: [u64; 8],
            pub rflags: u64,
            #[since(3)] pub extra: Option<u64>,
        }
        /// A reader that only loads version 2 and later.
        #[section(name = "cpu.regs", version = 2, min_version = 2, required = true)]
        pub struct RegsV2Only {
            pub rip: u64,
        }
    }
    let mut w = ImageWriter::new(sample::header());
    w.add_section("0", &RegsV3 { rip: 5 }).unwrap();
    let img = Image::from_bytes(&w.to_bytes().unwrap()).unwrap();
    let e = img.section::<RegsState>("0").unwrap_err();
    assert!(
        matches!(
            e,
            Error::SectionVersion {
                image_version: 3,
                image_min_version: 3,
                reader_version: 1,
                ..
            }
        ),
        "{e:?}"
    );

    let mut w = ImageWriter::new(sample::header());
    let regs = sample::vcpu(0).0;
    let v3 = RegsV3Compat {
        rip: regs.rip,
        rax: regs.rax,
        rbx: regs.rbx,
        rcx: regs.rcx,
        rdx: regs.rdx,
        rsi: regs.rsi,
        rdi: regs.rdi,
        rsp: regs.rsp,
        rbp: regs.rbp,
        r: regs.r,
        rflags: regs.rflags,
        extra: Some(9),
    };
    w.add_section("0", &v3).unwrap();
    let img = Image::from_bytes(&w.to_bytes().unwrap()).unwrap();
    // Old reads new: the unknown field is ignored.
    assert_eq!(img.section::<RegsState>("0").unwrap(), Some(regs.clone()));

    // New reads old: the field added in version 3 is None.
    let old = Image::from_bytes(&small()).unwrap();
    let back = old.section::<RegsV3Compat>("0").unwrap().unwrap();
    assert_eq!((back.rip, back.extra), (regs.rip, None));

    // Too old for the reader.
    let e = old.section::<RegsV2Only>("0").unwrap_err();
    assert!(
        matches!(
            e,
            Error::SectionVersion {
                image_version: 1,
                reader_min_version: 2,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn limits_are_enforced() {
    let b = small();
    let tiny = Limits {
        max_metadata_len: 100,
        ..Limits::default()
    };
    assert!(matches!(
        Image::from_bytes_with(&b, &tiny),
        Err(Error::Limit {
            what: "metadata length",
            ..
        })
    ));
    let tiny = Limits {
        max_section_len: 10,
        ..Limits::default()
    };
    assert!(matches!(
        Image::from_bytes_with(&b, &tiny),
        Err(Error::Limit {
            what: "section payload length",
            ..
        })
    ));
    let tiny = Limits {
        max_depth: 2,
        ..Limits::default()
    };
    assert!(matches!(
        Image::from_bytes_with(&b, &tiny),
        Err(Error::Limit {
            what: "nesting depth",
            ..
        })
    ));
    // A declared metadata length far beyond the input, before any allocation.
    let mut huge = b.clone();
    huge[27..35].copy_from_slice(&(1u64 << 40).to_be_bytes());
    assert!(matches!(Image::from_bytes(&huge), Err(Error::Limit { .. })));
    huge[27..35].copy_from_slice(&(1u64 << 20).to_be_bytes());
    assert!(matches!(
        Image::from_bytes(&huge),
        Err(Error::Truncated {
            needed: 1048576,
            ..
        })
    ));
}

#[test]
fn write_atomic_replaces_the_file_and_leaves_no_temporary() {
    let dir = std::env::temp_dir().join(format!("cpr-format-atomic-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("image.cpr");
    std::fs::write(&path, b"old contents").unwrap();
    let mut w = sample::small_writer().unwrap();
    w.add_region_reader(
        "streamed",
        10_000,
        std::io::Read::take(std::io::repeat(7), 10_000),
    )
    .unwrap();
    let stats = w.write_atomic(&path).unwrap();
    let entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, [std::ffi::OsString::from("image.cpr")]);
    let img = Image::open(&path).unwrap();
    assert_eq!(stats.file_len, std::fs::metadata(&path).unwrap().len());
    assert_eq!((stats.sections, stats.fds, stats.regions), (2, 2, 2));
    assert_eq!(stats.metadata_len, img.metadata_len());
    assert_eq!(img.read_region("streamed").unwrap(), vec![7u8; 10_000]);
    img.verify_regions().unwrap();
    assert_eq!(img.path(), Some(path.as_path()));
    // Same bytes as the in-memory encoder.
    let mut w = sample::small_writer().unwrap();
    w.add_region("streamed", vec![7u8; 10_000]).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), w.to_bytes().unwrap());
    assert_eq!(img.to_bytes().unwrap(), std::fs::read(&path).unwrap());

    // A failing write leaves the old file and no temporary.
    let mut w = sample::small_writer().unwrap();
    w.add_region_reader("short", 10, std::io::Cursor::new(vec![1u8]))
        .unwrap();
    assert!(w.write_atomic(&path).is_err());
    let entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, [std::ffi::OsString::from("image.cpr")]);
    Image::open(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn open_reports_a_missing_file_with_its_path() {
    let e = Image::open("/nonexistent/cpr-image").unwrap_err();
    assert!(
        matches!(&e, Error::Io { op: "open", path, .. } if path.to_str() == Some("/nonexistent/cpr-image"))
    );
}

#[test]
fn fd_identity_matches_fstat_and_detects_another_file() {
    use std::os::fd::AsRawFd;
    let dir = std::env::temp_dir();
    let p1 = dir.join(format!("cpr-format-fd1-{}", std::process::id()));
    let p2 = dir.join(format!("cpr-format-fd2-{}", std::process::id()));
    std::fs::write(&p1, vec![0u8; 12345]).unwrap();
    std::fs::write(&p2, b"x").unwrap();
    let f1 = std::fs::File::open(&p1).unwrap();
    let f2 = std::fs::File::open(&p2).unwrap();
    let id1 = FdIdentity::of_fd(&f1).unwrap();
    let meta = std::os::unix::fs::MetadataExt::ino(&f1.metadata().unwrap());
    assert_eq!(
        (id1.ino, id1.size, id1.file_type),
        (meta, 12345, FileType::Regular)
    );
    assert_eq!(FdIdentity::of_raw_fd(f1.as_raw_fd()).unwrap(), id1);
    id1.verify("ram0", &FdIdentity::of_fd(&f1).unwrap(), true)
        .unwrap();
    let e = id1
        .verify("ram0", &FdIdentity::of_fd(&f2).unwrap(), false)
        .unwrap_err();
    assert!(matches!(&e, Error::FdIdentityMismatch { name, .. } if name == "ram0"));
    assert!(matches!(
        FdIdentity::of_raw_fd(-1),
        Err(Error::Fstat { fd: -1, .. })
    ));
    let (r, _w) = std::os::unix::net::UnixStream::pair().unwrap();
    assert_eq!(FdIdentity::of_fd(&r).unwrap().file_type, FileType::Socket);
    std::fs::remove_file(p1).unwrap();
    std::fs::remove_file(p2).unwrap();
}

#[test]
fn write_to_file_fills_a_memfd_that_from_file_reads_back() {
    use std::io::Write;
    let fd =
        nix::sys::memfd::memfd_create("cpr-image", nix::sys::memfd::MFdFlags::empty()).unwrap();
    let mut f = std::fs::File::from(fd);
    // Old, longer contents must not survive.
    f.write_all(&vec![0xee; 50_000]).unwrap();
    let mut w = sample::small_writer().unwrap();
    w.add_region_reader(
        "streamed",
        5000,
        std::io::Read::take(std::io::repeat(3), 5000),
    )
    .unwrap();
    let stats = w.write_to_file(&f).unwrap();
    assert_eq!(f.metadata().unwrap().len(), stats.file_len);
    let img = Image::from_file(f.try_clone().unwrap()).unwrap();
    img.verify_regions().unwrap();
    let mut w = sample::small_writer().unwrap();
    w.add_region("streamed", vec![3; 5000]).unwrap();
    assert_eq!(img.to_bytes().unwrap(), w.to_bytes().unwrap());
    assert_eq!(FdIdentity::of_fd(&f).unwrap().size, stats.file_len);
}

#[test]
fn a_huge_depth_limit_still_cannot_exhaust_the_stack() {
    // 100,000 nested arrays in a section payload, with the depth limit lifted.
    let mut payload = vec![0xa1, 0x61, b'x'];
    payload.extend(std::iter::repeat_n(0x81, 100_000));
    payload.push(0);
    let mut w = ImageWriter::new(sample::header());
    let info = SectionInfo {
        name: "deep".into(),
        instance: "0".into(),
        version: 1,
        min_version: 1,
        required: false,
    };
    let schema = SectionSchema {
        name: "deep".into(),
        version: 1,
        min_version: 1,
        required: false,
        doc: String::new(),
        payload: StructSchema {
            name: "D".into(),
            fields: vec![],
        },
    };
    // The writer refuses it too.
    assert!(w.add_raw_section(info, schema, payload).is_err());
    let lifted = Limits {
        max_depth: u32::MAX,
        ..Limits::default()
    };
    // A shallow image to build a deep one from.
    let mut w = ImageWriter::new(sample::header());
    let info = SectionInfo {
        name: "deep".into(),
        instance: "0".into(),
        version: 1,
        min_version: 1,
        required: false,
    };
    let schema = SectionSchema {
        name: "deep".into(),
        version: 1,
        min_version: 1,
        required: false,
        doc: String::new(),
        payload: StructSchema {
            name: "D".into(),
            fields: vec![],
        },
    };
    w.add_raw_section(info, schema, vec![0xa1, 0x61, b'x', 0x00])
        .unwrap();
    let b = w.to_bytes().unwrap();
    assert!(Image::from_bytes_with(&b, &lifted).is_ok());
    // Deep elements: the schema element nested 100,000 levels (CRC fixed so it parses).
    let m = Image::from_bytes(&b).unwrap().metadata_len() as usize;
    let img = Image::from_bytes(&b).unwrap();
    let header_len = {
        let mut v = Vec::new();
        ciborium::ser::into_writer(img.header(), &mut v).unwrap();
        v.len()
    };
    let mut deep = b[..35 + header_len].to_vec();
    deep.extend_from_slice(&[0x80, 0x80]); // no sections, no fds
    deep.extend(std::iter::repeat_n(0x81, 100_000)); // "schema"
    deep.push(0);
    deep.extend_from_slice(&b[m - 9..m]); // regions [] and a trailer
    let mlen = deep.len();
    deep[27..35].copy_from_slice(&(mlen as u64).to_be_bytes());
    let crc = crc32fast::hash(&deep[..mlen - 5]);
    deep[mlen - 4..].copy_from_slice(&crc.to_be_bytes());
    let e = Image::from_bytes_with(&deep, &lifted).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Limit {
                what: "nesting depth",
                ..
            } | Error::Decode { .. }
        ),
        "{e:?}"
    );
}

#[test]
fn required_section_names_what_is_missing() {
    let img = Image::from_bytes(&small()).unwrap();
    assert_eq!(
        img.required_section::<RegsState>("0").unwrap(),
        sample::vcpu(0).0
    );
    let e = img.required_section::<RegsState>("7").unwrap_err();
    assert!(
        matches!(&e, Error::MissingSection { name, instance } if name == "cpu.regs" && instance == "7")
    );
    assert_eq!(e.to_string(), "Image has no section cpu.regs[7]");
}

#[test]
fn an_image_read_like_another_reuses_its_schema_only_when_the_bytes_match() {
    let first = Image::from_bytes(&small()).unwrap();
    // Same sections, other values: the schema element is byte for byte the same.
    let mut w = sample::small_writer().unwrap();
    w.add_section("9", &sample::vcpu(9).0).unwrap();
    let more = w.to_bytes().unwrap();
    let plain = Image::from_bytes(&more).unwrap();
    let like = Image::from_bytes_like(&more, &plain).unwrap();
    assert_eq!(like.schema(), plain.schema());
    assert_eq!(like.schema_bytes(), plain.schema_bytes());
    assert_eq!(like.sections().len(), plain.sections().len());
    assert_eq!(like.to_bytes().unwrap(), more);
    // Read like an image with another schema: decoded as usual, to the same result.
    let mut w = ImageWriter::new(sample::header());
    w.add_section("0", &sample::vcpu(0).0).unwrap();
    let other = Image::from_bytes(&w.to_bytes().unwrap()).unwrap();
    assert_ne!(other.schema_bytes(), first.schema_bytes());
    let decoded = Image::from_bytes_like(&small(), &other).unwrap();
    assert_eq!(decoded.schema(), first.schema());
    // Damaged metadata is refused whatever the image is read like.
    let mut bad = small();
    bad[60] ^= 1;
    assert!(Image::from_bytes_like(&bad, &first).is_err());
}
