//! One vCPU: its KVM fd, boot configuration, and state save/restore.
//!
//! State is read and written only while the vCPU thread is stopped (it does not hold the
//! vCPU mutex then), after the stop protocol of `vcpu_thread` has completed any pending
//! port I/O with a KVM_RUN whose immediate_exit is set.

use std::sync::atomic::{AtomicU32, Ordering};

use kvm_bindings::{kvm_msr_entry, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_RUNNABLE};
use kvm_ioctls::VcpuFd;

use super::vcpu_state::{
    CpuidEntry, DebugRegs, Fpu, Lapic, MpState, MsrEntry, Regs, Sregs, VcpuEvents, VcpuState, Xcrs,
    Xsave, XSAVE_SIZE,
};

/// LAPIC register offsets used at boot.
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7 << 8;
const APIC_MODE_NMI: u32 = 0x4 << 8;
const APIC_LVT_MASKED: u32 = 1 << 16;
const APIC_LVT_DELIVERY_MODE: u32 = 0x7 << 8;

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("vCPU {index}: {ioctl} failed")]
    Ioctl {
        index: u32,
        ioctl: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {index}: {op} stopped at MSR {msr:#x} ({done} of {total} done)")]
    MsrShortCount {
        index: u32,
        op: &'static str,
        msr: u32,
        done: usize,
        total: usize,
    },
    #[error("vCPU {index}: cannot build a KVM {what} list of {len} entries")]
    Fam {
        index: u32,
        what: &'static str,
        len: usize,
    },
    #[error("vCPU {index}: saved XSAVE area of {saved} bytes is larger than this host's {host}")]
    XsaveTooBig {
        index: u32,
        saved: usize,
        host: usize,
    },
    #[error("vCPU {index}: XSAVE area of {len} bytes is smaller than its legacy region")]
    XsaveTooSmall { index: u32, len: usize },
    #[error("vCPU {index}: saved state is for vCPU {saved}")]
    WrongIndex { index: u32, saved: u32 },
    #[error("vCPU {index}: saved TSC frequency {saved} kHz differs from this host's {host} kHz and KVM cannot scale it")]
    TscFrequency { index: u32, saved: u32, host: u32 },
}

/// State every vCPU of a VM holds from KVM_CREATE_VCPU until something sets it: read once
/// from one fresh vCPU, it tells `restore_fresh` which saved pieces the other fresh vCPUs
/// already hold (KVM resets them all alike).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreshVcpu {
    pub debugregs: DebugRegs,
    pub xcrs: Xcrs,
    pub events: VcpuEvents,
}

/// The part of a stopped vCPU's state that no other vCPU can change ([`Vcpu::save_own`]).
#[derive(Debug)]
pub struct OwnState {
    mp_state: MpState,
    msrs: Vec<MsrEntry>,
    regs: Regs,
    sregs: Sregs,
    fpu: Fpu,
    xsave: Xsave,
    xcrs: Xcrs,
    debugregs: DebugRegs,
    cpuid: Vec<CpuidEntry>,
    tsc_khz: u32,
}

pub struct Vcpu {
    pub index: u32,
    pub fd: VcpuFd,
    /// Bytes of XSAVE state KVM keeps: KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2), at least the
    /// legacy 4096 (more on hosts with AMX, where KVM_GET_XSAVE would fail).
    pub xsave_size: usize,
    /// This vCPU's TSC rate in kHz once known (0 until then). KVM changes a vCPU's rate
    /// only through KVM_SET_TSC_KHZ, which only `restore` calls, so after the first read
    /// it is known without asking: one ioctl less per save and per restore.
    tsc_khz: AtomicU32,
}

impl Vcpu {
    /// Wraps a fresh vCPU fd; `xsave2_size` is KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) (0 if
    /// the capability is absent).
    pub fn new(index: u32, fd: VcpuFd, xsave2_size: usize) -> Vcpu {
        Vcpu {
            index,
            fd,
            xsave_size: xsave2_size.max(XSAVE_SIZE),
            tsc_khz: AtomicU32::new(0),
        }
    }

    /// The vCPU's TSC rate (KVM_GET_TSC_KHZ the first time).
    pub fn tsc_khz(&self) -> Result<u32, VcpuError> {
        let known = self.tsc_khz.load(Ordering::Relaxed);
        if known != 0 {
            return Ok(known);
        }
        let khz = self.fd.get_tsc_khz().map_err(self.io("KVM_GET_TSC_KHZ"))?;
        self.tsc_khz.store(khz, Ordering::Relaxed);
        Ok(khz)
    }

    /// Tells a fresh vCPU its TSC rate, read from another fresh vCPU of the same VM: KVM
    /// gives every new vCPU of a VM the VM's default rate.
    pub fn assume_fresh_tsc_khz(&self, khz: u32) {
        self.tsc_khz.store(khz, Ordering::Relaxed);
    }

    fn get_xsave(&self) -> Result<Xsave, VcpuError> {
        if self.xsave_size <= XSAVE_SIZE {
            return Ok(Xsave::from(
                &self.fd.get_xsave().map_err(self.io("KVM_GET_XSAVE"))?,
            ));
        }
        let extra = (self.xsave_size - XSAVE_SIZE).div_ceil(4);
        let mut x = kvm_bindings::Xsave::new(extra).map_err(|_| VcpuError::Fam {
            index: self.index,
            what: "XSAVE",
            len: extra,
        })?;
        // SAFETY: `x` holds the 4096-byte legacy area plus `extra` words, i.e. at least the
        // size KVM reported for KVM_CAP_XSAVE2, which is all KVM_GET_XSAVE2 writes.
        unsafe { self.fd.get_xsave2(&mut x) }.map_err(self.io("KVM_GET_XSAVE2"))?;
        let mut bytes: Vec<u8> = Xsave::from(&x.as_fam_struct_ref().xsave).region.to_vec();
        bytes.extend(x.as_slice().iter().flat_map(|w| w.to_le_bytes()));
        Ok(Xsave {
            region: bytes.into(),
        })
    }

    fn set_xsave(&self, xsave: &Xsave) -> Result<(), VcpuError> {
        let len = xsave.region.len();
        if len <= XSAVE_SIZE {
            let k = xsave.into();
            // SAFETY: `k` is a complete legacy kvm_xsave (4096 bytes), which is what
            // KVM_SET_XSAVE reads.
            return unsafe { self.fd.set_xsave(&k) }.map_err(self.io("KVM_SET_XSAVE"));
        }
        if len > self.xsave_size {
            return Err(VcpuError::XsaveTooBig {
                index: self.index,
                saved: len,
                host: self.xsave_size,
            });
        }
        let extra = (self.xsave_size - XSAVE_SIZE).div_ceil(4);
        let mut x = kvm_bindings::Xsave::new(extra).map_err(|_| VcpuError::Fam {
            index: self.index,
            what: "XSAVE",
            len: extra,
        })?;
        // SAFETY: only the plain-data legacy area of the FAM struct is replaced.
        unsafe { x.as_mut_fam_struct() }.xsave = xsave.into();
        for (dst, src) in x
            .as_mut_slice()
            .iter_mut()
            .zip(xsave.region[XSAVE_SIZE..].chunks(4))
        {
            let mut w = [0u8; 4];
            w[..src.len()].copy_from_slice(src);
            *dst = u32::from_le_bytes(w);
        }
        // SAFETY: `x` holds the legacy area plus the extended words, at least the size KVM
        // reported for KVM_CAP_XSAVE2, which is all KVM_SET_XSAVE reads for this VM.
        unsafe { self.fd.set_xsave2(&x) }.map_err(self.io("KVM_SET_XSAVE2"))
    }

    fn io(&self, ioctl: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
        let index = self.index;
        move |source| VcpuError::Ioctl {
            index,
            ioctl,
            source,
        }
    }

    pub fn set_cpuid(&self, entries: &[CpuidEntry]) -> Result<(), VcpuError> {
        let kvm: Vec<_> = entries.iter().map(Into::into).collect();
        let cpuid = CpuId::from_entries(&kvm).map_err(|_| VcpuError::Fam {
            index: self.index,
            what: "CPUID",
            len: kvm.len(),
        })?;
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(self.io("KVM_SET_CPUID2"))
    }

    /// LINT0 = ExtINT (the 8259 reaches the BSP as on a PC), LINT1 = NMI, as firmware sets.
    pub fn setup_lint(&self) -> Result<(), VcpuError> {
        let mut lapic = Lapic::from(&self.fd.get_lapic().map_err(self.io("KVM_GET_LAPIC"))?);
        let lint0 = lapic.reg(APIC_LVT_LINT0) & !(APIC_LVT_MASKED | APIC_LVT_DELIVERY_MODE);
        lapic.set_reg(APIC_LVT_LINT0, lint0 | APIC_MODE_EXTINT);
        let lint1 = lapic.reg(APIC_LVT_LINT1) & !(APIC_LVT_MASKED | APIC_LVT_DELIVERY_MODE);
        lapic.set_reg(APIC_LVT_LINT1, lint1 | APIC_MODE_NMI);
        self.fd
            .set_lapic(&(&lapic).into())
            .map_err(self.io("KVM_SET_LAPIC"))
    }

    /// MSRs firmware would have set: fast strings on.
    pub fn setup_boot_msrs(&self) -> Result<(), VcpuError> {
        self.set_msrs(&[MsrEntry {
            index: MSR_IA32_MISC_ENABLE,
            data: MISC_ENABLE_FAST_STRING,
        }])
    }

    pub fn get_sregs(&self) -> Result<Sregs, VcpuError> {
        Ok(Sregs::from(
            &self.fd.get_sregs().map_err(self.io("KVM_GET_SREGS"))?,
        ))
    }

    pub fn set_sregs(&self, s: &Sregs) -> Result<(), VcpuError> {
        self.fd
            .set_sregs(&s.into())
            .map_err(self.io("KVM_SET_SREGS"))
    }

    fn get_mp_state(&self) -> Result<MpState, VcpuError> {
        Ok(MpState::from(
            &self
                .fd
                .get_mp_state()
                .map_err(self.io("KVM_GET_MP_STATE"))?,
        ))
    }

    pub fn get_regs(&self) -> Result<Regs, VcpuError> {
        Ok(Regs::from(
            &self.fd.get_regs().map_err(self.io("KVM_GET_REGS"))?,
        ))
    }

    pub fn set_regs(&self, r: &Regs) -> Result<(), VcpuError> {
        self.fd.set_regs(&r.into()).map_err(self.io("KVM_SET_REGS"))
    }

    pub fn set_fpu(&self, f: &Fpu) -> Result<(), VcpuError> {
        self.fd.set_fpu(&f.into()).map_err(self.io("KVM_SET_FPU"))
    }

    pub fn set_runnable(&self) -> Result<(), VcpuError> {
        self.fd
            .set_mp_state(kvm_bindings::kvm_mp_state {
                mp_state: KVM_MP_STATE_RUNNABLE,
            })
            .map_err(self.io("KVM_SET_MP_STATE"))
    }

    /// The MSRs of `candidates` (KVM_GET_MSR_INDEX_LIST) this vCPU can actually read, and
    /// those it cannot. The index list can name MSRs whose feature the guest's CPUID hides
    /// (e.g. PMU MSRs once the PMU leaf is cleared); KVM_GET_MSRS stops at the first such
    /// MSR, so drop it and try again, as Cloud Hypervisor does. Done once per VM, so that
    /// `save` can insist on a full count.
    pub fn readable_msrs(&self, candidates: &[u32]) -> Result<(Vec<u32>, Vec<u32>), VcpuError> {
        let mut ok = candidates.to_vec();
        let mut dropped = Vec::new();
        loop {
            match self.get_msrs(&ok) {
                Ok(_) => return Ok((ok, dropped)),
                Err(VcpuError::MsrShortCount { done, .. }) => dropped.push(ok.remove(done)),
                Err(e) => return Err(e),
            }
        }
    }

    fn get_msrs(&self, indices: &[u32]) -> Result<Vec<MsrEntry>, VcpuError> {
        let entries: Vec<kvm_msr_entry> = indices
            .iter()
            .map(|i| kvm_msr_entry {
                index: *i,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError::Fam {
            index: self.index,
            what: "MSR",
            len: entries.len(),
        })?;
        let n = self
            .fd
            .get_msrs(&mut msrs)
            .map_err(self.io("KVM_GET_MSRS"))?;
        // KVM stops at the first MSR it cannot read and returns how many it did.
        if n != entries.len() {
            return Err(VcpuError::MsrShortCount {
                index: self.index,
                op: "KVM_GET_MSRS",
                msr: indices[n],
                done: n,
                total: entries.len(),
            });
        }
        Ok(msrs.as_slice().iter().map(MsrEntry::from).collect())
    }

    fn set_msrs(&self, entries: &[MsrEntry]) -> Result<(), VcpuError> {
        let kvm: Vec<kvm_msr_entry> = entries.iter().map(Into::into).collect();
        let msrs = Msrs::from_entries(&kvm).map_err(|_| VcpuError::Fam {
            index: self.index,
            what: "MSR",
            len: kvm.len(),
        })?;
        let n = self.fd.set_msrs(&msrs).map_err(self.io("KVM_SET_MSRS"))?;
        if n != kvm.len() {
            return Err(VcpuError::MsrShortCount {
                index: self.index,
                op: "KVM_SET_MSRS",
                msr: entries[n].index,
                done: n,
                total: kvm.len(),
            });
        }
        Ok(())
    }

    /// Reads every piece of KVM state of this vCPU. The vCPU must be stopped.
    ///
    /// Order: MP_STATE first (reading it makes KVM settle pending INIT/SIPI events into it),
    /// the x87/SSE state from the XSAVE area when that is exact, VCPU_EVENTS last (so it
    /// reflects any exception or interrupt state the earlier reads could touch).
    pub fn save(&self, msr_list: &[u32]) -> Result<VcpuState, VcpuError> {
        let own = self.save_own(msr_list)?;
        self.save_rest(own)
    }

    /// The state of this stopped vCPU that only the vCPU itself changes, read by its own
    /// thread as it stops, while other vCPUs may still run (see [`Vcpu::save_after`]):
    /// registers, FPU/XSAVE, XCRs, debug registers, CPUID and the MSRs of `msr_list`.
    pub fn save_own(&self, msr_list: &[u32]) -> Result<OwnState, VcpuError> {
        let mp_state = self.get_mp_state()?;
        let regs = self.get_regs()?;
        let sregs = self.get_sregs()?;
        let xsave = self.get_xsave()?;
        // What KVM_GET_FPU says, read from the XSAVE area when that is exact (one ioctl
        // less); for x87 or SSE in init state only KVM_GET_FPU has the bytes it reports.
        let fpu = match xsave.fp_and_sse_live() {
            true => Fpu::from_xsave(&xsave.region).ok_or(VcpuError::XsaveTooSmall {
                index: self.index,
                len: xsave.region.len(),
            })?,
            false => Fpu::from(&self.fd.get_fpu().map_err(self.io("KVM_GET_FPU"))?),
        };
        let xcrs = Xcrs::from(&self.fd.get_xcrs().map_err(self.io("KVM_GET_XCRS"))?);
        let debugregs = DebugRegs::from(
            &self
                .fd
                .get_debug_regs()
                .map_err(self.io("KVM_GET_DEBUGREGS"))?,
        );
        let cpuid = self
            .fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(self.io("KVM_GET_CPUID2"))?
            .as_slice()
            .iter()
            .map(CpuidEntry::from)
            .collect();
        let tsc_khz = self.tsc_khz()?;
        let msrs = self.get_msrs(msr_list)?;
        Ok(OwnState {
            mp_state,
            msrs,
            regs,
            sregs,
            fpu,
            xsave,
            xcrs,
            debugregs,
            cpuid,
            tsc_khz,
        })
    }

    /// The whole state, from `own` read by [`Vcpu::save_own`] when this vCPU stopped and
    /// other vCPUs may have run since. They can only have reached this one through its
    /// local APIC (an IPI), a pending NMI, or INIT/SIPI: the LAPIC and events are read
    /// now, and if the MP state moved (INIT or SIPI accepted, which rewrites registers and
    /// MSRs), everything is. Its MSRs stay as read: a stopped vCPU's timer firing only
    /// marks the interrupt pending; the TSC deadline is cleared when the interrupt is
    /// injected, inside KVM_RUN.
    pub fn save_after(&self, own: OwnState, msr_list: &[u32]) -> Result<VcpuState, VcpuError> {
        let mp_state = self.get_mp_state()?;
        let own = match mp_state == own.mp_state {
            true => own,
            false => self.save_own(msr_list)?,
        };
        self.save_rest(own)
    }

    /// [`Vcpu::save_own`]'s state and what other vCPUs can change: LAPIC and events.
    fn save_rest(&self, own: OwnState) -> Result<VcpuState, VcpuError> {
        let lapic = Lapic::from(&self.fd.get_lapic().map_err(self.io("KVM_GET_LAPIC"))?);
        let events = VcpuEvents::from(
            &self
                .fd
                .get_vcpu_events()
                .map_err(self.io("KVM_GET_VCPU_EVENTS"))?,
        );
        Ok(VcpuState {
            index: self.index,
            mp_state: own.mp_state,
            regs: own.regs,
            sregs: own.sregs,
            fpu: own.fpu,
            xsave: own.xsave,
            xcrs: own.xcrs,
            debugregs: own.debugregs,
            lapic,
            cpuid: own.cpuid,
            tsc_khz: own.tsc_khz,
            msrs: own.msrs,
            events,
        })
    }

    /// What this vCPU holds now of the pieces [`FreshVcpu`] names: call it on a vCPU that
    /// nothing has set yet.
    pub fn fresh_state(&self) -> Result<FreshVcpu, VcpuError> {
        Ok(FreshVcpu {
            debugregs: DebugRegs::from(
                &self
                    .fd
                    .get_debug_regs()
                    .map_err(self.io("KVM_GET_DEBUGREGS"))?,
            ),
            xcrs: Xcrs::from(&self.fd.get_xcrs().map_err(self.io("KVM_GET_XCRS"))?),
            events: VcpuEvents::from(
                &self
                    .fd
                    .get_vcpu_events()
                    .map_err(self.io("KVM_GET_VCPU_EVENTS"))?,
            ),
        })
    }

    /// [`Vcpu::restore`] into a vCPU that nothing has set since KVM_CREATE_VCPU, whose
    /// state is `fresh` (as read from a fresh vCPU of the same VM): debug registers, XCRs
    /// and events equal to it are already in place and are not written again (one ioctl
    /// each, ~4.6 us here; a guest that never touched them has them so).
    pub fn restore_fresh(&self, state: &VcpuState, fresh: &FreshVcpu) -> Result<(), VcpuError> {
        self.restore_skipping(state, Some(fresh))
    }

    /// Writes saved state into a fresh vCPU of a new VM. Ordering rules:
    /// - CPUID first: KVM sizes XSAVE and validates MSRs and CR4 bits against it.
    /// - SREGS before LAPIC: SET_SREGS writes the APIC base, which LAPIC state depends on.
    /// - LAPIC before MSRs: the TSC-deadline MSR is only accepted with the LAPIC in place.
    /// - TSC before TSC_DEADLINE within MSRs (the deadline is relative to the TSC).
    /// - VCPU_EVENTS last: SET_REGS / SET_SREGS clear pending exceptions.
    pub fn restore(&self, state: &VcpuState) -> Result<(), VcpuError> {
        self.restore_skipping(state, None)
    }

    fn restore_skipping(
        &self,
        state: &VcpuState,
        fresh: Option<&FreshVcpu>,
    ) -> Result<(), VcpuError> {
        if state.index != self.index {
            return Err(VcpuError::WrongIndex {
                index: self.index,
                saved: state.index,
            });
        }
        self.set_cpuid(&state.cpuid)?;
        // No KVM_CAP_TSC_CONTROL here: the TSC cannot be scaled, so refuse a different rate
        // rather than let guest time run at the wrong speed.
        let host = self.tsc_khz()?;
        if state.tsc_khz != host {
            // The rate is unknown again until the set is known to have worked.
            self.tsc_khz.store(0, Ordering::Relaxed);
            if self.fd.set_tsc_khz(state.tsc_khz).is_err() {
                return Err(VcpuError::TscFrequency {
                    index: self.index,
                    saved: state.tsc_khz,
                    host,
                });
            }
            self.tsc_khz.store(state.tsc_khz, Ordering::Relaxed);
        }
        self.fd
            .set_mp_state((&state.mp_state).into())
            .map_err(self.io("KVM_SET_MP_STATE"))?;
        self.set_regs(&state.regs)?;
        self.set_sregs(&state.sregs)?;
        // With x87 and SSE live in the XSAVE area, KVM_SET_XSAVE overwrites every byte
        // KVM_SET_FPU writes: skip it (one ioctl less). Otherwise KVM_SET_FPU still puts the
        // saved bytes in the kernel's buffer, where a later KVM_GET_FPU finds them.
        if !state.xsave.fp_and_sse_live() {
            self.set_fpu(&state.fpu)?;
        }
        self.set_xsave(&state.xsave)?;
        if fresh.is_none_or(|f| f.xcrs != state.xcrs) {
            self.fd
                .set_xcrs(&(&state.xcrs).into())
                .map_err(self.io("KVM_SET_XCRS"))?;
        }
        if fresh.is_none_or(|f| f.debugregs != state.debugregs) {
            self.fd
                .set_debug_regs(&(&state.debugregs).into())
                .map_err(self.io("KVM_SET_DEBUGREGS"))?;
        }
        self.fd
            .set_lapic(&(&state.lapic).into())
            .map_err(self.io("KVM_SET_LAPIC"))?;
        let mut msrs = state.msrs.clone();
        // Stable sort: TSC_DEADLINE after everything else (in particular after the TSC).
        msrs.sort_by_key(|m| m.index == MSR_IA32_TSC_DEADLINE);
        debug_assert!(
            msrs.iter().position(|m| m.index == MSR_IA32_TSC)
                < msrs.iter().position(|m| m.index == MSR_IA32_TSC_DEADLINE)
                || !msrs.iter().any(|m| m.index == MSR_IA32_TSC_DEADLINE)
        );
        self.set_msrs(&msrs)?;
        // Events equal to a fresh vCPU's: nothing pending or injected for SET_REGS or
        // SET_SREGS to have cleared, so there is nothing to put back.
        if fresh.is_none_or(|f| f.events != state.events) {
            self.fd
                .set_vcpu_events(&(&state.events).into())
                .map_err(self.io("KVM_SET_VCPU_EVENTS"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "vcpu_tests.rs"]
mod tests;
