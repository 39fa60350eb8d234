//! docs/format.cddl (RFC 8610) validates the files the library writes.

fn schema() -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/format.cddl");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The metadata item alone (regions are raw bytes after it, outside CBOR).
fn metadata(bytes: &[u8]) -> &[u8] {
    let m = cpr_format::Image::from_bytes(bytes).unwrap().metadata_len() as usize;
    &bytes[..m]
}

#[test]
fn written_images_match_the_cddl() {
    let cddl = schema();
    for bytes in [
        cpr_format::sample::small_writer()
            .unwrap()
            .to_bytes()
            .unwrap(),
        cpr_format::sample::typical_writer()
            .unwrap()
            .to_bytes()
            .unwrap(),
    ] {
        cddl::validate_cbor_from_slice(&cddl, metadata(&bytes), None)
            .unwrap_or_else(|e| panic!("image does not match docs/format.cddl: {e}"));
    }
}

#[test]
fn the_cddl_rejects_a_different_container() {
    let cddl = schema();
    // The grammar itself parses (so the rejection below is a validation failure).
    cddl::cddl_from_str(&cddl, true).unwrap();
    // Valid CBOR, wrong structure: a map instead of the tagged array.
    let not_an_image = [0xa1, 0x61, b'a', 0x01];
    assert!(cddl::validate_cbor_from_slice(&cddl, &not_an_image, None).is_err());
}

#[test]
fn the_cddl_rejects_an_image_with_a_bad_mode() {
    let cddl = schema();
    let bytes = cpr_format::sample::small_writer()
        .unwrap()
        .to_bytes()
        .unwrap();
    let mut v: ciborium::Value = ciborium::de::from_reader(metadata(&bytes)).unwrap();
    let ciborium::Value::Tag(55799, inner) = &mut v else {
        panic!("not tagged: {v:?}")
    };
    let ciborium::Value::Array(items) = inner.as_mut() else {
        panic!()
    };
    let ciborium::Value::Map(header) = &mut items[3] else {
        panic!()
    };
    let mode = header
        .iter_mut()
        .find(|(k, _)| k.as_text() == Some("mode"))
        .unwrap();
    mode.1 = ciborium::Value::Text("bogus".into());
    let mut out = Vec::new();
    ciborium::ser::into_writer(&v, &mut out).unwrap();
    assert!(cddl::validate_cbor_from_slice(&cddl, &out, None).is_err());
    // The same re-encoding with the mode restored validates.
    let ciborium::Value::Tag(_, inner) = &mut v else {
        panic!()
    };
    let ciborium::Value::Array(items) = inner.as_mut() else {
        panic!()
    };
    let ciborium::Value::Map(header) = &mut items[3] else {
        panic!()
    };
    header
        .iter_mut()
        .find(|(k, _)| k.as_text() == Some("mode"))
        .unwrap()
        .1 = ciborium::Value::Text("restart".into());
    let mut out = Vec::new();
    ciborium::ser::into_writer(&v, &mut out).unwrap();
    cddl::validate_cbor_from_slice(&cddl, &out, None).unwrap();
}
