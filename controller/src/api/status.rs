//! The one mapping of the controller's typed errors to gRPC status codes: services,
//! the store and the model return their own error types and know nothing of gRPC.

use crate::auth::AuthError;
use crate::error::ControllerError;
use crate::limits::LimitError;
use crate::model::migration::MigrationError;
use crate::model::scheduler::ScheduleError;
use crate::model::validate::ValidationError;
use crate::store::StoreError;

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
            StoreError::Quota(_)
            | StoreError::SnapshotQuota(_)
            | StoreError::Ipam(_)
            | StoreError::Conflict(_) => Status::failed_precondition(error.to_string()),
            StoreError::Migration(migration) => migration_status(migration),
            StoreError::Open { .. }
            | StoreError::SchemaMismatch { .. }
            | StoreError::NotInitialized { .. }
            | StoreError::Sled(_)
            | StoreError::EtcdRuntime { .. }
            | StoreError::Migrate(_)
            | StoreError::BatchLost { .. }
            | StoreError::Corrupt { .. } => Status::internal(error.to_string()),
            // etcd unreachable or without quorum: worth retrying.
            StoreError::EtcdConnect { .. } | StoreError::Etcd(_) | StoreError::EtcdGone => {
                Status::unavailable(error.to_string())
            }
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
            ControllerError::NodeUnavailable { .. } | ControllerError::NotLeader { .. } => {
                Status::unavailable(error.to_string())
            }
            ControllerError::Agent { node, status } => {
                Status::new(status.code(), format!("node {node}: {}", status.message()))
            }
            ControllerError::Migration(error) => migration_status(&error),
        }
    }
}

/// A migration refused up front is `FailedPrecondition` (nothing changed); one that raced
/// another change or failed and was rolled back is `Aborted` (the VPS is where it was).
fn migration_status(error: &MigrationError) -> tonic::Status {
    match error {
        MigrationError::SameNode { .. }
        | MigrationError::InProgress { .. }
        | MigrationError::AddressChange { .. }
        | MigrationError::HasSnapshots { .. }
        | MigrationError::LiveAddressChange { .. }
        | MigrationError::CheckpointRefused { .. } => {
            tonic::Status::failed_precondition(error.to_string())
        }
        MigrationError::Moved { .. }
        | MigrationError::AddressTaken { .. }
        | MigrationError::Failed { .. } => tonic::Status::aborted(error.to_string()),
    }
}

impl From<AuthError> for tonic::Status {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Missing
            | AuthError::Malformed
            | AuthError::Invalid
            | AuthError::Revoked
            | AuthError::Expired
            | AuthError::NodeCertificate(_)
            | AuthError::NodeRevoked { .. } => tonic::Status::unauthenticated(error.to_string()),
            AuthError::Forbidden { .. } => tonic::Status::permission_denied(error.to_string()),
            AuthError::Store(error) => error.into(),
        }
    }
}

impl From<LimitError> for tonic::Status {
    fn from(error: LimitError) -> Self {
        match error {
            LimitError::OutOfBounds { .. } => tonic::Status::invalid_argument(error.to_string()),
            LimitError::NotPermitted { .. } => tonic::Status::permission_denied(error.to_string()),
        }
    }
}
