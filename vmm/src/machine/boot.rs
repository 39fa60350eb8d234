//! Loading a kernel and the boot-time CPU state.
//!
//! Two kernel formats, both entered directly in 64-bit long mode set up by the VMM (as
//! Firecracker does for vmlinux): an ELF64 (our test guests, a Linux vmlinux) loaded at its
//! physical addresses, or a Linux bzImage whose protected-mode part is loaded at 1 MiB and
//! entered at its 64-bit entry (load address + 0x200). Both get a zero page (boot_params)
//! with the e820 map, command line and initrd, its address in RSI.
//!
//! Low memory used by the VMM at boot:
//! | 0x500  | GDT (null, code64 0x08, data 0x10, TSS 0x18) |
//! | 0x520  | IDT (empty: the guest installs its own)     |
//! | 0x7000 | zero page (boot_params)                      |
//! | 0x8ff0 | initial stack pointer                        |
//! | 0x9000 | PML4, 0xa000 PDPT, 0xb000..0xefff four PDs   |
//! | 0x20000| kernel command line                          |
//! The page tables identity-map the first 4 GiB with 2 MiB pages (so a guest reaches the
//! LAPIC and IOAPIC MMIO pages as well as RAM).

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::Elf;
use linux_loader::loader::KernelLoader;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::memory::{GuestRam, HIGH_RAM_START};
use super::vcpu_state::{DescriptorTable, Fpu, Regs, Segment, Sregs};

pub const GDT_ADDR: u64 = 0x500;
pub const IDT_ADDR: u64 = 0x520;
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
pub const BOOT_STACK: u64 = 0x8ff0;
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
pub const PD_ADDR: u64 = 0xb000;
pub const CMDLINE_ADDR: u64 = 0x20000;
pub const CMDLINE_MAX: usize = 0x10000;
pub const HIMEM_START: u64 = 0x10_0000;
/// End of conventional memory below the EBDA.
const EBDA_START: u64 = 0x9fc00;
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const XLF_KERNEL_64: u16 = 1;

pub const CODE_SELECTOR: u16 = 0x08;
pub const DATA_SELECTOR: u16 = 0x10;
pub const TSS_SELECTOR: u16 = 0x18;

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open kernel {path}")]
    OpenKernel {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel {path} is neither an ELF64 nor a bzImage (ELF: {elf}; bzImage: {bzimage})")]
    UnknownFormat {
        path: PathBuf,
        elf: String,
        bzimage: String,
    },
    #[error("bzImage {path} has no 64-bit entry point (xloadflags lacks XLF_KERNEL_64)")]
    No64BitEntry { path: PathBuf },
    #[error("cannot read initrd {path}")]
    ReadInitrd {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("initrd of {size} bytes does not fit in low RAM below {limit:#x}")]
    InitrdTooBig { size: u64, limit: u64 },
    #[error("kernel command line is longer than {CMDLINE_MAX} bytes")]
    CmdlineTooLong,
    #[error("guest RAM is too small for the boot structures at {addr:#x}")]
    WriteMemory {
        addr: u64,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("cannot write the zero page: {0}")]
    BootParams(String),
}

/// Where the kernel went and how to enter it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootInfo {
    pub entry: u64,
}

fn write(mem: &GuestMemoryMmap, addr: u64, bytes: &[u8]) -> Result<(), BootError> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| BootError::WriteMemory { addr, source })
}

/// A GDT descriptor from flags, base and limit (the layout the CPU reads).
fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << 32)
        | ((u64::from(flags) & 0x0000_f0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << 32)
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0x0000_ffff)
}

/// The segment register a GDT descriptor loads.
fn segment(entry: u64, selector: u16) -> Segment {
    Segment {
        base: ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24),
        limit: {
            let raw = ((entry & 0xffff) | (((entry >> 48) & 0xf) << 16)) as u32;
            if (entry >> 55) & 1 == 1 {
                (raw << 12) | 0xfff
            } else {
                raw
            }
        },
        selector,
        seg_type: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: ((entry >> 55) & 1) as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if (entry >> 47) & 1 == 1 { 0 } else { 1 },
    }
}

const GDT: [u64; 4] = [
    0,
    0x00af_9b00_0000_ffff, // code: 64-bit, present, execute/read, accessed
    0x00cf_9300_0000_ffff, // data: present, read/write, accessed
    0x008f_8b00_0000_ffff, // TSS: present, busy 32/64-bit TSS
];

/// Writes the GDT, IDT and identity page tables; returns the long-mode sregs.
pub fn setup_long_mode(mem: &GuestMemoryMmap, base: &Sregs) -> Result<Sregs, BootError> {
    debug_assert_eq!(GDT[1], gdt_entry(0xa09b, 0, 0xfffff));
    for (i, e) in GDT.iter().enumerate() {
        write(mem, GDT_ADDR + 8 * i as u64, &e.to_le_bytes())?;
    }
    write(mem, IDT_ADDR, &0u64.to_le_bytes())?;

    // PML4[0] -> PDPT; PDPT[0..4] -> four PDs of 512 2 MiB pages each (4 GiB).
    write(mem, PML4_ADDR, &(PDPT_ADDR | 0x3).to_le_bytes())?;
    for pd in 0..4u64 {
        let pd_addr = PD_ADDR + pd * 0x1000;
        write(mem, PDPT_ADDR + pd * 8, &(pd_addr | 0x3).to_le_bytes())?;
        let mut table = Vec::with_capacity(4096);
        for i in 0..512u64 {
            let page = (pd << 30) | (i << 21);
            table.extend_from_slice(&(page | 0x83).to_le_bytes()); // present, RW, 2 MiB
        }
        write(mem, pd_addr, &table)?;
    }

    let code = segment(GDT[1], CODE_SELECTOR);
    let data = segment(GDT[2], DATA_SELECTOR);
    let tss = segment(GDT[3], TSS_SELECTOR);
    let mut s = *base;
    s.cs = code;
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.tr = tss;
    s.gdt = DescriptorTable {
        base: GDT_ADDR,
        limit: (GDT.len() * 8 - 1) as u16,
    };
    s.idt = DescriptorTable {
        base: IDT_ADDR,
        limit: 7,
    };
    s.cr0 = CR0_PE | CR0_ET | CR0_PG;
    s.cr3 = PML4_ADDR;
    s.cr4 = CR4_PAE;
    s.efer = EFER_LME | EFER_LMA;
    Ok(s)
}

/// General registers at the kernel entry: RSI points at the zero page (Linux boot protocol).
pub fn boot_regs(entry: u64) -> Regs {
    Regs {
        rip: entry,
        rsp: BOOT_STACK,
        rbp: BOOT_STACK,
        rsi: ZERO_PAGE_ADDR,
        rflags: 0x2,
        ..Default::default()
    }
}

/// x87 and SSE at their reset values.
pub fn boot_fpu() -> Fpu {
    Fpu {
        fpr: vec![[0; 16]; 8],
        fcw: 0x37f,
        xmm: vec![[0; 16]; 16],
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// Loads the kernel (and initrd and command line) and writes the zero page.
pub fn load_kernel(
    ram: &GuestRam,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: Option<&str>,
) -> Result<BootInfo, BootError> {
    let mem = ram.memory();
    let open = || {
        File::open(kernel).map_err(|source| BootError::OpenKernel {
            path: kernel.to_path_buf(),
            source,
        })
    };
    let mut params = boot_params::default();
    let entry = match Elf::load(mem, None, &mut open()?, Some(GuestAddress(HIMEM_START))) {
        Ok(r) => r.kernel_load.raw_value(),
        Err(elf_err) => {
            let r = BzImage::load(mem, None, &mut open()?, Some(GuestAddress(HIMEM_START)))
                .map_err(|bz_err| BootError::UnknownFormat {
                    path: kernel.to_path_buf(),
                    elf: format!("{elf_err}"),
                    bzimage: format!("{bz_err}"),
                })?;
            if let Some(hdr) = r.setup_header {
                // The 64-bit entry exists only if the kernel says so (boot protocol 2.12+).
                if hdr.xloadflags & XLF_KERNEL_64 == 0 {
                    return Err(BootError::No64BitEntry {
                        path: kernel.to_path_buf(),
                    });
                }
                params.hdr = hdr;
            }
            // The 64-bit entry point sits 0x200 bytes into the protected-mode kernel.
            r.kernel_load.raw_value() + 0x200
        }
    };

    params.hdr.type_of_loader = 0xff; // undefined loader
    params.hdr.boot_flag = 0xaa55;
    params.hdr.header = 0x5372_6448; // "HdrS"
    params.hdr.loadflags |= 0x01; // LOADED_HIGH
    if params.hdr.kernel_alignment == 0 {
        // vmlinux has no setup header; Linux expects its 16 MiB default here.
        params.hdr.kernel_alignment = 0x0100_0000;
    }

    let cmdline = cmdline.unwrap_or("");
    if cmdline.len() + 1 > CMDLINE_MAX {
        return Err(BootError::CmdlineTooLong);
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    write(mem, CMDLINE_ADDR, &bytes)?;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline.len() as u32;

    if let Some(path) = initrd {
        let data = std::fs::read(path).map_err(|source| BootError::ReadInitrd {
            path: path.to_path_buf(),
            source,
        })?;
        let size = data.len() as u64;
        // Highest page-aligned address that fits below the end of low RAM and the kernel's
        // initrd_addr_max (0x37ffffff for old kernels that leave it 0).
        let max = match params.hdr.initrd_addr_max {
            0 => 0x37ff_ffff,
            m => u64::from(m),
        };
        let limit = ram.low_end().min(max + 1);
        let addr = limit
            .checked_sub(size)
            .map(|a| a & !0xfff)
            .filter(|a| *a >= HIMEM_START)
            .ok_or(BootError::InitrdTooBig { size, limit })?;
        write(mem, addr, &data)?;
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }

    let mut e820 = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, 0x10_0000 - EBDA_START, E820_RESERVED),
    ];
    for b in ram.blocks() {
        let (start, size) = (b.desc.guest_addr, b.desc.size);
        if start == 0 {
            if size > HIMEM_START {
                e820.push((HIMEM_START, size - HIMEM_START, E820_RAM));
            }
        } else if start >= HIGH_RAM_START || start >= HIMEM_START {
            e820.push((start, size, E820_RAM));
        }
    }
    for (i, (addr, size, type_)) in e820.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *type_,
        };
    }
    params.e820_entries = e820.len() as u8;

    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_ADDR)),
        mem,
    )
    .map_err(|e| BootError::BootParams(format!("{e}")))?;
    Ok(BootInfo { entry })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::RamBackendConfig;
    use vm_memory::GuestMemoryBackend;

    /// A minimal bzImage: one setup sector after the boot sector, header fields at their
    /// boot-protocol offsets, then `payload` as the protected-mode kernel.
    fn fake_bzimage(payload: &[u8], xloadflags: u16) -> Vec<u8> {
        let mut img = vec![0u8; 1024];
        img[0x1f1] = 1; // setup_sects
        img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // protocol 2.15
        img[0x211] = 1; // loadflags: LOADED_HIGH
        img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
        img[0x22c..0x230].copy_from_slice(&0x37ff_ffffu32.to_le_bytes()); // initrd_addr_max
        img[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
        img.extend_from_slice(payload);
        img
    }

    fn write_temp(name: &str, bytes: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("vmm-boot-{}-{name}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn bzimage_gets_zero_page_cmdline_initrd_and_e820() {
        let payload: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        let kernel = write_temp("bz", &fake_bzimage(&payload, XLF_KERNEL_64));
        let initrd_data = vec![0x5au8; 10_000];
        let initrd = write_temp("initrd", &initrd_data);
        let ram = GuestRam::new(&RamBackendConfig::Anonymous, 64 << 20).unwrap();
        let info = load_kernel(&ram, &kernel, Some(&initrd), Some("console=ttyS0")).unwrap();
        assert_eq!(info.entry, 0x10_0200);

        let mem = ram.memory();
        let mut loaded = vec![0u8; payload.len()];
        mem.read_slice(&mut loaded, GuestAddress(0x10_0000))
            .unwrap();
        assert_eq!(loaded, payload);

        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
        let mut cmd = vec![0u8; 14];
        mem.read_slice(&mut cmd, GuestAddress(CMDLINE_ADDR))
            .unwrap();
        assert_eq!(&cmd, b"console=ttyS0\0");
        let (rd_addr, rd_size) = ({ hdr.ramdisk_image }, { hdr.ramdisk_size });
        assert_eq!(rd_size as usize, initrd_data.len());
        assert_eq!(rd_addr % 4096, 0);
        assert!(u64::from(rd_addr) + u64::from(rd_size) <= 64 << 20);
        let mut rd = vec![0u8; initrd_data.len()];
        mem.read_slice(&mut rd, GuestAddress(u64::from(rd_addr)))
            .unwrap();
        assert_eq!(rd, initrd_data);

        let e820: Vec<(u64, u64, u32)> = params.e820_table[..params.e820_entries as usize]
            .iter()
            .map(|e| (e.addr, e.size, e.r#type))
            .collect();
        assert_eq!(
            e820,
            vec![
                (0, EBDA_START, E820_RAM),
                (EBDA_START, 0x10_0000 - EBDA_START, E820_RESERVED),
                (0x10_0000, (64 << 20) - 0x10_0000, E820_RAM),
            ]
        );
        std::fs::remove_file(kernel).unwrap();
        std::fs::remove_file(initrd).unwrap();
    }

    #[test]
    fn bzimage_without_64bit_entry_is_refused() {
        let kernel = write_temp("bz32", &fake_bzimage(&[0x90; 512], 0));
        let ram = GuestRam::new(&RamBackendConfig::Anonymous, 16 << 20).unwrap();
        assert!(matches!(
            load_kernel(&ram, &kernel, None, None),
            Err(BootError::No64BitEntry { .. })
        ));
        std::fs::remove_file(kernel).unwrap();
    }

    #[test]
    fn e820_covers_ram_above_4g() {
        let kernel = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/guests/exit");
        let ram = GuestRam::new(&RamBackendConfig::Anonymous, (3 << 30) + (8 << 20)).unwrap();
        load_kernel(&ram, &kernel, None, None).unwrap();
        let params: boot_params = ram.memory().read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap();
        let n = params.e820_entries as usize;
        let last = params.e820_table[n - 1];
        assert_eq!(
            (last.addr, last.size, last.r#type),
            (HIGH_RAM_START, 8 << 20, E820_RAM)
        );
        assert_eq!(ram.memory().num_regions(), 2);
    }

    #[test]
    fn garbage_kernel_is_refused_with_both_reasons() {
        let kernel = write_temp("junk", &[0u8; 2048]);
        let ram = GuestRam::new(&RamBackendConfig::Anonymous, 16 << 20).unwrap();
        let err = load_kernel(&ram, &kernel, None, None).unwrap_err();
        assert!(matches!(err, BootError::UnknownFormat { .. }), "{err}");
        std::fs::remove_file(kernel).unwrap();
    }

    #[test]
    fn gdt_entries_decode_to_long_mode_segments() {
        assert_eq!(GDT[1], gdt_entry(0xa09b, 0, 0xfffff));
        assert_eq!(GDT[2], gdt_entry(0xc093, 0, 0xfffff));
        assert_eq!(GDT[3], gdt_entry(0x808b, 0, 0xfffff));
        let cs = segment(GDT[1], CODE_SELECTOR);
        assert_eq!(
            (cs.l, cs.db, cs.present, cs.seg_type, cs.s),
            (1, 0, 1, 0xb, 1)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let tr = segment(GDT[3], TSS_SELECTOR);
        assert_eq!((tr.seg_type, tr.s, tr.present), (0xb, 0, 1));
    }
}
