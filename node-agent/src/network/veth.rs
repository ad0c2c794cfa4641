//! Netlink plumbing: connections in the host and in a VPS's network namespace,
//! and the links, addresses and routes of a VPS port (all via rtnetlink).

use std::fs::File;
use std::future::Future;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkIfb, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use tokio::task::JoinHandle;

use super::{IfAddr, MacAddr, NetworkError};

/// Name of the VPS side of its veth pair.
pub const GUEST_IFNAME: &str = "eth0";

/// How long one netlink request may take. A request whose answer never comes (a socket
/// that overflowed dropped it) fails after this, naming the request, instead of holding
/// the VPS's lock forever.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(15);

/// Receive buffer of every netlink socket. With hundreds of veths and addresses one dump
/// or a burst of notifications overflows the default (~200 KiB), and the kernel then
/// drops answers.
pub const RECEIVE_BUFFER_BYTES: usize = 32 << 20;

type Connection = rtnetlink::proto::Connection<rtnetlink::packet_route::RouteNetlinkMessage>;

/// A netlink connection in the calling thread's network namespace, with a receive buffer of
/// [`RECEIVE_BUFFER_BYTES`] (forced past `net.core.rmem_max` when we may, as root).
fn connect() -> std::io::Result<(Connection, Handle)> {
    use nix::sys::socket::{setsockopt, sockopt};
    let (mut connection, handle, _) = rtnetlink::new_connection()?;
    let socket = connection.socket_mut().as_raw_fd();
    // SAFETY: the fd belongs to `connection`, which outlives this borrow.
    let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(socket) };
    if setsockopt(&socket.as_fd(), sockopt::RcvBufForce, &RECEIVE_BUFFER_BYTES).is_err() {
        // Without CAP_NET_ADMIN: as much as rmem_max allows.
        setsockopt(&socket.as_fd(), sockopt::RcvBuf, &RECEIVE_BUFFER_BYTES)
            .map_err(std::io::Error::from)?;
    }
    Ok((connection, handle))
}

/// Runs one netlink request under [`REQUEST_DEADLINE`]; the outer error is the deadline
/// (naming the request `op` describes), the inner one the request's own result.
pub(super) async fn deadline<T>(
    op: impl FnOnce() -> String,
    request: impl Future<Output = Result<T, rtnetlink::Error>>,
) -> Result<Result<T, rtnetlink::Error>, NetworkError> {
    tokio::time::timeout(REQUEST_DEADLINE, request)
        .await
        .map_err(|_| NetworkError::Timeout {
            op: op(),
            after: REQUEST_DEADLINE,
        })
}

/// A netlink connection bound to one network namespace; the connection task
/// ends when this is dropped.
pub struct Netlink {
    pub handle: Handle,
    task: JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn netlink_err(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let op = op.into();
    move |source| NetworkError::Netlink { op, source }
}

/// The errno a netlink request failed with, if it was a kernel NACK.
pub fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => Some(message.raw_code().abs()),
        _ => None,
    }
}

impl Netlink {
    /// A connection in the agent's own (host) network namespace.
    pub fn host() -> Result<Self, NetworkError> {
        let (connection, handle) = connect().map_err(|source| NetworkError::Io {
            op: "open netlink socket",
            path: PathBuf::from("/proc/self/ns/net"),
            source,
        })?;
        Ok(Self {
            handle,
            task: tokio::spawn(connection),
        })
    }

    /// A connection inside the network namespace at `netns` (e.g.
    /// `/proc/<pid>/ns/net`). The socket is opened on a short-lived thread that
    /// joins the namespace, so no pooled thread ever changes namespace.
    pub fn in_netns(netns: &Path) -> Result<Self, NetworkError> {
        let file = File::open(netns).map_err(|source| NetworkError::Io {
            op: "open network namespace",
            path: netns.to_owned(),
            source,
        })?;
        let runtime = tokio::runtime::Handle::current();
        let path = netns.to_owned();
        let opened = std::thread::spawn(move || {
            let _context = runtime.enter();
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|errno| {
                NetworkError::Io {
                    op: "join network namespace",
                    path: path.clone(),
                    source: errno.into(),
                }
            })?;
            connect().map_err(|source| NetworkError::Io {
                op: "open netlink socket in",
                path,
                source,
            })
        })
        .join()
        .map_err(|_| NetworkError::Io {
            op: "join network namespace (thread panicked)",
            path: netns.to_owned(),
            source: std::io::Error::other("panic"),
        })??;
        let (connection, handle) = opened;
        Ok(Self {
            handle,
            task: tokio::spawn(connection),
        })
    }

    /// The link called `name`, if any.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkMessage>, NetworkError> {
        let request = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        let mut request = std::pin::pin!(request);
        match deadline(|| format!("get link {name}"), request.try_next()).await? {
            Ok(link) => Ok(link),
            Err(error) if errno(&error) == Some(libc::ENODEV) => Ok(None),
            Err(source) => Err(NetworkError::Netlink {
                op: format!("get link {name}"),
                source,
            }),
        }
    }

    /// The link with this index, if any.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkMessage>, NetworkError> {
        let request = self.handle.link().get().match_index(index).execute();
        let mut request = std::pin::pin!(request);
        match deadline(|| format!("get link #{index}"), request.try_next()).await? {
            Ok(link) => Ok(link),
            Err(error) if errno(&error) == Some(libc::ENODEV) => Ok(None),
            Err(source) => Err(NetworkError::Netlink {
                op: format!("get link #{index}"),
                source,
            }),
        }
    }

    /// Every link of the namespace.
    pub async fn links(&self) -> Result<Vec<LinkMessage>, NetworkError> {
        let request = self.handle.link().get().execute().try_collect();
        deadline(|| "list links".to_owned(), request)
            .await?
            .map_err(netlink_err("list links"))
    }

    /// Deletes a link; an absent one is fine.
    pub async fn delete_link(&self, name: &str) -> Result<(), NetworkError> {
        let Some(link) = self.link_by_name(name).await? else {
            return Ok(());
        };
        let request = self.handle.link().del(link.header.index).execute();
        match deadline(|| format!("delete link {name}"), request).await? {
            Ok(()) => Ok(()),
            Err(error) if errno(&error) == Some(libc::ENODEV) => Ok(()),
            Err(source) => Err(NetworkError::Netlink {
                op: format!("delete link {name}"),
                source,
            }),
        }
    }

    /// Sets the link's alias (`ip link set NAME alias ...`), which marks it as ours.
    pub async fn set_alias(&self, index: u32, alias: &str) -> Result<(), NetworkError> {
        let message = LinkUnspec::new_with_index(index)
            .alias(alias.to_owned())
            .build();
        let request = self.handle.link().set(message).execute();
        deadline(|| format!("set alias of link #{index}"), request)
            .await?
            .map_err(netlink_err(format!("set alias of link #{index}")))
    }

    /// Brings a link up, optionally enslaving it to `controller` (a bridge).
    pub async fn set_up(&self, index: u32, controller: Option<u32>) -> Result<(), NetworkError> {
        let mut builder = LinkUnspec::new_with_index(index).up();
        if let Some(controller) = controller {
            builder = builder.controller(controller);
        }
        let request = self.handle.link().set(builder.build()).execute();
        deadline(|| format!("set link #{index} up"), request)
            .await?
            .map_err(netlink_err(format!("set link #{index} up")))
    }

    /// Creates a veth pair whose host end `host_name` stays here and whose peer,
    /// `eth0` with `mac`, is created directly in the namespace `netns`.
    pub async fn create_veth(
        &self,
        host_name: &str,
        netns: &Path,
        mac: MacAddr,
    ) -> Result<(), NetworkError> {
        let netns_file = File::open(netns).map_err(|source| NetworkError::Io {
            op: "open network namespace",
            path: netns.to_owned(),
            source,
        })?;
        use std::os::fd::AsRawFd;
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(GUEST_IFNAME.to_owned())
            .address(mac.0.to_vec())
            .setns_by_fd(netns_file.as_raw_fd())
            .build();
        let message = LinkVeth::new(host_name, GUEST_IFNAME)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        // The fd must stay open until the kernel has processed the request.
        let request = self.handle.link().add(message).execute();
        let result = deadline(|| format!("create veth {host_name}"), request).await;
        drop(netns_file);
        let result = result?;
        result.map_err(netlink_err(format!(
            "create veth {host_name} with peer {GUEST_IFNAME} in {}",
            netns.display()
        )))
    }

    /// Creates an ifb device (down) called `name`.
    pub async fn create_ifb(&self, name: &str) -> Result<(), NetworkError> {
        let request = self.handle.link().add(LinkIfb::new(name).build()).execute();
        match deadline(|| format!("create ifb {name}"), request).await? {
            Ok(()) => Ok(()),
            Err(error) if errno(&error) == Some(libc::EEXIST) => Ok(()),
            Err(source) => Err(NetworkError::Netlink {
                op: format!("create ifb {name}"),
                source,
            }),
        }
    }

    /// Addresses of one link.
    pub async fn addresses(&self, index: u32) -> Result<Vec<IfAddr>, NetworkError> {
        let request = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect::<Vec<_>>();
        let messages = deadline(|| format!("list addresses of link #{index}"), request)
            .await?
            .map_err(netlink_err(format!("list addresses of link #{index}")))?;
        Ok(messages
            .into_iter()
            .filter(|message| message.header.index == index)
            .filter_map(|message| {
                let prefix_len = message.header.prefix_len;
                let address = message.attributes.iter().find_map(|attr| match attr {
                    AddressAttribute::Local(address) => Some(*address),
                    _ => None,
                });
                let address = address.or_else(|| {
                    message.attributes.iter().find_map(|attr| match attr {
                        AddressAttribute::Address(address) => Some(*address),
                        _ => None,
                    })
                })?;
                Some(IfAddr {
                    address,
                    prefix_len,
                })
            })
            .collect())
    }

    /// Adds an address unless the link already has it.
    pub async fn ensure_address(&self, index: u32, address: IfAddr) -> Result<(), NetworkError> {
        if self.addresses(index).await?.contains(&address) {
            return Ok(());
        }
        let request = self
            .handle
            .address()
            .add(index, address.address, address.prefix_len)
            .execute();
        match deadline(
            || format!("add address {address} to link #{index}"),
            request,
        )
        .await?
        {
            Ok(()) => Ok(()),
            Err(error) if errno(&error) == Some(libc::EEXIST) => Ok(()),
            Err(source) => Err(NetworkError::Netlink {
                op: format!("add address {address} to link #{index}"),
                source,
            }),
        }
    }

    /// Removes an address from a link; an absent one is fine.
    pub async fn remove_address(&self, index: u32, address: IfAddr) -> Result<(), NetworkError> {
        let request = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect::<Vec<_>>();
        let messages = deadline(|| format!("list addresses of link #{index}"), request)
            .await?
            .map_err(netlink_err(format!("list addresses of link #{index}")))?;
        for message in messages {
            let matches = message.header.index == index
                && message.header.prefix_len == address.prefix_len
                && message.attributes.iter().any(|attr| {
                    matches!(attr, AddressAttribute::Local(a) | AddressAttribute::Address(a) if *a == address.address)
                });
            if matches {
                let request = self.handle.address().del(message).execute();
                let op = || format!("remove address {address} from link #{index}");
                match deadline(op, request).await? {
                    Ok(()) => {}
                    Err(error) if errno(&error) == Some(libc::EADDRNOTAVAIL) => {}
                    Err(source) => {
                        return Err(NetworkError::Netlink {
                            op: format!("remove address {address} from link #{index}"),
                            source,
                        })
                    }
                }
            }
        }
        Ok(())
    }

    /// Sets (or replaces) the default route via `gateway` out of link `index`.
    pub async fn replace_default_route(
        &self,
        index: u32,
        gateway: IpAddr,
    ) -> Result<(), NetworkError> {
        let message = match gateway {
            IpAddr::V4(gateway) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .output_interface(index)
                .gateway(gateway)
                .build(),
            IpAddr::V6(gateway) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .output_interface(index)
                .gateway(gateway)
                .build(),
        };
        let request = self.handle.route().add(message).replace().execute();
        deadline(|| format!("default route via {gateway}"), request)
            .await?
            .map_err(netlink_err(format!("default route via {gateway}")))
    }
}

/// An attribute of a link message.
pub fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}

/// The link's alias, if set.
pub fn link_alias(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::IfAlias(alias) => Some(alias.as_str()),
        _ => None,
    })
}

/// The index of a veth's peer (`IFLA_LINK`), in the peer's namespace.
pub fn link_peer(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::Link(index) => Some(*index),
        _ => None,
    })
}

/// The bridge (or other controller) a link is enslaved to.
pub fn link_controller(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::Controller(index) => Some(*index),
        _ => None,
    })
}
