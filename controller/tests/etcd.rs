//! The real `paddock-controller` binary on `store = "etcd"`: `init` writes the store into a
//! private etcd (started by the test), and creates, lists and deletes through the API land
//! there and survive a `kill -9` of the controller.

use std::collections::BTreeSet;

mod common;

use common::etcd_server;

use common::daemon::Setup;
use common::with_token;
use paddock_controller::model::EventKind;
use paddock_controller::store::{EtcdStore, Store};
use paddock_proto::v1;

const PREFIX: &str = "/paddock-e2e/";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_runs_on_etcd() {
    let Some(etcd) = etcd_server::EtcdServer::start() else {
        return;
    };
    let setup = Setup::init_with(&format!(
        "store = \"etcd\"\netcd_endpoints = [\"{}\"]\netcd_prefix = \"{PREFIX}\"",
        etcd.endpoint
    ));
    assert!(
        !setup.dir.path().join("data/store").exists(),
        "init made no sled store"
    );
    let (daemon, channel) = setup.launch().await;
    setup.populate(&channel).await;
    let mut vps = v1::vps_service_client::VpsServiceClient::new(channel.clone());
    for name in ["web1", "web2", "web3"] {
        vps.create_vps(with_token(
            v1::CreateVpsRequest {
                tenant: "acme".into(),
                name: name.into(),
                plan: "nano".into(),
                start: true,
                ..Default::default()
            },
            &setup.admin,
        ))
        .await
        .unwrap_or_else(|status| panic!("create {name}: {status:?}"));
    }
    let duplicate = vps
        .create_vps(with_token(
            v1::CreateVpsRequest {
                tenant: "acme".into(),
                name: "web1".into(),
                plan: "nano".into(),
                ..Default::default()
            },
            &setup.admin,
        ))
        .await
        .expect_err("a taken name");
    assert_eq!(duplicate.code(), tonic::Code::AlreadyExists);
    let list = |channel: tonic::transport::Channel, admin: String| async move {
        v1::vps_service_client::VpsServiceClient::new(channel)
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
            .vps
    };
    let listed = list(channel.clone(), setup.admin.clone()).await;
    let names: BTreeSet<String> = listed.iter().map(|vps| vps.name.clone()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["web1".into(), "web2".into(), "web3".into()])
    );
    let addresses: BTreeSet<String> = listed.iter().flat_map(|vps| vps.ipv4.clone()).collect();
    assert_eq!(addresses.len(), 3, "one distinct address each: {listed:?}");

    let deleted = vps
        .delete_vps(with_token(
            v1::VpsRef {
                tenant: "acme".into(),
                name: "web2".into(),
            },
            &setup.admin,
        ))
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(deleted.state(), v1::VpsState::Deleting);

    // Everything acknowledged is in etcd: kill the controller and start it again.
    daemon.kill();
    let (_daemon, channel) = setup.launch().await;
    let listed = list(channel.clone(), setup.admin.clone()).await;
    assert_eq!(listed.len(), 3);
    let web2 = listed
        .iter()
        .find(|vps| vps.name == "web2")
        .expect("web2 listed");
    assert_eq!(web2.state(), v1::VpsState::Deleting);

    // And it is the etcd store that holds them, with one event per create.
    let store = EtcdStore::open(std::slice::from_ref(&etcd.endpoint), PREFIX).expect("open");
    assert_eq!(store.list_vps(Some("acme")).expect("list").len(), 3);
    let created = store
        .list_events(0, 100)
        .expect("events")
        .into_iter()
        .filter(|event| event.kind == EventKind::Created)
        .count();
    assert_eq!(created, 3);
}

/// `migrate-store --from sled --to etcd` with the controller stopped: the controller started
/// on etcd afterwards serves what sled held, and a second copy is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_store_moves_a_sled_installation_to_etcd() {
    let Some(etcd) = etcd_server::EtcdServer::start() else {
        return;
    };
    let setup = Setup::init();
    let (daemon, channel) = setup.launch().await;
    setup.populate(&channel).await;
    let mut vps = v1::vps_service_client::VpsServiceClient::new(channel.clone());
    for name in ["db1", "db2"] {
        vps.create_vps(with_token(
            v1::CreateVpsRequest {
                tenant: "acme".into(),
                name: name.into(),
                plan: "nano".into(),
                ..Default::default()
            },
            &setup.admin,
        ))
        .await
        .unwrap_or_else(|status| panic!("create {name}: {status:?}"));
    }
    // A running controller holds sled's lock: the copy is refused.
    let config = std::fs::read_to_string(&setup.config).expect("config");
    std::fs::write(
        &setup.config,
        format!(
            "{config}store = \"etcd\"\netcd_endpoints = [\"{}\"]\netcd_prefix = \"{PREFIX}\"\n",
            etcd.endpoint
        ),
    )
    .expect("config");
    let migrate = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_paddock-controller"))
            .arg("--config")
            .arg(&setup.config)
            .args(["migrate-store", "--from", "sled", "--to", "etcd"])
            .output()
            .expect("migrate-store")
    };
    assert!(!migrate().status.success(), "copied a store in use");
    daemon.kill();
    let copied = migrate();
    assert!(
        copied.status.success(),
        "{}",
        String::from_utf8_lossy(&copied.stderr)
    );
    let again = migrate();
    assert!(!again.status.success(), "copied into a non-empty prefix");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // Now on etcd (the config says so): the VPSes, the tenant and the admin token are there.
    let (_daemon, channel) = setup.launch().await;
    let listed = v1::vps_service_client::VpsServiceClient::new(channel)
        .list_vps(with_token(
            v1::ListVpsRequest {
                tenant: "acme".into(),
                page: None,
            },
            &setup.admin,
        ))
        .await
        .expect("list on etcd")
        .into_inner()
        .vps;
    let names: BTreeSet<String> = listed.into_iter().map(|vps| vps.name).collect();
    assert_eq!(names, BTreeSet::from(["db1".into(), "db2".into()]));
    let store = EtcdStore::open(std::slice::from_ref(&etcd.endpoint), PREFIX).expect("open");
    assert_eq!(store.list_vps(Some("acme")).expect("list").len(), 2);
}
