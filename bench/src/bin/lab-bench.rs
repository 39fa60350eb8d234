//! Lab benchmark rows: restart-mode live updates of a Linux guest and of a guest with VFIO
//! devices, measured inside the lab host (nested KVM under QEMU TCG, tests/lab/).
//!
//! Builds a static `vmm`, `lab-driver` and `cpr-floor` into `<target>/lab`, boots the lab
//! once per scenario (bench/lab/boot.sh; the device-less `counter` baseline shares the VFIO
//! scenario's boot), reads the driver's `lab-bench-run` lines and the floor program's runs
//! (same RAM size, same lab) from the lab's console and writes `results.csv`,
//! `results.json` and `results.md` into `--out` (default bench/results/lab/), labelled as
//! lab figures. Lab figures are far slower in absolute terms than the build machines' rows:
//! the lab's own CPU is emulated. See docs/BENCHMARKS.md.
//!
//! Usage: cargo run --release -p vmm-bench --bin lab-bench -- [--runs N]
//!        [--scenarios linux,vfio,counter] [--one-boot] [--rounds R] [--no-floor]
//!        [--vfio-trace] [--out DIR] [--prebuilt DIR]
//! `--rounds R` (5): scenarios sharing a boot take turns, each doing its share of the runs
//! with a fresh vmm and guest per round, so they see the same drift of the host's load.
//! `--prebuilt DIR`: static `vmm`, `lab-driver` and `cpr-floor` already built in DIR.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use vmm_bench::report::{self, Row};
use vmm_bench::scenario::Samples;
use vmm_bench::stats::summarize;
use vmm_bench::{calibrate, host, lab};

/// What every lab row is measured on (the `machine` of results.json and the table's title).
const MACHINE: &str = "lab (nested KVM under TCG)";
const TRIPLE: &str = "x86_64-unknown-linux-gnu";

struct Args {
    runs: u32,
    scenarios: Vec<String>,
    one_boot: bool,
    /// Scenarios sharing a boot take turns in this many rounds.
    rounds: u32,
    vfio_trace: bool,
    floor: bool,
    out: Option<PathBuf>,
    prebuilt: Option<PathBuf>,
}

const USAGE: &str = "usage: lab-bench [--runs N] [--scenarios linux,vfio,counter] [--one-boot] \
[--rounds R] [--no-floor] [--vfio-trace] [--out DIR] [--prebuilt DIR]";
const SCENARIOS: &[&str] = &["linux", "vfio", "counter"];

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        runs: 10,
        scenarios: SCENARIOS.iter().map(|s| s.to_string()).collect(),
        one_boot: false,
        rounds: 5,
        vfio_trace: false,
        floor: true,
        out: None,
        prebuilt: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(x) = it.next() {
        let mut val = || it.next().cloned().ok_or(format!("{x} needs a value"));
        match x.as_str() {
            "--runs" => {
                a.runs = val()?
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or("--runs needs a positive number")?
            }
            "--scenarios" => {
                a.scenarios = val()?.split(',').map(String::from).collect();
                if let Some(s) = a
                    .scenarios
                    .iter()
                    .find(|s| !SCENARIOS.contains(&s.as_str()))
                {
                    return Err(format!("unknown scenario {s:?} (linux, vfio, counter)"));
                }
            }
            "--one-boot" => a.one_boot = true,
            "--rounds" => {
                a.rounds = val()?
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or("--rounds needs a positive number")?
            }
            "--vfio-trace" => a.vfio_trace = true,
            "--no-floor" => a.floor = false,
            "--out" => a.out = Some(PathBuf::from(val()?)),
            "--prebuilt" => a.prebuilt = Some(PathBuf::from(val()?)),
            _ => return Err(USAGE.into()),
        }
    }
    Ok(a)
}

/// The workspace (this crate's parent directory).
fn root() -> PathBuf {
    let bench = Path::new(env!("CARGO_MANIFEST_DIR"));
    bench.parent().unwrap_or(bench).to_path_buf()
}

/// `<target>/lab`, shared with the lab tests' static vmm build (tests/src/lab.rs).
fn lab_target() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
        .join("lab")
}

/// The directory of the static vmm, lab-driver and cpr-floor, built fresh (a no-op when up
/// to date).
fn static_programs(a: &Args, lab_target: &Path) -> Result<PathBuf, String> {
    if let Some(d) = &a.prebuilt {
        return Ok(d.clone());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("lab-bench: building the static vmm, lab-driver and cpr-floor");
    // With --target, RUSTFLAGS reach only the target crates, not build scripts or proc
    // macros (which cannot be linked statically against glibc).
    let st = Command::new(cargo)
        .current_dir(root())
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .args(["build", "--quiet", "--release", "-p", "vmm", "--bin", "vmm"])
        .args([
            "-p",
            "vmm-bench",
            "--bin",
            "lab-driver",
            "--bin",
            "cpr-floor",
        ])
        .arg("--no-default-features")
        .args(["--target", TRIPLE])
        .arg("--target-dir")
        .arg(lab_target)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !st.success() {
        return Err("static build of vmm, lab-driver and cpr-floor failed".into());
    }
    Ok(lab_target.join(TRIPLE).join("release"))
}

/// Rounds for a boot of these scenarios: one scenario alone needs no turns.
fn rounds(a: &Args, scenarios: &[String]) -> u32 {
    if scenarios.len() > 1 {
        a.rounds.min(a.runs)
    } else {
        1
    }
}

/// One lab boot: what its console said, the host's load average at the start and end.
struct Boot {
    console: String,
    load_start: f64,
    load_end: f64,
    passed: bool,
}

fn boot(a: &Args, scenarios: &[String], bin: &Path, work: &Path) -> Result<Boot, String> {
    let load_start = host::load_avg();
    let script = root().join("bench/lab/boot.sh");
    let mut cmd = Command::new(&script);
    cmd.arg(bin.join("vmm")).arg(bin.join("lab-driver"));
    if a.floor {
        cmd.arg(bin.join("cpr-floor"));
    }
    let mut child = cmd
        .env("LAB_SCENARIOS", scenarios.join(" "))
        .env("LAB_RUNS", a.runs.to_string())
        .env("LAB_ROUNDS", rounds(a, scenarios).to_string())
        .env("LAB_VFIO_TRACE", if a.vfio_trace { "1" } else { "0" })
        .env("LAB_WORK", work)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let mut console = String::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).split(b'\n') {
            let line = line.map_err(|e| format!("reading the lab's console: {e}"))?;
            let line = String::from_utf8_lossy(&line).replace('\r', "");
            eprintln!("lab| {line}");
            console.push_str(&line);
            console.push('\n');
        }
    }
    let st = child
        .wait()
        .map_err(|e| format!("waiting for the lab: {e}"))?;
    if st.code() == Some(2) {
        return Err("the lab cannot run on this machine (see tests/lab/REQUIREMENTS)".into());
    }
    Ok(Boot {
        console,
        load_start,
        load_end: host::load_avg(),
        passed: st.success(),
    })
}

/// `lab-driver --calibrate` on this host (Null if it cannot run).
fn calibrate_host(bin: &Path) -> Value {
    Command::new(bin.join("lab-driver"))
        .arg("--calibrate")
        .output()
        .ok()
        .and_then(|o| {
            let s = String::from_utf8_lossy(&o.stdout).into_owned();
            console_value(&s, "lab-bench-calibration ")
        })
        .and_then(|v| serde_json::from_str(&v).ok())
        .unwrap_or(Value::Null)
}

/// The text after `prefix` on the first console line that has it.
fn console_value(console: &str, prefix: &str) -> Option<String> {
    console.lines().find_map(|l| {
        l.find(prefix)
            .map(|i| l[i + prefix.len()..].trim().to_string())
    })
}

/// The floor program's runs after `scenario` (`lab-bench-floor SCENARIO KIND run N: floor
/// X ms`), in ms.
fn floor_ms(console: &str, scenario: &str, kind: &str) -> Vec<f64> {
    let prefix = format!("lab-bench-floor {scenario} {kind} ");
    console
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find(&prefix)? + prefix.len()..];
            rest.split("floor ")
                .nth(1)?
                .trim()
                .strip_suffix(" ms")?
                .parse()
                .ok()
        })
        .collect()
}

fn row_for(scenario: &str, boot: &Boot, runs: &[lab::Run], want: u32) -> Row {
    let (ram_mib, name) = match scenario {
        "linux" => (256, "lab-restart-linux"),
        "vfio" => (64, "lab-restart-vfio-edu-e1000e"),
        _ => (64, "lab-restart-counter"),
    };
    let mut note = String::new();
    if runs.len() != want as usize {
        let why = boot
            .console
            .lines()
            .find_map(|l| l.split_once("lab-bench-error ").map(|(_, e)| e.to_string()))
            .unwrap_or_else(|| "see the lab console".into());
        note = format!("failed after {} of {want} runs: {why}", runs.len());
    }
    Row {
        scenario: name.into(),
        ram_mib,
        vcpus: 1,
        pages: "4k".into(),
        samples: if note.is_empty() {
            lab::samples(runs)
        } else {
            Samples::default()
        },
        floor: summarize(&floor_ms(&boot.console, scenario, "plain")),
        floor_deferred: summarize(&floor_ms(&boot.console, scenario, "deferred")),
        load: boot.load_start,
        note,
    }
}

fn run(a: &Args) -> Result<(), String> {
    let lab_target = lab_target();
    let bin = static_programs(a, &lab_target)?;
    let work = lab_target.join("work");
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| root().join("bench/results/lab"));
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    // The counter guest is the VFIO guest's baseline: it runs in the same boot (same lab,
    // same IOMMU), as lab boots differ in speed by tens of percent on a shared host.
    let groups: Vec<Vec<String>> = if a.one_boot {
        vec![a.scenarios.clone()]
    } else {
        let mut g: Vec<Vec<String>> = Vec::new();
        for s in &a.scenarios {
            match g.iter_mut().find(|g| {
                s == "counter" && g.contains(&"vfio".to_string())
                    || s == "vfio" && g.contains(&"counter".to_string())
            }) {
                Some(g) => g.push(s.clone()),
                None => g.push(vec![s.clone()]),
            }
        }
        g
    };
    // The static driver runs on the host too: the same calibration as in each lab boot.
    let host_calibration = calibrate_host(&bin);
    let mut rows = Vec::new();
    let mut boots = Vec::new();
    let mut records = Vec::new();
    let mut failed = false;
    for g in &groups {
        eprintln!(
            "lab-bench: booting the lab for {} ({} runs each)",
            g.join(", "),
            a.runs
        );
        let b = boot(a, g, &bin, &work)?;
        std::fs::write(out.join(format!("console-{}.log", g.join("-"))), &b.console)
            .map_err(|e| format!("{}: {e}", out.display()))?;
        for s in g {
            let (runs, done) = lab::parse_console(&b.console, s)?;
            let r = row_for(s, &b, &runs, a.runs);
            failed |= !r.note.is_empty() || done.is_none() || !b.passed;
            records.extend(runs.iter().map(|r| {
                json!({"scenario": r.scenario, "run": r.run, "pause-us": r.pause_us, "check": r.check})
            }));
            rows.push(r);
        }
        boots.push(json!({
            "scenarios": g,
            "rounds": rounds(a, g),
            "load-avg-start": b.load_start,
            "load-avg-end": b.load_end,
            "passed": b.passed,
            "qemu": console_value(&b.console, "lab-bench-qemu "),
            "lab": console_value(&b.console, "lab-bench-lab ")
                .and_then(|v| serde_json::from_str::<Value>(&v).ok()),
            "calibration": console_value(&b.console, "lab-bench-calibration ")
                .and_then(|v| serde_json::from_str::<Value>(&v).ok()),
            "vfio-trace": b.console.lines()
                .filter_map(|l| l.split_once("lab-bench-trace ").map(|(_, t)| t.trim()))
                .collect::<Vec<_>>(),
        }));
    }

    let machine = json!({
        "kind": MACHINE,
        "what": "Debian cloud kernel under qemu-system-x86_64 -accel tcg -cpu max -smp 1 -m 1024 \
                 (AMD SVM with nested paging emulated); the vmm runs in it on the lab's /dev/kvm",
        "host": host::describe(),
        // The same calibration as in each boot, on the build machine, for the ratio.
        "host-calibration": host_calibration,
    });
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut json = report::json(&rows, &machine, &command);
    json["boots"] = json!(boots);
    json["runs"] = json!(records);
    // The lab's single emulated CPU is one host thread: its speed follows the host's load,
    // so each boot's load at both ends goes with the table.
    let loads: String = boots
        .iter()
        .map(|b| {
            format!(
                "- boot for {}: host load average {:.1} at start, {:.1} at end; \
                 in the lab: {}\n",
                b["scenarios"]
                    .as_array()
                    .map(|s| s
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default(),
                b["load-avg-start"].as_f64().unwrap_or(0.0),
                b["load-avg-end"].as_f64().unwrap_or(0.0),
                calibrate::describe(&b["calibration"]),
            )
        })
        .collect();
    let title = format!(
        "Lab figures, {MACHINE}: slower in absolute terms than the build machines' rows \
         (the lab's CPU is emulated). Command: {command}\n\n{loads}\
         - on this host, for comparison: {}\n\n",
        calibrate::describe(&host_calibration)
    );
    let table = report::table(&rows);
    println!("{title}{table}");
    report::write_results(&out, &rows, &json, &format!("{title}{table}\n"))?;
    println!("results in {}", out.display());
    if failed {
        return Err("a lab scenario failed (see the table and console-*.log)".into());
    }
    Ok(())
}

fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("lab-bench: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&a) {
        eprintln!("lab-bench: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_runs_are_read_per_scenario_and_kind() {
        let console = "lab-bench-floor linux plain run 1: floor 150.500 ms\n\
                       lab-bench-floor linux deferred run 1: floor 60.000 ms\r\n\
                       \x1b[0mlab-bench-floor linux plain run 2: floor 160.000 ms\n\
                       lab-bench-floor vfio plain run 1: floor 90.000 ms\n";
        assert_eq!(floor_ms(console, "linux", "plain"), vec![150.5, 160.0]);
        assert_eq!(floor_ms(console, "linux", "deferred"), vec![60.0]);
        assert_eq!(floor_ms(console, "counter", "plain"), Vec::<f64>::new());
    }
}
