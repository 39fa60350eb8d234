//! Runs INSIDE the lab host (bench/lab/l1-init): starts the vmm with the guest's serial
//! console on a pipe and QMP on a UNIX socket, waits for the guest, then does N restart-mode
//! live updates back to back over QMP, each one command as users do it (`cpr-exec` of the
//! same vmm with `-incoming IMAGE`: save, exec and load; see docs/LIVE-UPDATE.md), with no
//! shell in the update. After each one it checks the guest is alive and
//! prints one `lab-bench-run {JSON}` line (pause and phases from query-cpr; see
//! vmm_bench::lab). Built statically for the lab's initramfs by `lab-bench`.
//!
//! Usage: lab-driver --scenario linux|vfio|counter --runs N [--first-run K] --dir DIR -- VMM [VMM-ARGS...]
//!        lab-driver --calibrate   (prints `lab-bench-calibration {JSON}`: vmm_bench::calibrate)
//! The driver adds `-serial stdio` and `-qmp unix:DIR/qmp.sock,server=on,wait=off`.
//! Liveness after each update:
//!   linux: a command typed into the guest's shell is answered by the same shell process
//!          (its PID), with a guest uptime later than the previous answer's;
//!   vfio:  the guest (fixtures/guests/vfio) goes on iterating (3 more iterations), every
//!          complete `iter N edu-irqs N msix0 N msix1 N` line has equal counts, and it never
//!          printed `vfio FAIL`;
//!   counter: the counter guest (fixtures/guests/counter) counts on, 20 more, and its
//!          `count N` lines are one unbroken sequence at the end.
//! Exit status 0 after `lab-bench-done`; 1 after `lab-bench-error` (with the console's and
//! the vmm's last lines); 2 for bad usage.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use vmm_bench::lab::{Run, DONE_PREFIX};
use vmm_bench::qmp::Qmp;

#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    Linux,
    Vfio,
    /// The counter guest without devices, at the VFIO guest's RAM size: the lab's baseline
    /// for what VFIO adds.
    Counter,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Linux => "linux",
            Scenario::Vfio => "vfio",
            Scenario::Counter => "counter",
        }
    }
}

struct Args {
    scenario: Scenario,
    runs: u32,
    /// Number of the first update (a scenario's runs may be split over several drivers).
    first_run: u32,
    dir: PathBuf,
    vmm: String,
    vmm_args: Vec<String>,
}

const USAGE: &str =
    "usage: lab-driver --scenario linux|vfio|counter --runs N [--first-run K] --dir DIR -- VMM [ARGS...]";

fn parse_args() -> Result<Args, String> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let split = argv.iter().position(|a| a == "--").ok_or(USAGE)?;
    let (opts, rest) = (&argv[..split], &argv[split + 1..]);
    let (mut scenario, mut runs, mut dir, mut first_run) = (None, None, None, 1);
    let mut it = opts.iter();
    while let Some(o) = it.next() {
        let v = it.next().ok_or_else(|| format!("{o} needs a value"))?;
        match o.as_str() {
            "--scenario" => {
                scenario = Some(match v.as_str() {
                    "linux" => Scenario::Linux,
                    "vfio" => Scenario::Vfio,
                    "counter" => Scenario::Counter,
                    other => return Err(format!("unknown scenario {other:?}")),
                })
            }
            "--runs" => {
                runs = Some(
                    v.parse::<u32>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or("--runs needs a positive number")?,
                )
            }
            "--first-run" => {
                first_run = v
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or("--first-run needs a positive number")?
            }
            "--dir" => dir = Some(PathBuf::from(v)),
            _ => return Err(USAGE.into()),
        }
    }
    let (vmm, vmm_args) = rest.split_first().ok_or(USAGE)?;
    Ok(Args {
        scenario: scenario.ok_or(USAGE)?,
        runs: runs.ok_or(USAGE)?,
        first_run,
        dir: dir.ok_or(USAGE)?,
        vmm: vmm.clone(),
        vmm_args: vmm_args.to_vec(),
    })
}

/// The guest's serial console, read by a thread from the vmm's stdout (the same pipe across
/// every exec).
#[derive(Clone, Default)]
struct Console(Arc<Mutex<String>>);

impl Console {
    fn follow(&self, mut from: impl Read + Send + 'static) {
        let text = self.0.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let chunk = String::from_utf8_lossy(&buf[..n]).replace('\r', "");
                if let Ok(mut t) = text.lock() {
                    t.push_str(&chunk);
                }
            }
        });
    }

    fn len(&self) -> usize {
        self.0.lock().map_or(0, |t| t.len())
    }

    fn since(&self, from: usize) -> String {
        self.0
            .lock()
            .map(|t| t.get(from..).unwrap_or("").to_string())
            .unwrap_or_default()
    }

    fn tail(&self, lines: usize) -> String {
        let all = self.since(0);
        let v: Vec<&str> = all.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }
}

/// The vmm under test, its console, QMP and stdin (the guest's keyboard, for linux).
struct Lab {
    child: Child,
    qmp: Qmp,
    console: Console,
    stdin: ChildStdin,
    stderr: PathBuf,
}

impl Lab {
    /// Polls `f` on the console text after byte `from` until it returns Some, checking the
    /// vmm is alive and the vfio guest reported no failure.
    fn wait<T>(
        &mut self,
        what: &str,
        from: usize,
        secs: u64,
        mut f: impl FnMut(&str) -> Option<T>,
    ) -> Result<T, String> {
        let start = Instant::now();
        loop {
            let text = self.console.since(from);
            if let Some(l) = text.lines().find(|l| l.contains("vfio FAIL")) {
                return Err(format!("the guest reported: {l}"));
            }
            if let Some(v) = f(&text) {
                return Ok(v);
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(format!("the vmm exited ({st}) waiting for {what}"));
            }
            if start.elapsed() > Duration::from_secs(secs) {
                return Err(format!("no {what} within {secs} s"));
            }
            // Polling costs the lab's one emulated CPU, which the guest needs too.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Types a shell command into the guest and returns the first line after it that starts
    /// with `answer`.
    fn ask(&mut self, cmd: &str, answer: &str) -> Result<String, String> {
        let from = self.console.len();
        self.stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .map_err(|e| format!("typing into the guest: {e}"))?;
        self.wait(&format!("'{answer}' from the guest"), from, 60, |t| {
            // A complete line only (the newline arrived).
            let (done, _) = t.rsplit_once('\n')?;
            done.lines()
                .find_map(|l| l.find(answer).map(|i| l[i..].to_string()))
        })
    }
}

/// The shell's answer `alive-42-N UPTIME PID` → (uptime, pid).
fn shell_answer(line: &str) -> Result<(f64, String), String> {
    let mut w = line.split_whitespace().skip(1);
    let up = w.next().and_then(|u| u.parse::<f64>().ok());
    let pid = w.next();
    match (up, pid) {
        (Some(u), Some(p)) => Ok((u, p.to_string())),
        _ => Err(format!("unexpected shell answer {line:?}")),
    }
}

/// Complete `iter N edu-irqs A msix0 B msix1 C` lines: (N, A, B, C).
fn iterations(text: &str) -> Vec<[u64; 4]> {
    let complete = text.rsplit_once('\n').map_or("", |(d, _)| d);
    complete
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            if w.len() != 8 || w[0] != "iter" {
                return None;
            }
            let n = |i: usize| w[i].parse::<u64>().ok();
            Some([n(1)?, n(3)?, n(5)?, n(7)?])
        })
        .collect()
}

/// Complete `count N` lines.
fn counts(text: &str) -> Vec<u64> {
    let complete = text.rsplit_once('\n').map_or("", |(d, _)| d);
    complete
        .lines()
        .filter_map(|l| l.strip_prefix("count ")?.trim().parse().ok())
        .collect()
}

/// The last complete iteration line, failing if its interrupt counts differ from its
/// iteration number (a lost or doubled DMA interrupt).
fn last_iteration(text: &str) -> Result<Option<u64>, String> {
    match iterations(text).last() {
        Some(&[n, a, b, c]) if a == n && b == n && c == n => Ok(Some(n)),
        Some(l) => Err(format!("interrupt counts differ from the iteration: {l:?}")),
        None => Ok(None),
    }
}

fn run(a: &Args) -> Result<(), String> {
    std::fs::create_dir_all(&a.dir).map_err(|e| format!("{}: {e}", a.dir.display()))?;
    let sock = a.dir.join("qmp.sock");
    let img = a.dir.join("cpr.img").display().to_string();
    let stderr = a.dir.join("vmm-err");
    let mut args = a.vmm_args.clone();
    args.extend([
        "-serial".into(),
        "stdio".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", sock.display()),
    ]);
    let err_file =
        std::fs::File::create(&stderr).map_err(|e| format!("{}: {e}", stderr.display()))?;
    let mut child = Command::new(&a.vmm)
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(err_file)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", a.vmm))?;
    let console = Console::default();
    let (stdin, stdout) = match (child.stdin.take(), child.stdout.take()) {
        (Some(i), Some(o)) => (i, o),
        _ => return Err("the vmm's stdio pipes are missing".into()),
    };
    console.follow(stdout);
    let qmp = match Qmp::connect(&sock, &mut child) {
        Ok(q) => q,
        Err(e) => {
            let _ = child.kill();
            return Err(e);
        }
    };
    let mut lab = Lab {
        child,
        qmp,
        console,
        stdin,
        stderr,
    };
    let result = updates(&mut lab, a, &args, &img);
    if result.is_err() {
        let _ = lab.child.kill();
        eprintln!("lab-driver: --- guest console (last 30 lines) ---");
        eprintln!("{}", lab.console.tail(30));
        eprintln!("lab-driver: --- vmm stderr ---");
        eprintln!(
            "{}",
            std::fs::read_to_string(&lab.stderr).unwrap_or_default()
        );
    }
    let _ = lab.child.wait();
    result
}

fn updates(lab: &mut Lab, a: &Args, args: &[String], img: &str) -> Result<(), String> {
    let scenario = a.scenario;
    let t0 = Instant::now();
    // Linux: the shell prompt, then the shell's PID and the guest's uptime.
    let mut shell = None;
    match scenario {
        Scenario::Linux => {
            lab.wait("shell prompt", 0, 180, |t| {
                t.contains("l2-shell# ").then_some(())
            })?;
            let l = lab.ask(
                "echo alive-$((6*7))-0 $(cut -d' ' -f1 /proc/uptime) $$",
                "alive-42-0 ",
            )?;
            shell = Some(shell_answer(&l)?);
        }
        Scenario::Vfio => {
            lab.wait("guest iteration 3", 0, 180, |t| {
                iterations(t).last().filter(|l| l[0] >= 3).map(|_| ())
            })?;
        }
        Scenario::Counter => {
            lab.wait("count 20", 0, 180, |t| {
                counts(t).last().filter(|n| **n >= 20).map(|_| ())
            })?;
        }
    }
    println!(
        "lab-bench-ready {}",
        json!({"scenario": scenario.name(), "after-s": t0.elapsed().as_secs_f64()})
    );
    let mut argv = vec![a.vmm.clone()];
    argv.extend(args.iter().cloned());
    argv.extend(["-incoming".to_string(), img.to_string()]);
    for i in a.first_run..a.first_run + a.runs {
        let before = last_iteration(&lab.console.since(0))?;
        let count_before = counts(&lab.console.since(0)).last().copied();
        let from = lab.console.len();
        // Answered by the new vmm once the guest runs again (or with why not).
        lab.qmp.cmd("cpr-exec", json!({ "argv": argv }))?;
        let reply = lab.qmp.cmd("query-cpr", json!({}))?;
        let mut run = Run::from_query_cpr(scenario.name(), i, &reply)?;
        run.check = match scenario {
            Scenario::Linux => {
                let (up0, pid0) = shell.clone().ok_or("no shell")?;
                let l = lab.ask(
                    &format!("echo alive-$((6*7))-{i} $(cut -d' ' -f1 /proc/uptime) $$"),
                    &format!("alive-42-{i} "),
                )?;
                let (up, pid) = shell_answer(&l)?;
                if pid != pid0 {
                    return Err(format!("another shell answered: pid {pid}, before {pid0}"));
                }
                if up <= up0 {
                    return Err(format!("guest uptime did not go on: {up0} then {up} s"));
                }
                shell = Some((up, pid.clone()));
                format!("shell {pid} answered, guest uptime {up0} -> {up} s")
            }
            Scenario::Vfio => {
                let at = before.unwrap_or(0);
                let n = lab.wait(
                    "3 more guest iterations",
                    from,
                    120,
                    |t| match last_iteration(t) {
                        Ok(Some(n)) if n >= at + 3 => Some(Ok(n)),
                        Err(e) => Some(Err(e)),
                        _ => None,
                    },
                )??;
                format!("guest iterated {at} -> {n}, DMA interrupt counts equal")
            }
            Scenario::Counter => {
                let at = count_before.unwrap_or(0);
                let n = lab.wait("20 more counts", from, 120, |t| {
                    counts(t).last().copied().filter(|n| *n >= at + 20)
                })?;
                format!("guest counted {at} -> {n}")
            }
        };
        println!("{}", run.line());
    }
    let last = match scenario {
        Scenario::Linux => json!(shell.map(|s| s.0)),
        Scenario::Vfio => json!(last_iteration(&lab.console.since(0))?),
        Scenario::Counter => {
            let c = counts(&lab.console.since(0));
            if let Some(w) = c.windows(2).find(|w| w[1] != w[0] + 1) {
                return Err(format!("the guest's count broke: {} then {}", w[0], w[1]));
            }
            json!(c.last())
        }
    };
    let _ = lab.qmp.cmd("quit", json!({}));
    // VMM_VFIO_TRACE=1 (lab-bench --vfio-trace): the vmm's own VFIO step times.
    let err = std::fs::read_to_string(&lab.stderr).unwrap_or_default();
    for l in err.lines().filter(|l| l.contains("vfio:")) {
        println!("lab-bench-trace {l}");
    }
    println!(
        "{DONE_PREFIX}{}",
        json!({"scenario": scenario.name(), "runs": a.runs, "last": last})
    );
    Ok(())
}

fn main() {
    // Once per lab boot (l1-init): how fast the lab runs syscalls, code and thread hand-offs.
    if std::env::args().nth(1).as_deref() == Some("--calibrate") {
        println!(
            "lab-bench-calibration {}",
            vmm_bench::calibrate::calibrate()
        );
        return;
    }
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("lab-driver: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&a) {
        // On stdout too: the host reads the lab's console, where stdout and stderr meet.
        println!("lab-bench-error {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_complete_iteration_lines_count_and_unequal_counts_fail() {
        let text = "vfio edu intx ok 3\niter 1 edu-irqs 1 msix0 1 msix1 1\niter 2 edu-irqs 2 msix0 2 msix1 2\niter 3 edu-ir";
        assert_eq!(iterations(text).len(), 2);
        assert_eq!(last_iteration(text), Ok(Some(2)));
        let lost = "iter 4 edu-irqs 3 msix0 4 msix1 4\n";
        assert!(last_iteration(lost).unwrap_err().contains("differ"));
        assert_eq!(last_iteration("booting\n"), Ok(None));
    }

    #[test]
    fn counts_skip_the_partial_last_line() {
        assert_eq!(counts("count 1\ncount 2\ncount 3"), vec![1, 2]);
    }

    #[test]
    fn shell_answer_gives_uptime_and_pid() {
        assert_eq!(
            shell_answer("alive-42-3 12.50 1"),
            Ok((12.5, "1".to_string()))
        );
        assert!(shell_answer("alive-42-3").is_err());
    }
}
