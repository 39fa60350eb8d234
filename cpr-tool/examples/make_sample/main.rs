//! Writes the sample images under fixtures/images/samples/ and their VMM versions'
//! schemas under fixtures/schemas/samples/ (kept apart from the real releases'
//! schemas in fixtures/schemas/), for cpr-tool's snapshot tests (the VMM does not write
//! images yet). Everything is deterministic: fixed creation times, fixed register
//! values, fake but plausible fd identities.
//!
//! Run: `cargo run -p cpr-tool --example make_sample`

mod v1;
mod v2;

use std::path::{Path, PathBuf};

use cpr_format::{
    Bytes, DeviceDesc, FdEntry, FdIdentity, FdKind, FileType, Header, HostInfo, ImageWriter,
    MachineDesc, Mode, Producer, RamBacking, RamBlockDesc, Schema,
};

/// 2026-11-27T06:00:00Z.
const CREATED: u64 = 1_795_759_200 * 1_000_000_000;
const MIB: u64 = 1 << 20;

fn root() -> PathBuf {
    match Path::new(env!("CARGO_MANIFEST_DIR")).parent() {
        Some(workspace) => workspace.join("fixtures"),
        None => PathBuf::from("fixtures"),
    }
}

fn header(version: &str, mode: Mode, created: u64, ram: Vec<RamBlockDesc>) -> Header {
    Header {
        producer: Producer {
            name: "vmm".into(),
            version: version.into(),
            build_id: format!("sample-{version}"),
        },
        created_unix_ns: created,
        host: HostInfo {
            kernel_release: "6.8.0-sample".into(),
            page_size: 4096,
        },
        mode,
        machine: MachineDesc {
            vcpus: 2,
            ram_blocks: ram,
            devices: vec![DeviceDesc {
                id: "serial0".into(),
                kind: "uart-16550".into(),
            }],
        },
    }
}

fn memfd_ram() -> Vec<RamBlockDesc> {
    vec![RamBlockDesc {
        name: "pc.ram".into(),
        guest_addr: 0,
        size: 256 * MIB,
        backing: RamBacking::Memfd,
        page_size: 4096,
    }]
}

fn restart_fds(w: &mut ImageWriter) -> Result<(), cpr_format::Error> {
    w.add_fd(FdEntry {
        name: "ram.pc.ram".into(),
        kind: FdKind::Memfd,
        fd: 10,
        identity: FdIdentity {
            dev: 1,
            ino: 40961,
            file_type: FileType::Regular,
            size: 256 * MIB,
        },
    })?;
    w.add_fd(FdEntry {
        name: "serial0.pty".into(),
        kind: FdKind::Pty,
        fd: 11,
        identity: FdIdentity {
            dev: 24,
            ino: 3,
            file_type: FileType::CharDevice,
            size: 0,
        },
    })?;
    Ok(())
}

/// The vCPU state at one moment; `step` moves time and the instruction pointer on.
struct Cpu {
    index: u64,
    step: u64,
}

impl Cpu {
    fn regs_v1(&self) -> v1::Regs {
        v1::Regs {
            rax: 0x1000 + self.index,
            rbx: 0xdead_beef,
            rcx: 0x10,
            rdx: 0x3f8,
            rsp: 0x7000 - 0x10 * self.index,
            rip: 0x10_0000 + 0x20 * self.step + 4 * self.index,
            // IF set; from step 1, the trap flag toggles in too.
            rflags: 0x202 | if self.step > 1 { 0x100 } else { 0 },
        }
    }

    fn regs_v2(&self) -> v2::Regs {
        let r = self.regs_v1();
        v2::Regs {
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdx: r.rdx,
            rsp: r.rsp,
            rip: r.rip,
            rflags: r.rflags,
            r8: Some(0x8),
            r9: None,
        }
    }

    fn sregs(&self) -> v1::Sregs {
        let seg = |selector: u16, type_: u8| v1::Segment {
            base: 0,
            limit: 0xffff_ffff,
            selector,
            type_,
        };
        v1::Sregs {
            cs: seg(0x8, 0xb),
            ds: seg(0x10, 0x3),
            cr0: 0x8000_0011,
            cr3: 0x9000,
            cr4: 0x20,
            efer: 0x500,
            apic_base: 0xfee0_0900 & !(u64::from(self.index != 0) << 8),
        }
    }

    fn msrs(&self) -> v1::Msrs {
        v1::Msrs {
            tsc: 5_000_000_000 + 1_234_567 * self.step + self.index,
            msrs: vec![
                v1::Msr {
                    index: 0x174,
                    value: 0x10,
                },
                v1::Msr {
                    index: 0xc000_0080,
                    value: 0x500,
                },
            ],
        }
    }
}

fn serial_v1() -> v1::Serial {
    v1::Serial {
        ier: 0x1,
        iir: 0xc1,
        lcr: 0x3,
        mcr: 0x8,
        lsr: 0x60,
        msr: 0xb0,
        scratch: 0x5a,
        baud_divisor: 12,
        rx_fifo: Bytes(b"ok\r\n".to_vec()),
    }
}

fn serial_v2() -> v2::Serial {
    let s = serial_v1();
    v2::Serial {
        ier: s.ier,
        iir: s.iir,
        lcr: s.lcr,
        mcr: s.mcr,
        lsr: s.lsr,
        msr: s.msr,
        // The guest wrote the scratch register after the 0.1.0 image was taken.
        scr: s.scratch + 1,
        baud_divisor: s.baud_divisor,
        rx_fifo: s.rx_fifo,
        fifo_enabled: Some(true),
    }
}

fn clock(step: u64) -> v1::Clock {
    v1::Clock {
        clock: 2_500_000_000 + 617_000 * step,
        flags: 0x2,
    }
}

fn xsave(index: u64) -> v2::Xsave {
    let region: Vec<u8> = (0..64u64).map(|i| (i * 7 + index) as u8).collect();
    v2::Xsave {
        xcr0: 0x7,
        region: Bytes(region),
    }
}

/// An image as VMM 0.1.0 wrote it.
fn image_v1() -> Result<ImageWriter, cpr_format::Error> {
    let mut w = ImageWriter::new(header("0.1.0", Mode::Restart, CREATED, memfd_ram()));
    for index in 0..2 {
        let cpu = Cpu { index, step: 0 };
        let inst = index.to_string();
        w.add_section(&inst, &cpu.regs_v1())?;
        w.add_section(&inst, &cpu.sregs())?;
        w.add_section(&inst, &cpu.msrs())?;
    }
    w.add_section("serial0", &serial_v1())?;
    w.add_section("kvm", &clock(0))?;
    restart_fds(&mut w)?;
    Ok(w)
}

/// An image as VMM 0.2.0 writes it, `step` moments after the 0.1.0 one.
fn image_v2(step: u64, mode: Mode) -> Result<ImageWriter, cpr_format::Error> {
    let ram = match mode {
        Mode::Reboot => vec![RamBlockDesc {
            name: "pc.ram".into(),
            guest_addr: 0,
            size: 8192,
            backing: RamBacking::Anonymous,
            page_size: 4096,
        }],
        _ => memfd_ram(),
    };
    let created = CREATED + step * 90_000_000_000;
    let mut w = ImageWriter::new(header("0.2.0", mode, created, ram));
    for index in 0..2 {
        let cpu = Cpu { index, step };
        let inst = index.to_string();
        w.add_section(&inst, &cpu.regs_v2())?;
        w.add_section(&inst, &cpu.sregs())?;
        w.add_section(&inst, &cpu.msrs())?;
        w.add_section(&inst, &xsave(index))?;
    }
    w.add_section("serial0", &serial_v2())?;
    w.add_section("kvm", &clock(step))?;
    match mode {
        Mode::Reboot => {
            // Anonymous RAM does not survive as a descriptor: it travels as a region.
            let ram: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
            w.add_region("ram.pc.ram", ram)?;
        }
        _ => restart_fds(&mut w)?,
    }
    Ok(w)
}

fn schema_v1() -> Schema {
    Schema::new()
        .with::<v1::Regs>()
        .with::<v1::Sregs>()
        .with::<v1::Msrs>()
        .with::<v1::Serial>()
        .with::<v1::Clock>()
}

fn schema_v2() -> Schema {
    Schema::new()
        .with::<v2::Regs>()
        .with::<v2::Sregs>()
        .with::<v2::Msrs>()
        .with::<v2::Xsave>()
        .with::<v2::Serial>()
        .with::<v2::Clock>()
}

fn write(w: ImageWriter, name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let path = root().join("images/samples").join(name);
    let bytes = w.to_bytes()?;
    std::fs::write(&path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

fn write_schema(s: &Schema, version: &str) -> Result<(), Box<dyn std::error::Error>> {
    let path = root()
        .join("schemas/samples")
        .join(format!("{version}.json"));
    let mut text = serde_json::to_string_pretty(s)?;
    text.push('\n');
    std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(root().join("images/samples"))?;
    std::fs::create_dir_all(root().join("schemas/samples"))?;
    write(image_v1()?, "vm-0.1.0.cpr")?;
    write(image_v2(1, Mode::Restart)?, "vm-0.2.0.cpr")?;
    write(image_v2(2, Mode::Restart)?, "vm-0.2.0-later.cpr")?;
    write(image_v2(1, Mode::Reboot)?, "reboot-0.2.0.cpr")?;
    // cpr-format's own samples: a larger machine (4 vCPUs, 12 devices, 20 fds with
    // made-up identities) and a tiny one with a region.
    write(cpr_format::sample::typical_writer()?, "format-typical.cpr")?;
    write(cpr_format::sample::small_writer()?, "format-small.cpr")?;
    write_schema(&schema_v1(), "0.1.0")?;
    write_schema(&schema_v2(), "0.2.0")?;
    Ok(())
}
