//! The node's bridge: created if missing, kept up, carrying exactly the
//! gateway addresses the ports on it need.

use std::collections::BTreeSet;
use std::net::IpAddr;

use rtnetlink::LinkBridge;

use super::veth::{errno, Netlink};
use super::{IfAddr, NetworkError};

/// Creates the bridge `name` if it does not exist, brings it up, and returns its index.
pub async fn ensure(netlink: &Netlink, name: &str) -> Result<u32, NetworkError> {
    let link = match netlink.link_by_name(name).await? {
        Some(link) => link,
        None => {
            match netlink
                .handle
                .link()
                .add(LinkBridge::new(name).build())
                .execute()
                .await
            {
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
    netlink.set_up(index, None).await?;
    Ok(index)
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
