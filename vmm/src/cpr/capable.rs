//! What can be live-updated, from the command line alone: `-only-cpr-capable` refuses at
//! start-up a configuration that restart or reboot mode could not update, and
//! `info cpr-blockers` / `query-cpr-blockers` list what blocks each mode at run time.
//! cpr-save in reboot mode checks the same list before it stops the guest; cpr-transfer
//! checks the same rules (`blockers::blockers`, `blockers::vfio`) on the running machine.

use cpr_format::Mode;
use serde_json::{json, Value};

use crate::chardev::ChardevBackendSpec;
use crate::cli::{RamSpec, VmmConfig};

/// The RAM object as the user named it.
fn ram_object(c: &VmmConfig) -> String {
    match &c.ram {
        RamSpec::Anonymous => format!("guest RAM (-m {}M)", c.mem_size >> 20),
        RamSpec::Memfd { id: Some(id), .. } => format!("memory backend '{id}'"),
        RamSpec::Memfd { id: None, .. } => "guest RAM (-machine memfd-alloc=on)".to_string(),
        RamSpec::File { id, .. } => format!("memory backend '{id}'"),
    }
}

/// Why guest RAM blocks `mode`, if it does. `in_place`: reboot mode keeping RAM in place.
fn ram_blocker(c: &VmmConfig, mode: Mode, in_place: bool) -> Option<String> {
    let obj = ram_object(c);
    match (&c.ram, mode) {
        (RamSpec::Anonymous, Mode::Restart) => Some(format!(
            "{obj}: volatile RAM (anonymous memory) does not survive exec; use -machine \
             memfd-alloc=on, or a memory-backend-memfd or memory-backend-file with share=on"
        )),
        (RamSpec::Anonymous, Mode::Transfer) => Some(format!(
            "{obj}: volatile RAM (anonymous memory) cannot be handed to another process; use \
             -machine memfd-alloc=on, or a memory-backend-memfd or memory-backend-file with \
             share=on"
        )),
        (RamSpec::Anonymous, Mode::Reboot) if in_place => Some(format!(
            "{obj}: volatile RAM (anonymous memory) ends with the process; keep RAM in the \
             image (ram=in-image) or use a memory-backend-file with share=on on /dev/shm or DAX"
        )),
        (RamSpec::Memfd { .. }, Mode::Reboot) if in_place => Some(format!(
            "{obj}: a memfd ends with the process; keep RAM in the image (ram=in-image) or use \
             a memory-backend-file with share=on on /dev/shm or DAX"
        )),
        _ => None,
    }
}

/// Why chardevs block `mode`.
fn chardev_blockers(c: &VmmConfig, mode: Mode) -> Vec<String> {
    let mut out = Vec::new();
    if mode != Mode::Reboot {
        return out;
    }
    for ch in &c.chardevs {
        if matches!(ch.backend, ChardevBackendSpec::Pty) {
            out.push(format!(
                "chardev '{}': a pty cannot be preserved across a restart of the vmm (the new \
                 process gets a pty with another name); use a socket chardev",
                ch.id
            ));
        }
    }
    out
}

/// Everything that blocks `mode` for this configuration (reboot: with RAM in the image
/// when it cannot stay in place). Chardevs block reboot only: transfer mode hands their
/// descriptors over, as restart mode does across exec. Assigned devices block no mode
/// from the command line alone: restart and transfer depend on the host container's or
/// iommufd's features, reboot on the guest being in S3, which only cpr-save / cpr-transfer
/// check.
pub fn blockers(c: &VmmConfig, mode: Mode) -> Vec<String> {
    let mut out: Vec<String> = ram_blocker(c, mode, false).into_iter().collect();
    out.extend(chardev_blockers(c, mode));
    out
}

/// Blockers of reboot mode with RAM kept in place.
pub fn blockers_in_place(c: &VmmConfig) -> Vec<String> {
    let mut out: Vec<String> = ram_blocker(c, Mode::Reboot, true).into_iter().collect();
    out.extend(chardev_blockers(c, Mode::Reboot));
    out
}

/// `-only-cpr-capable`: one error listing every object that restart or reboot mode could
/// not update, or Ok.
pub fn check_only_cpr_capable(c: &VmmConfig) -> Result<(), String> {
    let mut all = Vec::new();
    for mode in [Mode::Restart, Mode::Reboot] {
        for b in blockers(c, mode) {
            all.push(format!("{mode} mode: {b}"));
        }
    }
    if all.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "-only-cpr-capable: this configuration cannot be live-updated:\n  {}",
            all.join("\n  ")
        ))
    }
}

/// query-cpr-blockers: per mode, the list of blockers (empty: possible).
pub fn to_json(c: &VmmConfig) -> Value {
    json!({
        "restart": blockers(c, Mode::Restart),
        "reboot": blockers(c, Mode::Reboot),
        "reboot-in-place": blockers_in_place(c),
        "transfer": blockers(c, Mode::Transfer),
    })
}

/// info cpr-blockers.
pub fn describe(c: &VmmConfig) -> String {
    let mut s = String::new();
    for (name, list) in [
        ("restart", blockers(c, Mode::Restart)),
        ("reboot", blockers(c, Mode::Reboot)),
        ("reboot ram=in-place", blockers_in_place(c)),
        ("transfer", blockers(c, Mode::Transfer)),
    ] {
        if list.is_empty() {
            s.push_str(&format!("{name}: no blockers\n"));
        } else {
            s.push_str(&format!("{name}: blocked by\n"));
            for b in list {
                s.push_str(&format!("  {b}\n"));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> VmmConfig {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        v.extend(["-kernel".to_string(), "/dev/null".to_string()]);
        match crate::cli::parse_args(v) {
            Ok(crate::cli::Action::Run(c)) => *c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn anonymous_ram_blocks_restart_and_in_place_but_not_reboot_in_image() {
        let c = config(&["-m", "64M"]);
        assert_eq!(blockers(&c, Mode::Restart).len(), 1);
        assert!(blockers(&c, Mode::Reboot).is_empty());
        assert_eq!(blockers_in_place(&c).len(), 1);
        let e = check_only_cpr_capable(&c).unwrap_err();
        assert!(e.contains("guest RAM (-m 64M): volatile RAM"), "{e}");
    }

    #[test]
    fn transfer_is_blocked_by_anonymous_ram_not_by_vfio_devices() {
        let c = config(&["-m", "64M"]);
        assert_eq!(
            blockers(&c, Mode::Transfer),
            vec![
                "guest RAM (-m 64M): volatile RAM (anonymous memory) cannot be handed to another \
                 process; use -machine memfd-alloc=on, or a memory-backend-memfd or \
                 memory-backend-file with share=on"
                    .to_string()
            ]
        );
        let c = config(&[
            "-machine",
            "memfd-alloc=on",
            "-chardev",
            "pty,id=p0",
            "-device",
            "vfio-pci,host=0000:00:04.0,id=edu0",
        ]);
        assert!(blockers(&c, Mode::Transfer).is_empty());
        assert_eq!(to_json(&c)["transfer"].as_array().map(Vec::len), Some(0));
        assert!(describe(&c).ends_with("transfer: no blockers\n"));
    }

    #[test]
    fn devices_assigned_through_iommufd_block_no_mode_from_the_command_line() {
        let c = config(&[
            "-machine",
            "memfd-alloc=on",
            "-object",
            "iommufd,id=iommufd0",
            "-device",
            "vfio-pci,host=0000:00:04.0,id=edu0,iommufd=iommufd0",
        ]);
        assert!(blockers(&c, Mode::Transfer).is_empty());
        assert!(blockers(&c, Mode::Restart).is_empty());
        assert!(describe(&c).ends_with("transfer: no blockers\n"));
    }

    #[test]
    fn a_pty_blocks_reboot_only() {
        let c = config(&["-machine", "memfd-alloc=on", "-chardev", "pty,id=p0"]);
        assert!(blockers(&c, Mode::Restart).is_empty());
        assert_eq!(
            blockers(&c, Mode::Reboot),
            vec![
                "chardev 'p0': a pty cannot be preserved across a restart of the vmm (the new \
                  process gets a pty with another name); use a socket chardev"
                    .to_string()
            ]
        );
    }
}
