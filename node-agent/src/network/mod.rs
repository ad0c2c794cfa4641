//! VPS networking on the node: a host bridge carrying the pools' gateway
//! addresses, one veth pair per VPS (host end on the bridge, `eth0` inside the
//! VPS's network namespace), anti-spoofing and NAT with nftables, bandwidth
//! limits with tc, and traffic counters.
//!
//! Links, addresses and routes go through rtnetlink ([`veth`], [`bridge`]);
//! the nft ruleset is generated as text and loaded atomically with `nft -f`
//! ([`filter`]); shaping uses the `tc` tool ([`shaping`]).
//!
//! Every operation is idempotent. A port's spec is persisted under
//! `<state_dir>/network/` before anything is created, so [`Network::start`]
//! can repair the ports of running VPSes and remove everything else a crash
//! left behind (veths and ifbs marked with our alias, rules, gateway addresses).

pub mod bridge;
pub mod counters;
pub mod filter;
pub mod offload;
pub mod routes;
pub mod shaping;
pub mod veth;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use paddock_config::{HostPort, Isolation};
use serde::{Deserialize, Serialize};

pub use self::counters::Counters;
use self::filter::{Policy, PortRules};
use self::veth::{link_alias, link_controller, link_name, link_peer, Netlink};

/// Why a network operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A port spec field breaks a rule.
    #[error("invalid network.{field}: {rule}")]
    InvalidSpec { field: &'static str, rule: String },
    /// A netlink request failed.
    #[error("netlink: {op}: {source}")]
    Netlink {
        op: String,
        source: rtnetlink::Error,
    },
    /// A netlink request got no answer in time.
    #[error("netlink: {op}: no answer within {after:?}")]
    Timeout {
        op: String,
        after: std::time::Duration,
    },
    /// A file or namespace operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// `nft` or `tc` could not be run.
    #[error("running {program}: {source} (is the {program} package installed?)")]
    Spawn {
        program: &'static str,
        source: std::io::Error,
    },
    /// `nft` or `tc` failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    /// Something just created is not there.
    #[error("{0} is missing")]
    Missing(String),
    /// A blocking helper task failed.
    #[error("network task failed: {0}")]
    Task(String),
}

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The modified EUI-64 IPv6 link-local address the kernel gives a link with this MAC.
    pub fn ipv6_link_local(&self) -> Ipv6Addr {
        let m = self.0;
        Ipv6Addr::new(
            0xfe80,
            0,
            0,
            0,
            u16::from_be_bytes([m[0] ^ 0x02, m[1]]),
            u16::from_be_bytes([m[2], 0xff]),
            u16::from_be_bytes([0xfe, m[3]]),
            u16::from_be_bytes([m[4], m[5]]),
        )
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = NetworkError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || NetworkError::InvalidSpec {
            field: "mac",
            rule: format!("{text:?} must be six hex bytes like 02:aa:bb:cc:dd:ee"),
        };
        let bytes: Vec<u8> = text
            .split(':')
            .map(|part| {
                if part.len() == 2 {
                    u8::from_str_radix(part, 16).map_err(|_| invalid())
                } else {
                    Err(invalid())
                }
            })
            .collect::<Result<_, _>>()?;
        let mac: [u8; 6] = bytes.try_into().map_err(|_| invalid())?;
        if mac[0] & 1 == 1 || mac == [0; 6] {
            return Err(NetworkError::InvalidSpec {
                field: "mac",
                rule: format!("{text} must be a unicast address"),
            });
        }
        Ok(Self(mac))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// An interface address with its prefix length (`10.77.0.10/24`); also used
/// for networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IfAddr {
    pub address: IpAddr,
    pub prefix_len: u8,
}

impl fmt::Display for IfAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

impl FromStr for IfAddr {
    type Err = NetworkError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || NetworkError::InvalidSpec {
            field: "addresses",
            rule: format!("{text:?} must be ADDRESS/PREFIX, e.g. 10.77.0.10/24"),
        };
        let (address, prefix) = text.split_once('/').ok_or_else(invalid)?;
        let address: IpAddr = address.parse().map_err(|_| invalid())?;
        let prefix_len: u8 = prefix.parse().map_err(|_| invalid())?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(invalid());
        }
        Ok(Self {
            address,
            prefix_len,
        })
    }
}

impl IfAddr {
    /// The network this address belongs to (host bits cleared).
    pub fn network(&self) -> IfAddr {
        let address = match self.address {
            IpAddr::V4(v4) => {
                let mask = u32::MAX
                    .checked_shl(32u32.saturating_sub(u32::from(self.prefix_len)))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(v4) & mask).into())
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128u32.saturating_sub(u32::from(self.prefix_len)))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        };
        IfAddr {
            address,
            prefix_len: self.prefix_len,
        }
    }
}

/// What the controller decided about one VPS's port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    /// The VPS (names the host-side links).
    pub vps_id: String,
    /// eth0's MAC, the only source MAC the VPS may use.
    pub mac: MacAddr,
    /// eth0's addresses, the only source addresses the VPS may use.
    pub addresses: Vec<IfAddr>,
    /// The default gateway; also put on the bridge with the pool's prefix length.
    pub gateway: Option<IpAddr>,
    /// The IPv6 default gateway, when the VPS has IPv6 addresses.
    #[serde(default)]
    pub gateway6: Option<IpAddr>,
    /// Limit on traffic to the VPS, bits/s; 0 = unlimited.
    pub ingress_bps: u64,
    /// Limit on traffic from the VPS, bits/s; 0 = unlimited.
    pub egress_bps: u64,
    /// Masquerade `pool` when leaving the node.
    pub nat: bool,
    /// The pool's network.
    pub pool: Option<IfAddr>,
    /// The VPS's tenant: its isolation group on the bridge. Specs persisted
    /// before it existed read as "" (one group) until the VPS is applied again.
    #[serde(default)]
    pub tenant: String,
}

impl PortSpec {
    /// Checks the addresses, gateway and pool fit together.
    pub fn validate(&self) -> Result<(), NetworkError> {
        let invalid = |field, rule: String| NetworkError::InvalidSpec { field, rule };
        for (field, gateway, v4) in [
            ("gateway", self.gateway, true),
            ("gateway6", self.gateway6, false),
        ] {
            let Some(gateway) = gateway else { continue };
            if gateway.is_ipv4() != v4 {
                return Err(invalid(
                    field,
                    format!("{gateway} is not an IPv{} address", if v4 { 4 } else { 6 }),
                ));
            }
            if self.addresses.iter().any(|a| a.address == gateway) {
                return Err(invalid(field, format!("{gateway} is also a VPS address")));
            }
            let reachable = self
                .addresses
                .iter()
                .filter(|a| a.address.is_ipv4() == v4)
                .any(|a| {
                    IfAddr {
                        address: gateway,
                        prefix_len: a.prefix_len,
                    }
                    .network()
                        == a.network()
                });
            if !reachable {
                return Err(invalid(
                    field,
                    format!("{gateway} is not inside the network of any VPS address"),
                ));
            }
        }
        if self.nat && self.pool.is_none() {
            return Err(invalid(
                "pool_cidr",
                "is required when nat is on".to_owned(),
            ));
        }
        Ok(())
    }

    /// The gateways with the prefix length of the VPS address each serves, as the bridge carries them.
    fn gateways_on_bridge(&self) -> Vec<IfAddr> {
        [self.gateway, self.gateway6]
            .into_iter()
            .flatten()
            .filter_map(|gateway| {
                let prefix_len = self
                    .addresses
                    .iter()
                    .find(|a| a.address.is_ipv4() == gateway.is_ipv4())?
                    .prefix_len;
                Some(IfAddr {
                    address: gateway,
                    prefix_len,
                })
            })
            .collect()
    }
}

/// Node-level network settings (from the agent config).
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// The bridge VPS ports attach to; created if missing.
    pub bridge: String,
    /// Interface NAT traffic leaves through; `None` = any interface but the bridge.
    pub uplink: Option<String>,
    /// Turn on `net.ipv4.ip_forward` when a port has a gateway (VPS traffic is routed by the host).
    pub ip_forward: bool,
    /// IPv4 GSO/GRO size of both ends of every port; `None` = the uplink's ([`offload`]).
    pub port_gso_max_bytes: Option<u32>,
    /// Where port specs are persisted (`<state_dir>/network`).
    pub state_dir: PathBuf,
    /// Ports of the node itself VPSes may open (everything else they send to
    /// the node is dropped but replies, ping and the ICMPv6 IPv6 needs).
    pub host_ports_open_to_vps: Vec<HostPort>,
    /// Which VPSes may exchange frames on the bridge.
    pub vps_isolation: Isolation,
}

/// 48 bits of FNV-1a of the VPS id, as hex: short enough for interface names.
fn short_hash(vps_id: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in vps_id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:012x}", hash & 0xffff_ffff_ffff)
}

/// The host end of a VPS's veth pair (`pv` + 12 hex digits; 14 of the 15 allowed characters).
pub fn host_ifname(vps_id: &str) -> String {
    format!("pv{}", short_hash(vps_id))
}

/// The ifb device that shapes a VPS's egress.
pub fn ifb_ifname(vps_id: &str) -> String {
    format!("pi{}", short_hash(vps_id))
}

/// Whether `name` has the shape of a port or ifb name this agent makes.
fn is_port_name(name: &str) -> bool {
    (name.starts_with("pv") || name.starts_with("pi"))
        && name.len() == 14
        && name[2..].chars().all(|c| c.is_ascii_hexdigit())
}

/// The alias marking a host link as belonging to `vps_id` on `bridge`.
fn alias(bridge: &str, vps_id: &str) -> String {
    format!("paddock:{bridge}:{vps_id}")
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, NetworkError> + Send + 'static,
) -> Result<T, NetworkError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| NetworkError::Task(error.to_string()))?
}

/// The node's VPS networking. Calls for one VPS must not run concurrently
/// (the agent serializes them per VPS); calls for different VPSes may.
pub struct Network {
    config: NetworkConfig,
    host: Netlink,
    /// Ports currently wanted, by VPS id, and the generation of that set (bumped at every
    /// change); the source of the nft ruleset and the bridge's addresses.
    ports: tokio::sync::Mutex<(BTreeMap<String, PortSpec>, u64)>,
    /// The generation of `ports` the ruleset and the bridge were last made from. Held while
    /// they are rewritten, so concurrent changes (a burst of starts) share one `nft -f`.
    loaded: tokio::sync::Mutex<u64>,
    /// Held while the host routes of shared pools are synced.
    routes: tokio::sync::Mutex<()>,
    /// The uplinks' IPv4 GSO sizes and when they were read ([`UPLINK_SIZES_TTL`]): a port
    /// attach does not dump the routing table (a full BGP table on some hosts).
    uplink_sizes: std::sync::Mutex<Option<(std::time::Instant, Vec<u32>)>>,
}

/// How long the uplinks' GSO sizes read for one port are reused for the next ones. A change
/// of an uplink's size reaches new ports after this, existing ones at the agent's restart.
const UPLINK_SIZES_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether a host link found at start-up already is the working port of `spec`: marked as
/// ours, on the bridge, up, with a peer. Anything less is repaired with a full ensure.
fn adoptable(
    link: &rtnetlink::packet_route::link::LinkMessage,
    marker: &str,
    bridge_index: u32,
) -> bool {
    use rtnetlink::packet_route::link::LinkFlags;
    link_alias(link) == Some(marker)
        && link_controller(link) == Some(bridge_index)
        && link.header.flags.contains(LinkFlags::Up)
        && link_peer(link).is_some()
}

impl Network {
    /// Creates the bridge if needed and reconciles what a previous run left:
    /// ports of VPSes in `running` (vps id, init pid) are repaired, every other
    /// port, ifb, rule and gateway address of this bridge is removed.
    pub async fn start(
        config: NetworkConfig,
        running: &[(String, u32)],
    ) -> Result<Self, NetworkError> {
        let dir = config.state_dir.clone();
        crate::fsutil::create_private_dir_all(&dir)
            .and_then(|()| crate::fsutil::restrict_entries(&dir))
            .map_err(|e| NetworkError::Io {
                op: e.operation,
                path: e.path,
                source: e.source,
            })?;
        let network = Self {
            host: Netlink::host()?,
            config,
            ports: tokio::sync::Mutex::new((BTreeMap::new(), 0)),
            loaded: tokio::sync::Mutex::new(0),
            routes: tokio::sync::Mutex::new(()),
            uplink_sizes: std::sync::Mutex::new(None),
        };
        let bridge_index = bridge::ensure(&network.host, &network.config.bridge).await?;
        bridge::set_routing(&network.config.bridge, network.routed())?;
        let running: BTreeMap<&str, u32> = running
            .iter()
            .map(|(vps_id, pid)| (vps_id.as_str(), *pid))
            .collect();
        // Adoption is one link dump, one ruleset load and one bridge sync for all running
        // VPSes; only ports that are not intact get the full (per-VPS) ensure.
        let (adopt, gone): (Vec<PortSpec>, Vec<PortSpec>) = network
            .load_specs()?
            .into_iter()
            .partition(|spec| running.contains_key(spec.vps_id.as_str()));
        for spec in &gone {
            tracing::info!(vps_id = %spec.vps_id, "removing port of a VPS that is not running");
            network.host.delete_link(&host_ifname(&spec.vps_id)).await?;
            network.host.delete_link(&ifb_ifname(&spec.vps_id)).await?;
            network.remove_spec(&spec.vps_id)?;
        }
        {
            let mut ports = network.ports.lock().await;
            for spec in &adopt {
                if spec.validate().is_ok() {
                    ports.0.insert(spec.vps_id.clone(), spec.clone());
                }
            }
            ports.1 += 1;
        }
        network.load_rules().await?;
        let links = network.host.links().await?;
        let by_name: BTreeMap<&str, &rtnetlink::packet_route::link::LinkMessage> = links
            .iter()
            .filter_map(|link| Some((link_name(link)?, link)))
            .collect();
        let mut repaired = 0usize;
        // A port made before `port_gso_max_bytes` changed (or the uplink's size did) gets it now.
        let uplinks = if adopt.is_empty() {
            Vec::new()
        } else {
            network.uplink_sizes().await?
        };
        let sized = |link: &rtnetlink::packet_route::link::LinkMessage| {
            offload::gso_ipv4_max(link)
                .is_none_or(|bytes| bytes == network.port_bytes_for(&uplinks, link))
        };
        for spec in &adopt {
            let marker = alias(&network.config.bridge, &spec.vps_id);
            let intact = by_name
                .get(host_ifname(&spec.vps_id).as_str())
                .is_some_and(|link| adoptable(link, &marker, bridge_index) && sized(link));
            if intact {
                continue;
            }
            repaired += 1;
            let pid = running
                .get(spec.vps_id.as_str())
                .copied()
                .unwrap_or_default();
            if let Err(error) = network.ensure_port(spec, pid).await {
                tracing::error!(vps_id = %spec.vps_id, %error, "repairing VPS port");
            } else {
                tracing::info!(vps_id = %spec.vps_id, "repaired VPS port");
            }
        }
        tracing::info!(ports = adopt.len(), repaired, "adopted VPS ports");
        // Links marked as ours, or on our bridge, that no wanted port explains.
        let wanted: BTreeSet<String> = {
            let ports = network.ports.lock().await;
            ports
                .0
                .keys()
                .flat_map(|vps_id| [host_ifname(vps_id), ifb_ifname(vps_id)])
                .collect()
        };
        let marker = format!("paddock:{}:", network.config.bridge);
        let links = if repaired > 0 {
            network.host.links().await?
        } else {
            links
        };
        for link in &links {
            let Some(name) = link_name(link).map(str::to_owned) else {
                continue;
            };
            // Only links we made: marked with our alias, or named like a port
            // and on our bridge (the uplink an admin may bridge in is never touched).
            let ours = link_alias(link).is_some_and(|a| a.starts_with(&marker))
                || (link_controller(link) == Some(bridge_index) && is_port_name(&name));
            if ours && !wanted.contains(&name) {
                tracing::info!(link = %name, "removing leftover link");
                network.host.delete_link(&name).await?;
            }
        }
        Ok(network)
    }

    /// The bridge this network attaches ports to.
    pub fn bridge(&self) -> &str {
        &self.config.bridge
    }

    /// Makes the node's host routes of shared pools exactly `wanted` ([`routes::sync`]).
    /// While it has any, the bridge answers ARP for their addresses (`proxy_arp`: they
    /// are in the subnet of a local VPS but routed to another node), with or without
    /// tenant isolation. Returns how many routes it added and removed.
    pub async fn sync_routes(
        &self,
        wanted: &[routes::HostRoute],
    ) -> Result<(u32, u32), NetworkError> {
        let _one_at_a_time = self.routes.lock().await;
        let changed = routes::sync(&self.host, wanted).await?;
        bridge::set_proxy_arp(&self.config.bridge, !wanted.is_empty())?;
        Ok(changed)
    }

    /// Whether the node routes between the VPSes of different tenants on the
    /// bridge (which do not reach each other at L2).
    fn routed(&self) -> bool {
        self.config.vps_isolation == Isolation::Tenant
    }

    /// Makes the port of a running VPS (whose init is `init_pid`) match `spec`:
    /// veth pair, rules, rate limits, bridge membership, eth0's addresses and
    /// default route. Repairs whatever is missing; changes rates in place.
    pub async fn ensure_port(&self, spec: &PortSpec, init_pid: u32) -> Result<(), NetworkError> {
        spec.validate()?;
        let netns = PathBuf::from(format!("/proc/{init_pid}/ns/net"));
        let host_name = host_ifname(&spec.vps_id);
        self.save_spec(spec)?;
        let bridge_index = bridge::ensure(&self.host, &self.config.bridge).await?;
        bridge::set_routing(&self.config.bridge, self.routed())?;

        // The veth pair: keep it only if its peer lives in this VPS's namespace.
        let guest = Netlink::in_netns(&netns)?;
        let existing = self.host.link_by_name(&host_name).await?;
        let mut paired = false;
        if let Some(host_link) = &existing {
            if let Some(peer_index) = link_peer(host_link) {
                paired = guest
                    .link_by_index(peer_index)
                    .await?
                    .is_some_and(|peer| link_peer(&peer) == Some(host_link.header.index));
            }
            if !paired {
                // Left from a previous netns of this VPS (e.g. before a restart).
                self.host.delete_link(&host_name).await?;
            }
        }
        if !paired {
            self.host.create_veth(&host_name, &netns, spec.mac).await?;
        }
        let host_link = self
            .host
            .link_by_name(&host_name)
            .await?
            .ok_or_else(|| NetworkError::Missing(format!("veth {host_name}")))?;
        let host_index = host_link.header.index;
        let marker = alias(&self.config.bridge, &spec.vps_id);
        if link_alias(&host_link) != Some(marker.as_str()) {
            self.host.set_alias(host_index, &marker).await?;
        }

        // Rules first: the port joins the bridge only once they are loaded. They match the
        // port by name, so a veth recreated under the same name needs no reload.
        let changed = {
            let mut ports = self.ports.lock().await;
            let changed = ports.0.get(&spec.vps_id) != Some(spec);
            if changed {
                ports.0.insert(spec.vps_id.clone(), spec.clone());
                ports.1 += 1;
            }
            changed
        };
        if changed {
            self.load_rules().await?;
        }
        self.shape(spec, &host_name).await?;
        let gso_bytes = self.port_bytes_for(&self.uplink_sizes().await?, &host_link);
        offload::ensure(&self.host, &host_link, gso_bytes).await?;
        self.host.set_up(host_index, Some(bridge_index)).await?;

        // Inside the VPS.
        let guest_index = link_peer(&host_link)
            .ok_or_else(|| NetworkError::Missing(format!("peer of {host_name}")))?;
        let guest_link = guest
            .link_by_index(guest_index)
            .await?
            .ok_or_else(|| NetworkError::Missing(format!("peer of {host_name}")))?;
        offload::ensure(&guest, &guest_link, gso_bytes).await?;
        if let Some(lo) = guest.link_by_name("lo").await? {
            guest.set_up(lo.header.index, None).await?;
        }
        guest.set_up(guest_index, None).await?;
        for address in &spec.addresses {
            guest.ensure_address(guest_index, *address).await?;
        }
        if let Some(gateway) = spec.gateway {
            guest.replace_default_route(guest_index, gateway).await?;
            if self.config.ip_forward {
                enable_ip_forward()?;
            }
        }
        if let Some(gateway6) = spec.gateway6 {
            guest.replace_default_route(guest_index, gateway6).await?;
        }
        Ok(())
    }

    /// Removes every trace of a VPS's port: veth, ifb (their qdiscs go with
    /// them), rules, the bridge's gateway address if no other port needs it,
    /// and the persisted spec. Absent is fine.
    pub async fn remove_port(&self, vps_id: &str) -> Result<(), NetworkError> {
        self.host.delete_link(&host_ifname(vps_id)).await?;
        self.host.delete_link(&ifb_ifname(vps_id)).await?;
        let removed = {
            let mut ports = self.ports.lock().await;
            let removed = ports.0.remove(vps_id).is_some();
            if removed {
                ports.1 += 1;
            }
            removed
        };
        if removed {
            self.load_rules().await?;
        }
        self.remove_spec(vps_id)
    }

    /// Brings the ruleset and the bridge's addresses up to the current set of ports. Callers
    /// that arrive while a load runs wait for it and then find their change loaded by the
    /// next one, which covers all of them.
    async fn load_rules(&self) -> Result<(), NetworkError> {
        let mut loaded = self.loaded.lock().await;
        let (ports, generation) = {
            let ports = self.ports.lock().await;
            (ports.0.clone(), ports.1)
        };
        if *loaded >= generation {
            return Ok(());
        }
        self.apply_filter(&ports).await?;
        self.sync_bridge(&ports).await?;
        *loaded = generation;
        Ok(())
    }

    fn remove_spec(&self, vps_id: &str) -> Result<(), NetworkError> {
        let path = self.spec_path(vps_id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(NetworkError::Io {
                op: "remove",
                path,
                source,
            }),
        }
    }

    /// Traffic counters of every port on the host, by port name ([`Network::port_name`]), in
    /// one read.
    pub fn all_counters(
        &self,
    ) -> Result<std::collections::HashMap<String, Counters>, NetworkError> {
        counters::read_all()
    }

    /// The name of the host end of a VPS's port: its key in [`Network::all_counters`].
    pub fn port_name(&self, vps_id: &str) -> String {
        host_ifname(vps_id)
    }

    /// The IPv4 GSO sizes of both ends of a VPS's port (host end, `eth0` in the VPS's
    /// network namespace `netns`), as the kernel reports them; `None` where it reports none.
    pub async fn port_gso_ipv4_max(
        &self,
        vps_id: &str,
        netns: &Path,
    ) -> Result<(Option<u32>, Option<u32>), NetworkError> {
        let host_name = host_ifname(vps_id);
        let host_link = self
            .host
            .link_by_name(&host_name)
            .await?
            .ok_or_else(|| NetworkError::Missing(format!("veth {host_name}")))?;
        let guest = Netlink::in_netns(netns)?;
        let guest_link = guest.link_by_name(veth::GUEST_IFNAME).await?;
        Ok((
            offload::gso_ipv4_max(&host_link),
            guest_link.as_ref().and_then(offload::gso_ipv4_max),
        ))
    }

    /// Traffic counters of a VPS's port (see [`Counters`]).
    pub fn counters(&self, vps_id: &str) -> Result<Counters, NetworkError> {
        counters::read_port(&host_ifname(vps_id))
    }

    /// The IPv4 GSO/GRO size for the port whose host end is `host_link`: configured, else the
    /// uplinks' (`uplinks`, from [`uplink_sizes`](Self::uplink_sizes)), within what the veth
    /// can take.
    fn port_bytes_for(
        &self,
        uplinks: &[u32],
        host_link: &rtnetlink::packet_route::link::LinkMessage,
    ) -> u32 {
        let port_max = offload::tso_max(host_link).unwrap_or(offload::KERNEL_DEFAULT_BYTES);
        offload::port_bytes(self.config.port_gso_max_bytes, uplinks, port_max)
    }

    /// The uplinks' IPv4 GSO sizes when the ports follow them (none is read when
    /// `port_gso_max_bytes` is configured), reused for [`UPLINK_SIZES_TTL`].
    async fn uplink_sizes(&self) -> Result<Vec<u32>, NetworkError> {
        if self.config.port_gso_max_bytes.is_some() {
            return Ok(Vec::new());
        }
        if let Some((read, sizes)) = &*self.uplink_sizes.lock().unwrap_or_else(|e| e.into_inner()) {
            if read.elapsed() < UPLINK_SIZES_TTL {
                return Ok(sizes.clone());
            }
        }
        let sizes = offload::uplink_sizes(&self.host, self.config.uplink.as_deref()).await?;
        *self.uplink_sizes.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((std::time::Instant::now(), sizes.clone()));
        Ok(sizes)
    }

    async fn shape(&self, spec: &PortSpec, host_name: &str) -> Result<(), NetworkError> {
        let ifb_name = ifb_ifname(&spec.vps_id);
        if spec.egress_bps > 0 {
            self.host.create_ifb(&ifb_name).await?;
            let ifb = self
                .host
                .link_by_name(&ifb_name)
                .await?
                .ok_or_else(|| NetworkError::Missing(format!("ifb {ifb_name}")))?;
            let marker = alias(&self.config.bridge, &spec.vps_id);
            if link_alias(&ifb) != Some(marker.as_str()) {
                self.host.set_alias(ifb.header.index, &marker).await?;
            }
            self.host.set_up(ifb.header.index, None).await?;
        }
        let (host, ifb, spec) = (host_name.to_owned(), ifb_name.clone(), spec.clone());
        blocking(move || {
            shaping::set_root_rate(&host, spec.ingress_bps)?;
            if spec.egress_bps > 0 {
                shaping::set_root_rate(&ifb, spec.egress_bps)?;
                shaping::redirect_ingress(&host, &ifb)
            } else {
                shaping::clear_ingress(&host)
            }
        })
        .await?;
        if spec.egress_bps == 0 {
            self.host.delete_link(&ifb_name).await?;
        }
        Ok(())
    }

    async fn apply_filter(&self, ports: &BTreeMap<String, PortSpec>) -> Result<(), NetworkError> {
        let rules: Vec<PortRules> = ports
            .values()
            .map(|spec| PortRules {
                host_ifname: host_ifname(&spec.vps_id),
                mac: spec.mac,
                addresses: spec.addresses.iter().map(|a| a.address).collect(),
                group: spec.tenant.clone(),
                private: spec
                    .addresses
                    .iter()
                    .filter(|a| {
                        spec.nat && spec.pool.is_some_and(|pool| pool.network() == a.network())
                    })
                    .map(|a| a.address)
                    .collect(),
            })
            .collect();
        let nat: BTreeSet<IfAddr> = ports
            .values()
            .filter(|spec| spec.nat)
            .filter_map(|spec| spec.pool.map(|pool| pool.network()))
            .filter(|pool| pool.address.is_ipv4())
            .collect();
        let nat: Vec<IfAddr> = nat.into_iter().collect();
        let script = filter::ruleset(
            &self.config.bridge,
            &rules,
            &Policy {
                nat_networks: &nat,
                uplink: self.config.uplink.as_deref(),
                host_ports: &self.config.host_ports_open_to_vps,
                isolation: self.config.vps_isolation,
            },
        );
        blocking(move || filter::apply(&script)).await
    }

    async fn sync_bridge(&self, ports: &BTreeMap<String, PortSpec>) -> Result<(), NetworkError> {
        let wanted: BTreeSet<IfAddr> = ports
            .values()
            .flat_map(PortSpec::gateways_on_bridge)
            .collect();
        let Some(bridge) = self.host.link_by_name(&self.config.bridge).await? else {
            return Ok(());
        };
        bridge::sync_addresses(&self.host, bridge.header.index, &wanted).await
    }

    /// Removes the bridge's rules and the bridge itself (for tests and
    /// decommissioning a node); ports must have been removed first.
    pub async fn teardown(&self) -> Result<(), NetworkError> {
        let script = filter::teardown(&self.config.bridge);
        blocking(move || filter::apply(&script)).await?;
        self.host.delete_link(&self.config.bridge).await
    }

    fn spec_path(&self, vps_id: &str) -> PathBuf {
        self.config.state_dir.join(format!("{vps_id}.json"))
    }

    fn save_spec(&self, spec: &PortSpec) -> Result<(), NetworkError> {
        let path = self.spec_path(&spec.vps_id);
        let bytes = serde_json::to_vec_pretty(spec).map_err(|error| NetworkError::Io {
            op: "encode",
            path: path.clone(),
            source: error.into(),
        })?;
        crate::fsutil::write_atomic(&path, &bytes).map_err(|e| NetworkError::Io {
            op: e.operation,
            path: e.path,
            source: e.source,
        })
    }

    fn load_specs(&self) -> Result<Vec<PortSpec>, NetworkError> {
        let dir = &self.config.state_dir;
        let entries = std::fs::read_dir(dir).map_err(|source| NetworkError::Io {
            op: "read dir",
            path: dir.clone(),
            source,
        })?;
        let mut specs = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let spec = std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<PortSpec>(&bytes).ok());
            match spec {
                Some(spec) => specs.push(spec),
                None => {
                    tracing::warn!(path = %path.display(), "dropping unreadable port spec");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        Ok(specs)
    }
}

fn enable_ip_forward() -> Result<(), NetworkError> {
    let path = Path::new("/proc/sys/net/ipv4/ip_forward");
    let current = std::fs::read_to_string(path).map_err(|source| NetworkError::Io {
        op: "read",
        path: path.to_owned(),
        source,
    })?;
    if current.trim() != "1" {
        std::fs::write(path, "1\n").map_err(|source| NetworkError::Io {
            op: "write",
            path: path.to_owned(),
            source,
        })?;
        tracing::info!("enabled net.ipv4.ip_forward for VPS traffic");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_interface_limits_and_are_stable() {
        let name = host_ifname("0b6f3c1e-1d2a-4c55-9a43-3f1b2d9e8a10");
        assert_eq!(name.len(), 14);
        assert!(name.starts_with("pv"));
        assert_eq!(name, host_ifname("0b6f3c1e-1d2a-4c55-9a43-3f1b2d9e8a10"));
        assert_ne!(name, host_ifname("0b6f3c1e-1d2a-4c55-9a43-3f1b2d9e8a11"));
        assert!(is_port_name(&name) && is_port_name(&ifb_ifname("x")));
        assert!(!is_port_name("eth0") && !is_port_name("pvzzzzzzzzzzzz"));
        assert_eq!(
            ifb_ifname("x")[2..],
            host_ifname("x")[2..],
            "same suffix, different prefix"
        );
    }

    #[test]
    fn mac_parsing_and_link_local() {
        let mac: MacAddr = "02:11:22:33:44:55".parse().expect("mac");
        assert_eq!(mac.to_string(), "02:11:22:33:44:55");
        assert_eq!(
            mac.ipv6_link_local(),
            "fe80::11:22ff:fe33:4455".parse::<Ipv6Addr>().expect("ip")
        );
        for bad in [
            "01:11:22:33:44:55",
            "02:11:22:33:44",
            "zz:11:22:33:44:55",
            "",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn spec_validation() {
        let spec = PortSpec {
            vps_id: "v".into(),
            mac: "02:00:00:00:00:01".parse().expect("mac"),
            addresses: vec!["10.77.0.10/24".parse().expect("addr")],
            gateway: Some("10.77.0.1".parse().expect("gw")),
            gateway6: None,
            ingress_bps: 0,
            egress_bps: 0,
            nat: true,
            pool: Some("10.77.0.0/24".parse().expect("pool")),
            tenant: "acme".into(),
        };
        spec.validate().expect("valid");
        assert_eq!(
            spec.gateways_on_bridge(),
            vec!["10.77.0.1/24".parse().expect("gw")]
        );
        let v6 = PortSpec {
            addresses: vec![
                "10.77.0.10/24".parse().expect("addr"),
                "fd00:77::2/64".parse().expect("addr"),
            ],
            gateway6: Some("fd00:77::1".parse().expect("gw6")),
            ..spec.clone()
        };
        v6.validate().expect("dual stack");
        assert_eq!(v6.gateways_on_bridge().len(), 2);
        let swapped = PortSpec {
            gateway6: Some("10.77.0.1".parse().expect("gw")),
            ..v6
        };
        assert!(swapped.validate().is_err());
        let outside = PortSpec {
            gateway: Some("10.78.0.1".parse().expect("gw")),
            ..spec.clone()
        };
        assert!(matches!(
            outside.validate(),
            Err(NetworkError::InvalidSpec {
                field: "gateway",
                ..
            })
        ));
        let no_pool = PortSpec { pool: None, ..spec };
        assert!(no_pool.validate().is_err());
        assert_eq!(
            "10.77.0.10/24"
                .parse::<IfAddr>()
                .expect("addr")
                .network()
                .to_string(),
            "10.77.0.0/24"
        );
    }
}
