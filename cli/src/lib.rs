//! `paddock`, the command-line client of Paddock: tenants drive their VPSes,
//! provider admins manage tenants, nodes, plans and pools, all over the
//! controller's gRPC API (`paddock.v1`).
//!
//! `main.rs` only parses the command line and maps the result of [`run`] to
//! an exit code: 0 on success, the remote command's code for `exec`, 1 for
//! errors and 2 for usage errors.

pub mod args;
pub mod client;
pub mod commands;
pub mod context;
pub mod output;
pub mod terminal;
pub mod views;
pub mod wait;

use std::process::ExitCode;

pub use args::Cli;
pub use commands::CommandError;

/// Runs a parsed command line to completion on a fresh Tokio runtime.
pub fn run(cli: Cli) -> Result<ExitCode, CommandError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(CommandError::Runtime)?;
    let result = runtime.block_on(commands::dispatch(cli));
    // A blocking read of stdin (exec, console) cannot be cancelled; do not
    // wait for it when the command is done.
    runtime.shutdown_background();
    result
}
