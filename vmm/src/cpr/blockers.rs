//! What stops a machine from being live-updated, per mode. cpr-save checks these before it
//! touches the guest, so a refused save leaves the guest running.

use cpr_format::Mode;

use crate::machine::GuestRam;

/// One reason a live update in some mode is impossible, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocker(pub String);

impl std::fmt::Display for Blocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Everything that blocks `mode` for this machine (empty: the update may proceed).
pub fn blockers(mode: Mode, ram: &GuestRam) -> Vec<Blocker> {
    let mut out = Vec::new();
    for b in ram.blocks() {
        match (&b.file, mode) {
            (None, Mode::Restart | Mode::Transfer) => out.push(Blocker(format!(
                "guest RAM block {} is anonymous memory, which does not survive exec: \
                 start the VMM with -machine memfd-alloc=on, or with a \
                 memory-backend-memfd or memory-backend-file object with share=on",
                b.name()
            ))),
            (None, Mode::Reboot) => out.push(Blocker(format!(
                "guest RAM block {} is anonymous memory, which does not survive a reboot: \
                 use a memory-backend-file with share=on on persistent memory",
                b.name()
            ))),
            (Some(_), _) => {}
        }
    }
    out
}

/// What VFIO devices block: restart and transfer mode need the container's VADDR features
/// or iommufd's MAP_FILE and CHANGE_PROCESS (the DMA mappings move to another process image
/// or another process), reboot mode a suspended guest.
pub fn vfio(mode: Mode, set: Option<&crate::vfio::VfioSet>, suspended: bool) -> Vec<Blocker> {
    let Some(set) = set else {
        return Vec::new();
    };
    let reason = match mode {
        Mode::Restart | Mode::Transfer => set.restart_blocker(),
        Mode::Reboot => set.reboot_blocker(suspended),
    };
    reason.into_iter().map(Blocker).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vfio_blockers_name_the_missing_feature_and_the_s3_rule() {
        use crate::vfio::ioctl::CprFeatures;
        use crate::vfio::set::{reboot_blocker, restart_blocker};
        let ids = vec!["edu0".to_string(), "nic0".to_string()];
        let full = CprFeatures {
            update_vaddr: true,
            unmap_all: true,
        };
        assert_eq!(restart_blocker(&ids, full), None);
        let old = CprFeatures {
            update_vaddr: false,
            unmap_all: true,
        };
        let b = restart_blocker(&ids, old).unwrap();
        assert!(
            b.starts_with("VFIO device(s) edu0, nic0: the type1 container lacks VFIO_UPDATE_VADDR"),
            "{b}"
        );
        assert_eq!(
            restart_blocker(&[], old),
            None,
            "no devices, nothing blocked"
        );
        assert!(reboot_blocker(&ids, false)
            .unwrap()
            .contains("suspended (S3)"));
        assert_eq!(reboot_blocker(&ids, true), None);
    }
    use crate::machine::RamBackendConfig;

    #[test]
    fn anonymous_ram_blocks_restart_and_memfd_does_not() {
        let anon = GuestRam::new(&RamBackendConfig::Anonymous, 4 << 20).unwrap();
        let b = blockers(Mode::Restart, &anon);
        assert_eq!(b.len(), 1);
        assert!(b[0].0.contains("memfd-alloc=on"), "{}", b[0]);
        let memfd = GuestRam::new(&RamBackendConfig::Memfd { hugetlb: false }, 4 << 20).unwrap();
        assert!(blockers(Mode::Restart, &memfd).is_empty());
    }
}
