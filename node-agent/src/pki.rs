//! The node's TLS identity: enrolled once with the join token, then used for
//! mutual TLS with the controller in both directions.
//!
//! The private key is generated here and never leaves the node; the
//! controller signs a certificate for it whose common name is
//! `paddock-node:<name>`. Only a peer presenting the controller's certificate
//! (`paddock-controller`, signed by the same CA) may call this agent.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use paddock_proto::v1;
use paddock_proto::v1::agent_registry_client::AgentRegistryClient;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tracing::{info, warn};

/// Common name of the only client this agent serves.
pub const CONTROLLER_CN: &str = "paddock-controller";

/// Why the node could not obtain or load its identity.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("generating the node key: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("controller address {address:?}: {reason}")]
    Address { address: String, reason: String },
    #[error("every controller refused to enrol the node: {0}")]
    Enrol(EnrolFailures),
}

/// One controller's answer to an enrolment that did not succeed.
#[derive(Debug)]
pub struct EnrolFailure {
    pub controller: String,
    pub code: tonic::Code,
    pub message: String,
}

/// What each controller of the list answered in one round of enrolment.
#[derive(Debug)]
pub struct EnrolFailures(pub Vec<EnrolFailure>);

impl EnrolFailures {
    /// Whether every controller answered with a refusal (none was merely unreachable, slow or
    /// unable to serve at the moment): trying again cannot succeed.
    fn all_refused(&self) -> bool {
        !self.0.is_empty()
            && self.0.iter().all(|failure| {
                matches!(
                    failure.code,
                    tonic::Code::Unauthenticated
                        | tonic::Code::PermissionDenied
                        | tonic::Code::InvalidArgument
                        | tonic::Code::AlreadyExists
                        | tonic::Code::Unimplemented
                )
            })
    }
}

impl std::fmt::Display for EnrolFailures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (index, failure) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("; ")?;
            }
            write!(
                f,
                "{} answered {:?}: {}",
                failure.controller, failure.code, failure.message
            )?;
        }
        Ok(())
    }
}

/// PEM material of the node's identity.
#[derive(Clone)]
pub struct NodeIdentity {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl NodeIdentity {
    /// TLS settings for calling the controller as this node.
    pub fn client_tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> PkiError + 'a {
    move |source| PkiError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn write(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io("creating", path))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io("writing", path))
}

/// The host part of a URL such as `https://10.0.0.5:7444`, for the certificate's SAN.
pub fn host_of(url: &str) -> Result<String, PkiError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| PkiError::Address {
            address: url.to_owned(),
            reason: e.to_string(),
        })?;
    let host = uri.host().ok_or_else(|| PkiError::Address {
        address: url.to_owned(),
        reason: "has no host".to_owned(),
    })?;
    Ok(host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned())
}

/// Loads the node identity from `<state_dir>/tls`, enrolling first if there is none: with
/// each controller of the list in turn until one signs the node's certificate. A round where
/// none did is logged naming every controller and why; it is retried (with backoff) while any
/// of them did not answer, and fails when every one of them refused (a bad join token, a
/// name the controllers reject): asking again would not change their answer.
pub async fn ensure_enrolled(
    state_dir: &Path,
    node_name: &str,
    controllers: &[String],
    controller_ca_file: &Path,
    join_token_file: &Path,
    advertised: &str,
) -> Result<NodeIdentity, PkiError> {
    let dir = state_dir.join("tls");
    let (ca, cert, key) = (
        dir.join("ca.crt"),
        dir.join("node.crt"),
        dir.join("node.key"),
    );
    if ca.exists() && cert.exists() && key.exists() {
        return Ok(NodeIdentity {
            ca_pem: fs::read_to_string(&ca).map_err(io("reading", &ca))?,
            cert_pem: fs::read_to_string(&cert).map_err(io("reading", &cert))?,
            key_pem: fs::read_to_string(&key).map_err(io("reading", &key))?,
        });
    }
    let ca_pem = fs::read_to_string(controller_ca_file)
        .map_err(io("reading the controller CA", controller_ca_file))?;
    let join_token = fs::read_to_string(join_token_file)
        .map_err(io("reading the join token", join_token_file))?;
    let join_token = join_token.trim();
    let key_pair = rcgen::KeyPair::generate()?;
    let mut sans = vec![host_of(advertised)?];
    if !sans.iter().any(|s| s == "127.0.0.1") {
        sans.push("127.0.0.1".to_owned());
    }
    let csr = rcgen::CertificateParams::new(sans.clone())?
        .serialize_request(&key_pair)?
        .pem()?;
    let token: MetadataValue<_> =
        format!("Bearer {join_token}")
            .parse()
            .map_err(|_| PkiError::Address {
                address: controllers.join(", "),
                reason: "the join token is not ASCII (it is sent in a header)".to_owned(),
            })?;
    let mut clients = Vec::new();
    for controller in controllers {
        let address = |e: &dyn std::fmt::Display| PkiError::Address {
            address: controller.clone(),
            reason: e.to_string(),
        };
        let endpoint = Endpoint::from_shared(controller.clone())
            .map_err(|e| address(&e))?
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem)))
            .map_err(|e| address(&e))?
            .connect_timeout(Duration::from_secs(3));
        clients.push((
            controller.as_str(),
            AgentRegistryClient::new(endpoint.connect_lazy()),
        ));
    }
    let mut backoff = Duration::from_millis(200);
    let (response, by) = 'enrolled: loop {
        let mut failures = Vec::new();
        for (controller, client) in &mut clients {
            let mut request = tonic::Request::new(v1::EnrollRequest {
                node_name: node_name.to_owned(),
                csr_pem: csr.clone(),
                subject_alt_names: sans.clone(),
            });
            request
                .metadata_mut()
                .insert("authorization", token.clone());
            request.set_timeout(Duration::from_secs(10));
            match client.enroll(request).await {
                Ok(response) => break 'enrolled (response.into_inner(), *controller),
                Err(status) => {
                    warn!(%controller, code = ?status.code(), message = status.message(), "enrolment failed; trying the next controller");
                    failures.push(EnrolFailure {
                        controller: (*controller).to_owned(),
                        code: status.code(),
                        message: status.message().to_owned(),
                    })
                }
            }
        }
        let tried = EnrolFailures(failures);
        if tried.all_refused() {
            return Err(PkiError::Enrol(tried));
        }
        warn!(retry_in = ?backoff, "enrolment failed at every controller: {tried}");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io("creating", &dir))?;
    let identity = NodeIdentity {
        ca_pem: response.ca_pem,
        cert_pem: response.certificate_pem,
        key_pem: key_pair.serialize_pem(),
    };
    write(&key, &identity.key_pem, 0o600)?;
    write(&ca, &identity.ca_pem, 0o644)?;
    // The certificate last: its presence marks a complete enrolment.
    write(&cert, &identity.cert_pem, 0o644)?;
    info!(node = node_name, controller = %by, "enrolled with the controller");
    Ok(identity)
}

/// Whether the verified client certificate chain belongs to the controller.
pub fn is_controller(peer_certs: Option<&[impl AsRef<[u8]>]>) -> bool {
    peer_certs
        .and_then(|certs| certs.first())
        .and_then(|leaf| {
            let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
            let cn = cert
                .subject()
                .iter_common_name()
                .next()?
                .as_str()
                .ok()?
                .to_owned();
            Some(cn == CONTROLLER_CN)
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_urls() {
        assert_eq!(host_of("https://127.0.0.1:7444").expect("ip"), "127.0.0.1");
        assert_eq!(
            host_of("https://node1.example:7444").expect("dns"),
            "node1.example"
        );
        assert_eq!(host_of("https://[::1]:7444").expect("v6"), "::1");
        assert!(host_of("not a url").is_err());
    }

    #[test]
    fn enrolment_gives_up_only_when_every_controller_refused() {
        let failure = |controller: &str, code| EnrolFailure {
            controller: controller.to_owned(),
            code,
            message: "why".to_owned(),
        };
        let refused = EnrolFailures(vec![
            failure("https://a:7443", tonic::Code::Unauthenticated),
            failure("https://b:7443", tonic::Code::PermissionDenied),
        ]);
        assert!(refused.all_refused());
        assert_eq!(
            PkiError::Enrol(refused).to_string(),
            "every controller refused to enrol the node: https://a:7443 answered \
             Unauthenticated: why; https://b:7443 answered PermissionDenied: why"
        );
        let one_down = EnrolFailures(vec![
            failure("https://a:7443", tonic::Code::Unavailable),
            failure("https://b:7443", tonic::Code::Unauthenticated),
        ]);
        assert!(
            !one_down.all_refused(),
            "a controller that did not answer may yet"
        );
        assert!(!EnrolFailures(Vec::new()).all_refused());
    }

    #[test]
    fn only_the_controller_certificate_passes() {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = |cn: &str| {
            let mut params =
                rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
            params.self_signed(&key).expect("cert").der().to_vec()
        };
        assert!(is_controller(Some(&[cert(CONTROLLER_CN)][..])));
        assert!(!is_controller(Some(&[cert("paddock-node:other")][..])));
        assert!(!is_controller(None::<&[Vec<u8>]>));
    }
}
