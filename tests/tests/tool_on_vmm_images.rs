//! `cpr-tool` on images the real vmm writes: verify accepts them (no errors, no warnings:
//! the naming conventions it checks are the vmm's, docs/FORMAT.md), inspect reads them,
//! and `json` → `encode` gives back the same bytes.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::Command;

use cpr_tests::{cpr_tool_bin, guest, Hmp, Scratch, Vmm};
use serde_json::Value;

/// A RAM file on /dev/shm for one test, removed on drop.
struct ShmFile(String);

impl Drop for ShmFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Starts the counter guest with `machine` options, an HMP monitor on a socket chardev and
/// `extra`; calls `connect` (clients it returns stay connected until the end), runs each
/// HMP command (each must answer `expect`'s prefix), then quits.
fn save_with_vmm(
    dir: &Scratch,
    machine: &[&str],
    extra: &[&str],
    connect: impl FnOnce(&mut Vmm) -> Vec<UnixStream>,
    cmds: &[(&str, &str)],
) {
    let sock = dir.path("mon.sock");
    let chardev = format!("socket,id=mon,path={},server=on,wait=off", sock.display());
    let kernel = guest("counter");
    let mut args = vec!["-kernel", kernel.as_str()];
    args.extend_from_slice(machine);
    args.extend_from_slice(&["-chardev", &chardev, "-monitor", "chardev:mon"]);
    args.extend_from_slice(extra);
    let mut vmm = Vmm::spawn(&args);
    let (mut hmp, _) = Hmp::greet(vmm.connect(&sock));
    let clients = connect(&mut vmm);
    for (cmd, expect) in cmds {
        let reply = hmp.cmd(cmd);
        assert!(reply.starts_with(expect), "{cmd}: {reply}");
    }
    hmp.0.write_all(b"quit\n").expect("send quit");
    drop(clients);
    let (status, _, stderr) = vmm.wait();
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
}

/// Runs cpr-tool in `dir`; returns (exit code, stdout, stderr).
fn tool(dir: &Scratch, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(cpr_tool_bin())
        .current_dir(&dir.0)
        .args(args)
        .output()
        .expect("run cpr-tool");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// verify passes with every check ok, inspect names `expect_in_inspect`, and the JSON
/// round trip rebuilds the image byte for byte.
fn assert_tool_accepts(dir: &Scratch, image: &str, expect_in_inspect: &[&str]) {
    let (code, out, err) = tool(dir, &["verify", image]);
    assert_eq!(code, 0, "verify {image}:\n{out}{err}");
    assert!(out.ends_with("Verdict: ok\n"), "{out}");
    let (code, out, err) = tool(dir, &["--json", "verify", image]);
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(&out).expect("verify --json output");
    let checks = report["checks"].as_array().expect("checks");
    let not_ok: Vec<&Value> = checks.iter().filter(|c| c["status"] != "ok").collect();
    assert!(not_ok.is_empty(), "checks not ok on {image}: {not_ok:?}");

    let (code, out, err) = tool(dir, &["inspect", image]);
    assert_eq!(code, 0, "inspect {image}: {err}");
    for want in expect_in_inspect {
        assert!(out.contains(want), "inspect {image} lacks {want}:\n{out}");
    }

    let (code, _, err) = tool(dir, &["json", image, "-o", "rt.json"]);
    assert_eq!(code, 0, "json {image}: {err}");
    let (code, _, err) = tool(dir, &["encode", "rt.json", "-o", "rt.cpr"]);
    assert_eq!(code, 0, "encode {image}: {err}");
    let original = std::fs::read(dir.path(image)).expect("read image");
    let rebuilt = std::fs::read(dir.path("rt.cpr")).expect("read rebuilt image");
    assert!(original == rebuilt, "json → encode changed {image}");
    let (code, out, err) = tool(dir, &["verify", "rt.cpr"]);
    assert_eq!(code, 0, "verify rebuilt {image}:\n{out}{err}");
}

#[test]
fn restart_image_with_socket_chardevs_verifies() {
    let dir = Scratch::new("tool-restart");
    let img = dir.str("r.cpr");
    let serial = format!("unix:{},server=on,wait=off", dir.str("ser.sock"));
    let qmp = format!("unix:{},server=on,wait=off", dir.str("qmp.sock"));
    let save = format!("cpr-save {img} restart");
    save_with_vmm(
        &dir,
        &["-m", "64", "-machine", "memfd-alloc=on"],
        &["-serial", &serial, "-qmp", &qmp],
        // A connected serial client: its fd joins the manifest as chardev.serial0.client.
        |vmm| vec![vmm.connect(&dir.path("ser.sock"))],
        &[("info status", "VM status: running"), (&save, "")],
    );
    assert_tool_accepts(
        &dir,
        "r.cpr",
        &[
            "chardev.mon.listener",
            "chardev.serial0.listener",
            "chardev.compat_monitor0.listener",
            "ram-below-4g",
        ],
    );
}

/// A RAM file's fd is in the manifest too, named after its block.
#[test]
fn restart_image_with_a_ram_file_verifies() {
    let dir = Scratch::new("tool-restart-file");
    let shm = ShmFile(format!(
        "/dev/shm/cpr-tests-{}-tool-restart",
        std::process::id()
    ));
    let obj = format!(
        "memory-backend-file,id=ram0,size=64M,mem-path={},share=on",
        shm.0
    );
    let save = format!("cpr-save {} restart", dir.str("f.cpr"));
    save_with_vmm(
        &dir,
        &[
            "-object",
            &obj,
            "-machine",
            "memory-backend=ram0",
            "-serial",
            "null",
        ],
        &[],
        |_| Vec::new(),
        &[(&save, "")],
    );
    assert_tool_accepts(&dir, "f.cpr", &["ram_file", shm.0.as_str()]);
}

#[test]
fn reboot_image_with_ram_in_image_verifies() {
    let dir = Scratch::new("tool-reboot-in-image");
    let save = format!("cpr-save {} reboot", dir.str("b.cpr"));
    save_with_vmm(
        &dir,
        // Two vCPUs: verify matches the `cpu` sections' instances to the count.
        &[
            "-m",
            "64",
            "-smp",
            "2",
            "-machine",
            "memfd-alloc=on",
            "-serial",
            "null",
        ],
        &[],
        |_| Vec::new(),
        &[("stop", ""), (&save, "RAM in image: ")],
    );
    assert_tool_accepts(&dir, "b.cpr", &["ram.ram-below-4g.0", "reboot.ram"]);
    let (_, out, _) = tool(&dir, &["verify", "b.cpr"]);
    assert!(out.contains("2 vCPUs"), "{out}");
}

#[test]
fn reboot_image_with_ram_in_place_verifies() {
    let dir = Scratch::new("tool-reboot-in-place");
    let shm = ShmFile(format!("/dev/shm/cpr-tests-{}-tool", std::process::id()));
    let obj = format!(
        "memory-backend-file,id=ram0,size=64M,mem-path={},share=on",
        shm.0
    );
    let save = format!("cpr-save {} reboot", dir.str("p.cpr"));
    save_with_vmm(
        &dir,
        &[
            "-object",
            &obj,
            "-machine",
            "memory-backend=ram0",
            "-serial",
            "null",
        ],
        &[],
        |_| Vec::new(),
        &[("stop", ""), (&save, "RAM in place: 64 MiB")],
    );
    assert_tool_accepts(&dir, "p.cpr", &[shm.0.as_str(), "reboot.ram"]);
}
