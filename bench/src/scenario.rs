//! Real live updates of real guests, driven over QMP, and the floor program beside them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::qmp::Qmp;

/// Pause phases of a restart-mode update, in the order they happen (vmm/src/cpr/timing.rs).
pub const RESTART_PHASES: &[&str] = &[
    "write-image",
    "until-exec",
    "exec",
    "machine",
    "until-load",
    "restore",
    "resume",
];

/// How guest RAM is backed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pages {
    /// memfd, 4 KiB pages.
    Small,
    /// memfd on hugetlbfs, 2 MiB pages.
    Hugetlb,
    /// memfd with shmem transparent huge pages (needs the vmm's MADV_HUGEPAGE).
    Thp,
}

impl Pages {
    pub fn name(self) -> &'static str {
        match self {
            Pages::Small => "4k",
            Pages::Hugetlb => "hugetlb",
            Pages::Thp => "shmem-thp",
        }
    }
}

/// Where the bench finds its programs and puts its scratch files.
pub struct Env {
    pub vmm: PathBuf,
    pub floor: PathBuf,
    pub guest: PathBuf,
    pub scratch: PathBuf,
}

/// Samples of one scenario: pause (ms) per run and each phase's duration (ms) per run.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    pub pause_ms: Vec<f64>,
    pub phases_ms: BTreeMap<String, Vec<f64>>,
    /// Reboot in-image: GB/s of writing RAM into the image, and of reading it back.
    pub save_gbps: Vec<f64>,
    pub load_gbps: Vec<f64>,
}

impl Samples {
    fn phase(&mut self, name: &str, ms: f64) {
        self.phases_ms.entry(name.to_string()).or_default().push(ms);
    }
}

/// A vmm under test; killed on drop if still running.
struct Vmm {
    child: Child,
    qmp: Qmp,
    stderr: PathBuf,
}

impl Vmm {
    fn spawn(env: &Env, args: &[String], tag: &str, vars: &[(&str, &str)]) -> Result<Vmm, String> {
        let sock = env.scratch.join("qmp.sock");
        let _ = std::fs::remove_file(&sock);
        let stderr = env.scratch.join(format!("{tag}.stderr"));
        let err_file =
            std::fs::File::create(&stderr).map_err(|e| format!("{}: {e}", stderr.display()))?;
        let mut child = Command::new(&env.vmm)
            .args(args)
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err_file)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", env.vmm.display()))?;
        match Qmp::connect(&sock, &mut child) {
            Ok(qmp) => Ok(Vmm { child, qmp, stderr }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("{e}; stderr: {}", read_tail(&stderr)))
            }
        }
    }

    fn cmd(&mut self, name: &str, args: Value) -> Result<Value, String> {
        self.qmp
            .cmd(name, args)
            .map_err(|e| format!("{e}; vmm stderr: {}", read_tail(&self.stderr)))
    }

    fn quit(mut self) -> Result<(), String> {
        let _ = self.qmp.cmd("quit", json!({}));
        let st = self
            .child
            .wait()
            .map_err(|e| format!("wait for vmm: {e}"))?;
        if !st.success() {
            return Err(format!(
                "vmm ended with {st}; stderr: {}",
                read_tail(&self.stderr)
            ));
        }
        Ok(())
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

fn read_tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let start = s.len().saturating_sub(600);
    s.get(start..).unwrap_or("").trim().to_string()
}

/// The vmm's command line for a counter guest with `ram` options and QMP on the scratch socket.
fn vmm_args(env: &Env, mib: u64, vcpus: u8, ram: &[String]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "-m".into(),
        format!("{mib}M"),
        "-smp".into(),
        vcpus.to_string(),
        "-kernel".into(),
        env.guest.display().to_string(),
        "-chardev".into(),
        format!(
            "file,id=ser,path={}",
            env.scratch.join("serial.log").display()
        ),
        "-serial".into(),
        "chardev:ser".into(),
        "-qmp".into(),
        format!(
            "unix:{},server=on,wait=off",
            env.scratch.join("qmp.sock").display()
        ),
    ];
    a.extend(ram.iter().cloned());
    a
}

fn memfd_opts(mib: u64, pages: Pages) -> Vec<String> {
    match pages {
        Pages::Small | Pages::Thp => vec!["-machine".into(), "memfd-alloc=on".into()],
        Pages::Hugetlb => vec![
            "-object".into(),
            format!("memory-backend-memfd,id=ram0,size={mib}M,share=on,hugetlb=on"),
            "-machine".into(),
            "memory-backend=ram0".into(),
        ],
    }
}

/// Reads every page of guest RAM through the vmm's own mapping (`query-ram-digest`), as a
/// guest that had touched all its memory would have populated it: exec must tear those
/// page tables down, and that cost belongs in the pause.
fn touch_ram(vmm: &mut Vmm) -> Result<(), String> {
    vmm.cmd("query-ram-digest", json!({})).map(|_| ())
}

fn ms(v: &Value) -> Option<f64> {
    v.as_f64().map(|us| us / 1000.0)
}

/// How a restart-mode update is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// `cpr-exec ... -incoming FILE`: save, exec and load in one command.
    OneCommand,
    /// cpr-save, cpr-exec (-S), cpr-load: two client round trips inside the pause.
    ThreeCommands,
}

/// Restart mode: `runs` successive updates of one guest lineage, asked for as `flow` says.
/// `teardown_in_exec` sets VMM_CPR_TEARDOWN_IN_EXEC: execve frees the old mm in the pause,
/// as before the deferred teardown (the A/B comparison).
pub fn restart(
    env: &Env,
    mib: u64,
    vcpus: u8,
    pages: Pages,
    runs: usize,
    teardown_in_exec: bool,
    flow: Flow,
) -> Result<Samples, String> {
    let vars: &[(&str, &str)] = if teardown_in_exec {
        &[("VMM_CPR_TEARDOWN_IN_EXEC", "1")]
    } else {
        &[]
    };
    let _ = std::fs::remove_file(env.scratch.join("serial.log"));
    let args = vmm_args(env, mib, vcpus, &memfd_opts(mib, pages));
    let mut vmm = Vmm::spawn(env, &args, "restart", vars)?;
    let img = env.scratch.join("restart.img").display().to_string();
    let mut exec_argv = vec![env.vmm.display().to_string()];
    exec_argv.extend(args.iter().cloned());
    match flow {
        Flow::OneCommand => exec_argv.extend(["-incoming".to_string(), img.clone()]),
        Flow::ThreeCommands => exec_argv.push("-S".into()),
    }
    let mut out = Samples::default();
    for _ in 0..runs {
        touch_ram(&mut vmm)?;
        // Let the guest run a little between updates (and print a count or two).
        std::thread::sleep(Duration::from_millis(30));
        if flow == Flow::ThreeCommands {
            vmm.cmd("cpr-save", json!({"filename": img, "mode": "restart"}))?;
        }
        vmm.cmd("cpr-exec", json!({ "argv": exec_argv }))?;
        if flow == Flow::ThreeCommands {
            vmm.cmd("cpr-load", json!({ "filename": img }))?;
        }
        let c = vmm.cmd("query-cpr", json!({}))?;
        let last = &c["last"];
        let pause = ms(&last["pause-us"]).ok_or_else(|| format!("query-cpr has no pause: {c}"))?;
        out.pause_ms.push(pause);
        if let Some(p) = last["phases-us"].as_object() {
            for (k, v) in p {
                if let Some(v) = ms(v) {
                    out.phase(k, v);
                }
            }
        }
    }
    vmm.quit()?;
    let _ = std::fs::remove_file(&img);
    check_counts(&env.scratch.join("serial.log"))?;
    Ok(out)
}

/// The guest's output must be one unbroken `count N` sequence across every update.
fn check_counts(log: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let counts: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("count "))
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    if counts.is_empty() {
        return Err(format!("the guest printed too little: {text:?}"));
    }
    for w in counts.windows(2) {
        if w[1] != w[0] + 1 {
            return Err(format!(
                "the guest's count broke ({} then {}): an update lost or repeated guest state",
                w[0], w[1]
            ));
        }
    }
    Ok(())
}

/// Reboot mode: cpr-save, quit, start a new vmm with -S, cpr-load. RAM is a file on
/// /dev/shm filled with a pattern first, so in-image saves real bytes rather than zero pages.
pub fn reboot(env: &Env, mib: u64, in_image: bool, runs: usize) -> Result<Samples, String> {
    let _ = std::fs::remove_file(env.scratch.join("serial.log"));
    let ram_file = PathBuf::from(format!("/dev/shm/vmm-bench-{}-ram", std::process::id()));
    fill_pattern(&ram_file, mib << 20)?;
    let ram = vec![
        "-object".into(),
        format!(
            "memory-backend-file,id=ram0,size={mib}M,mem-path={},share=on",
            ram_file.display()
        ),
        "-machine".into(),
        "memory-backend=ram0".into(),
    ];
    let args = vmm_args(env, mib, 1, &ram);
    let mut incoming = args.clone();
    incoming.push("-S".into());
    let img = env.scratch.join("reboot.img").display().to_string();
    let placement = if in_image { "in-image" } else { "in-place" };
    let result = (|| {
        let mut vmm = Vmm::spawn(env, &args, "reboot", &[])?;
        let mut out = Samples::default();
        for _ in 0..runs {
            touch_ram(&mut vmm)?;
            std::thread::sleep(Duration::from_millis(30));
            let t0 = Instant::now();
            vmm.cmd(
                "cpr-save",
                json!({"filename": img, "mode": "reboot", "ram": placement}),
            )?;
            let saved = vmm.qmp.wait_event("CPR_SAVE")?;
            vmm.quit()?;
            vmm = Vmm::spawn(env, &incoming, "reboot", &[])?;
            vmm.cmd("cpr-load", json!({ "filename": img }))?;
            let pause = t0.elapsed().as_secs_f64() * 1e3;
            let loaded = vmm.qmp.wait_event("CPR_LOAD")?;
            let save_ms = saved["stopped-ms"].as_f64().unwrap_or(0.0);
            let load_ms = loaded["load-ms"].as_f64().unwrap_or(0.0);
            out.pause_ms.push(pause);
            out.phase("save", save_ms);
            out.phase("new-process", pause - save_ms - load_ms);
            out.phase("load", load_ms);
            if in_image {
                let written = saved["ram"]["bytes-written"].as_f64().unwrap_or(0.0);
                let write_ns = saved["ram"]["write-ns"].as_f64().unwrap_or(0.0);
                let read = loaded["ram"]["bytes-read"].as_f64().unwrap_or(0.0);
                if write_ns > 0.0 {
                    out.save_gbps.push(written / write_ns);
                }
                if load_ms > 0.0 {
                    out.load_gbps.push(read / (load_ms * 1e6));
                }
            }
        }
        // No count check here: each new process opens the serial file afresh (the reboot
        // tests check continuity).
        vmm.quit()?;
        Ok(out)
    })();
    let _ = std::fs::remove_file(&ram_file);
    let _ = std::fs::remove_file(&img);
    result
}

/// Writes `size` bytes of a non-zero, non-repeating-per-page pattern.
fn fill_pattern(path: &Path, size: u64) -> Result<(), String> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut chunk = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < size {
        for (i, q) in chunk.chunks_exact_mut(8).enumerate() {
            q.copy_from_slice(&(off + (i as u64) * 8 + 1).to_le_bytes());
        }
        f.write_all(&chunk)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        off += chunk.len() as u64;
    }
    Ok(())
}

/// The floor program (cpr-floor) for the same RAM, vCPUs and page size; `deferred`: with
/// the old mm freed after the measured interval, as the vmm does.
pub fn floor(
    env: &Env,
    mib: u64,
    vcpus: u8,
    pages: Pages,
    runs: usize,
    deferred: bool,
) -> Result<Samples, String> {
    let mut cmd = Command::new(&env.floor);
    cmd.args([
        "--mem-mib",
        &mib.to_string(),
        "--vcpus",
        &vcpus.to_string(),
        "--runs",
        &runs.to_string(),
    ]);
    if deferred {
        cmd.arg("--defer-teardown");
    }
    match pages {
        Pages::Small => {}
        Pages::Hugetlb => {
            cmd.arg("--hugetlb");
        }
        Pages::Thp => {
            cmd.arg("--thp");
        }
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", env.floor.display()))?;
    if !out.status.success() {
        return Err(format!(
            "cpr-floor failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut s = Samples::default();
    for l in text.lines() {
        // "run N: floor X ms"
        if let Some(v) = l
            .split("floor ")
            .nth(1)
            .and_then(|r| r.trim_end_matches(" ms").trim().parse::<f64>().ok())
        {
            s.pause_ms.push(v);
        }
    }
    if s.pause_ms.len() != runs {
        return Err(format!(
            "cpr-floor printed {} of {runs} runs: {text}",
            s.pause_ms.len()
        ));
    }
    Ok(s)
}
