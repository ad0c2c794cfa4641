//! The controller's domain error (mapped to gRPC status codes in `api/status.rs`).

use crate::auth::AuthError;
use crate::limits::LimitError;
use crate::model::scheduler::ScheduleError;
use crate::model::validate::ValidationError;
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
    #[error("{0}")]
    Precondition(String),
    #[error("node {node} is unreachable: {message}")]
    NodeUnavailable { node: String, message: String },
    #[error("node {node} refused the request: {status}")]
    Agent { node: String, status: tonic::Status },
}

impl ControllerError {
    pub fn not_found(kind: &'static str, name: impl Into<String>) -> Self {
        Self::NotFound {
            kind,
            name: name.into(),
        }
    }
}
