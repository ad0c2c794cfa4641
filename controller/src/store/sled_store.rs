//! `Store` on sled: one tree per record kind, JSON values, multi-tree transactions.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError,
};
use sled::{Transactional, Tree};

use super::*;

const META: &str = "meta";
const SCHEMA_KEY: &[u8] = b"schema_version";

/// One stored entry: tree name, key, value.
pub type DumpEntry = (String, Vec<u8>, Vec<u8>);

/// The embedded sled store in the controller's data dir.
pub struct SledStore {
    db: sled::Db,
    plans: Tree,
    tenants: Tree,
    tokens: Tree,
    nodes: Tree,
    vps: Tree,
    /// `tenant/name` -> vps id.
    vps_names: Tree,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Records are plain data (strings, numbers, maps with string keys): serialization cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(
    tree: &'static str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        tree,
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

fn name_key(tenant: &str, name: &str) -> Vec<u8> {
    format!("{tenant}/{name}").into_bytes()
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn abort<T>(error: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(error))
}

fn tx_get<T: DeserializeOwned>(
    tree: &TransactionalTree,
    name: &'static str,
    key: &[u8],
) -> TxResult<Option<T>> {
    match tree.get(key)? {
        None => Ok(None),
        Some(bytes) => decode(name, key, &bytes).map(Some).or_else(abort),
    }
}

fn flatten<T>(result: Result<T, TransactionError<StoreError>>) -> Result<T, StoreError> {
    result.map_err(|error| match error {
        TransactionError::Abort(error) => error,
        TransactionError::Storage(error) => StoreError::Sled(error),
    })
}

impl From<UnabortableTransactionError> for StoreError {
    fn from(error: UnabortableTransactionError) -> Self {
        match error {
            UnabortableTransactionError::Storage(error) => StoreError::Sled(error),
            UnabortableTransactionError::Conflict => {
                StoreError::Conflict("transaction conflict".to_owned())
            }
        }
    }
}

impl SledStore {
    fn open_db(path: &Path) -> Result<sled::Db, StoreError> {
        sled::Config::new()
            .path(path)
            .open()
            .map_err(|source| StoreError::Open {
                path: path.display().to_string(),
                source,
            })
    }

    fn from_db(db: sled::Db) -> Result<Self, StoreError> {
        Ok(Self {
            plans: db.open_tree("plans")?,
            tenants: db.open_tree("tenants")?,
            tokens: db.open_tree("tokens")?,
            nodes: db.open_tree("nodes")?,
            vps: db.open_tree("vps")?,
            vps_names: db.open_tree("vps_names")?,
            db,
        })
    }

    /// Creates a new store at `path` stamped with the current schema version.
    pub fn create(path: &Path) -> Result<Self, StoreError> {
        let db = Self::open_db(path)?;
        let meta = db.open_tree(META)?;
        if meta.get(SCHEMA_KEY)?.is_none() {
            meta.insert(SCHEMA_KEY, SCHEMA_VERSION.to_string().as_bytes())?;
        }
        let store = Self::from_db(db)?;
        store.check_schema(path)?;
        Ok(store)
    }

    /// Opens an existing store, refusing one of another schema version.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if !path.join("conf").exists() && !path.join("db").exists() {
            return Err(StoreError::NotInitialized {
                path: path.display().to_string(),
            });
        }
        let store = Self::from_db(Self::open_db(path)?)?;
        store.check_schema(path)?;
        Ok(store)
    }

    fn check_schema(&self, path: &Path) -> Result<(), StoreError> {
        let meta = self.db.open_tree(META)?;
        let found = match meta.get(SCHEMA_KEY)? {
            None => {
                return Err(StoreError::NotInitialized {
                    path: path.display().to_string(),
                })
            }
            Some(bytes) => String::from_utf8_lossy(&bytes).parse::<u32>().unwrap_or(0),
        };
        if found != SCHEMA_VERSION {
            return Err(StoreError::SchemaMismatch {
                path: path.display().to_string(),
                found,
                expected: SCHEMA_VERSION,
            });
        }
        Ok(())
    }

    /// Every key and value of every tree, for tests that check a failed request changed nothing.
    pub fn dump(&self) -> Result<Vec<DumpEntry>, StoreError> {
        let mut out = Vec::new();
        for name in self.db.tree_names() {
            let tree = self.db.open_tree(&name)?;
            for entry in tree.iter() {
                let (key, value) = entry?;
                out.push((
                    String::from_utf8_lossy(&name).into_owned(),
                    key.to_vec(),
                    value.to_vec(),
                ));
            }
        }
        Ok(out)
    }

    fn get<T: DeserializeOwned>(
        tree: &Tree,
        name: &'static str,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        tree.get(key)?
            .map(|bytes| decode(name, key, &bytes))
            .transpose()
    }

    fn scan<T: DeserializeOwned>(tree: &Tree, name: &'static str) -> Result<Vec<T>, StoreError> {
        tree.iter()
            .map(|entry| {
                let (key, value) = entry?;
                decode(name, &key, &value)
            })
            .collect()
    }
}

impl Store for SledStore {
    fn flush(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.db.flush_async().await?;
            Ok(())
        })
    }

    fn list_plans(&self) -> Result<Vec<PlanRecord>, StoreError> {
        Self::scan(&self.plans, "plans")
    }

    fn get_plan(&self, name: &str) -> Result<Option<PlanRecord>, StoreError> {
        Self::get(&self.plans, "plans", name.as_bytes())
    }

    fn create_plan(&self, plan: &PlanRecord) -> Result<(), StoreError> {
        let swapped = self.plans.compare_and_swap(
            plan.name.as_bytes(),
            None as Option<&[u8]>,
            Some(encode(plan)),
        )?;
        swapped.map_err(|_| StoreError::AlreadyExists {
            kind: "plan",
            name: plan.name.clone(),
        })
    }

    fn delete_plan(&self, name: &str) -> Result<(), StoreError> {
        let in_use = self
            .list_vps(None)?
            .into_iter()
            .filter(|vps| vps.plan == name)
            .count();
        if in_use > 0 {
            return Err(StoreError::Conflict(format!(
                "plan {name:?} is used by {in_use} VPS(es); resize or delete them first"
            )));
        }
        match self.plans.remove(name.as_bytes())? {
            Some(_) => Ok(()),
            None => Err(StoreError::NotFound {
                kind: "plan",
                name: name.to_owned(),
            }),
        }
    }

    fn create_tenant(&self, tenant: &TenantRecord) -> Result<(), StoreError> {
        let swapped = self.tenants.compare_and_swap(
            tenant.name.as_bytes(),
            None as Option<&[u8]>,
            Some(encode(tenant)),
        )?;
        swapped.map_err(|_| StoreError::AlreadyExists {
            kind: "tenant",
            name: tenant.name.clone(),
        })
    }

    fn get_tenant(&self, name: &str) -> Result<Option<TenantRecord>, StoreError> {
        Self::get(&self.tenants, "tenants", name.as_bytes())
    }

    fn list_tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        Self::scan(&self.tenants, "tenants")
    }

    fn update_tenant(
        &self,
        name: &str,
        change: &(dyn Fn(&mut TenantRecord) -> Result<(), StoreError> + Sync),
    ) -> Result<TenantRecord, StoreError> {
        flatten(self.tenants.transaction(|tenants| {
            let Some(mut tenant) = tx_get::<TenantRecord>(tenants, "tenants", name.as_bytes())?
            else {
                return abort(StoreError::NotFound {
                    kind: "tenant",
                    name: name.to_owned(),
                });
            };
            change(&mut tenant).or_else(abort)?;
            tenants.insert(name.as_bytes(), encode(&tenant))?;
            Ok(tenant)
        }))
    }

    fn delete_tenant(&self, name: &str) -> Result<(), StoreError> {
        flatten(self.tenants.transaction(|tenants| {
            let Some(tenant) = tx_get::<TenantRecord>(tenants, "tenants", name.as_bytes())? else {
                return abort(StoreError::NotFound {
                    kind: "tenant",
                    name: name.to_owned(),
                });
            };
            if tenant.used.max_vps > 0 {
                return abort(StoreError::Conflict(format!(
                    "tenant {name:?} still has {} VPS(es); delete them first",
                    tenant.used.max_vps
                )));
            }
            tenants.remove(name.as_bytes())?;
            Ok(())
        }))?;
        // Tokens of a deleted tenant can never authenticate again.
        for entry in self.tokens.iter() {
            let (key, value) = entry?;
            let token: TokenRecord = decode("tokens", &key, &value)?;
            if token.tenant.as_deref() == Some(name) {
                self.tokens.remove(key)?;
            }
        }
        Ok(())
    }

    fn put_token(&self, hash: &str, token: &TokenRecord) -> Result<(), StoreError> {
        self.tokens.insert(hash.as_bytes(), encode(token))?;
        Ok(())
    }

    fn get_token(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        Self::get(&self.tokens, "tokens", hash.as_bytes())
    }

    fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        Self::scan(&self.tokens, "tokens")
    }

    fn revoke_token(&self, token_id: &str) -> Result<(), StoreError> {
        for entry in self.tokens.iter() {
            let (key, value) = entry?;
            let mut token: TokenRecord = decode("tokens", &key, &value)?;
            if token.token_id == token_id {
                token.revoked = true;
                self.tokens.insert(key, encode(&token))?;
                return Ok(());
            }
        }
        Err(StoreError::NotFound {
            kind: "token",
            name: token_id.to_owned(),
        })
    }

    fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        self.nodes.insert(node.name.as_bytes(), encode(node))?;
        Ok(())
    }

    fn get_node(&self, name: &str) -> Result<Option<NodeRecord>, StoreError> {
        Self::get(&self.nodes, "nodes", name.as_bytes())
    }

    fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        Self::scan(&self.nodes, "nodes")
    }

    fn create_vps(&self, vps: &VpsRecord) -> Result<(), StoreError> {
        let key = name_key(&vps.tenant, &vps.name);
        flatten(
            (&self.tenants, &self.vps, &self.vps_names).transaction(|(tenants, all, names)| {
                let Some(mut tenant) =
                    tx_get::<TenantRecord>(tenants, "tenants", vps.tenant.as_bytes())?
                else {
                    return abort(StoreError::NotFound {
                        kind: "tenant",
                        name: vps.tenant.clone(),
                    });
                };
                if names.get(&key)?.is_some() {
                    return abort(StoreError::AlreadyExists {
                        kind: "VPS",
                        name: vps.name.clone(),
                    });
                }
                if let Err(message) = crate::quota::check(&tenant, &vps.resources, &vps.plan) {
                    return abort(StoreError::QuotaExceeded(message));
                }
                crate::quota::charge(&mut tenant.used, &Quota::of_vps(&vps.resources));
                tenants.insert(vps.tenant.as_bytes(), encode(&tenant))?;
                all.insert(vps.vps_id.as_bytes(), encode(vps))?;
                names.insert(key.clone(), vps.vps_id.as_bytes())?;
                Ok(())
            }),
        )
    }

    fn get_vps(&self, vps_id: &str) -> Result<Option<VpsRecord>, StoreError> {
        Self::get(&self.vps, "vps", vps_id.as_bytes())
    }

    fn find_vps(&self, tenant: &str, name: &str) -> Result<Option<VpsRecord>, StoreError> {
        match self.vps_names.get(name_key(tenant, name))? {
            None => Ok(None),
            Some(vps_id) => Self::get(&self.vps, "vps", &vps_id),
        }
    }

    fn list_vps(&self, tenant: Option<&str>) -> Result<Vec<VpsRecord>, StoreError> {
        match tenant {
            None => Self::scan(&self.vps, "vps"),
            Some(tenant) => {
                let mut out = Vec::new();
                for entry in self.vps_names.scan_prefix(format!("{tenant}/").as_bytes()) {
                    let (_, vps_id) = entry?;
                    if let Some(vps) = Self::get(&self.vps, "vps", &vps_id)? {
                        out.push(vps);
                    }
                }
                Ok(out)
            }
        }
    }

    fn update_vps(
        &self,
        vps_id: &str,
        change: &(dyn Fn(&mut VpsRecord) -> Result<(), StoreError> + Sync),
    ) -> Result<VpsRecord, StoreError> {
        flatten(self.vps.transaction(|all| {
            let Some(mut vps) = tx_get::<VpsRecord>(all, "vps", vps_id.as_bytes())? else {
                return abort(StoreError::NotFound {
                    kind: "VPS",
                    name: vps_id.to_owned(),
                });
            };
            change(&mut vps).or_else(abort)?;
            all.insert(vps_id.as_bytes(), encode(&vps))?;
            Ok(vps)
        }))
    }

    fn remove_vps(&self, vps_id: &str) -> Result<(), StoreError> {
        flatten(
            (&self.tenants, &self.vps, &self.vps_names).transaction(|(tenants, all, names)| {
                let Some(vps) = tx_get::<VpsRecord>(all, "vps", vps_id.as_bytes())? else {
                    return Ok(());
                };
                if let Some(mut tenant) =
                    tx_get::<TenantRecord>(tenants, "tenants", vps.tenant.as_bytes())?
                {
                    crate::quota::release(&mut tenant.used, &Quota::of_vps(&vps.resources));
                    tenants.insert(vps.tenant.as_bytes(), encode(&tenant))?;
                }
                all.remove(vps_id.as_bytes())?;
                names.remove(name_key(&vps.tenant, &vps.name))?;
                Ok(())
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::Utc;

    use super::*;

    fn tenant(name: &str, max_vps: u32) -> TenantRecord {
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

    fn vps(tenant: &str, name: &str) -> VpsRecord {
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
            rebuild_generation: 0,
            restart_generation: 0,
            created_at: Utc::now(),
            observed: None,
        }
    }

    #[test]
    fn concurrent_creates_never_exceed_the_quota() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SledStore::create(dir.path()).expect("create"));
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
            .all(|e| matches!(e, StoreError::QuotaExceeded(m) if m.contains("10 of 10 VPSes"))));
        let used = store.get_tenant("acme").expect("get").expect("exists").used;
        assert_eq!(used.max_vps, 10);
        assert_eq!(store.list_vps(Some("acme")).expect("list").len(), 10);
    }

    #[test]
    fn duplicate_names_and_release_on_remove() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::create(dir.path()).expect("create");
        store.create_tenant(&tenant("acme", 5)).expect("tenant");
        store.create_tenant(&tenant("other", 5)).expect("tenant");
        store.create_vps(&vps("acme", "web1")).expect("first");
        let before = store.dump().expect("dump");
        let again = store
            .create_vps(&vps("acme", "web1"))
            .expect_err("duplicate");
        assert!(matches!(again, StoreError::AlreadyExists { .. }));
        assert_eq!(
            store.dump().expect("dump"),
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

    #[test]
    fn schema_version_is_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(SledStore::create(dir.path()).expect("create"));
        SledStore::open(dir.path()).expect("same version opens");
        {
            let db = sled::open(dir.path()).expect("raw");
            db.open_tree(META)
                .expect("meta")
                .insert(SCHEMA_KEY, b"99")
                .expect("write");
            db.flush().expect("flush");
        }
        let err = SledStore::open(dir.path()).err().expect("must refuse");
        assert!(
            matches!(err, StoreError::SchemaMismatch { found: 99, .. }),
            "{err}"
        );
        let empty = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            SledStore::open(empty.path()),
            Err(StoreError::NotInitialized { .. })
        ));
    }
}
