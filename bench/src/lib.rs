//! Live-update benchmarks: real guests updated by the real `vmm`, measured against the
//! floor program (`cpr-floor`) in the same run. See docs/BENCHMARKS.md.

pub mod calibrate;
pub mod host;
pub mod lab;
pub mod qmp;
pub mod report;
pub mod scenario;
pub mod stats;
