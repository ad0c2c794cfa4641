//! Several controllers on one etcd cluster, as real processes: a 3-member etcd on loopback
//! ports, 3 `paddock-controller`s sharing its prefix (and a copy of one data dir: CA, join
//! token) and a fake node agent that heartbeats to one of them and fails over to the next.
//! `kill -9` of the leader during 100 concurrent creates across tenants loses nothing that
//! was acknowledged, puts no tenant over quota, gives no address twice and leaves the event
//! log without gap or repeat; another controller takes over the reconcile; a frozen etcd
//! member (SIGSTOP) changes nothing visible; a watch through one controller sees what the
//! leader's reconcile recorded.

mod common;
#[path = "common/fake_agent.rs"]
mod fake_agent;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::daemon::{Daemon, Setup};
use common::etcd_server::EtcdCluster;
use common::with_token;
use fake_agent::FakeAgent;
use paddock_controller::store::{EtcdStore, Store};
use paddock_proto::v1;
use tonic::transport::Channel;

const PREFIX: &str = "/paddock-cluster/";
const TENANTS: usize = 5;
const MAX_VPS: u32 = 10;
const CREATES: usize = 100;
/// Generous: the test machine is shared and loaded.
const DEADLINE: Duration = Duration::from_secs(120);

/// The listen address in the leader key, if someone leads.
async fn leader(endpoints: &[String]) -> Option<String> {
    let mut client = etcd_client::Client::connect(endpoints, None).await.ok()?;
    let response = client.get(format!("{PREFIX}leader"), None).await.ok()?;
    response
        .kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
}

/// Which of `setups` the leader key names (by its port), if any.
async fn leader_of(endpoints: &[String], setups: &[&Setup]) -> Option<usize> {
    let address = leader(endpoints).await?;
    setups
        .iter()
        .position(|setup| address.ends_with(&format!(":{}", setup.port)))
}

/// Waits until `check` returns something, or panics naming `what`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn vps_client(channel: &Channel) -> v1::vps_service_client::VpsServiceClient<Channel> {
    v1::vps_service_client::VpsServiceClient::new(channel.clone())
}

async fn get_vps(channel: &Channel, admin: &str, tenant: &str, name: &str) -> Option<v1::Vps> {
    vps_client(channel)
        .get_vps(with_token(
            v1::VpsRef {
                tenant: tenant.into(),
                name: name.into(),
            },
            admin,
        ))
        .await
        .ok()
        .map(|response| response.into_inner())
}

/// The `paddock` CLI binary: in `PADDOCK_BIN_DIR`, else next to this test's directory
/// (`target/debug/paddock`, built by `make test` before the tests).
fn cli_binary() -> Option<std::path::PathBuf> {
    let dir = match std::env::var_os("PADDOCK_BIN_DIR") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::env::current_exe()
            .ok()?
            .parent()?
            .parent()?
            .to_path_buf(),
    };
    let binary = dir.join("paddock");
    binary.is_file().then_some(binary)
}

/// `GET /metrics` of the endpoint at `address` (plain HTTP/1.0).
async fn scrape(address: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await.ok()?;
    body.contains("paddock_leader").then_some(body)
}

/// The controllers' logs, for a failure message.
fn logs(setups: &[&Setup]) -> String {
    setups
        .iter()
        .enumerate()
        .map(|(index, setup)| {
            let log = std::fs::read_to_string(setup.dir.path().join("controller.log"))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("--- controller {index} ---\n{}", tail.join("\n"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Creates `name` for `tenant` through `channel` and watches it there until the node reports
/// it running (what `paddock create --wait` does); false if it never did.
async fn create_and_wait_running(channel: &Channel, admin: &str, tenant: &str, name: &str) -> bool {
    vps_client(channel)
        .create_vps(with_token(
            v1::CreateVpsRequest {
                tenant: tenant.into(),
                name: name.into(),
                plan: "nano".into(),
                start: true,
                ..Default::default()
            },
            admin,
        ))
        .await
        .unwrap_or_else(|status| panic!("create {name}: {status:?}"));
    let mut stream = vps_client(channel)
        .watch_vps(with_token(
            v1::WatchVpsRequest {
                tenant: tenant.into(),
                name: name.into(),
            },
            admin,
        ))
        .await
        .unwrap_or_else(|status| panic!("watch {name}: {status:?}"))
        .into_inner();
    let running = tokio::time::timeout(DEADLINE, async {
        while let Some(event) = stream.message().await.expect("watch stream") {
            if event
                .vps
                .as_ref()
                .is_some_and(|vps| vps.state() == v1::VpsState::Running)
            {
                return true;
            }
        }
        false
    })
    .await;
    running == Ok(true)
}

/// Three controllers on the etcd cluster (`leader_lease_secs = 3`), a fake agent `node`
/// enrolled with all three in its list, and a pool `10.<octet>.0.0/16` on it.
struct Trio {
    first: Setup,
    replicas: [Setup; 2],
    daemons: Vec<Option<Daemon>>,
    channels: Vec<Channel>,
    admin: String,
    urls: Vec<String>,
    agent: FakeAgent,
}

impl Trio {
    async fn start(etcd: &EtcdCluster, node: &str, octet: u8) -> Trio {
        let endpoints = etcd.endpoints();
        let quoted: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
        let extra = format!(
            "store = \"etcd\"\netcd_endpoints = [{}]\netcd_prefix = \"{PREFIX}\"\nleader_lease_secs = 3\nheartbeat_interval_secs = 1\nnode_offline_after_secs = 15",
            quoted.join(", ")
        );
        let first = Setup::init_with(&extra);
        let replicas = [first.replica(&extra), first.replica(&extra)];
        let mut daemons = Vec::new();
        let mut channels = Vec::new();
        let mut urls = Vec::new();
        for setup in std::iter::once(&first).chain(replicas.iter()) {
            let (daemon, channel) = setup.launch().await;
            daemons.push(Some(daemon));
            channels.push(channel);
            urls.push(format!("https://127.0.0.1:{}", setup.port));
        }
        let admin = first.admin.clone();
        let agent = FakeAgent::start(
            node,
            urls.clone(),
            &first.ca_pem,
            &first.join,
            Duration::from_millis(500),
        )
        .await;
        v1::pool_service_client::PoolServiceClient::new(channels[0].clone())
            .create_pool(with_token(
                v1::CreatePoolRequest {
                    pool: Some(v1::Pool {
                        name: format!("pool-{node}"),
                        node: node.into(),
                        cidr: format!("10.{octet}.0.0/16"),
                        gateway: format!("10.{octet}.0.1"),
                        ..Default::default()
                    }),
                },
                &admin,
            ))
            .await
            .expect("pool");
        Trio {
            first,
            replicas,
            daemons,
            channels,
            admin,
            urls,
            agent,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_controllers_survive_a_leader_kill_and_a_frozen_etcd_member() {
    let Some(mut etcd) = EtcdCluster::start(3) else {
        return;
    };
    let Trio {
        first,
        replicas,
        mut daemons,
        channels,
        admin,
        urls: _,
        agent,
    } = Trio::start(&etcd, "node-f", 203).await;
    let endpoints = etcd.endpoints();
    let setups: Vec<&Setup> = std::iter::once(&first).chain(replicas.iter()).collect();
    // t0..t4 for the concurrent creates; `late` for the ones after the kill.
    let tenant_names = (0..TENANTS)
        .map(|index| format!("t{index}"))
        .chain(["late".to_owned()]);
    for (index, name) in tenant_names.enumerate() {
        v1::tenant_service_client::TenantServiceClient::new(channels[index % 3].clone())
            .create_tenant(with_token(
                v1::CreateTenantRequest {
                    name,
                    quota: Some(v1::Quota {
                        max_vps: MAX_VPS,
                        vcpus: 1000.0,
                        memory_bytes: 1 << 42,
                        disk_bytes: 1 << 46,
                        ipv4_count: 1000,
                    }),
                },
                &admin,
            ))
            .await
            .expect("tenant");
    }

    // Exactly one leader, one of the three.
    let old_leader = eventually("a leader", || leader_of(&endpoints, &setups)).await;
    // The metrics say the same: exactly one controller reports `paddock_leader 1`.
    let mut leading = Vec::new();
    for setup in &setups {
        let config = std::fs::read_to_string(&setup.config).expect("config");
        let metrics = config
            .lines()
            .find_map(|line| line.strip_prefix("metrics_listen = \""))
            .map(|rest| rest.trim_end_matches('"').to_owned())
            .expect("metrics_listen");
        let body = eventually("the metrics endpoint", || {
            let metrics = metrics.clone();
            async move { scrape(&metrics).await }
        })
        .await;
        leading.push(body.contains("\npaddock_leader 1\n"));
    }
    assert_eq!(
        leading,
        (0..3).map(|index| index == old_leader).collect::<Vec<_>>(),
        "paddock_leader is 1 on the leader only"
    );
    // The node is online through every controller, whichever one its heartbeats reach.
    for channel in &channels {
        eventually("the node online through every controller", || async {
            let node = v1::node_service_client::NodeServiceClient::new(channel.clone())
                .get_node(with_token(
                    v1::GetNodeRequest {
                        name: "node-f".into(),
                    },
                    &admin,
                ))
                .await
                .ok()?
                .into_inner();
            (node.status() == v1::NodeStatus::Online).then_some(())
        })
        .await;
    }
    // Only the leader drives migrations (a follower's sweeper would otherwise roll back a
    // move the leader is driving): a follower refuses one as unavailable, before looking
    // at what it names.
    let refused =
        v1::node_service_client::NodeServiceClient::new(channels[(old_leader + 1) % 3].clone())
            .migrate_vps(with_token(
                v1::MigrateVpsRequest {
                    tenant: "t0".into(),
                    name: "absent".into(),
                    to_node: String::new(),
                    ..Default::default()
                },
                &admin,
            ))
            .await
            .expect_err("a follower drove a migration");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("does not lead"), "{refused:?}");
    // A billing follower on a controller that survives: it must hear every other
    // controller's events, in order, once.
    let follower_index = (old_leader + 1) % 3;
    let mut events =
        v1::billing_service_client::BillingServiceClient::new(channels[follower_index].clone())
            .watch_events(with_token(
                v1::WatchEventsRequest {
                    after_cursor: 0,
                    tenant: String::new(),
                },
                &admin,
            ))
            .await
            .expect("watch events")
            .into_inner();
    let followed: Arc<Mutex<Vec<u64>>> = Arc::default();
    let following = {
        let followed = followed.clone();
        tokio::spawn(async move {
            while let Ok(Some(event)) = events.message().await {
                followed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(event.cursor);
            }
        })
    };

    // 100 concurrent creates over 5 tenants (20 each, quota 10) through all three
    // controllers; the leader is killed once some have been acknowledged.
    let acknowledged: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let acks = Arc::new(AtomicUsize::new(0));
    let mut creates = Vec::new();
    for index in 0..CREATES {
        let channel = channels[index % 3].clone();
        let (admin, acknowledged, acks) = (admin.clone(), acknowledged.clone(), acks.clone());
        creates.push(tokio::spawn(async move {
            let tenant = format!("t{}", index % TENANTS);
            let name = format!("v{index:03}");
            let created = vps_client(&channel)
                .create_vps(with_token(
                    v1::CreateVpsRequest {
                        tenant: tenant.clone(),
                        name: name.clone(),
                        plan: "nano".into(),
                        start: true,
                        ..Default::default()
                    },
                    &admin,
                ))
                .await;
            match created {
                Ok(_) => {
                    acknowledged
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((tenant, name));
                    acks.fetch_add(1, Ordering::SeqCst);
                    None
                }
                Err(status) => Some(status.code()),
            }
        }));
    }
    eventually("some creates acknowledged", || async {
        (acks.load(Ordering::SeqCst) >= 10).then_some(())
    })
    .await;
    if let Some(daemon) = daemons[old_leader].take() {
        daemon.kill();
    }
    let mut refusals: BTreeMap<String, usize> = BTreeMap::new();
    for create in creates {
        if let Some(code) = create.await.expect("create task") {
            *refusals.entry(format!("{code:?}")).or_default() += 1;
        }
    }
    let acknowledged = acknowledged.lock().expect("acks").clone();
    assert!(
        refusals.get("FailedPrecondition").copied().unwrap_or(0) > 0,
        "some creates went over quota and were refused: {refusals:?}"
    );

    // What the store holds: every acknowledged VPS, no tenant over quota, no address twice,
    // cursors 1..=n.
    let store = EtcdStore::open(&endpoints, PREFIX).expect("open the shared store");
    for (tenant, name) in &acknowledged {
        assert!(
            store.find_vps(tenant, name).expect("find").is_some(),
            "acknowledged {tenant}/{name} exists"
        );
    }
    let all = store.list_vps(None).expect("list");
    for index in 0..TENANTS {
        let tenant = format!("t{index}");
        let count = all.iter().filter(|vps| vps.tenant == tenant).count();
        assert!(
            count <= MAX_VPS as usize,
            "{tenant} has {count} VPSes, quota {MAX_VPS}"
        );
        let record = store.get_tenant(&tenant).expect("get").expect("tenant");
        assert_eq!(record.used.max_vps as usize, count, "{tenant}'s usage");
    }
    let mut addresses = BTreeSet::new();
    for vps in &all {
        for address in &vps.ipv4 {
            assert!(addresses.insert(address.clone()), "{address} given twice");
        }
    }
    assert!(!addresses.is_empty(), "the VPSes got addresses");
    let cursors: Vec<u64> = store
        .list_events(0, 100_000)
        .expect("events")
        .iter()
        .map(|event| event.cursor)
        .collect();
    assert_eq!(
        cursors,
        (1..=cursors.len() as u64).collect::<Vec<_>>(),
        "event cursors without gap or repeat"
    );

    // Another controller takes over: the leader key names a survivor.
    let new_leader = eventually("a new leader", || async {
        leader_of(&endpoints, &setups)
            .await
            .filter(|index| *index != old_leader)
    })
    .await;
    let other = (0..3)
        .find(|index| *index != old_leader && *index != new_leader)
        .expect("a third controller");

    // The follower on a survivor heard every event, in order, once (it may lag: wait).
    let last = *cursors.last().expect("events");
    eventually("the follower to catch up", || async {
        let seen = followed.lock().unwrap_or_else(|e| e.into_inner()).clone();
        (seen.last().copied() >= Some(last)).then_some(())
    })
    .await;
    let seen = followed.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(
        seen,
        (1..=seen.len() as u64).collect::<Vec<_>>(),
        "the follower's cursors are strictly increasing without gap or repeat"
    );

    // Reconcile works again: a VPS created through the non-leader after the kill reaches the
    // node, and the watch through that controller sees the state the leader recorded.
    assert!(
        create_and_wait_running(&channels[other], &admin, "late", "after-kill").await,
        "the watch through a follower saw after-kill running (recorded by the new leader's reconcile)\n{}",
        logs(&setups)
    );
    let after = store
        .find_vps("late", "after-kill")
        .expect("find")
        .expect("created");
    assert!(
        agent.applied(&after.vps_id).is_some(),
        "the node runs the VPS created after the kill"
    );
    // The acknowledged creates of before the kill reach the node too (the new leader's
    // first pass covers every node).
    for (tenant, name) in &acknowledged {
        let vps_id = store
            .find_vps(tenant, name)
            .expect("find")
            .expect("exists")
            .vps_id;
        eventually("every acknowledged VPS on the node", || async {
            agent.applied(&vps_id).map(|_| ())
        })
        .await;
    }
    // The CLI with a context listing the dead controller first: it moves on to a live one,
    // and `create --wait` ends when the leader's reconcile recorded the VPS running.
    match cli_binary() {
        Some(cli) => {
            let controllers = format!(
                "https://127.0.0.1:{},https://127.0.0.1:{}",
                setups[old_leader].port, setups[other].port
            );
            let output = tokio::process::Command::new(cli)
                .args([
                    "create",
                    "by-cli",
                    "--plan",
                    "nano",
                    "--tenant",
                    "late",
                    "--wait",
                    "--timeout",
                    "120",
                ])
                .env("PADDOCK_CONFIG", first.dir.path().join("cli.toml"))
                .env("PADDOCK_CONTROLLER", &controllers)
                .env("PADDOCK_TOKEN", &admin)
                .env("PADDOCK_CA_CERT", first.dir.path().join("data/tls/ca.crt"))
                .output()
                .await
                .expect("run paddock");
            assert!(
                output.status.success(),
                "paddock create --wait through the surviving controllers: {}\n{}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                logs(&setups)
            );
            let by_cli = get_vps(&channels[new_leader], &admin, "late", "by-cli")
                .await
                .expect("by-cli exists");
            assert_eq!(by_cli.state(), v1::VpsState::Running);
        }
        None => {
            assert!(
                std::env::var("PADDOCK_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
                "the paddock CLI is not built (make test builds every binary first)"
            );
            eprintln!("skipping the CLI part: target/debug/paddock is not built");
        }
    }
    assert!(
        agent
            .heartbeat_target()
            .is_some_and(|index| index != old_leader),
        "the agent moved its heartbeats off the dead controller"
    );

    // A frozen etcd member changes nothing visible: creates, watches and reads still work
    // through both survivors.
    etcd.stop(2);
    for (index, name) in [(other, "frozen-member-1"), (new_leader, "frozen-member-2")] {
        assert!(
            create_and_wait_running(&channels[index], &admin, "late", name).await,
            "{name} created through controller {index} was seen running there\n{}",
            logs(&setups)
        );
    }
    assert!(
        get_vps(&channels[new_leader], &admin, "late", "frozen-member-1")
            .await
            .is_some()
    );
    etcd.cont(2);
    following.abort();
}

/// The CLI's waits and event streams outlive the controller they use: `create --wait` attached
/// to the leader, killed -9 while the node holds the VPS pending, completes through another
/// controller of its context; `admin events --follow` across the same kill prints every event
/// once, in cursor order, without a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_waits_and_event_follows_move_to_another_controller_when_theirs_dies() {
    use tokio::io::AsyncBufReadExt;

    let Some(cli) = cli_binary() else {
        assert!(
            std::env::var("PADDOCK_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
            "the paddock CLI is not built (make test builds every binary first)"
        );
        eprintln!("skipping: target/debug/paddock is not built");
        return;
    };
    let Some(etcd) = EtcdCluster::start(1) else {
        return;
    };
    let Trio {
        first,
        replicas,
        mut daemons,
        channels,
        admin,
        urls,
        agent,
    } = Trio::start(&etcd, "node-c", 204).await;
    let endpoints = etcd.endpoints();
    let setups: Vec<&Setup> = std::iter::once(&first).chain(replicas.iter()).collect();
    v1::tenant_service_client::TenantServiceClient::new(channels[0].clone())
        .create_tenant(with_token(
            v1::CreateTenantRequest {
                name: "cli".into(),
                quota: None,
            },
            &admin,
        ))
        .await
        .expect("tenant");
    let leading = eventually("a leader", || leader_of(&endpoints, &setups)).await;
    // The CLI's context lists the leader first: it is the controller the CLI attaches to.
    let order: Vec<usize> = (0..3).map(|step| (leading + step) % 3).collect();
    let context: Vec<String> = order.iter().map(|index| urls[*index].clone()).collect();
    let paddock = |args: &[&str]| {
        let mut command = tokio::process::Command::new(&cli);
        command
            .args(args)
            .env("PADDOCK_CONFIG", first.dir.path().join("cli.toml"))
            .env("PADDOCK_CONTROLLER", context.join(","))
            .env("PADDOCK_TOKEN", &admin)
            .env("PADDOCK_CA_CERT", first.dir.path().join("data/tls/ca.crt"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        command
    };

    // A follower of every event from the start, printing one JSON line per event.
    let mut follower = paddock(&["admin", "events", "--follow", "-o", "json"])
        .spawn()
        .expect("run paddock admin events --follow");
    let followed: Arc<Mutex<Vec<u64>>> = Arc::default();
    let reading = {
        let followed = followed.clone();
        let mut lines = tokio::io::BufReader::new(follower.stdout.take().expect("stdout")).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let event: serde_json::Value =
                    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
                followed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(event["cursor"].as_u64().expect("cursor"));
            }
        })
    };

    // The node holds the VPS pending; the CLI waits for it to run, attached to the leader.
    agent.hold_applies(true);
    let waiting = paddock(&[
        "create",
        "held",
        "--plan",
        "nano",
        "--tenant",
        "cli",
        "--wait",
        "--timeout",
        "120",
        "-o",
        "json",
    ])
    .spawn()
    .expect("run paddock create --wait");
    let store = EtcdStore::open(&endpoints, PREFIX).expect("open the shared store");
    let created = eventually("the create acknowledged", || async {
        store.find_vps("cli", "held").ok().flatten()
    })
    .await;
    // The follower has printed the create's event: both streams are mid-way at the kill.
    let before_kill = store.list_events(0, 100_000).expect("events").len() as u64;
    eventually("the follower to print the create", || async {
        let seen = followed.lock().unwrap_or_else(|e| e.into_inner()).len() as u64;
        (seen >= before_kill).then_some(())
    })
    .await;
    if let Some(daemon) = daemons[leading].take() {
        daemon.kill();
    }
    // Events after the kill, through a survivor.
    let survivor = order[1];
    for index in 0..3 {
        vps_client(&channels[survivor])
            .create_vps(with_token(
                v1::CreateVpsRequest {
                    tenant: "cli".into(),
                    name: format!("after-{index}"),
                    plan: "nano".into(),
                    start: false,
                    ..Default::default()
                },
                &admin,
            ))
            .await
            .expect("create through a survivor");
    }
    agent.hold_applies(false);

    let output = tokio::time::timeout(DEADLINE, waiting.wait_with_output())
        .await
        .expect("create --wait ended in time")
        .expect("create --wait");
    assert!(
        output.status.success(),
        "paddock create --wait across the kill of its controller: {}\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        logs(&setups)
    );
    let shown: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(shown["state"], "running", "{shown}");
    assert!(agent.applied(&created.vps_id).is_some());

    let cursors: Vec<u64> = store
        .list_events(0, 100_000)
        .expect("events")
        .iter()
        .map(|event| event.cursor)
        .collect();
    assert!(cursors.len() as u64 > before_kill, "events after the kill");
    let last = *cursors.last().expect("events");
    eventually("the follower to print every event", || async {
        let seen = followed.lock().unwrap_or_else(|e| e.into_inner()).clone();
        (seen.last().copied() >= Some(last)).then_some(())
    })
    .await;
    let seen = followed.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(
        seen, cursors,
        "the follower printed every event once, in cursor order, across the kill"
    );
    follower.kill().await.expect("stop the follower");
    reading.abort();
}
