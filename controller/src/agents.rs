//! gRPC clients to the node agents: one lazily connected channel per node, at most
//! [`AgentPool::max_open`] of them kept at once (channels picked at random make room), so a
//! controller of many nodes does not hold an idle connection to every one of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use paddock_proto::v1::node_agent_client::NodeAgentClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::error::ControllerError;
use crate::pki::Pki;

pub type AgentClient = NodeAgentClient<Channel>;

/// Descriptors the derived limit leaves for everything but agent connections: the store's
/// files, the listener, API clients.
const FD_RESERVE: u64 = 512;

/// A channel unused this long is closed (the node's next call dials again): an open channel
/// pings its agent every 5 s even when idle, which for a quiet fleet of 10,000 nodes was
/// thousands of pings a second for nothing. Longer than the reconcile tick, so a node the
/// ticks still visit keeps its connection.
pub const IDLE_CLOSE: Duration = Duration::from_secs(60);

/// Cached channels to agents, keyed by node name and address. Every channel
/// is mutual TLS: the agent's certificate must be signed by our CA, and we
/// present the controller's certificate.
pub struct AgentPool {
    tls: ClientTlsConfig,
    max_open: usize,
    channels: Mutex<Channels>,
}

#[derive(Default)]
struct Channels {
    by_node: HashMap<String, Cached>,
}

struct Cached {
    address: String,
    channel: Channel,
    last_used: Instant,
}

impl Channels {
    /// Drops channels picked at random until `room` more fit under `max_open`. A dropped
    /// channel's connection closes once calls in flight on it (their clones) end; the node's
    /// next call dials again. At random, not the least recently used: the controller visits
    /// nodes in cycles (spread placement walks the fleet, every tick passes over it), and
    /// over a cycle longer than `max_open` the least recently used channel is always the next
    /// one needed, so every call would dial (a TLS handshake each, a third of the controller's
    /// CPU with 10,000 nodes over 9,488 channels); dropped at random, a channel is still open
    /// at its next use with the chance `max_open / nodes`.
    fn make_room(&mut self, max_open: usize, room: usize) {
        let max_open = max_open.max(room);
        if self.by_node.len() + room <= max_open {
            return;
        }
        // Evict a slice at once, so a full pool does not walk every channel per new dial.
        let evict = (self.by_node.len() + room - max_open).max(max_open / 64);
        let evict = evict.min(self.by_node.len());
        let doomed: std::collections::HashSet<String> = rand::seq::IteratorRandom::choose_multiple(
            self.by_node.keys(),
            &mut rand::thread_rng(),
            evict,
        )
        .into_iter()
        .cloned()
        .collect();
        self.by_node.retain(|node, _| !doomed.contains(node));
    }
}

impl AgentPool {
    /// A pool keeping at most `max_open` channels; 0 derives it from the process's open-file
    /// limit ([`default_max_open`]).
    pub fn new(pki: &Pki, max_open: usize) -> Self {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&pki.ca_cert_pem))
            .identity(Identity::from_pem(&pki.cert_pem, &pki.key_pem));
        Self {
            tls,
            max_open: if max_open == 0 {
                default_max_open()
            } else {
                max_open
            },
            channels: Mutex::new(Channels::default()),
        }
    }

    /// How many agent channels are kept at most.
    pub fn max_open(&self) -> usize {
        self.max_open
    }

    /// How many agent channels are cached now.
    pub fn open(&self) -> usize {
        self.channels.lock().map_or(0, |c| c.by_node.len())
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
        if let Some(cached) = channels.by_node.get_mut(node) {
            if cached.address == address {
                cached.last_used = Instant::now();
                return Ok(NodeAgentClient::new(cached.channel.clone()));
            }
        }
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
        if channels.by_node.remove(node).is_none() {
            channels.make_room(self.max_open, 1);
        }
        channels.by_node.insert(
            node.to_owned(),
            Cached {
                address: address.to_owned(),
                channel: channel.clone(),
                last_used: Instant::now(),
            },
        );
        Ok(NodeAgentClient::new(channel))
    }

    /// Closes the channels unused for `idle` (calls in flight on them finish first); returns
    /// how many.
    pub fn close_idle(&self, idle: Duration) -> usize {
        let Ok(mut channels) = self.channels.lock() else {
            return 0;
        };
        let before = channels.by_node.len();
        channels
            .by_node
            .retain(|_, cached| cached.last_used.elapsed() < idle);
        before - channels.by_node.len()
    }

    /// Closes idle channels ([`IDLE_CLOSE`]) every quarter of it, until aborted.
    pub fn spawn_idle_closer(controller: Arc<crate::Controller>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(IDLE_CLOSE / 4);
            loop {
                tick.tick().await;
                let closed = controller.agents.close_idle(IDLE_CLOSE);
                if closed > 0 {
                    tracing::debug!(closed, "closed idle agent channels");
                }
            }
        })
    }

    /// Drops the cached channel of a removed node.
    pub fn forget(&self, node: &str) {
        if let Ok(mut channels) = self.channels.lock() {
            channels.by_node.remove(node);
        }
    }
}

/// Half of the process's open-file limit less a reserve: the other half is for the agents'
/// own connections to the controller (one per node, for heartbeats).
pub fn default_max_open() -> usize {
    let soft = open_file_limit().unwrap_or(1024);
    usize::try_from((soft / 2).saturating_sub(FD_RESERVE).max(64)).unwrap_or(usize::MAX)
}

/// The soft `RLIMIT_NOFILE` of this process.
fn open_file_limit() -> Option<u64> {
    getrlimit(Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// Raises this process's soft open-file limit to its hard one and returns the limit now in
/// force: a controller started by hand inherits a shell's soft limit (often 1024), which would
/// keep [`default_max_open`] at a few dozen agent connections for a fleet of thousands. The
/// systemd unit sets both limits itself.
pub fn raise_open_file_limit() -> nix::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pki() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        Pki::create(dir.path(), &[]).expect("pki")
    }

    #[tokio::test]
    async fn keeps_at_most_max_open_channels() {
        let pool = AgentPool::new(&pki(), 4);
        for node in ["a", "b", "c", "d", "e", "f"] {
            pool.client(node, &format!("https://{node}.invalid:7444"))
                .expect("client");
            assert!(pool.open() <= 4, "{} open", pool.open());
        }
        let channels = pool.channels.lock().expect("lock");
        assert!(channels.by_node.contains_key("f"), "the newest is kept");
    }

    /// Nodes visited in cycles longer than the pool (spread placement, reconcile ticks) keep
    /// most of their channels: the least recently used would be the next one needed each
    /// time, and every call would dial.
    #[tokio::test]
    async fn a_cycle_over_more_nodes_than_channels_reuses_most_of_them() {
        let (max_open, nodes) = (640, 700);
        let pool = AgentPool::new(&pki(), max_open);
        let address = |node: usize| format!("https://n{node}.invalid:7444");
        for node in 0..nodes {
            pool.client(&format!("n{node}"), &address(node))
                .expect("client");
        }
        let mut reused = 0;
        for _ in 0..5 {
            for node in 0..nodes {
                let name = format!("n{node}");
                let open = pool
                    .channels
                    .lock()
                    .expect("lock")
                    .by_node
                    .contains_key(&name);
                reused += usize::from(open);
                pool.client(&name, &address(node)).expect("client");
            }
        }
        let rate = reused as f64 / (5 * nodes) as f64;
        // max_open / nodes = 0.91, less the slices evicted ahead of need.
        assert!(
            rate > 0.75,
            "{reused} of {} calls found their channel",
            5 * nodes
        );
    }

    #[tokio::test]
    async fn a_changed_address_replaces_the_nodes_channel_without_evicting_another() {
        let pool = AgentPool::new(&pki(), 2);
        pool.client("a", "https://a.invalid:7444").expect("client");
        pool.client("b", "https://b.invalid:7444").expect("client");
        pool.client("a", "https://a2.invalid:7444").expect("client");
        let channels = pool.channels.lock().expect("lock");
        assert_eq!(channels.by_node.len(), 2);
        assert_eq!(channels.by_node["a"].address, "https://a2.invalid:7444");
        assert!(channels.by_node.contains_key("b"));
    }

    #[tokio::test]
    async fn channels_unused_for_the_idle_time_close() {
        let pool = AgentPool::new(&pki(), 8);
        pool.client("a", "https://a.invalid:7444").expect("client");
        pool.client("b", "https://b.invalid:7444").expect("client");
        assert_eq!(
            pool.close_idle(Duration::from_secs(60)),
            0,
            "both just used"
        );
        std::thread::sleep(Duration::from_millis(30));
        pool.client("b", "https://b.invalid:7444").expect("client");
        assert_eq!(pool.close_idle(Duration::from_millis(20)), 1);
        let channels = pool.channels.lock().expect("lock");
        assert!(channels.by_node.contains_key("b") && !channels.by_node.contains_key("a"));
    }

    #[test]
    fn the_soft_open_file_limit_is_raised_to_the_hard_one() {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        // A lower soft limit, as a shell would hand the controller (the hard one stays).
        setrlimit(Resource::RLIMIT_NOFILE, (hard / 2).max(64), hard).expect("lower soft limit");
        assert_eq!(raise_open_file_limit().expect("raise"), hard);
        assert_eq!(open_file_limit(), Some(hard));
    }

    #[test]
    fn the_derived_limit_leaves_room_for_the_agents_connections() {
        let limit = open_file_limit().expect("the open-file limit");
        let max_open = default_max_open() as u64;
        assert!(max_open >= 64);
        assert!(max_open <= (limit / 2).max(64), "{max_open} of {limit}");
    }
}
