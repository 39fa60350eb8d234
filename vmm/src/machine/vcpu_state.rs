//! Named, typed mirrors of the KVM vCPU state structs, with conversions both ways.
//!
//! kvm-bindings' serde writes KVM structs as opaque byte strings (and keeps only the header
//! of `kvm_msrs` / `kvm_cpuid2`), so the saved state uses these plain structs instead: every
//! register has a name a tool can show and diff. Reserved and padding fields are not kept;
//! they are zero when converted back. The structs are declared with cpr-format's `state!`,
//! which gives each its schema; [`VcpuState`] is the `cpu` section (one instance per vCPU).

use cpr_format::Bytes;
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_dtable, kvm_fpu, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, kvm_vcpu_events, kvm_xcr, kvm_xcrs, kvm_xsave,
};

/// Size of the legacy KVM_GET_XSAVE area (hosts with AMX need xsave2; this one has 4096).
pub const XSAVE_SIZE: usize = 4096;
/// Size of the local APIC register page KVM exposes.
pub const LAPIC_SIZE: usize = 1024;

cpr_format::state! {
    /// General-purpose registers, RIP and RFLAGS (KVM_GET_REGS).
    #[derive(Copy, Default, Eq)]
    pub struct Regs {
        #[hint(hex)] pub rax: u64,
        #[hint(hex)] pub rbx: u64,
        #[hint(hex)] pub rcx: u64,
        #[hint(hex)] pub rdx: u64,
        #[hint(hex)] pub rsi: u64,
        #[hint(hex)] pub rdi: u64,
        #[hint(addr)] pub rsp: u64,
        #[hint(addr)] pub rbp: u64,
        #[hint(hex)] pub r8: u64,
        #[hint(hex)] pub r9: u64,
        #[hint(hex)] pub r10: u64,
        #[hint(hex)] pub r11: u64,
        #[hint(hex)] pub r12: u64,
        #[hint(hex)] pub r13: u64,
        #[hint(hex)] pub r14: u64,
        #[hint(hex)] pub r15: u64,
        #[hint(addr)] pub rip: u64,
        #[hint(flags)] pub rflags: u64,
    }

    /// A segment register, descriptor cache included.
    #[derive(Copy, Default, Eq)]
    pub struct Segment {
        #[hint(addr)] pub base: u64,
        #[hint(hex)] pub limit: u32,
        #[hint(hex)] pub selector: u16,
        /// Descriptor type field (4 bits).
        #[hint(hex)] pub seg_type: u8,
        pub present: u8,
        pub dpl: u8,
        pub db: u8,
        pub s: u8,
        pub l: u8,
        pub g: u8,
        pub avl: u8,
        pub unusable: u8,
    }

    /// GDTR / IDTR.
    #[derive(Copy, Default, Eq)]
    pub struct DescriptorTable {
        #[hint(addr)] pub base: u64,
        #[hint(hex)] pub limit: u16,
    }

    /// Segment, descriptor-table and control registers (KVM_GET_SREGS).
    #[derive(Copy, Default, Eq)]
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
        #[hint(flags)] pub cr0: u64,
        #[hint(addr)] pub cr2: u64,
        #[hint(addr)] pub cr3: u64,
        #[hint(flags)] pub cr4: u64,
        #[hint(hex)] pub cr8: u64,
        #[hint(flags)] pub efer: u64,
        #[hint(hex)] pub apic_base: u64,
        /// Pending external interrupt, one bit per vector (KVM sets at most one).
        #[hint(hex)] pub interrupt_bitmap: [u64; 4],
    }

    /// x87 / SSE state as KVM_GET_FPU reports it.
    #[derive(Default, Eq)]
    pub struct Fpu {
        /// ST0..ST7, 16 bytes each (80-bit value plus padding).
        pub fpr: Vec<[u8; 16]>,
        #[hint(hex)] pub fcw: u16,
        #[hint(hex)] pub fsw: u16,
        #[hint(hex)] pub ftwx: u8,
        #[hint(hex)] pub last_opcode: u16,
        #[hint(addr)] pub last_ip: u64,
        #[hint(addr)] pub last_dp: u64,
        pub xmm: Vec<[u8; 16]>,
        #[hint(hex)] pub mxcsr: u32,
    }

    /// The XSAVE area (legacy region, header and extended components), as KVM lays it out.
    #[derive(Eq)]
    pub struct Xsave {
        /// 4096 bytes (KVM_GET_XSAVE).
        pub region: Bytes,
    }

    /// One extended control register.
    #[derive(Copy, Default, Eq)]
    pub struct Xcr {
        pub xcr: u32,
        #[hint(hex)] pub value: u64,
    }

    /// Extended control registers (KVM_GET_XCRS).
    #[derive(Default, Eq)]
    pub struct Xcrs {
        #[hint(hex)] pub flags: u32,
        pub xcrs: Vec<Xcr>,
    }

    /// The local APIC register page.
    #[derive(Eq)]
    pub struct Lapic {
        /// 1024 bytes: registers at their MMIO offsets (0x20 ID, 0x350 LVT LINT0, ...).
        pub regs: Bytes,
    }

    /// Debug registers (KVM_GET_DEBUGREGS).
    #[derive(Copy, Default, Eq)]
    pub struct DebugRegs {
        #[hint(addr)] pub db: [u64; 4],
        #[hint(hex)] pub dr6: u64,
        #[hint(hex)] pub dr7: u64,
        #[hint(hex)] pub flags: u64,
    }

    /// KVM_MP_STATE_* (0 runnable, 1 uninitialized, 2 init received, 3 halted, 4 SIPI received).
    #[derive(Copy, Default, Eq)]
    pub struct MpState {
        pub mp_state: u32,
    }

    /// One CPUID leaf / subleaf.
    #[derive(Copy, Default, Eq)]
    pub struct CpuidEntry {
        #[hint(hex)] pub function: u32,
        #[hint(hex)] pub index: u32,
        #[hint(hex)] pub flags: u32,
        #[hint(hex)] pub eax: u32,
        #[hint(hex)] pub ebx: u32,
        #[hint(hex)] pub ecx: u32,
        #[hint(hex)] pub edx: u32,
    }

    /// One model-specific register.
    #[derive(Copy, Default, Eq)]
    pub struct MsrEntry {
        #[hint(hex)] pub index: u32,
        #[hint(hex)] pub data: u64,
    }

    /// Exception being injected or pending.
    #[derive(Copy, Default, Eq)]
    pub struct ExceptionEvent {
        pub injected: u8,
        pub nr: u8,
        pub has_error_code: u8,
        pub pending: u8,
        #[hint(hex)] pub error_code: u32,
    }

    /// External or soft interrupt being injected, and the interrupt shadow.
    #[derive(Copy, Default, Eq)]
    pub struct InterruptEvent {
        pub injected: u8,
        #[hint(hex)] pub nr: u8,
        pub soft: u8,
        pub shadow: u8,
    }

    /// NMI state.
    #[derive(Copy, Default, Eq)]
    pub struct NmiEvent {
        pub injected: u8,
        pub pending: u8,
        pub masked: u8,
    }

    /// SMM state.
    #[derive(Copy, Default, Eq)]
    pub struct SmiEvent {
        pub smm: u8,
        pub pending: u8,
        pub smm_inside_nmi: u8,
        pub latched_init: u8,
    }

    /// Pending and injected exceptions, interrupts, NMI and SMI (KVM_GET_VCPU_EVENTS).
    #[derive(Copy, Default, Eq)]
    pub struct VcpuEvents {
        pub exception: ExceptionEvent,
        pub interrupt: InterruptEvent,
        pub nmi: NmiEvent,
        #[hint(hex)] pub sipi_vector: u32,
        /// KVM_VCPUEVENT_VALID_* bits saying which parts are meaningful.
        #[hint(flags)] pub flags: u32,
        pub smi: SmiEvent,
        pub triple_fault_pending: u8,
        pub exception_has_payload: u8,
        #[hint(hex)] pub exception_payload: u64,
    }

    /// Everything KVM holds for one vCPU. Field order is the save order (see `Vcpu::save`).
    #[section(name = "cpu", version = 1, min_version = 1, required = true)]
    #[derive(Eq)]
    pub struct VcpuState {
        /// vCPU index (= APIC id).
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
        /// Guest TSC frequency. KVM_CAP_TSC_CONTROL is absent here, so restore checks it.
        #[hint(unit("kHz"))] pub tsc_khz: u32,
        pub msrs: Vec<MsrEntry>,
        pub events: VcpuEvents,
    }
}

macro_rules! copy_fields {
    ($from:expr, $to:ident { $($f:ident),* $(,)? } $(, $rest:expr)?) => {
        $to { $($f: $from.$f,)* $(..$rest)? }
    };
}

/// `From` both ways between a KVM struct and its named state when every field is a plain
/// copy; whatever else the KVM struct has (padding, reserved words) is zero on the way in.
macro_rules! both_ways {
    ($kvm:ident <=> $ours:ident { $($f:ident),* $(,)? }) => {
        impl From<&$kvm> for $ours {
            fn from(k: &$kvm) -> Self {
                copy_fields!(k, $ours { $($f),* })
            }
        }

        impl From<&$ours> for $kvm {
            // Some KVM structs have no other field: the update is then a no-op.
            #[allow(clippy::needless_update)]
            fn from(o: &$ours) -> Self {
                copy_fields!(o, $kvm { $($f),* }, Default::default())
            }
        }
    };
}

both_ways!(kvm_regs <=> Regs {
    rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp, r8, r9, r10, r11, r12, r13, r14, r15, rip, rflags
});
both_ways!(kvm_dtable <=> DescriptorTable { base, limit });
both_ways!(kvm_debugregs <=> DebugRegs { db, dr6, dr7, flags });
both_ways!(kvm_mp_state <=> MpState { mp_state });
both_ways!(kvm_cpuid_entry2 <=> CpuidEntry { function, index, flags, eax, ebx, ecx, edx });
both_ways!(kvm_msr_entry <=> MsrEntry { index, data });

impl From<&kvm_segment> for Segment {
    fn from(k: &kvm_segment) -> Self {
        Segment {
            seg_type: k.type_,
            ..copy_fields!(
                k,
                Segment {
                    base,
                    limit,
                    selector,
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
}

impl From<&Segment> for kvm_segment {
    fn from(n: &Segment) -> Self {
        kvm_segment {
            type_: n.seg_type,
            ..copy_fields!(
                n,
                kvm_segment {
                    base,
                    limit,
                    selector,
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

/// Byte offsets in the XSAVE legacy region (the FXSAVE layout, Intel SDM vol. 1, 10.5.1).
mod fxsave {
    pub const FCW: usize = 0;
    pub const FSW: usize = 2;
    /// Abridged tag word: one byte, one bit per register.
    pub const FTW: usize = 4;
    pub const FOP: usize = 6;
    pub const FIP: usize = 8;
    pub const FDP: usize = 16;
    pub const ST: usize = 32;
    pub const XMM: usize = 160;
    pub const END: usize = 416;
}

/// XSTATE_BV, the header's bitmap of components whose state the area holds (0 = init).
const XSTATE_BV: usize = 512;
const XFEATURE_FP: u8 = 1 << 0;
const XFEATURE_SSE: u8 = 1 << 1;

impl Xsave {
    /// Both the x87 and the SSE component hold live state (XSTATE_BV bits 0 and 1). Then
    /// the legacy region is a copy of the kernel's buffer that KVM_GET_FPU reads and
    /// KVM_SET_XSAVE overwrites every byte `kvm_fpu` covers (x87 state and XMM). For a
    /// component in its init state KVM_GET_XSAVE reports init values, while the kernel's
    /// buffer (which KVM_GET_FPU reads) may still hold what the guest or a KVM_SET_FPU
    /// left there.
    pub fn fp_and_sse_live(&self) -> bool {
        self.region
            .get(XSTATE_BV)
            .is_some_and(|bv| bv & (XFEATURE_FP | XFEATURE_SSE) == XFEATURE_FP | XFEATURE_SSE)
    }
}

impl Fpu {
    /// The x87/SSE state as KVM_GET_FPU reports it, read from an XSAVE area instead (one
    /// ioctl less per vCPU save). KVM fills `kvm_fpu` from the same FXSAVE-format region of
    /// the guest's FPU state that KVM_GET_XSAVE copies out first: fcw, fsw, the abridged
    /// tag byte, fop, the 64-bit FIP/FDP, ST0-7 and XMM0-15 (and MXCSR as zero, as KVM
    /// leaves it). Exact only when
    /// [`Xsave::fp_and_sse_live`] (the vcpu tests compare the two on a vCPU whose guest
    /// loaded x87, SSE and MXCSR values).
    ///
    /// `None` if `region` is shorter than the legacy region.
    pub fn from_xsave(region: &[u8]) -> Option<Fpu> {
        let r = region.get(..fxsave::END)?;
        let u16_at = |o: usize| u16::from_le_bytes([r[o], r[o + 1]]);
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&r[o..o + 8]);
            u64::from_le_bytes(b)
        };
        let regs = |from: usize, to: usize| -> Vec<[u8; 16]> {
            r[from..to]
                .chunks_exact(16)
                .map(|c| {
                    let mut b = [0u8; 16];
                    b.copy_from_slice(c);
                    b
                })
                .collect()
        };
        Some(Fpu {
            fpr: regs(fxsave::ST, fxsave::XMM),
            fcw: u16_at(fxsave::FCW),
            fsw: u16_at(fxsave::FSW),
            ftwx: r[fxsave::FTW],
            last_opcode: u16_at(fxsave::FOP),
            last_ip: u64_at(fxsave::FIP),
            last_dp: u64_at(fxsave::FDP),
            xmm: regs(fxsave::XMM, fxsave::END),
            // KVM_GET_FPU never fills `mxcsr` (KVM copies every other field from the
            // buffer but not that one): the MXCSR a loader needs is in the XSAVE area.
            mxcsr: 0,
        })
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

impl From<&kvm_xsave> for Xsave {
    fn from(x: &kvm_xsave) -> Self {
        Xsave {
            region: x
                .region
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect::<Vec<u8>>()
                .into(),
        }
    }
}

impl From<&Xsave> for kvm_xsave {
    fn from(x: &Xsave) -> Self {
        let mut k = kvm_xsave::default();
        for (dst, src) in k.region.iter_mut().zip(x.region.chunks_exact(4)) {
            *dst = u32::from_le_bytes([src[0], src[1], src[2], src[3]]);
        }
        k
    }
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
            regs: l.regs.iter().map(|b| *b as u8).collect::<Vec<u8>>().into(),
        }
    }
}

impl From<&Lapic> for kvm_lapic_state {
    fn from(l: &Lapic) -> Self {
        let mut k = kvm_lapic_state::default();
        for (dst, src) in k.regs.iter_mut().zip(l.regs.iter()) {
            *dst = *src as _;
        }
        k
    }
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

#[cfg(test)]
#[path = "vcpu_state_tests.rs"]
mod tests;
