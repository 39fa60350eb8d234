//! Every single-bit flip and every truncation of a sample image is a typed error.

use cpr_format::*;

fn small_image() -> Vec<u8> {
    sample::small_writer().unwrap().to_bytes().unwrap()
}

/// Open and check everything, including region data.
fn full_check(bytes: &[u8]) -> Result<Image> {
    let img = Image::from_bytes(bytes)?;
    img.verify_regions()?;
    Ok(img)
}

#[test]
fn the_sample_has_every_part() {
    let bytes = small_image();
    let img = full_check(&bytes).unwrap();
    assert_eq!(img.sections().len(), 2);
    assert_eq!(img.fd_manifest().len(), 2);
    assert_eq!(img.regions().len(), 1);
    // Metadata, zero padding up to the page boundary, region data.
    assert!(img.metadata_len() < 4096);
    assert_eq!(bytes.len(), 4096 + 100);
}

#[test]
fn every_single_bit_flip_is_detected() {
    let bytes = small_image();
    let mut undetected = Vec::new();
    let mut kinds = std::collections::BTreeMap::new();
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut b = bytes.clone();
            b[i] ^= 1 << bit;
            match full_check(&b) {
                Ok(_) => undetected.push((i, bit)),
                Err(e) => {
                    // Every error renders (no panic in Display).
                    let _ = e.to_string();
                    let name = format!("{e:?}");
                    let name = name.split([' ', '(', '{']).next().unwrap_or("").to_owned();
                    *kinds.entry(name).or_insert(0u32) += 1;
                }
            }
        }
    }
    assert!(
        undetected.is_empty(),
        "undetected flips (byte, bit): {undetected:?}"
    );
    // The flips are caught by the checks meant for them, not by accident.
    for k in [
        "Crc",
        "RegionDigest",
        "Malformed",
        "BadSignature",
        "UnsupportedVersion",
    ] {
        assert!(kinds.contains_key(k), "no flip reported as {k}: {kinds:?}");
    }
}

#[test]
fn every_truncation_is_detected() {
    let bytes = small_image();
    for len in 0..bytes.len() {
        let e =
            full_check(&bytes[..len]).expect_err(&format!("truncation to {len} bytes accepted"));
        match e {
            Error::Truncated { .. } | Error::Length { .. } => {}
            // A prefix of the signature that already differs cannot happen for a prefix
            // of a valid image: anything else is a wrong classification.
            other => panic!("truncation to {len} bytes reported as {other:?}"),
        }
    }
}

#[test]
fn appended_bytes_are_detected() {
    let mut bytes = small_image();
    bytes.push(0);
    assert!(matches!(
        full_check(&bytes),
        Err(Error::Length {
            recorded: 4196,
            actual: 4197
        })
    ));
}

#[test]
fn truncated_files_are_detected_when_opened_from_disk() {
    let bytes = small_image();
    let dir = std::env::temp_dir().join(format!("cpr-format-trunc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("img");
    for len in (0..bytes.len()).step_by(7).chain([bytes.len() - 1]) {
        std::fs::write(&path, &bytes[..len]).unwrap();
        let r = Image::open(&path).and_then(|i| i.verify_regions());
        assert!(
            matches!(r, Err(Error::Truncated { .. } | Error::Length { .. })),
            "{len}: {r:?}"
        );
    }
    std::fs::write(&path, &bytes).unwrap();
    Image::open(&path).unwrap().verify_regions().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn text_mode_mangling_is_named() {
    let bytes = small_image();
    // CR LF -> LF, as a text-mode transfer does.
    assert_eq!(&bytes[15..17], b"\r\n");
    let mut mangled = bytes[..15].to_vec();
    mangled.extend_from_slice(&bytes[16..]);
    let e = Image::from_bytes(&mangled).unwrap_err();
    assert!(
        matches!(
            e,
            Error::BadSignature {
                offset: 15,
                text_mode_mangled: true
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("text-mode"));
    let e = Image::from_bytes(b"\xd9\xd9\xf7\x89\x4eCPR-IMAGX").unwrap_err();
    assert!(
        matches!(
            e,
            Error::BadSignature {
                text_mode_mangled: false,
                ..
            }
        ),
        "{e:?}"
    );
    let e = Image::from_bytes(b"{\"json\": true}").unwrap_err();
    assert!(matches!(e, Error::BadSignature { offset: 0, .. }), "{e:?}");
}

#[test]
fn damage_deep_in_a_multi_megabyte_region_is_found_in_streaming_verification() {
    let mut w = ImageWriter::new(sample::header());
    let data: Vec<u8> = (0..(5u32 << 19)).map(|i| (i % 253) as u8).collect(); // 2.5 MiB
    w.add_region("ram", data.clone()).unwrap();
    let mut bytes = w.to_bytes().unwrap();
    let img = Image::from_bytes(&bytes).unwrap();
    img.verify_region("ram").unwrap();
    let off = img.region("ram").unwrap().offset as usize;
    bytes[off + (2 << 20) + 12345] ^= 0x10;
    let img = Image::from_bytes(&bytes).unwrap();
    assert!(matches!(
        img.verify_region("ram"),
        Err(Error::RegionDigest { .. })
    ));
    assert!(matches!(
        img.read_region("ram"),
        Err(Error::RegionDigest { .. })
    ));
    assert!(matches!(
        img.verify_region("nope"),
        Err(Error::NoSuchRegion(_))
    ));
}
