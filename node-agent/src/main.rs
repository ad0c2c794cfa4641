//! `paddock-agent`: run the node agent (default), or manage templates.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use paddock_agent::{runtime, template};
use paddock_config::AgentConfig;

#[derive(Parser)]
#[command(name = "paddock-agent", version, about = "The Paddock node agent")]
struct Cli {
    /// Configuration file (TOML); built-in defaults when omitted.
    #[arg(long, short, global = true, env = "PADDOCK_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Log JSON lines (for log shippers) instead of text.
    #[arg(long, global = true, env = "PADDOCK_AGENT_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Register with the controller and serve it (the default).
    Run,
    /// Build or list OS templates.
    #[command(subcommand)]
    Template(TemplateCommand),
}

#[derive(Subcommand)]
enum TemplateCommand {
    /// Build a template into the state dir (`busybox`).
    Build {
        name: String,
        /// Rebuild even if the template exists.
        #[arg(long)]
        force: bool,
    },
    /// List the templates installed on this node.
    List,
}

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    if args.nth(1).as_deref() == Some(OsStr::new(runtime::INTERNAL_ARG)) {
        // A re-executed runtime helper: single-threaded, no tokio, no config.
        let code = runtime::run_internal(args.collect());
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = match &cli.config {
        Some(path) => AgentConfig::load(path)?,
        None => AgentConfig::default(),
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr);
    if cli.log_json {
        logs.json().init();
    } else {
        logs.init();
    }
    match cli.command.unwrap_or(Command::Run) {
        Command::Template(TemplateCommand::Build { name, force }) => {
            let path = template::build(&config.state_dir, &name, force)?;
            println!("template {name} ready at {}", path.display());
            Ok(())
        }
        Command::Template(TemplateCommand::List) => {
            for name in template::list(&config.state_dir)? {
                println!("{name}");
            }
            Ok(())
        }
        Command::Run => {
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(async move {
                let shutdown = async {
                    let mut terminate =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                            .ok();
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = async {
                            match terminate.as_mut() {
                                Some(signal) => { signal.recv().await; }
                                None => std::future::pending::<()>().await,
                            }
                        } => {}
                    }
                    tracing::info!("shutting down; VPSes keep running");
                };
                paddock_agent::run(config, shutdown).await?;
                Ok(())
            })
        }
    }
}
