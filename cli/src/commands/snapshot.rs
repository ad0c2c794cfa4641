//! `paddock snapshot create|list|restore|delete`: snapshots of a VPS's disk, stored on its
//! node and counted against its plan's snapshot quota.

use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use paddock_config::ByteSize;
use paddock_proto::v1::{self, ListSnapshotsRequest, SnapshotRef, VpsRef};
use serde::Serialize;

use super::{confirm_destructive, CommandError};
use crate::args::{TenantArg, WaitArgs};
use crate::client::Session;
use crate::output::{age, dashes, Detail, Printer, Tabular};
use crate::views::{rfc3339, timestamp, DoneView};
use crate::wait::{wait_for, Goal};

/// `paddock snapshot ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum SnapshotCommand {
    /// Take a crash-consistent snapshot of a VPS's disk (a running VPS is frozen for the copy).
    #[command(after_help = "Example:\n  paddock snapshot create web1 before-upgrade")]
    Create(SnapshotArgs),
    /// List a VPS's snapshots.
    #[command(
        after_help = "Examples:\n  paddock snapshot list web1\n  paddock snapshot list web1 -o json"
    )]
    List {
        /// Name of the VPS.
        vps: String,
        #[command(flatten)]
        tenant: TenantArg,
    },
    /// Replace a VPS's disk with a snapshot (kept); a running VPS is restarted on it.
    #[command(after_help = "Example:\n  paddock snapshot restore web1 before-upgrade --yes")]
    Restore {
        #[command(flatten)]
        snapshot: SnapshotArgs,
        /// Do not ask for confirmation.
        #[arg(short = 'y', long)]
        yes: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Delete a snapshot.
    #[command(after_help = "Example:\n  paddock snapshot delete web1 before-upgrade")]
    Delete(SnapshotArgs),
}

/// Names one snapshot of one VPS.
#[derive(Debug, Clone, Args)]
pub struct SnapshotArgs {
    /// Name of the VPS.
    pub vps: String,
    /// Name of the snapshot (lowercase letters, digits and '-').
    pub name: String,
    #[command(flatten)]
    pub tenant: TenantArg,
}

impl SnapshotArgs {
    fn reference(&self) -> SnapshotRef {
        SnapshotRef {
            vps: self.vps.clone(),
            name: self.name.clone(),
            tenant: self.tenant.value(),
        }
    }
}

/// A snapshot as the CLI shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SnapshotView {
    pub vps: String,
    pub name: String,
    #[serde(serialize_with = "serialize_time")]
    pub created_at: Option<DateTime<Utc>>,
    pub size_bytes: u64,
    /// What it occupies on the node.
    pub allocated_bytes: u64,
    /// `reflink`, `sparse`, or `creating` while the node copies.
    pub method: String,
    pub duration_ms: u64,
}

fn serialize_time<S: serde::Serializer>(
    time: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match time {
        Some(time) => serializer.serialize_str(&rfc3339(time)),
        None => serializer.serialize_none(),
    }
}

impl From<&v1::Snapshot> for SnapshotView {
    fn from(s: &v1::Snapshot) -> Self {
        Self {
            vps: s.vps_name.clone(),
            name: s.name.clone(),
            created_at: timestamp(s.created_at.as_ref()),
            size_bytes: s.size_bytes,
            allocated_bytes: s.allocated_bytes,
            method: s.method.clone(),
            duration_ms: s.duration_ms,
        }
    }
}

impl Tabular for SnapshotView {
    const HEADERS: &'static [&'static str] =
        &["NAME", "AGE", "SIZE", "ALLOCATED", "METHOD", "TOOK"];

    fn row(&self, now: DateTime<Utc>) -> Vec<String> {
        dashes(vec![
            self.name.clone(),
            age(self.created_at, now),
            ByteSize(self.size_bytes).to_string(),
            ByteSize(self.allocated_bytes).to_string(),
            self.method.clone(),
            format!("{:?}", Duration::from_millis(self.duration_ms)),
        ])
    }
}

impl Detail for SnapshotView {
    fn fields(&self, now: DateTime<Utc>) -> Vec<(&'static str, String)> {
        vec![
            ("VPS", self.vps.clone()),
            ("Snapshot", self.name.clone()),
            (
                "Created",
                self.created_at
                    .map(|t| format!("{} ({} ago)", rfc3339(&t), age(Some(t), now)))
                    .unwrap_or_default(),
            ),
            ("Size", ByteSize(self.size_bytes).to_string()),
            ("Allocated", ByteSize(self.allocated_bytes).to_string()),
            ("Method", self.method.clone()),
            (
                "Took",
                format!("{:?}", Duration::from_millis(self.duration_ms)),
            ),
        ]
    }
}

pub async fn run(
    session: &Session,
    printer: &Printer,
    command: SnapshotCommand,
) -> Result<(), CommandError> {
    let mut client = session.snapshots();
    match command {
        SnapshotCommand::Create(args) => {
            let taken = session
                .call(client.create_snapshot(args.reference()))
                .await?;
            Ok(printer.one(&SnapshotView::from(&taken))?)
        }
        SnapshotCommand::List { vps, tenant } => {
            let response = session
                .call(client.list_snapshots(ListSnapshotsRequest {
                    vps,
                    tenant: tenant.value(),
                }))
                .await?;
            let views: Vec<SnapshotView> =
                response.snapshots.iter().map(SnapshotView::from).collect();
            Ok(printer.list(&views)?)
        }
        SnapshotCommand::Restore {
            snapshot,
            yes,
            wait,
        } => {
            let vps_ref = VpsRef {
                tenant: snapshot.tenant.value(),
                name: snapshot.vps.clone(),
            };
            let before = session.call(session.vps().get_vps(vps_ref.clone())).await?;
            confirm_destructive(
                yes,
                &format!(
                    "Replace the disk of VPS {} with snapshot {}? Changes since the snapshot are lost{}.",
                    snapshot.vps,
                    snapshot.name,
                    if before.desired_power == v1::PowerState::Running as i32 {
                        "; the VPS restarts"
                    } else {
                        ""
                    }
                ),
            )?;
            let restored = session
                .call(client.restore_snapshot(snapshot.reference()))
                .await?;
            // The node leaves the VPS stopped; the controller starts it again if it is meant
            // to run.
            if wait.enabled() && before.desired_power == v1::PowerState::Running as i32 {
                let timeout = (wait.timeout > 0).then(|| Duration::from_secs(wait.timeout));
                wait_for(
                    session,
                    &vps_ref,
                    Goal::RunningAgain {
                        previous_init_pid: before.init_pid,
                    },
                    timeout,
                )
                .await?;
            }
            Ok(printer.one(&SnapshotView::from(&restored))?)
        }
        SnapshotCommand::Delete(args) => {
            session
                .call(client.delete_snapshot(args.reference()))
                .await?;
            let done = DoneView {
                kind: "snapshot",
                name: format!("{}/{}", args.vps, args.name),
                action: "deleted",
            };
            Ok(printer.outcome(
                &done,
                &format!("snapshot {}/{} deleted", args.vps, args.name),
            )?)
        }
    }
}
