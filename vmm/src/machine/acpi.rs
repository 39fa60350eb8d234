//! Minimal ACPI tables (RSDP, XSDT, FADT, DSDT, MADT), so a Linux guest finds its CPUs and the
//! IOAPIC. Distribution kernels are often built without MP-table parsing
//! (CONFIG_X86_MPPARSE is off in Debian's cloud kernel): without ACPI they boot one CPU in
//! PIC virtual-wire mode whatever `-smp` says.
//!
//! The platform is "hardware-reduced" ACPI (FADT flag), as Firecracker and Cloud Hypervisor
//! do: no PM timer, SCI or fixed-feature registers to emulate. Linux then runs without the
//! legacy PIC and maps no ISA interrupt by default, so the DSDT must describe the devices
//! that use one: COM1 (PNP0501, ports 0x3f8..0x3ff, IRQ 4); without it the UART gets no
//! interrupt and userspace cannot open the console. The MADT lists one enabled local APIC per vCPU (APIC id = vCPU index) and the
//! IOAPIC with GSI base 0; ISA IRQ n is GSI n, matching KVM's default routing, so no
//! interrupt source overrides are needed.
//!
//! The tables live at [`ACPI_START`], inside the BIOS area that e820 reports reserved; the
//! RSDP is the first thing there (Linux scans 0xe0000..0xfffff for it) and its address also
//! goes into boot_params.acpi_rsdp_addr.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use linux_loader::bootparam::boot_params;

use super::boot::{BootError, ZERO_PAGE_ADDR};
use super::mptable::{APIC_DEFAULT_BASE, IOAPIC_DEFAULT_BASE};

pub const ACPI_START: u64 = 0xe_0000;
const OEM_ID: &[u8; 6] = b"CPRVMM";
const OEM_TABLE_ID: &[u8; 8] = b"CPRVMM  ";
const CREATOR_ID: &[u8; 4] = b"CPRV";
const HEADER_LEN: usize = 36;
/// FADT revision 6 (ACPI 6.x) is 276 bytes.
const FADT_LEN: usize = 276;
const FADT_FLAG_HW_REDUCED_ACPI: u32 = 1 << 20;
/// IA-PC boot architecture flags: no VGA (so Linux does not probe it). No 8042 flag: Linux
/// then skips probing a keyboard controller that is not there.
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;
const MADT_PCAT_COMPAT: u32 = 1;
const MADT_LAPIC: u8 = 0;
const MADT_IOAPIC: u8 = 1;
const LAPIC_ENABLED: u32 = 1;

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// A table: the standard 36-byte header for `signature`, then `body`; length and checksum
/// filled in.
fn table(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(HEADER_LEN + body.len());
    t.extend_from_slice(signature);
    t.extend_from_slice(&((HEADER_LEN + body.len()) as u32).to_le_bytes());
    t.push(revision);
    t.push(0); // checksum, below
    t.extend_from_slice(OEM_ID);
    t.extend_from_slice(OEM_TABLE_ID);
    t.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
    t.extend_from_slice(CREATOR_ID);
    t.extend_from_slice(&1u32.to_le_bytes()); // creator revision
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

fn put(buf: &mut [u8], offset: usize, bytes: &[u8]) {
    buf[offset..offset + bytes.len()].copy_from_slice(bytes);
}

/// AML PkgLength: the length of what follows plus the encoding itself (ACPI 6.4, 20.2.4).
fn pkg_length(content: usize) -> Vec<u8> {
    if content + 1 < 0x40 {
        vec![(content + 1) as u8]
    } else {
        let n = content + 2; // two-byte form covers up to 4095
        vec![0x40 | (n & 0xf) as u8, (n >> 4) as u8]
    }
}

/// `Name(name, value)` where `value` is already encoded AML.
fn aml_name(name: &[u8; 4], value: &[u8]) -> Vec<u8> {
    let mut v = vec![0x08];
    v.extend_from_slice(name);
    v.extend_from_slice(value);
    v
}

/// The DSDT body: `Scope(\_SB) { Device(COM1) { _HID PNP0501, _UID 0, _CRS: I/O 0x3f8..0x3ff
/// and IRQ 4 } }`.
fn dsdt_aml() -> Vec<u8> {
    // EISA id "PNP0501" compressed: three 5-bit letters, then the product number, big-endian.
    let hid = [0x0c, 0x41, 0xd0, 0x05, 0x01];
    let resources = [
        0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x00, 0x08, // I/O, 16-bit decode, 0x3f8, 8 ports
        0x22, 0x10, 0x00, // IRQ (edge, active high) mask: IRQ 4
        0x79, 0x00, // end tag
    ];
    let mut buffer = vec![0x0a, resources.len() as u8]; // BufferSize as ByteConst
    buffer.extend_from_slice(&resources);
    let mut crs = vec![0x11]; // BufferOp
    crs.extend(pkg_length(buffer.len()));
    crs.extend(buffer);

    let mut device = b"COM1".to_vec();
    device.extend(aml_name(b"_HID", &hid));
    device.extend(aml_name(b"_UID", &[0x00]));
    device.extend(aml_name(b"_CRS", &crs));
    let mut dev = vec![0x5b, 0x82]; // DeviceOp
    dev.extend(pkg_length(device.len()));
    dev.extend(device);

    let mut scope_body = b"\\_SB_".to_vec();
    scope_body.extend(dev);
    let mut scope = vec![0x10]; // ScopeOp
    scope.extend(pkg_length(scope_body.len()));
    scope.extend(scope_body);
    scope
}

fn fadt(dsdt: u64) -> Vec<u8> {
    // Offsets below are from the start of the table (ACPI 6.4, table 5.9).
    let mut body = vec![0u8; FADT_LEN - HEADER_LEN];
    let at = |o: usize| o - HEADER_LEN;
    put(&mut body, at(40), &(dsdt as u32).to_le_bytes()); // DSDT
    put(
        &mut body,
        at(109),
        &IAPC_BOOT_ARCH_VGA_NOT_PRESENT.to_le_bytes(),
    );
    put(&mut body, at(112), &FADT_FLAG_HW_REDUCED_ACPI.to_le_bytes());
    body[at(131)] = 4; // FADT minor version (6.4)
    put(&mut body, at(140), &dsdt.to_le_bytes()); // X_DSDT
    put(&mut body, at(268), b"CPRVMM\0\0"); // hypervisor vendor identity
    table(b"FACP", 6, &body)
}

fn madt(vcpus: u8) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&APIC_DEFAULT_BASE.to_le_bytes());
    body.extend_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    for id in 0..vcpus {
        body.extend_from_slice(&[MADT_LAPIC, 8, id, id]); // type, length, UID, APIC id
        body.extend_from_slice(&LAPIC_ENABLED.to_le_bytes());
    }
    // IOAPIC id after the CPUs' APIC ids, as in the MP table.
    body.extend_from_slice(&[MADT_IOAPIC, 12, vcpus, 0]);
    body.extend_from_slice(&IOAPIC_DEFAULT_BASE.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes()); // GSI base
    table(b"APIC", 5, &body)
}

fn rsdp(xsdt: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(36);
    r.extend_from_slice(b"RSD PTR ");
    r.push(0); // checksum of the first 20 bytes, below
    r.extend_from_slice(OEM_ID);
    r.push(2); // revision: ACPI 2.0+ (XSDT)
    r.extend_from_slice(&0u32.to_le_bytes()); // RSDT address: none
    r.extend_from_slice(&36u32.to_le_bytes());
    r.extend_from_slice(&xsdt.to_le_bytes());
    r.push(0); // extended checksum, below
    r.extend_from_slice(&[0; 3]);
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

/// The tables for `vcpus` CPUs, laid out from guest address `base` (the RSDP first).
pub fn build(vcpus: u8, base: u64) -> Vec<u8> {
    let align = |n: usize| (n + 15) & !15;
    let xsdt_off = align(36);
    let xsdt_len = HEADER_LEN + 2 * 8;
    let fadt_off = align(xsdt_off + xsdt_len);
    let dsdt_off = align(fadt_off + FADT_LEN);
    let dsdt = table(b"DSDT", 2, &dsdt_aml());
    let madt_off = align(dsdt_off + dsdt.len());
    let madt = madt(vcpus);
    let addr = |off: usize| base + off as u64;

    let mut xsdt_body = Vec::new();
    xsdt_body.extend_from_slice(&addr(fadt_off).to_le_bytes());
    xsdt_body.extend_from_slice(&addr(madt_off).to_le_bytes());
    let xsdt = table(b"XSDT", 1, &xsdt_body);

    let mut out = vec![0u8; madt_off + madt.len()];
    put(&mut out, 0, &rsdp(addr(xsdt_off)));
    put(&mut out, xsdt_off, &xsdt);
    put(&mut out, fadt_off, &fadt(addr(dsdt_off)));
    put(&mut out, dsdt_off, &dsdt);
    put(&mut out, madt_off, &madt);
    out
}

/// Writes the tables at [`ACPI_START`] and their address into the zero page
/// (boot_params.acpi_rsdp_addr), which `boot::load_kernel` wrote before.
pub fn write(mem: &GuestMemoryMmap, vcpus: u8) -> Result<(), BootError> {
    let err = |addr: u64| move |source| BootError::WriteMemory { addr, source };
    mem.write_slice(&build(vcpus, ACPI_START), GuestAddress(ACPI_START))
        .map_err(err(ACPI_START))?;
    let field = ZERO_PAGE_ADDR + std::mem::offset_of!(boot_params, acpi_rsdp_addr) as u64;
    mem.write_obj(ACPI_START, GuestAddress(field))
        .map_err(err(field))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    /// The table at guest address `addr`, checked: signature, length inside the blob, sum 0.
    fn table_at<'a>(blob: &'a [u8], base: u64, addr: u64, sig: &[u8; 4]) -> &'a [u8] {
        let off = (addr - base) as usize;
        assert_eq!(&blob[off..off + 4], sig);
        let len = u32_at(blob, off + 4) as usize;
        let t = &blob[off..off + len];
        assert_eq!(t.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0, "{sig:?}");
        t
    }

    #[test]
    fn pkg_length_encodings() {
        assert_eq!(pkg_length(0x3e), vec![0x3f]);
        assert_eq!(pkg_length(0x3f), vec![0x41, 0x04]);
        assert_eq!(pkg_length(0x100), vec![0x42, 0x10]);
    }

    #[test]
    fn tables_chain_from_the_rsdp_with_valid_checksums() {
        let base = ACPI_START;
        let blob = build(3, base);
        let rsdp = &blob[..36];
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(rsdp[..20].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(rsdp.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(rsdp[15], 2);

        let xsdt = table_at(&blob, base, u64_at(rsdp, 24), b"XSDT");
        assert_eq!(xsdt.len(), 36 + 16);
        let fadt = table_at(&blob, base, u64_at(xsdt, 36), b"FACP");
        assert_eq!(fadt.len(), FADT_LEN);
        assert_ne!(u32_at(fadt, 112) & FADT_FLAG_HW_REDUCED_ACPI, 0);
        let dsdt_addr = u64_at(fadt, 140);
        assert_eq!(u64::from(u32_at(fadt, 40)), dsdt_addr);
        let dsdt = table_at(&blob, base, dsdt_addr, b"DSDT");
        // Scope(\_SB) whose PkgLength covers exactly the rest of the table.
        assert_eq!(&dsdt[36..38], &[0x10, (dsdt.len() - 37) as u8]);
        assert_eq!(&dsdt[38..43], b"\\_SB_");

        let madt = table_at(&blob, base, u64_at(xsdt, 44), b"APIC");
        assert_eq!(u32_at(madt, 36), APIC_DEFAULT_BASE);
        let (mut off, mut cpus, mut ioapics) = (44, Vec::new(), 0);
        while off < madt.len() {
            match madt[off] {
                MADT_LAPIC => {
                    assert_eq!(u32_at(madt, off + 4), LAPIC_ENABLED);
                    cpus.push(madt[off + 3]);
                }
                MADT_IOAPIC => {
                    assert_eq!(u32_at(madt, off + 4), IOAPIC_DEFAULT_BASE);
                    assert_eq!(u32_at(madt, off + 8), 0);
                    ioapics += 1;
                }
                t => panic!("unexpected MADT entry type {t}"),
            }
            off += usize::from(madt[off + 1]);
        }
        assert_eq!(off, madt.len());
        assert_eq!((cpus, ioapics), (vec![0, 1, 2], 1));
        // Everything fits below the end of the BIOS area.
        assert!(base + blob.len() as u64 <= 0x10_0000);
    }
}
