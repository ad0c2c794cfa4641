//! How large an IPv4 TCP packet the VPS ports pass whole (their GSO and GRO sizes).
//!
//! A veth pair and the bridge move a packet of any size for about the same CPU, so between
//! two VPSes the number of packets, not of bytes, bounds a TCP stream: with the kernel's
//! 64 KiB per packet it gets about two thirds of what loopback gets. With both ends of
//! every port raised to up to 512 KiB (BIG TCP for IPv4, Linux 6.3 or later) TCP hands down
//! packets eight times larger, on the wire still cut to the MTU. A packet leaving the node
//! through an uplink that takes less is cut into MTU-sized frames in software instead of by
//! the NIC, so unless configured the ports take what the uplink takes.

use std::net::Ipv4Addr;

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage};
use rtnetlink::{LinkUnspec, RouteMessageBuilder};

use super::veth::{deadline, Netlink};
use super::NetworkError;

/// The kernel's GSO size of a new link, and what the ports keep when no uplink is known.
pub const KERNEL_DEFAULT_BYTES: u32 = paddock_config::PORT_GSO_MIN_BYTES;

/// The largest size a port can be given (the kernel's `GSO_MAX_SIZE`).
pub const LARGEST_BYTES: u32 = paddock_config::PORT_GSO_MAX_BYTES;

/// The main routing table.
const MAIN_TABLE: u32 = 254;

/// The size the ports get: `configured` if set, else the smallest size among the uplinks
/// ([`KERNEL_DEFAULT_BYTES`] when there is none), never more than `port_max` (what the
/// port's veth can take).
pub fn port_bytes(configured: Option<u32>, uplinks: &[u32], port_max: u32) -> u32 {
    configured
        .unwrap_or_else(|| {
            uplinks
                .iter()
                .copied()
                .min()
                .unwrap_or(KERNEL_DEFAULT_BYTES)
        })
        .min(port_max)
}

/// The link's IPv4 GSO size; `None` from a kernel without BIG TCP for IPv4 (before 6.3).
pub fn gso_ipv4_max(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::GsoIpv4MaxSize(bytes) => Some(*bytes),
        _ => None,
    })
}

/// The link's IPv4 GRO size, as [`gso_ipv4_max`].
pub fn gro_ipv4_max(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::GroIpv4MaxSize(bytes) => Some(*bytes),
        _ => None,
    })
}

/// The largest packet the link's device can segment (`tso_max_size`, Linux 6.2 or later).
pub fn tso_max(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::TsoMaxSize(bytes) => Some(*bytes),
        _ => None,
    })
}

/// The output devices of the IPv4 default routes of the main table.
fn default_route_devices(routes: &[RouteMessage]) -> Vec<u32> {
    routes
        .iter()
        .filter(|route| route.header.destination_prefix_length == 0)
        .filter(|route| {
            let table = route
                .attributes
                .iter()
                .find_map(|attr| match attr {
                    RouteAttribute::Table(table) => Some(*table),
                    _ => None,
                })
                .unwrap_or(u32::from(route.header.table));
            table == MAIN_TABLE
        })
        .filter_map(|route| {
            route.attributes.iter().find_map(|attr| match attr {
                RouteAttribute::Oif(index) => Some(*index),
                _ => None,
            })
        })
        .collect()
}

/// The IPv4 GSO sizes of the node's uplinks: `uplink` when configured, else every device an
/// IPv4 default route leaves through. Empty when there is none, or the kernel reports no
/// sizes.
pub async fn uplink_sizes(
    netlink: &Netlink,
    uplink: Option<&str>,
) -> Result<Vec<u32>, NetworkError> {
    let links = match uplink {
        Some(name) => netlink.link_by_name(name).await?.into_iter().collect(),
        None => {
            let dump = RouteMessageBuilder::<Ipv4Addr>::new().build();
            let request = netlink.handle.route().get(dump).execute().try_collect();
            let routes: Vec<RouteMessage> = deadline(|| "list routes".to_owned(), request)
                .await?
                .map_err(|source| NetworkError::Netlink {
                op: "list routes".to_owned(),
                source,
            })?;
            let mut links = Vec::new();
            for index in default_route_devices(&routes) {
                links.extend(netlink.link_by_index(index).await?);
            }
            links
        }
    };
    Ok(links.iter().filter_map(gso_ipv4_max).collect())
}

/// Gives `link` the IPv4 GSO and GRO size `bytes`, unless it has it or its kernel has no
/// such setting.
pub async fn ensure(netlink: &Netlink, link: &LinkMessage, bytes: u32) -> Result<(), NetworkError> {
    let (Some(gso), Some(gro)) = (gso_ipv4_max(link), gro_ipv4_max(link)) else {
        return Ok(());
    };
    if gso == bytes && gro == bytes {
        return Ok(());
    }
    let index = link.header.index;
    let message = LinkUnspec::new_with_index(index)
        .append_extra_attribute(LinkAttribute::GsoIpv4MaxSize(bytes))
        .append_extra_attribute(LinkAttribute::GroIpv4MaxSize(bytes))
        .build();
    let op = || format!("set the IPv4 GSO/GRO size of link #{index} to {bytes}");
    let request = netlink.handle.link().set(message).execute();
    deadline(op, request)
        .await?
        .map_err(|source| NetworkError::Netlink { op: op(), source })
}

#[cfg(test)]
mod tests {
    use rtnetlink::packet_route::route::RouteHeader;

    use super::*;

    #[test]
    fn configured_size_wins_but_never_past_the_port() {
        assert_eq!(port_bytes(Some(524_280), &[65_536], 524_280), 524_280);
        assert_eq!(port_bytes(Some(524_280), &[], 262_144), 262_144);
    }

    #[test]
    fn unset_follows_the_smallest_uplink_or_keeps_the_default() {
        assert_eq!(port_bytes(None, &[65_536], 524_280), 65_536);
        assert_eq!(port_bytes(None, &[185_000, 524_280], 524_280), 185_000);
        assert_eq!(port_bytes(None, &[], 524_280), KERNEL_DEFAULT_BYTES);
    }

    #[test]
    fn only_main_table_default_routes_name_uplinks() {
        let route = |prefix_len: u8, table: u32, oif: u32| {
            let mut message = RouteMessage::default();
            message.header = RouteHeader {
                destination_prefix_length: prefix_len,
                table: u8::try_from(table).unwrap_or(252),
                ..RouteHeader::default()
            };
            message.attributes = vec![RouteAttribute::Table(table), RouteAttribute::Oif(oif)];
            message
        };
        let routes = [
            route(0, 254, 2),
            route(24, 254, 3),
            route(0, 100, 4),
            route(0, 254, 5),
        ];
        assert_eq!(default_route_devices(&routes), [2, 5]);
    }
}
