//! Smoke test of the benchmark: `cpr-bench --quick` runs real updates end to end and writes
//! its table, CSV, JSON and plot. It checks the output's shape, never the timings.

use std::process::Command;

#[test]
fn quick_run_writes_table_csv_json_and_plot() {
    let out = std::env::temp_dir().join(format!("vmm-bench-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = Command::new(env!("CARGO_BIN_EXE_cpr-bench"))
        .args(["--quick", "--no-hugetlb", "--out"])
        .arg(&out)
        .output()
        .expect("run cpr-bench");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "cpr-bench failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("machine: "), "{stdout}");
    assert!(stdout.contains("| restart "), "{stdout}");

    let csv = std::fs::read_to_string(out.join("results.csv")).expect("results.csv");
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some(vmm_bench::report::CSV_HEADER));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    for scenario in [
        "restart",
        "restart-3-commands",
        "restart-teardown-in-exec",
        "restart-vcpus",
        "floor",
        "floor-deferred-teardown",
        "reboot-in-place",
        "reboot-in-image",
    ] {
        assert!(
            rows.iter().any(|r| r[0] == scenario),
            "no {scenario} row in {csv}"
        );
    }
    // Every restart row has a pause figure and its phases.
    for r in rows
        .iter()
        .filter(|r| ["restart", "restart-3-commands", "restart-vcpus"].contains(&r[0]))
    {
        assert!(r[5].parse::<f64>().is_ok(), "no pause median in {r:?}");
        assert!(r[12].contains("exec="), "no phases in {r:?}");
    }

    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("results.json")).expect("results.json"),
    )
    .expect("results.json is JSON");
    assert!(json["machine"]["cpus"].as_u64().is_some_and(|n| n > 0));
    let vcpus: Vec<u64> = json["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["scenario"] == "restart-vcpus")
        .filter_map(|r| r["vcpus"].as_u64())
        .collect();
    assert_eq!(vcpus, [1, 2], "the vCPU series, every count");
    let per = &json["per-extra-vcpu"];
    assert_eq!(
        (&per["from-vcpus"], &per["to-vcpus"]),
        (&1.into(), &2.into())
    );
    assert!(
        per["ms-90-low"].as_f64() <= per["ms-90-high"].as_f64(),
        "{per}"
    );
    assert!(stdout.contains("per extra vCPU (restart-vcpus, 2 against 1 vCPU): "));

    let png = std::fs::read(out.join("pause-vs-ram.png")).expect("plot written");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let _ = std::fs::remove_dir_all(&out);
}
