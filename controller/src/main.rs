//! `paddock-controller`: `init` a data dir once, then `run` (the default).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use paddock_config::ControllerConfig;

/// Every RPC, TLS record, JSON record and sled page the controller handles allocates: with
/// glibc's allocator about a fifth of its CPU under a stream of creates was spent in glibc,
/// mostly malloc and free (perf during the bench's `control-plane` scenario).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "paddock-controller", version, about = "The Paddock controller")]
struct Cli {
    /// Configuration file (TOML); built-in defaults when omitted.
    #[arg(long, short, global = true, env = "PADDOCK_CONTROLLER_CONFIG")]
    config: Option<PathBuf>,
    /// Log JSON lines (for log shippers) instead of text.
    #[arg(long, global = true, env = "PADDOCK_CONTROLLER_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Create the data dir, store, default plans, admin token and join token.
    Init,
    /// Serve the gRPC API (the default).
    Run,
    /// Copy the store of this config's data dir into its (empty) etcd prefix; the
    /// controller must be stopped. Then set `store = "etcd"`.
    MigrateStore {
        #[arg(long, value_enum)]
        from: Backend,
        #[arg(long, value_enum)]
        to: Backend,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Backend {
    Sled,
    Etcd,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = match &cli.config {
        Some(path) => ControllerConfig::load(path)?,
        None => ControllerConfig::default(),
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
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Run) {
            Command::Init => {
                let done = paddock_controller::init::init(&config).await?;
                println!("{}", done.admin_token);
                eprintln!(
                    "initialized {}; the line above is the admin token, shown only once. \
                     Agents join with the token in {}",
                    config.data_dir.display(),
                    done.join_token_path.display()
                );
                Ok(())
            }
            Command::MigrateStore { from, to } => {
                if (from, to) != (Backend::Sled, Backend::Etcd) {
                    anyhow::bail!("only --from sled --to etcd is supported");
                }
                let migrated = paddock_controller::init::migrate_sled_to_etcd(&config)?;
                eprintln!(
                    "copied {} keys (last event {}, last audit entry {}) to etcd {} under {:?}; \
                     set store = \"etcd\" in the config and start the controller",
                    migrated.keys,
                    migrated.last_event,
                    migrated.last_audit,
                    config.etcd_endpoints.join(","),
                    config.etcd_prefix
                );
                Ok(())
            }
            Command::Run => {
                match paddock_controller::agents::raise_open_file_limit() {
                    Ok(limit) => tracing::debug!(limit, "open-file limit"),
                    Err(error) => tracing::warn!(%error, "raising the open-file limit"),
                }
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
                    tracing::info!("shutting down");
                };
                paddock_controller::run(config, shutdown).await?;
                Ok(())
            }
        }
    })
}
