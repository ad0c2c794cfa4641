//! The snapshot records of the sled store: tree `snapshots`, VPS id -> `VpsSnapshots`.

use sled::transaction::TransactionalTree;
use sled::Transactional;

use super::{
    abort, decode, encode, flatten, tx_append_event, tx_get, tx_need, SledStore, TxResult,
};
use crate::model::snapshots::{self, SnapshotRecord, VpsSnapshots};
use crate::model::{EventRecord, PlanRecord, VpsRecord};
use crate::store::{AfterCommit, Conflict, StoreError};

const TREE: &str = "snapshots";

fn tx_snapshots(tree: &TransactionalTree, vps_id: &str) -> TxResult<VpsSnapshots> {
    Ok(tx_get::<VpsSnapshots>(tree, TREE, vps_id.as_bytes())?.unwrap_or_default())
}

impl SledStore {
    fn snapshot_tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(TREE)?)
    }

    /// Drops every snapshot record of a removed VPS.
    pub(super) fn forget_snapshots(&self, vps_id: &str) -> Result<(), StoreError> {
        self.snapshot_tree()?.remove(vps_id.as_bytes())?;
        Ok(())
    }

    pub(super) fn list_snapshots_impl(&self, vps_id: &str) -> Result<VpsSnapshots, StoreError> {
        match self.snapshot_tree()?.get(vps_id.as_bytes())? {
            Some(bytes) => decode(TREE, vps_id.as_bytes(), &bytes),
            None => Ok(VpsSnapshots::default()),
        }
    }

    pub(super) fn reserve_snapshot_impl(
        &self,
        vps_id: &str,
        snapshot: &SnapshotRecord,
    ) -> Result<(), StoreError> {
        let tree = self.snapshot_tree()?;
        flatten(
            (&self.vps, &self.plans, &tree).transaction(|(all, plans, tree)| {
                let vps = tx_need::<VpsRecord>(all, "vps", vps_id.as_bytes(), "VPS", vps_id)?;
                if vps.deleting {
                    return abort(StoreError::Conflict(Conflict::VpsDeleting {
                        name: vps.name.clone(),
                    }));
                }
                let limit = tx_get::<PlanRecord>(plans, "plans", vps.plan.as_bytes())?
                    .map_or(snapshots::DEFAULT_MAX_SNAPSHOTS, |plan| plan.max_snapshots);
                let mut set = tx_snapshots(tree, vps_id)?;
                if set.snapshots.contains_key(&snapshot.name) {
                    return abort(StoreError::AlreadyExists {
                        kind: "snapshot",
                        name: format!("{}/{}", vps.name, snapshot.name),
                    });
                }
                snapshots::admit(&set, &vps.name, &vps.plan, limit)
                    .map_err(StoreError::from)
                    .or_else(abort)?;
                set.snapshots
                    .insert(snapshot.name.clone(), snapshot.clone());
                tree.insert(vps_id.as_bytes(), encode(&set))?;
                Ok(())
            }),
        )
    }

    pub(super) fn put_snapshot_impl(
        &self,
        vps_id: &str,
        snapshot: &SnapshotRecord,
        event: Option<EventRecord>,
    ) -> Result<(), StoreError> {
        let tree = self.snapshot_tree()?;
        let result = flatten((&tree, &self.events, &self.events_meta).transaction(
            |(tree, events, meta)| {
                let mut set = tx_snapshots(tree, vps_id)?;
                let Some(slot) = set.snapshots.get_mut(&snapshot.name) else {
                    return abort(StoreError::NotFound {
                        kind: "snapshot",
                        name: snapshot.name.clone(),
                    });
                };
                *slot = snapshot.clone();
                tree.insert(vps_id.as_bytes(), encode(&set))?;
                if let Some(event) = event.clone() {
                    tx_append_event(events, meta, event)?;
                }
                Ok(())
            },
        ));
        self.signalled(result)
    }

    pub(super) fn remove_snapshot_impl(
        &self,
        vps_id: &str,
        name: &str,
        event: Option<EventRecord>,
    ) -> Result<(), StoreError> {
        let tree = self.snapshot_tree()?;
        let result = flatten((&tree, &self.events, &self.events_meta).transaction(
            |(tree, events, meta)| {
                let mut set = tx_snapshots(tree, vps_id)?;
                if set.snapshots.remove(name).is_none() {
                    return Ok(());
                }
                if set.snapshots.is_empty() {
                    tree.remove(vps_id.as_bytes())?;
                } else {
                    tree.insert(vps_id.as_bytes(), encode(&set))?;
                }
                if let Some(event) = event.clone() {
                    tx_append_event(events, meta, event)?;
                }
                Ok(())
            },
        ));
        self.signalled(result)
    }
}
