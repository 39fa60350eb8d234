//! Reboot mode end to end: cpr-save FILE reboot, quit, a new vmm with the same options plus
//! -S, cpr-load FILE; RAM in place (a shared file on /dev/shm) or in the image.

use cpr_tests::{guest, quit, start_with_hmp, Hmp, Scratch, Vmm, Watch};

/// A RAM file on /dev/shm for one test, removed on drop.
struct ShmFile(String);

impl ShmFile {
    fn new(name: &str) -> ShmFile {
        let p = format!("/dev/shm/cpr-tests-{}-{name}", std::process::id());
        let _ = std::fs::remove_file(&p);
        ShmFile(p)
    }
    fn object(&self, size: &str) -> String {
        format!(
            "memory-backend-file,id=ram0,size={size},mem-path={},share=on",
            self.0
        )
    }
}

impl Drop for ShmFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A vmm running `guest_name` with its serial on stdout and HMP on `mon.sock`.
fn start(dir: &Scratch, guest_name: &str, machine: &[&str], extra: &[&str]) -> (Vmm, Watch, Hmp) {
    let kernel = guest(guest_name);
    let mut args = vec!["-kernel", kernel.as_str()];
    args.extend_from_slice(machine);
    args.extend_from_slice(extra);
    start_with_hmp(dir, &args)
}

/// Every complete `count N` line, in order.
fn counts(text: &str) -> Vec<u64> {
    text.split('\n')
        .filter_map(|l| l.strip_prefix("count "))
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// The old process's output followed by the new one's must be one unbroken count: the
/// guest continued from the exact byte it had reached.
fn assert_continuous(before: &str, after: &str) {
    let joined = format!("{before}{after}");
    let all = counts(&joined);
    assert!(all.len() >= 4, "too few counts: {joined:?}");
    for w in all.windows(2) {
        assert_eq!(w[1], w[0] + 1, "count sequence broken in {joined:?}");
    }
    let last_before = *counts(before).last().expect("counted before");
    assert!(
        *all.last().expect("counts") >= last_before + 2,
        "{joined:?}"
    );
}

/// Counter through save → quit → new process → load, the guest stopped at save so RAM
/// digests can be compared; then it continues counting.
fn counter_roundtrip(name: &str, machine: &[&str], save: &str, expect: &str) {
    let dir = Scratch::new(name);
    let img = dir.str("vm.cpr");
    let (vmm, mut out, mut hmp) = start(&dir, "counter", machine, &[]);
    out.wait_for("count 3\n");
    assert_eq!(hmp.cmd("stop"), "");
    let digest = hmp.cmd("info ram-digest");
    let reply = hmp.cmd(&format!("cpr-save {img} reboot{save}"));
    assert!(reply.contains(expect), "{reply}");
    assert_eq!(hmp.cmd("info status"), "VM status: paused (postmigrate)\n");
    quit(vmm, hmp);
    // All the old process printed (the pipe may still hold some).
    let before = out.rest().to_string();

    let (vmm, mut out, mut hmp) = start(&dir, "counter", machine, &["-S"]);
    let reply = hmp.cmd(&format!("cpr-load {img}"));
    assert!(reply.starts_with("reboot mode: loaded"), "{reply}");
    assert_eq!(hmp.cmd("info status"), "VM status: paused\n");
    assert_eq!(hmp.cmd("info ram-digest"), digest);
    assert_eq!(hmp.cmd("cont"), "");
    let last = counts(&before).last().copied().expect("counted");
    out.wait_for(&format!("count {}\n", last + 3));
    assert_continuous(&before, &out.seen);
    quit(vmm, hmp);
}

#[test]
fn counter_survives_reboot_mode_in_place() {
    let shm = ShmFile::new("in-place");
    let obj = shm.object("64M");
    counter_roundtrip(
        "rb-in-place",
        &["-object", &obj, "-machine", "memory-backend=ram0"],
        "",
        "RAM in place: 64 MiB",
    );
}

#[test]
fn counter_survives_reboot_mode_in_image_anonymous() {
    counter_roundtrip("rb-in-image-anon", &["-m", "64M"], "", "RAM in image: ");
}

#[test]
fn counter_survives_reboot_mode_in_image_from_a_ram_file() {
    let shm = ShmFile::new("forced-image");
    let obj = shm.object("64M");
    counter_roundtrip(
        "rb-in-image-file",
        &["-object", &obj, "-machine", "memory-backend=ram0"],
        " ram=in-image",
        "RAM in image: ",
    );
}

/// Saved while running: cpr-load resumes the guest by itself.
#[test]
fn running_counter_resumes_at_load_memfd_in_image() {
    let dir = Scratch::new("rb-running");
    let img = dir.str("vm.cpr");
    let machine = ["-m", "32M", "-machine", "memfd-alloc=on"];
    let (vmm, mut out, mut hmp) = start(&dir, "counter", &machine, &[]);
    out.wait_for("count 2\n");
    let reply = hmp.cmd(&format!("cpr-save {img} reboot ram=in-place"));
    assert!(
        reply.contains("ram=in-place needs guest RAM in a persistent shared file")
            && reply.contains("a memfd"),
        "{reply}"
    );
    assert_eq!(hmp.cmd("info status"), "VM status: running\n");
    let reply = hmp.cmd(&format!("cpr-save {img} reboot"));
    assert!(reply.contains("RAM in image: "), "{reply}");
    quit(vmm, hmp);
    // All the old process printed (the pipe may still hold some).
    let before = out.rest().to_string();
    let (vmm, mut out, mut hmp) = start(&dir, "counter", &machine, &["-S"]);
    hmp.cmd(&format!("cpr-load {img}"));
    assert_eq!(hmp.cmd("info status"), "VM status: running\n");
    let last = counts(&before).last().copied().expect("counted");
    out.wait_for(&format!("count {}\n", last + 3));
    assert_continuous(&before, &out.seen);
    let info = hmp.cmd("info cpr");
    assert!(info.contains("mode: reboot"), "{info}");
    quit(vmm, hmp);
}

#[test]
fn memcheck_finds_no_mismatch_after_reboot_mode() {
    let shm = ShmFile::new("memcheck");
    let obj = shm.object("64M");
    let file_ram: [&str; 4] = ["-object", &obj, "-machine", "memory-backend=ram0"];
    let anon: [&str; 2] = ["-m", "64M"];
    for (i, machine) in [&file_ram[..], &anon[..]].into_iter().enumerate() {
        let dir = Scratch::new(&format!("rb-memcheck-{i}"));
        let img = dir.str("vm.cpr");
        let (vmm, mut out, mut hmp) = start(&dir, "memcheck", machine, &[]);
        out.wait_for("memcheck ok pass 1\n");
        hmp.cmd(&format!("cpr-save {img} reboot"));
        quit(vmm, hmp);
        let (vmm, mut out, mut hmp) = start(&dir, "memcheck", machine, &["-S"]);
        hmp.cmd(&format!("cpr-load {img}"));
        let seen = out.wait_for("memcheck ok pass").to_string();
        assert!(!seen.contains("mismatch"), "{machine:?}: {seen}");
        assert!(!seen.contains("memcheck filled"), "guest restarted: {seen}");
        quit(vmm, hmp);
    }
}

#[test]
fn suspended_guest_stays_suspended_until_wakeup() {
    let dir = Scratch::new("rb-suspend");
    let img = dir.str("vm.cpr");
    let machine = ["-m", "32M"];
    let (vmm, mut out, mut hmp) = start(&dir, "suspend", &machine, &[]);
    out.wait_for("suspending\n");
    // The S3 request reaches the VMM right after the guest's line.
    let mut status = hmp.cmd("info status");
    for _ in 0..100 {
        if status == "VM status: paused (suspended)\n" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        status = hmp.cmd("info status");
    }
    assert_eq!(status, "VM status: paused (suspended)\n");
    hmp.cmd(&format!("cpr-save {img} reboot"));
    quit(vmm, hmp);
    let (vmm, mut out, mut hmp) = start(&dir, "suspend", &machine, &["-S"]);
    let reply = hmp.cmd(&format!("cpr-load {img}"));
    assert!(reply.contains("system_wakeup resumes it"), "{reply}");
    assert_eq!(hmp.cmd("info status"), "VM status: paused (suspended)\n");
    assert!(!out.seen.contains("resumed"), "{}", out.seen);
    assert_eq!(hmp.cmd("system_wakeup"), "");
    out.wait_for("resumed\n");
    let (status, _, _) = vmm.wait();
    // The guest powers off (S5) after "resumed".
    assert_eq!(status.code(), Some(0));
    drop(hmp);
}

/// In place, the RAM file must hold what the image recorded: a changed file is refused,
/// and the waiting vmm is left as it was.
#[test]
fn a_changed_ram_file_is_refused_at_load() {
    use std::os::unix::fs::FileExt;
    let shm = ShmFile::new("changed");
    let obj = shm.object("32M");
    let machine = ["-object", obj.as_str(), "-machine", "memory-backend=ram0"];
    let dir = Scratch::new("rb-changed");
    let img = dir.str("vm.cpr");
    let (vmm, mut out, mut hmp) = start(&dir, "counter", &machine, &[]);
    out.wait_for("count 1\n");
    let reply = hmp.cmd(&format!("cpr-save {img} reboot"));
    assert!(reply.contains("RAM in place"), "{reply}");
    quit(vmm, hmp);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&shm.0)
        .expect("open the RAM file");
    f.write_all_at(b"not the guest's", 5 << 20).expect("write");
    drop(f);
    let (vmm, _out, mut hmp) = start(&dir, "counter", &machine, &["-S"]);
    let reply = hmp.cmd(&format!("cpr-load {img}"));
    assert!(
        reply.starts_with(
            "Error: RAM block ram-below-4g does not hold the saved guest memory: CRC "
        ),
        "{reply}"
    );
    assert_eq!(hmp.cmd("info status"), "VM status: paused (prelaunch)\n");
    quit(vmm, hmp);
}

/// digest=off skips the pass over RAM while the guest is stopped; the guest still loads.
#[test]
fn in_place_without_digests() {
    let shm = ShmFile::new("no-digest");
    let obj = shm.object("32M");
    counter_roundtrip(
        "rb-no-digest",
        &["-object", &obj, "-machine", "memory-backend=ram0"],
        " digest=off",
        "RAM in place: 32 MiB kept in the RAM file, no digests",
    );
}

/// In place, a RAM file of another length, or none, is refused (the length is taken as the
/// new vmm found it, before it sized the file for the guest).
#[test]
fn a_resized_or_missing_ram_file_is_refused_at_load() {
    let shm = ShmFile::new("resized");
    let obj = shm.object("32M");
    let machine = ["-object", obj.as_str(), "-machine", "memory-backend=ram0"];
    let dir = Scratch::new("rb-resized");
    let img = dir.str("vm.cpr");
    let (vmm, mut out, mut hmp) = start(&dir, "counter", &machine, &[]);
    out.wait_for("count 1\n");
    hmp.cmd(&format!("cpr-save {img} reboot digest=off"));
    quit(vmm, hmp);

    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&shm.0)
        .expect("open the RAM file");
    f.set_len(16 << 20).expect("shrink the RAM file");
    drop(f);
    let (vmm, _out, mut hmp) = start(&dir, "counter", &machine, &["-S"]);
    assert_eq!(
        hmp.cmd(&format!("cpr-load {img}")),
        format!(
            "Error: the RAM file {} is 16777216 bytes long; the image recorded 33554432\n",
            shm.0
        )
    );
    quit(vmm, hmp);

    std::fs::remove_file(&shm.0).expect("remove the RAM file");
    let (vmm, _out, mut hmp) = start(&dir, "counter", &machine, &["-S"]);
    assert_eq!(
        hmp.cmd(&format!("cpr-load {img}")),
        format!(
            "Error: the RAM file {} did not exist when this vmm started: the guest's memory is \
             gone\n",
            shm.0
        )
    );
    assert_eq!(hmp.cmd("info status"), "VM status: paused (prelaunch)\n");
    quit(vmm, hmp);
}
