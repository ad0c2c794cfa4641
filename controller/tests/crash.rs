//! `kill -9` of the real controller binary while 200 creates are in flight:
//! after a restart, every create that was answered OK exists, the store opens
//! cleanly, and the tenant's recorded usage equals the sum of what exists. Every
//! create carries a request id: retried after the restart, each one succeeds
//! exactly once (the ones that committed before the kill, answered or not, are
//! answered with their VPS, not refused as duplicates nor charged twice).

use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::daemon::Setup;
use common::with_token;
use paddock_proto::v1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_creates_survive_kill_9() {
    let setup = Setup::init();
    let (daemon, channel) = setup.launch().await;
    setup.populate(&channel).await;
    let admin = setup.admin.clone();

    // 200 creates in flight; the controller is killed part-way through.
    let channel = Arc::new(channel);
    let admin = Arc::new(admin);
    let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (channel, admin, acked) = (channel.clone(), admin.clone(), acked.clone());
            tokio::spawn(async move {
                let name = format!("vps{i}");
                let result = v1::vps_service_client::VpsServiceClient::new((*channel).clone())
                    .create_vps(create_request(&name, &admin))
                    .await;
                if result.is_ok() {
                    acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                (name, result.is_ok())
            })
        })
        .collect();
    // Kill once a good share has been acknowledged, with many still in flight.
    let deadline = Instant::now() + Duration::from_secs(10);
    while acked.load(std::sync::atomic::Ordering::SeqCst) < 60 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    daemon.kill();
    let mut acknowledged = Vec::new();
    for task in tasks {
        let (name, ok) = task.await.expect("join");
        if ok {
            acknowledged.push(name);
        }
    }
    assert!(
        !acknowledged.is_empty(),
        "no create was acknowledged before the kill"
    );

    let (_daemon, channel) = setup.launch().await;
    let mut vps = v1::vps_service_client::VpsServiceClient::new(channel.clone());
    let mut ids = std::collections::HashMap::new();
    for name in &acknowledged {
        let found = vps
            .get_vps(with_token(
                v1::VpsRef {
                    tenant: "acme".into(),
                    name: name.clone(),
                },
                &admin,
            ))
            .await
            .unwrap_or_else(|status| panic!("acknowledged create of {name} was lost: {status:?}"));
        ids.insert(name.clone(), found.into_inner().id);
    }
    // Every create retried with its request id, as a client whose answer was lost would.
    for i in 0..200 {
        let name = format!("vps{i}");
        let retried = vps
            .create_vps(create_request(&name, &admin))
            .await
            .unwrap_or_else(|status| panic!("retry of the create of {name}: {status:?}"))
            .into_inner();
        if let Some(id) = ids.get(&name) {
            assert_eq!(&retried.id, id, "a retry of {name} answers the same VPS");
        }
    }
    let existing = vps
        .list_vps(with_token(
            v1::ListVpsRequest {
                tenant: "acme".into(),
                page: None,
            },
            &admin,
        ))
        .await
        .expect("list")
        .into_inner()
        .vps;
    let tenant = v1::tenant_service_client::TenantServiceClient::new(channel)
        .get_tenant(with_token(
            v1::GetTenantRequest {
                name: "acme".into(),
            },
            &admin,
        ))
        .await
        .expect("tenant")
        .into_inner();
    let used = tenant.used.expect("used");
    assert_eq!(existing.len(), 200, "each create happened exactly once");
    assert_eq!(
        used.max_vps as usize,
        existing.len(),
        "usage matches what exists"
    );
    let memory: u64 = existing
        .iter()
        .map(|v| v.resources.as_ref().map_or(0, |r| r.memory_bytes))
        .sum();
    assert_eq!(used.memory_bytes, memory);
    assert_eq!(
        used.ipv4_count as usize,
        existing.iter().map(|v| v.ipv4.len()).sum::<usize>()
    );
    eprintln!(
        "{} of 200 creates acknowledged before kill -9; {} exist after restart",
        acknowledged.len(),
        existing.len()
    );
}

/// The create of `name` with a request id of its own, the same on every attempt.
fn create_request(name: &str, token: &str) -> tonic::Request<v1::CreateVpsRequest> {
    let mut request = with_token(
        v1::CreateVpsRequest {
            tenant: "acme".into(),
            name: name.to_owned(),
            plan: "nano".into(),
            start: true,
            ..Default::default()
        },
        token,
    );
    let id = format!("create-{name}").parse().expect("ascii request id");
    request.metadata_mut().insert("paddock-request-id", id);
    request
}
