//! Pause of a transfer-mode live update against guest RAM size, over the real `vmm`.
//!
//! For each size: start `vmm -m SIZE -machine memfd-alloc=on` with the counter guest, then
//! repeat: touch all guest RAM from the current vmm (`info ram-digest` reads every page
//! through its mapping, so its page tables are populated as a long-running VMM's are), start
//! a successor with `-incoming cpr:unix:PATH`, send `cpr-transfer` on the HMP socket (the
//! successor answers on the same connection) and read `info cpr` from it. The successor
//! becomes the current vmm of the next round. The serial output is checked to count on
//! across every transfer.
//!
//! Prints, per size, median / p90 / max of the pause and the median of each phase, plus
//! the phases outside the pause (prepare, the old process's exit).
//!
//! Usage: cpr-transfer-bench [--sizes 256M,1G,2G,4G,8G] [--runs N] [--vmm PATH]
//!        [--guest PATH] [--samples]
//! `--samples` also prints one `sample` line per transfer (pause and phases, ms), so that a
//! script can interleave two vmm builds (A/B/A/B) and pool the samples.
//! The vmm defaults to `vmm` next to this binary (build both with --release).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PATIENCE: Duration = Duration::from_secs(300);

struct Args {
    sizes: Vec<(String, u64)>,
    runs: usize,
    vmm: PathBuf,
    guest: PathBuf,
    /// Print every transfer's pause and phases (`sample` lines) for A/B scripts.
    samples: bool,
}

fn parse_size(s: &str) -> Option<u64> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().ok()?;
    match unit {
        "M" | "" => Some(n),
        "G" => Some(n * 1024),
        _ => None,
    }
}

fn parse_args() -> Result<Args, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut a = Args {
        sizes: ["256M", "1G", "2G", "4G", "8G"]
            .iter()
            .map(|s| (s.to_string(), parse_size(s).unwrap_or(256)))
            .collect(),
        runs: 10,
        vmm: exe.with_file_name("vmm"),
        guest: Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/guests/counter"),
        samples: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(o) = it.next() {
        let mut val = || it.next().cloned().ok_or(format!("{o} needs a value"));
        match o.as_str() {
            "--sizes" => {
                a.sizes = val()?
                    .split(',')
                    .map(|s| {
                        parse_size(s)
                            .map(|m| (s.to_string(), m))
                            .ok_or(format!("bad size {s:?} (use e.g. 256M or 2G)"))
                    })
                    .collect::<Result<_, _>>()?
            }
            "--runs" => a.runs = val()?.parse().map_err(|_| "--runs needs a number")?,
            "--vmm" => a.vmm = PathBuf::from(val()?),
            "--guest" => a.guest = PathBuf::from(val()?),
            "--samples" => a.samples = true,
            other => return Err(format!("unknown option {other}")),
        }
    }
    if !a.vmm.is_file() {
        return Err(format!(
            "{} missing: cargo build --release -p vmm (or pass --vmm)",
            a.vmm.display()
        ));
    }
    Ok(a)
}

fn read_until(s: &mut UnixStream, suffix: &str) -> Result<String, String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(suffix.as_bytes()) {
        match s.read(&mut buf) {
            Ok(0) => return Err(format!("EOF; got {:?}", String::from_utf8_lossy(&got))),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("{e}; got {:?}", String::from_utf8_lossy(&got))),
        }
    }
    Ok(String::from_utf8_lossy(&got).into_owned())
}

fn hmp(s: &mut UnixStream, line: &str) -> Result<String, String> {
    s.write_all(format!("{line}\n").as_bytes())
        .map_err(|e| format!("HMP write: {e}"))?;
    let out = read_until(s, "(vmm) ").map_err(|e| format!("{line}: {e}"))?;
    Ok(out.trim_end_matches("(vmm) ").replace("\r\n", "\n"))
}

fn connect(path: &Path, child: &mut Child) -> Result<UnixStream, String> {
    let start = Instant::now();
    loop {
        if let Ok(s) = UnixStream::connect(path) {
            s.set_read_timeout(Some(PATIENCE))
                .map_err(|e| e.to_string())?;
            return Ok(s);
        }
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!("vmm exited with {st} before listening"));
        }
        if start.elapsed() > PATIENCE {
            return Err(format!("{} never appeared", path.display()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn spawn(a: &Args, dir: &Path, mib: u64, incoming: bool) -> Result<Child, String> {
    let mut cmd = Command::new(&a.vmm);
    cmd.args([
        "-m",
        &format!("{mib}M"),
        "-machine",
        "memfd-alloc=on",
        "-kernel",
    ])
    .arg(&a.guest)
    .arg("-chardev")
    .arg(format!(
        "socket,id=ser,path={}/ser.sock,server=on,wait=off",
        dir.display()
    ))
    .args(["-serial", "chardev:ser", "-chardev"])
    .arg(format!(
        "socket,id=mon,path={}/mon.sock,server=on,wait=off",
        dir.display()
    ))
    .args(["-monitor", "chardev:mon"]);
    if incoming {
        cmd.arg("-incoming")
            .arg(format!("cpr:unix:{}/cpr.sock", dir.display()));
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", a.vmm.display()))
}

/// One transfer's `info cpr`: pause and phases in ms.
fn parse_info(text: &str) -> Result<(f64, BTreeMap<String, f64>), String> {
    let mut pause = None;
    let mut phases = BTreeMap::new();
    for l in text.lines() {
        let words: Vec<&str> = l.split_whitespace().collect();
        match words.as_slice() {
            ["pause:", v, "ms", ..] => pause = v.parse().ok(),
            [name, v, "ms", ..] if l.starts_with("  ") => {
                if let Ok(v) = v.parse() {
                    phases.insert(name.to_string(), v);
                }
            }
            _ => {}
        }
    }
    Ok((pause.ok_or(format!("no pause in {text:?}"))?, phases))
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(f64::NAN)
}

/// Children still running when a size fails are killed, so no guest RAM is left behind.
struct Reaper(Vec<u32>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in &self.0 {
            // SAFETY: kill only sends SIGKILL to a child this benchmark started; an exited
            // (reaped or zombie) pid is harmless here.
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        }
    }
}

fn bench_size(a: &Args, label: &str, mib: u64) -> Result<(), String> {
    let mut reaper = Reaper(Vec::new());
    let dir = std::env::temp_dir().join(format!("cpr-transfer-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut cur = spawn(a, &dir, mib, false)?;
    reaper.0.push(cur.id());
    let ser = connect(&dir.join("ser.sock"), &mut cur)?;
    let mut mon = connect(&dir.join("mon.sock"), &mut cur)?;
    read_until(&mut mon, "(vmm) ")?;
    // The serial client stays connected through every transfer; a thread keeps its text.
    let serial = Arc::new(Mutex::new(String::new()));
    let s2 = serial.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(ser).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut s) = s2.lock() {
                s.push_str(&line);
                s.push('\n');
            }
        }
    });
    let t0 = Instant::now();
    hmp(&mut mon, "info ram-digest")?;
    let first_touch = t0.elapsed();
    let mut pauses = Vec::new();
    let mut phases: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut exits = Vec::new();
    for _ in 0..a.runs {
        hmp(&mut mon, "info ram-digest")?;
        let mut next = spawn(a, &dir, mib, true)?;
        reaper.0.push(next.id());
        let start = Instant::now();
        while !dir.join("cpr.sock").exists() {
            if let Ok(Some(st)) = next.try_wait() {
                return Err(format!("successor exited with {st}"));
            }
            if start.elapsed() > PATIENCE {
                return Err("successor never listened".into());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let reply = hmp(
            &mut mon,
            &format!("cpr-transfer unix:{}/cpr.sock", dir.display()),
        )?;
        let replied = Instant::now();
        if !reply.is_empty() {
            return Err(format!("cpr-transfer: {reply}"));
        }
        let st = cur.wait().map_err(|e| e.to_string())?;
        exits.push(replied.elapsed().as_secs_f64() * 1000.0);
        if !st.success() {
            let mut e = String::new();
            if let Some(mut r) = cur.stderr.take() {
                let _ = r.read_to_string(&mut e);
            }
            return Err(format!("old vmm exited with {st}: {e}"));
        }
        let (pause, ph) = parse_info(&hmp(&mut mon, "info cpr")?)?;
        if a.samples {
            let mut line = format!("sample size={label} pause={pause:.4}");
            for (k, v) in &ph {
                line.push_str(&format!(" {k}={v:.4}"));
            }
            println!("{line}");
        }
        pauses.push(pause);
        for (k, v) in ph {
            phases.entry(k).or_default().push(v);
        }
        cur = next;
    }
    let counted = serial.lock().map(|s| s.clone()).unwrap_or_default();
    let counts: Vec<u64> = counted
        .lines()
        .filter_map(|l| l.strip_prefix("count ")?.parse().ok())
        .collect();
    let consecutive = counts.windows(2).all(|w| w[1] == w[0] + 1);
    let _ = hmp(&mut mon, "quit");
    let _ = cur.wait();
    reaper.0.clear();
    let _ = std::fs::remove_dir_all(&dir);
    if !consecutive || counts.is_empty() {
        return Err(format!("the guest's count did not continue: {counts:?}"));
    }
    let median = |v: &mut Vec<f64>| pct(v, 0.5);
    println!(
        "{label:>6}  pause ms: median {:.3}  p90 {:.3}  max {:.3}   ({} transfers, first touch {:.1} s)",
        pct(&mut pauses, 0.5),
        pct(&mut pauses, 0.9),
        pct(&mut pauses, 1.0),
        a.runs,
        first_touch.as_secs_f64()
    );
    let inside = ["save-state", "send-state", "restore", "commit", "resume"];
    let mut line = String::from("        in pause (median ms):");
    for k in inside {
        if let Some(v) = phases.get_mut(k) {
            line.push_str(&format!(" {k} {:.3}", median(v)));
        }
    }
    println!("{line}");
    let mut line = String::from("        outside (median ms):");
    for k in ["prepare", "stop-vcpus"] {
        if let Some(v) = phases.get_mut(k) {
            line.push_str(&format!(" {k} {:.3}", median(v)));
        }
    }
    line.push_str(&format!(" old-exit {:.3}", median(&mut exits)));
    println!("{line}");
    Ok(())
}

fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cpr-transfer-bench: {e}");
            std::process::exit(2);
        }
    };
    println!(
        "transfer-mode pause (last vCPU stopped in the old vmm .. first vCPU running in the new), \
         4 KiB memfd pages, counter guest, {} transfers per size",
        a.runs
    );
    for (label, mib) in &a.sizes {
        if let Err(e) = bench_size(&a, label, *mib) {
            eprintln!("cpr-transfer-bench: {label}: {e}");
            std::process::exit(1);
        }
    }
}
