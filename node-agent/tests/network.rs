//! The agent's network module on the real kernel, as root: ports in real
//! network namespaces on a bridge of the test's own, rate limits measured with
//! real TCP transfers and changed live, and reconciliation after a crash.
//!
//! The controller's `ResizeVps` is not implemented yet, so the live resize is
//! driven here through the agent-level API (`Network::ensure_port` with new
//! rates on the same running namespace), which is what `ApplyVps` calls.

mod common;
mod net_support;

use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::require_root;
use net_support::packet::{
    advert, icmpv6, ipv6_frame, mld2_report, multicast_mac, option, router_solicit, send_frames,
    solicit, solicited_node, udp4_frame, udp6, Addresses, Capture, DESTINATION_OPTIONS,
    ECHO_REQUEST, FRAGMENT, HOP_BY_HOP, ICMPV6, NEIGHBOR_ADVERT, NEIGHBOR_SOLICIT, NONCE,
    ROUTER_SOLICIT, SOURCE_LLA, TARGET_LLA, UDP,
};
use net_support::{blast, dual_stack, measure, network, network_with, port, unique_names, Netns};
use paddock_agent::network::{host_ifname, ifb_ifname, Network};

fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

fn qdiscs(dev: &str) -> String {
    let out = Command::new("tc")
        .args(["qdisc", "show", "dev", dev])
        .output()
        .expect("tc");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn nft_table(family: &str, bridge: &str) -> String {
    let out = Command::new("nft")
        .args(["list", "table", family, &format!("paddock_{bridge}")])
        .output()
        .expect("nft");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn bridge_addresses(bridge: &str) -> String {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show", "dev", bridge])
        .output()
        .expect("ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Egress (VPS -> host) throughput in bits/s, over a 3 s window after 1 s of
/// ramp-up, to a listener on `gateway:port` (a port open to VPSes).
fn egress_rate(vps: &Netns, gateway: &str, port: u16) -> f64 {
    let listener = TcpListener::bind((gateway, port)).expect("listen on the gateway");
    let bytes_per_sec = measure(
        listener,
        |address| vps.run(move || blast(address, Duration::from_secs(6))),
        Duration::from_secs(1),
        Duration::from_secs(3),
    );
    bytes_per_sec * 8.0
}

/// Ingress (host -> VPS) throughput in bits/s.
fn ingress_rate(vps: &Netns, address: &str) -> f64 {
    let address = address.to_owned();
    let listener = vps
        .run(move || TcpListener::bind((address.as_str(), 0)).expect("listen in the VPS"))
        .join()
        .expect("bind thread");
    let bytes_per_sec = measure(
        listener,
        |address| std::thread::spawn(move || blast(address, Duration::from_secs(6))),
        Duration::from_secs(1),
        Duration::from_secs(3),
    );
    bytes_per_sec * 8.0
}

fn assert_near(measured: f64, limit: f64, what: &str) {
    let ratio = measured / limit;
    eprintln!(
        "{what}: {:.1} Mbit/s measured for a {:.0} Mbit/s limit ({:.0}%)",
        measured / 1e6,
        limit / 1e6,
        ratio * 100.0
    );
    assert!(
        (0.75..=1.25).contains(&ratio),
        "{what}: {:.1} Mbit/s is not within 25% of {:.0} Mbit/s",
        measured / 1e6,
        limit / 1e6
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_hold_and_change_live() {
    if !require_root() {
        return;
    }
    let (bridge, subnet) = unique_names('r');
    let state = tempfile::tempdir().expect("tempdir");
    // The VPS sends to a port of the node, which must be open to VPSes.
    let sink_port = TcpListener::bind(("127.0.0.1", 0))
        .and_then(|reserved| reserved.local_addr())
        .expect("a free port")
        .port();
    let mut config = net_support::config(&bridge, &state);
    config.host_ports_open_to_vps = vec![format!("tcp/{sink_port}").parse().expect("host port")];
    let (network, _guard) = network_with(config).await;
    let vps = Netns::new();
    let vps_id = format!("rate-{}", std::process::id());
    let gateway = format!("{subnet}.1");
    let address = format!("{subnet}.10");

    network
        .ensure_port(
            &port(&vps_id, &subnet, 10, 20_000_000, 30_000_000),
            vps.pid(),
        )
        .await
        .expect("port with 20 Mbit/s egress");
    let egress = tokio::task::block_in_place(|| egress_rate(&vps, &gateway, sink_port));
    assert_near(egress, 20e6, "egress at 20 Mbit/s");
    let ingress = tokio::task::block_in_place(|| ingress_rate(&vps, &address));
    assert_near(ingress, 30e6, "ingress at 30 Mbit/s");

    // Live resize: same namespace (same init), new rates.
    let host = host_ifname(&vps_id);
    let index_before =
        std::fs::read_to_string(format!("/sys/class/net/{host}/ifindex")).expect("ifindex");
    network
        .ensure_port(
            &port(&vps_id, &subnet, 10, 50_000_000, 30_000_000),
            vps.pid(),
        )
        .await
        .expect("resize to 50 Mbit/s");
    let index_after =
        std::fs::read_to_string(format!("/sys/class/net/{host}/ifindex")).expect("ifindex");
    assert_eq!(
        index_before, index_after,
        "the port is changed in place, not rebuilt"
    );
    let egress = tokio::task::block_in_place(|| egress_rate(&vps, &gateway, sink_port));
    assert_near(egress, 50e6, "egress after live resize to 50 Mbit/s");

    let counters = network.counters(&vps_id).expect("counters");
    assert!(counters.tx_bytes > 10_000_000, "{counters:?}");
    assert!(counters.rx_bytes > 10_000_000, "{counters:?}");
    assert!(counters.tx_packets > 0 && counters.rx_packets > 0);

    // Unlimited again: the ifb and the qdiscs go away.
    network
        .ensure_port(&port(&vps_id, &subnet, 10, 0, 0), vps.pid())
        .await
        .expect("unlimited");
    assert!(!link_exists(&ifb_ifname(&vps_id)));
    let shown = qdiscs(&host);
    assert!(
        !shown.contains("tbf") && !shown.contains("ingress"),
        "{shown}"
    );

    network.remove_port(&vps_id).await.expect("remove");
    assert!(!link_exists(&host));
    assert!(!bridge_addresses(&bridge).contains(&gateway));
    assert!(!nft_table("bridge", &bridge).contains("jump"));
    network.teardown().await.expect("teardown");
    assert!(!link_exists(&bridge));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_connect_and_a_restart_repairs_and_removes_leftovers() {
    if !require_root() {
        return;
    }
    let (bridge, subnet) = unique_names('p');
    let state = tempfile::tempdir().expect("tempdir");
    let (network, _guard) = network(&bridge, &state).await;
    let a = Netns::new();
    let b = Netns::new();
    let a_id = format!("a-{}", std::process::id());
    let b_id = format!("b-{}", std::process::id());
    // Dual stack: IPv6 addresses from fd00:<n>::/64 with ::1 on the bridge.
    let v6_prefix = format!("fd00:{:x}", std::process::id() & 0xffff);
    let a_spec = dual_stack(port(&a_id, &subnet, 10, 0, 0), &v6_prefix, 10);
    let b_spec = dual_stack(port(&b_id, &subnet, 11, 10_000_000, 0), &v6_prefix, 11);
    network.ensure_port(&a_spec, a.pid()).await.expect("a");
    network.ensure_port(&b_spec, b.pid()).await.expect("b");
    // Idempotent: a second apply changes nothing.
    network
        .ensure_port(&a_spec, a.pid())
        .await
        .expect("a again");
    assert!(a.command(&[
        "busybox",
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        &format!("{subnet}.11")
    ]));
    assert!(a.command(&[
        "busybox",
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        &format!("{subnet}.1")
    ]));
    let rules = nft_table("bridge", &bridge);
    assert!(
        rules.contains(&format!("port_{}", host_ifname(&a_id))),
        "{rules}"
    );
    assert!(bridge_addresses(&bridge).contains(&format!("{subnet}.1/24")));
    // IPv6 works once duplicate address detection is over (about a second).
    let v6_ok = (0..20).any(|_| {
        let ok = a.command(&[
            "busybox",
            "ping6",
            "-c",
            "1",
            "-W",
            "1",
            &format!("{v6_prefix}::b"),
        ]) && a.command(&[
            "busybox",
            "ping6",
            "-c",
            "1",
            "-W",
            "1",
            &format!("{v6_prefix}::1"),
        ]);
        if !ok {
            std::thread::sleep(Duration::from_millis(250));
        }
        ok
    });
    assert!(v6_ok, "a reaches b and the gateway over IPv6");

    // The agent "crashes" (the Network is dropped without cleanup), b's VPS
    // dies meanwhile, and someone removed a's rules behind our back.
    drop(network);
    drop(b);
    std::thread::sleep(Duration::from_millis(300));
    Command::new("nft")
        .args(["delete", "table", "bridge", &format!("paddock_{bridge}")])
        .status()
        .expect("nft");
    let restarted = Network::start(
        net_support::config(&bridge, &state),
        &[(a_id.clone(), a.pid())],
    )
    .await
    .expect("restart");
    let rules = nft_table("bridge", &bridge);
    assert!(
        rules.contains(&format!("port_{}", host_ifname(&a_id))),
        "a's rules are back: {rules}"
    );
    assert!(
        !rules.contains(&host_ifname(&b_id)),
        "b's rules are gone: {rules}"
    );
    assert!(!link_exists(&ifb_ifname(&b_id)), "b's ifb is gone");
    assert!(!link_exists(&host_ifname(&b_id)));
    assert!(a.command(&[
        "busybox",
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        &format!("{subnet}.1")
    ]));

    restarted.remove_port(&a_id).await.expect("remove a");
    assert!(!link_exists(&host_ifname(&a_id)));
    assert!(!nft_table("bridge", &bridge).contains("drop"));
    assert!(
        !bridge_addresses(&bridge).contains(&subnet),
        "gateway removed with the last port"
    );
    let v6_left = Command::new("ip")
        .args(["-o", "-6", "addr", "show", "dev", &bridge])
        .output()
        .expect("ip");
    assert!(
        !String::from_utf8_lossy(&v6_left.stdout).contains(&v6_prefix),
        "IPv6 gateway removed with the last port"
    );
    assert_eq!(
        std::fs::read_dir(state.path().join("network"))
            .expect("dir")
            .count(),
        0,
        "no persisted port left"
    );
    restarted.teardown().await.expect("teardown");
}

/// Whether `from` reaches each address by ping6 within about 5 s (duplicate
/// address detection takes about a second after a port comes up).
fn ping6_all(from: &Netns, to: &[Ipv6Addr]) -> bool {
    to.iter().all(|address| {
        (0..20).any(|_| {
            let ok = from.command(&[
                "busybox",
                "ping6",
                "-c",
                "1",
                "-W",
                "1",
                &address.to_string(),
            ]);
            if !ok {
                std::thread::sleep(Duration::from_millis(250));
            }
            ok
        })
    })
}

/// A VPS speaks Neighbor Discovery only for itself. Crafted frames from its
/// eth0: advertisements (or duplicate address probes) for another VPS's or the
/// gateway's address, link-layer address options with another MAC, and ND
/// behind extension headers never leave its port, so neither the host nor the
/// other VPS learns a poisoned neighbour; its own claims, resolving neighbours
/// and real IPv6 traffic still pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neighbor_discovery_speaks_only_for_the_port() {
    if !require_root() {
        return;
    }
    let (bridge, subnet) = unique_names('n');
    let state = tempfile::tempdir().expect("tempdir");
    let (network, _guard) = network(&bridge, &state).await;
    let attacker = Netns::new();
    let victim = Netns::new();
    let a_id = format!("nd-a-{}", std::process::id());
    let b_id = format!("nd-b-{}", std::process::id());
    // A /64 of this test's own, derived from its unique IPv4 subnet.
    let v6_prefix = format!("fd00:{}", subnet.replace('.', ":"));
    let a_spec = dual_stack(port(&a_id, &subnet, 10, 0, 0), &v6_prefix, 10);
    let b_spec = dual_stack(port(&b_id, &subnet, 11, 0, 0), &v6_prefix, 11);
    network
        .ensure_port(&a_spec, attacker.pid())
        .await
        .expect("a");
    network.ensure_port(&b_spec, victim.pid()).await.expect("b");
    let ip6 = |host: u16| -> Ipv6Addr { format!("{v6_prefix}::{host:x}").parse().expect("v6") };
    let (a6, b6, gw6) = (ip6(0xa), ip6(0xb), ip6(1));
    let (a_mac, b_mac) = (a_spec.mac.0, b_spec.mac.0);
    let (a_ll, b_ll) = (a_spec.mac.ipv6_link_local(), b_spec.mac.ipv6_link_local());
    // b and the host know each other: the neighbour entries a would poison.
    assert!(
        ping6_all(&victim, &[gw6, a6]),
        "b reaches the gateway and a over IPv6"
    );

    let all_nodes: Ipv6Addr = "ff02::1".parse().expect("ff02::1");
    let all_routers: Ipv6Addr = "ff02::2".parse().expect("ff02::2");
    let from = |src: Ipv6Addr, dst: Ipv6Addr| Addresses {
        src_mac: a_mac,
        dst_mac: multicast_mac(dst),
        src,
        dst,
    };
    let nd = |addresses: Addresses, icmp_type: u8, body: Vec<u8>| {
        let message = icmpv6(addresses.src, addresses.dst, icmp_type, &body);
        ipv6_frame(&addresses, ICMPV6, &message)
    };
    let na = |target: Ipv6Addr, options: &[[u8; 8]]| {
        nd(
            from(a_ll, all_nodes),
            NEIGHBOR_ADVERT,
            advert(target, options),
        )
    };
    let resolve = |target: Ipv6Addr, source_lla: [u8; 6]| {
        nd(
            from(a_ll, solicited_node(target)),
            NEIGHBOR_SOLICIT,
            solicit(target, &[option(SOURCE_LLA, source_lla)]),
        )
    };
    let probe = |target: Ipv6Addr| {
        nd(
            from(Ipv6Addr::UNSPECIFIED, solicited_node(target)),
            NEIGHBOR_SOLICIT,
            solicit(target, &[option(NONCE, [1, 2, 3, 4, 5, 6])]),
        )
    };
    let rs = |source_lla: [u8; 6]| {
        nd(
            from(a_ll, all_routers),
            ROUTER_SOLICIT,
            router_solicit(&[option(SOURCE_LLA, source_lla)]),
        )
    };
    let own_tlla = option(TARGET_LLA, a_mac);
    let b_tlla = option(TARGET_LLA, b_mac);
    let with_destination_options = {
        let message = icmpv6(a_ll, all_nodes, NEIGHBOR_ADVERT, &advert(a6, &[own_tlla]));
        let mut payload = vec![ICMPV6, 0, 1, 4, 0, 0, 0, 0];
        payload.extend_from_slice(&message);
        ipv6_frame(&from(a_ll, all_nodes), DESTINATION_OPTIONS, &payload)
    };
    // The target is in the second fragment, out of the filter's reach.
    let (first_fragment, second_fragment) = {
        let message = icmpv6(a_ll, all_nodes, NEIGHBOR_ADVERT, &advert(b6, &[own_tlla]));
        let fragment = |offset_flags: u16, part: &[u8]| {
            let mut payload = vec![ICMPV6, 0];
            payload.extend_from_slice(&offset_flags.to_be_bytes());
            payload.extend_from_slice(&0x5eed_u32.to_be_bytes());
            payload.extend_from_slice(part);
            ipv6_frame(&from(a_ll, all_nodes), FRAGMENT, &payload)
        };
        (fragment(0x0001, &message[..8]), fragment(8, &message[8..]))
    };
    let attempts: Vec<(&str, Vec<u8>, bool)> = vec![
        ("NA for its own address", na(a6, &[own_tlla]), true),
        (
            "NA for its own link-local address, no option",
            na(a_ll, &[]),
            true,
        ),
        ("NS resolving b", resolve(b6, a_mac), true),
        ("NS resolving the gateway", resolve(gw6, a_mac), true),
        (
            "duplicate address probe for its own address",
            probe(a6),
            true,
        ),
        ("RS", rs(a_mac), true),
        ("NA claiming b's address", na(b6, &[own_tlla]), false),
        (
            "NA claiming b's link-local address",
            na(b_ll, &[own_tlla]),
            false,
        ),
        (
            "NA claiming the gateway's address",
            na(gw6, &[own_tlla]),
            false,
        ),
        (
            "NA claiming the gateway's address, no option",
            na(gw6, &[]),
            false,
        ),
        (
            "NA for its own address with b's MAC",
            na(a6, &[b_tlla]),
            false,
        ),
        (
            "NA for its own address with b's MAC as a second option",
            na(a6, &[option(NONCE, [0; 6]), b_tlla]),
            false,
        ),
        ("NS with b's MAC as source", resolve(gw6, b_mac), false),
        ("duplicate address probe for b's address", probe(b6), false),
        ("RS with b's MAC as source", rs(b_mac), false),
        (
            "NA for its own address behind a destination options header",
            with_destination_options,
            false,
        ),
        (
            "first fragment of an NA claiming b's address",
            first_fragment,
            false,
        ),
    ];

    let b_port = host_ifname(&b_id);
    let on_bridge = Capture::start(&bridge);
    let on_b = Capture::start(&b_port);
    let mut frames: Vec<Vec<u8>> = attempts.iter().map(|(_, frame, _)| frame.clone()).collect();
    // Unclassifiable alone, and never reassembled without the first fragment.
    frames.push(second_fragment);
    send_frames(&attacker, "eth0", frames);
    std::thread::sleep(Duration::from_millis(300));
    let bridge_frames = on_bridge.finish();
    let b_frames = on_b.finish();
    let mut wrong = Vec::new();
    for (what, frame, delivered) in &attempts {
        for (frames, who) in [(&bridge_frames, "the host"), (&b_frames, "b")] {
            if frames.contains(frame) != *delivered {
                let verb = if *delivered { "did not get" } else { "got" };
                wrong.push(format!("{who} {verb} a's {what}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // Nobody learned a's MAC for an address that is not a's.
    let a_mac_text = a_spec.mac.to_string();
    let host_neighbours = Command::new("ip")
        .args(["-6", "neigh", "show", "dev", &bridge])
        .output()
        .expect("ip neigh");
    let host_neighbours = String::from_utf8_lossy(&host_neighbours.stdout);
    let b_neighbours = victim.output(&["ip", "-6", "neigh", "show", "dev", "eth0"]);
    for (neighbours, who) in [(&*host_neighbours, "the host"), (&*b_neighbours, "b")] {
        for line in neighbours.lines().filter(|line| line.contains(&a_mac_text)) {
            assert!(
                line.starts_with(&format!("{a6} ")) || line.starts_with(&format!("{a_ll} ")),
                "{who} maps another address to a's MAC: {line}"
            );
        }
    }

    // Real neighbour resolution still works, from scratch.
    for netns in [&attacker, &victim] {
        assert!(netns.command(&["ip", "-6", "neigh", "flush", "dev", "eth0"]));
    }
    assert!(Command::new("ip")
        .args(["-6", "neigh", "flush", "dev", &bridge])
        .status()
        .expect("ip neigh flush")
        .success());
    assert!(
        ping6_all(&attacker, &[b6, gw6, b_ll]),
        "a resolves and reaches b and the gateway"
    );
    assert!(ping6_all(&victim, &[a6]), "b resolves and reaches a");

    network.remove_port(&a_id).await.expect("remove a");
    network.remove_port(&b_id).await.expect("remove b");
    assert!(!nft_table("bridge", &bridge).contains("drop"));
    network.teardown().await.expect("teardown");
    assert!(!link_exists(&bridge));
}

/// Whether a TCP connection from inside `from` to `address` is accepted
/// within 2 s (a dropped SYN is never answered, so this times out).
fn connects(from: &Netns, address: SocketAddr) -> bool {
    from.run(move || TcpStream::connect_timeout(&address, Duration::from_secs(2)).is_ok())
        .join()
        .expect("connect thread")
}

/// Whether one ping from inside `from` to `address` is answered within 2 s.
fn pings(from: &Netns, address: &str) -> bool {
    from.command(&["busybox", "ping", "-c", "1", "-W", "2", address])
}

/// A TCP listener inside `netns` on `address`, on a port the kernel picks.
fn listen_in(netns: &Netns, address: String) -> TcpListener {
    netns
        .run(move || TcpListener::bind((address.as_str(), 0)).expect("listen in the namespace"))
        .join()
        .expect("bind thread")
}

/// A TCP listener on every address of the host, on a port the kernel picks.
fn host_listener() -> (TcpListener, u16) {
    let listener = TcpListener::bind(("0.0.0.0", 0)).expect("listen on the host");
    let port = listener.local_addr().expect("addr").port();
    (listener, port)
}

fn write_sysctl(path: &str, value: &str) {
    std::fs::write(path, value).unwrap_or_else(|e| panic!("write {path}: {e}"));
}

/// An "outside" network namespace behind a veth of the test's own, with
/// `<subnet>.1/24` on the host end and `<subnet>.2/24` inside. The host end
/// carries the bridge's marker alias, so the bridge guard removes it.
fn outside(bridge: &str, subnet: &str) -> (Netns, String) {
    let outside = Netns::new();
    let host_end = format!("{bridge}x");
    let ip = |args: &[&str]| {
        let status = Command::new("ip").args(args).status().expect("ip");
        assert!(status.success(), "ip {}", args.join(" "));
    };
    ip(&[
        "link",
        "add",
        &host_end,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &outside.pid().to_string(),
    ]);
    ip(&[
        "link",
        "set",
        "dev",
        &host_end,
        "alias",
        &format!("paddock:{bridge}:outside"),
    ]);
    ip(&["addr", "add", &format!("{subnet}.1/24"), "dev", &host_end]);
    ip(&["link", "set", "dev", &host_end, "up"]);
    assert!(outside.command(&[
        "ip",
        "addr",
        "add",
        &format!("{subnet}.2/24"),
        "dev",
        "eth0"
    ]));
    assert!(outside.command(&["ip", "link", "set", "dev", "eth0", "up"]));
    assert!(outside.command(&["ip", "link", "set", "dev", "lo", "up"]));
    (outside, host_end)
}

/// What a VPS sends to the node itself is dropped unless the node opened the
/// connection or the port is in `host_ports_open_to_vps`: a service listening
/// on all of the host's addresses is closed to the VPS on the gateway address
/// and on another host address, while the open port, the host's own
/// connections into the VPS, and NAT through the host to the outside work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vps_reaches_only_open_ports_of_the_node_but_routes_through_it() {
    if !require_root() {
        return;
    }
    let (bridge, subnet) = unique_names('h');
    let (_, outside_subnet) = unique_names('o');
    let state = tempfile::tempdir().expect("tempdir");
    let (closed, closed_port) = host_listener();
    let (open, open_port) = host_listener();
    let mut config = net_support::config(&bridge, &state);
    config.host_ports_open_to_vps = vec![format!("tcp/{open_port}").parse().expect("host port")];
    let (network, _guard) = network_with(config).await;
    let vps = Netns::new();
    let vps_id = format!("host-{}", std::process::id());
    let mut spec = port(&vps_id, &subnet, 10, 0, 0);
    spec.nat = true;
    network.ensure_port(&spec, vps.pid()).await.expect("port");
    let (outside, host_end) = outside(&bridge, &outside_subnet);
    // Routing for this test's two interfaces only (not the host-wide ip_forward).
    for dev in [&bridge, &host_end] {
        write_sysctl(&format!("/proc/sys/net/ipv4/conf/{dev}/forwarding"), "1");
    }
    let outside_listener = outside
        .run(|| TcpListener::bind(("0.0.0.0", 0)).expect("listen outside"))
        .join()
        .expect("bind thread");
    let outside_port = outside_listener.local_addr().expect("addr").port();
    let gateway: IpAddr = format!("{subnet}.1").parse().expect("gateway");
    let other_host_address: IpAddr = format!("{outside_subnet}.1").parse().expect("host end");
    let outside_address: IpAddr = format!("{outside_subnet}.2").parse().expect("outside");

    let reached = tokio::task::block_in_place(|| {
        [
            (
                "the gateway address on a closed port",
                (gateway, closed_port),
                false,
            ),
            (
                "another host address on a closed port",
                (other_host_address, closed_port),
                false,
            ),
            (
                "the gateway address on the open port",
                (gateway, open_port),
                true,
            ),
            (
                "a host outside, through NAT",
                (outside_address, outside_port),
                true,
            ),
        ]
        .into_iter()
        .filter_map(|(what, address, expected)| {
            let got = connects(&vps, SocketAddr::from(address));
            (got != expected).then(|| format!("{what}: reached = {got}, expected {expected}"))
        })
        .collect::<Vec<_>>()
    });
    assert!(reached.is_empty(), "{}", reached.join("\n"));
    assert!(
        pings(&vps, &gateway.to_string()),
        "the VPS pings its gateway"
    );
    // The node's own connection into the VPS: the VPS's replies come back in.
    let in_vps = {
        let address = format!("{subnet}.10");
        vps.run(move || TcpListener::bind((address.as_str(), 0)).expect("listen in the VPS"))
            .join()
            .expect("bind thread")
    };
    let in_vps_address = in_vps.local_addr().expect("addr");
    let opened = tokio::task::block_in_place(|| {
        TcpStream::connect_timeout(&in_vps_address, Duration::from_secs(2)).is_ok()
    });
    assert!(opened, "the node connects to a service in the VPS");
    drop((closed, open, outside_listener, in_vps));

    network.remove_port(&vps_id).await.expect("remove");
    assert!(
        nft_table("inet", &bridge).is_empty(),
        "no input filter without ports"
    );
    network.teardown().await.expect("teardown");
    drop(outside);
}

/// Whether a frame with source MAC `mac` is among `frames`.
fn from_mac(frames: &[Vec<u8>], mac: [u8; 6]) -> usize {
    frames
        .iter()
        .filter(|frame| frame.get(6..12) == Some(&mac[..]))
        .count()
}

/// VPSes of different tenants share the bridge but exchange no frames:
/// another tenant's pings (and its ARP broadcasts, and a crafted unicast
/// frame) never appear on the victim's port, while VPSes of the same tenant
/// and every VPS with its gateway still talk. Victim and stranger are in
/// private (NAT) pools, so the node does not route between them either: no
/// ping, no TCP, not even frames from the node's MAC carrying the stranger's
/// packets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_do_not_exchange_frames_on_the_bridge() {
    if !require_root() {
        return;
    }
    let (bridge, subnet) = unique_names('t');
    let state = tempfile::tempdir().expect("tempdir");
    let (network, _guard) = network(&bridge, &state).await;
    let (victim, peer, stranger) = (Netns::new(), Netns::new(), Netns::new());
    let pid = std::process::id();
    let (v_id, p_id, s_id) = (
        format!("tv-{pid}"),
        format!("tp-{pid}"),
        format!("ts-{pid}"),
    );
    let mut v_spec = port(&v_id, &subnet, 10, 0, 0);
    v_spec.nat = true;
    let p_spec = port(&p_id, &subnet, 11, 0, 0);
    let mut s_spec = port(&s_id, &subnet, 12, 0, 0);
    s_spec.tenant = "tenant-z".to_owned();
    s_spec.nat = true;
    // The node would route; only the policy stops it.
    write_sysctl(&format!("/proc/sys/net/ipv4/conf/{bridge}/forwarding"), "1");
    for (spec, netns) in [(&v_spec, &victim), (&p_spec, &peer), (&s_spec, &stranger)] {
        network.ensure_port(spec, netns.pid()).await.expect("port");
    }
    let ping = |from: &Netns, host: u8| pings(from, &format!("{subnet}.{host}"));

    let listener = listen_in(&victim, format!("{subnet}.10"));
    let victim_service = listener.local_addr().expect("addr");
    let on_victim = Capture::start(&host_ifname(&v_id));
    let stranger_reached_victim = ping(&stranger, 10);
    let stranger_connected = tokio::task::block_in_place(|| connects(&stranger, victim_service));
    // Even with the victim's MAC known, a unicast frame does not cross.
    let crafted = udp4_frame(
        (s_spec.mac.0, v_spec.mac.0),
        format!("{subnet}.12").parse().expect("ip"),
        format!("{subnet}.10").parse().expect("ip"),
        (4000, 4000),
        b"hello from another tenant",
    );
    send_frames(&stranger, "eth0", vec![crafted.clone()]);
    let peer_reached_victim = ping(&peer, 10);
    std::thread::sleep(Duration::from_millis(300));
    let frames = on_victim.finish();
    assert!(
        !stranger_reached_victim,
        "another tenant's VPS pings the victim"
    );
    assert!(
        !stranger_connected,
        "another tenant's VPS connects to the victim's service"
    );
    let stranger_ip = format!("{subnet}.12").parse().expect("ip");
    assert_eq!(
        ipv4_from(&frames, stranger_ip).len(),
        0,
        "the stranger's packets reached the victim's port (routed by the node)"
    );
    assert_eq!(
        from_mac(&frames, s_spec.mac.0),
        0,
        "frames of another tenant's VPS reached the victim's port"
    );
    assert!(!frames.contains(&crafted));
    assert!(
        peer_reached_victim,
        "a VPS of the same tenant pings the victim"
    );
    assert!(
        from_mac(&frames, p_spec.mac.0) > 0,
        "the capture sees the same tenant's frames"
    );
    assert!(
        ping(&stranger, 1),
        "the other tenant's VPS pings its gateway"
    );
    assert!(ping(&victim, 1), "the victim pings its gateway");

    for id in [&v_id, &p_id, &s_id] {
        network.remove_port(id).await.expect("remove");
    }
    network.teardown().await.expect("teardown");
}

/// The IPv4 packets among `frames` sent from `source`: (source MAC, TTL,
/// protocol) of each.
fn ipv4_from(frames: &[Vec<u8>], source: std::net::Ipv4Addr) -> Vec<([u8; 6], u8, u8)> {
    frames
        .iter()
        .filter(|frame| frame.len() >= 34 && frame[12..14] == [0x08, 0x00])
        .filter(|frame| frame[26..30] == source.octets())
        .map(|frame| {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&frame[6..12]);
            (mac, frame[22], frame[23])
        })
        .collect()
}

/// The MAC of a host interface.
fn link_mac(name: &str) -> [u8; 6] {
    let path = format!("/sys/class/net/{name}/address");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let mac: paddock_agent::network::MacAddr = text.trim().parse().expect("mac");
    mac.0
}

/// VPSes of different tenants in public pools reach each other like any two
/// internet hosts: routed by the node (which answers ARP for the other
/// tenant's address, the broadcast no longer reaching it). Ping and TCP work,
/// and on the target's port the client's packets come from the bridge's MAC
/// with the TTL decremented, never from the client's MAC. A VPS of the same
/// tenant still talks to the target directly, from its own MAC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_in_public_pools_reach_each_other_routed_by_the_node() {
    if !require_root() {
        return;
    }
    let (bridge, subnet) = unique_names('r');
    let state = tempfile::tempdir().expect("tempdir");
    let (network, _guard) = network(&bridge, &state).await;
    let (target, peer, client) = (Netns::new(), Netns::new(), Netns::new());
    let pid = std::process::id();
    let (t_id, p_id, c_id) = (
        format!("rt-{pid}"),
        format!("rp-{pid}"),
        format!("rc-{pid}"),
    );
    let t_spec = port(&t_id, &subnet, 10, 0, 0);
    let p_spec = port(&p_id, &subnet, 11, 0, 0);
    let mut c_spec = port(&c_id, &subnet, 12, 0, 0);
    c_spec.tenant = "tenant-z".to_owned();
    // Routing for this test's bridge (not the host-wide ip_forward).
    write_sysctl(&format!("/proc/sys/net/ipv4/conf/{bridge}/forwarding"), "1");
    for (spec, netns) in [(&t_spec, &target), (&p_spec, &peer), (&c_spec, &client)] {
        network.ensure_port(spec, netns.pid()).await.expect("port");
    }
    let listener = listen_in(&target, format!("{subnet}.10"));
    let service = listener.local_addr().expect("addr");
    let ping = |from: &Netns| pings(from, &format!("{subnet}.10"));

    let on_target = Capture::start(&host_ifname(&t_id));
    let client_pinged = ping(&client);
    let client_connected = tokio::task::block_in_place(|| connects(&client, service));
    let peer_pinged = ping(&peer);
    let peer_connected = tokio::task::block_in_place(|| connects(&peer, service));
    std::thread::sleep(Duration::from_millis(300));
    let frames = on_target.finish();
    assert!(client_pinged, "another tenant's VPS pings the target");
    assert!(
        client_connected,
        "another tenant's VPS connects to the target's service"
    );
    assert!(peer_pinged, "a VPS of the same tenant pings the target");
    assert!(
        peer_connected,
        "a VPS of the same tenant connects to the target's service"
    );
    assert_eq!(
        from_mac(&frames, c_spec.mac.0),
        0,
        "frames of another tenant's VPS reached the target's port directly"
    );
    let bridge_mac = link_mac(&bridge);
    let routed = ipv4_from(&frames, format!("{subnet}.12").parse().expect("ip"));
    assert!(
        routed.iter().any(|(_, _, protocol)| *protocol == 1)
            && routed.iter().any(|(_, _, protocol)| *protocol == 6),
        "the client's ping and TCP reached the target: {routed:?}"
    );
    assert!(
        routed
            .iter()
            .all(|(mac, ttl, _)| *mac == bridge_mac && *ttl == 63),
        "the client's packets come from the bridge's MAC with TTL 63 (routed): {routed:?}"
    );
    let direct = ipv4_from(&frames, format!("{subnet}.11").parse().expect("ip"));
    assert!(
        !direct.is_empty()
            && direct
                .iter()
                .all(|(mac, ttl, _)| *mac == p_spec.mac.0 && *ttl == 64),
        "the same tenant's packets come directly from its MAC: {direct:?}"
    );
    // The node did answer the peer's ARP for the target (proxy ARP), and that
    // answer was dropped: the target answers for itself, with no race. The
    // kernel sends a proxy answer after a random delay of up to `proxy_delay`
    // (0.8 s by default), so the counter is read until it moves or 3 s passed.
    let claims = || {
        let rules = nft_table("bridge", &bridge);
        let claimed: u64 = rules
            .lines()
            .filter(|line| line.contains("arp operation reply"))
            .filter(|line| line.contains(&format!("{subnet}.10")))
            .filter_map(|line| {
                line.split("packets ")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum();
        (claimed, rules)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let (claimed, rules) = loop {
        let (claimed, rules) = claims();
        if claimed > 0 || std::time::Instant::now() > deadline {
            break (claimed, rules);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        claimed > 0,
        "the node's claims of the target's address to its own tenant were dropped: {rules}"
    );
    drop(listener);

    for id in [&t_id, &p_id, &c_id] {
        network.remove_port(id).await.expect("remove");
    }
    network.teardown().await.expect("teardown");
}

/// A VPS cannot be a DHCP server for its neighbours or the node (server
/// replies, UDP 67->68 and DHCPv6 547->546, never leave its port), and it
/// sends from the unspecified address `::` only to probe for duplicate
/// addresses or report multicast listening; a client's DHCP request from its
/// own address still leaves. Victim is a VPS of the same tenant, which
/// tenant isolation would not protect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_rogue_dhcp_servers_and_unspecified_source_only_for_dad() {
    if !require_root() {
        return;
    }
    let (bridge, subnet) = unique_names('d');
    let state = tempfile::tempdir().expect("tempdir");
    let (network, _guard) = network(&bridge, &state).await;
    let (attacker, victim) = (Netns::new(), Netns::new());
    let pid = std::process::id();
    let (a_id, b_id) = (format!("da-{pid}"), format!("db-{pid}"));
    let v6_prefix = format!("fd00:{}", subnet.replace('.', ":"));
    let a_spec = dual_stack(port(&a_id, &subnet, 10, 0, 0), &v6_prefix, 10);
    let b_spec = dual_stack(port(&b_id, &subnet, 11, 0, 0), &v6_prefix, 11);
    for (spec, netns) in [(&a_spec, &attacker), (&b_spec, &victim)] {
        network.ensure_port(spec, netns.pid()).await.expect("port");
    }
    let (a_mac, b_mac) = (a_spec.mac.0, b_spec.mac.0);
    let (a_ll, b_ll) = (a_spec.mac.ipv6_link_local(), b_spec.mac.ipv6_link_local());
    let ip6 = |host: u16| -> Ipv6Addr { format!("{v6_prefix}::{host:x}").parse().expect("v6") };
    let (a6, b6) = (ip6(0xa), ip6(0xb));
    let a4: std::net::Ipv4Addr = format!("{subnet}.10").parse().expect("ip");
    let broadcast = std::net::Ipv4Addr::BROADCAST;
    let unspecified = Ipv6Addr::UNSPECIFIED;
    let frame6 = |src: Ipv6Addr, dst: Ipv6Addr, dst_mac: [u8; 6], next: u8, payload: Vec<u8>| {
        let addresses = Addresses {
            src_mac: a_mac,
            dst_mac,
            src,
            dst,
        };
        ipv6_frame(&addresses, next, &payload)
    };
    let dhcp6_servers: Ipv6Addr = "ff02::1:2".parse().expect("ff02::1:2");
    let mld_group: Ipv6Addr = "ff02::16".parse().expect("ff02::16");
    let a_solicited = solicited_node(a6);
    // (what, frame, reaches b's port, reaches the host)
    let attempts: Vec<(&str, Vec<u8>, bool, bool)> = vec![
        (
            "DHCP offer (67->68) to broadcast",
            udp4_frame((a_mac, [0xff; 6]), a4, broadcast, (67, 68), &[2; 240]),
            false,
            false,
        ),
        (
            "DHCP offer (67->68) to b",
            udp4_frame(
                (a_mac, b_mac),
                a4,
                format!("{subnet}.11").parse().expect("ip"),
                (67, 68),
                &[2; 240],
            ),
            false,
            false,
        ),
        (
            "DHCPv6 advertise (547->546) to b",
            frame6(
                a_ll,
                b_ll,
                b_mac,
                UDP,
                udp6(a_ll, b_ll, (547, 546), &[2; 40]),
            ),
            false,
            false,
        ),
        (
            "UDP from :: to b",
            frame6(
                unspecified,
                b6,
                b_mac,
                UDP,
                udp6(unspecified, b6, (4000, 4000), b"x"),
            ),
            false,
            false,
        ),
        (
            "echo request from :: to b",
            frame6(
                unspecified,
                b6,
                b_mac,
                ICMPV6,
                icmpv6(unspecified, b6, ECHO_REQUEST, &[0, 1, 0, 1]),
            ),
            false,
            false,
        ),
        (
            "solicitation from :: to b's address (not a solicited-node group)",
            frame6(
                unspecified,
                b6,
                b_mac,
                ICMPV6,
                icmpv6(unspecified, b6, NEIGHBOR_SOLICIT, &solicit(a6, &[])),
            ),
            false,
            false,
        ),
        (
            "DHCP request (68->67) from its own address",
            udp4_frame((a_mac, [0xff; 6]), a4, broadcast, (68, 67), &[1; 240]),
            true,
            true,
        ),
        (
            "DHCPv6 solicit (546->547)",
            frame6(
                a_ll,
                dhcp6_servers,
                multicast_mac(dhcp6_servers),
                UDP,
                udp6(a_ll, dhcp6_servers, (546, 547), &[1; 40]),
            ),
            true,
            true,
        ),
        (
            "duplicate address probe from :: for its own address",
            frame6(
                unspecified,
                a_solicited,
                multicast_mac(a_solicited),
                ICMPV6,
                icmpv6(
                    unspecified,
                    a_solicited,
                    NEIGHBOR_SOLICIT,
                    &solicit(a6, &[]),
                ),
            ),
            true,
            true,
        ),
    ];
    // MLD reports are snooped by the bridge (not flooded), so only the host is asked.
    let mld = frame6(
        unspecified,
        mld_group,
        multicast_mac(mld_group),
        HOP_BY_HOP,
        mld2_report(unspecified),
    );

    let on_bridge = Capture::start(&bridge);
    let on_b = Capture::start(&host_ifname(&b_id));
    let mut frames: Vec<Vec<u8>> = attempts
        .iter()
        .map(|(_, frame, _, _)| frame.clone())
        .collect();
    frames.push(mld.clone());
    send_frames(&attacker, "eth0", frames);
    std::thread::sleep(Duration::from_millis(300));
    let bridge_frames = on_bridge.finish();
    let b_frames = on_b.finish();
    let mut wrong = Vec::new();
    for (what, frame, to_b, to_host) in &attempts {
        for (frames, who, expected) in [
            (&b_frames, "b", to_b),
            (&bridge_frames, "the host", to_host),
        ] {
            if frames.contains(frame) != *expected {
                let verb = if *expected { "did not get" } else { "got" };
                wrong.push(format!("{who} {verb} a's {what}"));
            }
        }
    }
    if !bridge_frames.contains(&mld) {
        wrong.push("the host did not get a's MLD report from ::".to_owned());
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    network.remove_port(&a_id).await.expect("remove a");
    network.remove_port(&b_id).await.expect("remove b");
    network.teardown().await.expect("teardown");
}

/// A veth pair of the test's own standing in for the node's uplink; removed on drop (its
/// peer goes with it).
struct UplinkGuard(String);

impl Drop for UplinkGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

/// Sends `bytes` of a counting pattern from inside `from` to `address` and returns what the
/// receiver read, checked byte by byte against the pattern.
fn transfer_intact(from: &Netns, to: &Netns, address: IpAddr, bytes: usize) -> usize {
    use std::io::{Read, Write};
    let listener = listen_in(to, address.to_string());
    let target = listener.local_addr().expect("listener address");
    let receiver = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut buffer = vec![0u8; 256 * 1024];
        let mut received = 0usize;
        loop {
            let n = stream.read(&mut buffer).expect("receive");
            if n == 0 {
                return received;
            }
            for (offset, byte) in buffer[..n].iter().enumerate() {
                assert_eq!(*byte, ((received + offset) % 251) as u8, "corrupt stream");
            }
            received += n;
        }
    });
    from.run(move || {
        let pattern: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
        let mut stream =
            TcpStream::connect_timeout(&target, Duration::from_secs(5)).expect("connect");
        stream.write_all(&pattern).expect("send");
    })
    .join()
    .expect("sender");
    receiver.join().expect("receiver")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_gso_size_is_set_on_both_ends_follows_a_restart_and_unset_the_uplink() {
    if !require_root() {
        return;
    }
    use paddock_agent::network::offload;
    // Configured: BIG TCP on both ends of every port, and a stream crosses the bridge and
    // its filters whole.
    let (bridge, subnet) = unique_names('g');
    let state = tempfile::tempdir().expect("tempdir");
    let mut config = net_support::config(&bridge, &state);
    config.port_gso_max_bytes = Some(offload::LARGEST_BYTES);
    let (network, _guard) = network_with(config).await;
    let (a, b) = (Netns::new(), Netns::new());
    let a_id = format!("ga-{}", std::process::id());
    let b_id = format!("gb-{}", std::process::id());
    network
        .ensure_port(&port(&a_id, &subnet, 10, 0, 0), a.pid())
        .await
        .expect("a");
    network
        .ensure_port(&port(&b_id, &subnet, 11, 0, 0), b.pid())
        .await
        .expect("b");
    for (vps_id, netns) in [(&a_id, &a), (&b_id, &b)] {
        let sizes = network
            .port_gso_ipv4_max(vps_id, &netns.path())
            .await
            .expect("sizes");
        assert_eq!(
            sizes,
            (Some(offload::LARGEST_BYTES), Some(offload::LARGEST_BYTES)),
            "host end and eth0 of {vps_id} (a kernel before 6.3 reports none)"
        );
    }
    let b_address: IpAddr = format!("{subnet}.11").parse().expect("ip");
    let sent = 32 << 20;
    assert_eq!(transfer_intact(&a, &b, b_address, sent), sent);
    // An agent restarted with another size gives it to the ports it adopts.
    drop(network);
    let mut config = net_support::config(&bridge, &state);
    config.port_gso_max_bytes = Some(offload::KERNEL_DEFAULT_BYTES);
    let running = [(a_id.clone(), a.pid()), (b_id.clone(), b.pid())];
    let network = Network::start(config, &running).await.expect("restart");
    let sizes = network
        .port_gso_ipv4_max(&a_id, &a.path())
        .await
        .expect("sizes");
    let default = Some(offload::KERNEL_DEFAULT_BYTES);
    assert_eq!(sizes, (default, default), "after the restart");
    network.teardown().await.expect("teardown");
    drop(network);

    // Unset: the ports take the uplink's size, here an uplink of the test's own at 32000.
    let (bridge, subnet) = unique_names('u');
    let uplink = UplinkGuard(format!("{bridge}x"));
    let status = Command::new("ip")
        .args(["link", "add", &uplink.0, "type", "veth", "peer", "name"])
        .arg(format!("{bridge}y"))
        .status()
        .expect("ip link add");
    assert!(status.success(), "creating the test uplink");
    // iproute2 before 6.3 cannot name the IPv4 size; up to 64 KiB it follows this one.
    let status = Command::new("ip")
        .args(["link", "set", &uplink.0, "gso_max_size", "32000"])
        .status()
        .expect("ip link set");
    assert!(status.success(), "setting the test uplink's GSO size");
    let state = tempfile::tempdir().expect("tempdir");
    let mut config = net_support::config(&bridge, &state);
    config.uplink = Some(uplink.0.clone());
    let (network, _guard) = network_with(config).await;
    let c = Netns::new();
    let c_id = format!("gc-{}", std::process::id());
    network
        .ensure_port(&port(&c_id, &subnet, 12, 0, 0), c.pid())
        .await
        .expect("c");
    let sizes = network
        .port_gso_ipv4_max(&c_id, &c.path())
        .await
        .expect("sizes");
    assert_eq!(sizes, (Some(32_000), Some(32_000)));
    network.teardown().await.expect("teardown");
}
