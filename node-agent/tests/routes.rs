//! The host routes of shared pools on the real kernel, as root: `network::routes::sync` in a
//! network namespace made by the test adds, replaces and removes only the routes the agent
//! owns (protocol 77), and leaves the namespace's other routes alone, even one to a destination
//! it wants. Needs root; with `PADDOCK_REQUIRE_PRIVILEGED=1` a non-root run fails instead of
//! skipping.

mod common;
mod net_support;

use common::require_root;
use net_support::Netns;
use paddock_agent::network::routes::{self, HostRoute, ROUTE_PROTOCOL};
use paddock_agent::network::veth::Netlink;

fn route(destination: &str, via: &str) -> HostRoute {
    HostRoute::parse(destination, via).expect("a host route")
}

/// `ip <family> route show <filter>` in the namespace, one trimmed line per route.
fn shown(netns: &Netns, family: &str, filter: &[&str]) -> Vec<String> {
    let mut args = vec!["ip", family, "route", "show"];
    args.extend_from_slice(filter);
    netns
        .output(&args)
        .lines()
        .map(|line| line.trim().to_owned())
        .filter(|line| !line.is_empty())
        .collect()
}

fn ours(netns: &Netns) -> Vec<String> {
    let protocol = ROUTE_PROTOCOL.to_string();
    let mut lines = shown(netns, "-4", &["proto", &protocol]);
    lines.extend(shown(netns, "-6", &["proto", &protocol]));
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_changes_only_the_agents_own_routes() {
    if !require_root() {
        return;
    }
    let netns = Netns::new();
    for args in [
        // A veth pair (no dummy module on every kernel), both ends up so routes via it hold.
        &[
            "ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1",
        ][..],
        &["ip", "link", "set", "up1", "up"],
        &["ip", "link", "set", "up0", "up"],
        &["ip", "addr", "add", "10.66.0.1/24", "dev", "up0"],
        &[
            "ip",
            "-6",
            "addr",
            "add",
            "fd66::1/64",
            "dev",
            "up0",
            "nodad",
        ],
        // Foreign routes: one the sync never wants, one to a destination it will want.
        &[
            "ip",
            "route",
            "add",
            "10.77.0.9/32",
            "via",
            "10.66.0.13",
            "proto",
            "static",
        ],
        &[
            "ip",
            "route",
            "add",
            "10.77.0.8/32",
            "via",
            "10.66.0.15",
            "proto",
            "static",
        ],
    ] {
        assert!(netns.command(args), "{args:?}");
    }
    let foreign = || shown(&netns, "-4", &["proto", "static"]);
    let foreign_before = foreign();
    assert_eq!(foreign_before.len(), 2, "{foreign_before:?}");
    let netlink = Netlink::in_netns(&netns.path()).expect("netlink in the test's netns");

    let wanted = [
        route("10.77.0.2/32", "10.66.0.12"),
        route("10.77.0.3/32", "10.66.0.13"),
        route("fd00:77::2/128", "fd66::12"),
    ];
    assert_eq!(routes::sync(&netlink, &wanted).await.expect("sync"), (3, 0));
    let mut installed = ours(&netns);
    installed.sort();
    assert_eq!(installed.len(), 3, "{installed:?}");
    assert!(
        installed[0].starts_with("10.77.0.2 via 10.66.0.12 dev up0"),
        "{installed:?}"
    );
    assert!(
        installed[1].starts_with("10.77.0.3 via 10.66.0.13 dev up0"),
        "{installed:?}"
    );
    assert!(
        installed[2].starts_with("fd00:77::2 via fd66::12 dev up0"),
        "{installed:?}"
    );
    let listed = routes::list(&netlink).await.expect("list");
    assert_eq!(listed.len(), 3, "the agent lists exactly its own");

    // Idempotent: the same set changes nothing.
    assert_eq!(
        routes::sync(&netlink, &wanted).await.expect("again"),
        (0, 0)
    );

    // A VPS moved to another node: its route is replaced; one deleted: removed. A wanted
    // destination that a foreign route holds is left to that route.
    let moved = [
        route("10.77.0.2/32", "10.66.0.14"),
        route("fd00:77::2/128", "fd66::12"),
        route("10.77.0.8/32", "10.66.0.12"),
    ];
    assert_eq!(routes::sync(&netlink, &moved).await.expect("moved"), (1, 1));
    let after: Vec<String> = shown(&netns, "-4", &["proto", &ROUTE_PROTOCOL.to_string()]);
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(
        after[0].starts_with("10.77.0.2 via 10.66.0.14 dev up0"),
        "{after:?}"
    );
    assert_eq!(foreign(), foreign_before, "foreign routes untouched");

    // Nothing wanted: every route of the agent goes, the foreign ones stay.
    assert_eq!(routes::sync(&netlink, &[]).await.expect("empty"), (0, 2));
    assert!(ours(&netns).is_empty(), "{:?}", ours(&netns));
    assert_eq!(foreign(), foreign_before, "foreign routes untouched");
}

#[test]
fn only_host_routes_are_accepted() {
    assert!(HostRoute::parse("10.77.0.0/24", "10.66.0.12").is_err());
    assert!(HostRoute::parse("fd00::/64", "fd66::12").is_err());
    assert!(HostRoute::parse("10.77.0.2/32", "a-host").is_err());
    assert!(HostRoute::parse("10.77.0.2", "10.66.0.12").is_err());
    let mixed = HostRoute::parse("fd00::2/128", "10.66.0.12").expect("IPv6 via an IPv4 underlay");
    assert_eq!(
        (mixed.prefix_len, mixed.via.to_string()),
        (128, "10.66.0.12".to_owned())
    );
}
