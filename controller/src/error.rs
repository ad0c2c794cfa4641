//! The controller's domain error (mapped to gRPC status codes in `api/status.rs`).

use crate::auth::AuthError;
use crate::limits::LimitError;
use crate::model::scheduler::ScheduleError;
use crate::model::validate::ValidationError;
use crate::pki::PkiError;
use crate::store::StoreError;

/// Why a controller operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    #[error("tenant {tenant:?} is suspended: {what} is refused until it is unsuspended")]
    Suspended { tenant: String, what: &'static str },
    #[error(transparent)]
    Precondition(#[from] Precondition),
    #[error("node {node} is unreachable: {message}")]
    NodeUnavailable { node: String, message: String },
    /// Several controllers share an etcd store and this one does not lead: what only the
    /// leader may drive is refused here (retry on another controller).
    #[error("this controller does not lead: {what} is driven by the leading controller; send it to another controller")]
    NotLeader { what: &'static str },
    #[error("node {node} refused the request: {status}")]
    Agent { node: String, status: tonic::Status },
    #[error(transparent)]
    Migration(#[from] crate::model::migration::MigrationError),
}

/// A request that cannot be done in the current state (`FailedPrecondition`).
#[derive(Debug, thiserror::Error)]
pub enum Precondition {
    #[error(
        "node {node} is not drained: run `paddock admin node drain {node}` first, so nothing \
         new is placed on it"
    )]
    NodeNotDrained { node: String },
    #[error(
        "node {node} still hosts {} VPS(es) ({}); move them (paddock admin node drain {node} \
         --migrate) or delete them first",
        vpses.len(),
        vpses.join(", ")
    )]
    NodeHostsVps { node: String, vpses: Vec<String> },
    #[error(
        "node {node} still has pool(s) {}; delete them first (paddock admin pool delete)",
        pools.join(", ")
    )]
    NodeHasPools { node: String, pools: Vec<String> },
    #[error("signing the node certificate: {0}")]
    Signing(#[source] PkiError),
    #[error("plan {plan:?} of VPS {vps:?} no longer exists; resize it to another plan")]
    PlanGone { plan: String, vps: String },
    #[error(
        "VPS {vps:?} used all of its monthly transfer allowance for {month} and is suspended \
         until {until}: {what} is refused until then, unless the provider lifts the limit"
    )]
    TransferSuspended {
        vps: String,
        month: String,
        /// RFC 3339, whole seconds.
        until: String,
        what: String,
    },
    #[error("placement view unavailable")]
    PlacementView,
}

impl ControllerError {
    pub fn not_found(kind: &'static str, name: impl Into<String>) -> Self {
        Self::NotFound {
            kind,
            name: name.into(),
        }
    }
}
