//! Anti-spoofing and NAT with nftables.
//!
//! The agent owns two tables named `paddock_<bridge>`: one in the `bridge`
//! family, whose prerouting chain sends every frame entering the bridge from a
//! VPS port through that port's chain, and one in the `ip` family for
//! masquerading private pools. Both are regenerated from the list of ports and
//! loaded with one `nft -f` run, which the kernel applies as a single
//! transaction: there is never a moment with a half-written ruleset. A port is
//! only attached to the bridge after its rules are loaded.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

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
}

/// Name of both tables of the agent that owns `bridge`.
pub fn table_name(bridge: &str) -> String {
    format!("paddock_{bridge}")
}

fn set(items: &[String]) -> String {
    format!("{{ {} }}", items.join(", "))
}

/// The complete nft script for `bridge`: replaces both tables atomically.
pub fn ruleset(
    bridge: &str,
    ports: &[PortRules],
    nat_networks: &[IfAddr],
    uplink: Option<&str>,
) -> String {
    let table = table_name(bridge);
    let mut out = String::new();
    // Declaring before deleting makes the delete valid whether or not the table exists.
    let _ = writeln!(out, "table bridge {table} {{}}");
    let _ = writeln!(out, "delete table bridge {table}");
    if !ports.is_empty() {
        bridge_table(&mut out, &table, ports);
    }
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

/// The bridge-family table: one chain per port, reached by input interface.
fn bridge_table(out: &mut String, table: &str, ports: &[PortRules]) {
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
        neighbor_discovery(out, port);
        let _ = writeln!(out, "\t}}");
    }
    let _ = writeln!(out, "}}");
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

/// The script that removes both tables of `bridge` (nothing left behind).
pub fn teardown(bridge: &str) -> String {
    let table = table_name(bridge);
    format!(
        "table bridge {table} {{}}\ndelete table bridge {table}\ntable ip {table} {{}}\ndelete table ip {table}\n"
    )
}

/// Loads an nft script in one transaction.
pub fn apply(script: &str) -> Result<(), NetworkError> {
    let command = |source| NetworkError::Spawn {
        program: "nft",
        source,
    };
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(command)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(command)?;
    }
    let output = child.wait_with_output().map_err(command)?;
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
        }
    }

    #[test]
    fn ruleset_drops_foreign_sources_per_port() {
        let text = ruleset(
            "pdk0",
            &[port()],
            &["10.77.0.0/24".parse().expect("net")],
            None,
        );
        let expected = "\
table bridge paddock_pdk0 {}
delete table bridge paddock_pdk0
table bridge paddock_pdk0 {
\tchain prerouting {
\t\ttype filter hook prerouting priority -300; policy accept;
\t\tiifname \"pv0123456789ab\" jump port_pv0123456789ab
\t}
\tchain port_pv0123456789ab {
\t\tether saddr != 02:11:22:33:44:55 counter drop
\t\tether type != { ip, ip6, arp } counter drop
\t\tether type arp arp saddr ether != 02:11:22:33:44:55 counter drop
\t\tether type arp arp saddr ip != { 10.77.0.10 } counter drop
\t\tether type ip ip saddr != { 10.77.0.10 } counter drop
\t\tether type ip6 icmpv6 type { nd-router-advert, nd-redirect } counter drop
\t\tether type ip6 ip6 saddr != { fe80::11:22ff:fe33:4455, :: } counter drop
\t\tether type ip6 ip6 nexthdr != ipv6-icmp icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } counter drop
\t\tether type ip6 icmpv6 type nd-neighbor-advert @th,64,128 != { 0xfe80000000000000001122fffe334455 } counter drop
\t\tether type ip6 ip6 saddr :: icmpv6 type nd-neighbor-solicit @th,64,128 != { 0xfe80000000000000001122fffe334455 } counter drop
\t\tether type ip6 icmpv6 type nd-router-solicit ip6 length > 16 counter drop
\t\tether type ip6 icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 length > 32 counter drop
\t\tether type ip6 icmpv6 type nd-router-solicit @th,64,8 1 @th,80,48 != 0x021122334455 counter drop
\t\tether type ip6 icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } @th,192,8 { 1, 2 } @th,208,48 != 0x021122334455 counter drop
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
            &["10.1.0.0/24".parse().expect("net")],
            Some("eth9"),
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
        let text = ruleset("pdk0", &[port], &[], None);
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
    fn without_ports_or_nat_the_tables_are_empty() {
        assert_eq!(ruleset("pdk0", &[], &[], None), teardown("pdk0"));
    }
}
