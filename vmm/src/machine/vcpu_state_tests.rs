//! Round trips between the KVM structs and the named vCPU state structs.
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
    assert_eq!(named.region.len(), XSAVE_SIZE);
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
