//! The scheduler's view of every node, kept in memory between placements so a
//! create does not read every node from the store: rebuilt from the store
//! when older than its time to live or after a node or pool changed, and
//! charged at once with every placement it hands out, so placements made in
//! between (and concurrent ones) see each other.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::ControllerError;
use crate::model::scheduler::{CapacityIndex, NodeView, Placement};
use crate::model::Resources;

/// How long a view built from the store is reused when other controllers may place on the
/// same nodes (etcd): their placements are charged in the store and seen within it.
pub const SHARED_VIEW_TTL: Duration = Duration::from_secs(1);

/// How long a view is reused by the store's only controller (sled): every change of what the
/// nodes hold or offer goes through it and charges, releases or forgets the view, so this only
/// bounds how long a node that fell silent still looks online (rebuilding the view reads every
/// node: ~40 ms at 10,000 nodes, 5% of the controller's CPU during creates when it was 1 s).
pub const SOLE_VIEW_TTL: Duration = Duration::from_secs(5);

/// Node views for placement, shared by every create, indexed by free capacity
/// ([`CapacityIndex`]) so a placement does not score every node.
pub struct PlacementCache {
    state: Mutex<Option<Cached>>,
    /// How long a view built from the store is reused.
    ttl: Duration,
}

struct Cached {
    index: CapacityIndex,
    built: Instant,
    /// How long it is reused: the TTL, or less if a node it calls online would be offline
    /// by then without another heartbeat.
    lives: Duration,
}

/// Node views read from the store, and how long the ones it calls online stay online
/// without another heartbeat (the least of those; `Duration::MAX` if none is online).
pub type LoadedViews = (Vec<NodeView>, Duration);

impl PlacementCache {
    /// A cache whose views are rebuilt from the store when older than `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            state: Mutex::default(),
            ttl,
        }
    }

    /// Picks a node for `need` and charges the view with it; the caller
    /// [`release`](Self::release)s it if the VPS is not stored after all. A view is read
    /// again once older than the TTL or than its online nodes' silence allows, so no node
    /// that fell silent is placed on after it counts as offline.
    pub fn place(
        &self,
        load: impl FnOnce() -> Result<LoadedViews, ControllerError>,
        need: &Resources,
        placement: &Placement,
    ) -> Result<String, ControllerError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = state.as_ref().is_some_and(|cached| {
            cached.built.elapsed() < cached.lives && cached.index.serves(placement)
        });
        if !fresh {
            let built = Instant::now();
            let (views, online_for) = load()?;
            *state = Some(Cached {
                index: CapacityIndex::new(views, placement),
                built,
                lives: self.ttl.min(online_for),
            });
        }
        let cached = state
            .as_mut()
            .ok_or_else(|| ControllerError::from(crate::error::Precondition::PlacementView))?;
        Ok(cached.index.place(need, placement)?)
    }

    /// Gives back what [`place`](Self::place) charged to `node` for `need`.
    pub fn release(&self, node: &str, need: &Resources) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cached) = state.as_mut() {
            cached.index.release(node, need);
        }
    }

    /// Forgets the view: the next placement reads the store.
    pub fn invalidate(&self) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Forgets the view whenever the store reports a node or pool change from any controller
/// sharing it (a new node, a cordon, a new pool elsewhere), so controllers place on the
/// same nodes; what they place is charged in the store's transaction and read back within
/// [`SHARED_VIEW_TTL`].
pub fn follow_store(controller: std::sync::Arc<crate::Controller>) -> tokio::task::JoinHandle<()> {
    let mut changes = controller.store.store_changes().subscribe();
    tokio::spawn(async move {
        loop {
            match changes.recv().await {
                Ok(crate::store::StoreChange::Topology)
                | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    controller.placements.invalidate()
                }
                Ok(crate::store::StoreChange::Vps { .. }) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Capacity;

    fn node(name: &str) -> NodeView {
        NodeView {
            name: name.to_owned(),
            online: true,
            cordoned: false,
            capacity: Capacity {
                vcpus: 1.0,
                memory_bytes: 1 << 30,
                disk_bytes: 100 << 30,
            },
            allocated: Capacity::default(),
            free_ipv4: 10,
            pools: vec!["p".to_owned()],
            shared_pools: Vec::new(),
            labels: Default::default(),
        }
    }

    #[test]
    fn placements_from_one_view_see_each_other_until_released() {
        let cache = PlacementCache::new(SHARED_VIEW_TTL);
        let need = Resources {
            vcpus: 1.0,
            memory_bytes: 1 << 30,
            disk_bytes: 1 << 30,
            ipv4_count: 1,
            ..Resources::default()
        };
        let placement = Placement::default();
        let load = || Ok((vec![node("a"), node("b")], Duration::MAX));
        let first = cache.place(load, &need, &placement).expect("first");
        let second = cache
            .place(|| panic!("the view is fresh"), &need, &placement)
            .expect("second");
        assert_ne!(first, second, "spread: the first placement is charged");
        let full = cache.place(|| panic!("fresh"), &need, &placement);
        assert!(full.is_err(), "both nodes' memory is promised");
        cache.release(&first, &need);
        assert_eq!(
            cache
                .place(|| panic!("fresh"), &need, &placement)
                .expect("room again"),
            first
        );
        cache.invalidate();
        let mut reloaded = false;
        cache
            .place(
                || {
                    reloaded = true;
                    Ok((vec![node("c")], Duration::MAX))
                },
                &need,
                &placement,
            )
            .expect("after invalidate");
        assert!(reloaded);
    }

    /// A node silent for almost the offline threshold is online in the view built now, and
    /// offline a moment later: the view lives only that long, not the whole TTL (a create
    /// right after the node counted as offline was placed on it).
    #[test]
    fn a_view_lives_no_longer_than_its_online_nodes_stay_online() {
        let cache = PlacementCache::new(SOLE_VIEW_TTL);
        let need = Resources {
            vcpus: 0.1,
            memory_bytes: 1 << 20,
            disk_bytes: 1 << 20,
            ..Resources::default()
        };
        let placement = Placement::default();
        let soon = Duration::from_millis(50);
        let first = cache
            .place(|| Ok((vec![node("silent")], soon)), &need, &placement)
            .expect("first");
        assert_eq!(first, "silent");
        std::thread::sleep(soon);
        let mut silent_offline = node("silent");
        silent_offline.online = false;
        let second = cache
            .place(
                || Ok((vec![silent_offline, node("b")], Duration::MAX)),
                &need,
                &placement,
            )
            .expect("second");
        assert_eq!(second, "b", "the view was read again");
    }
}
