//! Command-line syntax: every command, flag and example, declared with clap.
//!
//! Values are checked here as a courtesy (names, sizes, vCPU counts) so a typo
//! is a usage error (exit code 2) naming the flag; the controller still
//! validates everything it receives.

use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, NaiveDate, Utc};
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use paddock_config::ByteSize;

use crate::output::Format;

/// Default for `--timeout` of the waiting commands, in seconds.
pub const DEFAULT_WAIT_SECS: u64 = 300;

/// `paddock`: drive your VPSes, or (with an admin token) the whole provider.
#[derive(Debug, Parser)]
#[command(
    name = "paddock",
    version,
    about = "Paddock VPS hosting: manage your VPSes, or (with an admin token) tenants, nodes and plans",
    after_help = "Examples:\n  paddock context add demo --controller http://127.0.0.1:7443 --token $TOKEN\n  \
                  paddock create web1 --plan small\n  paddock list\n  paddock exec web1 -- uname -a\n\n\
                  Environment: PADDOCK_CONFIG (config file, default ~/.config/paddock/config.toml),\n\
                  PADDOCK_CONTROLLER and PADDOCK_TOKEN (override the selected context)."
)]
pub struct Cli {
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Use this context of the config file instead of the current one.
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// Print tables without their header line.
    #[arg(long, global = true)]
    pub no_headers: bool,
    /// Id of this command's change, sent with it (default: a new random one). The controller
    /// does a VPS change at most once per id: after a lost answer, run the command again with
    /// the id the error names.
    #[arg(long, global = true, value_name = "ID", value_parser = request_id)]
    pub request_id: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a VPS and (by default) wait until it runs.
    #[command(after_help = "Examples:\n  paddock create web1 --plan small\n  \
                            paddock create db1 --plan large --template debian --memory 8GiB --no-wait")]
    Create(CreateArgs),
    /// List VPSes.
    #[command(
        after_help = "Examples:\n  paddock list\n  paddock list -o json\n  paddock list --tenant acme"
    )]
    List(TenantArg),
    /// Show one VPS in detail.
    #[command(after_help = "Examples:\n  paddock show web1\n  paddock show web1 -o json")]
    Show(VpsArgs),
    /// Start a stopped VPS and wait until it runs.
    #[command(after_help = "Example:\n  paddock start web1")]
    Start(PowerArgs),
    /// Stop a VPS (power-off signal, then kill after a grace period) and wait until it stopped.
    #[command(after_help = "Example:\n  paddock stop web1 --no-wait")]
    Stop(PowerArgs),
    /// Restart a VPS and wait until it runs again.
    #[command(after_help = "Example:\n  paddock restart web1")]
    Restart(PowerArgs),
    /// Delete a VPS and its disk, and wait until it is gone.
    #[command(
        after_help = "Examples:\n  paddock delete web1\n  paddock delete web1 --yes --no-wait"
    )]
    Delete(DeleteArgs),
    /// Change a VPS's resources: move to another plan or override single limits.
    #[command(after_help = "Examples:\n  paddock resize web1 --plan medium\n  \
                            paddock resize web1 --vcpus 2 --memory 2GiB\n  \
                            paddock resize web1 --egress 50Mbit --ingress 100Mbit")]
    Resize(ResizeArgs),
    /// Replace a VPS's root filesystem with a fresh copy of a template.
    #[command(
        after_help = "Examples:\n  paddock rebuild web1\n  paddock rebuild web1 --template debian --yes"
    )]
    Rebuild(RebuildArgs),
    /// Run a command inside a VPS; exits with the command's exit code.
    #[command(after_help = "Examples:\n  paddock exec web1 -- uname -a\n  \
                            paddock exec web1 -- sh -c 'exit 7'; echo $?\n  \
                            tar c site | paddock exec web1 -- tar x -C /srv\n  \
                            paddock exec -t web1 -- sh")]
    Exec(ExecArgs),
    /// Attach to a VPS's console (Ctrl-a q detaches).
    #[command(after_help = "Example:\n  paddock console web1")]
    Console(ConsoleArgs),
    /// Show your tenant's quota and how much of it is used.
    #[command(after_help = "Examples:\n  paddock quota\n  paddock quota -o json")]
    Quota(TenantArg),
    /// Show metered usage (CPU, memory, IO, network) per VPS.
    #[command(
        after_help = "Examples:\n  paddock usage\n  paddock usage --from 2024-05-01 --to 2024-06-01"
    )]
    Usage(UsageArgs),
    /// List the plans VPSes can be created from.
    #[command(after_help = "Example:\n  paddock plans")]
    Plans,
    /// List the OS templates VPSes can be built from.
    #[command(after_help = "Example:\n  paddock templates")]
    Templates,
    /// Take, list, restore and delete snapshots of a VPS's disk.
    #[command(subcommand)]
    Snapshot(crate::commands::snapshot::SnapshotCommand),
    /// Back up VPSes into the backup store and restore them (into a new VPS or in place).
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Manage controller contexts (URL + token) in the config file.
    #[command(subcommand)]
    Context(ContextCommand),
    /// Provider administration (admin tokens only).
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  paddock completion bash > /etc/bash_completion.d/paddock\n  \
                            paddock completion zsh > \"${fpath[1]}/_paddock\"\n  \
                            paddock completion fish > ~/.config/fish/completions/paddock.fish"
    )]
    Completion {
        /// Shell to generate the script for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// `--tenant` for admin tokens acting on a tenant's VPSes.
#[derive(Debug, Clone, Args)]
pub struct TenantArg {
    /// Tenant that owns the VPS (admin tokens only; tenant tokens use their own).
    #[arg(long, value_name = "TENANT")]
    pub tenant: Option<String>,
}

impl TenantArg {
    /// The tenant for a request: empty when not given.
    pub fn value(&self) -> String {
        self.tenant.clone().unwrap_or_default()
    }
}

/// Names an existing VPS.
#[derive(Debug, Clone, Args)]
pub struct VpsArgs {
    /// Name of the VPS.
    pub name: String,
    #[command(flatten)]
    pub tenant: TenantArg,
}

/// Whether and how long to wait for a VPS to reach its goal state.
#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// Wait until the VPS reached the goal state (the default).
    #[arg(long, overrides_with = "no_wait")]
    pub wait: bool,
    /// Return as soon as the controller accepted the request.
    #[arg(long, overrides_with = "wait")]
    pub no_wait: bool,
    /// Give up waiting after this many seconds (0: wait forever).
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_WAIT_SECS)]
    pub timeout: u64,
}

impl WaitArgs {
    /// Whether to wait: yes unless `--no-wait` came last.
    pub fn enabled(&self) -> bool {
        !self.no_wait
    }
}

/// Optional per-VPS limits overriding the plan's.
#[derive(Debug, Clone, Default, Args)]
pub struct ResourceOverrides {
    /// Virtual CPUs (fractions allowed, e.g. 0.5).
    #[arg(long, value_name = "N", value_parser = parse_vcpus)]
    pub vcpus: Option<f64>,
    /// Memory limit, e.g. 512MiB or 2GiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_nonzero_size)]
    pub memory: Option<ByteSize>,
    /// Disk size, e.g. 10GiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_nonzero_size)]
    pub disk: Option<ByteSize>,
    /// Network egress limit (from the VPS), e.g. 50Mbit, 1Gbit or bits/s.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub egress: Option<u64>,
    /// Network ingress limit (to the VPS), e.g. 50Mbit.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub ingress: Option<u64>,
}

impl ResourceOverrides {
    /// Whether any override was given.
    pub fn any(&self) -> bool {
        self.vcpus.is_some()
            || self.memory.is_some()
            || self.disk.is_some()
            || self.egress.is_some()
            || self.ingress.is_some()
    }
}

/// A size that must not be 0 (`--memory 0` would otherwise silently mean "the plan's").
pub fn parse_nonzero_size(text: &str) -> Result<ByteSize, String> {
    let size: ByteSize = text
        .parse()
        .map_err(|e: paddock_config::SizeError| e.to_string())?;
    if size.0 == 0 {
        return Err(format!("{text:?} must be greater than zero"));
    }
    Ok(size)
}

/// An IO rate in bytes/s: a size per second such as `50MiB` (or a plain number).
fn parse_io_rate(text: &str) -> Result<u64, String> {
    let text = text.strip_suffix("/s").unwrap_or(text);
    parse_nonzero_size(text).map(|size| size.0)
}

/// A count that must not be 0.
fn parse_nonzero_count(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err(format!("{text:?} must be greater than zero")),
        Ok(value) => Ok(value),
        Err(_) => Err(format!("{text:?} is not a whole number")),
    }
}

/// A network rate in bits/s: `50Mbit`, `1Gbit`, `800kbit` (decimal units, as
/// providers sell bandwidth), or a plain number of bits/s.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let split = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a rate like 50Mbit, 1Gbit or 20000000"))?;
    let multiplier: u64 = match unit {
        "" | "bit" | "bps" => 1,
        "k" | "kbit" | "kbps" => 1_000,
        "m" | "mbit" | "mbps" => 1_000_000,
        "g" | "gbit" | "gbps" => 1_000_000_000,
        _ => return Err(format!("{text:?}: unit must be bit, kbit, Mbit or Gbit")),
    };
    number
        .checked_mul(multiplier)
        .filter(|rate| *rate > 0)
        .ok_or_else(|| format!("{text:?} must be greater than zero and fit in 64 bits"))
}

/// What a plan does at 100% of its monthly transfer allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overage {
    Notify,
    Suspend,
    /// Hold each direction to this many bits/s.
    Throttle(u64),
}

/// `notify`, `suspend` or `throttle:RATE`.
pub fn parse_overage(text: &str) -> Result<Overage, String> {
    match text.split_once(':') {
        None if text == "notify" => Ok(Overage::Notify),
        None if text == "suspend" => Ok(Overage::Suspend),
        Some(("throttle", rate)) => parse_rate(rate).map(Overage::Throttle),
        None if text == "throttle" => Err("throttle needs a rate, e.g. throttle:1Mbit".to_owned()),
        _ => Err(format!(
            "{text:?} is not notify, suspend or throttle:RATE (e.g. throttle:1Mbit)"
        )),
    }
}

/// `paddock create`.
#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// Name of the new VPS (also its hostname): lowercase letters, digits and '-'.
    #[arg(value_parser = parse_name)]
    pub name: String,
    /// Plan to size the VPS from (see `paddock plans`).
    #[arg(long, value_name = "PLAN")]
    pub plan: String,
    /// OS template (see `paddock templates`); the controller defaults to busybox.
    #[arg(long, value_name = "TEMPLATE")]
    pub template: Option<String>,
    /// Place only on a node with this label (repeatable), e.g. `--node-selector region=eu1`.
    #[arg(long = "node-selector", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub node_selector: Vec<(String, String)>,
    #[command(flatten)]
    pub overrides: ResourceOverrides,
    #[command(flatten)]
    pub tenant: TenantArg,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// A duration such as `90s`, `15m`, `12h` or `30d`.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 15m, 12h or 30d"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: unit must be s, m, h or d")),
    };
    number
        .checked_mul(seconds)
        .filter(|secs| *secs > 0)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{text:?} must be greater than zero and not absurdly long"))
}

/// `KEY=VALUE` with a non-empty key.
fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// A request id, as the controller accepts it.
fn request_id(value: &str) -> Result<String, String> {
    if paddock_proto::request_id::is_valid(value) {
        Ok(value.to_owned())
    } else {
        Err(paddock_proto::request_id::RULE.to_owned())
    }
}

/// `KEY=VALUE` (set) or `KEY-` (remove) for `admin node label`, checked before any request.
fn parse_label_change(text: &str) -> Result<String, String> {
    let valid = match text.split_once('=') {
        Some((key, _)) => !key.is_empty(),
        None => text.len() > 1 && text.ends_with('-'),
    };
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!("{text:?} is neither KEY=VALUE nor KEY-"))
    }
}

/// `paddock start|stop|restart`.
#[derive(Debug, Clone, Args)]
pub struct PowerArgs {
    #[command(flatten)]
    pub vps: VpsArgs,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `paddock delete`.
#[derive(Debug, Clone, Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub vps: VpsArgs,
    /// Do not ask for confirmation.
    #[arg(short = 'y', long)]
    pub yes: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `paddock resize`.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("change").required(true).multiple(true)
    .args(["plan", "vcpus", "memory", "disk", "egress", "ingress"])))]
pub struct ResizeArgs {
    #[command(flatten)]
    pub vps: VpsArgs,
    /// Move to this plan.
    #[arg(long, value_name = "PLAN")]
    pub plan: Option<String>,
    #[command(flatten)]
    pub overrides: ResourceOverrides,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `paddock rebuild`.
#[derive(Debug, Clone, Args)]
pub struct RebuildArgs {
    #[command(flatten)]
    pub vps: VpsArgs,
    /// Template for the new root filesystem; defaults to the current one.
    #[arg(long, value_name = "TEMPLATE")]
    pub template: Option<String>,
    /// Do not ask for confirmation.
    #[arg(short = 'y', long)]
    pub yes: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `paddock exec`.
///
/// Without `-t` the command gets pipes: stdin is streamed when it is not a
/// terminal, and closed at once when it is. With `-t` the command gets a
/// pseudo-terminal and, when stdin is a terminal, the local terminal is put
/// in raw mode and window-size changes are forwarded.
#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
    /// Name of the VPS.
    pub name: String,
    /// Allocate a pseudo-terminal for the command (interactive shells).
    #[arg(short = 't', long, overrides_with = "no_tty")]
    pub tty: bool,
    /// Do not allocate a pseudo-terminal (the default).
    #[arg(short = 'T', long, overrides_with = "tty")]
    pub no_tty: bool,
    /// Set an environment variable for the command (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<String>,
    #[command(flatten)]
    pub tenant: TenantArg,
    /// The command and its arguments (put them after `--`).
    #[arg(
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

/// `paddock console`.
#[derive(Debug, Clone, Args)]
pub struct ConsoleArgs {
    #[command(flatten)]
    pub vps: VpsArgs,
    /// Do not replay the console's scrollback first.
    #[arg(long)]
    pub no_scrollback: bool,
}

/// `paddock usage`.
#[derive(Debug, Clone, Args)]
pub struct UsageArgs {
    #[command(flatten)]
    pub tenant: TenantArg,
    /// Start of the period (RFC 3339 or YYYY-MM-DD, UTC); the controller's default when absent.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub from: Option<DateTime<Utc>>,
    /// End of the period (RFC 3339 or YYYY-MM-DD, UTC).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub to: Option<DateTime<Utc>>,
}

/// `paddock context ...`.
#[derive(Debug, Subcommand)]
pub enum ContextCommand {
    /// Add (or replace) a context; the first one added becomes current.
    #[command(
        after_help = "Examples:\n  paddock context add demo --controller http://127.0.0.1:7443 --token $TOKEN\n  \
                            paddock context add prod --controller https://paddock.example:7443 \\\n      \
                            --token - --ca-cert /etc/paddock/ca.pem --use < token.txt"
    )]
    Add {
        /// Name of the context.
        name: String,
        /// Controller URL (http:// or https://).
        #[arg(long, value_name = "URL")]
        controller: String,
        /// API token; `-` reads it from stdin.
        #[arg(long, value_name = "TOKEN")]
        token: String,
        /// PEM CA certificate that signed the controller's TLS certificate.
        #[arg(long, value_name = "PATH")]
        ca_cert: Option<PathBuf>,
        /// Make it the current context.
        #[arg(long = "use")]
        make_current: bool,
    },
    /// Make a context the current one.
    #[command(after_help = "Example:\n  paddock context use prod")]
    Use {
        /// Name of the context.
        name: String,
    },
    /// List contexts; `*` marks the current one. Tokens are never printed.
    #[command(after_help = "Example:\n  paddock context list")]
    List,
    /// Remove a context from the config file.
    #[command(after_help = "Example:\n  paddock context remove old")]
    Remove {
        /// Name of the context.
        name: String,
    },
}

/// `paddock admin ...`.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Tenants and their quotas.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Nodes running paddock-agent.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Plans (resource bundles).
    #[command(subcommand)]
    Plan(PlanCommand),
    /// IPv4 address pools.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// End the transfer overage action (throttle or suspend) holding a VPS
    /// for the rest of the month, e.g. after the customer bought more transfer.
    #[command(after_help = "Example:\n  paddock admin lift-transfer-limit web1 --tenant acme")]
    LiftTransferLimit {
        /// VPS name.
        vps: String,
        /// Tenant that owns the VPS.
        #[arg(long, value_name = "TENANT")]
        tenant: String,
    },
    /// Move a VPS to another node. Cold by default: stop it, copy its disk, start it there
    /// if it ran. Its addresses move with it where the destination has a pool holding them;
    /// otherwise the move is refused, naming the old and new address, unless
    /// --allow-new-address is given. With --live it moves running (CRIU: its memory,
    /// processes and TCP connections), which needs its addresses kept; where they cannot
    /// be or CRIU cannot checkpoint it, the move is refused (the VPS runs on, the reason
    /// said) unless --allow-cold lets a cold move follow.
    #[command(
        after_help = "Examples:\n  paddock admin migrate web1 --tenant acme --to node-b\n  \
                      paddock admin migrate web1 --tenant acme --to node-b --allow-new-address\n  \
                      paddock admin migrate web1 --tenant acme --to node-b --live\n  \
                      paddock admin migrate web1 --tenant acme --live --allow-cold --allow-new-address"
    )]
    Migrate {
        /// VPS name.
        vps: String,
        /// Tenant that owns the VPS.
        #[arg(long, value_name = "TENANT")]
        tenant: String,
        /// Destination node; without it the scheduler picks one.
        #[arg(long, value_name = "NODE")]
        to: Option<String>,
        #[command(flatten)]
        how: MoveArgs,
    },
    /// Lifecycle events (what billing follows with WatchEvents), oldest first, one per line.
    /// Without --follow it prints those recorded so far; with it, new ones as they happen,
    /// resuming after the last one printed through the next controller of the context when
    /// its controller dies (each event once, in cursor order).
    #[command(after_help = "Examples:\n  paddock admin events --after 120\n  \
                      paddock admin events --tenant acme --follow -o json")]
    Events {
        /// Only this tenant's events.
        #[arg(long, value_name = "TENANT")]
        tenant: Option<String>,
        /// Only events after this cursor (0: from the first).
        #[arg(long, value_name = "CURSOR", default_value_t = 0)]
        after: u64,
        /// Keep printing new events until interrupted.
        #[arg(long)]
        follow: bool,
    },
    /// Show the audit trail of mutations.
    #[command(
        after_help = "Examples:\n  paddock admin audit\n  paddock admin audit --limit 20 -o json"
    )]
    Audit {
        /// Show the newest N entries (oldest first).
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: u32,
    },
}

/// How `admin migrate` and `admin node drain --migrate` move a VPS.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct MoveArgs {
    /// Accept a new address from the destination's pool when the current one cannot move.
    #[arg(long)]
    pub allow_new_address: bool,
    /// Move it running (CRIU checkpoint, transfer, restore) with its addresses.
    #[arg(long)]
    pub live: bool,
    /// With --live: fall back to a cold move where a live one is refused.
    #[arg(long, requires = "live")]
    pub allow_cold: bool,
}

/// Quota limits for `admin tenant create|set-quota`.
#[derive(Debug, Clone, Default, Args)]
pub struct QuotaArgs {
    /// Maximum number of VPSes.
    #[arg(long, value_name = "N")]
    pub max_vps: Option<u32>,
    /// Total vCPUs over all VPSes.
    #[arg(long, value_name = "N", value_parser = parse_vcpus)]
    pub vcpus: Option<f64>,
    /// Total memory, e.g. 32GiB.
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<ByteSize>,
    /// Total disk, e.g. 400GiB.
    #[arg(long, value_name = "SIZE")]
    pub disk: Option<ByteSize>,
    /// Total IPv4 addresses.
    #[arg(long, value_name = "N")]
    pub ipv4: Option<u32>,
}

impl QuotaArgs {
    /// Whether any limit was given.
    pub fn any(&self) -> bool {
        self.max_vps.is_some()
            || self.vcpus.is_some()
            || self.memory.is_some()
            || self.disk.is_some()
            || self.ipv4.is_some()
    }
}

/// `paddock admin tenant ...`.
#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant; limits not given take the controller's default quota.
    #[command(after_help = "Examples:\n  paddock admin tenant create acme\n  \
                            paddock admin tenant create acme --max-vps 5 --vcpus 8 --memory 16GiB --disk 200GiB --ipv4 5")]
    Create {
        /// Tenant name: lowercase letters, digits and '-'.
        #[arg(value_parser = parse_name)]
        name: String,
        #[command(flatten)]
        quota: QuotaArgs,
    },
    /// List tenants with their usage and quota.
    #[command(after_help = "Example:\n  paddock admin tenant list")]
    List,
    /// Show a tenant.
    #[command(after_help = "Example:\n  paddock admin tenant show acme")]
    Show {
        /// Tenant name.
        name: String,
    },
    /// Change some of a tenant's limits; the others keep their value.
    #[command(
        after_help = "Example:\n  paddock admin tenant set-quota acme --max-vps 20 --memory 64GiB",
        group(ArgGroup::new("limits").required(true).multiple(true)
            .args(["max_vps", "vcpus", "memory", "disk", "ipv4"]))
    )]
    SetQuota {
        /// Tenant name.
        name: String,
        #[command(flatten)]
        quota: QuotaArgs,
    },
    /// Suspend a tenant: its VPSes are stopped and it cannot start new ones.
    #[command(
        after_help = "Example:\n  paddock admin tenant suspend acme --reason 'invoice 1234 overdue'"
    )]
    Suspend {
        /// Tenant name.
        name: String,
        /// Why, for the audit trail.
        #[arg(long, value_name = "TEXT", default_value = "")]
        reason: String,
    },
    /// Lift a suspension.
    #[command(after_help = "Example:\n  paddock admin tenant unsuspend acme")]
    Unsuspend {
        /// Tenant name.
        name: String,
    },
    /// Delete a tenant.
    #[command(after_help = "Example:\n  paddock admin tenant delete acme --yes")]
    Delete {
        /// Tenant name.
        name: String,
        /// Do not ask for confirmation.
        #[arg(short = 'y', long)]
        yes: bool,
    },
}

/// Role of a new token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TokenRole {
    /// Provider administrator: everything.
    Admin,
    /// Billing integration: usage, events, suspend/unsuspend.
    Billing,
}

/// `paddock admin token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; prints the secret once (only the token, in table mode).
    #[command(
        after_help = "Examples:\n  paddock admin token create --tenant acme\n  \
                      paddock admin token create --role billing --description 'invoicing system'\n  \
                      paddock admin token create --tenant acme -o json",
        group(ArgGroup::new("who").required(true).args(["tenant", "role"]))
    )]
    Create {
        /// Tenant the token acts for (a tenant token).
        #[arg(long, value_name = "TENANT", conflicts_with = "role")]
        tenant: Option<String>,
        /// Role of a token that belongs to no tenant.
        #[arg(long, value_enum)]
        role: Option<TokenRole>,
        /// Free text to recognise the token by later.
        #[arg(long, value_name = "TEXT", default_value = "")]
        description: String,
        /// Expire the token after this long: 3600s, 90m, 12h, 30d (default: never).
        #[arg(long = "expires-in", value_name = "DURATION", value_parser = parse_duration)]
        expires_in: Option<std::time::Duration>,
    },
    /// List tokens (never their secrets).
    #[command(
        after_help = "Examples:\n  paddock admin token list\n  paddock admin token list --tenant acme"
    )]
    List {
        /// Only tokens of this tenant.
        #[arg(long, value_name = "TENANT")]
        tenant: Option<String>,
    },
    /// Revoke a token by its id (see `admin token list`).
    #[command(after_help = "Example:\n  paddock admin token revoke 3f9a2c")]
    Revoke {
        /// The token's public id.
        id: String,
    },
}

/// `paddock admin node ...`.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes with their allocation.
    #[command(after_help = "Example:\n  paddock admin node list")]
    List,
    /// Show a node.
    #[command(after_help = "Example:\n  paddock admin node show node-a")]
    Show {
        /// Node name.
        name: String,
    },
    /// Cordon a node: no new VPS is placed on it; running ones stay, or with --migrate
    /// move one at a time to nodes the scheduler picks (a line per VPS).
    #[command(after_help = "Examples:\n  paddock admin node drain node-a\n  \
                      paddock admin node drain node-a --migrate --allow-new-address\n  \
                      paddock admin node drain node-a --migrate --live --allow-cold")]
    Drain {
        /// Node name.
        name: String,
        /// Also move every VPS off the node, one at a time.
        #[arg(long)]
        migrate: bool,
        #[command(flatten)]
        how: MoveArgs,
    },
    /// Make a drained node schedulable again.
    #[command(after_help = "Example:\n  paddock admin node undrain node-a")]
    Undrain {
        /// Node name.
        name: String,
    },
    /// Remove a drained node that hosts no VPS and no pool, and revoke its
    /// certificates (its agent must enrol again with the join token to return).
    #[command(
        after_help = "Example:\n  paddock admin node drain node-a\n  paddock admin node remove node-a --yes"
    )]
    Remove {
        /// Node name.
        name: String,
        /// Do not ask for confirmation.
        #[arg(short = 'y', long)]
        yes: bool,
    },
    /// Set (KEY=VALUE) or remove (KEY-) node labels, used by `create --node-selector`
    /// and for per-node overcommit (paddock.io/cpu-overcommit=2.0).
    #[command(
        after_help = "Examples:\n  paddock admin node label node-a region=eu1 disk=ssd\n  \
                      paddock admin node label node-a paddock.io/cpu-overcommit=2.0\n  \
                      paddock admin node label node-a disk-"
    )]
    Label {
        /// Node name.
        name: String,
        /// KEY=VALUE to set, KEY- to remove.
        #[arg(required = true, value_name = "LABEL", value_parser = parse_label_change)]
        labels: Vec<String>,
    },
}

/// `paddock admin plan ...`.
#[derive(Debug, Subcommand)]
pub enum PlanCommand {
    /// Create a plan.
    #[command(
        after_help = "Examples:\n  paddock admin plan create small --vcpus 1 --memory 512MiB --disk 5GiB\n  \
                            paddock admin plan create large --vcpus 4 --memory 8GiB --disk 80GiB --pids 4096 --io-write 400MiB --write-iops 4000 --transfer 2TiB\n  \
                            paddock admin plan create capped --vcpus 1 --memory 1GiB --disk 20GiB --transfer 500GiB --transfer-overage throttle:1Mbit"
    )]
    Create {
        /// Plan name: lowercase letters, digits and '-'.
        #[arg(value_parser = parse_name)]
        name: String,
        /// Virtual CPUs (fractions allowed).
        #[arg(long, value_name = "N", value_parser = parse_vcpus)]
        vcpus: f64,
        /// Memory limit.
        #[arg(long, value_name = "SIZE", value_parser = parse_nonzero_size)]
        memory: ByteSize,
        /// Disk size.
        #[arg(long, value_name = "SIZE", value_parser = parse_nonzero_size)]
        disk: ByteSize,
        /// Disk read limit per second, e.g. 100MiB (default: unlimited).
        #[arg(long, value_name = "SIZE", value_parser = parse_io_rate)]
        io_read: Option<u64>,
        /// Disk write limit per second, e.g. 100MiB (default: unlimited).
        #[arg(long, value_name = "SIZE", value_parser = parse_io_rate)]
        io_write: Option<u64>,
        /// Disk read operations per second (default: unlimited).
        #[arg(long, value_name = "N", value_parser = parse_nonzero_count)]
        read_iops: Option<u64>,
        /// Disk write operations per second (default: unlimited).
        #[arg(long, value_name = "N", value_parser = parse_nonzero_count)]
        write_iops: Option<u64>,
        /// Maximum number of processes (default: unlimited).
        #[arg(long, value_name = "N")]
        pids: Option<u64>,
        /// Swap limit.
        #[arg(long, value_name = "SIZE")]
        swap: Option<ByteSize>,
        /// IPv4 addresses per VPS.
        #[arg(long, value_name = "N")]
        ipv4: Option<u32>,
        /// Monthly network transfer allowance per VPS, rx + tx (default: unmetered).
        #[arg(long, value_name = "SIZE")]
        transfer: Option<ByteSize>,
        /// What happens once a VPS used all of --transfer, until the month ends:
        /// `notify` (events only, the default), `suspend`, or `throttle:RATE`
        /// (e.g. throttle:1Mbit, each direction).
        #[arg(long, value_name = "ACTION", value_parser = parse_overage, requires = "transfer")]
        transfer_overage: Option<Overage>,
        /// Snapshots each VPS of the plan may keep (default 3).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        max_snapshots: Option<u32>,
    },
    /// List plans.
    #[command(after_help = "Example:\n  paddock admin plan list")]
    List,
    /// Delete a plan.
    #[command(after_help = "Example:\n  paddock admin plan delete small")]
    Delete {
        /// Plan name.
        name: String,
    },
}

/// `paddock admin pool ...`.
#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Create an IPv4 address pool on one node, or shared by several (repeat --node): a
    /// VPS moved between the nodes of a shared pool keeps its addresses.
    #[command(
        after_help = "Examples:\n  paddock admin pool create lan --node node-a --cidr 10.77.0.0/24 \
                            --gateway 10.77.0.1 --range-start 10.77.0.10 --range-end 10.77.0.250 --nat\n  \
                      paddock admin pool create shared --node node-a --node node-b --cidr 10.78.0.0/24 \
                            --gateway 10.78.0.1"
    )]
    Create {
        /// Pool name: lowercase letters, digits and '-'.
        #[arg(value_parser = parse_name)]
        name: String,
        /// Node the pool is attached to; repeat for a pool shared by several nodes.
        #[arg(long = "node", value_name = "NODE", required = true)]
        nodes: Vec<String>,
        /// Network in CIDR notation, e.g. 10.77.0.0/24.
        #[arg(long, value_name = "CIDR")]
        cidr: String,
        /// Gateway address (the node's bridge).
        #[arg(long, value_name = "ADDR")]
        gateway: String,
        /// First allocatable address.
        #[arg(long, value_name = "ADDR")]
        range_start: Option<String>,
        /// Last allocatable address.
        #[arg(long, value_name = "ADDR")]
        range_end: Option<String>,
        /// IPv6 prefix for the pool.
        #[arg(long, value_name = "PREFIX")]
        ipv6_prefix: Option<String>,
        /// Masquerade traffic leaving the node (private addresses).
        #[arg(long)]
        nat: bool,
    },
    /// List pools.
    #[command(after_help = "Example:\n  paddock admin pool list")]
    List,
    /// Show a pool.
    #[command(after_help = "Example:\n  paddock admin pool show lan")]
    Show {
        /// Pool name.
        name: String,
    },
    /// Delete a pool.
    #[command(after_help = "Example:\n  paddock admin pool delete lan")]
    Delete {
        /// Pool name.
        name: String,
    },
}

/// Reports a command-line parsing failure and returns the exit code: help
/// and version go to stdout (0); usage errors become one `error: ...` line
/// on stderr (2), like every other error of the CLI.
pub fn report_parse_error(err: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if !err.use_stderr() || err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let _ = err.print();
        return ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(2));
    }
    eprintln!("{}", one_line(&err.render().to_string()));
    ExitCode::from(2)
}

/// Folds clap's multi-line error text into one line: the message and its
/// details, without the usage block, tips and the `--help` hint.
pub fn one_line(rendered: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for line in rendered.lines().map(str::trim) {
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if !line.is_empty() && !line.starts_with("tip:") {
            parts.push(line);
        }
    }
    let text = parts.join(" ");
    if text.starts_with("error:") {
        text
    } else {
        format!("error: {text}")
    }
}

/// The Paddock name rule, as the controller states it.
pub const NAME_RULE: &str = "^[a-z][a-z0-9-]{0,62}$";

/// Checks the Paddock name rule `^[a-z][a-z0-9-]{0,62}$`.
pub fn parse_name(name: &str) -> Result<String, String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if first_ok && rest_ok && name.len() <= 63 {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "a name must match {NAME_RULE} (a lowercase letter, then up to 62 lowercase \
             letters, digits or '-')"
        ))
    }
}

/// A positive, finite vCPU count.
pub fn parse_vcpus(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(value) if value.is_finite() && value > 0.0 => Ok(value),
        _ => Err("expected a positive number of vCPUs, e.g. 1, 2 or 0.5".to_owned()),
    }
}

/// `KEY=VALUE` with a non-empty key.
pub fn parse_env(text: &str) -> Result<String, String> {
    match text.split_once('=') {
        Some((key, _)) if !key.is_empty() => Ok(text.to_owned()),
        _ => Err("expected KEY=VALUE".to_owned()),
    }
}

/// An RFC 3339 time, or a date (midnight UTC).
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .map(|time| time.and_utc())
        .ok_or_else(|| "expected an RFC 3339 time or a YYYY-MM-DD date".to_owned())
}

/// `paddock backup ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum BackupCommand {
    /// Archive a VPS (running or stopped) into the backup store.
    #[command(after_help = "Example:\n  paddock backup create web1")]
    Create(VpsArgs),
    /// List backups, of one VPS when named.
    #[command(after_help = "Examples:\n  paddock backup list\n  paddock backup list web1 -o json")]
    List {
        /// Only this VPS's backups.
        vps: Option<String>,
        #[command(flatten)]
        tenant: TenantArg,
    },
    /// Restore a backup into a new VPS (--to NAME) or over the VPS it was taken of
    /// (--in-place: stop, swap its disk, start).
    #[command(
        group(ArgGroup::new("target").required(true).args(["to", "in_place"])),
        after_help = "Examples:\n  paddock backup restore b-1a2b3c4d5e6f --to web1-copy\n  \
                      paddock backup restore b-1a2b3c4d5e6f --in-place --yes"
    )]
    Restore(BackupRestoreArgs),
    /// Delete a backup from the backup store.
    #[command(after_help = "Example:\n  paddock backup delete b-1a2b3c4d5e6f")]
    Delete {
        /// The backup's id (`paddock backup list`).
        backup: String,
        #[command(flatten)]
        tenant: TenantArg,
    },
}

/// `paddock backup restore`.
#[derive(Debug, Clone, Args)]
pub struct BackupRestoreArgs {
    /// The backup's id (`paddock backup list`).
    pub backup: String,
    /// Create a new VPS of this name from the backup (its plan and template).
    #[arg(long, value_name = "NEW_NAME", value_parser = parse_name)]
    pub to: Option<String>,
    /// Replace the disk of the VPS the backup was taken of.
    #[arg(long)]
    pub in_place: bool,
    /// Do not ask for confirmation (--in-place).
    #[arg(short = 'y', long)]
    pub yes: bool,
    #[command(flatten)]
    pub tenant: TenantArg,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn names_follow_the_rule() {
        for good in ["a", "web1", "db-primary-2", &"a".repeat(63)] {
            assert!(parse_name(good).is_ok(), "{good}");
        }
        for bad in ["", "1web", "Web", "web_1", "-a", "wéb", &"a".repeat(64)] {
            assert!(parse_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn overage_actions() {
        assert_eq!(parse_overage("notify"), Ok(Overage::Notify));
        assert_eq!(parse_overage("suspend"), Ok(Overage::Suspend));
        assert_eq!(
            parse_overage("throttle:1Mbit"),
            Ok(Overage::Throttle(1_000_000))
        );
        for bad in [
            "",
            "throttle",
            "throttle:",
            "throttle:0",
            "stop",
            "suspend:1Mbit",
        ] {
            assert!(parse_overage(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("50Mbit"), Ok(50_000_000));
        assert_eq!(parse_rate("1gbit"), Ok(1_000_000_000));
        assert_eq!(parse_rate("800kbit"), Ok(800_000));
        assert_eq!(parse_rate("20000000"), Ok(20_000_000));
        for bad in ["", "0", "fast", "5Tbit", "-1Mbit"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_and_labels() {
        assert_eq!(
            parse_duration("90s"),
            Ok(std::time::Duration::from_secs(90))
        );
        assert_eq!(
            parse_duration("12h"),
            Ok(std::time::Duration::from_secs(12 * 3600))
        );
        assert_eq!(
            parse_duration("30d"),
            Ok(std::time::Duration::from_secs(30 * 86_400))
        );
        for bad in ["", "h", "0s", "5w", "-1d", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_label("region=eu1"),
            Ok(("region".into(), "eu1".into()))
        );
        assert_eq!(parse_label("k="), Ok(("k".into(), String::new())));
        assert!(parse_label("=v").is_err());
        assert!(parse_label("novalue").is_err());
    }

    #[test]
    fn global_flags_parse_after_the_command() {
        let cli =
            Cli::try_parse_from(["paddock", "list", "-o", "json", "--no-headers"]).expect("parse");
        assert_eq!(cli.output, Format::Json);
        assert!(cli.no_headers);
    }

    #[test]
    fn wait_is_default_and_last_flag_wins() {
        let parse = |args: &[&str]| match Cli::try_parse_from(args).expect("parse").command {
            Command::Create(create) => create.wait,
            other => panic!("unexpected {other:?}"),
        };
        assert!(parse(&["paddock", "create", "web1", "--plan", "small"]).enabled());
        assert!(!parse(&["paddock", "create", "web1", "--plan", "small", "--no-wait"]).enabled());
        assert!(parse(&[
            "paddock",
            "create",
            "web1",
            "--plan",
            "s",
            "--no-wait",
            "--wait"
        ])
        .enabled());
    }

    #[test]
    fn bad_size_is_a_usage_error_naming_the_flag() {
        let err = Cli::try_parse_from([
            "paddock", "create", "web1", "--plan", "s", "--memory", "lots",
        ])
        .expect_err("bad size");
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--memory"), "{err}");
    }

    #[test]
    fn exec_takes_the_command_after_dashes() {
        let cli =
            Cli::try_parse_from(["paddock", "exec", "web1", "-t", "--", "sh", "-c", "exit 7"])
                .expect("parse");
        match cli.command {
            Command::Exec(exec) => {
                assert!(exec.tty);
                assert_eq!(exec.command, vec!["sh", "-c", "exit 7"]);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(Cli::try_parse_from(["paddock", "exec", "web1"]).is_err());
    }

    #[test]
    fn resize_needs_a_change_and_token_needs_a_subject() {
        assert!(Cli::try_parse_from(["paddock", "resize", "web1"]).is_err());
        assert!(Cli::try_parse_from(["paddock", "resize", "web1", "--disk", "20GiB"]).is_ok());
        assert!(Cli::try_parse_from(["paddock", "admin", "token", "create"]).is_err());
        assert!(
            Cli::try_parse_from(["paddock", "admin", "token", "create", "--role", "admin"]).is_ok()
        );
    }

    #[test]
    fn zero_sizes_are_usage_errors() {
        for args in [
            &[
                "paddock", "create", "web1", "--plan", "nano", "--memory", "0",
            ][..],
            &["paddock", "resize", "web1", "--disk", "0GiB"],
            &[
                "paddock",
                "admin",
                "plan",
                "create",
                "p",
                "--vcpus",
                "1",
                "--memory",
                "1GiB",
                "--disk",
                "1GiB",
                "--write-iops",
                "0",
            ],
        ] {
            let err = Cli::try_parse_from(args).expect_err("0 is refused");
            let line = one_line(&err.render().to_string());
            assert!(
                line.contains("must be greater than zero"),
                "{args:?}: {line}"
            );
        }
        assert!(Cli::try_parse_from([
            "paddock",
            "admin",
            "plan",
            "create",
            "p",
            "--vcpus",
            "1",
            "--memory",
            "1GiB",
            "--disk",
            "1GiB",
            "--io-read",
            "50MiB/s",
            "--read-iops",
            "500",
        ])
        .is_ok());
    }

    #[test]
    fn usage_errors_fold_into_one_line() {
        let err = Cli::try_parse_from(["paddock", "create", "web1"]).expect_err("missing --plan");
        let line = one_line(&err.render().to_string());
        assert_eq!(
            line,
            "error: the following required arguments were not provided: --plan <PLAN>"
        );
        let err = Cli::try_parse_from(["paddock", "create", "../etc", "--plan", "nano"])
            .expect_err("bad name");
        let line = one_line(&err.render().to_string());
        assert!(line.contains("name") && line.contains(NAME_RULE), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn times_parse_as_dates_or_rfc3339() {
        assert_eq!(
            parse_time("2024-05-01").map(|t| t.to_rfc3339()),
            Ok("2024-05-01T00:00:00+00:00".to_owned())
        );
        assert!(parse_time("2024-05-01T10:00:00+02:00").is_ok());
        assert!(parse_time("yesterday").is_err());
    }
}
