//! Host routes for addresses that move between nodes. Every node a shared pool spans
//! carries the pool's gateway on its own bridge (an anycast gateway: each bridge is its own
//! L2 segment), so a VPS of the pool on another node is reached through a host route on
//! each node: `address/32` (`/128`) via the underlay address of the node the VPS lives on.
//! The controller computes each node's route set here; the agent installs exactly that set.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use sha2::{Digest, Sha256};

use super::records::PoolRecord;

/// One host route a node needs: `destination` (an address with `/32` or `/128`) via `via`,
/// the underlay address of the node that holds it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostRoute {
    pub destination: String,
    pub via: IpAddr,
}

/// The routes of `node`: for every shared pool it spans, each allocated address (IPv4 and
/// IPv6) of a VPS on another node, via that node's underlay address. `vps_nodes` maps the
/// pools' VPS ids to their node; a VPS or node missing from the maps gets no route.
pub fn node_routes(
    node: &str,
    pools: &[PoolRecord],
    vps_nodes: &HashMap<String, String>,
    underlay: &HashMap<String, IpAddr>,
) -> Vec<HostRoute> {
    let mut routes = BTreeSet::new();
    for pool in pools
        .iter()
        .filter(|pool| pool.is_shared() && pool.spans(node))
    {
        let addresses = pool
            .allocated
            .iter()
            .map(|(address, vps_id)| (address, vps_id, 32))
            .chain(
                pool.allocated_ipv6
                    .iter()
                    .map(|(address, vps_id)| (address, vps_id, 128)),
            );
        for (address, vps_id, prefix_len) in addresses {
            let Some(owner) = vps_nodes.get(vps_id) else {
                continue;
            };
            if owner == node {
                continue;
            }
            if let Some(via) = underlay.get(owner) {
                routes.insert(HostRoute {
                    destination: format!("{address}/{prefix_len}"),
                    via: *via,
                });
            }
        }
    }
    routes.into_iter().collect()
}

/// The VPS ids whose node [`node_routes`] needs to know for `node`.
pub fn routed_vps_ids(node: &str, pools: &[PoolRecord]) -> BTreeSet<String> {
    pools
        .iter()
        .filter(|pool| pool.is_shared() && pool.spans(node))
        .flat_map(|pool| pool.allocated.values().chain(pool.allocated_ipv6.values()))
        .cloned()
        .collect()
}

/// The nodes that share a pool with `node` (not `node` itself): whose routes change when a
/// VPS of a shared pool appears on, leaves or disappears from `node`.
pub fn route_peers(node: &str, pools: &[PoolRecord]) -> BTreeSet<String> {
    pools
        .iter()
        .filter(|pool| pool.is_shared() && pool.spans(node))
        .flat_map(PoolRecord::span)
        .filter(|peer| peer != node)
        .collect()
}

/// A digest of a route set (order-independent), to tell whether a node already has it.
pub fn digest(routes: &[HostRoute]) -> String {
    let mut sorted: Vec<&HostRoute> = routes.iter().collect();
    sorted.sort();
    let mut hasher = Sha256::new();
    for route in sorted {
        hasher.update(format!("{} {}\n", route.destination, route.via).as_bytes());
    }
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A node's underlay address (where the other nodes route its VPSes' moved addresses):
/// the IP of its registered agent address (`https://10.0.0.11:7444`), or `None` when that
/// names a host instead of an IP literal.
pub fn underlay_address(agent_address: &str) -> Option<IpAddr> {
    let authority = agent_address
        .split_once("://")
        .map_or(agent_address, |(_, rest)| rest);
    let authority = authority.split('/').next().unwrap_or(authority);
    authority
        .parse::<SocketAddr>()
        .map(|socket| socket.ip())
        .or_else(|_| authority.parse::<IpAddr>())
        .ok()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::Utc;

    use super::*;

    fn pool(name: &str, nodes: &[&str], allocated: &[(&str, &str)]) -> PoolRecord {
        PoolRecord {
            name: name.to_owned(),
            node: nodes[0].to_owned(),
            nodes: if nodes.len() > 1 {
                nodes.iter().map(|n| (*n).to_owned()).collect()
            } else {
                Vec::new()
            },
            cidr: "10.77.0.0/24".to_owned(),
            gateway: "10.77.0.1".to_owned(),
            range_start: String::new(),
            range_end: String::new(),
            ipv6_prefix: None,
            nat: true,
            allocated: allocated
                .iter()
                .map(|(a, v)| ((*a).to_owned(), (*v).to_owned()))
                .collect(),
            allocated_ipv6: BTreeMap::new(),
            created_at: Utc::now(),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn a_node_routes_the_shared_addresses_living_on_other_nodes() {
        let mut shared = pool(
            "s",
            &["n1", "n2", "n3"],
            &[("10.77.0.2", "a"), ("10.77.0.3", "b"), ("10.77.0.4", "c")],
        );
        shared
            .allocated_ipv6
            .insert("fd00:77::2".to_owned(), "b".to_owned());
        // A pool of one node never needs routes, even for its own VPS elsewhere.
        let own = pool("o", &["n1"], &[("10.77.1.2", "d")]);
        let vps_nodes: HashMap<String, String> =
            [("a", "n1"), ("b", "n2"), ("c", "n3"), ("d", "n1")]
                .into_iter()
                .map(|(v, n)| (v.to_owned(), n.to_owned()))
                .collect();
        let underlay: HashMap<String, IpAddr> = [
            ("n1", ip("10.9.0.11")),
            ("n2", ip("10.9.0.12")),
            ("n3", ip("10.9.0.13")),
        ]
        .into_iter()
        .map(|(n, a)| (n.to_owned(), a))
        .collect();
        let pools = [shared.clone(), own];
        let routes = node_routes("n1", &pools, &vps_nodes, &underlay);
        assert_eq!(
            routes,
            vec![
                HostRoute {
                    destination: "10.77.0.3/32".into(),
                    via: ip("10.9.0.12")
                },
                HostRoute {
                    destination: "10.77.0.4/32".into(),
                    via: ip("10.9.0.13")
                },
                HostRoute {
                    destination: "fd00:77::2/128".into(),
                    via: ip("10.9.0.12")
                },
            ]
        );
        let on_n2 = node_routes("n2", &pools, &vps_nodes, &underlay);
        assert_eq!(
            on_n2
                .iter()
                .map(|r| r.destination.as_str())
                .collect::<Vec<_>>(),
            ["10.77.0.2/32", "10.77.0.4/32"]
        );
        // A node outside the pool gets nothing; one the VPS moved to stops routing it.
        assert!(node_routes("n4", &pools, &vps_nodes, &underlay).is_empty());
        let mut moved = vps_nodes.clone();
        moved.insert("c".into(), "n1".into());
        let after = node_routes("n1", &pools, &moved, &underlay);
        assert!(
            after.iter().all(|r| r.destination != "10.77.0.4/32"),
            "{after:?}"
        );
        assert_ne!(digest(&after), digest(&routes));
        let mut reversed = routes.clone();
        reversed.reverse();
        assert_eq!(digest(&reversed), digest(&routes), "order-independent");
        assert_eq!(
            route_peers("n1", &pools),
            ["n2", "n3"].into_iter().map(String::from).collect()
        );
        assert!(route_peers("n4", &pools).is_empty());
        assert_eq!(
            routed_vps_ids("n2", &pools),
            ["a", "b", "c"].into_iter().map(String::from).collect()
        );
    }

    #[test]
    fn the_underlay_is_the_ip_of_the_agent_address() {
        assert_eq!(
            underlay_address("https://10.9.0.11:7444"),
            Some(ip("10.9.0.11"))
        );
        assert_eq!(
            underlay_address("https://[fd00::11]:7444"),
            Some(ip("fd00::11"))
        );
        assert_eq!(underlay_address("https://node1.example:7444"), None);
    }
}
