//! The most common test set-up: a vmm with its serial console on stdout and an HMP monitor on
//! a UNIX socket in the test's scratch directory.

use std::io::Write;

use crate::{Hmp, Scratch, Vmm, Watch};

/// `-chardev socket,... -monitor chardev:mon`: an HMP monitor on `dir/mon.sock`. A stale
/// socket from an earlier run of the same test is removed first.
pub fn hmp_socket_args(dir: &Scratch) -> Vec<String> {
    let sock = dir.path("mon.sock");
    let _ = std::fs::remove_file(&sock);
    vec![
        "-chardev".into(),
        format!("socket,id=mon,path={},server=on,wait=off", sock.display()),
        "-monitor".into(),
        "chardev:mon".into(),
    ]
}

/// Starts the vmm with `args` plus [`hmp_socket_args`]; returns it, a watch on its stdout
/// (the serial console unless `args` moves it) and the greeted monitor.
pub fn start_with_hmp(dir: &Scratch, args: &[&str]) -> (Vmm, Watch, Hmp) {
    let mon = hmp_socket_args(dir);
    let mut all: Vec<&str> = args.to_vec();
    all.extend(mon.iter().map(String::as_str));
    let mut vmm = Vmm::spawn(&all);
    let watch = Watch::new(vmm.child.stdout.take().expect("stdout piped"));
    let (hmp, _) = Hmp::greet(vmm.connect(&dir.path("mon.sock")));
    (vmm, watch, hmp)
}

/// Sends `quit` on the monitor and checks the vmm exits with status 0.
pub fn quit(vmm: Vmm, mut hmp: Hmp) {
    hmp.0.write_all(b"quit\n").expect("send quit");
    let (status, _, stderr) = vmm.wait();
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
}
