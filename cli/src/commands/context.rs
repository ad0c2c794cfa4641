//! `paddock context add|use|list|remove`: editing the config file. No
//! controller is contacted and tokens are never printed.

use std::io::BufRead;

use super::CommandError;
use crate::args::ContextCommand;
use crate::context::{config_path, validate_controller_url, Config, Context};
use crate::output::Printer;
use crate::views::{ContextView, DoneView};

/// Reads the token from stdin when it was given as `-`.
fn read_token(token: String) -> Result<String, CommandError> {
    if token != "-" {
        return Ok(token);
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|err| CommandError::Usage(format!("reading the token from stdin: {err}")))?;
    let token = line.trim().to_owned();
    if token.is_empty() {
        return Err(CommandError::Usage(
            "--token -: stdin held no token".to_owned(),
        ));
    }
    Ok(token)
}

/// Runs one `context` subcommand against the config file.
pub fn run(printer: &Printer, command: ContextCommand) -> Result<(), CommandError> {
    let path = config_path()?;
    let mut config = Config::load(&path)?;
    match command {
        ContextCommand::Add {
            name,
            controller,
            token,
            ca_cert,
            make_current,
        } => {
            if name.trim().is_empty() {
                return Err(CommandError::Usage("the context name is empty".to_owned()));
            }
            validate_controller_url(&controller)
                .map_err(|err| CommandError::Usage(err.to_string()))?;
            let token = read_token(token)?;
            if token.is_empty() {
                return Err(CommandError::Usage("--token is empty".to_owned()));
            }
            let ca_cert = ca_cert.map(|path| std::path::absolute(&path).unwrap_or(path));
            let context = Context {
                controller,
                token,
                ca_cert,
            };
            let current = config.add(&name, context, make_current);
            config.save(&path)?;
            let suffix = if current { " (current)" } else { "" };
            let text = format!("context {name} saved to {}{suffix}", path.display());
            Ok(printer.outcome(
                &DoneView {
                    kind: "context",
                    name,
                    action: "added",
                },
                &text,
            )?)
        }
        ContextCommand::Use { name } => {
            config.use_context(&name)?;
            config.save(&path)?;
            let text = format!("now using context {name}");
            Ok(printer.outcome(
                &DoneView {
                    kind: "context",
                    name,
                    action: "selected",
                },
                &text,
            )?)
        }
        ContextCommand::List => {
            let views: Vec<ContextView> = config
                .contexts
                .iter()
                .map(|(name, context)| ContextView {
                    name: name.clone(),
                    current: config.current.as_deref() == Some(name.as_str()),
                    controller: context.controller.clone(),
                    ca_cert: context
                        .ca_cert
                        .as_ref()
                        .map(|path| path.display().to_string()),
                })
                .collect();
            Ok(printer.list(&views)?)
        }
        ContextCommand::Remove { name } => {
            config.remove(&name)?;
            config.save(&path)?;
            let text = format!("context {name} removed");
            Ok(printer.outcome(
                &DoneView {
                    kind: "context",
                    name,
                    action: "removed",
                },
                &text,
            )?)
        }
    }
}
