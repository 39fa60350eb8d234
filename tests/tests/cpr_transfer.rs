//! Transfer mode end to end: a guest moves from a running vmm to one started with
//! `-incoming cpr:unix:PATH`, over the real binaries. The serial and monitor clients stay
//! connected across the hand-over; whenever the new process fails before "go", the guest
//! keeps running in the old one.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cpr_tests::{guest, read_until, vmm_bin, Hmp, RawQmp, Scratch, Vmm, Watch, PATIENCE};

/// The machine options both processes get (the new one adds -incoming).
fn machine_args(dir: &Scratch, guest_name: &str, mem: &str) -> Vec<String> {
    vec![
        "-m".into(),
        mem.into(),
        "-machine".into(),
        "memfd-alloc=on".into(),
        "-kernel".into(),
        guest(guest_name),
        "-chardev".into(),
        format!(
            "socket,id=ser,path={},server=on,wait=off",
            dir.str("ser.sock")
        ),
        "-serial".into(),
        "chardev:ser".into(),
        "-chardev".into(),
        format!(
            "socket,id=mon,path={},server=on,wait=off",
            dir.str("mon.sock")
        ),
        "-monitor".into(),
        "chardev:mon".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", dir.str("qmp.sock")),
    ]
}

fn spawn(bin: &Path, args: &[String], env: &[(&str, &str)]) -> Vmm {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Vmm {
        child: cmd.spawn().expect("spawn vmm"),
    }
}

/// The old vmm with a serial client and an HMP client.
struct Old {
    vmm: Vmm,
    serial: Watch,
    hmp: Hmp,
}

/// The guest still counts, unbroken, in the old vmm, which then quits cleanly.
fn keeps_counting_then_quits(mut old: Old) {
    let at = last_number(&old.serial, "count ");
    wait_past(&mut old.serial, "count ", at + 3);
    assert_consecutive(&old.serial.seen, "count ");
    old.hmp.0.write_all(b"quit\n").expect("quit");
    assert_eq!(old.vmm.wait().0.code(), Some(0));
}

fn start_old(dir: &Scratch, args: &[String], env: &[(&str, &str)]) -> Old {
    let mut vmm = spawn(&vmm_bin(), args, env);
    let serial = Watch::new(vmm.connect(&dir.path("ser.sock")));
    let (hmp, _) = Hmp::greet(vmm.connect(&dir.path("mon.sock")));
    Old { vmm, serial, hmp }
}

/// Starts the successor and waits until it listens on its cpr socket.
fn start_new(dir: &Scratch, bin: &Path, args: &[String], env: &[(&str, &str)]) -> Vmm {
    let mut a = args.to_vec();
    a.push("-incoming".into());
    a.push(format!("cpr:unix:{}", dir.str("cpr.sock")));
    let mut vmm = spawn(bin, &a, env);
    let start = Instant::now();
    while !dir.path("cpr.sock").exists() {
        if let Ok(Some(status)) = vmm.child.try_wait() {
            let (_, _, err) = vmm.wait();
            panic!("new vmm exited with {status} before listening: {err}");
        }
        assert!(start.elapsed() < PATIENCE, "new vmm never listened");
        std::thread::sleep(Duration::from_millis(5));
    }
    vmm
}

/// The numbers N of every complete `PREFIX N` line, in order.
fn numbers(text: &str, prefix: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
        .collect()
}

/// Waits until the line `PREFIX n` has been printed.
fn wait_past(w: &mut Watch, prefix: &str, n: u64) {
    w.wait_for(&format!("{prefix}{n}\n"));
}

/// Asserts the `PREFIX N` lines count up by one with no gap and no restart.
fn assert_consecutive(text: &str, prefix: &str) {
    let n = numbers(text, prefix);
    assert!(n.len() >= 4, "too few {prefix} lines: {text:?}");
    for w in n.windows(2) {
        assert_eq!(w[1], w[0] + 1, "{prefix} lines not consecutive: {n:?}");
    }
}

fn last_number(w: &Watch, prefix: &str) -> u64 {
    numbers(&w.seen, prefix).last().copied().unwrap_or(0)
}

/// Transfers the guest of `old` to `new` through HMP; returns the new process's
/// `info cpr`, after checking the old process exited 0.
fn transfer(dir: &Scratch, old: &mut Old) -> String {
    let reply = old
        .hmp
        .cmd(&format!("cpr-transfer unix:{}", dir.str("cpr.sock")));
    assert_eq!(reply, "", "cpr-transfer failed");
    let info = old.hmp.cmd("info cpr");
    assert!(info.contains("mode: transfer"), "{info}");
    assert!(info.contains("pause: "), "{info}");
    info
}

fn wait_old_exit(old: Old) -> (Watch, Hmp, String) {
    let Old { vmm, serial, hmp } = old;
    let (status, _, err) = vmm.wait();
    assert_eq!(status.code(), Some(0), "old vmm: {err}");
    assert!(err.contains("cpr-transfer to unix:"), "{err}");
    (serial, hmp, err)
}

fn survives(guest_name: &str, prefix: &str) {
    let dir = Scratch::new(&format!("tx-{guest_name}"));
    let args = machine_args(&dir, guest_name, "256M");
    let mut old = start_old(&dir, &args, &[]);
    old.serial.wait_for(prefix);
    wait_past(&mut old.serial, prefix, 2);
    let new = start_new(&dir, &vmm_bin(), &args, &[]);
    let before = last_number(&old.serial, prefix);
    let info = transfer(&dir, &mut old);
    println!("{guest_name}: {info}");
    let (mut serial, mut hmp, _) = wait_old_exit(old);
    wait_past(&mut serial, prefix, before + 3);
    assert_eq!(hmp.cmd("info status"), "VM status: running\n");
    let seen = serial.seen.clone();
    assert!(
        !seen.contains("unexpected") && !seen.contains("mismatch"),
        "{seen}"
    );
    assert_consecutive(&seen, prefix);
    hmp.0.write_all(b"quit\n").expect("quit");
    let (status, _, err) = new.wait();
    assert_eq!(status.code(), Some(0), "new vmm: {err}");
}

#[test]
fn counter_survives_a_transfer() {
    survives("counter", "count ");
}

#[test]
fn ticker_survives_a_transfer() {
    survives("ticker", "tick ");
}

#[test]
fn memcheck_survives_a_transfer() {
    survives("memcheck", "memcheck ok pass ");
}

/// A copy of the vmm binary that reports `version` (the stamp rewritten in place).
fn versioned_copy(dir: &Scratch, version: &str) -> PathBuf {
    let mut bytes = std::fs::read(vmm_bin()).expect("read vmm");
    let prefix = b"VMM_VERSION_STAMP=";
    let at = bytes
        .windows(prefix.len())
        .position(|w| w == prefix)
        .expect("version stamp in the vmm binary")
        + prefix.len();
    let field = &mut bytes[at..at + 64 - prefix.len()];
    field.fill(0);
    field[..version.len()].copy_from_slice(version.as_bytes());
    let path = dir.path("vmm-next");
    std::fs::write(&path, bytes).expect("write copy");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

#[test]
fn counter_moves_to_another_binary_version() {
    let dir = Scratch::new("tx-version");
    let args = machine_args(&dir, "counter", "256M");
    let next = versioned_copy(&dir, "9.9.9-next");
    let mut old = start_old(&dir, &args, &[]);
    wait_past(&mut old.serial, "count ", 2);
    let old_version = old.hmp.cmd("info version");
    assert!(!old_version.contains("9.9.9-next"), "{old_version}");
    let new = start_new(&dir, &next, &args, &[]);
    let before = last_number(&old.serial, "count ");
    transfer(&dir, &mut old);
    let (mut serial, mut hmp, err) = wait_old_exit(old);
    assert!(err.contains("new vmm version 9.9.9-next"), "{err}");
    assert!(hmp.cmd("info version").contains("9.9.9-next"));
    wait_past(&mut serial, "count ", before + 3);
    assert_consecutive(&serial.seen, "count ");
    hmp.0.write_all(b"quit\n").expect("quit");
    assert_eq!(new.wait().0.code(), Some(0));
}

/// Waits until the process is stopped (state T in /proc/PID/stat).
fn wait_stopped(pid: u32) {
    let start = Instant::now();
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next());
        if state == Some("T") {
            return;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "process {pid} never stopped: {stat}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The new process is SIGKILLed at `step`; the guest must go on in the old one.
fn killed_at(step: &str) {
    let dir = Scratch::new(&format!("tx-kill-{step}"));
    let args = machine_args(&dir, "counter", "256M");
    let mut old = start_old(&dir, &args, &[]);
    wait_past(&mut old.serial, "count ", 2);
    let mut new = start_new(
        &dir,
        &vmm_bin(),
        &args,
        &[("VMM_CPR_TRANSFER_FAILPOINT", step)],
    );
    old.hmp
        .0
        .write_all(format!("cpr-transfer unix:{}\n", dir.str("cpr.sock")).as_bytes())
        .expect("send cpr-transfer");
    wait_stopped(new.child.id());
    new.child.kill().expect("SIGKILL the new vmm");
    let _ = new.child.wait();
    let reply = read_until(&mut old.hmp.0, "(vmm) ");
    assert!(reply.contains("Error:"), "{step}: {reply}");
    assert!(reply.contains("closed the cpr channel"), "{step}: {reply}");
    assert_eq!(old.hmp.cmd("info status"), "VM status: running\n");
    let info = old.hmp.cmd("info cpr");
    assert!(info.contains("last error:"), "{info}");
    keeps_counting_then_quits(old);
}

#[test]
fn killing_the_new_vmm_after_accept_keeps_the_guest() {
    killed_at("accepted");
}

#[test]
fn killing_the_new_vmm_after_hello_keeps_the_guest() {
    killed_at("hello");
}

#[test]
fn killing_the_new_vmm_before_ready_keeps_the_guest() {
    killed_at("ready");
}

#[test]
fn killing_the_new_vmm_after_state_keeps_the_guest() {
    killed_at("state");
}

#[test]
fn killing_the_new_vmm_before_restored_keeps_the_guest() {
    killed_at("restored");
}

#[test]
fn a_stalled_new_vmm_times_out_and_never_runs_the_guest() {
    let dir = Scratch::new("tx-stall");
    let args = machine_args(&dir, "counter", "256M");
    let mut old = start_old(&dir, &args, &[("VMM_CPR_TRANSFER_TIMEOUT_MS", "1000")]);
    wait_past(&mut old.serial, "count ", 2);
    let new = start_new(
        &dir,
        &vmm_bin(),
        &args,
        &[("VMM_CPR_TRANSFER_FAILPOINT", "state")],
    );
    old.hmp
        .0
        .write_all(format!("cpr-transfer unix:{}\n", dir.str("cpr.sock")).as_bytes())
        .expect("send cpr-transfer");
    wait_stopped(new.child.id());
    let reply = read_until(&mut old.hmp.0, "(vmm) ");
    assert!(
        reply.contains("no 'restored' from the peer within 1 s"),
        "{reply}"
    );
    assert_eq!(old.hmp.cmd("info status"), "VM status: running\n");
    // Woken up, the new vmm restores, finds the old one gone and must not run the guest.
    // SAFETY: kill sends SIGCONT to our own child.
    unsafe { libc::kill(new.child.id() as i32, libc::SIGCONT) };
    let (status, out, err) = new.wait();
    assert_eq!(status.code(), Some(1), "new vmm: {err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("it stays there"), "{err}");
    assert!(err.contains("closed the cpr channel"), "{err}");
    keeps_counting_then_quits(old);
}

#[test]
fn a_new_vmm_with_another_machine_refuses_and_the_guest_stays() {
    let dir = Scratch::new("tx-refuse");
    let args = machine_args(&dir, "counter", "256M");
    let mut old = start_old(&dir, &args, &[]);
    wait_past(&mut old.serial, "count ", 2);
    let other = machine_args(&dir, "counter", "128M");
    let new = start_new(&dir, &vmm_bin(), &other, &[]);
    let reply = old
        .hmp
        .cmd(&format!("cpr-transfer unix:{}", dir.str("cpr.sock")));
    assert!(reply.contains("the peer refused"), "{reply}");
    assert!(
        reply.contains("RAM size: image has 256 MiB, command line has 128 MiB"),
        "{reply}"
    );
    let (status, _, err) = new.wait();
    assert_eq!(status.code(), Some(1));
    assert!(err.contains("another machine"), "{err}");
    assert_eq!(old.hmp.cmd("info status"), "VM status: running\n");
    let at = last_number(&old.serial, "count ");
    wait_past(&mut old.serial, "count ", at + 2);
    old.hmp.0.write_all(b"quit\n").expect("quit");
    assert_eq!(old.vmm.wait().0.code(), Some(0));
}

#[test]
fn pre_started_successor_keeps_ram_and_reports_the_pause() {
    let dir = Scratch::new("tx-digest");
    let args = machine_args(&dir, "memcheck", "256M");
    let mut old = start_old(&dir, &args, &[]);
    old.serial.wait_for("memcheck ok pass ");
    // The successor is up and listening long before the transfer.
    let new = start_new(&dir, &vmm_bin(), &args, &[]);
    assert_eq!(
        std::fs::metadata(dir.path("cpr.sock"))
            .expect("cpr socket")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert_eq!(old.hmp.cmd("stop"), "");
    let digest_before = old.hmp.cmd("info ram-digest");
    transfer(&dir, &mut old);
    let (mut serial, mut hmp, _) = wait_old_exit(old);
    assert_eq!(hmp.cmd("info status"), "VM status: paused\n");
    assert_eq!(hmp.cmd("info ram-digest"), digest_before);
    assert_eq!(hmp.cmd("cont"), "");
    let at = last_number(&serial, "memcheck ok pass ");
    wait_past(&mut serial, "memcheck ok pass ", at + 1);
    assert!(!serial.seen.contains("mismatch"), "{}", serial.seen);
    hmp.0.write_all(b"quit\n").expect("quit");
    assert_eq!(new.wait().0.code(), Some(0));
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"))
}

#[test]
fn qmp_cpr_transfer_is_answered_by_the_new_vmm() {
    let dir = Scratch::new("tx-qmp");
    let args = machine_args(&dir, "counter", "256M");
    let mut old = start_old(&dir, &args, &[]);
    let mut qmp = RawQmp::new(old.vmm.connect(&dir.path("qmp.sock")));
    let greeting = qmp.line();
    assert!(greeting.contains("QMP"), "{greeting}");
    let mut events = Vec::new();
    let r = qmp.request(r#"{"execute":"qmp_capabilities"}"#, &mut events);
    assert_eq!(json(&r), serde_json::json!({"return": {}}));
    wait_past(&mut old.serial, "count ", 2);
    let new = start_new(&dir, &vmm_bin(), &args, &[]);
    let r = qmp.request(
        &format!(
            r#"{{"execute":"cpr-transfer","arguments":{{"uri":"unix:{}"}},"id":7}}"#,
            dir.str("cpr.sock")
        ),
        &mut events,
    );
    assert_eq!(json(&r), serde_json::json!({"return": {}, "id": 7}));
    let Old {
        vmm: old_vmm,
        serial: _serial,
        hmp: _hmp,
    } = old;
    assert_eq!(old_vmm.wait().0.code(), Some(0));
    let r = qmp.request(r#"{"execute":"query-cpr","id":8}"#, &mut events);
    let v = json(&r);
    assert_eq!(v["return"]["mode"], "transfer", "{r}");
    assert!(v["return"]["last"]["pause-us"].as_f64().is_some(), "{r}");
    let r = qmp.request(r#"{"execute":"query-status"}"#, &mut events);
    assert_eq!(json(&r)["return"]["status"], "running", "{r}");
    assert!(
        events.iter().any(|e| e["event"] == "CPR_LOAD"),
        "{events:?}"
    );
    qmp.send("{\"execute\":\"quit\"}\n");
    assert_eq!(new.wait().0.code(), Some(0));
}

#[test]
fn the_new_vmm_refuses_a_peer_of_another_uid() {
    let dir = Scratch::new("tx-uid");
    let args = machine_args(&dir, "counter", "256M");
    let new = start_new(&dir, &vmm_bin(), &args, &[]);
    // Root may connect whatever the mode; widen it so the other uid reaches the check.
    std::fs::set_permissions(dir.path("cpr.sock"), std::fs::Permissions::from_mode(0o777))
        .expect("chmod");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    // SAFETY: getuid has no arguments.
    assert_eq!(
        unsafe { libc::getuid() },
        0,
        "this test needs root to act as another uid"
    );
    let out = Command::new("/usr/bin/env")
        .arg("python3")
        .arg("-c")
        .arg(format!(
            "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect({:?})\n\
             b=b''\nwhile True:\n  c=s.recv(4096)\n  if not c: break\n  b+=c\n\
             sys.stdout.buffer.write(b)",
            dir.str("cpr.sock")
        ))
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run a client as nobody");
    let got = String::from_utf8_lossy(&out.stdout);
    assert!(
        got.contains("the peer runs as uid 65534"),
        "{got:?} {out:?}"
    );
    let (status, _, err) = new.wait();
    assert_eq!(status.code(), Some(1));
    assert!(err.contains("uid 65534"), "{err}");
    let _ = UnixStream::connect(dir.path("cpr.sock")).expect_err("socket removed");
}

#[test]
fn a_waiting_successor_ends_on_sigterm() {
    let dir = Scratch::new("tx-sigterm");
    let args = machine_args(&dir, "counter", "256M");
    let new = start_new(&dir, &vmm_bin(), &args, &[]);
    // SAFETY: kill sends SIGTERM to our own child.
    unsafe { libc::kill(new.child.id() as i32, libc::SIGTERM) };
    let (status, _, err) = new.wait();
    assert!(!status.success(), "{status} {err}");
}
