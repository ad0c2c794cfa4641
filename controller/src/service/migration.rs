//! Migration of a VPS to another node (`paddock admin migrate [--live]`, `drain --migrate`).
//!
//! One move runs in phases, each recorded in the store before the next begins
//! (`model::migration`): the plan reserves the destination's capacity and addresses and holds
//! the VPS stopped (a live move leaves it running); the transfer stops it on the source and
//! streams its archive from the source agent through this controller into the destination
//! agent (agents do not trust each other) — or, live, pipes the source's CRIU checkpoint into
//! the destination's restore; the switch names the destination in the VPS record (the only place its `node`
//! changes) and restores its desired power, so the destination's reconciler starts it; the
//! source's copy is deleted last. A failure before the switch rolls back: the VPS runs again
//! on its source and the destination's copy and reservation go. A migration this controller
//! is not driving (after a restart, or a cleanup that failed) is finished by the sweeper:
//! rolled back before the switch (a live one after its restore finished instead), its source
//! cleaned after it. Every store write of a move is fenced by the leader's term that drives
//! it. ARCHITECTURE.md "Migration" has the crash table.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::Utc;
use paddock_proto::v1;
use tokio::task::JoinHandle;
use tracing::{info, warn};
use uuid::Uuid;

use crate::agents::agent_error;
use crate::convert;
use crate::error::ControllerError;
use crate::model::migration::{
    self, LiveReport, MigrationError, MigrationPhase, MigrationRecord, PhaseNote,
};
use crate::model::scheduler;
use crate::model::validate;
use crate::model::{ipam, EventKind, EventRecord, PoolRecord, Power, VpsRecord};
use crate::service::backups::spec_json;
use crate::service::{reconcile, Controller};
use crate::store::{fenced, Conflict, StoreError, Term};

/// How long the transfer waits for the source's last usage sample of the stopped VPS.
const METERING_TAIL_WAIT: Duration = Duration::from_secs(45);
/// How long one agent call of a migration step may take (a stop, an apply, a delete).
const STEP_TIMEOUT: Duration = Duration::from_secs(180);
/// How often the sweeper looks for migrations nobody drives.
const SWEEP_PERIOD: Duration = Duration::from_secs(5);
/// The incarnation an agent reports a stopped VPS's samples under (`node-agent/src/metering.rs`).
const STOPPED_INCARNATION: &str = "stopped";

/// A migration asked for.
#[derive(Debug, Clone)]
pub struct MigrateVps {
    pub tenant: String,
    pub name: String,
    /// Empty: the scheduler picks among the other nodes.
    pub to_node: String,
    /// Accept new addresses where the destination has no pool holding the current ones.
    pub allow_new_address: bool,
    /// Move it running (CRIU checkpoint, transfer, restore), keeping its addresses.
    pub live: bool,
    /// With `live`: a cold move where a live one is refused.
    pub allow_cold: bool,
}

/// A migration that ended with the VPS on its destination.
#[derive(Debug, Clone)]
pub struct MigrationOutcome {
    /// As it ended (`live_report` set for a live move).
    pub record: MigrationRecord,
    pub duration: Duration,
    /// A live move asked for but done cold (`allow_cold`, or a stopped VPS): why.
    pub cold_because: Option<String>,
}

/// The VPS ids whose migration this controller process drives right now.
#[derive(Default)]
pub struct ActiveMigrations(Mutex<HashSet<String>>);

/// Held while one migration is driven; releases its VPS id when dropped (also when the
/// driving future is cancelled, e.g. by a client that hung up: the sweeper takes over).
pub struct ActiveGuard<'a> {
    active: &'a ActiveMigrations,
    vps_id: String,
}

impl ActiveMigrations {
    fn claim(&self, vps_id: &str) -> Option<ActiveGuard<'_>> {
        let mut set = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        set.insert(vps_id.to_owned()).then(|| ActiveGuard {
            active: self,
            vps_id: vps_id.to_owned(),
        })
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.active
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.vps_id);
    }
}

/// Test-only fault points of the controller (`PADDOCK_TEST_FAULT=<point>`, debug builds):
/// the process kills itself with SIGKILL there, as `kill -9` would.
fn fault_point(point: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("PADDOCK_TEST_FAULT").is_ok_and(|wanted| wanted == point) {
        warn!(point, "test fault point reached: killing the controller");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}

/// Migrations: a view of the [`Controller`]; get one with [`Controller::migrations`].
pub struct Migrations<'a>(&'a Controller);

impl Controller {
    pub fn migrations(&self) -> Migrations<'_> {
        Migrations(self)
    }
}

impl std::ops::Deref for Migrations<'_> {
    type Target = Controller;

    fn deref(&self) -> &Controller {
        self.0
    }
}

fn power(was_running: bool) -> Power {
    if was_running {
        Power::Running
    } else {
        Power::Stopped
    }
}

impl Migrations<'_> {
    /// Moves a VPS to another node and returns once it is there (or rolled back: the error
    /// then says why, and the VPS runs on its source as before). A live move that CRIU
    /// refuses is followed by a cold one with `allow_cold`.
    pub async fn migrate(&self, request: MigrateVps) -> Result<MigrationOutcome, ControllerError> {
        let started = Instant::now();
        // One driver per migration: with several controllers only the leader drives moves
        // (and sweeps unfinished ones), so no sweeper rolls back a move another controller is
        // still driving. On sled this controller always leads. The move's store writes are
        // fenced by this term: a deposed leader cannot move a phase any more.
        let Some(term) = self.leadership.current() else {
            return Err(ControllerError::NotLeader {
                what: "a migration",
            });
        };
        match self.migrate_once(&request, request.live, term).await {
            Err(ControllerError::Migration(MigrationError::CheckpointRefused {
                reason, ..
            })) if request.allow_cold => {
                info!(vps = %request.name, tenant = %request.tenant, %reason, "CRIU refused the live move; moving it cold");
                let mut outcome = self.migrate_once(&request, false, term).await?;
                outcome.cold_because = Some(format!("CRIU cannot checkpoint it: {reason}"));
                outcome.duration = started.elapsed();
                Ok(outcome)
            }
            other => other,
        }
    }

    /// One attempt: live when `live` and the VPS allows it (running, addresses kept), else
    /// cold (saying why where a live move was asked for).
    async fn migrate_once(
        &self,
        request: &MigrateVps,
        live: bool,
        term: Term,
    ) -> Result<MigrationOutcome, ControllerError> {
        let started = Instant::now();
        validate::name("tenant", &request.tenant)?;
        validate::name("name", &request.name)?;
        if !request.to_node.is_empty() {
            validate::name("to_node", &request.to_node)?;
        }
        let vps = self.find_vps(&request.tenant, &request.name)?;
        if vps.deleting {
            return Err(StoreError::Conflict(Conflict::VpsDeleting { name: vps.name }).into());
        }
        if let Some(existing) = self.store.get_migration(&vps.vps_id)? {
            return Err(MigrationError::InProgress {
                vps: vps.name,
                phase: existing.phase.as_str(),
            }
            .into());
        }
        // Snapshots are files beside the disk on its node and are not carried along.
        let snapshots = self.store.list_snapshots(&vps.vps_id)?;
        if !snapshots.snapshots.is_empty() {
            return Err(MigrationError::HasSnapshots {
                vps: vps.name,
                names: snapshots.snapshots.into_keys().collect(),
            }
            .into());
        }
        let destination = self.choose_destination(&vps, &request.to_node)?;
        let mut pools: Vec<PoolRecord> = self
            .store
            .list_pools()?
            .into_iter()
            .filter(|pool| pool.spans(&destination))
            .collect();
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        let plan = migration::plan_addresses(&vps, &pools).ok_or_else(|| {
            StoreError::from(ipam::no_room(
                &destination,
                pools.iter().map(|pool| pool.name.clone()).collect(),
                vps.resources.ipv4_count,
            ))
        })?;
        let mut live = live;
        let mut cold_because = None;
        if live && vps.desired_power != Power::Running {
            // Nothing runs to keep: a cold move is the same move.
            live = false;
            cold_because = Some("it is not running".to_owned());
        }
        // TCP connections survive only where the addresses move with the VPS.
        if live && !plan.kept {
            if !request.allow_cold {
                return Err(MigrationError::LiveAddressChange {
                    vps: vps.name.clone(),
                    node: destination,
                    addresses: migration::describe(&vps.ipv4),
                }
                .into());
            }
            live = false;
            cold_because = Some(format!(
                "no pool on node {destination} holds its address(es) {}",
                migration::describe(&vps.ipv4)
            ));
        }
        if !plan.kept && !request.allow_new_address {
            return Err(MigrationError::AddressChange {
                vps: vps.name.clone(),
                node: destination,
                old: migration::describe(&vps.ipv4),
                new: migration::describe(&plan.ipv4),
            }
            .into());
        }
        let record = MigrationRecord {
            id: format!("m-{}", &Uuid::new_v4().simple().to_string()[..12]),
            vps_id: vps.vps_id.clone(),
            tenant: vps.tenant.clone(),
            vps: vps.name.clone(),
            source: vps.node.clone(),
            destination,
            phase: MigrationPhase::Planned,
            was_running: vps.desired_power == Power::Running,
            old_ipv4: vps.ipv4.clone(),
            old_network: vps.network.clone(),
            new_ipv4: plan.ipv4,
            new_network: plan.network,
            addresses_kept: plan.kept,
            started_at: Utc::now(),
            failure: None,
            live,
            live_report: None,
        };
        let Some(_driving) = self.active_migrations.claim(&vps.vps_id) else {
            return Err(MigrationError::InProgress {
                vps: vps.name,
                phase: MigrationPhase::Planned.as_str(),
            }
            .into());
        };
        fenced(term, || self.store.plan_migration(&record))?;
        self.commit().await?;
        self.placements.invalidate();
        info!(
            migration = %record.id, vps = %record.vps, tenant = %record.tenant,
            from = %record.source, to = %record.destination, kept = record.addresses_kept,
            live = record.live, "migration planned"
        );
        let mut record = record;
        match self.move_vps(&record, term).await {
            Ok(report) => record.live_report = report,
            Err(error) => {
                let reason = error.to_string();
                warn!(migration = %record.id, vps = %record.vps, %reason, "migration failed; settling it");
                match self.settle(&record, &reason, term).await {
                    // The restore had finished: the move went through after all.
                    Ok(Settled::Moved(ended)) => {
                        info!(migration = %record.id, vps = %record.vps, "migration finished after an error past the restore");
                        return Ok(MigrationOutcome {
                            record: *ended,
                            duration: started.elapsed(),
                            cold_because,
                        });
                    }
                    Ok(Settled::RolledBack) => {}
                    Err(cleanup) => {
                        warn!(migration = %record.id, error = %cleanup, "rollback incomplete; the sweeper retries it");
                    }
                }
                // CRIU's refusal comes before the dump: the VPS never stopped on its source.
                if matches!(
                    error,
                    ControllerError::Migration(MigrationError::CheckpointRefused { .. })
                ) {
                    return Err(error);
                }
                return Err(MigrationError::Failed {
                    vps: record.vps.clone(),
                    node: record.destination.clone(),
                    source_node: record.source.clone(),
                    reason,
                }
                .into());
            }
        }
        record.phase = MigrationPhase::Switched;
        if let Err(error) = self.clean_source(&record, term).await {
            // The VPS is moved; only the source's copy is left, for the sweeper.
            warn!(migration = %record.id, %error, "cleaning the source failed; the sweeper retries it");
        }
        let duration = started.elapsed();
        info!(migration = %record.id, vps = %record.vps, live = record.live, ms = duration.as_millis() as u64, "VPS migrated");
        Ok(MigrationOutcome {
            record,
            duration,
            cold_because,
        })
    }

    /// The destination: `to_node` checked (it exists, is another node, and has room as a
    /// placement would see it), or the scheduler's pick among the other nodes.
    fn choose_destination(
        &self,
        vps: &VpsRecord,
        to_node: &str,
    ) -> Result<String, ControllerError> {
        let views: Vec<_> = self
            .node_views()?
            .into_iter()
            .map(|(_, view, _)| view)
            .filter(|view| view.name != vps.node)
            .collect();
        let placement = self.vps().placement(Default::default());
        if to_node.is_empty() {
            return Ok(scheduler::place_with(&views, &vps.resources, &placement)?);
        }
        if to_node == vps.node {
            return Err(MigrationError::SameNode {
                vps: vps.name.clone(),
                node: vps.node.clone(),
            }
            .into());
        }
        let view = views
            .into_iter()
            .find(|view| view.name == to_node)
            .ok_or_else(|| ControllerError::not_found("node", to_node))?;
        Ok(scheduler::place_with(&[view], &vps.resources, &placement)?)
    }

    /// Everything up to and including the switch; an error means nothing switched. A live
    /// move answers what its checkpoint and restore did.
    async fn move_vps(
        &self,
        record: &MigrationRecord,
        term: Term,
    ) -> Result<Option<LiveReport>, ControllerError> {
        // When the source's run had ended (stopped, or dumped): its samples from then on
        // carry the run's closing counters.
        let (report, source_stopped_at) = if record.live {
            let (report, dumped_at) = self.live_transfer(record, term).await?;
            (Some(report), dumped_at)
        } else {
            let stopped_at = self.cold_transfer(record, term).await?;
            fault_point("migrate:after-copy");
            (None, stopped_at)
        };
        self.await_source_usage(record, source_stopped_at).await?;
        self.switch(record, term).await?;
        Ok(report)
    }

    /// Records `phase` (with `note`) and makes it durable before the next step.
    async fn enter(
        &self,
        record: &MigrationRecord,
        phase: MigrationPhase,
        note: PhaseNote,
        term: Term,
    ) -> Result<(), ControllerError> {
        fenced(term, || {
            self.store.set_migration_phase(&record.vps_id, phase, note)
        })?;
        self.commit().await
    }

    /// The transfer step of a cold migration: the VPS stopped on the source, its disk copied
    /// to the destination (stopped there). A live move replaces exactly this step.
    async fn cold_transfer(
        &self,
        record: &MigrationRecord,
        term: Term,
    ) -> Result<chrono::DateTime<Utc>, ControllerError> {
        self.stop_on_source(record, term).await?;
        let stopped_at = Utc::now();
        self.enter(
            record,
            MigrationPhase::SourceStopped,
            PhaseNote::Nothing,
            term,
        )
        .await?;
        self.copy_to_destination(record).await?;
        self.enter(record, MigrationPhase::Copied, PhaseNote::Nothing, term)
            .await?;
        Ok(stopped_at)
    }

    /// The transfer step of a live migration: the source's `CheckpointVps` stream (after
    /// its first message the VPS's processes are gone there, its images and disk kept)
    /// piped into the destination's `RestoreCheckpoint` with the VPS's spec as it will be
    /// placed there; `checkpointed` is recorded once the source dumped, `restored` once the
    /// destination runs it. CRIU's refusal before the dump is `CheckpointRefused` (the VPS
    /// runs on as it was).
    async fn live_transfer(
        &self,
        record: &MigrationRecord,
        term: Term,
    ) -> Result<(LiveReport, chrono::DateTime<Utc>), ControllerError> {
        use v1::agent_checkpoint_chunk::Item;
        use v1::agent_checkpoint_upload::Item as Upload;
        let (vps, suspended) = self.current(record)?;
        let mut source = self.nodes().agent_for(&record.source)?;
        let mut destination = self.nodes().agent_for(&record.destination)?;
        let checkpoint_started = Instant::now();
        let mut checkpoint = source
            .checkpoint_vps(v1::AgentCheckpointRequest {
                vps_id: vps.vps_id.clone(),
                max_rounds: 0,
            })
            .await
            .map_err(|status| {
                if status.code() == tonic::Code::FailedPrecondition {
                    MigrationError::CheckpointRefused {
                        vps: record.vps.clone(),
                        node: record.source.clone(),
                        reason: status.message().to_owned(),
                    }
                    .into()
                } else {
                    agent_error(&record.source, status)
                }
            })?
            .into_inner();
        // The agent answers once the dump is done: the run has ended.
        let dumped_at = Utc::now();
        let first = checkpoint
            .message()
            .await
            .map_err(|status| agent_error(&record.source, status))?;
        let Some(v1::AgentCheckpointChunk {
            item: Some(Item::Report(dumped)),
        }) = first
        else {
            return Err(ControllerError::Agent {
                node: record.source.clone(),
                status: tonic::Status::data_loss("the checkpoint stream carried no report"),
            });
        };
        let mut report = LiveReport {
            round_pages_written: dumped.round_pages_written,
            final_pages_written: dumped.final_pages_written,
            frozen_us: dumped.frozen_us,
            image_bytes: dumped.image_bytes,
            transfer_bytes: 0,
            checkpoint_ms: millis(checkpoint_started.elapsed()),
            restore_ms: 0,
        };
        self.enter(
            record,
            MigrationPhase::Checkpointed,
            PhaseNote::Report(report.clone()),
            term,
        )
        .await?;
        fault_point("migrate:after-checkpoint");
        let restore_started = Instant::now();
        // The destination gets the VPS as it will be placed there.
        let mut placed = vps;
        placed.node = record.destination.clone();
        placed.ipv4 = record.new_ipv4.clone();
        placed.network = record.new_network.clone();
        placed.desired_power = Power::Running;
        let spec = convert::vps_spec(&placed, suspended, Utc::now());
        let (sender, receiver) = tokio::sync::mpsc::channel::<v1::AgentCheckpointUpload>(4);
        let (broken, source_failed) = tokio::sync::oneshot::channel::<tonic::Status>();
        // The checkpoint is pumped into the restore by a task of its own, a few chunks in
        // memory at most. A source stream that breaks must not look like a complete transfer
        // to the destination: the upload is then cancelled, never ended.
        let pump = tokio::spawn(async move {
            let mut bytes = 0u64;
            let header = v1::AgentCheckpointUpload {
                item: Some(Upload::Spec(spec)),
            };
            if sender.send(header).await.is_err() {
                return bytes;
            }
            loop {
                match checkpoint.message().await {
                    Ok(Some(v1::AgentCheckpointChunk {
                        item: Some(Item::Data(data)),
                    })) => {
                        bytes += data.len() as u64;
                        let chunk = v1::AgentCheckpointUpload {
                            item: Some(Upload::Data(data)),
                        };
                        if sender.send(chunk).await.is_err() {
                            return bytes;
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => return bytes,
                    Err(status) => {
                        let _ = broken.send(status);
                        // Hold the upload open until the restore call is dropped.
                        match std::future::pending::<std::convert::Infallible>().await {}
                    }
                }
            }
        });
        let restore =
            destination.restore_checkpoint(tokio_stream::wrappers::ReceiverStream::new(receiver));
        let restored = tokio::select! {
            restored = restore => restored,
            Ok(status) = source_failed => {
                pump.abort();
                return Err(agent_error(&record.source, status));
            }
        };
        let restored = restored
            .map_err(|status| agent_error(&record.destination, status))?
            .into_inner();
        report.transfer_bytes = pump.await.unwrap_or_default();
        if restored.state() != v1::AgentVpsState::Running {
            return Err(ControllerError::Agent {
                node: record.destination.clone(),
                status: tonic::Status::failed_precondition(format!(
                    "the restored VPS does not run: {}",
                    restored.message
                )),
            });
        }
        report.restore_ms = millis(restore_started.elapsed());
        self.enter(
            record,
            MigrationPhase::Restored,
            PhaseNote::Report(report.clone()),
            term,
        )
        .await?;
        fault_point("migrate:after-restore");
        Ok((report, dumped_at))
    }

    fn current(&self, record: &MigrationRecord) -> Result<(VpsRecord, bool), ControllerError> {
        let vps = self
            .store
            .get_vps(&record.vps_id)?
            .ok_or_else(|| ControllerError::not_found("VPS", &record.vps))?;
        let suspended = self
            .store
            .get_tenant(&vps.tenant)?
            .is_some_and(|tenant| tenant.suspended);
        Ok((vps, suspended))
    }

    /// An ordinary stop on the source (the plan holds the VPS stopped).
    async fn stop_on_source(
        &self,
        record: &MigrationRecord,
        term: Term,
    ) -> Result<(), ControllerError> {
        let (vps, suspended) = self.current(record)?;
        let mut client = self.nodes().agent_for(&record.source)?;
        let mut request = tonic::Request::new(convert::vps_spec(&vps, suspended, Utc::now()));
        request.set_timeout(STEP_TIMEOUT);
        let status = client
            .apply_vps(request)
            .await
            .map_err(|status| agent_error(&record.source, status))?
            .into_inner();
        fenced(term, || {
            reconcile::record_observed(self, &vps.vps_id, convert::observed(&status))
        })?;
        if status.state() != v1::AgentVpsState::Stopped {
            return Err(ControllerError::Agent {
                node: record.source.clone(),
                status: tonic::Status::failed_precondition(format!(
                    "the VPS did not stop: {}",
                    status.message
                )),
            });
        }
        Ok(())
    }

    /// Makes the VPS exist (stopped) on the destination with its new addresses, then streams
    /// the source's archive of it into the destination's import.
    async fn copy_to_destination(&self, record: &MigrationRecord) -> Result<(), ControllerError> {
        let (vps, suspended) = self.current(record)?;
        let mut staged = vps.clone();
        staged.node = record.destination.clone();
        staged.ipv4 = record.new_ipv4.clone();
        staged.network = record.new_network.clone();
        staged.desired_power = Power::Stopped;
        let mut destination = self.nodes().agent_for(&record.destination)?;
        let mut request = tonic::Request::new(convert::vps_spec(&staged, suspended, Utc::now()));
        request.set_timeout(STEP_TIMEOUT);
        let applied = destination
            .apply_vps(request)
            .await
            .map_err(|status| agent_error(&record.destination, status))?
            .into_inner();
        if applied.state() != v1::AgentVpsState::Stopped {
            return Err(ControllerError::Agent {
                node: record.destination.clone(),
                status: tonic::Status::failed_precondition(format!(
                    "preparing the VPS failed: {}",
                    applied.message
                )),
            });
        }
        let mut source = self.nodes().agent_for(&record.source)?;
        let mut export = source
            .export_vps(v1::AgentExportRequest {
                vps_id: vps.vps_id.clone(),
                migration_id: record.id.clone(),
                spec_json: spec_json(&vps),
            })
            .await
            .map_err(|status| agent_error(&record.source, status))?
            .into_inner();
        let manifest = export
            .message()
            .await
            .map_err(|status| agent_error(&record.source, status))?
            .and_then(|first| first.manifest)
            .ok_or_else(|| ControllerError::Agent {
                node: record.source.clone(),
                status: tonic::Status::data_loss("the export stream carried no manifest"),
            })?;
        let export_failure: Arc<Mutex<Option<tonic::Status>>> = Arc::default();
        let failure_slot = export_failure.clone();
        let header = v1::AgentImportChunk {
            vps_id: vps.vps_id.clone(),
            migration_id: record.id.clone(),
            manifest: Some(manifest),
            data: Vec::new(),
        };
        // The export is pumped into the import by a task of its own: chunks flow through, at
        // most a few in memory; an export that breaks ends the import short (refused there).
        let (sender, receiver) = tokio::sync::mpsc::channel::<v1::AgentImportChunk>(4);
        let pump = tokio::spawn(async move {
            if sender.send(header).await.is_err() {
                return;
            }
            loop {
                match export.message().await {
                    Ok(Some(chunk)) => {
                        let chunk = v1::AgentImportChunk {
                            data: chunk.data,
                            ..Default::default()
                        };
                        if sender.send(chunk).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(status) => {
                        *failure_slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(status);
                        return;
                    }
                }
            }
        });
        let imported = destination
            .import_vps(tokio_stream::wrappers::ReceiverStream::new(receiver))
            .await;
        pump.abort();
        let export_failed = export_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(status) = export_failed {
            return Err(agent_error(&record.source, status));
        }
        imported.map_err(|status| agent_error(&record.destination, status))?;
        Ok(())
    }

    /// A bounded wait (while the copy ran, most of it passed) for the source's first usage
    /// sample of the VPS after its run ended at `stopped_at` (the run's closing counters, or
    /// a stopped VPS's): what its last run used is then counted on the source, whose samples
    /// are not accepted after the switch.
    async fn await_source_usage(
        &self,
        record: &MigrationRecord,
        stopped_at: chrono::DateTime<Utc>,
    ) -> Result<(), ControllerError> {
        let deadline = Instant::now() + METERING_TAIL_WAIT;
        let ended_ms = stopped_at.timestamp_millis();
        loop {
            match self.store.get_usage_cursor(&record.vps_id)? {
                Some(cursor)
                    if cursor.incarnation != STOPPED_INCARNATION
                        && cursor.sampled_at_unix_ms < ended_ms => {}
                _ => return Ok(()),
            }
            if Instant::now() >= deadline {
                warn!(vps = %record.vps, "no usage sample of the stopped VPS from its source; its last seconds may go uncounted");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The switch transaction; the destination's reconciler then starts the VPS if it ran
    /// (a live move's VPS runs there already).
    async fn switch(&self, record: &MigrationRecord, term: Term) -> Result<(), ControllerError> {
        let vps = fenced(term, || self.store.switch_migration(&record.vps_id))?;
        self.commit().await?;
        self.placements.invalidate();
        self.reconciler.kick(&vps.node);
        info!(migration = %record.id, vps = %vps.name, node = %vps.node, "migration switched");
        Ok(())
    }

    /// Deletes the source's copy (a live move's checkpoint images with it), then the
    /// migration record.
    async fn clean_source(
        &self,
        record: &MigrationRecord,
        term: Term,
    ) -> Result<(), ControllerError> {
        let mut client = self.nodes().agent_for(&record.source)?;
        let mut request = tonic::Request::new(v1::AgentVpsRef {
            vps_id: record.vps_id.clone(),
        });
        request.set_timeout(STEP_TIMEOUT);
        client
            .delete_vps(request)
            .await
            .map_err(|status| agent_error(&record.source, status))?;
        fenced(term, || self.store.end_migration(&record.vps_id, None))?;
        self.commit().await
    }

    /// Ends a migration nobody finished: a switched one is cleaned forward, a live one whose
    /// restore finished is switched and cleaned (its VPS runs on the destination already),
    /// any other is rolled back.
    async fn settle(
        &self,
        record: &MigrationRecord,
        reason: &str,
        term: Term,
    ) -> Result<Settled, ControllerError> {
        let current = self
            .store
            .get_migration(&record.vps_id)?
            .unwrap_or_else(|| record.clone());
        match current.phase {
            MigrationPhase::Switched => {
                self.clean_source(&current, term).await?;
                Ok(Settled::Moved(Box::new(current)))
            }
            MigrationPhase::Restored => {
                self.switch(&current, term).await?;
                let mut switched = current;
                switched.phase = MigrationPhase::Switched;
                self.clean_source(&switched, term).await?;
                Ok(Settled::Moved(Box::new(switched)))
            }
            _ => {
                self.roll_back(&current, reason, term).await?;
                Ok(Settled::RolledBack)
            }
        }
    }

    /// Ends an unswitched migration: the VPS runs again on its source (cold: its desired
    /// power restored at once; live: its copy on the destination deleted first, then its
    /// dumped processes restored on the source), the destination's copy is deleted, then the
    /// reservation goes with the record and `migration_failed` is appended. A switched one
    /// is cleaned forward instead.
    async fn roll_back(
        &self,
        record: &MigrationRecord,
        reason: &str,
        term: Term,
    ) -> Result<(), ControllerError> {
        let current = fenced(term, || {
            self.store.set_migration_phase(
                &record.vps_id,
                MigrationPhase::RollingBack,
                PhaseNote::Failure(reason.to_owned()),
            )
        })?;
        if current.phase == MigrationPhase::Switched {
            return self.clean_source(&current, term).await;
        }
        if current.live {
            // Never two copies running: the destination's goes before the source resumes.
            self.delete_on_destination(&current).await?;
            self.resume_on_source(&current, term).await?;
        } else {
            let restored = power(current.was_running);
            match fenced(term, || {
                self.store.update_vps(&record.vps_id, &|vps| {
                    vps.desired_power = restored;
                    Ok(())
                })
            }) {
                Ok(_) | Err(StoreError::NotFound { .. }) => {}
                Err(error) => return Err(error.into()),
            }
            self.commit().await?;
            self.reconciler.kick(&current.source);
            self.delete_on_destination(&current).await?;
        }
        let event = self.store.get_vps(&current.vps_id)?.map(|vps| {
            EventRecord::of_vps(EventKind::MigrationFailed, &vps).with_detail(format!(
                "{} -> {}: {}",
                current.source,
                current.destination,
                current.failure.as_deref().unwrap_or(reason)
            ))
        });
        fenced(term, || self.store.end_migration(&current.vps_id, event))?;
        self.commit().await?;
        self.placements.invalidate();
        self.reconciler.kick(&current.source);
        info!(migration = %current.id, vps = %current.vps, "migration rolled back");
        Ok(())
    }

    /// Deletes whatever the destination holds of the VPS (absent is fine).
    async fn delete_on_destination(&self, record: &MigrationRecord) -> Result<(), ControllerError> {
        let mut destination = self.nodes().agent_for(&record.destination)?;
        let mut request = tonic::Request::new(v1::AgentVpsRef {
            vps_id: record.vps_id.clone(),
        });
        request.set_timeout(STEP_TIMEOUT);
        destination
            .delete_vps(request)
            .await
            .map_err(|status| agent_error(&record.destination, status))?;
        Ok(())
    }

    /// A live move rolling back: the source restores the VPS from the checkpoint it kept
    /// (the same processes, as they were at the dump); one that runs there (never dumped)
    /// is answered as it is. Where the source holds no complete checkpoint, or CRIU refuses
    /// to restore it, the VPS is restarted from its disk by the source's reconciler once the
    /// record is gone: the last resort, logged.
    async fn resume_on_source(
        &self,
        record: &MigrationRecord,
        term: Term,
    ) -> Result<(), ControllerError> {
        let (vps, suspended) = self.current(record)?;
        let held = v1::AgentCheckpointUpload {
            item: Some(v1::agent_checkpoint_upload::Item::Held(convert::vps_spec(
                &vps,
                suspended,
                Utc::now(),
            ))),
        };
        let mut source = self.nodes().agent_for(&record.source)?;
        let mut request = tonic::Request::new(tokio_stream::iter([held]));
        request.set_timeout(STEP_TIMEOUT);
        match source.restore_checkpoint(request).await {
            Ok(status) => {
                let status = status.into_inner();
                fenced(term, || {
                    reconcile::record_observed(self, &vps.vps_id, convert::observed(&status))
                })?;
                info!(migration = %record.id, vps = %record.vps, node = %record.source, "VPS resumed on its source");
                Ok(())
            }
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                warn!(
                    migration = %record.id, vps = %record.vps, node = %record.source,
                    reason = %status.message(),
                    "the source cannot restore the checkpoint; the VPS restarts from its disk"
                );
                Ok(())
            }
            Err(status) => Err(agent_error(&record.source, status)),
        }
    }

    /// Finishes every migration nobody drives ([`Migrations::settle`]). Failures are logged
    /// and retried at the next sweep.
    pub async fn sweep(&self, term: Term) {
        let records = match self.store.list_migrations() {
            Ok(records) => records,
            Err(error) => {
                warn!(%error, "listing migrations");
                return;
            }
        };
        for record in records {
            let Some(_driving) = self.active_migrations.claim(&record.vps_id) else {
                continue;
            };
            let reason = record
                .failure
                .clone()
                .unwrap_or_else(|| "interrupted (the controller restarted)".to_owned());
            if let Err(error) = self.settle(&record, &reason, term).await {
                warn!(migration = %record.id, vps = %record.vps, %error, "finishing an interrupted migration; retrying later");
            }
        }
    }
}

/// How [`Migrations::settle`] ended a migration.
enum Settled {
    /// The VPS is on the destination (the record as switched).
    Moved(Box<MigrationRecord>),
    /// The VPS is back on its source.
    RolledBack,
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Runs the sweeper: at start (a migration found then was interrupted by a restart) and
/// every few seconds.
pub fn spawn_sweeper(controller: Arc<Controller>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            // Only the leader finishes unfinished moves: it is the only one that drives them.
            if let Some(term) = controller.leadership.current() {
                controller.migrations().sweep(term).await;
            }
            tokio::time::sleep(SWEEP_PERIOD).await;
        }
    })
}
