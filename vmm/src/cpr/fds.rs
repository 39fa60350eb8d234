//! The fd manifest: which descriptors survive the exec, by name, with their identity.
//!
//! Every fd the VMM opens is close-on-exec (memfds with MFD_CLOEXEC, sockets, ptys, files and
//! eventfds through std/nix, KVM fds by kvm-ioctls). Just before execve, cpr-exec clears
//! FD_CLOEXEC on exactly the manifest's fds; if execve fails it sets it again. The new
//! process checks each inherited number against the identity recorded (fstat dev, ino,
//! type, size) before it trusts it, and marks it close-on-exec again at once.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use cpr_format::{FdEntry, FdIdentity, FdKind};

use crate::chardev::{Chardev, FdRole};
use crate::machine::GuestRam;

/// Environment variable naming the hand-over memfd's number in the new process.
pub const HANDOVER_ENV: &str = "VMM_CPR_HANDOVER";
/// Environment variable with the CLOCK_MONOTONIC time of the execve call.
pub const EXEC_TIME_ENV: &str = "VMM_CPR_EXEC_NS";

#[derive(Debug, thiserror::Error)]
pub enum FdError {
    #[error("cannot read the identity of fd {fd} ({name})")]
    Identity {
        name: String,
        fd: RawFd,
        #[source]
        source: Box<cpr_format::Error>,
    },
    #[error("inherited fd {fd} is not the one saved as {name}")]
    Mismatch {
        name: String,
        fd: RawFd,
        #[source]
        source: Box<cpr_format::Error>,
    },
    #[error("cannot change FD_CLOEXEC on fd {fd} ({name})")]
    Cloexec {
        name: String,
        fd: RawFd,
        #[source]
        source: std::io::Error,
    },
    #[error("hand-over memfd")]
    Handover(#[source] std::io::Error),
    #[error("{HANDOVER_ENV}={value:?} is not a descriptor number")]
    HandoverEnv { value: String },
}

fn role_name(role: FdRole) -> &'static str {
    match role {
        FdRole::Listener => "listener",
        FdRole::Client => "client",
        FdRole::PtyMaster => "pty-master",
        FdRole::File => "file",
    }
}

/// The chardev role an fd entry named `chardev.ID.ROLE` stands for, if it is one of `id`'s.
pub fn chardev_role(entry: &FdEntry, id: &str) -> Option<FdRole> {
    let rest = entry.name.strip_prefix("chardev.")?.strip_prefix(id)?;
    match rest.strip_prefix('.')? {
        "listener" => Some(FdRole::Listener),
        "client" => Some(FdRole::Client),
        "pty-master" => Some(FdRole::PtyMaster),
        "file" => Some(FdRole::File),
        _ => None,
    }
}

fn entry(name: String, kind: FdKind, fd: RawFd) -> Result<FdEntry, FdError> {
    let identity = FdIdentity::of_raw_fd(fd).map_err(|source| FdError::Identity {
        name: name.clone(),
        fd,
        source: Box::new(source),
    })?;
    Ok(FdEntry {
        name,
        kind,
        fd,
        identity,
    })
}

/// The manifest of everything that must survive: RAM block fds, then each chardev's fds.
/// Anonymous RAM has no fd (blockers refuse it before this is called).
pub fn manifest(ram: &GuestRam, chardevs: &[Chardev]) -> Result<Vec<FdEntry>, FdError> {
    let mut out = Vec::new();
    for b in ram.blocks() {
        if let Some(f) = &b.file {
            let kind = if is_memfd(f.as_raw_fd()) {
                FdKind::Memfd
            } else {
                FdKind::RamFile
            };
            out.push(entry(b.name().to_string(), kind, f.as_raw_fd())?);
        }
    }
    for c in chardevs {
        for (role, fd) in c.fds() {
            let kind = match role {
                FdRole::Listener => FdKind::ListeningSocket,
                FdRole::Client => FdKind::Socket,
                FdRole::PtyMaster => FdKind::Pty,
                FdRole::File => FdKind::Other("chardev-file".into()),
            };
            out.push(entry(
                format!("chardev.{}.{}", c.spec.id, role_name(role)),
                kind,
                fd,
            )?);
        }
    }
    Ok(out)
}

/// The fd manifest entries of the assigned devices: container, groups, devices and their
/// interrupt eventfds, named as `VfioSet::fds` names them.
pub fn vfio_manifest(set: Option<&crate::vfio::VfioSet>) -> Result<Vec<FdEntry>, FdError> {
    let Some(set) = set else {
        return Ok(Vec::new());
    };
    set.fds()
        .into_iter()
        .map(|(name, fd)| {
            let kind = if name == "vfio-container" {
                FdKind::VfioContainer
            } else if name == crate::vfio::iommufd_set::IOMMUFD_FD {
                FdKind::Other("iommufd".into())
            } else if name.starts_with("vfio-group-") {
                FdKind::VfioGroup
            } else if name.starts_with("vfio-device-") {
                FdKind::VfioDevice
            } else {
                FdKind::EventFd
            };
            entry(name, kind, fd)
        })
        .collect()
}

fn is_memfd(fd: RawFd) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map(|p| p.to_string_lossy().starts_with("/memfd:"))
        .unwrap_or(false)
}

/// Sets or clears FD_CLOEXEC on one descriptor.
pub fn set_cloexec(name: &str, fd: RawFd, on: bool) -> Result<(), FdError> {
    let err = |source| FdError::Cloexec {
        name: name.to_string(),
        fd,
        source,
    };
    // SAFETY: F_GETFD/F_SETFD only read and write the descriptor flags; no memory involved.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    let new = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, new) } < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Clears FD_CLOEXEC on every manifest fd; on failure the ones already cleared are set
/// again, so nothing is left inheritable.
pub fn clear_cloexec_all(fds: &[(String, RawFd)]) -> Result<(), FdError> {
    for (i, (name, fd)) in fds.iter().enumerate() {
        if let Err(e) = set_cloexec(name, *fd, false) {
            restore_cloexec_all(&fds[..i]);
            return Err(e);
        }
    }
    Ok(())
}

/// Sets FD_CLOEXEC again (after a failed execve). Best effort: the fds stay open either way.
pub fn restore_cloexec_all(fds: &[(String, RawFd)]) {
    for (name, fd) in fds {
        let _ = set_cloexec(name, *fd, true);
    }
}

/// Checks an inherited fd against its manifest entry (dev, ino and type; size too for
/// RAM, whose size is fixed) and makes it close-on-exec again.
pub fn verify_inherited(e: &FdEntry) -> Result<(), FdError> {
    let actual = FdIdentity::of_raw_fd(e.fd).map_err(|source| FdError::Identity {
        name: e.name.clone(),
        fd: e.fd,
        source: Box::new(source),
    })?;
    let check_size = matches!(e.kind, FdKind::Memfd | FdKind::RamFile);
    e.identity
        .verify(&e.name, &actual, check_size)
        .map_err(|source| FdError::Mismatch {
            name: e.name.clone(),
            fd: e.fd,
            source: Box::new(source),
        })?;
    set_cloexec(&e.name, e.fd, true)
}

/// Puts `bytes` in a new close-on-exec memfd (the hand-over the new process reads).
pub fn handover_memfd(bytes: &[u8]) -> Result<File, FdError> {
    let name = c"vmm-cpr-handover";
    // SAFETY: `name` is NUL-terminated; the result is checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(FdError::Handover(std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd that nothing else owns.
    let mut f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    f.write_all(bytes).map_err(FdError::Handover)?;
    Ok(f)
}

/// Reads and closes the hand-over memfd named by [`HANDOVER_ENV`] (`None` when the
/// process was not started by cpr-exec). Removes the variables, so nothing this process
/// starts sees them.
pub fn take_handover() -> Result<Option<(Vec<u8>, u64)>, FdError> {
    let Some(value) = std::env::var_os(HANDOVER_ENV) else {
        return Ok(None);
    };
    let exec_ns = std::env::var(EXEC_TIME_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    std::env::remove_var(HANDOVER_ENV);
    std::env::remove_var(EXEC_TIME_ENV);
    let text = value.to_string_lossy().into_owned();
    let fd: RawFd = match text.parse() {
        Ok(fd) if fd > 2 && is_memfd(fd) => fd,
        _ => return Err(FdError::HandoverEnv { value: text }),
    };
    // SAFETY: the number was inherited for this purpose, is open (is_memfd read its link),
    // and nothing else in this process refers to it.
    let mut f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut bytes = Vec::new();
    f.rewind().map_err(FdError::Handover)?;
    f.read_to_end(&mut bytes).map_err(FdError::Handover)?;
    Ok(Some((bytes, exec_ns)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloexec_round_trip_and_identity_check() {
        let f = handover_memfd(b"hello").unwrap();
        let fd = f.as_raw_fd();
        set_cloexec("t", fd, false).unwrap();
        // SAFETY: F_GETFD on an open fd.
        assert_eq!(
            unsafe { libc::fcntl(fd, libc::F_GETFD) } & libc::FD_CLOEXEC,
            0
        );
        let e = entry("t".into(), FdKind::Memfd, fd).unwrap();
        verify_inherited(&e).unwrap();
        // SAFETY: as above.
        assert_ne!(
            unsafe { libc::fcntl(fd, libc::F_GETFD) } & libc::FD_CLOEXEC,
            0
        );
        let other = handover_memfd(b"x").unwrap();
        let wrong = FdEntry {
            fd: other.as_raw_fd(),
            ..e
        };
        let err = verify_inherited(&wrong).unwrap_err();
        assert!(matches!(err, FdError::Mismatch { .. }), "{err}");
    }

    #[test]
    fn chardev_roles_parse_only_their_own_id() {
        let e = FdEntry {
            name: "chardev.serial0.client".into(),
            kind: FdKind::Socket,
            fd: 5,
            identity: FdIdentity::of_raw_fd(0).unwrap_or(FdIdentity {
                dev: 0,
                ino: 0,
                file_type: cpr_format::FileType::Unknown,
                size: 0,
            }),
        };
        assert_eq!(chardev_role(&e, "serial0"), Some(FdRole::Client));
        assert_eq!(chardev_role(&e, "serial"), None);
        assert_eq!(chardev_role(&e, "mon"), None);
    }
}
