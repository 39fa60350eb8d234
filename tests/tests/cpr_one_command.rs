//! Restart mode in one command: `cpr-exec BIN ARGS -incoming FILE` saves the guest to FILE,
//! execs the new vmm in place, and the new vmm loads FILE at start-up and answers the
//! cpr-exec with the outcome. Every failure leaves the guest running in the old process or
//! paused in the new one with its RAM, ready for a corrected command.

use std::io::Write;

use cpr_tests::live::{assert_consecutive, last_number, numbers, wait_past, LiveVm};
use cpr_tests::{vmm_bin, RawQmp};

const MEMFD: &[&str] = &["-machine", "memfd-alloc=on"];

/// `cpr-exec BIN [EXTRA...] ARGS -incoming IMG` (no -S unless `extra` has it).
fn one_command(vm: &LiveVm, extra: &str, img: &str) -> String {
    format!(
        "cpr-exec {} {extra} {} -incoming {img}",
        vmm_bin().display(),
        vm.args.join(" ")
    )
}

/// Waits for a few more counts and checks that every count came once, in order.
fn keeps_counting(vm: &mut LiveVm, min: usize) {
    let c = last_number(vm, "count ");
    wait_past(vm, "count ", c);
    assert_consecutive(&numbers(&vm.serial.seen, "count "), min, "count");
}

/// The processes whose parent is `pid`, as "PID STATE".
fn children(pid: u32) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "PID (COMM) STATE PPID ...": COMM may hold spaces, so split after its ')'.
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let fields: Vec<&str> = rest.split(' ').collect();
        if fields.get(1) == Some(&pid.to_string().as_str()) {
            let child = head.split(' ').next().unwrap_or("?");
            out.push(format!("{child} {}", fields[0]));
        }
    }
    out
}

#[test]
fn one_cpr_exec_saves_execs_loads_and_the_guest_counts_on() {
    let mut vm = LiveVm::start("cpr1-counter", "counter", MEMFD);
    vm.serial.wait_for("count 3\n");
    let pid = vm.pid();
    let img = vm.image();
    for round in 0..3 {
        assert_eq!(vm.hmp.cmd(&one_command(&vm, "", &img)), "", "round {round}");
        assert_eq!(vm.pid(), pid, "the same process, now the new program");
        assert_eq!(vm.status(), "VM status: running\n");
        keeps_counting(&mut vm, 5);
    }
    // Each update's teardown helper (holding the old address space) has exited and been
    // reaped once the guest ran again.
    let deadline = std::time::Instant::now() + cpr_tests::PATIENCE;
    while !children(pid).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(children(pid), Vec::<String>::new(), "left-over children");
    let info = vm.hmp.cmd("info cpr");
    assert!(info.contains("state: none\n"), "{info}");
    assert!(info.contains(&format!("image: {img}\n")), "{info}");
    for phase in [
        "write-image",
        "until-exec",
        "exec",
        "machine",
        "until-load",
        "restore",
    ] {
        assert!(info.contains(&format!("  {phase} ")), "{phase}: {info}");
    }
    // The image is a complete restart image, as cpr-save writes it.
    let bytes = std::fs::read(&img).expect("the image was written");
    assert!(!bytes.is_empty());
    vm.hmp.0.write_all(b"quit\n").unwrap();
    let (status, _, stderr) = vm.vmm.wait();
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
}

#[test]
fn with_dash_s_the_new_vmm_loads_and_waits_for_cont() {
    let mut vm = LiveVm::start("cpr1-dash-s", "counter", MEMFD);
    vm.serial.wait_for("count 2\n");
    let img = vm.image();
    assert_eq!(vm.hmp.cmd(&one_command(&vm, "-S", &img)), "");
    assert_eq!(vm.status(), "VM status: paused\n");
    let digest = vm.digest();
    let paused_at = last_number(&vm, "count ");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        last_number(&vm, "count "),
        paused_at,
        "a paused guest counted"
    );
    assert_eq!(vm.digest(), digest);
    assert_eq!(vm.hmp.cmd("cont"), "");
    assert_eq!(vm.status(), "VM status: running\n");
    keeps_counting(&mut vm, 3);
}

#[test]
fn a_different_machine_is_reported_and_a_corrected_cpr_exec_loads() {
    let mut vm = LiveVm::start("cpr1-mismatch", "counter", MEMFD);
    vm.serial.wait_for("count 2\n");
    let img = vm.image();
    // The new command line's later -smp and -m win over the original ones.
    let wrong = format!("{} -smp 2 -m 128", vm.args.join(" "));
    let line = format!("cpr-exec {} {wrong} -incoming {img}", vmm_bin().display());
    assert_eq!(
        vm.hmp.cmd(&line),
        format!(
            "Error: the image {img} describes another machine than this command line:\n\
             vCPUs: image has 1, command line has 2\n\
             RAM size: image has 64 MiB, command line has 128 MiB\n"
        )
    );
    // The new process holds the guest, paused, with its RAM (the count goes on from it).
    assert_eq!(vm.status(), "VM status: paused (prelaunch)\n");
    let info = vm.hmp.cmd("info cpr");
    assert!(info.contains("state: incoming\n"), "{info}");
    assert!(info.contains("last error: the image "), "{info}");
    // It execs again with the right command line (nothing to save: the image stands).
    assert_eq!(vm.hmp.cmd(&one_command(&vm, "", &img)), "");
    assert_eq!(vm.status(), "VM status: running\n");
    keeps_counting(&mut vm, 3);
}

#[test]
fn incoming_naming_another_image_than_cpr_save_wrote_is_refused() {
    let mut vm = LiveVm::start("cpr1-other", "counter", MEMFD);
    vm.serial.wait_for("count 2\n");
    let img = vm.image();
    assert_eq!(vm.hmp.cmd(&format!("cpr-save {img} restart")), "");
    let other = vm.dir.str("other.cpr");
    assert_eq!(
        vm.hmp.cmd(&one_command(&vm, "", &other)),
        format!(
            "Error: the new command line loads {other} (-incoming) but cpr-save wrote {img}: \
             the guest continues in this process\n"
        )
    );
    assert_eq!(vm.status(), "VM status: running\n");
    keeps_counting(&mut vm, 3);
    // Naming the image cpr-save wrote, after a fresh cpr-save, completes the update.
    assert_eq!(vm.hmp.cmd(&format!("cpr-save {img} restart")), "");
    assert_eq!(vm.hmp.cmd(&one_command(&vm, "", &img)), "");
    assert_eq!(vm.status(), "VM status: running\n");
    keeps_counting(&mut vm, 3);
}

#[test]
fn an_image_that_cannot_be_written_leaves_the_guest_running() {
    let mut vm = LiveVm::start("cpr1-unwritable", "counter", MEMFD);
    vm.serial.wait_for("count 2\n");
    let pid = vm.pid();
    let bad = vm.dir.str("no-such-dir/vm.cpr");
    let out = vm.hmp.cmd(&one_command(&vm, "", &bad));
    assert!(out.starts_with("Error: "), "{out}");
    assert!(out.contains("no-such-dir/vm.cpr"), "{out}");
    assert_eq!(vm.status(), "VM status: running\n");
    assert_eq!(vm.pid(), pid);
    keeps_counting(&mut vm, 3);
    let info = vm.hmp.cmd("info cpr");
    assert!(info.contains("state: none\n"), "{info}");
}

#[test]
fn exec_of_a_missing_binary_after_the_save_resumes_the_guest() {
    let mut vm = LiveVm::start("cpr1-missing", "counter", MEMFD);
    vm.serial.wait_for("count 2\n");
    let img = vm.image();
    let missing = vm.dir.str("no-such-vmm");
    let line = format!("cpr-exec {missing} {} -incoming {img}", vm.args.join(" "));
    assert_eq!(
        vm.hmp.cmd(&line),
        format!(
            "Error: cannot execute {missing}; the guest continues in this process: \
             ENOENT: No such file or directory\n"
        )
    );
    assert_eq!(vm.status(), "VM status: running\n");
    keeps_counting(&mut vm, 3);
}

#[test]
fn over_qmp_the_reply_comes_from_the_new_vmm_then_cpr_load_and_resume() {
    let dir_probe = cpr_tests::Scratch::new("cpr1-qmp-sock");
    let qmp_sock = dir_probe.str("qmp.sock");
    let qmp_arg = format!("unix:{qmp_sock},server=on,wait=off");
    let mut vm = LiveVm::start(
        "cpr1-qmp",
        "counter",
        &["-machine", "memfd-alloc=on", "-qmp", &qmp_arg],
    );
    vm.serial.wait_for("count 2\n");
    let pid = vm.pid();
    let mut q = RawQmp::new(vm.vmm.connect(std::path::Path::new(&qmp_sock)));
    assert!(q.line().contains("QMP"));
    let mut events = Vec::new();
    q.request(r#"{"execute":"qmp_capabilities"}"#, &mut events);
    let img = vm.image();
    let mut argv = vec![vmm_bin().display().to_string()];
    argv.extend(vm.args.iter().cloned());
    argv.extend(["-incoming".to_string(), img.clone()]);
    let req = serde_json::json!({"execute": "cpr-exec", "arguments": {"argv": argv}, "id": 5});
    let reply = q.request(&format!("{req}\n"), &mut events);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&reply).unwrap(),
        serde_json::json!({"return": {}, "id": 5})
    );
    let names: Vec<_> = events.iter().map(|e| e["event"].clone()).collect();
    assert_eq!(names, ["STOP", "CPR_SAVE"], "{events:?}");
    // The new vmm's events follow its reply without any further request.
    let load: serde_json::Value = serde_json::from_str(&q.line()).unwrap();
    assert_eq!(load["event"], "CPR_LOAD", "{load}");
    assert_eq!(load["data"]["filename"], img.as_str());
    assert!(
        load["data"]["timing"]["pause-us"].as_f64().is_some(),
        "{load}"
    );
    let resume: serde_json::Value = serde_json::from_str(&q.line()).unwrap();
    assert_eq!(resume["event"], "RESUME", "{resume}");
    assert_eq!(vm.pid(), pid);
    keeps_counting(&mut vm, 3);
}
