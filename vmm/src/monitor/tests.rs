use super::fake::FakeVm;
use super::*;
use crate::machine::RunState;

fn ctl(state: RunState) -> Controller<FakeVm> {
    Controller::new(FakeVm::new(state))
}

fn qmp_lines(s: &mut qmp::Session, c: &mut Controller<FakeVm>, input: &str) -> Vec<String> {
    s.on_input(c, input.as_bytes())
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn qmp_requires_negotiation_first() {
    let mut c = ctl(RunState::Running);
    let mut s = qmp::Session::default();
    let g = s.greeting();
    assert!(
        g.starts_with(r#"{"QMP": {"capabilities": [], "version": {"package": "vmm", "qemu": {"#),
        "{g}"
    );
    assert_eq!(
        qmp_lines(&mut s, &mut c, r#"{"execute": "query-status"}"#),
        [
            r#"{"error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}"#
        ]
    );
    assert_eq!(
        qmp_lines(
            &mut s,
            &mut c,
            r#"{"execute": "qmp_capabilities", "id": 7}"#
        ),
        [r#"{"return": {}, "id": 7}"#]
    );
    assert_eq!(
        qmp_lines(&mut s, &mut c, r#"{"execute": "qmp_capabilities"}"#),
        [
            r#"{"error": {"class": "CommandNotFound", "desc": "Capabilities negotiation is already complete, command ignored"}}"#
        ]
    );
    assert_eq!(
        qmp_lines(&mut s, &mut c, r#"{"execute": "query-status"}"#),
        [r#"{"return": {"running": true, "singlestep": false, "status": "running"}}"#]
    );
}

#[test]
fn qmp_errors_match_qemu() {
    let mut c = ctl(RunState::Running);
    let mut s = qmp::Session::default();
    s.greeting();
    qmp_lines(&mut s, &mut c, r#"{"execute": "qmp_capabilities"}"#);
    let cases = [
        (
            r#"{"execute": "foo", "id": "a"}"#,
            r#"{"error": {"class": "CommandNotFound", "desc": "The command foo has not been found"}, "id": "a"}"#,
        ),
        (
            r#"{"execute": }"#,
            r#"{"error": {"class": "GenericError", "desc": "JSON parse error, expecting value"}}"#,
        ),
        (
            r#"[1, 2]"#,
            r#"{"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}}"#,
        ),
        (
            r#"{"id": 1}"#,
            r#"{"error": {"class": "GenericError", "desc": "QMP input lacks member 'execute'"}, "id": 1}"#,
        ),
        (
            r#"{"execute": 1}"#,
            r#"{"error": {"class": "GenericError", "desc": "QMP input member 'execute' must be a string"}}"#,
        ),
        (
            r#"{"execute": "stop", "arguments": 1}"#,
            r#"{"error": {"class": "GenericError", "desc": "QMP input member 'arguments' must be an object"}}"#,
        ),
        (
            r#"{"execute": "stop", "foo": 1}"#,
            r#"{"error": {"class": "GenericError", "desc": "QMP input member 'foo' is unexpected"}}"#,
        ),
        (
            r#"{"execute": "stop", "arguments": {"x": 1}}"#,
            r#"{"error": {"class": "GenericError", "desc": "Parameter 'x' is unexpected"}}"#,
        ),
        (
            r#"{"execute": "human-monitor-command", "arguments": {"command-line": 5}}"#,
            r#"{"error": {"class": "GenericError", "desc": "Invalid parameter type for 'command-line', expected: string"}}"#,
        ),
        (
            r#"{"execute": "human-monitor-command"}"#,
            r#"{"error": {"class": "GenericError", "desc": "Parameter 'command-line' is missing"}}"#,
        ),
        (
            r#"{"execute": "system_wakeup"}"#,
            r#"{"error": {"class": "GenericError", "desc": "Unable to wake up: guest is not in suspended state"}}"#,
        ),
    ];
    for (input, want) in cases {
        assert_eq!(qmp_lines(&mut s, &mut c, input), [want], "input {input}");
    }
}

#[test]
fn run_state_changes_emit_events() {
    let mut c = ctl(RunState::Prelaunch);
    let mut s = qmp::Session::default();
    s.greeting();
    qmp_lines(&mut s, &mut c, r#"{"execute": "qmp_capabilities"}"#);
    assert_eq!(
        qmp_lines(&mut s, &mut c, r#"{"execute": "query-status"}"#),
        [r#"{"return": {"running": false, "singlestep": false, "status": "prelaunch"}}"#]
    );
    // stop in prelaunch changes nothing and emits nothing (as in QEMU).
    qmp_lines(&mut s, &mut c, r#"{"execute": "stop"}"#);
    assert!(c.take_events().is_empty());
    qmp_lines(&mut s, &mut c, r#"{"execute": "cont"}"#);
    assert_eq!(c.vm.state, RunState::Running);
    qmp_lines(&mut s, &mut c, r#"{"execute": "stop"}"#);
    let names: Vec<_> = c.take_events().iter().map(|e| e.name).collect();
    assert_eq!(names, ["RESUME", "STOP"]);
    assert_eq!(hmp::run_line(&mut c, "info status"), "VM status: paused\n");
    qmp_lines(&mut s, &mut c, r#"{"execute": "system_reset"}"#);
    let ev = c.take_events();
    let line = qmp::event_line(&ev[0]);
    assert!(line.starts_with(r#"{"timestamp": {"seconds": "#), "{line}");
    assert!(line.ends_with("\"event\": \"RESET\", \"data\": {\"guest\": false, \"reason\": \"host-qmp-system-reset\"}}\r\n"), "{line}");
    assert_eq!(
        qmp_lines(&mut s, &mut c, r#"{"execute": "quit"}"#),
        [r#"{"return": {}}"#]
    );
    assert_eq!(c.exit(), Some(Exit(0)));
    assert_eq!(
        c.take_events()[0].data,
        Some(serde_json::json!({"guest": false, "reason": "host-qmp-quit"}))
    );
}

#[test]
fn chardev_queries() {
    let mut c = ctl(RunState::Running);
    c.chardevs = vec![ChardevInfo {
        label: "serial0".into(),
        filename: "pty:/dev/pts/7".into(),
        frontend_open: true,
    }];
    assert_eq!(
        hmp::run_line(&mut c, "info chardev"),
        "serial0: filename=pty:/dev/pts/7\n"
    );
    let mut s = qmp::Session::default();
    s.greeting();
    qmp_lines(&mut s, &mut c, r#"{"execute": "qmp_capabilities"}"#);
    assert_eq!(
        qmp_lines(&mut s, &mut c, r#"{"execute": "query-chardev"}"#),
        [
            r#"{"return": [{"filename": "pty:/dev/pts/7", "frontend-open": true, "label": "serial0"}]}"#
        ]
    );
}

#[test]
fn hmp_commands() {
    let mut c = ctl(RunState::Prelaunch);
    assert_eq!(
        hmp::run_line(&mut c, "info status"),
        "VM status: paused (prelaunch)\n"
    );
    assert_eq!(hmp::run_line(&mut c, "foo bar"), "unknown command: 'foo'\n");
    assert_eq!(
        hmp::run_line(&mut c, "info nothing"),
        "unknown command: 'info nothing'\n"
    );
    assert_eq!(hmp::run_line(&mut c, "cont"), "");
    assert_eq!(hmp::run_line(&mut c, "info status"), "VM status: running\n");
    assert_eq!(
        hmp::run_line(&mut c, "system_wakeup"),
        "Error: Unable to wake up: guest is not in suspended state\n"
    );
    assert!(hmp::run_line(&mut c, "help")
        .contains("info [subcommand] -- show various information about the system state"));
    let mut s = hmp::Session::default();
    // CRLF input split across reads gives one prompt per line; output uses CRLF.
    let out = s.on_input(&mut c, b"stop\r") + &s.on_input(&mut c, b"\ninfo status\r\n");
    assert_eq!(out, "(vmm) VM status: paused\r\n(vmm) ");
    assert_eq!(s.on_input(&mut c, b"q\n"), "");
    assert_eq!(c.exit(), Some(Exit(0)));
}

#[test]
fn machine_events_map_to_exit_and_events() {
    let mut c = ctl(RunState::Running);
    c.on_machine_event(crate::machine::MachineEvent::GuestSuspend);
    assert_eq!(c.take_events()[0].name, "SUSPEND");
    c.on_machine_event(crate::machine::MachineEvent::DebugExit(3));
    assert_eq!(c.exit(), Some(Exit(3)));
    let mut c = ctl(RunState::Running);
    c.on_machine_event(crate::machine::MachineEvent::GuestShutdown);
    assert_eq!(c.exit(), Some(Exit(0)));
    assert_eq!(
        c.take_events()[0].data,
        Some(serde_json::json!({"guest": true, "reason": "guest-shutdown"}))
    );
}

#[test]
fn qmp_defers_cpr_commands_and_holds_what_follows() {
    let mut c = ctl(RunState::Running);
    let mut s = qmp::Session::default();
    s.greeting();
    qmp_lines(&mut s, &mut c, r#"{"execute": "qmp_capabilities"}"#);
    let out = qmp_lines(
        &mut s,
        &mut c,
        r#"{"execute": "cpr-exec", "arguments": {"argv": ["vmm", "-S"]}, "id": 7}{"execute": "cpr-load", "arguments": {"filename": "/x"}}{"execute": "query-st"#,
    );
    // No reply yet: the event loop answers once the command ran.
    assert!(out.is_empty(), "{out:?}");
    let d = c.deferred.take().expect("deferred");
    assert_eq!(
        d.op,
        CprOp::Exec {
            argv: vec!["vmm".into(), "-S".into()]
        }
    );
    assert_eq!(
        d.reply,
        Some(ReplyTo::Qmp {
            id: Some(serde_json::json!(7)),
            hmp_text: false
        })
    );
    // Handed over across exec: negotiated, and the unread commands come along.
    let state = s.save();
    assert!(state.negotiated);
    let mut next = qmp::Session::restore(&state);
    assert!(next.is_negotiated());
    assert_eq!(next.process(&mut c), "");
    assert_eq!(
        c.deferred.take().map(|d| d.op),
        Some(CprOp::Load { path: "/x".into() })
    );
    let out = next.on_input(&mut c, br#"atus"}"#);
    assert!(out.contains(r#""status": "running""#), "{out}");
}

#[test]
fn hmp_defers_cpr_commands_and_keeps_the_rest_of_the_input() {
    let mut c = ctl(RunState::Running);
    let mut s = hmp::Session::default();
    let out = s.on_input(&mut c, b"cpr-save /tmp/x restart\r\ninfo status\r\n");
    assert_eq!(out, "");
    assert_eq!(
        c.deferred.take().map(|d| (d.op, d.reply)),
        Some((
            CprOp::Save {
                path: "/tmp/x".into(),
                mode: "restart".into()
            },
            Some(ReplyTo::Hmp)
        ))
    );
    let mut next = hmp::Session::restore(&s.save());
    assert_eq!(next.process(&mut c), "VM status: running\r\n(vmm) ");
    assert_eq!(
        hmp::run_line(&mut c, "cpr-save onlyone"),
        "Error: usage: cpr-save filename mode [ram=in-place|in-image] [digest=on|off]\n"
    );
    assert!(c.deferred.is_none());
}

#[test]
fn hmp_cpr_save_passes_reboot_options_in_the_mode() {
    let mut c = ctl(RunState::Running);
    assert_eq!(
        hmp::run_line(&mut c, "cpr-save /tmp/x reboot ram=in-image digest=off"),
        ""
    );
    assert_eq!(
        c.deferred.take().map(|d| d.op),
        Some(CprOp::Save {
            path: "/tmp/x".into(),
            mode: "reboot,ram=in-image,digest=off".into()
        })
    );
}
