//! Snapshots of every command's human and JSON output on the sample images.

mod common;

use common::run;

/// Run, check the exit code, snapshot stdout (stderr must be empty).
fn snap(name: &str, args: &[&str], code: i32) {
    let r = run(args);
    assert_eq!(r.code, code, "{args:?}: stderr {}", r.stderr);
    assert!(r.stderr.is_empty(), "{args:?}: {}", r.stderr);
    insta::assert_snapshot!(name, r.stdout);
    let mut json_args = vec!["--json"];
    json_args.extend_from_slice(args);
    let r = run(&json_args);
    assert_eq!(r.code, code, "{json_args:?}: stderr {}", r.stderr);
    // Snapshot the tool's own text (key order included), after checking it parses.
    let _: serde_json::Value = serde_json::from_str(&r.stdout).expect("--json prints JSON");
    insta::assert_snapshot!(format!("{name}.json"), r.stdout);
}

const SCHEMAS: &str = "../../schemas/samples";
const RENAMES: &str = "../../renames.toml";

#[test]
fn inspect() {
    snap("inspect_vm_0.1.0", &["inspect", "vm-0.1.0.cpr"], 0);
    snap("inspect_reboot_0.2.0", &["inspect", "reboot-0.2.0.cpr"], 0);
    snap(
        "inspect_format_typical",
        &["inspect", "format-typical.cpr"],
        0,
    );
    snap(
        "inspect_format_typical",
        &["inspect", "format-typical.cpr"],
        0,
    );
}

#[test]
fn inspect_section() {
    snap(
        "inspect_section_regs",
        &["inspect", "vm-0.2.0.cpr", "--section", "cpu.regs/0"],
        0,
    );
    snap(
        "inspect_section_all_instances",
        &["inspect", "vm-0.2.0.cpr", "--section", "cpu.sregs"],
        0,
    );
    snap(
        "inspect_section_serial",
        &["inspect", "vm-0.1.0.cpr", "--section", "serial/serial0"],
        0,
    );
    snap(
        "inspect_section_msrs",
        &["inspect", "vm-0.1.0.cpr", "--section", "cpu.msrs/1"],
        0,
    );
    // Long byte strings, fixed arrays, options with and without a value.
    snap(
        "inspect_section_typical_ext",
        &["inspect", "format-typical.cpr", "--section", "cpu.ext/2"],
        0,
    );
    snap(
        "inspect_section_typical_dev",
        &[
            "inspect",
            "format-typical.cpr",
            "--section",
            "dev.generic/dev1",
        ],
        0,
    );
}

#[test]
fn inspect_raw() {
    snap(
        "inspect_raw_section",
        &["inspect", "vm-0.1.0.cpr", "--section", "clock/kvm", "--raw"],
        0,
    );
    snap(
        "inspect_raw_metadata",
        &["inspect", "vm-0.1.0.cpr", "--raw"],
        0,
    );
}

#[test]
fn diff() {
    snap(
        "diff_across_versions",
        &["diff", "vm-0.1.0.cpr", "vm-0.2.0.cpr", "--renames", RENAMES],
        1,
    );
    snap(
        "diff_ignoring_churn",
        &[
            "diff",
            "vm-0.2.0.cpr",
            "vm-0.2.0-later.cpr",
            "--ignore-timestamps",
            "--ignore-tsc",
            "--ignore",
            "cpu.regs/1/*",
        ],
        1,
    );
    snap("diff_same", &["diff", "vm-0.2.0.cpr", "vm-0.2.0.cpr"], 0);
    snap(
        "diff_modes",
        &["diff", "vm-0.2.0.cpr", "reboot-0.2.0.cpr", "--ignore-tsc"],
        1,
    );
}

#[test]
fn verify() {
    snap("verify_integrity", &["verify", "reboot-0.2.0.cpr"], 0);
    // cpr-format's typical sample has made-up fd identities: verify says what is wrong.
    snap("verify_inconsistent", &["verify", "format-typical.cpr"], 1);
    snap("verify_small", &["verify", "format-small.cpr"], 1);
    // cpr-format's typical sample has made-up fd identities: verify says what is wrong.
    snap("verify_inconsistent", &["verify", "format-typical.cpr"], 1);
    snap("verify_small", &["verify", "format-small.cpr"], 1);
    snap(
        "verify_target_ok",
        &[
            "verify",
            "vm-0.1.0.cpr",
            "--target",
            "0.2.0",
            "--schemas-dir",
            SCHEMAS,
            "--renames",
            RENAMES,
        ],
        0,
    );
    snap(
        "verify_target_refused",
        &[
            "verify",
            "vm-0.2.0.cpr",
            "--target",
            "0.1.0",
            "--schemas-dir",
            SCHEMAS,
            "--renames",
            RENAMES,
        ],
        1,
    );
    snap(
        "verify_schema_file",
        &[
            "verify",
            "vm-0.2.0.cpr",
            "--schema",
            "../../schemas/samples/0.2.0.json",
        ],
        0,
    );
}

#[test]
fn schema() {
    snap(
        "schema_dump_version",
        &[
            "schema",
            "dump",
            "--version",
            "0.1.0",
            "--schemas-dir",
            SCHEMAS,
        ],
        0,
    );
    snap(
        "schema_dump_image",
        &["schema", "dump", "--image", "vm-0.2.0.cpr"],
        0,
    );
    snap(
        "schema_check",
        &[
            "schema",
            "check",
            "0.1.0",
            "0.2.0",
            "--schemas-dir",
            SCHEMAS,
            "--renames",
            RENAMES,
        ],
        1,
    );
    snap(
        "schema_check_same",
        &[
            "schema",
            "check",
            "vm-0.2.0.cpr",
            "../../schemas/samples/0.2.0.json",
        ],
        0,
    );
}

#[test]
fn json_export() {
    let r = run(&["json", "vm-0.1.0.cpr"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    insta::assert_snapshot!("json_vm_0.1.0", r.stdout);
}

#[test]
fn schema_dump_defaults_to_the_newest_version() {
    let newest = run(&["schema", "dump", "--schemas-dir", SCHEMAS]);
    let explicit = run(&[
        "schema",
        "dump",
        "--version",
        "0.2.0",
        "--schemas-dir",
        SCHEMAS,
    ]);
    assert_eq!(newest.code, 0, "{}", newest.stderr);
    assert_eq!(newest.stdout, explicit.stdout);
    // The stored schema is what the writer of a 0.2.0 image embedded.
    let image = run(&["--json", "schema", "dump", "--image", "vm-0.2.0.cpr"]);
    let stored = run(&[
        "--json",
        "schema",
        "dump",
        "--version",
        "0.2.0",
        "--schemas-dir",
        SCHEMAS,
    ]);
    assert_eq!(image.stdout, stored.stdout);
}
