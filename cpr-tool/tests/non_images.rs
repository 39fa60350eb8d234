//! Files that are not images are named by what they look like.

mod common;

use common::{assert_error, run_in, scratch, BIN};

fn expect(name: &str, bytes: &[u8], looks_like: &str) {
    let dir = scratch(&format!("non-image-{name}"));
    std::fs::write(dir.join(name), bytes).unwrap();
    let r = run_in(&dir, &["inspect", name]);
    assert_error(&r, name);
    assert_eq!(
        r.stderr,
        format!("cpr-tool: {name}: not a cpr image: looks like {looks_like}\n")
    );
}

#[test]
fn names_what_the_file_is() {
    expect("empty", b"", "an empty file");
    expect(
        "stream",
        b"QEVM\x00\x00\x00\x03\x05rest",
        "a QEMU migration stream",
    );
    expect(
        "data.gz",
        &[0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0],
        "gzip-compressed data",
    );
    expect(
        "image.json",
        b"{\"header\": {\"mode\": \"restart\"}}\n",
        "JSON text",
    );
    expect("notes.txt", b"cpu.regs rip=0x1000\n", "a text file");
    // A CBOR map {"a": 1} with the self-describe tag, but no cpr signature.
    expect(
        "other.cbor",
        &[0xd9, 0xd9, 0xf7, 0xa1, 0x61, b'a', 0x01],
        "CBOR but not a cpr image",
    );
}

#[test]
fn names_an_executable() {
    let elf = std::fs::read(BIN).unwrap();
    expect("vmm", &elf, "an ELF executable");
}

#[test]
fn missing_file_is_an_error() {
    let dir = scratch("non-image-missing");
    let r = run_in(&dir, &["verify", "nope.cpr"]);
    assert_error(&r, "missing file");
    assert!(
        r.stderr.starts_with("cpr-tool: Cannot read nope.cpr: "),
        "{}",
        r.stderr
    );
}

#[test]
fn usage_errors_exit_two() {
    let dir = scratch("non-image-usage");
    let r = run_in(&dir, &["inspect"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let r = run_in(&dir, &["no-such-command"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let r = run_in(&dir, &["--help"]);
    assert_eq!(r.code, 0);
    for cmd in ["inspect", "diff", "verify", "schema", "json", "encode"] {
        let r = run_in(&dir, &[cmd, "--help"]);
        assert_eq!(r.code, 0, "{cmd} --help");
        assert!(r.stdout.contains("Usage: cpr-tool"), "{cmd}: {}", r.stdout);
    }
}
