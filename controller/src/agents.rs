//! gRPC clients to the node agents, one lazily connected channel per node.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use paddock_proto::v1::node_agent_client::NodeAgentClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};

use crate::error::ControllerError;

/// Adds the node join token as bearer credentials to every call to an agent.
#[derive(Clone)]
pub struct NodeAuth(MetadataValue<Ascii>);

impl Interceptor for NodeAuth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

pub type AgentClient = NodeAgentClient<InterceptedService<Channel, NodeAuth>>;

/// Cached channels to agents, keyed by node name and address.
pub struct AgentPool {
    auth: NodeAuth,
    channels: Mutex<HashMap<String, (String, Channel)>>,
}

impl AgentPool {
    pub fn new(join_token: &str) -> Result<Self, ControllerError> {
        let value = format!("Bearer {join_token}").parse().map_err(|_| {
            ControllerError::Precondition("join token contains non-ASCII characters".to_owned())
        })?;
        Ok(Self {
            auth: NodeAuth(value),
            channels: Mutex::new(HashMap::new()),
        })
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
                    .connect_timeout(Duration::from_secs(3))
                    .tcp_keepalive(Some(Duration::from_secs(30)))
                    .connect_lazy();
                channels.insert(node.to_owned(), (address.to_owned(), channel.clone()));
                channel
            }
        };
        Ok(NodeAgentClient::with_interceptor(
            channel,
            self.auth.clone(),
        ))
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
