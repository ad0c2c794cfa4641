//! The controller's gRPC API over real TCP with a real sled store: bad input
//! that must change nothing, quotas under concurrency, suspension and the
//! audit trail. No agent is needed: a node is registered with an unreachable
//! address, so VPSes stay `pending`.

mod common;

use std::sync::Arc;

use common::{start, with_token};
use paddock_proto::v1;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_invalid_argument_and_changes_nothing() {
    let api = start().await;
    let acme = api.tenant("acme", 10).await;
    let before = api.store.dump().expect("dump");
    let cases: Vec<(v1::CreateVpsRequest, &str)> = vec![
        (
            v1::CreateVpsRequest {
                name: "".into(),
                plan: "nano".into(),
                ..Default::default()
            },
            "name: is required",
        ),
        (
            v1::CreateVpsRequest {
                name: "../etc".into(),
                plan: "nano".into(),
                ..Default::default()
            },
            "name: \"../etc\" must match",
        ),
        (
            v1::CreateVpsRequest {
                name: "a".repeat(64),
                plan: "nano".into(),
                ..Default::default()
            },
            "name:",
        ),
        (
            v1::CreateVpsRequest {
                name: "Web".into(),
                plan: "nano".into(),
                ..Default::default()
            },
            "name:",
        ),
        (
            v1::CreateVpsRequest {
                name: "web1".into(),
                plan: "nosuch".into(),
                ..Default::default()
            },
            "plan: unknown plan \"nosuch\"",
        ),
        (
            v1::CreateVpsRequest {
                name: "web1".into(),
                plan: "".into(),
                ..Default::default()
            },
            "plan: is required",
        ),
        (
            v1::CreateVpsRequest {
                name: "web1".into(),
                plan: "nano".into(),
                template: "Bad/T".into(),
                ..Default::default()
            },
            "template:",
        ),
        (
            v1::CreateVpsRequest {
                name: "web1".into(),
                plan: "nano".into(),
                overrides: Some(v1::Resources {
                    vcpus: -1.0,
                    ..Default::default()
                }),
                ..Default::default()
            },
            "vcpus:",
        ),
        (
            v1::CreateVpsRequest {
                name: "web1".into(),
                plan: "nano".into(),
                overrides: Some(v1::Resources {
                    vcpus: f64::NAN,
                    ..Default::default()
                }),
                ..Default::default()
            },
            "vcpus:",
        ),
    ];
    for (request, message) in cases {
        let status = api
            .vps()
            .create_vps(with_token(request.clone(), &acme))
            .await
            .expect_err("must be refused");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{request:?}: {status:?}"
        );
        assert!(
            status.message().starts_with(message),
            "{request:?}: {}",
            status.message()
        );
    }
    let bad_tenant = api
        .tenants()
        .create_tenant(with_token(
            v1::CreateTenantRequest {
                name: "x y".into(),
                quota: None,
            },
            &api.admin,
        ))
        .await
        .expect_err("bad tenant name");
    assert_eq!(bad_tenant.code(), Code::InvalidArgument);
    assert!(bad_tenant.message().starts_with("name:"));
    let bad_plan = v1::plan_service_client::PlanServiceClient::new(api.channel.clone())
        .create_plan(with_token(
            v1::CreatePlanRequest {
                plan: Some(v1::Plan {
                    name: "zero".into(),
                    resources: Some(v1::Resources {
                        vcpus: 1.0,
                        memory_bytes: 0,
                        disk_bytes: 1 << 30,
                        ..Default::default()
                    }),
                    monthly_transfer_bytes: 0,
                    ..Default::default()
                }),
            },
            &api.admin,
        ))
        .await
        .expect_err("zero memory");
    assert_eq!(bad_plan.code(), Code::InvalidArgument);
    assert!(
        bad_plan.message().contains("memory_bytes"),
        "{}",
        bad_plan.message()
    );
    let unknown_tenant = api
        .create_vps(&api.admin, "nosuch", "web1")
        .await
        .expect_err("unknown tenant");
    assert_eq!(unknown_tenant.code(), Code::NotFound);

    // Audit entries are appended for refused mutations; every other tree is byte-for-byte unchanged.
    let after: Vec<_> = api
        .store
        .dump()
        .expect("dump")
        .into_iter()
        .filter(|(tree, _, _)| tree != "audit")
        .collect();
    let before: Vec<_> = before
        .into_iter()
        .filter(|(tree, _, _)| tree != "audit")
        .collect();
    assert_eq!(before, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_creates_respect_a_quota_of_ten() {
    let api = start().await;
    let acme = Arc::new(api.tenant("acme", 10).await);
    let api = Arc::new(api);
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let (api, acme) = (api.clone(), acme.clone());
            tokio::spawn(async move { api.create_vps(&acme, "", &format!("vps{i}")).await })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        match task.await.expect("join") {
            Ok(_) => ok += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                assert!(
                    status.message().contains("quota exceeded"),
                    "{}",
                    status.message()
                );
            }
        }
    }
    assert_eq!(ok, 10);
    let report = api
        .tenants()
        .get_my_quota(with_token(v1::Empty {}, &acme))
        .await
        .expect("quota")
        .into_inner();
    let (limit, used) = (report.limit.expect("limit"), report.used.expect("used"));
    assert_eq!(used.max_vps, limit.max_vps);
    assert_eq!(used.memory_bytes, 10 * (256 << 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspension_blocks_create_and_start_and_is_audited() {
    let api = start().await;
    let acme = api.tenant("acme", 10).await;
    let billing = api.token(v1::Role::Billing, "").await;
    api.create_vps(&acme, "", "web1").await.expect("create");
    let mut billing_client =
        v1::billing_service_client::BillingServiceClient::new(api.channel.clone());
    billing_client
        .suspend_tenant(with_token(
            v1::BillingSuspendRequest {
                tenant: "acme".into(),
                reason: "unpaid".into(),
            },
            &billing,
        ))
        .await
        .expect("billing suspends");
    let refused = api
        .create_vps(&acme, "", "web2")
        .await
        .expect_err("suspended");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("suspended"),
        "{}",
        refused.message()
    );
    let start = api
        .vps()
        .start_vps(with_token(
            v1::VpsRef {
                tenant: String::new(),
                name: "web1".into(),
            },
            &acme,
        ))
        .await
        .expect_err("start refused");
    assert_eq!(start.code(), Code::FailedPrecondition);
    let shown = api
        .vps()
        .get_vps(with_token(
            v1::VpsRef {
                tenant: String::new(),
                name: "web1".into(),
            },
            &acme,
        ))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(shown.state(), v1::VpsState::Suspended);
    assert_eq!(
        shown.desired_power(),
        v1::PowerState::Running,
        "the owner's choice is kept"
    );
    billing_client
        .unsuspend_tenant(with_token(
            v1::BillingSuspendRequest {
                tenant: "acme".into(),
                reason: String::new(),
            },
            &billing,
        ))
        .await
        .expect("billing unsuspends");
    api.create_vps(&acme, "", "web2")
        .await
        .expect("create after unsuspend");

    let audit = v1::audit_service_client::AuditServiceClient::new(api.channel.clone())
        .list_audit(with_token(v1::ListAuditRequest::default(), &api.admin))
        .await
        .expect("audit")
        .into_inner()
        .entries;
    let lines: Vec<String> = audit
        .iter()
        .map(|e| {
            format!(
                "{} {} {} {}",
                e.actor.split(':').next().unwrap_or(""),
                e.method,
                e.target,
                e.result
            )
        })
        .collect();
    for expected in [
        "tenant CreateVps web1 ok",
        "billing SuspendTenant acme ok",
        "tenant CreateVps web2 FailedPrecondition",
        "tenant StartVps web1 FailedPrecondition",
        "billing UnsuspendTenant acme ok",
        "tenant CreateVps web2 ok",
    ] {
        assert!(
            lines.iter().any(|l| l == expected),
            "missing {expected:?} in {lines:#?}"
        );
    }
    assert!(
        audit.windows(2).all(|w| w[0].seq < w[1].seq),
        "strictly increasing seq"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resize_is_quota_checked_in_one_transaction() {
    let api = start().await;
    let acme = api.tenant("acme", 10).await;
    api.tenants()
        .set_quota(with_token(
            v1::SetQuotaRequest {
                name: "acme".into(),
                quota: Some(v1::Quota {
                    memory_bytes: 2 << 30,
                    ..Default::default()
                }),
            },
            &api.admin,
        ))
        .await
        .expect("quota");
    api.create_vps(&acme, "", "web1")
        .await
        .expect("create nano");
    let resize = |plan: &str, memory_bytes: u64, disk_bytes: u64| v1::ResizeVpsRequest {
        vps: Some(v1::VpsRef {
            tenant: String::new(),
            name: "web1".into(),
        }),
        plan: plan.into(),
        resources: Some(v1::Resources {
            memory_bytes,
            disk_bytes,
            ..Default::default()
        }),
    };
    // To plan small (1 GiB): fits the 2 GiB quota; the disk grows to the plan's.
    let small = api
        .vps()
        .resize_vps(with_token(resize("small", 0, 0), &acme))
        .await
        .expect("resize to small")
        .into_inner();
    assert_eq!(small.plan, "small");
    let resources = small.resources.expect("resources");
    assert_eq!(resources.memory_bytes, 1 << 30);
    assert_eq!(
        resources.disk_bytes,
        10 << 30,
        "the disk grows with the plan"
    );
    // 4 GiB is over quota: refused, and the usage is unchanged.
    let over = api
        .vps()
        .resize_vps(with_token(resize("", 4 << 30, 0), &acme))
        .await
        .expect_err("over quota");
    assert_eq!(over.code(), Code::FailedPrecondition);
    assert!(
        over.message().contains("quota exceeded: memory"),
        "{}",
        over.message()
    );
    let used = api
        .tenants()
        .get_my_quota(with_token(v1::Empty {}, &acme))
        .await
        .expect("quota")
        .into_inner()
        .used
        .expect("used");
    assert_eq!(used.memory_bytes, 1 << 30);
    // A disk grows, and never shrinks.
    let grown = api
        .vps()
        .resize_vps(with_token(resize("", 0, 20 << 30), &acme))
        .await
        .expect("grow the disk")
        .into_inner();
    assert_eq!(grown.resources.expect("resources").disk_bytes, 20 << 30);
    let shrink = api
        .vps()
        .resize_vps(with_token(resize("", 0, 5 << 30), &acme))
        .await
        .expect_err("shrink the disk");
    assert_eq!(shrink.code(), Code::InvalidArgument);
    assert!(
        shrink
            .message()
            .starts_with("disk_bytes: a disk cannot shrink"),
        "{}",
        shrink.message()
    );
    // A plan with a smaller disk keeps the grown one.
    let nano = api
        .vps()
        .resize_vps(with_token(resize("nano", 0, 0), &acme))
        .await
        .expect("back to nano")
        .into_inner();
    assert_eq!(nano.resources.expect("resources").disk_bytes, 20 << 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resize_must_fit_the_node() {
    let api = start().await;
    let acme = api.tenant("acme", 10).await;
    api.tenants()
        .set_quota(with_token(
            v1::SetQuotaRequest {
                name: "acme".into(),
                quota: Some(v1::Quota {
                    max_vps: 10,
                    vcpus: 1000.0,
                    memory_bytes: 1 << 50,
                    disk_bytes: 1 << 50,
                    ipv4_count: 10,
                }),
            },
            &api.admin,
        ))
        .await
        .expect("quota");
    api.create_vps(&acme, "", "web1").await.expect("create");
    // The fixture node has 1 TiB of memory and no memory overcommit.
    let resize = |memory_bytes: u64| v1::ResizeVpsRequest {
        vps: Some(v1::VpsRef {
            tenant: String::new(),
            name: "web1".into(),
        }),
        plan: String::new(),
        resources: Some(v1::Resources {
            memory_bytes,
            ..Default::default()
        }),
    };
    let refused = api
        .vps()
        .resize_vps(with_token(resize(2 << 40), &acme))
        .await
        .expect_err("beyond the node");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().starts_with("node node-a has ")
            && refused.message().contains("growing the VPS needs"),
        "{}",
        refused.message()
    );
    let used = api
        .tenants()
        .get_my_quota(with_token(v1::Empty {}, &acme))
        .await
        .expect("quota")
        .into_inner()
        .used
        .expect("used");
    assert_eq!(used.memory_bytes, 256 << 20, "nothing changed");
    api.vps()
        .resize_vps(with_token(resize(512 << 30), &acme))
        .await
        .expect("within the node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_node_revokes_its_certificates_until_it_enrols_again() {
    let api = start().await;
    let acme = api.tenant("acme", 10).await;
    let nodes = || v1::node_service_client::NodeServiceClient::new(api.channel.clone());
    let pools = || v1::pool_service_client::PoolServiceClient::new(api.channel.clone());
    let node_b = || v1::GetNodeRequest {
        name: "node-b".into(),
    };
    let register = |channel: tonic::transport::Channel| async move {
        v1::agent_registry_client::AgentRegistryClient::new(channel)
            .register(tonic::Request::new(v1::RegisterRequest {
                node_name: "node-b".into(),
                address: "http://127.0.0.1:9".into(),
                capacity: Some(v1::NodeCapacityReport {
                    vcpus: 8.0,
                    memory_bytes: 1 << 34,
                    disk_bytes: 1 << 40,
                }),
                agent_version: "test".into(),
            }))
            .await
    };
    let old_cert = api.enrol("node-b").await;
    register(old_cert.clone()).await.expect("register node-b");

    // A node with a pool and a VPS, not drained: each is refused by name.
    nodes()
        .set_node_labels(with_token(
            v1::SetNodeLabelsRequest {
                name: "node-b".into(),
                labels: [("role".to_owned(), "b".to_owned())].into(),
            },
            &api.admin,
        ))
        .await
        .expect("label");
    api.create_pool(v1::Pool {
        name: "pool-b".into(),
        node: "node-b".into(),
        cidr: "10.201.0.0/24".into(),
        gateway: "10.201.0.1".into(),
        ..v1::Pool::default()
    })
    .await
    .expect("pool on node-b");
    let web = api
        .vps()
        .create_vps(with_token(
            v1::CreateVpsRequest {
                name: "web".into(),
                plan: "nano".into(),
                node_selector: [("role".to_owned(), "b".to_owned())].into(),
                ..Default::default()
            },
            &acme,
        ))
        .await
        .expect("VPS on node-b")
        .into_inner();
    assert_eq!(web.node, "node-b");
    let remove = || async {
        nodes()
            .remove_node(with_token(node_b(), &api.admin))
            .await
            .expect_err("refused")
    };
    let refused = remove().await;
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("is not drained"), "{refused:?}");
    nodes()
        .drain_node(with_token(node_b(), &api.admin))
        .await
        .expect("drain");
    let refused = remove().await;
    assert!(
        refused
            .message()
            .contains("still hosts 1 VPS(es) (acme/web)"),
        "{refused:?}"
    );
    // The node's agent is not reachable here: the VPS is removed as a node would confirm.
    api.store.remove_vps(&web.id).expect("remove VPS");
    let refused = remove().await;
    assert!(refused.message().contains("pool-b"), "{refused:?}");
    pools()
        .delete_pool(with_token(
            v1::GetPoolRequest {
                name: "pool-b".into(),
            },
            &api.admin,
        ))
        .await
        .expect("delete pool");

    nodes()
        .remove_node(with_token(node_b(), &api.admin))
        .await
        .expect("remove");
    let gone = nodes()
        .get_node(with_token(node_b(), &api.admin))
        .await
        .expect_err("removed");
    assert_eq!(gone.code(), Code::NotFound);
    // Its certificate no longer registers nor heartbeats.
    let revoked = register(old_cert.clone()).await.expect_err("revoked");
    assert_eq!(revoked.code(), Code::Unauthenticated);
    assert!(revoked.message().contains("was revoked"), "{revoked:?}");
    let heartbeat = v1::agent_registry_client::AgentRegistryClient::new(old_cert)
        .heartbeat(tonic::Request::new(v1::HeartbeatRequest {
            node_name: "node-b".into(),
            ..Default::default()
        }))
        .await
        .expect_err("revoked");
    assert_eq!(heartbeat.code(), Code::Unauthenticated);
    // Other nodes are untouched; enrolling again brings node-b back.
    let node_a = api.enrol("node-a").await;
    v1::agent_registry_client::AgentRegistryClient::new(node_a)
        .heartbeat(tonic::Request::new(v1::HeartbeatRequest {
            node_name: "node-a".into(),
            ..Default::default()
        }))
        .await
        .expect("node-a heartbeats");
    let new_cert = api.enrol("node-b").await;
    register(new_cert)
        .await
        .expect("re-enrolled node-b registers");
    let back = nodes()
        .get_node(with_token(node_b(), &api.admin))
        .await
        .expect("node-b is back")
        .into_inner();
    assert!(!back.cordoned, "a new node, not the drained one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_does_not_make_a_changed_vps_converged() {
    let api = start().await;
    let acme = api.tenant("acme", 10).await;
    let web = api.create_vps(&acme, "", "web").await.expect("create");
    // The fixture's node is never reached: nothing has applied the VPS.
    assert!(!web.converged);
    let node = v1::agent_registry_client::AgentRegistryClient::new(api.enrol("node-a").await);
    node.clone()
        .heartbeat(tonic::Request::new(v1::HeartbeatRequest {
            node_name: "node-a".into(),
            vps: vec![v1::VpsStatus {
                vps_id: web.id.clone(),
                state: v1::AgentVpsState::Running.into(),
                init_pid: 42,
                message: "running".into(),
            }],
            ..Default::default()
        }))
        .await
        .expect("heartbeat");
    let shown = api
        .vps()
        .get_vps(with_token(
            v1::VpsRef {
                tenant: String::new(),
                name: "web".into(),
            },
            &acme,
        ))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(shown.state(), v1::VpsState::Running, "the report is shown");
    assert!(!shown.converged, "a report is no apply");
}

/// Generic gRPC clients find the API by reflection, in both protocol versions: v1 (grpcurl)
/// and v1alpha (Python's grpcio-reflection, grpcui, Postman, older grpcurl).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_services_in_v1_and_v1alpha() {
    use tokio_stream::StreamExt;
    use tonic_reflection::pb::{v1 as refl_v1, v1alpha as refl_v1alpha};
    let api = start().await;

    let request = refl_v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            refl_v1::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut client =
        refl_v1::server_reflection_client::ServerReflectionClient::new(api.channel.clone());
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1 reflection")
        .into_inner();
    let answer = answers.next().await.expect("an answer").expect("v1 answer");
    let Some(refl_v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answer.message_response
    else {
        panic!("v1: not a service list: {answer:?}");
    };
    let v1_names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();

    let request = refl_v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            refl_v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut client =
        refl_v1alpha::server_reflection_client::ServerReflectionClient::new(api.channel.clone());
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1alpha reflection")
        .into_inner();
    let answer = answers
        .next()
        .await
        .expect("an answer")
        .expect("v1alpha answer");
    let Some(refl_v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answer.message_response
    else {
        panic!("v1alpha: not a service list: {answer:?}");
    };
    let v1alpha_names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();

    for names in [&v1_names, &v1alpha_names] {
        for service in [
            "paddock.v1.VpsService",
            "paddock.v1.BillingService",
            "grpc.health.v1.Health",
        ] {
            assert!(
                names.iter().any(|n| n == service),
                "{service} missing from {names:?}"
            );
        }
    }
    // Each version names itself as the reflection service; the rest is the same list.
    let without_reflection = |names: &[String]| -> Vec<String> {
        names
            .iter()
            .filter(|n| !n.starts_with("grpc.reflection."))
            .cloned()
            .collect()
    };
    assert_eq!(
        without_reflection(&v1_names),
        without_reflection(&v1alpha_names)
    );
}

/// `request` tagged with a client request id, as the CLI sends every command.
fn tagged<T>(request: T, token: &str, id: &str) -> tonic::Request<T> {
    let mut request = with_token(request, token);
    let id = id.parse().expect("ascii request id");
    request.metadata_mut().insert("paddock-request-id", id);
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_mutation_is_done_once_and_a_reused_id_refused() {
    let api = start().await;
    let acme = api.tenant("acme", 10).await;
    let create = |plan: &str| v1::CreateVpsRequest {
        name: "web1".into(),
        plan: plan.into(),
        start: true,
        ..Default::default()
    };
    let first = api
        .vps()
        .create_vps(tagged(create("nano"), &acme, "c-1"))
        .await
        .expect("create")
        .into_inner();
    // The answer was lost; the retry gets the same VPS, charged once.
    let retry = api
        .vps()
        .create_vps(tagged(create("nano"), &acme, "c-1"))
        .await
        .expect("retry of the create")
        .into_inner();
    assert_eq!(retry.id, first.id);
    let used = api.store.get_tenant("acme").expect("read").expect("tenant");
    assert_eq!(used.used.max_vps, 1, "charged once");
    // Without the id, or with another, it is a second create of a taken name.
    for request in [
        with_token(create("nano"), &acme),
        tagged(create("nano"), &acme, "c-2"),
    ] {
        let status = api.vps().create_vps(request).await.expect_err("duplicate");
        assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    }
    // The same id for a different request is the client's bug, said so.
    let status = api
        .vps()
        .create_vps(tagged(create("small"), &acme, "c-1"))
        .await
        .expect_err("reused id");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("request id: "), "{status:?}");

    let web1 = || v1::VpsRef {
        tenant: String::new(),
        name: "web1".into(),
    };
    let generation = |field: fn(&paddock_controller::model::VpsRecord) -> u64| {
        let record = api
            .store
            .find_vps("acme", "web1")
            .expect("read")
            .expect("web1");
        field(&record)
    };
    for _ in 0..3 {
        api.vps()
            .restart_vps(tagged(web1(), &acme, "r-1"))
            .await
            .expect("restart");
    }
    assert_eq!(generation(|vps| vps.restart_generation), 1, "r-1 done once");
    for _ in 0..3 {
        api.vps()
            .rebuild_vps(tagged(
                v1::RebuildVpsRequest {
                    vps: Some(web1()),
                    template: String::new(),
                },
                &acme,
                "b-1",
            ))
            .await
            .expect("rebuild");
    }
    assert_eq!(generation(|vps| vps.rebuild_generation), 1, "b-1 done once");
    // A new id is a new restart.
    api.vps()
        .restart_vps(tagged(web1(), &acme, "r-2"))
        .await
        .expect("restart");
    assert_eq!(generation(|vps| vps.restart_generation), 2, "r-2 done");
    let status = api
        .vps()
        .stop_vps(tagged(web1(), &acme, "r-2"))
        .await
        .expect_err("an id of a restart reused for a stop");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    let bad = api
        .vps()
        .stop_vps(tagged(web1(), &acme, "has space"))
        .await
        .expect_err("bad id");
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
}
