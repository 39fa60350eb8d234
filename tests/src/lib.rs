//! Helpers shared by the end-to-end tests: find (and build) the real `vmm` binary, start it,
//! and talk to its monitors over their sockets.
//!
//! How tests find the binary: `CARGO_BIN_EXE_*` exists only for a package's own binaries, so
//! [`vmm_bin`] derives the target directory from the test executable's own path
//! (`<target>/<profile>/deps/<test>-<hash>`) and runs `cargo build -p vmm --bin vmm` into that
//! same target directory and profile once per test process. The build is a no-op when the
//! binary is fresh, so a test never runs a stale `vmm`, and no environment variable is needed.
//! `VMM_BIN=/path/to/vmm` overrides this (e.g. to test an installed binary).

pub mod hmp_vm;
pub mod lab;
pub mod live;
pub mod release;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use hmp_vm::{hmp_socket_args, quit, start_with_hmp};

/// Upper bound on waiting for the VMM to do something; a failing test reports instead of hanging.
/// Not a speed assertion: the VMM usually answers in milliseconds.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Path of an up-to-date `vmm` binary (see the module docs).
pub fn vmm_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| built_bin("vmm", "VMM_BIN")).clone()
}

/// Path of an up-to-date `cpr-tool` binary, built the same way (`CPR_TOOL_BIN` overrides).
pub fn cpr_tool_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| built_bin("cpr-tool", "CPR_TOOL_BIN"))
        .clone()
}

/// `cargo build -p NAME --bin NAME` into the test's own target directory and profile.
fn built_bin(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in <target>/<profile>/deps");
    let target_dir = profile_dir.parent().expect("target dir");
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .args([
            "build",
            "--quiet",
            "-p",
            name,
            "--bin",
            name,
            "--target-dir",
        ])
        .arg(target_dir);
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("run cargo build -p {name}: {e}"));
    assert!(
        out.status.success(),
        "cargo build -p {name} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = profile_dir.join(name);
    assert!(bin.exists(), "{} missing after cargo build", bin.display());
    bin
}

/// A fresh scratch directory for one test (sockets, files), removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("cpr-tests-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    pub fn str(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `vmm` to completion with no input (bounded by [`PATIENCE`]); returns its output.
pub fn run_vmm(args: &[&str]) -> Output {
    let mut vmm = Vmm::spawn(args);
    let out = vmm.child.stdout.take().map(Watch::new);
    let err = vmm.child.stderr.take().map(Watch::new);
    let (status, _, _) = vmm.wait();
    let text = |w: Option<Watch>| {
        w.map(|mut w| w.rest().as_bytes().to_vec())
            .unwrap_or_default()
    };
    Output {
        status,
        stdout: text(out),
        stderr: text(err),
    }
}

/// A running `vmm`, killed on drop if the test did not wait for it.
pub struct Vmm {
    pub child: Child,
}

impl Vmm {
    /// Starts `vmm` with stdin closed and stdout/stderr piped.
    pub fn spawn(args: &[&str]) -> Vmm {
        Vmm::spawn_with(args, Stdio::null())
    }

    /// Starts `vmm` with the given stdin and stdout/stderr piped.
    pub fn spawn_with(args: &[&str], stdin: Stdio) -> Vmm {
        let child = Command::new(vmm_bin())
            .args(args)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vmm");
        Vmm { child }
    }

    /// Connects to a UNIX socket the VMM listens on, waiting for it to be bound.
    pub fn connect(&mut self, path: &Path) -> UnixStream {
        let start = Instant::now();
        loop {
            if let Ok(s) = UnixStream::connect(path) {
                s.set_read_timeout(Some(PATIENCE)).expect("set timeout");
                s.set_write_timeout(Some(PATIENCE)).expect("set timeout");
                return s;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let out = self.take_output();
                panic!(
                    "vmm exited with {status} before listening on {}:\n{out}",
                    path.display()
                );
            }
            assert!(
                start.elapsed() < PATIENCE,
                "vmm never listened on {}",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the process to exit (bounded by [`PATIENCE`]); returns status, stdout, stderr.
    pub fn wait(mut self) -> (ExitStatus, String, String) {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut out = String::new();
                let mut err = String::new();
                if let Some(mut o) = self.child.stdout.take() {
                    let _ = o.read_to_string(&mut out);
                }
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return (status, out, err);
            }
            assert!(start.elapsed() < PATIENCE, "vmm did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn take_output(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads from `s` until the text read ends with `suffix`; returns all of it.
pub fn read_until(s: &mut UnixStream, suffix: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).ends_with(suffix) {
        match s.read(&mut buf) {
            Ok(0) => panic!(
                "EOF waiting for {suffix:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // A read with SO_RCVTIMEO fails with EINTR after SIGSTOP/SIGCONT even without a
            // signal handler (signal(7)): the machine pausing the test is not an error.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!(
                "error waiting for {suffix:?} ({e}); got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// An HMP client over a socket chardev.
pub struct Hmp(pub UnixStream);

impl Hmp {
    /// Reads the banner and first prompt; returns the banner text.
    pub fn greet(stream: UnixStream) -> (Hmp, String) {
        let mut h = Hmp(stream);
        let banner = read_until(&mut h.0, "(vmm) ");
        (h, banner)
    }

    /// Sends one command line; returns its output without the trailing prompt (CRLF → LF).
    pub fn cmd(&mut self, line: &str) -> String {
        self.0
            .write_all(format!("{line}\n").as_bytes())
            .expect("write to HMP");
        let out = read_until(&mut self.0, "(vmm) ");
        out.trim_end_matches("(vmm) ").replace("\r\n", "\n")
    }
}

/// A raw QMP client: one JSON object per line, as the VMM writes them.
pub struct RawQmp {
    stream: UnixStream,
    pending: Vec<u8>,
}

impl RawQmp {
    pub fn new(stream: UnixStream) -> RawQmp {
        RawQmp {
            stream,
            pending: Vec::new(),
        }
    }

    /// Sends raw bytes (possibly not JSON at all).
    pub fn send(&mut self, raw: &str) {
        self.stream.write_all(raw.as_bytes()).expect("write to QMP");
    }

    /// Reads the next line (without CRLF).
    pub fn line(&mut self) -> String {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(i) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=i).collect();
                return String::from_utf8_lossy(&line).trim_end().to_string();
            }
            match self.stream.read(&mut buf) {
                Ok(0) => panic!(
                    "QMP EOF; pending {:?}",
                    String::from_utf8_lossy(&self.pending)
                ),
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("QMP read error: {e}"),
            }
        }
    }

    /// Sends a request and returns the reply line, skipping (and collecting) event lines.
    pub fn request(&mut self, raw: &str, events: &mut Vec<serde_json::Value>) -> String {
        self.send(raw);
        loop {
            let l = self.line();
            match serde_json::from_str::<serde_json::Value>(&l) {
                Ok(v) if v.get("event").is_some() => events.push(v),
                _ => return l,
            }
        }
    }
}

/// Path of a test guest built by fixtures/guests/Makefile; fails loudly if it is missing.
pub fn guest(name: &str) -> String {
    let p = workspace_root().join("fixtures/guests").join(name);
    assert!(
        p.is_file(),
        "test guest {} is missing (run make in fixtures/guests)",
        p.display()
    );
    p.to_string_lossy().into_owned()
}

/// Collects a child's output stream on a thread so a test can wait for a line to appear.
pub struct Watch {
    rx: std::sync::mpsc::Receiver<String>,
    pub seen: String,
}

impl Watch {
    pub fn new<R: Read + Send + 'static>(mut r: R) -> Watch {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let n = match r.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                if n == 0
                    || tx
                        .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                        .is_err()
                {
                    break;
                }
            }
        });
        Watch {
            rx,
            seen: String::new(),
        }
    }

    /// Waits until `needle` has appeared in the stream; returns everything seen so far.
    pub fn wait_for(&mut self, needle: &str) -> &str {
        let start = Instant::now();
        while !self.seen.contains(needle) {
            let left = PATIENCE.saturating_sub(start.elapsed());
            match self.rx.recv_timeout(left) {
                Ok(s) => self.seen.push_str(&s),
                Err(e) => panic!("waiting for {needle:?} ({e}); saw {:?}", self.seen),
            }
        }
        &self.seen
    }

    /// Reads until the stream ends (the process exited).
    pub fn rest(&mut self) -> &str {
        while let Ok(s) = self.rx.recv_timeout(PATIENCE) {
            self.seen.push_str(&s);
        }
        &self.seen
    }
}
