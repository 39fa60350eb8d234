//! Damaged images: every sample with bit flips and truncations makes every reading
//! command exit 2 with a one-line reason, never panic or report success.

mod common;

use common::{assert_error, run_in, sample_names, samples, scratch};

/// Offsets to damage: every byte of the first 64 (prefix and header start), then a
/// stride through the rest, and the last 16 (trailer CRC, region ends).
fn offsets(len: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..len.min(64)).collect();
    v.extend((64..len).step_by(29));
    v.extend(len.saturating_sub(16)..len);
    v.sort_unstable();
    v.dedup();
    v
}

#[test]
fn bit_flips_are_errors() {
    let dir = scratch("corruption-flips");
    let mut runs = 0;
    for name in sample_names() {
        let good = std::fs::read(samples().join(&name)).unwrap();
        for (i, off) in offsets(good.len()).into_iter().enumerate() {
            let mut bad = good.clone();
            // Vary the flipped bit so every bit position is exercised.
            bad[off] ^= 1 << (i % 8);
            let file = dir.join("bad.cpr");
            std::fs::write(&file, &bad).unwrap();
            let r = run_in(&dir, &["inspect", "bad.cpr"]);
            assert_error(&r, &format!("{name}: bit {} of byte {off} flipped", i % 8));
            runs += 1;
        }
    }
    assert!(runs > 400, "only {runs} damaged images tried");
}

#[test]
fn truncations_are_errors() {
    let dir = scratch("corruption-truncations");
    for name in sample_names() {
        let good = std::fs::read(samples().join(&name)).unwrap();
        let mut lengths: Vec<usize> = (0..good.len()).step_by(97).collect();
        lengths.extend([1, 3, 19, 34, 35, good.len() - 1]);
        for len in lengths {
            let file = dir.join("short.cpr");
            std::fs::write(&file, &good[..len]).unwrap();
            let r = run_in(&dir, &["inspect", "short.cpr"]);
            assert_error(&r, &format!("{name} truncated to {len} bytes"));
        }
    }
}

#[test]
fn every_command_refuses_a_damaged_image() {
    let dir = scratch("corruption-commands");
    let good = std::fs::read(samples().join("reboot-0.2.0.cpr")).unwrap();
    // One flip in the metadata, one in region data (checked only by its digest).
    for off in [200, good.len() - 100] {
        let mut bad = good.clone();
        bad[off] ^= 0x10;
        std::fs::write(dir.join("bad.cpr"), &bad).unwrap();
        std::fs::copy(samples().join("vm-0.2.0.cpr"), dir.join("good.cpr")).unwrap();
        for args in [
            &["inspect", "bad.cpr"][..],
            &["inspect", "--section", "cpu.regs/0", "bad.cpr"],
            &["diff", "good.cpr", "bad.cpr"],
            &["diff", "bad.cpr", "good.cpr"],
            &["verify", "bad.cpr"],
            &["schema", "dump", "--image", "bad.cpr"],
            &["json", "bad.cpr"],
            &["--json", "verify", "bad.cpr"],
        ] {
            let r = run_in(&dir, args);
            assert_error(&r, &format!("{args:?} with byte {off} damaged"));
        }
    }
}

#[test]
fn damage_is_named() {
    let dir = scratch("corruption-named");
    let good = std::fs::read(samples().join("reboot-0.2.0.cpr")).unwrap();
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    std::fs::write(dir.join("bad.cpr"), &bad).unwrap();
    let r = run_in(&dir, &["verify", "bad.cpr"]);
    assert_error(&r, "region flip");
    assert!(
        r.stderr
            .contains("bad.cpr: invalid cpr image: Region ram.pc.ram"),
        "{}",
        r.stderr
    );
    std::fs::write(dir.join("short.cpr"), &good[..100]).unwrap();
    let r = run_in(&dir, &["inspect", "short.cpr"]);
    assert!(r.stderr.contains("Truncated image"), "{}", r.stderr);

    // Damage inside the signature is a damaged image, not "some other CBOR".
    let mut bad = good.clone();
    bad[7] ^= 0x80;
    std::fs::write(dir.join("sig.cpr"), &bad).unwrap();
    let r = run_in(&dir, &["inspect", "sig.cpr"]);
    assert_error(&r, "signature flip");
    assert_eq!(
        r.stderr,
        "cpr-tool: sig.cpr: Not a cpr image: bad signature at byte 7\n"
    );
    // A text-mode transfer turned the signature's CR LF into LF.
    let pos = good.windows(2).position(|w| w == b"\r\n").unwrap();
    let mut mangled = good[..pos].to_vec();
    mangled.extend_from_slice(&good[pos + 1..]);
    std::fs::write(dir.join("text.cpr"), &mangled).unwrap();
    let r = run_in(&dir, &["inspect", "text.cpr"]);
    assert_error(&r, "text-mode transfer");
    assert!(
        r.stderr.contains("mangled by a text-mode transfer"),
        "{}",
        r.stderr
    );
}
