//! cpr-format's fuzz corpus (valid seeds and inputs the fuzzer found) through the
//! tool: every file is either shown (exit 0/1, nothing on stderr) or refused with
//! exit 2 and one line; the valid ones also survive `json`/`encode` byte for byte.

mod common;

use common::{assert_error, fixtures, run_in, scratch};

#[test]
fn fuzz_corpus_never_crashes_the_tool() {
    let corpus = fixtures().parent().unwrap().join("fuzz/corpus/reader");
    let mut files: Vec<_> = std::fs::read_dir(&corpus)
        .unwrap_or_else(|e| panic!("{}: {e}", corpus.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 10, "corpus too small: {}", files.len());
    let dir = scratch("corpus");
    let mut valid = 0;
    for f in &files {
        let name = f.to_str().unwrap();
        for args in [
            &["inspect", name][..],
            &["--json", "inspect", name],
            &["verify", name],
            &["schema", "dump", "--image", name],
        ] {
            let r = run_in(&dir, args);
            match r.code {
                0 | 1 => assert!(r.stderr.is_empty(), "{args:?}: {}", r.stderr),
                _ => assert_error(&r, &format!("{args:?}")),
            }
        }
        let r = run_in(&dir, &["json", name, "-o", "image.json"]);
        if r.code != 0 {
            assert_error(&r, &format!("json {name}"));
            continue;
        }
        valid += 1;
        let r = run_in(&dir, &["encode", "image.json", "-o", "image.cpr"]);
        assert_eq!(r.code, 0, "{name}: {}", r.stderr);
        assert_eq!(
            std::fs::read(dir.join("image.cpr")).unwrap(),
            std::fs::read(f).unwrap(),
            "{name}"
        );
    }
    assert!(valid >= 1, "no valid image in the corpus");
}
