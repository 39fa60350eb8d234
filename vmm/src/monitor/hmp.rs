//! HMP: the human monitor. Line-oriented text with a `(vmm) ` prompt; commands in [`COMMANDS`]
//! and `info` subcommands in [`INFO`].

use super::{run_state_name, CmdError, Controller, VmControl};
use crate::machine::RunState;

pub const PROMPT: &str = "(vmm) ";

type Handler<V> = fn(&mut Controller<V>, &str) -> Result<String, CmdError>;

/// One HMP command: names (first is canonical), argument synopsis, help text, handler.
pub struct Command<V: VmControl> {
    pub names: &'static [&'static str],
    pub params: &'static str,
    pub help: &'static str,
    pub run: Handler<V>,
}

pub fn commands<V: VmControl>() -> Vec<Command<V>> {
    vec![
        Command {
            names: &["help", "?"],
            params: "[cmd]",
            help: "show the help",
            run: help,
        },
        Command {
            names: &["info"],
            params: "[subcommand]",
            help: "show various information about the system state",
            run: info,
        },
        Command {
            names: &["stop", "s"],
            params: "",
            help: "stop emulation",
            run: |c, _| c.stop().map(|_| String::new()),
        },
        Command {
            names: &["cont", "c"],
            params: "",
            help: "resume emulation",
            run: |c, _| c.cont().map(|_| String::new()),
        },
        Command {
            names: &["quit", "q"],
            params: "",
            help: "quit the emulator",
            run: |c, _| {
                c.quit();
                Ok(String::new())
            },
        },
        Command {
            names: &["system_reset"],
            params: "",
            help: "reset the system",
            run: |c, _| c.system_reset().map(|_| String::new()),
        },
        Command {
            names: &["system_wakeup"],
            params: "",
            help: "wakeup guest from suspend",
            run: |c, _| c.system_wakeup().map(|_| String::new()),
        },
    ]
}

/// `info` subcommands.
pub fn info_commands<V: VmControl>() -> Vec<Command<V>> {
    vec![
        Command {
            names: &["status"],
            params: "",
            help: "show the current VM status (running|paused)",
            run: info_status,
        },
        Command {
            names: &["chardev"],
            params: "",
            help: "show the character devices",
            run: |c, _| {
                Ok(c.chardevs
                    .iter()
                    .map(|ch| format!("{}: filename={}\n", ch.label, ch.filename))
                    .collect())
            },
        },
        Command {
            names: &["cpus"],
            params: "",
            help: "show infos for each CPU",
            run: info_cpus,
        },
        Command {
            names: &["registers"],
            params: "[-a]",
            help: "show the cpu registers (-a: all CPUs)",
            run: info_registers,
        },
        Command {
            names: &["version"],
            params: "",
            help: "show the version of the VMM",
            run: |_, _| Ok(format!("{}\n", env!("CARGO_PKG_VERSION"))),
        },
    ]
}

/// The banner a client sees on connect, followed by the first prompt.
pub fn banner() -> String {
    to_wire(&format!(
        "vmm {} monitor - type 'help' for more information\n{PROMPT}",
        env!("CARGO_PKG_VERSION")
    ))
}

/// Monitor output on a chardev uses CRLF line ends, as QEMU's does.
fn to_wire(s: &str) -> String {
    s.replace('\n', "\r\n")
}

fn find<'a, V: VmControl>(table: &'a [Command<V>], name: &str) -> Option<&'a Command<V>> {
    table.iter().find(|c| c.names.contains(&name))
}

fn synopsis<V: VmControl>(prefix: &str, table: &[Command<V>]) -> String {
    table
        .iter()
        .map(|c| {
            let names = c.names.join("|");
            let params = if c.params.is_empty() {
                String::new()
            } else {
                format!(" {}", c.params)
            };
            format!("{prefix}{names}{params} -- {}\n", c.help)
        })
        .collect()
}

fn help<V: VmControl>(_: &mut Controller<V>, arg: &str) -> Result<String, CmdError> {
    let table = commands::<V>();
    match arg.split_whitespace().next() {
        None => Ok(synopsis("", &table)),
        Some("info") => Ok(synopsis("info ", &info_commands::<V>())),
        Some(name) => match table.iter().find(|c| c.names.contains(&name)) {
            Some(c) => Ok(synopsis("", std::slice::from_ref(c))),
            None => Ok(format!("unknown command: '{name}'\n")),
        },
    }
}

fn info<V: VmControl>(c: &mut Controller<V>, arg: &str) -> Result<String, CmdError> {
    let (sub, rest) = split_word(arg);
    if sub.is_empty() {
        return Ok(synopsis("info ", &info_commands::<V>()));
    }
    let table = info_commands::<V>();
    match find(&table, sub) {
        Some(cmd) => (cmd.run)(c, rest),
        None => Ok(format!("unknown command: 'info {sub}'\n")),
    }
}

fn info_status<V: VmControl>(c: &mut Controller<V>, _: &str) -> Result<String, CmdError> {
    let s = c.vm.run_state();
    Ok(match s {
        RunState::Running => "VM status: running\n".to_string(),
        RunState::Paused => "VM status: paused\n".to_string(),
        other => format!("VM status: paused ({})\n", run_state_name(other)),
    })
}

fn info_cpus<V: VmControl>(c: &mut Controller<V>, _: &str) -> Result<String, CmdError> {
    Ok(c.vm
        .describe_cpus()
        .iter()
        .map(|l| format!("{l}\n"))
        .collect())
}

fn info_registers<V: VmControl>(c: &mut Controller<V>, arg: &str) -> Result<String, CmdError> {
    let n = if arg.split_whitespace().any(|a| a == "-a") {
        c.vm.describe_cpus().len().max(1)
    } else {
        1
    };
    let mut out = String::new();
    for i in 0..n {
        // The machine's text starts with its own `CPU#N` header.
        if i > 0 {
            out.push('\n');
        }
        let regs = c.vm.describe_registers(i)?;
        out.push_str(&regs);
        if !regs.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

/// Runs one command line; returns its output text (LF line ends). Shared with QMP's
/// human-monitor-command.
pub fn run_line<V: VmControl>(c: &mut Controller<V>, line: &str) -> String {
    let (name, rest) = split_word(line.trim());
    if name.is_empty() {
        return String::new();
    }
    let table = commands::<V>();
    match find(&table, name) {
        Some(cmd) => match (cmd.run)(c, rest) {
            Ok(out) => out,
            Err(e) => format!("Error: {}\n", e.desc),
        },
        None => format!("unknown command: '{name}'\n"),
    }
}

/// One client's HMP session: collects input into lines.
#[derive(Default)]
pub struct Session {
    line: Vec<u8>,
    after_cr: bool,
    /// Echo typed keys (a raw-mode terminal shows nothing otherwise).
    echo: bool,
}

impl Session {
    /// A session that echoes what is typed, for a raw-mode terminal.
    pub fn with_echo() -> Session {
        Session {
            echo: true,
            ..Session::default()
        }
    }

    pub fn reset(&mut self) {
        self.line.clear();
        self.after_cr = false;
    }

    /// Feeds typed bytes; returns output (each command's output followed by a new prompt).
    pub fn on_input<V: VmControl>(&mut self, c: &mut Controller<V>, bytes: &[u8]) -> String {
        let mut out = String::new();
        for &b in bytes {
            let after_cr = std::mem::replace(&mut self.after_cr, b == b'\r');
            match b {
                b'\r' | b'\n' => {
                    // "\r\n" ends one line, not two.
                    if b == b'\n' && after_cr && self.line.is_empty() {
                        continue;
                    }
                    if self.echo {
                        out.push('\n');
                    }
                    let line = String::from_utf8_lossy(&self.line).into_owned();
                    self.line.clear();
                    out.push_str(&run_line(c, &line));
                    if c.exit().is_some() {
                        return to_wire(&out);
                    }
                    out.push_str(PROMPT);
                }
                // Backspace / DEL edit the line, as a terminal user expects.
                0x08 | 0x7f => {
                    let erased = self.line.pop().is_some();
                    if erased && self.echo {
                        out.push_str("\u{8} \u{8}");
                    }
                }
                _ if self.line.len() < 4096 => {
                    self.line.push(b);
                    if self.echo && (0x20..0x7f).contains(&b) {
                        out.push(char::from(b));
                    }
                }
                _ => {}
            }
        }
        to_wire(&out)
    }
}
