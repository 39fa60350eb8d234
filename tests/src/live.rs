//! Helpers for live-update tests: a guest with an HMP monitor and a serial socket client,
//! driven through cpr-save / cpr-exec / cpr-load.

use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use crate::{guest, vmm_bin, Hmp, Scratch, Vmm, Watch};

/// A running guest: the vmm, its HMP client, a client of its serial socket, and the
/// command line it was started with (a live update reuses it, plus -S).
pub struct LiveVm {
    pub dir: Scratch,
    pub vmm: Vmm,
    pub hmp: Hmp,
    /// What the guest wrote to the serial socket.
    pub serial: Watch,
    /// The serial socket itself, for input to the guest.
    pub serial_in: UnixStream,
    pub args: Vec<String>,
}

/// The command line of a guest with memfd RAM, HMP on `mon.sock`, serial on `ser.sock`.
pub fn guest_args(dir: &Scratch, guest_name: &str, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "-m".into(),
        "64".into(),
        "-kernel".into(),
        guest(guest_name),
        "-chardev".into(),
        format!(
            "socket,id=mon,path={},server=on,wait=off",
            dir.str("mon.sock")
        ),
        "-monitor".into(),
        "chardev:mon".into(),
        "-chardev".into(),
        format!(
            "socket,id=ser,path={},server=on,wait=off",
            dir.str("ser.sock")
        ),
        "-serial".into(),
        "chardev:ser".into(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

impl LiveVm {
    /// Starts `guest_name` with memfd RAM (`-machine memfd-alloc=on`) unless `extra` says
    /// otherwise.
    pub fn start(test: &str, guest_name: &str, extra: &[&str]) -> LiveVm {
        let dir = Scratch::new(test);
        let args = guest_args(&dir, guest_name, extra);
        // Start paused and `cont` once the serial client is connected: serial output with no
        // client is dropped, and a guest that prints once (echo's "echo ready") would race.
        let argv: Vec<&str> = std::iter::once("-S")
            .chain(args.iter().map(String::as_str))
            .collect();
        let mut vmm = Vmm::spawn(&argv);
        let serial_in = vmm.connect(dir.path("ser.sock").as_path());
        let serial = Watch::new(serial_in.try_clone().expect("clone serial socket"));
        let (mut hmp, _) = Hmp::greet(vmm.connect(dir.path("mon.sock").as_path()));
        assert_eq!(
            hmp.cmd("cont"),
            "",
            "cont after connecting the serial client"
        );
        LiveVm {
            dir,
            vmm,
            hmp,
            serial,
            serial_in,
            args,
        }
    }

    /// Where images go.
    pub fn image(&self) -> String {
        self.dir.str("vm.cpr")
    }

    /// The cpr-exec command line: `bin -S` and the original arguments, changed by `edit`.
    pub fn exec_line(&self, bin: &str) -> String {
        format!("cpr-exec {bin} -S {}", self.args.join(" "))
    }

    /// cpr-save, cpr-exec (same binary, same arguments), cpr-load; asserts each succeeds.
    pub fn update(&mut self) {
        let img = self.image();
        assert_eq!(self.hmp.cmd(&format!("cpr-save {img} restart")), "");
        let line = self.exec_line(&vmm_bin().to_string_lossy());
        assert_eq!(self.hmp.cmd(&line), "");
        assert_eq!(self.hmp.cmd(&format!("cpr-load {img}")), "");
    }

    /// The guest's RAM digest (`info ram-digest`'s last line).
    pub fn digest(&mut self) -> String {
        let out = self.hmp.cmd("info ram-digest");
        out.lines()
            .find_map(|l| l.strip_prefix("digest: "))
            .unwrap_or_else(|| panic!("no digest in {out:?}"))
            .to_string()
    }

    pub fn status(&mut self) -> String {
        self.hmp.cmd("info status")
    }

    pub fn pid(&self) -> u32 {
        self.vmm.child.id()
    }
}

/// Asserts `v` counts up by one from its first value, with at least `min` values.
pub fn assert_consecutive(v: &[u64], min: usize, what: &str) {
    assert!(v.len() >= min, "{what}: only {} values: {v:?}", v.len());
    for w in v.windows(2) {
        assert_eq!(w[1], w[0] + 1, "{what}: {} followed by {}", w[0], w[1]);
    }
}

/// Waits until the guest printed a `prefix N` line with N > `after`.
pub fn wait_past(vm: &mut LiveVm, prefix: &str, after: u64) {
    let want = after + 3;
    loop {
        let last = numbers(&vm.serial.seen, prefix)
            .last()
            .copied()
            .unwrap_or(0);
        if last >= want {
            return;
        }
        vm.serial.wait_for(&format!("{prefix}{}\n", last + 1));
    }
}

pub fn last_number(vm: &LiveVm, prefix: &str) -> u64 {
    numbers(&vm.serial.seen, prefix)
        .last()
        .copied()
        .unwrap_or(0)
}

/// Numbers N of complete `PREFIX N` lines in `text`, in order.
pub fn numbers(text: &str, prefix: &str) -> Vec<u64> {
    let complete = match text.rfind('\n') {
        Some(i) => &text[..i],
        None => "",
    };
    complete
        .lines()
        .filter_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
        .collect()
}

/// The open descriptors of a process: number → what it refers to.
pub fn fd_table(pid: u32) -> BTreeMap<u32, PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .filter_map(|e| {
            let e = e.ok()?;
            let n: u32 = e.file_name().to_str()?.parse().ok()?;
            Some((n, std::fs::read_link(e.path()).ok()?))
        })
        .collect()
}
