//! Guest RAM: the blocks of a PC memory map, their backing fds and their host mappings.
//!
//! RAM below the 32-bit PCI hole is one block at guest address 0 (at most 3 GiB); the rest
//! is a second block at 4 GiB, as on a real PC. Each block keeps the fd that backs it (memfd
//! or shared file) and its offset in that fd, so a live update can pass the fds to the next
//! process, which rebuilds the same `GuestRam` with [`GuestRam::from_fds`].

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use super::RamBackendConfig;

/// Start of the 32-bit PCI hole: RAM below 4 GiB ends here at most.
pub const LOW_RAM_MAX: u64 = 3 << 30;
/// Where RAM above the PCI hole starts.
pub const HIGH_RAM_START: u64 = 4 << 30;
const HUGE_PAGE_SIZE: u64 = 2 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest RAM size {size:#x} is not a multiple of {align:#x} bytes")]
    BadSize { size: u64, align: u64 },
    #[error("memfd_create for RAM block {name}")]
    MemfdCreate {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open RAM backing file {path}")]
    OpenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot size RAM backing fd to {size:#x} bytes")]
    Truncate {
        size: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot map RAM block at guest address {guest_addr:#x} ({size:#x} bytes)")]
    Map {
        guest_addr: u64,
        size: u64,
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    #[error("RAM block at guest address {guest_addr:#x} overlaps another or wraps")]
    BadLayout { guest_addr: u64 },
    #[error("cannot build the guest memory map")]
    Collection(#[source] vm_memory::GuestRegionCollectionError),
}

/// Where a RAM block sits in the guest and in its backing fd. Part of the saved machine
/// state: the fd manifest of a live update pairs each descriptor with its fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RamBlockDesc {
    pub guest_addr: u64,
    pub size: u64,
    /// Offset of the block in its fd (0 for memfd blocks, which get one memfd each).
    pub file_offset: u64,
}

/// One contiguous block of guest RAM.
pub struct RamBlock {
    pub desc: RamBlockDesc,
    /// The backing fd; `None` for private anonymous memory (which cannot survive exec).
    pub file: Option<Arc<File>>,
    /// Page size of the backing: 2 MiB for hugetlbfs (read from the fd), else 4 KiB.
    pub page_size: u64,
    region: Arc<GuestRegionMmap>,
}

impl RamBlock {
    /// What backs the block, read from the fd itself (so it is right for inherited fds):
    /// hugetlbfs page size -> Hugetlb, a `memfd:` link -> Memfd, any other file -> File.
    pub fn backing(&self) -> cpr_format::RamBacking {
        use std::os::fd::AsRawFd;
        let Some(file) = &self.file else {
            return cpr_format::RamBacking::Anonymous;
        };
        if self.page_size > 4096 {
            return cpr_format::RamBacking::Hugetlb;
        }
        let link = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        if link.starts_with("/memfd:") {
            cpr_format::RamBacking::Memfd
        } else {
            cpr_format::RamBacking::File { path: link }
        }
    }

    /// The block as the cpr-format header describes it.
    pub fn format_desc(&self) -> cpr_format::RamBlockDesc {
        cpr_format::RamBlockDesc {
            name: self.name().to_string(),
            guest_addr: self.desc.guest_addr,
            size: self.desc.size,
            backing: self.backing(),
            page_size: self.page_size,
        }
    }

    /// Stable name for the fd manifest: `ram-below-4g` or `ram-above-4g` (the memfd names).
    pub fn name(&self) -> &'static str {
        if self.desc.guest_addr < HIGH_RAM_START {
            "ram-below-4g"
        } else {
            "ram-above-4g"
        }
    }

    /// Host address of the first byte of the block.
    pub fn host_addr(&self) -> u64 {
        self.region.as_ptr() as u64
    }
}

/// An inherited RAM block: an fd and where it goes.
pub struct RamBlockFd {
    pub file: Arc<File>,
    pub desc: RamBlockDesc,
}

/// All of guest RAM.
pub struct GuestRam {
    blocks: Vec<RamBlock>,
    mem: GuestMemoryMmap,
}

/// The PC layout for `mem_size` bytes of RAM: (guest address, size) per block.
pub fn pc_layout(mem_size: u64) -> Vec<(u64, u64)> {
    let low = mem_size.min(LOW_RAM_MAX);
    let mut blocks = vec![(0, low)];
    if mem_size > low {
        blocks.push((HIGH_RAM_START, mem_size - low));
    }
    blocks
}

fn memfd(name: &str, size: u64, hugetlb: bool) -> Result<File, MemoryError> {
    let cname = CString::new(name).map_err(|e| MemoryError::MemfdCreate {
        name: name.to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
    })?;
    let mut flags = libc::MFD_CLOEXEC;
    if hugetlb {
        flags |= libc::MFD_HUGETLB;
    }
    // SAFETY: `cname` is a valid NUL-terminated string; the return value is checked.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), flags) };
    if fd < 0 {
        return Err(MemoryError::MemfdCreate {
            name: name.to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: `fd` is a fresh fd that nothing else owns.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.set_len(size)
        .map_err(|source| MemoryError::Truncate { size, source })?;
    Ok(file)
}

/// The page size of an fd's filesystem: hugetlbfs reports its huge page size as f_bsize.
fn page_size_of(file: &File) -> u64 {
    use std::os::fd::AsRawFd;
    const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: fstatfs writes at most one statfs into the buffer we own; result checked.
    let r = unsafe { libc::fstatfs(file.as_raw_fd(), st.as_mut_ptr()) };
    if r != 0 {
        return 4096;
    }
    // SAFETY: fstatfs succeeded and filled the struct.
    let st = unsafe { st.assume_init() };
    // f_type is c_long on glibc x86_64 but other widths elsewhere (musl, 32-bit).
    #[allow(clippy::unnecessary_cast)]
    let f_type = st.f_type as i64;
    if f_type == HUGETLBFS_MAGIC {
        st.f_bsize as u64
    } else {
        4096
    }
}

fn map_block(desc: RamBlockDesc, file: Option<&Arc<File>>) -> Result<GuestRegionMmap, MemoryError> {
    let map_err = |source| MemoryError::Map {
        guest_addr: desc.guest_addr,
        size: desc.size,
        source,
    };
    let region = match file {
        Some(f) => MmapRegion::from_file(
            FileOffset::from_arc(f.clone(), desc.file_offset),
            desc.size as usize,
        ),
        None => MmapRegion::new(desc.size as usize),
    }
    .map_err(map_err)?;
    GuestRegionMmap::new(region, GuestAddress(desc.guest_addr)).ok_or(MemoryError::BadLayout {
        guest_addr: desc.guest_addr,
    })
}

impl GuestRam {
    /// Allocates `mem_size` bytes of fresh RAM in the PC layout from `backend`.
    pub fn new(backend: &RamBackendConfig, mem_size: u64) -> Result<GuestRam, MemoryError> {
        let align = match backend {
            RamBackendConfig::Memfd { hugetlb: true } => HUGE_PAGE_SIZE,
            _ => 4096,
        };
        if mem_size == 0 || !mem_size.is_multiple_of(align) {
            return Err(MemoryError::BadSize {
                size: mem_size,
                align,
            });
        }
        let layout = pc_layout(mem_size);
        let mut parts = Vec::new();
        match backend {
            RamBackendConfig::Anonymous => {
                for (guest_addr, size) in layout {
                    parts.push((
                        None,
                        RamBlockDesc {
                            guest_addr,
                            size,
                            file_offset: 0,
                        },
                    ));
                }
            }
            RamBackendConfig::Memfd { hugetlb } => {
                for (i, (guest_addr, size)) in layout.into_iter().enumerate() {
                    let name = if i == 0 {
                        "ram-below-4g"
                    } else {
                        "ram-above-4g"
                    };
                    let file = Arc::new(memfd(name, size, *hugetlb)?);
                    parts.push((
                        Some(file),
                        RamBlockDesc {
                            guest_addr,
                            size,
                            file_offset: 0,
                        },
                    ));
                }
            }
            RamBackendConfig::File { path } => {
                // One file for all of RAM, blocks at increasing offsets (as QEMU's
                // memory-backend-file does for pc.ram's below/above-4g aliases).
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(path)
                    .map_err(|source| MemoryError::OpenFile {
                        path: path.clone(),
                        source,
                    })?;
                file.set_len(mem_size)
                    .map_err(|source| MemoryError::Truncate {
                        size: mem_size,
                        source,
                    })?;
                let file = Arc::new(file);
                let mut offset = 0;
                for (guest_addr, size) in layout {
                    parts.push((
                        Some(file.clone()),
                        RamBlockDesc {
                            guest_addr,
                            size,
                            file_offset: offset,
                        },
                    ));
                    offset += size;
                }
            }
        }
        Self::build(parts)
    }

    /// Maps RAM blocks whose fds were inherited (live update) or otherwise kept: the guest's
    /// memory contents are whatever the fds hold.
    pub fn from_fds(blocks: Vec<RamBlockFd>) -> Result<GuestRam, MemoryError> {
        Self::build(blocks.into_iter().map(|b| (Some(b.file), b.desc)).collect())
    }

    fn build(parts: Vec<(Option<Arc<File>>, RamBlockDesc)>) -> Result<GuestRam, MemoryError> {
        let mut blocks = Vec::new();
        for (file, desc) in parts {
            if desc.size == 0 || desc.guest_addr.checked_add(desc.size).is_none() {
                return Err(MemoryError::BadLayout {
                    guest_addr: desc.guest_addr,
                });
            }
            let region = Arc::new(map_block(desc, file.as_ref())?);
            let page_size = file.as_deref().map_or(4096, page_size_of);
            blocks.push(RamBlock {
                desc,
                file,
                page_size,
                region,
            });
        }
        let mem =
            GuestMemoryMmap::from_arc_regions(blocks.iter().map(|b| b.region.clone()).collect())
                .map_err(MemoryError::Collection)?;
        Ok(GuestRam { blocks, mem })
    }

    pub fn blocks(&self) -> &[RamBlock] {
        &self.blocks
    }

    /// Descriptors of every block, in memslot order.
    pub fn descs(&self) -> Vec<RamBlockDesc> {
        self.blocks.iter().map(|b| b.desc).collect()
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Total RAM size in bytes.
    pub fn size(&self) -> u64 {
        self.blocks.iter().map(|b| b.desc.size).sum()
    }

    /// End of the RAM block below 4 GiB.
    pub fn low_end(&self) -> u64 {
        self.blocks
            .iter()
            .filter(|b| b.desc.guest_addr < HIGH_RAM_START)
            .map(|b| b.desc.guest_addr + b.desc.size)
            .max()
            .unwrap_or(0)
    }

    /// CRC-32 of every block's bytes, in memslot order: `info ram-digest` compares guest RAM
    /// before a live update with after it. Read through the host mapping; a running guest
    /// may change RAM meanwhile, so callers digest a stopped guest.
    pub fn digest(&self) -> Vec<(&'static str, u64, u32)> {
        self.blocks
            .iter()
            .map(|b| {
                // SAFETY: the region maps `desc.size` bytes at `as_ptr()` for as long as
                // `self` lives; the slice is only read, and u8 has no invalid values.
                let bytes = unsafe {
                    std::slice::from_raw_parts(b.region.as_ptr() as *const u8, b.desc.size as usize)
                };
                (b.name(), b.desc.size, crc32fast::hash(bytes))
            })
            .collect()
    }

    /// Duplicates every block's fd (the fd manifest of a live update, or a test that builds
    /// a second machine over the same RAM). Fails for anonymous RAM, which has no fd.
    pub fn share_fds(&self) -> Option<Vec<RamBlockFd>> {
        self.blocks
            .iter()
            .map(|b| {
                b.file.as_ref().map(|f| RamBlockFd {
                    file: f.clone(),
                    desc: b.desc,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn pc_layout_splits_at_the_pci_hole() {
        assert_eq!(pc_layout(64 << 20), vec![(0, 64 << 20)]);
        assert_eq!(pc_layout(3 << 30), vec![(0, 3 << 30)]);
        assert_eq!(
            pc_layout(5 << 30),
            vec![(0, 3 << 30), (HIGH_RAM_START, 2 << 30)]
        );
    }

    #[test]
    fn memfd_ram_is_shared_with_a_second_mapping() {
        let ram = GuestRam::new(&RamBackendConfig::Memfd { hugetlb: false }, 4 << 20).unwrap();
        ram.memory()
            .write_obj(0x1234_5678u32, GuestAddress(0x1000))
            .unwrap();
        let again = GuestRam::from_fds(ram.share_fds().unwrap()).unwrap();
        let v: u32 = again.memory().read_obj(GuestAddress(0x1000)).unwrap();
        assert_eq!(v, 0x1234_5678);
        assert_eq!(again.blocks()[0].page_size, 4096);
        assert_eq!(again.blocks()[0].backing(), cpr_format::RamBacking::Memfd);
        assert_eq!(ram.blocks()[0].format_desc().size, 4 << 20);
        assert_eq!(again.blocks()[0].name(), "ram-below-4g");
    }

    #[test]
    fn file_ram_spans_blocks_at_offsets() {
        let dir = std::env::temp_dir().join(format!("vmm-ram-test-{}", std::process::id()));
        let ram = GuestRam::new(&RamBackendConfig::File { path: dir.clone() }, 8 << 20).unwrap();
        assert_eq!(ram.blocks().len(), 1);
        assert_eq!(std::fs::metadata(&dir).unwrap().len(), 8 << 20);
        assert_eq!(
            ram.blocks()[0].backing(),
            cpr_format::RamBacking::File {
                path: dir.to_string_lossy().into_owned()
            }
        );
        std::fs::remove_file(&dir).unwrap();
    }

    #[test]
    fn anonymous_ram_has_no_fds() {
        let ram = GuestRam::new(&RamBackendConfig::Anonymous, 4 << 20).unwrap();
        assert!(ram.share_fds().is_none());
        assert_eq!(ram.blocks()[0].backing(), cpr_format::RamBacking::Anonymous);
        assert!(matches!(
            GuestRam::new(&RamBackendConfig::Anonymous, 4097),
            Err(MemoryError::BadSize { .. })
        ));
    }
}
