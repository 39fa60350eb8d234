//! Untyped access: payloads checked, flattened and diffed with the embedded schema only.

use cpr_format::describe::{self, Change};
use cpr_format::*;

fn typical() -> Image {
    Image::from_bytes(&sample::typical_writer().unwrap().to_bytes().unwrap()).unwrap()
}

#[test]
fn flatten_lists_leaves_in_schema_order_with_hints() {
    let img = typical();
    let s = img.find("cpu.sregs", "0").unwrap();
    let schema = &img.schema().get("cpu.sregs").unwrap().payload;
    let leaves = describe::flatten(&s.value().unwrap(), schema).unwrap();
    let first: Vec<(&str, String)> = leaves
        .iter()
        .take(3)
        .map(|l| (l.path.as_str(), l.display()))
        .collect();
    assert_eq!(
        first,
        [
            ("cs.base", "0x1000".to_string()),
            ("cs.limit", "0xffffffff".into()),
            ("cs.selector", "0x8".into())
        ]
    );
    let efer = leaves.iter().find(|l| l.path == "efer").unwrap();
    assert_eq!(
        (efer.hint.clone(), efer.display()),
        (Hint::Flags, "0x500".to_string())
    );
    assert!(leaves.iter().any(|l| l.path == "interrupt_bitmap[3]"));

    let s = img.find("cpu.ext", "1").unwrap();
    let schema = &img.schema().get("cpu.ext").unwrap().payload;
    let leaves = describe::flatten(&s.value().unwrap(), schema).unwrap();
    let msr = leaves.iter().find(|l| l.path == "msrs[39].index").unwrap();
    assert_eq!(msr.display(), "0xc00000a7");
    let tsc = leaves.iter().find(|l| l.path == "tsc_khz").unwrap();
    assert_eq!(tsc.display(), "2400000 kHz");

    let s = img.find("dev.generic", "dev1").unwrap();
    let schema = &img.schema().get("dev.generic").unwrap().payload;
    let leaves = describe::flatten(&s.value().unwrap(), schema).unwrap();
    let mmio = leaves.iter().find(|l| l.path == "mmio_base").unwrap();
    assert_eq!(
        (mmio.value.clone(), mmio.display()),
        (None, "-".to_string())
    );
    let fifo = leaves.iter().find(|l| l.path == "fifo").unwrap();
    assert_eq!(fifo.display(), "01".repeat(16));
}

#[test]
fn diff_reports_changed_leaves_only() {
    let img = typical();
    let schema = &img.schema().get("cpu.regs").unwrap().payload;
    let a = img.find("cpu.regs", "1").unwrap().value().unwrap();
    let b = img.find("cpu.regs", "2").unwrap().value().unwrap();
    let changes = describe::diff(&a, schema, &b, schema).unwrap();
    let paths: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(paths, ["rax", "rbx", "rip"]);
    assert_eq!(
        changes[2],
        Change {
            path: "rip".into(),
            hint: Hint::Addr,
            old: Some(Value::Integer(0x10_0001.into())),
            new: Some(Value::Integer(0x10_0002.into()))
        }
    );
    assert!(describe::diff(&a, schema, &a, schema).unwrap().is_empty());
}

#[test]
fn check_finds_missing_and_mistyped_fields_by_path() {
    let img = typical();
    let schema = &img.schema().get("cpu.sregs").unwrap().payload;
    let mut v = img.find("cpu.sregs", "0").unwrap().value().unwrap();
    let Value::Map(entries) = &mut v else {
        panic!()
    };
    let Value::Map(cs) = &mut entries[0].1 else {
        panic!()
    };
    cs[2].1 = Value::Integer(70000.into()); // selector: u16
    let e = describe::check(&v, schema).unwrap_err();
    assert_eq!(e.path, "cs.selector");
    assert!(e.reason.contains("out of range"), "{e}");
    let Value::Map(entries) = &mut v else {
        panic!()
    };
    entries.remove(0);
    assert_eq!(describe::check(&v, schema).unwrap_err().path, "cs");
}

#[test]
fn verify_payloads_checks_sections_against_the_embedded_schema() {
    typical().verify_payloads().unwrap();
    // An untyped section whose value does not match the schema it claims.
    let mut w = ImageWriter::new(sample::header());
    let mut schema = sample::RegsState::schema();
    schema.name = "x".into();
    let info = SectionInfo {
        name: "x".into(),
        instance: "0".into(),
        version: 1,
        min_version: 1,
        required: true,
    };
    let v = Value::Map(vec![(
        Value::Text("rax".into()),
        Value::Text("oops".into()),
    )]);
    w.add_value_section(info, schema, &v).unwrap();
    let img = Image::from_bytes(&w.to_bytes().unwrap()).unwrap();
    let e = img.verify_payloads().unwrap_err();
    assert!(
        matches!(&e, Error::Decode { field, location: Location::Section { name, .. }, .. } if field == "rax" && name == "x"),
        "{e:?}"
    );
}
