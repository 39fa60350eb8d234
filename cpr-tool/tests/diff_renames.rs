//! diff across versions matches a renamed field through the renames table (data,
//! not code); exit codes follow the policy.

mod common;

use common::{run, scratch};
use serde_json::Value;

fn diff_json(args: &[&str]) -> (i32, Value) {
    let mut all = vec!["--json", "diff"];
    all.extend_from_slice(args);
    let r = run(&all);
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    (r.code, serde_json::from_str(&r.stdout).expect("JSON"))
}

fn field_paths(v: &Value) -> Vec<String> {
    v["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .map(|f| {
            format!(
                "{} {}",
                f["kind"].as_str().unwrap(),
                f["path"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn renamed_field_is_matched_through_the_table() {
    let (code, v) = diff_json(&[
        "vm-0.1.0.cpr",
        "vm-0.2.0.cpr",
        "--renames",
        "../../renames.toml",
    ]);
    assert_eq!(code, 1);
    let scr = v["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "serial/serial0/scr")
        .expect("the renamed field's change is reported under its new name");
    assert_eq!(scr["kind"], "changed");
    assert_eq!(scr["renamed_from"], "scratch");
    assert_eq!(scr["a"], "0x5a");
    assert_eq!(scr["b"], "0x5b");
    assert_eq!(v["renamed"][0]["from"], "scratch");
    assert_eq!(v["renamed"][0]["to"], "scr");
    assert!(
        !field_paths(&v).iter().any(|p| p.contains("scratch")),
        "{:?}",
        field_paths(&v)
    );
}

#[test]
fn table_is_found_from_the_working_directory() {
    // No --renames: the tool finds fixtures/renames.toml upwards from the samples.
    let (_, v) = diff_json(&["vm-0.1.0.cpr", "vm-0.2.0.cpr"]);
    assert_eq!(v["renamed"][0]["to"], "scr");
}

#[test]
fn without_the_table_the_rename_is_a_removal_and_an_addition() {
    let dir = scratch("diff-no-renames");
    let empty = dir.join("renames.toml");
    std::fs::write(&empty, "# no renames\n").unwrap();
    let (_, v) = diff_json(&[
        "vm-0.1.0.cpr",
        "vm-0.2.0.cpr",
        "--renames",
        empty.to_str().unwrap(),
    ]);
    let paths = field_paths(&v);
    assert!(
        paths.contains(&"removed serial/serial0/scratch".to_owned()),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"added serial/serial0/scr".to_owned()),
        "{paths:?}"
    );
    assert_eq!(v["renamed"], Value::Array(vec![]));
}

#[test]
fn filters_remove_churn_and_count_it() {
    let (code, v) = diff_json(&["vm-0.2.0.cpr", "vm-0.2.0-later.cpr"]);
    assert_eq!(code, 1);
    let all = field_paths(&v);
    assert!(
        all.contains(&"changed header/created_unix_ns".to_owned()),
        "{all:?}"
    );
    assert!(
        all.contains(&"changed cpu.msrs/0/tsc".to_owned()),
        "{all:?}"
    );
    assert!(
        all.contains(&"changed clock/kvm/clock".to_owned()),
        "{all:?}"
    );

    let (_, v) = diff_json(&[
        "vm-0.2.0.cpr",
        "vm-0.2.0-later.cpr",
        "--ignore-timestamps",
        "--ignore-tsc",
        "--ignore",
        "*.rflags",
        "--ignore",
        "cpu.regs/?/rflags",
    ]);
    let kept = field_paths(&v);
    assert_eq!(kept, ["changed cpu.regs/0/rip", "changed cpu.regs/1/rip"]);
    assert_eq!(v["ignored"].as_u64(), Some((all.len() - kept.len()) as u64));
}

#[test]
fn flags_report_bits() {
    let (_, v) = diff_json(&["vm-0.2.0.cpr", "vm-0.2.0-later.cpr"]);
    let f = v["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "cpu.regs/0/rflags")
        .expect("rflags changed");
    assert_eq!(f["detail"], "set bit 8");
    assert_eq!(f["a_value"], 0x202);
    assert_eq!(f["b_value"], 0x302);
}

#[test]
fn identical_images_exit_zero() {
    let (code, v) = diff_json(&["reboot-0.2.0.cpr", "reboot-0.2.0.cpr"]);
    assert_eq!(code, 0);
    assert_eq!(v["equal"], true);
}

#[test]
fn bad_renames_table_is_an_error() {
    let dir = scratch("diff-bad-renames");
    let bad = dir.join("renames.toml");
    std::fs::write(&bad, "[[field]]\nsection = 'serial'\nfrom = 'x'\n").unwrap();
    let r = run(&[
        "diff",
        "vm-0.1.0.cpr",
        "vm-0.2.0.cpr",
        "--renames",
        bad.to_str().unwrap(),
    ]);
    common::assert_error(&r, "bad renames table");
    assert!(r.stderr.contains("invalid renames table"), "{}", r.stderr);
}

#[test]
fn rename_is_matched_with_the_older_image_second() {
    let (_, v) = diff_json(&[
        "vm-0.2.0.cpr",
        "vm-0.1.0.cpr",
        "--renames",
        "../../renames.toml",
    ]);
    let scr = v["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "serial/serial0/scr")
        .expect("matched under the newer name");
    assert_eq!(scr["renamed_from"], "scratch");
    assert_eq!(scr["a"], "0x5b");
    assert_eq!(scr["b"], "0x5a");
    assert!(!field_paths(&v).iter().any(|p| p.contains("scratch")));
}

#[test]
fn globs_also_hide_whole_sections() {
    let (code, v) = diff_json(&[
        "vm-0.2.0.cpr",
        "reboot-0.2.0.cpr",
        "--ignore",
        "fd/*",
        "--ignore",
        "region/*",
        "--ignore",
        "ram/*",
    ]);
    assert_eq!(code, 1);
    assert_eq!(v["sections"], Value::Array(vec![]));
    assert_eq!(field_paths(&v), ["changed header/mode"]);
    assert_eq!(v["ignored"], 5);
}
