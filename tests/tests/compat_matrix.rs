//! The compatibility matrix: every released version (and the current tree) against every
//! fixture image of every release, and the same fixtures written now by the current vmm:
//! can that version's vmm load the image, and if not, why.
//! Readers are the schemas the releases stored (`fixtures/schemas/VERSION.json`) and the
//! current binary's `vmm --dump-schema`; the verdict is cpr-format's compatibility engine,
//! the same check `cpr-load` makes. Pinned with insta: a change that makes the current vmm
//! refuse an old image, or an old vmm refuse the current one's, shows up in review.
//!
//! Before the first release `fixtures/releases.toml` lists nothing and the matrix has only
//! the current vmm's rows and column; a release listed without its schema or fixtures fails
//! the test.

use cpr_format::{compat, Image, Schema};
use std::path::PathBuf;

use cpr_tests::release::{
    all_fixture_specs, dump_schema, fixture_set, images_dir, make_fixture, releases,
    stored_schema_json, Fixture, Release,
};
use cpr_tests::{vmm_bin, Scratch};

fn parse_schema(what: &str, json: &str) -> Schema {
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{what} is not a schema: {e}"))
}

/// (column label, reader schema), oldest first, the current tree last.
fn readers(releases: &[Release]) -> Vec<(String, Schema)> {
    let mut out: Vec<(String, Schema)> = releases
        .iter()
        .map(|r| {
            let s = parse_schema(
                &format!("fixtures/schemas/{}.json", r.version),
                &stored_schema_json(&r.version),
            );
            (r.version.clone(), s)
        })
        .collect();
    out.push((
        "current".into(),
        parse_schema("vmm --dump-schema", &dump_schema(&vmm_bin())),
    ));
    out
}

/// Renders the matrix and the schema summary; also asserts every release loads its own
/// fixtures.
fn matrix() -> String {
    let releases = releases();
    let readers = readers(&releases);
    let mut rows: Vec<(String, String, Vec<String>)> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    // Released fixtures, then the same fixtures written now by the current binary (the
    // rollback question: can a release load what the current vmm writes?).
    let fresh = Scratch::new("matrix-current");
    let mut sources: Vec<(String, PathBuf, Vec<Fixture>)> = releases
        .iter()
        .map(|r| {
            let set = fixture_set(&r.version);
            (r.version.clone(), images_dir(&r.version), set.fixtures)
        })
        .collect();
    let specs = all_fixture_specs();
    for f in &specs {
        make_fixture(&vmm_bin(), &fresh.0, f).unwrap_or_else(|e| panic!("{}: {e}", f.name));
    }
    sources.push(("current".into(), fresh.0.clone(), specs));
    let mut refusals = 0;
    for (writer, dir, fixtures) in &sources {
        for f in fixtures {
            let Fixture { name, mode, .. } = f;
            let path = dir.join(f.image_file());
            let img = Image::open(&path)
                .unwrap_or_else(|e| panic!("fixture {} does not open: {e}", path.display()));
            if writer != "current" {
                assert_eq!(&img.header().producer.version, writer, "{}", path.display());
            }
            let mut cells = Vec::new();
            for (label, schema) in &readers {
                let report = img.check_compat(schema);
                if report.is_compatible() {
                    cells.push("yes".to_string());
                } else {
                    assert_ne!(label, writer, "{writer} cannot load its own fixture {name}");
                    refusals += 1;
                    notes.push(format!("[{refusals}] {writer}/{name} read by {label}:"));
                    for e in report.errors() {
                        notes.push(format!("    {e}"));
                    }
                    cells.push(format!("no [{refusals}]"));
                }
            }
            rows.push((format!("{writer}/{name}"), mode.clone(), cells));
        }
    }

    let mut out = String::new();
    out.push_str("Can the vmm of each version (column) load each fixture (row: WRITER/NAME)?\n");
    out.push_str(
        "yes: cpr-format's compatibility engine finds no error against that version's schema.\n",
    );
    out.push_str("A restart-mode image also needs the RAM memfds a cpr-exec hands over: only a live update loads it.\n\n");
    let w0 = rows
        .iter()
        .map(|r| r.0.len())
        .chain(["fixture".len()])
        .max()
        .unwrap_or(7);
    let wc: Vec<usize> = readers
        .iter()
        .enumerate()
        .map(|(i, (l, _))| {
            rows.iter()
                .map(|r| r.2[i].len())
                .chain([l.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut line = format!("{:w0$}  {:7}", "fixture", "mode");
    for (i, (l, _)) in readers.iter().enumerate() {
        line.push_str(&format!("  {:w$}", l, w = wc[i]));
    }
    out.push_str(line.trim_end());
    out.push('\n');
    if releases.is_empty() {
        out.push_str(
            "(no release in fixtures/releases.toml yet: the current vmm's fixtures only)\n",
        );
    }
    for (name, mode, cells) in &rows {
        let mut line = format!("{name:w0$}  {mode:7}");
        for (i, c) in cells.iter().enumerate() {
            line.push_str(&format!("  {:w$}", c, w = wc[i]));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if !notes.is_empty() {
        out.push_str("\nWhy not:\n");
        for n in &notes {
            out.push_str(n);
            out.push('\n');
        }
    }

    // Whole schemas, both ways: what a live update between the current tree and each
    // release would meet (images and the cpr-exec hand-over).
    let current = &readers.last().expect("current is always a reader").1;
    out.push_str("\nSchemas (upgrade: current reads the release's state; rollback: the release reads current's):\n");
    if releases.is_empty() {
        out.push_str("(none)\n");
    }
    for (label, schema) in &readers[..readers.len() - 1] {
        let (up, down) = compat::check_both(schema, current);
        let verdict = |r: &cpr_format::CompatReport| {
            // A required section the reader does not know refuses only the images that
            // hold one (the vmm writes device sections only for machines with the device).
            let unknown: Option<Vec<&str>> = r
                .errors()
                .map(|f| match f.kind {
                    compat::FindingKind::UnknownSection { required: true } => {
                        Some(f.section.as_str())
                    }
                    _ => None,
                })
                .collect();
            if r.is_compatible() {
                "yes".to_string()
            } else if let Some(sections) = unknown {
                format!(
                    "yes, except images that hold {} (unknown to the reader: refused)",
                    sections.join(", ")
                )
            } else {
                let e: Vec<String> = r.errors().map(|f| f.to_string()).collect();
                format!("no\n        {}", e.join("\n        "))
            }
        };
        out.push_str(&format!(
            "{label}: upgrade {}\n{label}: rollback {}\n",
            verdict(&up),
            verdict(&down)
        ));
    }
    out
}

#[test]
fn compatibility_matrix() {
    let m = matrix();
    println!("{m}");
    insta::assert_snapshot!("compat_matrix", m);
}
