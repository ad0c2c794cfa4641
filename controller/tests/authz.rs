//! The authorization matrix: every RPC × {no token, bad token, revoked
//! token, tenant A, tenant B, billing, admin}, each cell's code asserted.
//! A tenant probing another tenant's VPS gets `NotFound`, exactly like a VPS
//! that does not exist.

mod common;

use common::{start, with_token, Api};
use futures::StreamExt;
use paddock_proto::v1;
use paddock_proto::v1::audit_service_client::AuditServiceClient;
use paddock_proto::v1::backup_service_client::BackupServiceClient;
use paddock_proto::v1::billing_service_client::BillingServiceClient;
use paddock_proto::v1::node_service_client::NodeServiceClient;
use paddock_proto::v1::plan_service_client::PlanServiceClient;
use paddock_proto::v1::pool_service_client::PoolServiceClient;
use tonic::Code;

const PRINCIPALS: [&str; 7] = [
    "none", "bad", "revoked", "tenant-a", "tenant-b", "billing", "admin",
];

fn code<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

fn vps(name: &str) -> v1::VpsRef {
    v1::VpsRef {
        tenant: "a".into(),
        name: name.into(),
    }
}

/// Every RPC the controller serves, read from the .proto files, so a new one
/// cannot be added without a row in the matrix (the agent's own service is
/// not the controller's).
fn controller_rpcs() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/paddock/v1");
    let mut rpcs = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("proto dir") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read proto");
        let mut service = "";
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.split_whitespace().next().unwrap_or("");
            } else if let Some(rest) = line.strip_prefix("rpc ") {
                if service != "NodeAgent" {
                    let name = rest.split('(').next().unwrap_or("").trim();
                    rpcs.push(name.to_owned());
                }
            }
        }
    }
    assert!(rpcs.len() > 40, "parsed too few RPCs: {rpcs:?}");
    rpcs
}

/// Calls one RPC as `who` with `token`; returns the status code.
async fn call(api: &Api, rpc: &str, who: &str, token: &str) -> Code {
    macro_rules! t {
        ($message:expr) => {
            with_token($message, token)
        };
    }
    let ch = api.channel.clone();
    let node = || v1::GetNodeRequest {
        name: "node-a".into(),
    };
    match rpc {
        "CreateVps" => code(
            api.vps()
                .create_vps(t!(v1::CreateVpsRequest {
                    tenant: "a".into(),
                    name: format!("c-{who}"),
                    plan: "nano".into(),
                    start: true,
                    ..Default::default()
                }))
                .await,
        ),
        "GetVps" => code(api.vps().get_vps(t!(vps("get"))).await),
        "WatchVps" => code(
            api.vps()
                .watch_vps(t!(v1::WatchVpsRequest {
                    tenant: "a".into(),
                    name: "get".into(),
                }))
                .await,
        ),
        "ListVps" => code(
            api.vps()
                .list_vps(t!(v1::ListVpsRequest {
                    tenant: "a".into(),
                    page: None,
                }))
                .await,
        ),
        "StartVps" => code(api.vps().start_vps(t!(vps("start"))).await),
        "StopVps" => code(api.vps().stop_vps(t!(vps("stop"))).await),
        "RestartVps" => code(api.vps().restart_vps(t!(vps("restart"))).await),
        "DeleteVps" => code(api.vps().delete_vps(t!(vps("delete"))).await),
        "ResizeVps" => code(
            api.vps()
                .resize_vps(t!(v1::ResizeVpsRequest {
                    vps: Some(vps("resize")),
                    plan: "small".into(),
                    resources: None,
                }))
                .await,
        ),
        "RebuildVps" => code(
            api.vps()
                .rebuild_vps(t!(v1::RebuildVpsRequest {
                    vps: Some(vps("rebuild")),
                    template: "busybox".into(),
                }))
                .await,
        ),
        "ListTemplates" => code(api.vps().list_templates(t!(v1::Empty {})).await),
        "Exec" => {
            let start = v1::ExecInput {
                input: Some(v1::exec_input::Input::Start(v1::ExecStart {
                    vps: Some(vps("get")),
                    command: vec!["true".into()],
                    ..Default::default()
                })),
            };
            let stream = futures::stream::iter([start]).chain(futures::stream::pending());
            code(api.vps().exec(t!(stream)).await)
        }
        "Console" => {
            let attach = v1::ConsoleInput {
                input: Some(v1::console_input::Input::Attach(v1::ConsoleAttach {
                    vps: Some(vps("get")),
                    ..Default::default()
                })),
            };
            let stream = futures::stream::iter([attach]).chain(futures::stream::pending());
            code(api.vps().console(t!(stream)).await)
        }
        "CreateTenant" => code(
            api.tenants()
                .create_tenant(t!(v1::CreateTenantRequest {
                    name: format!("t-{who}"),
                    quota: None,
                }))
                .await,
        ),
        "GetTenant" => code(
            api.tenants()
                .get_tenant(t!(v1::GetTenantRequest { name: "a".into() }))
                .await,
        ),
        "ListTenants" => code(
            api.tenants()
                .list_tenants(t!(v1::ListTenantsRequest::default()))
                .await,
        ),
        "SetQuota" => code(
            api.tenants()
                .set_quota(t!(v1::SetQuotaRequest {
                    name: "a".into(),
                    quota: Some(v1::Quota {
                        max_vps: 50,
                        ..Default::default()
                    }),
                }))
                .await,
        ),
        "DeleteTenant" => code(
            api.tenants()
                .delete_tenant(t!(v1::DeleteTenantRequest {
                    name: "nosuch".into()
                }))
                .await,
        ),
        "SuspendTenant" => code(
            api.tenants()
                .suspend_tenant(t!(v1::SuspendTenantRequest {
                    name: "spare".into(),
                    reason: String::new()
                }))
                .await,
        ),
        "UnsuspendTenant" => code(
            api.tenants()
                .unsuspend_tenant(t!(v1::UnsuspendTenantRequest {
                    name: "spare".into()
                }))
                .await,
        ),
        "GetMyQuota" => code(api.tenants().get_my_quota(t!(v1::Empty {})).await),
        "CreateToken" => code(
            api.tokens()
                .create_token(t!(v1::CreateTokenRequest {
                    role: v1::Role::Tenant.into(),
                    tenant: "a".into(),
                    ..Default::default()
                }))
                .await,
        ),
        "ListTokens" => code(
            api.tokens()
                .list_tokens(t!(v1::ListTokensRequest::default()))
                .await,
        ),
        "RevokeToken" => code(
            api.tokens()
                .revoke_token(t!(v1::RevokeTokenRequest {
                    token_id: "nosuch".into()
                }))
                .await,
        ),
        "ListPlans" => code(
            PlanServiceClient::new(ch)
                .list_plans(t!(v1::Empty {}))
                .await,
        ),
        "CreatePlan" => code(
            PlanServiceClient::new(ch)
                .create_plan(t!(v1::CreatePlanRequest {
                    plan: Some(v1::Plan {
                        name: format!("p-{who}"),
                        resources: Some(v1::Resources {
                            vcpus: 1.0,
                            memory_bytes: 1 << 30,
                            disk_bytes: 1 << 30,
                            ..Default::default()
                        }),
                        monthly_transfer_bytes: 0,
                        ..Default::default()
                    }),
                }))
                .await,
        ),
        "DeletePlan" => code(
            PlanServiceClient::new(ch)
                .delete_plan(t!(v1::DeletePlanRequest {
                    name: "nosuch".into()
                }))
                .await,
        ),
        "ListNodes" => code(
            NodeServiceClient::new(ch)
                .list_nodes(t!(v1::Empty {}))
                .await,
        ),
        "GetNode" => code(NodeServiceClient::new(ch).get_node(t!(node())).await),
        "DrainNode" => code(NodeServiceClient::new(ch).drain_node(t!(node())).await),
        "UndrainNode" => code(NodeServiceClient::new(ch).undrain_node(t!(node())).await),
        "SetNodeLabels" => code(
            NodeServiceClient::new(ch)
                .set_node_labels(t!(v1::SetNodeLabelsRequest {
                    name: "node-a".into(),
                    labels: Default::default(),
                }))
                .await,
        ),
        "RemoveNode" => code(NodeServiceClient::new(ch).remove_node(t!(node())).await),
        "MigrateVps" => code(
            NodeServiceClient::new(ch)
                .migrate_vps(t!(v1::MigrateVpsRequest {
                    tenant: "a".into(),
                    name: "get".into(),
                    to_node: "node-a".into(),
                    ..Default::default()
                }))
                .await,
        ),
        "ListPools" => code(
            PoolServiceClient::new(ch)
                .list_pools(t!(v1::Empty {}))
                .await,
        ),
        "GetPool" => code(
            PoolServiceClient::new(ch)
                .get_pool(t!(v1::GetPoolRequest {
                    name: "nosuch".into()
                }))
                .await,
        ),
        "DeletePool" => code(
            PoolServiceClient::new(ch)
                .delete_pool(t!(v1::GetPoolRequest {
                    name: "nosuch".into()
                }))
                .await,
        ),
        "CreatePool" => code(
            PoolServiceClient::new(ch)
                .create_pool(t!(v1::CreatePoolRequest { pool: None }))
                .await,
        ),
        "ListUsage" => code(
            BillingServiceClient::new(ch)
                .list_usage(t!(v1::ListUsageRequest {
                    tenant: "a".into(),
                    ..Default::default()
                }))
                .await,
        ),
        "TenantUsageSummary" => code(
            BillingServiceClient::new(ch)
                .tenant_usage_summary(t!(v1::TenantUsageSummaryRequest {
                    tenant: "a".into(),
                    ..Default::default()
                }))
                .await,
        ),
        "WatchEvents" => code(
            BillingServiceClient::new(ch)
                .watch_events(t!(v1::WatchEventsRequest::default()))
                .await,
        ),
        "BillingSuspendTenant" => code(
            BillingServiceClient::new(ch)
                .suspend_tenant(t!(v1::BillingSuspendRequest {
                    tenant: "spare".into(),
                    reason: String::new()
                }))
                .await,
        ),
        "BillingUnsuspendTenant" => code(
            BillingServiceClient::new(ch)
                .unsuspend_tenant(t!(v1::BillingSuspendRequest {
                    tenant: "spare".into(),
                    reason: String::new()
                }))
                .await,
        ),
        "LiftTransferLimit" => code(
            BillingServiceClient::new(ch)
                .lift_transfer_limit(t!(v1::LiftTransferLimitRequest {
                    tenant: "a".into(),
                    vps: "get".into(),
                }))
                .await,
        ),
        "ListAudit" => code(
            AuditServiceClient::new(ch)
                .list_audit(t!(v1::ListAuditRequest::default()))
                .await,
        ),
        "Enroll" => code(
            v1::agent_registry_client::AgentRegistryClient::new(ch)
                .enroll(t!(v1::EnrollRequest {
                    node_name: "node-x".into(),
                    csr_pem: "not a csr".into(),
                    subject_alt_names: vec!["127.0.0.1".into()],
                }))
                .await,
        ),
        "Register" => code(
            v1::agent_registry_client::AgentRegistryClient::new(ch)
                .register(t!(v1::RegisterRequest {
                    node_name: "node-a".into(),
                    address: "http://127.0.0.1:9".into(),
                    capacity: None,
                    agent_version: "test".into(),
                }))
                .await,
        ),
        "Heartbeat" => code(
            v1::agent_registry_client::AgentRegistryClient::new(ch)
                .heartbeat(t!(v1::HeartbeatRequest {
                    node_name: "node-a".into(),
                    ..Default::default()
                }))
                .await,
        ),
        "CreateSnapshot" | "RestoreSnapshot" | "DeleteSnapshot" => {
            let mut client = v1::snapshot_service_client::SnapshotServiceClient::new(ch);
            let snapshot = v1::SnapshotRef {
                tenant: "a".into(),
                vps: "get".into(),
                name: format!("s-{who}"),
            };
            match rpc {
                "CreateSnapshot" => code(client.create_snapshot(t!(snapshot)).await),
                "RestoreSnapshot" => code(client.restore_snapshot(t!(snapshot)).await),
                _ => code(client.delete_snapshot(t!(snapshot)).await),
            }
        }
        "ListSnapshots" => code(
            v1::snapshot_service_client::SnapshotServiceClient::new(ch)
                .list_snapshots(t!(v1::ListSnapshotsRequest {
                    tenant: "a".into(),
                    vps: "get".into(),
                }))
                .await,
        ),
        "CreateBackup" => code(
            BackupServiceClient::new(ch)
                .create_backup(t!(v1::CreateBackupRequest {
                    vps: Some(vps("get")),
                }))
                .await,
        ),
        "ListBackups" => code(
            BackupServiceClient::new(ch)
                .list_backups(t!(v1::ListBackupsRequest {
                    tenant: "a".into(),
                    vps: String::new(),
                }))
                .await,
        ),
        "RestoreBackup" => code(
            BackupServiceClient::new(ch)
                .restore_backup(t!(v1::RestoreBackupRequest {
                    backup: Some(v1::BackupRef {
                        tenant: "a".into(),
                        id: "b-missing".into(),
                    }),
                    to_name: String::new(),
                    in_place: true,
                }))
                .await,
        ),
        "DeleteBackup" => code(
            BackupServiceClient::new(ch)
                .delete_backup(t!(v1::BackupRef {
                    tenant: "a".into(),
                    id: "b-missing".into(),
                }))
                .await,
        ),
        other => panic!("no call for {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_checks_role_and_tenant() {
    use Code::{
        FailedPrecondition as Fp, InvalidArgument as Inv, NotFound as Nf, Ok,
        PermissionDenied as Pd, Unauthenticated as Un, Unavailable as Ua,
    };
    let api = start().await;
    let tenant_a = api.tenant("a", 50).await;
    let tenant_b = api.tenant("b", 50).await;
    api.tenant("spare", 1).await;
    let billing = api.token(v1::Role::Billing, "").await;
    let revoked = api.token(v1::Role::Tenant, "a").await;
    let revoked_id = revoked.split('_').nth(1).expect("token id").to_owned();
    api.tokens()
        .revoke_token(with_token(
            v1::RevokeTokenRequest {
                token_id: revoked_id,
            },
            &api.admin,
        ))
        .await
        .expect("revoke");
    for name in [
        "get", "start", "stop", "restart", "delete", "resize", "rebuild",
    ] {
        api.create_vps(&tenant_a, "", name)
            .await
            .expect("fixture VPS");
    }
    let tokens = [
        "",
        "pdk_00000000_notatoken",
        revoked.as_str(),
        &tenant_a,
        &tenant_b,
        &billing,
        &api.admin,
    ];

    // Expected codes for [tenant A, tenant B, billing, admin]; the first three
    // principals (no, bad, revoked token) must always be Unauthenticated.
    let admin_only = |admin| [Pd, Pd, Pd, admin];
    let tenant_scoped = |own| [own, Nf, Pd, own];
    let matrix: Vec<(&str, [Code; 4])> = vec![
        ("CreateVps", tenant_scoped(Ok)),
        ("GetVps", tenant_scoped(Ok)),
        ("WatchVps", tenant_scoped(Ok)),
        ("ListVps", tenant_scoped(Ok)),
        ("StartVps", tenant_scoped(Ok)),
        ("StopVps", tenant_scoped(Ok)),
        ("RestartVps", tenant_scoped(Ok)),
        ("DeleteVps", tenant_scoped(Ok)),
        ("ResizeVps", tenant_scoped(Ok)),
        ("RebuildVps", tenant_scoped(Ok)),
        ("ListTemplates", [Ok, Ok, Ok, Ok]),
        // The fixture node's agent is unreachable: authorized callers get Unavailable.
        ("Exec", tenant_scoped(Ua)),
        ("Console", tenant_scoped(Ua)),
        // The snapshot is recorded only once the (unreachable) node took it.
        ("CreateSnapshot", tenant_scoped(Ua)),
        ("ListSnapshots", tenant_scoped(Ok)),
        ("RestoreSnapshot", tenant_scoped(Nf)),
        ("DeleteSnapshot", tenant_scoped(Nf)),
        ("CreateTenant", admin_only(Ok)),
        ("GetTenant", admin_only(Ok)),
        ("ListTenants", admin_only(Ok)),
        ("SetQuota", admin_only(Ok)),
        ("DeleteTenant", admin_only(Nf)),
        ("SuspendTenant", admin_only(Ok)),
        ("UnsuspendTenant", admin_only(Ok)),
        ("GetMyQuota", [Ok, Ok, Pd, Pd]),
        ("CreateToken", admin_only(Ok)),
        ("ListTokens", admin_only(Ok)),
        ("RevokeToken", admin_only(Nf)),
        ("ListPlans", [Ok, Ok, Ok, Ok]),
        ("CreatePlan", admin_only(Ok)),
        ("DeletePlan", admin_only(Nf)),
        ("ListNodes", admin_only(Ok)),
        ("GetNode", admin_only(Ok)),
        ("DrainNode", admin_only(Ok)),
        ("UndrainNode", admin_only(Ok)),
        ("SetNodeLabels", admin_only(Ok)),
        // The fixture node is neither drained nor empty.
        ("RemoveNode", admin_only(Fp)),
        // The fixture VPS is on node-a already: refused before anything moves.
        ("MigrateVps", admin_only(Fp)),
        ("ListPools", admin_only(Ok)),
        ("GetPool", admin_only(Nf)),
        ("DeletePool", admin_only(Nf)),
        ("CreatePool", admin_only(Inv)),
        // Usage of tenant A: another tenant's usage is NotFound, as if it did not exist.
        ("ListUsage", [Ok, Nf, Ok, Ok]),
        ("TenantUsageSummary", [Ok, Nf, Ok, Ok]),
        ("WatchEvents", [Pd, Pd, Ok, Ok]),
        ("BillingSuspendTenant", [Pd, Pd, Ok, Ok]),
        ("BillingUnsuspendTenant", [Pd, Pd, Ok, Ok]),
        ("LiftTransferLimit", [Pd, Pd, Ok, Ok]),
        ("ListAudit", admin_only(Ok)),
        // The fixture node's agent is unreachable: a backup of an own VPS is Unavailable;
        // another tenant's backups do not exist for a tenant, like a missing one.
        ("CreateBackup", tenant_scoped(Ua)),
        ("ListBackups", tenant_scoped(Ok)),
        ("RestoreBackup", tenant_scoped(Nf)),
        ("DeleteBackup", tenant_scoped(Nf)),
        // Agents enrol with the node join token, which no API token is, and
        // then authenticate with their certificate.
        ("Enroll", [Un, Un, Un, Un]),
        ("Register", [Un, Un, Un, Un]),
        ("Heartbeat", [Un, Un, Un, Un]),
    ];
    let covered: std::collections::BTreeSet<&str> = matrix
        .iter()
        .map(|(rpc, _)| rpc.trim_start_matches("Billing"))
        .collect();
    let missing: Vec<String> = controller_rpcs()
        .into_iter()
        .filter(|rpc| !covered.contains(rpc.as_str()))
        .collect();
    assert!(missing.is_empty(), "RPCs without a row: {missing:?}");
    let mut failures = Vec::new();
    for (rpc, expected) in &matrix {
        let expected: Vec<Code> = [Un, Un, Un].into_iter().chain(*expected).collect();
        for ((who, token), want) in PRINCIPALS.iter().zip(tokens).zip(expected) {
            let got = call(&api, rpc, who, token).await;
            if got != want {
                failures.push(format!("{rpc} as {who}: expected {want:?}, got {got:?}"));
            }
        }
    }
    // The join token enrols (here with a bad CSR, refused as such) and does nothing else.
    assert_eq!(call(&api, "Enroll", "node", &api.join).await, Inv);
    assert_eq!(call(&api, "Register", "node", &api.join).await, Un);
    assert_eq!(call(&api, "ListVps", "node", &api.join).await, Un);
    // A node certificate registers its own node only, and is no API credential.
    let node_a = api.with_channel(api.enrol("node-a").await);
    assert_eq!(call(&node_a, "Register", "node", "").await, Ok);
    assert_eq!(call(&node_a, "Heartbeat", "node", "").await, Ok);
    assert_eq!(call(&node_a, "ListVps", "node", "").await, Un);
    let node_b = api.with_channel(api.enrol("node-b").await);
    assert_eq!(
        call(&node_b, "Register", "node", "").await,
        Pd,
        "node-b posing as node-a"
    );
    assert_eq!(call(&node_b, "Heartbeat", "node", "").await, Pd);
    assert!(
        failures.is_empty(),
        "authorization matrix mismatches:\n{}",
        failures.join("\n")
    );
}
