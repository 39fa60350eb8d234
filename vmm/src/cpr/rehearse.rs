//! A rehearsal of the pause's restore, in a transfer's new process, before the guest pauses.
//!
//! The new process decodes its first state image inside the pause, and a first run of that
//! code was ~3x slower than later runs here (a 30 KB image: parse 60 µs warm against ~190 µs
//! in the pause, section decode likewise; ~20 page faults only, so mostly cold caches,
//! branch predictors and lazily initialised paths). So after building the VM the new process
//! reads the state of its own parked, never-run vCPUs and devices, encodes it as a transfer
//! image and takes that image through the same parse, check and decode as the real one.
//! No KVM state is written. The rehearsed image is kept for one thing: the real image
//! embeds the same schema (~16 KB, larger than one vCPU's state) when both processes run
//! the same build, and its parse then reuses the rehearsal's decoded and checked schema
//! after a byte comparison ([`Image::from_bytes_like`]). Everything else of the real state
//! is parsed, checked and decoded in full inside the pause.

use cpr_format::{Image, Mode};

use super::{image, Host};
use crate::machine::IncomingMachine;

/// Runs the state image path once on `machine`'s own state; returns the rehearsed image if
/// it passed `check` (the same check the real one gets). Best effort: without it the real
/// restore runs cold and decodes the schema itself.
pub fn rehearse(
    machine: &IncomingMachine,
    host: &Host,
    check: impl Fn(&Image) -> bool,
) -> Option<Image> {
    let state = machine.save_state().ok()?;
    let header = image::header(&host.config, Mode::Transfer);
    // No fds or devices: with assigned devices the real image's schema differs, and its
    // parse simply does not reuse the rehearsal's.
    let bytes = image::to_bytes(header, &state, true, &[], None).ok()?;
    let img = Image::from_bytes(&bytes).ok()?;
    if !check(&img) {
        return None;
    }
    let (decoded, _) = image::machine_state(&img).ok()?;
    machine.check(&decoded).ok()?;
    Some(img)
}
