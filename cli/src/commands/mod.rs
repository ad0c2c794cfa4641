//! One function per command: unpack the arguments, call the controller,
//! print the result. Dispatch from the parsed command line lives here too.

pub mod admin;
pub mod backup;
pub mod context;
pub mod exec;
pub mod snapshot;
pub mod vps;

use std::process::ExitCode;

use clap::CommandFactory;

use crate::args::{Cli, Command};
use crate::client::{ClientError, Session};
use crate::context::{config_path, Config, ContextError, EnvOverrides};
use crate::output::{OutputError, Printer};
use crate::terminal::TerminalError;
use crate::wait::WaitError;

/// Why a command failed; `main` prints it as `error: ...`.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error(transparent)]
    Wait(#[from] WaitError),
    #[error(transparent)]
    Exec(#[from] exec::ExecError),
    #[error(transparent)]
    Terminal(#[from] TerminalError),
    /// A combination of arguments clap cannot express; exit code 2.
    #[error("{0}")]
    Usage(String),
    #[error("aborted: nothing was changed")]
    Aborted,
    /// Some of a batch failed; each was reported on its own line already.
    #[error("{0}")]
    Incomplete(String),
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
}

impl CommandError {
    /// 2 for usage errors (like clap's own), 1 for everything else.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Usage(_) => ExitCode::from(2),
            _ => ExitCode::FAILURE,
        }
    }
}

/// Loads the config, picks the context and connects to its controller. `request_id` goes with
/// every call of the command (see `--request-id`).
pub async fn connect(context: Option<&str>, request_id: &str) -> Result<Session, CommandError> {
    let config = Config::load(&config_path()?)?;
    let target = config.resolve(context, &EnvOverrides::from_env())?;
    Ok(Session::connect(target, request_id.to_owned()).await?)
}

/// Runs the parsed command line; returns the process exit code on success
/// (only `exec` and `console` return anything but success).
pub async fn dispatch(cli: Cli) -> Result<ExitCode, CommandError> {
    let printer = Printer::new(cli.output, cli.no_headers);
    let context = cli.context.as_deref();
    let request_id = cli
        .request_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let connect = |context| connect(context, &request_id);
    let printer = &printer;
    match cli.command {
        Command::Context(command) => context::run(printer, command)?,
        Command::Completion { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "paddock",
                &mut std::io::stdout(),
            );
        }
        Command::Exec(args) => return exec::exec(&connect(context).await?, args).await,
        Command::Console(args) => return exec::console(&connect(context).await?, args).await,
        Command::Admin(command) => admin::run(&connect(context).await?, printer, command).await?,
        Command::Backup(command) => backup::run(&connect(context).await?, printer, command).await?,
        Command::Create(args) => vps::create(&connect(context).await?, printer, args).await?,
        Command::List(tenant) => vps::list(&connect(context).await?, printer, tenant).await?,
        Command::Show(args) => vps::show(&connect(context).await?, printer, args).await?,
        Command::Start(args) => {
            vps::power(&connect(context).await?, printer, vps::Power::Start, args).await?
        }
        Command::Stop(args) => {
            vps::power(&connect(context).await?, printer, vps::Power::Stop, args).await?
        }
        Command::Restart(args) => {
            vps::power(&connect(context).await?, printer, vps::Power::Restart, args).await?
        }
        Command::Delete(args) => vps::delete(&connect(context).await?, printer, args).await?,
        Command::Resize(args) => vps::resize(&connect(context).await?, printer, args).await?,
        Command::Rebuild(args) => vps::rebuild(&connect(context).await?, printer, args).await?,
        Command::Quota(tenant) => vps::quota(&connect(context).await?, printer, tenant).await?,
        Command::Usage(args) => vps::usage(&connect(context).await?, printer, args).await?,
        Command::Plans => vps::plans(&connect(context).await?, printer).await?,
        Command::Templates => vps::templates(&connect(context).await?, printer).await?,
        Command::Snapshot(command) => {
            snapshot::run(&connect(context).await?, printer, command).await?
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks before something destructive, but only when a person can answer:
/// with `--yes` or a non-terminal stdin the answer is yes.
pub fn confirm_destructive(yes: bool, question: &str) -> Result<(), CommandError> {
    if yes || !crate::terminal::stdin_is_tty() {
        return Ok(());
    }
    if crate::terminal::confirm(question)? {
        Ok(())
    } else {
        Err(CommandError::Aborted)
    }
}
