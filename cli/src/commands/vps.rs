//! Tenant self-service: VPS lifecycle, quota, usage, plans and templates.

use std::time::Duration;

use paddock_proto::v1::{
    self, CreateVpsRequest, Empty, ListVpsRequest, PageRequest, RebuildVpsRequest,
    ResizeVpsRequest, Resources, TenantUsageSummaryRequest, VpsRef,
};

use super::{confirm_destructive, CommandError};
use crate::args::{
    CreateArgs, DeleteArgs, PowerArgs, RebuildArgs, ResizeArgs, ResourceOverrides, TenantArg,
    UsageArgs, VpsArgs, WaitArgs,
};
use crate::client::Session;
use crate::output::{Format, Printer};
use crate::views::{
    quota_rows, DoneView, PlanView, QuotaReportView, TemplateView, TenantView, UsageSummaryView,
    UsageView, VpsView, QUOTA_HEADERS,
};
use crate::wait::{wait_for, Goal};

/// Upper bound on pages fetched for one list, against a server that never stops paging.
pub const MAX_PAGES: usize = 10_000;

/// The power operations that share `start|stop|restart`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    /// `StartVps`, then wait for `running`.
    Start,
    /// `StopVps`, then wait for `stopped`.
    Stop,
    /// `RestartVps`, then wait for `running`.
    Restart,
}

fn vps_ref(args: &VpsArgs) -> VpsRef {
    VpsRef {
        tenant: args.tenant.value(),
        name: args.name.clone(),
    }
}

fn timeout(wait: &WaitArgs) -> Option<Duration> {
    (wait.timeout > 0).then(|| Duration::from_secs(wait.timeout))
}

/// The override fields as a proto `Resources`; zero means "keep / plan default".
pub fn overrides(o: &ResourceOverrides) -> Option<Resources> {
    o.any().then(|| Resources {
        vcpus: o.vcpus.unwrap_or_default(),
        memory_bytes: o.memory.map(|s| s.0).unwrap_or_default(),
        disk_bytes: o.disk.map(|s| s.0).unwrap_or_default(),
        net_egress_bits_per_sec: o.egress.unwrap_or_default(),
        net_ingress_bits_per_sec: o.ingress.unwrap_or_default(),
        ..Default::default()
    })
}

/// `paddock create`: `CreateVps`, then wait until running.
pub async fn create(
    session: &Session,
    printer: &Printer,
    args: CreateArgs,
) -> Result<(), CommandError> {
    let request = CreateVpsRequest {
        tenant: args.tenant.value(),
        name: args.name.clone(),
        plan: args.plan.clone(),
        template: args.template.clone().unwrap_or_default(),
        overrides: overrides(&args.overrides),
        start: true,
        node_selector: args.node_selector.iter().cloned().collect(),
    };
    let mut vps = session
        .mutate(|mut client| {
            let request = request.clone();
            async move { client.create_vps(request).await }
        })
        .await?;
    if args.wait.enabled() {
        let reference = VpsRef {
            tenant: args.tenant.value(),
            name: args.name.clone(),
        };
        if let Some(ready) =
            wait_for(session, &reference, Goal::Running, timeout(&args.wait)).await?
        {
            vps = ready;
        }
    }
    Ok(printer.one(&VpsView::from(&vps))?)
}

/// Fetches every VPS visible to the caller (all pages) with `ListVps`.
pub async fn fetch_all_vps(
    session: &Session,
    tenant: String,
) -> Result<Vec<v1::Vps>, CommandError> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    for _ in 0..MAX_PAGES {
        let request = ListVpsRequest {
            tenant: tenant.clone(),
            page: Some(PageRequest {
                page_size: 0,
                page_token: page_token.clone(),
            }),
        };
        let response = session
            .read(|session| {
                let (mut client, request) = (session.vps(), request.clone());
                async move { client.list_vps(request).await }
            })
            .await?;
        all.extend(response.vps);
        if response.next_page_token.is_empty() || response.next_page_token == page_token {
            break;
        }
        page_token = response.next_page_token;
    }
    Ok(all)
}

/// `paddock list`: `ListVps`, sorted by tenant and name.
pub async fn list(
    session: &Session,
    printer: &Printer,
    tenant: TenantArg,
) -> Result<(), CommandError> {
    let mut views: Vec<VpsView> = fetch_all_vps(session, tenant.value())
        .await?
        .iter()
        .map(VpsView::from)
        .collect();
    views.sort_by(|a, b| (&a.tenant, &a.name).cmp(&(&b.tenant, &b.name)));
    Ok(printer.list(&views)?)
}

/// `paddock show`: `GetVps`.
pub async fn show(session: &Session, printer: &Printer, args: VpsArgs) -> Result<(), CommandError> {
    let reference = vps_ref(&args);
    let vps = session
        .read(|session| {
            let (mut client, reference) = (session.vps(), reference.clone());
            async move { client.get_vps(reference).await }
        })
        .await?;
    Ok(printer.one(&VpsView::from(&vps))?)
}

/// `paddock start|stop|restart`: the power RPC, then wait for the target state.
pub async fn power(
    session: &Session,
    printer: &Printer,
    op: Power,
    args: PowerArgs,
) -> Result<(), CommandError> {
    let reference = vps_ref(&args.vps);
    let mut client = session.vps();
    // A restart is done when a new init runs, not while the old one still does.
    let previous_init_pid = match op {
        Power::Restart if args.wait.enabled() => {
            session
                .call(client.get_vps(reference.clone()))
                .await?
                .init_pid
        }
        _ => 0,
    };
    let mut vps = session
        .mutate(|mut client| {
            let reference = reference.clone();
            async move {
                match op {
                    Power::Start => client.start_vps(reference).await,
                    Power::Stop => client.stop_vps(reference).await,
                    Power::Restart => client.restart_vps(reference).await,
                }
            }
        })
        .await?;
    if args.wait.enabled() {
        let goal = match op {
            Power::Start => Goal::Running,
            Power::Restart => Goal::RunningAgain { previous_init_pid },
            Power::Stop => Goal::Stopped,
        };
        if let Some(done) = wait_for(session, &reference, goal, timeout(&args.wait)).await? {
            vps = done;
        }
    }
    Ok(printer.one(&VpsView::from(&vps))?)
}

/// `paddock delete`: confirm on a TTY, `DeleteVps`, then wait until it is gone.
pub async fn delete(
    session: &Session,
    printer: &Printer,
    args: DeleteArgs,
) -> Result<(), CommandError> {
    let reference = vps_ref(&args.vps);
    confirm_destructive(
        args.yes,
        &format!(
            "Delete vps {}? Its disk and everything on it will be destroyed.",
            reference.name
        ),
    )?;
    let vps = session
        .mutate(|mut client| {
            let reference = reference.clone();
            async move { client.delete_vps(reference).await }
        })
        .await?;
    if !args.wait.enabled() {
        return Ok(printer.one(&VpsView::from(&vps))?);
    }
    wait_for(session, &reference, Goal::Gone, timeout(&args.wait)).await?;
    let done = DoneView {
        kind: "vps",
        name: reference.name.clone(),
        action: "deleted",
    };
    Ok(printer.outcome(&done, &format!("vps {} deleted", reference.name))?)
}

/// `paddock resize`: `ResizeVps` with a plan and/or single overrides.
pub async fn resize(
    session: &Session,
    printer: &Printer,
    args: ResizeArgs,
) -> Result<(), CommandError> {
    let request = ResizeVpsRequest {
        vps: Some(vps_ref(&args.vps)),
        plan: args.plan.clone().unwrap_or_default(),
        resources: overrides(&args.overrides),
    };
    let mut vps = session
        .mutate(|mut client| {
            let request = request.clone();
            async move { client.resize_vps(request).await }
        })
        .await?;
    if args.wait.enabled() {
        // Until its node has applied the new limits, the VPS is not converged.
        let goal = Goal::Applied {
            running: vps.desired_power == v1::PowerState::Running as i32,
        };
        let reference = vps_ref(&args.vps);
        if let Some(done) = wait_for(session, &reference, goal, timeout(&args.wait)).await? {
            vps = done;
        }
    }
    Ok(printer.one(&VpsView::from(&vps))?)
}

/// `paddock rebuild`: confirm on a TTY, then `RebuildVps`.
pub async fn rebuild(
    session: &Session,
    printer: &Printer,
    args: RebuildArgs,
) -> Result<(), CommandError> {
    let reference = vps_ref(&args.vps);
    confirm_destructive(
        args.yes,
        &format!(
            "Rebuild vps {}? Its root filesystem will be replaced and all changes lost.",
            reference.name
        ),
    )?;
    let before = session
        .call(session.vps().get_vps(reference.clone()))
        .await?;
    let request = RebuildVpsRequest {
        vps: Some(reference.clone()),
        template: args.template.clone().unwrap_or_default(),
    };
    let mut vps = session
        .mutate(|mut client| {
            let request = request.clone();
            async move { client.rebuild_vps(request).await }
        })
        .await?;
    if args.wait.enabled() {
        // A rebuilt VPS that should run comes back with a new init.
        let goal = if before.desired_power == v1::PowerState::Running as i32 {
            Goal::RunningAgain {
                previous_init_pid: before.init_pid,
            }
        } else {
            Goal::Stopped
        };
        if let Some(done) = wait_for(session, &reference, goal, timeout(&args.wait)).await? {
            vps = done;
        }
    }
    Ok(printer.one(&VpsView::from(&vps))?)
}

/// `paddock quota`: `GetMyQuota`, or `GetTenant` when an admin names `--tenant`.
pub async fn quota(
    session: &Session,
    printer: &Printer,
    tenant: TenantArg,
) -> Result<(), CommandError> {
    let report = match tenant.tenant {
        Some(name) => {
            let request = v1::GetTenantRequest { name };
            let tenant = session
                .read(|session| {
                    let (mut client, request) = (session.tenants(), request.clone());
                    async move { client.get_tenant(request).await }
                })
                .await?;
            QuotaReportView::from(&TenantView::from(&tenant))
        }
        None => {
            let report = session
                .read(|session| {
                    let mut client = session.tenants();
                    async move { client.get_my_quota(Empty {}).await }
                })
                .await?;
            QuotaReportView::from(&report)
        }
    };
    let rows = quota_rows(&report.used, &report.quota);
    Ok(printer.table(&report, QUOTA_HEADERS, &rows)?)
}

/// `paddock usage`: `BillingService.TenantUsageSummary`.
pub async fn usage(
    session: &Session,
    printer: &Printer,
    args: UsageArgs,
) -> Result<(), CommandError> {
    let to_ts = |t: chrono::DateTime<chrono::Utc>| prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    };
    let request = TenantUsageSummaryRequest {
        tenant: args.tenant.value(),
        from: args.from.map(to_ts),
        to: args.to.map(to_ts),
    };
    let summary = session
        .read(|session| {
            let (mut client, request) = (session.billing(), request.clone());
            async move { client.tenant_usage_summary(request).await }
        })
        .await?;
    let view = UsageSummaryView::from(&summary);
    match printer.format {
        Format::Json | Format::Yaml => Ok(printer.json(&view)?),
        Format::Table => {
            let mut rows: Vec<UsageView> = view.per_vps.clone();
            if let Some(mut total) = view.total.clone() {
                total.vps.clear();
                rows.push(total);
            }
            Ok(printer.list(&rows)?)
        }
    }
}

/// `paddock plans`: `PlanService.ListPlans`.
pub async fn plans(session: &Session, printer: &Printer) -> Result<(), CommandError> {
    let response = session
        .read(|session| {
            let mut client = session.plans();
            async move { client.list_plans(Empty {}).await }
        })
        .await?;
    let mut views: Vec<PlanView> = response.plans.iter().map(PlanView::from).collect();
    views.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(printer.list(&views)?)
}

/// `paddock templates`: `VpsService.ListTemplates`.
pub async fn templates(session: &Session, printer: &Printer) -> Result<(), CommandError> {
    let response = session
        .read(|session| {
            let mut client = session.vps();
            async move { client.list_templates(Empty {}).await }
        })
        .await?;
    let views: Vec<TemplateView> = response.templates.iter().map(TemplateView::from).collect();
    Ok(printer.list(&views)?)
}

#[cfg(test)]
mod tests {
    use paddock_config::ByteSize;

    use super::*;

    #[test]
    fn overrides_only_when_given() {
        assert_eq!(overrides(&ResourceOverrides::default()), None);
        let given = ResourceOverrides {
            vcpus: Some(1.5),
            memory: Some(ByteSize(1 << 30)),
            disk: None,
            egress: Some(50_000_000),
            ingress: None,
        };
        let resources = overrides(&given).expect("some");
        assert_eq!(resources.vcpus, 1.5);
        assert_eq!(resources.memory_bytes, 1 << 30);
        assert_eq!(resources.disk_bytes, 0);
        assert_eq!(resources.net_egress_bits_per_sec, 50_000_000);
    }
}
