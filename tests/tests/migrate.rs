//! Cold migration on several nodes of one machine (issue 13, item 5), in the multi-node
//! harness ([`paddock_tests::multinode`]): a running VPS moves with its files and their owners
//! (the same ids inside, the destination's range outside) and answers TCP at its new address;
//! a move that would change its address is refused unless allowed; `kill -9` of the
//! controller or either agent at the copy step leaves it whole on exactly one node; `drain
//! --migrate` empties a node. Every scenario ends with the leak check of `MultiNode::finish`.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use paddock_tests::multinode::{MultiNode, PLAN};
use paddock_tests::{require_root, tcp};
use serde_json::Value;

/// Size of one VPS's id range.
const ID_RANGE: u32 = 65_536;
/// The uid and gid the tenant's own user has inside the VPS.
const TENANT_UID: u32 = 1000;

fn fail(cluster: &MultiNode, what: impl std::fmt::Display) -> ! {
    panic!("{what}\n{}", cluster.diagnostics())
}

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

fn init_pid(vps: &Value) -> u64 {
    vps["init_pid"].as_u64().unwrap_or_default()
}

/// The index of the node `vps` is on, and of the other one (two-node clusters).
fn placed(cluster: &MultiNode, vps: &Value) -> (usize, usize) {
    let node = vps["node"].as_str().unwrap_or_default();
    let source = cluster
        .node_index(node)
        .unwrap_or_else(|| fail(cluster, format!("no node {node}")));
    (source, 1 - source)
}

fn migrate_args<'a>(vps: &'a str, to: &'a str, allow_new_address: bool) -> Vec<&'a str> {
    let mut args = vec![
        "--context",
        "admin",
        "-o",
        "json",
        "admin",
        "migrate",
        vps,
        "--tenant",
        "acme",
        "--to",
        to,
    ];
    if allow_new_address {
        args.push("--allow-new-address");
    }
    args
}

/// A root-owned file and one owned by the tenant's user, written inside the VPS.
fn write_files(cluster: &MultiNode, name: &str) {
    let script = format!(
        "echo kept-across-nodes > /root/note && mkdir -p /home/u && echo mine > /home/u/f \
         && chown {TENANT_UID}:{TENANT_UID} /home/u/f && sync"
    );
    let out = cluster
        .sh("acme", name, &script)
        .unwrap_or_else(|error| fail(cluster, format!("{error:#}")));
    if !out.status.success() {
        fail(cluster, format!("writing files in {name}: {out:?}"));
    }
}

/// The files as the VPS sees them: contents, and the owner of the tenant's file unchanged.
fn check_files(cluster: &MultiNode, name: &str) {
    let out = cluster
        .sh(
            "acme",
            name,
            "cat /root/note /home/u/f && stat -c '%u:%g' /home/u/f /root/note",
        )
        .unwrap_or_else(|error| fail(cluster, format!("{error:#}")));
    let text = String::from_utf8_lossy(&out.stdout);
    let expected = format!("kept-across-nodes\nmine\n{TENANT_UID}:{TENANT_UID}\n0:0\n");
    if !out.status.success() || text != expected {
        fail(
            cluster,
            format!(
                "files in {name}: {text:?} (expected {expected:?}), stderr {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        );
    }
}

/// The host uid of the tenant's file, seen through the VPS init's root; it must be the
/// tenant's uid shifted into node `index`'s id range.
fn check_host_owner(cluster: &MultiNode, vps: &Value, index: usize) {
    let path = format!("/proc/{}/root/home/u/f", init_pid(vps));
    let uid = std::fs::metadata(&path)
        .unwrap_or_else(|error| fail(cluster, format!("stat {path}: {error}")))
        .uid();
    let node = &cluster.nodes[index];
    let range = node.id_base..node.id_base + 64 * ID_RANGE;
    if !range.contains(&uid) || uid % ID_RANGE != TENANT_UID {
        fail(
            cluster,
            format!(
                "{path} is owned by host uid {uid}; expected {TENANT_UID} in a VPS range of {} ({range:?})",
                node.name
            ),
        );
    }
}

/// Whether node `index` holds anything of VPS `vps_id` (its state dir).
fn on_node(cluster: &MultiNode, index: usize, vps_id: &str) -> bool {
    cluster.nodes[index]
        .state_dir
        .join("vps")
        .join(vps_id)
        .exists()
}

/// A TCP message from `client` to `server`'s `server_ip` (see [`paddock_tests::tcp`]).
fn tcp_message(cluster: &MultiNode, client: &str, server: &str, server_ip: &str) {
    let message = format!("hello-from-{client}");
    let run = |vps: &str, script: &str| {
        cluster
            .sh("acme", vps, script)
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

/// Waits until the VPS runs on node `index` with nothing of it left on the other node.
fn wait_whole_on(cluster: &MultiNode, name: &str, vps_id: &str, index: usize, what: &str) {
    let node = cluster.nodes[index].name.clone();
    let other = 1 - index;
    cluster
        .wait_until(what, Duration::from_secs(180), |c| {
            let vps = c.json(&["--context", "acme", "show", name])?;
            Ok(vps["node"] == node.as_str()
                && vps["state"] == "running"
                && init_pid(&vps) != 0
                && !on_node(c, other, vps_id))
        })
        .unwrap_or_else(|error| fail(cluster, format!("{error:#}")));
}

/// Restarts `victim` (`who` in messages) armed with the test fault point `fault`, then waits
/// until every node is online again.
fn arm(cluster: &mut MultiNode, fault: &str, victim: Victim, who: &str) {
    cluster.set_fault(Some(fault));
    let restarted = match victim {
        Victim::Controller => {
            cluster.kill_controller();
            cluster.start_controller()
        }
        Victim::Agent(index) => {
            cluster.kill_agent(index);
            cluster.start_agent(index)
        }
    };
    cluster.set_fault(None);
    restarted.unwrap_or_else(|error| fail(cluster, format!("restart {who}: {error:#}")));
    for node in cluster
        .nodes
        .iter()
        .map(|node| node.name.clone())
        .collect::<Vec<_>>()
    {
        cluster
            .wait_node_status(&node, "online", Duration::from_secs(60))
            .unwrap_or_else(|error| fail(cluster, format!("{error:#}")));
    }
}

/// A running VPS moves with its files and owners and answers TCP at its new address; the
/// move that changes its address is refused (naming both) until allowed.
#[test]
fn a_running_vps_moves_with_its_files_and_owners_and_answers_there() {
    if !require_root() {
        return;
    }
    let cluster = MultiNode::start(2).expect("start two nodes");
    cluster
        .add_tenant("acme", &[])
        .unwrap_or_else(|error| fail(&cluster, format!("{error:#}")));
    let web = create(&cluster, "acme", "web");
    let client = create(&cluster, "acme", "client");
    let (source, destination) = placed(&cluster, &web);
    let vps_id = web["id"].as_str().unwrap_or_default().to_owned();
    write_files(&cluster, "web");
    check_host_owner(&cluster, &web, source);
    let to = cluster.nodes[destination].name.clone();

    // Pools never overlap, so the address cannot move: refused, both addresses named.
    let refused = cluster
        .cli(&migrate_args("web", &to, false))
        .expect("run migrate");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    let dest_prefix = format!("{}.", cluster.nodes[destination].pool_prefix);
    if refused.status.success()
        || !stderr.contains(&first_ipv4(&web))
        || !stderr.contains(&dest_prefix)
        || !stderr.contains("--allow-new-address")
    {
        fail(
            &cluster,
            format!("migrate without --allow-new-address: {refused:?}"),
        );
    }
    let unchanged = show(&cluster, "acme", "web");
    assert_eq!(
        unchanged["node"], web["node"],
        "a refused move changes nothing"
    );
    assert_eq!(init_pid(&unchanged), init_pid(&web), "and does not stop it");

    let moved = cluster
        .cli_ok(&migrate_args("web", &to, true))
        .unwrap_or_else(|error| fail(&cluster, format!("migrate: {error:#}")));
    let moved: Value = serde_json::from_str(&moved).expect("migration JSON");
    assert_eq!(moved["from_node"], web["node"]);
    assert_eq!(moved["to_node"], to.as_str());
    assert_eq!(moved["addresses_kept"], false);
    let new_ip = moved["ipv4"][0].as_str().unwrap_or_default().to_owned();
    assert!(new_ip.starts_with(&dest_prefix), "new address {new_ip}");
    wait_whole_on(
        &cluster,
        "web",
        &vps_id,
        destination,
        "web running on its destination",
    );
    let there = show(&cluster, "acme", "web");
    assert_eq!(first_ipv4(&there), new_ip);
    check_files(&cluster, "web");
    check_host_owner(&cluster, &there, destination);
    tcp_message(&cluster, "client", "web", &new_ip);
    let client_ip = first_ipv4(&client);
    tcp_message(&cluster, "web", "client", &client_ip);
    cluster.finish();
}

/// Which process a fault point kills.
#[derive(Debug, Clone, Copy)]
enum Victim {
    Controller,
    Agent(usize),
}

/// `kill -9` of the controller, the source agent and the destination agent at the copy step:
/// each time the VPS ends up whole and running on its source only, and a later move works.
#[test]
fn a_kill_at_the_copy_step_leaves_the_vps_whole_on_one_node() {
    if !require_root() {
        return;
    }
    let mut cluster = MultiNode::start(2).expect("start two nodes");
    cluster
        .add_tenant("acme", &[])
        .unwrap_or_else(|error| fail(&cluster, format!("{error:#}")));
    let web = create(&cluster, "acme", "web");
    let (source, destination) = placed(&cluster, &web);
    let vps_id = web["id"].as_str().unwrap_or_default().to_owned();
    write_files(&cluster, "web");
    let to = cluster.nodes[destination].name.clone();
    let cases = [
        ("the controller", "migrate:after-copy", Victim::Controller),
        (
            "the source agent",
            "migrate:after-export",
            Victim::Agent(source),
        ),
        (
            "the destination agent",
            "migrate:after-import",
            Victim::Agent(destination),
        ),
    ];
    for (who, fault, victim) in cases {
        // Restart the victim armed with the fault point.
        arm(&mut cluster, fault, victim, who);
        let out = cluster
            .cli(&migrate_args("web", &to, true))
            .expect("run migrate");
        if out.status.success() {
            fail(
                &cluster,
                format!("migrate with {who} killed succeeded: {out:?}"),
            );
        }
        let died = paddock_tests::poll_until(
            &format!("{who} killed at {fault}"),
            Duration::from_secs(120),
            || {
                Ok(match victim {
                    Victim::Controller => cluster.controller_exited(),
                    Victim::Agent(index) => cluster.agent_exited(index),
                })
            },
        );
        died.unwrap_or_else(|error| fail(&cluster, format!("{error:#}")));
        let back = match victim {
            Victim::Controller => cluster.start_controller(),
            Victim::Agent(index) => cluster.start_agent(index),
        };
        back.unwrap_or_else(|error| fail(&cluster, format!("restart {who}: {error:#}")));
        wait_whole_on(
            &cluster,
            "web",
            &vps_id,
            source,
            &format!("web whole on its source after {who} was killed"),
        );
        check_files(&cluster, "web");
        check_host_owner(&cluster, &show(&cluster, "acme", "web"), source);
    }
    // Nothing is stuck: the same move now goes through.
    cluster
        .cli_ok(&migrate_args("web", &to, true))
        .unwrap_or_else(|error| fail(&cluster, format!("migrate: {error:#}")));
    wait_whole_on(
        &cluster,
        "web",
        &vps_id,
        destination,
        "web moved after the faults",
    );
    check_files(&cluster, "web");
    cluster.finish();
}

/// `admin node drain NODE --migrate` moves every VPS off the node, one line per VPS.
#[test]
fn drain_migrate_empties_a_node() {
    if !require_root() {
        return;
    }
    let cluster = MultiNode::start(2).expect("start two nodes");
    cluster
        .add_tenant("acme", &[])
        .unwrap_or_else(|error| fail(&cluster, format!("{error:#}")));
    let vpses: Vec<Value> = ["d1", "d2", "d3"]
        .iter()
        .map(|name| create(&cluster, "acme", name))
        .collect();
    // Spread puts two of the three on one node: drain that one.
    let fuller = cluster
        .nodes
        .iter()
        .map(|node| node.name.clone())
        .max_by_key(|node| {
            vpses
                .iter()
                .filter(|vps| vps["node"] == node.as_str())
                .count()
        })
        .expect("a node");
    let leaving: Vec<String> = vpses
        .iter()
        .filter(|vps| vps["node"] == fuller.as_str())
        .map(|vps| vps["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(leaving.len(), 2, "spread placed two on {fuller}");
    // A stopped VPS moves too, and stays stopped where it lands.
    let stopped = leaving[0].clone();
    cluster
        .cli_ok(&["--context", "acme", "stop", &stopped, "--wait"])
        .unwrap_or_else(|error| fail(&cluster, format!("stop {stopped}: {error:#}")));
    let rows = cluster
        .cli_ok(&[
            "--context",
            "admin",
            "-o",
            "json",
            "admin",
            "node",
            "drain",
            &fuller,
            "--migrate",
            "--allow-new-address",
        ])
        .unwrap_or_else(|error| fail(&cluster, format!("drain --migrate: {error:#}")));
    let rows: Vec<Value> = serde_json::from_str(&rows).expect("drain rows");
    let moved: Vec<&str> = rows
        .iter()
        .filter(|row| row["result"] == "moved")
        .filter_map(|row| row["name"].as_str())
        .collect();
    assert_eq!(moved, leaving, "one row per VPS, all moved: {rows:?}");
    cluster
        .wait_until(
            "every VPS off the drained node, in its power state",
            Duration::from_secs(180),
            |c| {
                let list = c.vps_list()?;
                Ok(list.len() == 3
                    && list.iter().all(|vps| {
                        let wanted = if vps["name"] == stopped.as_str() {
                            "stopped"
                        } else {
                            "running"
                        };
                        vps["node"] != fuller.as_str() && vps["state"] == wanted
                    }))
            },
        )
        .unwrap_or_else(|error| fail(&cluster, format!("{error:#}")));
    let node = cluster
        .node_list()
        .unwrap_or_else(|error| fail(&cluster, format!("{error:#}")))
        .into_iter()
        .find(|node| node["name"] == fuller.as_str())
        .expect("drained node listed");
    assert_eq!(node["vps_count"], 0, "{node}");
    cluster.finish();
}

/// The plan of the live scenarios until pools span nodes: no IPv4 address, so a VPS keeps
/// its addresses (none) on any node and may move live.
const LIVE_PLAN: &str = "live0";

/// Starts a counting loop in its own session (CRIU cannot dump a process left in an exec's
/// session): its count lives in a shell variable, written to /count; /counter.pid is its
/// pid inside the VPS.
fn start_counter(cluster: &MultiNode, name: &str) {
    let out = cluster
        .sh(
            "acme",
            name,
            "setsid sh -c 'echo $$ > /counter.pid; i=0; while true; do i=$((i+1)); \
             echo $i > /count; sleep 0.1; done' >/dev/null 2>&1 </dev/null & sleep 0.5",
        )
        .unwrap_or_else(|error| fail(cluster, format!("{error:#}")));
    if !out.status.success() {
        fail(cluster, format!("starting the counter in {name}: {out:?}"));
    }
}

/// The counter's pid inside the VPS, its count, and what PID 1 inside runs; an error while
/// the VPS does not run.
fn try_counter(cluster: &MultiNode, name: &str) -> anyhow::Result<(String, u64, String)> {
    let out = cluster.sh(
        "acme",
        name,
        "cat /counter.pid; cat /count; tr '\\0' ' ' < /proc/1/cmdline",
    )?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let pid = lines.next().unwrap_or_default().trim().to_owned();
    let count = lines
        .next()
        .and_then(|count| count.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("reading the counter of {name}: {out:?}"))?;
    Ok((
        pid,
        count,
        lines.next().unwrap_or_default().trim().to_owned(),
    ))
}

fn counter(cluster: &MultiNode, name: &str) -> (String, u64, String) {
    try_counter(cluster, name).unwrap_or_else(|error| fail(cluster, format!("{error:#}")))
}

/// Waits until the VPS runs on node `index` (its processes answer there: a VPS recorded
/// there may still await the sweeper's restore) with nothing of it left on the other node.
fn wait_live_on(cluster: &MultiNode, name: &str, vps_id: &str, index: usize, what: &str) {
    wait_whole_on(cluster, name, vps_id, index, what);
    let node = cluster.nodes[index].name.clone();
    cluster
        .wait_until(what, Duration::from_secs(180), |c| {
            let vps = c.json(&["--context", "acme", "show", name])?;
            Ok(vps["node"] == node.as_str()
                && try_counter(c, name).is_ok()
                && !on_node(c, 1 - index, vps_id))
        })
        .unwrap_or_else(|error| fail(cluster, format!("{error:#}")));
}

/// The same processes after a move: the counter's pid inside unchanged, counting on from
/// its memory (a loop started afresh would read lower), still counting, PID 1 the same init.
fn check_same_processes(cluster: &MultiNode, name: &str, before: &(String, u64, String)) {
    let after = counter(cluster, name);
    if after.0 != before.0 || after.1 < before.1 || after.2 != before.2 {
        fail(
            cluster,
            format!("{name}'s processes after the move: {after:?}, before {before:?}"),
        );
    }
    cluster
        .wait_until("the counter to go on", Duration::from_secs(60), |c| {
            Ok(counter(c, name).1 > after.1)
        })
        .unwrap_or_else(|error| fail(cluster, format!("{error:#}")));
}

fn live_args<'a>(vps: &'a str, to: &'a str) -> Vec<&'a str> {
    let mut args = migrate_args(vps, to, false);
    args.push("--live");
    args
}

/// A running VPS moves live between nodes with its processes (same pids inside, memory
/// state) and its files; `kill -9` of the controller right after the source's dump leaves
/// it whole on its source (the sweeper restores the checkpoint the source kept), right after
/// the destination's restore whole on the destination (the sweeper finishes the move); the
/// source agent killed after its dump, or the destination agent after its restore, leave it
/// whole on its source once the agent is back.
#[test]
fn a_running_vps_moves_live_with_its_processes_and_survives_a_controller_kill() {
    if !require_root() {
        return;
    }
    let mut cluster = MultiNode::start(2).expect("start two nodes");
    cluster
        .add_tenant("acme", &[])
        .unwrap_or_else(|error| fail(&cluster, format!("{error:#}")));
    cluster
        .admin_ok(&[
            "plan", "create", LIVE_PLAN, "--vcpus", "0.1", "--memory", "64MiB", "--disk", "256MiB",
            "--pids", "128", "--ipv4", "0",
        ])
        .unwrap_or_else(|error| fail(&cluster, format!("plan: {error:#}")));
    cluster
        .cli_ok(&[
            "--context",
            "acme",
            "create",
            "lv",
            "--plan",
            LIVE_PLAN,
            "--wait",
        ])
        .unwrap_or_else(|error| fail(&cluster, format!("create lv: {error:#}")));
    let lv = show(&cluster, "acme", "lv");
    let (_, second) = placed(&cluster, &lv);
    let vps_id = lv["id"].as_str().unwrap_or_default().to_owned();
    write_files(&cluster, "lv");
    start_counter(&cluster, "lv");
    let before = counter(&cluster, "lv");

    let to = cluster.nodes[second].name.clone();
    let moved = cluster
        .cli_ok(&live_args("lv", &to))
        .unwrap_or_else(|error| fail(&cluster, format!("migrate --live: {error:#}")));
    let moved: Value = serde_json::from_str(&moved).expect("migration JSON");
    assert_eq!(moved["live"], true, "{moved}");
    assert_eq!(moved["addresses_kept"], true, "{moved}");
    assert!(
        moved["live_report"]["transfer_bytes"].as_u64().unwrap_or(0)
            > moved["live_report"]["image_bytes"]
                .as_u64()
                .unwrap_or(u64::MAX),
        "the transfer carries the images and the disk: {moved}"
    );
    wait_whole_on(
        &cluster,
        "lv",
        &vps_id,
        second,
        "lv running on its destination",
    );
    check_same_processes(&cluster, "lv", &before);
    check_files(&cluster, "lv");

    // Killed at the live fault points: the controller after the dump (rolled back onto the
    // source) and after the restore (finished); the source agent after its dump and the
    // destination agent after its restore, before either answered (rolled back once the
    // agent is back). Each move goes from where the VPS is to the other node.
    let cases = [
        ("migrate:after-checkpoint", Victim::Controller, false),
        ("migrate:after-restore", Victim::Controller, true),
        ("migrate:after-dump", Victim::Agent(0), false),
        ("migrate:before-restore-reply", Victim::Agent(1), false),
    ];
    for (fault, victim, moves) in cases {
        let here = placed(&cluster, &show(&cluster, "acme", "lv"));
        let (source, destination) = here;
        let victim = match victim {
            Victim::Controller => Victim::Controller,
            // 0: the source, 1: the destination.
            Victim::Agent(0) => Victim::Agent(source),
            Victim::Agent(_) => Victim::Agent(destination),
        };
        let back = cluster.nodes[destination].name.clone();
        let ends_on = if moves { destination } else { source };
        let before = counter(&cluster, "lv");
        arm(&mut cluster, fault, victim, "the victim");
        let out = cluster.cli(&live_args("lv", &back)).expect("run migrate");
        if out.status.success() {
            fail(
                &cluster,
                format!("migrate with a fault at {fault} succeeded: {out:?}"),
            );
        }
        paddock_tests::poll_until(
            &format!("{victim:?} killed at {fault}"),
            Duration::from_secs(120),
            || {
                Ok(match victim {
                    Victim::Controller => cluster.controller_exited(),
                    Victim::Agent(index) => cluster.agent_exited(index),
                })
            },
        )
        .unwrap_or_else(|error| fail(&cluster, format!("{error:#}")));
        match victim {
            Victim::Controller => cluster.start_controller(),
            Victim::Agent(index) => cluster.start_agent(index),
        }
        .unwrap_or_else(|error| fail(&cluster, format!("restart: {error:#}")));
        wait_live_on(
            &cluster,
            "lv",
            &vps_id,
            ends_on,
            &format!("lv whole on one node after a kill at {fault}"),
        );
        check_same_processes(&cluster, "lv", &before);
        check_files(&cluster, "lv");
    }
    cluster.finish();
}

/// The paddock-owned host routes (protocol 77) in node `index`'s netns, one per line.
fn product_routes(cluster: &MultiNode, index: usize) -> String {
    let out = cluster.node_sh(
        index,
        "ip -4 route show proto 77; ip -6 route show proto 77",
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until node `index` routes `address` via node `via`'s underlay address (the
/// product's `SyncRoutes`, no step of the test).
fn wait_routed(cluster: &MultiNode, index: usize, address: &str, via: usize) {
    let wanted = format!("{address} via {} ", cluster.nodes[via].link_addr);
    cluster
        .wait_until(
            &format!("node {} routing {address} via node {}", index + 1, via + 1),
            Duration::from_secs(60),
            |c| Ok(product_routes(c, index).contains(&wanted)),
        )
        .unwrap_or_else(|error| fail(cluster, format!("{error:#}")));
}

/// Issue 13 items 5/6, address mobility: three nodes share one pool. A on one node and B on
/// another talk TCP through the product's host routes; B cold-migrated to the third node keeps
/// its address with no `--allow-new-address`, and A reaches it at the same address with no
/// manual step; after the deletes no paddock route is left on any node (`finish`).
#[test]
fn a_vps_moved_inside_a_shared_pool_keeps_its_address_and_is_reached_there() {
    if !require_root() {
        return;
    }
    let cluster = MultiNode::start_shared(3).expect("start three nodes sharing a pool");
    cluster
        .add_tenant("acme", &[])
        .unwrap_or_else(|error| fail(&cluster, format!("{error:#}")));
    let prefix = format!("{}.", cluster.shared_prefix.clone().expect("a shared pool"));
    let a = create(&cluster, "acme", "a");
    let b = create(&cluster, "acme", "b");
    let (a_ip, b_ip) = (first_ipv4(&a), first_ipv4(&b));
    assert!(
        a_ip.starts_with(&prefix) && b_ip.starts_with(&prefix),
        "{a_ip} and {b_ip} come from the shared pool {prefix}0/24"
    );
    let node_of = |vps: &Value| {
        let name = vps["node"].as_str().unwrap_or_default();
        cluster
            .node_index(name)
            .unwrap_or_else(|| fail(&cluster, format!("no node {name}")))
    };
    let (a_node, b_node) = (node_of(&a), node_of(&b));
    if a_node == b_node {
        fail(&cluster, "spread placed a and b on the same node");
    }
    let third = (0..3)
        .find(|index| *index != a_node && *index != b_node)
        .expect("a third node");
    wait_routed(&cluster, a_node, &b_ip, b_node);
    wait_routed(&cluster, b_node, &a_ip, a_node);
    wait_routed(&cluster, third, &b_ip, b_node);
    tcp_message(&cluster, "a", "b", &b_ip);
    tcp_message(&cluster, "b", "a", &a_ip);

    let vps_id = b["id"].as_str().unwrap_or_default().to_owned();
    let to = cluster.nodes[third].name.clone();
    let moved = cluster
        .cli_ok(&migrate_args("b", &to, false))
        .unwrap_or_else(|error| fail(&cluster, format!("migrate inside the pool: {error:#}")));
    let moved: Value = serde_json::from_str(&moved).expect("migration JSON");
    assert_eq!(moved["to_node"], to.as_str());
    assert_eq!(moved["addresses_kept"], true, "{moved}");
    assert_eq!(moved["ipv4"][0], b_ip.as_str(), "{moved}");
    cluster
        .wait_until(
            "b running on the third node",
            Duration::from_secs(180),
            |c| {
                let vps = c.json(&["--context", "acme", "show", "b"])?;
                Ok(vps["node"] == to.as_str()
                    && vps["state"] == "running"
                    && init_pid(&vps) != 0
                    && !on_node(c, b_node, &vps_id))
            },
        )
        .unwrap_or_else(|error| fail(&cluster, format!("{error:#}")));
    assert_eq!(first_ipv4(&show(&cluster, "acme", "b")), b_ip);
    // Every node of the pool now routes B's address to the third node; the third no longer.
    wait_routed(&cluster, a_node, &b_ip, third);
    wait_routed(&cluster, b_node, &b_ip, third);
    cluster
        .wait_until(
            "the third node routing b no more",
            Duration::from_secs(60),
            |c| Ok(!product_routes(c, third).contains(&format!("{b_ip} "))),
        )
        .unwrap_or_else(|error| fail(&cluster, format!("{error:#}")));
    tcp_message(&cluster, "a", "b", &b_ip);
    tcp_message(&cluster, "b", "a", &a_ip);
    cluster.finish();
}

/// Runs `script` in `vps` and requires success; its stdout.
fn run_ok(cluster: &MultiNode, vps: &str, script: &str) -> String {
    let out = cluster
        .sh("acme", vps, script)
        .unwrap_or_else(|error| fail(cluster, format!("{error:#}")));
    if !out.status.success() {
        fail(cluster, format!("in {vps}: {script}: {out:?}"));
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Issue 13 item 6 with pools spanning nodes: three nodes share one pool; a TCP connection
/// from A (one node) to B (another) survives a live move of B to the third node (same
/// address, same connection: messages before and after on it), and the controller killed
/// right after B's dump on the way back leaves B whole on the third node with the
/// connection still carrying messages.
#[test]
fn a_tcp_connection_survives_a_live_move_inside_a_shared_pool() {
    if !require_root() {
        return;
    }
    let mut cluster = MultiNode::start_shared(3).expect("start three nodes sharing a pool");
    cluster
        .add_tenant("acme", &[])
        .unwrap_or_else(|error| fail(&cluster, format!("{error:#}")));
    let a = create(&cluster, "acme", "a");
    let b = create(&cluster, "acme", "b");
    let b_ip = first_ipv4(&b);
    let node_of = |cluster: &MultiNode, vps: &Value| {
        let name = vps["node"].as_str().unwrap_or_default();
        cluster
            .node_index(name)
            .unwrap_or_else(|| fail(cluster, format!("no node {name}")))
    };
    let (a_node, b_node) = (node_of(&cluster, &a), node_of(&cluster, &b));
    if a_node == b_node {
        fail(&cluster, "spread placed a and b on the same node");
    }
    let third = (0..3)
        .find(|index| *index != a_node && *index != b_node)
        .expect("a third node");
    wait_routed(&cluster, a_node, &b_ip, b_node);
    // B echoes one connection (in its own session, so CRIU can dump it); A holds that
    // connection open, sending each line appended to /tmp/in and keeping what comes back.
    run_ok(
        &cluster,
        "b",
        "setsid nc -l -p 7100 -e cat >/dev/null 2>&1 </dev/null & sleep 0.5",
    );
    run_ok(
        &cluster,
        "a",
        &format!(
            "touch /tmp/in; setsid sh -c 'tail -f /tmp/in | nc {b_ip} 7100 > /tmp/out' \
             >/dev/null 2>&1 </dev/null & sleep 0.5"
        ),
    );
    let client_pid = run_ok(&cluster, "a", "pidof nc").trim().to_owned();
    let exchange = |cluster: &MultiNode, line: &str| {
        let out = cluster
            .sh("acme", "a", &format!("echo {line} >> /tmp/in"))
            .unwrap_or_else(|error| fail(cluster, format!("{error:#}")));
        assert!(out.status.success(), "{out:?}");
        cluster
            .wait_until(
                &format!("{line} echoed back on the connection"),
                Duration::from_secs(120),
                |c| {
                    let got = c.sh("acme", "a", "cat /tmp/out")?;
                    Ok(String::from_utf8_lossy(&got.stdout)
                        .lines()
                        .any(|seen| seen == line))
                },
            )
            .unwrap_or_else(|error| fail(cluster, format!("{error:#}")));
    };
    exchange(&cluster, "before-the-move");

    let vps_id = b["id"].as_str().unwrap_or_default().to_owned();
    let to = cluster.nodes[third].name.clone();
    let moved = cluster
        .cli_ok(&live_args("b", &to))
        .unwrap_or_else(|error| fail(&cluster, format!("migrate --live: {error:#}")));
    let moved: Value = serde_json::from_str(&moved).expect("migration JSON");
    assert_eq!(moved["live"], true, "{moved}");
    assert_eq!(moved["addresses_kept"], true, "{moved}");
    assert_eq!(moved["ipv4"][0], b_ip.as_str(), "{moved}");
    cluster
        .wait_until("b on the third node", Duration::from_secs(180), |c| {
            let vps = c.json(&["--context", "acme", "show", "b"])?;
            Ok(vps["node"] == to.as_str() && !on_node(c, b_node, &vps_id))
        })
        .unwrap_or_else(|error| fail(&cluster, format!("{error:#}")));
    wait_routed(&cluster, a_node, &b_ip, third);
    exchange(&cluster, "after-the-move");
    assert_eq!(
        run_ok(&cluster, "a", "pidof nc").trim(),
        client_pid,
        "the same client, on the same connection"
    );

    // The controller killed right after B's dump on a move back: rolled back, B restored
    // on the third node from the images it kept, the connection still up.
    let back = cluster.nodes[b_node].name.clone();
    arm(
        &mut cluster,
        "migrate:after-checkpoint",
        Victim::Controller,
        "the controller",
    );
    let out = cluster.cli(&live_args("b", &back)).expect("run migrate");
    if out.status.success() {
        fail(
            &cluster,
            format!("migrate with the controller killed succeeded: {out:?}"),
        );
    }
    paddock_tests::poll_until(
        "the controller killed after the dump",
        Duration::from_secs(120),
        || Ok(cluster.controller_exited()),
    )
    .unwrap_or_else(|error| fail(&cluster, format!("{error:#}")));
    cluster
        .start_controller()
        .unwrap_or_else(|error| fail(&cluster, format!("restart: {error:#}")));
    cluster
        .wait_until("b whole on the third node", Duration::from_secs(180), |c| {
            let vps = c.json(&["--context", "acme", "show", "b"])?;
            let restored = c.sh("acme", "b", "true")?.status.success();
            Ok(vps["node"] == to.as_str() && restored && !on_node(c, b_node, &vps_id))
        })
        .unwrap_or_else(|error| fail(&cluster, format!("{error:#}")));
    exchange(&cluster, "after-the-rollback");
    assert_eq!(run_ok(&cluster, "a", "pidof nc").trim(), client_pid);
    cluster.finish();
}
