//! Naming what a file looks like when it is not a cpr image, so the user
//! learns "that is a QEMU migration stream" instead of "bad magic".

/// What a non-image file appears to be, as a noun phrase for
/// "not a cpr image: looks like ...".
pub fn describe(bytes: &[u8]) -> &'static str {
    if bytes.is_empty() {
        return "an empty file";
    }
    // QEMU's migration stream starts with QEMU_VM_FILE_MAGIC, "QEVM".
    if bytes.starts_with(b"QEVM") {
        return "a QEMU migration stream";
    }
    if bytes.starts_with(b"\x7fELF") {
        return elf_kind(bytes);
    }
    if bytes.starts_with(&[0x1f, 0x8b]) {
        return "gzip-compressed data";
    }
    if bytes.starts_with(b"\xfd7zXZ\0") {
        return "xz-compressed data";
    }
    if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return "zstd-compressed data";
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        if looks_like_json(text) {
            return "JSON text";
        }
        if is_text(text) {
            return "a text file";
        }
    }
    if is_cbor(bytes) {
        return "CBOR but not a cpr image";
    }
    "unrecognised binary data"
}

fn elf_kind(bytes: &[u8]) -> &'static str {
    // e_type is the 16-bit field at offset 16; EI_DATA (offset 5) gives the byte order.
    let e_type = match (bytes.get(5), bytes.get(16..18)) {
        (Some(1), Some(t)) => u16::from_le_bytes([t[0], t[1]]),
        (Some(2), Some(t)) => u16::from_be_bytes([t[0], t[1]]),
        _ => return "an ELF file",
    };
    match e_type {
        1 => "an ELF relocatable object",
        // Position-independent executables are ET_DYN too; call both executables,
        // which is what users mistakenly pass (the VMM binary).
        2 | 3 => "an ELF executable",
        4 => "an ELF core dump",
        _ => "an ELF file",
    }
}

fn looks_like_json(text: &str) -> bool {
    let trimmed = text.trim_start();
    (trimmed.starts_with('{') || trimmed.starts_with('['))
        && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

fn is_text(text: &str) -> bool {
    text.chars()
        .all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t' | '\x0c'))
}

fn is_cbor(bytes: &[u8]) -> bool {
    // One complete CBOR item spanning the whole file; a stray leading byte that
    // happens to decode as a small integer does not count.
    let mut reader = bytes;
    ciborium::de::from_reader::<ciborium::Value, _>(&mut reader).is_ok() && reader.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_common_non_images() {
        assert_eq!(describe(b""), "an empty file");
        assert_eq!(describe(b"QEVM\0\0\0\x03"), "a QEMU migration stream");
        let mut elf = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0".to_vec();
        elf.extend_from_slice(&3u16.to_le_bytes());
        assert_eq!(describe(&elf), "an ELF executable");
        assert_eq!(describe(&[0x1f, 0x8b, 8, 0]), "gzip-compressed data");
        assert_eq!(describe(b" {\"a\": [1, 2]}\n"), "JSON text");
        assert_eq!(describe(b"hello\nworld\n"), "a text file");
        // A CBOR map {"a": 1}.
        assert_eq!(
            describe(&[0xa1, 0x61, b'a', 0x01]),
            "CBOR but not a cpr image"
        );
        assert_eq!(describe(&[0xff, 0x00, 0x13]), "unrecognised binary data");
    }

    #[test]
    fn broken_json_is_text_not_json() {
        assert_eq!(describe(b"{not json"), "a text file");
    }
}
