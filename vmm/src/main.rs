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
        cli::Action::Help => {
            print!("{}", cli::HELP);
            ExitCode::SUCCESS
        }
        cli::Action::Version => {
            println!("vmm version {}", version::version());
            println!(
                "A KVM virtual machine monitor with live update (cpr-save / cpr-exec / cpr-load)"
            );
            ExitCode::SUCCESS
        }
        cli::Action::DumpSchema => {
            use std::io::Write;
            // write_all, not print!: a closed pipe (`| head`) is an error, not a panic.
            let written = cpr::schema::dump()
                .map_err(|e| format!("cannot serialise the schema: {e}"))
                .and_then(|json| {
                    std::io::stdout()
                        .write_all(json.as_bytes())
                        .map_err(|e| format!("cannot write the schema: {e}"))
                });
            match written {
                Ok(()) => ExitCode::SUCCESS,
                Err(msg) => {
                    eprintln!("vmm: {msg}");
                    ExitCode::from(1)
                }
            }
        }
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

fn run(config: &cli::VmmConfig) -> ExitCode {
    match event_loop::run(config) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("vmm: {}", error_chain(&e));
            ExitCode::from(1)
        }
    }
}
