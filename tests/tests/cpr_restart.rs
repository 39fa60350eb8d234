//! Restart-mode live update end to end: cpr-save, cpr-exec of a new vmm in place, cpr-load,
//! with real guests, a serial socket client and monitor clients that stay connected.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::process::Command;

use cpr_tests::live::{assert_consecutive, fd_table, last_number, numbers, wait_past, LiveVm};
use cpr_tests::{vmm_bin, Hmp, Scratch, Vmm, Watch};

const MEMFD: &[&str] = &["-machine", "memfd-alloc=on"];

#[test]
fn counter_continues_across_an_update_with_the_same_pid_and_ram() {
    let mut vm = LiveVm::start("cpr-counter", "counter", MEMFD);
    vm.serial.wait_for("count 3\n");
    let pid = vm.pid();
    let img = vm.image();
    assert_eq!(vm.hmp.cmd(&format!("cpr-save {img} restart")), "");
    assert_eq!(vm.status(), "VM status: paused (postmigrate)\n");
    let info = vm.hmp.cmd("info cpr");
    assert!(info.starts_with("mode: restart\nstate: saved\n"), "{info}");
    let before = vm.digest();
    let line = vm.exec_line(&vmm_bin().to_string_lossy());
    assert_eq!(vm.hmp.cmd(&line), "");
    // The same process, now the new program, waits for cpr-load with the guest's RAM.
    assert_eq!(vm.pid(), pid);
    assert_eq!(vm.status(), "VM status: paused (prelaunch)\n");
    assert_eq!(vm.digest(), before, "RAM changed across exec");
    let saved_last = last_number(&vm, "count ");
    assert_eq!(vm.hmp.cmd(&format!("cpr-load {img}")), "");
    assert_eq!(vm.status(), "VM status: running\n");
    wait_past(&mut vm, "count ", saved_last);
    // Every value once, in order: no restart from zero, nothing lost or repeated.
    assert_consecutive(&numbers(&vm.serial.seen, "count "), 5, "count");
    let info = vm.hmp.cmd("info cpr");
    assert!(info.contains("state: none\n"), "{info}");
    assert!(info.contains("\npause: "), "{info}");
    for phase in ["write-image", "exec", "machine", "restore", "resume"] {
        assert!(
            info.contains(&format!("  {phase} ")),
            "{phase} missing: {info}"
        );
    }
    vm.hmp.0.write_all(b"quit\n").unwrap();
    let (status, _, stderr) = vm.vmm.wait();
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
}

/// The `counts B A1 ..` lines of the smpcount guest: the boot vCPU's count, then each
/// slot's (one per other vCPU, in the order they started).
fn smp_counts(text: &str) -> Vec<Vec<u64>> {
    let complete = &text[..text.rfind('\n').unwrap_or(0)];
    complete
        .lines()
        .filter_map(|l| l.strip_prefix("counts "))
        .map(|l| l.split(' ').filter_map(|n| n.parse().ok()).collect())
        .collect()
}

/// Waits until the guest printed `n` counts lines in all.
fn wait_counts(vm: &mut LiveVm, n: usize) -> Vec<Vec<u64>> {
    loop {
        let lines = smp_counts(&vm.serial.seen);
        if lines.len() >= n {
            return lines;
        }
        // The line after the next one has started: the next one is complete.
        let after_next = lines.last().map_or(2, |l| l[0] + 2);
        vm.serial.wait_for(&format!("counts {after_next} "));
    }
}

#[test]
fn every_vcpu_of_a_four_vcpu_guest_keeps_counting_across_an_update() {
    let mut vm = LiveVm::start(
        "cpr-smp4",
        "smpcount",
        &["-machine", "memfd-alloc=on", "-smp", "4"],
    );
    // Three other vCPUs started and counted; the slots of absent vCPUs stay zero.
    let mut lines = wait_counts(&mut vm, 3);
    while !lines.last().is_some_and(|l| l[1..4].iter().all(|c| *c > 0)) {
        lines = wait_counts(&mut vm, lines.len() + 1);
    }
    assert!(lines
        .iter()
        .all(|l| l.len() == 8 && l[4..].iter().all(|c| *c == 0)));
    vm.update();
    let after = lines.len() + 1;
    let lines = wait_counts(&mut vm, after + 2);
    // Printed by the new process: lines well after the load, so the last line read
    // before the pause is not among them.
    let (a, b) = (&lines[after], &lines[after + 1]);
    for cpu in 0..4 {
        assert!(
            b[cpu] > a[cpu],
            "vCPU slot {cpu} stopped counting after the update: {a:?} then {b:?}"
        );
    }
    // Every counter went on from its value: none went back (to zero or otherwise).
    for w in lines.windows(2) {
        for cpu in 0..4 {
            assert!(
                w[1][cpu] >= w[0][cpu],
                "slot {cpu}: {:?} then {:?}",
                w[0],
                w[1]
            );
        }
    }
    assert_consecutive(
        &lines.iter().map(|l| l[0]).collect::<Vec<_>>(),
        5,
        "boot vCPU count",
    );
    vm.hmp.0.write_all(b"quit\n").unwrap();
    let (status, _, stderr) = vm.vmm.wait();
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
}

#[test]
fn a_stopped_guest_stays_stopped_and_its_ram_digest_is_unchanged() {
    let mut vm = LiveVm::start("cpr-stopped", "memcheck", MEMFD);
    vm.serial.wait_for("memcheck ok pass 1\n");
    assert_eq!(vm.hmp.cmd("stop"), "");
    let before = vm.digest();
    vm.update();
    assert_eq!(vm.status(), "VM status: paused\n");
    assert_eq!(vm.digest(), before);
    assert_eq!(vm.hmp.cmd("cont"), "");
    let pass = last_number(&vm, "memcheck ok pass ");
    wait_past(&mut vm, "memcheck ok pass ", pass);
    assert!(!vm.serial.seen.contains("mismatch"), "{}", vm.serial.seen);
}

#[test]
fn ticker_keeps_taking_interrupts() {
    let mut vm = LiveVm::start("cpr-ticker", "ticker", MEMFD);
    vm.serial.wait_for("tick 3\n");
    vm.update();
    let t = last_number(&vm, "tick ");
    wait_past(&mut vm, "tick ", t);
    let ticks = numbers(&vm.serial.seen, "tick ");
    assert!(ticks.windows(2).all(|w| w[1] > w[0]), "{ticks:?}");
    assert!(
        !vm.serial.seen.contains("unexpected interrupt"),
        "{}",
        vm.serial.seen
    );
}

#[test]
fn echo_guest_echoes_input_sent_before_during_and_after_the_update() {
    let mut vm = LiveVm::start("cpr-echo", "echo", MEMFD);
    vm.serial.wait_for("echo ready\n");
    vm.serial_in.write_all(b"before\n").unwrap();
    vm.serial.wait_for("echo: before\n");
    let img = vm.image();
    assert_eq!(vm.hmp.cmd(&format!("cpr-save {img} restart")), "");
    // Typed while the guest is stopped: it waits in the socket, which survives the exec.
    vm.serial_in.write_all(b"during\n").unwrap();
    let line = vm.exec_line(&vmm_bin().to_string_lossy());
    assert_eq!(vm.hmp.cmd(&line), "");
    assert_eq!(vm.hmp.cmd(&format!("cpr-load {img}")), "");
    vm.serial.wait_for("echo: during\n");
    vm.serial_in.write_all(b"after\n").unwrap();
    let seen = vm.serial.wait_for("echo: after\n").to_string();
    assert_eq!(
        seen.matches("echo ready").count(),
        1,
        "guest restarted: {seen}"
    );
}

#[test]
fn update_to_a_different_binary() {
    let mut vm = LiveVm::start("cpr-version", "counter", MEMFD);
    let old = vm.hmp.cmd("info version");
    // A copy of vmm whose version stamp says 9.9.9: a new binary differing only in version.
    let mut bytes = std::fs::read(vmm_bin()).unwrap();
    let from = format!("VMM_VERSION_STAMP={}", old.trim());
    let to = format!(
        "VMM_VERSION_STAMP={:<width$}",
        "9.9.9",
        width = old.trim().len()
    )
    .replace(' ', "\0");
    let at = bytes
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .expect("version stamp in the binary");
    bytes[at..at + to.len()].copy_from_slice(to.as_bytes());
    let next = vm.dir.path("vmm-9.9.9");
    std::fs::write(&next, &bytes).unwrap();
    std::fs::set_permissions(&next, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    vm.serial.wait_for("count 3\n");
    let img = vm.image();
    assert_eq!(vm.hmp.cmd(&format!("cpr-save {img} restart")), "");
    let line = vm.exec_line(&next.to_string_lossy());
    assert_eq!(vm.hmp.cmd(&line), "");
    assert_eq!(vm.hmp.cmd("info version"), "9.9.9\n");
    assert_eq!(vm.hmp.cmd(&format!("cpr-load {img}")), "");
    let c = last_number(&vm, "count ");
    wait_past(&mut vm, "count ", c);
    assert_consecutive(&numbers(&vm.serial.seen, "count "), 5, "count");
    assert_ne!(old, "9.9.9\n");
}

#[test]
fn anonymous_ram_is_refused_before_the_guest_stops() {
    let mut vm = LiveVm::start("cpr-anon", "counter", &[]);
    vm.serial.wait_for("count 2\n");
    let img = vm.image();
    assert_eq!(
        vm.hmp.cmd(&format!("cpr-save {img} restart")),
        "Error: cannot live-update in restart mode:\nguest RAM block ram-below-4g is \
         anonymous memory, which does not survive exec: start the VMM with -machine \
         memfd-alloc=on, or with a memory-backend-memfd or memory-backend-file object with \
         share=on\n"
    );
    assert_eq!(vm.status(), "VM status: running\n");
    assert!(!vm.dir.path("vm.cpr").exists());
}

/// The descriptors of `pid` that are close-on-exec.
fn cloexec_fds(pid: u32) -> Vec<u32> {
    fd_table(pid)
        .into_keys()
        .filter(|fd| {
            let info =
                std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
            info.lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
                .is_some_and(|f| f & 0o2000000 != 0)
        })
        .collect()
}

/// After cpr-save, a cpr-exec that cannot exec leaves the guest running here.
fn exec_fails(test: &str, make: impl FnOnce(&LiveVm) -> String, errno_text: &str) {
    let mut vm = LiveVm::start(test, "counter", MEMFD);
    vm.serial.wait_for("count 2\n");
    let pid = vm.pid();
    let before = cloexec_fds(pid);
    let img = vm.image();
    assert_eq!(vm.hmp.cmd(&format!("cpr-save {img} restart")), "");
    let bin = make(&vm);
    let out = vm.hmp.cmd(&vm.exec_line(&bin));
    assert_eq!(
        out,
        format!("Error: cannot execute {bin}; the guest continues in this process: {errno_text}\n")
    );
    assert_eq!(vm.status(), "VM status: running\n");
    let c = last_number(&vm, "count ");
    wait_past(&mut vm, "count ", c);
    assert_consecutive(&numbers(&vm.serial.seen, "count "), 3, "count");
    // FD_CLOEXEC is back on every descriptor that had it.
    assert_eq!(cloexec_fds(pid), before);
    // A later update still works.
    vm.update();
    assert_eq!(vm.status(), "VM status: running\n");
}

#[test]
fn exec_of_a_missing_binary_resumes_the_guest() {
    exec_fails(
        "cpr-missing",
        |vm| vm.dir.str("no-such-vmm"),
        "ENOENT: No such file or directory",
    );
}

#[test]
fn exec_of_a_non_executable_file_resumes_the_guest() {
    exec_fails(
        "cpr-noexec",
        |vm| {
            let p = vm.dir.path("not-executable");
            std::fs::write(&p, b"\x7fELF").unwrap();
            p.to_string_lossy().into_owned()
        },
        "EACCES: Permission denied",
    );
}

#[test]
fn exec_of_a_file_in_the_wrong_format_resumes_the_guest() {
    exec_fails(
        "cpr-badformat",
        |vm| {
            let p = vm.dir.path("garbage");
            std::fs::write(&p, [0u8; 64]).unwrap();
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
            p.to_string_lossy().into_owned()
        },
        "ENOEXEC: Exec format error",
    );
}

#[test]
fn exec_without_dash_s_is_refused_and_the_guest_resumes() {
    let mut vm = LiveVm::start("cpr-no-S", "counter", MEMFD);
    vm.serial.wait_for("count 2\n");
    let img = vm.image();
    assert_eq!(vm.hmp.cmd(&format!("cpr-save {img} restart")), "");
    let line = format!("cpr-exec {} {}", vmm_bin().display(), vm.args.join(" "));
    assert_eq!(
        vm.hmp.cmd(&line),
        "Error: the new command line must include -S (the new vmm waits for cpr-load) or \
         -incoming FILE (it loads FILE at once)\n"
    );
    assert_eq!(vm.status(), "VM status: running\n");
    assert_eq!(
        vm.hmp.cmd(&vm.exec_line(&vmm_bin().to_string_lossy())),
        "Error: cpr-exec needs a cpr-save in restart mode first\n"
    );
    // cont after cpr-save abandons the update: the image is stale now.
    assert_eq!(vm.hmp.cmd(&format!("cpr-save {img} restart")), "");
    assert_eq!(vm.hmp.cmd("cont"), "");
    assert_eq!(
        vm.hmp.cmd(&vm.exec_line(&vmm_bin().to_string_lossy())),
        "Error: cpr-exec needs a cpr-save in restart mode first\n"
    );
    assert_eq!(vm.status(), "VM status: running\n");
}

#[test]
fn a_corrupt_image_is_refused_and_a_good_one_loads_after() {
    let mut vm = LiveVm::start("cpr-corrupt", "counter", MEMFD);
    vm.serial.wait_for("count 2\n");
    let img = vm.image();
    assert_eq!(vm.hmp.cmd(&format!("cpr-save {img} restart")), "");
    let bad = vm.dir.str("bad.cpr");
    let mut bytes = std::fs::read(&img).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&bad, &bytes).unwrap();
    let digest = vm.digest();
    assert_eq!(vm.hmp.cmd(&vm.exec_line(&vmm_bin().to_string_lossy())), "");
    let out = vm.hmp.cmd(&format!("cpr-load {bad}"));
    assert!(
        out.starts_with(&format!("Error: cannot read the image {bad}: ")) && out.contains("CRC"),
        "{out}"
    );
    assert_eq!(vm.status(), "VM status: paused (prelaunch)\n");
    assert_eq!(vm.digest(), digest);
    let missing = vm.dir.str("missing.cpr");
    let out = vm.hmp.cmd(&format!("cpr-load {missing}"));
    assert!(
        out.starts_with(&format!("Error: cannot read the image {missing}: ")),
        "{out}"
    );
    assert_eq!(vm.hmp.cmd(&format!("cpr-load {img}")), "");
    assert_eq!(vm.status(), "VM status: running\n");
    let c = last_number(&vm, "count ");
    wait_past(&mut vm, "count ", c);
    assert_consecutive(&numbers(&vm.serial.seen, "count "), 3, "count");
}

#[test]
fn a_different_machine_is_listed_and_a_corrected_exec_then_loads() {
    let mut vm = LiveVm::start("cpr-mismatch", "counter", MEMFD);
    vm.serial.wait_for("count 2\n");
    let img = vm.image();
    assert_eq!(vm.hmp.cmd(&format!("cpr-save {img} restart")), "");
    let digest = vm.digest();
    let line = format!(
        "{} -smp 2 -m 128",
        vm.exec_line(&vmm_bin().to_string_lossy())
    );
    assert_eq!(vm.hmp.cmd(&line), "");
    assert_eq!(
        vm.hmp.cmd(&format!("cpr-load {img}")),
        format!(
            "Error: the image {img} describes another machine than this command line:\n\
             vCPUs: image has 1, command line has 2\n\
             RAM size: image has 64 MiB, command line has 128 MiB\n"
        )
    );
    assert_eq!(vm.status(), "VM status: paused (prelaunch)\n");
    assert_eq!(vm.digest(), digest);
    // The waiting process execs again with the right command line, and that one loads.
    assert_eq!(vm.hmp.cmd(&vm.exec_line(&vmm_bin().to_string_lossy())), "");
    assert_eq!(vm.digest(), digest);
    assert_eq!(vm.hmp.cmd(&format!("cpr-load {img}")), "");
    assert_eq!(vm.status(), "VM status: running\n");
    let c = last_number(&vm, "count ");
    wait_past(&mut vm, "count ", c);
    assert_consecutive(&numbers(&vm.serial.seen, "count "), 3, "count");
}

#[test]
fn a_hundred_updates_leak_no_descriptor() {
    let mut vm = LiveVm::start("cpr-hundred", "counter", MEMFD);
    vm.serial.wait_for("count 2\n");
    vm.update();
    let first = fd_table(vm.pid());
    for _ in 1..100 {
        vm.update();
    }
    let last = fd_table(vm.pid());
    // The same descriptors, compared by what they are: numbers may trade places (the guest
    // UART's eventfd is created while a placeholder's still holds the lower number), but any
    // leak adds an entry and any loss removes one.
    let kinds = |t: &std::collections::BTreeMap<u32, std::path::PathBuf>| {
        let mut v: Vec<_> = t.values().cloned().collect();
        v.sort();
        v
    };
    assert_eq!(kinds(&first), kinds(&last), "{first:?}\n{last:?}");
    let c = last_number(&vm, "count ");
    wait_past(&mut vm, "count ", c);
    assert_consecutive(&numbers(&vm.serial.seen, "count "), 3, "count");
}

#[test]
fn qmp_client_stays_connected_with_the_qemu_projects_client() {
    let dir = cpr_tests::Scratch::new("cpr-qmp");
    let sock = dir.str("qmp.sock");
    let qmp_arg = format!("unix:{sock},server=on,wait=off");
    let kernel = cpr_tests::guest("counter");
    let args = [
        "-m",
        "64",
        "-machine",
        "memfd-alloc=on",
        "-kernel",
        &kernel,
        "-serial",
        "null",
        "-qmp",
        &qmp_arg,
    ];
    let mut vmm = Vmm::spawn(&args);
    drop(vmm.connect(dir.path("qmp.sock").as_path()));
    let mut argv = vec![vmm_bin().to_string_lossy().into_owned(), "-S".into()];
    argv.extend(args.iter().map(|s| s.to_string()));
    let script = cpr_tests::workspace_root().join("tests/qmp/cpr_restart.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&sock)
        .arg(dir.str("vm.cpr"))
        .arg(serde_json::to_string(&argv).unwrap())
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
        "status running\n\
         event STOP\n\
         event CPR_SAVE mode=restart\n\
         status postmigrate\n\
         cpr-exec returned\n\
         status prelaunch\n\
         digest unchanged\n\
         event CPR_LOAD has pause-us\n\
         event RESUME\n\
         status running\n\
         query-cpr state=none last has pause-us\n\
         done\n"
    );
    let (status, _, stderr) = vmm.wait();
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
}

/// The counter guest on memfd RAM with HMP on `dir/mon.sock`, then `serial` options.
fn counter_args(dir: &Scratch, serial: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["-m", "64", "-machine", "memfd-alloc=on", "-kernel"]
        .map(String::from)
        .to_vec();
    args.push(cpr_tests::guest("counter"));
    args.extend(cpr_tests::hmp_socket_args(dir));
    args.extend(serial.iter().map(|s| s.to_string()));
    args
}

/// Restart-mode live update of the counter guest started with `args`, with `between` run
/// after cpr-exec and before cpr-load; then checks `out` goes on counting with no gap.
fn update_and_keep_counting(
    dir: &Scratch,
    hmp: &mut Hmp,
    out: &mut Watch,
    args: &[String],
    between: impl FnOnce(&mut Hmp),
) {
    out.wait_for("count 3\n");
    let img = dir.str("vm.cpr");
    assert_eq!(hmp.cmd(&format!("cpr-save {img} restart")), "");
    let line = format!("cpr-exec {} -S {}", vmm_bin().display(), args.join(" "));
    assert_eq!(hmp.cmd(&line), "");
    between(hmp);
    assert_eq!(hmp.cmd(&format!("cpr-load {img}")), "");
    let last = numbers(&out.seen, "count ").last().copied().unwrap_or(0);
    loop {
        let now = numbers(&out.seen, "count ").last().copied().unwrap_or(0);
        if now > last + 3 {
            break;
        }
        out.wait_for(&format!("count {}\n", now + 1));
    }
    assert_consecutive(&numbers(&out.seen, "count "), 5, "count");
}

#[test]
fn a_pty_serial_keeps_its_path_and_its_reader() {
    let dir = Scratch::new("cpr-pty");
    let args = counter_args(&dir, &["-chardev", "pty,id=ser", "-serial", "chardev:ser"]);
    let mut vmm = Vmm::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let (mut hmp, _) = Hmp::greet(vmm.connect(dir.path("mon.sock").as_path()));
    let info = hmp.cmd("info chardev");
    let path = info
        .lines()
        .find_map(|l| l.strip_prefix("ser: filename=pty:"))
        .unwrap_or_else(|| panic!("no pty in {info:?}"))
        .to_string();
    let pty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&path)
        .unwrap();
    let mut out = Watch::new(pty);
    update_and_keep_counting(&dir, &mut hmp, &mut out, &args, |hmp| {
        assert_eq!(hmp.cmd("info chardev"), info)
    });
}

#[test]
fn commands_pasted_at_once_run_in_order_across_the_exec() {
    let mut vm = LiveVm::start("cpr-paste", "counter", MEMFD);
    vm.serial.wait_for("count 2\n");
    let img = vm.image();
    let exec = vm.exec_line(&vmm_bin().to_string_lossy());
    let paste =
        format!("cpr-save {img} restart\n{exec}\ninfo status\ncpr-load {img}\ninfo status\n");
    vm.hmp.0.write_all(paste.as_bytes()).unwrap();
    let mut out = String::new();
    while out.matches("(vmm) ").count() < 5 {
        out.push_str(&cpr_tests::read_until(&mut vm.hmp.0, "(vmm) "));
    }
    assert_eq!(
        out.replace("\r\n", "\n"),
        "(vmm) (vmm) VM status: paused (prelaunch)\n(vmm) (vmm) VM status: running\n(vmm) "
    );
    let c = last_number(&vm, "count ");
    wait_past(&mut vm, "count ", c);
    assert_consecutive(&numbers(&vm.serial.seen, "count "), 3, "count");
}

#[test]
fn a_stdio_serial_keeps_writing_to_the_same_stdout() {
    let dir = Scratch::new("cpr-stdio");
    let args = counter_args(&dir, &["-serial", "stdio"]);
    let mut vmm = Vmm::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut out = Watch::new(vmm.child.stdout.take().expect("stdout piped"));
    let (mut hmp, _) = Hmp::greet(vmm.connect(dir.path("mon.sock").as_path()));
    update_and_keep_counting(&dir, &mut hmp, &mut out, &args, |_| ());
}
