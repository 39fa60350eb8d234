//! Pause-time accounting. Every timestamp is CLOCK_MONOTONIC in nanoseconds: that clock is
//! system-wide and survives execve, so stamps taken by the old process and by the new one
//! (same PID) subtract directly.
//!
//! The guest's pause runs from the last vCPU stopped in the old process to the first vCPU
//! running in the new one; the phases in between tell where it went.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Value};

/// Now on CLOCK_MONOTONIC, in nanoseconds.
pub fn now_ns() -> u64 {
    crate::machine::vcpu_thread::monotonic_ns()
}

/// How long the end of a pause waits for a vCPU thread to run before giving up.
const FIRST_RUN_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Resumes `m` and returns the end of the pause: when its first vCPU thread really went
/// back to KVM_RUN (stamped by that thread), not when the threads were told to. On a busy
/// host the difference is a scheduler wake-up, which the guest does wait for. A machine
/// that stays suspended runs no vCPU: then it is now.
pub fn resume_stamped(
    m: &mut crate::machine::Machine,
) -> Result<u64, crate::machine::MachineError> {
    let asked = now_ns();
    m.resume()?;
    if m.run_state() != crate::machine::RunState::Running {
        return Ok(now_ns());
    }
    Ok(m.first_run_since(asked, FIRST_RUN_WAIT)
        .unwrap_or_else(now_ns))
}

static MAIN_ENTERED: AtomicU64 = AtomicU64::new(0);

/// Records the process's start (the first thing `main` does): after a cpr-exec this is
/// when the new binary got control.
pub fn mark_main_entered() {
    MAIN_ENTERED.store(now_ns(), Ordering::Relaxed);
}

/// When `main` started (0 if [`mark_main_entered`] was not called).
pub fn main_entered() -> u64 {
    MAIN_ENTERED.load(Ordering::Relaxed)
}

cpr_format::state! {
    /// Timestamps of one live update's phases (CLOCK_MONOTONIC ns; 0 = not reached).
    #[section(name = "cpr.timing", version = 1, min_version = 1, required = false)]
    #[derive(Default, Eq, Copy)]
    pub struct Timestamps {
        /// cpr-save asked the vCPUs to stop.
        #[hint(unit("ns"))] pub stop_requested: u64,
        /// The last vCPU stopped: the guest's pause starts here.
        #[hint(unit("ns"))] pub vcpus_stopped: u64,
        /// The image is on disk.
        #[hint(unit("ns"))] pub image_written: u64,
        /// cpr-exec arrived.
        #[hint(unit("ns"))] pub exec_requested: u64,
        /// Just before execve.
        #[hint(unit("ns"))] pub exec_called: u64,
        /// The new binary's main() started.
        #[hint(unit("ns"))] pub new_main_entered: u64,
        /// RAM mapped, new KVM VM with memslots, irqchip, PIT and vCPUs created.
        #[hint(unit("ns"))] pub machine_ready: u64,
        /// cpr-load arrived.
        #[hint(unit("ns"))] pub load_started: u64,
        /// vCPU, irqchip, PIT, clock and device state restored.
        #[hint(unit("ns"))] pub state_restored: u64,
        /// The first vCPU thread went back to KVM_RUN (the guest runs again).
        #[hint(unit("ns"))] pub first_vcpu_running: u64,
    }
}

/// One phase of the breakdown: name and the stamps that bound it.
/// The stamps that open and close a phase.
type Bounds = fn(&Timestamps) -> (u64, u64);

const PHASES: &[(&str, Bounds)] = &[
    ("stop-vcpus", |t| (t.stop_requested, t.vcpus_stopped)),
    ("write-image", |t| (t.vcpus_stopped, t.image_written)),
    ("until-exec", |t| (t.image_written, t.exec_called)),
    ("exec", |t| (t.exec_called, t.new_main_entered)),
    ("machine", |t| (t.new_main_entered, t.machine_ready)),
    ("until-load", |t| (t.machine_ready, t.load_started)),
    ("restore", |t| (t.load_started, t.state_restored)),
    ("resume", |t| (t.state_restored, t.first_vcpu_running)),
];

fn us(a: u64, b: u64) -> Option<f64> {
    (a != 0 && b != 0 && b >= a).then(|| (b - a) as f64 / 1000.0)
}

impl Timestamps {
    /// The guest's pause in microseconds, when both ends were reached.
    pub fn pause_us(&self) -> Option<f64> {
        us(self.vcpus_stopped, self.first_vcpu_running)
    }

    /// Each phase's duration in microseconds (`None` when a bound is missing).
    pub fn phases(&self) -> Vec<(&'static str, Option<f64>)> {
        PHASES
            .iter()
            .map(|(name, f)| {
                let (a, b) = f(self);
                (*name, us(a, b))
            })
            .collect()
    }

    /// `{"pause-us": .., "phases": {"stop-vcpus": .., ...}}` for query-cpr and the events.
    pub fn to_json(self) -> Value {
        let mut phases = serde_json::Map::new();
        for (name, v) in self.phases() {
            if let Some(v) = v {
                phases.insert(name.to_string(), json!(round(v)));
            }
        }
        let mut out = serde_json::Map::new();
        if let Some(p) = self.pause_us() {
            out.insert("pause-us".into(), json!(round(p)));
        }
        out.insert("phases-us".into(), Value::Object(phases));
        Value::Object(out)
    }

    /// Lines for `info cpr`.
    pub fn describe(&self) -> String {
        let mut s = match self.pause_us() {
            Some(p) => format!(
                "pause: {:.3} ms (last vCPU stopped .. first vCPU running)\n",
                p / 1000.0
            ),
            None => "pause: not complete\n".to_string(),
        };
        for (name, v) in self.phases() {
            if let Some(v) = v {
                s.push_str(&format!("  {name:<12} {:>9.3} ms\n", v / 1000.0));
            }
        }
        s
    }
}

fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_spans_stop_to_first_run_and_phases_add_up() {
        let t = Timestamps {
            stop_requested: 1_000,
            vcpus_stopped: 2_000,
            image_written: 3_000,
            exec_requested: 3_500,
            exec_called: 4_000,
            new_main_entered: 6_000,
            machine_ready: 7_000,
            load_started: 8_000,
            state_restored: 9_000,
            first_vcpu_running: 10_000,
        };
        assert_eq!(t.pause_us(), Some(8.0));
        let sum: f64 = t.phases().iter().skip(1).filter_map(|(_, v)| *v).sum();
        assert_eq!(sum, 8.0);
        assert_eq!(t.to_json()["phases-us"]["exec"], json!(2.0));
    }

    #[test]
    fn missing_stamps_leave_phases_out() {
        let t = Timestamps {
            vcpus_stopped: 5,
            ..Timestamps::default()
        };
        assert_eq!(t.pause_us(), None);
        assert!(t.describe().starts_with("pause: not complete"));
    }
}
