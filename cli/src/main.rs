//! The `paddock` binary: parse, run, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;
use paddock_cli::args::report_parse_error;
use paddock_cli::Cli;

fn main() -> ExitCode {
    quiet_on_closed_pipe();
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

/// `paddock list -o json | head -c1` must end quietly, as coreutils do, not panic in
/// `println!`: Rust ignores SIGPIPE, so a write to a closed pipe is an error every print
/// turns into a panic. With the default action the process ends by the signal at that write.
/// The CLI's sockets are TCP, whose writes never raise SIGPIPE (std and tokio send with
/// MSG_NOSIGNAL), so only its standard streams are affected.
fn quiet_on_closed_pipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: called first in main, before any thread exists; SIG_DFL installs no handler
    // code, so no async-signal-safety requirement applies.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}
