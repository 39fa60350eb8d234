//! Each test guest booted through the command line, its serial output asserted.

use std::io::Write;

use cpr_tests::{guest, quit, run_vmm, start_with_hmp, Hmp, RawQmp, Scratch, Vmm, Watch};

/// Starts `guest` with the serial on stdout and an HMP monitor on a socket.
fn boot_with_monitor(dir: &Scratch, guest_name: &str, extra: &[&str]) -> (Vmm, Watch, Hmp) {
    let kernel = guest(guest_name);
    let mut args = vec!["-kernel", kernel.as_str()];
    args.extend_from_slice(extra);
    start_with_hmp(dir, &args)
}

#[test]
fn counter_counts_on_the_serial_port() {
    let dir = Scratch::new("g-counter");
    let (vmm, mut out, hmp) = boot_with_monitor(&dir, "counter", &[]);
    let seen = out.wait_for("count 3\n").to_string();
    assert!(seen.starts_with("count "), "{seen:?}");
    quit(vmm, hmp);
}

#[test]
fn counter_waits_in_prelaunch_until_cont() {
    let dir = Scratch::new("g-prelaunch");
    let (vmm, mut out, mut hmp) = boot_with_monitor(&dir, "counter", &["-S", "-smp", "2"]);
    assert_eq!(hmp.cmd("info status"), "VM status: paused (prelaunch)\n");
    assert_eq!(hmp.cmd("cont"), "");
    out.wait_for("count 2\n");
    assert_eq!(hmp.cmd("stop"), "");
    let regs = hmp.cmd("info registers");
    assert!(regs.contains("RIP="), "{regs}");
    assert!(!regs.contains("CPU#1"), "{regs}");
    let all = hmp.cmd("info registers -a");
    assert_eq!(all.matches("CPU#0").count(), 1, "{all}");
    assert_eq!(all.matches("CPU#1").count(), 1, "{all}");
    let cpus = hmp.cmd("info cpus");
    assert_eq!(cpus.lines().count(), 2, "{cpus}");
    assert!(cpus.starts_with("* CPU #0: thread_id="), "{cpus}");
    quit(vmm, hmp);
}

#[test]
fn ticker_takes_timer_interrupts() {
    let dir = Scratch::new("g-ticker");
    let (vmm, mut out, hmp) = boot_with_monitor(&dir, "ticker", &["-smp", "1"]);
    out.wait_for("tick 3\n");
    quit(vmm, hmp);
}

#[test]
fn memcheck_passes_on_each_ram_backend() {
    let shm = format!("/dev/shm/cpr-tests-memcheck-{}", std::process::id());
    let file_obj = format!("memory-backend-file,id=ram0,size=64M,mem-path={shm},share=on");
    let backends: [&[&str]; 4] = [
        &["-m", "64M"],
        &["-m", "64M", "-machine", "memfd-alloc=on"],
        &[
            "-m",
            "64M",
            "-object",
            "memory-backend-memfd,id=ram0,size=64M,share=on",
            "-machine",
            "memory-backend=ram0",
        ],
        &["-object", &file_obj, "-machine", "memory-backend=ram0"],
    ];
    for (i, extra) in backends.iter().enumerate() {
        let dir = Scratch::new(&format!("g-memcheck-{i}"));
        let (vmm, mut out, hmp) = boot_with_monitor(&dir, "memcheck", extra);
        let seen = out.wait_for("memcheck ok pass 2").to_string();
        assert!(!seen.contains("mismatch"), "backend {extra:?}: {seen}");
        quit(vmm, hmp);
    }
    let _ = std::fs::remove_file(&shm);
}

#[test]
fn echo_answers_serial_input_from_a_socket() {
    let dir = Scratch::new("g-echo");
    let ser = dir.str("ser.sock");
    let chardev = format!("socket,id=ser,path={ser},server=on,wait=off");
    let kernel = guest("echo");
    let mut vmm = Vmm::spawn(&[
        "-kernel",
        &kernel,
        "-S",
        "-chardev",
        &chardev,
        "-serial",
        "chardev:ser",
        "-qmp",
        &format!("unix:{},server=on,wait=off", dir.str("qmp.sock")),
    ]);
    // Connect the console before the guest starts so its first line is not dropped.
    let console = vmm.connect(dir.path("ser.sock").as_path());
    let mut q = RawQmp::new(vmm.connect(dir.path("qmp.sock").as_path()));
    q.line();
    let mut events = Vec::new();
    q.request(r#"{"execute": "qmp_capabilities"}"#, &mut events);
    assert_eq!(
        q.request(r#"{"execute": "cont"}"#, &mut events),
        r#"{"return": {}}"#
    );
    let mut reader = Watch::new(console.try_clone().expect("clone console"));
    reader.wait_for("echo ready\n");
    (&console)
        .write_all(b"hello vmm\r")
        .expect("type into the console");
    reader.wait_for("echo: hello vmm");
    assert_eq!(
        q.request(r#"{"execute": "quit"}"#, &mut events),
        r#"{"return": {}}"#
    );
    let (status, _, stderr) = vmm.wait();
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
}

#[test]
fn suspend_and_wakeup_then_guest_shutdown() {
    let dir = Scratch::new("g-suspend");
    let kernel = guest("suspend");
    let qmp = format!("unix:{},server=on,wait=off", dir.str("qmp.sock"));
    let mut vmm = Vmm::spawn(&["-kernel", &kernel, "-S", "-qmp", &qmp]);
    let mut out = Watch::new(vmm.child.stdout.take().expect("stdout piped"));
    let mut q = RawQmp::new(vmm.connect(dir.path("qmp.sock").as_path()));
    q.line();
    let mut events = Vec::new();
    q.request(r#"{"execute": "qmp_capabilities"}"#, &mut events);
    q.request(r#"{"execute": "cont"}"#, &mut events);
    out.wait_for("suspending\n");
    // Wait for the SUSPEND event, then check the state and wake the guest.
    while !events.iter().any(|e| e["event"] == "SUSPEND") {
        events.push(serde_json::from_str(&q.line()).expect("event JSON"));
    }
    assert_eq!(
        q.request(r#"{"execute": "query-status"}"#, &mut events),
        r#"{"return": {"running": false, "singlestep": false, "status": "suspended"}}"#
    );
    assert_eq!(
        q.request(r#"{"execute": "system_wakeup"}"#, &mut events),
        r#"{"return": {}}"#
    );
    out.wait_for("resumed\n");
    // The guest powers off: SHUTDOWN from the guest, exit status 0.
    while !events.iter().any(|e| e["event"] == "SHUTDOWN") {
        events.push(serde_json::from_str(&q.line()).expect("event JSON"));
    }
    let names: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(names, ["RESUME", "SUSPEND", "WAKEUP", "SHUTDOWN"]);
    assert_eq!(
        events[3]["data"],
        serde_json::json!({"guest": true, "reason": "guest-shutdown"})
    );
    let (status, _, stderr) = vmm.wait();
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
}

#[test]
fn exit_guest_sets_the_process_exit_status() {
    let kernel = guest("exit");
    let out = run_vmm(&["-kernel", &kernel]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "exiting 42\n");
    assert_eq!(
        out.status.code(),
        Some(42),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn serial_to_a_file_chardev() {
    let dir = Scratch::new("g-file");
    let log = dir.str("serial.log");
    let chardev = format!("file,id=log,path={log}");
    let kernel = guest("exit");
    let out = run_vmm(&[
        "-kernel",
        &kernel,
        "-chardev",
        &chardev,
        "-serial",
        "chardev:log",
    ]);
    assert_eq!(out.status.code(), Some(42));
    assert_eq!(
        std::fs::read_to_string(&log).expect("serial log"),
        "exiting 42\n"
    );
}

#[test]
fn serial_on_a_pty() {
    let dir = Scratch::new("g-pty");
    let sock = dir.str("mon.sock");
    let chardev = format!("socket,id=mon,path={sock},server=on,wait=off");
    let kernel = guest("counter");
    let mut vmm = Vmm::spawn(&[
        "-kernel",
        &kernel,
        "-S",
        "-serial",
        "pty",
        "-chardev",
        &chardev,
        "-monitor",
        "chardev:mon",
    ]);
    let mut err = Watch::new(vmm.child.stderr.take().expect("stderr piped"));
    let line = err.wait_for(" (label serial0)\n").to_string();
    let path = line
        .strip_prefix("char device redirected to ")
        .and_then(|l| l.strip_suffix(" (label serial0)\n"))
        .unwrap_or_else(|| panic!("unexpected pty message {line:?}"))
        .to_string();
    assert!(path.starts_with("/dev/pts/"), "{path}");
    let tty = std::fs::File::open(&path).expect("open the pty");
    let mut out = Watch::new(tty);
    let (mut hmp, _) = Hmp::greet(vmm.connect(dir.path("mon.sock").as_path()));
    // Where the console went, as QEMU users find it.
    assert_eq!(
        hmp.cmd("info chardev"),
        format!("serial0: filename=pty:{path}\nmon: filename=unix:{sock},server=on\n")
    );
    assert_eq!(hmp.cmd("cont"), "");
    out.wait_for("count 2\n");
    quit(vmm, hmp);
}
