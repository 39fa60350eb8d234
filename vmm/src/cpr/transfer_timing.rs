//! Pause accounting for transfer mode. Both processes stamp CLOCK_MONOTONIC, which is
//! system-wide, so the old process's stamps and the new one's subtract directly.
//!
//! The pause runs from the last vCPU stopped in the old process to the first vCPU running in
//! the new one. Building the new VM ("prepare") happens before it and the old process's
//! teardown (exit) after it; both are reported but are not part of the pause.

use serde_json::{json, Value};

/// Stamps of one transfer (ns; 0 = not reached). Old: hello_sent, ready_received,
/// stop_requested, vcpus_stopped, state_saved, go_sent. New: the others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransferTiming {
    pub hello_sent: u64,
    pub machine_ready: u64,
    pub ready_received: u64,
    pub stop_requested: u64,
    pub vcpus_stopped: u64,
    pub state_saved: u64,
    pub state_received: u64,
    pub state_restored: u64,
    pub go_sent: u64,
    pub go_received: u64,
    pub first_vcpu_running: u64,
}

/// Number of stamps in [`TransferTiming::to_words`].
pub const WORDS: usize = 11;

/// Phases inside the pause, then those around it; each with its bounds and meaning.
type Bounds = fn(&TransferTiming) -> (u64, u64);
const PHASES: &[(&str, bool, Bounds, &str)] = &[
    (
        "save-state",
        true,
        |t| (t.vcpus_stopped, t.state_saved),
        "vCPU, irqchip, PIT, clock and device state read, image encoded",
    ),
    (
        "send-state",
        true,
        |t| (t.state_saved, t.state_received),
        "state image sent to and received by the new process",
    ),
    (
        "restore",
        true,
        |t| (t.state_received, t.state_restored),
        "image verified, state set in the new VM",
    ),
    (
        "commit",
        true,
        |t| (t.state_restored, t.go_received),
        "'restored' to the old process, 'go' back (ownership passes)",
    ),
    (
        "resume",
        true,
        |t| (t.go_received, t.first_vcpu_running),
        "vCPU threads released in the new process, until the first is back in KVM_RUN",
    ),
    (
        "prepare",
        false,
        |t| (t.hello_sent, t.ready_received),
        "before the pause: fds sent, new VM with memslots, irqchip, PIT and vCPUs built",
    ),
    (
        "stop-vcpus",
        false,
        |t| (t.stop_requested, t.vcpus_stopped),
        "vCPUs asked to stop .. the last one stopped",
    ),
];

/// What each phase covers (for the docs and `info cpr` readers).
#[cfg(test)]
pub fn phase_help() -> Vec<(&'static str, &'static str)> {
    PHASES.iter().map(|(n, _, _, h)| (*n, *h)).collect()
}

fn us(a: u64, b: u64) -> Option<f64> {
    (a != 0 && b != 0 && b >= a).then(|| (b - a) as f64 / 1000.0)
}

impl TransferTiming {
    /// The stamps as words, in field order (the wire form).
    pub fn to_words(self) -> [u64; WORDS] {
        [
            self.hello_sent,
            self.machine_ready,
            self.ready_received,
            self.stop_requested,
            self.vcpus_stopped,
            self.state_saved,
            self.state_received,
            self.state_restored,
            self.go_sent,
            self.go_received,
            self.first_vcpu_running,
        ]
    }

    pub fn from_words(w: &[u64; WORDS]) -> TransferTiming {
        TransferTiming {
            hello_sent: w[0],
            machine_ready: w[1],
            ready_received: w[2],
            stop_requested: w[3],
            vcpus_stopped: w[4],
            state_saved: w[5],
            state_received: w[6],
            state_restored: w[7],
            go_sent: w[8],
            go_received: w[9],
            first_vcpu_running: w[10],
        }
    }

    /// Little-endian bytes of [`Self::to_words`].
    pub fn to_bytes(self) -> Vec<u8> {
        self.to_words()
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect()
    }

    /// Reads [`Self::to_bytes`] from the start of `b`; `None` if `b` is too short.
    pub fn from_bytes(b: &[u8]) -> Option<TransferTiming> {
        let mut w = [0u64; WORDS];
        for (i, word) in w.iter_mut().enumerate() {
            let chunk = b.get(i * 8..i * 8 + 8)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(chunk);
            *word = u64::from_le_bytes(a);
        }
        Some(TransferTiming::from_words(&w))
    }

    /// The guest's pause in microseconds.
    pub fn pause_us(&self) -> Option<f64> {
        us(self.vcpus_stopped, self.first_vcpu_running)
    }

    /// Each phase: name, whether it is inside the pause, duration in µs.
    pub fn phases(&self) -> Vec<(&'static str, bool, Option<f64>)> {
        PHASES
            .iter()
            .map(|(n, inside, f, _)| {
                let (a, b) = f(self);
                (*n, *inside, us(a, b))
            })
            .collect()
    }

    pub fn to_json(self) -> Value {
        let mut phases = serde_json::Map::new();
        let mut outside = serde_json::Map::new();
        for (name, inside, v) in self.phases() {
            if let Some(v) = v {
                let v = json!((v * 10.0).round() / 10.0);
                if inside {
                    phases.insert(name.into(), v);
                } else {
                    outside.insert(name.into(), v);
                }
            }
        }
        let mut out = serde_json::Map::new();
        if let Some(p) = self.pause_us() {
            out.insert("pause-us".into(), json!((p * 10.0).round() / 10.0));
        }
        out.insert("phases-us".into(), Value::Object(phases));
        out.insert("outside-pause-us".into(), Value::Object(outside));
        Value::Object(out)
    }

    pub fn describe(&self) -> String {
        let mut s = match self.pause_us() {
            Some(p) => format!(
                "pause: {:.3} ms (last vCPU stopped in the old vmm .. first vCPU running here)\n",
                p / 1000.0
            ),
            None => "pause: not complete\n".to_string(),
        };
        for (name, inside, v) in self.phases() {
            if let Some(v) = v {
                let note = if inside { "" } else { "  (not in the pause)" };
                s.push_str(&format!("  {name:<12} {:>9.3} ms{note}\n", v / 1000.0));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_phases_add_up_and_words_round_trip() {
        let t = TransferTiming::from_words(&[
            1_000, 2_000, 3_000, 4_000, 5_000, 6_000, 7_000, 8_000, 8_500, 9_000, 10_000,
        ]);
        assert_eq!(t.pause_us(), Some(5.0));
        let inside: f64 = t.phases().iter().filter(|p| p.1).filter_map(|p| p.2).sum();
        assert_eq!(inside, 5.0);
        assert_eq!(TransferTiming::from_bytes(&t.to_bytes()), Some(t));
        assert_eq!(TransferTiming::from_bytes(&[0; 8]), None);
        assert_eq!(t.to_json()["outside-pause-us"]["prepare"], json!(2.0));
        assert_eq!(phase_help().len(), t.phases().len());
    }
}
