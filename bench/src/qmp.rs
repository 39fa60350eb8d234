//! A small QMP client: one JSON object per line, events kept aside.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long any one reply may take (touching 8 GiB of fresh RAM takes tens of seconds here).
const PATIENCE: Duration = Duration::from_secs(600);

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Events seen since the last [`Qmp::take_events`].
    events: Vec<Value>,
}

impl Qmp {
    /// Connects to the vmm's QMP socket (retrying while it starts) and negotiates.
    pub fn connect(path: &Path, child: &mut Child) -> Result<Qmp, String> {
        let start = Instant::now();
        let stream = loop {
            if let Ok(s) = UnixStream::connect(path) {
                break s;
            }
            if let Ok(Some(st)) = child.try_wait() {
                return Err(format!("vmm exited with {st} before listening"));
            }
            if start.elapsed() > PATIENCE {
                return Err(format!("{} never appeared", path.display()));
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        stream
            .set_read_timeout(Some(PATIENCE))
            .map_err(|e| format!("QMP socket timeout: {e}"))?;
        let writer = stream
            .try_clone()
            .map_err(|e| format!("QMP socket clone: {e}"))?;
        let mut q = Qmp {
            reader: BufReader::new(stream),
            writer,
            events: Vec::new(),
        };
        let greeting = q.line()?;
        if greeting.get("QMP").is_none() {
            return Err(format!("not a QMP greeting: {greeting}"));
        }
        q.cmd("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    fn line(&mut self) -> Result<Value, String> {
        let mut s = String::new();
        let n = self
            .reader
            .read_line(&mut s)
            .map_err(|e| format!("QMP read: {e}"))?;
        if n == 0 {
            return Err("QMP: the vmm closed the connection".into());
        }
        serde_json::from_str(&s).map_err(|e| format!("QMP: bad JSON {s:?}: {e}"))
    }

    /// Runs one command and returns its `return` value; an `error` reply is an Err.
    pub fn cmd(&mut self, name: &str, args: Value) -> Result<Value, String> {
        let mut req = json!({ "execute": name });
        if args.as_object().is_some_and(|o| !o.is_empty()) {
            req["arguments"] = args;
        }
        let mut text = req.to_string();
        text.push('\n');
        self.writer
            .write_all(text.as_bytes())
            .map_err(|e| format!("QMP write ({name}): {e}"))?;
        loop {
            let v = self.line().map_err(|e| format!("{name}: {e}"))?;
            if v.get("event").is_some() {
                self.events.push(v);
            } else if let Some(r) = v.get("return") {
                return Ok(r.clone());
            } else if let Some(e) = v.get("error") {
                return Err(format!("{name}: {}", e["desc"].as_str().unwrap_or("error")));
            }
        }
    }

    /// The `data` of the event named `name`, reading on until it arrives (a command's
    /// events may follow its reply); forgets the events seen before it.
    pub fn wait_event(&mut self, name: &str) -> Result<Value, String> {
        loop {
            if let Some(i) = self.events.iter().position(|e| e["event"] == name) {
                let data = self.events[i]["data"].clone();
                self.events.drain(..=i);
                return Ok(data);
            }
            let v = self
                .line()
                .map_err(|e| format!("waiting for event {name}: {e}"))?;
            if v.get("event").is_some() {
                self.events.push(v);
            }
        }
    }
}
