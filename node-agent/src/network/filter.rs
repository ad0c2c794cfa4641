//! Anti-spoofing, tenant isolation, the node's own input filter and NAT with
//! nftables.
//!
//! The agent owns three tables named `paddock_<bridge>`:
//! - `bridge`: its prerouting chain sends every frame entering the bridge from
//!   a VPS port through that port's chain (anti-spoofing, no rogue DHCP
//!   servers, source `::` only for duplicate address detection and MLD), and
//!   its forward chain drops frames between the ports of different tenants;
//! - `inet`: its input chain filters what VPSes send to the node itself
//!   (arriving on the bridge interface): replies, ping, the ICMPv6 IPv6 needs
//!   and the configured open ports pass, the rest is dropped;
//! - `ip`: masquerading private pools.
//!
//! All are regenerated from the list of ports and loaded with one `nft -f`
//! run, which the kernel applies as a single transaction: there is never a
//! moment with a half-written ruleset. A port is only attached to the bridge
//! after its rules are loaded.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::process::Command;

use paddock_config::{HostPort, Isolation, Transport};

use super::{IfAddr, MacAddr, NetworkError};

/// What the filter needs to know about one port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRules {
    /// The host end of the veth pair.
    pub host_ifname: String,
    /// The only source MAC the VPS may use.
    pub mac: MacAddr,
    /// The only source addresses the VPS may use (plus, for IPv6, the
    /// link-local address derived from `mac` and `::` for duplicate address detection).
    pub addresses: Vec<IpAddr>,
    /// The isolation group (the VPS's tenant): with [`Isolation::Tenant`],
    /// ports of different groups exchange no frames.
    pub group: String,
    /// Addresses of the port in a private (NAT) pool: with
    /// [`Isolation::Tenant`], other groups do not reach them, nor they other
    /// groups, through the node either. The rest of `addresses` is public:
    /// other groups' public addresses reach them routed by the node.
    pub private: Vec<IpAddr>,
}

/// What the node's ruleset enforces beyond the ports' own rules.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// Private pools masqueraded when leaving the node.
    pub nat_networks: &'a [IfAddr],
    /// Interface NAT leaves through; `None` = any but the bridge.
    pub uplink: Option<&'a str>,
    /// Ports of the node VPSes may open.
    pub host_ports: &'a [HostPort],
    /// Which ports may exchange frames.
    pub isolation: Isolation,
}

/// Name of both tables of the agent that owns `bridge`.
pub fn table_name(bridge: &str) -> String {
    format!("paddock_{bridge}")
}

fn set(items: &[String]) -> String {
    format!("{{ {} }}", items.join(", "))
}

/// The complete nft script for `bridge`: replaces all three tables atomically.
pub fn ruleset(bridge: &str, ports: &[PortRules], policy: &Policy<'_>) -> String {
    let table = table_name(bridge);
    let mut out = String::new();
    // Declaring before deleting makes the delete valid whether or not the table exists.
    let _ = writeln!(out, "table bridge {table} {{}}");
    let _ = writeln!(out, "delete table bridge {table}");
    if !ports.is_empty() {
        bridge_table(&mut out, &table, ports, policy.isolation);
    }
    let _ = writeln!(out, "table inet {table} {{}}");
    let _ = writeln!(out, "delete table inet {table}");
    if !ports.is_empty() {
        inet_table(&mut out, &table, bridge, ports, policy);
    }
    let (nat_networks, uplink) = (policy.nat_networks, policy.uplink);
    let _ = writeln!(out, "table ip {table} {{}}");
    let _ = writeln!(out, "delete table ip {table}");
    if !nat_networks.is_empty() {
        let _ = writeln!(out, "table ip {table} {{");
        let _ = writeln!(out, "\tchain postrouting {{");
        let _ = writeln!(
            out,
            "\t\ttype nat hook postrouting priority srcnat; policy accept;"
        );
        for network in nat_networks {
            let out_if = match uplink {
                Some(uplink) => format!("oifname \"{uplink}\""),
                None => format!("oifname != \"{bridge}\""),
            };
            let _ = writeln!(
                out,
                "\t\tip saddr {network} ip daddr != {network} {out_if} masquerade"
            );
        }
        let _ = writeln!(out, "\t}}");
        let _ = writeln!(out, "}}");
    }
    out
}

/// The node's own input filter: what VPSes (packets arriving on the bridge
/// interface) may send to the node's addresses. Routed and NATed traffic
/// never reaches the input hook, so it is not affected.
///
/// Allowed: replies to connections the node opened (and ICMP errors about
/// them), ping (a VPS's first diagnostic of its gateway), the ICMPv6 that
/// IPv6 needs on a link (neighbour and router solicitations, neighbour
/// advertisements, MLD reports), and `host_ports`. The rest is dropped.
fn inet_table(
    out: &mut String,
    table: &str,
    bridge: &str,
    ports: &[PortRules],
    policy: &Policy<'_>,
) {
    let host_ports = policy.host_ports;
    let _ = writeln!(out, "table inet {table} {{");
    let _ = writeln!(out, "\tchain input {{");
    let _ = writeln!(
        out,
        "\t\ttype filter hook input priority filter; policy accept;"
    );
    let _ = writeln!(out, "\t\tiifname \"{bridge}\" jump from_vps");
    let _ = writeln!(out, "\t}}");
    let _ = writeln!(out, "\tchain from_vps {{");
    let _ = writeln!(out, "\t\tct state established,related accept");
    let _ = writeln!(out, "\t\ticmp type echo-request accept");
    let _ = writeln!(
        out,
        "\t\ticmpv6 type {{ echo-request, nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert, \
         mld-listener-report, mld-listener-done, mld2-listener-report }} accept"
    );
    for protocol in [Transport::Tcp, Transport::Udp] {
        let ranges: Vec<String> = host_ports
            .iter()
            .filter(|port| port.protocol == protocol)
            .map(HostPort::ports)
            .collect();
        if !ranges.is_empty() {
            let _ = writeln!(out, "\t\t{} dport {} accept", protocol.name(), set(&ranges));
        }
    }
    let _ = writeln!(out, "\t\tcounter drop");
    let _ = writeln!(out, "\t}}");
    if policy.isolation == Isolation::Tenant {
        hairpin(out, bridge, ports);
    }
    let _ = writeln!(out, "}}");
}

/// With tenant isolation, what the node routes from the bridge back onto the
/// bridge (a VPS reaching another tenant's VPS of the same node, which it
/// cannot reach at L2): public addresses reach public addresses, like any two
/// internet hosts; a tenant's addresses reach each other; a private (NAT)
/// address reaches or is reached by no other tenant's address. Traffic
/// between VPS addresses and anything else on the bridge is left alone.
///
/// The node never tells a VPS to go direct (ICMP redirects), since the direct
/// path is closed at L2: `send_redirects=0` on the bridge is not enough while
/// `all.send_redirects` is on, so they are dropped here.
fn hairpin(out: &mut String, bridge: &str, ports: &[PortRules]) {
    type Families = (BTreeSet<String>, BTreeSet<String>);
    fn add(families: &mut Families, address: &IpAddr) {
        match address {
            IpAddr::V4(_) => families.0.insert(address.to_string()),
            IpAddr::V6(_) => families.1.insert(address.to_string()),
        };
    }
    let mut groups: BTreeMap<&str, Families> = BTreeMap::new();
    let (mut public, mut private) = (Families::default(), Families::default());
    for port in ports {
        let group = groups.entry(port.group.as_str()).or_default();
        for address in &port.addresses {
            add(group, address);
            if port.private.contains(address) {
                add(&mut private, address);
            } else {
                add(&mut public, address);
            }
        }
    }
    let list = |items: &BTreeSet<String>| set(&items.iter().cloned().collect::<Vec<_>>());
    let _ = writeln!(out, "\tchain output {{");
    let _ = writeln!(
        out,
        "\t\ttype filter hook output priority filter; policy accept;"
    );
    let _ = writeln!(
        out,
        "\t\toifname \"{bridge}\" icmp type redirect counter drop"
    );
    let _ = writeln!(
        out,
        "\t\toifname \"{bridge}\" icmpv6 type nd-redirect counter drop"
    );
    let _ = writeln!(out, "\t}}");
    let _ = writeln!(out, "\tchain forward {{");
    let _ = writeln!(
        out,
        "\t\ttype filter hook forward priority filter; policy accept;"
    );
    let _ = writeln!(
        out,
        "\t\tiifname \"{bridge}\" oifname \"{bridge}\" jump hairpin"
    );
    let _ = writeln!(out, "\t}}");
    let _ = writeln!(out, "\tchain hairpin {{");
    let mut accepts: Vec<String> = Vec::new();
    for (v4, v6) in groups.values().chain([&public]) {
        for (family, addresses) in [("ip", v4), ("ip6", v6)] {
            let line = format!(
                "\t\t{family} saddr {0} {family} daddr {0} accept",
                list(addresses)
            );
            if !addresses.is_empty() && !accepts.contains(&line) {
                accepts.push(line);
            }
        }
    }
    for line in accepts {
        let _ = writeln!(out, "{line}");
    }
    // Only between VPS addresses: what else is on the bridge (an interface an
    // admin bridged in, seen here with br_netfilter) is not this chain's business.
    for (family, private, all) in [
        (
            "ip",
            &private.0,
            public.0.union(&private.0).cloned().collect(),
        ),
        (
            "ip6",
            &private.1,
            public.1.union(&private.1).cloned().collect(),
        ),
    ] {
        if !private.is_empty() {
            let (private, all) = (list(private), list(&all));
            let _ = writeln!(
                out,
                "\t\t{family} saddr {private} {family} daddr {all} counter drop"
            );
            let _ = writeln!(
                out,
                "\t\t{family} saddr {all} {family} daddr {private} counter drop"
            );
        }
    }
    let _ = writeln!(out, "\t}}");
}

/// The bridge-family table: one chain per port, reached by input interface,
/// and with tenant isolation one chain per isolation group, reached by input
/// interface from the forward hook (frames between two ports; what goes to or
/// comes from the node itself takes the input and output hooks).
fn bridge_table(out: &mut String, table: &str, ports: &[PortRules], isolation: Isolation) {
    let _ = writeln!(out, "table bridge {table} {{");
    let _ = writeln!(out, "\tchain prerouting {{");
    let _ = writeln!(
        out,
        "\t\ttype filter hook prerouting priority -300; policy accept;"
    );
    for port in ports {
        let _ = writeln!(
            out,
            "\t\tiifname \"{}\" jump port_{}",
            port.host_ifname, port.host_ifname
        );
    }
    let _ = writeln!(out, "\t}}");
    let mut groups: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for port in ports {
        groups
            .entry(port.group.as_str())
            .or_default()
            .push(format!("\"{}\"", port.host_ifname));
    }
    if isolation == Isolation::Tenant && groups.len() > 1 {
        let _ = writeln!(out, "\tchain forward {{");
        let _ = writeln!(
            out,
            "\t\ttype filter hook forward priority 0; policy accept;"
        );
        for (index, members) in groups.values().enumerate() {
            let _ = writeln!(out, "\t\tiifname {} jump group_{index}", set(members));
        }
        let _ = writeln!(out, "\t}}");
        for (index, group) in groups.keys().enumerate() {
            let others: Vec<String> = groups
                .iter()
                .filter(|(other, _)| *other != group)
                .flat_map(|(_, members)| members.iter().cloned())
                .collect();
            let _ = writeln!(out, "\tchain group_{index} {{");
            let _ = writeln!(out, "\t\toifname {} counter drop", set(&others));
            let _ = writeln!(out, "\t}}");
        }
    }
    if isolation == Isolation::Tenant {
        proxy_arp_output(out, ports);
    }
    for port in ports {
        let mac = port.mac;
        let v4: Vec<String> = port
            .addresses
            .iter()
            .filter(|a| a.is_ipv4())
            .map(ToString::to_string)
            .collect();
        let mut v6: Vec<String> = vec![mac.ipv6_link_local().to_string(), "::".to_owned()];
        v6.extend(
            port.addresses
                .iter()
                .filter(|a| a.is_ipv6())
                .map(ToString::to_string),
        );
        let _ = writeln!(out, "\tchain port_{} {{", port.host_ifname);
        let _ = writeln!(out, "\t\tether saddr != {mac} counter drop");
        let _ = writeln!(out, "\t\tether type != {{ ip, ip6, arp }} counter drop");
        let _ = writeln!(
            out,
            "\t\tether type arp arp saddr ether != {mac} counter drop"
        );
        if v4.is_empty() {
            let _ = writeln!(out, "\t\tether type {{ ip, arp }} counter drop");
        } else {
            let _ = writeln!(
                out,
                "\t\tether type arp arp saddr ip != {} counter drop",
                set(&v4)
            );
            let _ = writeln!(
                out,
                "\t\tether type ip ip saddr != {} counter drop",
                set(&v4)
            );
        }
        // Only routers advertise or redirect.
        let _ = writeln!(
            out,
            "\t\tether type ip6 icmpv6 type {{ nd-router-advert, nd-redirect }} counter drop"
        );
        let _ = writeln!(
            out,
            "\t\tether type ip6 ip6 saddr != {} counter drop",
            set(&v6)
        );
        // The unspecified source only where a host has no address yet:
        // duplicate address probes (to a solicited-node group) and MLD reports.
        let _ = writeln!(
            out,
            "\t\tether type ip6 ip6 saddr :: meta l4proto != ipv6-icmp counter drop"
        );
        let _ = writeln!(
            out,
            "\t\tether type ip6 ip6 saddr :: icmpv6 type != \
             {{ nd-neighbor-solicit, mld-listener-report, mld2-listener-report }} counter drop"
        );
        let _ = writeln!(
            out,
            "\t\tether type ip6 ip6 saddr :: icmpv6 type nd-neighbor-solicit \
             ip6 daddr != ff02::1:ff00:0/104 counter drop"
        );
        // A VPS is a DHCP client at most, never a server for its neighbours.
        let _ = writeln!(
            out,
            "\t\tether type ip udp sport 67 udp dport 68 counter drop"
        );
        let _ = writeln!(
            out,
            "\t\tether type ip6 udp sport 547 udp dport 546 counter drop"
        );
        neighbor_discovery(out, port);
        let _ = writeln!(out, "\t}}");
    }
    let _ = writeln!(out, "}}");
}

/// With tenant isolation the node answers ARP on the bridge for the other
/// addresses of its subnets (`proxy_arp_pvlan`), so a VPS reaches other
/// tenants' VPSes through it. A VPS's own tenant answers for itself on the
/// shared segment; the node's answer would race it, so the node never claims
/// a tenant's address to that tenant's ports: same-tenant traffic stays direct.
fn proxy_arp_output(out: &mut String, ports: &[PortRules]) {
    let mut groups: BTreeMap<&str, (Vec<String>, BTreeSet<String>)> = BTreeMap::new();
    for port in ports {
        let (members, v4) = groups.entry(port.group.as_str()).or_default();
        members.push(format!("\"{}\"", port.host_ifname));
        v4.extend(
            port.addresses
                .iter()
                .filter(|a| a.is_ipv4())
                .map(ToString::to_string),
        );
    }
    let _ = writeln!(out, "\tchain output {{");
    let _ = writeln!(
        out,
        "\t\ttype filter hook output priority 0; policy accept;"
    );
    for (members, v4) in groups.values() {
        if !v4.is_empty() {
            let v4: Vec<String> = v4.iter().cloned().collect();
            let _ = writeln!(
                out,
                "\t\toifname {} arp operation reply arp saddr ip {} counter drop",
                set(members),
                set(&v4)
            );
        }
    }
    let _ = writeln!(out, "\t}}");
}

/// Neighbor Discovery from a port speaks only for the port, so a VPS cannot
/// poison the neighbour caches of the host and the other VPSes: an
/// advertisement, or a duplicate address probe (source `::`), only for the
/// port's own addresses, and link-layer address options only with its MAC.
/// Solicitations for other targets from a real source are how neighbours are
/// resolved and pass.
///
/// nft 1.0.6 has no keywords for ND targets and options, so they are matched
/// as raw payload at fixed offsets from the ICMPv6 header (`@th`). That is only
/// sound for ND shaped the way a host's kernel sends it, so every other shape
/// is dropped: ND behind extension headers (they could also push the target
/// into a second fragment, RFC 6980), and more than one option (an option
/// further on could carry another MAC). A message too short to hold its target
/// is not matched here; every receiver (each runs the host's kernel) drops it.
fn neighbor_discovery(out: &mut String, port: &PortRules) {
    const SOLICIT_ADVERT: &str = "{ nd-neighbor-solicit, nd-neighbor-advert }";
    let mac = mac_hex(port.mac);
    let targets: Vec<String> = std::iter::once(port.mac.ipv6_link_local())
        .chain(port.addresses.iter().filter_map(|a| match a {
            IpAddr::V6(v6) => Some(*v6),
            IpAddr::V4(_) => None,
        }))
        .map(|v6| format!("0x{:032x}", u128::from(v6)))
        .collect();
    let targets = set(&targets);
    let _ = writeln!(
        out,
        "\t\tether type ip6 ip6 nexthdr != ipv6-icmp icmpv6 type \
         {{ nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert }} counter drop"
    );
    // A probe for another's address would fail that VPS's (or the gateway's) DAD.
    let _ = writeln!(
        out,
        "\t\tether type ip6 icmpv6 type nd-neighbor-advert @th,64,128 != {targets} counter drop"
    );
    let _ = writeln!(
        out,
        "\t\tether type ip6 ip6 saddr :: icmpv6 type nd-neighbor-solicit @th,64,128 != {targets} counter drop"
    );
    // RS options start at byte 8, NS and NA options at byte 24.
    let _ = writeln!(
        out,
        "\t\tether type ip6 icmpv6 type nd-router-solicit ip6 length > 16 counter drop"
    );
    let _ = writeln!(
        out,
        "\t\tether type ip6 icmpv6 type {SOLICIT_ADVERT} ip6 length > 32 counter drop"
    );
    let _ = writeln!(
        out,
        "\t\tether type ip6 icmpv6 type nd-router-solicit @th,64,8 1 @th,80,48 != {mac} counter drop"
    );
    let _ = writeln!(
        out,
        "\t\tether type ip6 icmpv6 type {SOLICIT_ADVERT} @th,192,8 {{ 1, 2 }} @th,208,48 != {mac} counter drop"
    );
}

/// A MAC as the 48-bit integer raw payload matches compare with.
fn mac_hex(mac: MacAddr) -> String {
    let m = mac.0;
    format!(
        "0x{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// The script that removes all tables of `bridge` (nothing left behind).
pub fn teardown(bridge: &str) -> String {
    let table = table_name(bridge);
    ["bridge", "inet", "ip"]
        .iter()
        .map(|family| format!("table {family} {table} {{}}\ndelete table {family} {table}\n"))
        .collect()
}

/// Loads an nft script in one transaction.
pub fn apply(script: &str) -> Result<(), NetworkError> {
    let command = |source| NetworkError::Spawn {
        program: "nft",
        source,
    };
    let output = crate::bounded::output(
        "nft",
        Command::new("nft").args(["-f", "-"]),
        Some(script.as_bytes()),
        crate::bounded::TOOL_DEADLINE,
    )
    .map_err(command)?;
    if !output.status.success() {
        return Err(NetworkError::Command {
            command: "nft -f -".to_owned(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port() -> PortRules {
        PortRules {
            host_ifname: "pv0123456789ab".into(),
            mac: "02:11:22:33:44:55".parse().expect("mac"),
            addresses: vec!["10.77.0.10".parse().expect("ip")],
            group: "acme".into(),
            private: vec![],
        }
    }

    fn policy<'a>(nat_networks: &'a [IfAddr], uplink: Option<&'a str>) -> Policy<'a> {
        Policy {
            nat_networks,
            uplink,
            host_ports: &[],
            isolation: Isolation::Tenant,
        }
    }

    #[test]
    fn ruleset_drops_foreign_sources_per_port() {
        let text = ruleset(
            "pdk0",
            &[port()],
            &policy(&["10.77.0.0/24".parse().expect("net")], None),
        );
        let expected = "\
table bridge paddock_pdk0 {}
delete table bridge paddock_pdk0
table bridge paddock_pdk0 {
\tchain prerouting {
\t\ttype filter hook prerouting priority -300; policy accept;
\t\tiifname \"pv0123456789ab\" jump port_pv0123456789ab
\t}
\tchain output {
\t\ttype filter hook output priority 0; policy accept;
\t\toifname { \"pv0123456789ab\" } arp operation reply arp saddr ip { 10.77.0.10 } counter drop
\t}
\tchain port_pv0123456789ab {
\t\tether saddr != 02:11:22:33:44:55 counter drop
\t\tether type != { ip, ip6, arp } counter drop
\t\tether type arp arp saddr ether != 02:11:22:33:44:55 counter drop
\t\tether type arp arp saddr ip != { 10.77.0.10 } counter drop
\t\tether type ip ip saddr != { 10.77.0.10 } counter drop
\t\tether type ip6 icmpv6 type { nd-router-advert, nd-redirect } counter drop
\t\tether type ip6 ip6 saddr != { fe80::11:22ff:fe33:4455, :: } counter drop
\t\tether type ip6 ip6 saddr :: meta l4proto != ipv6-icmp counter drop
\t\tether type ip6 ip6 saddr :: icmpv6 type != { nd-neighbor-solicit, mld-listener-report, mld2-listener-report } counter drop
\t\tether type ip6 ip6 saddr :: icmpv6 type nd-neighbor-solicit ip6 daddr != ff02::1:ff00:0/104 counter drop
\t\tether type ip udp sport 67 udp dport 68 counter drop
\t\tether type ip6 udp sport 547 udp dport 546 counter drop
\t\tether type ip6 ip6 nexthdr != ipv6-icmp icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } counter drop
\t\tether type ip6 icmpv6 type nd-neighbor-advert @th,64,128 != { 0xfe80000000000000001122fffe334455 } counter drop
\t\tether type ip6 ip6 saddr :: icmpv6 type nd-neighbor-solicit @th,64,128 != { 0xfe80000000000000001122fffe334455 } counter drop
\t\tether type ip6 icmpv6 type nd-router-solicit ip6 length > 16 counter drop
\t\tether type ip6 icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 length > 32 counter drop
\t\tether type ip6 icmpv6 type nd-router-solicit @th,64,8 1 @th,80,48 != 0x021122334455 counter drop
\t\tether type ip6 icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } @th,192,8 { 1, 2 } @th,208,48 != 0x021122334455 counter drop
\t}
}
table inet paddock_pdk0 {}
delete table inet paddock_pdk0
table inet paddock_pdk0 {
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\tiifname \"pdk0\" jump from_vps
\t}
\tchain from_vps {
\t\tct state established,related accept
\t\ticmp type echo-request accept
\t\ticmpv6 type { echo-request, nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert, mld-listener-report, mld-listener-done, mld2-listener-report } accept
\t\tcounter drop
\t}
\tchain output {
\t\ttype filter hook output priority filter; policy accept;
\t\toifname \"pdk0\" icmp type redirect counter drop
\t\toifname \"pdk0\" icmpv6 type nd-redirect counter drop
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tiifname \"pdk0\" oifname \"pdk0\" jump hairpin
\t}
\tchain hairpin {
\t\tip saddr { 10.77.0.10 } ip daddr { 10.77.0.10 } accept
\t}
}
table ip paddock_pdk0 {}
delete table ip paddock_pdk0
table ip paddock_pdk0 {
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr 10.77.0.0/24 ip daddr != 10.77.0.0/24 oifname != \"pdk0\" masquerade
\t}
}
";
        assert_eq!(text, expected);
    }

    #[test]
    fn no_ipv4_means_no_ipv4_or_arp_and_uplink_is_used() {
        let mut port = port();
        port.addresses = vec!["fd00::10".parse().expect("ip")];
        let text = ruleset(
            "pdk1",
            &[port],
            &policy(&["10.1.0.0/24".parse().expect("net")], Some("eth9")),
        );
        assert!(
            text.contains("ether type { ip, arp } counter drop"),
            "{text}"
        );
        assert!(
            text.contains("ip6 saddr != { fe80::11:22ff:fe33:4455, ::, fd00::10 }"),
            "{text}"
        );
        assert!(text.contains("oifname \"eth9\" masquerade"), "{text}");
    }

    #[test]
    fn neighbor_discovery_targets_are_the_ports_own_addresses() {
        let mut port = port();
        port.addresses.push("fd00::10".parse().expect("ip"));
        let text = ruleset("pdk0", &[port], &policy(&[], None));
        let own = "{ 0xfe80000000000000001122fffe334455, 0xfd000000000000000000000000000010 }";
        assert!(
            text.contains(&format!(
                "icmpv6 type nd-neighbor-advert @th,64,128 != {own} counter drop"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "ip6 saddr :: icmpv6 type nd-neighbor-solicit @th,64,128 != {own} counter drop"
            )),
            "{text}"
        );
        assert_eq!(
            mac_hex("02:0a:bb:0c:dd:ff".parse().expect("mac")),
            "0x020abb0cddff"
        );
    }

    #[test]
    fn tenants_are_isolated_and_open_host_ports_listed() {
        let named = |name: &str, group: &str| PortRules {
            host_ifname: name.into(),
            group: group.into(),
            ..port()
        };
        let at = |name: &str, group: &str, address: &str, private: bool| {
            let address: IpAddr = address.parse().expect("ip");
            PortRules {
                addresses: vec![address],
                private: if private { vec![address] } else { vec![] },
                ..named(name, group)
            }
        };
        let ports = [
            named("pva", "acme"),
            named("pvb", "acme"),
            named("pvc", "zeta"),
        ];
        let routed = [
            at("pva", "acme", "10.0.0.10", false),
            at("pvb", "acme", "10.0.1.11", true),
            at("pvc", "zeta", "10.0.0.12", false),
            at("pvd", "zeta", "10.0.1.13", true),
        ];
        let hairpin = "\tchain hairpin {
\t\tip saddr { 10.0.0.10, 10.0.1.11 } ip daddr { 10.0.0.10, 10.0.1.11 } accept
\t\tip saddr { 10.0.0.12, 10.0.1.13 } ip daddr { 10.0.0.12, 10.0.1.13 } accept
\t\tip saddr { 10.0.0.10, 10.0.0.12 } ip daddr { 10.0.0.10, 10.0.0.12 } accept
\t\tip saddr { 10.0.1.11, 10.0.1.13 } ip daddr { 10.0.0.10, 10.0.0.12, 10.0.1.11, 10.0.1.13 } counter drop
\t\tip saddr { 10.0.0.10, 10.0.0.12, 10.0.1.11, 10.0.1.13 } ip daddr { 10.0.1.11, 10.0.1.13 } counter drop
\t}
";
        let text = ruleset("pdk0", &routed, &policy(&[], None));
        assert!(text.contains(hairpin), "{text}");
        assert!(text.contains("\t\toifname { \"pva\", \"pvb\" } arp operation reply arp saddr ip { 10.0.0.10, 10.0.1.11 } counter drop\n"), "{text}");
        let host_ports: Vec<HostPort> = ["udp/53", "tcp/53", "tcp/8000-8010"]
            .iter()
            .map(|text| text.parse().expect("host port"))
            .collect();
        let text = ruleset(
            "pdk0",
            &ports,
            &Policy {
                host_ports: &host_ports,
                ..policy(&[], None)
            },
        );
        let forward = "\tchain forward {
\t\ttype filter hook forward priority 0; policy accept;
\t\tiifname { \"pva\", \"pvb\" } jump group_0
\t\tiifname { \"pvc\" } jump group_1
\t}
\tchain group_0 {
\t\toifname { \"pvc\" } counter drop
\t}
\tchain group_1 {
\t\toifname { \"pva\", \"pvb\" } counter drop
\t}
";
        assert!(text.contains(forward), "{text}");
        assert!(text.contains("\t\ttcp dport { 53, 8000-8010 } accept\n\t\tudp dport { 53 } accept\n\t\tcounter drop\n"), "{text}");
        // One tenant, or no isolation: no forward chain at all.
        let same = [named("pva", "acme"), named("pvb", "acme")];
        assert!(!ruleset("pdk0", &same, &policy(&[], None)).contains("forward priority 0"));
        let flat = Policy {
            isolation: Isolation::None,
            ..policy(&[], None)
        };
        assert!(!ruleset("pdk0", &ports, &flat).contains("forward"));
    }

    #[test]
    fn without_ports_or_nat_the_tables_are_empty() {
        assert_eq!(ruleset("pdk0", &[], &policy(&[], None)), teardown("pdk0"));
    }
}
