//! Who may call: the principal of a request, as authenticated once when the call came in
//! (`observe.rs`), and the role checks the handlers make. The services below take a
//! [`Principal`], never a request.

use crate::auth::{self, Principal};
use crate::error::ControllerError;
use crate::service::Controller;

impl Controller {
    /// The caller of a request: as the RPC layer authenticated it when the call came in
    /// ([`auth::Authenticated`]), else authenticated now (a refused token is always checked
    /// here, so its error is the handler's).
    pub fn caller<T>(&self, request: &tonic::Request<T>) -> Result<Principal, ControllerError> {
        if let Some(auth::Authenticated(principal)) = request.extensions().get() {
            return Ok(principal.clone());
        }
        Ok(auth::authenticate(self.store.as_ref(), request.metadata())?)
    }

    /// Requires an admin token.
    pub fn admin<T>(&self, request: &tonic::Request<T>) -> Result<Principal, ControllerError> {
        let principal = self.caller(request)?;
        match principal {
            Principal::Admin { .. } => Ok(principal),
            other => Err(auth::AuthError::Forbidden {
                needed: "an admin token",
                actual: other.actor(),
            }
            .into()),
        }
    }

    /// Requires a billing or admin token.
    pub fn billing<T>(&self, request: &tonic::Request<T>) -> Result<Principal, ControllerError> {
        let principal = self.caller(request)?;
        match principal {
            Principal::Admin { .. } | Principal::Billing { .. } => Ok(principal),
            other => Err(auth::AuthError::Forbidden {
                needed: "a billing or admin token",
                actual: other.actor(),
            }
            .into()),
        }
    }
}
