//! cpr-save's vCPU sections, encoded on a helper thread while the next vCPU is read.
//!
//! After the last vCPU stops, the save reads what other vCPUs could have changed of each
//! vCPU (three ioctls, ~25 us a vCPU on the build machines) and the image encodes each
//! `cpu` section (~35 us in the pause): on one thread that is ~60 us per vCPU. The helper, started
//! before the guest stops, encodes vCPU n while the main thread reads vCPU n+1.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cpr_format::EncodedSection;

use crate::machine::vcpu_state::VcpuState;

/// How long the helper polls for the next state before it sleeps. The first state comes
/// only once every vCPU has stopped (~0.5 ms at 8 vCPUs here), so this outlasts that: a
/// helper that had gone to sleep was woken on the main thread's CPU and encoded nothing
/// until the reads were done. Polling yields, so the stopping vCPU threads still run.
const POLL: Duration = Duration::from_millis(3);
/// The helper gives up if no state comes for this long (a save that never got to the
/// vCPUs); `finish` then encodes nothing here.
const IDLE: Duration = Duration::from_secs(10);

type Encoded = Result<EncodedSection, cpr_format::Error>;

pub struct VcpuEncoder {
    states: Option<Sender<VcpuState>>,
    sections: Receiver<Encoded>,
    sent: usize,
    /// Not joined: its sections come over `sections`, and waiting for the thread to end
    /// took ~0.1 ms here. It ends once `states` is dropped.
    _helper: Option<JoinHandle<()>>,
}

impl VcpuEncoder {
    /// Starts the helper. Without one (it could not be started), `finish` gives `None` and
    /// the image encodes every vCPU itself, as without an encoder.
    pub fn start() -> VcpuEncoder {
        let (tx, rx) = mpsc::channel();
        let (sections_tx, sections) = mpsc::channel();
        let helper = std::thread::Builder::new()
            .name("cpr-encode".into())
            .spawn(move || encode_all(rx, sections_tx))
            .ok();
        VcpuEncoder {
            states: helper.as_ref().map(|_| tx),
            sections,
            sent: 0,
            _helper: helper,
        }
    }

    /// Hands over one vCPU's state (a copy), in vCPU order.
    pub fn send(&mut self, state: &VcpuState) {
        if let Some(tx) = &self.states {
            // A helper that is gone shows up in `finish`.
            if tx.send(state.clone()).is_ok() {
                self.sent += 1;
            }
        }
    }

    /// The sections of every state sent, in order; `None` if the helper failed (the
    /// caller encodes them itself and so reports any error). Polls: the pause waits for
    /// nothing else, and a sleeping thread takes long to wake here.
    pub fn finish(mut self) -> Option<Vec<EncodedSection>> {
        drop(self.states.take());
        let mut out = Vec::with_capacity(self.sent);
        while out.len() < self.sent {
            match self.sections.try_recv() {
                Ok(section) => out.push(section.ok()?),
                // Yields: the helper may be waiting for this very CPU.
                Err(TryRecvError::Empty) => std::thread::yield_now(),
                Err(TryRecvError::Disconnected) => return None,
            }
        }
        Some(out)
    }
}

fn encode_all(states: Receiver<VcpuState>, sections: Sender<Encoded>) {
    let mut last = Instant::now();
    loop {
        let next = match states.try_recv() {
            Ok(s) => Some(s),
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) if last.elapsed() < POLL => {
                std::thread::yield_now();
                None
            }
            Err(TryRecvError::Empty) => match states.recv_timeout(IDLE) {
                Ok(s) => Some(s),
                Err(RecvTimeoutError::Disconnected) | Err(RecvTimeoutError::Timeout) => break,
            },
        };
        if let Some(s) = next {
            if sections
                .send(EncodedSection::new(&s.index.to_string(), &s))
                .is_err()
            {
                break;
            }
            last = Instant::now();
        }
    }
}
