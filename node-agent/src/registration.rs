//! Registration with the controller and the heartbeat that reports what exists.

use std::sync::Arc;
use std::time::Duration;

use paddock_proto::v1;
use paddock_proto::v1::agent_registry_client::AgentRegistryClient;
use tonic::transport::{Channel, Endpoint};
use tracing::{info, warn};

use crate::convert;
use crate::metering::Meter;
use crate::metrics::Metrics;
use crate::runtime::Runtime;

/// What the agent tells the controller about itself.
pub struct NodeIdentity {
    pub node_name: String,
    pub address: String,
    /// The controllers to talk to, in order (several share one etcd store).
    pub controllers: Vec<String>,
    /// Certificate and key from enrolment: the controller knows us by them.
    pub tls: crate::pki::NodeIdentity,
}

fn timed<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(Duration::from_secs(10));
    request
}

/// One controller the agent may talk to.
struct Controller {
    url: String,
    client: AgentRegistryClient<Channel>,
}

/// Registers (retrying with backoff until a controller answers), then sends heartbeats
/// forever; re-registers if the controller forgot the node. With several controllers it
/// talks to one at a time and moves to the next of the list (registering there) when a
/// call fails: any of them serves agents, the node's liveness is in their shared store.
/// Counts every attempt and the controller's answer in `metrics`.
pub async fn run(
    identity: NodeIdentity,
    runtime: Arc<Runtime>,
    capacity: v1::NodeCapacityReport,
    meter: Arc<Meter>,
    metrics: Arc<Metrics>,
) {
    let mut controllers = Vec::new();
    for url in &identity.controllers {
        let endpoint = Endpoint::from_shared(url.clone())
            .and_then(|endpoint| endpoint.tls_config(identity.tls.client_tls()));
        match endpoint {
            Ok(endpoint) => controllers.push(Controller {
                url: url.clone(),
                client: AgentRegistryClient::new(
                    endpoint
                        .connect_timeout(Duration::from_secs(3))
                        .connect_lazy(),
                ),
            }),
            Err(error) => {
                warn!(controller = %url, %error, "bad controller address or TLS setup")
            }
        }
    }
    if controllers.is_empty() {
        return;
    }
    let mut current = 0;
    loop {
        let interval = register(
            &mut controllers,
            &mut current,
            &identity,
            &capacity,
            &metrics,
        )
        .await;
        let lost = heartbeat_until_lost(
            &mut controllers[current],
            &identity,
            &runtime,
            &meter,
            &metrics,
            &capacity,
            interval,
        )
        .await;
        if lost == Lost::Unreachable {
            current = (current + 1) % controllers.len();
        }
    }
}

async fn register(
    controllers: &mut [Controller],
    current: &mut usize,
    identity: &NodeIdentity,
    capacity: &v1::NodeCapacityReport,
    metrics: &Metrics,
) -> Duration {
    let mut backoff = Duration::from_millis(200);
    loop {
        let message = v1::RegisterRequest {
            node_name: identity.node_name.clone(),
            address: identity.address.clone(),
            capacity: Some(*capacity),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let controller = &mut controllers[*current];
        let result = controller.client.register(timed(message)).await;
        metrics.observe_registration(
            result
                .as_ref()
                .map_or_else(|s| s.code(), |_| tonic::Code::Ok),
        );
        match result {
            Ok(response) => {
                let secs = response.into_inner().heartbeat_interval_secs.max(1);
                info!(node = %identity.node_name, controller = %controller.url, "registered");
                return Duration::from_secs(u64::from(secs));
            }
            Err(status) => {
                warn!(controller = %controller.url, code = ?status.code(), message = status.message(), retry_in = ?backoff, "registration failed");
                // The next controller of the list, after a full round a longer wait.
                *current = (*current + 1) % controllers.len();
                if *current == 0 {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

/// Why heartbeats to one controller ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lost {
    /// It answered that it does not know the node: register again.
    Forgotten,
    /// It did not answer: move to the next controller.
    Unreachable,
}

/// Whether a failed call means the controller itself is gone (not an answer it gave).
fn unreachable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
    )
}

async fn heartbeat_until_lost(
    controller: &mut Controller,
    identity: &NodeIdentity,
    runtime: &Arc<Runtime>,
    meter: &Arc<Meter>,
    metrics: &Metrics,
    capacity: &v1::NodeCapacityReport,
    interval: Duration,
) -> Lost {
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        let listed = {
            let runtime = runtime.clone();
            let meter = meter.clone();
            tokio::task::spawn_blocking(move || {
                let list = runtime.list()?;
                let usage = meter.due_samples(&list).unwrap_or_else(|error| {
                    warn!(%error, "usage sampling");
                    Vec::new()
                });
                Ok::<_, crate::runtime::RuntimeError>((list, usage))
            })
            .await
        };
        let (vps, usage) = match listed {
            Ok(Ok((list, usage))) => (
                list.iter().map(convert::status).collect(),
                usage.iter().map(convert::usage_sample).collect(),
            ),
            Ok(Err(error)) => {
                warn!(%error, "listing VPSes for the heartbeat");
                (Vec::new(), Vec::new())
            }
            Err(error) => {
                warn!(%error, "heartbeat listing task failed");
                (Vec::new(), Vec::new())
            }
        };
        let message = v1::HeartbeatRequest {
            node_name: identity.node_name.clone(),
            vps,
            capacity: Some(*capacity),
            usage,
        };
        let result = controller.client.heartbeat(timed(message)).await;
        metrics.observe_heartbeat(
            result
                .as_ref()
                .map_or_else(|s| s.code(), |_| tonic::Code::Ok),
        );
        match result {
            Ok(_) => {}
            Err(status) if status.code() == tonic::Code::NotFound => {
                warn!("controller does not know this node; registering again");
                return Lost::Forgotten;
            }
            Err(status) if unreachable(&status) => {
                warn!(controller = %controller.url, code = ?status.code(), message = status.message(), "heartbeat failed; trying the next controller");
                return Lost::Unreachable;
            }
            Err(status) => {
                warn!(code = ?status.code(), message = status.message(), "heartbeat failed")
            }
        }
    }
}

/// CPUs, memory and state-dir disk space of this node.
pub fn capacity(state_dir: &std::path::Path) -> v1::NodeCapacityReport {
    let vcpus = std::thread::available_parallelism()
        .map(|n| n.get() as f64)
        .unwrap_or(1.0);
    let memory_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map(|kib| kib * 1024)
        .unwrap_or(0);
    let disk_bytes = nix::sys::statvfs::statvfs(state_dir)
        .map(|stat| stat.blocks() * stat.fragment_size())
        .unwrap_or(0);
    v1::NodeCapacityReport {
        vcpus,
        memory_bytes,
        disk_bytes,
    }
}

/// A node name from the host name, made to fit the name rule.
pub fn default_node_name() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_default();
    let mut name: String = host
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63)
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        name = format!("node-{name}");
        name.truncate(63);
    }
    name.trim_end_matches('-').to_owned()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use paddock_proto::v1::agent_registry_server::{AgentRegistry, AgentRegistryServer};
    use tonic::{Request, Response, Status};

    use super::*;

    /// A controller's agent registry that counts registrations.
    #[derive(Default)]
    struct Registry {
        registered: AtomicUsize,
    }

    #[tonic::async_trait]
    impl AgentRegistry for Registry {
        async fn enroll(
            &self,
            _request: Request<v1::EnrollRequest>,
        ) -> Result<Response<v1::EnrollResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn register(
            &self,
            _request: Request<v1::RegisterRequest>,
        ) -> Result<Response<v1::RegisterResponse>, Status> {
            self.registered.fetch_add(1, Ordering::SeqCst);
            Ok(Response::new(v1::RegisterResponse {
                heartbeat_interval_secs: 7,
            }))
        }

        async fn heartbeat(
            &self,
            _request: Request<v1::HeartbeatRequest>,
        ) -> Result<Response<v1::HeartbeatResponse>, Status> {
            Ok(Response::new(v1::HeartbeatResponse::default()))
        }
    }

    fn controller(url: String) -> Controller {
        let channel = Endpoint::from_shared(url.clone())
            .expect("url")
            .connect_timeout(Duration::from_secs(3))
            .connect_lazy();
        Controller {
            url,
            client: AgentRegistryClient::new(channel),
        }
    }

    #[tokio::test]
    async fn registration_moves_past_a_dead_controller_to_the_next() {
        let registry = Arc::new(Registry::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let live = format!("http://{}", listener.local_addr().expect("addr"));
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AgentRegistryServer::from_arc(registry.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let dead = {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .expect("bind")
                .port();
            format!("http://127.0.0.1:{port}")
        };
        let mut controllers = vec![controller(dead), controller(live)];
        let identity = NodeIdentity {
            node_name: "node-a".into(),
            address: "https://127.0.0.1:1".into(),
            controllers: controllers.iter().map(|c| c.url.clone()).collect(),
            tls: crate::pki::NodeIdentity {
                ca_pem: String::new(),
                cert_pem: String::new(),
                key_pem: String::new(),
            },
        };
        let mut current = 0;
        let interval = tokio::time::timeout(
            Duration::from_secs(60),
            register(
                &mut controllers,
                &mut current,
                &identity,
                &v1::NodeCapacityReport::default(),
                &Metrics::default(),
            ),
        )
        .await
        .expect("registered in time");
        assert_eq!(current, 1, "the second controller took the registration");
        assert_eq!(interval, Duration::from_secs(7));
        assert_eq!(registry.registered.load(Ordering::SeqCst), 1);
        server.abort();
    }

    #[test]
    fn only_a_missing_answer_moves_to_the_next_controller() {
        assert!(unreachable(&Status::unavailable("connection refused")));
        assert!(unreachable(&Status::deadline_exceeded("slow")));
        assert!(!unreachable(&Status::permission_denied("revoked")));
        assert!(!unreachable(&Status::invalid_argument("bad")));
    }
}
