//! `NodeService.MigrateVps` over the real API, with nodes whose agents are unreachable: what
//! is refused before anything moves (and changes nothing), and what a move that cannot
//! reach its source leaves (the VPS where it was, held against tenant changes until the
//! destination is known clean). The moves themselves run in `tests/tests/migrate.rs`.
//!
//! Live moves between fake agents ([`fake_agent`]): refused up front where the addresses
//! would change, CRIU's refusal with and without `--allow-cold`, the rollback when the
//! destination cannot restore (the source asked to restore what it kept), and the sweeper
//! settling live moves interrupted at their new phases.

mod common;
#[path = "common/fake_agent.rs"]
mod fake_agent;

use std::time::Duration;

use common::{start, with_token, Api};
use fake_agent::FakeAgent;
use paddock_controller::model::migration::{self, MigrationPhase, MigrationRecord};
use paddock_controller::model::{EventKind, Observed, Power};
use paddock_proto::v1;
use paddock_proto::v1::node_service_client::NodeServiceClient;
use tonic::Code;

/// Registers node-b (agent unreachable) with the pool `10.201.0.0/16`.
async fn add_node_b(api: &Api) {
    let channel = api.enrol("node-b").await;
    v1::agent_registry_client::AgentRegistryClient::new(channel)
        .register(tonic::Request::new(v1::RegisterRequest {
            node_name: "node-b".into(),
            address: "http://127.0.0.1:9".into(),
            capacity: Some(v1::NodeCapacityReport {
                vcpus: 64.0,
                memory_bytes: 1 << 40,
                disk_bytes: 1 << 44,
            }),
            agent_version: "test".into(),
        }))
        .await
        .expect("register node-b");
    api.create_pool(v1::Pool {
        name: "pool-b".into(),
        node: "node-b".into(),
        cidr: "10.201.0.0/16".into(),
        gateway: "10.201.0.1".into(),
        nat: true,
        ..v1::Pool::default()
    })
    .await
    .expect("pool-b");
}

fn migrate(to_node: &str, allow_new_address: bool) -> v1::MigrateVpsRequest {
    v1::MigrateVpsRequest {
        tenant: "acme".into(),
        name: "web".into(),
        to_node: to_node.into(),
        allow_new_address,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_change_nothing_and_a_failed_move_keeps_the_vps_where_it_was() {
    let api = start().await;
    let acme = api.tenant("acme", 10).await;
    let web = api.create_vps(&acme, "", "web").await.expect("create web");
    assert_eq!(web.node, "node-a");
    add_node_b(&api).await;
    let nodes = || NodeServiceClient::new(api.channel.clone());
    let before = api.store.dump().expect("dump");

    // A tenant may not move VPSes, not even its own.
    let denied = nodes()
        .migrate_vps(with_token(migrate("node-b", true), &acme))
        .await
        .expect_err("tenant");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    // Unknown node, same node.
    let unknown = nodes()
        .migrate_vps(with_token(migrate("node-z", true), &api.admin))
        .await
        .expect_err("unknown node");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    let same = nodes()
        .migrate_vps(with_token(migrate("node-a", true), &api.admin))
        .await
        .expect_err("same node");
    assert_eq!(same.code(), Code::FailedPrecondition, "{same:?}");
    // The address cannot move to node-b: refused up front, naming both addresses.
    let renumber = nodes()
        .migrate_vps(with_token(migrate("node-b", false), &api.admin))
        .await
        .expect_err("address change");
    assert_eq!(renumber.code(), Code::FailedPrecondition, "{renumber:?}");
    let message = renumber.message();
    assert!(
        message.contains(&web.ipv4[0])
            && message.contains("10.201.0.2")
            && message.contains("--allow-new-address"),
        "{message}"
    );
    // Snapshots stay on their node: a VPS with one is refused, naming it.
    api.store
        .reserve_snapshot(
            &web.id,
            &paddock_controller::model::snapshots::SnapshotRecord {
                name: "before-move".into(),
                state: paddock_controller::model::snapshots::SnapshotState::Ready,
                created_at: chrono::Utc::now(),
                size_bytes: 0,
                allocated_bytes: 0,
                method: "sparse".into(),
                duration_ms: 0,
            },
        )
        .expect("snapshot record");
    let with_snapshot = nodes()
        .migrate_vps(with_token(migrate("node-b", true), &api.admin))
        .await
        .expect_err("snapshot");
    assert_eq!(with_snapshot.code(), Code::FailedPrecondition);
    assert!(
        with_snapshot.message().contains("before-move"),
        "{with_snapshot:?}"
    );
    api.store
        .remove_snapshot(&web.id, "before-move", None)
        .expect("remove snapshot record");
    let after = api.store.dump().expect("dump");
    let changed: Vec<_> = after
        .iter()
        .filter(|entry| !before.contains(entry) && entry.0 != "audit" && entry.0 != "nodes")
        .collect();
    assert!(changed.is_empty(), "a refused move changed {changed:?}");

    // Allowed, but node-a's agent is unreachable: the stop fails, the move is rolled back
    // as far as it can be; the VPS stays on node-a with its address and desired power.
    let failed = nodes()
        .migrate_vps(with_token(migrate("node-b", true), &api.admin))
        .await
        .expect_err("unreachable source");
    assert_eq!(failed.code(), Code::Aborted, "{failed:?}");
    assert!(failed.message().contains("rolled back"), "{failed:?}");
    let vps = api.store.get_vps(&web.id).expect("get").expect("web");
    assert_eq!(vps.node, "node-a");
    assert_eq!(vps.ipv4, web.ipv4);
    assert_eq!(vps.desired_power, paddock_controller::model::Power::Running);
    // Node-b may hold a copy the controller could not delete (its agent is unreachable too):
    // the move stays recorded as rolling back, its reservation held, and the VPS is held
    // against tenant changes until the sweeper has cleaned node-b.
    let pending = api.store.get_migration(&web.id).expect("get migration");
    let pending = pending.expect("recorded until node-b is clean");
    assert_eq!(
        pending.phase,
        paddock_controller::model::migration::MigrationPhase::RollingBack
    );
    let stop = api
        .vps()
        .stop_vps(with_token(
            v1::VpsRef {
                tenant: String::new(),
                name: "web".into(),
            },
            &acme,
        ))
        .await
        .expect_err("held while migrating");
    assert_eq!(stop.code(), Code::FailedPrecondition, "{stop:?}");
    assert!(stop.message().contains("being migrated"), "{stop:?}");
    let again = nodes()
        .migrate_vps(with_token(migrate("node-b", true), &api.admin))
        .await
        .expect_err("one move at a time");
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");

    // Every attempt is audited with its outcome and target.
    let audit = v1::audit_service_client::AuditServiceClient::new(api.channel.clone())
        .list_audit(with_token(v1::ListAuditRequest { page: None }, &api.admin))
        .await
        .expect("audit")
        .into_inner();
    let migrations: Vec<(&str, &str)> = audit
        .entries
        .iter()
        .filter(|entry| entry.method.ends_with("MigrateVps"))
        .map(|entry| (entry.target.as_str(), entry.result.as_str()))
        .collect();
    assert!(migrations.len() >= 7, "{migrations:?}");
    assert!(
        migrations.iter().all(|(target, _)| *target == "acme/web"),
        "{migrations:?}"
    );
    assert!(
        migrations
            .iter()
            .any(|(_, result)| *result == "FailedPrecondition"),
        "{migrations:?}"
    );
}

/// Two fake nodes (`node-b`, `node-c`, each with a pool) beside the unreachable, cordoned
/// node-a, and the plan `noip` (no IPv4 address, so its VPSes keep their addresses anywhere).
struct LiveCluster {
    api: Api,
    acme: String,
    b: FakeAgent,
    c: FakeAgent,
}

impl LiveCluster {
    async fn start() -> Self {
        let api = start().await;
        let acme = api.tenant("acme", 10).await;
        let controller = format!("https://127.0.0.1:{}", api.port);
        let fake = |node: &'static str| {
            FakeAgent::start(
                node,
                vec![controller.clone()],
                &api.ca_pem,
                &api.join,
                Duration::from_millis(300),
            )
        };
        let b = fake("node-b").await;
        let c = fake("node-c").await;
        for (node, octet) in [("node-b", 201), ("node-c", 202)] {
            api.create_pool(v1::Pool {
                name: format!("pool-{node}"),
                node: node.into(),
                cidr: format!("10.{octet}.0.0/16"),
                gateway: format!("10.{octet}.0.1"),
                nat: true,
                ..v1::Pool::default()
            })
            .await
            .expect("pool");
        }
        NodeServiceClient::new(api.channel.clone())
            .drain_node(with_token(
                v1::GetNodeRequest {
                    name: "node-a".into(),
                },
                &api.admin,
            ))
            .await
            .expect("cordon node-a");
        v1::plan_service_client::PlanServiceClient::new(api.channel.clone())
            .create_plan(with_token(
                v1::CreatePlanRequest {
                    plan: Some(v1::Plan {
                        name: "noip".into(),
                        resources: Some(v1::Resources {
                            vcpus: 1.0,
                            memory_bytes: 256 << 20,
                            disk_bytes: 2 << 30,
                            pids_max: 512,
                            ..v1::Resources::default()
                        }),
                        ..v1::Plan::default()
                    }),
                },
                &api.admin,
            ))
            .await
            .expect("plan noip");
        Self { api, acme, b, c }
    }

    /// Creates `name` on plan `plan` and waits until its node runs it.
    async fn create(&self, name: &str, plan: &str) -> v1::Vps {
        let vps = self
            .api
            .vps()
            .create_vps(with_token(
                v1::CreateVpsRequest {
                    name: name.into(),
                    plan: plan.into(),
                    start: true,
                    ..v1::CreateVpsRequest::default()
                },
                &self.acme,
            ))
            .await
            .expect("create")
            .into_inner();
        assert_ne!(vps.node, "node-a", "node-a is cordoned");
        let agent = self.agent(&vps.node);
        wait_for(&format!("{name} running on {}", vps.node), || {
            agent
                .applied(&vps.id)
                .is_some_and(|status| status.state() == v1::AgentVpsState::Running)
        })
        .await;
        // And the controller's record of that apply written (nothing moves under a test
        // that compares the store before and after).
        wait_for(&format!("{name} recorded running"), || {
            let stored = self.stored(&vps.id);
            stored.applied_spec.is_some()
                && stored
                    .observed
                    .is_some_and(|observed| observed.state == Observed::Running)
        })
        .await;
        vps
    }

    fn agent(&self, node: &str) -> &FakeAgent {
        match node {
            "node-b" => &self.b,
            "node-c" => &self.c,
            other => panic!("no fake agent for {other}"),
        }
    }

    fn other(node: &str) -> &'static str {
        if node == "node-b" {
            "node-c"
        } else {
            "node-b"
        }
    }

    async fn migrate(
        &self,
        name: &str,
        to_node: &str,
        allow_new_address: bool,
        allow_cold: bool,
    ) -> Result<v1::Migration, tonic::Status> {
        NodeServiceClient::new(self.api.channel.clone())
            .migrate_vps(with_token(
                v1::MigrateVpsRequest {
                    tenant: "acme".into(),
                    name: name.into(),
                    to_node: to_node.into(),
                    allow_new_address,
                    live: true,
                    allow_cold,
                },
                &self.api.admin,
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    fn stored(&self, vps_id: &str) -> paddock_controller::model::VpsRecord {
        self.api.store.get_vps(vps_id).expect("get").expect("VPS")
    }

    /// The kinds of every event so far.
    fn events(&self) -> Vec<EventKind> {
        self.api
            .store
            .list_events(0, 10_000)
            .expect("events")
            .into_iter()
            .map(|event| event.kind)
            .collect()
    }

    /// Whether an event of `kind` was appended after the first `since`.
    fn appended(&self, since: usize, kind: EventKind) -> bool {
        self.events().iter().skip(since).any(|seen| *seen == kind)
    }
}

/// Polls `condition` (generously: the machine is loaded) until it holds.
async fn wait_for(what: &str, condition: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn running(agent: &FakeAgent, vps_id: &str) -> bool {
    agent
        .applied(vps_id)
        .is_some_and(|status| status.state() == v1::AgentVpsState::Running)
}

/// What a migration plan would change: VPS records, migrations, pools and the nodes'
/// allocation summaries (heartbeats and route syncs write elsewhere meanwhile).
fn settled_state(api: &Api) -> Vec<paddock_controller::store::DumpEntry> {
    api.store
        .dump()
        .expect("dump")
        .into_iter()
        .filter(|entry| {
            matches!(
                entry.0.as_str(),
                "vps" | "migrations" | "pools" | "node_allocations"
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_moves_are_refused_where_they_cannot_keep_the_vps_and_fall_back_cold_when_allowed() {
    let cluster = LiveCluster::start().await;
    // A VPS with an address: no pool of the other node holds it.
    let numbered = cluster.create("numbered", "nano").await;
    let to = LiveCluster::other(&numbered.node);
    let before = settled_state(&cluster.api);
    let refused = cluster
        .migrate("numbered", to, false, false)
        .await
        .expect_err("the address would change");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains(&numbered.ipv4[0]) && refused.message().contains("--allow-cold"),
        "{refused:?}"
    );
    // --allow-cold alone would still renumber it: refused as a cold move would be.
    let renumber = cluster
        .migrate("numbered", to, false, true)
        .await
        .expect_err("needs --allow-new-address");
    assert_eq!(renumber.code(), Code::FailedPrecondition, "{renumber:?}");
    assert!(
        renumber.message().contains("--allow-new-address"),
        "{renumber:?}"
    );
    assert_eq!(
        settled_state(&cluster.api),
        before,
        "refused moves changed nothing"
    );
    assert!(running(cluster.agent(&numbered.node), &numbered.id));
    // Both allowed: a cold move, saying why it is not live.
    let events = cluster.events().len();
    let cold = cluster
        .migrate("numbered", to, true, true)
        .await
        .expect("cold move");
    assert!(!cold.live && cold.live_report.is_none(), "{cold:?}");
    assert!(cold.cold_because.contains("holds its address"), "{cold:?}");
    assert_eq!(cluster.stored(&numbered.id).node, to);
    assert!(cluster.appended(events, EventKind::VpsMigrated));
    assert!(!cluster.appended(events, EventKind::VpsLiveMigrated));

    // CRIU refuses on the source: the VPS runs on there, the error carries CRIU's reason.
    let web = cluster.create("web", "noip").await;
    let source = web.node.clone();
    let to = LiveCluster::other(&source);
    let reason = "Error (criu/sk-inet.c:188): inet: Can't dump a socket of an unsupported kind";
    cluster.agent(&source).refuse_checkpoints(Some(reason));
    let refused = cluster
        .migrate("web", to, false, false)
        .await
        .expect_err("CRIU refuses");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains(reason) && refused.message().contains("--allow-cold"),
        "{refused:?}"
    );
    let stored = cluster.stored(&web.id);
    assert_eq!(
        (stored.node.as_str(), stored.desired_power),
        (source.as_str(), Power::Running)
    );
    assert_eq!(cluster.api.store.get_migration(&web.id).expect("get"), None);
    assert!(running(cluster.agent(&source), &web.id));
    assert!(cluster.agent(to).applied(&web.id).is_none());
    // With --allow-cold a cold move follows, and says so.
    let cold = cluster
        .migrate("web", to, false, true)
        .await
        .expect("cold after CRIU's refusal");
    assert!(!cold.live, "{cold:?}");
    assert!(
        cold.cold_because.contains("CRIU") && cold.cold_because.contains(reason),
        "{cold:?}"
    );
    assert_eq!(cluster.stored(&web.id).node, to);
    wait_for("web running on its destination", || {
        running(cluster.agent(to), &web.id)
    })
    .await;
    // The move deletes the source's copy; a pass of the source that raced it and applied the
    // VPS again there is undone by the next one (a copy of a VPS placed elsewhere goes).
    wait_for("the source's copy gone", || {
        cluster.agent(&source).applied(&web.id).is_none()
    })
    .await;
    cluster.agent(&source).refuse_checkpoints(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_move_goes_through_or_rolls_back_onto_its_source() {
    let cluster = LiveCluster::start().await;
    let web = cluster.create("web", "noip").await;
    let source = web.node.clone();
    let to = LiveCluster::other(&source);

    // The destination cannot restore: the destination's copy goes, the source restores
    // what it kept, and the VPS stays there, running.
    cluster
        .agent(to)
        .refuse_restores(Some("Error (criu/cr-restore.c:1): restore failed"));
    let events = cluster.events().len();
    let failed = cluster
        .migrate("web", to, false, false)
        .await
        .expect_err("restore refused");
    assert_eq!(failed.code(), Code::Aborted, "{failed:?}");
    assert!(
        failed.message().contains("rolled back") && failed.message().contains("restore failed"),
        "{failed:?}"
    );
    assert_eq!(cluster.agent(&source).held_restores(), vec![web.id.clone()]);
    assert!(running(cluster.agent(&source), &web.id));
    assert!(cluster.agent(to).applied(&web.id).is_none());
    let stored = cluster.stored(&web.id);
    assert_eq!(
        (stored.node.as_str(), stored.desired_power),
        (source.as_str(), Power::Running)
    );
    assert_eq!(cluster.api.store.get_migration(&web.id).expect("get"), None);
    assert!(cluster.appended(events, EventKind::MigrationFailed));

    // Allowed to restore: the move goes through, with the checkpoint's report.
    cluster.agent(to).refuse_restores(None);
    let events = cluster.events().len();
    let moved = cluster
        .migrate("web", to, false, false)
        .await
        .expect("live move");
    assert!(moved.live && moved.cold_because.is_empty(), "{moved:?}");
    assert!(moved.addresses_kept, "{moved:?}");
    let report = moved.live_report.expect("report");
    assert_eq!((report.frozen_us, report.final_pages_written), (1500, 42));
    assert_eq!(report.transfer_bytes, 4096);
    assert_eq!(cluster.agent(to).received_bytes(), 8192, "two transfers");
    let stored = cluster.stored(&web.id);
    assert_eq!(
        (stored.node.as_str(), stored.desired_power),
        (to, Power::Running)
    );
    assert!(running(cluster.agent(to), &web.id));
    assert!(
        cluster.agent(&source).applied(&web.id).is_none(),
        "the source's copy is deleted"
    );
    assert!(cluster.appended(events, EventKind::VpsLiveMigrated));
    assert_eq!(cluster.api.store.get_migration(&web.id).expect("get"), None);
}

/// A live move as a controller killed at `phase` left it in the store.
fn interrupted(cluster: &LiveCluster, vps: &v1::Vps, to: &str, phase: MigrationPhase) {
    let stored = cluster.stored(&vps.id);
    let plan = migration::plan_addresses(&stored, &[]).expect("no address to plan");
    let record = MigrationRecord {
        id: format!("m-{}", phase.as_str()),
        vps_id: stored.vps_id.clone(),
        tenant: stored.tenant.clone(),
        vps: stored.name.clone(),
        source: stored.node.clone(),
        destination: to.to_owned(),
        // Recorded at `phase` at once, so the sweeper never sees it earlier.
        phase,
        was_running: true,
        old_ipv4: stored.ipv4.clone(),
        old_network: stored.network.clone(),
        new_ipv4: plan.ipv4,
        new_network: plan.network,
        addresses_kept: plan.kept,
        started_at: chrono::Utc::now(),
        failure: None,
        live: true,
        live_report: None,
    };
    cluster.api.store.plan_migration(&record).expect("plan");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_settles_live_moves_interrupted_at_their_new_phases() {
    let cluster = LiveCluster::start().await;
    let web = cluster.create("web", "noip").await;
    let source = web.node.clone();
    let to = LiveCluster::other(&source);

    // Killed after the dump, during the transfer: the source's processes are gone, the
    // destination may hold a restored copy. Rolled back: that copy deleted first, then the
    // source restores what it kept.
    let events = cluster.events().len();
    cluster.agent(&source).set_dumped(&web.id);
    cluster.agent(to).set_running(&web.id);
    interrupted(&cluster, &web, to, MigrationPhase::Checkpointed);
    wait_for("the sweeper to roll the checkpointed move back", || {
        cluster
            .api
            .store
            .get_migration(&web.id)
            .expect("get")
            .is_none()
    })
    .await;
    assert_eq!(cluster.agent(&source).held_restores(), vec![web.id.clone()]);
    assert!(running(cluster.agent(&source), &web.id));
    assert!(cluster.agent(to).applied(&web.id).is_none());
    assert_eq!(cluster.stored(&web.id).node, source);
    assert!(cluster.appended(events, EventKind::MigrationFailed));

    // Killed after the destination restored it: finished forward (switched, source
    // cleaned), never rolled back to the older state the source kept.
    let events = cluster.events().len();
    cluster.agent(&source).set_dumped(&web.id);
    cluster.agent(to).set_running(&web.id);
    interrupted(&cluster, &web, to, MigrationPhase::Restored);
    wait_for("the sweeper to finish the restored move", || {
        cluster
            .api
            .store
            .get_migration(&web.id)
            .expect("get")
            .is_none()
    })
    .await;
    let stored = cluster.stored(&web.id);
    assert_eq!(
        (stored.node.as_str(), stored.desired_power),
        (to, Power::Running)
    );
    assert!(running(cluster.agent(to), &web.id));
    assert!(cluster.agent(&source).applied(&web.id).is_none());
    assert_eq!(
        cluster.agent(&source).held_restores(),
        vec![web.id.clone()],
        "no second restore on the source"
    );
    assert!(cluster.appended(events, EventKind::VpsLiveMigrated));
    assert!(!cluster.appended(events, EventKind::MigrationFailed));
}
