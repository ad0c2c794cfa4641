//! What node agents send the controller, as records (the RPC layer converts them).

use super::metering::Sample;
use super::records::{Capacity, ObservedState};

/// An agent asking for its node certificate.
#[derive(Debug, Clone)]
pub struct Enrollment {
    pub node_name: String,
    pub csr_pem: String,
    pub subject_alt_names: Vec<String>,
}

/// An enrolled agent announcing where it listens and what its node has.
#[derive(Debug, Clone)]
pub struct Registration {
    pub node_name: String,
    pub address: String,
    pub capacity: Option<Capacity>,
    pub agent_version: String,
}

/// One heartbeat: the node's capacity, what it reports of each VPS and its usage samples.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub node_name: String,
    pub capacity: Option<Capacity>,
    /// VPS id and what the agent observed of it.
    pub reports: Vec<(String, ObservedState)>,
    pub usage: Vec<Sample>,
}

/// A template a node has installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub name: String,
    pub description: String,
}
