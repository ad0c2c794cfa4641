//! Following one VPS for `WatchVps`: its record now, then each committed change, until it is
//! deleted. Changes come from the store's watchers (`store::VpsWatchers`); what a view also
//! derives from the clock (a node going silent, a transfer limit running out) is caught by
//! re-reading the record every [`RECHECK_INTERVAL`].

use std::sync::Arc;
use std::time::Duration;

use crate::auth::Principal;
use crate::error::ControllerError;
use crate::model::VpsRecord;
use crate::service::Controller;
use crate::store::{Store, VpsChange, VpsChanges, WatchRecvError};

/// How often a watch re-reads its VPS without being told of a change.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(2);

/// One step of a watch.
#[derive(Debug)]
pub enum WatchUpdate {
    /// The VPS's record as committed.
    Current(Arc<VpsRecord>),
    /// The VPS is deleted; nothing follows.
    Gone,
}

/// An open watch on one VPS.
pub struct VpsWatch {
    store: Arc<dyn Store>,
    vps_id: String,
    changes: VpsChanges,
    first: Option<WatchUpdate>,
    ended: bool,
}

impl Controller {
    /// Opens a watch on a VPS of the caller's scope; scoped like [`Vps::get`](crate::service::vps::Vps::get) (a
    /// tenant asking for another tenant's VPS gets `NotFound`).
    pub fn watch_vps(
        &self,
        principal: &Principal,
        tenant: &str,
        name: &str,
    ) -> Result<VpsWatch, ControllerError> {
        let found = self.vps().get(principal, tenant, name)?;
        let changes = self.store.vps_watchers().subscribe(&found.vps_id);
        // Read again once subscribed: a change committed in between is in this read or in
        // the channel, never lost.
        let first = match self.store.get_vps(&found.vps_id)? {
            Some(record) => WatchUpdate::Current(Arc::new(record)),
            None => WatchUpdate::Gone,
        };
        Ok(VpsWatch {
            store: self.store.clone(),
            vps_id: found.vps_id,
            changes,
            first: Some(first),
            ended: false,
        })
    }
}

impl VpsWatch {
    /// The next state of the VPS: first its current record, then one per published change
    /// (or recheck), then `Gone` once. `None` when the watch is over: after `Gone`, or when
    /// the controller shuts down.
    pub async fn next(&mut self) -> Option<Result<WatchUpdate, ControllerError>> {
        if self.ended {
            return None;
        }
        let update = match self.first.take() {
            Some(first) => Ok(first),
            None => {
                let received = tokio::select! {
                    received = self.changes.recv() => received,
                    _ = tokio::time::sleep(RECHECK_INTERVAL) => Err(WatchRecvError::Lagged),
                };
                match received {
                    Ok(VpsChange::Changed(record)) => Ok(WatchUpdate::Current(record)),
                    Ok(VpsChange::Removed) => Ok(WatchUpdate::Gone),
                    // Behind, or nothing heard for a while: the record as it is now.
                    Err(WatchRecvError::Lagged) => self.reread(),
                    Err(WatchRecvError::Closed) => {
                        self.ended = true;
                        return None;
                    }
                }
            }
        };
        if matches!(update, Ok(WatchUpdate::Gone) | Err(_)) {
            self.ended = true;
        }
        Some(update)
    }

    fn reread(&self) -> Result<WatchUpdate, ControllerError> {
        Ok(match self.store.get_vps(&self.vps_id)? {
            Some(record) => WatchUpdate::Current(Arc::new(record)),
            None => WatchUpdate::Gone,
        })
    }
}
