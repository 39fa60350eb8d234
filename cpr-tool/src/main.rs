//! `cpr-tool`: inspect, diff and verify live-update images of any version,
//! reading them through their embedded schema (cpr-format only, never the VMM).

mod cborjson;
mod cli;
mod cmd;
mod compat;
mod diff;
mod error;
mod flatten;
mod glob;
mod load;
mod ojson;
mod output;
mod renames;
mod sniff;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, SchemaCommand};
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
    let json = cli.json;
    match &cli.command {
        Command::Inspect(a) => cmd::inspect::run(a, json),
        Command::Diff(a) => cmd::diff::run(a, json),
        Command::Verify(a) => cmd::verify::run(a, json),
        Command::Schema(SchemaCommand::Dump(a)) => cmd::schema::dump(a, json),
        Command::Schema(SchemaCommand::Check(a)) => cmd::schema::check(a, json),
        Command::Json(a) => cmd::encode::json(a),
        Command::Encode(a) => cmd::encode::encode(a, json),
    }
}
