//! The store conformance suite: every test runs against both backends, sled in a temp dir and
//! etcd started by the test (see `etcd_server.rs`; skipped when etcd is not installed, failed
//! instead under `PADDOCK_REQUIRE_PRIVILEGED=1`).

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::Utc;

#[path = "etcd_server.rs"]
mod etcd_server;

use super::*;
use crate::model::migration;
use crate::model::*;

/// A store under test, with what a test needs beyond the `Store` trait.
pub(crate) trait Backend: Store {
    /// Every stored key and value, to check that a refused request changed nothing.
    fn dump_all(&self) -> Result<Vec<DumpEntry>, StoreError>;
}

impl Backend for SledStore {
    fn dump_all(&self) -> Result<Vec<DumpEntry>, StoreError> {
        self.dump()
    }
}

impl Backend for EtcdStore {
    fn dump_all(&self) -> Result<Vec<DumpEntry>, StoreError> {
        self.dump()
    }
}

/// A fresh, empty store and what keeps it alive (its dir, its etcd).
pub(crate) struct Fixture {
    pub(crate) store: Arc<dyn Backend>,
    _dir: tempfile::TempDir,
    _etcd: Option<etcd_server::EtcdServer>,
}

pub(crate) fn sled() -> Option<Fixture> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::create(&dir.path().join("store")).expect("create sled store");
    Some(Fixture {
        store: Arc::new(store),
        _dir: dir,
        _etcd: None,
    })
}

pub(crate) fn etcd() -> Option<Fixture> {
    let server = etcd_server::EtcdServer::start()?;
    let store = EtcdStore::create(std::slice::from_ref(&server.endpoint), "/paddock-test/")
        .expect("create etcd store");
    Some(Fixture {
        store: Arc::new(store),
        _dir: tempfile::tempdir().expect("tempdir"),
        _etcd: Some(server),
    })
}

/// One test per backend and case: `suite!(backend: case, ...)`.
macro_rules! suite {
    ($backend:ident: $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[test]
                fn $case() {
                    if let Some(fixture) = super::$backend() {
                        super::$case(&fixture);
                    }
                }
            )*
        }
    };
}

/// Every case against both backends; the caller's module must have `sled` and `etcd` (the
/// fixture functions) and the cases in scope.
macro_rules! both {
    ($($case:ident),* $(,)?) => {
        $crate::store::conformance::suite!(sled: $($case),*);
        $crate::store::conformance::suite!(etcd: $($case),*);
    };
}
pub(crate) use {both, suite};

both!(
    concurrent_creates_never_exceed_the_quota,
    concurrent_creates_never_share_an_address,
    duplicate_names_and_release_on_remove,
    node_index_and_allocations_follow_vps_and_pool_changes,
    every_change_that_appends_events_signals_followers,
    a_batch_of_vps_changes_fails_only_its_failing_changes,
    a_batch_of_creates_answers_each_as_if_made_one_by_one,
    a_batch_larger_than_one_transaction_is_written_whole_in_order,
    event_cursors_and_audit_sequence_have_no_gaps,
    usage_sample_writes_cursor_and_hour_together,
    a_batch_of_usage_samples_is_applied_in_order,
    plans_tokens_nodes_and_pools,
    long_lists_are_complete_and_ordered,
    vps_watchers_see_committed_changes,
    snapshots_and_backups,
    migrations_reserve_switch_and_roll_back,
    a_shared_pools_addresses_are_given_once_across_its_nodes,
    a_move_inside_a_shared_pool_keeps_every_address,
    a_lone_candidate_leads,
);

pub(crate) fn tenant(name: &str, max_vps: u32) -> TenantRecord {
    TenantRecord {
        name: name.to_owned(),
        quota: Quota {
            max_vps,
            vcpus: 100.0,
            memory_bytes: u64::MAX,
            disk_bytes: u64::MAX,
            ipv4_count: 100,
        },
        used: Quota::default(),
        suspended: false,
        created_at: Utc::now(),
    }
}

pub(crate) fn vps(tenant: &str, name: &str) -> VpsRecord {
    VpsRecord {
        vps_id: format!("{tenant}-{name}-id"),
        name: name.to_owned(),
        tenant: tenant.to_owned(),
        plan: "nano".to_owned(),
        template: "busybox".to_owned(),
        resources: Resources {
            vcpus: 1.0,
            memory_bytes: 256 << 20,
            disk_bytes: 2 << 30,
            ..Resources::default()
        },
        node: "n1".to_owned(),
        desired_power: Power::Running,
        deleting: false,
        ipv4: vec![],
        network: None,
        rebuild_generation: 0,
        restart_generation: 0,
        created_at: Utc::now(),
        observed: None,
        transfer_limit: None,
        applied_spec: None,
        last_request: None,
    }
}

fn concurrent_creates_never_exceed_the_quota(fixture: &Fixture) {
    let store = fixture.store.clone();
    store.create_tenant(&tenant("acme", 10)).expect("tenant");
    let handles: Vec<_> = (0..100)
        .map(|i| {
            let store = store.clone();
            std::thread::spawn(move || store.create_vps(&vps("acme", &format!("vps{i}"))))
        })
        .collect();
    let results: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 10);
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|e| matches!(e, StoreError::Quota(m) if m.to_string().contains("10 of 10 VPSes"))));
    let used = store.get_tenant("acme").expect("get").expect("exists").used;
    assert_eq!(used.max_vps, 10);
    assert_eq!(store.list_vps(Some("acme")).expect("list").len(), 10);
}

fn duplicate_names_and_release_on_remove(fixture: &Fixture) {
    let store = &*fixture.store;
    store.create_tenant(&tenant("acme", 5)).expect("tenant");
    store.create_tenant(&tenant("other", 5)).expect("tenant");
    store.create_vps(&vps("acme", "web1")).expect("first");
    let before = store.dump_all().expect("dump");
    let again = store
        .create_vps(&vps("acme", "web1"))
        .expect_err("duplicate");
    assert!(matches!(again, StoreError::AlreadyExists { .. }));
    assert_eq!(
        store.dump_all().expect("dump"),
        before,
        "a refused create changes nothing"
    );
    // The same name in another tenant is a different VPS.
    store
        .create_vps(&vps("other", "web1"))
        .expect("other tenant");
    assert!(store.find_vps("other", "web1").expect("find").is_some());
    assert_eq!(store.list_vps(Some("acme")).expect("list").len(), 1);
    store.remove_vps("acme-web1-id").expect("remove");
    assert_eq!(
        store.get_tenant("acme").expect("get").expect("tenant").used,
        Quota::default()
    );
    assert!(store.find_vps("acme", "web1").expect("find").is_none());
    store.delete_tenant("acme").expect("empty tenant can go");
    let busy = store.delete_tenant("other").expect_err("has a VPS");
    assert!(matches!(busy, StoreError::Conflict(_)));
}
fn pool(name: &str, node: &str, third_octet: u8) -> PoolRecord {
    PoolRecord {
        name: name.to_owned(),
        node: node.to_owned(),
        nodes: Vec::new(),
        cidr: format!("10.9.{third_octet}.0/24"),
        gateway: format!("10.9.{third_octet}.1"),
        range_start: format!("10.9.{third_octet}.10"),
        range_end: format!("10.9.{third_octet}.19"),
        ipv6_prefix: None,
        nat: true,
        allocated: Default::default(),
        allocated_ipv6: Default::default(),
        created_at: Utc::now(),
    }
}

fn allocation(store: &dyn Backend, node: &str) -> NodeAllocationRecord {
    store
        .node_allocations()
        .expect("allocations")
        .into_iter()
        .find(|(name, _)| name == node)
        .map(|(_, allocation)| allocation)
        .unwrap_or_default()
}

fn node_index_and_allocations_follow_vps_and_pool_changes(fixture: &Fixture) {
    let store = &*fixture.store;
    store.create_tenant(&tenant("acme", 10)).expect("tenant");
    store.create_pool(&pool("p1", "n1", 1)).expect("pool");
    let mut web = vps("acme", "web");
    web.resources.ipv4_count = 1;
    store.create_vps(&web).expect("web");
    let mut db = vps("acme", "db");
    db.node = "n2".to_owned();
    db.resources.vcpus = 0.5;
    store.create_vps(&db).expect("db");
    let on_n1: Vec<String> = store
        .list_vps_on_node("n1")
        .expect("list")
        .into_iter()
        .map(|vps| vps.name)
        .collect();
    assert_eq!(on_n1, ["web"]);
    let n1 = allocation(store, "n1");
    assert_eq!((n1.vps_count, n1.vcpus, n1.free_ipv4), (1, 1.0, 9));
    assert_eq!(n1.pools, ["p1"]);
    assert_eq!(allocation(store, "n2").vcpus, 0.5);
    store
        .resize_vps(
            &db.vps_id,
            "nano",
            &Resources {
                vcpus: 2.0,
                ..db.resources.clone()
            },
        )
        .expect("resize");
    assert_eq!(allocation(store, "n2").vcpus, 2.0);
    store.remove_vps(&web.vps_id).expect("remove");
    assert!(store.list_vps_on_node("n1").expect("list").is_empty());
    let n1 = allocation(store, "n1");
    assert_eq!((n1.vps_count, n1.vcpus, n1.free_ipv4), (0, 0.0, 10));
    store.delete_pool("p1").expect("delete pool");
    assert_eq!(allocation(store, "n1"), NodeAllocationRecord::default());
}

fn every_change_that_appends_events_signals_followers(fixture: &Fixture) {
    let store = &*fixture.store;
    store.create_tenant(&tenant("acme", 5)).expect("tenant");
    let mut commits = store.event_signal().subscribe();
    let signalled = |commits: &mut tokio::sync::watch::Receiver<u64>, what: &str| {
        assert!(
            commits.has_changed().expect("sender alive"),
            "{what} appended events without signalling"
        );
        commits.borrow_and_update();
    };
    let events = |store: &dyn Backend| store.list_events(0, 100).expect("events").len();

    store.create_vps(&vps("acme", "web1")).expect("create");
    signalled(&mut commits, "create_vps");
    store
        .update_vps("acme-web1-id", &|vps| {
            vps.observed = None;
            Ok(())
        })
        .expect("a heartbeat-like update");
    assert!(
        !commits.has_changed().expect("sender alive"),
        "an update that appends no event wakes no follower"
    );
    store
        .update_vps_emitting("acme-web1-id", &|vps| {
            vps.rebuild_generation += 1;
            Ok(Some(EventRecord::of_vps(EventKind::Rebuilt, vps)))
        })
        .expect("rebuild");
    signalled(&mut commits, "update_vps_emitting");
    store
        .update_tenant_emitting("acme", &|tenant| {
            tenant.suspended = true;
            Ok(Some(EventKind::Suspended))
        })
        .expect("suspend");
    signalled(&mut commits, "update_tenant_emitting");
    store.remove_vps("acme-web1-id").expect("remove");
    signalled(&mut commits, "remove_vps");
    assert_eq!(events(store), 4, "created, rebuilt, suspended, deleted");
}

fn a_batch_of_vps_changes_fails_only_its_failing_changes(fixture: &Fixture) {
    let store = &*fixture.store;
    store.create_tenant(&tenant("acme", 5)).expect("tenant");
    for name in ["web1", "web2"] {
        store.create_vps(&vps("acme", name)).expect("create");
    }
    let before = store.list_events(0, 100).expect("events").len();
    let commits = store.event_signal().subscribe();
    let started = |vps: &mut VpsRecord| {
        vps.applied_spec = Some("digest".to_owned());
        Ok(Some(EventRecord::of_vps(EventKind::Started, vps)))
    };
    let refused = |_: &mut VpsRecord| Err(StoreError::Conflict(Conflict::Transaction));
    let results = store.update_vpses_emitting(&[
        ("acme-web1-id", &started),
        ("acme-gone-id", &started),
        ("acme-web2-id", &refused),
    ]);
    assert_eq!(results.len(), 3);
    let first = results[0].as_ref().expect("the existing VPS changes");
    assert_eq!(first.applied_spec.as_deref(), Some("digest"));
    assert!(
        matches!(results[1], Err(StoreError::NotFound { .. })),
        "{:?}",
        results[1]
    );
    assert!(
        matches!(results[2], Err(StoreError::Conflict(_))),
        "{:?}",
        results[2]
    );
    let stored = |id: &str| store.get_vps(id).expect("get").expect("exists");
    assert_eq!(
        stored("acme-web1-id").applied_spec.as_deref(),
        Some("digest")
    );
    assert_eq!(
        stored("acme-web2-id").applied_spec,
        None,
        "a refused change writes nothing"
    );
    let events = store.list_events(0, 100).expect("events");
    assert_eq!(
        events.len(),
        before + 1,
        "one event, of the change that committed"
    );
    assert!(
        commits.has_changed().expect("sender alive"),
        "followers are woken"
    );
}

fn a_batch_of_creates_answers_each_as_if_made_one_by_one(fixture: &Fixture) {
    let store = &*fixture.store;
    store.create_tenant(&tenant("acme", 2)).expect("tenant");
    let batch = [vps("acme", "web1"), vps("acme", "web2")];
    let created = store.create_vpses(&batch);
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    assert_eq!(store.list_vps(Some("acme")).expect("list").len(), 2);
    // Each create of a batch sees the ones before it: the tenant and the node are charged
    // for both, not twice for one.
    let used = store.get_tenant("acme").expect("get").expect("tenant").used;
    assert_eq!(used.max_vps, 2, "the tenant is charged for both");
    assert_eq!(
        allocation(store, &batch[0].node).vps_count,
        2,
        "the node too"
    );
    store.create_tenant(&tenant("beta", 2)).expect("tenant");
    let mut again = vps("beta", "web1");
    again.vps_id = "beta-web1-again".to_owned();
    let batch = [
        vps("beta", "web1"),
        again,
        vps("beta", "web2"),
        vps("beta", "web3"),
    ];
    let results = store.create_vpses(&batch);
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(
        matches!(results[1], Err(StoreError::AlreadyExists { .. })),
        "{:?}",
        results[1]
    );
    assert!(results[2].is_ok(), "{:?}", results[2]);
    assert!(
        matches!(results[3], Err(StoreError::Quota(_))),
        "{:?}",
        results[3]
    );
    let names: BTreeSet<String> = store
        .list_vps(Some("beta"))
        .expect("list")
        .into_iter()
        .map(|vps| vps.name)
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["web1".to_owned(), "web2".to_owned()])
    );
    let created = store.list_events(0, 100).expect("events");
    assert_eq!(created.len(), 4, "one event per VPS created");
}

/// 40 creates, then 40 changes, then 40 audit entries at once: more than one etcd Txn takes
/// (it refuses more than 128 operations), so each batch is cut; every item is written, its
/// events and sequence numbers in order.
fn a_batch_larger_than_one_transaction_is_written_whole_in_order(fixture: &Fixture) {
    let store = &*fixture.store;
    let mut roomy = tenant("acme", 100);
    roomy.quota.vcpus = 1000.0;
    store.create_tenant(&roomy).expect("tenant");
    let batch: Vec<VpsRecord> = (0..40).map(|i| vps("acme", &format!("web{i}"))).collect();
    let created = store.create_vpses(&batch);
    assert_eq!(created.len(), 40);
    for (record, result) in batch.iter().zip(&created) {
        let stored = result.as_ref().expect("every create of the batch succeeds");
        assert_eq!(stored.vps_id, record.vps_id, "answers in the batch's order");
    }
    let used = store.get_tenant("acme").expect("get").expect("tenant").used;
    assert_eq!(used.max_vps, 40, "the tenant is charged once for each");
    assert_eq!(allocation(store, "n1").vps_count, 40, "the node too");
    let started = |vps: &mut VpsRecord| {
        vps.applied_spec = Some("digest".to_owned());
        Ok(Some(EventRecord::of_vps(EventKind::Started, vps)))
    };
    let changes: Vec<(&str, &VpsUpdate<'_>)> = batch
        .iter()
        .map(|vps| (vps.vps_id.as_str(), &started as &VpsUpdate<'_>))
        .collect();
    let changed = store.update_vpses_emitting(&changes);
    assert!(changed.iter().all(Result::is_ok), "{changed:?}");
    let events = store.list_events(0, 1000).expect("events");
    assert_eq!(events.len(), 80, "one event per create and per change");
    let cursors: Vec<u64> = events.iter().map(|event| event.cursor).collect();
    assert_eq!(cursors, (1..=80).collect::<Vec<u64>>(), "no gap, in order");
    let names: Vec<String> = events
        .iter()
        .map(|event| format!("{:?} {}", event.kind, event.vps))
        .collect();
    let expected: Vec<String> = ["Created", "Started"]
        .iter()
        .flat_map(|kind| (0..40).map(move |i| format!("{kind} web{i}")))
        .collect();
    assert_eq!(names, expected, "events in the batches' order");
    let entries: Vec<AuditRecord> = (0..40)
        .map(|i| AuditRecord {
            target: format!("x{i}"),
            ..audit()
        })
        .collect();
    let seqs: Vec<u64> = store
        .append_audits(&entries)
        .into_iter()
        .map(|seq| seq.expect("every entry is appended"))
        .collect();
    assert_eq!(seqs, (1..=40).collect::<Vec<u64>>(), "in order, no gap");
    let targets: Vec<String> = store
        .list_audit(0, 1000)
        .expect("audit")
        .into_iter()
        .map(|entry| entry.target)
        .collect();
    let expected: Vec<String> = (0..40).map(|i| format!("x{i}")).collect();
    assert_eq!(targets, expected, "stored under their sequence numbers");
}

fn concurrent_creates_never_share_an_address(fixture: &Fixture) {
    let store = fixture.store.clone();
    let mut roomy = tenant("acme", 100);
    roomy.quota.vcpus = 1000.0;
    store.create_tenant(&roomy).expect("tenant");
    // Ten addresses (.10 to .19) for 40 VPSes that want one each.
    store.create_pool(&pool("p1", "n1", 7)).expect("pool");
    let handles: Vec<_> = (0..40)
        .map(|i| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut one = vps("acme", &format!("v{i}"));
                one.resources.ipv4_count = 1;
                store.create_vps(&one)
            })
        })
        .collect();
    let results: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 10);
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|e| matches!(e, StoreError::Ipam(_))));
    let created = store.list_vps(Some("acme")).expect("list");
    // What a create answers is the record as stored, with the addresses it was given.
    for returned in results.iter().filter_map(|r| r.as_ref().ok()) {
        assert_eq!(returned.ipv4.len(), 1);
        let stored = store.get_vps(&returned.vps_id).expect("get").expect("vps");
        assert_eq!(
            (&returned.ipv4, &returned.network),
            (&stored.ipv4, &stored.network)
        );
    }
    let addresses: BTreeSet<String> = created
        .iter()
        .flat_map(|vps| vps.ipv4.iter().cloned())
        .collect();
    assert_eq!(created.len(), 10);
    assert_eq!(addresses.len(), 10, "no address given twice: {created:?}");
    let stored = store.get_pool("p1").expect("get").expect("pool");
    assert_eq!(stored.allocated.len(), 10);
    assert_eq!(
        store
            .get_tenant("acme")
            .expect("get")
            .expect("tenant")
            .used
            .max_vps,
        10
    );
    assert_eq!(allocation(&*store, "n1").free_ipv4, 0);
}

fn audit() -> AuditRecord {
    AuditRecord {
        seq: 0,
        at: Utc::now(),
        actor: "test".to_owned(),
        method: "Create".to_owned(),
        target: "x".to_owned(),
        result: "ok".to_owned(),
    }
}

fn event_cursors_and_audit_sequence_have_no_gaps(fixture: &Fixture) {
    let store = fixture.store.clone();
    let mut roomy = tenant("acme", 100);
    roomy.quota.vcpus = 1000.0;
    store.create_tenant(&roomy).expect("tenant");
    let handles: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            std::thread::spawn(move || {
                let one = vps("acme", &format!("v{i}"));
                store.create_vps(&one)?;
                store.append_audit(&audit())?;
                store.remove_vps(&one.vps_id)
            })
        })
        .collect();
    for handle in handles {
        handle
            .join()
            .expect("thread")
            .expect("create, audit, remove");
    }
    let cursors: Vec<u64> = store
        .list_events(0, 1000)
        .expect("events")
        .iter()
        .map(|event| event.cursor)
        .collect();
    assert_eq!(cursors, (1..=40).collect::<Vec<u64>>());
    let after: Vec<u64> = store
        .list_events(17, 5)
        .expect("events")
        .iter()
        .map(|event| event.cursor)
        .collect();
    assert_eq!(after, [18, 19, 20, 21, 22]);
    let seqs: Vec<u64> = store
        .list_audit(0, 1000)
        .expect("audit")
        .iter()
        .map(|entry| entry.seq)
        .collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<u64>>());
}

/// One heartbeat's samples in one call: each sees what the ones before it wrote (two of one
/// VPS: a run's closing sample and the next run's first), a repeat is ignored, and the
/// events of the batch are appended in order.
fn a_batch_of_usage_samples_is_applied_in_order(fixture: &Fixture) {
    let store = &*fixture.store;
    store.create_tenant(&tenant("acme", 5)).expect("tenant");
    let (web, db) = (vps("acme", "web"), vps("acme", "db"));
    store.create_vps(&web).expect("web");
    store.create_vps(&db).expect("db");
    // The VPS lookups before such a batch are one call too.
    let found: Vec<Option<String>> = store
        .get_vpses(&[&web.vps_id, "acme-gone-id", &db.vps_id])
        .expect("get_vpses")
        .into_iter()
        .map(|vps| vps.map(|vps| vps.name))
        .collect();
    assert_eq!(found, [Some("web".to_owned()), None, Some("db".to_owned())]);
    let key = |vps: &VpsRecord| UsageHourKey {
        tenant: "acme".to_owned(),
        hour_start: 3600,
        vps_id: vps.vps_id.clone(),
    };
    let (web_key, db_key) = (key(&web), key(&db));
    let after = store.list_events(0, 1000).expect("events").len();
    // Each sample counts one CPU nanosecond and takes sequence `sequence`; a later sequence
    // than the cursor's only, as the real arithmetic does.
    let sequences = [1, 1, 2, 2];
    let applies: Vec<_> = sequences
        .iter()
        .map(|&sequence| {
            move |state: UsageState| -> Option<UsageUpdate> {
                let vps = state.vps?;
                let last = state.cursor.map_or(0, |cursor| cursor.sequence);
                if sequence <= last {
                    return None;
                }
                let mut hour = state.hour.unwrap_or_else(|| UsageHourRecord {
                    tenant: vps.tenant.clone(),
                    vps_id: vps.vps_id.clone(),
                    hour_start: 3600,
                    ..UsageHourRecord::default()
                });
                hour.cpu_usage_ns += 1;
                Some(UsageUpdate {
                    cursor: UsageCursorRecord {
                        sequence,
                        ..UsageCursorRecord::default()
                    },
                    hour,
                    events: vec![EventRecord::of_vps(EventKind::Transfer80Percent, &vps)],
                    vps: None,
                })
            }
        })
        .collect();
    let targets = [
        (&web, &web_key),
        (&db, &db_key),
        (&web, &web_key),
        (&web, &web_key),
    ];
    let items: Vec<UsageItem<'_>> = targets
        .iter()
        .zip(&applies)
        .map(|((vps, key), apply)| UsageItem {
            vps_id: &vps.vps_id,
            hour_key: key,
            apply,
        })
        .collect();
    let answers: Vec<Option<u64>> = store
        .record_usages(&items)
        .into_iter()
        .map(|answer| {
            answer
                .expect("recorded")
                .map(|update| update.cursor.sequence)
        })
        .collect();
    assert_eq!(
        answers,
        [Some(1), Some(1), Some(2), None],
        "the repeat is ignored"
    );
    let cursor = store.get_usage_cursor(&web.vps_id).expect("cursor");
    assert_eq!(cursor.map(|cursor| cursor.sequence), Some(2));
    let hours = store
        .list_usage_hours(Some("acme"), 0, 7200)
        .expect("hours");
    let cpu: Vec<(String, u64)> = hours
        .iter()
        .map(|hour| (hour.vps_id.clone(), hour.cpu_usage_ns))
        .collect();
    assert_eq!(
        cpu,
        [(db.vps_id.clone(), 1), (web.vps_id.clone(), 2)],
        "web's second sample added to its first in the same hour"
    );
    let events: Vec<String> = store.list_events(0, 1000).expect("events")[after..]
        .iter()
        .map(|event| event.vps_id.clone())
        .collect();
    assert_eq!(
        events,
        [&web.vps_id, &db.vps_id, &web.vps_id].map(String::clone)
    );

    // A heartbeat of more samples than one etcd Txn takes (each stages its cursor, hour,
    // event and the event counter): all written, events in order.
    store.create_tenant(&tenant("bulk", 40)).expect("tenant");
    let bulk: Vec<VpsRecord> = (0..30).map(|i| vps("bulk", &format!("v{i}"))).collect();
    for vps in &bulk {
        store.create_vps(vps).expect("bulk vps");
    }
    let keys: Vec<UsageHourKey> = bulk.iter().map(key).collect();
    let first = &applies[0];
    let items: Vec<UsageItem<'_>> = bulk
        .iter()
        .zip(&keys)
        .map(|(vps, key)| UsageItem {
            vps_id: &vps.vps_id,
            hour_key: key,
            apply: first,
        })
        .collect();
    let before = store.list_events(0, 1000).expect("events").len();
    let answers = store.record_usages(&items);
    assert!(answers
        .iter()
        .all(|answer| matches!(answer, Ok(Some(update)) if update.cursor.sequence == 1)));
    let events: Vec<String> = store.list_events(0, 1000).expect("events")[before..]
        .iter()
        .map(|event| event.vps_id.clone())
        .collect();
    let ids: Vec<String> = bulk.iter().map(|vps| vps.vps_id.clone()).collect();
    assert_eq!(events, ids);
}

fn usage_sample_writes_cursor_and_hour_together(fixture: &Fixture) {
    let store = &*fixture.store;
    store.create_tenant(&tenant("acme", 5)).expect("tenant");
    let web = vps("acme", "web");
    store.create_vps(&web).expect("vps");
    let key = UsageHourKey {
        tenant: "acme".to_owned(),
        hour_start: 3600,
        vps_id: web.vps_id.clone(),
    };
    let apply = |state: UsageState| -> Option<UsageUpdate> {
        if state.cursor.is_some() {
            return None;
        }
        let vps = state.vps?;
        Some(UsageUpdate {
            cursor: UsageCursorRecord::default(),
            hour: UsageHourRecord {
                tenant: vps.tenant.clone(),
                vps_id: vps.vps_id.clone(),
                hour_start: 3600,
                ..UsageHourRecord::default()
            },
            events: Vec::new(),
            vps: None,
        })
    };
    assert!(store
        .record_usage(&web.vps_id, &key, &apply)
        .expect("first")
        .is_some());
    assert!(
        store
            .record_usage(&web.vps_id, &key, &apply)
            .expect("repeat")
            .is_none(),
        "the second sample sees the first's cursor"
    );
    assert!(store
        .get_usage_cursor(&web.vps_id)
        .expect("cursor")
        .is_some());
    assert_eq!(
        store
            .list_usage_hours(Some("acme"), 0, 7200)
            .expect("hours")
            .len(),
        1
    );
    assert!(store
        .list_usage_hours(Some("acme"), 7200, 10800)
        .expect("hours")
        .is_empty());
    assert_eq!(
        store.list_usage_hours(None, 0, 7200).expect("hours").len(),
        1
    );
    store.remove_vps(&web.vps_id).expect("remove");
    assert!(store
        .get_usage_cursor(&web.vps_id)
        .expect("cursor")
        .is_none());
    assert_eq!(
        store
            .list_usage_hours(Some("acme"), 0, 7200)
            .expect("hours")
            .len(),
        1,
        "hours stay for billing"
    );
}

fn plans_tokens_nodes_and_pools(fixture: &Fixture) {
    let store = &*fixture.store;
    let plan = PlanRecord {
        name: "nano".to_owned(),
        resources: Resources::default(),
        monthly_transfer_bytes: 0,
        transfer_overage: TransferOverage::default(),
        max_snapshots: crate::model::snapshots::DEFAULT_MAX_SNAPSHOTS,
    };
    store.create_plan(&plan).expect("plan");
    assert!(matches!(
        store.create_plan(&plan),
        Err(StoreError::AlreadyExists { .. })
    ));
    assert_eq!(store.list_plans().expect("plans").len(), 1);
    store.create_tenant(&tenant("acme", 5)).expect("tenant");
    store.create_vps(&vps("acme", "web")).expect("vps");
    assert!(matches!(
        store.delete_plan("nano"),
        Err(StoreError::Conflict(Conflict::PlanInUse { .. }))
    ));
    let token = TokenRecord {
        token_id: "t1".to_owned(),
        role: Role::Tenant,
        tenant: Some("other".to_owned()),
        description: String::new(),
        created_at: Utc::now(),
        expires_at: None,
        revoked: false,
    };
    store.put_token("hash1", &token).expect("token");
    store.revoke_token("t1").expect("revoke");
    assert!(
        store
            .get_token("hash1")
            .expect("get")
            .expect("token")
            .revoked
    );
    assert!(matches!(
        store.revoke_token("nope"),
        Err(StoreError::NotFound { .. })
    ));
    store.create_tenant(&tenant("other", 5)).expect("tenant");
    store.delete_tenant("other").expect("delete");
    assert!(
        store.get_token("hash1").expect("get").is_none(),
        "its tokens went with it"
    );
    let node = NodeRecord {
        name: "n1".to_owned(),
        address: "https://127.0.0.1:9".to_owned(),
        capacity: Capacity::default(),
        cordoned: false,
        labels: Default::default(),
        last_heartbeat: Utc::now(),
        agent_version: "test".to_owned(),
    };
    store.put_node(&node).expect("node");
    assert_eq!(store.list_nodes().expect("nodes").len(), 1);
    let revoked_at = Utc::now();
    store.remove_node("n1", revoked_at).expect("remove node");
    assert!(store.get_node("n1").expect("get").is_none());
    assert_eq!(
        store.node_revoked_at("n1").expect("revoked"),
        Some(revoked_at)
    );
    store.create_pool(&pool("p1", "n1", 1)).expect("pool");
    assert!(matches!(
        store.create_pool(&pool("p1", "n1", 2)),
        Err(StoreError::AlreadyExists { .. })
    ));
    assert!(
        store.create_pool(&pool("p2", "n2", 1)).is_err(),
        "an overlapping pool is refused"
    );
    store
        .create_pool(&pool("p3", "n2", 3))
        .expect("another pool");
    assert_eq!(store.list_pools().expect("pools").len(), 2);
    store.delete_pool("p3").expect("delete pool");
    assert_eq!(store.list_pools().expect("pools").len(), 1);
}

fn long_lists_are_complete_and_ordered(fixture: &Fixture) {
    let store = &*fixture.store;
    // More entries than one etcd range page (128).
    for _ in 0..300 {
        store.append_audit(&audit()).expect("audit");
    }
    let seqs = |after: u64, limit: usize| -> Vec<u64> {
        store
            .list_audit(after, limit)
            .expect("audit")
            .iter()
            .map(|entry| entry.seq)
            .collect()
    };
    assert_eq!(seqs(0, 1000), (1..=300).collect::<Vec<u64>>());
    assert_eq!(seqs(0, 200), (1..=200).collect::<Vec<u64>>());
    assert_eq!(seqs(250, 1000), (251..=300).collect::<Vec<u64>>());
    assert!(seqs(300, 10).is_empty());
    let mut roomy = tenant("acme", 1000);
    roomy.quota.vcpus = 1000.0;
    store.create_tenant(&roomy).expect("tenant");
    for i in 0..150 {
        store
            .create_vps(&vps("acme", &format!("v{i:03}")))
            .expect("vps");
    }
    assert_eq!(store.list_vps(None).expect("all").len(), 150);
    assert_eq!(store.list_vps(Some("acme")).expect("acme").len(), 150);
    assert_eq!(store.list_vps_on_node("n1").expect("n1").len(), 150);
    assert_eq!(store.list_events(0, 1000).expect("events").len(), 150);
}

#[test]
fn migrate_sled_to_etcd_copies_everything_and_continues_the_counters() {
    let Some(server) = etcd_server::EtcdServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let sled = SledStore::create(&dir.path().join("store")).expect("sled");
    sled.create_tenant(&tenant("acme", 10)).expect("tenant");
    sled.create_pool(&pool("p1", "n1", 1)).expect("pool");
    for i in 0..3 {
        let mut one = vps("acme", &format!("v{i}"));
        one.resources.ipv4_count = 1;
        sled.create_vps(&one).expect("vps");
    }
    sled.remove_vps("acme-v0-id").expect("remove");
    sled.append_audit(&audit()).expect("audit");
    sled.append_audit(&audit()).expect("audit");
    sled.remove_node("nope", Utc::now())
        .expect_err("no such node");
    let endpoints = std::slice::from_ref(&server.endpoint);
    let etcd = EtcdStore::connect(endpoints, "/migrated/").expect("connect");
    let migrated = migrate::sled_to_etcd(&sled, &etcd).expect("migrate");
    assert_eq!(migrated.last_event, 4, "3 created, 1 deleted");
    let etcd = EtcdStore::open(endpoints, "/migrated/").expect("the copy opens");
    assert_eq!(
        etcd.list_tenants().expect("t"),
        sled.list_tenants().expect("t")
    );
    assert_eq!(
        etcd.list_vps(None).expect("v"),
        sled.list_vps(None).expect("v")
    );
    assert_eq!(etcd.list_pools().expect("p"), sled.list_pools().expect("p"));
    assert_eq!(etcd.list_plans().expect("p"), sled.list_plans().expect("p"));
    assert_eq!(
        etcd.node_allocations().expect("a"),
        sled.node_allocations().expect("a")
    );
    assert_eq!(
        etcd.list_vps_on_node("n1").expect("n"),
        sled.list_vps_on_node("n1").expect("n")
    );
    assert_eq!(
        etcd.list_events(0, 100).expect("e"),
        sled.list_events(0, 100).expect("e")
    );
    let sled_audit = sled.list_audit(0, 100).expect("a");
    assert_eq!(etcd.list_audit(0, 100).expect("a"), sled_audit);
    // The counters continue where sled stopped.
    etcd.create_vps(&vps("acme", "after"))
        .expect("create on etcd");
    let last = etcd.list_events(4, 10).expect("e");
    assert_eq!(last.iter().map(|e| e.cursor).collect::<Vec<_>>(), [5]);
    let next_seq = etcd.append_audit(&audit()).expect("audit");
    assert_eq!(next_seq, migrated.last_audit + 1);
    // A second copy into the same prefix is refused.
    let again = migrate::sled_to_etcd(&sled, &etcd).expect_err("not empty");
    assert!(matches!(again, StoreError::Migrate(_)), "{again}");
}

fn vps_watchers_see_committed_changes(fixture: &Fixture) {
    let store = &*fixture.store;
    store.create_tenant(&tenant("acme", 5)).expect("tenant");
    let web = vps("acme", "web");
    let mut changes = store.vps_watchers().subscribe(&web.vps_id);
    store.create_vps(&web).expect("create");
    let next = |changes: &mut VpsChanges| match changes.try_recv() {
        Some(Ok(change)) => change,
        other => panic!("no change published: {other:?}"),
    };
    assert!(matches!(next(&mut changes), VpsChange::Changed(vps) if vps.name == "web"));
    store
        .update_vps(&web.vps_id, &|vps| {
            vps.desired_power = Power::Stopped;
            Ok(())
        })
        .expect("stop");
    assert!(matches!(
        next(&mut changes),
        VpsChange::Changed(vps) if vps.desired_power == Power::Stopped
    ));
    store
        .update_vps(&web.vps_id, &|_| {
            Err(StoreError::Conflict(Conflict::VpsDeleting {
                name: "web".to_owned(),
            }))
        })
        .expect_err("refused");
    assert!(
        changes.try_recv().is_none(),
        "a refused change is not published"
    );
    store
        .update_tenant("acme", &|tenant| {
            tenant.suspended = true;
            Ok(())
        })
        .expect("suspend");
    assert!(matches!(next(&mut changes), VpsChange::Changed(_)));
    store.remove_vps(&web.vps_id).expect("remove");
    assert!(matches!(next(&mut changes), VpsChange::Removed));
}

/// The etcd store called from a current-thread runtime (the `#[tokio::test]` default) and from
/// a multi-thread one, including `flush`: the client runs on its own runtime, so neither panics
/// nor waits on itself.
#[tokio::test]
async fn etcd_store_works_inside_a_current_thread_runtime() {
    let Some(fixture) = etcd() else {
        return;
    };
    fixture
        .store
        .create_tenant(&tenant("acme", 5))
        .expect("tenant");
    fixture
        .store
        .create_vps(&vps("acme", "web"))
        .expect("create");
    fixture.store.flush().await.expect("flush");
    assert_eq!(fixture.store.list_vps(None).expect("list").len(), 1);
    // Dropped inside the runtime: the store's own runtime shuts down in the background.
    drop(fixture);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_works_inside_a_multi_thread_runtime() {
    let Some(fixture) = etcd() else {
        return;
    };
    let store = fixture.store.clone();
    let mut roomy = tenant("acme", 50);
    roomy.quota.vcpus = 1000.0;
    store.create_tenant(&roomy).expect("tenant");
    // More concurrent callers than worker threads, each blocking its worker.
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store.create_vps(&vps("acme", &format!("v{i}")))?;
                store.flush().await
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("join").expect("create");
    }
    assert_eq!(store.list_vps(Some("acme")).expect("list").len(), 20);
}

fn snapshot(name: &str) -> crate::model::snapshots::SnapshotRecord {
    crate::model::snapshots::SnapshotRecord {
        name: name.to_owned(),
        state: crate::model::snapshots::SnapshotState::Creating,
        created_at: Utc::now(),
        size_bytes: 0,
        allocated_bytes: 0,
        method: String::new(),
        duration_ms: 0,
    }
}

fn backup(tenant: &str, id: &str, vps: &VpsRecord) -> BackupRecord {
    BackupRecord {
        id: id.to_owned(),
        tenant: tenant.to_owned(),
        vps: vps.name.clone(),
        vps_id: vps.vps_id.clone(),
        node: vps.node.clone(),
        plan: vps.plan.clone(),
        template: vps.template.clone(),
        hostname: vps.name.clone(),
        resources: vps.resources.clone(),
        size_bytes: 1,
        sha256: "00".to_owned(),
        created_at: Utc::now(),
        location: format!("local:{id}"),
    }
}

/// Snapshot records: name unique per VPS and the plan's `max_snapshots` checked where they
/// are recorded, updates and removals with their events, all gone with the VPS. Backup
/// records: per tenant, oldest first, removed once with one event.
fn snapshots_and_backups(fixture: &Fixture) {
    let store = &*fixture.store;
    store
        .create_plan(&PlanRecord {
            name: "nano".to_owned(),
            resources: Resources::default(),
            monthly_transfer_bytes: 0,
            transfer_overage: TransferOverage::default(),
            max_snapshots: 2,
        })
        .expect("plan");
    store.create_tenant(&tenant("acme", 5)).expect("tenant");
    let web = vps("acme", "web");
    store.create_vps(&web).expect("create");
    let id = web.vps_id.as_str();

    store.reserve_snapshot(id, &snapshot("one")).expect("one");
    assert!(matches!(
        store.reserve_snapshot(id, &snapshot("one")),
        Err(StoreError::AlreadyExists { .. })
    ));
    store.reserve_snapshot(id, &snapshot("two")).expect("two");
    assert!(matches!(
        store.reserve_snapshot(id, &snapshot("three")),
        Err(StoreError::SnapshotQuota(_))
    ));
    assert!(matches!(
        store.reserve_snapshot("no-such-vps", &snapshot("one")),
        Err(StoreError::NotFound { .. })
    ));
    let events_before = store.list_events(0, 1000).expect("events").len();
    let mut ready = snapshot("one");
    ready.state = crate::model::snapshots::SnapshotState::Ready;
    let event = || Some(EventRecord::of_vps(EventKind::SnapshotCreated, &web));
    store.put_snapshot(id, &ready, event()).expect("ready");
    assert!(matches!(
        store.put_snapshot(id, &snapshot("absent"), event()),
        Err(StoreError::NotFound { .. })
    ));
    store.remove_snapshot(id, "two", event()).expect("remove");
    store
        .remove_snapshot(id, "two", event())
        .expect("absent is fine");
    let set = store.list_snapshots(id).expect("list");
    assert_eq!(set.snapshots.keys().collect::<Vec<_>>(), ["one"]);
    assert_eq!(set.snapshots["one"].state, ready.state);
    assert_eq!(
        store.list_events(0, 1000).expect("events").len(),
        events_before + 2,
        "one event per change, none for a refused or repeated one"
    );

    store
        .put_backup(&backup("acme", "b1", &web), None)
        .expect("b1");
    store
        .put_backup(&backup("acme", "b2", &web), None)
        .expect("b2");
    store
        .put_backup(&backup("other", "b3", &web), None)
        .expect("b3");
    let ids = |tenant| -> Vec<String> {
        store
            .list_backups(tenant)
            .expect("backups")
            .into_iter()
            .map(|b| b.id)
            .collect()
    };
    assert_eq!(ids(Some("acme")), ["b1", "b2"]);
    assert_eq!(ids(None).len(), 3);
    assert_eq!(
        store.get_backup("acme", "b2").expect("get").map(|b| b.id),
        Some("b2".to_owned())
    );
    assert_eq!(store.get_backup("other", "b2").expect("get"), None);
    let events_before = store.list_events(0, 1000).expect("events").len();
    let deleted = || Some(EventRecord::of_vps(EventKind::BackupDeleted, &web));
    store
        .delete_backup("acme", "b1", deleted())
        .expect("delete");
    store
        .delete_backup("acme", "b1", deleted())
        .expect("absent is fine");
    assert_eq!(ids(Some("acme")), ["b2"]);
    assert_eq!(
        store.list_events(0, 1000).expect("events").len(),
        events_before + 1
    );

    store.remove_vps(id).expect("remove VPS");
    assert!(store.list_snapshots(id).expect("list").snapshots.is_empty());
    assert_eq!(ids(Some("acme")), ["b2"], "backups outlive their VPS");
}

/// A migration plan of `vps` from n1 to n2 with the addresses `plan_addresses` picks there.
fn migration_of(store: &dyn Backend, vps: &VpsRecord) -> migration::MigrationRecord {
    let pools: Vec<PoolRecord> = store
        .list_pools()
        .expect("pools")
        .into_iter()
        .filter(|pool| pool.spans("n2"))
        .collect();
    let plan = migration::plan_addresses(vps, &pools).expect("room on n2");
    migration::MigrationRecord {
        id: format!("m-{}", vps.name),
        vps_id: vps.vps_id.clone(),
        tenant: vps.tenant.clone(),
        vps: vps.name.clone(),
        source: vps.node.clone(),
        destination: "n2".to_owned(),
        phase: migration::MigrationPhase::Planned,
        was_running: vps.desired_power == Power::Running,
        old_ipv4: vps.ipv4.clone(),
        old_network: vps.network.clone(),
        new_ipv4: plan.ipv4,
        new_network: plan.network,
        addresses_kept: plan.kept,
        started_at: Utc::now(),
        failure: None,
        live: false,
        live_report: None,
    }
}

fn migrations_reserve_switch_and_roll_back(fixture: &Fixture) {
    use crate::model::migration::{MigrationError, MigrationPhase};
    let store = &*fixture.store;
    store.create_tenant(&tenant("acme", 10)).expect("tenant");
    store.create_pool(&pool("p1", "n1", 1)).expect("pool n1");
    store.create_pool(&pool("p2", "n2", 2)).expect("pool n2");
    let mut web = vps("acme", "web");
    web.resources.ipv4_count = 1;
    store.create_vps(&web).expect("web");
    let web = store.get_vps(&web.vps_id).expect("get").expect("web");
    assert_eq!(web.ipv4, ["10.9.1.10"]);
    let cursor = UsageCursorRecord {
        incarnation: "run-1".to_owned(),
        sequence: 40,
        month_transfer_bytes: 1234,
        ..UsageCursorRecord::default()
    };
    let key = UsageHourKey {
        tenant: "acme".to_owned(),
        hour_start: 0,
        vps_id: web.vps_id.clone(),
    };
    store
        .record_usage(&web.vps_id, &key, &|state| {
            Some(UsageUpdate {
                cursor: cursor.clone(),
                hour: state.hour.unwrap_or_default(),
                events: Vec::new(),
                vps: None,
            })
        })
        .expect("usage");

    // Planning reserves on n2 and holds the VPS stopped; a second plan is refused.
    let plan = migration_of(store, &web);
    assert!(!plan.addresses_kept, "pools never overlap: a new address");
    assert_eq!(plan.new_ipv4, ["10.9.2.10"]);
    let held = store.plan_migration(&plan).expect("plan");
    assert_eq!(
        (held.node.as_str(), held.desired_power),
        ("n1", Power::Stopped)
    );
    assert!(matches!(
        store.plan_migration(&plan),
        Err(StoreError::Migration(MigrationError::InProgress { .. }))
    ));
    let n2 = allocation(store, "n2");
    assert_eq!((n2.vps_count, n2.free_ipv4), (1, 9));
    let p2 = store.get_pool("p2").expect("get").expect("p2");
    assert_eq!(p2.allocated.get("10.9.2.10"), Some(&web.vps_id));

    // Rolling back gives n2's share and address back and the VPS its power; one event.
    let events = store.list_events(0, 1000).expect("events").len();
    store
        .set_migration_phase(
            &web.vps_id,
            MigrationPhase::RollingBack,
            migration::PhaseNote::Failure("test".into()),
        )
        .expect("phase");
    let failed = EventRecord::of_vps(EventKind::MigrationFailed, &web);
    store
        .end_migration(&web.vps_id, Some(failed))
        .expect("roll back");
    assert_eq!(store.get_migration(&web.vps_id).expect("get"), None);
    assert_eq!(allocation(store, "n2").vps_count, 0);
    assert_eq!(allocation(store, "n2").free_ipv4, 10);
    assert!(store
        .get_pool("p2")
        .expect("get")
        .expect("p2")
        .allocated
        .is_empty());
    let back = store.get_vps(&web.vps_id).expect("get").expect("web");
    assert_eq!(
        (back.node.as_str(), back.desired_power),
        ("n1", Power::Running)
    );
    assert_eq!(back.ipv4, ["10.9.1.10"]);
    assert_eq!(
        store.list_events(0, 1000).expect("events").len(),
        events + 1
    );

    // Planned again and switched: one transaction moves everything to n2.
    let plan = migration_of(store, &back);
    store.plan_migration(&plan).expect("plan again");
    store
        .set_migration_phase(
            &web.vps_id,
            MigrationPhase::Copied,
            migration::PhaseNote::Nothing,
        )
        .expect("copied");
    let moved = store.switch_migration(&web.vps_id).expect("switch");
    assert_eq!(moved.node, "n2");
    assert_eq!(moved.ipv4, ["10.9.2.10"]);
    assert_eq!(moved.desired_power, Power::Running);
    assert_eq!(moved.network.as_ref().map(|n| n.pool.as_str()), Some("p2"));
    let on = |node: &str| -> Vec<String> {
        store
            .list_vps_on_node(node)
            .expect("list")
            .into_iter()
            .map(|vps| vps.name)
            .collect()
    };
    assert!(on("n1").is_empty());
    assert_eq!(on("n2"), ["web"]);
    assert_eq!(
        (
            allocation(store, "n1").vps_count,
            allocation(store, "n1").free_ipv4
        ),
        (0, 10)
    );
    assert_eq!(allocation(store, "n2").vps_count, 1);
    assert!(store
        .get_pool("p1")
        .expect("get")
        .expect("p1")
        .allocated
        .is_empty());
    let reset = store
        .get_usage_cursor(&web.vps_id)
        .expect("cursor")
        .expect("kept");
    assert_eq!(reset.sequence, 0);
    assert_eq!(reset.incarnation, migration::MIGRATED_INCARNATION);
    assert_eq!(reset.month_transfer_bytes, 1234);
    let last = store.list_events(0, 1000).expect("events");
    assert_eq!(last.last().map(|e| e.kind), Some(EventKind::VpsMigrated));
    // Idempotent once switched; a late rollback request does not move it back.
    store.switch_migration(&web.vps_id).expect("again");
    let phase = store
        .set_migration_phase(
            &web.vps_id,
            MigrationPhase::RollingBack,
            migration::PhaseNote::Nothing,
        )
        .expect("phase");
    assert_eq!(phase.phase, MigrationPhase::Switched);
    store.end_migration(&web.vps_id, None).expect("end");
    assert_eq!(store.list_migrations().expect("list"), vec![]);
    assert_eq!(on("n2"), ["web"]);

    // A live move back: the VPS is not held stopped, the phases keep the checkpoint's
    // report, and the switch appends `vps_live_migrated`.
    let there = store.get_vps(&web.vps_id).expect("get").expect("web");
    let mut live = migration_of(store, &there);
    live.source = "n2".to_owned();
    live.destination = "n1".to_owned();
    live.live = true;
    live.new_network = None;
    live.new_ipv4 = Vec::new();
    let planned = store.plan_migration(&live).expect("plan live");
    assert_eq!(planned.desired_power, Power::Running, "a live move runs on");
    let report = migration::LiveReport {
        frozen_us: 1234,
        transfer_bytes: 99,
        ..migration::LiveReport::default()
    };
    store
        .set_migration_phase(
            &web.vps_id,
            MigrationPhase::Checkpointed,
            migration::PhaseNote::Report(report.clone()),
        )
        .expect("checkpointed");
    let restored = store
        .set_migration_phase(
            &web.vps_id,
            MigrationPhase::Restored,
            migration::PhaseNote::Nothing,
        )
        .expect("restored");
    assert_eq!(restored.live_report, Some(report));
    let back = store.switch_migration(&web.vps_id).expect("switch live");
    assert_eq!(
        (back.node.as_str(), back.desired_power),
        ("n1", Power::Running)
    );
    let last = store.list_events(0, 1000).expect("events");
    assert_eq!(
        last.last().map(|e| e.kind),
        Some(EventKind::VpsLiveMigrated)
    );
    store.end_migration(&web.vps_id, None).expect("end live");
}

/// A pool of ten addresses (`10.9.<third_octet>.10-19`) spanning `nodes`.
fn shared_pool(name: &str, nodes: &[&str], third_octet: u8) -> PoolRecord {
    PoolRecord {
        nodes: nodes.iter().map(|node| (*node).to_owned()).collect(),
        ..pool(name, nodes[0], third_octet)
    }
}

fn a_shared_pools_addresses_are_given_once_across_its_nodes(fixture: &Fixture) {
    let store = fixture.store.clone();
    let mut roomy = tenant("acme", 100);
    roomy.quota.vcpus = 1000.0;
    store.create_tenant(&roomy).expect("tenant");
    store
        .create_pool(&shared_pool("s", &["n1", "n2", "n3"], 5))
        .expect("shared pool");
    // A pool of n3 alone must not overlap it either.
    let overlapping = PoolRecord {
        cidr: "10.9.5.0/25".into(),
        ..pool("x", "n4", 5)
    };
    assert!(matches!(
        store.create_pool(&overlapping),
        Err(StoreError::Ipam(_))
    ));
    for node in ["n1", "n2", "n3"] {
        let summary = allocation(&*store, node);
        assert_eq!(
            (summary.free_ipv4, summary.pools.clone()),
            (10, vec!["s".to_owned()]),
            "{node}"
        );
    }
    // Ten addresses for 30 VPSes created at once on the three nodes.
    let handles: Vec<_> = (0..30)
        .map(|i| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut one = vps("acme", &format!("v{i}"));
                one.node = format!("n{}", 1 + i % 3);
                one.resources.ipv4_count = 1;
                store.create_vps(&one)
            })
        })
        .collect();
    let results: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 10);
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|e| matches!(e, StoreError::Ipam(_))));
    let created = store.list_vps(Some("acme")).expect("list");
    let addresses: BTreeSet<String> = created
        .iter()
        .flat_map(|vps| vps.ipv4.iter().cloned())
        .collect();
    assert_eq!(addresses.len(), 10, "no address given twice: {created:?}");
    let nodes: BTreeSet<&str> = created.iter().map(|vps| vps.node.as_str()).collect();
    assert!(
        nodes.len() > 1,
        "creates on several nodes succeeded: {nodes:?}"
    );
    let stored = store.get_pool("s").expect("get").expect("pool");
    assert_eq!(stored.allocated.len(), 10);
    for node in ["n1", "n2", "n3"] {
        assert_eq!(allocation(&*store, node).free_ipv4, 0, "{node}");
    }
    // One removed on any node frees an address for every node of the pool.
    store.remove_vps(&created[0].vps_id).expect("remove");
    for node in ["n1", "n2", "n3"] {
        assert_eq!(allocation(&*store, node).free_ipv4, 1, "{node}");
    }
    for vps in &created[1..] {
        store.remove_vps(&vps.vps_id).expect("remove");
    }
    store.delete_pool("s").expect("delete pool");
    for node in ["n1", "n2", "n3"] {
        let summary = allocation(&*store, node);
        assert_eq!((summary.free_ipv4, summary.pools.len()), (0, 0), "{node}");
    }
}

fn a_move_inside_a_shared_pool_keeps_every_address(fixture: &Fixture) {
    use crate::model::migration::MigrationPhase;
    let store = &*fixture.store;
    store.create_tenant(&tenant("acme", 10)).expect("tenant");
    store
        .create_pool(&PoolRecord {
            ipv6_prefix: Some("fd00:9::/64".into()),
            ..shared_pool("s", &["n1", "n2"], 3)
        })
        .expect("shared pool");
    let mut web = vps("acme", "web");
    web.resources.ipv4_count = 1;
    web.resources.ipv6_count = 1;
    store.create_vps(&web).expect("web");
    let web = store.get_vps(&web.vps_id).expect("get").expect("web");
    let ipv6 = web
        .network
        .as_ref()
        .map(|n| n.ipv6.clone())
        .expect("network");
    assert_eq!(
        (web.ipv4.clone(), ipv6.clone()),
        (vec!["10.9.3.10".to_owned()], vec!["fd00:9::2".to_owned()])
    );
    let free = |store: &dyn Backend| {
        (
            allocation(store, "n1").free_ipv4,
            allocation(store, "n2").free_ipv4,
        )
    };
    assert_eq!(free(store), (9, 9));

    let plan = migration_of(store, &web);
    assert!(plan.addresses_kept, "{plan:?}");
    assert_eq!(plan.new_ipv4, web.ipv4);
    assert_eq!(
        plan.new_network.as_ref().map(|n| n.ipv6.clone()),
        Some(ipv6.clone())
    );
    store.plan_migration(&plan).expect("plan");
    assert_eq!(free(store), (9, 9), "nothing new is taken");
    assert_eq!(allocation(store, "n2").vps_count, 1);
    // A rollback keeps the addresses with the VPS on n1.
    store
        .set_migration_phase(
            &web.vps_id,
            MigrationPhase::RollingBack,
            migration::PhaseNote::Nothing,
        )
        .expect("phase");
    store.end_migration(&web.vps_id, None).expect("roll back");
    let pool = store.get_pool("s").expect("get").expect("pool");
    assert_eq!(pool.allocated.get("10.9.3.10"), Some(&web.vps_id));
    assert_eq!(pool.allocated_ipv6.get("fd00:9::2"), Some(&web.vps_id));
    assert_eq!(free(store), (9, 9));
    assert_eq!(allocation(store, "n2").vps_count, 0);

    let plan = migration_of(store, &web);
    store.plan_migration(&plan).expect("plan again");
    store
        .set_migration_phase(
            &web.vps_id,
            MigrationPhase::Copied,
            migration::PhaseNote::Nothing,
        )
        .expect("copied");
    let moved = store.switch_migration(&web.vps_id).expect("switch");
    assert_eq!(
        (moved.node.as_str(), moved.ipv4.clone()),
        ("n2", web.ipv4.clone())
    );
    assert_eq!(moved.network.as_ref().map(|n| n.ipv6.clone()), Some(ipv6));
    store.end_migration(&web.vps_id, None).expect("end");
    let pool = store.get_pool("s").expect("get").expect("pool");
    assert_eq!(pool.allocated.get("10.9.3.10"), Some(&web.vps_id));
    assert_eq!(pool.allocated.len(), 1);
    assert_eq!(pool.allocated_ipv6.len(), 1);
    assert_eq!(free(store), (9, 9));
    assert_eq!(
        (
            allocation(store, "n1").vps_count,
            allocation(store, "n2").vps_count
        ),
        (0, 1)
    );
    store.remove_vps(&web.vps_id).expect("remove");
    assert_eq!(free(store), (10, 10));
}

/// Waits (generously: the machine is loaded) until `condition` holds.
fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn candidate(identity: &str) -> Candidate {
    Candidate {
        identity: identity.to_owned(),
        lease_ttl: std::time::Duration::from_secs(2),
    }
}

/// Campaigns run on the store's own runtime: no caller runtime needed.
fn a_lone_candidate_leads(fixture: &Fixture) {
    let leadership = fixture.store.campaign(candidate("only")).expect("campaign");
    wait_for("the only candidate to lead", || {
        leadership.current().is_some()
    });
}

/// Two controllers' stores on one etcd prefix.
fn two_on_one_prefix() -> Option<(etcd_server::EtcdServer, EtcdStore, EtcdStore)> {
    let server = etcd_server::EtcdServer::start()?;
    let endpoints = std::slice::from_ref(&server.endpoint);
    let first = EtcdStore::create(endpoints, "/shared/").expect("first store");
    let second = EtcdStore::open(endpoints, "/shared/").expect("second store");
    Some((server, first, second))
}

#[test]
fn one_leader_at_a_time_and_a_takeover_after_the_leader_goes() {
    let Some((_server, first, second)) = two_on_one_prefix() else {
        return;
    };
    let a = first.campaign(candidate("a")).expect("campaign a");
    wait_for("a to lead", || a.current().is_some());
    let b = second.campaign(candidate("b")).expect("campaign b");
    // b campaigns every renewal period (two thirds of a second here): over several of its
    // attempts, never both.
    for _ in 0..60 {
        assert!(
            !(a.current().is_some() && b.current().is_some()),
            "two leaders at once"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(b.current().is_none(), "b does not lead while a renews");
    let old_term = a.current().expect("a still leads");
    // a's controller dies: its campaign stops, its lease runs out, b takes over.
    drop(a);
    wait_for("b to take over", || b.current().is_some());
    let new_term = b.current().expect("b leads");
    assert!(
        new_term.revision > old_term.revision,
        "a new term: {new_term:?} after {old_term:?}"
    );
}

#[test]
fn a_deposed_leaders_fenced_writes_do_not_land() {
    let Some((_server, first, second)) = two_on_one_prefix() else {
        return;
    };
    first.create_tenant(&tenant("acme", 5)).expect("tenant");
    first.create_vps(&vps("acme", "web")).expect("vps");
    let a = first.campaign(candidate("a")).expect("campaign a");
    wait_for("a to lead", || a.current().is_some());
    let old_term = a.current().expect("a leads");
    fenced(old_term, || {
        first.update_vps("acme-web-id", &|vps| {
            vps.restart_generation = 1;
            Ok(())
        })
    })
    .expect("the leader's fenced write lands");
    drop(a);
    let b = second.campaign(candidate("b")).expect("campaign b");
    wait_for("b to take over", || b.current().is_some());
    let refused = fenced(old_term, || {
        first.update_vps("acme-web-id", &|vps| {
            vps.restart_generation = 2;
            Ok(())
        })
    })
    .expect_err("a write of the old term");
    assert!(
        matches!(refused, StoreError::Conflict(Conflict::Deposed { term }) if term == old_term.revision),
        "{refused:?}"
    );
    let stored = second.get_vps("acme-web-id").expect("get").expect("vps");
    assert_eq!(
        stored.restart_generation, 1,
        "the deposed write did not land"
    );
    // Unfenced writes (any controller's API) still land.
    first
        .update_vps("acme-web-id", &|vps| {
            vps.restart_generation = 3;
            Ok(())
        })
        .expect("an unfenced write");
}

#[test]
fn a_controller_hears_what_another_committed() {
    let Some((_server, first, second)) = two_on_one_prefix() else {
        return;
    };
    first.create_tenant(&tenant("acme", 5)).expect("tenant");
    let web = vps("acme", "web");
    let mut watched = second.vps_watchers().subscribe(&web.vps_id);
    let mut followers = second.event_signal().subscribe();
    let mut changes = second.store_changes().subscribe();
    first.create_vps(&web).expect("create on the first");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        // The tenant's creation may reach the second only now: it republishes the watched
        // id, absent until the create.
        loop {
            let change = tokio::time::timeout_at(deadline.into(), watched.recv())
                .await
                .expect("the second store's watcher hears of the create");
            match change {
                Ok(VpsChange::Changed(vps)) => {
                    assert_eq!(vps.name, "web");
                    break;
                }
                Ok(VpsChange::Removed) => continue,
                Err(error) => panic!("watch ended: {error:?}"),
            }
        }
        tokio::time::timeout_at(deadline.into(), followers.changed())
            .await
            .expect("followers on the second wake")
            .expect("signal alive");
        let change = tokio::time::timeout_at(deadline.into(), changes.recv())
            .await
            .expect("the second's workers hear of it");
        assert_eq!(
            change.expect("change"),
            StoreChange::Vps { node: "n1".into() }
        );
    });
    first.remove_vps(&web.vps_id).expect("remove on the first");
    runtime.block_on(async {
        // The create also changed the tenant (its usage), which republishes its VPSes.
        loop {
            let change = tokio::time::timeout_at(deadline.into(), watched.recv())
                .await
                .expect("the removal reaches the second");
            match change {
                Ok(VpsChange::Removed) => break,
                Ok(VpsChange::Changed(_)) => continue,
                Err(error) => panic!("watch ended: {error:?}"),
            }
        }
    });
    // The first published its own commits once, right after they committed.
    let mut again = vps("acme", "web");
    again.vps_id = "again-id".to_owned();
    let mut own = first.vps_watchers().subscribe(&again.vps_id);
    first.create_vps(&again).expect("create again");
    assert!(matches!(own.try_recv(), Some(Ok(VpsChange::Changed(_)))));
    // Its own watch saw the same commit and leaves it alone: nothing more arrives.
    let mut seen_by_second = second.vps_watchers().subscribe(&again.vps_id);
    second
        .update_vps(&again.vps_id, &|vps| {
            vps.restart_generation = 9;
            Ok(())
        })
        .expect("a change on the second");
    runtime.block_on(async {
        let change = tokio::time::timeout_at(deadline.into(), own.recv())
            .await
            .expect("the second's change reaches the first");
        assert!(
            matches!(&change, Ok(VpsChange::Changed(vps)) if vps.restart_generation == 9),
            "the next change the first publishes is the second's, not its own create again: {change:?}"
        );
    });
    assert!(matches!(
        seen_by_second.try_recv(),
        Some(Ok(VpsChange::Changed(_)))
    ));
}
