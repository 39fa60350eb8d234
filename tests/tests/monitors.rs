//! HMP over a socket chardev and QMP over a UNIX socket, against the real `vmm` and a real guest.

use std::process::Command;

use cpr_tests::{guest, Hmp, RawQmp, Scratch, Vmm};

#[test]
fn hmp_over_socket_chardev() {
    let dir = Scratch::new("hmp");
    let sock = dir.str("mon.sock");
    let chardev = format!("socket,id=mon,path={sock},server=on,wait=off");
    let kernel = guest("counter");
    let mut vmm = Vmm::spawn(&[
        "-kernel",
        &kernel,
        "-S",
        "-serial",
        "null",
        "-chardev",
        &chardev,
        "-monitor",
        "chardev:mon",
    ]);
    let (mut hmp, banner) = Hmp::greet(vmm.connect(dir.path("mon.sock").as_path()));
    assert!(
        banner.starts_with(&format!(
            "vmm {} monitor - type 'help' for more information\r\n",
            env!("CARGO_PKG_VERSION")
        )),
        "{banner:?}"
    );
    assert_eq!(hmp.cmd("info status"), "VM status: paused (prelaunch)\n");
    assert_eq!(hmp.cmd("cont"), "");
    assert_eq!(hmp.cmd("info status"), "VM status: running\n");
    assert_eq!(hmp.cmd("stop"), "");
    assert_eq!(hmp.cmd("info status"), "VM status: paused\n");
    assert_eq!(hmp.cmd("frobnicate now"), "unknown command: 'frobnicate'\n");
    assert_eq!(
        hmp.cmd("info version"),
        format!("{}\n", env!("CARGO_PKG_VERSION"))
    );
    assert!(hmp
        .cmd("help")
        .contains("info [subcommand] -- show various information about the system state"));
    // One client at a time, reconnect allowed: drop this client, connect again, get a banner.
    drop(hmp);
    let (mut hmp, _) = Hmp::greet(vmm.connect(dir.path("mon.sock").as_path()));
    assert_eq!(hmp.cmd("info status"), "VM status: paused\n");
    assert_eq!(hmp.cmd("cont"), "");
    use std::io::Write;
    hmp.0.write_all(b"quit\n").unwrap();
    let (status, _, stderr) = vmm.wait();
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
}

#[test]
fn qmp_with_the_qemu_projects_client() {
    let dir = Scratch::new("qmp-python");
    let sock = dir.str("qmp.sock");
    let qmp_arg = format!("unix:{sock},server=on,wait=off");
    let kernel = guest("counter");
    let mut vmm = Vmm::spawn(&[
        "-kernel", &kernel, "-S", "-serial", "null", "-qmp", &qmp_arg,
    ]);
    // Wait until the socket is bound (the connection is closed right away; a new one follows).
    drop(vmm.connect(dir.path("qmp.sock").as_path()));
    let script = cpr_tests::workspace_root().join("tests/qmp/run_states.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&sock)
        .output()
        .expect("python3 must be installed with the qemu.qmp package (pip install qemu.qmp)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert_eq!(
        stdout,
        "greeting package=vmm capabilities=[]\n\
         status prelaunch running=False\n\
         event RESUME\n\
         status running running=True\n\
         event STOP\n\
         status paused running=False\n\
         event RESUME\n\
         status running running=True\n\
         error CommandNotFound: The command no-such-command has not been found\n\
         hmp VM status: running\n\
         event SHUTDOWN\n\
         shutdown guest=False reason=host-qmp-quit\n\
         done\n"
    );
    let (status, _, stderr) = vmm.wait();
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
}

#[test]
fn qmp_bad_input_over_a_raw_socket() {
    let dir = Scratch::new("qmp-raw");
    let sock = dir.str("qmp.sock");
    let qmp_arg = format!("unix:{sock},server=on,wait=off");
    let kernel = guest("counter");
    let mut vmm = Vmm::spawn(&[
        "-kernel", &kernel, "-S", "-serial", "null", "-qmp", &qmp_arg,
    ]);
    let mut q = RawQmp::new(vmm.connect(dir.path("qmp.sock").as_path()));
    let greeting: serde_json::Value = serde_json::from_str(&q.line()).expect("greeting is JSON");
    assert_eq!(greeting["QMP"]["capabilities"], serde_json::json!([]));
    let mut events = Vec::new();
    let cases = [
        (
            r#"{"execute": "query-status"}"#,
            r#"{"error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}"#,
        ),
        (
            r#"{"execute": "qmp_capabilities", "id": "neg"}"#,
            r#"{"return": {}, "id": "neg"}"#,
        ),
        (
            r#"{"execute": }"#,
            r#"{"error": {"class": "GenericError", "desc": "JSON parse error, expecting value"}}"#,
        ),
        (
            r#"{"execute": "no-such", "id": 42}"#,
            r#"{"error": {"class": "CommandNotFound", "desc": "The command no-such has not been found"}, "id": 42}"#,
        ),
        (
            r#"{"execute": "human-monitor-command", "arguments": {"command-line": 1}}"#,
            r#"{"error": {"class": "GenericError", "desc": "Invalid parameter type for 'command-line', expected: string"}}"#,
        ),
        (
            r#"{"execute": "stop", "arguments": {"force": true}}"#,
            r#"{"error": {"class": "GenericError", "desc": "Parameter 'force' is unexpected"}}"#,
        ),
        (
            r#""just a string""#,
            r#"{"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}}"#,
        ),
        (
            r#"{"execute": "query-status", "id": {"nested": [1]}}"#,
            r#"{"return": {"running": false, "singlestep": false, "status": "prelaunch"}, "id": {"nested": [1]}}"#,
        ),
    ];
    for (input, want) in cases {
        assert_eq!(q.request(input, &mut events), want, "input {input}");
    }
    // A client that vanishes mid-message does not hurt the VMM; the next one is greeted anew.
    q.send(r#"{"execute": "stop""#);
    drop(q);
    let mut q = RawQmp::new(vmm.connect(dir.path("qmp.sock").as_path()));
    assert!(q.line().starts_with(r#"{"QMP": "#));
    assert_eq!(
        q.request(r#"{"execute": "qmp_capabilities"}"#, &mut events),
        r#"{"return": {}}"#
    );
    assert_eq!(
        q.request(r#"{"execute": "quit"}"#, &mut events),
        r#"{"return": {}}"#
    );
    let (status, _, stderr) = vmm.wait();
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
}

#[test]
fn hmp_on_stdio() {
    let kernel = guest("counter");
    let mut vmm = Vmm::spawn_with(
        &["-kernel", &kernel, "-S", "-monitor", "stdio"],
        std::process::Stdio::piped(),
    );
    let mut stdin = vmm.child.stdin.take().expect("stdin piped");
    use std::io::Write;
    stdin
        .write_all(b"info status\nquit\n")
        .expect("type into the monitor");
    let (status, stdout, stderr) = vmm.wait();
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    assert_eq!(
        stdout,
        format!(
            "vmm {} monitor - type 'help' for more information\r\n(vmm) VM status: paused (prelaunch)\r\n(vmm) ",
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[test]
fn hmp_over_tcp_socket_chardev() {
    // Take a free port from the kernel, then hand it to the VMM.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let chardev = format!("socket,id=mon,host=127.0.0.1,port={port},server=on,wait=off");
    let kernel = guest("counter");
    let mut vmm = Vmm::spawn(&[
        "-kernel",
        &kernel,
        "-S",
        "-serial",
        "null",
        "-chardev",
        &chardev,
        "-monitor",
        "chardev:mon",
    ]);
    let start = std::time::Instant::now();
    let stream = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) => {
                assert!(vmm.child.try_wait().unwrap().is_none(), "vmm exited");
                assert!(start.elapsed() < cpr_tests::PATIENCE, "never listened: {e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    };
    stream.set_read_timeout(Some(cpr_tests::PATIENCE)).unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = cpr_tests::Watch::new(stream);
    r.wait_for("(vmm) ");
    use std::io::Write;
    w.write_all(b"info status\r\n").unwrap();
    r.wait_for("VM status: paused (prelaunch)\r\n(vmm) ");
    w.write_all(b"quit\r\n").unwrap();
    let (status, _, stderr) = vmm.wait();
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
}

#[test]
fn sigterm_shuts_down_like_qemu() {
    let dir = Scratch::new("sigterm");
    let qmp_arg = format!("unix:{},server=on,wait=off", dir.str("qmp.sock"));
    let kernel = guest("counter");
    let mut vmm = Vmm::spawn(&["-kernel", &kernel, "-serial", "null", "-qmp", &qmp_arg]);
    let mut q = RawQmp::new(vmm.connect(dir.path("qmp.sock").as_path()));
    q.line();
    let mut events = Vec::new();
    q.request(r#"{"execute": "qmp_capabilities"}"#, &mut events);
    // SAFETY: kill() on our own child's pid; no memory is involved.
    assert_eq!(
        unsafe { libc::kill(vmm.child.id() as i32, libc::SIGTERM) },
        0
    );
    let ev: serde_json::Value = serde_json::from_str(&q.line()).expect("event JSON");
    assert_eq!(ev["event"], "SHUTDOWN");
    assert_eq!(
        ev["data"],
        serde_json::json!({"guest": false, "reason": "host-signal"})
    );
    let (status, _, stderr) = vmm.wait();
    assert_eq!(status.code(), Some(0));
    assert_eq!(stderr, "vmm: terminating on signal 15\n");
}

#[test]
fn nographic_multiplexes_console_and_monitor_on_stdio() {
    let kernel = guest("counter");
    let mut vmm = Vmm::spawn_with(
        &["-kernel", &kernel, "-nographic"],
        std::process::Stdio::piped(),
    );
    let mut stdin = vmm.child.stdin.take().expect("stdin piped");
    let mut out = cpr_tests::Watch::new(vmm.child.stdout.take().expect("stdout piped"));
    out.wait_for("count 2\n");
    use std::io::Write;
    // Ctrl-A c: to the monitor; a command; Ctrl-A x: exit, as in QEMU.
    stdin
        .write_all(b"\x01cinfo status\r\x01x")
        .expect("type into the console");
    let seen = out.rest().to_string();
    assert!(
        seen.contains(&format!(
            "vmm {} monitor - type 'help'",
            env!("CARGO_PKG_VERSION")
        )),
        "{seen}"
    );
    assert!(
        seen.contains("(vmm) VM status: running\r\n(vmm) vmm: terminated\r\n"),
        "{seen}"
    );
    let (status, _, stderr) = vmm.wait();
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
}

#[test]
fn qmp_client_that_reads_late_gets_every_reply_in_order() {
    let dir = Scratch::new("qmp-late");
    let qmp_arg = format!("unix:{},server=on,wait=off", dir.str("qmp.sock"));
    let kernel = guest("counter");
    let mut vmm = Vmm::spawn(&[
        "-kernel", &kernel, "-S", "-serial", "null", "-qmp", &qmp_arg,
    ]);
    let mut q = RawQmp::new(vmm.connect(dir.path("qmp.sock").as_path()));
    q.line();
    let mut events = Vec::new();
    q.request(r#"{"execute": "qmp_capabilities"}"#, &mut events);
    // Enough requests that the replies overflow the socket buffer before we read any.
    let n = 5000;
    let batch: String = (0..n)
        .map(|i| format!(r#"{{"execute": "human-monitor-command", "arguments": {{"command-line": "help"}}, "id": {i}}}"#))
        .collect();
    q.send(&batch);
    for i in 0..n {
        let reply: serde_json::Value = serde_json::from_str(&q.line()).expect("reply JSON");
        assert_eq!(reply["id"], i, "reply out of order or lost");
        assert!(reply["return"]
            .as_str()
            .is_some_and(|s| s.contains("show the help")));
    }
    assert_eq!(
        q.request(r#"{"execute": "quit"}"#, &mut events),
        r#"{"return": {}}"#
    );
    let (status, _, stderr) = vmm.wait();
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
}
