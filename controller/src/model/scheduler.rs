//! Placement of a new VPS: filter the nodes that can take it, then score them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use paddock_config::ByteSize;

use super::records::{Capacity, Resources};

/// What the scheduler knows about one node.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub name: String,
    pub online: bool,
    pub cordoned: bool,
    pub capacity: Capacity,
    /// Sum of the resources of the VPSes already placed there.
    pub allocated: Capacity,
    /// Unallocated IPv4 addresses over all of the node's pools.
    pub free_ipv4: u32,
    /// Names of the node's pools, for error messages.
    pub pools: Vec<String>,
    /// Those of its pools that other nodes share: an address one of them gives on this node
    /// is gone for those nodes too.
    pub shared_pools: Vec<String>,
    /// Admin-set labels; `paddock.io/{cpu,memory,disk}-overcommit` override the ratios.
    pub labels: BTreeMap<String, String>,
}

/// How to choose among the nodes that fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Most free memory first: spreads load and failure impact.
    #[default]
    Spread,
    /// Least free memory first: fills nodes up, leaves others empty.
    Binpack,
}

/// Everything that shapes one placement decision.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    pub overcommit: Overcommit,
    pub strategy: Strategy,
    /// Labels a node must carry, all of them.
    pub selector: BTreeMap<String, String>,
}

/// Label keys with which an admin overrides a node's overcommit ratios.
pub const CPU_OVERCOMMIT_LABEL: &str = "paddock.io/cpu-overcommit";
pub const MEMORY_OVERCOMMIT_LABEL: &str = "paddock.io/memory-overcommit";
pub const DISK_OVERCOMMIT_LABEL: &str = "paddock.io/disk-overcommit";

impl NodeView {
    /// The node's overcommit ratios: the defaults, overridden by its labels.
    fn overcommit(&self, defaults: Overcommit) -> Overcommit {
        let ratio = |key: &str, default: f64| {
            self.labels
                .get(key)
                .and_then(|value| value.parse::<f64>().ok())
                .filter(|ratio| ratio.is_finite() && *ratio > 0.0)
                .unwrap_or(default)
        };
        Overcommit {
            cpu: ratio(CPU_OVERCOMMIT_LABEL, defaults.cpu),
            memory: ratio(MEMORY_OVERCOMMIT_LABEL, defaults.memory),
            disk: ratio(DISK_OVERCOMMIT_LABEL, defaults.disk),
        }
    }

    fn matches(&self, selector: &BTreeMap<String, String>) -> bool {
        selector
            .iter()
            .all(|(key, value)| self.labels.get(key) == Some(value))
    }
}

/// How far each resource may be promised beyond the node's physical capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Overcommit {
    pub cpu: f64,
    pub memory: f64,
    pub disk: f64,
}

impl Default for Overcommit {
    /// CPU time is shared fairly by CFS, so 4x is usual; memory and disk are hard promises.
    fn default() -> Self {
        Self {
            cpu: 4.0,
            memory: 1.0,
            disk: 1.0,
        }
    }
}

/// Why no node was chosen.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    #[error("no node can take a VPS: {0}")]
    NoEligibleNode(String),
    #[error("no node has room for {needed}; the best node {best} has {free} free")]
    NoRoom {
        needed: String,
        best: String,
        free: String,
    },
    #[error("node {node} has {free} free; growing the VPS needs {needed} more")]
    NoRoomToGrow {
        node: String,
        needed: String,
        free: String,
    },
    #[error("pool {pools} on node {node} has no free IPv4 address")]
    NoAddress { node: String, pools: String },
    #[error("node {node} has no IPv4 pool; an admin must create one (paddock admin pool create)")]
    NoPool { node: String },
}

fn free(node: &NodeView, overcommit: Overcommit) -> Capacity {
    let scaled = |capacity: u64, factor: f64| (capacity as f64 * factor) as u64;
    Capacity {
        vcpus: node.capacity.vcpus * overcommit.cpu - node.allocated.vcpus,
        memory_bytes: scaled(node.capacity.memory_bytes, overcommit.memory)
            .saturating_sub(node.allocated.memory_bytes),
        disk_bytes: scaled(node.capacity.disk_bytes, overcommit.disk)
            .saturating_sub(node.allocated.disk_bytes),
    }
}

fn describe(capacity: &Capacity) -> String {
    format!(
        "{} vCPU, {} memory, {} disk",
        (capacity.vcpus * 100.0).round() / 100.0,
        ByteSize(capacity.memory_bytes),
        ByteSize(capacity.disk_bytes)
    )
}

/// Picks the node for a VPS needing `need` with the default strategy (spread).
pub fn place(
    nodes: &[NodeView],
    need: &Resources,
    overcommit: Overcommit,
) -> Result<String, ScheduleError> {
    place_with(
        nodes,
        need,
        &Placement {
            overcommit,
            ..Placement::default()
        },
    )
}

/// Picks the node for a VPS needing `need`: filter (online, not cordoned,
/// labels, room within the node's overcommit, free addresses), then score by
/// free memory per `placement.strategy`, ties broken by name for determinism.
pub fn place_with(
    nodes: &[NodeView],
    need: &Resources,
    placement: &Placement,
) -> Result<String, ScheduleError> {
    let up: Vec<&NodeView> = nodes.iter().filter(|n| n.online && !n.cordoned).collect();
    if up.is_empty() {
        let reason = if nodes.is_empty() {
            "no node is registered; start paddock-agent on a server".to_owned()
        } else {
            format!(
                "{} node(s) registered, none online and uncordoned",
                nodes.len()
            )
        };
        return Err(ScheduleError::NoEligibleNode(reason));
    }
    let eligible: Vec<&NodeView> = up
        .into_iter()
        .filter(|n| n.matches(&placement.selector))
        .collect();
    if eligible.is_empty() {
        let wanted: Vec<String> = placement
            .selector
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        return Err(ScheduleError::NoEligibleNode(format!(
            "no online node carries the labels {}",
            wanted.join(", ")
        )));
    }
    let fits = |free: &Capacity| {
        free.vcpus + 1e-9 >= need.vcpus
            && free.memory_bytes >= need.memory_bytes
            && free.disk_bytes >= need.disk_bytes
    };
    let mut scored: Vec<(&NodeView, Capacity)> = eligible
        .into_iter()
        .map(|node| (node, free(node, node.overcommit(placement.overcommit))))
        .collect();
    let order = |(a, fa): &(&NodeView, Capacity), (b, fb): &(&NodeView, Capacity)| {
        let by_memory = match placement.strategy {
            Strategy::Spread => fb.memory_bytes.cmp(&fa.memory_bytes),
            Strategy::Binpack => fa.memory_bytes.cmp(&fb.memory_bytes),
        };
        by_memory.then_with(|| a.name.cmp(&b.name))
    };
    let has_addresses = |node: &NodeView| node.free_ipv4 >= need.ipv4_count;
    // One pass for the usual case; sorting is only needed to explain a refusal.
    if let Some((node, _)) = scored
        .iter()
        .filter(|(node, free)| fits(free) && has_addresses(node))
        .min_by(|x, y| order(x, y))
    {
        return Ok(node.name.clone());
    }
    scored.sort_by(order);
    if let Some((node, _)) = scored.iter().find(|(_, free)| fits(free)) {
        return Err(if node.pools.is_empty() {
            ScheduleError::NoPool {
                node: node.name.clone(),
            }
        } else {
            ScheduleError::NoAddress {
                node: node.name.clone(),
                pools: node.pools.join(", "),
            }
        });
    }
    let (best, best_free) = &scored[0];
    Err(ScheduleError::NoRoom {
        needed: describe(&Capacity {
            vcpus: need.vcpus,
            memory_bytes: need.memory_bytes,
            disk_bytes: need.disk_bytes,
        }),
        best: best.name.clone(),
        free: describe(best_free),
    })
}

/// Checks that `node` can give a VPS placed on it `old` grown to `new`
/// (within the node's overcommit); shrinking always fits.
pub fn check_growth(
    node: &NodeView,
    old: &Resources,
    new: &Resources,
    defaults: Overcommit,
) -> Result<(), ScheduleError> {
    let growth = Capacity {
        vcpus: (new.vcpus - old.vcpus).max(0.0),
        memory_bytes: new.memory_bytes.saturating_sub(old.memory_bytes),
        disk_bytes: new.disk_bytes.saturating_sub(old.disk_bytes),
    };
    let free = free(node, node.overcommit(defaults));
    let fits = (growth.vcpus <= 1e-9 || free.vcpus + 1e-9 >= growth.vcpus)
        && free.memory_bytes >= growth.memory_bytes
        && free.disk_bytes >= growth.disk_bytes;
    if fits {
        return Ok(());
    }
    Err(ScheduleError::NoRoomToGrow {
        node: node.name.clone(),
        needed: describe(&growth),
        free: describe(&Capacity {
            vcpus: free.vcpus.max(0.0),
            ..free
        }),
    })
}

/// The nodes of [`place_with`] kept ordered by its score (free memory per strategy, then
/// name), so a placement takes the first eligible node that fits instead of scoring every
/// node: with thousands of nodes that scan was most of a create's CPU time, under the lock
/// every create shares. Placements and releases re-key only the node they touch. Decisions
/// are exactly `place_with`'s (a refusal is explained by `place_with` itself).
#[derive(Debug, Clone)]
pub struct CapacityIndex {
    /// Sorted by name, so an index breaks score ties as `place_with` does.
    views: Vec<NodeView>,
    by_name: HashMap<String, usize>,
    /// Each node's free capacity within its overcommit.
    free: Vec<Capacity>,
    overcommit: Vec<Overcommit>,
    /// Online, uncordoned nodes as (score key, index): the first is preferred.
    order: BTreeSet<(u64, usize)>,
    /// For each node, the other nodes it shares a pool with (whose free addresses a
    /// placement on it also takes).
    sharing: Vec<Vec<usize>>,
    defaults: Overcommit,
    strategy: Strategy,
}

impl CapacityIndex {
    /// Indexes `views` for placements with `placement`'s overcommit defaults and strategy.
    pub fn new(mut views: Vec<NodeView>, placement: &Placement) -> Self {
        views.sort_by(|a, b| a.name.cmp(&b.name));
        let overcommit: Vec<Overcommit> = views
            .iter()
            .map(|view| view.overcommit(placement.overcommit))
            .collect();
        let free = views
            .iter()
            .zip(&overcommit)
            .map(|(view, ratios)| free(view, *ratios))
            .collect();
        let by_name = views
            .iter()
            .enumerate()
            .map(|(index, view)| (view.name.clone(), index))
            .collect();
        let mut members: HashMap<&str, Vec<usize>> = HashMap::new();
        for (node, view) in views.iter().enumerate() {
            for pool in &view.shared_pools {
                members.entry(pool.as_str()).or_default().push(node);
            }
        }
        let sharing = views
            .iter()
            .enumerate()
            .map(|(node, view)| {
                let peers: BTreeSet<usize> = view
                    .shared_pools
                    .iter()
                    .flat_map(|pool| members.get(pool.as_str()).into_iter().flatten())
                    .copied()
                    .filter(|peer| *peer != node)
                    .collect();
                peers.into_iter().collect()
            })
            .collect();
        let mut index = Self {
            views,
            by_name,
            free,
            overcommit,
            order: BTreeSet::new(),
            sharing,
            defaults: placement.overcommit,
            strategy: placement.strategy,
        };
        for node in 0..index.views.len() {
            if let Some(key) = index.key(node) {
                index.order.insert(key);
            }
        }
        index
    }

    /// Whether this index answers for `placement` (same defaults and strategy).
    pub fn serves(&self, placement: &Placement) -> bool {
        self.defaults == placement.overcommit && self.strategy == placement.strategy
    }

    fn key(&self, node: usize) -> Option<(u64, usize)> {
        let view = &self.views[node];
        if !view.online || view.cordoned {
            return None;
        }
        let memory = self.free[node].memory_bytes;
        Some(match self.strategy {
            Strategy::Spread => (u64::MAX - memory, node),
            Strategy::Binpack => (memory, node),
        })
    }

    /// Picks the node for `need` (as [`place_with`] would) and charges it with `need`.
    /// `placement` must be one the index [`serves`](Self::serves).
    pub fn place(
        &mut self,
        need: &Resources,
        placement: &Placement,
    ) -> Result<String, ScheduleError> {
        let fits = |free: &Capacity| {
            free.vcpus + 1e-9 >= need.vcpus
                && free.memory_bytes >= need.memory_bytes
                && free.disk_bytes >= need.disk_bytes
        };
        let chosen = self.order.iter().map(|(_, node)| *node).find(|node| {
            let view = &self.views[*node];
            fits(&self.free[*node])
                && view.free_ipv4 >= need.ipv4_count
                && view.matches(&placement.selector)
        });
        let node = match chosen {
            Some(node) => node,
            None => {
                // Explains the refusal; an answer here would mean the index is out of step.
                let name = place_with(&self.views, need, placement)?;
                self.by_name.get(&name).copied().ok_or_else(|| {
                    ScheduleError::NoEligibleNode(format!("node {name} is not indexed"))
                })?
            }
        };
        self.charge(node, need, 1.0);
        Ok(self.views[node].name.clone())
    }

    /// Gives back what a placement on `node` charged for `need`.
    pub fn release(&mut self, node: &str, need: &Resources) {
        if let Some(index) = self.by_name.get(node).copied() {
            self.charge(index, need, -1.0);
        }
    }

    fn charge(&mut self, node: usize, need: &Resources, sign: f64) {
        if let Some(key) = self.key(node) {
            self.order.remove(&key);
        }
        let view = &mut self.views[node];
        view.allocated.vcpus += sign * need.vcpus;
        if sign >= 0.0 {
            view.allocated.memory_bytes = view
                .allocated
                .memory_bytes
                .saturating_add(need.memory_bytes);
            view.allocated.disk_bytes = view.allocated.disk_bytes.saturating_add(need.disk_bytes);
            view.free_ipv4 = view.free_ipv4.saturating_sub(need.ipv4_count);
        } else {
            view.allocated.memory_bytes = view
                .allocated
                .memory_bytes
                .saturating_sub(need.memory_bytes);
            view.allocated.disk_bytes = view.allocated.disk_bytes.saturating_sub(need.disk_bytes);
            view.free_ipv4 = view.free_ipv4.saturating_add(need.ipv4_count);
        }
        self.free[node] = free(view, self.overcommit[node]);
        if let Some(key) = self.key(node) {
            self.order.insert(key);
        }
        // The store takes the addresses from the first of the node's pools with room; the
        // index does not know which, so a node with a shared pool charges its peers too
        // (conservative until the view is rebuilt from the store's summaries).
        for peer in &self.sharing[node] {
            let view = &mut self.views[*peer];
            view.free_ipv4 = if sign >= 0.0 {
                view.free_ipv4.saturating_sub(need.ipv4_count)
            } else {
                view.free_ipv4.saturating_add(need.ipv4_count)
            };
        }
    }

    /// The indexed views, charged with every placement made through the index.
    pub fn views(&self) -> &[NodeView] {
        &self.views
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn growth_must_fit_the_node_but_shrinking_always_does() {
        // 16 GiB node, 12 allocated, no memory overcommit: 4 GiB free.
        let node = node("n1", 16, 12);
        let vps = |memory_gib: u64| Resources {
            vcpus: 1.0,
            memory_bytes: memory_gib * GIB,
            ..Resources::default()
        };
        let defaults = Overcommit::default();
        assert_eq!(check_growth(&node, &vps(4), &vps(8), defaults), Ok(()));
        let refused = check_growth(&node, &vps(4), &vps(9), defaults).expect_err("5 GiB more");
        assert!(
            refused.to_string().contains("needs 0 vCPU, 5.0 GiB memory"),
            "{refused}"
        );
        let full = self::node("n2", 16, 20);
        assert_eq!(check_growth(&full, &vps(8), &vps(4), defaults), Ok(()));
        // A per-node label can allow the growth.
        let mut labelled = self::node("n3", 16, 12);
        labelled
            .labels
            .insert(MEMORY_OVERCOMMIT_LABEL.to_owned(), "1.5".to_owned());
        assert_eq!(check_growth(&labelled, &vps(4), &vps(9), defaults), Ok(()));
    }

    fn node(name: &str, memory_gib: u64, allocated_gib: u64) -> NodeView {
        NodeView {
            name: name.to_owned(),
            online: true,
            cordoned: false,
            capacity: Capacity {
                vcpus: 2.0,
                memory_bytes: memory_gib * GIB,
                disk_bytes: 100 * GIB,
            },
            allocated: Capacity {
                vcpus: 0.0,
                memory_bytes: allocated_gib * GIB,
                disk_bytes: 0,
            },
            free_ipv4: 10,
            pools: vec![format!("{name}-pool")],
            shared_pools: Vec::new(),
            labels: BTreeMap::new(),
        }
    }

    /// The index decides exactly as `place_with` over the same (charged) views, across
    /// strategies, selectors, per-node overcommit labels, offline/cordoned nodes, address
    /// exhaustion, refusals and releases.
    #[test]
    fn capacity_index_decides_as_place_with() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        };
        for strategy in [Strategy::Spread, Strategy::Binpack] {
            let mut nodes = Vec::new();
            for n in 0..80 {
                let mut view = node(&format!("n{:02}", 79 - n), 4 + next(28), next(4));
                view.capacity.vcpus = 1.0 + next(8) as f64;
                view.online = next(10) != 0;
                view.cordoned = next(12) == 0;
                view.free_ipv4 = next(6) as u32;
                // Some nodes share one of three pools.
                if next(3) == 0 {
                    let shared = format!("shared-{}", next(3));
                    view.pools.push(shared.clone());
                    view.shared_pools.push(shared);
                }
                if next(3) == 0 {
                    view.labels.insert("disk".into(), "ssd".into());
                }
                if next(4) == 0 {
                    view.labels
                        .insert(MEMORY_OVERCOMMIT_LABEL.into(), "1.5".into());
                }
                nodes.push(view);
            }
            let default = Placement {
                strategy,
                ..Placement::default()
            };
            let ssd = Placement {
                selector: [("disk".to_owned(), "ssd".to_owned())].into(),
                ..default.clone()
            };
            let mut index = CapacityIndex::new(nodes, &default);
            assert!(index.serves(&ssd));
            let mut placed: Vec<(String, Resources)> = Vec::new();
            let (mut refused, mut accepted) = (0, 0);
            for round in 0..1500 {
                if round % 7 == 3 && !placed.is_empty() {
                    let (node, need) = placed.swap_remove(next(placed.len() as u64) as usize);
                    index.release(&node, &need);
                    continue;
                }
                let need = Resources {
                    vcpus: 0.25 * (1 + next(8)) as f64,
                    memory_bytes: (1 + next(8)) * GIB / 2,
                    disk_bytes: next(3) * GIB,
                    ipv4_count: next(2) as u32,
                    ..Resources::default()
                };
                let placement = if round % 3 == 0 { &ssd } else { &default };
                let expected = place_with(index.views(), &need, placement);
                let got = index.place(&need, placement);
                assert_eq!(got, expected, "round {round}, {strategy:?}");
                match got {
                    Ok(node) => {
                        accepted += 1;
                        placed.push((node, need));
                    }
                    Err(_) => refused += 1,
                }
            }
            assert!(
                accepted > 100 && refused > 100,
                "{accepted} placed, {refused} refused"
            );
        }
    }

    #[test]
    fn a_placement_takes_a_shared_pools_address_from_every_node_of_the_pool() {
        let shared = |name: &str| {
            let mut view = node(name, 8, 0);
            view.shared_pools = vec!["s".into()];
            view.pools.push("s".into());
            view.free_ipv4 = 1;
            view
        };
        let mut index = CapacityIndex::new(
            vec![shared("a"), shared("b"), node("c", 8, 0)],
            &Placement::default(),
        );
        let one_address = Resources {
            vcpus: 0.5,
            memory_bytes: GIB,
            ipv4_count: 1,
            ..Resources::default()
        };
        let first = index
            .place(&one_address, &Placement::default())
            .expect("placed");
        let free = |index: &CapacityIndex, name: &str| {
            index
                .views()
                .iter()
                .find(|view| view.name == name)
                .map(|view| view.free_ipv4)
        };
        assert_eq!(
            (free(&index, "a"), free(&index, "b")),
            (Some(0), Some(0)),
            "{first}"
        );
        assert_eq!(free(&index, "c"), Some(10), "c shares no pool");
        index.release(&first, &one_address);
        assert_eq!((free(&index, "a"), free(&index, "b")), (Some(1), Some(1)));
    }

    #[test]
    fn binpack_fills_the_fullest_node_that_fits() {
        let nodes = [node("a", 8, 6), node("b", 8, 1), node("c", 8, 7)];
        let binpack = Placement {
            strategy: Strategy::Binpack,
            ..Placement::default()
        };
        // c has 1 GiB free: it fits a 1 GiB VPS and is the fullest.
        assert_eq!(place_with(&nodes, &need(1), &binpack), Ok("c".to_owned()));
        // A 2 GiB VPS does not fit c; a (2 GiB free) is next fullest.
        assert_eq!(place_with(&nodes, &need(2), &binpack), Ok("a".to_owned()));
        assert_eq!(
            place_with(&nodes, &need(2), &Placement::default()),
            Ok("b".to_owned())
        );
    }

    #[test]
    fn selector_and_per_node_overcommit_labels() {
        let mut ssd = node("a", 4, 4);
        ssd.labels.insert("disk".into(), "ssd".into());
        let hdd = node("b", 64, 0);
        let want_ssd = Placement {
            selector: [("disk".to_owned(), "ssd".to_owned())].into(),
            ..Placement::default()
        };
        // a is full at memory overcommit 1.0 ...
        assert!(matches!(
            place_with(&[ssd.clone(), hdd.clone()], &need(1), &want_ssd),
            Err(ScheduleError::NoRoom { .. })
        ));
        // ... and takes the VPS once its label allows 1.5x memory.
        ssd.labels
            .insert(MEMORY_OVERCOMMIT_LABEL.into(), "1.5".into());
        assert_eq!(
            place_with(&[ssd, hdd.clone()], &need(1), &want_ssd),
            Ok("a".to_owned())
        );
        let err = place_with(&[hdd], &need(1), &want_ssd).expect_err("no ssd node");
        assert!(err.to_string().contains("disk=ssd"), "{err}");
    }

    fn need(memory_gib: u64) -> Resources {
        Resources {
            vcpus: 1.0,
            memory_bytes: memory_gib * GIB,
            disk_bytes: GIB,
            ..Resources::default()
        }
    }

    #[test]
    fn spreads_to_the_node_with_most_free_memory() {
        let nodes = [node("a", 8, 6), node("b", 8, 1)];
        assert_eq!(
            place(&nodes, &need(1), Overcommit::default()),
            Ok("b".to_owned())
        );
    }

    #[test]
    fn skips_offline_and_cordoned_nodes() {
        let mut offline = node("a", 64, 0);
        offline.online = false;
        let mut cordoned = node("b", 64, 0);
        cordoned.cordoned = true;
        let nodes = [offline, cordoned, node("c", 4, 0)];
        assert_eq!(
            place(&nodes, &need(1), Overcommit::default()),
            Ok("c".to_owned())
        );
        let err = place(&nodes[..2], &need(1), Overcommit::default()).expect_err("none");
        assert!(matches!(err, ScheduleError::NoEligibleNode(_)));
    }

    #[test]
    fn no_room_names_need_and_best_node() {
        let nodes = [node("a", 4, 3), node("b", 4, 2)];
        let err = place(&nodes, &need(4), Overcommit::default()).expect_err("full");
        let text = err.to_string();
        assert!(text.contains("4.0 GiB memory"), "{text}");
        assert!(text.contains("best node b has"), "{text}");
    }

    #[test]
    fn cpu_overcommit_allows_more_vcpus_than_cores() {
        let mut busy = node("a", 64, 0);
        busy.allocated.vcpus = 7.0;
        assert!(place(&[busy.clone()], &need(1), Overcommit::default()).is_ok());
        let strict = Overcommit {
            cpu: 1.0,
            ..Overcommit::default()
        };
        assert!(place(&[busy], &need(1), strict).is_err());
    }

    #[test]
    fn skips_nodes_without_free_addresses() {
        let mut full = node("a", 64, 0);
        full.free_ipv4 = 0;
        let need = Resources {
            ipv4_count: 1,
            ..need(1)
        };
        let nodes = [full.clone(), node("b", 4, 0)];
        assert_eq!(
            place(&nodes, &need, Overcommit::default()),
            Ok("b".to_owned())
        );
        let err = place(&[full.clone()], &need, Overcommit::default()).expect_err("full");
        assert_eq!(
            err.to_string(),
            "pool a-pool on node a has no free IPv4 address"
        );
        full.pools.clear();
        let err = place(&[full], &need, Overcommit::default()).expect_err("no pool");
        assert!(err.to_string().contains("node a has no IPv4 pool"), "{err}");
    }

    #[test]
    fn no_nodes_says_to_start_an_agent() {
        let err = place(&[], &need(1), Overcommit::default()).expect_err("empty");
        assert!(err.to_string().contains("no node is registered"));
    }
}
