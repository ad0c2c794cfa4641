//! `WatchVps`: the first event is the VPS now, then each recorded change in order, `gone` at
//! the end of a delete; scoped like `GetVps`; nothing is published for a transaction that
//! did not commit.

mod common;

use std::time::Duration;

use common::{start, with_token, Api};
use paddock_controller::store::{Conflict, StoreError, VpsChange};
use paddock_proto::v1;
use tonic::Code;

/// How long a test waits for one event before calling the watch broken.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

fn watch_request(tenant: &str, name: &str, token: &str) -> tonic::Request<v1::WatchVpsRequest> {
    with_token(
        v1::WatchVpsRequest {
            tenant: tenant.into(),
            name: name.into(),
        },
        token,
    )
}

async fn next_event(stream: &mut tonic::Streaming<v1::VpsWatchEvent>) -> v1::VpsWatchEvent {
    tokio::time::timeout(EVENT_TIMEOUT, stream.message())
        .await
        .expect("an event in time")
        .expect("stream healthy")
        .expect("stream still open")
}

fn vps_of(event: v1::VpsWatchEvent) -> v1::Vps {
    assert!(!event.gone, "unexpected gone event");
    event.vps.expect("event carries the VPS")
}

async fn heartbeat(node: &tonic::transport::Channel, vps_id: &str, state: v1::AgentVpsState) {
    v1::agent_registry_client::AgentRegistryClient::new(node.clone())
        .heartbeat(tonic::Request::new(v1::HeartbeatRequest {
            node_name: "node-a".into(),
            vps: vec![v1::VpsStatus {
                vps_id: vps_id.into(),
                state: state.into(),
                init_pid: 42,
                message: String::new(),
            }],
            ..Default::default()
        }))
        .await
        .expect("heartbeat");
}

async fn watched_channels_drop_to_zero(api: &Api) {
    for _ in 0..100 {
        if api.store.vps_watchers().watched() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the watch channel outlived its last watcher");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_follows_every_recorded_change_until_gone() {
    let api = start().await;
    let acme = api.tenant("acme", 10).await;
    let web = api.create_vps(&acme, "", "web").await.expect("create");
    let mut stream = api
        .vps()
        .watch_vps(watch_request("", "web", &acme))
        .await
        .expect("watch")
        .into_inner();

    let first = vps_of(next_event(&mut stream).await);
    assert_eq!(first.id, web.id);
    assert_eq!(
        first.state(),
        v1::VpsState::Pending,
        "the fixture node never applies"
    );

    // The node reports the VPS running.
    let node = api.enrol("node-a").await;
    heartbeat(&node, &web.id, v1::AgentVpsState::Running).await;
    let running = vps_of(next_event(&mut stream).await);
    assert_eq!(running.state(), v1::VpsState::Running);
    assert_eq!(running.init_pid, 42);

    // The owner stops it: the desired state changes first, then the node's report.
    api.vps()
        .stop_vps(with_token(
            v1::VpsRef {
                tenant: String::new(),
                name: "web".into(),
            },
            &acme,
        ))
        .await
        .expect("stop");
    let stopping = vps_of(next_event(&mut stream).await);
    assert_eq!(stopping.desired_power(), v1::PowerState::Stopped);
    assert_eq!(stopping.state(), v1::VpsState::Running);
    heartbeat(&node, &web.id, v1::AgentVpsState::Stopped).await;
    let stopped = vps_of(next_event(&mut stream).await);
    assert_eq!(stopped.state(), v1::VpsState::Stopped);

    // Delete: `deleting` at once, `gone` when the record goes (the fixture's node is never
    // reached, so the test removes it as the reconciler would once the node confirmed).
    api.vps()
        .delete_vps(with_token(
            v1::VpsRef {
                tenant: String::new(),
                name: "web".into(),
            },
            &acme,
        ))
        .await
        .expect("delete");
    let deleting = vps_of(next_event(&mut stream).await);
    assert_eq!(deleting.state(), v1::VpsState::Deleting);
    api.store.remove_vps(&web.id).expect("remove");
    let last = next_event(&mut stream).await;
    assert!(last.gone && last.vps.is_none(), "{last:?}");
    let end = tokio::time::timeout(EVENT_TIMEOUT, stream.message())
        .await
        .expect("the stream ends in time")
        .expect("clean end");
    assert!(end.is_none(), "nothing after gone: {end:?}");
    drop(stream);
    watched_channels_drop_to_zero(&api).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_is_scoped_like_get_vps() {
    let api = start().await;
    let acme = api.tenant("acme", 10).await;
    let other = api.tenant("other", 10).await;
    api.create_vps(&acme, "", "web").await.expect("create");

    let code = |result: Result<_, tonic::Status>| result.err().map(|status| status.code());
    // Another tenant cannot tell acme's VPS from a missing one.
    assert_eq!(
        code(
            api.vps()
                .watch_vps(watch_request("acme", "web", &other))
                .await
        ),
        Some(Code::NotFound)
    );
    assert_eq!(
        code(api.vps().watch_vps(watch_request("", "web", &other)).await),
        Some(Code::NotFound)
    );
    assert_eq!(
        code(api.vps().watch_vps(watch_request("", "nope", &acme)).await),
        Some(Code::NotFound)
    );
    assert_eq!(
        code(api.vps().watch_vps(watch_request("", "web", "")).await),
        Some(Code::Unauthenticated)
    );
    // An admin names the tenant.
    let mut stream = api
        .vps()
        .watch_vps(watch_request("acme", "web", &api.admin))
        .await
        .expect("admin watch")
        .into_inner();
    assert_eq!(vps_of(next_event(&mut stream).await).name, "web");
    assert_eq!(
        code(
            api.vps()
                .watch_vps(watch_request("", "web", &api.admin))
                .await
        ),
        Some(Code::InvalidArgument)
    );
    // Suspending the tenant changes how the VPS looks: the watch shows it.
    api.tenants()
        .suspend_tenant(with_token(
            v1::SuspendTenantRequest {
                name: "acme".into(),
                ..Default::default()
            },
            &api.admin,
        ))
        .await
        .expect("suspend");
    let suspended = vps_of(next_event(&mut stream).await);
    assert_eq!(suspended.state(), v1::VpsState::Suspended);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_published_for_a_transaction_that_did_not_commit() {
    let api = start().await;
    let acme = api.tenant("acme", 10).await;
    let web = api.create_vps(&acme, "", "web").await.expect("create");
    let mut changes = api.store.vps_watchers().subscribe(&web.id);

    let refused = api.store.update_vps(&web.id, &|vps| {
        vps.name = "renamed".into();
        Err(StoreError::Conflict(Conflict::Transaction))
    });
    assert!(refused.is_err());
    assert!(
        changes.try_recv().is_none(),
        "an aborted transaction published a change"
    );

    api.store
        .update_vps(&web.id, &|vps| {
            vps.restart_generation += 1;
            Ok(())
        })
        .expect("update");
    match changes.try_recv() {
        Some(Ok(VpsChange::Changed(record))) => {
            assert_eq!(record.restart_generation, 1);
            assert_eq!(record.name, "web");
        }
        other => panic!("expected the committed change, got {other:?}"),
    }
    drop(changes);
    assert_eq!(api.store.vps_watchers().watched(), 0);
}
