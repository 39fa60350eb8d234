//! No input from a client or the command line can panic the front end.

use proptest::prelude::*;

use super::fake::FakeVm;
use super::{hmp, qmp, Controller};
use crate::machine::RunState;

/// Bytes that look like QMP often enough to reach deep into the dispatcher.
fn qmp_ish() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just(br#"{"execute": "#.to_vec()),
        Just(br#""qmp_capabilities""#.to_vec()),
        Just(br#""human-monitor-command""#.to_vec()),
        Just(br#", "arguments": {"command-line": "#.to_vec()),
        Just(br#""info status""#.to_vec()),
        Just(br#", "id": "#.to_vec()),
        Just(b"}".to_vec()),
        Just(b"]".to_vec()),
        Just(b"[".to_vec()),
        Just(b"\"".to_vec()),
        Just(b"\\".to_vec()),
        Just(b"\n".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..8),
    ];
    proptest::collection::vec(token, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #[test]
    fn qmp_session_never_panics(input in qmp_ish(), split in 0usize..64) {
        let mut c = Controller::new(FakeVm::new(RunState::Running));
        let mut s = qmp::Session::default();
        s.greeting();
        let split = split.min(input.len());
        let mut out = s.on_input(&mut c, &input[..split]);
        out.push_str(&s.on_input(&mut c, &input[split..]));
        // Every reply is one JSON object per line.
        for line in out.split("\r\n").filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).expect("reply is JSON");
            prop_assert!(v.get("return").is_some() || v.get("error").is_some(), "{}", line);
        }
    }

    #[test]
    fn hmp_session_never_panics(input in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut c = Controller::new(FakeVm::new(RunState::Paused));
        let mut s = hmp::Session::default();
        let _ = s.on_input(&mut c, &input);
    }

    #[test]
    fn command_line_never_panics(args in proptest::collection::vec("[-a-zA-Z0-9=,:./ ]{0,24}", 0..8)) {
        let _ = crate::cli::parse_args(args);
    }
}
