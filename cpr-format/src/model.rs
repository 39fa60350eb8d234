//! The image header and fd manifest: what a live update carries besides device state.

use std::os::fd::{AsFd, BorrowedFd, RawFd};

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Version of the container format (not of any section): `major.minor`.
///
/// A reader refuses an image whose major is newer than its own and reads one
/// whose minor is newer (minor versions only add map keys that old readers ignore).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FormatVersion {
    /// Incompatible layout changes.
    pub major: u16,
    /// Compatible additions.
    pub minor: u16,
}

impl FormatVersion {
    /// The version this library writes.
    pub const CURRENT: FormatVersion = FormatVersion { major: 1, minor: 0 };
}

impl std::fmt::Display for FormatVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The live-update mode that produced the image (QEMU's cpr modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Same host, new binary by exec; fds inherited by number, RAM stays in place.
    Restart,
    /// Host kernel reboot (kexec); RAM must be kept in persistent memory or saved.
    Reboot,
    /// New process receives fds over a UNIX socket; the old one can fall back.
    Transfer,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Restart => "restart",
            Mode::Reboot => "reboot",
            Mode::Transfer => "transfer",
        })
    }
}

/// Who wrote the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Producer {
    /// Program name, e.g. `vmm`.
    pub name: String,
    /// Program version, semver `x.y.z` (QEMU style).
    pub version: String,
    /// Build identifier (git commit, build hash); free text.
    pub build_id: String,
}

/// Facts about the host that wrote the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    /// `uname -r` of the writing host.
    pub kernel_release: String,
    /// Base page size in bytes.
    pub page_size: u64,
}

/// How a RAM block is backed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RamBacking {
    /// Private anonymous memory: cannot survive exec; must be saved as a region.
    Anonymous,
    /// A memfd (shared memory) carried over by fd.
    Memfd,
    /// A hugetlb memfd or hugetlbfs file.
    Hugetlb,
    /// A named file mapped shared.
    File {
        /// Path of the file on the host.
        path: String,
    },
}

/// One guest RAM block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RamBlockDesc {
    /// Block name, e.g. `pc.ram`.
    pub name: String,
    /// Guest physical address of its first byte.
    pub guest_addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Backing kind.
    pub backing: RamBacking,
    /// Page size of the backing in bytes.
    pub page_size: u64,
}

/// One device of the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceDesc {
    /// Unique device id, e.g. `serial0`; section instances use it.
    pub id: String,
    /// Device type, e.g. `uart-16550`.
    pub kind: String,
}

/// What the machine looks like, so a receiver can build the same one before loading state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineDesc {
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Guest RAM blocks.
    pub ram_blocks: Vec<RamBlockDesc>,
    /// Devices.
    pub devices: Vec<DeviceDesc>,
}

/// The image header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Who wrote the image.
    pub producer: Producer,
    /// Creation time, nanoseconds since the Unix epoch (UTC).
    pub created_unix_ns: u64,
    /// The writing host.
    pub host: HostInfo,
    /// Live-update mode.
    pub mode: Mode,
    /// The machine.
    pub machine: MachineDesc,
}

/// What a preserved descriptor is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FdKind {
    /// Guest RAM memfd.
    Memfd,
    /// Guest RAM backed by a file.
    RamFile,
    /// VFIO container (`/dev/vfio/vfio`).
    VfioContainer,
    /// VFIO group (`/dev/vfio/N`).
    VfioGroup,
    /// VFIO device fd.
    VfioDevice,
    /// An eventfd (irqfd, ioeventfd, VFIO interrupt).
    EventFd,
    /// A pty master of a character device back-end.
    Pty,
    /// A connected socket.
    Socket,
    /// A listening socket.
    ListeningSocket,
    /// A tap device.
    Tap,
    /// Anything else, named.
    Other(String),
}

/// File type of a descriptor, from `st_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileType {
    /// Regular file (memfds are regular files).
    Regular,
    /// Directory.
    Directory,
    /// Character device.
    CharDevice,
    /// Block device.
    BlockDevice,
    /// FIFO / pipe.
    Fifo,
    /// Socket.
    Socket,
    /// Symbolic link.
    Symlink,
    /// Anything else (anonymous inodes such as eventfds report this on some kernels).
    Unknown,
}

impl FileType {
    /// Classify the `S_IFMT` bits of a mode.
    pub fn from_mode(mode: u32) -> FileType {
        match mode & (libc_s::S_IFMT) {
            libc_s::S_IFREG => FileType::Regular,
            libc_s::S_IFDIR => FileType::Directory,
            libc_s::S_IFCHR => FileType::CharDevice,
            libc_s::S_IFBLK => FileType::BlockDevice,
            libc_s::S_IFIFO => FileType::Fifo,
            libc_s::S_IFSOCK => FileType::Socket,
            libc_s::S_IFLNK => FileType::Symlink,
            _ => FileType::Unknown,
        }
    }
}

/// POSIX `S_IF*` values (identical on every Linux architecture).
mod libc_s {
    pub const S_IFMT: u32 = 0o170000;
    pub const S_IFSOCK: u32 = 0o140000;
    pub const S_IFLNK: u32 = 0o120000;
    pub const S_IFREG: u32 = 0o100000;
    pub const S_IFBLK: u32 = 0o060000;
    pub const S_IFDIR: u32 = 0o040000;
    pub const S_IFCHR: u32 = 0o020000;
    pub const S_IFIFO: u32 = 0o010000;
}

/// Identity of an open file, so a receiver can check it got the descriptor it expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FdIdentity {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// File type from `st_mode`.
    pub file_type: FileType,
    /// `st_size` (memfd size, 0 for most special files).
    pub size: u64,
}

impl FdIdentity {
    /// The identity of an open descriptor (`fstat`).
    pub fn of_fd<F: AsFd>(fd: F) -> Result<FdIdentity, Error> {
        let raw = fd.as_fd();
        let st = nix::sys::stat::fstat(raw).map_err(|e| Error::Fstat {
            fd: std::os::fd::AsRawFd::as_raw_fd(&raw),
            source: std::io::Error::from(e),
        })?;
        Ok(FdIdentity {
            dev: st.st_dev,
            ino: st.st_ino,
            file_type: FileType::from_mode(st.st_mode),
            size: u64::try_from(st.st_size).unwrap_or(0),
        })
    }

    /// The identity of a raw descriptor number that the caller knows to be open.
    pub fn of_raw_fd(fd: RawFd) -> Result<FdIdentity, Error> {
        if fd < 0 {
            return Err(Error::Fstat {
                fd,
                source: std::io::Error::from_raw_os_error(nix::libc::EBADF),
            });
        }
        // SAFETY: the descriptor is only borrowed for the duration of one fstat call, and
        // fstat on a closed or reused number fails or reports that file; it never touches
        // memory through the descriptor.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        FdIdentity::of_fd(borrowed)
    }

    /// Compare with the identity of a received descriptor; `size` is compared only when
    /// `check_size` (a memfd's size is fixed, a socket's is meaningless).
    pub fn verify(&self, name: &str, actual: &FdIdentity, check_size: bool) -> Result<(), Error> {
        if self.dev != actual.dev
            || self.ino != actual.ino
            || self.file_type != actual.file_type
            || (check_size && self.size != actual.size)
        {
            return Err(Error::FdIdentityMismatch {
                name: name.to_owned(),
                expected: *self,
                actual: *actual,
            });
        }
        Ok(())
    }
}

/// One descriptor that must survive the live update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdEntry {
    /// Unique name, e.g. `ram0`, `vfio.group.12`, `serial0.pty`.
    pub name: String,
    /// What it is.
    pub kind: FdKind,
    /// Restart mode: the descriptor number in the new process (inherited over exec).
    /// Transfer mode: the index in the SCM_RIGHTS array sent over the socket.
    pub fd: i32,
    /// Identity at save time.
    pub identity: FdIdentity,
}
