//! `NodeService.MigrateVps` over the real API, with nodes whose agents are unreachable: what
//! is refused before anything moves (and changes nothing), and what a move that cannot
//! reach its source leaves (the VPS where it was, held against tenant changes until the
//! destination is known clean). The moves themselves run in `tests/tests/migrate.rs`.

mod common;

use common::{start, with_token, Api};
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
    v1::pool_service_client::PoolServiceClient::new(api.channel.clone())
        .create_pool(with_token(
            v1::CreatePoolRequest {
                pool: Some(v1::Pool {
                    name: "pool-b".into(),
                    node: "node-b".into(),
                    cidr: "10.201.0.0/16".into(),
                    gateway: "10.201.0.1".into(),
                    nat: true,
                    ..v1::Pool::default()
                }),
            },
            &api.admin,
        ))
        .await
        .expect("pool-b");
}

fn migrate(to_node: &str, allow_new_address: bool) -> v1::MigrateVpsRequest {
    v1::MigrateVpsRequest {
        tenant: "acme".into(),
        name: "web".into(),
        to_node: to_node.into(),
        allow_new_address,
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
