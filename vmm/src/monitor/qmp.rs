//! QMP: the JSON monitor protocol, as QEMU speaks it.
//!
//! A session starts with the greeting, accepts only `qmp_capabilities` until negotiated, then
//! dispatches commands from [`COMMANDS`]. Replies echo the request's `id`.

use serde_json::{json, Map, Value};

use super::json::{ordered_object, to_qemu_json, Message, Streamer};
use super::{
    hmp, run_state_name, CmdError, Controller, CprOp, ErrorClass, Event, ReplyTo, VmControl,
};

/// A QMP argument's expected JSON type, named as QEMU names it in errors.
#[allow(dead_code)] // Bool: for the cpr-* commands' flags
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgType {
    Str,
    Int,
    Bool,
    StrList,
}

impl ArgType {
    fn name(self) -> &'static str {
        match self {
            ArgType::Str => "string",
            ArgType::Int => "integer",
            ArgType::Bool => "boolean",
            ArgType::StrList => "array",
        }
    }
    fn matches(self, v: &Value) -> bool {
        match self {
            ArgType::Str => v.is_string(),
            ArgType::Int => v.is_i64() || v.is_u64(),
            ArgType::Bool => v.is_boolean(),
            ArgType::StrList => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
        }
    }
}

/// One argument a command accepts.
pub struct Arg {
    pub name: &'static str,
    pub ty: ArgType,
    pub required: bool,
}

type Handler<V> = fn(&mut Controller<V>, &Map<String, Value>) -> Result<Value, CmdError>;

/// One QMP command: its name, arguments and handler.
pub struct Command<V: VmControl> {
    pub name: &'static str,
    pub args: &'static [Arg],
    pub run: Handler<V>,
}

const NO_ARGS: &[Arg] = &[];

/// Every QMP command (qmp_capabilities is handled by the session itself).
pub fn commands<V: VmControl>() -> Vec<Command<V>> {
    vec![
        Command {
            name: "query-status",
            args: NO_ARGS,
            run: query_status,
        },
        Command {
            name: "query-version",
            args: NO_ARGS,
            run: |_, _| Ok(version_value()),
        },
        Command {
            name: "query-commands",
            args: NO_ARGS,
            run: query_commands,
        },
        Command {
            name: "stop",
            args: NO_ARGS,
            run: |c, _| c.stop().map(|_| json!({})),
        },
        Command {
            name: "cont",
            args: NO_ARGS,
            run: |c, _| c.cont().map(|_| json!({})),
        },
        Command {
            name: "quit",
            args: NO_ARGS,
            run: |c, _| {
                c.quit();
                Ok(json!({}))
            },
        },
        Command {
            name: "system_reset",
            args: NO_ARGS,
            run: |c, _| c.system_reset().map(|_| json!({})),
        },
        Command {
            name: "system_wakeup",
            args: NO_ARGS,
            run: |c, _| c.system_wakeup().map(|_| json!({})),
        },
        Command {
            name: "cpr-save",
            args: &[
                Arg {
                    name: "filename",
                    ty: ArgType::Str,
                    required: true,
                },
                Arg {
                    name: "mode",
                    ty: ArgType::Str,
                    required: true,
                },
                Arg {
                    name: "ram",
                    ty: ArgType::Str,
                    required: false,
                },
                Arg {
                    name: "digest",
                    ty: ArgType::Bool,
                    required: false,
                },
            ],
            run: |c, a| {
                // Reboot mode's RAM placement rides along in the mode string.
                let mut mode = str_arg(a, "mode");
                if let Some(ram) = a.get("ram").and_then(Value::as_str) {
                    if mode != "reboot" {
                        return Err(CmdError::generic(
                            "Parameter 'ram' is only valid in reboot mode",
                        ));
                    }
                    mode = format!("{mode},ram={ram}");
                }
                if let Some(d) = a.get("digest").and_then(Value::as_bool) {
                    if mode.split(',').next() != Some("reboot") {
                        return Err(CmdError::generic(
                            "Parameter 'digest' is only valid in reboot mode",
                        ));
                    }
                    mode = format!("{mode},digest={}", if d { "on" } else { "off" });
                }
                c.defer(CprOp::Save {
                    path: str_arg(a, "filename"),
                    mode,
                });
                Ok(json!({}))
            },
        },
        Command {
            name: "cpr-exec",
            args: &[Arg {
                name: "argv",
                ty: ArgType::StrList,
                required: true,
            }],
            run: |c, a| {
                let argv = a
                    .get("argv")
                    .and_then(Value::as_array)
                    .map(|v| {
                        v.iter()
                            .filter_map(Value::as_str)
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default();
                c.defer(CprOp::Exec { argv });
                Ok(json!({}))
            },
        },
        Command {
            name: "cpr-load",
            args: &[Arg {
                name: "filename",
                ty: ArgType::Str,
                required: true,
            }],
            run: |c, a| {
                c.defer(CprOp::Load {
                    path: str_arg(a, "filename"),
                });
                Ok(json!({}))
            },
        },
        Command {
            name: "query-cpr-blockers",
            args: NO_ARGS,
            run: |c, _| {
                Ok(c.cpr
                    .blockers
                    .as_ref()
                    .map(|b| b.1.clone())
                    .unwrap_or_else(|| json!({})))
            },
        },
        Command {
            name: "query-cpr",
            args: NO_ARGS,
            run: |c, _| Ok(c.cpr.to_json()),
        },
        Command {
            name: "query-ram-digest",
            args: NO_ARGS,
            run: |c, _| {
                let blocks = c.vm.ram_digest()?;
                Ok(json!({
                    "digest": super::hmp::digest_string(&blocks),
                    "blocks": blocks
                        .iter()
                        .map(|(n, size, crc)| json!({"name": n, "size": size, "crc32": crc}))
                        .collect::<Vec<_>>(),
                }))
            },
        },
        Command {
            name: "query-chardev",
            args: NO_ARGS,
            run: query_chardev,
        },
        Command {
            name: "human-monitor-command",
            args: &[
                Arg {
                    name: "command-line",
                    ty: ArgType::Str,
                    required: true,
                },
                Arg {
                    name: "cpu-index",
                    ty: ArgType::Int,
                    required: false,
                },
            ],
            run: human_monitor_command,
        },
    ]
}

fn str_arg(a: &Map<String, Value>, name: &str) -> String {
    a.get(name)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn version_value() -> Value {
    let (major, minor, micro) = crate::version::triple();
    json!({"qemu": {"major": major, "minor": minor, "micro": micro}, "package": "vmm"})
}

fn query_status<V: VmControl>(
    c: &mut Controller<V>,
    _: &Map<String, Value>,
) -> Result<Value, CmdError> {
    let s = c.vm.run_state();
    Ok(json!({
        "running": s == crate::machine::RunState::Running,
        "singlestep": false,
        "status": run_state_name(s),
    }))
}

fn query_chardev<V: VmControl>(
    c: &mut Controller<V>,
    _: &Map<String, Value>,
) -> Result<Value, CmdError> {
    Ok(c.chardevs
        .iter()
        .map(|ch| json!({"label": ch.label, "filename": ch.filename, "frontend-open": ch.frontend_open}))
        .collect())
}

fn query_commands<V: VmControl>(
    _: &mut Controller<V>,
    _: &Map<String, Value>,
) -> Result<Value, CmdError> {
    let mut names: Vec<Value> = vec![json!({"name": "qmp_capabilities"})];
    names.extend(commands::<V>().iter().map(|c| json!({"name": c.name})));
    Ok(Value::Array(names))
}

fn human_monitor_command<V: VmControl>(
    c: &mut Controller<V>,
    args: &Map<String, Value>,
) -> Result<Value, CmdError> {
    let line = args
        .get("command-line")
        .and_then(Value::as_str)
        .unwrap_or("");
    Ok(Value::String(hmp::run_line(c, line)))
}

/// Checks arguments the way QEMU's input visitor does: unknown, missing and mistyped ones.
fn check_args(spec: &[Arg], args: &Map<String, Value>) -> Result<(), CmdError> {
    if let Some(k) = args
        .keys()
        .find(|k| !spec.iter().any(|a| a.name == k.as_str()))
    {
        return Err(CmdError::generic(format!("Parameter '{k}' is unexpected")));
    }
    for a in spec {
        match args.get(a.name) {
            None if a.required => {
                return Err(CmdError::generic(format!(
                    "Parameter '{}' is missing",
                    a.name
                )))
            }
            Some(v) if !a.ty.matches(v) => {
                return Err(CmdError::generic(format!(
                    "Invalid parameter type for '{}', expected: {}",
                    a.name,
                    a.ty.name()
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

cpr_format::state! {
    /// A QMP session handed over by a live update: negotiation done or not, and input
    /// received but not yet executed (a partial message, or commands queued behind
    /// cpr-exec).
    #[section(name = "monitor.qmp", version = 1, min_version = 1, required = true)]
    #[derive(Eq)]
    pub struct QmpSessionState {
        pub negotiated: bool,
        pub pending_input: cpr_format::Bytes,
    }
}

/// One client's QMP session.
#[derive(Default)]
pub struct Session {
    negotiated: bool,
    streamer: Streamer,
    /// Received bytes not yet fed to the streamer: reading stops while a deferred command
    /// (cpr-save/exec/load) waits for the event loop, so it runs before what follows it.
    unread: Vec<u8>,
}

impl Session {
    /// The greeting sent on connect; also restarts negotiation.
    pub fn greeting(&mut self) -> String {
        *self = Session::default();
        let qmp = json!({"version": version_value(), "capabilities": []});
        format!("{}\r\n", ordered_object(&[("QMP", &qmp)]))
    }

    pub fn is_negotiated(&self) -> bool {
        self.negotiated
    }

    /// The session as a live update hands it over.
    pub fn save(&self) -> QmpSessionState {
        let mut pending = self.streamer.pending().to_vec();
        pending.extend_from_slice(&self.unread);
        QmpSessionState {
            negotiated: self.negotiated,
            pending_input: cpr_format::Bytes(pending),
        }
    }

    /// A session continued from a handed-over one: no greeting, pending input is read next.
    pub fn restore(state: &QmpSessionState) -> Session {
        Session {
            negotiated: state.negotiated,
            streamer: Streamer::default(),
            unread: state.pending_input.0.clone(),
        }
    }

    /// Feeds client bytes; returns the replies to send, one JSON object per line.
    pub fn on_input<V: VmControl>(&mut self, c: &mut Controller<V>, bytes: &[u8]) -> String {
        self.unread.extend_from_slice(bytes);
        self.process(c)
    }

    /// Executes what was received, up to a deferred command (whose reply the event loop
    /// sends) or quit.
    pub fn process<V: VmControl>(&mut self, c: &mut Controller<V>) -> String {
        let mut out = String::new();
        let mut used = 0;
        while used < self.unread.len() && c.deferred.is_none() && c.exit().is_none() {
            let b = self.unread[used];
            used += 1;
            for msg in self.streamer.feed(&[b]) {
                let reply = self.dispatch(c, msg);
                if !reply.is_empty() {
                    out.push_str(&reply);
                    out.push_str("\r\n");
                }
            }
        }
        self.unread.drain(..used);
        out
    }

    fn dispatch<V: VmControl>(&mut self, c: &mut Controller<V>, msg: Message) -> String {
        let req = match msg {
            Ok(Value::Object(req)) => req,
            Ok(_) => {
                return error_reply(&CmdError::generic("QMP input must be a JSON object"), None)
            }
            Err(desc) => return error_reply(&CmdError::generic(desc), None),
        };
        let id = req.get("id").cloned();
        let result = self.execute(c, &req);
        if let Some(d) = c.deferred.as_mut() {
            if result.is_ok() {
                // Answered by the event loop once the command has run.
                let hmp_text = matches!(d.reply, Some(ReplyTo::Hmp));
                d.reply = Some(ReplyTo::Qmp { id, hmp_text });
                return String::new();
            }
            c.deferred = None;
        }
        match result {
            Ok(ret) => return_reply(&ret, id.as_ref()),
            Err(e) => error_reply(&e, id.as_ref()),
        }
    }

    fn execute<V: VmControl>(
        &mut self,
        c: &mut Controller<V>,
        req: &Map<String, Value>,
    ) -> Result<Value, CmdError> {
        for k in req.keys() {
            if !matches!(k.as_str(), "execute" | "exec-oob" | "arguments" | "id") {
                return Err(CmdError::generic(format!(
                    "QMP input member '{k}' is unexpected"
                )));
            }
        }
        if req.contains_key("exec-oob") {
            return Err(CmdError::generic(
                "QMP input member 'exec-oob' is unexpected",
            ));
        }
        let name = match req.get("execute") {
            None => return Err(CmdError::generic("QMP input lacks member 'execute'")),
            Some(Value::String(s)) => s.as_str(),
            Some(_) => {
                return Err(CmdError::generic(
                    "QMP input member 'execute' must be a string",
                ))
            }
        };
        let empty = Map::new();
        let args = match req.get("arguments") {
            None => &empty,
            Some(Value::Object(m)) => m,
            Some(_) => {
                return Err(CmdError::generic(
                    "QMP input member 'arguments' must be an object",
                ))
            }
        };
        let not_found = |desc: String| CmdError {
            class: ErrorClass::CommandNotFound,
            desc,
        };
        if name == "qmp_capabilities" {
            if self.negotiated {
                return Err(not_found(
                    "Capabilities negotiation is already complete, command ignored".into(),
                ));
            }
            check_args(
                &[Arg {
                    name: "enable",
                    ty: ArgType::StrList,
                    required: false,
                }],
                args,
            )?;
            if let Some(cap) = args
                .get("enable")
                .and_then(Value::as_array)
                .and_then(|a| a.first())
            {
                let cap = cap.as_str().unwrap_or("");
                return Err(CmdError::generic(format!(
                    "Capability '{cap}' not available"
                )));
            }
            self.negotiated = true;
            return Ok(json!({}));
        }
        if !self.negotiated {
            return Err(not_found(
                "Expecting capabilities negotiation with 'qmp_capabilities'".into(),
            ));
        }
        let table = commands::<V>();
        let cmd = table
            .iter()
            .find(|cmd| cmd.name == name)
            .ok_or_else(|| not_found(format!("The command {name} has not been found")))?;
        check_args(cmd.args, args)?;
        (cmd.run)(c, args)
    }
}

/// `{"return": ret[, "id": id]}`.
pub fn return_reply(ret: &Value, id: Option<&Value>) -> String {
    match id {
        Some(id) => ordered_object(&[("return", ret), ("id", id)]),
        None => ordered_object(&[("return", ret)]),
    }
}

/// `{"error": {"class": .., "desc": ..}[, "id": id]}`.
pub fn error_reply(e: &CmdError, id: Option<&Value>) -> String {
    let err = json!({"class": e.class.as_str(), "desc": e.desc});
    match id {
        Some(id) => ordered_object(&[("error", &err), ("id", id)]),
        None => ordered_object(&[("error", &err)]),
    }
}

/// An event as a QMP line: `{"timestamp": {"seconds": S, "microseconds": U}, "event": N[, "data": D]}`.
pub fn event_line(ev: &Event) -> String {
    let data = match &ev.data {
        Some(d) => format!(", \"data\": {}", to_qemu_json(d)),
        None => String::new(),
    };
    format!(
        "{{\"timestamp\": {{\"seconds\": {}, \"microseconds\": {}}}, \"event\": {}{data}}}\r\n",
        ev.seconds,
        ev.microseconds,
        Value::String(ev.name.to_string())
    )
}
