//! Host routes of shared pools: the addresses of VPSes that live on another node of a pool
//! this node spans, each `address/32` (`/128`) via that node's underlay address, as the
//! controller computes them (`SyncRoutes`).
//!
//! The agent owns exactly the routes of the main table whose protocol is
//! [`ROUTE_PROTOCOL`] (`ip route show proto 77`): a sync adds or replaces the wanted ones and
//! removes the rest of its own, and never reads past another route. They are kernel state:
//! they outlive an agent restart (VPS traffic keeps flowing meanwhile) and are corrected by
//! the next sync, which the controller sends on every change and full resync.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteVia,
};
use rtnetlink::RouteMessageBuilder;

use super::veth::{deadline, errno, Netlink};
use super::NetworkError;

/// The rtnetlink route protocol (`rtm_protocol`) marking paddock's host routes; unused by
/// the protocols iproute2 names (`/etc/iproute2/rt_protos`).
pub const ROUTE_PROTOCOL: u8 = 77;

/// One host route: `destination/prefix_len` via `via`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostRoute {
    pub destination: IpAddr,
    pub prefix_len: u8,
    pub via: IpAddr,
}

impl HostRoute {
    /// Parses `10.77.0.5/32` (or `fd00::5/128`) via `10.0.0.12`: host routes only.
    pub fn parse(destination: &str, via: &str) -> Result<Self, NetworkError> {
        let invalid = |rule: String| NetworkError::InvalidSpec {
            field: "routes",
            rule,
        };
        let (address, prefix) = destination
            .split_once('/')
            .ok_or_else(|| invalid(format!("{destination:?} is not address/prefix")))?;
        let destination: IpAddr = address
            .parse()
            .map_err(|_| invalid(format!("{address:?} is not an IP address")))?;
        let prefix_len: u8 = prefix
            .parse()
            .map_err(|_| invalid(format!("{prefix:?} is not a prefix length")))?;
        let host_len = if destination.is_ipv4() { 32 } else { 128 };
        if prefix_len != host_len {
            return Err(invalid(format!(
                "{destination}/{prefix_len}: only host routes (/{host_len}) are synced"
            )));
        }
        let via: IpAddr = via
            .parse()
            .map_err(|_| invalid(format!("via {via:?} is not an IP address")))?;
        Ok(Self {
            destination,
            prefix_len,
            via,
        })
    }

    fn message(&self) -> RouteMessage {
        let protocol = RouteProtocol::from(ROUTE_PROTOCOL);
        let mut message = match self.destination {
            IpAddr::V4(destination) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(destination, self.prefix_len)
                .protocol(protocol)
                .build(),
            IpAddr::V6(destination) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(destination, self.prefix_len)
                .protocol(protocol)
                .build(),
        };
        // An IPv6 address of a pool may be routed via an IPv4 underlay (RTA_VIA).
        message.attributes.push(match (self.destination, self.via) {
            (IpAddr::V4(_), IpAddr::V4(via)) => RouteAttribute::Gateway(RouteAddress::Inet(via)),
            (IpAddr::V6(_), IpAddr::V6(via)) => RouteAttribute::Gateway(RouteAddress::Inet6(via)),
            (_, IpAddr::V4(via)) => RouteAttribute::Via(RouteVia::Inet(via)),
            (_, IpAddr::V6(via)) => RouteAttribute::Via(RouteVia::Inet6(via)),
        });
        message
    }
}

/// A route of the main table as the kernel lists it, if it is one of ours.
fn owned(message: &RouteMessage) -> Option<HostRoute> {
    if message.header.protocol != RouteProtocol::from(ROUTE_PROTOCOL)
        || message.header.table != RouteHeader::RT_TABLE_MAIN
    {
        return None;
    }
    let mut destination = None;
    let mut via = None;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Destination(RouteAddress::Inet(address)) => {
                destination = Some(IpAddr::V4(*address));
            }
            RouteAttribute::Destination(RouteAddress::Inet6(address)) => {
                destination = Some(IpAddr::V6(*address));
            }
            RouteAttribute::Gateway(RouteAddress::Inet(address))
            | RouteAttribute::Via(RouteVia::Inet(address)) => via = Some(IpAddr::V4(*address)),
            RouteAttribute::Gateway(RouteAddress::Inet6(address))
            | RouteAttribute::Via(RouteVia::Inet6(address)) => via = Some(IpAddr::V6(*address)),
            _ => {}
        }
    }
    Some(HostRoute {
        destination: destination?,
        prefix_len: message.header.destination_prefix_length,
        via: via?,
    })
}

/// The routes this node holds under [`ROUTE_PROTOCOL`], with the kernel's messages.
pub async fn list(netlink: &Netlink) -> Result<Vec<(HostRoute, RouteMessage)>, NetworkError> {
    let mut found = Vec::new();
    for dump in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let request = netlink.handle.route().get(dump).execute().try_collect();
        let messages: Vec<RouteMessage> = deadline(|| "list routes".to_owned(), request)
            .await?
            .map_err(|source| NetworkError::Netlink {
                op: "list routes".to_owned(),
                source,
            })?;
        found.extend(
            messages
                .into_iter()
                .filter_map(|message| Some((owned(&message)?, message))),
        );
    }
    Ok(found)
}

/// Makes this node's own routes exactly `wanted`: adds (or replaces) the missing ones,
/// removes its other ones; routes of any other protocol are never touched. Returns how
/// many it added and removed.
pub async fn sync(netlink: &Netlink, wanted: &[HostRoute]) -> Result<(u32, u32), NetworkError> {
    let present = list(netlink).await?;
    let have: BTreeSet<HostRoute> = present.iter().map(|(route, _)| *route).collect();
    let wanted_set: BTreeSet<HostRoute> = wanted.iter().copied().collect();
    let wanted_destinations: BTreeSet<(IpAddr, u8)> = wanted
        .iter()
        .map(|route| (route.destination, route.prefix_len))
        .collect();
    let (mut added, mut removed) = (0u32, 0u32);
    for (route, message) in present {
        // A destination still wanted via another node is replaced below, not removed.
        if wanted_set.contains(&route)
            || wanted_destinations.contains(&(route.destination, route.prefix_len))
        {
            continue;
        }
        let op = || format!("remove route {}/{}", route.destination, route.prefix_len);
        match deadline(op, netlink.handle.route().del(message).execute()).await? {
            Ok(()) => removed += 1,
            Err(error) if errno(&error) == Some(libc::ESRCH) => {}
            Err(source) => {
                return Err(NetworkError::Netlink { op: op(), source });
            }
        }
    }
    let ours: BTreeSet<(IpAddr, u8)> = have
        .iter()
        .map(|route| (route.destination, route.prefix_len))
        .collect();
    for route in wanted_set.difference(&have) {
        let op = || {
            format!(
                "add route {}/{} via {}",
                route.destination, route.prefix_len, route.via
            )
        };
        let add = netlink.handle.route().add(route.message());
        // Only our own route to the destination is replaced; another one is left alone.
        let request = if ours.contains(&(route.destination, route.prefix_len)) {
            add.replace().execute()
        } else {
            add.execute()
        };
        match deadline(op, request).await? {
            Ok(()) => added += 1,
            Err(error) if errno(&error) == Some(libc::EEXIST) => {
                tracing::warn!(
                    destination = %route.destination,
                    "another route to a moved address exists (not paddock's): left in place"
                );
            }
            Err(source) => return Err(NetworkError::Netlink { op: op(), source }),
        }
    }
    Ok((added, removed))
}
