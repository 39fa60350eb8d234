//! Lab benchmark records: the line `lab-driver` prints inside the lab for each live update,
//! and how `lab-bench` reads them back from the lab's console into rows.
//!
//! One line per update: `lab-bench-run {JSON}` with the scenario, the run number, the pause
//! and phases from query-cpr (microseconds, as the vmm reports them) and what the liveness
//! check saw afterwards. The lab's console is a serial port: lines may carry `\r` or escape
//! codes before the prefix, so the reader looks for the prefix anywhere in a line.

use serde_json::{json, Value};

use crate::scenario::Samples;

/// Starts each per-update line.
pub const RUN_PREFIX: &str = "lab-bench-run ";
/// Ends a scenario that completed: `lab-bench-done {JSON}` (scenario, runs, final check).
pub const DONE_PREFIX: &str = "lab-bench-done ";

/// What the lab measured for one live update.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub scenario: String,
    /// 1-based, in order.
    pub run: u32,
    pub pause_us: f64,
    /// Phase name → microseconds (query-cpr's `last.phases-us`).
    pub phases_us: Vec<(String, f64)>,
    /// What showed the guest alive after the update (free text for the reader).
    pub check: String,
}

impl Run {
    /// The `lab-bench-run` line.
    pub fn line(&self) -> String {
        let phases: serde_json::Map<String, Value> = self
            .phases_us
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        let v = json!({
            "scenario": self.scenario,
            "run": self.run,
            "pause-us": self.pause_us,
            "phases-us": phases,
            "check": self.check,
        });
        format!("{RUN_PREFIX}{v}")
    }

    /// Builds a record from query-cpr's reply after cpr-load.
    pub fn from_query_cpr(scenario: &str, run: u32, reply: &Value) -> Result<Run, String> {
        let last = &reply["last"];
        let pause_us = last["pause-us"]
            .as_f64()
            .ok_or_else(|| format!("query-cpr has no last.pause-us: {reply}"))?;
        let phases_us = last["phases-us"]
            .as_object()
            .ok_or_else(|| format!("query-cpr has no last.phases-us: {reply}"))?
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
            .collect();
        Ok(Run {
            scenario: scenario.to_string(),
            run,
            pause_us,
            phases_us,
            check: String::new(),
        })
    }

    fn from_json(v: &Value) -> Result<Run, String> {
        let field = |k: &str| v.get(k).ok_or_else(|| format!("no {k:?} in {v}"));
        Ok(Run {
            scenario: field("scenario")?
                .as_str()
                .ok_or("scenario is not a string")?
                .to_string(),
            run: field("run")?
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or("run is not a number")?,
            pause_us: field("pause-us")?
                .as_f64()
                .ok_or("pause-us is not a number")?,
            phases_us: field("phases-us")?
                .as_object()
                .ok_or("phases-us is not an object")?
                .iter()
                .map(|(k, x)| {
                    x.as_f64()
                        .map(|x| (k.clone(), x))
                        .ok_or_else(|| format!("phase {k} is not a number"))
                })
                .collect::<Result<_, _>>()?,
            check: v["check"].as_str().unwrap_or_default().to_string(),
        })
    }
}

/// The JSON after `prefix` on a console line, if the line has it.
fn payload<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    line.find(prefix)
        .map(|i| line[i + prefix.len()..].trim_end_matches(['\r', '\n', ' ']))
}

/// Every run line of one scenario on the console, in order, and its `done` record if the
/// scenario finished. A line that has the prefix but does not parse is an error (a
/// garbled console must not silently drop samples).
pub fn parse_console(console: &str, scenario: &str) -> Result<(Vec<Run>, Option<Value>), String> {
    let mut runs = Vec::new();
    let mut done = None;
    for (i, line) in console.lines().enumerate() {
        if let Some(p) = payload(line, RUN_PREFIX) {
            let v: Value = serde_json::from_str(p)
                .map_err(|e| format!("console line {}: bad run record {p:?}: {e}", i + 1))?;
            let r = Run::from_json(&v).map_err(|e| format!("console line {}: {e}", i + 1))?;
            if r.scenario == scenario {
                runs.push(r);
            }
        } else if let Some(p) = payload(line, DONE_PREFIX) {
            let v: Value = serde_json::from_str(p)
                .map_err(|e| format!("console line {}: bad done record {p:?}: {e}", i + 1))?;
            if v["scenario"] == scenario {
                done = Some(v);
            }
        }
    }
    for (i, r) in runs.iter().enumerate() {
        if r.run as usize != i + 1 {
            return Err(format!(
                "run records out of order: record {} says run {}",
                i + 1,
                r.run
            ));
        }
    }
    Ok((runs, done))
}

/// The runs as bench samples (milliseconds), for the report's rows.
pub fn samples(runs: &[Run]) -> Samples {
    let mut s = Samples::default();
    for r in runs {
        s.pause_ms.push(r.pause_us / 1000.0);
        for (k, v) in &r.phases_us {
            s.phases_ms.entry(k.clone()).or_default().push(v / 1000.0);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(n: u32) -> Run {
        Run {
            scenario: "linux".into(),
            run: n,
            pause_us: 1500.0 + f64::from(n),
            phases_us: vec![("exec".into(), 300.0), ("restore".into(), 200.5)],
            check: "shell 1 answered".into(),
        }
    }

    #[test]
    fn run_lines_read_back_from_a_noisy_console() {
        let console = format!(
            "[    1.0] some kernel line\r\n\x1b[?7l{}\r\n{}\n{}\nlab-bench-done {{\"scenario\":\"linux\",\"runs\":2}}\n",
            run(1).line(),
            run(1).line().replace("linux", "vfio"),
            run(2).line()
        );
        let (runs, done) = parse_console(&console, "linux").unwrap();
        assert_eq!(runs, vec![run(1), run(2)]);
        assert_eq!(done.unwrap()["runs"], 2);
        let s = samples(&runs);
        assert_eq!(s.pause_ms, vec![1.501, 1.502]);
        assert_eq!(s.phases_ms["restore"], vec![0.2005, 0.2005]);
        let (vfio, vdone) = parse_console(&console, "vfio").unwrap();
        assert_eq!(vfio.len(), 1);
        assert!(vdone.is_none());
    }

    #[test]
    fn a_garbled_or_missing_run_is_an_error() {
        let bad = format!("{RUN_PREFIX}{{\"scenario\":\"linux\",\"run\":1}}\n");
        assert!(parse_console(&bad, "linux")
            .unwrap_err()
            .contains("no \"pause-us\""));
        let gap = format!("{}\n{}\n", run(1).line(), run(3).line());
        assert!(parse_console(&gap, "linux")
            .unwrap_err()
            .contains("out of order"));
    }

    #[test]
    fn query_cpr_reply_becomes_a_run() {
        let reply = json!({"mode": "restart", "state": "none",
            "last": {"pause-us": 512.5, "phases-us": {"exec": 100.0, "restore": 50.0}}});
        let r = Run::from_query_cpr("vfio", 4, &reply).unwrap();
        assert_eq!((r.run, r.pause_us, r.phases_us.len()), (4, 512.5, 2));
        assert!(Run::from_query_cpr("vfio", 1, &json!({"state": "none"})).is_err());
    }
}
