//! `WatchEvents` across a controller restart: a client that follows the
//! stream, keeps its last cursor and reconnects after the controller was
//! killed sees every event exactly once, in order.

use std::time::Duration;

mod common;

use common::daemon::Setup;
use common::with_token;
use paddock_proto::v1;
use tonic::transport::Channel;

async fn create(channel: &Channel, admin: &str, name: &str) {
    v1::vps_service_client::VpsServiceClient::new(channel.clone())
        .create_vps(with_token(
            v1::CreateVpsRequest {
                tenant: "acme".into(),
                name: name.into(),
                plan: "nano".into(),
                start: true,
                ..Default::default()
            },
            admin,
        ))
        .await
        .expect("create");
}

async fn suspend(channel: &Channel, billing: &str, suspended: bool) {
    let mut client = v1::billing_service_client::BillingServiceClient::new(channel.clone());
    let request = v1::BillingSuspendRequest {
        tenant: "acme".into(),
        reason: "test".into(),
    };
    if suspended {
        client.suspend_tenant(with_token(request, billing)).await
    } else {
        client.unsuspend_tenant(with_token(request, billing)).await
    }
    .expect("suspension");
}

/// Reads events until `count` have arrived (or the stream breaks), recording the cursor.
async fn follow(
    channel: &Channel,
    billing: &str,
    cursor: &mut u64,
    seen: &mut Vec<(u64, v1::EventKind, String)>,
    count: usize,
) {
    let mut stream = v1::billing_service_client::BillingServiceClient::new(channel.clone())
        .watch_events(with_token(
            v1::WatchEventsRequest {
                after_cursor: *cursor,
                tenant: "acme".into(),
            },
            billing,
        ))
        .await
        .expect("watch")
        .into_inner();
    while seen.len() < count {
        match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
            Ok(Ok(Some(event))) => {
                *cursor = event.cursor;
                seen.push((event.cursor, event.kind(), event.vps));
            }
            Ok(Ok(None)) | Ok(Err(_)) => return,
            Err(_) => panic!("no event within 10 s; seen so far: {seen:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_resume_exactly_once_across_a_controller_restart() {
    let setup = Setup::init();
    let (daemon, channel) = setup.launch().await;
    setup.populate(&channel).await;
    let billing = v1::token_service_client::TokenServiceClient::new(channel.clone())
        .create_token(with_token(
            v1::CreateTokenRequest {
                role: v1::Role::Billing.into(),
                ..Default::default()
            },
            &setup.admin,
        ))
        .await
        .expect("billing token")
        .into_inner()
        .token;

    let mut cursor = 0;
    let mut seen = Vec::new();
    create(&channel, &setup.admin, "v1").await;
    create(&channel, &setup.admin, "v2").await;
    follow(&channel, &billing, &mut cursor, &mut seen, 2).await;
    suspend(&channel, &billing, true).await;
    suspend(&channel, &billing, false).await;
    // Follow part of the way, then the controller dies under the client.
    follow(&channel, &billing, &mut cursor, &mut seen, 3).await;
    daemon.kill();

    let (_daemon, channel) = setup.launch().await;
    create(&channel, &setup.admin, "v3").await;
    suspend(&channel, &billing, true).await;
    follow(&channel, &billing, &mut cursor, &mut seen, 6).await;

    let kinds: Vec<(v1::EventKind, &str)> = seen
        .iter()
        .map(|(_, kind, vps)| (*kind, vps.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (v1::EventKind::Created, "v1"),
            (v1::EventKind::Created, "v2"),
            (v1::EventKind::Suspended, ""),
            (v1::EventKind::Unsuspended, ""),
            (v1::EventKind::Created, "v3"),
            (v1::EventKind::Suspended, ""),
        ]
    );
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "strictly increasing cursors: {seen:?}"
    );
}
