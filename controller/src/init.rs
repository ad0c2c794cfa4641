//! `paddock-controller init`: a new data dir with the store, seeded plans,
//! the first admin token and the node join token.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use std::sync::Arc;

use paddock_config::{ControllerConfig, StoreBackend};

use crate::auth::{self, mint_join_token};
use crate::model::{PlanRecord, Resources, Role, TransferOverage};
use crate::store::{EtcdStore, SledStore, Store, StoreError};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Why initialization failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{path} is already initialized (delete it to start over, losing all state)")]
    AlreadyInitialized { path: PathBuf },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
}

/// What init produced; the admin token is only ever shown here.
pub struct Initialized {
    pub admin_token: String,
    pub join_token_path: PathBuf,
    /// The CA certificate agents and CLI users trust.
    pub ca_path: PathBuf,
}

/// The plans every installation starts with. Each carries IO limits on its disk (bytes/s
/// and IOPS, read and write) that scale with its size, so no VPS can saturate the host's
/// storage for the others; networks stay unlimited unless the provider sets rates.
pub fn default_plans() -> Vec<PlanRecord> {
    let plan = |name: &str,
                vcpus: f64,
                memory_bytes: u64,
                disk_bytes: u64,
                pids_max: u64,
                io_bytes_per_sec: u64,
                iops: u64| PlanRecord {
        name: name.to_owned(),
        resources: Resources {
            vcpus,
            cpu_weight: crate::model::DEFAULT_CPU_WEIGHT,
            memory_bytes,
            swap_bytes: 0,
            disk_bytes,
            pids_max,
            io_read_bytes_per_sec: io_bytes_per_sec,
            io_write_bytes_per_sec: io_bytes_per_sec,
            io_read_iops: iops,
            io_write_iops: iops,
            ipv4_count: 1,
            ..Resources::default()
        },
        monthly_transfer_bytes: 0,
        transfer_overage: TransferOverage::Notify,
        max_snapshots: crate::model::snapshots::DEFAULT_MAX_SNAPSHOTS,
    };
    vec![
        plan("nano", 1.0, 256 * MIB, 2 * GIB, 512, 50 * MIB, 500),
        plan("small", 1.0, GIB, 10 * GIB, 1024, 100 * MIB, 1000),
        plan("medium", 2.0, 4 * GIB, 40 * GIB, 2048, 200 * MIB, 2000),
        plan("large", 4.0, 8 * GIB, 80 * GIB, 4096, 400 * MIB, 4000),
    ]
}

/// The store lives here inside the data dir.
pub fn store_path(data_dir: &Path) -> PathBuf {
    data_dir.join("store")
}

/// The node join token file inside the data dir.
pub fn join_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("join-token")
}

fn write_secret(path: &Path, contents: &str) -> Result<(), InitError> {
    let io = |op, source| InitError::Io {
        op,
        path: path.to_owned(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io("creating", e))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io("writing", e))
}

/// Opens the configured store (`store = "sled" | "etcd"`).
pub fn open_store(config: &ControllerConfig) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match config.store {
        StoreBackend::Sled => Arc::new(SledStore::open(&store_path(&config.data_dir))?),
        StoreBackend::Etcd => Arc::new(EtcdStore::open(
            &config.etcd_endpoints,
            &config.etcd_prefix,
        )?),
    })
}

/// Copies the sled store of `config.data_dir` into the empty etcd prefix of `config`
/// (the controller stopped: sled refuses a store another process has open).
pub fn migrate_sled_to_etcd(
    config: &ControllerConfig,
) -> Result<crate::store::migrate::Migrated, StoreError> {
    let from = SledStore::open(&store_path(&config.data_dir))?;
    let to = EtcdStore::connect(&config.etcd_endpoints, &config.etcd_prefix)?;
    crate::store::migrate::sled_to_etcd(&from, &to)
}

/// Creates the data dir, the store, the seeded plans and both tokens.
pub async fn init(config: &ControllerConfig) -> Result<Initialized, InitError> {
    let data_dir = &config.data_dir;
    let store_dir = store_path(data_dir);
    if store_dir.exists() {
        return Err(InitError::AlreadyInitialized {
            path: data_dir.clone(),
        });
    }
    // An etcd prefix that holds anything is another installation's (or this one's).
    let etcd = match config.store {
        StoreBackend::Sled => None,
        StoreBackend::Etcd => {
            let store = EtcdStore::connect(&config.etcd_endpoints, &config.etcd_prefix)?;
            if !store.is_empty()? {
                return Err(InitError::AlreadyInitialized {
                    path: PathBuf::from(&config.etcd_prefix),
                });
            }
            Some(store)
        }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(|source| InitError::Io {
            op: "creating",
            path: data_dir.clone(),
            source,
        })?;
    let store: Arc<dyn Store> = match etcd {
        None => Arc::new(SledStore::create(&store_dir)?),
        Some(store) => Arc::new(store.initialize()?),
    };
    for plan in default_plans() {
        store.create_plan(&plan)?;
    }
    let admin = auth::mint(Role::Admin, None, "created by init".to_owned(), None);
    store.put_token(&admin.hash, &admin.record)?;
    store.flush().await?;
    crate::pki::Pki::create(data_dir, &config.tls_sans)?;
    let join_token_path = join_token_path(data_dir);
    if !join_token_path.exists() {
        write_secret(&join_token_path, &mint_join_token())?;
    }
    Ok(Initialized {
        admin_token: admin.secret,
        join_token_path,
        ca_path: crate::pki::ca_path(data_dir),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Bounds;

    #[test]
    fn shipped_plans_limit_io_and_keep_the_bounds() {
        let plans = default_plans();
        assert_eq!(plans.len(), 4);
        for plan in &plans {
            let r = &plan.resources;
            for (field, value) in [
                ("io_read_bytes_per_sec", r.io_read_bytes_per_sec),
                ("io_write_bytes_per_sec", r.io_write_bytes_per_sec),
                ("io_read_iops", r.io_read_iops),
                ("io_write_iops", r.io_write_iops),
                ("pids_max", r.pids_max),
            ] {
                assert_ne!(value, 0, "plan {} ships without a {field} limit", plan.name);
            }
            Bounds::default()
                .check("plan.resources.", r)
                .unwrap_or_else(|error| panic!("plan {}: {error}", plan.name));
        }
        // Bigger plans get more IO.
        for pair in plans.windows(2) {
            assert!(
                pair[0].resources.io_write_bytes_per_sec < pair[1].resources.io_write_bytes_per_sec
            );
            assert!(pair[0].resources.io_write_iops < pair[1].resources.io_write_iops);
        }
    }
}
