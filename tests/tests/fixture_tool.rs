//! cpr-tool on the released fixture images: every command's human and JSON output pinned
//! with insta (per release; the tool engineer's own snapshots cover synthetic samples), a
//! lossless json → encode round trip, and corrupted fixtures (bit flips, truncations) that
//! must give exit status 2 and a one-line reason, never a panic.
//!
//! Corruption also runs on fixtures the current vmm writes now, so it is exercised before
//! the first release exists.

use std::path::Path;
use std::process::Command;

use cpr_tests::release::{
    all_fixture_specs, fixture_set, images_dir, make_fixture, releases, tool_bin,
};
use cpr_tests::{vmm_bin, Scratch};

/// Runs cpr-tool in `dir` (so file names in its output are relative); returns
/// "exit N" and stdout, asserting stderr is empty unless the exit status is 2.
fn tool(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(tool_bin())
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run cpr-tool");
    let code = out.status.code().expect("cpr-tool exited");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        code == 2 || stderr.is_empty(),
        "cpr-tool {args:?}: exit {code}, stderr {stderr}"
    );
    assert!(!stderr.contains("panicked"), "cpr-tool {args:?}: {stderr}");
    format!("exit {code}\n{}", String::from_utf8_lossy(&out.stdout))
}

#[test]
fn tool_output_on_released_fixtures() {
    let releases = releases();
    if releases.is_empty() {
        println!("no release in fixtures/releases.toml yet: no released fixture to show");
    }
    for r in &releases {
        let dir = images_dir(&r.version);
        let schemas = "../../schemas";
        let set = fixture_set(&r.version);
        for f in &set.fixtures {
            let img = f.image_file();
            for json in [false, true] {
                let j: &[&str] = if json { &["--json"] } else { &[] };
                let suffix = if json { ".json" } else { "" };
                let mut args = j.to_vec();
                args.extend(["inspect", &img]);
                insta::assert_snapshot!(
                    format!("{}__inspect__{}{suffix}", r.version, f.name),
                    tool(&dir, &args)
                );
                for target in &releases {
                    let mut args = j.to_vec();
                    args.extend([
                        "verify",
                        "--schemas-dir",
                        schemas,
                        "--target",
                        &target.version,
                        &img,
                    ]);
                    insta::assert_snapshot!(
                        format!(
                            "{}__verify_target_{}__{}{suffix}",
                            r.version, target.version, f.name
                        ),
                        tool(&dir, &args)
                    );
                }
            }
            // json → encode gives back the same bytes.
            let scratch = Scratch::new(&format!("ft-json-{}-{}", r.version, f.name));
            let json = scratch.str("img.json");
            let back = scratch.str("back.cpr");
            assert!(tool(&dir, &["json", &img, "-o", &json]).starts_with("exit 0"));
            assert!(tool(&dir, &["encode", &json, "-o", &back]).starts_with("exit 0"));
            assert_eq!(
                std::fs::read(dir.join(&img)).expect("read fixture"),
                std::fs::read(&back).expect("read re-encoded"),
                "{}/{}: json → encode is not byte-identical",
                r.version,
                f.name
            );
        }
        // Commands on pairs and on the schema, once per release.
        for json in [false, true] {
            let j: &[&str] = if json { &["--json"] } else { &[] };
            let suffix = if json { ".json" } else { "" };
            let cases: [(&str, Vec<&str>); 4] = [
                (
                    "diff_1cpu_4cpu",
                    vec![
                        "diff",
                        "restart-counter-1cpu.cpr",
                        "restart-counter-4cpu.cpr",
                    ],
                ),
                (
                    "diff_restart_reboot",
                    vec![
                        "diff",
                        "restart-counter-1cpu.cpr",
                        "reboot-counter-1cpu.cpr",
                    ],
                ),
                (
                    "schema_dump_image",
                    vec!["schema", "dump", "--image", "reboot-counter-1cpu.cpr"],
                ),
                (
                    "schema_dump_version",
                    vec![
                        "schema",
                        "dump",
                        "--schemas-dir",
                        schemas,
                        "--version",
                        &r.version,
                    ],
                ),
            ];
            for (name, args) in cases {
                let mut all = j.to_vec();
                all.extend(args);
                insta::assert_snapshot!(format!("{}__{name}{suffix}", r.version), tool(&dir, &all));
            }
        }
        // Stored schemas, each earlier release (and this one) against this one.
        for old in releases
            .iter()
            .take_while(|o| o.version != r.version)
            .chain([r])
        {
            for json in [false, true] {
                let j: &[&str] = if json { &["--json"] } else { &[] };
                let suffix = if json { ".json" } else { "" };
                let mut args = j.to_vec();
                args.extend([
                    "schema",
                    "check",
                    "--schemas-dir",
                    schemas,
                    &old.version,
                    &r.version,
                ]);
                insta::assert_snapshot!(
                    format!("{}__schema_check_{}{suffix}", r.version, old.version),
                    tool(&dir, &args)
                );
            }
        }
        // The lossless JSON form of the smallest fixture (`json` has no table form).
        insta::assert_snapshot!(
            format!("{}__json_restart_counter_1cpu", r.version),
            tool(&dir, &["json", "restart-counter-1cpu.cpr"])
        );
    }
}

/// Every corruption of `img` (evenly spread bit flips, truncations) makes `cpr-tool verify`
/// and `inspect` exit 2 with exactly one line on stderr and nothing on stdout.
fn assert_corruptions_refused(img: &Path, label: &str) {
    let bytes = std::fs::read(img).expect("read fixture");
    let scratch = Scratch::new(&format!("ft-corrupt-{label}"));
    let bad = scratch.path("bad.cpr");
    let n = bytes.len();
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    // Flips: the first 64 bytes (signature, version, lengths) and 40 more spread over the
    // file (metadata, section payloads, region data, padding, trailer).
    let offsets = (0..64).chain((0..40).map(|i| 64 + i * (n - 65) / 39));
    for (i, off) in offsets.enumerate() {
        let mut b = bytes.clone();
        b[off] ^= 1 << (i % 8);
        cases.push((format!("bit {} of byte {off}", i % 8), b));
    }
    for len in [0, 1, 7, 16, 63, n / 4, n / 2, n.saturating_sub(4096), n - 1] {
        cases.push((format!("truncated to {len} bytes"), bytes[..len].to_vec()));
    }
    for (what, b) in cases {
        std::fs::write(&bad, &b).expect("write corrupted copy");
        for cmd in ["verify", "inspect"] {
            let out = Command::new(tool_bin())
                .args([cmd, &bad.to_string_lossy()])
                .output()
                .expect("run cpr-tool");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{label}, {what}: cpr-tool {cmd} exit {:?}, stderr {stderr}",
                out.status
            );
            assert!(
                out.stdout.is_empty(),
                "{label}, {what}: {cmd} wrote to stdout"
            );
            assert!(
                stderr.starts_with("cpr-tool: ") && stderr.trim_end().lines().count() == 1,
                "{label}, {what}: {cmd}: not one line: {stderr:?}"
            );
            assert!(!stderr.contains("panicked"), "{label}, {what}: {stderr}");
        }
    }
}

#[test]
fn corrupted_released_fixtures_give_exit_2_and_one_line() {
    for r in releases() {
        for f in fixture_set(&r.version).fixtures {
            let img = images_dir(&r.version).join(f.image_file());
            assert_corruptions_refused(&img, &format!("{}-{}", r.version, f.name));
        }
    }
}

#[test]
fn corrupted_fixtures_of_the_current_vmm_give_exit_2_and_one_line() {
    let dir = Scratch::new("ft-fresh");
    for f in all_fixture_specs()
        .into_iter()
        .filter(|f| f.guest == "counter" || f.guest == "memcheck")
    {
        make_fixture(&vmm_bin(), &dir.0, &f).unwrap_or_else(|e| panic!("{}: {e}", f.name));
        assert_corruptions_refused(&dir.0.join(f.image_file()), &format!("current-{}", f.name));
    }
}
