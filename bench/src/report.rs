//! The results: a table on stdout, CSV and JSON files, and a PNG plot.

use std::path::Path;

use comfy_table::{presets::ASCII_MARKDOWN, Table};
use serde_json::{json, Value};

use crate::scenario::{Samples, RESTART_PHASES};
use crate::stats::{summarize, Summary};

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    /// restart, reboot-in-place, reboot-in-image, floor.
    pub scenario: String,
    pub ram_mib: u64,
    pub vcpus: u8,
    pub pages: String,
    pub samples: Samples,
    /// The floor program's pause for the same RAM, vCPUs and pages, measured beside it.
    pub floor: Option<Summary>,
    /// The floor with the old mm freed after the interval (`cpr-floor --defer-teardown`).
    pub floor_deferred: Option<Summary>,
    /// Load average when the scenario started.
    pub load: f64,
    /// Why the scenario has no figures (skipped or failed).
    pub note: String,
}

impl Row {
    pub fn pause(&self) -> Option<Summary> {
        summarize(&self.samples.pause_ms)
    }

    /// The phase medians as `NAME{between}VALUE` items, `decimals` after the point, joined
    /// by `join` (the table and the CSV spell them differently).
    fn phases_text(&self, between: &str, decimals: usize, join: &str) -> String {
        self.phase_medians()
            .iter()
            .map(|(n, v)| format!("{n}{between}{v:.decimals$}"))
            .collect::<Vec<_>>()
            .join(join)
    }

    /// Median of each phase, restart phases in pause order, then any others.
    pub fn phase_medians(&self) -> Vec<(String, f64)> {
        let mut names: Vec<String> = RESTART_PHASES
            .iter()
            .filter(|p| self.samples.phases_ms.contains_key(**p))
            .map(|p| p.to_string())
            .collect();
        for k in self.samples.phases_ms.keys() {
            // Before the last vCPU stopped: not part of the pause.
            if !names.contains(k) && k != "stop-vcpus" {
                names.push(k.clone());
            }
        }
        names
            .into_iter()
            .filter_map(|n| {
                let m = summarize(&self.samples.phases_ms[&n])?.median;
                Some((n, m))
            })
            .collect()
    }

    fn gbps(&self) -> (Option<f64>, Option<f64>) {
        (
            summarize(&self.samples.save_gbps).map(|s| s.median),
            summarize(&self.samples.load_gbps).map(|s| s.median),
        )
    }

    fn ram(&self) -> String {
        if self.ram_mib >= 1024 && self.ram_mib.is_multiple_of(1024) {
            format!("{} GiB", self.ram_mib / 1024)
        } else {
            format!("{} MiB", self.ram_mib)
        }
    }
}

fn f3(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.3}"))
}

/// The table for stdout and the README.
pub fn table(rows: &[Row]) -> String {
    let mut t = Table::new();
    t.load_style(ASCII_MARKDOWN);
    t.set_header(vec![
        "scenario",
        "RAM",
        "vCPUs",
        "pages",
        "n",
        "pause median ms",
        "p90",
        "max",
        "floor median ms",
        "pause - floor",
        "floor, deferred teardown",
        "phases (median ms)",
        "load",
    ]);
    for r in rows {
        let p = r.pause();
        let phases = r.phases_text(" ", 2, ", ");
        let (sg, lg) = r.gbps();
        let mut extra = phases;
        if let (Some(s), Some(l)) = (sg, lg) {
            extra.push_str(&format!("; RAM write {s:.2} GB/s, load {l:.2} GB/s"));
        }
        if !r.note.is_empty() {
            extra = r.note.clone();
        }
        t.add_row(vec![
            r.scenario.clone(),
            r.ram(),
            r.vcpus.to_string(),
            r.pages.clone(),
            p.map_or(0, |p| p.n).to_string(),
            f3(p.map(|p| p.median)),
            f3(p.map(|p| p.p90)),
            f3(p.map(|p| p.max)),
            f3(r.floor.map(|f| f.median)),
            f3(p.zip(r.floor).map(|(p, f)| p.median - f.median)),
            f3(r.floor_deferred.map(|f| f.median)),
            extra,
            format!("{:.1}", r.load),
        ]);
    }
    t.to_string()
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub const CSV_HEADER: &str = "scenario,ram_mib,vcpus,pages,runs,pause_median_ms,pause_p90_ms,\
pause_max_ms,floor_median_ms,floor_p90_ms,floor_max_ms,floor_deferred_median_ms,phases_median_ms,save_gbps,load_gbps,\
load_avg,note";

pub fn csv(rows: &[Row]) -> String {
    let mut s = String::from(CSV_HEADER);
    s.push('\n');
    for r in rows {
        let p = r.pause();
        let phases = r.phases_text("=", 3, ";");
        let (sg, lg) = r.gbps();
        let fields = [
            r.scenario.clone(),
            r.ram_mib.to_string(),
            r.vcpus.to_string(),
            r.pages.clone(),
            p.map_or(0, |p| p.n).to_string(),
            f3(p.map(|p| p.median)),
            f3(p.map(|p| p.p90)),
            f3(p.map(|p| p.max)),
            f3(r.floor.map(|f| f.median)),
            f3(r.floor.map(|f| f.p90)),
            f3(r.floor.map(|f| f.max)),
            f3(r.floor_deferred.map(|f| f.median)),
            phases,
            f3(sg),
            f3(lg),
            format!("{:.2}", r.load),
            r.note.clone(),
        ];
        s.push_str(
            &fields
                .iter()
                .map(|f| csv_field(f))
                .collect::<Vec<_>>()
                .join(","),
        );
        s.push('\n');
    }
    s
}

fn summary_json(s: Option<Summary>) -> Value {
    s.map_or(
        Value::Null,
        |s| json!({"median": s.median, "p90": s.p90, "max": s.max, "n": s.n}),
    )
}

pub fn json(rows: &[Row], machine: &Value, command: &str) -> Value {
    let rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            let (sg, lg) = r.gbps();
            json!({
                "scenario": r.scenario,
                "ram-mib": r.ram_mib,
                "vcpus": r.vcpus,
                "pages": r.pages,
                "pause-ms": summary_json(r.pause()),
                "pause-samples-ms": r.samples.pause_ms,
                "floor-ms": summary_json(r.floor),
                "floor-deferred-teardown-ms": summary_json(r.floor_deferred),
                "phases-median-ms": r.phase_medians().into_iter().map(|(k, v)| (k, json!(v))).collect::<serde_json::Map<_, _>>(),
                "phases-samples-ms": r.samples.phases_ms,
                "save-gbps": sg,
                "load-gbps": lg,
                "load-avg": r.load,
                "note": r.note,
            })
        })
        .collect();
    json!({ "machine": machine, "command": command, "rows": rows })
}

/// Writes `results.csv`, `results.json` (`json`, pretty) and `results.md` (`markdown`) into
/// `out`; an error names the file.
pub fn write_results(out: &Path, rows: &[Row], json: &Value, markdown: &str) -> Result<(), String> {
    let write = |name: &str, bytes: &[u8]| {
        let p = out.join(name);
        std::fs::write(&p, bytes).map_err(|e| format!("{}: {e}", p.display()))
    };
    write("results.csv", csv(rows).as_bytes())?;
    let pretty = serde_json::to_string_pretty(json).map_err(|e| format!("results.json: {e}"))?;
    write("results.json", pretty.as_bytes())?;
    write("results.md", markdown.as_bytes())
}

/// Rows back from a `results.json` (scenario, size, vCPUs, pages, pause samples): to redraw
/// the plot without re-running.
pub fn rows_from_json(v: &Value) -> Vec<Row> {
    v["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| Row {
                    scenario: r["scenario"].as_str().unwrap_or("").to_string(),
                    ram_mib: r["ram-mib"].as_u64().unwrap_or(0),
                    vcpus: r["vcpus"].as_u64().unwrap_or(0) as u8,
                    pages: r["pages"].as_str().unwrap_or("").to_string(),
                    samples: Samples {
                        pause_ms: r["pause-samples-ms"]
                            .as_array()
                            .map(|a| a.iter().filter_map(Value::as_f64).collect())
                            .unwrap_or_default(),
                        ..Samples::default()
                    },
                    floor: None,
                    floor_deferred: None,
                    load: r["load-avg"].as_f64().unwrap_or(0.0),
                    note: String::new(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Without the `plot` feature there is no plot.
#[cfg(not(feature = "plot"))]
pub fn plot(_rows: &[Row], _path: &Path) -> Result<(), String> {
    Err("vmm-bench was built without the plot feature".into())
}

/// Pause against RAM size: restart mode per page size, the floor beside each.
#[cfg(feature = "plot")]
pub fn plot(rows: &[Row], path: &Path) -> Result<(), String> {
    use plotters::prelude::*;
    register_font()?;
    /// One line of the plot: label, (GiB, ms) points, colour, dashed (a floor).
    type Series = (String, Vec<(f64, f64)>, RGBColor, bool);
    let series: Vec<Series> = [
        ("restart", "4k", RED, false),
        ("restart", "hugetlb", BLUE, false),
        ("restart", "shmem-thp", GREEN, false),
        ("restart-teardown-in-exec", "4k", MAGENTA, false),
        ("floor", "4k", RED, true),
        ("floor", "hugetlb", BLUE, true),
        ("floor", "shmem-thp", GREEN, true),
        ("floor-deferred-teardown", "4k", BLACK, true),
    ]
    .iter()
    .filter_map(|(scen, pages, color, dashed)| {
        let mut pts: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.scenario == *scen && r.pages == *pages && r.vcpus == 1)
            .filter_map(|r| Some((r.ram_mib as f64 / 1024.0, r.pause()?.median)))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        pts.dedup_by(|a, b| a.0 == b.0);
        (!pts.is_empty()).then(|| (format!("{scen} ({pages})"), pts, *color, *dashed))
    })
    .collect();
    if series.is_empty() {
        return Err("nothing to plot".into());
    }
    let xmax = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.0))
        .fold(0.25f64, f64::max);
    let ymax = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .fold(1.0f64, f64::max);
    let ymin = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .fold(ymax, f64::min);
    let root = BitMapBackend::new(path, (1000, 640)).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<_>| format!("plot {}: {e:?}", path.display());
    root.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Restart-mode pause vs guest RAM (median); floors dashed",
            ("sans-serif", 24),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        // Log scale: the floors and the vmm span three orders of magnitude.
        .build_cartesian_2d(0f64..xmax * 1.05, (ymin * 0.7..ymax * 1.5).log_scale())
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("guest RAM (GiB)")
        .y_desc("pause (ms, log scale)")
        .draw()
        .map_err(e)?;
    for (name, pts, color, dashed) in series {
        let style = ShapeStyle::from(&color).stroke_width(if dashed { 1 } else { 3 });
        if dashed {
            chart
                .draw_series(DashedLineSeries::new(pts.clone(), 8, 6, style))
                .map_err(e)?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        } else {
            chart
                .draw_series(LineSeries::new(pts.clone(), style))
                .map_err(e)?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
                });
        }
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

/// Text needs a TTF font: the first DejaVu/Liberation sans found on the system.
#[cfg(feature = "plot")]
fn register_font() -> Result<(), String> {
    const CANDIDATES: &[&str] = &[
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    ];
    let bytes = CANDIDATES
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .ok_or("no TTF font found for the plot's text (apt-get install fonts-dejavu-core)")?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, bytes)
        .map_err(|_| "the font file is not a usable TTF".to_string())
}
