//! The `paddock` binary: parse, run, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;
use paddock_cli::args::report_parse_error;
use paddock_cli::Cli;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return report_parse_error(&err),
    };
    match paddock_cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            err.exit_code()
        }
    }
}
