//! A tower layer around every RPC: request metrics by method and code, and
//! an audit entry (who, what, when, result) for every mutation — including
//! refused ones, so failed attempts are on record too.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tracing::warn;

use crate::auth;
use crate::metrics;
use crate::model::AuditRecord;
use crate::service::Controller;
use crate::store::StoreError;

/// Where a handler names the object a mutation acted on (`tenant/name`).
#[derive(Clone, Default)]
pub struct AuditTarget(Arc<Mutex<String>>);

impl AuditTarget {
    /// Names the target; for handlers that consume their request early (streams).
    pub fn set(&self, target: impl Into<String>) {
        if let Ok(mut value) = self.0.lock() {
            *value = target.into();
        }
    }

    fn get(&self) -> String {
        match self.0.lock() {
            Ok(target) => target.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// Names the target of the audited request (no-op for unaudited methods).
pub fn audit_target<T>(request: &tonic::Request<T>, target: impl Into<String>) {
    if let Some(slot) = request.extensions().get::<AuditTarget>() {
        slot.set(target);
    }
}

/// Methods that change state (or, like Exec, act inside a tenant's VPS).
fn is_audited(path: &str) -> bool {
    let method = path.rsplit('/').next().unwrap_or_default();
    const VERBS: [&str; 19] = [
        "Create",
        "Remove",
        "Lift",
        "Enroll",
        "Delete",
        "Start",
        "Stop",
        "Restart",
        "Resize",
        "Rebuild",
        "Set",
        "Suspend",
        "Unsuspend",
        "Revoke",
        "Drain",
        "Undrain",
        "Register",
        "Restore",
        "Migrate",
    ];
    VERBS.iter().any(|verb| method.starts_with(verb)) || method == "Exec" || method == "Console"
}

/// The request's `authorization` header as gRPC metadata (all `authenticate` reads).
fn authorization<B>(request: &http::Request<B>) -> tonic::metadata::MetadataMap {
    let mut metadata = tonic::metadata::MetadataMap::new();
    if let Some(value) = request.headers().get("authorization") {
        if let Ok(value) = tonic::metadata::MetadataValue::try_from(value.as_bytes()) {
            metadata.insert("authorization", value);
        }
    }
    metadata
}

/// Who makes an audited call: the token's principal, an enrolling or enrolled node, or what
/// was wrong with the credentials.
fn actor<B>(
    controller: &Controller,
    request: &http::Request<B>,
    metadata: &tonic::metadata::MetadataMap,
    authenticated: Result<auth::Principal, auth::AuthError>,
) -> String {
    match authenticated {
        Ok(principal) => principal.actor(),
        Err(_) if controller.nodes().check_join_token(metadata).is_ok() => {
            "node-enrolment".to_owned()
        }
        Err(auth::AuthError::Missing) => {
            let certs =
                request
                    .extensions()
                    .get::<tonic::transport::server::TlsConnectInfo<
                        tonic::transport::server::TcpConnectInfo,
                    >>()
                    .and_then(|info| info.peer_certs());
            match certs
                .as_deref()
                .map(|certs| crate::service::nodes::Nodes::node_of(Some(certs.as_slice())))
            {
                Some(Ok(node)) => format!("node:{node}"),
                _ => "anonymous".to_owned(),
            }
        }
        Err(_) => "invalid-token".to_owned(),
    }
}

/// What the controller does around every RPC ([`paddock_telemetry::RpcLayer`]): count and
/// time it, and for a mutation, write who tried it, on what, and how it ended — durably,
/// before the caller sees the answer.
#[derive(Clone)]
pub struct Observer {
    pub controller: Arc<Controller>,
}

/// An audited call in flight: who makes it, and where its handler names the target.
pub struct AuditedCall {
    who: String,
    target: AuditTarget,
}

impl paddock_telemetry::RpcObserver for Observer {
    type Call = Option<AuditedCall>;

    fn started<B>(&self, method: &str, request: &mut http::Request<B>) -> Self::Call {
        // The token is looked up once, here; the handler takes the caller from the request.
        let metadata = authorization(request);
        let authenticated = auth::authenticate(self.controller.store.as_ref(), &metadata);
        if let Ok(principal) = &authenticated {
            request
                .extensions_mut()
                .insert(auth::Authenticated(principal.clone()));
        }
        if !is_audited(method) {
            return None;
        }
        let target = AuditTarget::default();
        request.extensions_mut().insert(target.clone());
        Some(AuditedCall {
            who: actor(&self.controller, request, &metadata, authenticated),
            target,
        })
    }

    fn finished(
        &self,
        call: Self::Call,
        method: String,
        code: String,
        elapsed: Duration,
    ) -> impl Future<Output = ()> + Send {
        let controller = self.controller.clone();
        async move {
            metrics::observe_request(&method, &code, elapsed);
            let Some(call) = call else {
                return;
            };
            let entry = AuditRecord {
                seq: 0,
                at: Utc::now(),
                actor: call.who,
                method: method.rsplit('/').next().unwrap_or_default().to_owned(),
                target: call.target.get(),
                result: if code == "Ok" { "ok".to_owned() } else { code },
            };
            // Durable before the caller sees the answer; with the entries of the calls that
            // finish beside it, in one store call.
            let written = controller
                .audits
                .submit(entry, |batch| controller.store.append_audits(&batch))
                .await
                .unwrap_or_else(|| {
                    Err(StoreError::BatchLost {
                        what: "the audit entry's write".to_owned(),
                    })
                });
            if let Err(error) = written {
                warn!(%error, "writing audit entry");
            } else if let Err(error) = controller.store.flush().await {
                warn!(%error, "flushing audit entry");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_are_audited_reads_are_not() {
        assert!(is_audited("/paddock.v1.VpsService/CreateVps"));
        assert!(is_audited("/paddock.v1.TenantService/SetQuota"));
        assert!(is_audited("/paddock.v1.VpsService/Exec"));
        assert!(!is_audited("/paddock.v1.VpsService/GetVps"));
        assert!(!is_audited("/paddock.v1.VpsService/ListVps"));
        assert!(!is_audited("/paddock.v1.AgentRegistry/Heartbeat"));
    }

    /// Every RPC of the controller's .proto files is audited unless it only
    /// reads (or is a node's heartbeat), so a new mutation cannot slip by.
    #[test]
    fn every_rpc_that_is_not_a_read_is_audited() {
        const READS: [&str; 5] = ["Get", "List", "Watch", "TenantUsageSummary", "Heartbeat"];
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/paddock/v1");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).expect("proto dir") {
            let text = std::fs::read_to_string(entry.expect("entry").path()).expect("proto");
            let mut service = String::new();
            for line in text.lines().map(str::trim) {
                if let Some(rest) = line.strip_prefix("service ") {
                    service = rest.split_whitespace().next().unwrap_or("").to_owned();
                } else if let Some(rest) = line.strip_prefix("rpc ") {
                    let rpc = rest.split('(').next().unwrap_or("").trim();
                    if service == "NodeAgent" {
                        continue;
                    }
                    let read = READS.iter().any(|prefix| rpc.starts_with(prefix));
                    assert_eq!(
                        is_audited(&format!("/paddock.v1.{service}/{rpc}")),
                        !read,
                        "{service}/{rpc}"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 40, "only {checked} RPCs found");
    }
}
