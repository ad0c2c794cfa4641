//! Snapshots as the controller keeps them: the per-plan quota checked in the recording
//! transaction, tenant isolation, not found, and the reservation dropped when the node
//! cannot take the snapshot. The fixture node's agent is unreachable, so snapshots the node
//! "took" are written to the store directly, as the service does after the agent answered.

mod common;

use chrono::Utc;
use common::{start, with_token};
use paddock_controller::model::snapshots::{SnapshotRecord, SnapshotState};
use paddock_controller::store::StoreError;
use paddock_proto::v1;
use paddock_proto::v1::snapshot_service_client::SnapshotServiceClient;
use tonic::Code;

fn taken(name: &str) -> SnapshotRecord {
    SnapshotRecord {
        name: name.to_owned(),
        state: SnapshotState::Ready,
        created_at: Utc::now(),
        size_bytes: 64 << 20,
        allocated_bytes: 1 << 20,
        method: "sparse".to_owned(),
        duration_ms: 5,
    }
}

fn reference(tenant: &str, vps: &str, name: &str) -> v1::SnapshotRef {
    v1::SnapshotRef {
        tenant: tenant.to_owned(),
        vps: vps.to_owned(),
        name: name.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_isolation_and_not_found() {
    let api = start().await;
    let tenant_a = api.tenant("a", 5).await;
    let tenant_b = api.tenant("b", 5).await;
    let vps = api
        .create_vps(&tenant_a, "", "web")
        .await
        .expect("create VPS");
    let mut snapshots = SnapshotServiceClient::new(api.channel.clone());

    // The node cannot be reached: refused as unavailable, and nothing stays recorded.
    let error = snapshots
        .create_snapshot(with_token(reference("", "web", "first"), &tenant_a))
        .await
        .expect_err("unreachable node");
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    assert!(error.message().contains("node-a"), "{error:?}");
    assert!(api
        .store
        .list_snapshots(&vps.id)
        .expect("list")
        .snapshots
        .is_empty());

    // The plan (nano: the default of 3) is filled as the node would have.
    for name in ["one", "two", "three"] {
        api.store
            .reserve_snapshot(&vps.id, &taken(name))
            .expect("reserve");
    }
    let duplicate = api
        .store
        .reserve_snapshot(&vps.id, &taken("two"))
        .expect_err("a taken name");
    assert!(
        matches!(duplicate, StoreError::AlreadyExists { .. }),
        "{duplicate:?}"
    );
    let full = snapshots
        .create_snapshot(with_token(reference("", "web", "four"), &tenant_a))
        .await
        .expect_err("over quota");
    assert_eq!(full.code(), Code::FailedPrecondition, "{full:?}");
    assert!(full.message().contains("3 of 3"), "{full:?}");

    let listed = snapshots
        .list_snapshots(with_token(
            v1::ListSnapshotsRequest {
                tenant: String::new(),
                vps: "web".into(),
            },
            &tenant_a,
        ))
        .await
        .expect("list")
        .into_inner()
        .snapshots;
    let names: Vec<_> = listed.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["one", "three", "two"]);
    assert_eq!(listed[0].vps_name, "web");
    assert_eq!(listed[0].method, "sparse");

    // Another tenant sees nothing of it: its VPS is "not found", as if it did not exist.
    for (tenant, token) in [("", &tenant_b), ("a", &tenant_b)] {
        let error = snapshots
            .list_snapshots(with_token(
                v1::ListSnapshotsRequest {
                    tenant: tenant.into(),
                    vps: "web".into(),
                },
                token,
            ))
            .await
            .expect_err("another tenant's VPS");
        assert_eq!(error.code(), Code::NotFound, "{error:?}");
        let error = snapshots
            .delete_snapshot(with_token(reference(tenant, "web", "one"), token))
            .await
            .expect_err("another tenant's snapshot");
        assert_eq!(error.code(), Code::NotFound, "{error:?}");
        let error = snapshots
            .restore_snapshot(with_token(reference(tenant, "web", "one"), token))
            .await
            .expect_err("another tenant's snapshot");
        assert_eq!(error.code(), Code::NotFound, "{error:?}");
    }
    // The admin names the tenant and sees them.
    let admin_list = snapshots
        .list_snapshots(with_token(
            v1::ListSnapshotsRequest {
                tenant: "a".into(),
                vps: "web".into(),
            },
            &api.admin,
        ))
        .await
        .expect("admin list")
        .into_inner()
        .snapshots;
    assert_eq!(admin_list.len(), 3);

    // No such snapshot: NotFound naming it, before the node is asked.
    for error in [
        snapshots
            .restore_snapshot(with_token(reference("", "web", "nope"), &tenant_a))
            .await
            .expect_err("missing"),
        snapshots
            .delete_snapshot(with_token(reference("", "web", "nope"), &tenant_a))
            .await
            .expect_err("missing"),
    ] {
        assert_eq!(error.code(), Code::NotFound, "{error:?}");
        assert!(error.message().contains("web/nope"), "{error:?}");
    }
    let invalid = snapshots
        .create_snapshot(with_token(reference("", "web", "Bad Name"), &tenant_a))
        .await
        .expect_err("invalid name");
    assert_eq!(invalid.code(), Code::InvalidArgument, "{invalid:?}");

    // A VPS being deleted takes no snapshots.
    api.vps()
        .delete_vps(with_token(
            v1::VpsRef {
                tenant: String::new(),
                name: "web".into(),
            },
            &tenant_a,
        ))
        .await
        .expect("delete VPS");
    api.store
        .remove_snapshot(&vps.id, "one", None)
        .expect("make room");
    let deleting = snapshots
        .create_snapshot(with_token(reference("", "web", "late"), &tenant_a))
        .await
        .expect_err("VPS being deleted");
    assert_eq!(deleting.code(), Code::FailedPrecondition, "{deleting:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_sets_its_own_snapshot_quota() {
    let api = start().await;
    let tenant = api.tenant("a", 5).await;
    v1::plan_service_client::PlanServiceClient::new(api.channel.clone())
        .create_plan(with_token(
            v1::CreatePlanRequest {
                plan: Some(v1::Plan {
                    name: "one-snap".into(),
                    resources: Some(v1::Resources {
                        vcpus: 1.0,
                        memory_bytes: 128 << 20,
                        disk_bytes: 1 << 30,
                        ..Default::default()
                    }),
                    max_snapshots: 1,
                    ..Default::default()
                }),
            },
            &api.admin,
        ))
        .await
        .expect("create plan");
    let plans = v1::plan_service_client::PlanServiceClient::new(api.channel.clone())
        .list_plans(with_token(v1::Empty {}, &tenant))
        .await
        .expect("plans")
        .into_inner()
        .plans;
    let by_name = |name: &str| {
        plans
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.max_snapshots)
    };
    assert_eq!(by_name("one-snap"), Some(1));
    assert_eq!(by_name("nano"), Some(3), "the default plans allow 3");

    let vps = api
        .vps()
        .create_vps(with_token(
            v1::CreateVpsRequest {
                name: "db".into(),
                plan: "one-snap".into(),
                ..Default::default()
            },
            &tenant,
        ))
        .await
        .expect("create VPS")
        .into_inner();
    api.store
        .reserve_snapshot(&vps.id, &taken("only"))
        .expect("the first fits");
    let error = api
        .store
        .reserve_snapshot(&vps.id, &taken("second"))
        .expect_err("the plan allows one");
    assert!(matches!(error, StoreError::SnapshotQuota(_)), "{error:?}");
}
