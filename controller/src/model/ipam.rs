//! IP address management: pool validation, overlap checks, address allocation
//! and MAC derivation. Pure functions; the store calls them inside the
//! transactions that create and remove VPSes, so an address is never given twice.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use super::records::{PoolRecord, VpsNetwork, VpsRecord};
use super::validate::ValidationError;

/// An IPv4 network: a network address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    /// The network address (host bits zero).
    pub network: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub prefix_len: u8,
}

impl Ipv4Cidr {
    fn mask(&self) -> u32 {
        if self.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix_len))
        }
    }

    /// The first address of the network.
    pub fn first(&self) -> u32 {
        u32::from(self.network)
    }

    /// The last address of the network (the broadcast address for prefixes below /31).
    pub fn last(&self) -> u32 {
        self.first() | !self.mask()
    }

    /// Whether `address` lies inside the network.
    pub fn contains(&self, address: Ipv4Addr) -> bool {
        u32::from(address) & self.mask() == self.first()
    }

    /// Whether the two networks share any address.
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        self.first() <= other.last() && other.first() <= self.last()
    }

    /// Whether `address` is usable by a host: not the network or broadcast
    /// address (both are usable in /31 and /32, RFC 3021).
    pub fn is_host(&self, address: Ipv4Addr) -> bool {
        let value = u32::from(address);
        self.contains(address)
            && (self.prefix_len >= 31 || (value != self.first() && value != self.last()))
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// Why a CIDR string is not a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not in CIDR notation (e.g. 10.77.0.0/24)")]
    Syntax(String),
    #[error("{given} has host bits set; the network is {network}")]
    HostBits { given: String, network: Ipv4Cidr },
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let syntax = || CidrError::Syntax(text.to_owned());
        let (address, prefix) = text.split_once('/').ok_or_else(syntax)?;
        let address: Ipv4Addr = address.parse().map_err(|_| syntax())?;
        let prefix_len: u8 = prefix.parse().map_err(|_| syntax())?;
        if prefix_len > 32 || prefix.starts_with('+') {
            return Err(syntax());
        }
        let cidr = Ipv4Cidr {
            network: address,
            prefix_len,
        };
        let network = Ipv4Addr::from(u32::from(address) & cidr.mask());
        if network != address {
            return Err(CidrError::HostBits {
                given: text.to_owned(),
                network: Ipv4Cidr {
                    network,
                    prefix_len,
                },
            });
        }
        Ok(cidr)
    }
}

/// A pool's addresses, validated: what may be handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolPlan {
    pub cidr: Ipv4Cidr,
    pub gateway: Ipv4Addr,
    pub range_start: Ipv4Addr,
    pub range_end: Ipv4Addr,
}

impl PoolPlan {
    /// Whether `address` may be allocated: in the range, a host address, not the gateway.
    pub fn allocatable(&self, address: Ipv4Addr) -> bool {
        let value = u32::from(address);
        value >= u32::from(self.range_start)
            && value <= u32::from(self.range_end)
            && self.cidr.is_host(address)
            && address != self.gateway
    }

    /// How many addresses the pool can hand out in total.
    pub fn total(&self) -> u32 {
        let (start, end) = (u32::from(self.range_start), u32::from(self.range_end));
        // Pools are /8../30, so network, broadcast and gateway are three distinct addresses.
        let excluded = [self.cidr.first(), self.cidr.last(), u32::from(self.gateway)]
            .into_iter()
            .filter(|value| (start..=end).contains(value))
            .count() as u32;
        (end - start + 1).saturating_sub(excluded)
    }

    /// The lowest `count` free addresses, or `None` if fewer are free.
    pub fn allocate(
        &self,
        allocated: &BTreeMap<String, String>,
        count: u32,
    ) -> Option<Vec<Ipv4Addr>> {
        let mut picked = Vec::new();
        if count == 0 {
            return Some(picked);
        }
        for value in u32::from(self.range_start)..=u32::from(self.range_end) {
            let address = Ipv4Addr::from(value);
            if self.allocatable(address) && !allocated.contains_key(&address.to_string()) {
                picked.push(address);
                if picked.len() == count as usize {
                    return Some(picked);
                }
            }
        }
        None
    }
}

fn parse_address(field: &'static str, text: &str) -> Result<Ipv4Addr, ValidationError> {
    text.parse()
        .map_err(|_| ValidationError::new(field, format!("{text:?} is not an IPv4 address")))
}

/// Validates a pool's network, gateway and range; an empty range means
/// "every host address of the network except the gateway".
pub fn plan(pool: &PoolRecord) -> Result<PoolPlan, ValidationError> {
    let cidr: Ipv4Cidr = pool
        .cidr
        .parse()
        .map_err(|error: CidrError| ValidationError::new("pool.cidr", error.to_string()))?;
    if cidr.prefix_len < 8 || cidr.prefix_len > 30 {
        return Err(ValidationError::new(
            "pool.cidr",
            format!("{cidr}: the prefix length must be between /8 and /30"),
        ));
    }
    if pool.gateway.is_empty() {
        return Err(ValidationError::new("pool.gateway", "is required"));
    }
    let gateway = parse_address("pool.gateway", &pool.gateway)?;
    if !cidr.is_host(gateway) {
        return Err(ValidationError::new(
            "pool.gateway",
            format!("{gateway} is not a host address inside {cidr}"),
        ));
    }
    let range_start = if pool.range_start.is_empty() {
        Ipv4Addr::from(cidr.first() + 1)
    } else {
        parse_address("pool.range_start", &pool.range_start)?
    };
    let range_end = if pool.range_end.is_empty() {
        Ipv4Addr::from(cidr.last() - 1)
    } else {
        parse_address("pool.range_end", &pool.range_end)?
    };
    for (field, address) in [
        ("pool.range_start", range_start),
        ("pool.range_end", range_end),
    ] {
        if !cidr.contains(address) {
            return Err(ValidationError::new(
                field,
                format!("{address} is outside {cidr}"),
            ));
        }
    }
    if u32::from(range_start) > u32::from(range_end) {
        return Err(ValidationError::new(
            "pool.range_end",
            format!("{range_end} is before range_start {range_start}"),
        ));
    }
    let plan = PoolPlan {
        cidr,
        gateway,
        range_start,
        range_end,
    };
    if plan.total() == 0 {
        return Err(ValidationError::new(
            "pool.range_start",
            format!("the range {range_start}-{range_end} holds no allocatable address"),
        ));
    }
    if let Some(prefix) = &pool.ipv6_prefix {
        if parse_ipv6_prefix(prefix).is_none() {
            return Err(ValidationError::new(
                "pool.ipv6_prefix",
                format!("{prefix:?} must be an IPv6 prefix of /16 to /64, e.g. fd00:77::/64"),
            ));
        }
    }
    Ok(plan)
}

/// An IPv6 prefix of /16../64 (`fd00:77::/64`): its network and length.
pub fn parse_ipv6_prefix(text: &str) -> Option<(std::net::Ipv6Addr, u8)> {
    let (address, len) = text.split_once('/')?;
    let address: std::net::Ipv6Addr = address.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    if !(16..=64).contains(&len) {
        return None;
    }
    let mask = u128::MAX << (128 - u32::from(len));
    Some(((u128::from(address) & mask).into(), len))
}

/// Whether two IPv6 prefixes share any address (the shorter one contains
/// the other's network); invalid prefixes overlap nothing.
pub fn ipv6_prefixes_overlap(a: &str, b: &str) -> bool {
    let (Some((a, a_len)), Some((b, b_len))) = (parse_ipv6_prefix(a), parse_ipv6_prefix(b)) else {
        return false;
    };
    let shorter = a_len.min(b_len);
    let mask = u128::MAX << (128 - u32::from(shorter));
    u128::from(a) & mask == u128::from(b) & mask
}

/// The lowest `count` free IPv6 addresses of a prefix (from `::2`; `::1` is
/// the gateway), or `None` if the prefix is invalid.
pub fn allocate_ipv6(
    prefix: &str,
    allocated: &BTreeMap<String, String>,
    count: u32,
) -> Option<Vec<std::net::Ipv6Addr>> {
    let (network, _) = parse_ipv6_prefix(prefix)?;
    let base = u128::from(network);
    let picked: Vec<std::net::Ipv6Addr> = (2u128..)
        .map(|host| std::net::Ipv6Addr::from(base + host))
        .filter(|address| !allocated.contains_key(&address.to_string()))
        .take(count as usize)
        .collect();
    Some(picked)
}

/// The gateway of an IPv6 prefix: its `::1`.
pub fn ipv6_gateway(prefix: &str) -> Option<std::net::Ipv6Addr> {
    let (network, _) = parse_ipv6_prefix(prefix)?;
    Some((u128::from(network) + 1).into())
}

/// Why an address could not be given or a pool could not be created or removed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("node {node} has no IPv4 pool; an admin must create one (paddock admin pool create)")]
    NoPool { node: String },
    #[error("pool {} on node {node} has no {}", full.join(", "), free_addresses(*count))]
    Exhausted {
        node: String,
        /// The node's pools, none with enough free addresses.
        full: Vec<String>,
        count: u32,
    },
    #[error("{0}")]
    InvalidPool(ValidationError),
    #[error("pool {pool:?} ({cidr}) overlaps pool {other:?} ({other_cidr}) on node {node}")]
    Overlap {
        pool: String,
        cidr: String,
        other: String,
        other_cidr: String,
        node: String,
    },
    #[error(
        "pool {pool:?} (IPv6 {prefix}) overlaps pool {other:?} (IPv6 {other_prefix}) on node {node}"
    )]
    Ipv6Overlap {
        pool: String,
        prefix: String,
        other: String,
        other_prefix: String,
        node: String,
    },
    #[error("pool {pool:?} has {allocated} allocated address(es); delete their VPSes first")]
    InUse { pool: String, allocated: usize },
}

fn free_addresses(count: u32) -> String {
    if count == 1 {
        "free IPv4 address".to_owned()
    } else {
        format!("{count} free IPv4 addresses")
    }
}

/// Gives `vps` its `resources.ipv4_count` addresses (and IPv6 ones, if the pool has a
/// prefix) from `pool`, recording them in both; `false` (nothing changed) if the pool
/// is invalid or has too few free addresses.
pub fn allocate_from(pool: &mut PoolRecord, vps: &mut VpsRecord) -> bool {
    let Ok(plan) = plan(pool) else {
        return false;
    };
    let Some(addresses) = plan.allocate(&pool.allocated, vps.resources.ipv4_count) else {
        return false;
    };
    for address in &addresses {
        pool.allocated
            .insert(address.to_string(), vps.vps_id.clone());
    }
    let ipv6 = match (&pool.ipv6_prefix, vps.resources.ipv6_count) {
        (Some(prefix), count) if count > 0 => {
            allocate_ipv6(prefix, &pool.allocated_ipv6, count).unwrap_or_default()
        }
        _ => Vec::new(),
    };
    for address in &ipv6 {
        pool.allocated_ipv6
            .insert(address.to_string(), vps.vps_id.clone());
    }
    vps.ipv4 = addresses.iter().map(ToString::to_string).collect();
    vps.network = Some(VpsNetwork {
        pool: pool.name.clone(),
        cidr: plan.cidr.to_string(),
        gateway: plan.gateway.to_string(),
        nat: pool.nat,
        mac: mac_for(&vps.vps_id),
        ipv6: ipv6.iter().map(ToString::to_string).collect(),
        ipv6_prefix: pool.ipv6_prefix.clone(),
    });
    true
}

/// Why a VPS needing `count` addresses on `node` got none: the node has no pool, or
/// every one of them (`full`) is short of free addresses.
pub fn no_room(node: &str, full: Vec<String>, count: u32) -> IpamError {
    if full.is_empty() {
        IpamError::NoPool {
            node: node.to_owned(),
        }
    } else {
        IpamError::Exhausted {
            node: node.to_owned(),
            full,
            count,
        }
    }
}

/// A new pool's IPv4 network (as validated by [`plan`]), refused if invalid.
pub fn new_pool_cidr(pool: &PoolRecord) -> Result<Ipv4Cidr, IpamError> {
    plan(pool)
        .map(|plan| plan.cidr)
        .map_err(IpamError::InvalidPool)
}

/// Refuses `pool` (with IPv4 network `cidr`) if its IPv4 network or IPv6 prefix
/// overlaps `other`'s.
pub fn check_overlap(
    pool: &PoolRecord,
    cidr: &Ipv4Cidr,
    other: &PoolRecord,
) -> Result<(), IpamError> {
    let overlaps = other
        .cidr
        .parse::<Ipv4Cidr>()
        .is_ok_and(|theirs| theirs.overlaps(cidr));
    if overlaps {
        return Err(IpamError::Overlap {
            pool: pool.name.clone(),
            cidr: cidr.to_string(),
            other: other.name.clone(),
            other_cidr: other.cidr.clone(),
            node: other.span().join(", "),
        });
    }
    if let (Some(ours), Some(theirs)) = (&pool.ipv6_prefix, &other.ipv6_prefix) {
        if ipv6_prefixes_overlap(ours, theirs) {
            return Err(IpamError::Ipv6Overlap {
                pool: pool.name.clone(),
                prefix: ours.clone(),
                other: other.name.clone(),
                other_prefix: theirs.clone(),
                node: other.span().join(", "),
            });
        }
    }
    Ok(())
}

/// Refuses to remove a pool that still has allocated addresses.
pub fn check_removable(pool: &PoolRecord) -> Result<(), IpamError> {
    if pool.allocated.is_empty() {
        Ok(())
    } else {
        Err(IpamError::InUse {
            pool: pool.name.clone(),
            allocated: pool.allocated.len(),
        })
    }
}

/// Addresses one pool can still hand out.
pub fn free_ipv4(pool: &PoolRecord) -> u32 {
    plan(pool).map_or(0, |plan| {
        plan.total()
            .saturating_sub(u32::try_from(pool.allocated.len()).unwrap_or(u32::MAX))
    })
}

/// Unallocated addresses over every pool `node` is attached to (a shared pool's free
/// addresses count for every node it spans).
pub fn free_on_node(pools: &[PoolRecord], node: &str) -> u32 {
    pools
        .iter()
        .filter(|pool| pool.spans(node))
        .filter_map(|pool| {
            let total = plan(pool).ok()?.total();
            Some(total.saturating_sub(u32::try_from(pool.allocated.len()).unwrap_or(u32::MAX)))
        })
        .sum()
}

/// Why the nodes named for a new pool cannot be its span.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpanError {
    #[error("{0}")]
    Invalid(ValidationError),
    #[error("node {0} is not registered")]
    UnknownNode(String),
}

/// The nodes a new pool spans, from a request's `node` (the single node of old clients)
/// and `nodes`: `nodes` in the order given, with `node` moved first when it is one of
/// them; `[node]` when `nodes` is empty. Every node must be registered (`registered`),
/// and none named twice.
pub fn pool_span(
    node: &str,
    nodes: &[String],
    registered: impl Fn(&str) -> bool,
) -> Result<Vec<String>, SpanError> {
    let invalid =
        |field: &'static str, rule: String| SpanError::Invalid(ValidationError::new(field, rule));
    let mut span: Vec<String> = if nodes.is_empty() {
        if node.is_empty() {
            return Err(invalid("pool.nodes", "name at least one node".to_owned()));
        }
        vec![node.to_owned()]
    } else {
        nodes.to_vec()
    };
    for (index, name) in span.iter().enumerate() {
        super::validate::name("pool.nodes", name).map_err(SpanError::Invalid)?;
        if span[..index].contains(name) {
            return Err(invalid("pool.nodes", format!("node {name} is named twice")));
        }
    }
    if !node.is_empty() {
        let Some(position) = span.iter().position(|name| name == node) else {
            return Err(invalid(
                "pool.node",
                format!("{node} must be one of pool.nodes ({})", span.join(", ")),
            ));
        };
        let first = span.remove(position);
        span.insert(0, first);
    }
    if let Some(unknown) = span.iter().find(|name| !registered(name)) {
        return Err(SpanError::UnknownNode(unknown.clone()));
    }
    Ok(span)
}

/// A pool spanning several nodes must be public (`nat = false`): isolation between tenants'
/// private addresses is enforced on each node (the agent's hairpin chain), and traffic between
/// the nodes of a shared pool is routed past it, so a private shared pool would let a VPS on one
/// node reach another tenant's private address on another.
pub fn check_shared_nat(span: &[String], nat: bool) -> Result<(), ValidationError> {
    if span.len() > 1 && nat {
        return Err(ValidationError::new(
            "pool.nat",
            format!(
                "a pool shared by several nodes ({}) must be public (no NAT): tenant isolation \
                 of private addresses is per node",
                span.join(", ")
            ),
        ));
    }
    Ok(())
}

/// The MAC address of a VPS's eth0: locally administered, unicast, stable for its id.
pub fn mac_for(vps_id: &str) -> String {
    let digest = Sha256::digest(vps_id.as_bytes());
    let mut mac = [0x02u8, 0, 0, 0, 0, 0];
    mac[1..].copy_from_slice(&digest[..5]);
    mac.iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    fn pool(name: &str, node: &str, cidr: &str, gateway: &str) -> PoolRecord {
        PoolRecord {
            name: name.to_owned(),
            node: node.to_owned(),
            nodes: Vec::new(),
            cidr: cidr.to_owned(),
            gateway: gateway.to_owned(),
            range_start: String::new(),
            range_end: String::new(),
            ipv6_prefix: None,
            nat: true,
            allocated: BTreeMap::new(),
            allocated_ipv6: BTreeMap::new(),
            created_at: Utc::now(),
        }
    }

    #[test]
    fn cidr_parsing_and_validation() {
        let cidr: Ipv4Cidr = "10.77.0.0/24".parse().expect("valid");
        assert_eq!(cidr.to_string(), "10.77.0.0/24");
        assert!(cidr.contains("10.77.0.255".parse().expect("ip")));
        assert!(!cidr.contains("10.77.1.0".parse().expect("ip")));
        assert!(!cidr.is_host("10.77.0.0".parse().expect("ip")));
        assert!(!cidr.is_host("10.77.0.255".parse().expect("ip")));
        let err = "10.77.0.5/24".parse::<Ipv4Cidr>().expect_err("host bits");
        assert!(
            err.to_string().contains("the network is 10.77.0.0/24"),
            "{err}"
        );
        for bad in ["10.77.0.0", "10.77.0.0/33", "x/24", "10.77.0.0/+8", ""] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad}");
        }
        let a: Ipv4Cidr = "10.0.0.0/16".parse().expect("a");
        let b: Ipv4Cidr = "10.0.200.0/24".parse().expect("b");
        let c: Ipv4Cidr = "10.1.0.0/24".parse().expect("c");
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
    }

    #[test]
    fn pool_validation_names_the_field() {
        let plan = plan(&pool("p", "n", "10.77.0.0/24", "10.77.0.1")).expect("valid");
        assert_eq!(plan.range_start, Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!(plan.range_end, Ipv4Addr::new(10, 77, 0, 254));
        assert_eq!(plan.total(), 253, "254 hosts minus the gateway");

        let cases = [
            (pool("p", "n", "10.77.0.0/24", "10.78.0.1"), "pool.gateway"),
            (
                pool("p", "n", "10.77.0.0/24", "10.77.0.255"),
                "pool.gateway",
            ),
            (pool("p", "n", "10.77.0.0/24", ""), "pool.gateway"),
            (pool("p", "n", "10.77.0.1/24", "10.77.0.1"), "pool.cidr"),
            (pool("p", "n", "10.0.0.0/4", "10.0.0.1"), "pool.cidr"),
            (
                PoolRecord {
                    range_start: "10.77.1.10".into(),
                    ..pool("p", "n", "10.77.0.0/24", "10.77.0.1")
                },
                "pool.range_start",
            ),
            (
                PoolRecord {
                    range_start: "10.77.0.100".into(),
                    range_end: "10.77.0.10".into(),
                    ..pool("p", "n", "10.77.0.0/24", "10.77.0.1")
                },
                "pool.range_end",
            ),
            (
                PoolRecord {
                    ipv6_prefix: Some("nope".into()),
                    ..pool("p", "n", "10.77.0.0/24", "10.77.0.1")
                },
                "pool.ipv6_prefix",
            ),
        ];
        for (bad, field) in cases {
            let error = super::plan(&bad).expect_err(field);
            assert_eq!(error.field, field, "{error}");
        }
    }

    #[test]
    fn allocation_skips_gateway_and_allocated() {
        let plan = plan(&PoolRecord {
            range_start: "10.77.0.1".into(),
            range_end: "10.77.0.4".into(),
            ..pool("p", "n", "10.77.0.0/24", "10.77.0.2")
        })
        .expect("valid");
        assert_eq!(plan.total(), 3);
        let mut allocated = BTreeMap::new();
        allocated.insert("10.77.0.1".to_owned(), "vps-a".to_owned());
        assert_eq!(
            plan.allocate(&allocated, 2),
            Some(vec![
                Ipv4Addr::new(10, 77, 0, 3),
                Ipv4Addr::new(10, 77, 0, 4)
            ])
        );
        assert_eq!(plan.allocate(&allocated, 3), None);
        assert_eq!(plan.allocate(&allocated, 0), Some(vec![]));
    }

    #[test]
    fn ipv6_allocation_skips_the_gateway_and_allocated() {
        assert_eq!(
            ipv6_gateway("fd00:77::/64"),
            Some("fd00:77::1".parse().expect("ip"))
        );
        let mut allocated = BTreeMap::new();
        allocated.insert("fd00:77::2".to_owned(), "other".to_owned());
        assert_eq!(
            allocate_ipv6("fd00:77::/64", &allocated, 2),
            Some(vec![
                "fd00:77::3".parse().expect("ip"),
                "fd00:77::4".parse().expect("ip")
            ])
        );
        assert_eq!(allocate_ipv6("nope", &allocated, 1), None);
        assert!(parse_ipv6_prefix("fd00::/96").is_none(), "longer than /64");
    }

    #[test]
    fn ipv6_prefixes_overlap_when_one_contains_the_other() {
        assert!(ipv6_prefixes_overlap("fd00:77::/64", "fd00:77::/64"));
        assert!(ipv6_prefixes_overlap("fd00::/48", "fd00:0:0:5::/64"));
        assert!(ipv6_prefixes_overlap("fd00:0:0:5::/64", "fd00::/48"));
        assert!(!ipv6_prefixes_overlap("fd00:77::/64", "fd00:78::/64"));
        assert!(!ipv6_prefixes_overlap("fd00:1::/48", "fd00:2::/48"));
        assert!(!ipv6_prefixes_overlap("nope", "fd00::/48"));
    }

    #[test]
    fn a_shared_pool_must_be_public() {
        let span = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        assert_eq!(check_shared_nat(&span(&["n1"]), true), Ok(()));
        assert_eq!(check_shared_nat(&span(&["n1", "n2"]), false), Ok(()));
        let error = check_shared_nat(&span(&["n1", "n2"]), true).expect_err("private shared pool");
        assert_eq!(error.field, "pool.nat");
        assert!(error.to_string().contains("must be public"), "{error}");
    }

    #[test]
    fn a_pool_span_names_registered_nodes_once_with_node_first() {
        let registered = |name: &str| ["n1", "n2", "n3"].contains(&name);
        let nodes = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        assert_eq!(pool_span("n1", &[], registered), Ok(nodes(&["n1"])));
        assert_eq!(
            pool_span("", &nodes(&["n2", "n3"]), registered),
            Ok(nodes(&["n2", "n3"]))
        );
        assert_eq!(
            pool_span("n3", &nodes(&["n1", "n2", "n3"]), registered),
            Ok(nodes(&["n3", "n1", "n2"])),
            "node is the first of the span"
        );
        assert_eq!(
            pool_span("", &nodes(&["n1", "n9"]), registered),
            Err(SpanError::UnknownNode("n9".into()))
        );
        assert_eq!(
            pool_span("n9", &[], registered),
            Err(SpanError::UnknownNode("n9".into()))
        );
        for (node, named, field, rule) in [
            (
                "",
                vec!["n1", "n2", "n1"],
                "pool.nodes",
                "node n1 is named twice",
            ),
            (
                "n3",
                vec!["n1", "n2"],
                "pool.node",
                "n3 must be one of pool.nodes (n1, n2)",
            ),
            ("", vec![], "pool.nodes", "name at least one node"),
            ("", vec!["N1"], "pool.nodes", ""),
        ] {
            let Err(SpanError::Invalid(error)) = pool_span(node, &nodes(&named), registered) else {
                panic!("{node:?} {named:?} accepted");
            };
            assert_eq!(error.field, field, "{error}");
            assert!(error.to_string().contains(rule), "{error}");
        }
    }

    #[test]
    fn a_shared_pool_counts_for_every_node_it_spans_and_still_may_not_overlap() {
        let shared = PoolRecord {
            nodes: vec!["n1".into(), "n2".into()],
            ..pool("s", "n1", "10.77.0.0/24", "10.77.0.1")
        };
        let own = pool("o", "n2", "10.78.0.0/24", "10.78.0.1");
        let pools = [shared.clone(), own.clone()];
        assert_eq!(free_on_node(&pools, "n1"), 253);
        assert_eq!(free_on_node(&pools, "n2"), 253 * 2);
        assert_eq!(free_on_node(&pools, "n3"), 0);
        assert!(shared.is_shared() && shared.spans("n2") && !own.is_shared());
        let overlapping = pool("x", "n3", "10.77.0.128/25", "10.77.0.129");
        let cidr = new_pool_cidr(&overlapping).expect("valid");
        let error = check_overlap(&overlapping, &cidr, &shared).expect_err("overlap");
        assert!(error.to_string().contains("on node n1, n2"), "{error}");
    }

    #[test]
    fn macs_are_stable_local_unicast() {
        let mac = mac_for("0b6f3c1e-1d2a-4c55-9a43-3f1b2d9e8a10");
        assert_eq!(mac, mac_for("0b6f3c1e-1d2a-4c55-9a43-3f1b2d9e8a10"));
        assert_ne!(mac, mac_for("another"));
        assert!(mac.starts_with("02:"), "{mac}");
        assert_eq!(mac.len(), 17);
    }
}
