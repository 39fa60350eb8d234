//! Guest RAM in a reboot-mode image: where it is ("in-place" in a persistent RAM file, or
//! "in-image" as raw regions), with a CRC-32 per block so cpr-load can refuse RAM that is
//! not the guest's.
//!
//! In-image: each block is scanned page by page; runs of non-zero pages become page-aligned
//! raw regions of the image (zero pages are skipped: fresh RAM reads as zeros), each with
//! its own CRC in the region table, streamed from the guest mapping in 1 MiB writes. cpr-load
//! reads each region straight into fresh guest RAM with `pread` and checks both the region's
//! CRC and the block's.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use cpr_format::{Image, ImageWriter};

use crate::machine::GuestRam;

const PAGE: usize = 4096;
/// Zero gaps shorter than this many pages do not split a run: a region costs a table entry
/// and the alignment padding a short gap would save anyway.
const MERGE_GAP_PAGES: usize = 4;

cpr_format::state! {
    /// A run of pages of a RAM block stored as one raw region of the image.
    #[derive(Eq)]
    pub struct RamRunState {
        #[hint(hex)] pub offset: u64,
        #[hint(size)] pub length: u64,
        pub region: String,
    }

    /// One guest RAM block: its digest and, in-image, the runs that hold its non-zero pages.
    #[derive(Eq)]
    pub struct RamBlockImageState {
        pub name: String,
        #[hint(addr)] pub guest_addr: u64,
        #[hint(size)] pub size: u64,
        /// Offset of the block in the RAM file (in-place).
        #[hint(hex)] pub file_offset: u64,
        /// CRC-32 of the block's bytes at cpr-save.
        #[hint(hex)] pub crc32: u32,
        pub runs: Vec<RamRunState>,
    }

    /// Where a reboot-mode image keeps guest RAM.
    #[section(name = "reboot.ram", version = 1, min_version = 1, required = true)]
    #[derive(Eq)]
    pub struct RebootRamState {
        /// `in-place` (the RAM file holds it) or `in-image` (raw regions of this image).
        pub placement: String,
        /// In-place: the RAM file's path and length at cpr-save.
        pub file: Option<String>,
        #[hint(size)] pub file_len: u64,
        /// Whether the blocks' `crc32` were computed (cpr-save `digest=off` skips them: in
        /// place, that saves a pass over all of RAM while the guest is stopped).
        pub digested: bool,
        pub blocks: Vec<RamBlockImageState>,
    }
}

/// The user's choice of where RAM goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    InPlace,
    InImage,
}

impl Placement {
    pub fn name(self) -> &'static str {
        match self {
            Placement::InPlace => "in-place",
            Placement::InImage => "in-image",
        }
    }

    pub fn parse(s: &str) -> Option<Placement> {
        match s {
            "in-place" => Some(Placement::InPlace),
            "in-image" => Some(Placement::InImage),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RamImageError {
    #[error("RAM block {block}: image region {region} is missing")]
    NoRegion { block: String, region: String },
    #[error("RAM block {block}: run at {offset:#x} (+{length:#x}) lies outside the block")]
    RunOutside {
        block: String,
        offset: u64,
        length: u64,
    },
    #[error("cannot read region {region} of the image {path}")]
    ReadRegion {
        path: String,
        region: String,
        #[source]
        source: std::io::Error,
    },
    #[error("region {region} of the image is damaged: CRC {computed:08x}, expected {stored:08x}")]
    RegionDigest {
        region: String,
        stored: u32,
        computed: u32,
    },
    #[error(
        "RAM block {block} does not hold the saved guest memory: CRC {computed:08x}, the image \
         recorded {stored:08x}"
    )]
    BlockDigest {
        block: String,
        stored: u32,
        computed: u32,
    },
    #[error("the image has no RAM block {0}")]
    NoBlock(String),
    #[error("cannot add guest RAM to the image")]
    Add(#[source] cpr_format::Error),
}

/// What writing RAM into an image cost.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RamStats {
    pub ram_bytes: u64,
    /// Bytes of RAM stored in the image (0 in-place).
    pub bytes_written: u64,
    pub zero_pages_skipped: u64,
    pub regions: u64,
    /// Block digests were computed.
    pub digested: bool,
    /// Scanning RAM (zero pages, digests), in ns.
    pub scan_ns: u64,
    /// Writing the whole image (metadata, regions, fsync, rename), in ns.
    pub write_ns: u64,
}

impl RamStats {
    /// RAM bytes written per second of image writing, in GB/s (10^9 bytes).
    pub fn gb_per_s(&self) -> f64 {
        if self.write_ns == 0 {
            0.0
        } else {
            self.bytes_written as f64 / self.write_ns as f64
        }
    }

    pub fn describe(&self, placement: Placement) -> String {
        match placement {
            Placement::InPlace if !self.digested => format!(
                "RAM in place: {} MiB kept in the RAM file, no digests; image written in {:.3} \
                 ms\n",
                self.ram_bytes >> 20,
                self.write_ns as f64 / 1e6
            ),
            Placement::InPlace => format!(
                "RAM in place: {} MiB kept in the RAM file, digests in {:.3} ms; image written in \
                 {:.3} ms\n",
                self.ram_bytes >> 20,
                self.scan_ns as f64 / 1e6,
                self.write_ns as f64 / 1e6
            ),
            Placement::InImage => format!(
                "RAM in image: {} bytes written ({} regions, {} zero pages skipped, {} MiB of \
                 RAM), scan {:.3} ms, image written in {:.3} ms, {:.2} GB/s\n",
                self.bytes_written,
                self.regions,
                self.zero_pages_skipped,
                self.ram_bytes >> 20,
                self.scan_ns as f64 / 1e6,
                self.write_ns as f64 / 1e6,
                self.gb_per_s()
            ),
        }
    }
}

/// The bytes of one RAM block, read through the host mapping.
fn block_bytes(ram: &GuestRam, i: usize) -> &[u8] {
    let b = &ram.blocks()[i];
    // SAFETY: the block maps `desc.size` bytes at `host_addr()` for as long as `ram` lives,
    // which outlives the returned borrow; u8 has no invalid values. Callers read a stopped
    // guest's RAM, so the bytes do not change meanwhile.
    unsafe { std::slice::from_raw_parts(b.host_addr() as *const u8, b.desc.size as usize) }
}

fn is_zero(page: &[u8]) -> bool {
    // Compare 16 bytes at a time; the compiler vectorises the fold.
    let (head, mid, tail) = {
        // SAFETY: u128 has no invalid bit patterns; align_to only reinterprets the aligned
        // middle of the slice.
        unsafe { page.align_to::<u128>() }
    };
    head.iter().all(|&b| b == 0)
        && mid.iter().fold(0u128, |a, &w| a | w) == 0
        && tail.iter().all(|&b| b == 0)
}

/// Scans a block: its CRC-32 and the runs of non-zero pages (offset, length).
fn scan(bytes: &[u8], digest: bool) -> (u32, Vec<(u64, u64)>, u64) {
    let mut h = crc32fast::Hasher::new();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut zero_pages = 0;
    for (i, page) in bytes.chunks(PAGE).enumerate() {
        if digest {
            h.update(page);
        }
        if is_zero(page) {
            zero_pages += 1;
            continue;
        }
        let off = (i * PAGE) as u64;
        let len = page.len() as u64;
        match runs.last_mut() {
            Some((s, l)) if off - (*s + *l) <= (MERGE_GAP_PAGES * PAGE) as u64 => {
                *l = off + len - *s;
            }
            _ => runs.push((off, len)),
        }
    }
    (if digest { h.finalize() } else { 0 }, runs, zero_pages)
}

/// Streams a run of guest RAM into the image writer without copying it up front.
struct RamReader {
    /// Keeps the mapping alive while the writer holds this reader.
    _mem: vm_memory::GuestMemoryMmap,
    ptr: usize,
    left: usize,
}

impl Read for RamReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.left);
        // SAFETY: `ptr..ptr+left` lies inside a mapping that `_mem` keeps alive; the guest
        // is stopped, so nothing writes it meanwhile; the ranges do not overlap `buf`.
        let src = unsafe { std::slice::from_raw_parts(self.ptr as *const u8, n) };
        buf[..n].copy_from_slice(src);
        self.ptr += n;
        self.left -= n;
        Ok(n)
    }
}

/// Records RAM for a reboot-mode image. In-image, adds a raw region per run of non-zero
/// pages. `file`: the RAM file's path and length (in-place).
pub fn add_ram(
    w: &mut ImageWriter,
    ram: &GuestRam,
    placement: Placement,
    file: Option<(String, u64)>,
    digest: bool,
) -> Result<RamStats, RamImageError> {
    let t0 = Instant::now();
    let mut stats = RamStats {
        ram_bytes: ram.size(),
        digested: digest,
        ..RamStats::default()
    };
    let mut blocks = Vec::new();
    for (i, b) in ram.blocks().iter().enumerate() {
        let bytes = block_bytes(ram, i);
        let (crc32, runs, zero_pages) = match placement {
            Placement::InImage => scan(bytes, digest),
            Placement::InPlace if digest => (crc32fast::hash(bytes), Vec::new(), 0),
            Placement::InPlace => (0, Vec::new(), 0),
        };
        let mut run_states = Vec::new();
        for (offset, length) in runs {
            let region = format!("ram.{}.{offset:x}", b.name());
            let reader = RamReader {
                _mem: ram.memory().clone(),
                ptr: b.host_addr() as usize + offset as usize,
                left: length as usize,
            };
            w.add_region_reader(&region, length, reader)
                .map_err(RamImageError::Add)?;
            stats.bytes_written += length;
            stats.regions += 1;
            run_states.push(RamRunState {
                offset,
                length,
                region,
            });
        }
        stats.zero_pages_skipped += zero_pages;
        blocks.push(RamBlockImageState {
            name: b.name().to_string(),
            guest_addr: b.desc.guest_addr,
            size: b.desc.size,
            file_offset: b.desc.file_offset,
            crc32,
            runs: run_states,
        });
    }
    let (file, file_len) = match file {
        Some((p, l)) => (Some(p), l),
        None => (None, 0),
    };
    w.add_section(
        "0",
        &RebootRamState {
            placement: placement.name().to_string(),
            file,
            file_len,
            digested: digest,
            blocks,
        },
    )
    .map_err(RamImageError::Add)?;
    stats.scan_ns = t0.elapsed().as_nanos() as u64;
    Ok(stats)
}

fn saved_block<'a>(
    saved: &'a RebootRamState,
    name: &str,
) -> Result<&'a RamBlockImageState, RamImageError> {
    saved
        .blocks
        .iter()
        .find(|b| b.name == name)
        .ok_or_else(|| RamImageError::NoBlock(name.to_string()))
}

/// Checks that RAM holds what the image recorded (each block's CRC-32).
pub fn verify(ram: &GuestRam, saved: &RebootRamState) -> Result<(), RamImageError> {
    if !saved.digested {
        return Ok(());
    }
    for (i, b) in ram.blocks().iter().enumerate() {
        let s = saved_block(saved, b.name())?;
        let computed = crc32fast::hash(block_bytes(ram, i));
        if computed != s.crc32 {
            return Err(RamImageError::BlockDigest {
                block: b.name().to_string(),
                stored: s.crc32,
                computed,
            });
        }
    }
    Ok(())
}

/// Fills fresh (zeroed) RAM from the image's regions, then checks every block's digest.
/// The guest must not run: nothing else writes this RAM meanwhile.
pub fn restore(
    ram: &GuestRam,
    img: &Image,
    path: &Path,
    saved: &RebootRamState,
) -> Result<u64, RamImageError> {
    let file = File::open(path).map_err(|source| RamImageError::ReadRegion {
        path: path.display().to_string(),
        region: String::new(),
        source,
    })?;
    let mut read = 0;
    for b in ram.blocks() {
        let s = saved_block(saved, b.name())?;
        for run in &s.runs {
            let r = img
                .region(&run.region)
                .ok_or_else(|| RamImageError::NoRegion {
                    block: s.name.clone(),
                    region: run.region.clone(),
                })?;
            let end = run.offset.checked_add(run.length);
            if end.is_none_or(|e| e > b.desc.size) || r.length != run.length {
                return Err(RamImageError::RunOutside {
                    block: s.name.clone(),
                    offset: run.offset,
                    length: run.length,
                });
            }
            // SAFETY: offset + length lies inside the block's mapping (checked above), which
            // `ram` keeps alive; the guest is not running and nothing else aliases this
            // range as a Rust reference while we fill it.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(
                    (b.host_addr() + run.offset) as *mut u8,
                    run.length as usize,
                )
            };
            file.read_exact_at(dst, r.offset)
                .map_err(|source| RamImageError::ReadRegion {
                    path: path.display().to_string(),
                    region: run.region.clone(),
                    source,
                })?;
            let computed = crc32fast::hash(dst);
            if computed != r.crc32 {
                return Err(RamImageError::RegionDigest {
                    region: run.region.clone(),
                    stored: r.crc32,
                    computed,
                });
            }
            read += run.length;
        }
    }
    verify(ram, saved)?;
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_finds_runs_and_skips_zero_pages() {
        let mut m = vec![0u8; 64 * PAGE];
        m[0] = 1; // page 0
        m[3 * PAGE + 7] = 2; // page 3: gap of 2 pages merges
        m[40 * PAGE] = 3; // page 40: new run
        let (crc, runs, zeros) = scan(&m, true);
        assert_eq!(crc, crc32fast::hash(&m));
        assert_eq!(
            runs,
            vec![(0, 4 * PAGE as u64), (40 * PAGE as u64, PAGE as u64)]
        );
        assert_eq!(zeros, 61);
    }

    fn header() -> cpr_format::Header {
        cpr_format::Header {
            producer: cpr_format::Producer {
                name: "vmm".into(),
                version: "test".into(),
                build_id: "test".into(),
            },
            created_unix_ns: 0,
            host: cpr_format::HostInfo {
                kernel_release: String::new(),
                page_size: 4096,
            },
            mode: cpr_format::Mode::Reboot,
            machine: cpr_format::MachineDesc {
                vcpus: 1,
                ram_blocks: vec![],
                devices: vec![],
            },
        }
    }

    #[test]
    fn ram_in_image_comes_back_and_a_damaged_region_is_refused() {
        use crate::machine::RamBackendConfig;
        use vm_memory::{Bytes, GuestAddress};
        let ram = GuestRam::new(&RamBackendConfig::Anonymous, 8 << 20).unwrap();
        ram.memory()
            .write_obj(0xdead_beef_u64, GuestAddress(0x1000))
            .unwrap();
        ram.memory()
            .write_obj(0x1234_u64, GuestAddress(0x60_0ff8))
            .unwrap();
        let dir = std::env::temp_dir().join(format!("vmm-ram-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ram.cpr");
        let mut w = ImageWriter::new(header());
        let stats = add_ram(&mut w, &ram, Placement::InImage, None, true).unwrap();
        assert_eq!(stats.regions, 2);
        assert_eq!(stats.bytes_written, 2 * PAGE as u64);
        assert_eq!(stats.zero_pages_skipped, (8 << 20) / PAGE as u64 - 2);
        w.write_atomic(&path).unwrap();

        let img = Image::open(&path).unwrap();
        let saved: RebootRamState = img.section("0").unwrap().unwrap();
        let fresh = GuestRam::new(&RamBackendConfig::Anonymous, 8 << 20).unwrap();
        assert_eq!(
            restore(&fresh, &img, &path, &saved).unwrap(),
            2 * PAGE as u64
        );
        assert_eq!(fresh.digest(), ram.digest());

        // One flipped byte in a region: refused by the region's CRC.
        let r = img.regions()[1].clone();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0x55], r.offset + 0xff8).unwrap();
        let again = GuestRam::new(&RamBackendConfig::Anonymous, 8 << 20).unwrap();
        let e = restore(&again, &img, &path, &saved).unwrap_err();
        assert!(matches!(e, RamImageError::RegionDigest { .. }), "{e}");
        // RAM that is not the saved guest's fails the block digest.
        assert!(matches!(
            verify(&again, &saved),
            Err(RamImageError::BlockDigest { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn zero_check_sees_the_last_byte() {
        let mut p = vec![0u8; PAGE];
        assert!(is_zero(&p));
        p[PAGE - 1] = 1;
        assert!(!is_zero(&p));
    }
}
