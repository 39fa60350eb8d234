//! The encoding of a small image is pinned: any change of bytes must be deliberate
//! (review the snapshot diff, and bump the format version if old readers are affected).

use cpr_format::*;

cpr_format::state! {
    /// A tiny section.
    #[section(name = "golden.counter", version = 1, min_version = 1, required = true)]
    pub struct Counter {
        #[hint(hex)] pub value: u64,
        pub label: String,
        pub raw: Bytes,
    }
}

fn golden_bytes() -> Vec<u8> {
    let header = Header {
        producer: Producer {
            name: "vmm".into(),
            version: "1.2.3".into(),
            build_id: "g".into(),
        },
        created_unix_ns: 1_700_000_000_000_000_000,
        host: HostInfo {
            kernel_release: "6.1.0".into(),
            page_size: 4096,
        },
        mode: Mode::Transfer,
        machine: MachineDesc {
            vcpus: 1,
            ram_blocks: vec![RamBlockDesc {
                name: "ram".into(),
                guest_addr: 0,
                size: 0x10_0000,
                backing: RamBacking::Memfd,
                page_size: 4096,
            }],
            devices: vec![DeviceDesc {
                id: "c0".into(),
                kind: "counter".into(),
            }],
        },
    };
    let mut w = ImageWriter::new(header);
    w.add_section(
        "c0",
        &Counter {
            value: 0xdead_beef,
            label: "hi".into(),
            raw: Bytes(vec![1, 2, 3]),
        },
    )
    .unwrap();
    w.add_fd(FdEntry {
        name: "ram".into(),
        kind: FdKind::Memfd,
        fd: 0,
        identity: FdIdentity {
            dev: 1,
            ino: 2,
            file_type: FileType::Regular,
            size: 0x10_0000,
        },
    })
    .unwrap();
    w.to_bytes().unwrap()
}

/// Classic hex dump: offset, 16 bytes, ASCII.
fn hexdump(b: &[u8]) -> String {
    let mut out = String::new();
    for (i, chunk) in b.chunks(16).enumerate() {
        let hex: Vec<String> = chunk.iter().map(|x| format!("{x:02x}")).collect();
        let ascii: String = chunk
            .iter()
            .map(|&c| {
                if (0x20..0x7f).contains(&c) {
                    c as char
                } else {
                    '.'
                }
            })
            .collect();
        out.push_str(&format!(
            "{:08x}  {:<47}  |{}|\n",
            i * 16,
            hex.join(" "),
            ascii
        ));
    }
    out
}

#[test]
fn golden_image_bytes_are_pinned() {
    let bytes = golden_bytes();
    insta::assert_snapshot!("golden_image", hexdump(&bytes));
    // And the pinned bytes still read back.
    let img = Image::from_bytes(&bytes).unwrap();
    assert_eq!(
        img.section::<Counter>("c0").unwrap().unwrap().value,
        0xdead_beef
    );
}

#[test]
fn golden_schema_json_is_pinned() {
    let schema = Schema::new().with::<Counter>();
    insta::assert_snapshot!(
        "golden_schema",
        serde_json::to_string_pretty(&schema).unwrap()
    );
}
