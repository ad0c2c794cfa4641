//! Snapshots of a VPS's disk: recorded here (name, quota, events), taken on the VPS's node
//! by its agent (`NodeAgent.CreateSnapshot` and siblings, run on the VPS's worker there so
//! they serialise with its applies).
//!
//! A create first reserves the name and a quota slot in one store transaction (state
//! `creating`), then asks the node, then records what the node made (or drops the
//! reservation if it failed), so two concurrent creates can never exceed the plan's
//! `max_snapshots`. A snapshot file the node already has under a reserved name is a leftover
//! of a create whose answer was lost; it is replaced. A restore leaves the VPS stopped on its node; the reconciler, kicked
//! here, starts it again if it is meant to run (its ordinary apply, network port included).

use chrono::{DateTime, TimeZone, Utc};
use paddock_proto::v1;
use tracing::{info, warn};

use crate::agents::{agent_error, AgentClient};
use crate::auth::Principal;
use crate::error::ControllerError;
use crate::model::snapshots::{settle, Settle, SnapshotRecord, SnapshotState};
use crate::model::validate;
use crate::model::{EventKind, EventRecord, Observed, ObservedState, VpsRecord};
use crate::service::reconcile;
use crate::service::Controller;
use crate::store::{fenced, Conflict, StoreError, Term};

/// How long the controller waits for a node to copy a disk.
const COPY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// Snapshots. A view of the [`Controller`]'s shared state; get one with
/// [`Controller::snapshots`].
pub struct Snapshots<'a>(&'a Controller);

impl Controller {
    pub fn snapshots(&self) -> Snapshots<'_> {
        Snapshots(self)
    }
}

impl std::ops::Deref for Snapshots<'_> {
    type Target = Controller;

    fn deref(&self) -> &Controller {
        self.0
    }
}

/// A reservation older than this belongs to no create still running: a create's call to its
/// node is cut off after [`COPY_TIMEOUT`].
const STALE_RESERVATION: std::time::Duration =
    COPY_TIMEOUT.saturating_add(std::time::Duration::from_secs(60));

/// A snapshot as its node describes it, ready (`fallback` dates it if the node's time is
/// unusable).
fn taken_on_node(taken: v1::AgentSnapshot, fallback: DateTime<Utc>) -> SnapshotRecord {
    SnapshotRecord {
        name: taken.name,
        state: SnapshotState::Ready,
        created_at: Utc
            .timestamp_millis_opt(taken.created_at_unix_ms)
            .single()
            .unwrap_or(fallback),
        size_bytes: taken.size_bytes,
        allocated_bytes: taken.allocated_bytes,
        method: taken.method,
        duration_ms: taken.duration_ms,
    }
}

/// A snapshot and the VPS it belongs to.
pub struct SnapshotOf {
    pub vps: VpsRecord,
    pub snapshot: SnapshotRecord,
}

impl Snapshots<'_> {
    /// The VPS `name` of the caller's scope (another tenant's is `NotFound`, like one that
    /// does not exist), refused while it is being deleted.
    fn live_vps(
        &self,
        principal: &Principal,
        tenant: &str,
        name: &str,
    ) -> Result<VpsRecord, ControllerError> {
        let vps = self.vps().get(principal, tenant, name)?;
        if vps.deleting {
            return Err(StoreError::Conflict(Conflict::VpsDeleting { name: vps.name }).into());
        }
        Ok(vps)
    }

    fn agent(&self, vps: &VpsRecord) -> Result<AgentClient, ControllerError> {
        self.nodes().agent_for(&vps.node)
    }

    fn request(vps: &VpsRecord, name: &str) -> tonic::Request<v1::AgentSnapshotRequest> {
        let mut request = tonic::Request::new(v1::AgentSnapshotRequest {
            vps_id: vps.vps_id.clone(),
            name: name.to_owned(),
        });
        request.set_timeout(COPY_TIMEOUT);
        request
    }

    /// Asks the node to take snapshot `name`, whose name this controller has reserved. A file
    /// of that name already on the node is a leftover of a create whose answer never reached
    /// the store (the controller died, or gave up on a slow copy and dropped its reservation):
    /// it is removed and the snapshot taken afresh, so a name never stays unusable.
    async fn take_on_node(
        client: &mut AgentClient,
        vps: &VpsRecord,
        name: &str,
    ) -> Result<v1::AgentSnapshot, ControllerError> {
        match client.create_snapshot(Self::request(vps, name)).await {
            Ok(taken) => return Ok(taken.into_inner()),
            Err(status) if status.code() == tonic::Code::AlreadyExists => {
                warn!(vps = %vps.name, snapshot = name, "replacing a leftover snapshot the store has no record of");
            }
            Err(status) => return Err(agent_error(&vps.node, status)),
        }
        match client.delete_snapshot(Self::request(vps, name)).await {
            Ok(_) => {}
            Err(status) if status.code() == tonic::Code::NotFound => {}
            Err(status) => return Err(agent_error(&vps.node, status)),
        }
        client
            .create_snapshot(Self::request(vps, name))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| agent_error(&vps.node, status))
    }

    /// The recorded snapshot `name` of `vps`, `NotFound` if there is none.
    fn find(&self, vps: &VpsRecord, name: &str) -> Result<SnapshotRecord, ControllerError> {
        self.store
            .list_snapshots(&vps.vps_id)?
            .snapshots
            .remove(name)
            .ok_or_else(|| ControllerError::not_found("snapshot", format!("{}/{name}", vps.name)))
    }

    fn event(kind: EventKind, vps: &VpsRecord, name: &str) -> EventRecord {
        EventRecord {
            detail: name.to_owned(),
            ..EventRecord::of_vps(kind, vps)
        }
    }

    pub async fn create(
        &self,
        principal: &Principal,
        tenant: &str,
        vps_name: &str,
        name: &str,
    ) -> Result<SnapshotOf, ControllerError> {
        validate::name("snapshot name", name)?;
        let vps = self.live_vps(principal, tenant, vps_name)?;
        let pending = SnapshotRecord {
            name: name.to_owned(),
            state: SnapshotState::Creating,
            created_at: Utc::now(),
            size_bytes: 0,
            allocated_bytes: 0,
            method: String::new(),
            duration_ms: 0,
        };
        // The quota and the name are checked (and taken) before the node is asked.
        self.store.reserve_snapshot(&vps.vps_id, &pending)?;
        self.commit().await?;
        let taken = match self.agent(&vps) {
            Ok(mut client) => Self::take_on_node(&mut client, &vps, name).await,
            Err(error) => Err(error),
        };
        let taken = match taken {
            Ok(taken) => taken,
            Err(error) => {
                if let Err(error) = self.store.remove_snapshot(&vps.vps_id, name, None) {
                    warn!(vps = %vps.name, snapshot = name, %error, "dropping a failed snapshot's reservation");
                }
                self.commit().await?;
                return Err(error);
            }
        };
        let snapshot = taken_on_node(taken, pending.created_at);
        self.store.put_snapshot(
            &vps.vps_id,
            &snapshot,
            Some(Self::event(EventKind::SnapshotCreated, &vps, name)),
        )?;
        self.commit().await?;
        info!(vps = %vps.name, tenant = %vps.tenant, snapshot = name, method = %snapshot.method, duration_ms = snapshot.duration_ms, actor = %principal.actor(), "snapshot taken");
        Ok(SnapshotOf { vps, snapshot })
    }

    /// Settles the reservations of `vpses` (on one node, reached through `client`) that
    /// outlived any create (a controller died between reserving a name and recording the
    /// node's copy): each is recorded from the node's copy, with its `snapshot_created` event,
    /// or dropped when the node has none (`model::snapshots::settle`). Run on full resyncs.
    /// Its writes are fenced by the reconciler's `term`.
    pub async fn settle_stale(
        &self,
        client: &AgentClient,
        vpses: &[VpsRecord],
        term: Term,
    ) -> Result<(), ControllerError> {
        let now = Utc::now();
        let stale_after = chrono::Duration::from_std(STALE_RESERVATION)
            .unwrap_or_else(|_| chrono::Duration::hours(1));
        for vps in vpses.iter().filter(|vps| !vps.deleting) {
            let recorded = self.store.list_snapshots(&vps.vps_id)?;
            let stale =
                |record: &SnapshotRecord| settle(record, None, now, stale_after) != Settle::Keep;
            if !recorded.snapshots.values().any(stale) {
                continue;
            }
            let on_node: Vec<SnapshotRecord> = client
                .clone()
                .list_snapshots(v1::AgentVpsRef {
                    vps_id: vps.vps_id.clone(),
                })
                .await
                .map_err(|status| agent_error(&vps.node, status))?
                .into_inner()
                .snapshots
                .into_iter()
                .map(|taken| taken_on_node(taken, now))
                .collect();
            for record in recorded.snapshots.values() {
                let copy = on_node.iter().find(|copy| copy.name == record.name);
                match settle(record, copy, now, stale_after) {
                    Settle::Keep => {}
                    Settle::Record(snapshot) => {
                        fenced(term, || {
                            self.store.put_snapshot(
                                &vps.vps_id,
                                &snapshot,
                                Some(Self::event(EventKind::SnapshotCreated, vps, &snapshot.name)),
                            )
                        })?;
                        info!(vps = %vps.name, snapshot = %snapshot.name, "recorded a snapshot whose create was interrupted");
                    }
                    Settle::Drop => {
                        fenced(term, || {
                            self.store.remove_snapshot(&vps.vps_id, &record.name, None)
                        })?;
                        info!(vps = %vps.name, snapshot = %record.name, "dropped the reservation of an interrupted snapshot create");
                    }
                }
            }
            self.commit().await?;
        }
        Ok(())
    }

    /// The VPS's snapshots, by name, as recorded (the node is not asked: listing works
    /// while it is offline).
    pub fn list(
        &self,
        principal: &Principal,
        tenant: &str,
        vps_name: &str,
    ) -> Result<(VpsRecord, Vec<SnapshotRecord>), ControllerError> {
        let vps = self.vps().get(principal, tenant, vps_name)?;
        let set = self.store.list_snapshots(&vps.vps_id)?;
        Ok((vps, set.snapshots.into_values().collect()))
    }

    pub async fn restore(
        &self,
        principal: &Principal,
        tenant: &str,
        vps_name: &str,
        name: &str,
    ) -> Result<SnapshotOf, ControllerError> {
        validate::name("snapshot name", name)?;
        let vps = self.live_vps(principal, tenant, vps_name)?;
        let snapshot = self.find(&vps, name)?;
        if snapshot.state != SnapshotState::Ready {
            return Err(ControllerError::not_found(
                "snapshot",
                format!("{}/{name} (still being taken)", vps.name),
            ));
        }
        let mut client = self.agent(&vps)?;
        let restored = client
            .restore_snapshot(Self::request(&vps, name))
            .await
            .map_err(|status| agent_error(&vps.node, status))?
            .into_inner();
        // The VPS is stopped on its node now: record that, and let the reconciler start it
        // again (desired running, node stopped) with its ordinary apply.
        reconcile::record_observed(
            self,
            &vps.vps_id,
            ObservedState {
                state: Observed::Stopped,
                init_pid: 0,
                message: format!("restored from snapshot {name}"),
                at: Utc::now(),
            },
        )?;
        self.store.put_snapshot(
            &vps.vps_id,
            &snapshot,
            Some(Self::event(EventKind::SnapshotRestored, &vps, name)),
        )?;
        self.commit().await?;
        self.reconciler.kick(&vps.node);
        info!(vps = %vps.name, tenant = %vps.tenant, snapshot = name, was_running = restored.was_running, actor = %principal.actor(), "snapshot restored");
        Ok(SnapshotOf { vps, snapshot })
    }

    pub async fn delete(
        &self,
        principal: &Principal,
        tenant: &str,
        vps_name: &str,
        name: &str,
    ) -> Result<(), ControllerError> {
        validate::name("snapshot name", name)?;
        let vps = self.vps().get(principal, tenant, vps_name)?;
        self.find(&vps, name)?;
        let mut client = self.agent(&vps)?;
        match client.delete_snapshot(Self::request(&vps, name)).await {
            // Already gone on the node (a delete retried after the node answered).
            Ok(_) => {}
            Err(status) if status.code() == tonic::Code::NotFound => {}
            Err(status) => return Err(agent_error(&vps.node, status)),
        }
        self.store.remove_snapshot(
            &vps.vps_id,
            name,
            Some(Self::event(EventKind::SnapshotDeleted, &vps, name)),
        )?;
        self.commit().await?;
        info!(vps = %vps.name, tenant = %vps.tenant, snapshot = name, actor = %principal.actor(), "snapshot deleted");
        Ok(())
    }
}
