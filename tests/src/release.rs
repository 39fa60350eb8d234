//! Released versions and their fixtures (docs/RELEASING.md): `fixtures/releases.toml`
//! (version → commit), `fixtures/schemas/VERSION.json` (what that version reads and writes),
//! `fixtures/images/VERSION/fixtures.json` (the images that version wrote and how they were
//! made), and the binary of a past release, built from its commit and cached in
//! `target/releases/`.
//!
//! Everything here fails loudly: a release listed without its fixtures is a broken release,
//! not something to skip.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::workspace_root;

/// One released version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// `0.1.0`.
    pub version: String,
    /// The commit the release's binary is built from (full hash).
    pub commit: String,
    /// Release date, `YYYY-MM-DD` (informational).
    #[serde(default)]
    pub date: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleasesFile {
    #[serde(default)]
    release: Vec<Release>,
}

/// `fixtures/releases.toml`.
pub fn releases_file() -> PathBuf {
    workspace_root().join("fixtures/releases.toml")
}

/// Every release in `fixtures/releases.toml`, oldest first (the file's order, checked).
/// Panics if the file is missing or malformed: the tests that use it must not pass by
/// finding nothing.
pub fn releases() -> Vec<Release> {
    let path = releases_file();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let file: ReleasesFile =
        toml::from_str(&text).unwrap_or_else(|e| panic!("{} is malformed: {e}", path.display()));
    for w in file.release.windows(2) {
        assert!(
            version_key(&w[0].version) < version_key(&w[1].version),
            "{}: releases must be listed oldest first ({} before {})",
            path.display(),
            w[0].version,
            w[1].version
        );
    }
    for r in &file.release {
        assert!(
            r.commit.len() == 40 && r.commit.bytes().all(|b| b.is_ascii_hexdigit()),
            "{}: release {} has commit {:?}, not a full hash",
            path.display(),
            r.version,
            r.commit
        );
    }
    file.release
}

/// Dotted version as numbers, for ordering (`0.10.0` after `0.9.0`).
pub fn version_key(v: &str) -> Vec<u64> {
    v.split('.')
        .map(|p| {
            p.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .unwrap_or(0)
        })
        .collect()
}

/// How a fixture's guest was left at cpr-save.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestState {
    /// Running: cpr-load resumes it.
    Running,
    /// In S3: cpr-load leaves it suspended until system_wakeup.
    Suspended,
}

/// One fixture image and how it was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    /// `reboot-counter-1cpu`: the image is `NAME.cpr`, the guest's serial output up to
    /// cpr-save is `NAME.serial`.
    pub name: String,
    /// `restart` or `reboot`.
    pub mode: String,
    /// Test guest (fixtures/guests/NAME).
    pub guest: String,
    /// vCPUs.
    pub vcpus: u32,
    /// The machine options it ran with (no -kernel, monitors or serial): a vmm loading the
    /// image needs the same.
    pub machine: Vec<String>,
    /// The cpr-save command's mode argument (`restart`, `reboot ram=in-image`).
    pub save: String,
    pub state: GuestState,
    /// Whether a new vmm can load the image by itself (`vmm ... -S`, `cpr-load`): true for
    /// reboot mode with RAM in the image. A restart-mode image names RAM memfds that lived
    /// only in the writing process and its cpr-exec successor.
    pub self_contained: bool,
}

impl Fixture {
    pub fn image_file(&self) -> String {
        format!("{}.cpr", self.name)
    }
    pub fn serial_file(&self) -> String {
        format!("{}.serial", self.name)
    }
}

/// `fixtures/images/VERSION/fixtures.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureSet {
    /// The vmm version that wrote them (its `-version`).
    pub version: String,
    pub fixtures: Vec<Fixture>,
}

/// `fixtures/images/VERSION/`.
pub fn images_dir(version: &str) -> PathBuf {
    workspace_root().join("fixtures/images").join(version)
}

/// `fixtures/schemas/VERSION.json`.
pub fn schema_file(version: &str) -> PathBuf {
    workspace_root()
        .join("fixtures/schemas")
        .join(format!("{version}.json"))
}

/// The fixture manifest of a release; panics if it, or any file it lists, is missing.
pub fn fixture_set(version: &str) -> FixtureSet {
    let dir = images_dir(version);
    let path = dir.join("fixtures.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "release {version} is in fixtures/releases.toml but {} is unreadable: {e}",
            path.display()
        )
    });
    let set: FixtureSet = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is malformed: {e}", path.display()));
    assert_eq!(set.version, version, "{}", path.display());
    assert!(
        !set.fixtures.is_empty(),
        "{} lists no fixture",
        path.display()
    );
    for f in &set.fixtures {
        for file in [f.image_file(), f.serial_file()] {
            assert!(
                dir.join(&file).is_file(),
                "release {version}: fixture {} lacks {}",
                f.name,
                dir.join(&file).display()
            );
        }
    }
    set
}

/// The stored schema of a release, as cpr-format would read it; panics if missing.
pub fn stored_schema_json(version: &str) -> String {
    let p = schema_file(version);
    std::fs::read_to_string(&p).unwrap_or_else(|e| {
        panic!(
            "release {version} is in fixtures/releases.toml but {} is unreadable: {e}",
            p.display()
        )
    })
}

/// The target directory the running test executable was built into
/// (`<target>/<profile>/deps/<test>`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .expect("test executable lives in <target>/<profile>/deps")
}

/// The `vmm` binary of a past release, built from its recorded commit into
/// `target/releases/VERSION/` (sources from `git archive`, their own target directory) and
/// reused while the commit stamp matches. The first call costs a full debug build.
pub fn release_vmm(r: &Release) -> PathBuf {
    let base = target_dir().join("releases").join(&r.version);
    let src = base.join("src");
    let tgt = base.join("target");
    let bin = tgt.join("debug/vmm");
    let stamp = base.join("commit");
    let fresh = std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == r.commit);
    if fresh && bin.is_file() {
        return bin;
    }
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src).expect("create release source dir");
    // git archive, not a worktree: nothing to register in .git, nothing to prune when
    // target/ is cleaned.
    let archive = Command::new("git")
        .current_dir(workspace_root())
        .args(["archive", "--format=tar", &r.commit])
        .output()
        .expect("run git archive");
    assert!(
        archive.status.success(),
        "git archive {} (release {}) failed: {}\n(a shallow clone lacks old commits: fetch the tag v{})",
        r.commit,
        r.version,
        String::from_utf8_lossy(&archive.stderr),
        r.version
    );
    let mut tar = Command::new("tar")
        .current_dir(&src)
        .args(["-x", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("run tar");
    {
        use std::io::Write;
        let mut stdin = tar.stdin.take().expect("tar stdin");
        stdin.write_all(&archive.stdout).expect("feed tar");
    }
    assert!(tar.wait().expect("wait for tar").success(), "tar -x failed");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(&src)
        .args(["build", "--quiet", "--locked", "-p", "vmm", "--bin", "vmm"])
        .arg("--target-dir")
        .arg(&tgt)
        .output()
        .expect("run cargo build for the release");
    assert!(
        out.status.success(),
        "building vmm {} from {} failed:\n{}",
        r.version,
        r.commit,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(bin.is_file(), "{} missing after the build", bin.display());
    std::fs::write(&stamp, &r.commit).expect("write the commit stamp");
    bin
}

/// Runs `bin --dump-schema` and returns its JSON.
pub fn dump_schema(bin: &Path) -> String {
    let out = Command::new(bin)
        .arg("--dump-schema")
        .output()
        .expect("run vmm --dump-schema");
    assert!(
        out.status.success(),
        "{} --dump-schema failed: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("schema is UTF-8")
}

/// Path of an up-to-date `cpr-tool` binary, built like [`crate::vmm_bin`]'s `vmm`.
pub fn tool_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test executable lives in <target>/<profile>/deps");
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root())
            .args(["build", "--quiet", "-p", "cpr-tool", "--bin", "cpr-tool"])
            .arg("--target-dir")
            .arg(target_dir());
        match profile {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        let out = cmd.output().expect("run cargo build -p cpr-tool");
        assert!(
            out.status.success(),
            "cargo build -p cpr-tool failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = profile_dir.join("cpr-tool");
        assert!(bin.is_file(), "{} missing after cargo build", bin.display());
        bin
    })
    .clone()
}

/// A guest run by a given `vmm` binary: serial on the process's stdio (stdin piped for the
/// echo guest), HMP on `mon.sock` in `dir`.
pub struct GuestRun {
    pub vmm: crate::Vmm,
    pub out: crate::Watch,
    pub hmp: crate::Hmp,
    pub stdin: std::process::ChildStdin,
    /// The arguments after argv[0] (without -S), for a cpr-exec to reuse.
    pub args: Vec<String>,
}

/// The command line of `guest` with `machine` options and HMP on `dir/mon.sock`.
pub fn guest_args(dir: &crate::Scratch, guest: &str, machine: &[String]) -> Vec<String> {
    let mut args = vec!["-kernel".to_string(), crate::guest(guest)];
    args.extend(machine.iter().cloned());
    args.push("-chardev".into());
    args.push(format!(
        "socket,id=mon,path={},server=on,wait=off",
        dir.str("mon.sock")
    ));
    args.push("-monitor".into());
    args.push("chardev:mon".into());
    args
}

impl GuestRun {
    /// Starts `bin` with `args` (plus `-S` if `paused`) and connects to its HMP.
    pub fn start(bin: &Path, dir: &crate::Scratch, args: Vec<String>, paused: bool) -> GuestRun {
        let sock = dir.path("mon.sock");
        let _ = std::fs::remove_file(&sock);
        let mut cmd = Command::new(bin);
        cmd.args(&args);
        if paused {
            cmd.arg("-S");
        }
        let child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let mut vmm = crate::Vmm { child };
        let out = crate::Watch::new(vmm.child.stdout.take().expect("stdout piped"));
        let stdin = vmm.child.stdin.take().expect("stdin piped");
        let (hmp, _) = crate::Hmp::greet(vmm.connect(&sock));
        GuestRun {
            vmm,
            out,
            hmp,
            stdin,
            args,
        }
    }

    /// Polls `info status` until it reads `want` (the guest's own timing decides when).
    pub fn wait_status(&mut self, want: &str) {
        let start = std::time::Instant::now();
        loop {
            let s = self.hmp.cmd("info status");
            if s == want {
                return;
            }
            assert!(
                start.elapsed() < crate::PATIENCE,
                "status stayed {s:?}, wanted {want:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// `quit`, then the exit status and everything the guest wrote.
    pub fn quit(mut self) -> String {
        use std::io::Write;
        self.hmp.0.write_all(b"quit\n").expect("send quit");
        let mut out = self.out;
        let (status, _, stderr) = self.vmm.wait();
        assert_eq!(status.code(), Some(0), "vmm quit: stderr {stderr}");
        out.rest().to_string()
    }
}

/// The line a guest prints once it is well under way (a fixture is saved after it).
pub fn ready_marker(guest: &str) -> &'static str {
    match guest {
        "counter" => "count 3\n",
        "ticker" => "tick 5\n",
        "memcheck" => "memcheck ok pass 1\n",
        "echo" => "echo: before save",
        "suspend" => "suspending\n",
        other => panic!("no fixture recipe for guest {other}"),
    }
}

/// Numbers N of every complete `PREFIX N` line, in order.
pub fn numbered(text: &str, prefix: &str) -> Vec<u64> {
    text.split('\n')
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// Checks that the guest, loaded from an image saved after `before` was printed, carries on
/// where it stopped: it does not restart, and counters continue by one.
/// Drives it as needed (echo input, system_wakeup for a suspended guest).
pub fn assert_resumes(g: &mut GuestRun, guest: &str, state: GuestState, before: &str) {
    use std::io::Write;
    if state == GuestState::Suspended {
        g.wait_status("VM status: paused (suspended)\n");
        assert!(!g.out.seen.contains("resumed"), "{}", g.out.seen);
        assert_eq!(g.hmp.cmd("system_wakeup"), "");
    }
    match guest {
        "counter" | "ticker" => {
            let prefix = if guest == "counter" {
                "count "
            } else {
                "tick "
            };
            let last = *numbered(before, prefix)
                .last()
                .unwrap_or_else(|| panic!("no {prefix:?} line before the save: {before:?}"));
            g.out.wait_for(&format!("{prefix}{}\n", last + 3));
            let joined = format!("{before}{}", g.out.seen);
            let all = numbered(&joined, prefix);
            for w in all.windows(2) {
                assert_eq!(w[1], w[0] + 1, "{guest} restarted or skipped: {joined:?}");
            }
        }
        "memcheck" => {
            let seen = g.out.wait_for("memcheck ok pass").to_string();
            assert!(!seen.contains("mismatch"), "{seen}");
            assert!(!seen.contains("memcheck filled"), "guest restarted: {seen}");
        }
        "echo" => {
            g.stdin
                .write_all(b"after load\r")
                .expect("type into the console");
            let seen = g.out.wait_for("echo: after load").to_string();
            assert!(!seen.contains("echo ready"), "guest restarted: {seen}");
        }
        "suspend" => {
            let seen = g.out.wait_for("resumed\n").to_string();
            assert!(!seen.contains("suspending"), "guest restarted: {seen}");
        }
        other => panic!("no resume check for guest {other}"),
    }
}

/// RAM of every fixture guest: small, so reboot-mode images (RAM inside) stay small.
const MEM: &str = "32M";

/// (guest, vCPUs) of every fixture, in both modes. The `exit` guest is left out: it ends the
/// VMM within a few instructions, so there is no running guest to save.
const GUESTS: &[(&str, u32)] = &[
    ("counter", 1),
    ("counter", 4),
    ("ticker", 1),
    ("memcheck", 1),
    ("echo", 1),
    ("suspend", 1),
];

fn spec(mode: &str, guest: &str, vcpus: u32) -> Fixture {
    let mut machine: Vec<String> = vec!["-m".into(), MEM.into(), "-smp".into(), vcpus.to_string()];
    let save = match mode {
        // Restart mode needs RAM in a memfd (it is handed to the new process, not saved).
        "restart" => {
            machine.extend(["-machine".into(), "memfd-alloc=on".into()]);
            "restart".to_string()
        }
        // Anonymous RAM goes into the image: the fixture is self-contained.
        _ => "reboot ram=in-image".to_string(),
    };
    Fixture {
        name: format!("{mode}-{guest}-{vcpus}cpu"),
        mode: mode.into(),
        guest: guest.into(),
        vcpus,
        machine,
        save,
        state: if guest == "suspend" {
            GuestState::Suspended
        } else {
            GuestState::Running
        },
        self_contained: mode == "reboot",
    }
}

/// Runs `f`'s guest under `vmm`, saves it as `f` says, and writes `f`'s image and serial
/// output into `out`.
pub fn make_fixture(vmm: &Path, out: &Path, f: &Fixture) -> Result<(), String> {
    let dir = crate::Scratch::new(&format!("fixture-{}", f.name));
    let img = dir.path("vm.cpr");
    let mut g = GuestRun::start(vmm, &dir, guest_args(&dir, &f.guest, &f.machine), false);
    if f.guest == "echo" {
        g.out.wait_for("echo ready\n");
        g.stdin
            .write_all(b"before save\r")
            .map_err(|e| format!("type into the echo guest: {e}"))?;
    }
    g.out.wait_for(ready_marker(&f.guest));
    if f.state == GuestState::Suspended {
        g.wait_status("VM status: paused (suspended)\n");
    }
    let reply = g.hmp.cmd(&format!("cpr-save {} {}", img.display(), f.save));
    let ok = match f.mode.as_str() {
        "restart" => reply.is_empty(),
        _ => reply.contains("RAM in image"),
    };
    if !ok {
        return Err(format!("{}: cpr-save answered {reply:?}", f.name));
    }
    let serial = g.quit();
    std::fs::copy(&img, out.join(f.image_file()))
        .map_err(|e| format!("copy {}: {e}", img.display()))?;
    std::fs::write(out.join(f.serial_file()), serial)
        .map_err(|e| format!("write {}: {e}", f.serial_file()))?;
    Ok(())
}

/// Every fixture a release keeps: each guest of [`GUESTS`] in restart and in reboot mode.
pub fn all_fixture_specs() -> Vec<Fixture> {
    ["restart", "reboot"]
        .into_iter()
        .flat_map(|mode| GUESTS.iter().map(move |(g, n)| spec(mode, g, *n)))
        .collect()
}
