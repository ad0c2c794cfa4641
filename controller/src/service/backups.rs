//! VPS backups: ask the VPS's node to archive it into the backup store, record the backup
//! (tenant-scoped), restore it into a new VPS (through the normal create path) or in place,
//! delete it. The archive format and the store are the agent's
//! (`node-agent/src/runtime/storage/backup.rs`); the controller keeps the records.

use std::time::Duration;

use chrono::Utc;
use paddock_proto::v1;
use tracing::info;
use uuid::Uuid;

use crate::agents::agent_error;
use crate::auth::Principal;
use crate::convert;
use crate::error::ControllerError;
use crate::model::validate::{self, ValidationError};
use crate::model::{BackupRecord, EventKind, EventRecord, Observed, VpsRecord};
use crate::service::reconcile;
use crate::service::vps::CreateVps;
use crate::service::Controller;

/// How long a restore into a new VPS waits for its node to have created it.
const CREATE_WAIT: Duration = Duration::from_secs(180);

/// Where a backup is restored.
pub enum RestoreTarget {
    /// A new VPS of this name, created with the backup's plan and template.
    New(String),
    /// The VPS the backup was taken of.
    InPlace,
}

/// Backups: a view of the [`Controller`]; get one with [`Controller::backups`].
pub struct Backups<'a>(&'a Controller);

impl Controller {
    pub fn backups(&self) -> Backups<'_> {
        Backups(self)
    }
}

impl std::ops::Deref for Backups<'_> {
    type Target = Controller;

    fn deref(&self) -> &Controller {
        self.0
    }
}

/// What the archive's `spec.json` holds: what a restore needs to recreate the VPS.
pub(crate) fn spec_json(vps: &VpsRecord) -> String {
    serde_json::json!({
        "name": vps.name,
        "vps_id": vps.vps_id,
        "tenant": vps.tenant,
        "plan": vps.plan,
        "template": vps.template,
        "hostname": vps.name,
        "resources": vps.resources,
    })
    .to_string()
}

impl Backups<'_> {
    /// Archives `vps_name` of the principal's tenant and records the backup.
    pub async fn create(
        &self,
        principal: &Principal,
        tenant: &str,
        vps_name: &str,
    ) -> Result<BackupRecord, ControllerError> {
        let tenant = self.vps_scope(principal, tenant)?;
        validate::name("vps", vps_name)?;
        let vps = self.find_vps(&tenant, vps_name)?;
        if vps.deleting {
            return Err(ControllerError::not_found("VPS", vps_name));
        }
        let backup_id = format!("b-{}", &Uuid::new_v4().simple().to_string()[..12]);
        let mut client = self.nodes().agent_for(&vps.node)?;
        let taken = client
            .backup_vps(v1::AgentBackupRequest {
                vps_id: vps.vps_id.clone(),
                backup_id: backup_id.clone(),
                spec_json: spec_json(&vps),
            })
            .await
            .map_err(|status| agent_error(&vps.node, status))?
            .into_inner();
        let record = BackupRecord {
            id: backup_id.clone(),
            tenant: tenant.clone(),
            vps: vps.name.clone(),
            vps_id: vps.vps_id.clone(),
            node: vps.node.clone(),
            plan: vps.plan.clone(),
            template: vps.template.clone(),
            hostname: vps.name.clone(),
            resources: vps.resources.clone(),
            size_bytes: taken.archive_bytes,
            sha256: taken.archive_sha256,
            created_at: Utc::now(),
            location: taken.location,
        };
        let event = EventRecord::of_vps(EventKind::BackupCreated, &vps).with_detail(&backup_id);
        self.store.put_backup(&record, Some(event))?;
        self.commit().await?;
        info!(
            tenant,
            vps = vps_name,
            backup_id,
            bytes = record.size_bytes,
            "took backup"
        );
        Ok(record)
    }

    /// The tenant's backups, of one VPS (by name) when `vps_name` is not empty.
    pub fn list(
        &self,
        principal: &Principal,
        tenant: &str,
        vps_name: &str,
    ) -> Result<Vec<BackupRecord>, ControllerError> {
        let tenant = self.vps_scope(principal, tenant)?;
        let mut backups = self.store.list_backups(Some(&tenant))?;
        if !vps_name.is_empty() {
            backups.retain(|backup| backup.vps == vps_name);
        }
        Ok(backups)
    }

    fn get(
        &self,
        principal: &Principal,
        tenant: &str,
        backup_id: &str,
    ) -> Result<BackupRecord, ControllerError> {
        let tenant = self.vps_scope(principal, tenant)?;
        if backup_id.is_empty() {
            return Err(ValidationError::new("id", "is required").into());
        }
        self.store
            .get_backup(&tenant, backup_id)?
            .ok_or_else(|| ControllerError::not_found("backup", backup_id))
    }

    /// A client for a node that can reach the backup store: the one that took the backup
    /// if it is online, else any online node (the store is shared between nodes).
    fn store_client(
        &self,
        backup: &BackupRecord,
    ) -> Result<(String, crate::agents::AgentClient), ControllerError> {
        if let Ok(client) = self.nodes().agent_for(&backup.node) {
            return Ok((backup.node.clone(), client));
        }
        let now = Utc::now();
        for node in self.store.list_nodes()? {
            if self.node_online(&node, now) {
                let client = self.agents.client(&node.name, &node.address)?;
                return Ok((node.name, client));
            }
        }
        Err(ControllerError::NodeUnavailable {
            node: backup.node.clone(),
            message: "no node is online to reach the backup store".to_owned(),
        })
    }

    /// Removes the archive from the store, then the record.
    pub async fn delete(
        &self,
        principal: &Principal,
        tenant: &str,
        backup_id: &str,
    ) -> Result<(), ControllerError> {
        let backup = self.get(principal, tenant, backup_id)?;
        let (node, mut client) = self.store_client(&backup)?;
        client
            .delete_backup(v1::AgentBackupRef {
                backup_id: backup.id.clone(),
            })
            .await
            .map_err(|status| agent_error(&node, status))?;
        let event = backup_event(EventKind::BackupDeleted, &backup);
        self.store
            .delete_backup(&backup.tenant, &backup.id, Some(event))?;
        self.commit().await?;
        info!(tenant = backup.tenant, backup_id, "deleted backup");
        Ok(())
    }

    /// Restores a backup into a new VPS or in place; returns the VPS. The agent checks the
    /// archive against its manifest before it changes anything.
    pub async fn restore(
        &self,
        principal: &Principal,
        tenant: &str,
        backup_id: &str,
        target: RestoreTarget,
        request_id: Option<String>,
    ) -> Result<VpsRecord, ControllerError> {
        let backup = self.get(principal, tenant, backup_id)?;
        let vps = match target {
            RestoreTarget::InPlace => {
                let vps = self.find_vps(&backup.tenant, &backup.vps)?;
                if vps.vps_id != backup.vps_id || vps.deleting {
                    return Err(ValidationError::new(
                        "in_place",
                        "the VPS this backup was taken of is gone; restore into a new VPS \
                         (--to NAME)",
                    )
                    .into());
                }
                vps
            }
            RestoreTarget::New(name) => {
                let created = self
                    .vps()
                    .create(
                        principal,
                        CreateVps {
                            tenant: backup.tenant.clone(),
                            name,
                            plan: backup.plan.clone(),
                            template: backup.template.clone(),
                            overrides: None,
                            start: true,
                            node_selector: Default::default(),
                            request_id,
                        },
                    )
                    .await?;
                self.wait_created(&created).await?
            }
        };
        let mut client = self.nodes().agent_for(&vps.node)?;
        let status = client
            .restore_backup(v1::AgentRestoreRequest {
                vps_id: vps.vps_id.clone(),
                backup_id: backup.id.clone(),
            })
            .await
            .map_err(|status| agent_error(&vps.node, status))?
            .into_inner();
        // The agent left the VPS stopped with its new disk; the node's reconciler starts it
        // again if it should run (a waiting client sees a new init).
        reconcile::record_observed(self, &vps.vps_id, convert::observed(&status))?;
        let event = EventRecord::of_vps(EventKind::BackupRestored, &vps).with_detail(&backup.id);
        let vps = self
            .store
            .update_vps_emitting(&vps.vps_id, &|_| Ok(Some(event.clone())))?;
        self.commit().await?;
        self.reconciler.kick(&vps.node);
        info!(
            tenant = vps.tenant,
            vps = vps.name,
            backup_id,
            "restored backup"
        );
        Ok(vps)
    }

    /// Waits until the node reported the new VPS (it exists there, with its id range).
    async fn wait_created(&self, created: &VpsRecord) -> Result<VpsRecord, ControllerError> {
        let deadline = tokio::time::Instant::now() + CREATE_WAIT;
        loop {
            let current = self
                .store
                .get_vps(&created.vps_id)?
                .ok_or_else(|| ControllerError::not_found("VPS", &created.name))?;
            match current.observed.as_ref().map(|o| &o.state) {
                Some(Observed::Running | Observed::Stopped) => return Ok(current),
                Some(Observed::Error) if current.applied_spec.is_none() => {
                    let message = current
                        .observed
                        .as_ref()
                        .map(|o| o.message.clone())
                        .unwrap_or_default();
                    return Err(ControllerError::NodeUnavailable {
                        node: current.node.clone(),
                        message: format!("creating VPS {} failed: {message}", current.name),
                    });
                }
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ControllerError::NodeUnavailable {
                    node: current.node.clone(),
                    message: format!(
                        "VPS {} was not created on its node within {}s",
                        current.name,
                        CREATE_WAIT.as_secs()
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn backup_event(kind: EventKind, backup: &BackupRecord) -> EventRecord {
    EventRecord {
        cursor: 0,
        kind,
        tenant: backup.tenant.clone(),
        vps: backup.vps.clone(),
        vps_id: backup.vps_id.clone(),
        plan: backup.plan.clone(),
        at: Utc::now(),
        detail: backup.id.clone(),
    }
}
