//! Placement of a new VPS: filter the nodes that can take it, then score them.

use paddock_config::ByteSize;

use crate::store::{Capacity, Resources};

/// What the scheduler knows about one node.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub name: String,
    pub online: bool,
    pub cordoned: bool,
    pub capacity: Capacity,
    /// Sum of the resources of the VPSes already placed there.
    pub allocated: Capacity,
}

/// How far each resource may be promised beyond the node's physical capacity.
#[derive(Debug, Clone, Copy)]
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
}

impl From<ScheduleError> for tonic::Status {
    fn from(error: ScheduleError) -> Self {
        tonic::Status::failed_precondition(error.to_string())
    }
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

/// Picks the node for a VPS needing `need`: the eligible node with the most
/// free memory (spreading load), ties broken by name for determinism.
pub fn place(
    nodes: &[NodeView],
    need: &Resources,
    overcommit: Overcommit,
) -> Result<String, ScheduleError> {
    let eligible: Vec<&NodeView> = nodes.iter().filter(|n| n.online && !n.cordoned).collect();
    if eligible.is_empty() {
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
    let fits = |free: &Capacity| {
        free.vcpus + 1e-9 >= need.vcpus
            && free.memory_bytes >= need.memory_bytes
            && free.disk_bytes >= need.disk_bytes
    };
    let mut scored: Vec<(&NodeView, Capacity)> = eligible
        .into_iter()
        .map(|node| (node, free(node, overcommit)))
        .collect();
    scored.sort_by(|(a, fa), (b, fb)| {
        fb.memory_bytes
            .cmp(&fa.memory_bytes)
            .then_with(|| a.name.cmp(&b.name))
    });
    if let Some((node, _)) = scored.iter().find(|(_, free)| fits(free)) {
        return Ok(node.name.clone());
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

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

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
        }
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
    fn no_nodes_says_to_start_an_agent() {
        let err = place(&[], &need(1), Overcommit::default()).expect_err("empty");
        assert!(err.to_string().contains("no node is registered"));
    }
}
