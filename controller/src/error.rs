//! The controller's domain error and its one mapping to gRPC status codes.

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

// The model's errors map here, so `model` does not depend on the RPC layer.
impl From<ScheduleError> for tonic::Status {
    fn from(error: ScheduleError) -> Self {
        tonic::Status::failed_precondition(error.to_string())
    }
}

impl From<ValidationError> for tonic::Status {
    fn from(error: ValidationError) -> Self {
        tonic::Status::invalid_argument(error.to_string())
    }
}

impl From<StoreError> for tonic::Status {
    fn from(error: StoreError) -> Self {
        use tonic::Status;
        match &error {
            StoreError::AlreadyExists { .. } => Status::already_exists(error.to_string()),
            StoreError::NotFound { .. } => Status::not_found(error.to_string()),
            StoreError::Quota(_) | StoreError::Ipam(_) | StoreError::Conflict(_) => {
                Status::failed_precondition(error.to_string())
            }
            StoreError::Open { .. }
            | StoreError::SchemaMismatch { .. }
            | StoreError::NotInitialized { .. }
            | StoreError::Sled(_)
            | StoreError::Corrupt { .. } => Status::internal(error.to_string()),
        }
    }
}

impl From<ControllerError> for tonic::Status {
    fn from(error: ControllerError) -> Self {
        use tonic::Status;
        match error {
            ControllerError::Invalid(error) => error.into(),
            ControllerError::Limit(error) => error.into(),
            ControllerError::Auth(error) => error.into(),
            ControllerError::Store(error) => error.into(),
            ControllerError::Schedule(error) => error.into(),
            ControllerError::NotFound { .. } => Status::not_found(error.to_string()),
            ControllerError::Suspended { .. } | ControllerError::Precondition(_) => {
                Status::failed_precondition(error.to_string())
            }
            ControllerError::NodeUnavailable { .. } => Status::unavailable(error.to_string()),
            ControllerError::Agent { node, status } => {
                Status::new(status.code(), format!("node {node}: {}", status.message()))
            }
        }
    }
}
