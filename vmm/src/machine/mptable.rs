//! Intel MultiProcessor Specification 1.4 table, so a Linux guest without ACPI finds its
//! CPUs, the IOAPIC and the ISA interrupt routing (as Firecracker provides).
//!
//! Layout at [`MPTABLE_START`] (inside the range e820 reports reserved): the 16-byte
//! floating pointer, then the configuration table: header, one processor entry per vCPU,
//! the ISA bus, the IOAPIC, 16 I/O interrupt entries (ISA IRQ n -> IOAPIC pin n, matching
//! KVM's default GSI routing) and the two local interrupt entries (LINT0 ExtINT, LINT1
//! NMI).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::boot::BootError;

pub const MPTABLE_START: u64 = 0x9fc00;
pub const APIC_DEFAULT_BASE: u32 = 0xfee0_0000;
pub const IOAPIC_DEFAULT_BASE: u32 = 0xfec0_0000;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const ISA_IRQS: u8 = 16;
const MP_IRQ_INT: u8 = 0;
const MP_IRQ_NMI: u8 = 1;
const MP_IRQ_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
/// Family 6 signature and FPU | APIC feature flags for processor entries.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// The table bytes for `vcpus` CPUs, to be written at `MPTABLE_START`.
pub fn build(vcpus: u8) -> Vec<u8> {
    let ioapic_id = vcpus; // APIC ids 0..vcpus belong to the CPUs
    let mut entries = Vec::new();
    for id in 0..vcpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 };
        entries.extend_from_slice(&[0, id, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
    }
    entries.extend_from_slice(&[1, 0]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_DEFAULT_BASE.to_le_bytes());
    for irq in 0..ISA_IRQS {
        // type, irq type, flags (conforming), source bus, source IRQ, IOAPIC id, pin
        entries.extend_from_slice(&[3, MP_IRQ_INT, 0, 0, 0, irq, ioapic_id, irq]);
    }
    entries.extend_from_slice(&[4, MP_IRQ_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[4, MP_IRQ_NMI, 0, 0, 0, 0, 0xff, 1]);
    let entry_count = u16::from(vcpus) + 1 + 1 + u16::from(ISA_IRQS) + 2;

    let mut table = Vec::new();
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"RUST-VMM");
    table.extend_from_slice(b"CPR-VMM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&entry_count.to_le_bytes());
    table.extend_from_slice(&APIC_DEFAULT_BASE.to_le_bytes());
    table.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&((MPTABLE_START + 16) as u32).to_le_bytes());
    fp.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // length 16 bytes, rev 1.4, checksum, features
    fp[10] = checksum(&fp);
    fp.extend_from_slice(&table);
    fp
}

pub fn write(mem: &GuestMemoryMmap, vcpus: u8) -> Result<(), BootError> {
    mem.write_slice(&build(vcpus), GuestAddress(MPTABLE_START))
        .map_err(|source| BootError::WriteMemory {
            addr: MPTABLE_START,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_well_formed() {
        for vcpus in [1u8, 4, 254] {
            let t = build(vcpus);
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(t[..16].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
            let phys = u32::from_le_bytes([t[4], t[5], t[6], t[7]]) as u64;
            assert_eq!(phys, MPTABLE_START + 16);
            let cfg = &t[16..];
            assert_eq!(&cfg[..4], b"PCMP");
            let len = u16::from_le_bytes([cfg[4], cfg[5]]) as usize;
            assert_eq!(len, cfg.len());
            assert_eq!(cfg.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
            let count = u16::from_le_bytes([cfg[34], cfg[35]]);
            // Walk the entries: processors are 20 bytes, everything else 8.
            let (mut off, mut n, mut cpus, mut bsp) = (44, 0, 0, 0);
            while off < len {
                match cfg[off] {
                    0 => {
                        cpus += 1;
                        if cfg[off + 3] & CPU_BSP != 0 {
                            bsp += 1;
                        }
                        off += 20;
                    }
                    1..=4 => off += 8,
                    t => panic!("unknown entry type {t}"),
                }
                n += 1;
            }
            assert_eq!(off, len);
            assert_eq!(n, count);
            assert_eq!((cpus, bsp), (vcpus, 1));
        }
    }
}
