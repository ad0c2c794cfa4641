//! The node's bridge: created if missing, kept up, carrying exactly the
//! gateway addresses the ports on it need.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;

use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::{LinkBridge, LinkUnspec};

use super::veth::{deadline, errno, Netlink};
use super::{IfAddr, MacAddr, NetworkError};

/// Creates the bridge `name` if it does not exist, brings it up, and returns its index.
pub async fn ensure(netlink: &Netlink, name: &str) -> Result<u32, NetworkError> {
    let link = match netlink.link_by_name(name).await? {
        Some(link) => link,
        None => {
            let request = netlink
                .handle
                .link()
                .add(LinkBridge::new(name).build())
                .execute();
            match deadline(|| format!("create bridge {name}"), request).await? {
                Ok(()) => {}
                Err(error) if errno(&error) == Some(libc::EEXIST) => {}
                Err(source) => {
                    return Err(NetworkError::Netlink {
                        op: format!("create bridge {name}"),
                        source,
                    })
                }
            }
            tracing::info!(bridge = name, "created bridge");
            netlink
                .link_by_name(name)
                .await?
                .ok_or_else(|| NetworkError::Missing(format!("bridge {name} after creating it")))?
        }
    };
    let index = link.header.index;
    // A bridge without an address of its own takes the lowest of its ports'
    // MACs, so it would change as VPSes come and go and leave the VPSes' ARP
    // entries for the gateway stale. A fixed MAC keeps the gateway stable.
    let mac = mac_for(name);
    let current = link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::Address(address) => Some(address.clone()),
        _ => None,
    });
    if current.as_deref() != Some(&mac.0[..]) {
        let request = netlink
            .handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .address(mac.0.to_vec())
                    .build(),
            )
            .execute();
        deadline(|| format!("set the MAC of bridge {name}"), request)
            .await?
            .map_err(|source| NetworkError::Netlink {
                op: format!("set the MAC of bridge {name}"),
                source,
            })?;
    }
    netlink.set_up(index, None).await?;
    Ok(index)
}

/// The bridge's own MAC: locally administered, derived from its name.
pub fn mac_for(bridge: &str) -> MacAddr {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bridge.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let bytes = hash.to_be_bytes();
    MacAddr([0x02, bytes[3], bytes[4], bytes[5], bytes[6], bytes[7]])
}

/// Makes the bridge carry exactly `wanted` (plus kernel-made IPv6 link-local
/// addresses): missing gateways are added, ones no port needs are removed.
pub async fn sync_addresses(
    netlink: &Netlink,
    index: u32,
    wanted: &BTreeSet<IfAddr>,
) -> Result<(), NetworkError> {
    let present = netlink.addresses(index).await?;
    for address in wanted {
        if !present.contains(address) {
            netlink.ensure_address(index, *address).await?;
        }
    }
    for address in present {
        let link_local =
            matches!(address.address, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
        if !link_local && !wanted.contains(&address) {
            netlink.remove_address(index, address).await?;
        }
    }
    Ok(())
}

/// The bridge's IPv4 settings for routing between VPSes that do not reach
/// each other at L2 (`routed`, tenant isolation): the node answers ARP for the
/// other addresses of its subnets on the bridge (`proxy_arp_pvlan`, RFC 3069
/// private-VLAN proxy ARP) and does not tell a VPS to go direct
/// (`send_redirects`). Without it, the kernel's defaults. They live on the
/// bridge and go with it.
pub fn set_routing(name: &str, routed: bool) -> Result<(), NetworkError> {
    set_flag(name, "proxy_arp_pvlan", routed)?;
    set_flag(name, "send_redirects", !routed)
}

/// Whether the bridge answers ARP for addresses routed out of another interface
/// (`proxy_arp`): the addresses of shared pools living on other nodes, which a VPS takes for
/// neighbours on its subnet. It lives on the bridge and goes with it.
pub fn set_proxy_arp(name: &str, on: bool) -> Result<(), NetworkError> {
    set_flag(name, "proxy_arp", on)
}

/// Sets the bridge's IPv4 flag `key` (`/proc/sys/net/ipv4/conf/<bridge>/<key>`), writing only
/// when it differs.
fn set_flag(name: &str, key: &str, on: bool) -> Result<(), NetworkError> {
    let path = PathBuf::from(format!("/proc/sys/net/ipv4/conf/{name}/{key}"));
    let wanted = if on { "1" } else { "0" };
    let current = std::fs::read_to_string(&path).map_err(|source| NetworkError::Io {
        op: "read",
        path: path.clone(),
        source,
    })?;
    if current.trim() != wanted {
        std::fs::write(&path, wanted).map_err(|source| NetworkError::Io {
            op: "write",
            path,
            source,
        })?;
    }
    Ok(())
}
