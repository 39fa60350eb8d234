//! Reboot mode's command-line side: `-incoming FILE`, images loaded with mismatched
//! options, `-only-cpr-capable`, `query-cpr-blockers`.

use cpr_tests::{guest, quit, run_vmm, start_with_hmp, RawQmp, Scratch, Vmm, Watch};

/// Saves a running counter guest (64 MiB anonymous RAM, 1 vCPU) in reboot mode; returns
/// the last count printed.
fn saved_counter(dir: &Scratch, img: &str) -> String {
    let kernel = guest("counter");
    let (vmm, mut out, mut hmp) = start_with_hmp(dir, &["-kernel", &kernel, "-m", "64M"]);
    out.wait_for("count 2\n");
    let reply = hmp.cmd(&format!("cpr-save {img} reboot"));
    assert!(reply.contains("RAM in image"), "{reply}");
    quit(vmm, hmp);
    // All the old process printed (the pipe may still hold some).
    let seen = out.rest().to_string();
    seen
}

fn last_count(text: &str) -> u64 {
    text.split('\n')
        .filter_map(|l| l.strip_prefix("count "))
        .filter_map(|n| n.parse().ok())
        .next_back()
        .expect("a count line")
}

#[test]
fn mismatched_options_are_each_listed_and_the_right_ones_load() {
    let dir = Scratch::new("rbo-mismatch");
    let img = dir.str("vm.cpr");
    let before = saved_counter(&dir, &img);
    let kernel = guest("counter");
    let (vmm, _out, mut hmp) = start_with_hmp(
        &dir,
        &[
            "-kernel",
            &kernel,
            "-m",
            "128M",
            "-smp",
            "2",
            "-machine",
            "memfd-alloc=on",
            "-S",
        ],
    );
    let reply = hmp.cmd(&format!("cpr-load {img}"));
    assert_eq!(
        reply,
        format!(
            "Error: the image {img} describes another machine than this command line:\n\
             vCPUs: image has 1, command line has 2\n\
             RAM size: image has 64 MiB, command line has 128 MiB\n"
        )
    );
    // Nothing changed: the new vmm still waits, and a plain start would still boot.
    assert_eq!(hmp.cmd("info status"), "VM status: paused (prelaunch)\n");
    quit(vmm, hmp);

    // -incoming with the wrong options refuses to start, with the same list.
    let out = run_vmm(&["-incoming", &img, "-m", "128M", "-serial", "null"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("RAM size: image has 64 MiB, command line has 128 MiB"),
        "{stderr}"
    );

    // The right options load it, and the guest keeps counting. RAM in the image may change
    // its backing: anonymous before, a memfd now (so restart mode becomes possible).
    let (vmm, mut out, mut hmp) = start_with_hmp(
        &dir,
        &[
            "-kernel",
            &kernel,
            "-m",
            "64M",
            "-machine",
            "memfd-alloc=on",
            "-S",
        ],
    );
    let reply = hmp.cmd(&format!("cpr-load {img}"));
    assert!(reply.starts_with("reboot mode: loaded"), "{reply}");
    out.wait_for(&format!("count {}\n", last_count(&before) + 2));
    quit(vmm, hmp);
}

#[test]
fn incoming_without_machine_options_builds_the_machine_from_the_image() {
    let dir = Scratch::new("rbo-incoming");
    let img = dir.str("vm.cpr");
    let before = saved_counter(&dir, &img);
    // No -kernel, -m or -smp: all from the image.
    let (vmm, mut out, mut hmp) = start_with_hmp(&dir, &["-incoming", &img]);
    assert_eq!(hmp.cmd("info status"), "VM status: running\n");
    out.wait_for(&format!("count {}\n", last_count(&before) + 2));
    let info = hmp.cmd("info cpr");
    assert!(info.contains("mode: reboot"), "{info}");
    // Saved running, then with -S, -incoming leaves the guest paused until cont.
    hmp.cmd(&format!("cpr-save {img} reboot"));
    quit(vmm, hmp);
    // All the old process printed (the pipe may still hold some).
    let seen = out.rest().to_string();
    let (vmm, mut out, mut hmp) = start_with_hmp(&dir, &["-incoming", &img, "-S"]);
    assert_eq!(hmp.cmd("info status"), "VM status: paused\n");
    assert_eq!(hmp.cmd("cont"), "");
    out.wait_for(&format!("count {}\n", last_count(&seen) + 2));
    quit(vmm, hmp);
}

#[test]
fn only_cpr_capable_rejects_what_cannot_be_live_updated() {
    let kernel = guest("counter");
    let out = run_vmm(&["-kernel", &kernel, "-m", "64M", "-only-cpr-capable"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "vmm: -only-cpr-capable: this configuration cannot be live-updated:\n  \
         restart mode: guest RAM (-m 64M): volatile RAM (anonymous memory) does not survive \
         exec; use -machine memfd-alloc=on, or a memory-backend-memfd or memory-backend-file \
         with share=on\n"
    );
    let out = run_vmm(&[
        "-kernel",
        &kernel,
        "-machine",
        "memfd-alloc=on",
        "-chardev",
        "pty,id=console",
        "-serial",
        "chardev:console",
        "-only-cpr-capable",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "vmm: -only-cpr-capable: this configuration cannot be live-updated:\n  \
         reboot mode: chardev 'console': a pty cannot be preserved across a restart of the vmm \
         (the new process gets a pty with another name); use a socket chardev\n"
    );
    // Both at once: one error naming each object.
    let out = run_vmm(&[
        "-kernel",
        &kernel,
        "-chardev",
        "pty,id=console",
        "-serial",
        "chardev:console",
        "-only-cpr-capable",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr.matches("mode: ").count(), 2, "{stderr}");
    assert_eq!(stderr.matches("vmm: ").count(), 1, "{stderr}");
}

#[test]
fn only_cpr_capable_accepts_memfd_ram_and_sockets() {
    let dir = Scratch::new("rbo-capable");
    let kernel = guest("counter");
    let (vmm, mut out, hmp) = start_with_hmp(
        &dir,
        &[
            "-kernel",
            &kernel,
            "-machine",
            "memfd-alloc=on",
            "-only-cpr-capable",
        ],
    );
    out.wait_for("count 1\n");
    quit(vmm, hmp);
}

#[test]
fn query_cpr_blockers_lists_each_mode() {
    let dir = Scratch::new("rbo-blockers");
    let kernel = guest("counter");
    let qmp = dir.str("qmp.sock");
    let mut vmm = Vmm::spawn(&[
        "-kernel",
        &kernel,
        "-m",
        "32M",
        "-S",
        "-chardev",
        "pty,id=console",
        "-serial",
        "chardev:console",
        "-qmp",
        &format!("unix:{qmp},server=on,wait=off"),
    ]);
    let mut q = RawQmp::new(vmm.connect(std::path::Path::new(&qmp)));
    q.line();
    let mut events = Vec::new();
    q.request(r#"{"execute": "qmp_capabilities"}"#, &mut events);
    let reply = q.request(r#"{"execute": "query-cpr-blockers"}"#, &mut events);
    let v: serde_json::Value = serde_json::from_str(&reply).expect("JSON reply");
    insta::assert_snapshot!(serde_json::to_string_pretty(&v["return"]).expect("pretty JSON"));
    let reply = q.request(
        r#"{"execute": "human-monitor-command", "arguments": {"command-line": "info cpr-blockers"}}"#,
        &mut events,
    );
    let v: serde_json::Value = serde_json::from_str(&reply).expect("JSON reply");
    insta::assert_snapshot!("info_cpr_blockers", v["return"].as_str().expect("text"));
    // A blocked mode fails before the guest is touched.
    let reply = q.request(
        &format!(
            r#"{{"execute": "cpr-save", "arguments": {{"filename": "{}", "mode": "reboot"}}}}"#,
            dir.str("vm.cpr")
        ),
        &mut events,
    );
    assert!(
        reply.contains("cannot live-update in reboot mode"),
        "{reply}"
    );
    assert!(!dir.path("vm.cpr").exists());
    let reply = q.request(r#"{"execute": "query-status"}"#, &mut events);
    assert!(reply.contains(r#""status": "prelaunch""#), "{reply}");
    q.request(r#"{"execute": "quit"}"#, &mut events);
    let (status, _, _) = vmm.wait();
    assert_eq!(status.code(), Some(0));
}

fn qmp_vmm(dir: &Scratch, extra: &[&str]) -> (Vmm, RawQmp, Watch) {
    let kernel = guest("counter");
    let qmp = dir.str("qmp.sock");
    let _ = std::fs::remove_file(&qmp);
    let qmp_arg = format!("unix:{qmp},server=on,wait=off");
    let mut args = vec![
        "-kernel",
        kernel.as_str(),
        "-m",
        "32M",
        "-machine",
        "memfd-alloc=on",
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-qmp", &qmp_arg]);
    let mut vmm = Vmm::spawn(&args);
    let out = Watch::new(vmm.child.stdout.take().expect("stdout piped"));
    let mut q = RawQmp::new(vmm.connect(std::path::Path::new(&qmp)));
    q.line();
    q.request(r#"{"execute": "qmp_capabilities"}"#, &mut Vec::new());
    (vmm, q, out)
}

/// Reads QMP lines until event `name` (events follow the reply that caused them).
fn next_event(
    q: &mut RawQmp,
    events: &mut Vec<serde_json::Value>,
    name: &str,
) -> serde_json::Value {
    loop {
        if let Some(e) = events.iter().find(|e| e["event"] == name) {
            return e.clone();
        }
        let l = q.line();
        let v: serde_json::Value = serde_json::from_str(&l).expect("QMP line is JSON");
        assert!(v.get("event").is_some(), "unexpected line {l}");
        events.push(v);
    }
}

#[test]
fn reboot_mode_over_qmp() {
    let dir = Scratch::new("rbo-qmp");
    let img = dir.str("vm.cpr");
    let (vmm, mut q, mut out) = qmp_vmm(&dir, &[]);
    out.wait_for("count 2\n");
    let mut events = Vec::new();
    let bad = q.request(
        &format!(
            r#"{{"execute": "cpr-save", "arguments": {{"filename": "{img}", "mode": "restart", "ram": "in-image"}}}}"#
        ),
        &mut events,
    );
    assert_eq!(
        bad,
        r#"{"error": {"class": "GenericError", "desc": "Parameter 'ram' is only valid in reboot mode"}}"#
    );
    let reply = q.request(
        &format!(
            r#"{{"execute": "cpr-save", "arguments": {{"filename": "{img}", "mode": "reboot", "ram": "in-image"}}}}"#
        ),
        &mut events,
    );
    assert_eq!(reply, r#"{"return": {}}"#);
    let saved = next_event(&mut q, &mut events, "CPR_SAVE");
    assert_eq!(saved["data"]["ram"]["placement"], "in-image");
    assert!(
        saved["data"]["ram"]["bytes-written"].as_u64().unwrap_or(0) > 0,
        "{saved}"
    );
    q.request(r#"{"execute": "quit"}"#, &mut events);
    assert_eq!(vmm.wait().0.code(), Some(0));
    let before = out.rest().to_string();

    let (vmm, mut q, mut out) = qmp_vmm(&dir, &["-S"]);
    let mut events = Vec::new();
    let reply = q.request(
        &format!(r#"{{"execute": "cpr-load", "arguments": {{"filename": "{img}"}}}}"#),
        &mut events,
    );
    assert_eq!(reply, r#"{"return": {}}"#);
    next_event(&mut q, &mut events, "RESUME");
    let names: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(names, ["CPR_LOAD", "RESUME"]);
    let status = q.request(r#"{"execute": "query-status"}"#, &mut events);
    assert!(status.contains(r#""status": "running""#), "{status}");
    out.wait_for(&format!("count {}\n", last_count(&before) + 2));
    q.request(r#"{"execute": "quit"}"#, &mut events);
    assert_eq!(vmm.wait().0.code(), Some(0));
}
