//! VPS-to-VPS TCP throughput over the bridge (veth -> bridge -> veth, with the
//! anti-spoofing rules loaded) against host loopback, in the same run.
//!
//! Run as root: `cargo bench -p paddock-agent --bench network_throughput`.
//! Prints both rates and their ratio. Not a test: it asserts nothing.

#[path = "../tests/net_support/mod.rs"]
mod net_support;

use std::net::TcpListener;
use std::time::Duration;

use net_support::{blast, measure, network, port, unique_names, Netns};

const WARMUP: Duration = Duration::from_secs(1);
const WINDOW: Duration = Duration::from_secs(4);

fn main() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        if std::env::var("PADDOCK_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
            panic!("network_throughput needs root and PADDOCK_REQUIRE_PRIVILEGED=1 is set");
        }
        eprintln!("network_throughput needs root (veths, bridge, nftables); skipped");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let (bridge, subnet) = unique_names('b');
        let state = tempfile::tempdir().expect("tempdir");
        let (network, _guard) = network(&bridge, &state).await;
        let a = Netns::new();
        let b = Netns::new();
        let a_id = format!("bench-a-{}", std::process::id());
        let b_id = format!("bench-b-{}", std::process::id());
        network
            .ensure_port(&port(&a_id, &subnet, 10, 0, 0), a.pid())
            .await
            .expect("port a");
        network
            .ensure_port(&port(&b_id, &subnet, 11, 0, 0), b.pid())
            .await
            .expect("port b");
        let b_address = format!("{subnet}.11");

        let bridged = tokio::task::block_in_place(|| {
            let listener = b
                .run(move || TcpListener::bind((b_address.as_str(), 0)).expect("listen in b"))
                .join()
                .expect("bind");
            measure(
                listener,
                |address| a.run(move || blast(address, WARMUP + WINDOW + Duration::from_secs(2))),
                WARMUP,
                WINDOW,
            )
        });
        let loopback = tokio::task::block_in_place(|| {
            let listener = TcpListener::bind(("127.0.0.1", 0)).expect("listen on loopback");
            measure(
                listener,
                |address| {
                    std::thread::spawn(move || {
                        blast(address, WARMUP + WINDOW + Duration::from_secs(2))
                    })
                },
                WARMUP,
                WINDOW,
            )
        });
        let gbit = |bytes_per_sec: f64| bytes_per_sec * 8.0 / 1e9;
        println!(
            "VPS-to-VPS over bridge {bridge}: {:.2} Gbit/s",
            gbit(bridged)
        );
        println!(
            "host loopback:                 {:.2} Gbit/s",
            gbit(loopback)
        );
        println!("ratio bridge/loopback:         {:.2}", bridged / loopback);

        network.remove_port(&a_id).await.expect("remove a");
        network.remove_port(&b_id).await.expect("remove b");
        network.teardown().await.expect("teardown");
    });
}
