//! Shape test of the lab benchmark: `lab-bench --runs 2 --one-boot` boots the lab once
//! (~30 s; bench/lab/boot.sh), runs every scenario's live updates and the floor program in
//! it, and writes its table, CSV and JSON. Checks the output's shape and that every update's
//! liveness check ran, never the timings. Needs what tests/lab/REQUIREMENTS lists; fails
//! (never skips) without it.

use std::process::Command;

use serde_json::Value;

const ROWS: &[(&str, &str)] = &[
    ("lab-restart-linux", "linux"),
    ("lab-restart-vfio-edu-e1000e", "vfio"),
    ("lab-restart-counter", "counter"),
];

#[test]
fn one_lab_boot_writes_a_row_per_scenario_with_floor_and_phases() {
    let out = std::env::temp_dir().join(format!("vmm-lab-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = Command::new(env!("CARGO_BIN_EXE_lab-bench"))
        .args(["--runs", "2", "--one-boot", "--out"])
        .arg(&out)
        .output()
        .expect("run lab-bench");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "lab-bench failed:\n{stdout}\n--- stderr ---\n{stderr}"
    );
    assert!(
        stdout.contains("Lab figures, lab (nested KVM under TCG)"),
        "{stdout}"
    );

    let csv = std::fs::read_to_string(out.join("results.csv")).expect("results.csv");
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some(vmm_bench::report::CSV_HEADER));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), ROWS.len(), "{csv}");
    for (name, _) in ROWS {
        let r = rows
            .iter()
            .find(|r| r[0] == *name)
            .unwrap_or_else(|| panic!("no {name} row in {csv}"));
        assert_eq!(r[4], "2", "runs of {name}: {r:?}");
        for (col, what) in [
            (5, "pause median"),
            (8, "floor median"),
            (11, "deferred floor"),
        ] {
            assert!(r[col].parse::<f64>().is_ok(), "no {what} in {r:?}");
        }
        for phase in ["write-image=", "exec=", "machine=", "restore="] {
            assert!(r[12].contains(phase), "no {phase} in the phases of {r:?}");
        }
    }

    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("results.json")).expect("results.json"),
    )
    .expect("results.json is JSON");
    assert_eq!(json["machine"]["kind"], "lab (nested KVM under TCG)");
    assert!(json["machine"]["host"]["cpus"]
        .as_u64()
        .is_some_and(|n| n > 0));
    assert_eq!(json["boots"].as_array().map(Vec::len), Some(1), "one boot");
    let runs = json["runs"].as_array().expect("runs");
    for (_, scenario) in ROWS {
        let checks: Vec<&str> = runs
            .iter()
            .filter(|r| r["scenario"] == *scenario)
            .filter_map(|r| r["check"].as_str())
            .collect();
        assert_eq!(checks.len(), 2, "{scenario}: {runs:?}");
        let expect = match *scenario {
            "linux" => "answered, guest uptime",
            "vfio" => "DMA interrupt counts equal",
            _ => "guest counted",
        };
        assert!(checks.iter().all(|c| c.contains(expect)), "{checks:?}");
    }
    let md = std::fs::read_to_string(out.join("results.md")).expect("results.md");
    assert!(md.contains("| lab-restart-linux "), "{md}");
    let _ = std::fs::remove_dir_all(&out);
}
