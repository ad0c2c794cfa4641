//! The fault suite on several nodes of one machine (issue 13, items 1-2): each scenario runs a
//! controller and three agents, each agent in its own network namespace
//! ([`paddock_tests::multinode`]), and ends with the leak check of `MultiNode::finish`.
//! A scenario that fails prints the nodes, the VPSes and the daemons' log tails.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use paddock_tests::multinode::{MultiNode, PLAN};
use paddock_tests::{require_root, tcp};
use serde_json::Value;

/// Fails the test with the cluster's diagnostics.
fn fail(cluster: &MultiNode, what: impl std::fmt::Display) -> ! {
    panic!("{what}\n{}", cluster.diagnostics())
}

/// `create NAME --plan mn --wait` as `tenant`; returns the VPS as `show` prints it.
fn create(cluster: &MultiNode, tenant: &str, name: &str) -> Value {
    cluster
        .cli_ok(&[
            "--context",
            tenant,
            "create",
            name,
            "--plan",
            PLAN,
            "--wait",
        ])
        .unwrap_or_else(|error| fail(cluster, format!("create {name}: {error:#}")));
    show(cluster, tenant, name)
}

fn show(cluster: &MultiNode, tenant: &str, name: &str) -> Value {
    cluster
        .json(&["--context", tenant, "show", name])
        .unwrap_or_else(|error| fail(cluster, format!("show {name}: {error:#}")))
}

fn first_ipv4(vps: &Value) -> String {
    vps["ipv4"][0].as_str().unwrap_or_default().to_owned()
}

/// A TCP message from `client` to `server` (VPSes of `tenant`) over `server_ip`
/// (see [`paddock_tests::tcp`]).
fn tcp_message(cluster: &MultiNode, tenant: &str, client: &str, server: &str, server_ip: &str) {
    let message = format!("hello-from-{client}");
    let run = |vps: &str, script: &str| {
        cluster
            .sh(tenant, vps, script)
            .unwrap_or_else(|error| fail(cluster, format!("{error:#}")))
    };
    let listen = run(server, &tcp::listen(7000));
    assert!(listen.status.success(), "listener: {listen:?}");
    let sent = run(client, &tcp::send(server_ip, 7000, &message));
    let got = run(server, &tcp::received(7000));
    let got = String::from_utf8_lossy(&got.stdout).trim().to_owned();
    if !sent.status.success() || got != message {
        fail(
            cluster,
            format!(
                "TCP {client} -> {server} ({server_ip}) failed: client {}: {}; listener got {got:?}",
                sent.status,
                String::from_utf8_lossy(&sent.stderr),
            ),
        );
    }
}

/// How many VPSes each node holds, by node name.
fn per_node(vpses: &[Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for vps in vpses {
        *counts
            .entry(vps["node"].as_str().unwrap_or_default().to_owned())
            .or_insert(0) += 1;
    }
    counts
}

/// (a) Six VPSes over three nodes land 2-2-2 under `spread` and reach each other over TCP
/// across nodes (routed between the nodes' netns).
#[test]
fn spread_places_two_per_node_and_vpses_talk_across_nodes() {
    if !require_root() {
        return;
    }
    let cluster = MultiNode::start(3).expect("start three nodes");
    cluster
        .add_tenant("acme", &[])
        .unwrap_or_else(|error| fail(&cluster, format!("{error:#}")));
    let names = ["s1", "s2", "s3", "s4", "s5", "s6"];
    let vpses: Vec<Value> = names
        .iter()
        .map(|name| create(&cluster, "acme", name))
        .collect();
    let counts = per_node(&vpses);
    let expected: BTreeMap<String, usize> = cluster
        .nodes
        .iter()
        .map(|node| (node.name.clone(), 2))
        .collect();
    if counts != expected {
        fail(&cluster, format!("placement {counts:?}, expected 2-2-2"));
    }
    for vps in &vpses {
        if vps["state"] != "running" {
            fail(&cluster, format!("{} is not running", vps["name"]));
        }
    }
    // One VPS per node; each talks to the next node's over TCP (a ring of three nodes).
    let mut by_node: Vec<&Value> = Vec::new();
    for node in &cluster.nodes {
        let vps = vpses
            .iter()
            .find(|vps| vps["node"] == node.name.as_str())
            .expect("a VPS on every node");
        by_node.push(vps);
    }
    for (i, client) in by_node.iter().enumerate() {
        let server = by_node[(i + 1) % by_node.len()];
        tcp_message(
            &cluster,
            "acme",
            client["name"].as_str().unwrap_or_default(),
            server["name"].as_str().unwrap_or_default(),
            &first_ipv4(server),
        );
    }
    cluster.finish();
}

/// The VPSes of `tenant` by name.
fn vpses_of(cluster: &MultiNode, tenant: &str) -> BTreeMap<String, Value> {
    cluster
        .vps_list()
        .unwrap_or_else(|error| fail(cluster, format!("list: {error:#}")))
        .into_iter()
        .filter(|vps| vps["tenant"] == tenant)
        .map(|vps| (vps["name"].as_str().unwrap_or_default().to_owned(), vps))
        .collect()
}

/// Runs the CLI with `args` in a scoped thread; the result says whether the controller
/// acknowledged (exit status 0).
fn spawn_cli<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    cluster: &'scope MultiNode,
    args: Vec<String>,
) -> std::thread::ScopedJoinHandle<'scope, bool> {
    scope.spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cluster.cli(&args).is_ok_and(|out| out.status.success())
    })
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| (*arg).to_owned()).collect()
}

/// (b) `kill -9` of an agent while creates and deletes to it are in flight: its VPSes keep
/// running with the same init pids, and after its restart every acknowledged create runs
/// and every acknowledged delete is gone.
#[test]
fn agent_killed_during_creates_and_deletes_loses_nothing() {
    if !require_root() {
        return;
    }
    let mut cluster = MultiNode::start(3).expect("start three nodes");
    let victim = 1;
    let victim_name = cluster.nodes[victim].name.clone();
    cluster
        .add_tenant("acme", &["--max-vps", "20", "--ipv4", "20"])
        .unwrap_or_else(|error| fail(&cluster, format!("{error:#}")));
    cluster
        .admin_ok(&["node", "label", &victim_name, "mn-role=victim"])
        .unwrap_or_else(|error| fail(&cluster, format!("{error:#}")));
    let on_victim = |name: &str, wait: &str| {
        strings(&[
            "--context",
            "acme",
            "create",
            name,
            "--plan",
            PLAN,
            "--node-selector",
            "mn-role=victim",
            wait,
        ])
    };
    let kept = ["k1", "k2", "k3", "k4"];
    let mut pids = BTreeMap::new();
    for name in kept {
        let args = on_victim(name, "--wait");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cluster
            .cli_ok(&args)
            .unwrap_or_else(|error| fail(&cluster, format!("{error:#}")));
        let vps = show(&cluster, "acme", name);
        assert_eq!(vps["node"], victim_name.as_str());
        pids.insert(name, vps["init_pid"].as_u64().unwrap_or(0));
    }
    let vps_dir = cluster.nodes[victim].state_dir.join("vps");
    let dirs_before = std::fs::read_dir(&vps_dir).map_or(0, Iterator::count);

    // Three creates and two deletes at once; the agent dies as soon as it works on them.
    let created = ["n1", "n2", "n3"];
    let deleted = ["k1", "k2"];
    let (create_acks, delete_acks) = std::thread::scope(|scope| {
        let creates: Vec<_> = created
            .iter()
            .map(|name| spawn_cli(scope, &cluster, on_victim(name, "--no-wait")))
            .collect();
        let deletes: Vec<_> = deleted
            .iter()
            .map(|name| {
                spawn_cli(
                    scope,
                    &cluster,
                    strings(&["--context", "acme", "delete", name, "--yes", "--no-wait"]),
                )
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::read_dir(&vps_dir).map_or(0, Iterator::count) == dirs_before
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        let agent_pid = cluster.nodes[victim].agent_pid();
        if let Some(pid) = agent_pid {
            // SAFETY: kill has no memory-safety preconditions; the pid is our agent child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        // Otherwise the kill did not catch the agent at work.
        let dirs_at_kill = std::fs::read_dir(&vps_dir).map_or(0, Iterator::count);
        assert_ne!(
            dirs_at_kill, dirs_before,
            "the agent started no create within 30 s"
        );
        let creates: Vec<bool> = creates
            .into_iter()
            .map(|h| h.join().unwrap_or(false))
            .collect();
        let deletes: Vec<bool> = deletes
            .into_iter()
            .map(|h| h.join().unwrap_or(false))
            .collect();
        (creates, deletes)
    });
    cluster.kill_agent(victim);
    // The VPSes not being deleted outlive their agent (those being deleted may be gone).
    for (name, pid) in pids.iter().filter(|(name, _)| !deleted.contains(*name)) {
        assert!(
            paddock_tests::multinode::process_alive(*pid),
            "init {pid} of {name} died with its agent"
        );
    }
    eprintln!("acknowledged creates {create_acks:?}, deletes {delete_acks:?}");
    cluster
        .start_agent(victim)
        .unwrap_or_else(|error| fail(&cluster, format!("restart agent: {error:#}")));
    let acked_creates: Vec<&str> = created
        .iter()
        .zip(&create_acks)
        .filter(|(_, acked)| **acked)
        .map(|(name, _)| *name)
        .collect();
    let acked_deletes: Vec<&str> = deleted
        .iter()
        .zip(&delete_acks)
        .filter(|(_, acked)| **acked)
        .map(|(name, _)| *name)
        .collect();
    let settled = cluster.wait_until(
        "every acknowledged operation",
        Duration::from_secs(90),
        |c| {
            let vpses = vpses_of(c, "acme");
            let creates_run = acked_creates.iter().all(|name| {
                vpses.get(*name).is_some_and(|vps| {
                    vps["state"] == "running" && vps["node"] == victim_name.as_str()
                })
            });
            let deletes_gone = acked_deletes.iter().all(|name| !vpses.contains_key(*name));
            Ok(creates_run && deletes_gone)
        },
    );
    if let Err(error) = settled {
        fail(&cluster, format!("{error:#}"));
    }
    // The VPSes nobody touched run on with the init they had before the kill.
    let vpses = vpses_of(&cluster, "acme");
    for name in ["k3", "k4"] {
        let vps = &vpses[name];
        if vps["state"] != "running" || vps["init_pid"].as_u64() != Some(pids[name]) {
            fail(
                &cluster,
                format!(
                    "{name} was restarted or stopped: {vps}, init pid before {}",
                    pids[name]
                ),
            );
        }
    }
    // Unacknowledged operations may or may not have happened, but never half: each VPS is
    // running or gone.
    for vps in vpses.values() {
        if vps["state"] != "running" {
            fail(&cluster, format!("{} is not running: {vps}", vps["name"]));
        }
    }
    cluster.finish();
}

/// Fetches `http://ip:8080/` from node `index`'s own netns (the node host, not a VPS).
fn fetch_from_node(cluster: &MultiNode, index: usize, ip: &str) -> String {
    let out = cluster.node_sh(index, &format!("curl -s -m 3 http://{ip}:8080/ 2>&1"));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// (c) One node's link cut for 30 s: its VPSes keep serving inside its host; it goes
/// offline and its VPSes `unknown`; creates go elsewhere; within 15 s of the link's return
/// everything is consistent again, with no manual step.
#[test]
fn a_cut_link_makes_a_node_offline_and_it_recovers_alone() {
    if !require_root() {
        return;
    }
    let cluster = MultiNode::start(3).expect("start three nodes");
    cluster
        .add_tenant("acme", &[])
        .unwrap_or_else(|error| fail(&cluster, format!("{error:#}")));
    let vpses: Vec<Value> = ["c1", "c2", "c3"]
        .iter()
        .map(|name| create(&cluster, "acme", name))
        .collect();
    let victim = cluster
        .node_index(vpses[0]["node"].as_str().unwrap_or_default())
        .expect("c1's node");
    let victim_name = cluster.nodes[victim].name.clone();
    let served = &vpses[0];
    let served_ip = first_ipv4(served);
    let served_pid = served["init_pid"].as_u64().unwrap_or(0);
    let serve = cluster
        .sh(
            "acme",
            "c1",
            "mkdir -p /tmp/www && echo alive > /tmp/www/index.html && httpd -p 8080 -h /tmp/www </dev/null >/dev/null 2>&1",
        )
        .unwrap_or_else(|error| fail(&cluster, format!("{error:#}")));
    assert!(serve.status.success(), "httpd: {serve:?}");
    assert_eq!(fetch_from_node(&cluster, victim, &served_ip), "alive");

    cluster
        .set_link(victim, false)
        .unwrap_or_else(|error| fail(&cluster, format!("{error:#}")));
    let cut_at = Instant::now();
    let offline = cluster.wait_until("the cut node offline", Duration::from_secs(25), |c| {
        let vps = &vpses_of(c, "acme")["c1"];
        Ok(c.node_status(&victim_name)? == "offline" && vps["state"] == "unknown")
    });
    if let Err(error) = offline {
        fail(&cluster, format!("{error:#}"));
    }
    eprintln!(
        "node offline and its VPS unknown {:?} after the cut",
        cut_at.elapsed()
    );
    // The VPS still serves inside its node, with the same init.
    assert_eq!(fetch_from_node(&cluster, victim, &served_ip), "alive");
    assert!(paddock_tests::multinode::process_alive(served_pid));
    // New VPSes go to the nodes that are still there.
    for name in ["c4", "c5"] {
        let vps = create(&cluster, "acme", name);
        if vps["node"] == victim_name.as_str() || vps["state"] != "running" {
            fail(
                &cluster,
                format!("{name} went to the cut node or is not running: {vps}"),
            );
        }
    }
    let cut_for = Duration::from_secs(30);
    std::thread::sleep(cut_for.saturating_sub(cut_at.elapsed()));
    assert_eq!(fetch_from_node(&cluster, victim, &served_ip), "alive");

    cluster
        .set_link(victim, true)
        .unwrap_or_else(|error| fail(&cluster, format!("{error:#}")));
    let back_at = Instant::now();
    let consistent = cluster.wait_until(
        "consistent after the link returned",
        Duration::from_secs(15),
        |c| {
            let vpses = vpses_of(c, "acme");
            Ok(c.node_status(&victim_name)? == "online"
                && vpses.len() == 5
                && vpses
                    .values()
                    .all(|vps| vps["state"] == "running" && vps["converged"] == true)
                && vpses["c1"]["init_pid"].as_u64() == Some(served_pid)
                // The controller reaches the node again (exec goes controller -> agent).
                && c.sh("acme", "c1", "echo back")
                    .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "back"))
        },
    );
    // A check that began in time may end late (an exec on a dead connection).
    let consistent = consistent.and_then(|()| {
        if back_at.elapsed() > Duration::from_secs(15) {
            anyhow::bail!("consistent only after {:?}", back_at.elapsed())
        }
        Ok(())
    });
    if let Err(error) = consistent {
        fail(
            &cluster,
            format!(
                "{error:#} ({:?} after the link returned)",
                back_at.elapsed()
            ),
        );
    }
    eprintln!(
        "consistent (states, init pids, exec) {:?} after the link returned",
        back_at.elapsed()
    );
    cluster.finish();
}

/// (d) `kill -9` of the controller during 100 concurrent creates across five tenants (quota
/// 8 VPSes each): after its restart every acknowledged VPS exists and runs, no tenant is over
/// its quota, and no address is given twice.
#[test]
fn controller_killed_during_concurrent_creates_keeps_quotas_and_addresses() {
    if !require_root() {
        return;
    }
    let mut cluster = MultiNode::start(3).expect("start three nodes");
    let tenants = ["t1", "t2", "t3", "t4", "t5"];
    let max_vps = 8;
    for tenant in tenants {
        cluster
            .add_tenant(
                tenant,
                &[
                    "--max-vps",
                    &max_vps.to_string(),
                    "--ipv4",
                    &max_vps.to_string(),
                ],
            )
            .unwrap_or_else(|error| fail(&cluster, format!("{error:#}")));
    }
    let requests: Vec<(&str, String)> = (1..=20)
        .flat_map(|i| {
            tenants
                .iter()
                .map(move |tenant| (*tenant, format!("v{i:02}")))
        })
        .collect();
    assert_eq!(requests.len(), 100);
    let acks = std::sync::atomic::AtomicUsize::new(0);
    let answered = std::sync::atomic::AtomicUsize::new(0);
    let (acked, answered_before_kill): (Vec<bool>, usize) = std::thread::scope(|scope| {
        let handles: Vec<_> = requests
            .iter()
            .map(|(tenant, name)| {
                let cluster = &cluster;
                let acks = &acks;
                let answered = &answered;
                scope.spawn(move || {
                    let ok = cluster
                        .cli(&[
                            "--context",
                            tenant,
                            "create",
                            name,
                            "--plan",
                            PLAN,
                            "--no-wait",
                        ])
                        .is_ok_and(|out| out.status.success());
                    if ok {
                        acks.fetch_add(1, Ordering::SeqCst);
                    }
                    answered.fetch_add(1, Ordering::SeqCst);
                    ok
                })
            })
            .collect();
        // The controller dies once a fifth of the calls returned (acknowledged or refused
        // over quota), with the rest in flight or not sent yet.
        let deadline = Instant::now() + Duration::from_secs(60);
        while answered.load(Ordering::SeqCst) < 20 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Some(pid) = cluster.controller_pid() {
            // SAFETY: kill has no memory-safety preconditions; the pid is our controller child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let answered_before_kill = answered.load(Ordering::SeqCst);
        let acked = handles
            .into_iter()
            .map(|handle| handle.join().unwrap_or(false))
            .collect();
        (acked, answered_before_kill)
    });
    // Otherwise the kill came too late to test anything.
    assert!(
        answered_before_kill < requests.len(),
        "every create had returned before the kill"
    );
    let killed_after = acks.load(Ordering::SeqCst);
    cluster.kill_controller();
    cluster
        .start_controller()
        .unwrap_or_else(|error| fail(&cluster, format!("restart controller: {error:#}")));
    eprintln!("{answered_before_kill} of 100 creates had returned when the controller was killed");
    eprintln!("{killed_after} creates acknowledged in all; controller restarted");
    let acknowledged: Vec<(&str, &str)> = requests
        .iter()
        .zip(&acked)
        .filter(|(_, ok)| **ok)
        .map(|((tenant, name), _)| (*tenant, name.as_str()))
        .collect();
    // Every VPS the store holds (acknowledged or not) ends up running.
    let settled = cluster.wait_until("every VPS running", Duration::from_secs(180), |c| {
        let vpses = c.vps_list()?;
        let all_acked_there = acknowledged.iter().all(|(tenant, name)| {
            vpses
                .iter()
                .any(|vps| vps["tenant"] == *tenant && vps["name"] == *name)
        });
        Ok(all_acked_there && vpses.iter().all(|vps| vps["state"] == "running"))
    });
    if let Err(error) = settled {
        fail(&cluster, format!("{error:#}"));
    }
    let vpses = cluster
        .vps_list()
        .unwrap_or_else(|error| fail(&cluster, format!("{error:#}")));
    let mut per_tenant: BTreeMap<String, usize> = BTreeMap::new();
    let mut addresses: BTreeMap<String, String> = BTreeMap::new();
    for vps in &vpses {
        let tenant = vps["tenant"].as_str().unwrap_or_default().to_owned();
        *per_tenant.entry(tenant.clone()).or_insert(0) += 1;
        let ips = vps["ipv4"].as_array().cloned().unwrap_or_default();
        if ips.len() != 1 {
            fail(&cluster, format!("{} has addresses {ips:?}", vps["name"]));
        }
        let ip = ips[0].as_str().unwrap_or_default().to_owned();
        let owner = format!("{tenant}/{}", vps["name"]);
        if let Some(other) = addresses.insert(ip.clone(), owner.clone()) {
            fail(&cluster, format!("{ip} given to {other} and {owner}"));
        }
        // The address is from the pool of the node the VPS runs on.
        let node = cluster
            .node_index(vps["node"].as_str().unwrap_or_default())
            .unwrap_or_else(|| fail(&cluster, format!("{owner} on an unknown node")));
        if !ip.starts_with(&format!("{}.", cluster.nodes[node].pool_prefix)) {
            fail(
                &cluster,
                format!("{owner}'s {ip} is not from its node's pool"),
            );
        }
    }
    for (tenant, count) in &per_tenant {
        if *count > max_vps {
            fail(
                &cluster,
                format!("tenant {tenant} holds {count} VPSes, quota {max_vps}"),
            );
        }
    }
    eprintln!(
        "{} acknowledged, {} VPSes exist, per tenant {per_tenant:?}",
        acknowledged.len(),
        vpses.len()
    );
    cluster.finish();
}

/// A daemon of the cluster: the controller or agent `i` (0-based).
#[derive(Debug, Clone, Copy)]
enum Daemon {
    Controller,
    Agent(usize),
}

/// (e) Every daemon killed and restarted, kills and starts interleaved in a random order (the
/// seed is printed; `PADDOCK_TEST_SEED` replays one), with power changes made while agents may
/// be down: every VPS ends in its desired state, the untouched running ones with the init
/// they had.
#[test]
fn restarting_everything_in_random_order_keeps_desired_states() {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;

    if !require_root() {
        return;
    }
    let seed: u64 = std::env::var("PADDOCK_TEST_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("PADDOCK_TEST_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut cluster = MultiNode::start(3).expect("start three nodes");
    cluster
        .add_tenant("acme", &[])
        .unwrap_or_else(|error| fail(&cluster, format!("{error:#}")));
    let names = ["r1", "r2", "r3", "r4", "r5", "r6"];
    for name in names {
        create(&cluster, "acme", name);
    }
    // Two of them are meant to be stopped.
    let stopped = ["r2", "r5"];
    for name in stopped {
        cluster
            .cli_ok(&["--context", "acme", "stop", name])
            .unwrap_or_else(|error| fail(&cluster, format!("stop {name}: {error:#}")));
    }
    let before = vpses_of(&cluster, "acme");
    for name in stopped {
        assert_eq!(before[name]["state"], "stopped", "{name}: {}", before[name]);
    }

    // Every daemon is killed once and started once, kills and starts interleaved at random
    // (each daemon's first turn is its kill). As soon as the controller is back, while some
    // agents may still be down, one stopped VPS is started and one running VPS is stopped.
    let mut turns: Vec<Daemon> = std::iter::once(Daemon::Controller)
        .chain((0..cluster.nodes.len()).map(Daemon::Agent))
        .flat_map(|daemon| [daemon, daemon])
        .collect();
    turns.shuffle(&mut rng);
    let mut down: Vec<String> = Vec::new();
    let mut events = Vec::new();
    for daemon in turns {
        let key = format!("{daemon:?}");
        if down.contains(&key) {
            down.retain(|other| *other != key);
            events.push(format!("start {key}"));
            let started = match daemon {
                Daemon::Controller => cluster.start_controller(),
                Daemon::Agent(index) => cluster.start_agent(index),
            };
            started.unwrap_or_else(|error| fail(&cluster, format!("start {daemon:?}: {error:#}")));
            if matches!(daemon, Daemon::Controller) {
                for (verb, name) in [("start", "r2"), ("stop", "r3")] {
                    cluster
                        .cli_ok(&["--context", "acme", verb, name, "--no-wait"])
                        .unwrap_or_else(|error| {
                            fail(&cluster, format!("{verb} {name} ({events:?}): {error:#}"))
                        });
                }
            }
        } else {
            down.push(key.clone());
            events.push(format!("kill {key}"));
            match daemon {
                Daemon::Controller => cluster.kill_controller(),
                Daemon::Agent(index) => cluster.kill_agent(index),
            }
        }
    }
    eprintln!("events: {events:?}");
    let want_running = ["r1", "r2", "r4", "r6"];
    let untouched = ["r1", "r4", "r6"];
    let settled = cluster.wait_until(
        "every VPS in its desired state",
        Duration::from_secs(60),
        |c| {
            let nodes_online = c.node_list()?.iter().all(|node| node["status"] == "online");
            let vpses = vpses_of(c, "acme");
            let in_state = names.iter().all(|name| {
                let Some(vps) = vpses.get(*name) else {
                    return false;
                };
                let was = &before[*name];
                let state_ok = if want_running.contains(name) {
                    vps["state"] == "running"
                        && (!untouched.contains(name) || vps["init_pid"] == was["init_pid"])
                } else {
                    vps["state"] == "stopped"
                };
                state_ok && vps["converged"] == true && vps["node"] == was["node"]
            });
            Ok(nodes_online && vpses.len() == names.len() && in_state)
        },
    );
    if let Err(error) = settled {
        fail(
            &cluster,
            format!("seed {seed}, events {events:?}: {error:#}"),
        );
    }
    // What the controller reports is what the host shows.
    let pid_of = |name: &str| before[name]["init_pid"].as_u64().unwrap_or(0);
    for name in untouched {
        assert!(
            paddock_tests::multinode::process_alive(pid_of(name)),
            "{name}'s init died"
        );
    }
    assert!(
        !paddock_tests::multinode::process_alive(pid_of("r3")),
        "r3 was stopped but its init runs"
    );
    cluster.finish();
}
