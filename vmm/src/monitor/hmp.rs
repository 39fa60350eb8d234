//! HMP: the human monitor. Line-oriented text with a `(vmm) ` prompt; commands in [`COMMANDS`]
//! and `info` subcommands in [`INFO`].

use super::{run_state_name, CmdError, Controller, CprOp, ReplyTo, VmControl};
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
            names: &["cpr-save"],
            params: "filename mode [ram=in-place|in-image] [digest=on|off]",
            help: "stop the guest and save its state for a live update (mode: restart, reboot)",
            run: cpr_save,
        },
        Command {
            names: &["cpr-exec"],
            params: "argv0 [args...]",
            help: "exec a new VMM in place (its command line must include -S; or \
                   -incoming FILE: save to FILE first, and the new VMM loads it at once)",
            run: cpr_exec,
        },
        Command {
            names: &["cpr-load"],
            params: "filename",
            help: "load the state saved by cpr-save and resume the guest if it was running",
            run: cpr_load,
        },
        Command {
            names: &["cpr-transfer"],
            params: "unix:PATH",
            help: "hand the guest to a vmm started with -incoming cpr:unix:PATH",
            run: cpr_transfer,
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
            names: &["cpr"],
            params: "",
            help: "show the live-update mode, state and last pause time",
            run: |c, _| Ok(c.cpr.describe()),
        },
        Command {
            names: &["cpr-blockers"],
            params: "",
            help: "show what blocks a live update in each mode",
            run: |c, _| {
                Ok(c.cpr
                    .blockers
                    .as_ref()
                    .map(|b| b.0.clone())
                    .unwrap_or_default())
            },
        },
        Command {
            names: &["ram-digest"],
            params: "",
            help: "show a CRC-32 of each guest RAM block (stop the guest first)",
            run: info_ram_digest,
        },
        Command {
            names: &["version"],
            params: "",
            help: "show the version of the VMM",
            run: |_, _| Ok(format!("{}\n", crate::version::version())),
        },
    ]
}

/// The banner a client sees on connect, followed by the first prompt.
pub fn banner() -> String {
    to_wire(&format!(
        "vmm {} monitor - type 'help' for more information\n{PROMPT}",
        crate::version::version()
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

fn cpr_save<V: VmControl>(c: &mut Controller<V>, arg: &str) -> Result<String, CmdError> {
    let words: Vec<&str> = arg.split_whitespace().collect();
    match words.as_slice() {
        [path, mode] => {
            c.defer(CprOp::Save {
                path: path.to_string(),
                mode: mode.to_string(),
            });
            Ok(String::new())
        }
        // Reboot mode's options ride along in the mode string: `reboot,ram=in-image`.
        [path, mode, opts @ ..] => {
            c.defer(CprOp::Save {
                path: path.to_string(),
                mode: format!("{mode},{}", opts.join(",")),
            });
            Ok(String::new())
        }
        _ => Err(CmdError::generic(
            "usage: cpr-save filename mode [ram=in-place|in-image] [digest=on|off]",
        )),
    }
}

fn cpr_exec<V: VmControl>(c: &mut Controller<V>, arg: &str) -> Result<String, CmdError> {
    let argv: Vec<String> = arg.split_whitespace().map(String::from).collect();
    if argv.is_empty() {
        return Err(CmdError::generic("usage: cpr-exec argv0 [args...]"));
    }
    c.defer(CprOp::Exec { argv });
    Ok(String::new())
}

fn cpr_transfer<V: VmControl>(c: &mut Controller<V>, arg: &str) -> Result<String, CmdError> {
    match arg.split_whitespace().collect::<Vec<_>>().as_slice() {
        [uri] => {
            c.defer(CprOp::Transfer {
                uri: uri.to_string(),
            });
            Ok(String::new())
        }
        _ => Err(CmdError::generic("usage: cpr-transfer unix:PATH")),
    }
}

fn cpr_load<V: VmControl>(c: &mut Controller<V>, arg: &str) -> Result<String, CmdError> {
    match arg.split_whitespace().collect::<Vec<_>>().as_slice() {
        [path] => {
            c.defer(CprOp::Load {
                path: path.to_string(),
            });
            Ok(String::new())
        }
        _ => Err(CmdError::generic("usage: cpr-load filename")),
    }
}

/// All blocks' CRCs as one hex string (what tests compare).
pub fn digest_string(blocks: &[(String, u64, u32)]) -> String {
    blocks
        .iter()
        .map(|(_, _, crc)| format!("{crc:08x}"))
        .collect()
}

fn info_ram_digest<V: VmControl>(c: &mut Controller<V>, _: &str) -> Result<String, CmdError> {
    let blocks = c.vm.ram_digest()?;
    let mut out = String::new();
    for (name, size, crc) in &blocks {
        out.push_str(&format!("{name}: size {size:#x} crc32 {crc:08x}\n"));
    }
    out.push_str(&format!("digest: {}\n", digest_string(&blocks)));
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
            Ok(out) => {
                if let Some(d) = c.deferred.as_mut() {
                    d.reply.get_or_insert(ReplyTo::Hmp);
                }
                out
            }
            Err(e) => format!("Error: {}\n", e.desc),
        },
        None => format!("unknown command: '{name}'\n"),
    }
}

cpr_format::state! {
    /// An HMP session handed over by a live update: the line being typed, and input
    /// received but not yet read (commands typed behind cpr-exec).
    #[section(name = "monitor.hmp", version = 1, min_version = 1, required = true)]
    #[derive(Eq)]
    pub struct HmpSessionState {
        pub line: cpr_format::Bytes,
        pub pending_input: cpr_format::Bytes,
        /// The session echoes typed keys (raw-mode terminal).
        pub echo: bool,
    }
}

/// One client's HMP session: collects input into lines.
#[derive(Default)]
pub struct Session {
    line: Vec<u8>,
    after_cr: bool,
    /// Echo typed keys (a raw-mode terminal shows nothing otherwise).
    echo: bool,
    /// Bytes not yet read: reading stops while a deferred command waits for the event loop.
    unread: Vec<u8>,
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
        self.unread.clear();
    }

    /// The session as a live update hands it over.
    pub fn save(&self) -> HmpSessionState {
        HmpSessionState {
            line: cpr_format::Bytes(self.line.clone()),
            pending_input: cpr_format::Bytes(self.unread.clone()),
            echo: self.echo,
        }
    }

    /// A session continued from a handed-over one (no banner).
    pub fn restore(state: &HmpSessionState) -> Session {
        Session {
            line: state.line.0.clone(),
            after_cr: false,
            echo: state.echo,
            unread: state.pending_input.0.clone(),
        }
    }

    /// Feeds typed bytes; returns output (each command's output followed by a new prompt).
    pub fn on_input<V: VmControl>(&mut self, c: &mut Controller<V>, bytes: &[u8]) -> String {
        self.unread.extend_from_slice(bytes);
        self.process(c)
    }

    /// Reads what was typed, up to a deferred command (the event loop prints its output
    /// and the prompt) or quit.
    pub fn process<V: VmControl>(&mut self, c: &mut Controller<V>) -> String {
        let mut out = String::new();
        let mut used = 0;
        while used < self.unread.len() {
            let b = self.unread[used];
            used += 1;
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
                        self.unread.clear();
                        return to_wire(&out);
                    }
                    if c.deferred.is_some() {
                        // Take the "\n" of a "\r\n" with the line it ends.
                        if b == b'\r' && self.unread.get(used) == Some(&b'\n') {
                            used += 1;
                            self.after_cr = false;
                        }
                        break;
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
        self.unread.drain(..used);
        to_wire(&out)
    }
}

/// The HMP output of a deferred command, then the prompt.
pub fn deferred_reply(result: &Result<String, CmdError>) -> String {
    let text = match result {
        Ok(t) => t.clone(),
        Err(e) => format!("Error: {}\n", e.desc),
    };
    to_wire(&format!("{text}{PROMPT}"))
}
