//! The live-update pause benchmark: real restart-mode and reboot-mode updates of a real
//! guest by the real `vmm`, with the floor program (`cpr-floor`) measured in the same run.
//!
//! Pause = last vCPU stopped .. first vCPU running again. Prints a table, writes
//! `results.csv`, `results.json` and `pause-vs-ram.png` into `--out`.
//!
//! Usage: cargo run --release -p vmm-bench -- [--quick] [--runs N] [--sizes 256M,1G,4G,8G]
//!        [--vcpus 1,2,4,8] [--no-hugetlb] [--thp] [--pages 4k,hugetlb,thp] [--only restart,vcpus,reboot]
//!        [--out DIR] [--vmm PATH]
use std::path::{Path, PathBuf};
use std::process::Command;

use vmm_bench::host::{self, HugePages, ShmemThp};
use vmm_bench::report::{self, Row};
use vmm_bench::scenario::{self, Env, Flow, Pages, Samples};
use vmm_bench::stats::{self, summarize};

struct Args {
    quick: bool,
    runs: usize,
    sizes: Vec<u64>,
    vcpus: Vec<u8>,
    hugetlb: bool,
    thp: bool,
    small: bool,
    only: Vec<String>,
    out: Option<PathBuf>,
    vmm: Option<PathBuf>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad size {s:?} (e.g. 256M, 4G)"))?;
    match unit {
        "M" | "" => Ok(n),
        "G" => Ok(n * 1024),
        _ => Err(format!("bad size {s:?} (e.g. 256M, 4G)")),
    }
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        quick: false,
        runs: 10,
        sizes: vec![256, 1024, 4096, 8192],
        vcpus: vec![1, 2, 4, 8],
        hugetlb: true,
        thp: false,
        small: true,
        only: vec!["restart".into(), "vcpus".into(), "reboot".into()],
        out: None,
        vmm: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(o) = it.next() {
        let mut val = || it.next().cloned().ok_or(format!("{o} needs a value"));
        match o.as_str() {
            "--quick" => a.quick = true,
            "--runs" => {
                a.runs = val()?
                    .parse()
                    .map_err(|_| "--runs needs a positive number".to_string())?
            }
            "--sizes" => {
                a.sizes = val()?
                    .split(',')
                    .map(parse_size)
                    .collect::<Result<_, _>>()?
            }
            "--vcpus" => {
                a.vcpus = val()?
                    .split(',')
                    .map(|v| v.parse().map_err(|_| format!("bad vCPU count {v:?}")))
                    .collect::<Result<_, _>>()?
            }
            "--no-hugetlb" => a.hugetlb = false,
            "--thp" => a.thp = true,
            "--pages" => {
                let v = val()?;
                a.small = false;
                a.hugetlb = false;
                a.thp = false;
                for p in v.split(',') {
                    match p {
                        "4k" => a.small = true,
                        "hugetlb" => a.hugetlb = true,
                        "thp" | "shmem-thp" => a.thp = true,
                        other => return Err(format!("--pages: unknown page kind {other:?}")),
                    }
                }
            }
            "--only" => a.only = val()?.split(',').map(String::from).collect(),
            "--out" => a.out = Some(PathBuf::from(val()?)),
            "--vmm" => a.vmm = Some(PathBuf::from(val()?)),
            "-h" | "--help" => {
                return Err(
                    "usage: cpr-bench [--quick] [--runs N] [--sizes 256M,1G,4G,8G] \
                            [--vcpus 1,2,4,8] [--no-hugetlb] [--thp] [--pages 4k,hugetlb,thp] \
                            [--only restart,vcpus,reboot] [--out DIR] [--vmm PATH]"
                        .into(),
                )
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    if a.quick {
        a.runs = 2;
        a.sizes = vec![256];
        a.vcpus = vec![1, 2];
    }
    if a.runs == 0 || a.sizes.contains(&0) || a.vcpus.contains(&0) {
        return Err("--runs, sizes and vCPU counts must be positive".into());
    }
    Ok(a)
}

/// Fewer runs for big guests: touching their RAM between updates takes seconds.
fn runs_for(args: &Args, mib: u64) -> usize {
    match mib {
        0..=1024 => args.runs,
        1025..=4096 => args.runs.div_ceil(2).max(3).min(args.runs),
        _ => args.runs.div_ceil(3).max(3).min(args.runs),
    }
}

/// The vmm and cpr-floor binaries of the same build profile as this one; under cargo they
/// are (re)built first so the figures are for the current source.
fn programs(args: &Args) -> Result<(PathBuf, PathBuf), String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let dir = exe.parent().ok_or("no directory for this binary")?;
    // Under `cargo test` the binary runs from target/PROFILE/deps? No: CARGO_BIN_EXE points
    // at target/PROFILE, where the other binaries land too.
    let release = dir.ends_with("release");
    if let Ok(cargo) = std::env::var("CARGO") {
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "-q",
            "-p",
            "vmm",
            "--bin",
            "vmm",
            "-p",
            "vmm-bench",
            "--bin",
            "cpr-floor",
        ]);
        if release {
            cmd.arg("--release");
        }
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
        let st = cmd.status().map_err(|e| format!("cargo build: {e}"))?;
        if !st.success() {
            return Err("cargo build of vmm and cpr-floor failed".into());
        }
    }
    let vmm = args.vmm.clone().unwrap_or_else(|| dir.join("vmm"));
    let floor = dir.join("cpr-floor");
    for p in [&vmm, &floor] {
        if !p.is_file() {
            return Err(format!(
                "{} missing: cargo build --release -p vmm -p vmm-bench",
                p.display()
            ));
        }
    }
    Ok((vmm, floor))
}

fn row(scenario: &str, mib: u64, vcpus: u8, pages: Pages) -> Row {
    Row {
        scenario: scenario.into(),
        ram_mib: mib,
        vcpus,
        pages: pages.name().into(),
        samples: Samples::default(),
        floor: None,
        floor_deferred: None,
        load: host::load_avg(),
        note: String::new(),
    }
}

/// One restart-mode scenario and its floors, all measured now. With `ab` (4 KiB pages),
/// also the vmm with the old mm freed inside execve, and the floor with it deferred.
/// Without `one_command`, the one-command row is left out (the vCPU series measures it
/// interleaved, see [`vcpu_series`]).
fn restart_pair(
    env: &Env,
    args: &Args,
    mib: u64,
    vcpus: u8,
    pages: Pages,
    ab: bool,
    one_command: bool,
) -> Vec<Row> {
    let runs = runs_for(args, mib);
    let mut r = row("restart", mib, vcpus, pages);
    let mut f = row("floor", mib, vcpus, pages);
    let mut fd = row("floor-deferred-teardown", mib, vcpus, pages);
    let mut three = row("restart-3-commands", mib, vcpus, pages);
    let mut old = row("restart-teardown-in-exec", mib, vcpus, pages);
    eprintln!(
        "restart {mib} MiB, {vcpus} vCPU(s), {} pages, {runs} runs (load {:.1})",
        pages.name(),
        r.load
    );
    // Root-only knobs, held for this scenario only and restored on drop.
    let guard: Result<(Option<HugePages>, Option<ShmemThp>), String> = match pages {
        Pages::Small => Ok((None, None)),
        Pages::Hugetlb => HugePages::reserve(mib).map(|h| (Some(h), None)),
        Pages::Thp => ShmemThp::set("advise").map(|t| (None, Some(t))),
    };
    if let Err(e) = guard {
        r.note = format!("skipped: {e}");
        f.note = r.note.clone();
        three.note = r.note.clone();
        return vec![r, three, f];
    }
    let floor = |deferred: bool, row: &mut Row| match scenario::floor(
        env, mib, vcpus, pages, runs, deferred,
    ) {
        Ok(s) => {
            let sum = summarize(&s.pause_ms);
            row.samples = s;
            sum
        }
        Err(e) => {
            row.note = format!("failed: {e}");
            None
        }
    };
    let classic = floor(false, &mut f);
    let deferred = floor(true, &mut fd);
    for x in [&mut r, &mut three, &mut old] {
        x.floor = classic;
        x.floor_deferred = deferred;
    }
    let mut flows = vec![(&mut three, Flow::ThreeCommands)];
    if one_command {
        flows.insert(0, (&mut r, Flow::OneCommand));
    }
    for (x, flow) in flows {
        match scenario::restart(env, mib, vcpus, pages, runs, false, flow) {
            Ok(s) => x.samples = s,
            Err(e) => x.note = format!("failed: {e}"),
        }
    }
    let mut rows = if one_command {
        vec![r, three]
    } else {
        vec![three]
    };
    if ab {
        match scenario::restart(env, mib, vcpus, pages, runs, true, Flow::OneCommand) {
            Ok(s) => old.samples = s,
            Err(e) => old.note = format!("failed: {e}"),
        }
        rows.push(old);
    }
    rows.push(f);
    rows.push(fd);
    drop(guard);
    for x in &rows {
        if !x.note.is_empty() {
            eprintln!("  {}: {}", x.scenario, x.note);
        }
    }
    rows
}

/// The one-command pause at each vCPU count (`restart-vcpus` rows, floors from `rows`),
/// measured interleaved: rounds of a few updates per count, each count in turn, so that
/// the host's speed drifting over the series is not read as per-vCPU cost (on the build
/// machines it drifts over minutes: one build's cost per vCPU ranged 0.16-0.21 ms from one
/// run to the next).
fn vcpu_series(env: &Env, args: &Args, mib: u64, rows: &[Row]) -> Vec<Row> {
    const PER_ROUND: usize = 4;
    let floor_of = |name: &str, v: u8| {
        rows.iter()
            .find(|r| r.scenario == name && r.ram_mib == mib && r.vcpus == v && r.pages == "4k")
            .and_then(Row::pause)
    };
    let mut series: Vec<Row> = args
        .vcpus
        .iter()
        .map(|&v| {
            let mut r = row("restart-vcpus", mib, v, Pages::Small);
            r.floor = floor_of("floor", v);
            r.floor_deferred = floor_of("floor-deferred-teardown", v);
            r
        })
        .collect();
    eprintln!(
        "restart {mib} MiB, vCPUs {:?} interleaved, {} runs each (load {:.1})",
        args.vcpus,
        args.runs,
        host::load_avg()
    );
    let mut left = args.runs;
    while left > 0 {
        let n = left.min(PER_ROUND);
        for r in series.iter_mut().filter(|r| r.note.is_empty()) {
            match scenario::restart(env, mib, r.vcpus, Pages::Small, n, false, Flow::OneCommand) {
                Ok(s) => {
                    r.samples.pause_ms.extend(s.pause_ms);
                    for (k, v) in s.phases_ms {
                        r.samples.phases_ms.entry(k).or_default().extend(v);
                    }
                }
                Err(e) => {
                    r.note = format!("failed: {e}");
                    eprintln!("  restart-vcpus {}: {}", r.vcpus, r.note);
                }
            }
        }
        left -= n;
    }
    series
}

/// What each vCPU adds to the pause over the series: fewest against most vCPUs.
fn per_extra_vcpu(series: &[Row]) -> Option<(u8, u8, stats::PerExtra)> {
    let measured: Vec<&Row> = series.iter().filter(|r| r.note.is_empty()).collect();
    let one = measured.iter().min_by_key(|r| r.vcpus)?;
    let many = measured.iter().max_by_key(|r| r.vcpus)?;
    let p = stats::per_extra(
        &one.samples.pause_ms,
        one.vcpus,
        &many.samples.pause_ms,
        many.vcpus,
    )?;
    Some((one.vcpus, many.vcpus, p))
}

fn main() {
    // `--replot DIR`: redraw DIR/pause-vs-ram.png from DIR/results.json.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--replot") {
        let dir = PathBuf::from(argv.get(2).map_or(".", String::as_str));
        let res = std::fs::read_to_string(dir.join("results.json"))
            .map_err(|e| format!("{}: {e}", dir.join("results.json").display()))
            .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
            .and_then(|v| report::plot(&report::rows_from_json(&v), &dir.join("pause-vs-ram.png")));
        if let Err(e) = res {
            eprintln!("cpr-bench: {e}");
            std::process::exit(1);
        }
        return;
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cpr-bench: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&args) {
        eprintln!("cpr-bench: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), String> {
    let (vmm, floor) = programs(args)?;
    // Images on tmpfs: a restart-mode image lives only until the next process reads it.
    let scratch = PathBuf::from(format!("/dev/shm/vmm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let env = Env {
        vmm,
        floor,
        guest: Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/guests/counter"),
        scratch: scratch.clone(),
    };
    let machine = host::describe();
    let load_start = host::load_avg();
    let mut rows = Vec::new();
    let want = |s: &str| args.only.iter().any(|o| o == s);

    if want("restart") {
        let mut kinds = Vec::new();
        if args.small {
            kinds.push(Pages::Small);
        }
        if args.hugetlb {
            kinds.push(Pages::Hugetlb);
        }
        if args.thp {
            kinds.push(Pages::Thp);
        }
        for pages in kinds {
            for &mib in &args.sizes {
                rows.extend(restart_pair(
                    &env,
                    args,
                    mib,
                    1,
                    pages,
                    pages == Pages::Small,
                    true,
                ));
            }
        }
    }
    let mut per_vcpu = None;
    if want("vcpus") {
        let mib = if args.quick { 256 } else { 1024 };
        // Floors and the three-command form per count (not again for a count the RAM
        // series measured).
        for &v in &args.vcpus {
            let done = rows.iter().any(|r| {
                r.scenario == "restart-3-commands"
                    && r.ram_mib == mib
                    && r.vcpus == v
                    && r.pages == "4k"
            });
            if !done {
                rows.extend(restart_pair(&env, args, mib, v, Pages::Small, false, false));
            }
        }
        let series = vcpu_series(&env, args, mib, &rows);
        per_vcpu = per_extra_vcpu(&series);
        rows.extend(series);
    }
    if want("reboot") {
        let sizes: Vec<u64> = if args.quick {
            vec![256]
        } else {
            args.sizes.iter().copied().filter(|m| *m <= 1024).collect()
        };
        for in_image in [false, true] {
            for &mib in &sizes {
                let name = if in_image {
                    "reboot-in-image"
                } else {
                    "reboot-in-place"
                };
                let mut r = row(name, mib, 1, Pages::Small);
                r.pages = "file".into();
                eprintln!("{name} {mib} MiB, {} runs (load {:.1})", args.runs, r.load);
                match scenario::reboot(&env, mib, in_image, runs_for(args, mib)) {
                    Ok(s) => r.samples = s,
                    Err(e) => {
                        r.note = format!("failed: {e}");
                        eprintln!("  {}", r.note);
                    }
                }
                rows.push(r);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);

    let out = args.out.clone().unwrap_or_else(|| {
        if args.quick {
            std::env::temp_dir().join("vmm-bench-quick")
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("results")
        }
    });
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let load_end = host::load_avg();
    println!(
        "machine: {} ({} CPUs, {} GiB, Linux {}); load average {load_start:.1} at start, \
         {load_end:.1} at end",
        machine["cpu"].as_str().unwrap_or("?"),
        machine["cpus"],
        machine["mem-gib"],
        machine["kernel"].as_str().unwrap_or("?"),
    );
    let mut markdown = report::table(&rows);
    let mut json = report::json(&rows, &machine, &command);
    if let Some((one, many, p)) = per_vcpu {
        let line = format!(
            "\nper extra vCPU (restart-vcpus, {many} against {one} vCPU): {:.3} ms \
             (90% bootstrap interval {:.3}-{:.3} ms)",
            p.estimate, p.low, p.high
        );
        markdown.push_str(&line);
        json["per-extra-vcpu"] = serde_json::json!({
            "from-vcpus": one,
            "to-vcpus": many,
            "ms": p.estimate,
            "ms-90-low": p.low,
            "ms-90-high": p.high,
        });
    }
    println!("{markdown}");
    report::write_results(&out, &rows, &json, &markdown)?;
    if let Err(e) = report::plot(&rows, &out.join("pause-vs-ram.png")) {
        eprintln!("cpr-bench: no plot: {e}");
    }
    println!("results in {}", out.display());
    if rows.iter().any(|r| r.note.starts_with("failed")) {
        return Err("some scenarios failed (see the table)".into());
    }
    Ok(())
}
