//! `paddock backup create|list|restore|delete`: `BackupService`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use paddock_config::ByteSize;
use paddock_proto::v1::{
    self, BackupRef, CreateBackupRequest, ListBackupsRequest, RestoreBackupRequest, VpsRef,
};
use serde::Serialize;

use super::{confirm_destructive, CommandError};
use crate::args::{BackupCommand, BackupRestoreArgs, VpsArgs};
use crate::client::Session;
use crate::output::{dashes, Detail, Printer, Tabular};
use crate::views::{rfc3339, timestamp, DoneView, VpsView};
use crate::wait::{wait_for, Goal};

/// A backup as the CLI shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackupView {
    pub id: String,
    pub tenant: String,
    pub vps: String,
    pub node: String,
    pub plan: String,
    pub template: String,
    pub size_bytes: u64,
    pub sha256: String,
    pub created_at: Option<String>,
    pub location: String,
}

impl From<&v1::Backup> for BackupView {
    fn from(b: &v1::Backup) -> Self {
        Self {
            id: b.id.clone(),
            tenant: b.tenant.clone(),
            vps: b.vps.clone(),
            node: b.node.clone(),
            plan: b.plan.clone(),
            template: b.template.clone(),
            size_bytes: b.size_bytes,
            sha256: b.sha256.clone(),
            created_at: timestamp(b.created_at.as_ref()).map(|t| rfc3339(&t)),
            location: b.location.clone(),
        }
    }
}

impl Tabular for BackupView {
    const HEADERS: &'static [&'static str] =
        &["ID", "VPS", "SIZE", "PLAN", "TEMPLATE", "NODE", "CREATED"];

    fn row(&self, _now: DateTime<Utc>) -> Vec<String> {
        dashes(vec![
            self.id.clone(),
            self.vps.clone(),
            ByteSize(self.size_bytes).to_string(),
            self.plan.clone(),
            self.template.clone(),
            self.node.clone(),
            self.created_at.clone().unwrap_or_default(),
        ])
    }
}

impl Detail for BackupView {
    fn fields(&self, _now: DateTime<Utc>) -> Vec<(&'static str, String)> {
        vec![
            ("ID", self.id.clone()),
            ("Tenant", self.tenant.clone()),
            ("VPS", self.vps.clone()),
            ("Node", self.node.clone()),
            ("Plan", self.plan.clone()),
            ("Template", self.template.clone()),
            ("Size", ByteSize(self.size_bytes).to_string()),
            ("SHA-256", self.sha256.clone()),
            ("Created", self.created_at.clone().unwrap_or_default()),
            ("Location", self.location.clone()),
        ]
    }
}

/// Runs one `paddock backup` subcommand.
pub async fn run(
    session: &Session,
    printer: &Printer,
    command: BackupCommand,
) -> Result<(), CommandError> {
    match command {
        BackupCommand::Create(args) => create(session, printer, args).await,
        BackupCommand::List { vps, tenant } => {
            let response = session
                .call(session.backups().list_backups(ListBackupsRequest {
                    tenant: tenant.value(),
                    vps: vps.unwrap_or_default(),
                }))
                .await?;
            let views: Vec<BackupView> = response.backups.iter().map(BackupView::from).collect();
            Ok(printer.list(&views)?)
        }
        BackupCommand::Restore(args) => restore(session, printer, args).await,
        BackupCommand::Delete { backup, tenant } => {
            session
                .call(session.backups().delete_backup(BackupRef {
                    tenant: tenant.value(),
                    id: backup.clone(),
                }))
                .await?;
            let done = DoneView {
                kind: "backup",
                name: backup.clone(),
                action: "deleted",
            };
            Ok(printer.outcome(&done, &format!("backup {backup} deleted"))?)
        }
    }
}

async fn create(session: &Session, printer: &Printer, args: VpsArgs) -> Result<(), CommandError> {
    let backup = session
        .call(session.backups().create_backup(CreateBackupRequest {
            vps: Some(VpsRef {
                tenant: args.tenant.value(),
                name: args.name.clone(),
            }),
        }))
        .await?;
    Ok(printer.one(&BackupView::from(&backup))?)
}

async fn restore(
    session: &Session,
    printer: &Printer,
    args: BackupRestoreArgs,
) -> Result<(), CommandError> {
    if args.in_place {
        confirm_destructive(
            args.yes,
            &format!(
                "Restore backup {} over its VPS? The VPS is stopped and its disk replaced.",
                args.backup
            ),
        )?;
    }
    let vps = session
        .call(session.backups().restore_backup(RestoreBackupRequest {
            backup: Some(BackupRef {
                tenant: args.tenant.value(),
                id: args.backup.clone(),
            }),
            to_name: args.to.clone().unwrap_or_default(),
            in_place: args.in_place,
        }))
        .await?;
    if !args.wait.enabled() {
        return Ok(printer.one(&VpsView::from(&vps))?);
    }
    let reference = VpsRef {
        tenant: args.tenant.value(),
        name: vps.name.clone(),
    };
    let goal = if vps.desired_power == v1::PowerState::Running as i32 {
        Goal::Running
    } else {
        Goal::Stopped
    };
    let timeout = (args.wait.timeout > 0).then(|| Duration::from_secs(args.wait.timeout));
    let done = wait_for(session, &reference, goal, timeout).await?;
    let vps = done.unwrap_or(vps);
    Ok(printer.one(&VpsView::from(&vps))?)
}
