//! Need /dev/kvm (fail without it): the x87/SSE state comes from a real vCPU whose guest
//! loaded it, and goes into fresh vCPUs of a second VM.
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Kvm, VcpuExit, VmFd};
use vm_memory::{Bytes as _, GuestAddress};

use super::*;
use crate::machine::memory::GuestRam;
use crate::machine::{boot, cpuid, vm, RamBackendConfig};

const CODE: u64 = 0x10_0000;
const DATA: u64 = 0x10_1000;
const XMM_VALUE: [u8; 16] = [
    0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xf0, 0x0f,
];
/// Round down, all exceptions masked: not the reset value 0x1f80.
const MXCSR: u32 = 0x3f80;
/// 53-bit precision, exceptions masked: not the FNINIT value 0x37f.
const FCW: u16 = 0x027f;
/// CR4.OSFXSR | CR4.OSXMMEXCPT: SSE instructions allowed.
const CR4_SSE: u64 = (1 << 9) | (1 << 10);

/// 64-bit guest: overwrites XMM0 and XMM7 from DATA, then exits with `out 0x80, al`.
/// Here every guest instruction goes through KVM's instruction emulator, which loads the
/// guest's FPU state into the CPU to move XMM registers but has no x87 loads or LDMXCSR:
/// the rest of the x87/SSE state is put in with KVM_SET_XSAVE before the guest runs.
const GUEST: &[u8] = &[
    0x0f, 0x10, 0x04, 0x25, 0x00, 0x10, 0x10, 0x00, // movups xmm0, [DATA]
    0x0f, 0x10, 0x3c, 0x25, 0x00, 0x10, 0x10, 0x00, // movups xmm7, [DATA]
    0xe6, 0x80, // out 0x80, al
];
/// What KVM_SET_XSAVE puts in XMM1 before the guest runs.
const XMM1: [u8; 16] = [0x5a; 16];
/// 1.0 and pi as 80-bit extended values, and an 8-bit pattern for ST2.
const ST: [[u8; 10]; 3] = [
    [0, 0, 0, 0, 0, 0, 0, 0x80, 0xff, 0x3f],
    [0x35, 0xc2, 0x68, 0x21, 0xa2, 0xda, 0x0f, 0xc9, 0x00, 0x40],
    [0, 0, 0, 0, 0, 0, 0, 0xa0, 0x00, 0x40],
];

/// An XSAVE area with live x87 and SSE state: FCW, FSW (TOP = 5), three tagged registers,
/// MXCSR, XMM1, and XSTATE_BV bits 0 and 1.
fn with_fpu_state(mut x: Xsave) -> Xsave {
    let r = &mut x.region;
    r[0..2].copy_from_slice(&FCW.to_le_bytes());
    r[2..4].copy_from_slice(&(5u16 << 11).to_le_bytes());
    r[4] = 0xe0;
    r[24..28].copy_from_slice(&MXCSR.to_le_bytes());
    for (i, st) in ST.iter().enumerate() {
        r[32 + 16 * i..42 + 16 * i].copy_from_slice(st);
    }
    r[160 + 16..160 + 32].copy_from_slice(&XMM1);
    r[512] |= 3;
    x
}

struct Setup {
    kvm: Kvm,
    ram: GuestRam,
    vm: VmFd,
}

fn vm_with_ram() -> Setup {
    let kvm = Kvm::new().expect("these tests need /dev/kvm");
    let ram = GuestRam::new(&RamBackendConfig::Anonymous, 16 << 20).unwrap();
    let vm = vm::create_vm(&kvm, Some(&ram)).unwrap();
    Setup { kvm, ram, vm }
}

fn vcpu(s: &Setup, index: u32) -> Vcpu {
    let supported = s.kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
    let v = Vcpu::new(index, s.vm.create_vcpu(u64::from(index)).unwrap(), 0);
    v.set_cpuid(&cpuid::filter(&supported, index, 2)).unwrap();
    v
}

/// A vCPU with live x87/SSE state that ran GUEST to its port exit.
fn vcpu_with_fpu_state() -> (Setup, Vcpu) {
    let s = vm_with_ram();
    let mem = s.ram.memory();
    mem.write_slice(GUEST, GuestAddress(CODE)).unwrap();
    mem.write_slice(&XMM_VALUE, GuestAddress(DATA)).unwrap();
    let mut v = vcpu(&s, 0);
    let mut sregs = boot::setup_long_mode(mem, &v.get_sregs().unwrap()).unwrap();
    sregs.cr4 |= CR4_SSE;
    v.set_sregs(&sregs).unwrap();
    v.set_regs(&boot::boot_regs(CODE)).unwrap();
    v.set_xsave(&with_fpu_state(xsave_of(&v))).unwrap();
    match v.fd.run() {
        Ok(VcpuExit::IoOut(0x80, _)) => {}
        other => panic!("guest did not reach its port exit: {other:?}"),
    }
    // Complete the port write, as the stop protocol does.
    v.fd.set_kvm_immediate_exit(1);
    let _ = v.fd.run();
    v.fd.set_kvm_immediate_exit(0);
    (s, v)
}

/// The MSRs a save of `v` reads.
fn saveable_msrs(s: &Setup, v: &Vcpu) -> Vec<u32> {
    let index: Vec<u32> = s.kvm.get_msr_index_list().unwrap().as_slice().to_vec();
    v.readable_msrs(&index).unwrap().0
}

/// `state` without the TSC, which runs on between two saves.
fn no_tsc(mut state: VcpuState) -> VcpuState {
    state.msrs.retain(|m| m.index != MSR_IA32_TSC);
    state
}

fn xsave_of(v: &Vcpu) -> Xsave {
    Xsave::from(&v.fd.get_xsave().unwrap())
}

#[test]
fn fpu_from_xsave_is_what_kvm_get_fpu_reports_for_live_x87_and_sse_state() {
    let (_s, v) = vcpu_with_fpu_state();
    let xsave = xsave_of(&v);
    // XSTATE_BV (bytes 512..520): x87 (bit 0) and SSE (bit 1) are live, not init.
    assert_eq!(
        xsave.region[512] & 3,
        3,
        "guest did not leave x87/SSE state"
    );
    let kvm = Fpu::from(&v.fd.get_fpu().unwrap());
    let derived = Fpu::from_xsave(&xsave.region).unwrap();
    assert_eq!(derived, kvm);
    // And the state is the guest's, not a default both sides happen to share.
    // KVM_GET_FPU leaves MXCSR zero; the XSAVE area has the guest's.
    assert_eq!(derived.mxcsr, 0);
    assert_eq!(
        u32::from_le_bytes(xsave.region[24..28].try_into().unwrap()),
        MXCSR
    );
    assert_eq!(derived.fcw, FCW);
    assert_eq!(derived.xmm[0], XMM_VALUE);
    assert_eq!(derived.xmm[7], XMM_VALUE);
    assert_eq!(derived.xmm[1], XMM1);
    assert_eq!(derived.xmm[2], [0; 16]);
    assert_eq!(&derived.fpr[1][..10], &ST[1]);
    assert_eq!((derived.fsw >> 11) & 7, 5);
    assert_eq!(derived.ftwx, 0xe0);
}

/// Why the derivation needs live state: KVM_SET_FPU on a fresh vCPU fills the kernel's
/// buffer but leaves XSTATE_BV clear, so KVM_GET_XSAVE reports init values while
/// KVM_GET_FPU reports the bytes. The saved `fpu` must be KVM_GET_FPU's.
#[test]
fn with_x87_and_sse_in_init_state_save_writes_what_kvm_get_fpu_gives() {
    let s = vm_with_ram();
    let v = vcpu(&s, 0);
    let mut fpu = Fpu::from(&v.fd.get_fpu().unwrap());
    fpu.fcw = FCW;
    fpu.xmm[1] = XMM1;
    v.set_fpu(&fpu).unwrap();
    let xsave = xsave_of(&v);
    assert!(!xsave.fp_and_sse_live());
    let kvm = Fpu::from(&v.fd.get_fpu().unwrap());
    assert_eq!(kvm, fpu);
    assert_ne!(Fpu::from_xsave(&xsave.region).unwrap(), kvm);
    let msrs = saveable_msrs(&s, &v);
    assert_eq!(v.save(&msrs).unwrap().fpu, kvm);
}

#[test]
fn save_writes_the_fpu_field_kvm_get_fpu_gives() {
    let (s, v) = vcpu_with_fpu_state();
    let msrs = saveable_msrs(&s, &v);
    let state = v.save(&msrs).unwrap();
    assert_eq!(state.fpu, Fpu::from(&v.fd.get_fpu().unwrap()));
    assert_eq!(state.fpu.xmm[1], XMM1);
}

#[test]
fn restore_without_kvm_set_fpu_gives_the_same_vcpu_as_with_it() {
    let (s, v) = vcpu_with_fpu_state();
    let msrs = saveable_msrs(&s, &v);
    let saved = v.save(&msrs).unwrap();
    // An image from an older version: its `fpu` disagrees with its XSAVE area (as stale
    // kernel bytes can), which KVM_SET_XSAVE must override either way.
    let mut odd = saved.clone();
    odd.fpu.fcw = 0x037f;
    odd.fpu.xmm[3] = [0x5a; 16];
    odd.fpu.fpr[1] = [0xa5; 16];
    for state in [&saved, &odd] {
        let t = vm_with_ram();
        let (new, old) = (vcpu(&t, 0), vcpu(&t, 1));
        new.restore(state).unwrap();
        // The previous sequence: KVM_SET_FPU before KVM_SET_XSAVE.
        old.set_fpu(&state.fpu).unwrap();
        let as_1 = VcpuState {
            index: 1,
            ..state.clone()
        };
        old.restore(&as_1).unwrap();
        let x_new = xsave_of(&new);
        assert_eq!(x_new, xsave_of(&old));
        assert_eq!(x_new, saved.xsave);
        assert_eq!(
            Fpu::from(&new.fd.get_fpu().unwrap()),
            Fpu::from(&old.fd.get_fpu().unwrap())
        );
        // The TSC ran on between the two saves; everything else must match.
        let (a, b) = (new.save(&msrs).unwrap(), old.save(&msrs).unwrap());
        assert_eq!(no_tsc(a.clone()), no_tsc(VcpuState { index: 0, ..b }));
        assert_eq!(a.fpu, saved.fpu);
    }
}

#[test]
fn the_remembered_tsc_rate_is_what_kvm_reports() {
    let (s, v) = vcpu_with_fpu_state();
    let fresh = vcpu(&s, 1);
    fresh.assume_fresh_tsc_khz(v.tsc_khz().unwrap());
    assert_eq!(fresh.tsc_khz().unwrap(), fresh.fd.get_tsc_khz().unwrap());
    let msrs = saveable_msrs(&s, &v);
    let mut state = v.save(&msrs).unwrap();
    assert_eq!(state.tsc_khz, v.fd.get_tsc_khz().unwrap());
    // A rate this host cannot give (no KVM_CAP_TSC_CONTROL here) is refused, and the
    // vCPU still reports the rate it runs at.
    state.index = 1;
    state.tsc_khz += 1000;
    let host = fresh.fd.get_tsc_khz().unwrap();
    match fresh.restore(&state) {
        Err(VcpuError::TscFrequency { .. }) => assert_eq!(fresh.tsc_khz().unwrap(), host),
        Ok(()) => assert_eq!(fresh.tsc_khz().unwrap(), fresh.fd.get_tsc_khz().unwrap()),
        Err(e) => panic!("unexpected error: {e}"),
    }
}

#[test]
fn restore_fresh_gives_the_same_vcpu_as_restore_whether_or_not_pieces_are_skipped() {
    let (s, v) = vcpu_with_fpu_state();
    let msrs = saveable_msrs(&s, &v);
    let saved = v.save(&msrs).unwrap();
    // The same guest with debug registers, XCR0 and NMI masking of its own: nothing of
    // these may be skipped then.
    let mut own = saved.clone();
    own.debugregs.db[0] = 0x12_3000;
    own.debugregs.dr7 = 0x401;
    own.xcrs.xcrs[0].value = 3;
    own.events.nmi.masked = 1;
    for state in [&saved, &own] {
        let t = vm_with_ram();
        let (skipping, full) = (vcpu(&t, 0), vcpu(&t, 1));
        let fresh = skipping.fresh_state().unwrap();
        skipping.restore_fresh(state, &fresh).unwrap();
        full.restore(&VcpuState {
            index: 1,
            ..state.clone()
        })
        .unwrap();
        let (a, b) = (skipping.save(&msrs).unwrap(), full.save(&msrs).unwrap());
        assert_eq!(no_tsc(a.clone()), no_tsc(VcpuState { index: 0, ..b }));
        assert_eq!(a.debugregs, state.debugregs);
        assert_eq!(a.xcrs, state.xcrs);
        assert_eq!(a.events, state.events);
    }
    // The guest here never touched them: all three were skipped for `saved`.
    let fresh = vcpu(&vm_with_ram(), 0).fresh_state().unwrap();
    assert_eq!(
        (&saved.debugregs, &saved.xcrs, &saved.events),
        (&fresh.debugregs, &fresh.xcrs, &fresh.events)
    );
}

/// 64-bit guest: x2APIC on, one IPI through the ICR MSR to APIC id 1 (ICR low word
/// patched in at byte 20), then `out 0x80, al`.
const SEND_IPI: [u8; 32] = [
    0xb9, 0x1b, 0x00, 0x00, 0x00, // mov ecx, IA32_APIC_BASE
    0x0f, 0x32, // rdmsr
    0x0d, 0x00, 0x0c, 0x00, 0x00, // or eax, EN | EXTD (x2APIC)
    0x0f, 0x30, // wrmsr
    0xb9, 0x30, 0x08, 0x00, 0x00, // mov ecx, x2APIC ICR
    0xb8, 0, 0, 0, 0, // mov eax, ICR low (patched)
    0xba, 0x01, 0x00, 0x00, 0x00, // mov edx, 1: destination APIC id
    0x0f, 0x30, // wrmsr
    0xe6, // out 0x80, al (second byte below)
];
const IPI_VECTOR: u32 = 0x40;
/// Fixed delivery of IPI_VECTOR, level assert.
const ICR_FIXED: u32 = 0x4000 | IPI_VECTOR;
/// INIT, level assert.
const ICR_INIT: u32 = 0x4500;
/// Offset of the local APIC's interrupt request register (IRR) in the register page.
const APIC_IRR: usize = 0x200;
const APIC_SVR: usize = 0xf0;

/// vCPU 0 of a fresh VM sends `icr` to vCPU 1 while vCPU 1 stands stopped; returns vCPU 1's
/// state read as `save` does and as its thread does at its stop followed by `save_after`.
fn state_of_a_vcpu_sent(icr: u32) -> (VcpuState, VcpuState) {
    let s = vm_with_ram();
    let mem = s.ram.memory();
    let mut code = SEND_IPI.to_vec();
    code[20..24].copy_from_slice(&icr.to_le_bytes());
    code.push(0x80);
    mem.write_slice(&code, GuestAddress(CODE)).unwrap();
    let mut sender = vcpu(&s, 0);
    let target = vcpu(&s, 1);
    // The target's APIC is software-enabled (SVR bit 8), as the guest's OS would do:
    // fixed IPIs to a disabled APIC are dropped.
    let mut lapic = Lapic::from(&target.fd.get_lapic().unwrap());
    lapic.set_reg(APIC_SVR, 0x1ff);
    target.fd.set_lapic(&(&lapic).into()).unwrap();
    target.set_runnable().unwrap();
    // Registers an INIT resets: what the target's own thread read must not survive one.
    target
        .set_regs(&Regs {
            rax: 0x1234,
            rip: 0x8000,
            rflags: 2,
            ..Regs::default()
        })
        .unwrap();
    let msrs = saveable_msrs(&s, &target);
    // Read as the target's thread would when it stopped, before the IPI.
    let own = target.save_own(&msrs).unwrap();
    let mut sregs = boot::setup_long_mode(mem, &sender.get_sregs().unwrap()).unwrap();
    sregs.cr4 |= CR4_SSE;
    sender.set_sregs(&sregs).unwrap();
    sender.set_regs(&boot::boot_regs(CODE)).unwrap();
    sender.set_runnable().unwrap();
    match sender.fd.run() {
        Ok(VcpuExit::IoOut(0x80, _)) => {}
        other => panic!("sender did not reach its port exit: {other:?}"),
    }
    let after = target.save_after(own, &msrs).unwrap();
    let whole = target.save(&msrs).unwrap();
    (whole, after)
}

fn irr_has(state: &VcpuState, vector: u32) -> bool {
    let word = state.lapic.reg(APIC_IRR + 0x10 * (vector as usize / 32));
    word & (1 << (vector % 32)) != 0
}

#[test]
fn an_ipi_to_a_vcpu_after_its_own_state_was_read_is_in_the_save() {
    let (whole, after) = state_of_a_vcpu_sent(ICR_FIXED);
    assert!(irr_has(&whole, IPI_VECTOR), "the IPI did not arrive at all");
    assert!(irr_has(&after, IPI_VECTOR), "save_after lost the IPI");
    assert_eq!(after.lapic, whole.lapic);
    assert_eq!(after.regs, whole.regs);
    assert_eq!(after.mp_state, whole.mp_state);
}

#[test]
fn an_init_to_a_vcpu_after_its_own_state_was_read_rereads_all_of_it() {
    let (whole, after) = state_of_a_vcpu_sent(ICR_INIT);
    // KVM_MP_STATE_INIT_RECEIVED: the INIT was accepted, which resets the registers.
    assert_eq!(whole.mp_state.mp_state, 2, "the INIT did not arrive");
    assert_eq!(whole.regs.rax, 0, "the INIT did not reset the registers");
    assert_eq!(after.mp_state, whole.mp_state);
    assert_eq!(after.regs, whole.regs);
    assert_eq!(after.sregs, whole.sregs);
    assert_eq!(after.events, whole.events);
}
