//! Shared setup: a real controller on loopback over a temp sled store, or over a private
//! etcd with `PADDOCK_TEST_STORE=etcd` (the API suites then run on the etcd backend).

#![allow(dead_code)]

pub mod daemon;
#[path = "../../src/store/etcd_server.rs"]
pub mod etcd_server;

use std::sync::Arc;

use paddock_config::{ControllerConfig, StoreBackend};
use paddock_controller::store::{DumpEntry, EtcdStore, SledStore, Store, StoreError};
use paddock_proto::v1;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Request;

/// The store a test controller serves from, with a way to dump it.
#[derive(Clone)]
pub enum TestStore {
    Sled(Arc<SledStore>),
    Etcd(Arc<EtcdStore>),
}

impl TestStore {
    /// Every stored key and value.
    pub fn dump(&self) -> Result<Vec<DumpEntry>, StoreError> {
        match self {
            Self::Sled(store) => store.dump(),
            Self::Etcd(store) => store.dump(),
        }
    }
}

impl std::ops::Deref for TestStore {
    type Target = dyn Store;

    fn deref(&self) -> &Self::Target {
        match self {
            Self::Sled(store) => &**store,
            Self::Etcd(store) => &**store,
        }
    }
}

pub struct Api {
    _dir: Arc<tempfile::TempDir>,
    _etcd: Option<Arc<etcd_server::EtcdServer>>,
    pub store: TestStore,
    pub channel: Channel,
    pub admin: String,
    pub join: String,
    pub ca_pem: String,
    pub port: u16,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Api {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

pub fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    if !token.is_empty() {
        let value: MetadataValue<_> = format!("Bearer {token}").parse().expect("ascii token");
        request.metadata_mut().insert("authorization", value);
    }
    request
}

pub async fn start() -> Api {
    start_with(|_| {}).await
}

/// [`start`] with `tune` applied to the controller's configuration.
pub async fn start_with(tune: impl FnOnce(&mut ControllerConfig)) -> Api {
    let dir = tempfile::tempdir().expect("tempdir");
    let etcd = match std::env::var("PADDOCK_TEST_STORE").as_deref() {
        Ok("etcd") => {
            Some(etcd_server::EtcdServer::start().expect("PADDOCK_TEST_STORE=etcd needs etcd"))
        }
        _ => None,
    };
    let mut config = ControllerConfig {
        data_dir: dir.path().join("data"),
        metrics_listen: None,
        ..ControllerConfig::default()
    };
    if let Some(etcd) = &etcd {
        config.store = StoreBackend::Etcd;
        config.etcd_endpoints = vec![etcd.endpoint.clone()];
    }
    tune(&mut config);
    let init = paddock_controller::init::init(&config).await.expect("init");
    let join = std::fs::read_to_string(&init.join_token_path)
        .expect("join token")
        .trim()
        .to_owned();
    let (store, serving): (TestStore, Arc<dyn Store>) = match &etcd {
        None => {
            let store = Arc::new(
                SledStore::open(&paddock_controller::init::store_path(&config.data_dir))
                    .expect("open"),
            );
            (TestStore::Sled(store.clone()), store)
        }
        Some(_) => {
            let store = Arc::new(
                EtcdStore::open(&config.etcd_endpoints, &config.etcd_prefix).expect("open"),
            );
            (TestStore::Etcd(store.clone()), store)
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    let join_token = join.clone();
    let ca_pem = std::fs::read_to_string(&init.ca_path).expect("ca");
    let pki = paddock_controller::pki::Pki::load(&config.data_dir).expect("pki");
    tokio::spawn(async move {
        paddock_controller::serve_with(config, serving, join_token, pki, listener, async {
            let _ = stopped.await;
        })
        .await
        .expect("serve");
    });
    let endpoint = tls_endpoint(addr.port(), &ca_pem, None);
    let channel = connect(&endpoint).await;
    let api = Api {
        _dir: Arc::new(dir),
        _etcd: etcd.map(Arc::new),
        store,
        channel,
        admin: init.admin_token,
        join,
        ca_pem,
        port: addr.port(),
        shutdown: Some(shutdown),
    };
    // A node with room but no reachable agent: placement works, reconcile just retries.
    let node_channel = api.enrol("node-a").await;
    let mut registry = v1::agent_registry_client::AgentRegistryClient::new(node_channel);
    registry
        .register(Request::new(v1::RegisterRequest {
            node_name: "node-a".into(),
            address: "http://127.0.0.1:9".into(),
            capacity: Some(v1::NodeCapacityReport {
                vcpus: 64.0,
                memory_bytes: 1 << 40,
                disk_bytes: 1 << 44,
            }),
            agent_version: "test".into(),
        }))
        .await
        .expect("register node");
    api.create_pool(v1::Pool {
        name: "pool-a".into(),
        node: "node-a".into(),
        cidr: "10.200.0.0/16".into(),
        gateway: "10.200.0.1".into(),
        nat: true,
        ..v1::Pool::default()
    })
    .await
    .expect("create pool");
    api
}

/// A TLS endpoint to the controller on `port`, optionally with a client identity.
pub fn tls_endpoint(port: u16, ca_pem: &str, identity: Option<(String, String)>) -> Endpoint {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .expect("uri")
        .tls_config(tls)
        .expect("tls")
}

/// Connects, retrying while the server starts.
pub async fn connect(endpoint: &Endpoint) -> Channel {
    for _ in 0..100 {
        if let Ok(channel) = endpoint.connect().await {
            return channel;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("could not connect to the controller");
}

/// Enrols a node with the join token; returns its certificate and key PEM.
pub async fn enrol(channel: Channel, join: &str, node: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("params")
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    let response = v1::agent_registry_client::AgentRegistryClient::new(channel)
        .enroll(with_token(
            v1::EnrollRequest {
                node_name: node.into(),
                csr_pem: csr,
                subject_alt_names: vec!["127.0.0.1".into()],
            },
            join,
        ))
        .await
        .expect("enrol")
        .into_inner();
    (response.certificate_pem, key.serialize_pem())
}

impl Api {
    /// The same controller seen through another channel (e.g. a node's mTLS one).
    pub fn with_channel(&self, channel: Channel) -> Api {
        Api {
            _dir: self._dir.clone(),
            _etcd: self._etcd.clone(),
            store: self.store.clone(),
            channel,
            admin: self.admin.clone(),
            join: self.join.clone(),
            ca_pem: self.ca_pem.clone(),
            port: self.port,
            shutdown: None,
        }
    }

    /// Enrols `node` and returns a channel that authenticates as it.
    pub async fn enrol(&self, node: &str) -> Channel {
        let identity = enrol(self.channel.clone(), &self.join, node).await;
        connect(&tls_endpoint(self.port, &self.ca_pem, Some(identity))).await
    }

    pub fn vps(&self) -> v1::vps_service_client::VpsServiceClient<Channel> {
        v1::vps_service_client::VpsServiceClient::new(self.channel.clone())
    }
    pub fn tenants(&self) -> v1::tenant_service_client::TenantServiceClient<Channel> {
        v1::tenant_service_client::TenantServiceClient::new(self.channel.clone())
    }
    pub fn tokens(&self) -> v1::token_service_client::TokenServiceClient<Channel> {
        v1::token_service_client::TokenServiceClient::new(self.channel.clone())
    }

    /// Creates `pool` as the admin.
    pub async fn create_pool(&self, pool: v1::Pool) -> Result<v1::Pool, tonic::Status> {
        v1::pool_service_client::PoolServiceClient::new(self.channel.clone())
            .create_pool(with_token(
                v1::CreatePoolRequest { pool: Some(pool) },
                &self.admin,
            ))
            .await
            .map(|response| response.into_inner())
    }

    pub async fn tenant(&self, name: &str, max_vps: u32) -> String {
        self.tenants()
            .create_tenant(with_token(
                v1::CreateTenantRequest {
                    name: name.into(),
                    quota: Some(v1::Quota {
                        max_vps,
                        ..v1::Quota::default()
                    }),
                },
                &self.admin,
            ))
            .await
            .expect("create tenant");
        self.token(v1::Role::Tenant, name).await
    }

    pub async fn token(&self, role: v1::Role, tenant: &str) -> String {
        self.tokens()
            .create_token(with_token(
                v1::CreateTokenRequest {
                    role: role.into(),
                    tenant: tenant.into(),
                    ..v1::CreateTokenRequest::default()
                },
                &self.admin,
            ))
            .await
            .expect("create token")
            .into_inner()
            .token
    }

    pub async fn create_vps(
        &self,
        token: &str,
        tenant: &str,
        name: &str,
    ) -> Result<v1::Vps, tonic::Status> {
        self.vps()
            .create_vps(with_token(
                v1::CreateVpsRequest {
                    tenant: tenant.into(),
                    name: name.into(),
                    plan: "nano".into(),
                    start: true,
                    ..v1::CreateVpsRequest::default()
                },
                token,
            ))
            .await
            .map(|r| r.into_inner())
    }
}
