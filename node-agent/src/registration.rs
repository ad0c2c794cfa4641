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
    pub controller: String,
    /// Certificate and key from enrolment: the controller knows us by them.
    pub tls: crate::pki::NodeIdentity,
}

fn timed<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(Duration::from_secs(10));
    request
}

/// Registers (retrying with backoff until the controller answers), then
/// sends heartbeats forever; re-registers if the controller forgot the node.
/// Counts every attempt and the controller's answer in `metrics`.
pub async fn run(
    identity: NodeIdentity,
    runtime: Arc<Runtime>,
    capacity: v1::NodeCapacityReport,
    meter: Arc<Meter>,
    metrics: Arc<Metrics>,
) {
    let endpoint = Endpoint::from_shared(identity.controller.clone())
        .and_then(|endpoint| endpoint.tls_config(identity.tls.client_tls()));
    let channel = match endpoint {
        Ok(endpoint) => endpoint
            .connect_timeout(Duration::from_secs(3))
            .connect_lazy(),
        Err(error) => {
            warn!(controller = %identity.controller, %error, "bad controller address or TLS setup");
            return;
        }
    };
    let mut client = AgentRegistryClient::new(channel);
    loop {
        let interval = register(&mut client, &identity, &capacity, &metrics).await;
        heartbeat_until_forgotten(
            &mut client,
            &identity,
            &runtime,
            &meter,
            &metrics,
            &capacity,
            interval,
        )
        .await;
    }
}

async fn register(
    client: &mut AgentRegistryClient<Channel>,
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
        let result = client.register(timed(message)).await;
        metrics.observe_registration(
            result
                .as_ref()
                .map_or_else(|s| s.code(), |_| tonic::Code::Ok),
        );
        match result {
            Ok(response) => {
                let secs = response.into_inner().heartbeat_interval_secs.max(1);
                info!(node = %identity.node_name, controller = %identity.controller, "registered");
                return Duration::from_secs(u64::from(secs));
            }
            Err(status) => {
                warn!(controller = %identity.controller, code = ?status.code(), message = status.message(), retry_in = ?backoff, "registration failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

async fn heartbeat_until_forgotten(
    client: &mut AgentRegistryClient<Channel>,
    identity: &NodeIdentity,
    runtime: &Arc<Runtime>,
    meter: &Arc<Meter>,
    metrics: &Metrics,
    capacity: &v1::NodeCapacityReport,
    interval: Duration,
) {
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
        let result = client.heartbeat(timed(message)).await;
        metrics.observe_heartbeat(
            result
                .as_ref()
                .map_or_else(|s| s.code(), |_| tonic::Code::Ok),
        );
        match result {
            Ok(_) => {}
            Err(status) if status.code() == tonic::Code::NotFound => {
                warn!("controller does not know this node; registering again");
                return;
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
