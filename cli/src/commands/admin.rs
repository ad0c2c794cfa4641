//! `paddock admin ...`: tenants, tokens, nodes, plans, pools, transfer limits
//! and the audit trail.

use paddock_proto::v1::{
    self, CreatePlanRequest, CreatePoolRequest, CreateTenantRequest, CreateTokenRequest,
    DeletePlanRequest, DeleteTenantRequest, Empty, GetNodeRequest, GetPoolRequest,
    GetTenantRequest, LiftTransferLimitRequest, ListAuditRequest, ListTenantsRequest,
    ListTokensRequest, PageRequest, Quota, Resources, RevokeTokenRequest, Role,
    SetNodeLabelsRequest, SetQuotaRequest, SuspendTenantRequest, UnsuspendTenantRequest,
};

use super::vps::MAX_PAGES;
use super::{confirm_destructive, CommandError};
use crate::args::{
    AdminCommand, MoveArgs, NodeCommand, Overage, PlanCommand, PoolCommand, QuotaArgs,
    TenantCommand, TokenCommand, TokenRole,
};
use crate::client::Session;
use crate::output::{Format, Printer};
use crate::views::{
    AuditView, CreatedTokenView, DoneView, DrainRow, MigrationView, NodeView, PlanView, PoolView,
    TenantView, TokenView,
};

/// Runs one `admin` subcommand.
pub async fn run(
    session: &Session,
    printer: &Printer,
    command: AdminCommand,
) -> Result<(), CommandError> {
    match command {
        AdminCommand::Tenant(command) => tenant(session, printer, command).await,
        AdminCommand::Events {
            tenant,
            after,
            follow,
        } => events(session, printer, tenant.unwrap_or_default(), after, follow).await,
        AdminCommand::Token(command) => token(session, printer, command).await,
        AdminCommand::Node(command) => node(session, printer, command).await,
        AdminCommand::Plan(command) => plan(session, printer, command).await,
        AdminCommand::Pool(command) => pool(session, printer, command).await,
        AdminCommand::LiftTransferLimit { vps, tenant } => {
            let request = LiftTransferLimitRequest {
                tenant,
                vps: vps.clone(),
            };
            let response = session
                .call(session.billing().lift_transfer_limit(request))
                .await?;
            let action = if response.lifted {
                "transfer limit lifted"
            } else {
                "had no transfer limit in force"
            };
            done(printer, "VPS", vps, action)
        }
        AdminCommand::Migrate {
            vps,
            tenant,
            to,
            how,
        } => {
            let to_node = to.unwrap_or_default();
            if crate::terminal::stderr_is_tty() {
                let whither = if to_node.is_empty() {
                    "a node the scheduler picks".to_owned()
                } else {
                    format!("node {to_node}")
                };
                let steps = if how.live {
                    "checkpoint, transfer, restore there"
                } else {
                    "stop, copy, start there"
                };
                eprintln!("Moving {tenant}/{vps} to {whither}: {steps}...");
            }
            let request = v1::MigrateVpsRequest {
                tenant,
                name: vps,
                to_node,
                allow_new_address: how.allow_new_address,
                live: how.live,
                allow_cold: how.allow_cold,
            };
            let migration = session.call(session.nodes().migrate_vps(request)).await?;
            Ok(printer.one(&MigrationView::from(&migration))?)
        }
        AdminCommand::Audit { limit } => audit(session, printer, limit).await,
    }
}

/// `admin node drain NODE --migrate`: cordons the node, then moves its VPSes one at a time
/// to nodes the scheduler picks, printing a row per VPS (moved or why not).
async fn drain_and_migrate(
    session: &Session,
    printer: &Printer,
    name: String,
    how: MoveArgs,
) -> Result<(), CommandError> {
    let mut client = session.nodes();
    session
        .call(client.drain_node(GetNodeRequest { name: name.clone() }))
        .await?;
    let mut on_node: Vec<v1::Vps> = super::vps::fetch_all_vps(session, String::new())
        .await?
        .into_iter()
        .filter(|vps| vps.node == name)
        .collect();
    on_node.sort_by(|a, b| (&a.tenant, &a.name).cmp(&(&b.tenant, &b.name)));
    let mut rows = Vec::new();
    let mut failed = 0usize;
    let total = on_node.len();
    for (done, vps) in on_node.into_iter().enumerate() {
        if crate::terminal::stderr_is_tty() {
            eprintln!(
                "Moving {}/{} ({} of {total})...",
                vps.tenant,
                vps.name,
                done + 1
            );
        }
        let request = v1::MigrateVpsRequest {
            tenant: vps.tenant.clone(),
            name: vps.name.clone(),
            to_node: String::new(),
            allow_new_address: how.allow_new_address,
            live: how.live,
            allow_cold: how.allow_cold,
        };
        let row = match session.call(client.migrate_vps(request)).await {
            Ok(migration) => DrainRow::moved(&migration),
            Err(error) => {
                failed += 1;
                DrainRow::failed(&vps, &error.to_string())
            }
        };
        // A line as each VPS is done (headers once): a drain can take a while.
        if printer.format == Format::Table {
            let line = Printer {
                format: Format::Table,
                headers: printer.headers && rows.is_empty(),
            };
            line.list(std::slice::from_ref(&row))?;
        }
        rows.push(row);
    }
    if printer.format != Format::Table {
        printer.list(&rows)?;
    }
    if failed > 0 {
        return Err(CommandError::Incomplete(format!(
            "node {name} is drained but {failed} VPS(es) could not be moved (see above)"
        )));
    }
    Ok(())
}

fn done(
    printer: &Printer,
    kind: &'static str,
    name: String,
    action: &'static str,
) -> Result<(), CommandError> {
    let text = format!("{kind} {name} {action}");
    Ok(printer.outcome(&DoneView { kind, name, action }, &text)?)
}

/// Applies the given flags on top of `base`; flags not given keep `base`'s value.
pub fn merge_quota(base: Quota, args: &QuotaArgs) -> Quota {
    Quota {
        max_vps: args.max_vps.unwrap_or(base.max_vps),
        vcpus: args.vcpus.unwrap_or(base.vcpus),
        memory_bytes: args.memory.map_or(base.memory_bytes, |s| s.0),
        disk_bytes: args.disk.map_or(base.disk_bytes, |s| s.0),
        ipv4_count: args.ipv4.unwrap_or(base.ipv4_count),
    }
}

async fn tenant(
    session: &Session,
    printer: &Printer,
    command: TenantCommand,
) -> Result<(), CommandError> {
    let mut client = session.tenants();
    let tenant = match command {
        TenantCommand::Create { name, quota } => {
            let request = CreateTenantRequest {
                name,
                // Zero fields take the controller's default quota.
                quota: quota.any().then(|| merge_quota(Quota::default(), &quota)),
            };
            session.call(client.create_tenant(request)).await?
        }
        TenantCommand::List => {
            let mut tenants = Vec::new();
            let mut page_token = String::new();
            for _ in 0..MAX_PAGES {
                let request = ListTenantsRequest {
                    page: Some(PageRequest {
                        page_size: 0,
                        page_token: page_token.clone(),
                    }),
                };
                let response = session
                    .read(|session| {
                        let (mut client, request) = (session.tenants(), request.clone());
                        async move { client.list_tenants(request).await }
                    })
                    .await?;
                tenants.extend(response.tenants);
                if response.next_page_token.is_empty() || response.next_page_token == page_token {
                    break;
                }
                page_token = response.next_page_token;
            }
            let mut views: Vec<TenantView> = tenants.iter().map(TenantView::from).collect();
            views.sort_by(|a, b| a.name.cmp(&b.name));
            return Ok(printer.list(&views)?);
        }
        TenantCommand::Show { name } => {
            session
                .read(|session| {
                    let (mut client, name) = (session.tenants(), name.clone());
                    async move { client.get_tenant(GetTenantRequest { name }).await }
                })
                .await?
        }
        TenantCommand::SetQuota { name, quota } => {
            // Read-modify-write so flags not given keep their current value.
            let current = session
                .call(client.get_tenant(GetTenantRequest { name: name.clone() }))
                .await?;
            let request = SetQuotaRequest {
                name,
                quota: Some(merge_quota(current.quota.unwrap_or_default(), &quota)),
            };
            session.call(client.set_quota(request)).await?
        }
        TenantCommand::Suspend { name, reason } => {
            session
                .call(client.suspend_tenant(SuspendTenantRequest { name, reason }))
                .await?
        }
        TenantCommand::Unsuspend { name } => {
            session
                .call(client.unsuspend_tenant(UnsuspendTenantRequest { name }))
                .await?
        }
        TenantCommand::Delete { name, yes } => {
            confirm_destructive(yes, &format!("Delete tenant {name}?"))?;
            session
                .call(client.delete_tenant(DeleteTenantRequest { name: name.clone() }))
                .await?;
            return done(printer, "tenant", name, "deleted");
        }
    };
    Ok(printer.one(&TenantView::from(&tenant))?)
}

/// The role and tenant of a new token (clap guarantees exactly one of the two).
pub fn token_subject(tenant: Option<String>, role: Option<TokenRole>) -> (Role, String) {
    match (tenant, role) {
        (Some(tenant), _) => (Role::Tenant, tenant),
        (None, Some(TokenRole::Billing)) => (Role::Billing, String::new()),
        (None, Some(TokenRole::Admin) | None) => (Role::Admin, String::new()),
    }
}

async fn token(
    session: &Session,
    printer: &Printer,
    command: TokenCommand,
) -> Result<(), CommandError> {
    let mut client = session.tokens();
    match command {
        TokenCommand::Create {
            tenant,
            role,
            description,
            expires_in,
        } => {
            let (role, tenant) = token_subject(tenant, role);
            let expires_at = expires_in.map(|after| {
                let at = std::time::SystemTime::now() + after;
                prost_types::Timestamp::from(at)
            });
            let request = CreateTokenRequest {
                role: role as i32,
                tenant,
                description,
                expires_at,
            };
            let created = session.call(client.create_token(request)).await?;
            match printer.format {
                // Only the secret, so `TOKEN=$(paddock admin token create ...)` works.
                Format::Table => Ok(printer.line(&created.token)?),
                Format::Json | Format::Yaml => Ok(printer.json(&CreatedTokenView {
                    token: created.token.clone(),
                    info: created.info.as_ref().map(TokenView::from),
                })?),
            }
        }
        TokenCommand::List { tenant } => {
            let request = ListTokensRequest {
                tenant: tenant.unwrap_or_default(),
            };
            let response = session.call(client.list_tokens(request)).await?;
            let views: Vec<TokenView> = response.tokens.iter().map(TokenView::from).collect();
            Ok(printer.list(&views)?)
        }
        TokenCommand::Revoke { id } => {
            session
                .call(client.revoke_token(RevokeTokenRequest {
                    token_id: id.clone(),
                }))
                .await?;
            done(printer, "token", id, "revoked")
        }
    }
}

async fn node(
    session: &Session,
    printer: &Printer,
    command: NodeCommand,
) -> Result<(), CommandError> {
    let mut client = session.nodes();
    let node = match command {
        NodeCommand::List => {
            let response = session
                .read(|session| {
                    let mut client = session.nodes();
                    async move { client.list_nodes(Empty {}).await }
                })
                .await?;
            let mut views: Vec<NodeView> = response.nodes.iter().map(NodeView::from).collect();
            views.sort_by(|a, b| a.name.cmp(&b.name));
            return Ok(printer.list(&views)?);
        }
        NodeCommand::Show { name } => {
            session
                .read(|session| {
                    let (mut client, name) = (session.nodes(), name.clone());
                    async move { client.get_node(GetNodeRequest { name }).await }
                })
                .await?
        }
        NodeCommand::Drain {
            name,
            migrate: true,
            how,
        } => return drain_and_migrate(session, printer, name, how).await,
        NodeCommand::Drain { how, .. } if how.allow_new_address || how.live || how.allow_cold => {
            return Err(CommandError::Usage(
                "--allow-new-address, --live and --allow-cold go with --migrate".to_owned(),
            ))
        }
        NodeCommand::Drain { name, .. } => {
            session
                .call(client.drain_node(GetNodeRequest { name }))
                .await?
        }
        NodeCommand::Undrain { name } => {
            session
                .call(client.undrain_node(GetNodeRequest { name }))
                .await?
        }
        NodeCommand::Remove { name, yes } => {
            confirm_destructive(
                yes,
                &format!("Remove node {name} and revoke its certificates?"),
            )?;
            session
                .call(client.remove_node(GetNodeRequest { name: name.clone() }))
                .await?;
            return done(printer, "node", name, "removed");
        }
        NodeCommand::Label { name, labels } => {
            let current = session
                .call(client.get_node(GetNodeRequest { name: name.clone() }))
                .await?;
            let labels = merge_labels(current.labels, &labels)?;
            session
                .call(client.set_node_labels(SetNodeLabelsRequest { name, labels }))
                .await?
        }
    };
    Ok(printer.one(&NodeView::from(&node))?)
}

/// Applies `KEY=VALUE` (set) and `KEY-` (remove) to a node's labels.
fn merge_labels(
    mut labels: std::collections::HashMap<String, String>,
    changes: &[String],
) -> Result<std::collections::HashMap<String, String>, CommandError> {
    for change in changes {
        if let Some((key, value)) = change.split_once('=') {
            if key.is_empty() {
                return Err(CommandError::Usage(format!(
                    "label {change:?} has an empty key"
                )));
            }
            labels.insert(key.to_owned(), value.to_owned());
        } else if let Some(key) = change.strip_suffix('-').filter(|key| !key.is_empty()) {
            labels.remove(key);
        } else {
            return Err(CommandError::Usage(format!(
                "label {change:?} is neither KEY=VALUE nor KEY-"
            )));
        }
    }
    Ok(labels)
}

async fn plan(
    session: &Session,
    printer: &Printer,
    command: PlanCommand,
) -> Result<(), CommandError> {
    let mut client = session.plans();
    match command {
        PlanCommand::Create {
            name,
            vcpus,
            memory,
            disk,
            io_read,
            io_write,
            read_iops,
            write_iops,
            pids,
            swap,
            ipv4,
            transfer,
            transfer_overage,
            max_snapshots,
        } => {
            let (transfer_overage, overage_rate_bits_per_sec) = match transfer_overage {
                None => (v1::TransferOverage::Unspecified, 0),
                Some(Overage::Notify) => (v1::TransferOverage::Notify, 0),
                Some(Overage::Suspend) => (v1::TransferOverage::Suspend, 0),
                Some(Overage::Throttle(rate)) => (v1::TransferOverage::Throttle, rate),
            };
            let plan = v1::Plan {
                name,
                resources: Some(Resources {
                    vcpus,
                    memory_bytes: memory.0,
                    disk_bytes: disk.0,
                    pids_max: pids.unwrap_or_default(),
                    swap_bytes: swap.map(|s| s.0).unwrap_or_default(),
                    io_read_bytes_per_sec: io_read.unwrap_or_default(),
                    io_write_bytes_per_sec: io_write.unwrap_or_default(),
                    io_read_iops: read_iops.unwrap_or_default(),
                    io_write_iops: write_iops.unwrap_or_default(),
                    ipv4_count: ipv4.unwrap_or_default(),
                    ..Default::default()
                }),
                monthly_transfer_bytes: transfer.map(|s| s.0).unwrap_or_default(),
                transfer_overage: transfer_overage.into(),
                overage_rate_bits_per_sec,
                max_snapshots: max_snapshots.unwrap_or_default(),
            };
            let created = session
                .call(client.create_plan(CreatePlanRequest { plan: Some(plan) }))
                .await?;
            Ok(printer.one(&PlanView::from(&created))?)
        }
        PlanCommand::List => {
            let response = session.call(client.list_plans(Empty {})).await?;
            let mut views: Vec<PlanView> = response.plans.iter().map(PlanView::from).collect();
            views.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(printer.list(&views)?)
        }
        PlanCommand::Delete { name } => {
            session
                .call(client.delete_plan(DeletePlanRequest { name: name.clone() }))
                .await?;
            done(printer, "plan", name, "deleted")
        }
    }
}

async fn pool(
    session: &Session,
    printer: &Printer,
    command: PoolCommand,
) -> Result<(), CommandError> {
    let mut client = session.pools();
    let pool = match command {
        PoolCommand::Create {
            name,
            nodes,
            cidr,
            gateway,
            range_start,
            range_end,
            ipv6_prefix,
            nat,
        } => {
            let pool = v1::Pool {
                name,
                // Older controllers read only `node`: a pool of one node stays readable there.
                node: nodes.first().cloned().unwrap_or_default(),
                nodes: if nodes.len() > 1 { nodes } else { Vec::new() },
                cidr,
                gateway,
                range_start: range_start.unwrap_or_default(),
                range_end: range_end.unwrap_or_default(),
                ipv6_prefix: ipv6_prefix.unwrap_or_default(),
                nat,
                total: 0,
                allocated: 0,
            };
            session
                .call(client.create_pool(CreatePoolRequest { pool: Some(pool) }))
                .await?
        }
        PoolCommand::List => {
            let response = session.call(client.list_pools(Empty {})).await?;
            let mut views: Vec<PoolView> = response.pools.iter().map(PoolView::from).collect();
            views.sort_by(|a, b| a.name.cmp(&b.name));
            return Ok(printer.list(&views)?);
        }
        PoolCommand::Show { name } => {
            session
                .call(client.get_pool(GetPoolRequest { name }))
                .await?
        }
        PoolCommand::Delete { name } => {
            session
                .call(client.delete_pool(GetPoolRequest { name: name.clone() }))
                .await?;
            return done(printer, "pool", name, "deleted");
        }
    };
    Ok(printer.one(&PoolView::from(&pool))?)
}

/// Audit entries asked for per request (the controller's maximum).
const AUDIT_PAGE_SIZE: u32 = 1000;

/// The newest `limit` entries, oldest first. The controller pages from the
/// oldest entry on, so the whole trail is read and only its tail kept.
async fn audit(session: &Session, printer: &Printer, limit: u32) -> Result<(), CommandError> {
    let mut client = session.audit();
    let wanted = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut entries = std::collections::VecDeque::new();
    let mut page_token = String::new();
    for _ in 0..MAX_PAGES {
        let request = ListAuditRequest {
            page: Some(PageRequest {
                page_size: AUDIT_PAGE_SIZE,
                page_token: page_token.clone(),
            }),
        };
        let response = session.call(client.list_audit(request)).await?;
        entries.extend(response.entries);
        while entries.len() > wanted {
            entries.pop_front();
        }
        if response.next_page_token.is_empty() || response.next_page_token == page_token {
            break;
        }
        page_token = response.next_page_token;
    }
    let views: Vec<AuditView> = entries.iter().map(AuditView::from).collect();
    Ok(printer.list(&views)?)
}

/// How long the stream may stay quiet before `events` without --follow takes everything
/// recorded so far as delivered (the controller sends what it has at once).
const BACKLOG_QUIET: std::time::Duration = std::time::Duration::from_secs(1);
/// Streams that may break off in a row, each before delivering an event, before giving up.
const MAX_FRUITLESS_STREAMS: usize = 5;

/// `WatchEvents` after `after`: prints each event once, in cursor order. A stream that
/// breaks off (its controller died) is opened again after the last cursor printed, through
/// the next controller of the context.
async fn events(
    session: &Session,
    printer: &Printer,
    tenant: String,
    after: u64,
    follow: bool,
) -> Result<(), CommandError> {
    let mut cursor = after;
    let mut fruitless = 0;
    loop {
        let request = v1::WatchEventsRequest {
            after_cursor: cursor,
            tenant: tenant.clone(),
        };
        let mut stream = session
            .read(|session| {
                let (mut client, request) = (session.billing(), request.clone());
                async move { client.watch_events(request).await }
            })
            .await?;
        let mut heard = false;
        let broke = loop {
            let message = if follow {
                stream.message().await
            } else {
                match tokio::time::timeout(BACKLOG_QUIET, stream.message()).await {
                    Ok(message) => message,
                    Err(_quiet) => return Ok(()),
                }
            };
            match message {
                Ok(Some(event)) => {
                    // Never one twice, even from a controller that sends from further back.
                    if event.cursor <= cursor {
                        continue;
                    }
                    cursor = event.cursor;
                    heard = true;
                    print_event(printer, &EventView::from(&event))?;
                }
                Ok(None) => break None,
                Err(status) if crate::client::answer_lost(&status) => break Some(status),
                Err(status) => return Err(session.status_error(&status).into()),
            }
        };
        fruitless = if heard { 0 } else { fruitless + 1 };
        if fruitless > MAX_FRUITLESS_STREAMS {
            let status = broke.unwrap_or_else(|| tonic::Status::unavailable("the stream ended"));
            return Err(session.status_error(&status).into());
        }
        if !session.next_controller() {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
}

/// One event as the CLI prints it.
#[derive(Debug, serde::Serialize)]
struct EventView {
    cursor: u64,
    at: String,
    kind: String,
    tenant: String,
    vps: String,
    vps_id: String,
    plan: String,
    detail: String,
}

impl From<&v1::Event> for EventView {
    fn from(event: &v1::Event) -> Self {
        let kind = event.kind().as_str_name();
        Self {
            cursor: event.cursor,
            at: crate::views::timestamp(event.at.as_ref())
                .map(|at| crate::views::rfc3339(&at))
                .unwrap_or_default(),
            kind: kind
                .strip_prefix("EVENT_KIND_")
                .unwrap_or(kind)
                .to_ascii_lowercase(),
            tenant: event.tenant.clone(),
            vps: event.vps.clone(),
            vps_id: event.vps_id.clone(),
            plan: event.plan.clone(),
            detail: event.detail.clone(),
        }
    }
}

/// One line per event as it comes: compact JSON with `-o json|yaml` (JSON lines, for
/// pipes), else `CURSOR  TIME  KIND  TENANT/VPS  DETAIL`.
fn print_event(printer: &Printer, event: &EventView) -> Result<(), CommandError> {
    let line = match printer.format {
        Format::Json | Format::Yaml => {
            serde_json::to_string(event).map_err(crate::output::OutputError::from)?
        }
        Format::Table => format!(
            "{}  {}  {}  {}/{}  {}",
            event.cursor, event.at, event.kind, event.tenant, event.vps, event.detail
        )
        .trim_end()
        .to_owned(),
    };
    Ok(printer.line(&line)?)
}

#[cfg(test)]
mod tests {

    #[test]
    fn labels_are_set_and_removed() {
        let current = [
            ("disk".to_owned(), "hdd".to_owned()),
            ("zone".to_owned(), "a".to_owned()),
        ]
        .into_iter()
        .collect();
        let merged = super::merge_labels(
            current,
            &[
                "disk=ssd".to_owned(),
                "zone-".to_owned(),
                "region=eu1".to_owned(),
            ],
        )
        .expect("merge");
        assert_eq!(merged.get("disk").map(String::as_str), Some("ssd"));
        assert_eq!(merged.get("region").map(String::as_str), Some("eu1"));
        assert!(!merged.contains_key("zone"));
        assert!(super::merge_labels(Default::default(), &["oops".to_owned()]).is_err());
        assert!(super::merge_labels(Default::default(), &["=v".to_owned()]).is_err());
    }

    use paddock_config::ByteSize;

    use super::*;

    #[test]
    fn quota_flags_override_only_what_they_name() {
        let base = Quota {
            max_vps: 10,
            vcpus: 16.0,
            memory_bytes: 32 << 30,
            disk_bytes: 400 << 30,
            ipv4_count: 10,
        };
        let args = QuotaArgs {
            max_vps: Some(20),
            memory: Some(ByteSize(64 << 30)),
            ..Default::default()
        };
        let merged = merge_quota(base, &args);
        assert_eq!(merged.max_vps, 20);
        assert_eq!(merged.memory_bytes, 64 << 30);
        assert_eq!(merged.vcpus, 16.0);
        assert_eq!(merged.disk_bytes, 400 << 30);
        assert_eq!(merged.ipv4_count, 10);
    }

    #[test]
    fn token_subjects() {
        assert_eq!(
            token_subject(Some("acme".into()), None),
            (Role::Tenant, "acme".to_owned())
        );
        assert_eq!(
            token_subject(None, Some(TokenRole::Admin)),
            (Role::Admin, String::new())
        );
        assert_eq!(
            token_subject(None, Some(TokenRole::Billing)),
            (Role::Billing, String::new())
        );
    }
}
