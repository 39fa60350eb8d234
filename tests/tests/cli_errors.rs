//! Bad command lines: one-line QEMU-style errors and exit status 1.

use cpr_tests::run_vmm;

fn assert_error(args: &[&str], want: &str) {
    let out = run_vmm(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "args {args:?}; stderr {stderr}");
    assert_eq!(stderr, format!("vmm: {want}\n"), "args {args:?}");
}

fn kernel() -> String {
    // A readable file: option errors are found before the kernel is loaded.
    cpr_tests::workspace_root()
        .join("Cargo.toml")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn unknown_option() {
    assert_error(
        &["-kernel", &kernel(), "-frobnicate"],
        "-frobnicate: invalid option",
    );
}

#[test]
fn option_without_its_argument() {
    assert_error(&["-kernel", &kernel(), "-m"], "-m: requires an argument");
}

#[test]
fn malformed_memory_size() {
    assert_error(
        &["-kernel", &kernel(), "-m", "12Q"],
        "-m 12Q: Parameter 'size' expects a non-negative number below 2^64",
    );
}

#[test]
fn missing_kernel_file() {
    assert_error(
        &["-kernel", "/nonexistent/guest.elf"],
        "could not load kernel '/nonexistent/guest.elf': No such file or directory",
    );
}

#[test]
fn bad_chardev_backend() {
    assert_error(
        &["-kernel", &kernel(), "-chardev", "telepathy,id=c0"],
        "-chardev telepathy,id=c0: 'telepathy' is not a valid char driver name",
    );
    assert_error(
        &["-kernel", &kernel(), "-chardev", "socket,id=c0"],
        "-chardev socket,id=c0: chardev: socket: no host given",
    );
}

#[test]
fn unknown_monitor_chardev() {
    assert_error(
        &["-kernel", &kernel(), "-monitor", "chardev:nope"],
        "chardev 'nope' not found",
    );
}

#[test]
fn unusable_socket_path_fails_at_start_up() {
    assert_error(
        &["-kernel", &kernel(), "-qmp", "unix:/nonexistent/dir/q.sock,server=on,wait=off"],
        "chardev 'compat_monitor0': failed to bind socket to unix:/nonexistent/dir/q.sock: No such file or directory (os error 2)",
    );
}

#[test]
fn version_and_help_exit_zero() {
    let out = run_vmm(&["-version"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("vmm version "));
    let out = run_vmm(&["-h"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("-chardev"));
}

/// Runs vmm with stdout on a pipe whose reader is already closed (what `| head -1` leaves
/// once head has its line): the output ends quietly, exit status 0, no panic.
fn assert_quiet_on_closed_pipe(args: &[&str]) {
    let (reader, writer) = std::io::pipe().expect("creating a pipe");
    drop(reader);
    let out = std::process::Command::new(cpr_tests::vmm_bin())
        .args(args)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("running vmm");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "args {args:?}; stderr {stderr}"
    );
    assert_eq!(stderr, "", "args {args:?}");
    assert_eq!(out.status.code(), Some(0), "args {args:?}");
}

#[test]
fn version_help_and_schema_into_a_closed_pipe_end_quietly() {
    assert_quiet_on_closed_pipe(&["-version"]);
    assert_quiet_on_closed_pipe(&["-h"]);
    assert_quiet_on_closed_pipe(&["--dump-schema"]);
}
