//! `json` then `encode` gives back every image byte for byte.

mod common;

use common::{all_images, assert_error, run_in, scratch};

#[test]
fn every_image_survives_json_and_back() {
    let dir = scratch("roundtrip");
    let images = all_images();
    assert!(images.len() >= 4, "{images:?}");
    for img in images {
        let original = std::fs::read(&img).unwrap();
        let json = dir.join("image.json");
        let out = dir.join("image.cpr");
        let r = run_in(
            &dir,
            &["json", img.to_str().unwrap(), "-o", json.to_str().unwrap()],
        );
        assert_eq!(r.code, 0, "{}: {}", img.display(), r.stderr);
        let r = run_in(&dir, &["encode", "image.json", "-o", "image.cpr"]);
        assert_eq!(r.code, 0, "{}: {}", img.display(), r.stderr);
        assert_eq!(std::fs::read(&out).unwrap(), original, "{}", img.display());
        // The JSON on stdout is the same document.
        let r = run_in(&dir, &["json", img.to_str().unwrap()]);
        assert_eq!(r.stdout, std::fs::read_to_string(&json).unwrap());
    }
}

#[test]
fn edited_json_encodes_a_valid_different_image() {
    let dir = scratch("roundtrip-edit");
    let src = common::samples().join("vm-0.1.0.cpr");
    let r = run_in(&dir, &["json", src.to_str().unwrap(), "-o", "a.json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let text = std::fs::read_to_string(dir.join("a.json")).unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    doc["sections"][0]["payload"]["rip"] = serde_json::json!(0x2000);
    std::fs::write(dir.join("b.json"), serde_json::to_string(&doc).unwrap()).unwrap();
    let r = run_in(&dir, &["encode", "b.json", "-o", "b.cpr"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run_in(&dir, &["--json", "diff", src.to_str().unwrap(), "b.cpr"]);
    assert_eq!(r.code, 1);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["fields"][0]["path"], "cpu.regs/0/rip");
    assert_eq!(v["fields"][0]["b"], "0x0000000000002000");
}

#[test]
fn broken_json_names_the_place() {
    let dir = scratch("roundtrip-broken");
    let src = common::samples().join("vm-0.1.0.cpr");
    let r = run_in(&dir, &["json", src.to_str().unwrap(), "-o", "a.json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("a.json")).unwrap()).unwrap();
    doc["sections"][6]["payload"]["rx_fifo"] = serde_json::json!({"$bytes": "zz"});
    std::fs::write(dir.join("b.json"), serde_json::to_string(&doc).unwrap()).unwrap();
    let r = run_in(&dir, &["encode", "b.json", "-o", "b.cpr"]);
    assert_error(&r, "bad hex");
    assert!(
        r.stderr.contains("/sections/6/payload/rx_fifo/$bytes"),
        "{}",
        r.stderr
    );
    assert!(!dir.join("b.cpr").exists());

    std::fs::write(dir.join("c.json"), "{\"cpr_image_json\": 1,").unwrap();
    let r = run_in(&dir, &["encode", "c.json", "-o", "c.cpr"]);
    assert_error(&r, "truncated JSON");
}
