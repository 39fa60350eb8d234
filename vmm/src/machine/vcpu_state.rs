//! Named, typed mirrors of the KVM vCPU state structs, with conversions both ways.
//!
//! kvm-bindings' serde writes KVM structs as opaque byte strings (and keeps only the header
//! of `kvm_msrs` / `kvm_cpuid2`), so the saved state uses these plain structs instead: every
//! register has a name a tool can show and diff. Reserved and padding fields are not kept;
//! they are zero when converted back.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_dtable, kvm_fpu, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, kvm_vcpu_events, kvm_xcr, kvm_xcrs, kvm_xsave,
};
use serde::{Deserialize, Serialize};

/// Size of the legacy KVM_GET_XSAVE area (hosts with AMX need xsave2; this one has 4096).
pub const XSAVE_SIZE: usize = 4096;
/// Size of the local APIC register page KVM exposes.
pub const LAPIC_SIZE: usize = 1024;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Regs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
}

macro_rules! copy_fields {
    ($from:expr, $to:ident { $($f:ident),* $(,)? } $(, $rest:expr)?) => {
        $to { $($f: $from.$f,)* $(..$rest)? }
    };
}

impl From<&kvm_regs> for Regs {
    fn from(r: &kvm_regs) -> Self {
        copy_fields!(
            r,
            Regs {
                rax,
                rbx,
                rcx,
                rdx,
                rsi,
                rdi,
                rsp,
                rbp,
                r8,
                r9,
                r10,
                r11,
                r12,
                r13,
                r14,
                r15,
                rip,
                rflags
            }
        )
    }
}

impl From<&Regs> for kvm_regs {
    fn from(r: &Regs) -> Self {
        copy_fields!(
            r,
            kvm_regs {
                rax,
                rbx,
                rcx,
                rdx,
                rsi,
                rdi,
                rsp,
                rbp,
                r8,
                r9,
                r10,
                r11,
                r12,
                r13,
                r14,
                r15,
                rip,
                rflags
            }
        )
    }
}

/// A segment register, descriptor cache included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub base: u64,
    pub limit: u32,
    pub selector: u16,
    #[serde(rename = "type")]
    pub type_: u8,
    pub present: u8,
    pub dpl: u8,
    pub db: u8,
    pub s: u8,
    pub l: u8,
    pub g: u8,
    pub avl: u8,
    pub unusable: u8,
}

impl From<&kvm_segment> for Segment {
    fn from(s: &kvm_segment) -> Self {
        copy_fields!(
            s,
            Segment {
                base,
                limit,
                selector,
                type_,
                present,
                dpl,
                db,
                s,
                l,
                g,
                avl,
                unusable
            }
        )
    }
}

impl From<&Segment> for kvm_segment {
    fn from(s: &Segment) -> Self {
        copy_fields!(
            s,
            kvm_segment {
                base,
                limit,
                selector,
                type_,
                present,
                dpl,
                db,
                s,
                l,
                g,
                avl,
                unusable
            },
            Default::default()
        )
    }
}

/// GDTR / IDTR.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescriptorTable {
    pub base: u64,
    pub limit: u16,
}

impl From<&kvm_dtable> for DescriptorTable {
    fn from(d: &kvm_dtable) -> Self {
        DescriptorTable {
            base: d.base,
            limit: d.limit,
        }
    }
}

impl From<&DescriptorTable> for kvm_dtable {
    fn from(d: &DescriptorTable) -> Self {
        kvm_dtable {
            base: d.base,
            limit: d.limit,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sregs {
    pub cs: Segment,
    pub ds: Segment,
    pub es: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub ss: Segment,
    pub tr: Segment,
    pub ldt: Segment,
    pub gdt: DescriptorTable,
    pub idt: DescriptorTable,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
    pub apic_base: u64,
    /// Pending external interrupt, one bit per vector (KVM sets at most one).
    pub interrupt_bitmap: [u64; 4],
}

impl From<&kvm_sregs> for Sregs {
    fn from(s: &kvm_sregs) -> Self {
        Sregs {
            cs: (&s.cs).into(),
            ds: (&s.ds).into(),
            es: (&s.es).into(),
            fs: (&s.fs).into(),
            gs: (&s.gs).into(),
            ss: (&s.ss).into(),
            tr: (&s.tr).into(),
            ldt: (&s.ldt).into(),
            gdt: (&s.gdt).into(),
            idt: (&s.idt).into(),
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            cr8: s.cr8,
            efer: s.efer,
            apic_base: s.apic_base,
            interrupt_bitmap: s.interrupt_bitmap,
        }
    }
}

impl From<&Sregs> for kvm_sregs {
    fn from(s: &Sregs) -> Self {
        kvm_sregs {
            cs: (&s.cs).into(),
            ds: (&s.ds).into(),
            es: (&s.es).into(),
            fs: (&s.fs).into(),
            gs: (&s.gs).into(),
            ss: (&s.ss).into(),
            tr: (&s.tr).into(),
            ldt: (&s.ldt).into(),
            gdt: (&s.gdt).into(),
            idt: (&s.idt).into(),
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            cr8: s.cr8,
            efer: s.efer,
            apic_base: s.apic_base,
            interrupt_bitmap: s.interrupt_bitmap,
        }
    }
}

/// x87 / SSE state as KVM_GET_FPU reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fpu {
    /// ST0..ST7, 16 bytes each (80-bit value plus padding).
    pub fpr: Vec<[u8; 16]>,
    pub fcw: u16,
    pub fsw: u16,
    pub ftwx: u8,
    pub last_opcode: u16,
    pub last_ip: u64,
    pub last_dp: u64,
    pub xmm: Vec<[u8; 16]>,
    pub mxcsr: u32,
}

impl From<&kvm_fpu> for Fpu {
    fn from(f: &kvm_fpu) -> Self {
        Fpu {
            fpr: f.fpr.to_vec(),
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm.to_vec(),
            mxcsr: f.mxcsr,
        }
    }
}

/// Copies `src` into the front of `dst` (shorter input leaves zeros; longer is cut).
fn fill<T: Copy>(dst: &mut [T], src: &[T]) {
    let n = dst.len().min(src.len());
    dst[..n].copy_from_slice(&src[..n]);
}

impl From<&Fpu> for kvm_fpu {
    fn from(f: &Fpu) -> Self {
        let mut k = kvm_fpu {
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            mxcsr: f.mxcsr,
            ..Default::default()
        };
        fill(&mut k.fpr, &f.fpr);
        fill(&mut k.xmm, &f.xmm);
        k
    }
}

/// The XSAVE area (legacy region, header and extended components), as KVM lays it out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xsave {
    pub region: Vec<u32>,
}

impl From<&kvm_xsave> for Xsave {
    fn from(x: &kvm_xsave) -> Self {
        Xsave {
            region: x.region.to_vec(),
        }
    }
}

impl From<&Xsave> for kvm_xsave {
    fn from(x: &Xsave) -> Self {
        let mut k = kvm_xsave::default();
        fill(&mut k.region, &x.region);
        k
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xcr {
    pub xcr: u32,
    pub value: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xcrs {
    pub flags: u32,
    pub xcrs: Vec<Xcr>,
}

impl From<&kvm_xcrs> for Xcrs {
    fn from(x: &kvm_xcrs) -> Self {
        let n = (x.nr_xcrs as usize).min(x.xcrs.len());
        Xcrs {
            flags: x.flags,
            xcrs: x.xcrs[..n]
                .iter()
                .map(|c| Xcr {
                    xcr: c.xcr,
                    value: c.value,
                })
                .collect(),
        }
    }
}

impl From<&Xcrs> for kvm_xcrs {
    fn from(x: &Xcrs) -> Self {
        let mut k = kvm_xcrs {
            flags: x.flags,
            ..Default::default()
        };
        let n = x.xcrs.len().min(k.xcrs.len());
        for (dst, src) in k.xcrs.iter_mut().zip(&x.xcrs[..n]) {
            *dst = kvm_xcr {
                xcr: src.xcr,
                value: src.value,
                ..Default::default()
            };
        }
        k.nr_xcrs = n as u32;
        k
    }
}

/// The local APIC register page (1024 bytes: registers at their MMIO offsets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lapic {
    pub regs: Vec<u8>,
}

impl Lapic {
    /// A 32-bit APIC register at its MMIO offset (e.g. 0x20 = ID, 0x350 = LVT LINT0).
    pub fn reg(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        if let Some(s) = self.regs.get(offset..offset + 4) {
            b.copy_from_slice(s);
        }
        u32::from_le_bytes(b)
    }

    pub fn set_reg(&mut self, offset: usize, value: u32) {
        if let Some(s) = self.regs.get_mut(offset..offset + 4) {
            s.copy_from_slice(&value.to_le_bytes());
        }
    }
}

impl From<&kvm_lapic_state> for Lapic {
    fn from(l: &kvm_lapic_state) -> Self {
        Lapic {
            regs: l.regs.iter().map(|b| *b as u8).collect(),
        }
    }
}

impl From<&Lapic> for kvm_lapic_state {
    fn from(l: &Lapic) -> Self {
        let mut k = kvm_lapic_state::default();
        for (dst, src) in k.regs.iter_mut().zip(&l.regs) {
            *dst = *src as _;
        }
        k
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugRegs {
    pub db: [u64; 4],
    pub dr6: u64,
    pub dr7: u64,
    pub flags: u64,
}

impl From<&kvm_debugregs> for DebugRegs {
    fn from(d: &kvm_debugregs) -> Self {
        copy_fields!(
            d,
            DebugRegs {
                db,
                dr6,
                dr7,
                flags
            }
        )
    }
}

impl From<&DebugRegs> for kvm_debugregs {
    fn from(d: &DebugRegs) -> Self {
        copy_fields!(
            d,
            kvm_debugregs {
                db,
                dr6,
                dr7,
                flags
            },
            Default::default()
        )
    }
}

/// KVM_MP_STATE_* (0 runnable, 1 uninitialized, 2 init received, 3 halted, 4 SIPI received).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MpState {
    pub mp_state: u32,
}

impl From<&kvm_mp_state> for MpState {
    fn from(m: &kvm_mp_state) -> Self {
        MpState {
            mp_state: m.mp_state,
        }
    }
}

impl From<&MpState> for kvm_mp_state {
    fn from(m: &MpState) -> Self {
        kvm_mp_state {
            mp_state: m.mp_state,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuidEntry {
    pub function: u32,
    pub index: u32,
    pub flags: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

impl From<&kvm_cpuid_entry2> for CpuidEntry {
    fn from(e: &kvm_cpuid_entry2) -> Self {
        copy_fields!(
            e,
            CpuidEntry {
                function,
                index,
                flags,
                eax,
                ebx,
                ecx,
                edx
            }
        )
    }
}

impl From<&CpuidEntry> for kvm_cpuid_entry2 {
    fn from(e: &CpuidEntry) -> Self {
        copy_fields!(
            e,
            kvm_cpuid_entry2 {
                function,
                index,
                flags,
                eax,
                ebx,
                ecx,
                edx
            },
            Default::default()
        )
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsrEntry {
    pub index: u32,
    pub data: u64,
}

impl From<&kvm_msr_entry> for MsrEntry {
    fn from(e: &kvm_msr_entry) -> Self {
        MsrEntry {
            index: e.index,
            data: e.data,
        }
    }
}

impl From<&MsrEntry> for kvm_msr_entry {
    fn from(e: &MsrEntry) -> Self {
        kvm_msr_entry {
            index: e.index,
            data: e.data,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExceptionEvent {
    pub injected: u8,
    pub nr: u8,
    pub has_error_code: u8,
    pub pending: u8,
    pub error_code: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterruptEvent {
    pub injected: u8,
    pub nr: u8,
    pub soft: u8,
    pub shadow: u8,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NmiEvent {
    pub injected: u8,
    pub pending: u8,
    pub masked: u8,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmiEvent {
    pub smm: u8,
    pub pending: u8,
    pub smm_inside_nmi: u8,
    pub latched_init: u8,
}

/// Pending and injected exceptions, interrupts, NMI and SMI (KVM_GET_VCPU_EVENTS).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuEvents {
    pub exception: ExceptionEvent,
    pub interrupt: InterruptEvent,
    pub nmi: NmiEvent,
    pub sipi_vector: u32,
    /// KVM_VCPUEVENT_VALID_* bits saying which parts are meaningful.
    pub flags: u32,
    pub smi: SmiEvent,
    pub triple_fault_pending: u8,
    pub exception_has_payload: u8,
    pub exception_payload: u64,
}

impl From<&kvm_vcpu_events> for VcpuEvents {
    fn from(e: &kvm_vcpu_events) -> Self {
        VcpuEvents {
            exception: copy_fields!(
                e.exception,
                ExceptionEvent {
                    injected,
                    nr,
                    has_error_code,
                    pending,
                    error_code
                }
            ),
            interrupt: copy_fields!(
                e.interrupt,
                InterruptEvent {
                    injected,
                    nr,
                    soft,
                    shadow
                }
            ),
            nmi: copy_fields!(
                e.nmi,
                NmiEvent {
                    injected,
                    pending,
                    masked
                }
            ),
            sipi_vector: e.sipi_vector,
            flags: e.flags,
            smi: copy_fields!(
                e.smi,
                SmiEvent {
                    smm,
                    pending,
                    smm_inside_nmi,
                    latched_init
                }
            ),
            triple_fault_pending: e.triple_fault.pending,
            exception_has_payload: e.exception_has_payload,
            exception_payload: e.exception_payload,
        }
    }
}

impl From<&VcpuEvents> for kvm_vcpu_events {
    fn from(e: &VcpuEvents) -> Self {
        let mut k = kvm_vcpu_events {
            sipi_vector: e.sipi_vector,
            flags: e.flags,
            exception_has_payload: e.exception_has_payload,
            exception_payload: e.exception_payload,
            ..Default::default()
        };
        k.exception.injected = e.exception.injected;
        k.exception.nr = e.exception.nr;
        k.exception.has_error_code = e.exception.has_error_code;
        k.exception.pending = e.exception.pending;
        k.exception.error_code = e.exception.error_code;
        k.interrupt.injected = e.interrupt.injected;
        k.interrupt.nr = e.interrupt.nr;
        k.interrupt.soft = e.interrupt.soft;
        k.interrupt.shadow = e.interrupt.shadow;
        k.nmi.injected = e.nmi.injected;
        k.nmi.pending = e.nmi.pending;
        k.nmi.masked = e.nmi.masked;
        k.smi.smm = e.smi.smm;
        k.smi.pending = e.smi.pending;
        k.smi.smm_inside_nmi = e.smi.smm_inside_nmi;
        k.smi.latched_init = e.smi.latched_init;
        k.triple_fault.pending = e.triple_fault_pending;
        k
    }
}

/// Everything KVM holds for one vCPU. Field order is the save order (see `vcpu::save`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuState {
    pub index: u32,
    pub mp_state: MpState,
    pub regs: Regs,
    pub sregs: Sregs,
    pub fpu: Fpu,
    pub xsave: Xsave,
    pub xcrs: Xcrs,
    pub debugregs: DebugRegs,
    pub lapic: Lapic,
    pub cpuid: Vec<CpuidEntry>,
    /// Guest TSC frequency. KVM_CAP_TSC_CONTROL is absent here, so restore only checks it.
    pub tsc_khz: u32,
    pub msrs: Vec<MsrEntry>,
    pub events: VcpuEvents,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(seed: u64) -> kvm_segment {
        kvm_segment {
            base: seed * 0x1000,
            limit: 0xfffff,
            selector: seed as u16 * 8,
            type_: 0xb,
            present: 1,
            dpl: 0,
            db: 0,
            s: 1,
            l: 1,
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        }
    }

    #[test]
    fn regs_round_trip() {
        let k = kvm_regs {
            rax: 1,
            rbx: 2,
            rcx: 3,
            rdx: 4,
            rsi: 5,
            rdi: 6,
            rsp: 7,
            rbp: 8,
            r8: 9,
            r9: 10,
            r10: 11,
            r11: 12,
            r12: 13,
            r13: 14,
            r14: 15,
            r15: 16,
            rip: 0x100000,
            rflags: 0x202,
        };
        let named = Regs::from(&k);
        assert_eq!(named.r15, 16);
        assert_eq!(kvm_regs::from(&named), k);
    }

    #[test]
    fn sregs_round_trip() {
        let k = kvm_sregs {
            cs: seg(1),
            ds: seg(2),
            es: seg(3),
            fs: seg(4),
            gs: seg(5),
            ss: seg(6),
            tr: seg(7),
            ldt: seg(8),
            gdt: kvm_dtable {
                base: 0x500,
                limit: 31,
                padding: [0; 3],
            },
            idt: kvm_dtable {
                base: 0x520,
                limit: 7,
                padding: [0; 3],
            },
            cr0: 0x8000_0011,
            cr2: 0xdead,
            cr3: 0x9000,
            cr4: 0x20,
            cr8: 1,
            efer: 0x500,
            apic_base: 0xfee0_0900,
            interrupt_bitmap: [0, 1 << 3, 0, 0],
        };
        let named = Sregs::from(&k);
        assert_eq!(named.tr.selector, 56);
        assert_eq!(named.gdt.base, 0x500);
        assert_eq!(kvm_sregs::from(&named), k);
    }

    #[test]
    fn fpu_xsave_xcrs_round_trip() {
        let mut f = kvm_fpu {
            fcw: 0x37f,
            fsw: 1,
            ftwx: 2,
            last_opcode: 3,
            last_ip: 4,
            last_dp: 5,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        f.fpr[7][9] = 0x40;
        f.xmm[15][0] = 0x11;
        assert_eq!(kvm_fpu::from(&Fpu::from(&f)), f);

        let mut x = kvm_xsave::default();
        for (i, w) in x.region.iter_mut().enumerate() {
            *w = i as u32 * 7;
        }
        let named = Xsave::from(&x);
        assert_eq!(named.region.len() * 4, XSAVE_SIZE);
        assert_eq!(kvm_xsave::from(&named).region, x.region);

        let mut c = kvm_xcrs {
            nr_xcrs: 1,
            flags: 0,
            ..Default::default()
        };
        c.xcrs[0].value = 0x7;
        let named = Xcrs::from(&c);
        assert_eq!(named.xcrs, vec![Xcr { xcr: 0, value: 7 }]);
        assert_eq!(kvm_xcrs::from(&named), c);
    }

    #[test]
    fn lapic_debugregs_mpstate_round_trip() {
        let mut l = kvm_lapic_state::default();
        for (i, b) in l.regs.iter_mut().enumerate() {
            *b = (i % 251) as _;
        }
        let named = Lapic::from(&l);
        assert_eq!(named.regs.len(), LAPIC_SIZE);
        assert_eq!(kvm_lapic_state::from(&named).regs, l.regs);
        let mut named = named;
        named.set_reg(0x350, 0x700);
        assert_eq!(named.reg(0x350), 0x700);

        let d = kvm_debugregs {
            db: [1, 2, 3, 4],
            dr6: 0xffff0ff0,
            dr7: 0x400,
            flags: 0,
            reserved: [0; 9],
        };
        assert_eq!(kvm_debugregs::from(&DebugRegs::from(&d)), d);
        let m = kvm_mp_state { mp_state: 3 };
        assert_eq!(kvm_mp_state::from(&MpState::from(&m)), m);
    }

    #[test]
    fn cpuid_msr_events_round_trip() {
        let e = kvm_cpuid_entry2 {
            function: 1,
            index: 0,
            flags: 0,
            eax: 0x806f8,
            ebx: 0x0100_0800,
            ecx: 0x8000_0000,
            edx: 0x10,
            padding: [0; 3],
        };
        assert_eq!(kvm_cpuid_entry2::from(&CpuidEntry::from(&e)), e);
        let m = kvm_msr_entry {
            index: 0x10,
            reserved: 0,
            data: 0x1234,
        };
        assert_eq!(kvm_msr_entry::from(&MsrEntry::from(&m)), m);

        let mut ev = kvm_vcpu_events {
            sipi_vector: 9,
            flags: 0x1f,
            exception_has_payload: 1,
            exception_payload: 0xbeef,
            ..Default::default()
        };
        ev.exception.injected = 1;
        ev.exception.nr = 14;
        ev.exception.has_error_code = 1;
        ev.exception.error_code = 2;
        ev.interrupt.injected = 1;
        ev.interrupt.nr = 0x20;
        ev.interrupt.shadow = 1;
        ev.nmi.masked = 1;
        ev.smi.latched_init = 1;
        ev.triple_fault.pending = 1;
        let named = VcpuEvents::from(&ev);
        assert_eq!(named.interrupt.nr, 0x20);
        assert_eq!(kvm_vcpu_events::from(&named), ev);
    }
}
