//! An in-process simulator of many node agents for the control-plane scenario. Each simulated
//! node enrols with the real join token (its own key and CSR, signed by the controller's CA),
//! serves the real `NodeAgent` gRPC service over mutual TLS on its own loopback address
//! (127.64.x.y, so the controller dials every node separately; one listening socket on the
//! wildcard address hands each connection to the node whose address it was made to, so a node
//! costs the bench two descriptors, not three), registers
//! and sends heartbeats listing its VPSes like an agent. It creates no containers: `ApplyVps`
//! records the spec's power state and answers with it, `ListVps` lists what was applied,
//! `DeleteVps` forgets it.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::{Stream, StreamExt};
use paddock_proto::v1;
use paddock_proto::v1::agent_registry_client::AgentRegistryClient;
use paddock_proto::v1::node_agent_server::{NodeAgent, NodeAgentServer};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Semaphore};
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig,
};
use tonic::{Request, Response, Status, Streaming};

/// Calls the simulated agents served, over all nodes.
#[derive(Debug, Default)]
pub struct Counters {
    pub applies: AtomicU64,
    pub lists: AtomicU64,
    pub deletes: AtomicU64,
    pub heartbeats: AtomicU64,
    /// Usage samples in heartbeats the controller took.
    pub samples: AtomicU64,
}

/// What the simulated nodes need to know about the controller.
pub struct ControllerAccess {
    /// `https://127.0.0.1:PORT`
    pub url: String,
    pub ca_pem: String,
    pub join_token: String,
}

/// Running simulated nodes; dropping it stops their servers and heartbeats.
pub struct Simulator {
    pub counters: Arc<Counters>,
    /// While set, every heartbeat carries a usage sample for each VPS of its node, as an
    /// agent's does every `usage_interval_secs` (default 10 s, the bench's heartbeat).
    pub metering: Arc<AtomicBool>,
    pub nodes: usize,
    shutdown: watch::Sender<bool>,
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// The loopback address of simulated node `index` (127.64.0.1, 127.64.0.2, ...).
fn node_ip(index: usize) -> Ipv4Addr {
    let host = index % 250 + 1;
    let subnet = index / 250;
    Ipv4Addr::new(
        127,
        64 + (subnet / 250) as u8,
        (subnet % 250) as u8,
        host as u8,
    )
}

/// The name of simulated node `index`.
pub fn node_name(index: usize) -> String {
    format!("sim-{index:05}")
}

impl Simulator {
    /// Enrols, serves and registers `nodes` simulated agents (at most `parallel` enrolling at
    /// once) and keeps each sending a heartbeat every `heartbeat`.
    pub async fn start(
        controller: &ControllerAccess,
        nodes: usize,
        parallel: usize,
        heartbeat: Duration,
    ) -> Result<Self> {
        let counters = Arc::new(Counters::default());
        let metering = Arc::new(AtomicBool::new(false));
        let (shutdown, stopped) = watch::channel(false);
        // One listening socket for every node: the port on the wildcard address, each
        // accepted connection handed to the node owning the local address it was made to.
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))
            .await
            .context("binding the simulated nodes' listening socket")?;
        let port = listener.local_addr()?.port();
        let routes: Routes = Arc::new(Mutex::new(HashMap::new()));
        tokio::spawn(route_connections(listener, routes.clone(), stopped.clone()));
        let gate = Arc::new(Semaphore::new(parallel.max(1)));
        let mut started = Vec::with_capacity(nodes);
        for index in 0..nodes {
            let gate = gate.clone();
            let access = (
                controller.url.clone(),
                controller.ca_pem.clone(),
                controller.join_token.clone(),
            );
            let counters = counters.clone();
            let metering = metering.clone();
            let stopped = stopped.clone();
            let routes = routes.clone();
            started.push(tokio::spawn(async move {
                let _permit = gate.acquire_owned().await?;
                let address = SocketAddr::from((node_ip(index), port));
                let node = SimNode {
                    index,
                    address,
                    routes,
                };
                let beats = Beats {
                    interval: heartbeat,
                    metering,
                };
                start_node(node, access, counters, stopped, beats, nodes).await
            }));
        }
        for (index, task) in started.into_iter().enumerate() {
            task.await
                .with_context(|| format!("simulated node {index} panicked"))?
                .with_context(|| format!("simulated node {}", node_name(index)))?;
        }
        Ok(Self {
            counters,
            metering,
            nodes,
            shutdown,
        })
    }
}

/// Where the listening socket hands each node's connections, by the node's address.
type Routes = Arc<Mutex<HashMap<std::net::IpAddr, mpsc::UnboundedSender<TcpStream>>>>;

/// Accepts every connection made to a simulated node and hands it to that node's server;
/// connections from outside loopback or to no node's address are closed.
async fn route_connections(
    listener: tokio::net::TcpListener,
    routes: Routes,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.wait_for(|stop| *stop) => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(_) => {
                // Out of descriptors or a connection reset before accept: try again shortly.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        if !peer.ip().is_loopback() {
            continue;
        }
        let route = routes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&local.ip())
            .cloned();
        if let Some(route) = route {
            let _ = route.send(stream);
        }
    }
}

/// How a simulated node heartbeats.
struct Beats {
    interval: Duration,
    metering: Arc<AtomicBool>,
}

/// One simulated node's place: its index, the address it serves on, and the router.
struct SimNode {
    index: usize,
    address: SocketAddr,
    routes: Routes,
}

async fn start_node(
    SimNode {
        index,
        address,
        routes,
    }: SimNode,
    (url, ca_pem, join_token): (String, String, String),
    counters: Arc<Counters>,
    stopped: watch::Receiver<bool>,
    beats: Beats,
    nodes: usize,
) -> Result<()> {
    let name = node_name(index);
    let ip = address.ip().to_string();
    // Enrolment as the agent does it: a fresh key, a CSR naming the address the controller
    // dials, the join token as bearer, over TLS that trusts the controller's CA.
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::new(vec![ip.clone()])?
        .serialize_request(&key)?
        .pem()?;
    let server_auth = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem));
    let enrol_channel = Endpoint::from_shared(url.clone())?
        .tls_config(server_auth)?
        .connect()
        .await
        .context("connecting to the controller to enrol")?;
    let mut request = Request::new(v1::EnrollRequest {
        node_name: name.clone(),
        csr_pem: csr,
        subject_alt_names: vec![ip],
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {join_token}").parse()?);
    let enrolled = AgentRegistryClient::new(enrol_channel)
        .enroll(request)
        .await
        .context("enrolling")?
        .into_inner();
    let identity = Identity::from_pem(&enrolled.certificate_pem, key.serialize_pem());

    // The NodeAgent service: only clients with a certificate of the same CA get in.
    let (route, connections) = mpsc::unbounded_channel();
    routes
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(address.ip(), route);
    let tls = ServerTlsConfig::new()
        .identity(identity.clone())
        .client_ca_root(Certificate::from_pem(&enrolled.ca_pem));
    let agent = SimAgent {
        vpses: Mutex::new(HashMap::new()),
        counters: counters.clone(),
    };
    let agent = Arc::new(agent);
    let router = Server::builder()
        .tls_config(tls)?
        .add_service(NodeAgentServer::from_arc(agent.clone()));
    let mut until_stopped = stopped.clone();
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::UnboundedReceiverStream::new(connections)
            .map(Ok::<_, std::io::Error>);
        let _ = router
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = until_stopped.wait_for(|stop| *stop).await;
            })
            .await;
    });

    // Register and heartbeat over mutual TLS with the node's certificate.
    let mutual = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&enrolled.ca_pem))
        .identity(identity);
    let channel = Endpoint::from_shared(url)?
        .tls_config(mutual)?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .context("connecting to the controller with the node certificate")?;
    let mut registry = AgentRegistryClient::new(channel);
    let register = v1::RegisterRequest {
        node_name: name.clone(),
        address: format!("https://{address}"),
        capacity: Some(v1::NodeCapacityReport {
            vcpus: 64.0,
            memory_bytes: 512 << 30,
            disk_bytes: 8 << 40,
        }),
        agent_version: "simulated".to_owned(),
    };
    let answer = registry.register(register).await.context("registering")?;
    let interval = beats.interval.max(Duration::from_secs(u64::from(
        answer.into_inner().heartbeat_interval_secs.max(1),
    )));
    let mut stopped = stopped;
    tokio::spawn(async move {
        // Spread the nodes' heartbeats over the interval, as independent agents would be.
        let offset = interval.mul_f64(index as f64 / nodes.max(1) as f64);
        tokio::select! {
            _ = tokio::time::sleep(offset) => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        let mut ticker = tokio::time::interval(interval);
        for sequence in 1.. {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stopped.wait_for(|stop| *stop) => return,
            }
            let vps = agent.statuses();
            let usage = if beats.metering.load(Ordering::Relaxed) {
                let interval_ms = u32::try_from(interval.as_millis()).unwrap_or(u32::MAX);
                vps.iter()
                    .map(|status| usage_sample(&status.vps_id, sequence, interval_ms))
                    .collect()
            } else {
                Vec::new()
            };
            let samples = usage.len() as u64;
            let request = v1::HeartbeatRequest {
                node_name: name.clone(),
                vps,
                capacity: None,
                usage,
            };
            if registry.heartbeat(request).await.is_ok() {
                counters.heartbeats.fetch_add(1, Ordering::Relaxed);
                counters.samples.fetch_add(samples, Ordering::Relaxed);
            }
        }
    });
    Ok(())
}

/// A usage sample of a busy VPS: every counter grows with each beat (`sequence`), in one
/// incarnation for the whole run.
fn usage_sample(vps_id: &str, sequence: u64, interval_ms: u32) -> v1::UsageSample {
    let sampled_at_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        });
    v1::UsageSample {
        vps_id: vps_id.to_owned(),
        incarnation: "simulated".to_owned(),
        sequence,
        sampled_at_unix_ms,
        interval_ms,
        cpu_usage_ns: sequence * 2_000_000_000,
        memory_bytes: 48 << 20,
        memory_peak_bytes: 64 << 20,
        io_read_bytes: sequence << 20,
        io_write_bytes: sequence << 21,
        io_read_ops: sequence * 256,
        io_write_ops: sequence * 512,
        net_rx_bytes: sequence * 1_000_000,
        net_tx_bytes: sequence * 2_000_000,
        disk_used_bytes: 300 << 20,
    }
}

/// One simulated agent: what it was told to run.
struct SimAgent {
    vpses: Mutex<HashMap<String, v1::VpsStatus>>,
    counters: Arc<Counters>,
}

impl SimAgent {
    fn statuses(&self) -> Vec<v1::VpsStatus> {
        match self.vpses.lock() {
            Ok(vpses) => vpses.values().cloned().collect(),
            Err(poisoned) => poisoned.into_inner().values().cloned().collect(),
        }
    }
}

type OutputStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl NodeAgent for SimAgent {
    async fn apply_vps(
        &self,
        request: Request<v1::VpsSpec>,
    ) -> Result<Response<v1::VpsStatus>, Status> {
        self.counters.applies.fetch_add(1, Ordering::Relaxed);
        let spec = request.into_inner();
        let running = spec.desired_power() == v1::PowerState::Running;
        let mut status = v1::VpsStatus {
            vps_id: spec.vps_id.clone(),
            state: 0,
            init_pid: if running { 1000 } else { 0 },
            message: String::new(),
        };
        status.set_state(if running {
            v1::AgentVpsState::Running
        } else {
            v1::AgentVpsState::Stopped
        });
        let mut vpses = self
            .vpses
            .lock()
            .map_err(|_| Status::internal("simulated agent state poisoned"))?;
        vpses.insert(spec.vps_id, status.clone());
        Ok(Response::new(status))
    }

    async fn delete_vps(
        &self,
        request: Request<v1::AgentVpsRef>,
    ) -> Result<Response<v1::Empty>, Status> {
        self.counters.deletes.fetch_add(1, Ordering::Relaxed);
        let mut vpses = self
            .vpses
            .lock()
            .map_err(|_| Status::internal("simulated agent state poisoned"))?;
        vpses.remove(&request.into_inner().vps_id);
        Ok(Response::new(v1::Empty {}))
    }

    async fn list_vps(
        &self,
        _request: Request<v1::Empty>,
    ) -> Result<Response<v1::AgentListVpsResponse>, Status> {
        self.counters.lists.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(v1::AgentListVpsResponse {
            vps: self.statuses(),
        }))
    }

    async fn list_templates(
        &self,
        _request: Request<v1::Empty>,
    ) -> Result<Response<v1::ListTemplatesResponse>, Status> {
        Ok(Response::new(v1::ListTemplatesResponse {
            templates: vec![v1::Template {
                name: "busybox".to_owned(),
                description: "simulated".to_owned(),
            }],
        }))
    }

    type ExecStream = OutputStream<v1::ExecOutput>;

    async fn exec(
        &self,
        _request: Request<Streaming<v1::AgentExecInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        Err(Status::unimplemented("a simulated node runs no processes"))
    }

    async fn create_snapshot(
        &self,
        _request: Request<v1::AgentSnapshotRequest>,
    ) -> Result<Response<v1::AgentSnapshot>, Status> {
        Err(Status::unimplemented("a simulated node has no disks"))
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
        Err(Status::unimplemented("a simulated node has no disks"))
    }

    async fn delete_snapshot(
        &self,
        _request: Request<v1::AgentSnapshotRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        Err(Status::unimplemented("a simulated node has no disks"))
    }

    type ExportVpsStream = OutputStream<v1::AgentArchiveChunk>;

    async fn export_vps(
        &self,
        _request: Request<v1::AgentExportRequest>,
    ) -> Result<Response<Self::ExportVpsStream>, Status> {
        Err(Status::unimplemented("a simulated node has no disks"))
    }

    async fn import_vps(
        &self,
        _request: Request<Streaming<v1::AgentImportChunk>>,
    ) -> Result<Response<v1::VpsStatus>, Status> {
        Err(Status::unimplemented("a simulated node has no disks"))
    }

    type ConsoleStream = OutputStream<v1::ConsoleOutput>;

    async fn console(
        &self,
        _request: Request<Streaming<v1::AgentConsoleInput>>,
    ) -> Result<Response<Self::ConsoleStream>, Status> {
        Err(Status::unimplemented("a simulated node has no console"))
    }

    async fn backup_vps(
        &self,
        _request: Request<v1::AgentBackupRequest>,
    ) -> Result<Response<v1::AgentBackupResponse>, Status> {
        Err(Status::unimplemented(
            "a simulated node has no disks to back up",
        ))
    }

    async fn restore_backup(
        &self,
        _request: Request<v1::AgentRestoreRequest>,
    ) -> Result<Response<v1::VpsStatus>, Status> {
        Err(Status::unimplemented(
            "a simulated node has no disks to restore",
        ))
    }

    async fn delete_backup(
        &self,
        _request: Request<v1::AgentBackupRef>,
    ) -> Result<Response<v1::Empty>, Status> {
        Err(Status::unimplemented(
            "a simulated node has no backup store",
        ))
    }

    type CheckpointVpsStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<v1::AgentCheckpointChunk, Status>> + Send>,
    >;

    async fn checkpoint_vps(
        &self,
        _request: Request<v1::AgentCheckpointRequest>,
    ) -> Result<Response<Self::CheckpointVpsStream>, Status> {
        Err(Status::unimplemented(
            "a simulated node has no processes to checkpoint",
        ))
    }

    async fn restore_checkpoint(
        &self,
        _request: Request<tonic::Streaming<v1::AgentCheckpointUpload>>,
    ) -> Result<Response<v1::VpsStatus>, Status> {
        Err(Status::unimplemented(
            "a simulated node has no processes to restore",
        ))
    }

    async fn sync_routes(
        &self,
        request: Request<v1::AgentRoutes>,
    ) -> Result<Response<v1::AgentRoutesResult>, Status> {
        // A simulated node has no kernel routes: every wanted route counts as in place.
        let routes = request.into_inner().routes;
        Ok(Response::new(v1::AgentRoutesResult {
            added: u32::try_from(routes.len()).unwrap_or(u32::MAX),
            removed: 0,
        }))
    }
}

/// Raises this process's open-file limit to its hard limit (or higher, if allowed: root may
/// raise the hard limit up to `fs.nr_open`). Children inherit it. Returns the soft limit now.
pub fn raise_fd_limit(wanted: u64) -> Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the rlimit struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        bail!("getrlimit: {}", std::io::Error::last_os_error());
    }
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .unwrap_or(limit.rlim_max);
    let higher = libc::rlimit {
        rlim_cur: wanted.min(nr_open).max(limit.rlim_cur),
        rlim_max: wanted.min(nr_open).max(limit.rlim_max),
    };
    // SAFETY: setrlimit reads the rlimit struct we own; failure leaves the limit unchanged.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &higher) } == 0 {
        return Ok(higher.rlim_cur);
    }
    let to_hard = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &to_hard) } == 0 {
        return Ok(to_hard.rlim_cur);
    }
    Ok(limit.rlim_cur)
}

/// Whether this process may raise its hard limits (CAP_SYS_RESOURCE in its effective set).
pub fn has_cap_sys_resource() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("CapEff:"))
                .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        })
        .is_some_and(|mask| mask & (1 << CAP_SYS_RESOURCE) != 0)
}

/// A gRPC channel to the controller's API, trusting its CA.
pub async fn controller_channel(access: &ControllerAccess) -> Result<Channel> {
    Endpoint::from_shared(access.url.clone())?
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&access.ca_pem)))?
        .connect()
        .await
        .context("connecting to the controller")
}
