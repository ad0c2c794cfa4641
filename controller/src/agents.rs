//! gRPC clients to the node agents, one lazily connected channel per node.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use paddock_proto::v1::node_agent_client::NodeAgentClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::error::ControllerError;
use crate::pki::Pki;

pub type AgentClient = NodeAgentClient<Channel>;

/// Cached channels to agents, keyed by node name and address. Every channel
/// is mutual TLS: the agent's certificate must be signed by our CA, and we
/// present the controller's certificate.
pub struct AgentPool {
    tls: ClientTlsConfig,
    channels: Mutex<HashMap<String, (String, Channel)>>,
}

impl AgentPool {
    pub fn new(pki: &Pki) -> Self {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&pki.ca_cert_pem))
            .identity(Identity::from_pem(&pki.cert_pem, &pki.key_pem));
        Self {
            tls,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// A client for `node` at `address`; reconnects lazily if the address changed.
    pub fn client(&self, node: &str, address: &str) -> Result<AgentClient, ControllerError> {
        let unavailable = |message: String| ControllerError::NodeUnavailable {
            node: node.to_owned(),
            message,
        };
        let mut channels = self
            .channels
            .lock()
            .map_err(|_| unavailable("agent channel cache poisoned".to_owned()))?;
        let channel = match channels.get(node) {
            Some((cached, channel)) if cached == address => channel.clone(),
            _ => {
                let channel = Endpoint::from_shared(address.to_owned())
                    .map_err(|e| unavailable(format!("bad agent address {address:?}: {e}")))?
                    .tls_config(self.tls.clone())
                    .map_err(|e| unavailable(format!("TLS setup for {address:?}: {e}")))?
                    .connect_timeout(Duration::from_secs(3))
                    .tcp_keepalive(Some(Duration::from_secs(30)))
                    // HTTP/2 pings, idle or not, find a connection a cut link killed within
                    // 10 s, so the next call dials afresh instead of waiting for TCP's
                    // retransmission backoff (tens of seconds after a 30 s outage).
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(5))
                    .keep_alive_while_idle(true)
                    .connect_lazy();
                channels.insert(node.to_owned(), (address.to_owned(), channel.clone()));
                channel
            }
        };
        Ok(NodeAgentClient::new(channel))
    }

    /// Drops the cached channel of a removed node.
    pub fn forget(&self, node: &str) {
        if let Ok(mut channels) = self.channels.lock() {
            channels.remove(node);
        }
    }
}

/// Maps a failed agent call to the controller's error for that node.
pub fn agent_error(node: &str, status: tonic::Status) -> ControllerError {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            ControllerError::NodeUnavailable {
                node: node.to_owned(),
                message: status.message().to_owned(),
            }
        }
        _ => ControllerError::Agent {
            node: node.to_owned(),
            status,
        },
    }
}
