//! A node agent without containers, for tests of several controllers: it enrols with the real
//! join token, serves the real `NodeAgent` service over mutual TLS on loopback, registers and
//! heartbeats to one controller of a list and moves to the next when that one fails (as
//! `paddock-agent` does with several `controller` addresses). `ApplyVps` records the spec's
//! power state and answers with it; `ListVps` lists what was applied; `DeleteVps` forgets it.
//! A live move's calls act on that record too: `CheckpointVps` stops a running VPS (or
//! refuses with the reason set by [`FakeAgent::refuse_checkpoints`]) and streams a small
//! transfer, `RestoreCheckpoint` runs it (or refuses, [`FakeAgent::refuse_restores`]), its
//! `held` form resumes a VPS this node dumped; `ExportVps`/`ImportVps` carry a token archive
//! for a cold move.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use paddock_proto::v1;
use paddock_proto::v1::agent_registry_client::AgentRegistryClient;
use paddock_proto::v1::node_agent_server::{NodeAgent, NodeAgentServer};
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig,
};
use tonic::{Request, Response, Status, Streaming};

/// A running fake agent; its server and heartbeats stop when it is dropped.
pub struct FakeAgent {
    state: Arc<AgentState>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[derive(Default)]
struct AgentState {
    vpses: Mutex<HashMap<String, v1::VpsStatus>>,
    /// Why `CheckpointVps` refuses (FAILED_PRECONDITION), if it does.
    checkpoint_refusal: Mutex<Option<String>>,
    /// Why `RestoreCheckpoint` refuses (FAILED_PRECONDITION), if it does.
    restore_refusal: Mutex<Option<String>>,
    /// VPSes this node dumped and still holds the checkpoint of.
    dumped: Mutex<std::collections::HashSet<String>>,
    /// The VPS ids of every `held` restore asked for, in order.
    held_restores: Mutex<Vec<String>>,
    /// Bytes of checkpoint transfers received.
    received_bytes: Mutex<u64>,
    /// Index in the controller list of the last controller a heartbeat reached.
    heartbeat_target: Mutex<Option<usize>>,
    /// The host routes of the last `SyncRoutes` (destination -> via).
    routes: Mutex<HashMap<String, String>>,
    /// While set, `ApplyVps` does not answer (a node slow to start a VPS).
    hold: std::sync::atomic::AtomicBool,
    /// `ListVps` calls answered.
    lists: std::sync::atomic::AtomicU64,
}

fn status(vps_id: &str, running: bool) -> v1::VpsStatus {
    let mut status = v1::VpsStatus {
        vps_id: vps_id.to_owned(),
        state: 0,
        init_pid: if running { 1000 } else { 0 },
        message: String::new(),
    };
    status.set_state(if running {
        v1::AgentVpsState::Running
    } else {
        v1::AgentVpsState::Stopped
    });
    status
}

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl AgentState {
    fn set(&self, vps_id: &str, running: bool) -> v1::VpsStatus {
        let status = status(vps_id, running);
        locked(&self.vpses).insert(vps_id.to_owned(), status.clone());
        status
    }

    fn statuses(&self) -> Vec<v1::VpsStatus> {
        self.vpses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

fn mutual_channel(url: &str, ca_pem: &str, identity: &Identity) -> Channel {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .identity(identity.clone());
    Endpoint::from_shared(url.to_owned())
        .expect("controller url")
        .tls_config(tls)
        .expect("tls")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(20))
        .connect_lazy()
}

impl FakeAgent {
    /// Enrols `node` through the first controller of `controllers` (https URLs), serves the
    /// agent on a free loopback port, registers and heartbeats every `heartbeat`.
    pub async fn start(
        node: &str,
        controllers: Vec<String>,
        ca_pem: &str,
        join_token: &str,
        heartbeat: Duration,
    ) -> Self {
        let key = rcgen::KeyPair::generate().expect("key");
        let csr = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .expect("params")
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        let server_auth = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
        let enrol_channel = Endpoint::from_shared(controllers[0].clone())
            .expect("url")
            .tls_config(server_auth)
            .expect("tls")
            .connect()
            .await
            .expect("connect to enrol");
        let mut request = Request::new(v1::EnrollRequest {
            node_name: node.to_owned(),
            csr_pem: csr,
            subject_alt_names: vec!["127.0.0.1".to_owned()],
        });
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {join_token}").parse().expect("header"),
        );
        let enrolled = AgentRegistryClient::new(enrol_channel)
            .enroll(request)
            .await
            .expect("enrol")
            .into_inner();
        let identity = Identity::from_pem(&enrolled.certificate_pem, key.serialize_pem());

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind agent");
        let address = listener.local_addr().expect("addr");
        let state = Arc::new(AgentState::default());
        let router = Server::builder()
            .tls_config(
                ServerTlsConfig::new()
                    .identity(identity.clone())
                    .client_ca_root(Certificate::from_pem(&enrolled.ca_pem)),
            )
            .expect("server tls")
            .add_service(NodeAgentServer::new(Service(state.clone())));
        let server = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = router.serve_with_incoming(incoming).await;
        });

        let channels: Vec<Channel> = controllers
            .iter()
            .map(|url| mutual_channel(url, &enrolled.ca_pem, &identity))
            .collect();
        let register = v1::RegisterRequest {
            node_name: node.to_owned(),
            address: format!("https://{address}"),
            capacity: Some(v1::NodeCapacityReport {
                vcpus: 512.0,
                memory_bytes: 1 << 42,
                disk_bytes: 1 << 46,
            }),
            agent_version: "fake".to_owned(),
        };
        AgentRegistryClient::new(channels[0].clone())
            .register(register.clone())
            .await
            .expect("register");
        let node = node.to_owned();
        let beating = state.clone();
        let heartbeats = tokio::spawn(async move {
            let mut current = 0usize;
            let mut registered_with = Some(0usize);
            loop {
                tokio::time::sleep(heartbeat).await;
                let mut registry = AgentRegistryClient::new(channels[current].clone());
                if registered_with != Some(current)
                    && registry.register(register.clone()).await.is_err()
                {
                    current = (current + 1) % channels.len();
                    continue;
                }
                registered_with = Some(current);
                let request = v1::HeartbeatRequest {
                    node_name: node.clone(),
                    vps: beating.statuses(),
                    capacity: None,
                    usage: Vec::new(),
                };
                match registry.heartbeat(request).await {
                    Ok(_) => {
                        *beating
                            .heartbeat_target
                            .lock()
                            .unwrap_or_else(|e| e.into_inner()) = Some(current);
                    }
                    // The next controller of the list.
                    Err(_) => current = (current + 1) % channels.len(),
                }
            }
        });
        Self {
            state,
            tasks: vec![server, heartbeats],
        }
    }

    /// The status the node last applied for `vps_id`, if it runs it.
    pub fn applied(&self, vps_id: &str) -> Option<v1::VpsStatus> {
        self.state
            .vpses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(vps_id)
            .cloned()
    }

    /// How many `ListVps` calls the node answered.
    #[allow(dead_code)] // only the reconcile-kick test asks
    pub fn lists(&self) -> u64 {
        self.state.lists.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Makes `CheckpointVps` refuse with `reason` (CRIU's, as a real node reports it).
    #[allow(dead_code)] // only the migration tests ask
    pub fn refuse_checkpoints(&self, reason: Option<&str>) {
        *locked(&self.state.checkpoint_refusal) = reason.map(str::to_owned);
    }

    /// Makes `RestoreCheckpoint` of a transfer refuse with `reason`.
    #[allow(dead_code)] // only the migration tests ask
    pub fn refuse_restores(&self, reason: Option<&str>) {
        *locked(&self.state.restore_refusal) = reason.map(str::to_owned);
    }

    /// The VPS ids of the `held` restores (rollbacks on a source) asked for so far.
    #[allow(dead_code)] // only the migration tests ask
    pub fn held_restores(&self) -> Vec<String> {
        locked(&self.state.held_restores).clone()
    }

    /// Bytes of checkpoint transfers received.
    #[allow(dead_code)] // only the migration tests ask
    pub fn received_bytes(&self) -> u64 {
        *locked(&self.state.received_bytes)
    }

    /// Records `vps_id` as on this node, dumped (as a source is after `CheckpointVps`).
    #[allow(dead_code)] // only the migration tests ask
    pub fn set_dumped(&self, vps_id: &str) {
        self.state.set(vps_id, false);
        locked(&self.state.dumped).insert(vps_id.to_owned());
    }

    /// Records `vps_id` as running here (as a destination is after `RestoreCheckpoint`).
    #[allow(dead_code)] // only the migration tests ask
    pub fn set_running(&self, vps_id: &str) {
        self.state.set(vps_id, true);
    }

    /// The host routes the controller last synced (destination -> via); not every test
    /// including this module asks.
    #[allow(dead_code)]
    pub fn routes(&self) -> HashMap<String, String> {
        self.state
            .routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Holds every `ApplyVps` unanswered while `hold` is set (VPSes stay pending); not every
    /// test including this module asks.
    #[allow(dead_code)]
    pub fn hold_applies(&self, hold: bool) {
        self.state
            .hold
            .store(hold, std::sync::atomic::Ordering::SeqCst);
    }

    /// Which controller (index in the list) the last heartbeat reached.
    #[allow(dead_code)] // only the cluster test asks
    pub fn heartbeat_target(&self) -> Option<usize> {
        *self
            .state
            .heartbeat_target
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

struct Service(Arc<AgentState>);

type OutputStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl NodeAgent for Service {
    async fn apply_vps(
        &self,
        request: Request<v1::VpsSpec>,
    ) -> Result<Response<v1::VpsStatus>, Status> {
        while self.0.hold.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let spec = request.into_inner();
        let running = spec.desired_power() == v1::PowerState::Running;
        Ok(Response::new(self.0.set(&spec.vps_id, running)))
    }

    async fn delete_vps(
        &self,
        request: Request<v1::AgentVpsRef>,
    ) -> Result<Response<v1::Empty>, Status> {
        let vps_id = request.into_inner().vps_id;
        locked(&self.0.vpses).remove(&vps_id);
        locked(&self.0.dumped).remove(&vps_id);
        Ok(Response::new(v1::Empty {}))
    }

    async fn list_vps(
        &self,
        _request: Request<v1::Empty>,
    ) -> Result<Response<v1::AgentListVpsResponse>, Status> {
        self.0
            .lists
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Response::new(v1::AgentListVpsResponse {
            vps: self.0.statuses(),
        }))
    }

    async fn list_templates(
        &self,
        _request: Request<v1::Empty>,
    ) -> Result<Response<v1::ListTemplatesResponse>, Status> {
        Ok(Response::new(v1::ListTemplatesResponse {
            templates: vec![v1::Template {
                name: "busybox".to_owned(),
                description: "fake".to_owned(),
            }],
        }))
    }

    type ExecStream = OutputStream<v1::ExecOutput>;

    async fn exec(
        &self,
        _request: Request<Streaming<v1::AgentExecInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        Err(Status::unimplemented("a fake node runs no processes"))
    }

    async fn create_snapshot(
        &self,
        _request: Request<v1::AgentSnapshotRequest>,
    ) -> Result<Response<v1::AgentSnapshot>, Status> {
        Err(Status::unimplemented("a fake node has no disks"))
    }

    async fn list_snapshots(
        &self,
        _request: Request<v1::AgentVpsRef>,
    ) -> Result<Response<v1::AgentListSnapshotsResponse>, Status> {
        Ok(Response::new(v1::AgentListSnapshotsResponse::default()))
    }

    async fn restore_snapshot(
        &self,
        _request: Request<v1::AgentSnapshotRequest>,
    ) -> Result<Response<v1::AgentRestoreSnapshotResponse>, Status> {
        Err(Status::unimplemented("a fake node has no disks"))
    }

    async fn delete_snapshot(
        &self,
        _request: Request<v1::AgentSnapshotRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        Err(Status::unimplemented("a fake node has no disks"))
    }

    type ConsoleStream = OutputStream<v1::ConsoleOutput>;

    async fn console(
        &self,
        _request: Request<Streaming<v1::AgentConsoleInput>>,
    ) -> Result<Response<Self::ConsoleStream>, Status> {
        Err(Status::unimplemented("a fake node has no console"))
    }

    async fn backup_vps(
        &self,
        _request: Request<v1::AgentBackupRequest>,
    ) -> Result<Response<v1::AgentBackupResponse>, Status> {
        Err(Status::unimplemented("a fake node has no disks"))
    }

    async fn restore_backup(
        &self,
        _request: Request<v1::AgentRestoreRequest>,
    ) -> Result<Response<v1::VpsStatus>, Status> {
        Err(Status::unimplemented("a fake node has no disks"))
    }

    async fn delete_backup(
        &self,
        _request: Request<v1::AgentBackupRef>,
    ) -> Result<Response<v1::Empty>, Status> {
        Err(Status::unimplemented("a fake node has no backup store"))
    }

    type CheckpointVpsStream = OutputStream<v1::AgentCheckpointChunk>;

    async fn checkpoint_vps(
        &self,
        request: Request<v1::AgentCheckpointRequest>,
    ) -> Result<Response<Self::CheckpointVpsStream>, Status> {
        use v1::agent_checkpoint_chunk::Item;
        let vps_id = request.into_inner().vps_id;
        if let Some(reason) = locked(&self.0.checkpoint_refusal).clone() {
            return Err(Status::failed_precondition(reason));
        }
        let running = locked(&self.0.vpses)
            .get(&vps_id)
            .is_some_and(|status| status.state() == v1::AgentVpsState::Running);
        if !running {
            return Err(Status::failed_precondition("the VPS is not running"));
        }
        self.0.set(&vps_id, false);
        locked(&self.0.dumped).insert(vps_id);
        let report = v1::AgentCheckpointReport {
            final_pages_written: 42,
            frozen_us: 1500,
            image_bytes: 4096,
            total_ms: 3,
            ..Default::default()
        };
        let messages = vec![
            Ok(v1::AgentCheckpointChunk {
                item: Some(Item::Report(report)),
            }),
            Ok(v1::AgentCheckpointChunk {
                item: Some(Item::Data(vec![7; 3000])),
            }),
            Ok(v1::AgentCheckpointChunk {
                item: Some(Item::Data(vec![9; 1096])),
            }),
        ];
        Ok(Response::new(Box::pin(tokio_stream::iter(messages))))
    }

    async fn restore_checkpoint(
        &self,
        request: Request<Streaming<v1::AgentCheckpointUpload>>,
    ) -> Result<Response<v1::VpsStatus>, Status> {
        use v1::agent_checkpoint_upload::Item;
        let mut inbound = request.into_inner();
        let spec = match inbound.message().await? {
            Some(v1::AgentCheckpointUpload {
                item: Some(Item::Held(spec)),
            }) => {
                locked(&self.0.held_restores).push(spec.vps_id.clone());
                let running = locked(&self.0.vpses)
                    .get(&spec.vps_id)
                    .is_some_and(|status| status.state() == v1::AgentVpsState::Running);
                if running {
                    return Ok(Response::new(status(&spec.vps_id, true)));
                }
                if !locked(&self.0.dumped).remove(&spec.vps_id) {
                    return Err(Status::failed_precondition("no checkpoint held"));
                }
                return Ok(Response::new(self.0.set(&spec.vps_id, true)));
            }
            Some(v1::AgentCheckpointUpload {
                item: Some(Item::Spec(spec)),
            }) => spec,
            _ => return Err(Status::invalid_argument("spec first")),
        };
        let mut bytes = 0u64;
        while let Some(message) = inbound.message().await? {
            if let Some(Item::Data(data)) = message.item {
                bytes += data.len() as u64;
            }
        }
        *locked(&self.0.received_bytes) += bytes;
        if let Some(reason) = locked(&self.0.restore_refusal).clone() {
            return Err(Status::failed_precondition(reason));
        }
        Ok(Response::new(self.0.set(&spec.vps_id, true)))
    }

    type ExportVpsStream = OutputStream<v1::AgentArchiveChunk>;

    async fn export_vps(
        &self,
        _request: Request<v1::AgentExportRequest>,
    ) -> Result<Response<Self::ExportVpsStream>, Status> {
        let messages = vec![
            Ok(v1::AgentArchiveChunk {
                manifest: Some(v1::AgentArchiveManifest {
                    archive_bytes: 5,
                    ..Default::default()
                }),
                data: Vec::new(),
            }),
            Ok(v1::AgentArchiveChunk {
                manifest: None,
                data: vec![1; 5],
            }),
        ];
        Ok(Response::new(Box::pin(tokio_stream::iter(messages))))
    }

    async fn import_vps(
        &self,
        request: Request<Streaming<v1::AgentImportChunk>>,
    ) -> Result<Response<v1::VpsStatus>, Status> {
        let mut inbound = request.into_inner();
        let mut vps_id = String::new();
        while let Some(chunk) = inbound.message().await? {
            if !chunk.vps_id.is_empty() {
                vps_id = chunk.vps_id;
            }
        }
        Ok(Response::new(self.0.set(&vps_id, false)))
    }

    async fn sync_routes(
        &self,
        request: Request<v1::AgentRoutes>,
    ) -> Result<Response<v1::AgentRoutesResult>, Status> {
        let wanted: HashMap<String, String> = request
            .into_inner()
            .routes
            .into_iter()
            .map(|route| (route.destination, route.via))
            .collect();
        let mut routes = self.0.routes.lock().unwrap_or_else(|e| e.into_inner());
        let added = wanted
            .iter()
            .filter(|(d, v)| routes.get(*d) != Some(v))
            .count();
        let removed = routes.keys().filter(|d| !wanted.contains_key(*d)).count();
        *routes = wanted;
        Ok(Response::new(v1::AgentRoutesResult {
            added: u32::try_from(added).unwrap_or(u32::MAX),
            removed: u32::try_from(removed).unwrap_or(u32::MAX),
        }))
    }
}
