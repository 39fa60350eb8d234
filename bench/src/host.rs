//! The machine a run happened on, its load, and root-only knobs set for a run and restored.

use serde_json::{json, Value};

/// The 1-minute load average (0 if unreadable).
pub fn load_avg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

fn first_match(path: &str, key: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    })
}

/// CPU model, core count, RAM, kernel: printed with every table.
pub fn describe() -> Value {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib: u64 = first_match("/proc/meminfo", "MemTotal")
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    json!({
        "cpu": first_match("/proc/cpuinfo", "model name").unwrap_or_default(),
        "cpus": cpus,
        "mem-gib": (mem_kib as f64 / (1 << 20) as f64 * 10.0).round() / 10.0,
        "kernel": kernel,
        "thp-shmem": std::fs::read_to_string(THP_SHMEM).unwrap_or_default().trim(),
    })
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";
const THP_SHMEM: &str = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";

fn read_u64(path: &str) -> Result<u64, String> {
    std::fs::read_to_string(path)
        .map_err(|e| format!("{path}: {e}"))?
        .trim()
        .parse()
        .map_err(|e| format!("{path}: {e}"))
}

fn free_huge_pages() -> u64 {
    first_match("/proc/meminfo", "HugePages_Free")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// 2 MiB huge pages reserved for one scenario; the old count is restored on drop.
pub struct HugePages {
    old: u64,
}

impl HugePages {
    /// Reserves enough pages for `mib` MiB of RAM (root only). Fails, releasing what it
    /// got, when the kernel cannot find that many (fragmented or short of memory).
    pub fn reserve(mib: u64) -> Result<HugePages, String> {
        let old = read_u64(NR_HUGEPAGES)?;
        let need = mib.div_ceil(2);
        let guard = HugePages { old };
        // Pages of an earlier scenario may still be in use for a moment (a process being
        // torn down): what counts is free pages, so raise the pool until enough are free.
        let start = std::time::Instant::now();
        loop {
            let free = free_huge_pages();
            if free >= need {
                return Ok(guard);
            }
            let total = read_u64(NR_HUGEPAGES)?;
            std::fs::write(NR_HUGEPAGES, (total + need - free).to_string())
                .map_err(|e| format!("{NR_HUGEPAGES}: {e} (reserving huge pages needs root)"))?;
            if free_huge_pages() >= need {
                return Ok(guard);
            }
            if start.elapsed() > std::time::Duration::from_secs(20) {
                return Err(format!(
                    "only {} of {need} huge pages could be reserved",
                    free_huge_pages()
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        let _ = std::fs::write(NR_HUGEPAGES, self.old.to_string());
    }
}

/// The shmem THP policy, set for one scenario and restored on drop.
pub struct ShmemThp {
    old: String,
}

impl ShmemThp {
    pub fn set(policy: &str) -> Result<ShmemThp, String> {
        let raw = std::fs::read_to_string(THP_SHMEM).map_err(|e| format!("{THP_SHMEM}: {e}"))?;
        // The file shows every choice with the current one in brackets.
        let old = raw
            .split_whitespace()
            .find(|w| w.starts_with('['))
            .map(|w| w.trim_matches(|c| c == '[' || c == ']').to_string())
            .ok_or_else(|| format!("{THP_SHMEM}: no current policy in {raw:?}"))?;
        std::fs::write(THP_SHMEM, policy).map_err(|e| format!("{THP_SHMEM}: {e}"))?;
        Ok(ShmemThp { old })
    }
}

impl Drop for ShmemThp {
    fn drop(&mut self) {
        let _ = std::fs::write(THP_SHMEM, &self.old);
    }
}
