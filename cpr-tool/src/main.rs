//! `cpr-tool`: inspect, diff and verify live-update images of any version,
//! reading them through their embedded schema (cpr-format only, never the VMM).

mod cborjson;
mod cli;
mod error;
mod glob;
mod output;
mod renames;
mod sniff;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::error::{one_line, Outcome, ToolError, EXIT_ERROR};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        Err(err) => {
            eprintln!("cpr-tool: {}", one_line(&err));
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn run(cli: Cli) -> Result<Outcome, ToolError> {
    let _json = cli.json;
    match cli.command {
        Command::Inspect(_)
        | Command::Diff(_)
        | Command::Verify(_)
        | Command::Schema(_)
        | Command::Json(_)
        | Command::Encode(_) => Err(ToolError::NotFound {
            what: "the image reader",
            flag: "nothing",
        }),
    }
}
