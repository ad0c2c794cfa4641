//! Address pools: the provider creates, lists and deletes them; allocation itself is a
//! pure rule in `model::ipam`, run by the store inside the VPS transactions.

use std::collections::BTreeMap;

use crate::error::ControllerError;
use crate::model::ipam::{self, plan};
use crate::model::validate;
use crate::model::PoolRecord;
use crate::service::Controller;

/// A validated pool create request (the proto `Pool` minus the counters).
pub struct CreatePool {
    pub name: String,
    /// The single node of old clients; when `nodes` is given too, one of them (made first).
    pub node: String,
    /// Every node the pool spans (a shared pool when more than one).
    pub nodes: Vec<String>,
    pub cidr: String,
    pub gateway: String,
    pub range_start: String,
    pub range_end: String,
    pub ipv6_prefix: String,
    pub nat: bool,
}

/// Address pools on the nodes. A view of the [`Controller`]'s shared state; get one with
/// [`Controller::pools`].
pub struct Pools<'a>(&'a Controller);

impl Controller {
    pub fn pools(&self) -> Pools<'_> {
        Pools(self)
    }
}

impl std::ops::Deref for Pools<'_> {
    type Target = Controller;

    fn deref(&self) -> &Controller {
        self.0
    }
}

impl Pools<'_> {
    /// Creates a pool on one or more registered nodes; nothing is stored unless the
    /// nodes, network, gateway and range are valid and no other pool overlaps it.
    pub async fn create(&self, request: CreatePool) -> Result<PoolRecord, ControllerError> {
        validate::name("pool.name", &request.name)?;
        let registered: std::collections::HashSet<String> = self
            .store
            .list_nodes()?
            .into_iter()
            .map(|node| node.name)
            .collect();
        let span = ipam::pool_span(&request.node, &request.nodes, |node| {
            registered.contains(node)
        })
        .map_err(|error| match error {
            ipam::SpanError::Invalid(error) => ControllerError::from(error),
            ipam::SpanError::UnknownNode(node) => ControllerError::not_found("node", &node),
        })?;
        ipam::check_shared_nat(&span, request.nat)?;
        let record = PoolRecord {
            name: request.name,
            node: span[0].clone(),
            // A pool of one node is stored as before shared pools, readable by older controllers.
            nodes: if span.len() > 1 { span } else { Vec::new() },
            cidr: request.cidr,
            gateway: request.gateway,
            range_start: request.range_start,
            range_end: request.range_end,
            ipv6_prefix: Some(request.ipv6_prefix).filter(|prefix| !prefix.is_empty()),
            nat: request.nat,
            allocated: BTreeMap::new(),
            allocated_ipv6: BTreeMap::new(),
            created_at: chrono::Utc::now(),
        };
        let plan = plan(&record)?;
        let record = PoolRecord {
            range_start: plan.range_start.to_string(),
            range_end: plan.range_end.to_string(),
            ..record
        };
        self.store.create_pool(&record)?;
        self.commit().await?;
        self.placements.invalidate();
        tracing::info!(pool = %record.name, nodes = %record.span().join(","), cidr = %record.cidr, "pool created");
        Ok(record)
    }

    /// Every pool, sorted by name.
    pub fn list(&self) -> Result<Vec<PoolRecord>, ControllerError> {
        let mut pools = self.store.list_pools()?;
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(pools)
    }

    /// One pool by name.
    pub fn get(&self, name: &str) -> Result<PoolRecord, ControllerError> {
        validate::name("name", name)?;
        self.store
            .get_pool(name)?
            .ok_or_else(|| ControllerError::not_found("pool", name))
    }

    /// Deletes a pool none of whose addresses is in use.
    pub async fn delete(&self, name: &str) -> Result<(), ControllerError> {
        validate::name("name", name)?;
        self.store.delete_pool(name)?;
        self.commit().await?;
        self.placements.invalidate();
        tracing::info!(pool = %name, "pool deleted");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::Utc;

    use crate::model::{PoolRecord, Quota, Resources, TenantRecord, VpsRecord};
    use crate::store::conformance::{both, etcd, sled, Fixture};
    use crate::store::StoreError;

    both!(
        overlapping_pools_are_refused,
        concurrent_creates_never_share_an_address_and_release_on_remove,
        no_pool_or_zero_addresses,
    );

    fn pool(name: &str, node: &str, cidr: &str, gateway: &str) -> PoolRecord {
        PoolRecord {
            name: name.to_owned(),
            node: node.to_owned(),
            nodes: Vec::new(),
            cidr: cidr.to_owned(),
            gateway: gateway.to_owned(),
            range_start: String::new(),
            range_end: String::new(),
            ipv6_prefix: None,
            nat: true,
            allocated: BTreeMap::new(),
            allocated_ipv6: BTreeMap::new(),
            created_at: Utc::now(),
        }
    }

    fn tenant(name: &str) -> TenantRecord {
        TenantRecord {
            name: name.to_owned(),
            quota: Quota {
                max_vps: 1000,
                vcpus: 1000.0,
                memory_bytes: u64::MAX,
                disk_bytes: u64::MAX,
                ipv4_count: 1000,
            },
            used: Quota::default(),
            suspended: false,
            created_at: Utc::now(),
        }
    }

    fn vps(name: &str, ipv4_count: u32) -> VpsRecord {
        VpsRecord {
            vps_id: format!("{name}-id"),
            name: name.to_owned(),
            tenant: "acme".to_owned(),
            plan: "nano".to_owned(),
            template: "busybox".to_owned(),
            resources: Resources {
                vcpus: 1.0,
                memory_bytes: 1,
                disk_bytes: 1,
                ipv4_count,
                ..Resources::default()
            },
            node: "n1".to_owned(),
            desired_power: crate::model::Power::Running,
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

    fn overlapping_pools_are_refused(fixture: &Fixture) {
        let store = &*fixture.store;
        store
            .create_pool(&pool("a", "n1", "10.77.0.0/24", "10.77.0.1"))
            .expect("first");
        let before = store.dump_all().expect("dump");
        let err = store
            .create_pool(&pool("b", "n2", "10.77.0.128/25", "10.77.0.129"))
            .expect_err("overlap");
        assert!(
            matches!(&err, StoreError::Ipam(m) if m.to_string().contains("overlaps pool \"a\"")),
            "{err}"
        );
        assert_eq!(store.dump_all().expect("dump"), before, "nothing changed");
        store
            .create_pool(&PoolRecord {
                ipv6_prefix: Some("fd00:77::/64".into()),
                ..pool("c", "n2", "10.78.0.0/24", "10.78.0.1")
            })
            .expect("disjoint");
        // Disjoint IPv4, but an IPv6 prefix inside c's.
        let err = store
            .create_pool(&PoolRecord {
                ipv6_prefix: Some("fd00:77::/48".into()),
                ..pool("d", "n3", "10.79.0.0/24", "10.79.0.1")
            })
            .expect_err("IPv6 overlap");
        assert!(
            matches!(&err, StoreError::Ipam(m) if m.to_string().contains("(IPv6 fd00:77::/48) overlaps pool \"c\"")),
            "{err}"
        );
        store
            .create_pool(&PoolRecord {
                ipv6_prefix: Some("fd00:78::/64".into()),
                ..pool("e", "n3", "10.79.0.0/24", "10.79.0.1")
            })
            .expect("disjoint IPv6");
    }

    fn concurrent_creates_never_share_an_address_and_release_on_remove(fixture: &Fixture) {
        let store = fixture.store.clone();
        store.create_tenant(&tenant("acme")).expect("tenant");
        // 10 allocatable addresses: .1-.11 minus the gateway .1 -> .2..=.11
        store
            .create_pool(&PoolRecord {
                range_start: "10.77.0.1".into(),
                range_end: "10.77.0.11".into(),
                ..pool("p", "n1", "10.77.0.0/24", "10.77.0.1")
            })
            .expect("pool");
        let handles: Vec<_> = (0..40)
            .map(|i| {
                let store = store.clone();
                std::thread::spawn(move || store.create_vps(&vps(&format!("v{i}"), 1)))
            })
            .collect();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().expect("join"))
            .collect();
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 10);
        for error in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(
                matches!(error, StoreError::Ipam(m) if m.to_string() == "pool p on node n1 has no free IPv4 address"),
                "{error}"
            );
        }
        let vpses = store.list_vps(None).expect("list");
        let mut addresses: Vec<String> = vpses.iter().flat_map(|v| v.ipv4.clone()).collect();
        addresses.sort();
        addresses.dedup();
        assert_eq!(addresses.len(), 10, "ten distinct addresses");
        let pool = store.get_pool("p").expect("get").expect("pool");
        assert_eq!(pool.allocated.len(), 10);
        let first = &vpses[0];
        let network = first.network.as_ref().expect("network");
        assert_eq!(network.gateway, "10.77.0.1");
        assert_eq!(network.mac, crate::model::ipam::mac_for(&first.vps_id));
        assert_eq!(
            store
                .get_tenant("acme")
                .expect("t")
                .expect("t")
                .used
                .ipv4_count,
            10
        );
        // The pool cannot go while addresses are in use.
        assert!(matches!(store.delete_pool("p"), Err(StoreError::Ipam(_))));
        // Removing a VPS returns its address, which the next create gets.
        let freed = first.ipv4[0].clone();
        store.remove_vps(&first.vps_id).expect("remove");
        let pool = store.get_pool("p").expect("get").expect("pool");
        assert!(!pool.allocated.contains_key(&freed));
        store.create_vps(&vps("again", 1)).expect("fits again");
        let again = store.find_vps("acme", "again").expect("find").expect("vps");
        assert_eq!(again.ipv4, vec![freed]);
    }

    fn no_pool_or_zero_addresses(fixture: &Fixture) {
        let store = &*fixture.store;
        store.create_tenant(&tenant("acme")).expect("tenant");
        let before = store.dump_all().expect("dump");
        let err = store.create_vps(&vps("v", 1)).expect_err("no pool");
        assert!(
            err.to_string().contains("node n1 has no IPv4 pool"),
            "{err}"
        );
        assert_eq!(store.dump_all().expect("dump"), before);
        store.create_vps(&vps("v", 0)).expect("no address needed");
        let v = store.find_vps("acme", "v").expect("find").expect("vps");
        assert!(v.ipv4.is_empty() && v.network.is_none());
    }
}
