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

#[cfg(test)]
mod tests {
    use super::*;
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
