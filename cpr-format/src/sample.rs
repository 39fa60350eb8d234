//! A typical image, for tests, benchmarks, fuzz corpora and tool fixtures.
//!
//! The state types here mirror what an x86 VMM saves (4 vCPUs with full register state,
//! a dozen devices, ~20 preserved descriptors) but are not the VMM's own types.

// Field names say what they are; the sample is not an API to document field by field.
#![allow(missing_docs)]

use crate::{
    Bytes, DeviceDesc, FdEntry, FdIdentity, FdKind, FileType, Header, HostInfo, ImageWriter,
    MachineDesc, Mode, Producer, RamBacking, RamBlockDesc, Result,
};

crate::state! {
    /// A segment register.
    pub struct Segment {
        #[hint(addr)] pub base: u64,
        #[hint(hex)] pub limit: u32,
        #[hint(hex)] pub selector: u16,
        pub type_: u8,
        pub present: u8,
        pub dpl: u8,
        pub db: u8,
        pub s: u8,
        pub l: u8,
        pub g: u8,
        pub avl: u8,
    }

    /// A descriptor table register.
    pub struct DTable {
        #[hint(addr)] pub base: u64,
        #[hint(hex)] pub limit: u16,
    }

    /// One MSR.
    pub struct MsrEntry {
        #[hint(hex)] pub index: u32,
        #[hint(hex)] pub data: u64,
    }

    /// General-purpose registers of one vCPU.
    #[section(name = "cpu.regs", version = 1, min_version = 1, required = true)]
    pub struct RegsState {
        #[hint(hex)] pub rax: u64,
        #[hint(hex)] pub rbx: u64,
        #[hint(hex)] pub rcx: u64,
        #[hint(hex)] pub rdx: u64,
        #[hint(hex)] pub rsi: u64,
        #[hint(hex)] pub rdi: u64,
        #[hint(addr)] pub rsp: u64,
        #[hint(addr)] pub rbp: u64,
        /// r8 to r15.
        #[hint(hex)] pub r: [u64; 8],
        #[hint(addr)] pub rip: u64,
        #[hint(flags)] pub rflags: u64,
    }

    /// Special registers of one vCPU.
    #[section(name = "cpu.sregs", version = 1, min_version = 1, required = true)]
    pub struct SregsState {
        pub cs: Segment,
        pub ds: Segment,
        pub es: Segment,
        pub fs: Segment,
        pub gs: Segment,
        pub ss: Segment,
        pub tr: Segment,
        pub ldt: Segment,
        pub gdt: DTable,
        pub idt: DTable,
        #[hint(flags)] pub cr0: u64,
        #[hint(addr)] pub cr2: u64,
        #[hint(addr)] pub cr3: u64,
        #[hint(flags)] pub cr4: u64,
        pub cr8: u64,
        #[hint(flags)] pub efer: u64,
        #[hint(addr)] pub apic_base: u64,
        #[hint(flags)] pub interrupt_bitmap: [u64; 4],
    }

    /// FPU, XSAVE area, XCRs, LAPIC and MSRs of one vCPU.
    #[section(name = "cpu.ext", version = 2, min_version = 1, required = true)]
    pub struct CpuExtState {
        pub xsave: Bytes,
        #[hint(flags)] pub xcr0: u64,
        pub lapic: Bytes,
        pub msrs: Vec<MsrEntry>,
        pub mp_state: u32,
        #[hint(unit("kHz"))] pub tsc_khz: u32,
        #[since(2)] #[hint(flags)] pub pending_events: Option<u64>,
    }

    /// A generic device: a few registers and a FIFO.
    #[section(name = "dev.generic", version = 1, min_version = 1, required = false)]
    pub struct DeviceState {
        pub kind: String,
        #[hint(hex)] pub regs: Vec<u32>,
        pub fifo: Bytes,
        #[hint(addr)] pub mmio_base: Option<u64>,
        pub irq: u32,
        pub enabled: bool,
    }
}

/// A header for a 4-vCPU machine with one memfd RAM block and 12 devices.
pub fn header() -> Header {
    Header {
        producer: Producer {
            name: "vmm".into(),
            version: "0.1.0".into(),
            build_id: "0123456789abcdef".into(),
        },
        created_unix_ns: 1_795_000_000_000_000_000,
        host: HostInfo {
            kernel_release: "6.8.0-sample".into(),
            page_size: 4096,
        },
        mode: Mode::Restart,
        machine: MachineDesc {
            vcpus: 4,
            ram_blocks: vec![RamBlockDesc {
                name: "pc.ram".into(),
                guest_addr: 0,
                size: 1 << 30,
                backing: RamBacking::Memfd,
                page_size: 4096,
            }],
            devices: (0..12)
                .map(|i| DeviceDesc {
                    id: format!("dev{i}"),
                    kind: "generic".into(),
                })
                .collect(),
        },
    }
}

fn seg(i: u64) -> Segment {
    Segment {
        base: i * 0x1000,
        limit: 0xffff_ffff,
        selector: (i * 8) as u16,
        type_: 11,
        present: 1,
        dpl: 0,
        db: 0,
        s: 1,
        l: 1,
        g: 1,
        avl: 0,
    }
}

/// Register state of vCPU `i`, with all fields non-trivial.
pub fn vcpu(i: u64) -> (RegsState, SregsState, CpuExtState) {
    let regs = RegsState {
        rax: i,
        rbx: 0x1111 * i,
        rcx: 0x2222,
        rdx: 0x3333,
        rsi: 0x4444,
        rdi: 0x5555,
        rsp: 0x7000,
        rbp: 0x7ff0,
        r: [8, 9, 10, 11, 12, 13, 14, 15],
        rip: 0x10_0000 + i,
        rflags: 0x202,
    };
    let sregs = SregsState {
        cs: seg(1),
        ds: seg(2),
        es: seg(2),
        fs: seg(0),
        gs: seg(0),
        ss: seg(2),
        tr: seg(3),
        ldt: seg(0),
        gdt: DTable {
            base: 0x500,
            limit: 0x1f,
        },
        idt: DTable {
            base: 0x0,
            limit: 0xfff,
        },
        cr0: 0x8005_0033,
        cr2: 0,
        cr3: 0x9000,
        cr4: 0x20,
        cr8: 0,
        efer: 0x500,
        apic_base: 0xfee0_0900,
        interrupt_bitmap: [0; 4],
    };
    let ext = CpuExtState {
        xsave: Bytes(
            (0..4096u32)
                .map(|b| (b.wrapping_mul(7) ^ i as u32) as u8)
                .collect(),
        ),
        xcr0: 7,
        lapic: Bytes((0..1024u32).map(|b| (b % 251) as u8).collect()),
        msrs: (0..40u32)
            .map(|k| MsrEntry {
                index: 0xc000_0080 + k,
                data: u64::from(k) << 20,
            })
            .collect(),
        mp_state: 0,
        tsc_khz: 2_400_000,
        pending_events: Some(0),
    };
    (regs, sregs, ext)
}

/// The state of device `i`.
pub fn device(i: u32) -> DeviceState {
    DeviceState {
        kind: "generic".into(),
        regs: (0..16).map(|r| r * i).collect(),
        fifo: Bytes(vec![i as u8; 16]),
        mmio_base: if i & 1 == 0 {
            Some(0xd000_0000 + u64::from(i) * 0x1000)
        } else {
            None
        },
        irq: 4 + i,
        enabled: true,
    }
}

/// An fd entry with a made-up identity.
pub fn fd(i: i32) -> FdEntry {
    let kinds = [
        FdKind::Memfd,
        FdKind::EventFd,
        FdKind::Pty,
        FdKind::ListeningSocket,
        FdKind::VfioDevice,
    ];
    FdEntry {
        name: format!("fd{i}"),
        kind: kinds[i as usize % kinds.len()].clone(),
        fd: 10 + i,
        identity: FdIdentity {
            dev: 5,
            ino: 1000 + i as u64,
            file_type: FileType::Regular,
            size: 4096,
        },
    }
}

/// The typical image: 4 vCPUs (3 sections each), 12 devices, 20 fds, no regions.
pub fn typical_writer() -> Result<ImageWriter> {
    let mut w = ImageWriter::new(header());
    for i in 0..4u64 {
        let (r, s, e) = vcpu(i);
        w.add_section(&i.to_string(), &r)?;
        w.add_section(&i.to_string(), &s)?;
        w.add_section(&i.to_string(), &e)?;
    }
    for i in 0..12 {
        w.add_section(&format!("dev{i}"), &device(i))?;
    }
    for i in 0..20 {
        w.add_fd(fd(i))?;
    }
    Ok(w)
}

/// A small image: one vCPU's registers, one device, two fds and one 100-byte region.
/// Small enough for exhaustive bit-flip tests and as a fuzz seed.
pub fn small_writer() -> Result<ImageWriter> {
    let mut h = header();
    h.machine.vcpus = 1;
    h.machine.devices.truncate(1);
    let mut w = ImageWriter::new(h);
    w.add_section("0", &vcpu(0).0)?;
    w.add_section("dev0", &device(2))?;
    w.add_fd(fd(0))?;
    w.add_fd(fd(1))?;
    w.add_region("ram.extra", (0..100u8).collect())?;
    Ok(w)
}
