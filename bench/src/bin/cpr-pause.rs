//! The guest's pause in a restart-mode live update of the real `vmm`, next to the floor.
//!
//! Starts `vmm` with the counter guest and memfd RAM, does N live updates over QMP
//! (cpr-save to /dev/shm, cpr-exec of the same binary, cpr-load) and reads each update's
//! timing from the CPR_LOAD event: the pause (last vCPU stopped .. first vCPU running) and
//! its phases. Then runs `cpr-floor` with the same RAM size (execve + KVM VM + memslots +
//! vCPUs + first run, from a minimal program) and prints both.
//!
//! Usage: cpr-pause [--mem-mib N] [--smp N] [--updates N] [--vmm PATH] [--no-touch] [--hugetlb]
//!        [--no-floor] [--samples] [--one-command]
//! `--one-command` does each update as one `cpr-exec ... -incoming FILE` (save, exec and
//! load in one command, no client round trip inside the pause) instead of three commands.
//! `--samples` prints one `sample` line per update (pause and phases, ms) and `--no-floor`
//! skips cpr-floor: together they let a script interleave two vmm builds (A/B/A/B) and pool
//! the samples, which on a shared host is the only fair comparison.
//! By default all of guest RAM is faulted into the vmm before each update (a guest that
//! used its RAM), as cpr-floor pre-touches its memfd: the exec then pays the same
//! page-table teardown in both.
//! Build first: `cargo build --release -p vmm -p vmm-bench`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const USAGE: &str = "usage: cpr-pause [--mem-mib N] [--smp N] [--updates N] [--vmm PATH] \
                     [--no-touch] [--hugetlb] [--no-floor] [--samples] [--one-command]";

struct Args {
    mem_mib: u64,
    /// vCPUs of the guest (`-smp`): the pause grows with them.
    smp: u8,
    updates: usize,
    vmm: Option<PathBuf>,
    /// Fault all of guest RAM into the vmm's address space before each update (as a guest
    /// that uses its RAM does), like cpr-floor's pre-touched memfd.
    touch: bool,
    /// Guest RAM in a hugetlb memfd (reserve pages first: /proc/sys/vm/nr_hugepages).
    hugetlb: bool,
    /// Skip the cpr-floor run (A/B runs of two vmm builds interleaved need only the vmm).
    no_floor: bool,
    /// Print every update's pause and phases, one line each (`sample` lines), for A/B
    /// scripts that pool samples over interleaved runs.
    samples: bool,
    /// One `cpr-exec ... -incoming FILE` per update instead of cpr-save, cpr-exec, cpr-load.
    one_command: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        mem_mib: 256,
        smp: 1,
        updates: 20,
        vmm: None,
        touch: true,
        hugetlb: false,
        no_floor: false,
        samples: false,
        one_command: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(x) = it.next() {
        let mut value = |n: &str| it.next().cloned().ok_or(format!("{n} needs a value"));
        match x.as_str() {
            "--mem-mib" => {
                a.mem_mib = value("--mem-mib")?
                    .parse()
                    .map_err(|e| format!("--mem-mib: {e}"))?
            }
            "--smp" => a.smp = value("--smp")?.parse().map_err(|e| format!("--smp: {e}"))?,
            "--updates" => {
                a.updates = value("--updates")?
                    .parse()
                    .map_err(|e| format!("--updates: {e}"))?
            }
            "--vmm" => a.vmm = Some(PathBuf::from(value("--vmm")?)),
            "--no-touch" => a.touch = false,
            "--hugetlb" => a.hugetlb = true,
            "--no-floor" => a.no_floor = true,
            "--samples" => a.samples = true,
            "--one-command" => a.one_command = true,
            _ => return Err(USAGE.into()),
        }
    }
    if a.updates == 0 || a.mem_mib == 0 || a.smp == 0 {
        return Err("--updates, --mem-mib and --smp must be positive".into());
    }
    Ok(a)
}

/// A QMP connection reading one JSON object per line.
struct Qmp {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Qmp {
    fn connect(path: &Path, child: &mut Child) -> Result<Qmp, String> {
        let start = Instant::now();
        let s = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) => {
                    if let Ok(Some(st)) = child.try_wait() {
                        return Err(format!("vmm exited with {st}"));
                    }
                    if start.elapsed() > Duration::from_secs(30) {
                        return Err(format!("connect {}: {e}", path.display()));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        let r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
        let mut q = Qmp { w: s, r };
        q.line()?; // greeting
        q.execute("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    fn line(&mut self) -> Result<Value, String> {
        let mut l = String::new();
        if self.r.read_line(&mut l).map_err(|e| e.to_string())? == 0 {
            return Err("QMP connection closed".into());
        }
        serde_json::from_str(&l).map_err(|e| format!("bad QMP line {l:?}: {e}"))
    }

    /// Sends a command and returns its reply, skipping events.
    fn execute(&mut self, cmd: &str, args: Value) -> Result<Value, String> {
        let msg = json!({"execute": cmd, "arguments": args});
        self.w
            .write_all(format!("{msg}\n").as_bytes())
            .map_err(|e| e.to_string())?;
        loop {
            let v = self.line()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(format!("{cmd}: {e}"));
            }
        }
    }

    fn event(&mut self, name: &str) -> Result<Value, String> {
        loop {
            let v = self.line()?;
            if v.get("event").and_then(Value::as_str) == Some(name) {
                return Ok(v);
            }
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn summary(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (
        percentile(v, 0.5),
        percentile(v, 0.9),
        v.last().copied().unwrap_or(f64::NAN),
    )
}

const PHASES: &[&str] = &[
    "stop-vcpus",
    "write-image",
    "until-exec",
    "exec",
    "machine",
    "until-load",
    "restore",
    "resume",
];

fn run(a: &Args) -> Result<(), String> {
    let here = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin_dir = here.parent().ok_or("no exe dir")?.to_path_buf();
    let vmm = a.vmm.clone().unwrap_or_else(|| bin_dir.join("vmm"));
    if !vmm.is_file() {
        return Err(format!(
            "{} not found: cargo build --release -p vmm first",
            vmm.display()
        ));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace")?;
    let kernel = root.join("fixtures/guests/counter");
    let dir = PathBuf::from(format!("/dev/shm/cpr-pause-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let sock = dir.join("qmp.sock");
    let img = dir.join("vm.cpr");
    let ram: Vec<String> = if a.hugetlb {
        vec![
            "-object".into(),
            format!(
                "memory-backend-memfd,id=ram,size={}M,share=on,hugetlb=on",
                a.mem_mib
            ),
            "-machine".into(),
            "memory-backend=ram".into(),
        ]
    } else {
        vec!["-machine".into(), "memfd-alloc=on".into()]
    };
    let mut args: Vec<String> = vec![
        "-m".into(),
        format!("{}M", a.mem_mib),
        "-smp".into(),
        a.smp.to_string(),
    ];
    args.extend(ram);
    args.extend::<Vec<String>>(vec![
        "-kernel".into(),
        kernel.display().to_string(),
        "-serial".into(),
        "null".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", sock.display()),
    ]);
    let mut child = Command::new(&vmm)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", vmm.display()))?;
    let result = (|| {
        let mut q = Qmp::connect(&sock, &mut child)?;
        let mut argv = vec![json!(vmm.display().to_string())];
        argv.extend(args.iter().map(|s| json!(s)));
        if a.one_command {
            argv.extend([json!("-incoming"), json!(img.display().to_string())]);
        } else {
            argv.push(json!("-S"));
        }
        let mut pauses = Vec::new();
        let mut phases: Vec<Vec<f64>> = vec![Vec::new(); PHASES.len()];
        // Let the guest run a little between updates, as a real one would.
        std::thread::sleep(Duration::from_millis(200));
        for _ in 0..a.updates {
            if a.touch {
                // Reads every page of guest RAM through the vmm's mapping.
                q.execute("query-ram-digest", json!({}))?;
            }
            if a.one_command {
                q.execute("cpr-exec", json!({"argv": argv}))?;
            } else {
                q.execute(
                    "cpr-save",
                    json!({"filename": img.display().to_string(), "mode": "restart"}),
                )?;
                q.execute("cpr-exec", json!({"argv": argv}))?;
                q.execute("cpr-load", json!({"filename": img.display().to_string()}))?;
            }
            let ev = q.event("CPR_LOAD")?;
            let t = &ev["data"]["timing"];
            let pause = t["pause-us"].as_f64().ok_or("no pause-us")? / 1000.0;
            pauses.push(pause);
            let mut line = format!("sample smp={} pause={pause:.4}", a.smp);
            for (i, p) in PHASES.iter().enumerate() {
                let v = t["phases-us"][p].as_f64().unwrap_or(f64::NAN) / 1000.0;
                phases[i].push(v);
                line.push_str(&format!(" {p}={v:.4}"));
            }
            if a.samples {
                println!("{line}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = q.execute("quit", json!({}));
        Ok::<_, String>((pauses, phases))
    })();
    // A failed run leaves the vmm running (its quit was never sent): never leave it behind.
    if result.is_err() {
        let _ = child.kill();
    }
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let (mut pauses, mut phases) = result?;

    let floor_out = if a.no_floor {
        None
    } else {
        Some(
            Command::new(bin_dir.join("cpr-floor"))
                .args(["--mem-mib", &a.mem_mib.to_string(), "--runs", "10"])
                .args(if a.hugetlb {
                    &["--hugetlb"][..]
                } else {
                    &[][..]
                })
                .output()
                .map_err(|e| format!("run cpr-floor (cargo build --release -p vmm-bench): {e}"))?,
        )
    };
    let mut floors: Vec<f64> = floor_out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split("floor ").nth(1)?.strip_suffix(" ms")?.parse().ok())
        .collect();

    let (med, p90, max) = summary(&mut pauses);
    println!(
        "vmm restart-mode pause{}, {} MiB {} RAM ({}), counter guest, {} vCPUs, {} updates:",
        if a.one_command {
            " (one cpr-exec -incoming)"
        } else {
            ""
        },
        a.mem_mib,
        if a.hugetlb { "hugetlb memfd" } else { "memfd" },
        if a.touch {
            "all of it faulted in before each update"
        } else {
            "untouched but for the guest's few pages"
        },
        a.smp,
        a.updates
    );
    println!("  pause       median {med:8.3} ms   p90 {p90:8.3} ms   max {max:8.3} ms");
    for (name, v) in PHASES.iter().zip(phases.iter_mut()) {
        let (m, p, x) = summary(v);
        println!("  {name:<11} median {m:8.3} ms   p90 {p:8.3} ms   max {x:8.3} ms");
    }
    if a.no_floor {
        return Ok(());
    }
    let (fm, fp, fx) = summary(&mut floors);
    println!(
        "floor (cpr-floor --mem-mib {}, execve + KVM VM + memslots + vCPUs + first run):",
        a.mem_mib
    );
    println!("  floor       median {fm:8.3} ms   p90 {fp:8.3} ms   max {fx:8.3} ms");
    println!("  pause - floor (medians): {:.3} ms", med - fm);
    Ok(())
}

fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cpr-pause: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&a) {
        eprintln!("cpr-pause: {e}");
        std::process::exit(1);
    }
}
