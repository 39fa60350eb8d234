//! Writes the fuzz seed corpus (fuzz/corpus/reader/). Run from the workspace root:
//! `cargo run -p cpr-format --example gen_corpus`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::Path::new("fuzz/corpus/reader");
    std::fs::create_dir_all(dir)?;
    let small = cpr_format::sample::small_writer()?.to_bytes()?;
    let typical = cpr_format::sample::typical_writer()?.to_bytes()?;
    let img = cpr_format::Image::from_bytes(&small)?;
    let m = img.metadata_len() as usize;
    // Metadata body without prefix and CRC: the second mode of the target.
    let body = small[cpr_format::PREFIX_LEN..m - 5].to_vec();
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("small.cpr", small.clone()),
        ("typical.cpr", typical),
        ("small-metadata.bin", body),
        ("small-truncated.cpr", small[..m / 2].to_vec()),
        ("prefix-only.cpr", small[..cpr_format::PREFIX_LEN].to_vec()),
        ("deep-arrays.bin", vec![0x81; 200]),
        (
            "huge-lengths.bin",
            vec![
                0xa1, 0x61, b'x', 0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ],
        ),
    ];
    for (name, data) in seeds {
        std::fs::write(dir.join(name), data)?;
    }
    Ok(())
}
