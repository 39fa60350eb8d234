//! `vmm`: a KVM virtual machine monitor driven like QEMU (command line, HMP, QMP).

mod chardev;
mod cli;
mod cpr;
mod event_loop;
// The machine is compiled once, in the library; the front end uses it through `crate::machine`.
use vmm::{machine, vfio};
mod monitor;

mod version;

use std::process::ExitCode;

/// An error and its sources, joined with ": " (messages never repeat their source).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

fn main() -> ExitCode {
    // First: after a cpr-exec this is when the new binary got control (pause breakdown).
    cpr::timing::mark_main_entered();
    let action = match cli::parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vmm: {e}");
            return ExitCode::from(1);
        }
    };
    match action {
        cli::Action::Help => write_stdout(cli::HELP, "help"),
        cli::Action::Version => write_stdout(
            &format!(
                "vmm version {}\nA KVM virtual machine monitor with live update \
                 (cpr-save / cpr-exec / cpr-load)\n",
                version::version()
            ),
            "version",
        ),
        cli::Action::DumpSchema => match cpr::schema::dump() {
            Ok(json) => write_stdout(&json, "schema"),
            Err(e) => {
                eprintln!("vmm: cannot serialise the schema: {e}");
                ExitCode::from(1)
            }
        },
        cli::Action::Run(config) if config.only_cpr_capable => {
            match cpr::capable::check_only_cpr_capable(&config) {
                Ok(()) => run(&config),
                Err(msg) => {
                    eprintln!("vmm: {msg}");
                    ExitCode::from(1)
                }
            }
        }
        cli::Action::Run(config) => run(&config),
    }
}

/// Writes front-end output (help, version, schema) to stdout.
///
/// Not print!: that panics when stdout is a closed pipe (`vmm -version | head -1`). A reader
/// that stopped reading wanted no more, so a broken pipe ends quietly with success, as the
/// shell tools (and QEMU, killed silently by SIGPIPE) do; any other write error is reported.
fn write_stdout(text: &str, what: &str) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmm: cannot write the {what}: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(config: &cli::VmmConfig) -> ExitCode {
    match event_loop::run(config) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("vmm: {}", error_chain(&e));
            ExitCode::from(1)
        }
    }
}
