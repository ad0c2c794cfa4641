//! Change notification for single VPS records, behind `WatchVps`.
//!
//! A store publishes a VPS after a transaction that changed it has committed (never from
//! inside one, which may still abort or be retried). Publishing reads the record as it is
//! now, under the hub's lock, so every watcher gets records in commit order and the last one
//! it gets is the current record; two commits that land before one read are seen as one.
//! Only VPSes someone watches are read; a channel goes away with its last receiver.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast;

use super::StoreError;
use crate::model::VpsRecord;

/// How many changes a watcher may fall behind before it re-reads the record instead.
const CHANNEL_CAPACITY: usize = 16;

/// One published state of a watched VPS.
#[derive(Debug, Clone)]
pub enum VpsChange {
    /// The record as committed.
    Changed(Arc<VpsRecord>),
    /// The record was removed (the VPS is deleted).
    Removed,
}

type Channels = HashMap<String, broadcast::Sender<VpsChange>>;

/// The broadcast channels of the watched VPSes, by VPS id (clones share them).
#[derive(Default, Clone)]
pub struct VpsWatchers {
    inner: Arc<Hub>,
}

#[derive(Default)]
struct Hub {
    channels: Mutex<Channels>,
    /// Set at shutdown: new watches end at once, so the server can stop.
    closed: std::sync::atomic::AtomicBool,
}

impl Hub {
    fn channels(&self) -> MutexGuard<'_, Channels> {
        // A panic while holding the lock leaves the map itself intact.
        match self.channels.lock() {
            Ok(channels) => channels,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

impl VpsWatchers {
    /// Starts receiving the changes of `vps_id` published from now on.
    pub fn subscribe(&self, vps_id: &str) -> VpsChanges {
        let mut channels = self.inner.channels();
        let receiver = if self.inner.closed.load(std::sync::atomic::Ordering::SeqCst) {
            // A receiver whose sender is gone reports `Closed` at once.
            broadcast::channel(1).1
        } else {
            channels
                .entry(vps_id.to_owned())
                .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
                .subscribe()
        };
        VpsChanges {
            hub: self.inner.clone(),
            vps_id: vps_id.to_owned(),
            receiver: Some(receiver),
        }
    }

    /// Publishes `vps_id` if anyone watches it: `read` gives its committed record (`None`
    /// once removed). Call after the transaction that changed it committed.
    pub fn publish(
        &self,
        vps_id: &str,
        read: impl Fn(&str) -> Result<Option<VpsRecord>, StoreError>,
    ) {
        let mut channels = self.inner.channels();
        let Some(sender) = channels.get(vps_id) else {
            return;
        };
        let change = match read(vps_id) {
            Ok(Some(record)) => VpsChange::Changed(Arc::new(record)),
            Ok(None) => VpsChange::Removed,
            Err(error) => {
                // The watcher re-reads on its periodic check and reports the error then.
                tracing::warn!(vps_id, %error, "reading a watched VPS to publish it");
                return;
            }
        };
        if sender.send(change).is_err() {
            channels.remove(vps_id);
        }
    }

    /// Publishes every watched VPS (after a change that affects how all of them look, such
    /// as a tenant being suspended).
    pub fn publish_all(&self, read: impl Fn(&str) -> Result<Option<VpsRecord>, StoreError>) {
        let watched: Vec<String> = self.inner.channels().keys().cloned().collect();
        for vps_id in watched {
            self.publish(&vps_id, &read);
        }
    }

    /// Ends every watch and refuses new ones (at shutdown: open streams would keep the
    /// server from finishing).
    pub fn close(&self) {
        self.inner
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.inner.channels().clear();
    }

    /// How many VPSes have a channel (for tests of the cleanup).
    pub fn watched(&self) -> usize {
        self.inner.channels().len()
    }
}

/// Why the next change could not be received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchRecvError {
    /// Changes were dropped because this receiver fell behind: re-read the record.
    Lagged,
    /// The store closed its watches (shutdown).
    Closed,
}

/// The receiving end of one watch; dropping it removes the VPS's channel when it was the
/// last receiver.
pub struct VpsChanges {
    hub: Arc<Hub>,
    vps_id: String,
    receiver: Option<broadcast::Receiver<VpsChange>>,
}

impl VpsChanges {
    /// The next published change.
    pub async fn recv(&mut self) -> Result<VpsChange, WatchRecvError> {
        let Some(receiver) = self.receiver.as_mut() else {
            return Err(WatchRecvError::Closed);
        };
        match receiver.recv().await {
            Ok(change) => Ok(change),
            Err(broadcast::error::RecvError::Lagged(_)) => Err(WatchRecvError::Lagged),
            Err(broadcast::error::RecvError::Closed) => Err(WatchRecvError::Closed),
        }
    }

    /// A change already published and not yet received, without waiting.
    pub fn try_recv(&mut self) -> Option<Result<VpsChange, WatchRecvError>> {
        let receiver = self.receiver.as_mut()?;
        match receiver.try_recv() {
            Ok(change) => Some(Ok(change)),
            Err(broadcast::error::TryRecvError::Empty) => None,
            Err(broadcast::error::TryRecvError::Lagged(_)) => Some(Err(WatchRecvError::Lagged)),
            Err(broadcast::error::TryRecvError::Closed) => Some(Err(WatchRecvError::Closed)),
        }
    }
}

impl Drop for VpsChanges {
    fn drop(&mut self) {
        let mut channels = self.hub.channels();
        // Drop our receiver under the lock, so a concurrent subscribe either finds the
        // channel with its receiver or makes a new one.
        self.receiver = None;
        if channels
            .get(&self.vps_id)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            channels.remove(&self.vps_id);
        }
    }
}

/// Wakes `WatchEvents` followers: bumped after every committed transaction that may have
/// appended to the event log, so a follower reads the log when it changed instead of polling.
/// Clones share one signal.
#[derive(Debug, Clone)]
pub struct EventSignal(Arc<tokio::sync::watch::Sender<u64>>);

impl Default for EventSignal {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::watch::channel(0).0))
    }
}

impl EventSignal {
    /// Call after a transaction that may have appended events committed.
    pub fn committed(&self) {
        self.0
            .send_modify(|commits| *commits = commits.wrapping_add(1));
    }

    /// A receiver that sees every commit signalled from now on.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// A change in the shared store that a controller's workers and caches act on (etcd's watch
/// reports other controllers' commits, and this one's topology changes; the embedded sled
/// store has one controller, which knows its own changes, and sends none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChange {
    /// Another controller wrote or removed a VPS placed on `node`: the leader reconciles the
    /// node.
    Vps { node: String },
    /// A node or pool changed (not a mere heartbeat), or the watch restarted: cached views
    /// of the nodes are stale.
    Topology,
}

/// Where a store broadcasts [`StoreChange`]s; clones share it.
#[derive(Debug, Clone)]
pub struct StoreChanges(broadcast::Sender<StoreChange>);

/// How many changes a subscriber may fall behind (then it gets `Lagged` and re-reads).
const STORE_CHANGES_CAPACITY: usize = 4096;

impl Default for StoreChanges {
    fn default() -> Self {
        Self(broadcast::channel(STORE_CHANGES_CAPACITY).0)
    }
}

impl StoreChanges {
    /// Announces `change` to every subscriber (none is fine).
    pub fn send(&self, change: StoreChange) {
        let _ = self.0.send(change);
    }

    /// Receives the changes announced from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<StoreChange> {
        self.0.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(vps_id: &str, name: &str) -> VpsRecord {
        VpsRecord {
            vps_id: vps_id.to_owned(),
            name: name.to_owned(),
            tenant: "acme".to_owned(),
            plan: "nano".to_owned(),
            template: "busybox".to_owned(),
            resources: Default::default(),
            node: "node-a".to_owned(),
            desired_power: crate::model::Power::Running,
            deleting: false,
            ipv4: Vec::new(),
            network: None,
            rebuild_generation: 0,
            restart_generation: 0,
            created_at: chrono::Utc::now(),
            observed: None,
            transfer_limit: None,
            applied_spec: None,
            last_request: None,
        }
    }

    #[tokio::test]
    async fn publishes_only_watched_vpses_and_cleans_up() {
        let watchers = VpsWatchers::default();
        let reads = std::sync::atomic::AtomicUsize::new(0);
        let read = |vps_id: &str| {
            reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Some(record(vps_id, "web1")))
        };
        watchers.publish("v1", read);
        assert_eq!(reads.load(std::sync::atomic::Ordering::SeqCst), 0);

        let mut first = watchers.subscribe("v1");
        let second = watchers.subscribe("v1");
        assert_eq!(watchers.watched(), 1);
        watchers.publish("v1", read);
        assert_eq!(reads.load(std::sync::atomic::Ordering::SeqCst), 1);
        match first.recv().await {
            Ok(VpsChange::Changed(vps)) => assert_eq!(vps.name, "web1"),
            other => panic!("unexpected {other:?}"),
        }
        watchers.publish("v1", |_| Ok(None));
        assert!(matches!(first.recv().await, Ok(VpsChange::Removed)));
        drop(first);
        assert_eq!(
            watchers.watched(),
            1,
            "the second receiver keeps the channel"
        );
        drop(second);
        assert_eq!(watchers.watched(), 0);
    }

    #[tokio::test]
    async fn a_lagging_receiver_is_told_to_re_read() {
        let watchers = VpsWatchers::default();
        let mut changes = watchers.subscribe("v1");
        for _ in 0..CHANNEL_CAPACITY + 1 {
            watchers.publish("v1", |vps_id| Ok(Some(record(vps_id, "web1"))));
        }
        assert_eq!(changes.recv().await.err(), Some(WatchRecvError::Lagged));
        assert!(changes.recv().await.is_ok(), "receives again after the lag");
    }

    #[tokio::test]
    async fn close_ends_watches() {
        let watchers = VpsWatchers::default();
        let mut open = watchers.subscribe("v1");
        watchers.close();
        assert_eq!(open.recv().await.err(), Some(WatchRecvError::Closed));
        let mut late = watchers.subscribe("v2");
        assert_eq!(late.recv().await.err(), Some(WatchRecvError::Closed));
        assert_eq!(watchers.watched(), 0);
    }
}
