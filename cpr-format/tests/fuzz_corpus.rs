//! The fuzz target over its seed corpus, as a plain test on stable (cargo-fuzz needs
//! nightly). See fuzz/README.md.

#[test]
fn fuzz_corpus_runs_without_panics() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/reader");
    let entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fuzz corpus {} is missing: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        entries.len() >= 5,
        "fuzz corpus {} has only {} inputs",
        dir.display(),
        entries.len()
    );
    for p in entries {
        let data = std::fs::read(&p).unwrap();
        cpr_format::__private::fuzz_reader(&data);
        // Every prefix too: cheap, and truncation is the commonest damage.
        if data.len() <= 5000 {
            for len in 0..data.len() {
                cpr_format::__private::fuzz_reader(&data[..len]);
            }
        }
    }
}

#[test]
fn seed_images_in_the_corpus_open() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/reader");
    for name in ["small.cpr", "typical.cpr"] {
        let data = std::fs::read(dir.join(name)).unwrap();
        cpr_format::Image::from_bytes(&data)
            .unwrap()
            .verify_regions()
            .unwrap();
    }
}
