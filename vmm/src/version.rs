//! The version this binary reports (`-version`, HMP banner, `info version`, query-version,
//! image producer).
//!
//! The version string lives in a fixed 64-byte stamp, `VMM_VERSION_STAMP=<version>` padded
//! with NULs, that is read at run time, not folded into the code. A packager (or a test)
//! can make a differently-versioned copy of a built binary by rewriting the stamp's bytes
//! in the copy, which is exactly a new binary differing only in its version:
//! `tests/tests/cpr_restart.rs` updates a running guest from vmm X to such a copy.

/// Prefix of the stamp; the version follows, then NUL padding to [`STAMP_LEN`].
pub const STAMP_PREFIX: &[u8] = b"VMM_VERSION_STAMP=";
/// Size of the stamp in bytes.
pub const STAMP_LEN: usize = 64;

const fn stamp() -> [u8; STAMP_LEN] {
    let mut out = [0u8; STAMP_LEN];
    let v = env!("CARGO_PKG_VERSION").as_bytes();
    let mut i = 0;
    while i < STAMP_PREFIX.len() {
        out[i] = STAMP_PREFIX[i];
        i += 1;
    }
    let mut j = 0;
    while j < v.len() && i < STAMP_LEN - 1 {
        out[i] = v[j];
        i += 1;
        j += 1;
    }
    out
}

#[used]
static STAMP: [u8; STAMP_LEN] = stamp();

/// The version, read from the stamp.
pub fn version() -> String {
    // SAFETY: STAMP is a valid, aligned static; a volatile read keeps the compiler from
    // replacing it with the build-time constant, so a rewritten stamp is what we report.
    let bytes: [u8; STAMP_LEN] = unsafe { std::ptr::read_volatile(&STAMP) };
    let body = &bytes[STAMP_PREFIX.len()..];
    let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
    String::from_utf8_lossy(&body[..end]).into_owned()
}

/// (major, minor, micro) of [`version`], for query-version.
pub fn triple() -> (u64, u64, u64) {
    let v = version();
    let mut parts = v.split('.').map(|p| {
        p.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u64>()
            .unwrap_or(0)
    });
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// Build identifier recorded in images.
pub fn build_id() -> &'static str {
    concat!(env!("CARGO_PKG_NAME"), "-", env!("CARGO_PKG_VERSION"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn stamp_reads_back_the_package_version() {
        assert_eq!(super::version(), env!("CARGO_PKG_VERSION"));
    }
}
