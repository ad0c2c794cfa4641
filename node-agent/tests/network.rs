//! The agent's network module on the real kernel, as root: ports in real
//! network namespaces on a bridge of the test's own, rate limits measured with
//! real TCP transfers and changed live, and reconciliation after a crash.
//!
//! The controller's `ResizeVps` is not implemented yet, so the live resize is
//! driven here through the agent-level API (`Network::ensure_port` with new
//! rates on the same running namespace), which is what `ApplyVps` calls.

mod common;
mod net_support;

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use common::require_root;
use net_support::{blast, measure, network, port, unique_names, Netns};
use paddock_agent::network::{host_ifname, ifb_ifname, Network, NetworkConfig};

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

/// Egress (VPS -> host) throughput in bits/s, over a 3 s window after 1 s of ramp-up.
fn egress_rate(vps: &Netns, gateway: &str) -> f64 {
    let listener = TcpListener::bind((gateway, 0)).expect("listen on the gateway");
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
    let (network, _guard) = network(&bridge, &state).await;
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
    let egress = tokio::task::block_in_place(|| egress_rate(&vps, &gateway));
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
    let egress = tokio::task::block_in_place(|| egress_rate(&vps, &gateway));
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
    let dual = |mut spec: paddock_agent::network::PortSpec, host: u8| {
        spec.addresses
            .push(format!("{v6_prefix}::{host:x}/64").parse().expect("v6"));
        spec.gateway6 = Some(format!("{v6_prefix}::1").parse().expect("gw6"));
        spec
    };
    let a_spec = dual(port(&a_id, &subnet, 10, 0, 0), 10);
    let b_spec = dual(port(&b_id, &subnet, 11, 10_000_000, 0), 11);
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
        NetworkConfig {
            bridge: bridge.clone(),
            uplink: None,
            ip_forward: false,
            state_dir: state.path().join("network"),
        },
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
