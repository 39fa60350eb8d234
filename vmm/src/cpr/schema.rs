//! `vmm --dump-schema`: the schema of every section this binary writes and reads, in
//! cpr-format's [`Schema`] JSON. A release stores it as `fixtures/schemas/VERSION.json`, so
//! later binaries and `cpr-tool` can tell which images that release loads (docs/RELEASING.md).
//!
//! Two kinds of image cross a version boundary: the cpr-save image (restart and reboot
//! modes) and the cpr-exec hand-over (chardevs, monitor sessions, the pending cpr-exec),
//! which an old binary writes and a new one reads in a restart-mode live update. Both are
//! listed; section names are unique across them.

use cpr_format::Schema;

use super::image;
use super::ram_image::RebootRamState;
use super::reboot::RebootConfigState;
use super::ExecState;
use crate::chardev::ChardevState;
use crate::monitor::hmp::HmpSessionState;
use crate::monitor::qmp::QmpSessionState;

/// Every section of the cpr-save image (both modes) and of the cpr-exec hand-over.
pub fn full_schema() -> Schema {
    image::reader_schema()
        .with::<RebootRamState>()
        .with::<RebootConfigState>()
        .with::<ExecState>()
        .with::<ChardevState>()
        .with::<HmpSessionState>()
        .with::<QmpSessionState>()
}

/// Builds every section's schema once, so that the next cpr-save (and hand-over) in this
/// process finds them cached instead of building them inside the guest's pause (each
/// process image builds its own: call this when no pause is in progress).
pub fn warm_up() {
    let _ = full_schema();
}

/// [`full_schema`] as pretty JSON with a final newline (stable: sections sorted by name).
pub fn dump() -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(&full_schema()).map(|s| s + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_round_trips_and_lists_both_images_sections() {
        let text = dump().expect("schema serialises");
        let back: Schema = serde_json::from_str(&text).expect("schema parses");
        assert_eq!(back, full_schema());
        for name in [
            "machine",
            "cpu",
            "reboot.ram",
            "cpr.exec",
            "chardev",
            "monitor.qmp",
            "rtc.mc146818",
        ] {
            assert!(back.get(name).is_some(), "{name} missing from the dump");
        }
    }
}
