//! CPUID for each vCPU, filtered from KVM_GET_SUPPORTED_CPUID as a VMM must: the APIC id and
//! topology are per vCPU, the hypervisor bit is set, and features the VMM does not emulate
//! (nested VMX and SVM, SMX, MONITOR/MWAIT, the PMU, thermal/power leaves) are hidden.

use kvm_bindings::CpuId;

use super::vcpu_state::CpuidEntry;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_THERMAL_POWER: u32 = 0x6;
const LEAF_PMU: u32 = 0xa;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_SVM: u32 = 0x8000_000a;

const ECX_MONITOR: u32 = 1 << 3;
const ECX_VMX: u32 = 1 << 5;
const ECX_SMX: u32 = 1 << 6;
const ECX_PDCM: u32 = 1 << 15;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
/// Leaf 0x8000_0001 ECX: AMD SVM (KVM offers it when kvm_amd has nested=1; we do not save
/// nested state, so a guest using it could not be live-updated).
const ECX_EXT_SVM: u32 = 1 << 2;

/// The CPUID table for vCPU `index` of `vcpus`, from KVM's supported set.
pub fn filter(supported: &CpuId, index: u32, vcpus: u32) -> Vec<CpuidEntry> {
    supported
        .as_slice()
        .iter()
        .map(CpuidEntry::from)
        .map(|mut e| {
            match e.function {
                LEAF_FEATURES => {
                    // EBX[31:24] initial APIC id, EBX[23:16] logical processors per package.
                    e.ebx = (e.ebx & 0x0000_ffff) | (index << 24) | ((vcpus & 0xff) << 16);
                    e.ecx &= !(ECX_MONITOR | ECX_VMX | ECX_SMX | ECX_PDCM);
                    e.ecx |= ECX_HYPERVISOR;
                    if vcpus > 1 {
                        e.edx |= EDX_HTT;
                    } else {
                        e.edx &= !EDX_HTT;
                    }
                }
                LEAF_CACHE_PARAMS => {
                    // EAX[31:26]: cores per package - 1 (one core per vCPU, no SMT).
                    e.eax = (e.eax & 0x03ff_ffff) | ((vcpus.saturating_sub(1) & 0x3f) << 26);
                }
                LEAF_EXT_FEATURES => e.ecx &= !ECX_EXT_SVM,
                LEAF_THERMAL_POWER | LEAF_PMU | LEAF_SVM => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = 0;
                    e.edx = 0;
                }
                LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
                    // EDX: x2APIC id of this vCPU. Level 0 = SMT (1 thread), level 1 = core.
                    e.edx = index;
                    match e.index {
                        0 => {
                            e.eax = 0;
                            e.ebx = 1;
                            e.ecx = (1 << 8) | e.index;
                        }
                        1 => {
                            e.eax = 32 - vcpus.saturating_sub(1).leading_zeros();
                            e.ebx = vcpus;
                            e.ecx = (2 << 8) | e.index;
                        }
                        _ => {
                            e.eax = 0;
                            e.ebx = 0;
                            e.ecx = e.index;
                        }
                    }
                }
                _ => {}
            }
            e
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn sets_apic_id_and_hypervisor_bit_and_hides_vmx() {
        let leaf1 = kvm_cpuid_entry2 {
            function: 1,
            ebx: 0x0000_0800,
            ecx: ECX_VMX | ECX_MONITOR | 1,
            ..Default::default()
        };
        let leaf_b = kvm_cpuid_entry2 {
            function: 0xb,
            index: 1,
            ..Default::default()
        };
        let supported = CpuId::from_entries(&[leaf1, leaf_b]).unwrap();
        let t = filter(&supported, 2, 4);
        assert_eq!(t[0].ebx >> 24, 2);
        assert_eq!((t[0].ebx >> 16) & 0xff, 4);
        assert_eq!(t[0].ecx, ECX_HYPERVISOR | 1);
        assert_ne!(t[0].edx & EDX_HTT, 0);
        assert_eq!(t[1].edx, 2);
        assert_eq!(t[1].ebx, 4);
        assert_eq!(t[1].eax, 2);
    }

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    #[test]
    fn svm_is_hidden() {
        let entries = [
            entry(0x8000_0001, 0, [0, 0, ECX_EXT_SVM | 1, 0]),
            entry(0x8000_000a, 0, [1, 8, 0, 0x1ff]),
        ];
        let t = filter(&CpuId::from_entries(&entries).unwrap(), 0, 1);
        assert_eq!((t[0].function, t[0].ecx), (0x8000_0001, 1));
        let svm = t[1];
        assert_eq!((svm.eax, svm.ebx, svm.edx), (0, 0, 0));
    }
}
